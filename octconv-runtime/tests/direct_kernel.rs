//! The direct 3×3 kernel (`kernels::direct`): the one-path convolution and the four-path octave
//! convolution against direct summation in f64 — odd and even channel counts (blocks of four output
//! channels with a remainder), maps from 2×2 (one block spans several rows and the padding columns)
//! to 17×13, batches of one and several images, with and without the batch norm + ReLU prologue and
//! an output map.

use octconv_runtime::kernels::direct::{self, OctavePacked, Packed};
use octconv_runtime::kernels::octave::{OctaveGeometry, OctaveWeights};
use octconv_runtime::kernels::prologue::Prologue;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn random(rng: &mut ChaCha8Rng, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect()
}

/// `relu(scale·v + shift)` per channel (`c` channels, planes of `plane`), in f64.
fn mapped(x: &[f32], c: usize, plane: usize, map: Option<(&[f32], &[f32])>) -> Vec<f64> {
    x.iter()
        .enumerate()
        .map(|(i, &v)| match map {
            Some((scale, shift)) => {
                let ch = (i / plane) % c;
                (scale[ch] as f64 * v as f64 + shift[ch] as f64).max(0.0)
            }
            None => v as f64,
        })
        .collect()
}

/// Zero-padded 3×3 convolution, stride 1, by direct summation: `[n, cin, h, w]` → `[n, cout, h, w]`.
fn conv3x3(
    x: &[f64],
    w: &[f32],
    (n, cin, cout): (usize, usize, usize),
    (h, wd): (usize, usize),
) -> Vec<f64> {
    let mut y = vec![0.0; n * cout * h * wd];
    for i in 0..n {
        for co in 0..cout {
            for oy in 0..h {
                for ox in 0..wd {
                    let mut s = 0.0;
                    for ci in 0..cin {
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let (iy, ix) = (oy + ky, ox + kx);
                                if iy < 1 || ix < 1 || iy > h || ix > wd {
                                    continue;
                                }
                                let v = x[((i * cin + ci) * h + iy - 1) * wd + ix - 1];
                                s += w[((co * cin + ci) * 3 + ky) * 3 + kx] as f64 * v;
                            }
                        }
                    }
                    y[((i * cout + co) * h + oy) * wd + ox] = s;
                }
            }
        }
    }
    y
}

/// 2×2 averages of `planes` planes of `h × w`.
fn pool(x: &[f64], planes: usize, (h, w): (usize, usize)) -> Vec<f64> {
    let mut out = Vec::new();
    for p in 0..planes {
        for y in 0..h / 2 {
            for xx in 0..w / 2 {
                let at = |dy: usize, dx: usize| x[p * h * w + (2 * y + dy) * w + 2 * xx + dx];
                out.push(0.25 * (at(0, 0) + at(0, 1) + at(1, 0) + at(1, 1)));
            }
        }
    }
    out
}

/// The batch norm + ReLU prologue of `scale`, `shift`, if `on`.
fn prologue<'a>(on: bool, scale: &'a [f32], shift: &'a [f32]) -> Option<Prologue<'a, f32>> {
    on.then_some(Prologue {
        scale,
        shift,
        relu: true,
    })
}

/// Largest |a − b| relative to the largest |b| (at least 1).
fn rel_err(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .map(|(&a, &b)| (a as f64 - b).abs())
        .fold(0.0, f64::max)
        / scale
}

#[test]
fn direct_conv3x3_matches_direct_summation_for_odd_channels_small_maps_and_a_prologue() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut cases = 0;
    for &(n, cin, cout) in &[(1, 1, 1), (2, 3, 5), (3, 8, 4), (1, 17, 9), (2, 32, 16)] {
        for &(h, w) in &[(1, 1), (2, 2), (4, 4), (3, 7), (8, 8), (17, 13)] {
            for with_map in [false, true] {
                let x = random(&mut rng, n * cin * h * w);
                let wt = random(&mut rng, cout * cin * 9);
                let scale = random(&mut rng, cin);
                let shift = random(&mut rng, cin);
                let map = with_map.then_some((&scale[..], &shift[..]));
                let pro = with_map.then_some(Prologue {
                    scale: &scale[..],
                    shift: &shift[..],
                    relu: true,
                });
                // The output map doubles every value of channel `c` and adds `c`.
                let post = |c: usize, row: &mut [f32]| {
                    row.iter_mut().for_each(|v| *v = 2.0 * *v + c as f32)
                };
                let got = direct::forward(
                    (n, h, w),
                    &x,
                    &Packed::from_oihw(&wt, cout, cin),
                    pro,
                    Some(&post),
                );
                let mut want = conv3x3(&mapped(&x, cin, h * w, map), &wt, (n, cin, cout), (h, w));
                for (i, v) in want.iter_mut().enumerate() {
                    *v = 2.0 * *v + ((i / (h * w)) % cout) as f64;
                }
                let err = rel_err(&got, &want);
                assert!(
                    err < 1e-5,
                    "n {n}, {cin} → {cout} channels, {h}×{w}, map {with_map}: error {err:e}"
                );
                cases += 1;
            }
        }
    }
    assert_eq!(cases, 60);
}

#[test]
fn direct_octave_kernel_matches_the_four_paths_by_direct_summation() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    // (n, in_h, in_l, out_h, out_l, h, w): odd counts, one channel per branch, 2×2 high maps (1×1
    // low), a rectangle, the seed's 16 + 16 channels at 32×32, and DenseNet-121's growth layers at
    // 14×14 at α = .5 and .25 (64 + 64 → 16 + 16 and 96 + 32 → 24 + 8, 7×7 low maps: blocks of 8
    // output channels by 32 positions with a 16-position tail where the CPU has AVX-512).
    let cases = [
        (1, 1, 1, 1, 1, 2, 2),
        (2, 3, 5, 7, 2, 4, 4),
        (3, 9, 4, 6, 11, 6, 10),
        (1, 16, 16, 16, 16, 8, 8),
        (2, 16, 16, 16, 16, 32, 32),
        (2, 64, 64, 16, 16, 14, 14),
        (1, 96, 32, 24, 8, 14, 14),
    ];
    for (n, in_h, in_l, out_h, out_l, h, w) in cases {
        let g = OctaveGeometry {
            n,
            in_h,
            in_l,
            out_h,
            out_l,
            h,
            w,
        };
        let (lh, lw) = (h / 2, w / 2);
        for with_map in [false, true] {
            let xh = random(&mut rng, n * in_h * h * w);
            let xl = random(&mut rng, n * in_l * lh * lw);
            let [whh, whl, wlh, wll] = [
                random(&mut rng, out_h * in_h * 9),
                random(&mut rng, out_l * in_h * 9),
                random(&mut rng, out_h * in_l * 9),
                random(&mut rng, out_l * in_l * 9),
            ];
            let (sh, th, sl, tl) = (
                random(&mut rng, in_h),
                random(&mut rng, in_h),
                random(&mut rng, in_l),
                random(&mut rng, in_l),
            );
            let packed = OctavePacked::new(
                &g,
                OctaveWeights {
                    hh: &whh,
                    hl: &whl,
                    lh: &wlh,
                    ll: &wll,
                },
            );
            let (yh, yl) = direct::octave_forward(
                &g,
                &xh,
                &xl,
                &packed,
                [prologue(with_map, &sh, &th), prologue(with_map, &sl, &tl)],
            );
            let mh = mapped(&xh, in_h, h * w, with_map.then_some((&sh[..], &th[..])));
            let ml = mapped(&xl, in_l, lh * lw, with_map.then_some((&sl[..], &tl[..])));
            // High: H→H + up(L→H); low: H→L(pool) + L→L.
            let hh = conv3x3(&mh, &whh, (n, in_h, out_h), (h, w));
            let lhp = conv3x3(&ml, &wlh, (n, in_l, out_h), (lh, lw));
            let want_h: Vec<f64> = (0..hh.len())
                .map(|i| {
                    let (p, r) = (i / (h * w), i % (h * w));
                    hh[i] + lhp[p * lh * lw + (r / w / 2) * lw + (r % w) / 2]
                })
                .collect();
            let pooled = pool(&mh, n * in_h, (h, w));
            let hl = conv3x3(&pooled, &whl, (n, in_h, out_l), (lh, lw));
            let ll = conv3x3(&ml, &wll, (n, in_l, out_l), (lh, lw));
            let want_l: Vec<f64> = hl.iter().zip(&ll).map(|(a, b)| a + b).collect();
            let (eh, el) = (rel_err(&yh, &want_h), rel_err(&yl, &want_l));
            assert!(
                eh < 1e-5 && el < 1e-5,
                "{g:?}, map {with_map}: errors high {eh:e}, low {el:e}"
            );
        }
    }
}
