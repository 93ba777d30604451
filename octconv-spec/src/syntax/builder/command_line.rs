//! What the command line (and `octnet!`) parses besides files: a model invocation such as
//! `wrn(n = 4, k = 10)` and one `--set name=value` override.

use super::Builder;
use crate::diag::Diagnostic;
use crate::source::{FileId, Span};
use crate::syntax::ast::{Arg, Ident};
use crate::syntax::{parse_top, Rule};

/// A parsed model invocation: `wrn(n = 4, k = 10, alpha = 0.25)`.
#[derive(Clone, Debug, PartialEq)]
pub struct CallSpec {
    /// Model name.
    pub name: Ident,
    /// Arguments (positional or named).
    pub args: Vec<Arg>,
    /// Whole invocation.
    pub span: Span,
}

/// Parses a model invocation such as `wrn(n = 4, k = 10)` (the parentheses are optional).
pub fn parse_call_spec(file: FileId, text: &str) -> Result<CallSpec, Diagnostic> {
    let top = parse_top(file, text, Rule::call_spec)?;
    let b = Builder { file };
    let span = b.span(&top);
    let mut it = top.into_inner();
    let name = b.ident(it.next().expect("call name"));
    let args = match it.next() {
        Some(a) if a.as_rule() == Rule::args => b.args(a)?,
        _ => Vec::new(),
    };
    Ok(CallSpec { name, args, span })
}

/// Parses one `name=value` override as given to `--set`.
pub fn parse_set_spec(file: FileId, text: &str) -> Result<Arg, Diagnostic> {
    let top = parse_top(file, text, Rule::set_spec)?;
    let b = Builder { file };
    b.named_arg(b.span(&top), top.into_inner())
}
