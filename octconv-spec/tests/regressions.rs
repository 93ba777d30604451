//! Regression tests for problems found in review: hangs, stack overflows, overflowing arithmetic,
//! silent failures, name collisions and split drift.

use octconv_spec::{check, check_builtin, check_text, CheckRequest, DiagKind, SpecInput};
use std::time::Instant;

fn kinds(text: &str) -> Vec<DiagKind> {
    let c = check_text("r.oct", text, None);
    c.diagnostics
        .iter()
        .filter(|d| d.is_error())
        .map(|d| d.kind)
        .collect()
}

#[test]
fn empty_nested_repeats_hit_the_step_limit_instead_of_hanging() {
    let t = Instant::now();
    let k = kinds("model m() { input [3, 8, 8]; repeat 100000 { repeat 100000 { } } conv(4, kernel = 3); global_avg_pool(); }");
    assert_eq!(k, [DiagKind::Limit]);
    assert!(t.elapsed().as_secs() < 20, "took {:?}", t.elapsed());
}

#[test]
fn long_else_if_chains_are_a_limit_error_not_a_stack_overflow() {
    let chain = vec!["if true { 1 } else"; 2000].join(" ");
    let k = kinds(&format!(
        "model m() {{ input [3, 8, 8]; let x = {chain} {{ 1 }}; global_avg_pool(); }}"
    ));
    assert_eq!(k, [DiagKind::Limit]);
    // A short chain is fine.
    let chain = vec!["if false { 1 } else"; 20].join(" ");
    assert!(kinds(&format!(
        "model m() {{ input [3, 8, 8]; conv({chain} {{ 4 }}, kernel = 1); global_avg_pool(); }}"
    ))
    .is_empty());
}

#[test]
fn nested_and_exploding_list_values_are_limited() {
    let nest = "let a = [a];\n".repeat(30);
    let k = kinds(&format!(
        "model m() {{ input [3, 8, 8]; let a = 0;\n{nest} global_avg_pool(); }}"
    ));
    assert!(
        !k.is_empty() && k.iter().all(|k| *k == DiagKind::Limit),
        "{k:?}"
    );
    let grow = "let a = [a, a, a, a, a, a, a, a, a, a];\n".repeat(10);
    let t = Instant::now();
    let k = kinds(&format!(
        "model m() {{ input [3, 8, 8]; let a = 1;\n{grow} global_avg_pool(); }}"
    ));
    assert!(
        !k.is_empty() && k.iter().all(|k| *k == DiagKind::Limit),
        "{k:?}"
    );
    assert!(t.elapsed().as_secs() < 5);
}

#[test]
fn deep_dynamic_nesting_is_a_limit_error() {
    // 60 blocks, each nesting 40 `repeat 1` bodies around the call of the next: within the bracket and
    // call-depth limits, but far beyond the dynamic nesting limit.
    let mut text = String::from("block b60() { relu(); }\n");
    for i in (0..60).rev() {
        text.push_str(&format!(
            "block b{i}() {{ {} b{}(); {} }}\n",
            "repeat 1 { ".repeat(40),
            i + 1,
            "} ".repeat(40)
        ));
    }
    text.push_str("model m() { input [3, 8, 8]; b0(); global_avg_pool(); }\n");
    assert_eq!(kinds(&text), [DiagKind::Limit]);
}

#[test]
fn huge_sizes_and_costs_are_errors_not_overflows() {
    assert_eq!(kinds("model m() { input [3, 8, 8]; conv(16777216, kernel = 1, padding = 16777216); global_avg_pool(); }"), [DiagKind::Limit]);
    assert_eq!(
        kinds("model m() { input [16777216, 256, 128]; conv(16777216, kernel = 1); conv(16777216, kernel = 1); global_avg_pool(); }"),
        [DiagKind::Limit]
    );
}

#[test]
fn a_huge_file_starting_with_a_multibyte_character_renders() {
    let text = format!("é{}", " ".repeat(4 << 20));
    let c = check_text("big.oct", &text, None);
    assert_eq!(c.diagnostics[0].kind, DiagKind::Limit);
    let _ = c.render_diagnostics(false);
    // A byte-order mark is skipped, not a syntax error.
    assert!(check_text(
        "bom.oct",
        "\u{feff}model m() { input [3, 8, 8]; global_avg_pool(); }",
        None
    )
    .ok());
}

#[test]
fn many_errors_are_capped_and_deduplicated_quickly() {
    let t = Instant::now();
    let c = check_text("e.oct", "model m() { input [3, 8, 8]; repeat i in 0..40000 { let x = [0][i]; } global_avg_pool(); }", None);
    assert!(t.elapsed().as_secs() < 10, "took {:?}", t.elapsed());
    assert_eq!(c.diagnostics.len(), octconv_spec::diag::MAX_DIAGNOSTICS);
    assert!(c.suppressed > 39_000);
    assert!(c
        .render_diagnostics(false)
        .contains("more error(s) not shown"));
}

#[test]
fn more_than_the_cap_of_set_errors_are_counted_in_the_more_line_and_the_total() {
    // `--set` errors are merged with the program's diagnostics; the merge once dropped the count of
    // those beyond the cap.
    let sets: Vec<String> = (0..150).map(|i| format!("{i} = oops")).collect();
    let c = check(&CheckRequest {
        spec: SpecInput::from_arg("wrn(n = 1, k = 1)"),
        model: None,
        sets: &sets,
    });
    assert_eq!(c.diagnostics.len(), octconv_spec::diag::MAX_DIAGNOSTICS);
    assert_eq!(c.suppressed, 50);
    let text = c.render_diagnostics(false);
    assert!(
        text.contains("note: 50 more error(s) not shown\nerror: spec is invalid: 150 errors\n"),
        "{}",
        &text[text.len().saturating_sub(300)..]
    );
}

#[test]
fn default_alpha_keeps_the_declared_split_and_depthwise_keeps_channels_exactly() {
    // 0.295 · 100 = 29 low; a depthwise layer must keep 71 / 29 (the realised ratio 0.29 would give 28).
    let c = check_text("d.oct", "model m() { input [3, 32, 32]; octconv(100, kernel = 3, alpha = 0.295); octconv(kernel = 3, depthwise = true); octconv(100, kernel = 3); merge(); }", None);
    assert!(c.ok(), "{}", c.render_diagnostics(false));
    let m = c.model.unwrap();
    for l in &m.layers[1..4] {
        assert_eq!(l.output.split_channels(), Some((71, 29)), "{}", l.name);
    }
    // The default α_out of a wider layer is the declared α: int(0.3 · 32) = 9, not 32 · 4 / 16 = 8.
    let c = check_text("d.oct", "model m() { input [3, 32, 32]; octconv(16, kernel = 3, alpha = 0.3); octconv(32, kernel = 3); merge(); }", None);
    assert_eq!(
        c.model.unwrap().layers[2].output.split_channels(),
        Some((23, 9))
    );
    assert!(check_builtin("mobilenet_v1(width = 0.14, alpha = 0.4)").ok());
}

#[test]
fn input_inside_a_residual_is_reported() {
    for text in [
        "model m() { residual { input [3, 8, 8]; } conv(4, kernel = 3); }",
        "model m() { residual { input [3, 8, 8]; conv(4, kernel = 3); } conv(4, kernel = 3); }",
        "model m() { repeat 1 { input [3, 8, 8]; } relu(); }",
    ] {
        let c = check_text("i.oct", text, None);
        assert!(!c.ok());
        assert!(
            c.diagnostics.iter().any(|d| d
                .message
                .starts_with("`input` must be a top-level statement")),
            "{text}: {}",
            c.render_diagnostics(false)
        );
    }
    let c = check_text(
        "i.oct",
        "model m() { relu(); input [3, 8, 8]; global_avg_pool(); }",
        None,
    );
    assert_eq!(c.diagnostics.len(), 1, "{}", c.render_diagnostics(false));
}

#[test]
fn automatic_names_of_blocks_ending_in_digits_do_not_collide() {
    let c = check_text("n.oct", "block b() { relu(); } block b1() { relu(); } model m() { input [3, 8, 8]; repeat 11 { b(); } b1(); global_avg_pool(); }", None);
    assert!(c.ok(), "{}", c.render_diagnostics(false));
    let names: Vec<_> = c
        .model
        .unwrap()
        .layers
        .iter()
        .map(|l| l.name.clone())
        .collect();
    assert!(
        names.contains(&"b10.relu0".to_string()) && names.contains(&"b1_0.relu0".to_string()),
        "{names:?}"
    );
}

#[test]
fn label_collisions_point_at_both_places() {
    let c = check_text("n.oct", "model m() {\n    input [3, 8, 8];\n    relu() as relu1;\n    relu();\n    relu();\n    global_avg_pool();\n}\n", None);
    let out = c.render_diagnostics(false);
    assert_eq!(c.diagnostics.len(), 1, "{out}");
    assert!(
        out.contains("layer name `relu1` is used twice")
            && out.contains("clashes with the automatic name of this layer")
            && out.contains("n.oct:3:5"),
        "{out}"
    );
}

#[test]
fn recursion_cycles_are_reported_once() {
    let c = check_text(
        "r.oct",
        "block a() { b(); } block b() { a(); } model m() { input [3, 8, 8]; global_avg_pool(); }",
        None,
    );
    assert_eq!(
        c.errors_of(DiagKind::Recursion).len(),
        1,
        "{}",
        c.render_diagnostics(false)
    );
}

#[test]
fn model_flag_is_rejected_for_builtin_calls() {
    let c = check(&CheckRequest {
        spec: SpecInput::Builtin("wrn(n = 1, k = 1)"),
        model: Some("resnet"),
        sets: &[],
    });
    assert!(!c.ok());
    assert!(c.diagnostics[0]
        .message
        .contains("`--model` applies to `.oct` files"));
}

#[test]
fn baseline_ignores_pair_expects_and_explains_missing_ratios() {
    let c = check_text("b.oct", "model m() { input [3, 8, 8]; octconv(8, kernel = 3, alpha = 0.5); expect high = [4, 8, 8], low = [4, 4, 4]; merge(); global_avg_pool(); }", None);
    assert!(c.report().unwrap().macs_ratio_vs_alpha0.is_some());
    let c = check_text("b.oct", "model m() { input [3, 8, 8]; relu(); }", None);
    assert!(c
        .report()
        .unwrap()
        .table()
        .contains("n/a (the network has no MACs)"));
}

#[test]
fn expected_token_lists_do_not_leak_literal_internals() {
    let c = check_builtin("wrn(n = 1, k = 1");
    let msg = &c.diagnostics[0].message;
    assert!(
        !msg.contains("`.`") && !msg.contains("`E`") && !msg.contains("`_`"),
        "{msg}"
    );
}
