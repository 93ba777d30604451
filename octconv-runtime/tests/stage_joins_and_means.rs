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
/// one-branch 1×1 kernel (odd sizes, one image and several), the fused 3×3 octave kernel (48 + 48
/// channels at 16×16, plane by plane), and layers no kernel joins (a one-branch 3×3 layer, small
/// maps of a small batch, a 1×1 layer with a bias, a stride-2 one-branch 1×1 layer): each joined stage equals the
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
        ((48, 48, 40, 56), 3, 1, false, 4, (16, 16)),
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

/// The fused 3×3 octave kernel with plane maps (`octave::forward_staged_into`) equals the kernel
/// without them and each plane mapped afterwards, bit for bit: a batch norm with ReLU (and with
/// an input prologue), and a residual join, on odd channel counts, the smallest even maps, and
/// both Winograd variants (F(2×2) throughout; F(4×4) high with F(2×2) low; F(4×4) throughout).
#[test]
fn the_octave_kernel_maps_each_plane_as_the_maps_after_it_do() {
    use octconv_runtime::kernels::epilogue::{ChannelEpilogue, Clamp, ResidualJoin, RowMap};
    use octconv_runtime::kernels::octave::{self, OctaveGeometry, OctaveWeights};
    use octconv_runtime::kernels::prologue::Prologue;
    let mut rng = ChaCha8Rng::seed_from_u64(41);
    let mut floats =
        |len: usize| -> Vec<f32> { (0..len).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect() };
    // (batch, in high, in low, out high, out low, height, width)
    for (n, in_h, in_l, out_h, out_l, h, w) in [
        (2, 3, 5, 4, 7, 2, 2),
        (2, 3, 5, 4, 7, 8, 6),
        (8, 9, 4, 5, 11, 16, 16),
        (16, 6, 6, 4, 4, 32, 32),
    ] {
        let g = OctaveGeometry {
            n,
            in_h,
            in_l,
            out_h,
            out_l,
            h,
            w,
        };
        let (xh, xl) = (floats(n * in_h * h * w), floats(n * in_l * h * w / 4));
        let ws = [
            floats(out_h * in_h * 9),
            floats(out_l * in_h * 9),
            floats(out_h * in_l * 9),
            floats(out_l * in_l * 9),
        ];
        let wt = OctaveWeights {
            hh: &ws[0],
            hl: &ws[1],
            lh: &ws[2],
            ll: &ws[3],
        };
        let epi = |c: usize, floats: &mut dyn FnMut(usize) -> Vec<f32>| ChannelEpilogue {
            scale: floats(c).iter().map(|v| 1.5 + v).collect(),
            shift: floats(c),
            clamp: Clamp::Relu,
        };
        let (eh, el) = (epi(out_h, &mut floats), epi(out_l, &mut floats));
        let (ps, pt) = (floats(in_h), floats(in_h));
        let (qs, qt) = (floats(in_l), floats(in_l));
        let pros = [
            Some(Prologue {
                scale: &ps,
                shift: &pt,
                relu: true,
            }),
            Some(Prologue {
                scale: &qs,
                shift: &qt,
                relu: true,
            }),
        ];
        let (rh, rl) = (floats(g.high_out_len()), floats(g.low_out_len()));
        let (plane_h, plane_l) = (h * w, h * w / 4);
        for (with_pros, join) in [(false, false), (true, false), (true, true)] {
            let pros = if with_pros { pros } else { [None, None] };
            let (mut yh, mut yl) = (
                vec![f32::NAN; g.high_out_len()],
                vec![f32::NAN; g.low_out_len()],
            );
            let joins = (
                ResidualJoin::new(&eh, &yh, &rh, Clamp::Relu6),
                ResidualJoin::new(&el, &yl, &rl, Clamp::Relu6),
            );
            let ph = |c: usize, p: &mut [f32]| match join {
                true => joins.0.apply_row(c, p),
                false => eh.apply_row(c, p),
            };
            let pl = |c: usize, p: &mut [f32]| match join {
                true => joins.1.apply_row(c, p),
                false => el.apply_row(c, p),
            };
            let posts: [Option<RowMap<'_, f32>>; 2] = [Some(&ph), Some(&pl)];
            let prepared = octave::prepare(&g, wt);
            octave::forward_staged_into(&g, (&xh, &xl), &prepared, pros, posts, (&mut yh, &mut yl));
            let (mut wh, mut wl) = octave::forward_prologue(&g, &xh, &xl, wt, pros);
            let after = (
                ResidualJoin::new(&eh, &wh, &rh, Clamp::Relu6),
                ResidualJoin::new(&el, &wl, &rl, Clamp::Relu6),
            );
            for (i, p) in wh.chunks_mut(plane_h).enumerate() {
                match join {
                    true => after.0.apply_row(i % out_h, p),
                    false => eh.apply_row(i % out_h, p),
                }
            }
            for (i, p) in wl.chunks_mut(plane_l).enumerate() {
                match join {
                    true => after.1.apply_row(i % out_l, p),
                    false => el.apply_row(i % out_l, p),
                }
            }
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            let what = format!("{g:?}, prologues {with_pros}, join {join}");
            assert_eq!(bits(&yh), bits(&wh), "high: {what}");
            assert_eq!(bits(&yl), bits(&wl), "low: {what}");
        }
    }
}

/// A 3×3 octave layer's output stage in the fused kernel (batch norm and ReLU, or the batch norm,
/// a residual and ReLU6), run on its own and after its input's batch norm and ReLU (a
/// pre-activation block's convolution, `infer_after_bn_relu_then`): equal bit for bit to the
/// layer's output with the stage's epilogues applied after it (then the sum), and to the per-op
/// layers to 1e-5. Sizes where
/// the fused Winograd kernel runs (48 + 48 channels at 16×16) and where the per-path convolutions
/// do (small maps of a small batch), odd channel counts.
#[test]
fn an_octave_3x3_stage_in_the_kernel_equals_the_stage_after_the_layer() {
    let mut rng = ChaCha8Rng::seed_from_u64(29);
    for (c, n, hw) in [((48, 48, 40, 56), 4, (16, 16)), ((5, 3, 7, 9), 2, (8, 8))] {
        let s = spec(c, 3, 1);
        let l = layer(s, false, &mut rng);
        let bn = batch_norm(&s, &mut rng);
        let bn_in = batch_norm(&spec((c.0, c.1, c.0, c.1), 3, 1), &mut rng);
        let x = value(&s, n, hw, s.in_h, s.in_l, &mut rng);
        let r = value(&s, n, hw, s.out_h, s.out_l, &mut rng);
        for (act, add) in [(Activation::Relu, None), (Activation::Relu6, Some(&r))] {
            let stage = OutputStage {
                bn: Some(&bn),
                act: Some(act),
                pool: None,
                halve: false,
                add,
                means: None,
            };
            for after_bn_relu in [false, true] {
                let (got, raw) = match after_bn_relu {
                    false => (l.infer_then(&x, &stage), l.infer(&x)),
                    true => (
                        l.infer_after_bn_relu_then(&bn_in, &x, &stage),
                        l.infer_after_bn_relu(&bn_in, &x),
                    ),
                };
                // The stage's epilogues applied to the layer's output after it, then the sum.
                let pre = if add.is_some() {
                    stage.before_add()
                } else {
                    stage
                };
                let then = stage.join(mapped(&raw.unwrap(), &pre));
                let (g, t) = (values(&got.unwrap()), values(&then.unwrap()));
                let what = format!(
                    "{c:?} {act:?} residual {} after bn-relu {after_bn_relu}",
                    add.is_some()
                );
                assert_eq!(g.len(), t.len(), "{what}");
                let same = g.iter().zip(&t).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{what}: not bit for bit");
                let input = match after_bn_relu {
                    true => bn_in
                        .forward_act_t(&x, false, Some(Activation::Relu))
                        .unwrap(),
                    false => x.clone(),
                };
                let y = bn.forward_t(&l.forward(&input).unwrap(), false).unwrap();
                let y = match add {
                    Some(r) => add_values(&y, r),
                    None => y,
                };
                let w = values(&act.forward(&y).unwrap());
                let err = g
                    .iter()
                    .zip(&w)
                    .map(|(a, b)| (a - b).abs() / (1.0 + b.abs()))
                    .fold(0.0f32, f32::max);
                assert!(err <= 1e-5, "{what}: {err}");
            }
        }
    }
}

/// `y` with each branch mapped by `stage`'s epilogue for it, in one pass after the layer.
fn mapped(y: &OctValue, stage: &OutputStage<'_>) -> OctValue {
    let (Some(h), Some(l)) = y.branches() else {
        panic!("an octave pair")
    };
    let map = |t: &Tensor, high: bool| {
        let (n, c, hh, ww) = t.dims4().unwrap();
        let epi = stage.epilogue(high, c).unwrap().expect("an epilogue");
        let mut v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        epi.apply(&mut v, hh * ww);
        Tensor::from_vec(v, (n, c, hh, ww), t.device()).unwrap()
    };
    OctValue::Pair {
        high: Some(map(h, true)),
        low: map(l, false),
    }
}

/// `y + r` per op.
fn add_values(y: &OctValue, r: &OctValue) -> OctValue {
    add(&[y, r]).unwrap()
}

/// The sum written into a fresh output (`OutputStage::join_fresh`) equals the sum into a new
/// tensor (`OutputStage::join`) bit for bit, for one branch and a pair, with each activation the
/// join takes and none; a transposed (not contiguous) output takes the new-tensor sum.
#[test]
fn the_sum_into_a_fresh_output_equals_the_sum_into_a_new_one() {
    let mut rng = ChaCha8Rng::seed_from_u64(31);
    let pair = |rng: &mut ChaCha8Rng| OctValue::Pair {
        high: Some(f32_tensor(rng, &[2, 5, 6, 6])),
        low: f32_tensor(rng, &[2, 3, 3, 3]),
    };
    let single = |rng: &mut ChaCha8Rng| OctValue::Single(f32_tensor(rng, &[3, 7, 5, 9]));
    let transposed = |rng: &mut ChaCha8Rng| {
        OctValue::Single(f32_tensor(rng, &[3, 7, 9, 5]).transpose(2, 3).unwrap())
    };
    for make in [pair, single, transposed] {
        let (y, r) = (make(&mut rng), make(&mut rng));
        for act in [None, Some(Activation::Relu), Some(Activation::Relu6)] {
            let stage = OutputStage {
                bn: None,
                act,
                pool: None,
                halve: false,
                add: Some(&r),
                means: None,
            };
            let want = values(&stage.join(y.clone()).unwrap());
            // A fresh copy of `y` that nothing else holds.
            let fresh = y.map(|t| t.copy()).unwrap();
            let got = values(&stage.join_fresh(fresh).unwrap());
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{act:?}");
        }
    }
}
