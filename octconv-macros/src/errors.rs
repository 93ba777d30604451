//! Checker diagnostics as compile errors at the right tokens.

use crate::input::SpannedText;
use octconv_spec::source::{Origin, Span as SrcSpan};
use octconv_spec::Checked;
use proc_macro2::{Span, TokenStream};
use quote::quote_spanned;

/// A compile error and where it goes.
pub(crate) struct Located {
    span: Span,
    message: String,
}

/// The span of a source span that lies in the inline text or the call, if it does.
fn token_span(
    checked: &Checked,
    s: SrcSpan,
    text: &SpannedText,
    call: &SpannedText,
) -> Option<Span> {
    match &checked.sources.get(s.file).origin {
        Origin::Inline { .. } => text.span_at(s.start),
        Origin::Virtual(n) if n == "<--model>" => call.span_at(s.start),
        _ => None,
    }
}

/// Where each error of `checked` belongs, and its message.
pub(crate) fn locate(
    checked: &Checked,
    text: &SpannedText,
    call: &SpannedText,
    decl: Span,
) -> Vec<Located> {
    let mut out = Vec::new();
    for d in checked.diagnostics.iter().filter(|d| d.is_error()) {
        let mut short = d.message.clone();
        if let Some(l) = &d.label {
            if !l.is_empty() {
                short.push_str(&format!("\n  label: {l}"));
            }
        }
        for h in &d.help {
            short.push_str(&format!("\n  = help: {h}"));
        }
        for n in &d.notes {
            short.push_str(&format!("\n  = note: {n}"));
        }
        let direct = d.span.and_then(|s| token_span(checked, s, text, call));
        let located = match direct {
            Some(span) => Located {
                span,
                message: short,
            },
            None => {
                // The error is in a file or a builtin: point at where the user wrote the value (an
                // argument of the call), else at the `use` that brought the file in, else at the
                // declaration; the message carries the rendered snippet with path:line:col.
                let via_label = d
                    .secondary
                    .iter()
                    .find_map(|l| token_span(checked, l.span, text, call));
                let via_use = d.span.and_then(|s| use_literal(checked, s, text));
                let span = via_label.or(via_use).unwrap_or(decl);
                let rendered = d
                    .render(&checked.sources, false)
                    .replace("<--model>", "<octnet! call>");
                let rendered = rendered.strip_prefix("error: ").unwrap_or(&rendered);
                let at = d
                    .location(&checked.sources)
                    .map(|l| format!(" (at {})", l.replace("<--model>", "<octnet! call>")));
                let mut lines = rendered.splitn(2, '\n');
                let first = lines.next().unwrap_or_default();
                let rest = lines.next().unwrap_or_default();
                Located {
                    span,
                    message: format!("{first}{}\n{rest}", at.unwrap_or_default()),
                }
            }
        };
        out.push(located);
    }
    if checked.suppressed > 0 {
        out.push(Located {
            span: decl,
            message: format!("{} more error(s) not shown", checked.suppressed),
        });
    }
    out
}

/// The span of the `use "…"` literal in the inline text (the first one, for nested includes).
fn use_literal(checked: &Checked, s: SrcSpan, text: &SpannedText) -> Option<Span> {
    if !matches!(checked.sources.get(s.file).origin, Origin::File(_)) {
        return None;
    }
    let pos = text.text.find("use \"")?;
    text.span_at(pos + 4)
}

/// All errors as `compile_error!` invocations (de-duplicated: several declarations may share a spec).
pub(crate) fn compile_errors(errors: Vec<Located>) -> TokenStream {
    let mut seen = std::collections::HashSet::new();
    let mut out = TokenStream::new();
    for e in errors {
        if !seen.insert((format!("{:?}", e.span), e.message.clone())) {
            continue;
        }
        let msg = e.message;
        out.extend(quote_spanned!(e.span=> ::core::compile_error!(#msg);));
    }
    out
}
