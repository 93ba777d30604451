//! Spec text rebuilt from macro tokens, with a map from text offsets back to token spans: how a
//! checker diagnostic at a byte offset becomes a compile error at the user's token.

use proc_macro2::{Delimiter, Span, TokenTree};

/// Text rebuilt from tokens, with the span of the token at each byte range.
#[derive(Default)]
pub(crate) struct SpannedText {
    pub text: String,
    pub map: Vec<(usize, usize, Span)>,
}

impl SpannedText {
    fn push(&mut self, s: &str, span: Span) {
        // Spaces between tokens, except inside brackets and before `,` / `;`, so the text (shown in
        // diagnostics) reads like the source.
        let tight_after = self.text.ends_with(['(', '[', ' ']);
        let tight_before = matches!(s, ")" | "]" | "," | ";");
        if !self.text.is_empty() && !tight_after && !tight_before {
            self.text.push(' ');
        }
        let start = self.text.len();
        self.text.push_str(s);
        self.map.push((start, self.text.len(), span));
    }

    fn push_joint(&mut self, s: &str, span: Span) {
        let start = self.text.len();
        self.text.push_str(s);
        self.map.push((start, self.text.len(), span));
    }

    /// Appends tokens as spec text (`///` docs arrive as `#[doc = "…"]`, which the grammar accepts).
    pub(crate) fn extend(&mut self, tokens: &[TokenTree]) {
        let mut joint = false;
        for t in tokens {
            match t {
                TokenTree::Group(g) => {
                    let (open, close) = match g.delimiter() {
                        Delimiter::Parenthesis => ("(", ")"),
                        Delimiter::Brace => ("{", "}"),
                        Delimiter::Bracket => ("[", "]"),
                        Delimiter::None => ("", ""),
                    };
                    self.push(open, g.span_open());
                    let inner: Vec<TokenTree> = g.stream().into_iter().collect();
                    self.extend(&inner);
                    self.push(close, g.span_close());
                    joint = false;
                }
                TokenTree::Punct(p) => {
                    let s = p.as_char().to_string();
                    if joint {
                        self.push_joint(&s, p.span());
                    } else {
                        self.push(&s, p.span());
                    }
                    joint = p.spacing() == proc_macro2::Spacing::Joint;
                    if joint {
                        // No space before the next character of a multi-character operator.
                        continue;
                    }
                }
                TokenTree::Ident(i) => {
                    self.push(&i.to_string(), i.span());
                    joint = false;
                }
                TokenTree::Literal(l) => {
                    let s = l.to_string();
                    self.push(&normal_string(&s).unwrap_or(s), l.span());
                    joint = false;
                }
            }
        }
    }

    /// The span of the token covering byte `pos` (or the nearest one before it).
    pub fn span_at(&self, pos: usize) -> Option<Span> {
        self.map
            .iter()
            .rev()
            .find(|(a, _, _)| *a <= pos)
            .map(|(_, _, s)| *s)
            .or_else(|| self.map.first().map(|m| m.2))
    }
}

/// A raw string literal (`r"…"`, as doc comments may arrive) rewritten as a plain one.
fn normal_string(lit: &str) -> Option<String> {
    let rest = lit.strip_prefix('r')?;
    let hashes = rest.len() - rest.trim_start_matches('#').len();
    let body = rest.get(hashes + 1..rest.len() - hashes - 1)?;
    Some(format!(
        "\"{}\"",
        body.replace('\\', "\\\\").replace('"', "\\\"")
    ))
}
