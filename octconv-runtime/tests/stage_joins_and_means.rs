//! What a convolution's output stage computes beyond its batch norm and activation, against the
//! same computed apart: a residual sum it joins (`OutputStage::add`, planned as `OutputMap::add` with
//! the sum's `Step::SumOf`): `act(bn(conv(x)) + r)` with each row joined in the 1×1 kernels, equal
//! bit for bit to the convolution with its batch norm followed by the sum (`OutputStage::join`),
//! and to the per-op layers to rounding; and the global average pooling it sums
//! (`OutputStage::means`, planned as `OutputMap::mean` with the pooling's `Step::Meaned`).

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use octconv_runtime::layers::{
    add, global_avg_pool, Activation, MeansOut, OctBatchNorm, OutputStage,
};
use octconv_runtime::OctValue;
use octconv_spec::ir::OctConvSpec;
use octconv_spec::{Dims, Shape};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;

#[path = "common/octave_layers.rs"]
mod octave_layers;
use octave_layers::{f32_tensor, layer, spec, values};

/// A batch norm of the layer's outputs, far from the identity (so a map applied twice or not at
/// all shows).
fn batch_norm(s: &OctConvSpec, rng: &mut ChaCha8Rng) -> OctBatchNorm {
    let mut t = HashMap::new();
    for (branch, c) in [("h", s.out_h), ("l", s.out_l)] {
        let mut put = |name: &str, lo: f32, hi: f32| {
            let v: Vec<f32> = (0..c)
                .map(|_| lo + (hi - lo) * rng.random::<f32>())
                .collect();
            t.insert(
                format!("{branch}.{name}"),
                Tensor::from_vec(v, c, &Device::Cpu).unwrap(),
            );
        };
        put("weight", 0.5, 2.0);
        put("bias", -1.0, 1.0);
        put("running_mean", -0.5, 0.5);
        put("running_var", 0.5, 3.0);
    }
    let vb = VarBuilder::from_tensors(t, DType::F32, &Device::Cpu);
    let input = match s.out_l {
        0 => Shape::Single(Dims {
            c: s.out_h,
            h: 4,
            w: 4,
        }),
        l => Shape::pair(s.out_h, l, 4, 4),
    };
    let vb = if s.out_l == 0 { vb.pp("h") } else { vb };
    OctBatchNorm::new(&input, 1e-5, 0.1, vb).unwrap()
}

fn value(
    s: &OctConvSpec,
    n: usize,
    (h, w): (usize, usize),
    high: usize,
    low: usize,
    rng: &mut ChaCha8Rng,
) -> OctValue {
    let hi = f32_tensor(rng, &[n, high, h, w]);
    match (s.in_l, low) {
        (_, 0) => OctValue::Single(hi),
        (_, l) => OctValue::Pair {
            high: Some(hi),
            low: f32_tensor(rng, &[n, l, h / 2, w / 2]),
        },
    }
}

/// The four-path 1×1 kernel (pairs at stride 1 and 2, a layer into the pair, one out of it), the
/// one-branch 1×1 kernel (odd sizes, one image and several), and layers no kernel joins (a 3×3
/// layer, a 1×1 layer with a bias, a stride-2 one-branch 1×1 layer): each joined stage equals the
/// stage up to the residual and then the sum bit for bit, and the per-op layers (convolution,
/// batch norm, add, activation) to 1e-5, with the ReLU, ReLU6 and no activation, and with no map
/// before the sum at all (WRN's projection shortcuts).
#[test]
fn a_joined_stage_equals_the_batch_norm_then_the_sum_bit_for_bit() {
    let mut rng = ChaCha8Rng::seed_from_u64(23);
    // (channels, kernel, stride, bias, batch, high input size)
    for (c, k, stride, bias, n, hw) in [
        ((6, 2, 5, 3), 1, 1, false, 2, (8, 12)),
        ((6, 2, 5, 3), 1, 2, false, 3, (8, 8)),
        ((5, 0, 4, 4), 1, 1, false, 2, (6, 10)),
        ((4, 4, 7, 0), 1, 1, false, 1, (4, 6)),
        ((5, 0, 9, 0), 1, 1, false, 1, (7, 13)),
        ((5, 0, 9, 0), 1, 1, false, 5, (3, 5)),
        ((24, 0, 40, 0), 1, 1, false, 2, (28, 28)),
        ((4, 0, 6, 0), 3, 1, false, 2, (6, 6)),
        ((4, 4, 6, 2), 3, 1, false, 2, (8, 8)),
        ((5, 0, 9, 0), 1, 1, true, 2, (6, 6)),
        ((5, 0, 9, 0), 1, 2, false, 2, (6, 6)),
    ] {
        let s = spec(c, k, stride);
        let l = layer(s, bias, &mut rng);
        let bn = batch_norm(&s, &mut rng);
        let x = value(&s, n, hw, s.in_h, s.in_l, &mut rng);
        let out_hw = (hw.0 / stride, hw.1 / stride);
        let r = value(&s, n, out_hw, s.out_h, s.out_l, &mut rng);
        let maps = [
            (Some(&bn), Some(Activation::Relu)),
            (Some(&bn), Some(Activation::Relu6)),
            (Some(&bn), None),
            (None, None),
        ];
        for (bn, act) in maps {
            let stage = OutputStage {
                bn,
                act,
                pool: None,
                halve: false,
                add: Some(&r),
                means: None,
            };
            let got = l.infer_then(&x, &stage).unwrap();
            let then = stage
                .join(l.infer_then(&x, &stage.before_add()).unwrap())
                .unwrap();
            let (g, t) = (values(&got), values(&then));
            assert_eq!(g.len(), t.len());
            let same = g.iter().zip(&t).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(
                same,
                "{c:?} {k}×{k} stride {stride} bias {bias} {act:?}: not bit for bit"
            );
            let y = l.forward(&x).unwrap();
            let y = match bn {
                Some(bn) => bn.forward_t(&y, false).unwrap(),
                None => y,
            };
            let sum = add(&[&y, &r]).unwrap();
            let want = match act {
                Some(a) => a.forward(&sum).unwrap(),
                None => sum,
            };
            let w = values(&want);
            let err = g
                .iter()
                .zip(&w)
                .map(|(a, b)| (a - b).abs() / (1.0 + b.abs()))
                .fold(0.0f32, f32::max);
            assert!(
                err <= 1e-5,
                "{c:?} {k}×{k} stride {stride} bias {bias} {act:?}: {err}"
            );
        }
    }
}

/// A stage that also pools its output globally gives the stage's output unchanged (bit for bit)
/// and the per-branch global average pooling of it (to 1e-6: the sums run in another order), on
/// the four-path 1×1 kernel (pairs at stride 1 and 2, a layer out of the pair), the one-branch 1×1
/// kernel, and layers no kernel sums (3×3, a bias).
#[test]
fn a_stage_with_means_equals_the_stage_then_global_average_pooling() {
    let mut rng = ChaCha8Rng::seed_from_u64(29);
    for (c, k, stride, bias, n, hw) in [
        ((6, 2, 5, 3), 1, 1, false, 2, (8, 12)),
        ((6, 2, 5, 3), 1, 2, false, 3, (8, 8)),
        ((4, 4, 7, 0), 1, 1, false, 1, (4, 6)),
        ((5, 0, 9, 0), 1, 1, false, 3, (7, 13)),
        ((24, 0, 40, 0), 1, 1, false, 2, (28, 28)),
        ((4, 4, 6, 2), 3, 1, false, 2, (8, 8)),
        ((5, 0, 9, 0), 1, 1, true, 2, (6, 6)),
    ] {
        let s = spec(c, k, stride);
        let l = layer(s, bias, &mut rng);
        let bn = batch_norm(&s, &mut rng);
        let x = value(&s, n, hw, s.in_h, s.in_l, &mut rng);
        let out = MeansOut::default();
        let plain = OutputStage {
            bn: Some(&bn),
            act: Some(Activation::Relu),
            pool: None,
            halve: false,
            add: None,
            means: None,
        };
        let stage = OutputStage {
            means: Some(&out),
            ..plain
        };
        let got = l.infer_then(&x, &stage).unwrap();
        let want = l.infer_then(&x, &plain).unwrap();
        let bits = |v: &OctValue| values(v).into_iter().map(f32::to_bits).collect::<Vec<_>>();
        assert_eq!(
            bits(&got),
            bits(&want),
            "{c:?} {k}×{k} stride {stride}: the output"
        );
        let OctValue::Flat(means) = out.take().expect("the stage left its means") else {
            panic!("flat means")
        };
        let OctValue::Flat(pooled) = global_avg_pool(&want, true).unwrap() else {
            panic!("flat pooling")
        };
        assert_eq!(means.dims(), pooled.dims(), "{c:?}");
        let (m, p) = (
            means.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            pooled.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        let err = m
            .iter()
            .zip(&p)
            .map(|(a, b)| (a - b).abs() / (1.0 + b.abs()))
            .fold(0.0f32, f32::max);
        assert!(
            err <= 1e-6,
            "{c:?} {k}×{k} stride {stride} bias {bias}: means off by {err}"
        );
    }
    // An empty batch: empty output and means, no panic.
    let s = spec((6, 2, 5, 3), 1, 1);
    let (l, bn) = (layer(s, false, &mut rng), batch_norm(&s, &mut rng));
    let x = value(&s, 0, (8, 8), s.in_h, s.in_l, &mut rng);
    let out = MeansOut::default();
    let stage = OutputStage {
        bn: Some(&bn),
        act: None,
        pool: None,
        halve: false,
        add: None,
        means: Some(&out),
    };
    let y = l.infer_then(&x, &stage).unwrap();
    assert!(values(&y).is_empty());
    let OctValue::Flat(means) = out.take().unwrap() else {
        panic!("flat means")
    };
    assert_eq!(means.dims(), [0, 8]);
}
