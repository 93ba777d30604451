//! Builds the [`ast`](super::ast) from pest's parse tree, one module per syntax area, as syn keeps
//! one file per area:
//!
//! | area | module |
//! |---|---|
//! | a file: `use` lines, `model` and `block` definitions, parameters and their types | `items` |
//! | a body and its statements: `require`, `input`, `expect`, `let`, `repeat`, calls | `stmts` |
//! | where values fork and meet: `residual` and `branches` | `graph` |
//! | expressions and literals, with the depth cap | `exprs` |
//! | what the command line parses: a model invocation and a `--set` override | `command_line` |
//!
//! This module holds the [`Builder`] and the tokens every area reads: spans, names and strings.

use super::ast::Ident;
use super::Rule;
use crate::diag::Diagnostic;
use crate::source::{FileId, Span};
use pest::iterators::Pair;

pub(super) mod command_line;
mod exprs;
mod graph;
mod items;
mod stmts;

type Res<T> = Result<T, Diagnostic>;

/// Turns the pairs of one source file into AST nodes whose spans point into that file.
pub(super) struct Builder {
    pub(super) file: FileId,
}

fn unescape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(other) => out.push(other),
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl Builder {
    fn span(&self, p: &Pair<Rule>) -> Span {
        let s = p.as_span();
        Span::new(self.file, s.start(), s.end())
    }

    fn ident(&self, p: Pair<Rule>) -> Ident {
        Ident {
            name: p.as_str().to_string(),
            span: self.span(&p),
        }
    }

    /// A string literal's text, quotes removed and escapes resolved.
    fn string(&self, p: Pair<Rule>) -> String {
        let s = p.as_str();
        unescape(&s[1..s.len() - 1])
    }
}
