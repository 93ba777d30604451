//! `OctConv2d::infer_expanded` (the executor's `Step::ExpandDepthwise`): a depthwise layer that runs
//! the 1×1 expansion it reads image by image equals the two layers run one after the other, on the
//! fused kernel and on the fallback.

use octconv_runtime::layers::{Activation, OutputStage};
use octconv_runtime::OctValue;
use octconv_spec::ir::{Downsample, OctConvSpec};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

#[path = "common/octave_layers.rs"]
mod octave_layers;
use octave_layers::{f32_tensor, layer, values};

fn spec(c: usize, e: usize, kernel: usize, depthwise: bool) -> OctConvSpec {
    OctConvSpec {
        in_h: c,
        in_l: 0,
        out_h: e,
        out_l: 0,
        kernel,
        stride: 1,
        groups: 1,
        depthwise,
        bias: false,
        downsample: Downsample::Pool,
    }
}

/// The fused kernels (one branch and an octave pair; no bias; with and without the depthwise
/// layer's stage; one image and three) and the fallback (an expansion with a bias) against the two
/// layers in turn.
#[test]
fn a_depthwise_layer_running_its_expansion_equals_the_two_layers_in_turn() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let relu6 = OutputStage {
        bn: None,
        act: Some(Activation::Relu6),
        pool: None,
        halve: false,
        add: None,
        means: None,
    };
    // (n, (c_h, c_l), (e_h, e_l), (h, w), bias): a low part makes an octave pair.
    for (n, c, e, (h, w), bias) in [
        (3, (5, 0), (24, 0), (9, 11), false),
        (1, (4, 0), (7, 0), (1, 1), false),
        (2, (3, 0), (6, 0), (6, 5), true),
        (3, (6, 2), (18, 6), (10, 14), false),
        (1, (3, 3), (5, 7), (4, 4), false),
    ] {
        let pair = |(hc, lc): (usize, usize), (eh, el): (usize, usize), k, dw| OctConvSpec {
            in_l: lc,
            out_l: el,
            ..spec(hc, eh, k, dw)
        };
        let expand = layer(pair(c, e, 1, false), bias, &mut rng);
        let dw = layer(pair(e, e, 3, true), false, &mut rng);
        let high = f32_tensor(&mut rng, &[n, c.0, h, w]);
        let x = match c.1 {
            0 => OctValue::Single(high),
            l => OctValue::Pair {
                high: Some(high),
                low: f32_tensor(&mut rng, &[n, l, h / 2, w / 2]),
            },
        };
        let expanded = expand.infer_then(&x, &relu6).unwrap();
        for stage in [Some(&relu6), None] {
            let want = match stage {
                Some(s) => dw.infer_then(&expanded, s).unwrap(),
                None => dw.infer(&expanded).unwrap(),
            };
            let got = dw.infer_expanded(&expand, &x, (&relu6, stage)).unwrap();
            let (got, want) = (values(&got), values(&want));
            assert_eq!(got.len(), want.len());
            let err = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs() / (1.0 + b.abs()))
                .fold(0.0f32, f32::max);
            assert!(err <= 1e-5, "{:?}: {err}", (n, c, e, h, w, bias));
        }
    }
}
