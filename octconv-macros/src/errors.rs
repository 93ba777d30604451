//! Checker diagnostics as compile errors at the right tokens.

use crate::spanned::SpannedText;
use octconv_spec::source::{Origin, Span as SrcSpan};
use octconv_spec::Checked;
use proc_macro2::{Span, TokenStream};
use quote::quote_spanned;
use std::collections::HashSet;

/// Where an error is attached, as something comparable (token spans are not): a byte offset of the
/// spec text all declarations share, of one declaration's call, or one declaration itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Anchor {
    Spec(usize),
    Call { decl: usize, pos: usize },
    Decl(usize),
}

/// A compile error and where it goes.
pub(crate) struct Located {
    anchor: Anchor,
    span: Span,
    message: String,
}

/// The declaration whose check produced the diagnostics.
pub(crate) struct Decl<'a> {
    /// Its position among the macro's declarations.
    pub index: usize,
    /// Its model call.
    pub call: &'a SpannedText,
    /// Its tokens, where errors with no better place go.
    pub span: Span,
}

/// The anchor and token span of a source span that lies in the inline text or the call, if it does.
fn token_span(
    checked: &Checked,
    s: SrcSpan,
    text: &SpannedText,
    decl: &Decl,
) -> Option<(Anchor, Span)> {
    match &checked.sources.get(s.file).origin {
        Origin::Inline { .. } => Some((Anchor::Spec(s.start), text.span_at(s.start)?)),
        Origin::ModelFlag => Some((
            Anchor::Call {
                decl: decl.index,
                pos: s.start,
            },
            decl.call.span_at(s.start)?,
        )),
        _ => None,
    }
}

/// Where each error of `checked` belongs, and its message.
pub(crate) fn locate(checked: &Checked, text: &SpannedText, decl: Decl) -> Vec<Located> {
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
        let direct = d.span.and_then(|s| token_span(checked, s, text, &decl));
        let located = match direct {
            Some((anchor, span)) => Located {
                anchor,
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
                    .find_map(|l| token_span(checked, l.span, text, &decl));
                let via_use = d
                    .span
                    .and_then(|s| use_literal(checked, s))
                    .and_then(|s| token_span(checked, s, text, &decl));
                let (anchor, span) = via_label
                    .or(via_use)
                    .unwrap_or((Anchor::Decl(decl.index), decl.span));
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
                    anchor,
                    span,
                    message: format!("{first}{}\n{rest}", at.unwrap_or_default()),
                }
            }
        };
        out.push(located);
    }
    if checked.suppressed > 0 {
        out.push(Located {
            anchor: Anchor::Decl(decl.index),
            span: decl.span,
            message: format!("{} more error(s) not shown", checked.suppressed),
        });
    }
    out
}

/// The `use "…"` path literal in the root text through which the file of `s` was included: follows
/// the chain of includes (a file included by a file included by the inline text) up to the root.
fn use_literal(checked: &Checked, s: SrcSpan) -> Option<SrcSpan> {
    let mut file = s.file;
    let mut steps = 0;
    loop {
        let at = checked.sources.get(file).included_at?;
        if matches!(checked.sources.get(at.file).origin, Origin::Inline { .. }) {
            return Some(at);
        }
        file = at.file;
        steps += 1;
        // Include cycles are refused by the loader; this only guards the walk.
        if steps > checked.sources.ids().count() {
            return None;
        }
    }
}

/// All errors as `compile_error!` invocations, each (place, message) once: declarations that share
/// a spec report its errors once.
pub(crate) fn compile_errors(errors: Vec<Located>) -> TokenStream {
    let mut seen = HashSet::new();
    let mut out = TokenStream::new();
    for e in errors {
        if !seen.insert((e.anchor, e.message.clone())) {
            continue;
        }
        let msg = e.message;
        out.extend(quote_spanned!(e.span=> ::core::compile_error!(#msg);));
    }
    out
}
