//! The language's constructs, end to end: parameters and defaults, expressions, `repeat`, `let`,
//! labels, docs, residuals, and Rust-token compatibility.

use octconv_spec::{check_text, Model};
use std::str::FromStr;

fn model(text: &str) -> Model {
    let c = check_text("t.oct", text, None);
    assert!(c.ok(), "{}", c.render_diagnostics(false));
    c.model.unwrap()
}

fn names(m: &Model) -> Vec<String> {
    m.layers.iter().map(|l| l.name.clone()).collect()
}

#[test]
fn repeat_with_an_index_let_and_if() {
    let m = model(
        "model m(n: int = 3) {
            input [4, 8, 8];
            let base = 2 * 4;
            repeat i in 0..n {
                conv(base + i * (if i % 2 == 0 { 1 } else { 10 }), kernel = 1);
            }
            repeat 2 { relu(); }
            global_avg_pool();
        }",
    );
    let outs: Vec<usize> = m
        .layers
        .iter()
        .filter(|l| l.op.kind() == "conv")
        .map(|l| l.output.channels())
        .collect();
    assert_eq!(outs, [8, 18, 10]);
    assert_eq!(names(&m)[4..6], ["relu0", "relu1"]);
}

#[test]
fn expressions_follow_rust_precedence_and_integer_division() {
    let m = model(
        "model m() {
            input [3, 8, 8];
            conv(2 + 3 * 4 - 10 / 3 % 2, kernel = 1);   // 2 + 12 - (3 % 2) = 13
            conv(int(0.75 * 10) + min(3, 1) + max(1, 2, 3) - abs(-2) + len([1, 2]), kernel = 1);  // 7 + 1 + 3 - 2 + 2
            conv(if 1 < 2 && !(2 >= 3) || false { floor(2.9) + ceil(0.1) + round(2.5) } else { 0 }, kernel = 1);
            global_avg_pool();
        }",
    );
    let outs: Vec<usize> = m
        .layers
        .iter()
        .filter(|l| l.op.kind() == "conv")
        .map(|l| l.output.channels())
        .collect();
    assert_eq!(outs, [13, 11, 6]);
}

#[test]
fn defaults_see_earlier_parameters_and_types_are_checked() {
    let text = "model m(c: int = 4, d: int = c * 2, a: [float; 2] = [0.5, 0]) {
        input [3, 8, 8];
        octconv(d, kernel = 1, alpha = a[0]);
        octconv(c, kernel = 1, alpha = a[1]);
        global_avg_pool();
    }";
    let m = model(text);
    assert_eq!(m.output.channels(), 4);
    assert_eq!(
        m.args
            .iter()
            .map(|a| format!("{}={}", a.name, a.value))
            .collect::<Vec<_>>(),
        ["c=4", "d=8", "a=[0.5, 0.0]"]
    );
    let c = check_text("t.oct", text, Some("m(a = [0.5])"));
    assert!(!c.ok());
    assert!(
        c.diagnostics[0]
            .message
            .contains("expected a list of 2 elements, found 1"),
        "{}",
        c.diagnostics[0].message
    );
}

#[test]
fn positional_named_and_trailing_commas() {
    let m = model("model m() { input [3, 8, 8]; conv(16, 3, 1, 1, 1, false,); global_avg_pool(); linear(10, bias = false,); }");
    assert_eq!(m.params(), 16 * 3 * 9 + 16 * 10);
}

#[test]
fn labels_name_layers_and_blocks() {
    let m = model(
        "block unit(c: int) { conv(c, kernel = 3) as conv; bn(); relu(); }
         model m() {
            input [3, 8, 8];
            unit(8) as stem;
            unit(8);
            unit(8);
            global_avg_pool() as pool;
         }",
    );
    assert_eq!(
        names(&m),
        [
            "input",
            "stem.conv",
            "stem.bn0",
            "stem.relu0",
            "unit0.conv",
            "unit0.bn0",
            "unit0.relu0",
            "unit1.conv",
            "unit1.bn0",
            "unit1.relu0",
            "pool"
        ]
    );
    let c = check_text(
        "t.oct",
        "model m() { input [3, 8, 8]; relu() as a; relu() as a; global_avg_pool(); }",
        None,
    );
    assert_eq!(c.diagnostics[0].message, "layer name `a` is used twice");
}

#[test]
fn docs_comments_and_doc_attributes() {
    let text = "/* a /* nested */ comment */
        //! inner comment, ignored
        /// Tiny model.
        #[doc = \" Second line.\"]
        model m(
            /// width
            c: int = 8,
        ) {
            //// four slashes: a plain comment
            input [3, 8, 8]; // trailing
            /// a doc comment before a statement
            conv(c, kernel = 3);
            global_avg_pool();
            /// trailing doc
        }";
    let m = model(text);
    assert_eq!(m.docs, ["Tiny model.", "Second line."]);
}

#[test]
fn split_and_merge_semantics() {
    let m =
        model("model m() { input [10, 8, 8]; split(alpha = 0.3); merge(); global_avg_pool(); }");
    assert_eq!(
        m.layers[1].output.to_string(),
        "an octave pair (high [7, 8, 8], low [3, 4, 4])"
    );
    assert_eq!(m.layers[2].output.to_string(), "[10, 8, 8]");
    // At α = 0 split and merge are identities on a single-frequency tensor.
    let m = model("model m() { input [10, 8, 8]; split(alpha = 0); merge(); global_avg_pool(); }");
    assert_eq!(m.layers[2].output.to_string(), "[10, 8, 8]");
}

#[test]
fn pooling_keeps_an_octave_pair_consistent() {
    let m = model("model m() { input [8, 16, 16]; split(alpha = 0.5); avg_pool(); max_pool(kernel = 2); merge(); global_avg_pool(); }");
    assert_eq!(
        m.layers[3].output.to_string(),
        "an octave pair (high [4, 4, 4], low [4, 2, 2])"
    );
    let c = check_text("t.oct", "model m() { input [8, 12, 12]; split(alpha = 0.5); avg_pool(); avg_pool(); merge(); global_avg_pool(); }", None);
    assert_eq!(c.diagnostics[0].kind, octconv_spec::DiagKind::Divisibility);
}

#[test]
fn several_models_per_file_and_model_calls() {
    let text = "model a(c: int = 8) { input [3, 8, 8]; conv(c, kernel = 3); global_avg_pool(); }
                model b() { input [3, 16, 16]; flatten(); linear(2); }";
    let c = check_text("t.oct", text, Some("a(c = 32)"));
    assert_eq!(c.model.unwrap().output.channels(), 32);
    let c = check_text("t.oct", text, Some("b"));
    assert_eq!(c.model.unwrap().layers[1].output.channels(), 3 * 16 * 16);
}

#[test]
fn builtin_specs_and_the_language_are_valid_rust_tokens() {
    for (name, text) in octconv_spec::builtins::BUILTIN_FILES {
        proc_macro2::TokenStream::from_str(text)
            .unwrap_or_else(|e| panic!("{name}.oct is not Rust tokens: {e}"));
    }
    let sample = "model m(a: [float; 3] = [0.25, 0.5, 0.75]) { input [3, 8, 8]; repeat i in 0..3 { octconv(8, kernel = 3, alpha = a[i]); } residual { relu(); } shortcut { bn(); } merge(); expect [8, 8, 8]; global_avg_pool(); }";
    proc_macro2::TokenStream::from_str(sample).unwrap();
    assert!(check_text("t.oct", sample, None).ok());
}

#[test]
fn builtins_can_be_extended_from_user_files() {
    let text = "use \"builtin:wrn\";
        model small(k: int = 2) {
            input [3, 16, 16];
            octconv(16, kernel = 3, alpha = 0.25);
            wide(16 * k, alpha = 0.25);
            wide(32 * k, stride = 2, alpha = 0.25);
            bn(); relu(); merge();
            expect [32 * k, 8, 8];
            global_avg_pool(); linear(10);
        }";
    let c = check_text("t.oct", text, Some("small"));
    assert!(c.ok(), "{}", c.render_diagnostics(false));
}
