//! The four-path 1×1 octave kernel (`kernels::pointwise`) and the linear layer's kernel
//! (`kernels::gemm::linear`) against direct summation in f64: odd channel counts, stride 1 and 2,
//! batches of one and several images, the smallest maps each stride takes (2×2 and 4×4); the linear
//! kernel also in f32 (its AVX-512 path where the CPU has it).

use octconv_runtime::kernels::octave::OctaveGeometry;
use octconv_runtime::kernels::pointwise::{forward, forward_post, PathWeights, PointwiseOctave};
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

/// The row map the checks apply to channel `c` of a branch (`high`): an affine map that differs
/// per channel and per branch, so a row mapped with the wrong channel or twice or not at all shows.
fn row_map(high: bool, c: usize, v: f64) -> f64 {
    let k = if high { 1.0 } else { -0.5 };
    v * (1.0 + 0.25 * c as f64) * k + 0.125 * c as f64
}

/// Runs the kernel on random data for `g` (with the row maps when `mapped`) and compares both
/// outputs with direct summation; `seed` picks the data.
fn check(g: &PointwiseOctave, seed: u64, mapped: bool) {
    let o = g.octave;
    let (n, in_h, in_l, out_h, out_l, h, w) = (o.n, o.in_h, o.in_l, o.out_h, o.out_l, o.h, o.w);
    assert!(g.applies(), "{g:?}");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
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
    let (yh, yl) = if mapped {
        let (mh, ml) = (
            |c: usize, row: &mut [f64]| row.iter_mut().for_each(|v| *v = row_map(true, c, *v)),
            |c: usize, row: &mut [f64]| row.iter_mut().for_each(|v| *v = row_map(false, c, *v)),
        );
        forward_post(g, &xh, &xl, wt, [Some(&mh), Some(&ml)])
    } else {
        forward(g, &xh, &xl, wt)
    };
    // A path with no input or output channels sums nothing: `matmul` of zero channels is zeros.
    let (mut want_h, mut want_l) = (Vec::new(), Vec::new());
    for i in 0..n {
        let xh = &xh[i * in_h * hw..][..in_h * hw];
        let xl = &xl[i * in_l * lhw..][..in_l * lhw];
        let (ph, q) = (pool(xh, in_h, h, w), lhw / 4);
        if g.stride == 1 {
            let lh_up = upsample(&matmul(&lh, xl, out_h, in_l, lhw), out_h, h / 2, w / 2);
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
            let (ph2, pl) = (pool(&ph, in_h, h / 2, w / 2), pool(xl, in_l, h / 2, w / 2));
            want_l.extend(add(
                &matmul(&hl, &ph2, out_l, in_h, q),
                &matmul(&ll, &pl, out_l, in_l, q),
            ));
        }
    }
    if mapped {
        let (oh, ol) = (hw / g.stride.pow(2), lhw / g.stride.pow(2));
        for (i, v) in want_h.iter_mut().enumerate() {
            *v = row_map(true, (i / oh) % out_h, *v);
        }
        for (i, v) in want_l.iter_mut().enumerate() {
            *v = row_map(false, (i / ol) % out_l, *v);
        }
    }
    for (name, got, want) in [("high", &yh, &want_h), ("low", &yl, &want_l)] {
        assert_eq!(got.len(), want.len(), "{name} of {g:?}");
        assert!(!want.is_empty() || (name == "low" && out_l == 0));
        let err = got
            .iter()
            .zip(want.iter())
            .fold(0f64, |m, (a, b)| m.max((a - b).abs()));
        assert!(err < 1e-12, "{name} of {g:?} differs by {err:e}");
    }
}

fn geometry(
    (n, in_h, in_l, out_h, out_l): (usize, usize, usize, usize, usize),
    (h, w): (usize, usize),
    stride: usize,
) -> PointwiseOctave {
    PointwiseOctave {
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
    }
}

/// All four paths, a layer into the pair (no low input) and one out of it (no low output), at
/// both strides, on the smallest maps each stride takes and a few larger ones, with and without
/// the row maps.
#[test]
fn pointwise_octave_kernel_matches_direct_summation_at_both_strides_and_the_smallest_maps() {
    let mut cases = 0;
    for stride in [1usize, 2] {
        let smallest = 2 * stride;
        for hw in [
            (smallest, smallest),
            (smallest, 3 * smallest),
            (4 * smallest, 2 * smallest),
        ] {
            for channels in [
                (1, 3, 1, 1, 5),
                (3, 7, 5, 9, 3),
                (2, 1, 1, 1, 1),
                (2, 3, 0, 4, 5),
                (2, 5, 3, 7, 0),
            ] {
                cases += 1;
                check(&geometry(channels, hw, stride), cases, cases % 2 == 0);
            }
        }
    }
    assert_eq!(cases, 30);
}

/// At stride 1 an image with more than 512 Ki output values runs in bands of rows (about 128 Ki
/// values each): bands that leave a short last one, with and without a low input or output, with
/// the row maps (which must see each band's rows exactly once).
#[test]
fn pointwise_octave_kernel_in_row_bands_matches_direct_summation() {
    // 320 output channels, more than 512 Ki output values an image: 409 columns a band, so 12
    // rows of 32 (64 = 5 × 12 + 4) and 16 rows of 24 (90 = 5 × 16 + 10); the kernel's unit test
    // `band_rows_are_even_and_bounded` pins these counts.
    for (seed, (channels, hw)) in [
        ((2, 6, 3, 240, 80), (64, 32)),
        ((1, 5, 2, 250, 70), (90, 24)),
        ((1, 4, 0, 300, 20), (64, 32)),
        ((1, 7, 3, 320, 0), (90, 24)),
        ((1, 3, 2, 200, 120), (64, 32)),
    ]
    .into_iter()
    .enumerate()
    {
        check(&geometry(channels, hw, 1), 100 + seed as u64, true);
    }
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
    assert!(no_low.applies(), "a layer out of the pair");
    let neither = PointwiseOctave {
        octave: OctaveGeometry {
            in_l: 0,
            ..no_low.octave
        },
        ..no_low
    };
    assert!(
        !neither.applies(),
        "a one-branch layer is a plain convolution"
    );
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

#[test]
fn linear_kernel_in_f32_matches_direct_summation_for_every_row_count_and_width() {
    use octconv_runtime::kernels::gemm::{linear, DOT_ROWS};
    let mut rng = ChaCha8Rng::seed_from_u64(78);
    // Every row count of the dot-product path (blocks of eight rows and each remainder), widths
    // below, at and off the 16-lane vector, with and without a bias.
    for n in 1..=DOT_ROWS + 1 {
        for (inp, out) in [(1, 3), (15, 2), (16, 5), (37, 7), (2048, 9)] {
            for bias in [false, true] {
                let x = random(&mut rng, n * inp);
                let w = random(&mut rng, out * inp);
                let b = random(&mut rng, out);
                let f32s = |v: &[f64]| v.iter().map(|&v| v as f32).collect::<Vec<f32>>();
                let (xf, wf, bf) = (f32s(&x), f32s(&w), f32s(&b));
                let y = linear(&xf, &wf, bias.then_some(&bf[..]), (n, inp, out));
                assert_eq!(y.len(), n * out);
                for (k, &got) in y.iter().enumerate() {
                    let (i, o) = (k / out, k % out);
                    // The f32 operands summed in f64, and the bound on f32 rounding of the sum.
                    let (mut s, mut mag) = (0.0, 0.0);
                    for c in 0..inp {
                        let p = xf[i * inp + c] as f64 * wf[o * inp + c] as f64;
                        s += p;
                        mag += p.abs();
                    }
                    if bias {
                        s += bf[o] as f64;
                        mag += (bf[o] as f64).abs();
                    }
                    let tol = 1e-6 * (mag + 1.0);
                    assert!(
                        (got as f64 - s).abs() <= tol,
                        "n {n}, {inp} → {out}, bias {bias}, output {k}: {got} vs {s}"
                    );
                }
            }
        }
    }
}
