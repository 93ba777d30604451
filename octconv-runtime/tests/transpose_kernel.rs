//! The kernel-2 transposed convolution kernels (`kernels::transpose`) against direct summation in
//! f64: one path and the four-path octave version, odd channel counts, batches of one and several
//! images, down to the smallest maps (a 2×2 high input with a 1×1 low one).

use octconv_runtime::kernels::transpose::{forward, forward_octave, OctaveTranspose};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn random(rng: &mut ChaCha8Rng, len: usize) -> Vec<f64> {
    (0..len).map(|_| rng.random::<f64>() * 2.0 - 1.0).collect()
}

/// `y[o][2i + a][2j + b] = Σ_c x[c][i][j] · w[c][o][a][b]` for one image.
fn direct(x: &[f64], w: &[f64], ci: usize, co: usize, h: usize, wd: usize) -> Vec<f64> {
    let mut y = vec![0.0; co * 4 * h * wd];
    for o in 0..co {
        for yy in 0..2 * h {
            for xx in 0..2 * wd {
                let (i, a, j, b) = (yy / 2, yy % 2, xx / 2, xx % 2);
                y[(o * 2 * h + yy) * 2 * wd + xx] = (0..ci)
                    .map(|c| x[(c * h + i) * wd + j] * w[((c * co + o) * 2 + a) * 2 + b])
                    .sum();
            }
        }
    }
    y
}

fn pool(x: &[f64], c: usize, h: usize, w: usize) -> Vec<f64> {
    let mut out = Vec::new();
    for p in 0..c {
        for i in 0..h / 2 {
            for j in 0..w / 2 {
                let at = |a: usize, b: usize| x[(p * h + 2 * i + a) * w + 2 * j + b];
                out.push(0.25 * (at(0, 0) + at(0, 1) + at(1, 0) + at(1, 1)));
            }
        }
    }
    out
}

fn upsample(x: &[f64], c: usize, h: usize, w: usize) -> Vec<f64> {
    (0..c * 4 * h * w)
        .map(|k| {
            let (p, r) = (k / (4 * h * w), k % (4 * h * w));
            x[(p * h + r / (2 * w) / 2) * w + (r % (2 * w)) / 2]
        })
        .collect()
}

fn add(a: &[f64], b: &[f64]) -> Vec<f64> {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(a, b)| a + b).collect()
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    assert!(!a.is_empty());
    a.iter().zip(b).fold(0f64, |m, (x, y)| m.max((x - y).abs()))
}

#[test]
fn transposed_kernel_2_matches_direct_summation_for_one_path_and_four() {
    let mut cases = 0;
    for (h, w) in [(2, 2), (2, 6), (4, 2), (6, 8)] {
        for (n, in_h, in_l, out_h, out_l) in [(1, 3, 1, 1, 5), (3, 5, 7, 3, 3), (2, 1, 1, 1, 1)] {
            cases += 1;
            let mut rng = ChaCha8Rng::seed_from_u64(cases);
            let (hw, lhw) = (h * w, h * w / 4);
            let xh = random(&mut rng, n * in_h * hw);
            let xl = random(&mut rng, n * in_l * lhw);
            let ws = [
                random(&mut rng, in_h * out_h * 4),
                random(&mut rng, in_h * out_l * 4),
                random(&mut rng, in_l * out_h * 4),
                random(&mut rng, in_l * out_l * 4),
            ];
            // One path.
            let y = forward(&xh, &ws[0], (n, in_h, h, w), out_h);
            let want: Vec<f64> = (0..n)
                .flat_map(|i| direct(&xh[i * in_h * hw..][..in_h * hw], &ws[0], in_h, out_h, h, w))
                .collect();
            assert!(max_diff(&y, &want) < 1e-12, "one path, case {cases}");
            // Four paths.
            let g = OctaveTranspose {
                n,
                in_h,
                in_l,
                out_h,
                out_l,
                h,
                w,
            };
            let (yh, yl) = forward_octave(&g, &xh, &xl, [&ws[0], &ws[1], &ws[2], &ws[3]]);
            let (mut want_h, mut want_l) = (Vec::new(), Vec::new());
            for i in 0..n {
                let xh = &xh[i * in_h * hw..][..in_h * hw];
                let xl = &xl[i * in_l * lhw..][..in_l * lhw];
                let lh = direct(xl, &ws[2], in_l, out_h, h / 2, w / 2);
                want_h.extend(add(
                    &direct(xh, &ws[0], in_h, out_h, h, w),
                    &upsample(&lh, out_h, h, w),
                ));
                let ph = pool(xh, in_h, h, w);
                want_l.extend(add(
                    &direct(&ph, &ws[1], in_h, out_l, h / 2, w / 2),
                    &direct(xl, &ws[3], in_l, out_l, h / 2, w / 2),
                ));
            }
            assert!(max_diff(&yh, &want_h) < 1e-12, "octave high, case {cases}");
            assert!(max_diff(&yl, &want_l) < 1e-12, "octave low, case {cases}");
        }
    }
    assert_eq!(cases, 12);
}
