//! The forward input transform of both Winograd variants, `V = Bᵀ d B` for every input window
//! (`SIDE × SIDE`, stride `TILE`, padding 1), with a per-channel [`Prologue`] applied once per
//! input value.
//!
//! Why its own file: the shared driver ([`super::tiling::transform_tiles`], still used by the
//! output-gradient transform) gathers every window value by value into `D[SIDE²][tiles]` (2.25
//! scalar loads, prologue maps and stores per input value for F(4×4)) before two element-wise
//! passes. In WRN-16-4 inference that gather was 17 % of all cycles at α = 0 and at α = .5, and its
//! two passes another 8 % (`perf record`, AMD EPYC, AVX-512, 2 threads).
//!
//! How, per channel of the task's images:
//! 1. each plane is mapped by the prologue and copied once into a zero-padded plane (one
//!    element-wise pass);
//! 2. per window row, the horizontal half `d·B` of eight tiles at once: eight unaligned 8-value
//!    loads (one per tile, from its window's row), an 8×8 register transpose that puts column `c` of
//!    the eight windows in one vector, and the `B` combinations ([`Tiling::b_col_avx2`]), stored as
//!    `H[r·SIDE + j][tile]` (AVX2; other CPUs and f64 run the same arithmetic one tile at a time);
//! 3. the vertical half `Bᵀ·H` element-wise over all tiles of the task ([`Tiling::b_rows`]).
//!
//! Rows first and columns second, the opposite of the shared driver, so values differ from it by
//! rounding (tested against it). The AVX2 and portable builds run the same operations in the same
//! order (multiplies and adds, no FMA) and agree bit for bit (tested).

use super::prologue::{Act, Prologue};
use super::scratch::{with_scratch, Scratch};
use super::simd::wide_fn;
use super::tiling::Tiling;
use super::Element;

/// Tiles transformed together by the AVX2 horizontal passes of the input and output transforms
/// (one vector of f32).
pub(super) const LANES: usize = 8;

/// The zero-padded planes of one channel for tiles of `tile × tile` outputs: `ph` rows of `pw`
/// values per image, the map starting at row 1, column 1 (for a band of tile rows, [`input_band`]:
/// the band's first row at row 1, the row above it at row 0). Tile `(ty, tx)`'s window starts at row
/// `tile·ty`, column `tile·tx`; rows are long enough that an 8-value load from any window's start
/// stays inside its row.
#[derive(Clone, Copy, Debug)]
pub(super) struct Padding {
    w: usize,
    tile: usize,
    th: usize,
    tw: usize,
    ph: usize,
    pw: usize,
}

impl Padding {
    fn new(h: usize, w: usize, tile: usize) -> Self {
        let (th, tw) = (h.div_ceil(tile), w.div_ceil(tile));
        Padding {
            w,
            tile,
            th,
            tw,
            ph: tile * th + 2,
            pw: tile * tw + LANES - tile,
        }
    }

    fn plane(&self) -> usize {
        self.ph * self.pw
    }

    /// Where tile `(i, ty, tx)`'s window starts in the padded planes.
    fn start(&self, at: Tile) -> usize {
        at.i * self.plane() + at.ty * self.tile * self.pw + self.tile * at.tx
    }
}

/// A tile of a task: image `i`, tile row `ty`, tile column `tx`; [`Tile::step`] walks the tiles in
/// their column order (`i·tiles + ty·tw + tx`) without a division per tile.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Tile {
    pub i: usize,
    pub ty: usize,
    pub tx: usize,
}

impl Tile {
    /// The next tile of images with `th × tw` tiles.
    #[inline(always)]
    pub fn step(mut self, (th, tw): (usize, usize)) -> Self {
        self.tx += 1;
        if self.tx == tw {
            self.tx = 0;
            self.ty += 1;
            if self.ty == th {
                self.ty = 0;
                self.i += 1;
            }
        }
        self
    }
}

/// `V = Bᵀ d B` of variant `A` for every tile of the whole images in `x` (`channels` planes of
/// `h × w` each, padding 1), each value of channel `c` mapped by `pro`'s channel `c`: frequency
/// `k·SIDE + j` of channel `ch` goes to row `ch·SIDE² + k·SIDE + j` of `v` (row stride `ld`), tile
/// `ty·tw + tx` of image `i` to column `i·tiles + ty·tw + tx`.
pub(super) fn input<T: Element, A: Tiling>(
    (channels, (h, w)): (usize, (usize, usize)),
    x: &[T],
    (v, ld): (&mut [T], usize),
    pro: Option<Prologue<'_, T>>,
) {
    let pad = Padding::new(h, w, A::TILE);
    let cnt = x.len() / (channels * h * w).max(1);
    let nt = cnt * pad.th * pad.tw;
    let stride = nt.next_multiple_of(LANES);
    assert!(
        nt <= ld && v.len() >= (channels * A::FREQS).saturating_sub(1) * ld + nt,
        "Winograd input transform: output size"
    );
    // Every value of both buffers is written before it is read, for every channel.
    with_scratch(|s: &mut Scratch<T>| {
        let [padded, half] = s.many([cnt * pad.plane(), A::FREQS * stride]);
        for ch in 0..channels {
            let act = pro.map(|p| p.channel(ch));
            for (i, dst) in padded.chunks_exact_mut(pad.plane()).enumerate() {
                let plane = &x[(i * channels + ch) * h * w..][..h * w];
                // The whole image is one band from its first row.
                pad_band(plane, h, 0, pad, act, dst);
            }
            horizontal::<T, A>(padded, pad, nt, half, stride);
            A::b_rows((half, stride), (&mut v[ch * A::FREQS * ld..], ld), nt);
        }
    })
}

/// [`input`] for the tile rows `ty0 … ty1` of one image (`x`: its `channels` planes of `h × w`):
/// the band's windows read the rows above and below it from the image (zeros only outside the
/// map), so its `V` equals those tiles' columns of the whole image's `V`; tile `(ty, tx)` goes to
/// column `(ty − ty0)·tw + tx`.
pub(super) fn input_band<T: Element, A: Tiling>(
    (channels, (h, w)): (usize, (usize, usize)),
    x: &[T],
    (ty0, ty1): (usize, usize),
    (v, ld): (&mut [T], usize),
    pro: Option<Prologue<'_, T>>,
) {
    let pad = Padding::new(A::TILE * (ty1 - ty0), w, A::TILE);
    let nt = pad.th * pad.tw;
    let stride = nt.next_multiple_of(LANES);
    assert!(
        ty0 < ty1
            && ty1 <= h.div_ceil(A::TILE)
            && x.len() >= channels * h * w
            && nt <= ld
            && v.len() >= (channels * A::FREQS).saturating_sub(1) * ld + nt,
        "Winograd input transform: band or output size"
    );
    // Every value of both buffers is written before it is read, for every channel.
    with_scratch(|s: &mut Scratch<T>| {
        let [padded, half] = s.many([pad.plane(), A::FREQS * stride]);
        for ch in 0..channels {
            let act = pro.map(|p| p.channel(ch));
            let plane = &x[ch * h * w..][..h * w];
            pad_band(plane, h, A::TILE * ty0, pad, act, padded);
            horizontal::<T, A>(padded, pad, nt, half, stride);
            A::b_rows((half, stride), (&mut v[ch * A::FREQS * ld..], ld), nt);
        }
    })
}

wide_fn! {
    /// Copies the rows of one plane of `h` rows that a band of `pad.th` tile rows starting at map
    /// row `y0` reads (`y0 − 1 … y0 + TILE·th`), mapped by `act`, into the band's zero-padded plane
    /// (rows outside the map zero).
    fn pad_band<T: Element>(
        src: &[T],
        h: usize,
        y0: usize,
        pad: Padding,
        act: Option<Act<T>>,
        dst: &mut [T],
    ) {
        let (w, pw) = (pad.w, pad.pw);
        for (r, d) in dst.chunks_exact_mut(pw).take(pad.ph).enumerate() {
            let y = (y0 + r).wrapping_sub(1);
            if y >= h {
                d.fill(T::ZERO);
                continue;
            }
            let row = &src[y * w..][..w];
            d[0] = T::ZERO;
            match act {
                Some(act) => d[1..=w].iter_mut().zip(row).for_each(|(o, &v)| *o = act.apply(v)),
                None => d[1..=w].copy_from_slice(row),
            }
            d[w + 1..].fill(T::ZERO);
        }
    }
}

/// `H[r·SIDE + j][t] = Σ_c d_t[r][c] · B[c][j]` for the `nt` tiles of the padded planes.
fn horizontal<T: Element, A: Tiling>(
    padded: &[T],
    pad: Padding,
    nt: usize,
    half: &mut [T],
    stride: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if super::simd::has_avx2_fma() {
        if let (Some(p), Some(out)) = (T::as_f32(padded), T::as_f32_mut(half)) {
            assert!(p.len() >= pad.plane() * nt.div_ceil(pad.th * pad.tw).max(1));
            assert!(out.len() >= A::FREQS * stride && stride >= nt.next_multiple_of(LANES));
            // SAFETY: the CPU has AVX2; the asserts bound every load and store (see the function).
            unsafe { horizontal_avx2::<A>(p, pad, nt, out, stride) };
            return;
        }
    }
    horizontal_portable::<T, A>(padded, pad, nt, half, stride)
}

/// [`horizontal`] one tile at a time.
fn horizontal_portable<T: Element, A: Tiling>(
    padded: &[T],
    pad: Padding,
    nt: usize,
    half: &mut [T],
    stride: usize,
) {
    let side = A::SIDE;
    let mut at = Tile::default();
    for t in 0..nt {
        let start = pad.start(at);
        at = at.step((pad.th, pad.tw));
        for r in 0..side {
            let row = &padded[start + r * pad.pw..][..side];
            let d = std::array::from_fn(|c| if c < side { row[c] } else { T::ZERO });
            for (j, &val) in A::b_col(d)[..side].iter().enumerate() {
                half[(r * side + j) * stride + t] = val;
            }
        }
    }
}

/// [`horizontal`] for eight tiles at a time in AVX2 registers.
///
/// # Safety
/// The CPU must have AVX2. `padded` holds the planes of every image of the `nt` tiles (each load
/// reads 8 values from a window's row start, at most `TILE·tw + 7 − TILE < pw` into its row);
/// `half` holds `SIDE²` rows of `stride ≥ nt` rounded up to [`LANES`] (the last group's lanes past
/// `nt` repeat its first tile and are written into that slack).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn horizontal_avx2<A: Tiling>(
    padded: &[f32],
    pad: Padding,
    nt: usize,
    half: &mut [f32],
    stride: usize,
) {
    use std::arch::x86_64::*;
    let (src, dst) = (padded.as_ptr(), half.as_mut_ptr());
    let mut tile = Tile::default();
    for t0 in (0..nt).step_by(LANES) {
        // Lanes past the last tile repeat the group's first.
        let mut at = [pad.start(tile); LANES];
        for a in at.iter_mut().take(nt - t0) {
            *a = pad.start(tile);
            tile = tile.step((pad.th, pad.tw));
        }
        for r in 0..A::SIDE {
            let row: [__m256; LANES] =
                std::array::from_fn(|k| _mm256_loadu_ps(src.add(at[k] + r * pad.pw)));
            // Transpose: column c of the eight windows' rows into one vector each (the columns
            // past SIDE are not used and their shuffles are dropped by the compiler).
            let a0 = _mm256_unpacklo_ps(row[0], row[1]);
            let a1 = _mm256_unpackhi_ps(row[0], row[1]);
            let a2 = _mm256_unpacklo_ps(row[2], row[3]);
            let a3 = _mm256_unpackhi_ps(row[2], row[3]);
            let a4 = _mm256_unpacklo_ps(row[4], row[5]);
            let a5 = _mm256_unpackhi_ps(row[4], row[5]);
            let a6 = _mm256_unpacklo_ps(row[6], row[7]);
            let a7 = _mm256_unpackhi_ps(row[6], row[7]);
            let b0 = _mm256_shuffle_ps::<0x44>(a0, a2);
            let b1 = _mm256_shuffle_ps::<0xEE>(a0, a2);
            let b2 = _mm256_shuffle_ps::<0x44>(a1, a3);
            let b3 = _mm256_shuffle_ps::<0xEE>(a1, a3);
            let b4 = _mm256_shuffle_ps::<0x44>(a4, a6);
            let b5 = _mm256_shuffle_ps::<0xEE>(a4, a6);
            let b6 = _mm256_shuffle_ps::<0x44>(a5, a7);
            let b7 = _mm256_shuffle_ps::<0xEE>(a5, a7);
            let d = [
                _mm256_permute2f128_ps::<0x20>(b0, b4),
                _mm256_permute2f128_ps::<0x20>(b1, b5),
                _mm256_permute2f128_ps::<0x20>(b2, b6),
                _mm256_permute2f128_ps::<0x20>(b3, b7),
                _mm256_permute2f128_ps::<0x31>(b0, b4),
                _mm256_permute2f128_ps::<0x31>(b1, b5),
                _mm256_permute2f128_ps::<0x31>(b2, b6),
                _mm256_permute2f128_ps::<0x31>(b3, b7),
            ];
            for (j, &val) in A::b_col_avx2(d)[..A::SIDE].iter().enumerate() {
                _mm256_storeu_ps(dst.add((r * A::SIDE + j) * stride + t0), val);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::tiling::{transform_tiles, F2, F4};
    use crate::kernels::{winograd, winograd4};

    use crate::kernels::test_values as values;

    /// The transform by the shared gather-then-columns driver, the reference.
    fn reference<T: Element, A: Tiling>(
        shape: (usize, (usize, usize)),
        x: &[T],
        ld: usize,
        pro: Option<Prologue<'_, T>>,
    ) -> Vec<T> {
        let mut v = vec![T::ZERO; shape.0 * A::FREQS * ld];
        match A::TILE {
            4 => transform_tiles::<T, 6, 6, 4>(
                shape,
                x,
                (&mut v, ld),
                (1, pro),
                winograd4::b_transpose,
            ),
            _ => transform_tiles::<T, 4, 4, 2>(
                shape,
                x,
                (&mut v, ld),
                (1, pro),
                winograd::b_transpose,
            ),
        }
        v
    }

    fn ours<T: Element, A: Tiling>(
        shape: (usize, (usize, usize)),
        x: &[T],
        ld: usize,
        pro: Option<Prologue<'_, T>>,
    ) -> Vec<T> {
        let mut v = vec![T::from_f64(7.0); shape.0 * A::FREQS * ld];
        input::<T, A>(shape, x, (&mut v, ld), pro);
        v
    }

    const SIZES: [(usize, usize); 10] = [
        (1, 1),
        (2, 3),
        (4, 4),
        (5, 7),
        (8, 8),
        (7, 14),
        (16, 16),
        (13, 9),
        (3, 1),
        (32, 32),
    ];

    fn matches_the_gathering_driver<A: Tiling>() {
        for (k, &(h, w)) in SIZES.iter().enumerate() {
            for (cnt, channels) in [(1, 1), (1, 3), (3, 2), (2, 5)] {
                let x = values(cnt * channels * h * w, k as u64);
                let (scale, shift) = (values(channels, 91), values(channels, 92));
                let tiles = cnt * h.div_ceil(A::TILE) * w.div_ceil(A::TILE);
                for relu in [None, Some(false), Some(true)] {
                    let pro = relu.map(|relu| Prologue {
                        scale: &scale,
                        shift: &shift,
                        relu,
                    });
                    for ld in [tiles, tiles + 5] {
                        let want = reference::<f64, A>((channels, (h, w)), &x, ld, pro);
                        let got = ours::<f64, A>((channels, (h, w)), &x, ld, pro);
                        for (row, (a, b)) in want.chunks(ld).zip(got.chunks(ld)).enumerate() {
                            for (t, (a, b)) in a[..tiles].iter().zip(&b[..tiles]).enumerate() {
                                assert!(
                                    (a - b).abs() <= 1e-12 * (1.0 + a.abs()),
                                    "F({tile}): {h}×{w}, {cnt} images, {channels} channels, \
                                     {relu:?}: row {row} tile {t}: {a} vs {b}",
                                    tile = A::TILE
                                );
                            }
                            // Columns past the task's tiles are left alone.
                            assert!(b[tiles..].iter().all(|&v| v == 7.0));
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn input_transforms_match_the_gathering_driver_in_f64_for_odd_sizes_images_and_prologues() {
        matches_the_gathering_driver::<F4>();
        matches_the_gathering_driver::<F2>();
    }

    fn f32_agrees_and_simd_is_portable<A: Tiling>() {
        for (k, &(h, w)) in SIZES.iter().enumerate() {
            let (cnt, channels) = (3, 4);
            let x64 = values(cnt * channels * h * w, 100 + k as u64);
            let (scale, shift) = (values(channels, 93), values(channels, 94));
            let x32: Vec<f32> = x64.iter().map(|&v| v as f32).collect();
            let (s32, h32): (Vec<f32>, Vec<f32>) = (
                scale.iter().map(|&v| v as f32).collect(),
                shift.iter().map(|&v| v as f32).collect(),
            );
            let pro64 = Prologue {
                scale: &scale,
                shift: &shift,
                relu: true,
            };
            let pro32 = Prologue {
                scale: &s32,
                shift: &h32,
                relu: true,
            };
            let ld = cnt * h.div_ceil(A::TILE) * w.div_ceil(A::TILE);
            let shape = (channels, (h, w));
            let want = ours::<f64, A>(shape, &x64, ld, Some(pro64));
            let got = ours::<f32, A>(shape, &x32, ld, Some(pro32));
            for (a, &b) in want.iter().zip(&got) {
                assert!(
                    (a - b as f64).abs() <= 1e-5 * (1.0 + a.abs()),
                    "{h}×{w}: {a} vs {b}"
                );
            }
            // The portable horizontal pass against the one this CPU runs, bit for bit.
            let pad = Padding::new(h, w, A::TILE);
            let padded: Vec<f32> = (0..cnt * pad.plane())
                .map(|i| (i % 17) as f32 - 8.5)
                .collect();
            let stride = ld.next_multiple_of(LANES);
            let (mut simd, mut portable) =
                (vec![0.0; A::FREQS * stride], vec![0.0; A::FREQS * stride]);
            horizontal::<f32, A>(&padded, pad, ld, &mut simd, stride);
            horizontal_portable::<f32, A>(&padded, pad, ld, &mut portable, stride);
            for (row, (a, b)) in simd.chunks(stride).zip(portable.chunks(stride)).enumerate() {
                assert_eq!(a[..ld], b[..ld], "F({}): {h}×{w}: row {row}", A::TILE);
            }
        }
    }

    #[test]
    fn input_transforms_in_f32_agree_with_f64_and_the_simd_build_with_the_portable_one() {
        f32_agrees_and_simd_is_portable::<F4>();
        f32_agrees_and_simd_is_portable::<F2>();
    }
}
