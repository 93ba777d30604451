//! A producer that hands its reader the 2×2-average-pooled map (`OutputStage::halve`, planned as
//! `OutputMap::pool_for`) and the stride-2 reader that then runs at stride 1 on it
//! (`OctConv2d::infer_on_pooled`, `Step::OnPooled`): each equals the unfused computation.

use octconv_runtime::layers::{Activation, OutputStage};
use octconv_runtime::ops::avg_pool2x2;
use octconv_runtime::OctValue;
use octconv_spec::ir::{Downsample, OctConvSpec};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

#[path = "common/octave_layers.rs"]
mod octave_layers;
use octave_layers::{f32_tensor, layer, spec, values};

fn input(s: &OctConvSpec, n: usize, (h, w): (usize, usize), rng: &mut ChaCha8Rng) -> OctValue {
    let high = f32_tensor(rng, &[n, s.in_h, h, w]);
    match s.in_l {
        0 => OctValue::Single(high),
        l => OctValue::Pair {
            high: Some(high),
            low: f32_tensor(rng, &[n, l, h / 2, w / 2]),
        },
    }
}

fn max_diff(a: &OctValue, b: &OctValue) -> f64 {
    let (a, b) = (values(a), values(b));
    assert_eq!(a.len(), b.len(), "sizes differ");
    assert!(!a.is_empty());
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs() as f64 / (1.0 + y.abs() as f64))
        .fold(0.0, f64::max)
}

fn relu(halve: bool) -> OutputStage<'static> {
    OutputStage {
        bn: None,
        act: Some(Activation::Relu6),
        pool: None,
        halve,
        add: None,
        means: None,
    }
}

/// A stage that halves equals the stage and then the 2×2 average pooling, by the one-branch 1×1
/// kernel that pools each band in cache (odd sides included), by the four-path 1×1 kernel that
/// pools each band of rows from scratch (pairs, a layer into the pair, 1 × 1 pooled low maps, bands
/// of 4 rows with a short last band) and by the
/// fallback of other layers (3×3 layers).
#[test]
fn a_stage_that_halves_equals_the_stage_then_2x2_average_pooling() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for (c, k, hw) in [
        ((5, 0, 24, 0), 1, (14, 10)),
        ((3, 0, 7, 0), 1, (9, 13)),
        ((6, 2, 5, 3), 1, (8, 12)),
        ((6, 2, 5, 3), 1, (4, 4)),
        ((4, 0, 6, 2), 1, (12, 8)),
        ((5, 3, 600, 400), 1, (18, 300)),
        ((4, 0, 6, 0), 3, (10, 10)),
        ((4, 4, 6, 2), 3, (8, 8)),
    ] {
        let s = spec(c, k, 1);
        let l = layer(s, false, &mut rng);
        let x = input(&s, 2, hw, &mut rng);
        let got = l.infer_then(&x, &relu(true)).unwrap();
        let per_op = Activation::Relu6.forward(&l.infer(&x).unwrap()).unwrap();
        let want = per_op.map(avg_pool2x2).unwrap();
        let err = max_diff(&got, &want);
        assert!(err <= 1e-5, "{c:?} {k}×{k} at {hw:?}: {err}");
    }
    // A stride-2 1×1 pair layer (the planner never asks it to halve; a hand-built program may):
    // the fallback, not the stride-1 band kernel.
    let s = spec((6, 2, 5, 3), 1, 2);
    let l = layer(s, false, &mut rng);
    let x = input(&s, 2, (16, 16), &mut rng);
    let got = l.infer_then(&x, &relu(true)).unwrap();
    let per_op = Activation::Relu6.forward(&l.infer(&x).unwrap()).unwrap();
    let err = max_diff(&got, &per_op.map(avg_pool2x2).unwrap());
    assert!(err <= 1e-5, "stride-2 1×1 pair: {err}");
}

/// A stride-2 layer that pools first, run on its input pooled beforehand, equals the layer on the
/// unpooled input (one branch, a depthwise pair, a layer into the pair; with and without an output
/// stage); a layer that convolves at stride 2, and one with an L→H path (whose stride-2 form reads
/// the low input unpooled), refuse a pooled input with an error.
#[test]
fn a_stride_2_layer_on_a_pooled_input_equals_it_on_the_unpooled_input() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for (c, depthwise) in [
        ((6, 0, 6, 0), true),
        ((4, 0, 5, 0), false),
        ((4, 4, 4, 4), true),
        ((4, 0, 3, 5), false),
    ] {
        let s = OctConvSpec {
            depthwise,
            ..spec(c, 3, 2)
        };
        let l = layer(s, false, &mut rng);
        let x = input(&s, 2, (12, 16), &mut rng);
        let pooled = x.map(avg_pool2x2).unwrap();
        let want = l.infer(&x).unwrap();
        let err = max_diff(&l.infer_on_pooled(&pooled, None).unwrap(), &want);
        assert!(err <= 1e-5, "{c:?} depthwise {depthwise}: {err}");
        let stage = relu(false);
        let want = Activation::Relu6.forward(&want).unwrap();
        let err = max_diff(&l.infer_on_pooled(&pooled, Some(&stage)).unwrap(), &want);
        assert!(
            err <= 1e-5,
            "{c:?} depthwise {depthwise} with a stage: {err}"
        );
    }
    let strided = OctConvSpec {
        downsample: Downsample::Stride,
        ..spec((4, 0, 4, 0), 3, 2)
    };
    for s in [strided, spec((4, 2, 3, 5), 3, 2)] {
        let l = layer(s, false, &mut rng);
        let x = input(&s, 1, (8, 8), &mut rng);
        let err = l.infer_on_pooled(&x, None).unwrap_err().to_string();
        assert!(err.contains("pools first and has no L→H path"), "{err}");
    }
}
