//! The four-path 1×1 octave kernel (`kernels::pointwise`) and the linear layer's kernel
//! (`kernels::gemm::linear`) against direct summation in f64: odd channel counts, stride 1 and 2,
//! batches of one and several images, the smallest maps each stride takes (2×2 and 4×4).

use octconv_runtime::kernels::octave::OctaveGeometry;
use octconv_runtime::kernels::pointwise::{forward, PathWeights, PointwiseOctave};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn random(rng: &mut ChaCha8Rng, len: usize) -> Vec<f64> {
    (0..len).map(|_| rng.random::<f64>() * 2.0 - 1.0).collect()
}

/// `c` planes of `h × w` → 2×2 averages.
fn pool(x: &[f64], c: usize, h: usize, w: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(c * h * w / 4);
    for p in 0..c {
        for y in 0..h / 2 {
            for xx in 0..w / 2 {
                let at = |dy: usize, dx: usize| x[p * h * w + (2 * y + dy) * w + 2 * xx + dx];
                out.push(0.25 * (at(0, 0) + at(0, 1) + at(1, 0) + at(1, 1)));
            }
        }
    }
    out
}

/// `y[co][p] = Σ_ci w[co][ci] · x[ci][p]` over `pixels` positions.
fn matmul(w: &[f64], x: &[f64], cout: usize, cin: usize, pixels: usize) -> Vec<f64> {
    (0..cout * pixels)
        .map(|i| {
            let (co, p) = (i / pixels, i % pixels);
            (0..cin)
                .map(|ci| w[co * cin + ci] * x[ci * pixels + p])
                .sum()
        })
        .collect()
}

/// Nearest ×2 upsampling of `c` planes of `h × w`.
fn upsample(x: &[f64], c: usize, h: usize, w: usize) -> Vec<f64> {
    (0..c * 4 * h * w)
        .map(|i| {
            let (p, r) = (i / (4 * h * w), i % (4 * h * w));
            let (y, xx) = (r / (2 * w), r % (2 * w));
            x[p * h * w + (y / 2) * w + xx / 2]
        })
        .collect()
}

fn add(a: &[f64], b: &[f64]) -> Vec<f64> {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(a, b)| a + b).collect()
}

#[test]
fn pointwise_octave_kernel_matches_direct_summation_at_both_strides_and_the_smallest_maps() {
    let mut cases = 0;
    for stride in [1usize, 2] {
        let smallest = 2 * stride;
        for (h, w) in [
            (smallest, smallest),
            (smallest, 3 * smallest),
            (4 * smallest, 2 * smallest),
        ] {
            for (n, in_h, in_l, out_h, out_l) in [(1, 3, 1, 1, 5), (3, 7, 5, 9, 3), (2, 1, 1, 1, 1)]
            {
                cases += 1;
                let g = PointwiseOctave {
                    octave: OctaveGeometry {
                        n,
                        in_h,
                        in_l,
                        out_h,
                        out_l,
                        h,
                        w,
                    },
                    stride,
                };
                assert!(g.applies(), "{g:?}");
                let mut rng = ChaCha8Rng::seed_from_u64(cases);
                let (hw, lhw) = (h * w, h * w / 4);
                let xh = random(&mut rng, n * in_h * hw);
                let xl = random(&mut rng, n * in_l * lhw);
                let [hh, hl, lh, ll] = [
                    random(&mut rng, out_h * in_h),
                    random(&mut rng, out_l * in_h),
                    random(&mut rng, out_h * in_l),
                    random(&mut rng, out_l * in_l),
                ];
                let wt = PathWeights {
                    hh: &hh,
                    hl: &hl,
                    lh: &lh,
                    ll: &ll,
                };
                let (yh, yl) = forward(&g, &xh, &xl, wt);
                let (mut want_h, mut want_l) = (Vec::new(), Vec::new());
                for i in 0..n {
                    let xh = &xh[i * in_h * hw..][..in_h * hw];
                    let xl = &xl[i * in_l * lhw..][..in_l * lhw];
                    let (ph, q) = (pool(xh, in_h, h, w), lhw / 4);
                    if stride == 1 {
                        let lh_up =
                            upsample(&matmul(&lh, xl, out_h, in_l, lhw), out_h, h / 2, w / 2);
                        want_h.extend(add(&matmul(&hh, xh, out_h, in_h, hw), &lh_up));
                        want_l.extend(add(
                            &matmul(&hl, &ph, out_l, in_h, lhw),
                            &matmul(&ll, xl, out_l, in_l, lhw),
                        ));
                    } else {
                        want_h.extend(add(
                            &matmul(&hh, &ph, out_h, in_h, lhw),
                            &matmul(&lh, xl, out_h, in_l, lhw),
                        ));
                        let (ph2, pl) =
                            (pool(&ph, in_h, h / 2, w / 2), pool(xl, in_l, h / 2, w / 2));
                        want_l.extend(add(
                            &matmul(&hl, &ph2, out_l, in_h, q),
                            &matmul(&ll, &pl, out_l, in_l, q),
                        ));
                    }
                }
                for (name, got, want) in [("high", &yh, &want_h), ("low", &yl, &want_l)] {
                    assert_eq!(got.len(), want.len(), "{name} of {g:?}");
                    assert!(!want.is_empty());
                    let err = got
                        .iter()
                        .zip(want.iter())
                        .fold(0f64, |m, (a, b)| m.max((a - b).abs()));
                    assert!(err < 1e-12, "{name} of {g:?} differs by {err:e}");
                }
            }
        }
    }
    assert_eq!(cases, 18);
}

#[test]
fn pointwise_octave_kernel_refuses_maps_a_path_would_pool_unevenly() {
    let g = |h: usize, w: usize, stride: usize| PointwiseOctave {
        octave: OctaveGeometry {
            n: 1,
            in_h: 2,
            in_l: 2,
            out_h: 2,
            out_l: 2,
            h,
            w,
        },
        stride,
    };
    assert!(g(2, 2, 1).applies());
    assert!(!g(3, 2, 1).applies());
    assert!(!g(2, 2, 2).applies(), "stride 2 pools the high input twice");
    assert!(g(4, 8, 2).applies());
    assert!(!g(6, 4, 2).applies());
    assert!(!g(4, 4, 3).applies());
    let base = g(4, 4, 1);
    let no_low = PointwiseOctave {
        octave: OctaveGeometry {
            out_l: 0,
            ..base.octave
        },
        ..base
    };
    assert!(!no_low.applies(), "all four paths");
}

#[test]
fn linear_kernel_matches_direct_summation_for_few_rows_and_many() {
    use octconv_runtime::kernels::gemm::{linear, DOT_ROWS};
    let mut rng = ChaCha8Rng::seed_from_u64(77);
    let mut cases = 0;
    // Rows on both sides of the dot-product / GEMM switch, odd and lane-sized input widths.
    for n in [1, 3, DOT_ROWS, DOT_ROWS + 1, 40] {
        for (inp, out) in [(1, 1), (37, 5), (64, 70), (100, 129)] {
            for bias in [false, true] {
                cases += 1;
                let x = random(&mut rng, n * inp);
                let w = random(&mut rng, out * inp);
                let b = random(&mut rng, out);
                let y = linear(&x, &w, bias.then_some(&b[..]), (n, inp, out));
                let want: Vec<f64> = (0..n * out)
                    .map(|k| {
                        let (i, o) = (k / out, k % out);
                        let s: f64 = (0..inp).map(|c| x[i * inp + c] * w[o * inp + c]).sum();
                        s + if bias { b[o] } else { 0.0 }
                    })
                    .collect();
                assert_eq!(y.len(), want.len());
                let err = y
                    .iter()
                    .zip(&want)
                    .fold(0f64, |m, (a, b)| m.max((a - b).abs()));
                assert!(err < 1e-12, "n {n}, {inp} → {out}, bias {bias}: {err:e}");
            }
        }
    }
    assert_eq!(cases, 40);
}
