//! Every diagnostic class: the message, the kind and the line:column it points at.

use octconv_spec::{
    check, check_text, CheckRequest, Checked, DiagKind, Dims, Op, Shape, SpecInput,
};
use std::path::Path;

/// (kind, message, line, column) of every error.
fn errors(c: &Checked) -> Vec<(DiagKind, String, usize, usize)> {
    c.diagnostics
        .iter()
        .filter(|d| d.is_error())
        .map(|d| {
            let (l, col) = d.line_col(&c.sources).unwrap_or((0, 0));
            (d.kind, d.message.clone(), l, col)
        })
        .collect()
}

/// Checks `text` and returns its single error; fails the test if there is not exactly one.
fn one_error(text: &str) -> (DiagKind, String, usize, usize) {
    let c = check_text("test.oct", text, None);
    let e = errors(&c);
    assert_eq!(
        e.len(),
        1,
        "expected exactly one error, got:\n{}",
        c.render_diagnostics(false)
    );
    e.into_iter().next().unwrap()
}

fn rendered(text: &str) -> String {
    check_text("test.oct", text, None).render_diagnostics(false)
}

#[test]
fn syntax_error_names_the_expected_tokens_and_position() {
    let (kind, msg, line, col) = one_error("model m() {\n    input [3, 32, 32]\n    relu();\n}\n");
    assert_eq!(kind, DiagKind::Syntax);
    assert_eq!((line, col), (3, 5), "{msg}");
    assert!(msg.contains("expected") && msg.contains("`;`"), "{msg}");
    assert!(msg.contains("found `relu`"), "{msg}");
}

#[test]
fn syntax_error_on_single_quote_suggests_double_quotes() {
    let out = rendered("use 'a.oct';\n");
    assert!(out.contains("syntax error"), "{out}");
    assert!(out.contains("`\"` for strings"), "{out}");
}

#[test]
fn unknown_layer_suggests_the_closest_name() {
    let text = "model m() {\n    input [3, 8, 8];\n    octcov(8, kernel = 3);\n}\n";
    let (kind, msg, line, col) = one_error(text);
    assert_eq!(kind, DiagKind::UnknownName);
    assert_eq!(msg, "unknown layer or block `octcov`");
    assert_eq!((line, col), (3, 5));
    assert!(rendered(text).contains("help: did you mean `octconv`?"));
}

#[test]
fn unknown_block_suggests_a_user_block() {
    let text =
        "block wide(c: int) { relu(); }\nmodel m() {\n    input [3, 8, 8];\n    wdie(8);\n}\n";
    let (kind, _, line, col) = one_error(text);
    assert_eq!(kind, DiagKind::UnknownName);
    assert_eq!((line, col), (4, 5));
    assert!(rendered(text).contains("did you mean `wide`?"));
}

#[test]
fn unknown_model_suggests_a_builtin() {
    let c = octconv_spec::check_builtin("wnr(n = 2)");
    let e = errors(&c);
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].0, DiagKind::UnknownName);
    assert_eq!(e[0].1, "unknown model `wnr`");
    assert_eq!((e[0].2, e[0].3), (1, 1));
    assert!(c.render_diagnostics(false).contains("did you mean `wrn`?"));
}

#[test]
fn unknown_variable_suggests_a_name_in_scope() {
    let text = "model m(width: int = 8) {\n    input [3, 8, 8];\n    conv(widht, kernel = 3);\n    global_avg_pool();\n}\n";
    let (kind, msg, line, col) = one_error(text);
    assert_eq!(kind, DiagKind::UnknownName);
    assert_eq!(msg, "unknown variable `widht`");
    assert_eq!((line, col), (3, 10));
    assert!(rendered(text).contains("did you mean `width`?"));
}

#[test]
fn unknown_argument_is_reported_at_the_argument_with_a_suggestion() {
    let text =
        "model m() {\n    input [3, 8, 8];\n    conv(8, kernl = 3);\n    global_avg_pool();\n}\n";
    let (kind, msg, line, col) = one_error(text);
    assert_eq!(kind, DiagKind::Argument);
    assert_eq!(msg, "`conv` has no parameter `kernl`");
    assert_eq!((line, col), (3, 13));
    assert!(rendered(text).contains("did you mean `kernel`?"));
}

#[test]
fn missing_argument_names_the_parameter() {
    let (kind, msg, line, col) =
        one_error("model m() {\n    input [3, 8, 8];\n    conv(8);\n    global_avg_pool();\n}\n");
    assert_eq!(kind, DiagKind::Argument);
    assert_eq!(msg, "missing argument `kernel` in the call of `conv`");
    assert_eq!((line, col), (3, 5));
}

#[test]
fn ill_typed_argument_says_what_was_expected() {
    let (kind, msg, line, col) = one_error("model m() {\n    input [3, 8, 8];\n    conv(8, kernel = 1.5);\n    global_avg_pool();\n}\n");
    assert_eq!(kind, DiagKind::Argument);
    assert!(
        msg.starts_with(
            "argument `kernel` of `conv` has the wrong type: expected `int`, found `float`"
        ),
        "{msg}"
    );
    assert_eq!((line, col), (3, 22));
}

#[test]
fn repeated_and_surplus_arguments_are_errors() {
    let c = check_text(
        "t.oct",
        "model m() {\n    input [3, 8, 8];\n    conv(8, 3, kernel = 3);\n    relu(1);\n}\n",
        None,
    );
    let e = errors(&c);
    assert_eq!(e.len(), 2, "{}", c.render_diagnostics(false));
    assert_eq!(e[0].1, "argument `kernel` of `conv` is given twice");
    assert_eq!((e[0].2, e[0].3), (3, 16));
    assert!(e[1].1.contains("`relu` takes 0 argument(s)"), "{}", e[1].1);
}

#[test]
fn duplicate_block_points_at_the_second_definition() {
    let text = "block b() { relu(); }\nblock b() { relu(); }\nmodel m() { input [3, 8, 8]; b(); global_avg_pool(); }\n";
    let (kind, msg, line, col) = one_error(text);
    assert_eq!(kind, DiagKind::Duplicate);
    assert_eq!(msg, "duplicate definition: block `b` is already defined");
    assert_eq!((line, col), (2, 7));
    assert!(rendered(text).contains("first defined here"));
}

#[test]
fn recursive_blocks_are_reported_with_the_cycle() {
    let text = "block a() { b(); }\nblock b() { a(); }\nmodel m() { input [3, 8, 8]; a(); global_avg_pool(); }\n";
    let c = check_text("t.oct", text, None);
    let e = errors(&c);
    assert!(!e.is_empty());
    assert!(e.iter().all(|x| x.0 == DiagKind::Recursion), "{e:?}");
    assert!(
        e.iter()
            .any(|x| x.1 == "recursive block: a → b → a" && (x.2, x.3) == (2, 13)),
        "{e:?}"
    );
}

#[test]
fn builtin_layer_names_cannot_be_redefined() {
    let (kind, msg, ..) =
        one_error("block relu() { bn(); }\nmodel m() { input [3, 8, 8]; global_avg_pool(); }\n");
    assert_eq!(kind, DiagKind::Duplicate);
    assert!(msg.contains("`relu` is a builtin layer"), "{msg}");
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("octconv-spec-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn check_file(p: &Path) -> Checked {
    check(&CheckRequest {
        spec: SpecInput::File(p),
        model: None,
        sets: &[],
    })
}

#[test]
fn include_cycle_is_an_error_naming_the_chain() {
    let d = temp_dir("cycle");
    std::fs::write(
        d.join("a.oct"),
        "use \"b.oct\";\nmodel m() { input [3, 8, 8]; global_avg_pool(); }\n",
    )
    .unwrap();
    std::fs::write(
        d.join("b.oct"),
        "// b\nuse \"a.oct\";\nblock x() { relu(); }\n",
    )
    .unwrap();
    let c = check_file(&d.join("a.oct"));
    let e = errors(&c);
    assert_eq!(e.len(), 1, "{}", c.render_diagnostics(false));
    assert_eq!(e[0].0, DiagKind::Include);
    assert!(
        e[0].1.starts_with("include cycle: ")
            && e[0].1.contains("a.oct → ")
            && e[0].1.contains("b.oct → "),
        "{}",
        e[0].1
    );
    assert_eq!((e[0].2, e[0].3), (2, 5));
}

#[test]
fn diamond_includes_are_fine_and_relative_to_the_including_file() {
    let d = temp_dir("diamond");
    std::fs::create_dir_all(d.join("lib")).unwrap();
    std::fs::write(d.join("lib/base.oct"), "block act() { bn(); relu(); }\n").unwrap();
    std::fs::write(
        d.join("lib/one.oct"),
        "use \"base.oct\";\nblock one() { act(); }\n",
    )
    .unwrap();
    std::fs::write(
        d.join("lib/two.oct"),
        "use \"base.oct\";\nblock two() { act(); }\n",
    )
    .unwrap();
    std::fs::write(
        d.join("main.oct"),
        "use \"lib/one.oct\";\nuse \"lib/two.oct\";\nmodel m() { input [3, 8, 8]; one(); two(); global_avg_pool(); }\n",
    )
    .unwrap();
    let c = check_file(&d.join("main.oct"));
    assert!(c.ok(), "{}", c.render_diagnostics(false));
    let names: Vec<_> = c
        .model
        .unwrap()
        .layers
        .iter()
        .map(|l| l.name.clone())
        .collect();
    assert_eq!(
        names,
        [
            "input",
            "one0.act0.bn0",
            "one0.act0.relu0",
            "two0.act0.bn0",
            "two0.act0.relu0",
            "global_avg_pool0"
        ]
    );
}

#[test]
fn missing_include_points_at_the_path_literal() {
    let d = temp_dir("missing");
    std::fs::write(
        d.join("main.oct"),
        "use \"nope.oct\";\nmodel m() { input [3, 8, 8]; global_avg_pool(); }\n",
    )
    .unwrap();
    let c = check_file(&d.join("main.oct"));
    let e = errors(&c);
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].0, DiagKind::Include);
    assert!(
        e[0].1.starts_with("cannot include `nope.oct`"),
        "{}",
        e[0].1
    );
    assert_eq!((e[0].2, e[0].3), (1, 5));
}

#[test]
fn builtin_files_can_be_included() {
    let text = "use \"builtin:wrn\";\nmodel m() { input [3, 8, 8]; octconv(16, kernel = 3, alpha = 0.5); wide(16, alpha = 0.5); merge(); global_avg_pool(); }\n";
    let c = check_text("t.oct", text, Some("m"));
    assert!(c.ok(), "{}", c.render_diagnostics(false));
}

const HEAD: &str = "model m(a: float = 0.25) {\n    input [3, 32, 32];\n";

#[test]
fn alpha_out_of_range_points_at_the_argument() {
    let (kind, msg, line, col) = one_error(&format!(
        "{HEAD}    octconv(16, kernel = 3, alpha = 1.5);\n    merge();\n}}\n"
    ));
    assert_eq!(kind, DiagKind::AlphaRange);
    assert_eq!(
        msg,
        "α out of range: `alpha` of `octconv` is 1.5, but α must lie in [0, 1]"
    );
    assert_eq!((line, col), (3, 29));
}

#[test]
fn alpha_out_of_range_from_a_model_argument_shows_where_it_was_written() {
    let c = check(&CheckRequest {
        spec: SpecInput::Builtin("wrn(n = 1, k = 1, alpha = -0.5)"),
        model: None,
        sets: &[],
    });
    let e = errors(&c);
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].0, DiagKind::AlphaRange);
    let out = c.render_diagnostics(false);
    assert!(out.contains("<command line>:1:27"), "{out}");
    assert!(out.contains("alpha = -0.5 comes from here"), "{out}");
}

#[test]
fn empty_branch_is_an_error() {
    let (kind, msg, line, col) = one_error(&format!(
        "{HEAD}    octconv(3, kernel = 3, alpha = a);\n    merge();\n}}\n"
    ));
    assert_eq!(kind, DiagKind::EmptyBranch);
    assert_eq!(msg, "empty branch: alpha = 0.25 leaves the low branch of octconv(3) with no channels (high 3 / low 0)");
    assert_eq!((line, col), (3, 28));
}

#[test]
fn empty_branch_of_split_is_an_error() {
    let (kind, msg, ..) =
        one_error("model m() {\n    input [3, 8, 8];\n    split(alpha = 0.2);\n    merge();\n}\n");
    assert_eq!(kind, DiagKind::EmptyBranch);
    assert_eq!(msg, "empty branch: split(alpha = 0.2) of 3 channels leaves the low branch empty (high 3 / low 0)");
}

#[test]
fn alpha_in_mismatch_is_an_error() {
    let text = format!("{HEAD}    octconv(16, kernel = 3, alpha = 0.25);\n    octconv(16, kernel = 3, alpha_in = 0.5);\n    merge();\n}}\n");
    let (kind, msg, line, col) = one_error(&text);
    assert_eq!(kind, DiagKind::AlphaMismatch);
    assert!(msg.starts_with("α_in mismatch: octconv declares alpha_in = 0.5 (high 8 / low 8), but its input is split high 12 / low 4"), "{msg}");
    assert_eq!((line, col), (4, 29));
}

#[test]
fn stride_on_a_size_not_divisible_is_an_error() {
    let text = "model m() {\n    input [3, 30, 30];\n    octconv(16, kernel = 3, alpha = 0.5, stride = 2);\n    merge();\n}\n";
    let (kind, msg, line, col) = one_error(text);
    assert_eq!(kind, DiagKind::Divisibility);
    assert!(
        msg.contains("size 30×30: it must be divisible by 4"),
        "{msg}"
    );
    assert_eq!((line, col), (3, 5));
}

#[test]
fn split_of_an_odd_size_is_an_error() {
    let (kind, msg, ..) =
        one_error("model m() {\n    input [8, 7, 7];\n    split(alpha = 0.5);\n    merge();\n}\n");
    assert_eq!(kind, DiagKind::Divisibility);
    assert!(msg.contains("7×7"), "{msg}");
}

#[test]
fn kernel_larger_than_the_low_branch_is_an_error() {
    let text = "model m() {\n    input [3, 8, 8];\n    octconv(16, kernel = 5, alpha = 0.5);\n    merge();\n}\n";
    let (kind, msg, line, col) = one_error(text);
    assert_eq!(kind, DiagKind::KernelTooLarge);
    assert_eq!(
        msg,
        "kernel 5×5 is larger than the 4×4 feature map of the H→L path"
    );
    assert_eq!((line, col), (3, 5));
}

#[test]
fn residual_mismatch_with_an_explicit_shortcut() {
    let text = "model m() {\n    input [8, 8, 8];\n    residual {\n        conv(16, kernel = 3);\n    } shortcut {\n        conv(8, kernel = 1);\n    }\n    global_avg_pool();\n}\n";
    let (kind, msg, line, col) = one_error(text);
    assert_eq!(kind, DiagKind::ResidualMismatch);
    assert_eq!(
        msg,
        "residual mismatch: the main branch gives [16, 8, 8], but the shortcut gives [8, 8, 8]"
    );
    assert_eq!((line, col), (3, 5));
}

#[test]
fn residual_without_a_possible_projection() {
    let text = "model m() {\n    input [8, 16, 16];\n    residual {\n        max_pool(kernel = 4);\n    }\n    global_avg_pool();\n}\n";
    let (kind, msg, ..) = one_error(text);
    assert_eq!(kind, DiagKind::ResidualMismatch);
    assert!(msg.contains("the size changes from 16×16 to 4×4"), "{msg}");
}

#[test]
fn residual_projection_is_added_when_width_stride_or_alpha_change() {
    let text = "model m() {\n    input [3, 32, 32];\n    octconv(16, kernel = 3, alpha = 0.25);\n    residual { octconv(32, kernel = 3, stride = 2, alpha = 0.5); }\n    merge();\n    global_avg_pool();\n}\n";
    let c = check_text("t.oct", text, None);
    assert!(c.ok(), "{}", c.render_diagnostics(false));
    let m = c.model.unwrap();
    let proj = m
        .layers
        .iter()
        .find(|l| l.name == "res0.shortcut.octconv0")
        .expect("projection");
    match proj.op {
        octconv_spec::Op::OctConv(o) => {
            assert_eq!(
                (o.in_h, o.in_l, o.out_h, o.out_l, o.kernel, o.stride),
                (12, 4, 16, 16, 1, 2)
            )
        }
        ref other => panic!("projection is {other:?}"),
    }
    let add = m.layers.iter().find(|l| l.name == "res0.add").unwrap();
    assert_eq!(add.inputs.len(), 2);
}

#[test]
fn failed_expect_shows_both_shapes() {
    let text = "model m() {\n    input [3, 8, 8];\n    conv(16, kernel = 3);\n    expect [16, 4, 4];\n    global_avg_pool();\n}\n";
    let (kind, msg, line, col) = one_error(text);
    assert_eq!(kind, DiagKind::Expect);
    assert_eq!(msg, "expect failed: expected [16, 4, 4], found [16, 8, 8]");
    assert_eq!((line, col), (4, 5));
}

#[test]
fn expect_on_an_octave_pair() {
    let ok = "model m() {\n    input [3, 8, 8];\n    octconv(16, kernel = 3, alpha = 0.25);\n    expect high = [12, 8, 8], low = [4, 4, 4];\n    merge();\n}\n";
    assert!(check_text("t.oct", ok, None).ok());
    let bad = ok.replace("low = [4, 4, 4]", "low = [4, 8, 8]");
    let (kind, ..) = one_error(&bad);
    assert_eq!(kind, DiagKind::Expect);
}

#[test]
fn failed_require_shows_the_message_and_the_values() {
    let c = octconv_spec::check_builtin("wrn(n = 0)");
    let e = errors(&c);
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].0, DiagKind::Require);
    assert_eq!(
        e[0].1,
        "requirement failed: n is blocks per stage; depth = 6n + 4"
    );
    assert_eq!((e[0].2, e[0].3), (31, 13));
    assert!(c.render_diagnostics(false).contains("note: with n = 0"));
}

#[test]
fn invalid_head_global_avg_pool_on_a_pair() {
    let text = "model m() {\n    input [3, 32, 32];\n    octconv(640, kernel = 3, alpha = 0.25, stride = 2);\n    octconv(640, kernel = 3, stride = 2);\n    global_avg_pool();\n    linear(10);\n}\n";
    let (kind, msg, line, col) = one_error(text);
    assert_eq!(kind, DiagKind::InvalidHead);
    assert_eq!(
        msg,
        "invalid head: global_avg_pool needs a single-frequency tensor, but its input is an octave pair (high [480, 8, 8], low [160, 4, 4])"
    );
    assert_eq!((line, col), (5, 5));
    let out = rendered(text);
    assert!(
        out.contains("help: insert `merge();` before the pooling"),
        "{out}"
    );
    assert!(out.contains("note: `merge();` followed directly by pooling computes the same function as per-branch pooling; to pool per branch on purpose write `global_avg_pool(per_branch = true)`"), "{out}");
    // What is known, not a claim credited to the paper (issue #15).
    assert!(out.contains("note: with each branch pooled and fed straight to the classifier, the seed's author saw accuracy plateau or training accuracy fall from about 80 % to 50 %; the fix was a learned mixing layer before the pooling: `merge(to = low); conv(c, kernel = 1, bias = true); bn(); relu();`"), "{out}");
    assert!(!out.contains("paper"), "{out}");
}

#[test]
fn invalid_head_flatten_and_linear_on_a_pair() {
    let base = "model m() {\n    input [3, 8, 8];\n    octconv(16, kernel = 3, alpha = 0.5);\n";
    let (kind, msg, ..) = one_error(&format!("{base}    flatten();\n    linear(10);\n}}\n"));
    assert_eq!(kind, DiagKind::InvalidHead);
    assert!(
        msg.starts_with("invalid head: flatten needs a single-frequency tensor"),
        "{msg}"
    );
    let (kind, msg, ..) = one_error(&format!("{base}    linear(10);\n}}\n"));
    assert_eq!(kind, DiagKind::InvalidHead);
    assert!(
        msg.starts_with("invalid head: linear needs a single-frequency tensor"),
        "{msg}"
    );
}

#[test]
fn linear_on_a_feature_map_is_an_error() {
    let (kind, msg, line, col) =
        one_error("model m() {\n    input [3, 8, 8];\n    linear(10);\n}\n");
    assert_eq!(kind, DiagKind::LayerInput);
    assert_eq!(
        msg,
        "linear needs a flat vector, but its input is the feature map [3, 8, 8]"
    );
    assert_eq!((line, col), (3, 5));
    assert!(
        rendered("model m() {\n    input [3, 8, 8];\n    linear(10);\n}\n")
            .contains("insert `global_avg_pool();` or `flatten();`")
    );
}

#[test]
fn model_ending_on_an_octave_pair_is_an_invalid_head() {
    let (kind, msg, line, col) = one_error(
        "model m() {\n    input [3, 8, 8];\n    octconv(16, kernel = 3, alpha = 0.5);\n}\n",
    );
    assert_eq!(kind, DiagKind::InvalidHead);
    assert_eq!(
        msg,
        "invalid head: model `m` ends on an octave pair (high [8, 8, 8], low [8, 4, 4])"
    );
    assert_eq!((line, col), (4, 1));
}

#[test]
fn per_branch_head_is_an_explicit_opt_in() {
    let text = "model m() {\n    input [3, 8, 8];\n    octconv(16, kernel = 3, alpha = 0.25);\n    global_avg_pool(per_branch = true);\n    linear(10);\n}\n";
    let c = check_text("t.oct", text, None);
    assert!(c.ok(), "{}", c.render_diagnostics(false));
    assert_eq!(
        c.model.unwrap().output,
        octconv_spec::Shape::Flat { features: 10 }
    );
}

#[test]
fn conv_on_a_pair_says_to_use_octconv_or_merge() {
    let (kind, msg, ..) = one_error("model m() {\n    input [3, 8, 8];\n    split(alpha = 0.5);\n    conv(8, kernel = 3);\n    global_avg_pool();\n}\n");
    assert_eq!(kind, DiagKind::LayerInput);
    assert!(
        msg.starts_with("conv needs a single-frequency tensor, but its input is an octave pair"),
        "{msg}"
    );
}

#[test]
fn structural_errors_input_placement() {
    let (kind, msg, ..) = one_error("model m() {\n    relu();\n}\n");
    assert_eq!(kind, DiagKind::Structure);
    assert_eq!(msg, "layer `relu` comes before the model's `input`");
    let (kind, msg, ..) = one_error(
        "block b() { input [3, 8, 8]; }\nmodel m() {\n    input [3, 8, 8];\n    b();\n}\n",
    );
    assert_eq!(kind, DiagKind::Structure);
    assert_eq!(msg, "`input` must be a top-level statement of a model, not inside a block, `repeat` or `residual`");
    let (kind, msg, ..) = one_error("model m() {\n    relu;\n}\n");
    assert_eq!(kind, DiagKind::Syntax, "{msg}");
    let (kind, msg, ..) = one_error("model m() { }\n");
    assert_eq!(kind, DiagKind::Structure);
    assert_eq!(msg, "model `m` has no `input` statement");
}

#[test]
fn errors_are_collected_not_first_only() {
    let text = "model m() {\n    input [3, 8, 8];\n    conv(8, kernl = 3);\n}\nmodel n() {\n    input [3, 8, 8];\n    linear(10);\n}\n";
    // Model `m` has an error; `n` too, but only the chosen model is elaborated.
    let c = check_text("t.oct", text, Some("m"));
    assert_eq!(errors(&c).len(), 1);
    let text = "model m(a: float = 2.0) {\n    input [3, 8, 8];\n    residual { conv(8, kernel = 3, stride = 2); } shortcut { relu(); }\n    dropout(p = a);\n    bn(eps = -1.0);\n    expect [1];\n    gobal_avg_pool();\n}\n";
    let c = check_text("t.oct", text, None);
    let kinds: Vec<_> = errors(&c).into_iter().map(|e| (e.0, e.2)).collect();
    assert_eq!(
        kinds,
        [
            (DiagKind::ResidualMismatch, 3),
            (DiagKind::Structure, 4),
            (DiagKind::Structure, 5),
            (DiagKind::Expect, 6),
            (DiagKind::UnknownName, 7)
        ],
        "{}",
        c.render_diagnostics(false)
    );
}

#[test]
fn errors_inside_blocks_show_the_call_site() {
    let text = "block b(a: float) {\n    octconv(8, kernel = 3, alpha = a);\n}\nmodel m() {\n    input [3, 8, 8];\n    b(a = 3.0);\n    merge();\n}\n";
    let c = check_text("t.oct", text, None);
    let e = errors(&c);
    assert_eq!(e.len(), 1);
    assert_eq!((e[0].0, e[0].2), (DiagKind::AlphaRange, 2));
    let out = c.render_diagnostics(false);
    assert!(out.contains("in block `b` called here"), "{out}");
    assert!(
        out.contains("alpha = 3 comes from here") || out.contains("alpha = 3.0 comes from here"),
        "{out}"
    );
}

#[test]
fn set_overrides_and_model_selection_errors() {
    let text = "model a(c: int = 8) { input [3, 8, 8]; conv(c, kernel = 3); global_avg_pool(); }\nmodel b() { input [3, 8, 8]; global_avg_pool(); }\n";
    let c = check(&CheckRequest {
        spec: SpecInput::Text {
            name: "t.oct",
            text,
        },
        model: None,
        sets: &[],
    });
    assert_eq!(errors(&c)[0].1, "the spec defines several models: a, b");
    let sets = vec!["c=16".to_string()];
    let c = check(&CheckRequest {
        spec: SpecInput::Text {
            name: "t.oct",
            text,
        },
        model: Some("a"),
        sets: &sets,
    });
    assert!(c.ok());
    assert_eq!(
        c.model.unwrap().output,
        octconv_spec::Shape::Flat { features: 16 }
    );
    let sets = vec!["cc=16".to_string()];
    let c = check(&CheckRequest {
        spec: SpecInput::Text {
            name: "t.oct",
            text,
        },
        model: Some("a"),
        sets: &sets,
    });
    let e = errors(&c);
    assert_eq!(e[0].1, "model `a` has no parameter `cc`");
    assert!(c.render_diagnostics(false).contains("<--set #1>:1:1"));
}

#[test]
fn arithmetic_errors_are_diagnostics_not_panics() {
    for (expr, needle) in [
        ("8 / 0", "division by zero"),
        ("9223372036854775807 + 1", "integer overflow"),
        ("[1, 2][5]", "index 5 is out of range"),
        ("true + 1", "cannot apply `+`"),
        ("foo(1)", "unknown function `foo`"),
    ] {
        let text = format!("model m() {{\n    input [3, 8, 8];\n    conv({expr}, kernel = 3);\n    global_avg_pool();\n}}\n");
        let (_, msg, line, _) = one_error(&text);
        assert!(msg.contains(needle), "{expr}: {msg}");
        assert_eq!(line, 3);
    }
}

#[test]
fn rendered_diagnostic_has_location_caret_and_help() {
    let text = "model m() {\n    input [3, 32, 32];\n    octconv(640, kernel = 3, alpha = 0.25, stride = 2);\n    octconv(640, kernel = 3, stride = 2);\n    global_avg_pool();\n    linear(10);\n}\n";
    let out = rendered(text);
    let expected = "\
error: invalid head: global_avg_pool needs a single-frequency tensor, but its input is an octave pair (high [480, 8, 8], low [160, 4, 4])
 --> test.oct:5:5
  |
5 |     global_avg_pool();
  |     ^^^^^^^^^^^^^^^^^ pooling on an octave pair
  |
  = help: insert `merge();` before the pooling
";
    assert!(out.starts_with(expected), "got:\n{out}");
}

/// The α = 0 baseline reads every α argument as 0, but a `pyramid()` pair keeps its low channels
/// there: a declared `alpha_in` after it must not be reported as a mismatch of the baseline.
#[test]
fn declared_alpha_in_after_a_pyramid_checks_in_the_alpha_zero_baseline() {
    let c = check_text(
        "t.oct",
        "model m(alpha: float = 0.5) { input [4, 8, 8]; pyramid(); octconv(8, kernel = 3, alpha_in = 0.5, alpha = alpha); merge(); }",
        None,
    );
    assert!(c.ok(), "{}", c.render_diagnostics(false));
    assert!(
        c.baseline.is_some(),
        "baseline error: {:?}",
        c.baseline_error
    );
}

/// `downsample = stride` on a layer with a low branch: a structure error at the argument, with the
/// fix; the default (`pool`) and single-branch layers check.
#[test]
fn downsample_stride_on_a_two_branch_octconv_is_an_error_at_the_argument() {
    // The output has a low branch (α_out = 0.25).
    let text = "model m() {\n    input [3, 32, 32];\n    octconv(16, kernel = 3, stride = 2, alpha = 0.25, downsample = \"stride\");\n    merge();\n}\n";
    let (kind, msg, line, col) = one_error(text);
    assert_eq!(kind, DiagKind::Structure);
    assert_eq!(
        msg,
        "downsample = stride needs a single-branch octconv, but this one reads high 3 / low 0 and writes high 12 / low 4 channels"
    );
    assert_eq!((line, col), (3, 55));
    let out = rendered(text);
    assert!(out.contains("only at α = 0"), "{out}");
    assert!(
        out.contains("help: a layer with a low branch always pools before its stride-2 paths"),
        "{out}"
    );
    // The input has a low branch (α_in = 0.25, α_out = 0), with stride 1 too.
    let text = "model m() {\n    input [3, 32, 32];\n    octconv(16, kernel = 3, alpha = 0.25);\n    octconv(16, kernel = 1, alpha = 0, downsample = stride);\n}\n";
    let (kind, msg, line, col) = one_error(text);
    assert_eq!(kind, DiagKind::Structure);
    assert!(
        msg.contains("reads high 12 / low 4 and writes high 16 / low 0"),
        "{msg}"
    );
    assert_eq!((line, col), (4, 40));
    // Where the word comes from a parameter, that place is shown too.
    let text = "block b(strided: bool) {\n    let down = if strided { \"stride\" } else { \"pool\" };\n    octconv(16, kernel = 3, stride = 2, alpha = 0.5, downsample = down);\n}\nmodel m() {\n    input [3, 32, 32];\n    b(true);\n    merge();\n}\n";
    let (kind, ..) = one_error(text);
    assert_eq!(kind, DiagKind::Structure);
    let out = rendered(text);
    assert!(out.contains("downsample = stride comes from here"), "{out}");
}

#[test]
fn downsample_takes_pool_or_stride() {
    let text = "model m() {\n    input [3, 32, 32];\n    octconv(16, kernel = 3, stride = 2, alpha = 0, downsample = conv);\n}\n";
    let (kind, msg, line, col) = one_error(text);
    assert_eq!(kind, DiagKind::Argument);
    assert_eq!(
        msg,
        "`octconv` has no downsample `conv`; use `pool` or `stride`"
    );
    assert_eq!((line, col), (3, 52));
}

/// The default pools (the IR records `pool`); `stride` records `stride` at stride 2 only, and a
/// stride-2 convolution halves odd sides too ((n − 1) / 2 + 1), as torchvision's.
#[test]
fn downsample_default_pools_and_stride_convolves_odd_sizes() {
    use octconv_spec::ir::Downsample;
    let spec = |text: &str| {
        let c = check_text("t.oct", text, None);
        assert!(c.ok(), "{text}: {}", c.render_diagnostics(false));
        let m = c.model.unwrap();
        let l = m.layers.last().unwrap().clone();
        let Op::OctConv(o) = l.op else {
            panic!("{:?}", l.op)
        };
        (o, l.output)
    };
    let (o, out) = spec("model m() { input [3, 32, 32]; octconv(16, kernel = 3, stride = 2); }");
    assert_eq!(o.downsample, Downsample::Pool);
    assert_eq!(out, Shape::Single(Dims::new(16, 16, 16)));
    let (o, out) = spec(
        "model m() { input [3, 32, 32]; octconv(16, kernel = 3, stride = 2, downsample = pool); }",
    );
    assert_eq!(o.downsample, Downsample::Pool);
    assert_eq!(out, Shape::Single(Dims::new(16, 16, 16)));
    let (o, out) = spec(
        "model m() { input [3, 32, 32]; octconv(16, kernel = 3, stride = 2, downsample = stride); }",
    );
    assert_eq!(o.downsample, Downsample::Stride);
    assert!(o.strided_conv());
    assert_eq!(out, Shape::Single(Dims::new(16, 16, 16)));
    // Odd sides: pooling cannot halve them, a stride-2 convolution can.
    let (o, out) = spec(
        "model m() { input [3, 7, 9]; octconv(8, kernel = 1, stride = 2, downsample = \"stride\"); }",
    );
    assert!(o.strided_conv());
    assert_eq!(out, Shape::Single(Dims::new(8, 4, 5)));
    let (kind, ..) =
        one_error("model m() { input [3, 7, 7]; octconv(8, kernel = 1, stride = 2); }");
    assert_eq!(kind, DiagKind::Divisibility);
    // Stride 1: accepted, and nothing to halve.
    let (o, out) =
        spec("model m() { input [3, 7, 7]; octconv(8, kernel = 3, downsample = stride); }");
    assert_eq!(o.downsample, Downsample::Pool);
    assert_eq!(out, Shape::Single(Dims::new(8, 7, 7)));
    // Depthwise and grouped layers may stride.
    let (o, out) = spec(
        "model m() { input [8, 9, 9]; octconv(kernel = 3, stride = 2, depthwise = true, downsample = stride); }",
    );
    assert!(o.strided_conv() && o.depthwise);
    assert_eq!(out, Shape::Single(Dims::new(8, 5, 5)));
}
