//! Turns pest's parse errors into [`Diagnostic`]s that say which tokens were expected.

use super::Rule;
use crate::diag::{DiagKind, Diagnostic};
use crate::source::{FileId, Span};
use pest::error::{ErrorVariant, InputLocation};

/// A readable name for a grammar rule in "expected …" lists; `None` hides internal rules.
fn rule_name(rule: Rule) -> Option<&'static str> {
    Some(match rule {
        Rule::ident => "identifier",
        Rule::int_lit => "integer",
        Rule::float_lit => "number",
        Rule::string => "string",
        Rule::expr
        | Rule::postfix_expr
        | Rule::paren
        | Rule::list
        | Rule::fn_call
        | Rule::if_expr => "expression",
        Rule::item | Rule::def_item | Rule::def_kind => "`model`, `block` or `use`",
        Rule::use_item => "`use`",
        Rule::stmt
        | Rule::require_stmt
        | Rule::input_stmt
        | Rule::expect_stmt
        | Rule::let_stmt
        | Rule::repeat_stmt
        | Rule::residual_stmt
        | Rule::branches_stmt
        | Rule::branches_kw
        | Rule::call_stmt => "statement",
        Rule::label => "`as`",
        Rule::ty | Rule::ty_name | Rule::ty_list => "type (`int`, `float`, `bool` or `[T; N]`)",
        Rule::param => "parameter",
        Rule::arg | Rule::named_arg => "argument",
        Rule::shape => "shape `[…]`",
        Rule::shortcut => "`shortcut`",
        Rule::args => "`(`",
        Rule::params => "`(`",
        Rule::body => "`{`",
        Rule::EOI => "end of input",
        Rule::or | Rule::and | Rule::eq | Rule::ne | Rule::le | Rule::ge | Rule::lt | Rule::gt => {
            "operator"
        }
        Rule::add | Rule::sub | Rule::mul | Rule::div | Rule::rem => "operator",
        Rule::index => "`[`",
        Rule::kw_true | Rule::kw_false => "`true` or `false`",
        _ => return None,
    })
}

/// What the parser expected, as the message lists it: literal `tokens` as written, `operator`, and the
/// names of `rules`; without repeats, literals first.
fn expected(tokens: &[String], rules: &[Rule]) -> Vec<String> {
    let mut expected: Vec<String> = Vec::new();
    let mut push = |s: String| {
        if !expected.contains(&s) {
            expected.push(s);
        }
    };
    for token in tokens {
        let range = token.len() == 4 && token.contains(".."); // `a..z`: a character class
        let literal = !(token.is_empty()
            || token == "BUILTIN_RULE"
            || range
            || token.chars().any(char::is_whitespace));
        const OPERATORS: &[&str] = &[
            "!=", "%", "&&", "*", "+", "-", "/", "<=", "<", "==", ">=", ">", "||", "!",
        ];
        // Comment openers and the inner characters of number and string literals are noise.
        const COMMENTS: &[&str] = &["/*", "//", "///", "#", ".", "e", "E", "_", "\"", "\\"];
        if COMMENTS.contains(&token.as_str()) {
            continue;
        }
        if OPERATORS.contains(&token.as_str()) {
            push("operator".to_string());
        } else if literal {
            push(format!("`{token}`"));
        }
    }
    for r in rules {
        if let Some(n) = rule_name(*r) {
            push(n.to_string());
        }
    }
    expected.sort_by_key(|s| (!s.starts_with('`'), s.clone()));
    expected
}

/// Converts a pest error at a position in `text` into a syntax diagnostic.
pub(super) fn syntax_error(file: FileId, text: &str, err: pest::error::Error<Rule>) -> Diagnostic {
    let mut pos = match err.location {
        InputLocation::Pos(p) => p,
        InputLocation::Span((a, _)) => a,
    };
    // pest's own location is where its last *rule* failed (e.g. no operator after `32`); the detailed
    // attempts know the furthest position where a literal token (e.g. `;`) was expected. Prefer that.
    let attempts = err.parse_attempts();
    let furthest = attempts.as_ref().map_or(0, |a| a.max_position);
    let use_rules = furthest <= pos;
    pos = pos.max(furthest).min(text.len());
    let tokens: Vec<String> = attempts.map_or_else(Vec::new, |a| {
        // pest does not export its token type; its Display shows literals as written.
        a.expected_tokens()
            .iter()
            .map(ToString::to_string)
            .collect()
    });
    let rules = match (use_rules, &err.variant) {
        (true, ErrorVariant::ParsingError { positives, .. }) => positives.as_slice(),
        _ => &[],
    };
    let expected = expected(&tokens, rules);
    let found = found_token(text, pos);
    let message = match expected.len() {
        0 => format!("syntax error: unexpected {found}"),
        1 => format!("syntax error: expected {}, found {found}", expected[0]),
        _ => format!(
            "syntax error: expected one of {}, found {found}",
            expected.join(", ")
        ),
    };
    let end = (pos + text[pos..].chars().next().map_or(0, |c| c.len_utf8())).min(text.len());
    let mut d = Diagnostic::error(DiagKind::Syntax, Span::new(file, pos, end), message).with_label(
        if expected.is_empty() {
            "unexpected here".to_string()
        } else {
            format!("expected {}", short_list(&expected))
        },
    );
    if text[pos..].starts_with('\'') {
        d = d.with_help("specs use `\"` for strings; `'` is not valid here");
    }
    d
}

fn short_list(items: &[String]) -> String {
    if items.len() <= 3 {
        items.join(" or ")
    } else {
        format!("{} or …", items[..3].join(", "))
    }
}

/// Describes what is at `pos`: a word, a symbol or the end of input.
fn found_token(text: &str, pos: usize) -> String {
    let rest = &text[pos.min(text.len())..];
    let Some(c) = rest.chars().next() else {
        return "end of input".to_string();
    };
    if c.is_alphanumeric() || c == '_' {
        let word: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '.')
            .take(24)
            .collect();
        format!("`{word}`")
    } else {
        format!("`{c}`")
    }
}
