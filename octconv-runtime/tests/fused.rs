//! The fused octave convolution kernel (`kernels::octave`) against the per-path ops it replaces, which
//! are themselves checked against a direct-loop reference and finite differences: outputs and the
//! gradients of every input and weight, in f64 (rounding-level agreement) and f32 (≤ 1e-4 relative),
//! plus a finite-difference check of the fused gradients themselves.

use candle_core::{DType, Device, Tensor, Var};
use octconv_runtime::layers::OctConv2d;
use octconv_runtime::OctValue;
use octconv_spec::ir::{OctConvSpec, Path};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

struct Case {
    layer: OctConv2d,
    weights: Vec<Var>,
    xh: Var,
    xl: Var,
    /// Random output weights, so the loss's gradient is not the same at every pixel.
    rh: Tensor,
    rl: Tensor,
}

fn randn(rng: &mut ChaCha8Rng, shape: &[usize], dtype: DType) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.random::<f64>() * 2.0 - 1.0).collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

/// A layer with all four paths (3×3, stride 1) and its inputs: `(n, in_h, in_l, out_h, out_l, h, w)`.
fn case(dims: (usize, usize, usize, usize, usize, usize, usize), seed: u64, dtype: DType) -> Case {
    let (n, in_h, in_l, out_h, out_l, h, w) = dims;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let spec = OctConvSpec {
        in_h,
        in_l,
        out_h,
        out_l,
        kernel: 3,
        stride: 1,
        groups: 1,
        depthwise: false,
        bias: false,
        downsample: Default::default(),
    };
    let mut weights = Vec::new();
    let mut ts: [Option<Tensor>; 4] = Default::default();
    for (i, p) in Path::ALL.into_iter().enumerate() {
        let (cin, cout) = spec.path_channels(p).expect("all four paths");
        let v = Var::from_tensor(&randn(&mut rng, &[cout, cin, 3, 3], dtype)).unwrap();
        ts[i] = Some(v.as_tensor().clone());
        weights.push(v);
    }
    Case {
        layer: OctConv2d::from_weights(spec, ts, None, None),
        weights,
        xh: Var::from_tensor(&randn(&mut rng, &[n, in_h, h, w], dtype)).unwrap(),
        xl: Var::from_tensor(&randn(&mut rng, &[n, in_l, h / 2, w / 2], dtype)).unwrap(),
        rh: randn(&mut rng, &[n, out_h, h, w], dtype),
        rl: randn(&mut rng, &[n, out_l, h / 2, w / 2], dtype),
    }
}

/// Outputs and the gradients of (X_H, X_L, W_HH, W_HL, W_LH, W_LL), all as f64 vectors.
fn run(c: &Case, fused: bool) -> Vec<Vec<f64>> {
    let mut layer = c.layer.clone();
    layer.set_fused(fused);
    let x = OctValue::Pair {
        high: Some(c.xh.as_tensor().clone()),
        low: c.xl.as_tensor().clone(),
    };
    assert_eq!(
        layer.runs_fused(&x),
        fused,
        "the path under test must be the one that runs"
    );
    let y = layer.forward(&x).unwrap();
    let (Some(yh), Some(yl)) = y.branches() else {
        panic!("expected a pair")
    };
    let loss = ((yh * &c.rh).unwrap().sum_all().unwrap()
        + (yl * &c.rl).unwrap().sum_all().unwrap())
    .unwrap();
    let grads = loss.backward().unwrap();
    let mut out = vec![flat(yh), flat(yl)];
    for v in [&c.xh, &c.xl].into_iter().chain(&c.weights) {
        out.push(flat(
            grads
                .get(v.as_tensor())
                .expect("every input has a gradient"),
        ));
    }
    out
}

/// A tensor's values as f64.
fn flat(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap()
}

const NAMES: [&str; 8] = [
    "Y_H", "Y_L", "dX_H", "dX_L", "dW_HH", "dW_HL", "dW_LH", "dW_LL",
];

/// Largest |a − b| relative to the largest |b| of each pair of vectors.
fn assert_close(fused: &[Vec<f64>], reference: &[Vec<f64>], tol: f64) {
    for ((a, b), name) in fused.iter().zip(reference).zip(NAMES) {
        assert_eq!(a.len(), b.len(), "{name}: lengths differ");
        let scale = b.iter().fold(1e-30f64, |m, v| m.max(v.abs()));
        let err = a
            .iter()
            .zip(b)
            .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()))
            / scale;
        assert!(
            err <= tol,
            "{name}: fused differs from per-path by {err:e} (relative)"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    /// f64: the fused kernel and the per-path ops compute the same outputs and gradients up to
    /// rounding, for odd channel counts and sizes down to a 1×1 low branch.
    #[test]
    fn fused_matches_per_path_ops_forward_and_gradients_f64(
        n in 1usize..4, in_h in 1usize..6, in_l in 1usize..6, out_h in 1usize..6,
        out_l in 1usize..6, h2 in 1usize..6, w2 in 1usize..6, seed in 0u64..1000,
    ) {
        let c = case((n, in_h, in_l, out_h, out_l, 2 * h2, 2 * w2), seed, DType::F64);
        assert_close(&run(&c, true), &run(&c, false), 1e-12);
    }
}

/// f32 at a network's size (WRN-16-4's first stage at α = .25, batch 4): within 1e-4 relative.
#[test]
fn fused_matches_per_path_ops_at_network_size_f32() {
    let c = case((4, 48, 16, 48, 16, 32, 32), 7, DType::F32);
    assert_close(&run(&c, true), &run(&c, false), 1e-4);
}

/// The fused gradients against central finite differences of the fused forward (f64).
#[test]
fn fused_gradients_match_finite_differences() {
    let c = case((2, 3, 2, 2, 3, 6, 4), 11, DType::F64);
    let analytic = run(&c, true);
    let loss = |c: &Case| -> f64 {
        let y = c
            .layer
            .forward(&OctValue::Pair {
                high: Some(c.xh.as_tensor().clone()),
                low: c.xl.as_tensor().clone(),
            })
            .unwrap();
        let (Some(yh), Some(yl)) = y.branches() else {
            panic!("expected a pair")
        };
        let s = (yh * &c.rh).unwrap().sum_all().unwrap() + (yl * &c.rl).unwrap().sum_all().unwrap();
        s.unwrap().to_scalar::<f64>().unwrap()
    };
    let eps = 1e-6;
    let vars: Vec<&Var> = [&c.xh, &c.xl].into_iter().chain(&c.weights).collect();
    for (k, v) in vars.iter().enumerate() {
        let base: Vec<f64> = v.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        // A few coordinates per tensor, spread over it.
        for j in (0..base.len()).step_by(base.len().div_ceil(5)) {
            let probe = |d: f64| {
                let mut p = base.clone();
                p[j] += d;
                v.set(&Tensor::from_vec(p, v.shape(), &Device::Cpu).unwrap())
                    .unwrap();
                let l = loss(&c);
                v.set(&Tensor::from_vec(base.clone(), v.shape(), &Device::Cpu).unwrap())
                    .unwrap();
                l
            };
            let fd = (probe(eps) - probe(-eps)) / (2.0 * eps);
            let a = analytic[k + 2][j];
            assert!(
                (fd - a).abs() <= 1e-6 * (1.0 + a.abs()),
                "{}[{j}]: analytic {a}, finite difference {fd}",
                NAMES[k + 2]
            );
        }
    }
}

/// The fused kernel's Winograd variants against direct summation of the four paths (f64, raw
/// buffers): `Y_H = conv(X_H, W_HH) + up(conv(X_L, W_LH))`, `Y_L = conv(pool(X_H), W_HL) + conv(X_L,
/// W_LL)`, computed here with plain loops. F(2×2) throughout, F(4×4) throughout (10×6: the low
/// branch is 5×3), and F(4×4) with F(2×2) for a low branch of at most 4×4 (8×6 and 8×8).
#[test]
fn fused_kernel_f2_f4_and_mixed_equal_direct_summation() {
    for (h, w) in [(10, 6), (8, 6), (8, 8)] {
        fused_kernel_equals_direct_summation(h, w);
    }
}

fn fused_kernel_equals_direct_summation(h: usize, w: usize) {
    use octconv_runtime::kernels::conv2d::Algorithm;
    use octconv_runtime::kernels::octave::{forward_prologue_with, forward_with, OctaveGeometry};
    use octconv_runtime::kernels::prologue::Prologue;
    let (n, ih, il, oh, ol) = (2usize, 3usize, 2usize, 4usize, 3usize);
    let g = OctaveGeometry {
        n,
        in_h: ih,
        in_l: il,
        out_h: oh,
        out_l: ol,
        h,
        w,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut rnd =
        |len: usize| -> Vec<f64> { (0..len).map(|_| rng.random::<f64>() - 0.5).collect() };
    let (lh, lw) = (h / 2, w / 2);
    let xh = rnd(n * ih * h * w);
    let xl = rnd(n * il * lh * lw);
    let wts = rnd(g.weight_len());
    let (w_hh, rest) = wts.split_at(9 * oh * ih);
    let (w_hl, rest) = rest.split_at(9 * ol * ih);
    let (w_lh, w_ll) = rest.split_at(9 * oh * il);
    // Direct 3×3 "same" convolution of `x` [n, ci, hh, ww] with `k` [co, ci, 3, 3].
    let conv = |x: &[f64], k: &[f64], ci: usize, co: usize, hh: usize, ww: usize| -> Vec<f64> {
        let mut y = vec![0.0; n * co * hh * ww];
        for b in 0..n {
            for o in 0..co {
                for yy in 0..hh {
                    for xx in 0..ww {
                        let mut acc = 0.0;
                        for c in 0..ci {
                            for dy in 0..3 {
                                for dx in 0..3 {
                                    let (sy, sx) = (yy + dy, xx + dx);
                                    if sy >= 1 && sy <= hh && sx >= 1 && sx <= ww {
                                        acc += x[((b * ci + c) * hh + sy - 1) * ww + sx - 1]
                                            * k[((o * ci + c) * 3 + dy) * 3 + dx];
                                    }
                                }
                            }
                        }
                        y[((b * co + o) * hh + yy) * ww + xx] = acc;
                    }
                }
            }
        }
        y
    };
    let pooled: Vec<f64> = (0..n * ih * lh * lw)
        .map(|i| {
            let (p, yy, xx) = (i / (lh * lw), i / lw % lh, i % lw);
            let at = |dy: usize, dx: usize| xh[(p * h + 2 * yy + dy) * w + 2 * xx + dx];
            0.25 * (at(0, 0) + at(0, 1) + at(1, 0) + at(1, 1))
        })
        .collect();
    let hh_out = conv(&xh, w_hh, ih, oh, h, w);
    let lh_out = conv(&xl, w_lh, il, oh, lh, lw);
    let hl_out = conv(&pooled, w_hl, ih, ol, lh, lw);
    let ll_out = conv(&xl, w_ll, il, ol, lh, lw);
    let mut expected: Vec<f64> = (0..hh_out.len())
        .map(|i| {
            let (p, yy, xx) = (i / (h * w), i / w % h, i % w);
            hh_out[i] + lh_out[(p * lh + yy / 2) * lw + xx / 2]
        })
        .collect();
    expected.extend(hl_out.iter().zip(&ll_out).map(|(a, b)| a + b));
    for alg in [Algorithm::WinogradF2, Algorithm::WinogradF4] {
        let (mut got, low) = forward_with(alg, &g, &xh, &xl, &wts);
        got.extend(low);
        assert_eq!(got.len(), expected.len());
        let err = got
            .iter()
            .zip(&expected)
            .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
        assert!(err < 1e-12, "{alg:?} at {h}×{w}: max error {err:e}");
        // Input maps applied as the kernel reads (the high one also before the H→L pool) equal
        // the kernel on mapped inputs.
        let map = |c: usize| -> (Vec<f64>, Vec<f64>) {
            (0..c)
                .map(|i| (0.7 + 0.2 * i as f64, 0.1 - 0.15 * i as f64))
                .unzip()
        };
        let ((sh, th), (sl, tl)) = (map(ih), map(il));
        let pro = |scale, shift| Prologue {
            scale,
            shift,
            relu: true,
        };
        let (ph, pl) = (pro(&sh[..], &th[..]), pro(&sl[..], &tl[..]));
        let (mut got, low) = forward_prologue_with(alg, &g, &xh, &xl, &wts, [Some(ph), Some(pl)]);
        got.extend(low);
        let (mut want, low) = forward_with(
            alg,
            &g,
            &ph.apply(&xh, h * w),
            &pl.apply(&xl, lh * lw),
            &wts,
        );
        want.extend(low);
        let err = got
            .iter()
            .zip(&want)
            .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            err < 1e-12,
            "{alg:?} at {h}×{w} with prologues: max error {err:e}"
        );
    }
}

/// Inference of a four-path layer on maps too small for either Winograd variant (8×8 at batch 1,
/// 4×4 at batch 2: `OctaveGeometry::prefers_per_path`) runs each path with its own weight; it
/// equals the per-path ops of training (the two low paths joined into one convolution over the
/// concatenated inputs and weights) to f32 rounding.
#[test]
fn per_path_inference_on_small_maps_equals_the_per_path_ops() {
    use octconv_runtime::kernels::octave::OctaveGeometry;
    for (i, dims) in [(1, 24, 8, 16, 16, 8, 8), (2, 5, 7, 9, 3, 4, 4)]
        .into_iter()
        .enumerate()
    {
        let (n, in_h, in_l, out_h, out_l, h, w) = dims;
        let g = OctaveGeometry {
            n,
            in_h,
            in_l,
            out_h,
            out_l,
            h,
            w,
        };
        assert!(g.prefers_per_path(), "{g:?}");
        let c = case(dims, 40 + i as u64, DType::F32);
        let x = OctValue::Pair {
            high: Some(c.xh.as_tensor().clone()),
            low: c.xl.as_tensor().clone(),
        };
        let pair = |v: &OctValue| -> Vec<Vec<f64>> {
            let (h, l) = v.branches();
            vec![flat(h.unwrap()), flat(l.unwrap())]
        };
        let got = pair(&c.layer.infer(&x).unwrap());
        let want = pair(&c.layer.forward_unfused(&x).unwrap());
        assert_close(&got, &want, 1e-5);
    }
}
