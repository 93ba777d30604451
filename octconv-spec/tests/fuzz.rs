//! The checker never panics: arbitrary text, token soup, and mutations of valid specs (the builtins and
//! small models) all end in a result or diagnostics. `OCTCONV_FUZZ_CASES` sets the number of cases per
//! property (default 300; the note of issue #2 reports a run with 20 000).

use octconv_spec::{check, check_builtin, check_text, CheckRequest, SpecInput};
use proptest::prelude::*;
use proptest::test_runner::Config;

fn cases() -> u32 {
    std::env::var("OCTCONV_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300)
}

const TOKENS: &[&str] = &[
    "model",
    "block",
    "use",
    "repeat",
    "in",
    "residual",
    "shortcut",
    "expect",
    "require",
    "input",
    "let",
    "if",
    "else",
    "as",
    "true",
    "false",
    "int",
    "float",
    "bool",
    "high",
    "low",
    "octconv",
    "conv",
    "bn",
    "relu",
    "dropout",
    "avg_pool",
    "max_pool",
    "split",
    "merge",
    "global_avg_pool",
    "flatten",
    "linear",
    "branches",
    "concat",
    "add",
    "scale",
    "upsample",
    "sigmoid",
    "relu6",
    "hardswish",
    "silu",
    "octconv_transpose",
    "to",
    "mode",
    "nearest",
    "enc",
    "wide",
    "wrn",
    "alpha",
    "kernel",
    "stride",
    "groups",
    "depthwise",
    "per_branch",
    "out",
    "n",
    "k",
    "x",
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    ",",
    ";",
    ":",
    "=",
    "==",
    "..",
    "+",
    "-",
    "*",
    "/",
    "%",
    "!",
    "&&",
    "||",
    "<",
    ">=",
    "0",
    "1",
    "2",
    "3",
    "7",
    "16",
    "32",
    "0.25",
    "0.5",
    "1.5",
    "-1",
    "1e3",
    "99999999999999999999",
    "\"blocks.oct\"",
    "\"builtin:wrn\"",
    "///",
    "//",
    "/*",
    "*/",
    "#",
    "'",
    "\n",
];

fn token_soup() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(TOKENS), 0..80).prop_map(|t| t.join(" "))
}

const SMALL: &[&str] = &[
    "model m(a: float = 0.25, c: int = 16) { input [3, 32, 32]; octconv(c, kernel = 3, alpha = a); repeat i in 0..2 { residual { bn(); relu(); octconv(c * (i + 1), kernel = 3, stride = 1 + i, alpha = a); } } merge(); expect [32, 16, 16]; global_avg_pool(); linear(10); }",
    "block b(c: int, s: int = 1) { residual { conv(c, kernel = 3, stride = s); bn(); relu(); } shortcut { conv(c, kernel = 1, stride = s); } }\nmodel m() { input [3, 16, 16]; b(8); b(16, s = 2); split(alpha = 0.5); avg_pool(); merge(); flatten(); linear(2); }",
    "model m(x: [float; 3] = [0.25, 0.5, 0.75]) { input [3, 64, 64]; let w = if x[0] > 0.1 { 8 } else { 4 }; repeat i in 0..3 { octconv(w * 4, kernel = 3, stride = 2, alpha = x[i]); } octconv(8, kernel = 1, alpha = 0); max_pool(kernel = 3, stride = 2, padding = 1); global_avg_pool(); }",
];

/// Graph specs: names, indexed names, joins, branches, upsampling and transposed convolutions.
const GRAPH: &[&str] = &[
    "block d(c: int, s: int = 1) { octconv(c, kernel = 3); bn(); relu(); }\nmodel u(a: float = 0.25) { input [3, 32, 32]; d(8) as enc[0]; repeat i in 1..3 { max_pool(); d(8 * pow(2, i)) as enc[i]; } repeat i in 0..2 { let l = 1 - i; octconv_transpose(8 * pow(2, l), kernel = 2 + i, alpha = a); concat(enc[l]); d(8 * pow(2, l)); } merge(); conv(2, kernel = 1, bias = true); }",
    "model g() { input [8, 16, 16]; split(alpha = 0.5) as x; branches concat { { }, { octconv(4, kernel = 1); relu6(); }, { avg_pool(); upsample(scale = 2, mode = nearest); } } as b; residual { octconv(16, kernel = 3); } as r; add(r); branches scale { { }, { global_avg_pool(per_branch = true); linear(4); relu(); linear(16); sigmoid(); } }; merge(to = low); hardswish(); global_avg_pool(); linear(3); }",
];

fn corpus() -> Vec<&'static str> {
    let mut c: Vec<&str> = octconv_spec::builtins::BUILTIN_FILES
        .iter()
        .map(|(_, t)| *t)
        .collect();
    c.extend(SMALL);
    c.extend(GRAPH);
    c
}

#[derive(Clone, Debug)]
enum Mutation {
    Delete(usize, usize),
    Duplicate(usize, usize),
    Insert(usize, &'static str),
    Number(usize, i64),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1usize..40).prop_map(|(a, n)| Mutation::Delete(a, n)),
        (any::<usize>(), 1usize..60).prop_map(|(a, n)| Mutation::Duplicate(a, n)),
        (any::<usize>(), prop::sample::select(TOKENS)).prop_map(|(a, t)| Mutation::Insert(a, t)),
        (
            any::<usize>(),
            prop_oneof![
                Just(0i64),
                Just(-1),
                Just(1),
                Just(2),
                Just(3),
                Just(100_000),
                Just(i64::MAX),
                any::<i64>()
            ]
        )
            .prop_map(|(a, v)| Mutation::Number(a, v)),
    ]
}

fn boundary(s: &str, i: usize) -> usize {
    let mut i = i % (s.len() + 1);
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn apply(text: &str, muts: &[Mutation]) -> String {
    let mut s = text.to_string();
    for m in muts {
        match *m {
            Mutation::Delete(a, n) => {
                let a = boundary(&s, a);
                let b = boundary(&s, (a + n).min(s.len()));
                s.replace_range(a..b.max(a), "");
            }
            Mutation::Duplicate(a, n) => {
                let a = boundary(&s, a);
                let b = boundary(&s, (a + n).min(s.len())).max(a);
                let piece = s[a..b].to_string();
                s.insert_str(b, &piece);
            }
            Mutation::Insert(a, t) => {
                let a = boundary(&s, a);
                s.insert_str(a, &format!(" {t} "));
            }
            Mutation::Number(a, v) => {
                // Replace the first integer literal at or after `a` with `v`.
                let a = boundary(&s, a);
                if let Some(off) = s[a..].find(|c: char| c.is_ascii_digit()) {
                    let start = a + off;
                    let end = start
                        + s[start..]
                            .find(|c: char| !c.is_ascii_digit())
                            .unwrap_or(s.len() - start);
                    s.replace_range(start..end, &v.to_string());
                }
            }
        }
    }
    s
}

/// Every model of the text, checked: must return, never panic; rendering must not panic either.
fn check_all(text: &str) {
    let c = check_text("fuzz.oct", text, None);
    let _ = c.render_diagnostics(false);
    let mut p = octconv_spec::loader::Program::new();
    p.load_text(
        octconv_spec::source::Origin::Virtual("fuzz.oct".into()),
        text,
    );
    for name in p.model_names() {
        let c = check(&CheckRequest {
            spec: SpecInput::Text {
                name: "fuzz.oct",
                text,
            },
            model: Some(name),
            sets: &[],
        });
        let _ = c.render_diagnostics(true);
        if let Some(r) = c.report() {
            let _ = r.table();
        }
    }
}

proptest! {
    #![proptest_config(Config { cases: cases(), failure_persistence: None, ..Config::default() })]

    #[test]
    fn arbitrary_text_never_panics(s in "\\PC{0,200}") {
        check_all(&s);
        let _ = check_builtin(&s).render_diagnostics(false);
    }

    #[test]
    fn token_soup_never_panics(s in token_soup()) {
        check_all(&s);
        let _ = check_builtin(&s).render_diagnostics(false);
    }

    #[test]
    fn mutated_specs_never_panic(which in 0usize..6, muts in prop::collection::vec(mutation(), 1..6)) {
        let corpus = corpus();
        let text = apply(corpus[which % corpus.len()], &muts);
        check_all(&text);
    }

    #[test]
    fn mutated_builtin_calls_never_panic(which in 0usize..3, muts in prop::collection::vec(mutation(), 1..4)) {
        let calls = ["wrn(n = 2, k = 4, alpha = 0.25)", "resnet(depth = 26, alpha = 0.5)", "mobilenet_v1(width = 0.25, alpha = 0.25)"];
        let call = apply(calls[which], &muts);
        let _ = check_builtin(&call).render_diagnostics(false);
    }
}

#[test]
fn pathological_nesting_is_a_limit_error_not_a_stack_overflow() {
    for text in [
        format!(
            "model m() {{ input [3, 8, 8]; conv({}1{}, kernel = 1); }}",
            "(".repeat(100_000),
            ")".repeat(100_000)
        ),
        format!(
            "model m() {{ input [3, 8, 8]; conv(1{}, kernel = 1); }}",
            " + 1".repeat(100_000)
        ),
        format!(
            "model m() {{ input [3, 8, 8]; conv({}1, kernel = 1); }}",
            "-".repeat(100_000)
        ),
        format!("model m() {{ {} }}", "repeat 1 { ".repeat(10_000)),
        format!("/*{}*/", "/*".repeat(10_000)),
    ] {
        let c = check_text("deep.oct", &text, None);
        assert!(!c.ok());
        let kinds: Vec<_> = c.diagnostics.iter().map(|d| d.kind).collect();
        assert!(
            kinds.contains(&octconv_spec::DiagKind::Limit)
                || kinds.contains(&octconv_spec::DiagKind::Syntax),
            "{kinds:?}"
        );
    }
}

#[test]
fn huge_models_hit_limits_quickly() {
    let c = check_text(
        "big.oct",
        "model m() { input [3, 8, 8]; repeat 100000 { repeat 100000 { relu(); } } }",
        None,
    );
    assert!(
        c.diagnostics
            .iter()
            .any(|d| d.kind == octconv_spec::DiagKind::Limit),
        "{}",
        c.render_diagnostics(false)
    );
    let c = check_text("big.oct", "model m() { input [3, 8, 8]; conv(16777216, kernel = 1); conv(16777216, kernel = 1); global_avg_pool(); }", None);
    assert!(
        c.ok()
            || c.diagnostics
                .iter()
                .any(|d| d.kind == octconv_spec::DiagKind::Limit)
    );
}
