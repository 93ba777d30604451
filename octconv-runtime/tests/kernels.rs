//! Our convolution kernels against two references on random shapes — odd sizes, padding, stride 2,
//! groups, depthwise, 1×1, batches that do and do not fill the thread pool: a naive seven-loop
//! convolution with hand-written adjoint loops for both gradients (f64), and candle's own `conv2d`
//! (forward always; gradients where candle's backward works). Plus central finite differences.
//!
//! candle 0.11's conv backward fails ("shape mismatch in add") when `(h + 2·pad − k)` is not a
//! multiple of the stride (e.g. a 1×1 stride-2 convolution of an even-sized map); ours handles it.

use candle_core::{DType, Device, Tensor, Var};
use octconv_runtime::kernels::{conv2d, ConvParams};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn rand_tensor(rng: &mut ChaCha8Rng, shape: &[usize], dtype: DType) -> Tensor {
    let n = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.random::<f64>() * 2.0 - 1.0).collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// One convolution case: input `[n, c_in, h, w]`, `c_out`, square kernel, stride, padding, groups.
#[derive(Clone, Debug)]
struct Case {
    n: usize,
    c_in: usize,
    c_out: usize,
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
    pad: usize,
    groups: usize,
}

/// Forward output, dL/dx and dL/dw for `L = Σ conv(x, w) ⊙ r`, by `f`.
fn run(
    case: &Case,
    seed: u64,
    dtype: DType,
    f: impl Fn(&Tensor, &Tensor) -> Tensor,
) -> (Tensor, Tensor, Tensor) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let x = Var::from_tensor(&rand_tensor(
        &mut rng,
        &[case.n, case.c_in, case.h, case.w],
        dtype,
    ))
    .unwrap();
    let w = Var::from_tensor(&rand_tensor(
        &mut rng,
        &[case.c_out, case.c_in / case.groups, case.k, case.k],
        dtype,
    ))
    .unwrap();
    let y = f(x.as_tensor(), w.as_tensor());
    let r = rand_tensor(&mut rng, y.dims(), dtype);
    let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let dx = grads.get(x.as_tensor()).unwrap().clone();
    let dw = grads.get(w.as_tensor()).unwrap().clone();
    (y, dx, dw)
}

fn ours(case: &Case) -> impl Fn(&Tensor, &Tensor) -> Tensor + '_ {
    move |x, w| {
        conv2d(
            x,
            w,
            ConvParams {
                stride: case.stride,
                pad: case.pad,
                groups: case.groups,
            },
        )
        .unwrap()
    }
}

fn candle(case: &Case) -> impl Fn(&Tensor, &Tensor) -> Tensor + '_ {
    move |x, w| x.conv2d(w, case.pad, case.stride, 1, case.groups).unwrap()
}

/// Naive loops: `y = conv(x, w)`, and for `L = Σ y ⊙ r` the gradients `dx`, `dw`.
fn naive(case: &Case, x: &[f64], w: &[f64], r: Option<&[f64]>) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let Case {
        n,
        c_in,
        c_out,
        h,
        w: wd,
        k,
        stride,
        pad,
        groups,
    } = *case;
    let (cig, cog) = (c_in / groups, c_out / groups);
    let oh = (h + 2 * pad - k) / stride + 1;
    let ow = (wd + 2 * pad - k) / stride + 1;
    let mut y = vec![0.0; n * c_out * oh * ow];
    let mut dx = vec![0.0; x.len()];
    let mut dw = vec![0.0; w.len()];
    for b in 0..n {
        for co in 0..c_out {
            let grp = co / cog;
            for oy in 0..oh {
                for ox in 0..ow {
                    let yi = ((b * c_out + co) * oh + oy) * ow + ox;
                    for ci in 0..cig {
                        for ki in 0..k {
                            for kj in 0..k {
                                let (iy, ix) = (
                                    (oy * stride + ki) as isize - pad as isize,
                                    (ox * stride + kj) as isize - pad as isize,
                                );
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                    continue;
                                }
                                let xi = ((b * c_in + grp * cig + ci) * h + iy as usize) * wd
                                    + ix as usize;
                                let wi = ((co * cig + ci) * k + ki) * k + kj;
                                y[yi] += x[xi] * w[wi];
                                if let Some(r) = r {
                                    dx[xi] += r[yi] * w[wi];
                                    dw[wi] += r[yi] * x[xi];
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    (y, dx, dw)
}

fn values(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

fn assert_close(name: &str, a: &[f64], b: &[f64], tol: f64, case: &Case) {
    assert_eq!(a.len(), b.len(), "{name}: length for {case:?}");
    let scale = 1.0 + b.iter().fold(0f64, |m, v| m.max(v.abs()));
    let err = a.iter().zip(b).fold(0f64, |m, (a, b)| m.max((a - b).abs())) / scale;
    assert!(
        err < tol,
        "{name} differs by {err:e} (relative) for {case:?}"
    );
}

/// Forward, dx and dw of our kernels equal the naive loops (f64).
fn assert_matches_naive(case: &Case, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let x = rand_tensor(&mut rng, &[case.n, case.c_in, case.h, case.w], DType::F64);
    let w = rand_tensor(
        &mut rng,
        &[case.c_out, case.c_in / case.groups, case.k, case.k],
        DType::F64,
    );
    let (xv, wv) = (Var::from_tensor(&x).unwrap(), Var::from_tensor(&w).unwrap());
    let y = ours(case)(xv.as_tensor(), wv.as_tensor());
    let r = rand_tensor(&mut rng, y.dims(), DType::F64);
    let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let (ny, ndx, ndw) = naive(case, &values(&x), &values(&w), Some(&values(&r)));
    assert_close("y", &values(&y), &ny, 1e-12, case);
    assert_close(
        "dx",
        &values(grads.get(xv.as_tensor()).unwrap()),
        &ndx,
        1e-12,
        case,
    );
    assert_close(
        "dw",
        &values(grads.get(wv.as_tensor()).unwrap()),
        &ndw,
        1e-12,
        case,
    );
}

/// Whether candle 0.11's conv backward can handle the case (see the module docs).
fn candle_backward_works(case: &Case) -> bool {
    (case.h + 2 * case.pad - case.k).is_multiple_of(case.stride)
        && (case.w + 2 * case.pad - case.k).is_multiple_of(case.stride)
}

/// Forward, dx and dw of our kernels equal candle's, within `tol` relative to the values' scale.
fn assert_matches_candle(case: &Case, seed: u64, dtype: DType, tol: f64) {
    if !candle_backward_works(case) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let x = rand_tensor(&mut rng, &[case.n, case.c_in, case.h, case.w], dtype);
        let w = rand_tensor(
            &mut rng,
            &[case.c_out, case.c_in / case.groups, case.k, case.k],
            dtype,
        );
        assert_close(
            "y",
            &values(&ours(case)(&x, &w)),
            &values(&candle(case)(&x, &w)),
            tol,
            case,
        );
        return;
    }
    let (y1, dx1, dw1) = run(case, seed, dtype, ours(case));
    let (y2, dx2, dw2) = run(case, seed, dtype, candle(case));
    for (name, a, b) in [("y", &y1, &y2), ("dx", &dx1, &dx2), ("dw", &dw1, &dw2)] {
        let scale = 1.0 + max_abs_diff(b, &b.zeros_like().unwrap());
        let err = max_abs_diff(a, b) / scale;
        assert!(
            err < tol,
            "{name} differs by {err:e} (relative) for {case:?}"
        );
    }
}

fn case_strategy() -> impl Strategy<Value = Case> {
    (
        1usize..5,
        1usize..4,
        1usize..4,
        prop::sample::select(vec![1usize, 2, 3]),
        1usize..9,
        1usize..10,
        prop::sample::select(vec![1usize, 3, 5]),
        1usize..3,
        0usize..3,
    )
        .prop_filter_map(
            "kernel fits",
            |(n, cig, cog, groups, h, w, k, stride, pad)| {
                let case = Case {
                    n,
                    c_in: cig * groups,
                    c_out: cog * groups,
                    h,
                    w,
                    k,
                    stride,
                    pad,
                    groups,
                };
                (h + 2 * pad >= k && w + 2 * pad >= k).then_some(case)
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Random geometry: odd sizes, padding 0–2, stride 1–2, 1–3 groups, kernels 1/3/5.
    #[test]
    fn kernels_and_gradients_match_naive_loops_on_random_shapes(case in case_strategy(), seed in 0u64..1000) {
        assert_matches_naive(&case, seed);
    }

    #[test]
    fn kernels_match_candle_conv2d_on_random_shapes_f64(case in case_strategy(), seed in 0u64..1000) {
        assert_matches_candle(&case, seed, DType::F64, 1e-12);
    }
}

#[test]
fn kernels_match_candle_in_f32_at_network_sizes() {
    let cases = [
        // The benchmark layer (reduced batch): wide GEMM, one image per task.
        Case {
            n: 3,
            c_in: 16,
            c_out: 24,
            h: 32,
            w: 32,
            k: 3,
            stride: 1,
            pad: 1,
            groups: 1,
        },
        // Small maps: several images share one column matrix.
        Case {
            n: 9,
            c_in: 8,
            c_out: 8,
            h: 4,
            w: 4,
            k: 3,
            stride: 1,
            pad: 1,
            groups: 1,
        },
        // 1×1 projection (no unfolding), single image and batched.
        Case {
            n: 1,
            c_in: 12,
            c_out: 5,
            h: 7,
            w: 7,
            k: 1,
            stride: 1,
            pad: 0,
            groups: 1,
        },
        Case {
            n: 6,
            c_in: 12,
            c_out: 5,
            h: 3,
            w: 5,
            k: 1,
            stride: 1,
            pad: 0,
            groups: 1,
        },
        // Strided 1×1 and 3×3, odd input.
        Case {
            n: 2,
            c_in: 6,
            c_out: 4,
            h: 9,
            w: 7,
            k: 1,
            stride: 2,
            pad: 0,
            groups: 1,
        },
        Case {
            n: 2,
            c_in: 6,
            c_out: 4,
            h: 9,
            w: 7,
            k: 3,
            stride: 2,
            pad: 1,
            groups: 1,
        },
        // Depthwise and grouped.
        Case {
            n: 4,
            c_in: 8,
            c_out: 8,
            h: 10,
            w: 10,
            k: 3,
            stride: 1,
            pad: 1,
            groups: 8,
        },
        Case {
            n: 4,
            c_in: 8,
            c_out: 16,
            h: 6,
            w: 6,
            k: 3,
            stride: 2,
            pad: 1,
            groups: 4,
        },
        // Stem-like: 3 channels, 7×7 stride 2 padding 3.
        Case {
            n: 2,
            c_in: 3,
            c_out: 8,
            h: 15,
            w: 15,
            k: 7,
            stride: 2,
            pad: 3,
            groups: 1,
        },
    ];
    for (i, case) in cases.iter().enumerate() {
        assert_matches_candle(case, i as u64, DType::F32, 1e-4);
        assert_matches_naive(case, i as u64);
    }
}

/// Gradients of our kernels against central differences (f64), independent of candle's conv.
#[test]
fn kernel_gradients_match_finite_differences() {
    let case = Case {
        n: 2,
        c_in: 4,
        c_out: 6,
        h: 5,
        w: 6,
        k: 3,
        stride: 2,
        pad: 1,
        groups: 2,
    };
    let (_, dx, dw) = run(&case, 7, DType::F64, ours(&case));
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let x = rand_tensor(&mut rng, &[2, 4, 5, 6], DType::F64);
    let w = rand_tensor(&mut rng, &[6, 2, 3, 3], DType::F64);
    let p = ConvParams {
        stride: 2,
        pad: 1,
        groups: 2,
    };
    let y = conv2d(&x, &w, p).unwrap();
    let r = rand_tensor(&mut rng, y.dims(), DType::F64);
    let loss = |x: &Tensor, w: &Tensor| -> f64 {
        (conv2d(x, w, p).unwrap() * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar()
            .unwrap()
    };
    let eps = 1e-6;
    for (which, base, grad) in [("x", &x, &dx), ("w", &w, &dw)] {
        let flat = base.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let g = grad.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        for k in (0..flat.len()).step_by(5) {
            let at = |d: f64| {
                let mut v = flat.clone();
                v[k] += d;
                let t = Tensor::from_vec(v, base.shape(), &Device::Cpu).unwrap();
                if which == "x" {
                    loss(&t, &w)
                } else {
                    loss(&x, &t)
                }
            };
            let fd = (at(eps) - at(-eps)) / (2.0 * eps);
            assert!(
                (fd - g[k]).abs() < 1e-6 * (1.0 + fd.abs()),
                "d{which}[{k}]: autograd {} vs FD {fd}",
                g[k]
            );
        }
    }
}

/// A hand-computed case: a 3×3 all-ones kernel over a 3×3 image with padding 1 sums each neighbourhood.
#[test]
fn ones_kernel_sums_neighbourhoods_by_hand() {
    let x = Tensor::new(
        &[[[[1f32, 2., 3.], [4., 5., 6.], [7., 8., 9.]]]],
        &Device::Cpu,
    )
    .unwrap();
    let w = Tensor::ones((1, 1, 3, 3), DType::F32, &Device::Cpu).unwrap();
    let y = conv2d(
        &x,
        &w,
        ConvParams {
            stride: 1,
            pad: 1,
            groups: 1,
        },
    )
    .unwrap();
    let expected = [[12f32, 21., 16.], [27., 45., 33.], [24., 39., 28.]];
    let got = y
        .squeeze(0)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    // Winograd F(4×4, 3×3) runs this case; its transforms use 1/6 and 1/24, which f32 cannot hold
    // exactly, so the sums agree to rounding (a few ulps) rather than bit for bit.
    for (row, want) in got.iter().zip(expected) {
        for (g, e) in row.iter().zip(want) {
            assert!(
                (g - e).abs() <= 1e-5 * e,
                "got {got:?}, expected {expected:?}"
            );
        }
    }
}

#[test]
fn mismatched_channels_are_an_error_not_a_panic() {
    let x = Tensor::zeros((1, 5, 4, 4), DType::F32, &Device::Cpu).unwrap();
    let w = Tensor::zeros((2, 2, 3, 3), DType::F32, &Device::Cpu).unwrap();
    let err = conv2d(
        &x,
        &w,
        ConvParams {
            stride: 1,
            pad: 1,
            groups: 2,
        },
    )
    .unwrap_err();
    // The whole message (its first line: candle appends a backtrace when RUST_BACKTRACE is set).
    assert_eq!(
        err.to_string().lines().next(),
        Some("conv2d: input has 5 channels and the weight [2, 2, 3, 3] expects 4 with 2 group(s)")
    );
    let w = Tensor::zeros((2, 5, 9, 9), DType::F32, &Device::Cpu).unwrap();
    let err = conv2d(
        &x,
        &w,
        ConvParams {
            stride: 1,
            pad: 1,
            groups: 1,
        },
    )
    .unwrap_err();
    assert_eq!(
        err.to_string().lines().next(),
        Some("conv2d: kernel 9×9 is larger than the padded input 4×4 (padding 1)")
    );
}

/// A 3×3, stride 1, padding 1, one-group convolution: the shape every Winograd variant handles.
fn same_3x3(n: usize, c_in: usize, c_out: usize, h: usize, w: usize) -> Case {
    Case {
        n,
        c_in,
        c_out,
        h,
        w,
        k: 3,
        stride: 1,
        pad: 1,
        groups: 1,
    }
}

/// The Winograd path (3×3, stride 1, padding 1, one group) on odd and even sizes, single images and
/// batches that share a tile matrix: forward, dx and dw against the naive loops (f64), and the same
/// case in f32 against candle.
#[test]
fn winograd_path_matches_naive_loops_on_odd_and_even_sizes() {
    for (i, (n, c_in, c_out, h, w)) in [
        (1, 1, 1, 1, 1),
        (1, 2, 3, 2, 2),
        (2, 3, 4, 5, 7),
        (3, 5, 2, 8, 3),
        (9, 4, 6, 4, 4),
        (2, 7, 5, 13, 11),
    ]
    .into_iter()
    .enumerate()
    {
        let case = same_3x3(n, c_in, c_out, h, w);
        assert_matches_naive(&case, 100 + i as u64);
        assert_matches_candle(&case, 100 + i as u64, DType::F32, 1e-4);
    }
}

/// Every convolution algorithm (im2col, Winograd F(2×2) and F(4×4)) run directly on raw buffers, on
/// odd and even sizes: forward, dx and dw against the naive loops (f64). `OCTCONV_CONV` picks one per
/// process; this covers all of them in one.
#[test]
fn every_algorithm_matches_naive_loops_on_raw_buffers() {
    use octconv_runtime::kernels::conv2d::{
        backward_data_with, backward_filter_with, forward_prologue_with, forward_with, Algorithm,
    };
    use octconv_runtime::kernels::prologue::Prologue;
    use octconv_runtime::kernels::ConvGeometry;
    for (i, (n, c_in, c_out, h, w)) in [
        (1, 1, 1, 1, 1),
        (2, 3, 4, 5, 7),
        (3, 5, 2, 8, 3),
        (2, 4, 6, 9, 12),
        (1, 7, 5, 13, 11),
        // At least eight tiles per row: F(4×4)'s along-the-row transforms (the cases above take
        // the small-map ones).
        (2, 3, 2, 6, 32),
        (1, 2, 3, 9, 35),
    ]
    .into_iter()
    .enumerate()
    {
        let case = same_3x3(n, c_in, c_out, h, w);
        let mut rng = ChaCha8Rng::seed_from_u64(300 + i as u64);
        let x = values(&rand_tensor(&mut rng, &[n, c_in, h, w], DType::F64));
        let wt = values(&rand_tensor(&mut rng, &[c_out, c_in, 3, 3], DType::F64));
        let r = values(&rand_tensor(&mut rng, &[n, c_out, h, w], DType::F64));
        let (ny, ndx, ndw) = naive(&case, &x, &wt, Some(&r));
        let g = ConvGeometry::new((n, c_in, h, w), (c_out, c_in, 3, 3), 1, 1, 1).unwrap();
        for alg in [
            Algorithm::Im2col,
            Algorithm::WinogradF2,
            Algorithm::WinogradF4,
        ] {
            let y = forward_with(alg, &g, &x, &wt);
            assert_close(&format!("{alg:?} y"), &y, &ny, 1e-12, &case);
            let dx = backward_data_with(alg, &g, &r, &wt);
            assert_close(&format!("{alg:?} dx"), &dx, &ndx, 1e-12, &case);
            let dw = backward_filter_with(alg, &g, &x, &r);
            assert_close(&format!("{alg:?} dw"), &dw, &ndw, 1e-12, &case);
            // A batch norm + ReLU map applied as the kernel reads its input equals the same
            // convolution of the mapped input.
            let (scale, shift): (Vec<f64>, Vec<f64>) = (0..c_in)
                .map(|c| (0.5 + 0.3 * c as f64, 0.2 * c as f64 - 0.3))
                .unzip();
            for relu in [false, true] {
                let pro = Prologue {
                    scale: &scale,
                    shift: &shift,
                    relu,
                };
                let got = forward_prologue_with(alg, &g, &x, &wt, pro);
                let want = forward_with(alg, &g, &pro.apply(&x, h * w), &wt);
                assert_close(&format!("{alg:?} prologue"), &got, &want, 1e-12, &case);
            }
        }
    }
}

/// The fused resampling ops against candle's pooling and the broadcast upsampling, with gradients
/// against central differences.
#[test]
fn pool_and_add_upsampled_match_candle_and_finite_differences() {
    use octconv_runtime::ops::{add_upsampled, avg_pool2x2, upsample_nearest2x};
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for (h, w) in [(4, 4), (6, 2), (5, 7)] {
        let x = rand_tensor(&mut rng, &[2, 3, h, w], DType::F64);
        assert_close(
            "pool",
            &values(&avg_pool2x2(&x).unwrap()),
            &values(&x.avg_pool2d(2).unwrap()),
            1e-14,
            &Case {
                n: 2,
                c_in: 3,
                c_out: 3,
                h,
                w,
                k: 2,
                stride: 2,
                pad: 0,
                groups: 1,
            },
        );
    }
    let hi = rand_tensor(&mut rng, &[2, 3, 6, 4], DType::F64);
    let lo = rand_tensor(&mut rng, &[2, 3, 3, 2], DType::F64);
    let fused = add_upsampled(&hi, &lo).unwrap();
    let plain = (&hi + upsample_nearest2x(&lo).unwrap()).unwrap();
    assert_eq!(values(&fused), values(&plain));
    // Gradients: L = Σ r ⊙ (pool(a) + lo) + Σ s ⊙ add_upsampled(hi, lo).
    let a = rand_tensor(&mut rng, &[2, 3, 6, 4], DType::F64);
    let r = rand_tensor(&mut rng, &[2, 3, 3, 2], DType::F64);
    let s = rand_tensor(&mut rng, &[2, 3, 6, 4], DType::F64);
    let loss = |a: &Tensor, hi: &Tensor, lo: &Tensor| -> Tensor {
        let p = ((avg_pool2x2(a).unwrap() + lo).unwrap() * &r)
            .unwrap()
            .sum_all()
            .unwrap();
        let q = (add_upsampled(hi, lo).unwrap() * &s)
            .unwrap()
            .sum_all()
            .unwrap();
        (p + q).unwrap()
    };
    let vars: Vec<Var> = [&a, &hi, &lo]
        .iter()
        .map(|t| Var::from_tensor(t).unwrap())
        .collect();
    let grads = loss(
        vars[0].as_tensor(),
        vars[1].as_tensor(),
        vars[2].as_tensor(),
    )
    .backward()
    .unwrap();
    let eps = 1e-6;
    for (which, v) in vars.iter().enumerate() {
        let base = values(v.as_tensor());
        let g = values(grads.get(v.as_tensor()).unwrap());
        for k in 0..base.len() {
            let at = |d: f64| {
                let mut b = base.clone();
                b[k] += d;
                let t = Tensor::from_vec(b, v.as_tensor().shape(), &Device::Cpu).unwrap();
                let mut args = [a.clone(), hi.clone(), lo.clone()];
                args[which] = t;
                loss(&args[0], &args[1], &args[2])
                    .to_scalar::<f64>()
                    .unwrap()
            };
            let fd = (at(eps) - at(-eps)) / (2.0 * eps);
            assert!(
                (fd - g[k]).abs() < 1e-6,
                "input {which}[{k}]: autograd {} vs FD {fd}",
                g[k]
            );
        }
    }
}

#[test]
fn depthwise_kernel_matches_naive_loops_at_every_stride_padding_and_the_smallest_maps() {
    use octconv_runtime::kernels::conv2d::{algorithm, Algorithm};
    use octconv_runtime::kernels::{depthwise, ConvGeometry};
    let mut i = 0u64;
    // Channels (odd counts), multiplier, map sides down to 1×1, kernels 1/3/5/7, stride 1–3,
    // padding 0 to k / 2 + 1.
    for (c, mult) in [(1, 1), (3, 1), (5, 2), (7, 1)] {
        for (h, w) in [(1, 1), (2, 2), (2, 3), (5, 4), (9, 7), (14, 14)] {
            for k in [1, 3, 5, 7] {
                for stride in 1..=3 {
                    for pad in 0..=k / 2 + 1 {
                        if h + 2 * pad < k || w + 2 * pad < k {
                            continue;
                        }
                        i += 1;
                        let case = Case {
                            n: 2,
                            c_in: c,
                            c_out: c * mult,
                            h,
                            w,
                            k,
                            stride,
                            pad,
                            groups: c,
                        };
                        let g =
                            ConvGeometry::new((2, c, h, w), (c * mult, 1, k, k), stride, pad, c)
                                .unwrap();
                        assert!(depthwise::applies(&g));
                        // One channel, 3×3 "same" stride 1 is a dense convolution: Winograd.
                        if c > 1 {
                            assert_eq!(algorithm(&g), Algorithm::Depthwise);
                        }
                        let mut rng = ChaCha8Rng::seed_from_u64(900 + i);
                        let x = values(&rand_tensor(&mut rng, &[2, c, h, w], DType::F64));
                        let wt = values(&rand_tensor(&mut rng, &[c * mult, 1, k, k], DType::F64));
                        let r = values(&rand_tensor(
                            &mut rng,
                            &[2, c * mult, g.oh(), g.ow()],
                            DType::F64,
                        ));
                        let (ny, ndx, ndw) = naive(&case, &x, &wt, Some(&r));
                        assert_close(
                            "depthwise y",
                            &depthwise::forward(&g, &x, &wt),
                            &ny,
                            1e-12,
                            &case,
                        );
                        let dx = depthwise::backward_data(&g, &r, &wt);
                        assert_close("depthwise dx", &dx, &ndx, 1e-12, &case);
                        let dw = depthwise::backward_filter(&g, &x, &r);
                        assert_close("depthwise dw", &dw, &ndw, 1e-12, &case);
                    }
                }
            }
        }
    }
    assert!(i > 300, "{i} cases");
}

/// `pointwise::forward_mapped`: a 1×1 convolution of `relu(scale·x + shift)` (and without the
/// ReLU) equals direct summation over the mapped input, for odd channel counts, maps smaller and
/// larger than one column block, one and three images, and images that lie further apart than their
/// size (the first channels of a concatenation buffer).
#[test]
fn pointwise_mapped_kernel_equals_direct_summation_of_the_mapped_input_with_strided_images() {
    use octconv_runtime::kernels::pointwise::forward_mapped;
    use octconv_runtime::kernels::prologue::Prologue;
    let mut rng = ChaCha8Rng::seed_from_u64(4242);
    let mut cases = 0;
    for (n, cin, hw, cout, extra) in [
        (1, 1, 1, 1, 0),
        (3, 5, 7, 3, 2),
        (2, 3, 1000, 5, 0),
        (3, 257, 300, 9, 64),
        (2, 64, 3136, 16, 5),
    ] {
        for relu in [true, false] {
            cases += 1;
            let image = (cin + extra) * hw;
            let x: Vec<f64> = (0..(n - 1) * image + cin * hw)
                .map(|_| rng.random_range(-1.0..1.0))
                .collect();
            let w: Vec<f64> = (0..cout * cin)
                .map(|_| rng.random_range(-1.0..1.0))
                .collect();
            let scale: Vec<f64> = (0..cin).map(|_| rng.random_range(-2.0..2.0)).collect();
            let shift: Vec<f64> = (0..cin).map(|_| rng.random_range(-0.5..0.5)).collect();
            let pro = Prologue {
                scale: &scale,
                shift: &shift,
                relu,
            };
            let got = forward_mapped((n, cin, hw, cout), &x, image, &w, pro);
            assert_eq!(got.len(), n * cout * hw);
            for i in 0..n {
                for co in 0..cout {
                    for p in 0..hw {
                        let mut want = 0.0;
                        for ci in 0..cin {
                            let v = scale[ci] * x[i * image + ci * hw + p] + shift[ci];
                            let v = if relu { v.max(0.0) } else { v };
                            want += w[co * cin + ci] * v;
                        }
                        let g = got[(i * cout + co) * hw + p];
                        assert!(
                            (g - want).abs() <= 1e-12 * (1.0 + want.abs()) * cin as f64,
                            "n {n} cin {cin} hw {hw} cout {cout} relu {relu}: [{i}, {co}, {p}] {g} vs {want}"
                        );
                    }
                }
            }
        }
    }
    assert_eq!(cases, 10);
}

/// `pointwise::forward_mapped_pair`: the four-path 1×1 octave convolution of the mapped pair
/// (`relu(scale·x + shift)` per branch) equals the kernel's plain forward on inputs mapped
/// beforehand, bit for bit, with images further apart than their size (a concatenation buffer's
/// first channels), odd channel counts, one or three images, layers into and out of the pair, and
/// maps large enough to run in row bands.
#[test]
fn pointwise_octave_mapped_kernel_equals_the_plain_kernel_on_mapped_inputs() {
    use octconv_runtime::kernels::octave::OctaveGeometry;
    use octconv_runtime::kernels::pointwise::{
        forward, forward_mapped_pair, PathWeights, PointwiseOctave,
    };
    use octconv_runtime::kernels::prologue::Prologue;
    let mut rng = ChaCha8Rng::seed_from_u64(77);
    let mut r =
        |len: usize, a: f32| -> Vec<f32> { (0..len).map(|_| rng.random_range(-a..a)).collect() };
    for (n, in_h, in_l, out_h, out_l, h, extra) in [
        (1, 1, 1, 1, 1, 2, 0),
        (3, 5, 3, 4, 7, 6, 2),
        (2, 16, 16, 8, 24, 14, 5),
        // A layer into the pair and one out of it.
        (2, 6, 0, 8, 5, 6, 1),
        (2, 6, 3, 8, 0, 6, 1),
        // Large enough for row bands where mapped (8 rows; the plain kernel runs the image whole):
        // different bands, the same values.
        (1, 40, 24, 200, 100, 32, 3),
    ] {
        let g = PointwiseOctave {
            octave: OctaveGeometry {
                n,
                in_h,
                in_l,
                out_h,
                out_l,
                h,
                w: h,
            },
            stride: 1,
        };
        assert!(g.applies());
        let (hw, lhw) = (h * h, h * h / 4);
        let (image_h, image_l) = ((in_h + extra) * hw, (in_l + extra) * lhw);
        let xh = r((n - 1) * image_h + in_h * hw, 1.0);
        let xl = r((n - 1) * image_l + in_l * lhw, 1.0);
        let (hh, hl, lh, ll) = (
            r(out_h * in_h, 1.0),
            r(out_l * in_h, 1.0),
            r(out_h * in_l, 1.0),
            r(out_l * in_l, 1.0),
        );
        let (sh, bh, sl, bl) = (r(in_h, 2.0), r(in_h, 0.5), r(in_l, 2.0), r(in_l, 0.5));
        let pro = |scale, shift| Prologue {
            scale,
            shift,
            relu: true,
        };
        let wt = PathWeights {
            hh: &hh,
            hl: &hl,
            lh: &lh,
            ll: &ll,
        };
        let (got_h, got_l) = forward_mapped_pair(
            &g,
            (&xh, &xl),
            (image_h, image_l),
            wt,
            [pro(&sh, &bh), pro(&sl, &bl)],
        );
        // The reference: each image's branches mapped and packed contiguously first.
        let mapped = |x: &[f32], image: usize, c: usize, plane: usize, s: &[f32], b: &[f32]| {
            (0..n)
                .flat_map(|i| (0..c * plane).map(move |k| (i, k)))
                .map(|(i, k)| (s[k / plane] * x[i * image + k] + b[k / plane]).max(0.0))
                .collect::<Vec<f32>>()
        };
        let mh = mapped(&xh, image_h, in_h, hw, &sh, &bh);
        let ml = mapped(&xl, image_l, in_l, lhw, &sl, &bl);
        let (want_h, want_l) = forward(&g, &mh, &ml, wt);
        assert_eq!(got_h.len(), n * out_h * hw);
        assert_eq!(got_l.len(), n * out_l * lhw);
        assert_eq!(got_h, want_h, "high output, n {n} in {in_h}/{in_l}");
        assert_eq!(got_l, want_l, "low output, n {n} in {in_h}/{in_l}");
    }
}

/// A large map by im2col (one image per task) is unfolded and multiplied a few output rows at a
/// time (`unfold::im2col_rows`): the blocks, the last one shorter, together give direct summation
/// — a 5×5 kernel on 43×43 (3 rows a block, 15 blocks) and a 7×7 stride-2 stem on 3 × 64 × 64.
#[test]
fn im2col_in_row_blocks_matches_naive_loops_on_large_maps() {
    use octconv_runtime::kernels::conv2d::{self, algorithm, Algorithm};
    use octconv_runtime::kernels::ConvGeometry;
    for (i, (c_in, c_out, h, k, stride, pad)) in [(8, 5, 43, 5, 1, 2), (3, 4, 64, 7, 2, 3)]
        .into_iter()
        .enumerate()
    {
        let case = Case {
            n: 2,
            c_in,
            c_out,
            h,
            w: h,
            k,
            stride,
            pad,
            groups: 1,
        };
        let g = ConvGeometry::new((2, c_in, h, h), (c_out, c_in, k, k), stride, pad, 1).unwrap();
        assert_eq!(algorithm(&g), Algorithm::Im2col);
        assert!(g.out_pixels() >= 512, "one image per task");
        let mut rng = ChaCha8Rng::seed_from_u64(77 + i as u64);
        let x = values(&rand_tensor(&mut rng, &[2, c_in, h, h], DType::F64));
        let wt = values(&rand_tensor(&mut rng, &[c_out, c_in, k, k], DType::F64));
        let (ny, _, _) = naive(&case, &x, &wt, None);
        assert_close(
            "blocked im2col y",
            &conv2d::forward(&g, &x, &wt),
            &ny,
            1e-12,
            &case,
        );
    }
}

/// Several small images per task by im2col (`conv2d::forward`, one group): the column matrix is
/// unfolded and multiplied a chunk of input channels at a time, the chunks' products accumulated —
/// 3×3 stride-2 layers of 7, 96 and 250 input channels at 14×14 and 11×11 (f64: the 96- and
/// 250-channel ones take two and three chunks of about 1 MiB), with an odd batch whose last task is
/// short, against direct summation.
#[test]
fn im2col_in_channel_chunks_matches_naive_loops_for_batched_small_maps() {
    use octconv_runtime::kernels::conv2d::{self, algorithm, Algorithm};
    use octconv_runtime::kernels::ConvGeometry;
    for (i, (n, c_in, c_out, h)) in [(5, 7, 6, 14), (8, 96, 5, 14), (7, 250, 9, 11)]
        .into_iter()
        .enumerate()
    {
        let case = Case {
            n,
            c_in,
            c_out,
            h,
            w: h,
            k: 3,
            stride: 2,
            pad: 1,
            groups: 1,
        };
        let g = ConvGeometry::new((n, c_in, h, h), (c_out, c_in, 3, 3), 2, 1, 1).unwrap();
        assert_eq!(algorithm(&g), Algorithm::Im2col);
        let mut rng = ChaCha8Rng::seed_from_u64(97 + i as u64);
        let x = values(&rand_tensor(&mut rng, &[n, c_in, h, h], DType::F64));
        let wt = values(&rand_tensor(&mut rng, &[c_out, c_in, 3, 3], DType::F64));
        let (ny, _, _) = naive(&case, &x, &wt, None);
        assert_close(
            "channel-chunked im2col y",
            &conv2d::forward(&g, &x, &wt),
            &ny,
            1e-12,
            &case,
        );
    }
}
