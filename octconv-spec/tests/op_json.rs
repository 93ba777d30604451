//! `Op::to_json` / `Op::from_json`: the form in which generated code hands each layer's op to the
//! runtime's constructor. Every op of every builtin, and floats that only an exact parser keeps,
//! must read back equal.

use octconv_spec::ir::Op;
use octconv_spec::{check_builtin, check_text};

fn round_trips(op: &Op) {
    let text = op.to_json();
    let back = Op::from_json(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(&back, op, "{text}");
    // Bit for bit, not only `==` (f64 equality would let -0.0 pass for 0.0).
    assert_eq!(format!("{back:?}"), format!("{op:?}"), "{text}");
}

#[test]
fn every_op_of_every_builtin_reads_back_equal_from_json() {
    let calls = [
        "wrn(n = 1, k = 2, alpha = {a}, drop = 0.3)",
        "seed_wrn(n = 1, k = 2, alpha = {a})",
        "resnet(depth = 26, alpha = {a})",
        "resnext(depth = 50, groups = 32, width = 4, alpha = {a})",
        "se_resnet(depth = 50, reduction = 16, alpha = {a})",
        "mobilenet_v1(width = 0.25, alpha = {a})",
        "mobilenet_v2(width = 1.0, alpha = {a})",
        "densenet(depth = 121, growth = 32, alpha = {a})",
        "unet(base = 8, depth = 2, size = 32, alpha = {a})",
    ];
    let mut kinds = std::collections::BTreeSet::new();
    for call in calls {
        for a in [0.0, 0.25, 0.5, 0.75] {
            let call = call.replace("{a}", &a.to_string());
            let model = check_builtin(&call)
                .model
                .unwrap_or_else(|| panic!("{call} checks"));
            assert!(model.layers.len() > 3, "{call}");
            for layer in &model.layers {
                round_trips(&layer.op);
                kinds.insert(layer.op.kind());
            }
        }
    }
    // The builtins cover most kinds; the rest are checked below.
    assert!(kinds.len() >= 18, "{kinds:?}");
}

#[test]
fn floats_that_need_an_exact_parser_read_back_bit_for_bit() {
    for x in [
        0.1 + 0.2,
        1e-5,
        1.0 / 3.0,
        f64::MIN_POSITIVE,
        5e-324,
        0.999_999_999_999_999_9,
        123_456_789.123_456_78,
    ] {
        round_trips(&Op::BatchNorm {
            eps: x,
            momentum: 1.0 - x.min(0.5),
        });
        round_trips(&Op::Dropout { p: x.min(0.9) });
    }
}

#[test]
fn layers_no_builtin_uses_read_back_equal_from_json() {
    let m = check_text(
        "t.oct",
        "model t() { input [3, 16, 16]; conv(8, kernel = 3); hardswish(); sigmoid(); silu(); \
         avg_pool(3, stride = 1, padding = 1); split(0.5); merge(to = low); upsample(2); \
         flatten(); linear(4, bias = false); }",
        None,
    )
    .model
    .expect("the test spec checks");
    let kinds: Vec<&str> = m.layers.iter().map(|l| l.op.kind()).collect();
    for k in [
        "hardswish",
        "sigmoid",
        "silu",
        "avg_pool",
        "split",
        "merge",
        "upsample",
        "flatten",
        "linear",
    ] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
    for l in &m.layers {
        round_trips(&l.op);
    }
}

#[test]
fn text_that_is_not_an_op_is_named_in_the_error() {
    let e = Op::from_json(r#"{"type":"oct_conv","in_h":3}"#).unwrap_err();
    assert!(e.contains("is not an op") && e.contains("in_l"), "{e}");
    let e = Op::from_json(r#"{"type":"no_such_layer"}"#).unwrap_err();
    assert!(e.contains("no_such_layer"), "{e}");
}
