//! Graph specs: value names and their scoping, `concat` / `add` / `scale`, `branches`, `upsample`,
//! `merge(to = low)` and `octconv_transpose`. Every new diagnostic class with its message and
//! position, and costs against hand counts.

use octconv_spec::{check_text, Checked, DiagKind, Layer, Model, Op, Shape};

fn checked(text: &str) -> Model {
    let c = check_text("g.oct", text, None);
    assert!(c.ok(), "{}", c.render_diagnostics(false));
    c.model.unwrap()
}

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

/// The one error of `text`, and the rendered diagnostics.
fn one_error(text: &str) -> ((DiagKind, String, usize, usize), String) {
    let c = check_text("g.oct", text, None);
    let e = errors(&c);
    let out = c.render_diagnostics(false);
    assert_eq!(e.len(), 1, "expected one error:\n{out}");
    (e.into_iter().next().unwrap(), out)
}

fn layer<'a>(m: &'a Model, name: &str) -> &'a Layer {
    m.layers.iter().find(|l| l.name == name).unwrap_or_else(|| {
        panic!(
            "no layer {name} in {:?}",
            m.layers.iter().map(|l| &l.name).collect::<Vec<_>>()
        )
    })
}

#[test]
fn a_concat_skip_joins_pairs_branch_by_branch_and_tracks_the_real_split() {
    let m = checked(
        "model m() {\n  input [16, 8, 8];\n  split(alpha = 0.25) as x;\n  octconv(6, kernel = 1, alpha = 0.5);\n  concat(x) as y;\n  merge();\n}\n",
    );
    let y = layer(&m, "y");
    assert_eq!(y.op, Op::Concat);
    // x: 12 / 4; the octconv: 3 / 3; joined: 15 / 7 (α = 7/22, not floor(0.25 · 22)).
    assert_eq!(y.output, Shape::pair(15, 7, 8, 8));
    assert_eq!(y.inputs, vec![2, 1]);
}

#[test]
fn indexed_names_bind_one_value_per_loop_iteration() {
    let m = checked(
        "model m() {\n  input [4, 8, 8];\n  repeat i in 0..3 { conv(4, kernel = 3) as c[i]; }\n  concat(c[0], c[2]);\n}\n",
    );
    for n in ["c.0", "c.1", "c.2"] {
        layer(&m, n);
    }
    let cat = m.layers.last().unwrap();
    assert_eq!(cat.output, Shape::Single(octconv_spec::Dims::new(12, 8, 8)));
    assert_eq!(cat.inputs, vec![3, 1, 3]);
}

#[test]
fn unknown_value_suggests_a_visible_name() {
    let ((kind, msg, line, col), out) =
        one_error("model m() {\n  input [4, 8, 8];\n  relu() as enc1;\n  concat(enc2);\n}\n");
    assert_eq!(kind, DiagKind::UnknownName);
    assert_eq!(msg, "no value named `enc2`");
    assert_eq!((line, col), (4, 10));
    assert!(out.contains("help: did you mean `enc1`?"), "{out}");
}

#[test]
fn an_index_past_the_bound_ones_lists_them() {
    let ((kind, msg, _, _), out) = one_error(
        "model m() {\n  input [4, 8, 8];\n  repeat i in 0..2 { relu() as r[i]; }\n  concat(r[5]);\n}\n",
    );
    assert_eq!(kind, DiagKind::UnknownName);
    assert_eq!(msg, "no value named `r[5]`");
    assert!(out.contains("note: bound here: r[0], r[1]"), "{out}");
}

#[test]
fn names_are_not_visible_across_blocks_residuals_or_branches() {
    // The caller's name inside a block.
    let ((kind, msg, line, col), out) = one_error(
        "block b() { concat(x); }\nmodel m() {\n  input [4, 8, 8];\n  relu() as x;\n  b();\n}\n",
    );
    assert_eq!(kind, DiagKind::NotVisible);
    assert_eq!(
        msg,
        "value `x` is not visible here: it is bound inside model `m`"
    );
    assert_eq!((line, col), (1, 20));
    assert!(out.contains("bound here"), "{out}");
    // A name from a residual body after it.
    let ((kind, msg, line, _), _) = one_error(
        "model m() {\n  input [4, 8, 8];\n  residual { relu() as inner; }\n  add(inner);\n}\n",
    );
    assert_eq!(kind, DiagKind::NotVisible);
    assert_eq!(
        msg,
        "value `inner` is not visible here: it is bound inside `res0`"
    );
    assert_eq!(line, 4);
    // A name from another branch.
    let ((kind, msg, _, _), _) = one_error(
        "model m() {\n  input [4, 8, 8];\n  branches concat { { relu() as a; }, { concat(a); } }\n}\n",
    );
    assert_eq!(kind, DiagKind::NotVisible);
    assert_eq!(
        msg,
        "value `a` is not visible here: it is bound inside branch 0 of `branches0`"
    );
}

#[test]
fn an_outer_name_is_visible_in_nested_bodies_but_cannot_be_shadowed() {
    checked("model m() {\n  input [4, 8, 8];\n  relu() as x;\n  residual { add(x); }\n}\n");
    let ((kind, msg, line, col), out) = one_error(
        "model m() {\n  input [4, 8, 8];\n  relu() as x;\n  residual { relu() as x; }\n}\n",
    );
    assert_eq!(kind, DiagKind::Duplicate);
    assert_eq!(msg, "value `x` is already bound");
    assert_eq!((line, col), (4, 24));
    assert!(out.contains("first bound here"), "{out}");
    // In a loop, the unindexed label clashes as a layer name: one error, not two.
    let ((kind, msg, _, _), _) =
        one_error("model m() {\n  input [4, 8, 8];\n  repeat 2 { relu() as x; }\n}\n");
    assert_eq!(kind, DiagKind::Duplicate);
    assert_eq!(msg, "layer name `x` is used twice");
}

#[test]
fn joins_that_do_not_fit_say_which_input_is_which() {
    let ((kind, msg, line, col), out) = one_error(
        "model m() {\n  input [4, 8, 8];\n  relu() as plain;\n  split(alpha = 0.5);\n  concat(plain);\n}\n",
    );
    assert_eq!(kind, DiagKind::JoinMismatch);
    assert_eq!(
        msg,
        "concat of an octave pair and a single-frequency tensor: the current value is an octave pair (high [2, 8, 8], low [2, 4, 4]), but `plain` is [4, 8, 8]"
    );
    assert_eq!((line, col), (5, 3));
    assert!(out.contains("`plain`: [4, 8, 8]"), "{out}");
    let ((kind, msg, _, _), _) = one_error(
        "model m() {\n  input [4, 8, 8];\n  relu() as big;\n  avg_pool();\n  concat(big);\n}\n",
    );
    assert_eq!(kind, DiagKind::JoinMismatch);
    assert_eq!(
        msg,
        "concat needs equal spatial sizes: the current value is [4, 4, 4], but `big` is [4, 8, 8]"
    );
    let ((kind, msg, _, _), _) = one_error(
        "model m() {\n  input [4, 8, 8];\n  relu() as x;\n  conv(8, kernel = 1);\n  add(x);\n}\n",
    );
    assert_eq!(kind, DiagKind::JoinMismatch);
    assert_eq!(
        msg,
        "add needs equal shapes: the current value is [8, 8, 8], but `x` is [4, 8, 8]"
    );
    let ((kind, msg, _, _), _) = one_error(
        "model m() {\n  input [4, 8, 8];\n  branches add { { }, { conv(8, kernel = 1); } }\n}\n",
    );
    assert_eq!(kind, DiagKind::JoinMismatch);
    assert_eq!(
        msg,
        "add needs equal shapes: branch 0 is [4, 8, 8], but branch 1 is [8, 8, 8]"
    );
}

#[test]
fn scale_needs_one_gate_per_channel() {
    let ((kind, msg, _, _), _) = one_error(
        "model m() {\n  input [4, 8, 8];\n  relu() as y;\n  global_avg_pool(); linear(3); sigmoid();\n  scale(y);\n}\n",
    );
    assert_eq!(kind, DiagKind::JoinMismatch);
    assert_eq!(
        msg,
        "scale needs one gate per channel: `y` has 4 channels, but the current value gives 3 gates"
    );
    let ((kind, msg, _, _), _) =
        one_error("model m() {\n  input [4, 8, 8];\n  branches scale { { }, { relu(); } }\n}\n");
    assert_eq!(kind, DiagKind::JoinMismatch);
    assert_eq!(
        msg,
        "scale needs its gates as a flat vector, but branch 1 is [4, 8, 8]"
    );
}

#[test]
fn malformed_graph_statements_are_errors_at_the_token() {
    let cases: [(&str, DiagKind, &str, (usize, usize)); 12] = [
        ("branches cat { { }, { } }", DiagKind::Argument, "`branches` cannot join with `cat`: write `branches concat { … }`, `branches add { … }` or `branches scale { … }`", (3, 12)),
        ("branches concat { { } }", DiagKind::Structure, "`branches` needs at least two bodies, found 1", (3, 3)),
        ("concat();", DiagKind::Argument, "`concat` needs the names of the values it reads: `concat(enc1)`", (3, 3)),
        ("concat(1 + 2);", DiagKind::Argument, "expected the name of a value (`enc1` or `enc[i]`), found an expression", (3, 10)),
        ("relu() as x[0.5];", DiagKind::Type, "the index of `x[…]` must be a non-negative `int`, found float `0.5`", (3, 15)),
        ("upsample(mode = bilinear);", DiagKind::Argument, "`upsample` has no mode `bilinear`; the one mode is `nearest`", (3, 12)),
        ("upsample(scale = 0);", DiagKind::Structure, "`scale` of `upsample` must be between 1 and 16, found 0", (3, 12)),
        ("split(alpha = 0.5); merge(to = middle);", DiagKind::Argument, "`merge` cannot merge to `middle`: write `to = high` (the default) or `to = low`", (3, 29)),
        ("relu() as a; relu() as b; scale(a, b);", DiagKind::Argument, "`scale` scales one value, but 2 were named", (3, 38)),
        ("octconv_transpose(4, kernel = 5);", DiagKind::Structure, "octconv_transpose supports kernel 2 or 3, found 5", (3, 24)),
        ("octconv_transpose(4, stride = 1);", DiagKind::Structure, "octconv_transpose upsamples by stride 2, found 1", (3, 24)),
        ("avg_pool(kernel = 2, stride = 1); octconv_transpose(4, alpha = 0.5);", DiagKind::Divisibility, "octconv_transpose's H→L path pools the high branch 2×2, but it is 7×7", (3, 37)),
    ];
    for (stmt, kind, msg, at) in cases {
        let text = format!("model m() {{\n  input [4, 8, 8];\n  {stmt}\n}}\n");
        let ((k, m, line, col), out) = one_error(&text);
        assert_eq!((k, m.as_str()), (kind, msg), "{stmt}\n{out}");
        assert_eq!((line, col), at, "{stmt}\n{out}");
    }
}

#[test]
fn costs_of_a_concat_skip_graph_by_hand() {
    let m = checked(
        "model m() {\n  input [4, 8, 8];\n  conv(4, kernel = 3) as a;\n  conv(4, kernel = 3);\n  concat(a);\n  conv(2, kernel = 1);\n}\n",
    );
    // conv 3×3 4→4 at 8×8 twice: 4·4·9·64 = 9 216 MACs and 144 weights each; the concat is free;
    // conv 1×1 8→2: 2·8·64 = 1 024 MACs and 16 weights.
    assert_eq!(m.macs(), 2 * 9_216 + 1_024);
    assert_eq!(m.params(), 2 * 144 + 16);
    assert_eq!(m.output, Shape::Single(octconv_spec::Dims::new(2, 8, 8)));
}

#[test]
fn costs_of_squeeze_and_excitation_by_hand() {
    let m = checked(
        "model m() {\n  input [8, 4, 4];\n  conv(8, kernel = 1);\n  branches scale {\n    { },\n    { global_avg_pool(); linear(2); relu(); linear(8); sigmoid(); },\n  }\n}\n",
    );
    // conv 1×1 8→8 at 4×4: 8·8·16 = 1 024 MACs, 64 weights; linear 8→2: 16 MACs, 16 + 2 params;
    // linear 2→8: 16 MACs, 16 + 8 params; the scaling is free.
    assert_eq!(m.macs(), 1_024 + 16 + 16);
    assert_eq!(m.params(), 64 + 18 + 24);
    assert_eq!(m.layers.last().unwrap().op, Op::Scale);
    assert_eq!(m.output, Shape::Single(octconv_spec::Dims::new(8, 4, 4)));
}

#[test]
fn costs_and_shapes_of_a_transposed_octconv_by_hand() {
    let m = checked(
        "model m() {\n  input [8, 8, 8];\n  split(alpha = 0.5);\n  octconv_transpose(4, kernel = 2) as up;\n  merge();\n}\n",
    );
    let up = layer(&m, "up");
    // In: high [4, 8, 8], low [4, 4, 4]; out 2 / 2 at 16×16 / 8×8. Weights 4 paths × 4·2·4 = 128,
    // biases 4. MACs: H→H 2·4·4·64 = 2 048 (every input pixel meets k² weights per output channel);
    // H→L on the pooled high input 2·4·4·16 = 512; L→H and L→L 512 each.
    assert_eq!(up.output, Shape::pair(2, 2, 16, 16));
    assert_eq!(up.params, 132);
    assert_eq!(up.macs, 2_048 + 3 * 512);
}

#[test]
fn upsample_and_merge_to_low_shapes() {
    let m = checked(
        "model m() {\n  input [8, 8, 8];\n  split(alpha = 0.25);\n  upsample(scale = 3) as up;\n  merge(to = low) as low;\n}\n",
    );
    assert_eq!(layer(&m, "up").output, Shape::pair(6, 2, 24, 24));
    assert_eq!(
        layer(&m, "low").output,
        Shape::Single(octconv_spec::Dims::new(8, 12, 12))
    );
}

#[test]
fn check_json_carries_the_graph_ops_and_their_inputs() {
    let m = checked(
        "model m() {\n  input [4, 8, 8];\n  relu() as x;\n  conv(4, kernel = 1);\n  concat(x);\n}\n",
    );
    let json = serde_json::to_value(&m).unwrap();
    let last = &json["layers"][3];
    assert_eq!(last["op"]["type"], "concat");
    assert_eq!(last["inputs"], serde_json::json!([2, 1]));
}
