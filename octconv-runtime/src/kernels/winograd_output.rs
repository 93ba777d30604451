//! The forward output transform of both Winograd variants, `Y = Aᵀ M A` for every tile, written
//! into the output planes (plus, for the octave layer's L→H path, a half-resolution addend
//! upsampled ×2).
//!
//! Why its own file: the shared driver ([`super::tiling::output_tiles`]) runs both halves as
//! element-wise passes and then writes each tile's pixels one by one, `TILE` output columns apart
//! (`put_tiles`): for F(4×4) 10 % of WRN-16-4 inference at α = .5 and its element-wise passes
//! another 5 % (`perf record`, AMD EPYC, AVX-512, 2 threads, after the input transform of
//! [`super::winograd_input`]).
//!
//! How, per output channel: the vertical half `Aᵀ M` element-wise over all tiles of the task
//! ([`Tiling::a_rows`], `T[r·SIDE + b][tile]`), then per output row `r` of eight tiles at once the
//! horizontal half in registers ([`Tiling::a_col_avx2`]) and a register transpose that gives each
//! tile its `TILE` pixels of that row, stored with one store (with the addend's values, each
//! repeated, added). Tiles that reach past the map's right edge are written value by value. The
//! arithmetic is the shared driver's, in the same order, so the values are the same bit for bit
//! (tested).

use super::scratch::{with_scratch, Scratch};
use super::tiling::{Planes, Tiling};
use super::winograd_input::{Tile, LANES};
use super::Element;

/// `Y = Aᵀ M A` of variant `A` for the `cnt` images' tiles of channels `co0 .. co0 + cb` of `cout`,
/// each `h × w` (`M[(co − co0)·SIDE² + ξ]` rows of `ld`, tile `ty·tw + tx` of image `i` in column
/// `i·tiles + ty·tw + tx`), written into those channels' planes of `out` (`[cnt][cout][h][w]`, or
/// the first `h` rows of planes of `out.plane_rows` rows: one band of a taller image).
pub(super) fn output<T: Element, A: Tiling>(
    (m, ld): (&[T], usize),
    (co0, cb, cout): (usize, usize, usize),
    (h, w): (usize, usize),
    cnt: usize,
    mut out: Planes<'_, T>,
) {
    let nt = cnt * A::tiles(h, w);
    let stride = nt.next_multiple_of(LANES);
    assert!(
        nt <= ld
            && co0 + cb <= cout
            && m.len() >= (cb * A::FREQS).saturating_sub(1) * ld + nt
            && out
                .plane_rows
                .is_none_or(|rows| rows >= h && out.add_up.is_none())
            && out.out.len()
                >= (cnt * cout).saturating_sub(1) * out.plane_rows.unwrap_or(h) * w + h * w
            && out.add_up.is_none_or(|up| {
                h % 2 == 0 && w % 2 == 0 && up.len() >= cnt * cout * (h / 2) * (w / 2)
            }),
        "Winograd output transform: buffer sizes"
    );
    // The first `nt` columns of every row are written before they are read, for every channel;
    // the AVX2 pass reads the slack up to `stride` and drops what it computes there.
    assert!(
        out.post.is_none() || out.plane_rows.is_none(),
        "Winograd output transform: a plane map needs whole planes"
    );
    with_scratch(|s: &mut Scratch<T>| {
        let [half] = s.many([A::TILE * A::SIDE * stride]);
        for co in 0..cb {
            A::a_rows((&m[co * A::FREQS * ld..], ld), (&mut *half, stride), nt);
            horizontal::<T, A>(half, stride, (co0 + co, cout), (h, w), cnt, &mut out);
            // Channel `co0 + co` of every image is final: its planes are mapped while in cache.
            if let Some(post) = out.post {
                for i in 0..cnt {
                    post(
                        co0 + co,
                        &mut out.out[(i * cout + co0 + co) * h * w..][..h * w],
                    );
                }
            }
        }
    })
}

/// `Y[r][c] = Σ_b T[r·SIDE + b] · A[b][c]` for every tile, written into channel `co`'s planes.
fn horizontal<T: Element, A: Tiling>(
    half: &[T],
    stride: usize,
    (co, cout): (usize, usize),
    (h, w): (usize, usize),
    cnt: usize,
    out: &mut Planes<'_, T>,
) {
    let (tile, side) = (A::TILE, A::SIDE);
    let (th, tw) = (h.div_ceil(tile), w.div_ceil(tile));
    let nt = cnt * th * tw;
    #[cfg(target_arch = "x86_64")]
    if super::simd::has_avx2_fma() {
        let up = out.add_up.map(T::as_f32);
        if let (Some(t), Some(y), None | Some(Some(_))) =
            (T::as_f32(half), T::as_f32_mut(out.out), up)
        {
            // SAFETY: the CPU has AVX2; `output` checked the sizes of the planes and the addend,
            // and `half` holds TILE·SIDE rows of `stride` (a multiple of LANES ≥ nt).
            let rows = out.plane_rows.unwrap_or(h);
            unsafe {
                horizontal_avx2::<A>(t, stride, (co, cout), (h, w, rows), cnt, y, up.flatten())
            };
            return;
        }
    }
    let mut at = Tile::default();
    for t in 0..nt {
        for r in 0..tile {
            let vals = std::array::from_fn(|b| match b < side {
                true => half[(r * side + b) * stride + t],
                false => T::ZERO,
            });
            put(&A::a_col(vals)[..tile], at, r, (co, cout), (h, w), out);
        }
        at = at.step((th, tw));
    }
}

/// Writes row `r` of tile `at` (its values inside the map), plus the addend.
#[inline(always)]
fn put<T: Element>(
    vals: &[T],
    at: Tile,
    r: usize,
    (co, cout): (usize, usize),
    (h, w): (usize, usize),
    out: &mut Planes<'_, T>,
) {
    let tile = vals.len();
    let oy = tile * at.ty + r;
    if oy >= h {
        return;
    }
    let (row, up) = out.row(at.i * cout + co, oy, (h, w));
    for (c, &val) in vals.iter().enumerate() {
        let x = tile * at.tx + c;
        if x < w {
            row[x] = match up {
                Some(up) => val + up[x / 2],
                None => val,
            };
        }
    }
}

/// [`horizontal`] for eight tiles at a time in AVX2 registers.
///
/// # Safety
/// The CPU must have AVX2. `half` holds `TILE·SIDE` rows of `stride` values (a multiple of
/// [`LANES`] at least the task's tiles); `y` holds `cnt·cout` planes of `rows ≥ h` rows of `w` (the
/// transform writes their first `h` rows) and `up`, if any, as
/// many planes of `h/2 × w/2` (`h`, `w` even). Stores reach only pixels inside the map: whole rows
/// of tiles inside it, the rest value by value.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn horizontal_avx2<A: Tiling>(
    half: &[f32],
    stride: usize,
    (co, cout): (usize, usize),
    (h, w, rows): (usize, usize, usize),
    cnt: usize,
    y: &mut [f32],
    up: Option<&[f32]>,
) {
    use std::arch::x86_64::*;
    let (tile, side) = (A::TILE, A::SIDE);
    let (th, tw) = (h.div_ceil(tile), w.div_ceil(tile));
    let nt = cnt * th * tw;
    let (lh, lw) = (h / 2, w / 2);
    let src = half.as_ptr();
    let mut next = Tile::default();
    for t0 in (0..nt).step_by(LANES) {
        let group = LANES.min(nt - t0);
        let mut at = [next; LANES];
        for a in at.iter_mut().take(group) {
            *a = next;
            next = next.step((th, tw));
        }
        for r in 0..tile {
            let m: [__m256; 8] = std::array::from_fn(|b| match b < side {
                true => _mm256_loadu_ps(src.add((r * side + b) * stride + t0)),
                false => _mm256_setzero_ps(),
            });
            let c = A::a_col_avx2(m);
            // Transpose: each tile's values of this row at the start of one 128-bit quarter
            // (four for F(4×4), two for F(2×2)).
            let u0 = _mm256_unpacklo_ps(c[0], c[1]);
            let u1 = _mm256_unpackhi_ps(c[0], c[1]);
            let quads: [__m128; LANES] = match tile {
                4 => {
                    let u2 = _mm256_unpacklo_ps(c[2], c[3]);
                    let u3 = _mm256_unpackhi_ps(c[2], c[3]);
                    let q = [
                        _mm256_shuffle_ps::<0x44>(u0, u2),
                        _mm256_shuffle_ps::<0xEE>(u0, u2),
                        _mm256_shuffle_ps::<0x44>(u1, u3),
                        _mm256_shuffle_ps::<0xEE>(u1, u3),
                    ];
                    std::array::from_fn(|k| match k < 4 {
                        true => _mm256_castps256_ps128(q[k]),
                        false => _mm256_extractf128_ps::<1>(q[k - 4]),
                    })
                }
                _ => {
                    let lo = [_mm256_castps256_ps128(u0), _mm256_castps256_ps128(u1)];
                    let hi = [
                        _mm256_extractf128_ps::<1>(u0),
                        _mm256_extractf128_ps::<1>(u1),
                    ];
                    std::array::from_fn(|k| {
                        let v = if k < 4 { lo[k / 2] } else { hi[(k - 4) / 2] };
                        match k % 2 {
                            0 => v,
                            _ => _mm_movehl_ps(v, v),
                        }
                    })
                }
            };
            // Eight tiles side by side in one tile row, all inside the map: their row `r` is
            // 8·TILE contiguous values, stored as two (F(2×2)) or four (F(4×4)) 256-bit vectors.
            // Eight narrow stores with their address arithmetic stalled the transform (`perf`:
            // 45 % of this function's samples after a store; the seed's octave layers at α = .25
            // 13.1–15.8 against 13.9–19.3 ms per pass with this path).
            let (a0, a7) = (at[0], at[LANES - 1]);
            let row_inside = group == LANES
                && a0.i == a7.i
                && a0.ty == a7.ty
                && a0.tx + LANES - 1 == a7.tx
                && tile * (a7.tx + 1) <= w
                && tile * a0.ty + r < h;
            if row_inside {
                let (oy, x) = (tile * a0.ty + r, tile * a0.tx);
                let plane = a0.i * cout + co;
                let dst = y.as_mut_ptr().add((plane * rows + oy) * w + x);
                let addend = up.map(|up| up.as_ptr().add((plane * lh + oy / 2) * lw + x / 2));
                // Two tiles' values per 256-bit vector (F(4×4)), or four tiles' (F(2×2)).
                let vecs: [__m256; 4] = match tile {
                    4 => std::array::from_fn(|j| _mm256_set_m128(quads[2 * j + 1], quads[2 * j])),
                    _ => std::array::from_fn(|j| {
                        let lo = _mm_movelh_ps(quads[4 * (j % 2)], quads[4 * (j % 2) + 1]);
                        let hi = _mm_movelh_ps(quads[4 * (j % 2) + 2], quads[4 * (j % 2) + 3]);
                        _mm256_set_m128(hi, lo)
                    }),
                };
                let stores = tile * LANES / 8;
                for (j, &v) in vecs.iter().enumerate().take(stores) {
                    let v = match addend {
                        // Each addend value twice: four of them per vector of eight outputs.
                        Some(p) => {
                            let q = _mm_loadu_ps(p.add(4 * j));
                            let d = _mm256_set_m128(_mm_unpackhi_ps(q, q), _mm_unpacklo_ps(q, q));
                            _mm256_add_ps(v, d)
                        }
                        None => v,
                    };
                    _mm256_storeu_ps(dst.add(8 * j), v);
                }
                continue;
            }
            for (k, a) in at.iter().enumerate().take(group) {
                let oy = tile * a.ty + r;
                if oy >= h {
                    continue;
                }
                let plane = a.i * cout + co;
                let x = tile * a.tx;
                let dst = y.as_mut_ptr().add((plane * rows + oy) * w + x);
                let addend = up.map(|up| up.as_ptr().add((plane * lh + oy / 2) * lw + x / 2));
                let quad = quads[k];
                match (x + tile <= w, tile) {
                    (true, 4) => {
                        let quad = match addend {
                            // The addend's two values, each repeated: x/2, x/2, x/2 + 1, x/2 + 1.
                            Some(p) => {
                                let pair = _mm_castpd_ps(_mm_load_sd(p as *const f64));
                                _mm_add_ps(quad, _mm_unpacklo_ps(pair, pair))
                            }
                            None => quad,
                        };
                        _mm_storeu_ps(dst, quad);
                    }
                    (true, _) => {
                        let pair = match addend {
                            // The addend's value at x/2, twice.
                            Some(p) => _mm_add_ps(quad, _mm_set1_ps(*p)),
                            None => quad,
                        };
                        _mm_store_sd(dst as *mut f64, _mm_castps_pd(pair));
                    }
                    (false, _) => {
                        let mut vals = [0.0f32; 4];
                        _mm_storeu_ps(vals.as_mut_ptr(), quad);
                        for (c, &val) in vals.iter().enumerate().take(w - x) {
                            *dst.add(c) = match addend {
                                Some(p) => val + *p.add(c / 2),
                                None => val,
                            };
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::tiling::{output_tiles, F2, F4};
    use crate::kernels::{winograd, winograd4};

    /// Deterministic values in [-1, 1), in f32.
    fn values(n: usize, seed: u64) -> Vec<f32> {
        crate::kernels::test_values(n, seed)
            .iter()
            .map(|&v| v as f32)
            .collect()
    }

    /// The shared driver's output transform, the reference.
    fn reference<T: Element, A: Tiling>(
        m: (&[T], usize),
        cout: usize,
        hw: (usize, usize),
        cnt: usize,
        out: Planes<'_, T>,
    ) {
        match A::TILE {
            4 => output_tiles::<T, 6, 4>(m, cout, hw, cnt, out, winograd4::a_transpose),
            _ => output_tiles::<T, 4, 2>(m, cout, hw, cnt, out, winograd::a_transpose),
        }
    }

    fn writes_what_the_shared_driver_writes<A: Tiling>() {
        // Up to 16 wide: F(2×2)'s eight-tile rows; 32 to 36 wide: F(4×4)'s too, with tile rows
        // that a group of eight straddles.
        let sizes: [(usize, usize); 13] = [
            (1, 1),
            (2, 2),
            (3, 5),
            (4, 4),
            (6, 10),
            (8, 8),
            (7, 13),
            (16, 16),
            (14, 14),
            (2, 6),
            (8, 32),
            (6, 34),
            (5, 36),
        ];
        for (k, &(h, w)) in sizes.iter().enumerate() {
            for (cnt, cout) in [(1, 1), (1, 3), (3, 2), (2, 5)] {
                let nt = cnt * A::tiles(h, w);
                for ld in [nt, nt + 3] {
                    let m = values(cout * A::FREQS * ld, k as u64);
                    let even = h % 2 == 0 && w % 2 == 0;
                    let up = values(cnt * cout * (h / 2) * (w / 2), 50 + k as u64);
                    for with_up in [false, even] {
                        let addend = with_up.then_some(&up[..]);
                        let mut want = vec![f32::NAN; cnt * cout * h * w];
                        let planes = Planes {
                            out: &mut want,
                            add_up: addend,
                            plane_rows: None,
                            post: None,
                        };
                        reference::<f32, A>((&m, ld), cout, (h, w), cnt, planes);
                        let mut got = vec![f32::NAN; cnt * cout * h * w];
                        let planes = Planes {
                            out: &mut got,
                            add_up: addend,
                            plane_rows: None,
                            post: None,
                        };
                        output::<f32, A>((&m, ld), (0, cout, cout), (h, w), cnt, planes);
                        for (p, (a, b)) in want.iter().zip(&got).enumerate() {
                            assert_eq!(
                                a.to_bits(),
                                b.to_bits(),
                                "F({tile}): {h}×{w}, {cnt} images, {cout} channels, ld {ld}, \
                                 addend {with_up}: value {p}: {a} vs {b}",
                                tile = A::TILE
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn output_transforms_write_what_the_shared_driver_writes_bit_for_bit() {
        writes_what_the_shared_driver_writes::<F4>();
        writes_what_the_shared_driver_writes::<F2>();
    }

    fn f64_matches<A: Tiling>() {
        let (h, w, cnt, cout) = (10, 6, 3, 2);
        let nt = cnt * A::tiles(h, w);
        let m: Vec<f64> = values(cout * A::FREQS * nt, 9)
            .iter()
            .map(|&v| v as f64)
            .collect();
        let up: Vec<f64> = values(cnt * cout * 5 * 3, 10)
            .iter()
            .map(|&v| v as f64)
            .collect();
        let mut want = vec![f64::NAN; cnt * cout * h * w];
        let planes = Planes {
            out: &mut want,
            add_up: Some(&up),
            plane_rows: None,
            post: None,
        };
        reference::<f64, A>((&m, nt), cout, (h, w), cnt, planes);
        let mut got = vec![f64::NAN; cnt * cout * h * w];
        output::<f64, A>(
            (&m, nt),
            (0, cout, cout),
            (h, w),
            cnt,
            Planes {
                out: &mut got,
                add_up: Some(&up),
                plane_rows: None,
                post: None,
            },
        );
        assert_eq!(want, got);
    }

    #[test]
    fn output_transforms_in_f64_match_the_shared_driver() {
        f64_matches::<F4>();
        f64_matches::<F2>();
    }
}
