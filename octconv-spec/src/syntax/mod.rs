//! Parsing `.oct` text into the [`ast`]: a pest grammar (`grammar.pest`) plus a small tree builder.
//!
//! Parsing never panics and never overflows the stack: nesting depth is checked before pest runs
//! (pest is recursive descent) and expression trees are capped while they are built.

pub mod ast;
mod builder;
mod errors;

use crate::diag::{DiagKind, Diagnostic};
use crate::source::{FileId, Span};
use pest::iterators::Pair;
use pest::Parser;

pub use builder::command_line::{parse_call_spec, parse_set_spec, CallSpec};

#[derive(pest_derive::Parser)]
#[grammar = "syntax/grammar.pest"]
pub(crate) struct OctParser;

/// Deepest allowed nesting of `(`, `[` and `{`.
pub const MAX_NESTING: usize = 64;
/// Deepest allowed expression tree (operators chained without parentheses count too).
pub const MAX_EXPR_DEPTH: usize = 128;
/// Largest accepted source text in bytes.
pub const MAX_SOURCE_BYTES: usize = 4 << 20;

/// Parses a whole `.oct` file.
pub fn parse_file(file: FileId, text: &str) -> Result<ast::File, Diagnostic> {
    let top = parse_top(file, text, Rule::file)?;
    builder::Builder { file }.file(top)
}

/// Parses all of `text` as `rule` (`file`, `call_spec`, `set_spec`: a rule from `SOI` to `EOI`), after
/// the [`precheck`].
pub(crate) fn parse_top(
    file: FileId,
    text: &str,
    rule: Rule,
) -> Result<Pair<'_, Rule>, Diagnostic> {
    precheck(file, text)?;
    pest::set_error_detail(true);
    let mut pairs =
        OctParser::parse(rule, text).map_err(|e| errors::syntax_error(file, text, e))?;
    Ok(pairs
        .next()
        .expect("grammar: a rule from SOI to EOI yields one pair"))
}

/// Rejects inputs that would make the recursive-descent parser recurse too deeply or run too long.
fn precheck(file: FileId, text: &str) -> Result<(), Diagnostic> {
    if text.len() > MAX_SOURCE_BYTES {
        return Err(Diagnostic::error(
            DiagKind::Limit,
            Span::new(file, 0, 0),
            format!(
                "spec is too large: {} bytes (the limit is {} bytes)",
                text.len(),
                MAX_SOURCE_BYTES
            ),
        ));
    }
    // A tiny lexer that skips strings and comments and tracks bracket depth.
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    // `if` expressions per statement: an `else if` chain nests without brackets.
    let mut ifs = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b';' => ifs = 0,
            b'i' if is_if(bytes, i) => {
                ifs += 1;
                if ifs > MAX_NESTING {
                    return Err(too_deep(file, i, "`if`"));
                }
            }
            b'"' => i = string_end(bytes, i),
            b'/' if bytes.get(i + 1) == Some(&b'/') => i = line_end(bytes, i),
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i = block_comment_end(file, bytes, i)?;
                continue;
            }
            b'(' | b'[' | b'{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(too_deep(file, i, "bracket"));
                }
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// Whether the `i` at `i` starts the keyword `if` (not a longer name).
fn is_if(bytes: &[u8], i: usize) -> bool {
    bytes.get(i + 1) == Some(&b'f')
        && !bytes
            .get(i + 2)
            .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
        && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'))
}

/// Where the string opened by the `"` at `i` closes (its closing `"`, or the end of the text).
fn string_end(bytes: &[u8], mut i: usize) -> usize {
    i += 1;
    while i < bytes.len() && bytes[i] != b'"' {
        i += if bytes[i] == b'\\' { 2 } else { 1 };
    }
    i
}

/// Where the `//` comment at `i` ends (its newline, or the end of the text).
fn line_end(bytes: &[u8], mut i: usize) -> usize {
    while i < bytes.len() && bytes[i] != b'\n' {
        i += 1;
    }
    i
}

/// Where the `/* */` comment opened at `i` ends (just past its `*/`, or the end of the text);
/// refuses comments nested deeper than [`MAX_NESTING`].
fn block_comment_end(file: FileId, bytes: &[u8], mut i: usize) -> Result<usize, Diagnostic> {
    let start = i;
    let mut level = 0usize;
    while i < bytes.len() {
        if bytes[i] == b'/' && bytes.get(i + 1) == Some(&b'*') {
            level += 1;
            if level > MAX_NESTING {
                return Err(too_deep(file, start, "comment"));
            }
            i += 2;
        } else if bytes[i] == b'*' && bytes.get(i + 1) == Some(&b'/') {
            level -= 1;
            i += 2;
            if level == 0 {
                break;
            }
        } else {
            i += 1;
        }
    }
    Ok(i)
}

fn too_deep(file: FileId, at: usize, what: &str) -> Diagnostic {
    Diagnostic::error(
        DiagKind::Limit,
        Span::new(file, at, at + 1),
        format!("{what} nesting is deeper than {MAX_NESTING} levels"),
    )
    .with_label("too deeply nested")
    .with_help("flatten the spec with `let` bindings or blocks")
}
