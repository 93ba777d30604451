//! The two Winograd variants behind one trait, and the drivers they share: the forward convolution,
//! its input gradient (the same convolution with the flipped, transposed kernel) and its weight
//! gradient. [`super::winograd`] (F(2×2, 3×3)) and [`super::winograd4`] (F(4×4, 3×3)) hold only their
//! transforms; the fused octave kernel ([`super::octave`]) runs on the same trait.
//!
//! Layouts: `U[ξ][co][ci]` (weights), `V[ci][ξ][tile]` (inputs) and `M[co][ξ][tile]` (products), with
//! `ld` tiles per row; tile `ty·tw + tx` of image `i` is column `i·tiles + ty·tw + tx`.

use super::epilogue::RowMap;
use super::gemm::{gemm_parallelism, images_per_task, sgemm, sum_tasks, Mat};
use super::geometry::ConvGeometry;
use super::prologue::Prologue;
use super::scratch::{output_vec, sized, with_scratch, Scratch};
use super::{winograd, winograd4, Element};
use rayon::prelude::*;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::__m256;
use std::borrow::Cow;

/// One Winograd variant: its tile, its transforms, and the GEMM width it wants.
pub(super) trait Tiling {
    /// Output tile side.
    const TILE: usize;
    /// Transformed values per tile.
    const FREQS: usize;
    /// Tiles (GEMM columns) per task that make the `FREQS` GEMMs wide enough.
    const TARGET_TILES: usize;
    /// `U = G g Gᵀ` for every kernel of `w` `[cout, cin, 3, 3]`.
    fn weights<T: Element>(w: &[T], cout: usize, cin: usize) -> Vec<T> {
        Self::weights_joined(&[(w, cin)], cout)
    }
    /// [`Tiling::weights`] of a weight given as parts along the input channels (`(w_part,
    /// cin_part)`, each `[cout, cin_part, 3, 3]`), read where they are.
    fn weights_joined<T: Element>(parts: &[(&[T], usize)], cout: usize) -> Vec<T>;
    /// `V = Bᵀ d B` for every input tile of the whole images in `x`, each value of channel `c`
    /// mapped by `pro`'s channel `c` as it is read.
    fn input<T: Element>(
        g: &ConvGeometry,
        x: &[T],
        v: &mut [T],
        ld: usize,
        pro: Option<Prologue<'_, T>>,
    );
    /// `Y = Aᵀ M A` for `cnt` images of `cout` channels of `hw`, written into `out`.
    fn output<T: Element>(
        m: &[T],
        ld: usize,
        cout: usize,
        hw: (usize, usize),
        cnt: usize,
        out: Planes<'_, T>,
    ) {
        Self::output_channels(m, ld, (0, cout, cout), hw, cnt, out)
    }
    /// [`Tiling::output`] of channels `co0 .. co0 + cb` of `cout` (`M` holding those channels'
    /// rows), written into their planes of `out`.
    fn output_channels<T: Element>(
        m: &[T],
        ld: usize,
        channels: (usize, usize, usize),
        hw: (usize, usize),
        cnt: usize,
        out: Planes<'_, T>,
    );
    /// Input window side, `TILE + 2`.
    const SIDE: usize;
    /// `Bᵀ · d` of one window column: the first [`Tiling::SIDE`] of eight values in and out.
    fn b_col<T: Element>(d: [T; 8]) -> [T; 8];
    /// `Aᵀ · m` of one frequency column: the first [`Tiling::SIDE`] of eight values in, the first
    /// [`Tiling::TILE`] out.
    fn a_col<T: Element>(m: [T; 8]) -> [T; 8];
    /// [`Tiling::b_col`] on eight tiles in AVX2 vectors: the same operations in the same order.
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[cfg(target_arch = "x86_64")]
    unsafe fn b_col_avx2(d: [__m256; 8]) -> [__m256; 8];
    /// [`Tiling::a_col`] on eight tiles in AVX2 vectors: the same operations in the same order.
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[cfg(target_arch = "x86_64")]
    unsafe fn a_col_avx2(m: [__m256; 8]) -> [__m256; 8];
    /// The input transform's vertical half over `n` columns: `dst[k·SIDE + j] = Σ_r Bᵀ[k][r] ·
    /// src[r·SIDE + j]` (each buffer with its row stride).
    fn b_rows<T: Element>(src: (&[T], usize), dst: (&mut [T], usize), n: usize);
    /// The output transform's vertical half over `n` columns: `dst[r·SIDE + b] = Σ_k Aᵀ[r][k] ·
    /// src[k·SIDE + b]` for the `TILE` rows `r`.
    fn a_rows<T: Element>(src: (&[T], usize), dst: (&mut [T], usize), n: usize);
    /// `D = A dY Aᵀ` for every output-gradient tile.
    fn output_grad<T: Element>(g: &ConvGeometry, dy: &[T], d: &mut [T], ld: usize);
    /// `dw = Gᵀ dU G` for every kernel.
    fn kernel_grads<T: Element>(du: &[T], cout: usize, cin: usize) -> Vec<T>;
    /// Tiles of an `h × w` map.
    fn tiles(h: usize, w: usize) -> usize {
        h.div_ceil(Self::TILE) * w.div_ceil(Self::TILE)
    }
}

/// Where an output transform writes: whole planes `[cnt][cout][h][w]`, every element of which it
/// writes (or, with [`Planes::plane_rows`], a band of `h` rows of each of taller planes), plus
/// optionally an addend at half the resolution, `[cnt][cout][h / 2][w / 2]`, added
/// nearest-upsampled ×2 as each row is written (the octave convolution's L→H path; `h`, `w` even).
/// The transforms write rows straight into place: an `emit(row)` callback that copied each row cost
/// one `memmove` call per row, 10 % of WRN-16-4 inference, whose last stage has 8-pixel rows.
pub(super) struct Planes<'a, T> {
    /// The output planes.
    pub out: &'a mut [T],
    /// The low-resolution addend, if any.
    pub add_up: Option<&'a [T]>,
    /// Rows per plane of `out` where the transform writes a band of `h` rows of taller planes
    /// (`out` then starts at the band's first row of the first plane; no addend); `None`: `h`.
    pub plane_rows: Option<usize>,
    /// A map of each finished plane, `post(channel, plane)`, applied as soon as the transform has
    /// written the plane (in cache): a convolution's output stage. Whole planes only (no
    /// [`Planes::plane_rows`]); the plane is a slice of `out` itself, so a map that finds a row's
    /// place from its address ([`super::epilogue::ResidualJoin`]) works on it.
    pub post: Option<RowMap<'a, T>>,
}

impl<T: Element> Planes<'_, T> {
    /// Row `oy` of plane `plane` (image · cout + channel) of `h × w` maps (of planes of
    /// `plane_rows` rows where that is set), and the addend's row that is upsampled into it, if
    /// there is an addend.
    pub fn row(
        &mut self,
        plane: usize,
        oy: usize,
        (h, w): (usize, usize),
    ) -> (&mut [T], Option<&[T]>) {
        let up = self.add_up.map(|up| {
            let (lh, lw) = (h / 2, w / 2);
            &up[(plane * lh + oy / 2) * lw..][..lw]
        });
        let rows = self.plane_rows.unwrap_or(h);
        (&mut self.out[(plane * rows + oy) * w..][..w], up)
    }
}

/// `[buf[start..][..len], buf[start + stride..][..len], …]`: `K` disjoint rows of a buffer.
pub(super) fn rows_mut<T, const K: usize>(
    buf: &mut [T],
    start: usize,
    stride: usize,
    len: usize,
) -> [&mut [T]; K] {
    assert!(len <= stride || K <= 1);
    let mut rest = &mut buf[start..];
    std::array::from_fn(|k| {
        let taken = std::mem::take(&mut rest);
        let (row, tail) = if k + 1 < K {
            taken.split_at_mut(stride)
        } else {
            taken.split_at_mut(len)
        };
        rest = tail;
        &mut row[..len]
    })
}

/// `K` rows of `len` values, `stride` apart.
pub(super) fn rows<T, const K: usize>(
    buf: &[T],
    start: usize,
    stride: usize,
    len: usize,
) -> [&[T]; K] {
    std::array::from_fn(|k| &buf[start + k * stride..][..len])
}

/// Gathers the `S × S` input windows of the `TILE × TILE` output tiles (stride `TILE`, starting
/// `pad ≤ 1` pixels before the map) of one plane into `d[(r·S + c)·nt + t0 + tile]`, with zeros
/// outside the map, each value read mapped by `f` (the identity, or a [`Prologue`]'s channel map):
/// the first step of the transforms, which then run element-wise over all tiles.
pub(super) fn gather<T: Element, const S: usize, const TILE: usize>(
    plane: &[T],
    (h, wd): (usize, usize),
    pad: usize,
    d: &mut [T],
    (nt, t0): (usize, usize),
    f: impl Fn(T) -> T + Copy,
) {
    let (th, tw) = (h.div_ceil(TILE), wd.div_ceil(TILE));
    for ty in 0..th {
        for r in 0..S {
            let base = r * S * nt + t0 + ty * tw;
            let out = rows_mut::<T, S>(d, base, nt, tw);
            let y = (TILE * ty + r).wrapping_sub(pad);
            if y < h {
                gather_row::<T, S, TILE>(out, &plane[y * wd..][..wd], pad, f);
            } else {
                out.into_iter().for_each(|o| o.fill(T::ZERO));
            }
        }
    }
}

/// `out[c][tx] = row[TILE·tx + c − pad]` (zero outside the row) for the `out[0].len()` tiles of one
/// input row. Interior tiles copy a fixed-size window of the row; only the tiles at the edges are
/// assembled value by value. (Copying each row into a padded buffer first cost a `memcpy` call per
/// row, 7 % of WRN-16-4 inference at α = .75 with its 4- and 8-pixel rows; a `step_by(4)` loop per
/// column took about ten instructions per value.)
fn gather_row<T: Element, const S: usize, const TILE: usize>(
    out: [&mut [T]; S],
    row: &[T],
    pad: usize,
    f: impl Fn(T) -> T,
) {
    let (tw, wd) = (out[0].len(), row.len());
    let mut out = out.map(|o| &mut o[..tw]);
    // Tile tx's window is inside the row for lo ≤ tx < hi.
    let lo = usize::from(pad > 0).min(tw);
    let hi = match (wd + pad).checked_sub(S) {
        Some(room) => (room / TILE + 1).clamp(lo, tw),
        None => lo,
    };
    for tx in (0..lo).chain(hi..tw) {
        for (c, o) in out.iter_mut().enumerate() {
            let x = (TILE * tx + c).wrapping_sub(pad);
            o[tx] = if x < wd { f(row[x]) } else { T::ZERO };
        }
    }
    for tx in lo..hi {
        let w: &[T; S] = row[TILE * tx - pad..][..S]
            .try_into()
            .expect("a slice of S values");
        for (o, &v) in out.iter_mut().zip(w) {
            o[tx] = f(v);
        }
    }
}

/// Writes channel `co`'s output rows for the `cnt` images of a task into `out` (plus its upsampled
/// addend): `y[(r·TILE + c)·nt + tile]` is pixel `(TILE·ty + r, TILE·tx + c)` of each tile. Rows go
/// straight into place; a row's `wd` pixels are the first `wd` of the `TILE·tw` its tiles cover.
#[cfg(test)]
pub(super) fn put_tiles<T: Element, const TILE: usize>(
    y: &[T],
    nt: usize,
    (cnt, cout, co): (usize, usize, usize),
    (h, wd): (usize, usize),
    out: &mut Planes<'_, T>,
) {
    let tw = wd.div_ceil(TILE);
    let tiles = h.div_ceil(TILE) * tw;
    for i in 0..cnt {
        let plane = i * cout + co;
        for oy in 0..h {
            let base = ((oy % TILE) * TILE) * nt + i * tiles + (oy / TILE) * tw;
            let (row, up) = out.row(plane, oy, (h, wd));
            for c in 0..TILE.min(wd) {
                let src = &y[base + c * nt..][..tw];
                let dst = row[c..].iter_mut().step_by(TILE).zip(src);
                match up {
                    // Pixel x = TILE·tx + c takes the addend's x / 2 = TILE/2 · tx + c / 2, in the
                    // same pass (a second pass over the row cost 4 % of WRN-16-4 inference at α = .25).
                    Some(up) => {
                        let up = up[c / 2..].iter().step_by(TILE / 2);
                        for ((o, &val), &u) in dst.zip(up) {
                            *o = val + u;
                        }
                    }
                    None => {
                        for (o, &val) in dst {
                            *o = val;
                        }
                    }
                }
            }
        }
    }
}

/// The two-stage transform both variants run on each channel's tiles: gather the `S × S` input
/// windows of every tile of the task (stride `TILE`, `pad` before the map; values mapped by `pro`),
/// apply `stage` (`S` values in, `K` out, element-wise over all tiles) down each column, then along
/// each row, writing frequency `k·K + j` of channel `ch` to row `ch·K² + k·K + j` of `v` (row stride
/// `ld`). `Bᵀ d B` (input, `S = K`) and `A dY Aᵀ` (output gradient, `S < K`) of both variants.
pub(super) fn transform_tiles<T: Element, const S: usize, const K: usize, const TILE: usize>(
    (channels, (h, wd)): (usize, (usize, usize)),
    x: &[T],
    (v, ld): (&mut [T], usize),
    (pad, pro): (usize, Option<Prologue<'_, T>>),
    stage: impl Fn([&[T]; S], [&mut [T]; K]),
) {
    let tiles = h.div_ceil(TILE) * wd.div_ceil(TILE);
    let cnt = x.len() / (channels * h * wd).max(1);
    let nt = cnt * tiles;
    // Each buffer is written in full before it is read, for every channel.
    with_scratch(|scratch: &mut Scratch<T>| {
        let [d, s] = scratch.many([S * S * nt, K * S * nt]);
        for ch in 0..channels {
            for i in 0..cnt {
                let plane = &x[(i * channels + ch) * h * wd..][..h * wd];
                let at = (nt, i * tiles);
                match pro.map(|p| p.channel(ch)) {
                    Some(act) => gather::<T, S, TILE>(plane, (h, wd), pad, d, at, |x| act.apply(x)),
                    None => gather::<T, S, TILE>(plane, (h, wd), pad, d, at, |x| x),
                }
            }
            // Down the columns: s[(k·S + c)] from d[(r·S + c)] …
            for c in 0..S {
                stage(rows(d, c * nt, S * nt, nt), rows_mut(s, c * nt, S * nt, nt));
            }
            // … then along the rows, into the channel's K² frequency rows.
            for k in 0..K {
                let out = rows_mut(v, (ch * K * K + k * K) * ld, ld, nt);
                stage(rows(s, k * S * nt, nt, nt), out);
            }
        }
    })
}

/// The output transform both variants ran before [`super::winograd_output`] (kept as the reference
/// it is tested against, bit for bit): for each of the `cout` channels, `stage` (`K` values
/// in, `TILE` out) down each frequency column of `M` and then along each row gives the
/// `TILE × TILE` output tile of every tile of the task, which [`put_tiles`] writes into `out`.
#[cfg(test)]
pub(super) fn output_tiles<T: Element, const K: usize, const TILE: usize>(
    (m, ld): (&[T], usize),
    cout: usize,
    (h, wd): (usize, usize),
    cnt: usize,
    mut out: Planes<'_, T>,
    stage: impl Fn([&[T]; K], [&mut [T]; TILE]),
) {
    let nt = cnt * h.div_ceil(TILE) * wd.div_ceil(TILE);
    // Each buffer is written in full before it is read, for every channel.
    with_scratch(|scratch: &mut Scratch<T>| {
        let [t, y] = scratch.many([TILE * K * nt, TILE * TILE * nt]);
        for co in 0..cout {
            // Down each frequency column b: t[(r·K + b)] …
            for b in 0..K {
                let col = rows(m, (co * K * K + b) * ld, K * ld, nt);
                stage(col, rows_mut(t, b * nt, K * nt, nt));
            }
            // … then along the rows: y[(r·TILE + c)][tile] is pixel (TILE·ty + r, TILE·tx + c).
            for r in 0..TILE {
                let out_rows = rows_mut(y, r * TILE * nt, nt, nt);
                stage(rows(t, r * K * nt, nt, nt), out_rows);
            }
            put_tiles::<T, TILE>(y, nt, (cnt, cout, co), (h, wd), &mut out);
        }
    })
}

/// Winograd F(2×2, 3×3) ([`winograd`]).
pub(super) struct F2;
/// Winograd F(4×4, 3×3) ([`winograd4`]).
pub(super) struct F4;

/// Implements [`Tiling`] by delegating to a variant's module.
macro_rules! tiling {
    ($ty:ident, $module:ident, tile = $tile:literal, side = $side:literal, target = $target:expr) => {
        impl Tiling for $ty {
            const TILE: usize = $tile;
            const FREQS: usize = $side * $side;
            const TARGET_TILES: usize = $target;
            fn weights_joined<T: Element>(parts: &[(&[T], usize)], cout: usize) -> Vec<T> {
                $module::transform_joined(parts, cout)
            }
            fn input<T: Element>(
                g: &ConvGeometry,
                x: &[T],
                v: &mut [T],
                ld: usize,
                pro: Option<Prologue<'_, T>>,
            ) {
                super::winograd_input::input::<T, Self>((g.c_in, (g.h, g.w)), x, (v, ld), pro)
            }
            fn output_channels<T: Element>(
                m: &[T],
                ld: usize,
                channels: (usize, usize, usize),
                hw: (usize, usize),
                cnt: usize,
                out: Planes<'_, T>,
            ) {
                super::winograd_output::output::<T, Self>((m, ld), channels, hw, cnt, out)
            }
            const SIDE: usize = $side;
            fn b_col<T: Element>(d: [T; 8]) -> [T; 8] {
                $module::b_col(d)
            }
            fn a_col<T: Element>(m: [T; 8]) -> [T; 8] {
                $module::a_col(m)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            #[inline]
            unsafe fn b_col_avx2(d: [__m256; 8]) -> [__m256; 8] {
                $module::b_col_avx2(d)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            #[inline]
            unsafe fn a_col_avx2(m: [__m256; 8]) -> [__m256; 8] {
                $module::a_col_avx2(m)
            }
            fn b_rows<T: Element>(src: (&[T], usize), dst: (&mut [T], usize), n: usize) {
                $module::b_rows(src, dst, n)
            }
            fn a_rows<T: Element>(src: (&[T], usize), dst: (&mut [T], usize), n: usize) {
                $module::a_rows(src, dst, n)
            }
            fn output_grad<T: Element>(g: &ConvGeometry, dy: &[T], d: &mut [T], ld: usize) {
                // `tile × tile` output-gradient tiles, no padding: `A`, `tile` values in, `side` out.
                let shape = (g.c_out, (g.h, g.w));
                transform_tiles::<T, $tile, $side, $tile>(
                    shape,
                    dy,
                    (d, ld),
                    (0, None),
                    $module::a_apply,
                )
            }
            fn kernel_grads<T: Element>(du: &[T], cout: usize, cin: usize) -> Vec<T> {
                $module::kernel_grads(du, cout, cin)
            }
        }
    };
}

// Target widths measured on the 160-channel 32×32 layer (examples/layer_bench): F(4×4) runs best with
// narrow tasks (its M then stays in cache for the output transform), F(2×2) with wide ones.
tiling!(F2, winograd, tile = 2, side = 4, target = 512);
tiling!(F4, winograd4, tile = 4, side = 6, target = 64);

/// `M[ξ] = U[ξ] · V[ξ]` for the `A::FREQS` frequencies: `U` is `[ξ][cout][cin]`, `V` holds `cin`
/// channels (`V[ci][ξ][tile]`, row stride `ld`), and `M` is written as `M[co][ξ][tile]` (no
/// accumulation).
pub(super) fn multiply<T: Element, A: Tiling>(
    u: &[T],
    (cout, cin): (usize, usize),
    v: &[T],
    ld: usize,
    m: &mut [T],
    par: gemm::Parallelism,
) {
    multiply_rows::<T, A>(u, ((0, cout, cout), cin), v, ld, m, par)
}

/// [`multiply`] for output channels `co0 .. co0 + cb` of `U`'s `cout`: `M[co − co0][ξ][tile]`.
pub(super) fn multiply_rows<T: Element, A: Tiling>(
    u: &[T],
    ((co0, cb, cout), cin): ((usize, usize, usize), usize),
    v: &[T],
    ld: usize,
    m: &mut [T],
    par: gemm::Parallelism,
) {
    let f = A::FREQS;
    assert!(
        co0 + cb <= cout
            && u.len() >= f * cout * cin
            && v.len() >= f * cin * ld
            && m.len() >= f * cb * ld
    );
    for xi in 0..f {
        let lhs = Mat {
            ptr: u[(xi * cout + co0) * cin..].as_ptr(),
            rs: cin,
            cs: 1,
        };
        let rhs = Mat {
            ptr: v[xi * ld..].as_ptr(),
            rs: f * ld,
            cs: 1,
        };
        let dst = m[xi * ld..].as_mut_ptr();
        // SAFETY: lhs is cb × cin inside u's frequency ξ; rhs is cin × ld and dst cb × ld, rows
        // FREQS·ld apart, inside v and m (lengths asserted above).
        unsafe { sgemm((cb, ld, cin), dst, f * ld, false, lhs, rhs, par) };
    }
}

/// `y = conv2d(x, w)` for a geometry where [`winograd::applies`] holds, the input mapped by `pro`
/// as it is read.
pub(super) fn forward<T: Element, A: Tiling>(
    g: &ConvGeometry,
    x: &[T],
    w: &[T],
    pro: Option<Prologue<'_, T>>,
) -> Vec<T> {
    forward_in_blocks::<T, A>(g, x, Weights::Raw(w), pro, weight_blocks::<T, A>(g))
}

/// The transformed weights `U` that [`forward`] makes for `g`, one per block of output channels
/// in the blocks it makes them in, for [`forward_prepared`] to use on every later call.
pub(super) fn prepare<T: Element, A: Tiling>(g: &ConvGeometry, w: &[T]) -> Vec<Vec<T>> {
    output_blocks(g.c_out, weight_blocks::<T, A>(g))
        .map(|(b, co0, cbn)| {
            Weights::Raw(w)
                .block::<A>(b, (co0, cbn, g.c_in))
                .into_owned()
        })
        .collect()
}

/// The blocks of output channels `(b, co0, cbn)` that `c_out` channels make in `blocks` blocks
/// (at least one, at most one per channel): what [`forward_in_blocks`] transforms and multiplies
/// block by block, and what [`prepare`] keeps.
fn output_blocks(cout: usize, blocks: usize) -> impl Iterator<Item = (usize, usize, usize)> {
    let cb = cout.div_ceil(blocks.clamp(1, cout.max(1))).max(1);
    (0..cout)
        .step_by(cb)
        .enumerate()
        .map(move |(b, co0)| (b, co0, cb.min(cout - co0)))
}

/// [`forward`] on weights [`prepare`]d for `g`: the same values, bit for bit.
pub(super) fn forward_prepared<T: Element, A: Tiling>(
    g: &ConvGeometry,
    x: &[T],
    u: &[Vec<T>],
    pro: Option<Prologue<'_, T>>,
) -> Vec<T> {
    forward_in_blocks::<T, A>(g, x, Weights::Prepared(u), pro, u.len())
}

/// The weights [`forward_in_blocks`] runs on: raw `[c_out, c_in, 3, 3]`, transformed block by
/// block as it goes, or already transformed ([`prepare`]).
#[derive(Clone, Copy)]
enum Weights<'a, T> {
    Raw(&'a [T]),
    Prepared(&'a [Vec<T>]),
}

impl<T: Element> Weights<'_, T> {
    /// `U` of block `b`, output channels `co0 … co0 + cbn`.
    fn block<A: Tiling>(&self, b: usize, (co0, cbn, cin): (usize, usize, usize)) -> Cow<'_, [T]> {
        match self {
            Weights::Raw(w) => {
                Cow::Owned(A::weights(&w[co0 * cin * 9..][..cbn * cin * 9], cbn, cin))
            }
            Weights::Prepared(u) => Cow::Borrowed(&u[b][..]),
        }
    }
}

/// Bytes of transformed weights `U` made at a time by [`forward`] (4 MiB) where blocks pay. A whole
/// `U` is `FREQS · c_out · c_in` values: 16.8 MB for a 512-channel layer by F(2×2), allocated on
/// every call, and the peak of SE-ResNet-50's inference at α = .75 (its last stage's 3×3 layers at
/// 7×7, the same at every α) was that `U` on top of the live feature maps.
const WEIGHT_BLOCK_BYTES: usize = 4 << 20;

/// How many blocks of output channels [`forward`] makes `U` in: one, unless `U` is larger than
/// [`WEIGHT_BLOCK_BYTES`] while the whole batch's transformed input `V`, which the blocks keep and
/// each block reads again, is at most twice that (small maps of a small batch, as in the ImageNet
/// families' last stages, where the blocks were also faster: 8.4–9.1 against 10.1–12.2 ms per
/// SE-ResNet-50 layer of 512 channels at 7×7). For WRN-28-10 at batch 128, `V` of the 640-channel
/// stage is 47 MB: fifteen blocks read it fifteen times.
fn weight_blocks<T: Element, A: Tiling>(g: &ConvGeometry) -> usize {
    let size = std::mem::size_of::<T>();
    let u = A::FREQS * g.c_out * g.c_in * size;
    let v = A::FREQS * g.c_in * g.n * A::tiles(g.h, g.w) * size;
    match u > WEIGHT_BLOCK_BYTES && v <= 2 * WEIGHT_BLOCK_BYTES {
        true => u.div_ceil(WEIGHT_BLOCK_BYTES).clamp(1, g.c_out.max(1)),
        false => 1,
    }
}

/// [`forward`] with `U` made for `blocks` blocks of output channels, one after the other: every
/// task's transformed input `V` is made first and kept, then per block its `U` rows, the tasks'
/// products and their output transform. With one block, each task makes and multiplies its `V`
/// from per-thread scratch.
fn forward_in_blocks<T: Element, A: Tiling>(
    g: &ConvGeometry,
    x: &[T],
    w: Weights<'_, T>,
    pro: Option<Prologue<'_, T>>,
    blocks: usize,
) -> Vec<T> {
    debug_assert!(winograd::applies(g));
    let (cin, cout, h, wd) = (g.c_in, g.c_out, g.h, g.w);
    let tiles = A::tiles(h, wd);
    if g.n * g.out_image() == 0 || cin == 0 {
        return vec![T::ZERO; g.n * g.out_image()];
    }
    // Every output row is written by the output transform below (rows `oy < h`, all `wd` columns).
    let mut out = output_vec(g.n * g.out_image());
    let nb = images_per_task(g.n, tiles, A::TARGET_TILES);
    let par = gemm_parallelism(g.n.div_ceil(nb));
    let blocks = blocks.clamp(1, cout);
    if blocks == 1 && nb == 1 {
        if let Some(band) = band_tile_rows::<A>(g) {
            let u = w.block::<A>(0, (0, cout, cin));
            if g.n < rayon::current_num_threads() {
                forward_bands_in_parallel::<T, A>(g, x, &u, pro, band, &mut out);
                return out;
            }
            out.par_chunks_mut(g.out_image())
                .enumerate()
                .for_each(|(i, out_image)| {
                    with_scratch(|scratch: &mut Scratch<T>| {
                        let x = &x[i * g.in_image()..][..g.in_image()];
                        forward_bands::<T, A>(g, x, &u, pro, band, out_image, scratch, par)
                    })
                });
            return out;
        }
    }
    if blocks == 1 {
        let u = w.block::<A>(0, (0, cout, cin));
        out.par_chunks_mut(nb * g.out_image())
            .enumerate()
            .for_each(|(t, out_chunk)| {
                with_scratch(|scratch: &mut Scratch<T>| {
                    let i0 = t * nb;
                    let cnt = out_chunk.len() / g.out_image();
                    let ld = cnt * tiles;
                    let v = sized(&mut scratch.col, A::FREQS * cin * ld);
                    A::input(g, &x[i0 * g.in_image()..][..cnt * g.in_image()], v, ld, pro);
                    let m = sized(&mut scratch.stage, A::FREQS * cout * ld);
                    multiply::<T, A>(&u, (cout, cin), v, ld, m, par);
                    let out = Planes {
                        out: out_chunk,
                        add_up: None,
                        plane_rows: None,
                        post: None,
                    };
                    A::output(m, ld, cout, (h, wd), cnt, out);
                })
            });
        return out;
    }
    // Every value of each task's `V` is written by its input transform.
    let mut vs: Vec<Vec<T>> = (0..g.n.div_ceil(nb))
        .map(|t| output_vec(A::FREQS * cin * nb.min(g.n - t * nb) * tiles))
        .collect();
    vs.par_iter_mut().enumerate().for_each(|(t, v)| {
        let (i0, cnt) = (t * nb, nb.min(g.n - t * nb));
        let xs = &x[i0 * g.in_image()..][..cnt * g.in_image()];
        A::input(g, xs, v, cnt * tiles, pro);
    });
    for (b, co0, cbn) in output_blocks(cout, blocks) {
        let u = w.block::<A>(b, (co0, cbn, cin));
        out.par_chunks_mut(nb * g.out_image())
            .zip(vs.par_iter())
            .for_each(|(out_chunk, v)| {
                with_scratch(|scratch: &mut Scratch<T>| {
                    let cnt = out_chunk.len() / g.out_image();
                    let ld = cnt * tiles;
                    let m = sized(&mut scratch.stage, A::FREQS * cbn * ld);
                    multiply::<T, A>(&u, (cbn, cin), v, ld, m, par);
                    let out = Planes {
                        out: out_chunk,
                        add_up: None,
                        plane_rows: None,
                        post: None,
                    };
                    A::output_channels(m, ld, (co0, cbn, cout), (h, wd), cnt, out);
                })
            });
    }
    out
}

/// Tiles (GEMM columns) per band where [`forward`] runs an image band by band ([`band_tile_rows`]):
/// as many whole tile rows as fit, at least one (a row of 33 tiles at 130 × 130, say).
const BAND_TILES: usize = 64;

/// Tiles of one image from which [`forward`] runs it in bands of [`BAND_TILES`]: F(4×4) on maps of
/// 128 × 128 and larger.
const BAND_FROM_TILES: usize = 1024;

/// Tiles of one image above which [`forward`] runs it in bands where the batch has fewer images
/// than the pool has threads (the GEMMs then split their columns between threads).
const BAND_FEW_IMAGES_ABOVE: usize = 2 * BAND_TILES;

/// Tile rows per band where [`forward`] transforms, multiplies and writes an image band by band,
/// or `None` (whole images): an image's transformed input and products are `FREQS·c` values per
/// tile — at U-Net's 32 channels at 128 × 128 (1 024 F(4×4) tiles) 4.7 MB each, which the output
/// transform read back from memory. Measured (Intel Xeon, AVX-512, 2 threads, F(4×4), fastest of
/// 15 calls, whole images against bands of 64 / 128 tiles): 32 → 32 channels at 128 × 128, batch
/// 4, 6.05 against 4.03 / 4.71 ms; 64 → 32 10.25 against 7.41 / 7.96; 16 → 16 2.47 against 1.75 /
/// 1.74–1.84; batch 1, 32 → 32 4.07–4.27 against 1.93; but 31 → 17 at 77 × 77 (400 tiles), batch 4,
/// 1.13–1.17 against 1.36 / 1.25, and 32 → 32 at 96 × 96 (576 tiles) 2.32–2.43 against 2.46–2.48
/// / 2.29–2.52 (hence [`BAND_FROM_TILES`]); 64 → 64 at 64 × 64 with one image 2.06–3.21 against
/// 1.36, with two 1.38–1.44 against 1.40–1.41 (hence [`BAND_FEW_IMAGES_ABOVE`]).
///
/// F(4×4) only: these bounds were measured for it; F(2×2) runs where F(4×4) has too few tiles, and
/// its GEMMs want wider tasks ([`Tiling::TARGET_TILES`]).
fn band_tile_rows<A: Tiling>(g: &ConvGeometry) -> Option<usize> {
    if A::TILE != 4 {
        return None;
    }
    let (th, tw) = (g.h.div_ceil(A::TILE), g.w.div_ceil(A::TILE));
    let tiles = th * tw;
    let few_images = g.n < rayon::current_num_threads();
    (tiles >= BAND_FROM_TILES || (few_images && tiles > BAND_FEW_IMAGES_ABOVE))
        .then(|| (BAND_TILES / tw.max(1)).clamp(1, th))
}

/// One image of [`forward`] in bands of `band` tile rows, one after the other.
#[allow(clippy::too_many_arguments)]
fn forward_bands<T: Element, A: Tiling>(
    g: &ConvGeometry,
    x: &[T],
    u: &[T],
    pro: Option<Prologue<'_, T>>,
    band: usize,
    out: &mut [T],
    scratch: &mut Scratch<T>,
    par: gemm::Parallelism,
) {
    let th = g.h.div_ceil(A::TILE);
    for ty0 in (0..th).step_by(band) {
        let ty1 = (ty0 + band).min(th);
        let y0 = A::TILE * ty0;
        let planes = Planes {
            out: &mut out[y0 * g.w..],
            add_up: None,
            plane_rows: Some(g.h),
            post: None,
        };
        forward_band::<T, A>(g, x, u, pro, (ty0, ty1), planes, scratch, par);
    }
}

/// [`forward`] of a batch with fewer images than threads, image by image: the bands of an image
/// run on all threads, as many at a time as there are threads, each into its own planes (`c_out`
/// planes of the band's rows), copied into place channel by channel once the group is done. One
/// band after another, the transforms of a lone image ran on one thread and its GEMMs split 64
/// columns between threads.
fn forward_bands_in_parallel<T: Element, A: Tiling>(
    g: &ConvGeometry,
    x: &[T],
    u: &[T],
    pro: Option<Prologue<'_, T>>,
    band: usize,
    out: &mut [T],
) {
    let (h, wd) = (g.h, g.w);
    let th = h.div_ceil(A::TILE);
    let bands: Vec<(usize, usize)> = (0..th)
        .step_by(band)
        .map(|ty0| (ty0, (ty0 + band).min(th)))
        .collect();
    // Output rows `y0 … y0 + rows` of a band of tile rows.
    let rows = |(ty0, ty1): (usize, usize)| (A::TILE * ty0, (A::TILE * ty1).min(h) - A::TILE * ty0);
    for (i, out) in out.chunks_mut(g.out_image()).enumerate() {
        let x = &x[i * g.in_image()..][..g.in_image()];
        for group in bands.chunks(rayon::current_num_threads().max(1)) {
            let staged: Vec<Vec<T>> = group
                .par_iter()
                .map(|&b| {
                    // Every value is written by the band's output transform.
                    let mut y = output_vec(g.c_out * rows(b).1 * wd);
                    with_scratch(|scratch: &mut Scratch<T>| {
                        let planes = Planes {
                            out: &mut y,
                            add_up: None,
                            plane_rows: None,
                            post: None,
                        };
                        let par = gemm::Parallelism::None;
                        forward_band::<T, A>(g, x, u, pro, b, planes, scratch, par)
                    });
                    y
                })
                .collect();
            out.par_chunks_mut(h * wd)
                .enumerate()
                .for_each(|(co, plane)| {
                    for (&b, y) in group.iter().zip(&staged) {
                        let (y0, n) = rows(b);
                        plane[y0 * wd..][..n * wd].copy_from_slice(&y[co * n * wd..][..n * wd]);
                    }
                });
        }
    }
}

/// The tile rows `ty0 … ty1` of one image of [`forward`]: their transformed input (the rows
/// around them read from the image), the products and the output transform of their rows into
/// `planes` (whose first row is the band's first).
#[allow(clippy::too_many_arguments)]
fn forward_band<T: Element, A: Tiling>(
    g: &ConvGeometry,
    x: &[T],
    u: &[T],
    pro: Option<Prologue<'_, T>>,
    (ty0, ty1): (usize, usize),
    planes: Planes<'_, T>,
    scratch: &mut Scratch<T>,
    par: gemm::Parallelism,
) {
    let (cin, cout, h, wd) = (g.c_in, g.c_out, g.h, g.w);
    let ld = (ty1 - ty0) * wd.div_ceil(A::TILE);
    let v = sized(&mut scratch.col, A::FREQS * cin * ld);
    super::winograd_input::input_band::<T, A>((cin, (h, wd)), x, (ty0, ty1), (v, ld), pro);
    let m = sized(&mut scratch.stage, A::FREQS * cout * ld);
    multiply::<T, A>(u, (cout, cin), v, ld, m, par);
    let rows = (A::TILE * ty1).min(h) - A::TILE * ty0;
    A::output(m, ld, cout, (rows, wd), 1, planes);
}

/// `dx` of `y = conv2d(x, w)` given `dy`: the same convolution of `dy` with the flipped, transposed
/// kernel.
pub(super) fn backward_data<T: Element, A: Tiling>(g: &ConvGeometry, dy: &[T], w: &[T]) -> Vec<T> {
    let flipped = winograd::flip_transpose(w, g.c_out, g.c_in);
    let gt = ConvGeometry {
        c_in: g.c_out,
        c_out: g.c_in,
        ..*g
    };
    forward::<T, A>(&gt, dy, &flipped, None)
}

/// `dw` of `y = conv2d(x, w)` given `dy`: `dU[ξ] = Σ_tiles D[ξ] · V[ξ]ᵀ` (`FREQS` GEMMs over all tiles
/// of the batch, summed deterministically), then `dw = Gᵀ dU G`.
pub(super) fn backward_filter<T: Element, A: Tiling>(
    g: &ConvGeometry,
    x: &[T],
    dy: &[T],
) -> Vec<T> {
    debug_assert!(winograd::applies(g));
    let (cin, cout, f) = (g.c_in, g.c_out, A::FREQS);
    let tiles = A::tiles(g.h, g.w);
    let ulen = f * cout * cin;
    if g.n == 0 || tiles == 0 || ulen == 0 {
        return vec![T::ZERO; cout * cin * 9];
    }
    let nb = images_per_task(g.n, tiles, A::TARGET_TILES);
    let tasks = g.n.div_ceil(nb);
    let par = gemm_parallelism(tasks);
    let du = sum_tasks(tasks, ulen, |t, scratch, du| {
        let i0 = t * nb;
        let cnt = nb.min(g.n - i0);
        let ld = cnt * tiles;
        let Scratch { col, stage, .. } = scratch;
        let v = sized(col, f * cin * ld);
        A::input(
            g,
            &x[i0 * g.in_image()..][..cnt * g.in_image()],
            v,
            ld,
            None,
        );
        let d = sized(stage, f * cout * ld);
        A::output_grad(g, &dy[i0 * g.out_image()..][..cnt * g.out_image()], d, ld);
        for xi in 0..f {
            let lhs = Mat {
                ptr: d[xi * ld..].as_ptr(),
                rs: f * ld,
                cs: 1,
            };
            // V[ξ]ᵀ: element (tile, ci) is v[(ci·FREQS + ξ)·ld + tile].
            let rhs = Mat {
                ptr: v[xi * ld..].as_ptr(),
                rs: 1,
                cs: f * ld,
            };
            let dst = du[xi * cout * cin..].as_mut_ptr();
            // SAFETY: dst is cout × cin inside du; lhs is cout × ld inside d; rhs is ld × cin
            // inside v.
            unsafe { sgemm((cout, cin, ld), dst, cin, true, lhs, rhs, par) };
        }
    });
    A::kernel_grads(&du, cout, cin)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_values;

    /// [`forward_prepared`] on [`prepare`]d weights writes what [`forward`] does, bit for bit, by
    /// F(2×2) and F(4×4), with and without a prologue, where `U` is made in one block and where
    /// it is made in several (512 channels at 7×7 for two images: 16.8 MB of `U` in 4 blocks).
    #[test]
    fn prepared_weights_give_the_forward_values_bit_for_bit_in_one_and_several_blocks() {
        for (n, c, hw) in [(3, 8, 10), (2, 512, 7)] {
            let g = ConvGeometry::new((n, c, hw, hw), (c, c, 3, 3), 1, 1, 1).unwrap();
            let f32s = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<f32>>();
            let x = f32s(test_values(g.n * g.in_image(), 3));
            let w = f32s(test_values(9 * c * c, 5));
            let scale: Vec<f32> = (0..c).map(|i| 0.5 + i as f32 / c as f32).collect();
            let shift: Vec<f32> = scale.iter().map(|s| 0.1 - s / 4.0).collect();
            let pro = Prologue {
                scale: &scale,
                shift: &shift,
                relu: true,
            };
            if c == 512 {
                assert!(weight_blocks::<f32, F2>(&g) > 1, "several blocks");
            }
            for pro in [None, Some(pro)] {
                let what = format!("{n}×{c}×{hw}², prologue {}", pro.is_some());
                assert_prepared_is_forward::<F2>(&g, &x, &w, pro, &format!("F(2×2), {what}"));
                assert_prepared_is_forward::<F4>(&g, &x, &w, pro, &format!("F(4×4), {what}"));
            }
        }
    }

    /// [`forward_prepared`] on [`prepare`]d weights equals [`forward`] bit for bit, by variant `A`.
    fn assert_prepared_is_forward<A: Tiling>(
        g: &ConvGeometry,
        x: &[f32],
        w: &[f32],
        pro: Option<Prologue<'_, f32>>,
        what: &str,
    ) {
        let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
        let u = prepare::<f32, A>(g, w);
        assert_eq!(
            bits(forward_prepared::<f32, A>(g, x, &u, pro)),
            bits(forward::<f32, A>(g, x, w, pro)),
            "{what}"
        );
    }

    /// Direct summation of a 3×3 "same" convolution in f64.
    fn naive(g: &ConvGeometry, x: &[f64], w: &[f64]) -> Vec<f64> {
        let (h, wd) = (g.h, g.w);
        let mut y = vec![0.0; g.n * g.c_out * h * wd];
        for i in 0..g.n {
            for co in 0..g.c_out {
                for oy in 0..h {
                    for ox in 0..wd {
                        let mut s = 0.0;
                        for ci in 0..g.c_in {
                            for ky in 0..3 {
                                for kx in 0..3 {
                                    let (iy, ix) = (oy + ky, ox + kx);
                                    if (1..=h).contains(&iy) && (1..=wd).contains(&ix) {
                                        let xv = x[((i * g.c_in + ci) * h + iy - 1) * wd + ix - 1];
                                        s += xv * w[((co * g.c_in + ci) * 3 + ky) * 3 + kx];
                                    }
                                }
                            }
                        }
                        y[((i * g.c_out + co) * h + oy) * wd + ox] = s;
                    }
                }
            }
        }
        y
    }

    /// Blocks only where `U` is over the budget and the batch's `V` small: SE-ResNet-50's
    /// 512-channel layers at 7×7 (batch 8) in four blocks; WRN-28-10's 320- and 640-channel stages
    /// at batch 128 (`V` 94 and 47 MB) and a small layer in one.
    #[test]
    fn weight_blocks_only_where_the_transformed_weights_are_large_and_the_batch_small() {
        let geo = |n, c, hw| ConvGeometry::new((n, c, hw, hw), (c, c, 3, 3), 1, 1, 1).unwrap();
        assert_eq!(weight_blocks::<f32, F2>(&geo(8, 512, 7)), 4);
        assert_eq!(weight_blocks::<f32, F4>(&geo(128, 320, 16)), 1);
        assert_eq!(weight_blocks::<f32, F4>(&geo(128, 640, 8)), 1);
        assert_eq!(weight_blocks::<f32, F4>(&geo(1, 64, 8)), 1);
    }

    /// The dense Winograd forward with its transformed weights made for blocks of output channels
    /// (2, 3 — the last one shorter — and one block per channel) equals the one-block forward and
    /// direct summation, by both variants, on odd and even maps and batches that leave a short task.
    #[test]
    fn winograd_forward_in_output_channel_blocks_equals_one_block_and_direct_summation() {
        for (k, &(n, c_in, c_out, h, w)) in [(3, 5, 7, 7, 7), (5, 4, 6, 9, 6), (2, 3, 5, 8, 11)]
            .iter()
            .enumerate()
        {
            let g = ConvGeometry::new((n, c_in, h, w), (c_out, c_in, 3, 3), 1, 1, 1).unwrap();
            let x = test_values(n * c_in * h * w, 300 + k as u64);
            let wt = test_values(c_out * c_in * 9, 400 + k as u64);
            let want = naive(&g, &x, &wt);
            for f4 in [false, true] {
                let run = |blocks: usize| match f4 {
                    true => forward_in_blocks::<f64, F4>(&g, &x, Weights::Raw(&wt), None, blocks),
                    false => forward_in_blocks::<f64, F2>(&g, &x, Weights::Raw(&wt), None, blocks),
                };
                let whole = run(1);
                for blocks in [2, 3, c_out] {
                    let got = run(blocks);
                    let what = format!("{g:?}, F4 {f4}, {blocks} blocks");
                    assert_eq!(got.len(), want.len(), "{what}");
                    for (j, ((a, b), d)) in got.iter().zip(&whole).zip(&want).enumerate() {
                        assert!(
                            (a - b).abs() <= 1e-12 * (1.0 + b.abs()),
                            "{what}: {j}: {a} vs {b}"
                        );
                        assert!(
                            (a - d).abs() <= 1e-9 * (1.0 + d.abs()),
                            "{what}: {j}: {a} vs {d}"
                        );
                    }
                }
            }
        }
    }

    /// Images run band by band ([`band_tile_rows`], F(4×4)) equal direct summation of the input
    /// mapped by a batch norm + ReLU prologue, in f64 and in f32: 130 × 131 (1 089 tiles, bands of
    /// one row of 33 tiles), two images of 258 × 64 (1 040 tiles, bands of 4 tile rows of 16, the
    /// last one a single row with half a tile inside the map), and one 70 × 45 image where the pool
    /// has more threads than images (216 tiles, bands of 5 rows). Every band reads the rows above
    /// and below it from the image and its output rows land in their planes. F(2×2) never bands and
    /// is checked on the same maps whole.
    #[test]
    fn winograd_forward_in_row_bands_matches_direct_summation_with_a_prologue() {
        for (k, &(n, c_in, c_out, h, w)) in
            [(1, 3, 5, 130, 131), (2, 3, 4, 258, 64), (1, 4, 3, 70, 45)]
                .iter()
                .enumerate()
        {
            let g = ConvGeometry::new((n, c_in, h, w), (c_out, c_in, 3, 3), 1, 1, 1).unwrap();
            if k < 2 || rayon::current_num_threads() > 1 {
                assert!(band_tile_rows::<F4>(&g).is_some(), "{g:?} runs in bands");
            }
            assert!(
                band_tile_rows::<F2>(&g).is_none(),
                "{g:?} runs whole by F(2×2)"
            );
            let x = test_values(n * c_in * h * w, 500 + k as u64);
            let wt = test_values(c_out * c_in * 9, 600 + k as u64);
            let scale = test_values(c_in, 700 + k as u64);
            let shift = test_values(c_in, 800 + k as u64);
            let mapped: Vec<f64> = x
                .iter()
                .enumerate()
                .map(|(i, &v)| {
                    let c = (i / (h * w)) % c_in;
                    (scale[c] * v + shift[c]).max(0.0)
                })
                .collect();
            let want = naive(&g, &mapped, &wt);
            let pro = Prologue {
                scale: &scale,
                shift: &shift,
                relu: true,
            };
            let f32s = |v: &[f64]| v.iter().map(|&v| v as f32).collect::<Vec<f32>>();
            let (x32, w32, s32, b32) = (f32s(&x), f32s(&wt), f32s(&scale), f32s(&shift));
            let pro32 = Prologue {
                scale: &s32,
                shift: &b32,
                relu: true,
            };
            for f4 in [false, true] {
                let (got, got32) = match f4 {
                    true => (
                        forward::<f64, F4>(&g, &x, &wt, Some(pro)),
                        forward::<f32, F4>(&g, &x32, &w32, Some(pro32)),
                    ),
                    false => (
                        forward::<f64, F2>(&g, &x, &wt, Some(pro)),
                        forward::<f32, F2>(&g, &x32, &w32, Some(pro32)),
                    ),
                };
                assert_eq!(got.len(), want.len());
                for (j, ((a, a32), d)) in got.iter().zip(&got32).zip(&want).enumerate() {
                    let what = format!("{g:?}, F4 {f4}: value {j}");
                    assert!(
                        (a - d).abs() <= 1e-9 * (1.0 + d.abs()),
                        "{what}: {a} vs {d}"
                    );
                    assert!(
                        (*a32 as f64 - d).abs() <= 1e-4 * (1.0 + d.abs()),
                        "{what}: {a32} vs {d}"
                    );
                }
            }
        }
    }
}
