//! `OctConv2d` against candle's conv2d at α = 0 and α = 1, and against the direct-loop reference for
//! every path, stride 1 and 2, all α, groups and depthwise.

#[path = "common/reference.rs"]
mod reference;

use candle_core::{DType, Device, Tensor};
use octconv_runtime::layers::OctConv2d;
use octconv_runtime::OctValue;
use octconv_spec::channel_split;
use octconv_spec::ir::{OctConvSpec, Path};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use reference::{Arr, RefOctConv};

fn random(rng: &mut ChaCha8Rng, n: usize) -> Vec<f64> {
    (0..n).map(|_| rng.random::<f64>() * 2.0 - 1.0).collect()
}

fn tensor(a: &Arr) -> Tensor {
    Tensor::from_vec(a.data.clone(), (a.n, a.c, a.h, a.w), &Device::Cpu).unwrap()
}

fn arr(t: &Tensor) -> Arr {
    let (n, c, h, w) = t.dims4().unwrap();
    Arr {
        n,
        c,
        h,
        w,
        data: t.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
    }
}

fn max_diff(a: &Arr, b: &Arr) -> f64 {
    assert_eq!((a.n, a.c, a.h, a.w), (b.n, b.c, b.h, b.w), "shapes differ");
    a.data
        .iter()
        .zip(&b.data)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// Builds the candle layer and the reference with the same random weights.
fn layers(spec: OctConvSpec, rng: &mut ChaCha8Rng) -> (OctConv2d, RefOctConv) {
    let k = spec.kernel;
    let mut w: [Vec<f64>; 4] = Default::default();
    let mut t: [Option<Tensor>; 4] = Default::default();
    for (i, p) in Path::ALL.into_iter().enumerate() {
        if let Some((cin, cout)) = spec.path_channels(p) {
            let per = if spec.depthwise { 1 } else { cin / spec.groups };
            w[i] = random(rng, cout * per * k * k);
            t[i] = Some(Tensor::from_vec(w[i].clone(), (cout, per, k, k), &Device::Cpu).unwrap());
        }
    }
    let r = RefOctConv {
        in_h: spec.in_h,
        in_l: spec.in_l,
        out_h: spec.out_h,
        out_l: spec.out_l,
        k,
        stride: spec.stride,
        groups: spec.groups,
        depthwise: spec.depthwise,
        w,
    };
    (OctConv2d::from_weights(spec, t, None, None), r)
}

fn input(
    spec: &OctConvSpec,
    n: usize,
    hw: usize,
    rng: &mut ChaCha8Rng,
) -> (OctValue, Option<Arr>, Option<Arr>) {
    let mk = |c: usize, s: usize, rng: &mut ChaCha8Rng| Arr {
        n,
        c,
        h: s,
        w: s,
        data: random(rng, n * c * s * s),
    };
    let xh = (spec.in_h > 0).then(|| mk(spec.in_h, hw, rng));
    let xl = (spec.in_l > 0).then(|| mk(spec.in_l, hw / 2, rng));
    let v = match &xl {
        None => OctValue::Single(tensor(xh.as_ref().unwrap())),
        Some(l) => OctValue::Pair {
            high: xh.as_ref().map(tensor),
            low: tensor(l),
        },
    };
    (v, xh, xl)
}

#[allow(clippy::too_many_arguments)]
fn spec(
    c_in: usize,
    a_in: f64,
    c_out: usize,
    a_out: f64,
    k: usize,
    stride: usize,
    groups: usize,
    depthwise: bool,
) -> OctConvSpec {
    let (in_h, in_l) = channel_split(c_in, a_in);
    let (out_h, out_l) = channel_split(c_out, a_out);
    OctConvSpec {
        in_h,
        in_l,
        out_h,
        out_l,
        kernel: k,
        stride,
        groups,
        depthwise,
        bias: false,
        downsample: Default::default(),
    }
}

#[test]
fn every_path_alpha_stride_and_grouping_matches_the_direct_loop_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let alphas = [0.0, 0.25, 0.5, 0.75, 1.0];
    let mut cases = 0;
    for &a_in in &alphas {
        for &a_out in &alphas {
            for stride in [1, 2] {
                for (groups, k) in [(1, 3), (2, 3), (1, 1)] {
                    let s = spec(8, a_in, 8, a_out, k, stride, groups, false);
                    let (layer, r) = layers(s, &mut rng);
                    let (x, xh, xl) = input(&s, 2, 8, &mut rng);
                    let y = layer.forward(&x).unwrap();
                    let (rh, rl) = reference::octconv(&r, xh.as_ref(), xl.as_ref());
                    let (yh, yl) = y.branches();
                    assert_eq!(
                        yh.is_some(),
                        rh.is_some(),
                        "high branch presence, α {a_in}→{a_out} s{stride} g{groups}"
                    );
                    assert_eq!(
                        yl.is_some(),
                        rl.is_some(),
                        "low branch presence, α {a_in}→{a_out} s{stride} g{groups}"
                    );
                    if let (Some(t), Some(r)) = (yh, &rh) {
                        assert!(
                            max_diff(&arr(t), r) < 1e-12,
                            "high, α {a_in}→{a_out} s{stride} g{groups} k{k}"
                        );
                    }
                    if let (Some(t), Some(r)) = (yl, &rl) {
                        assert!(
                            max_diff(&arr(t), r) < 1e-12,
                            "low, α {a_in}→{a_out} s{stride} g{groups} k{k}"
                        );
                    }
                    cases += 1;
                }
            }
        }
    }
    assert_eq!(cases, 150);
}

#[test]
fn depthwise_matches_the_reference_and_drops_cross_paths() {
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    for a in [0.0, 0.25, 0.5, 1.0] {
        for stride in [1, 2] {
            let s = spec(8, a, 8, a, 3, stride, 1, true);
            assert!(s.path_channels(Path::HL).is_none() && s.path_channels(Path::LH).is_none());
            let (layer, r) = layers(s, &mut rng);
            let (x, xh, xl) = input(&s, 2, 8, &mut rng);
            let y = layer.forward(&x).unwrap();
            let (rh, rl) = reference::octconv(&r, xh.as_ref(), xl.as_ref());
            let (yh, yl) = y.branches();
            if let Some(r) = &rh {
                assert!(max_diff(&arr(yh.unwrap()), r) < 1e-12, "α {a} s{stride}");
            }
            if let Some(r) = &rl {
                assert!(max_diff(&arr(yl.unwrap()), r) < 1e-12, "α {a} s{stride}");
            }
        }
    }
}

#[test]
fn alpha_zero_equals_candle_conv2d() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let x = Tensor::from_vec(random(&mut rng, 2 * 6 * 8 * 8), (2, 6, 8, 8), &Device::Cpu).unwrap();
    let w = Tensor::from_vec(random(&mut rng, 10 * 6 * 9), (10, 6, 3, 3), &Device::Cpu).unwrap();
    let s = spec(6, 0.0, 10, 0.0, 3, 1, 1, false);
    let layer = OctConv2d::from_weights(s, [Some(w.clone()), None, None, None], None, None);
    let y = layer
        .forward(&OctValue::Single(x.clone()))
        .unwrap()
        .into_tensor()
        .unwrap();
    let expected = x.conv2d(&w, 1, 1, 1, 1).unwrap();
    let d = (y - expected)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    // Our kernels sum in a different order than candle's: equal up to f64 rounding.
    assert!(d < 1e-12, "max abs difference {d:e}");
}

#[test]
fn alpha_one_equals_candle_conv2d_on_the_low_input() {
    let mut rng = ChaCha8Rng::seed_from_u64(10);
    let xl = Tensor::from_vec(random(&mut rng, 2 * 6 * 4 * 4), (2, 6, 4, 4), &Device::Cpu).unwrap();
    let w = Tensor::from_vec(random(&mut rng, 10 * 6 * 9), (10, 6, 3, 3), &Device::Cpu).unwrap();
    let s = spec(6, 1.0, 10, 1.0, 3, 1, 1, false);
    let layer = OctConv2d::from_weights(s, [None, None, None, Some(w.clone())], None, None);
    let y = layer
        .forward(&OctValue::Pair {
            high: None,
            low: xl.clone(),
        })
        .unwrap();
    let OctValue::Pair { high: None, low } = y else {
        panic!("expected an all-low pair")
    };
    let expected = xl.conv2d(&w, 1, 1, 1, 1).unwrap();
    let d = (low - expected)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    // Our kernels sum in a different order than candle's: equal up to f64 rounding.
    assert!(d < 1e-12, "max abs difference {d:e}");
}

#[test]
fn bias_is_added_once_per_output_branch() {
    let s = OctConvSpec {
        in_h: 2,
        in_l: 2,
        out_h: 2,
        out_l: 2,
        kernel: 1,
        stride: 1,
        groups: 1,
        depthwise: false,
        bias: true,
        downsample: Default::default(),
    };
    let zero =
        |o: usize, i: usize| Some(Tensor::zeros((o, i, 1, 1), DType::F64, &Device::Cpu).unwrap());
    let bh = Tensor::new(&[1.0f64, 2.0], &Device::Cpu).unwrap();
    let bl = Tensor::new(&[3.0f64, 4.0], &Device::Cpu).unwrap();
    let layer = OctConv2d::from_weights(
        s,
        [zero(2, 2), zero(2, 2), zero(2, 2), zero(2, 2)],
        Some(bh),
        Some(bl),
    );
    let x = OctValue::Pair {
        high: Some(Tensor::ones((1, 2, 4, 4), DType::F64, &Device::Cpu).unwrap()),
        low: Tensor::ones((1, 2, 2, 2), DType::F64, &Device::Cpu).unwrap(),
    };
    let y = layer.forward(&x).unwrap();
    let (h, l) = y.branches();
    let h: Vec<f64> = h.unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let l: Vec<f64> = l.unwrap().flatten_all().unwrap().to_vec1().unwrap();
    assert!(h[..16].iter().all(|&v| v == 1.0) && h[16..].iter().all(|&v| v == 2.0));
    assert!(l[..4].iter().all(|&v| v == 3.0) && l[4..].iter().all(|&v| v == 4.0));
}

/// Largest absolute difference of `a` from `b` relative to the largest magnitude of `b`.
fn rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    let a: Vec<f64> = a
        .flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap();
    let b: Vec<f64> = b
        .flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap();
    let scale = b.iter().fold(1e-30f64, |m, v| m.max(v.abs()));
    a.iter()
        .zip(&b)
        .fold(0f64, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

/// A single-branch (α = 0) stride-2 octave convolution with `downsample = stride` is candle's plain
/// `conv2d` with stride 2 and padding k / 2 (torchvision's `Conv2d(stride = 2, padding = k // 2)`),
/// through `forward`, the per-path `forward_unfused` and `infer`, in f32 (our CPU kernels) and f64,
/// for kernels 1 and 3, odd and even sizes, groups and depthwise, with a bias; with the default
/// (`pool`) the same weights give avg-pool 2×2 + stride-1 conv.
#[test]
fn strided_downsample_equals_candle_conv2d_with_stride_2_and_pool_equals_pool_then_conv() {
    use octconv_spec::ir::Downsample;
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    let mut cases = 0;
    for dtype in [DType::F32, DType::F64] {
        for k in [1, 3] {
            for size in [6, 7, 8, 9, 15, 16] {
                for (c_in, c_out, groups, depthwise) in
                    [(6, 10, 1, false), (8, 12, 2, false), (6, 6, 1, true)]
                {
                    let t = |v: Vec<f64>, shape: (usize, usize, usize, usize)| {
                        Tensor::from_vec(v, shape, &Device::Cpu)
                            .unwrap()
                            .to_dtype(dtype)
                            .unwrap()
                    };
                    let per = if depthwise { 1 } else { c_in / groups };
                    let g = if depthwise { c_in } else { groups };
                    let x = t(
                        random(&mut rng, 2 * c_in * size * size),
                        (2, c_in, size, size),
                    );
                    let w = t(random(&mut rng, c_out * per * k * k), (c_out, per, k, k));
                    let b = Tensor::from_vec(random(&mut rng, c_out), c_out, &Device::Cpu)
                        .unwrap()
                        .to_dtype(dtype)
                        .unwrap();
                    let with_bias = |y: Tensor| y.broadcast_add(&b.reshape((1, (), 1, 1)).unwrap());
                    let mut s = spec(c_in, 0.0, c_out, 0.0, k, 2, groups, depthwise);
                    s.bias = true;
                    let layer = |downsample| {
                        let s = OctConvSpec { downsample, ..s };
                        OctConv2d::from_weights(
                            s,
                            [Some(w.clone()), None, None, None],
                            Some(b.clone()),
                            None,
                        )
                    };
                    let what =
                        format!("{dtype:?} k {k} size {size} groups {g} depthwise {depthwise}");
                    let xv = OctValue::Single(x.clone());
                    let strided = layer(Downsample::Stride);
                    let want = with_bias(x.conv2d(&w, k / 2, 2, 1, g).unwrap()).unwrap();
                    assert_eq!(want.dims4().unwrap().2, (size - 1) / 2 + 1);
                    for (how, y) in [
                        ("forward", strided.forward(&xv)),
                        ("forward_unfused", strided.forward_unfused(&xv)),
                        ("infer", strided.infer(&xv)),
                    ] {
                        let y = y.unwrap().into_tensor().unwrap();
                        let e = rel_diff(&y, &want);
                        assert!(
                            e <= 1e-5,
                            "{what}, {how}: {e:e} from candle's stride-2 conv2d"
                        );
                    }
                    if size % 2 == 0 {
                        let pooled = x.avg_pool2d(2).unwrap();
                        let want = with_bias(pooled.conv2d(&w, k / 2, 1, 1, g).unwrap()).unwrap();
                        let y = layer(Downsample::Pool)
                            .forward(&xv)
                            .unwrap()
                            .into_tensor()
                            .unwrap();
                        let e = rel_diff(&y, &want);
                        assert!(
                            e <= 1e-5,
                            "{what}, pool: {e:e} from avg-pool + stride-1 conv2d"
                        );
                        // And the two differ: the option changes the computation.
                        let strided_y = strided.forward(&xv).unwrap().into_tensor().unwrap();
                        assert!(rel_diff(&strided_y, &y) > 1e-2, "{what}: pool = stride?");
                    }
                    cases += 1;
                }
            }
        }
    }
    assert_eq!(cases, 72);
}

/// A stride-2 layer with a low branch and `downsample = stride` (which the checker refuses) is an
/// error at run time too, not a silent pooling.
#[test]
fn strided_downsample_with_a_low_branch_is_refused_at_run_time() {
    let mut rng = ChaCha8Rng::seed_from_u64(22);
    let s = OctConvSpec {
        downsample: octconv_spec::ir::Downsample::Stride,
        ..spec(8, 0.5, 8, 0.5, 3, 2, 1, false)
    };
    let (layer, _) = layers(s, &mut rng);
    let (x, ..) = input(&s, 1, 8, &mut rng);
    let e = layer.forward(&x).unwrap_err().to_string();
    assert!(
        e.contains("downsample = stride needs a single-branch layer"),
        "{e}"
    );
}
