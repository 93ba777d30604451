//! Direct 3×3, stride-1, padding-1 convolution for layers with few channels (f32 inference), and the
//! four-path octave convolution built from it.
//!
//! Why: Winograd and im2col both pay per input value a cost that only many channels amortise — the
//! Winograd transforms (a 6×6 tile in, a 4×4 tile out, per channel) cost about as much as the GEMM at
//! 16 channels, and the GEMMs themselves are 16 rows deep. At α > 0 every octave path has a fraction
//! of the layer's channels, so a 32-channel layer becomes four 16-channel paths and the fused Winograd
//! kernel fell from 60 to 25–30 GMAC/s (`octconv bench 'seed_wrn(n = 2, k = 2)' --profile`, AMD EPYC,
//! AVX2): α = .5 took as long as α = 0 in those layers. ONNX Runtime runs such convolutions directly
//! (MLAS's NCHWc kernels) and its time follows the MACs.
//!
//! How: each input plane is copied once, zero-padded (and mapped by the batch norm before the layer,
//! or 2×2-pooled for H→L, as it is copied), into `(h + 2) × (w + 2)` planes. Output position
//! `q = y·(w + 2) + x` then reads input `q + ky·(w + 2) + kx` for tap `(ky, kx)`: every output row of
//! the padded width is one contiguous run, and a block of [`PX_BLOCK`] positions runs across rows, so
//! small maps (4×4 to 8×8) fill the vector registers as large ones do. The two padding columns of each
//! row are computed and dropped (2/(w + 2) of the work). A block of [`CO_BLOCK`] output channels by
//! [`PX_BLOCK`] positions is held in twelve AVX2 registers over all `9·c_in` taps: per tap three
//! input loads and four weight broadcasts feed twelve FMAs. Without AVX2 + FMA a portable loop with
//! the same structure runs (its values differ from the FMA build's by rounding).

use super::octave::{OctaveGeometry, OctaveWeights};
use super::prologue::Prologue;
use super::resample::{add_upsampled_row, pool_plane_map};
use super::scratch::{output_vec, with_scratch, Scratch};
use super::simd::wide_fn;
use super::{ConvGeometry, Element};
use rayon::prelude::*;

/// Output channels computed together.
pub const CO_BLOCK: usize = 4;
/// Output positions computed together (two AVX2 vectors).
pub const PX_BLOCK: usize = 16;
/// AVX2 vectors per block of positions.
const VECS: usize = PX_BLOCK / 8;

/// The zero-padded planes of one `h × w` map: `(h + 2)` rows of `w + 2`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Padded {
    /// Height of the unpadded map.
    pub h: usize,
    /// Width of the unpadded map.
    pub w: usize,
}

impl Padded {
    /// Row length of a padded plane.
    pub fn pw(&self) -> usize {
        self.w + 2
    }

    /// Values per padded plane.
    pub fn plane(&self) -> usize {
        (self.h + 2) * self.pw()
    }

    /// Output positions computed per channel: `h` rows of the padded width, in whole blocks.
    pub fn positions(&self) -> usize {
        (self.h * self.pw()).next_multiple_of(PX_BLOCK)
    }

    /// Length of a buffer of `c` padded planes: the last block of the last plane reads up to
    /// [`PX_BLOCK`] + 2 values past it.
    pub fn buffer_len(&self, c: usize) -> usize {
        c * self.plane() + PX_BLOCK + 2
    }
}

/// Weights packed for the kernel: per block of [`CO_BLOCK`] output channels, per input channel, per
/// tap, the block's [`CO_BLOCK`] values (zero for channels past `c_out`).
#[derive(Clone, Debug)]
pub struct Packed {
    data: Vec<f32>,
    c_in: usize,
    c_out: usize,
}

impl Packed {
    /// Packs `weight(co, ci)` (the nine taps of that kernel, `ky·3 + kx`) for `c_out × c_in` 3×3
    /// kernels.
    pub fn new<'w>(c_out: usize, c_in: usize, weight: impl Fn(usize, usize) -> &'w [f32]) -> Self {
        let blocks = c_out.div_ceil(CO_BLOCK);
        let mut data = vec![0.0; blocks * c_in * 9 * CO_BLOCK];
        for (b, block) in data.chunks_exact_mut(c_in * 9 * CO_BLOCK).enumerate() {
            for co in b * CO_BLOCK..c_out.min((b + 1) * CO_BLOCK) {
                for (ci, taps) in block.chunks_exact_mut(9 * CO_BLOCK).enumerate() {
                    let k = weight(co, ci);
                    for (t, &v) in k[..9].iter().enumerate() {
                        taps[t * CO_BLOCK + co % CO_BLOCK] = v;
                    }
                }
            }
        }
        Packed { data, c_in, c_out }
    }

    /// Packs a `[c_out, c_in, 3, 3]` row-major weight.
    pub fn from_oihw(w: &[f32], c_out: usize, c_in: usize) -> Self {
        assert!(w.len() >= c_out * c_in * 9, "direct 3×3: weight size");
        Self::new(c_out, c_in, |co, ci| &w[(co * c_in + ci) * 9..][..9])
    }

    fn blocks(&self) -> usize {
        self.c_out.div_ceil(CO_BLOCK)
    }

    fn block(&self, b: usize) -> &[f32] {
        &self.data[b * self.c_in * 9 * CO_BLOCK..][..self.c_in * 9 * CO_BLOCK]
    }
}

/// Writes `src` (`h × w`), each value mapped by `f`, into the padded plane `dst` with zero borders
/// (also the depthwise kernel's padded plane).
#[inline(always)]
pub fn pad_plane<T: Element>(src: &[T], dst: &mut [T], p: Padded, f: impl Fn(T) -> T) {
    let pw = p.pw();
    dst[..pw].fill(T::ZERO);
    for (y, row) in src.chunks_exact(p.w).take(p.h).enumerate() {
        let d = &mut dst[(y + 1) * pw..][..pw];
        d[0] = T::ZERO;
        for (o, &v) in d[1..=p.w].iter_mut().zip(row) {
            *o = f(v);
        }
        d[pw - 1] = T::ZERO;
    }
    dst[(p.h + 1) * pw..p.plane()].fill(T::ZERO);
}

wide_fn! {
    /// Pads each of the `c` planes of `x` (`h × w` each) into `dst`, mapped by `pro` (channel `p` of the
    /// plane's index `p mod channels`); the slack after the last plane is zeroed.
    /// Compiled for AVX2 too ([`wide_fn!`]): mapped by the prologue, the portable build ran 4 lanes
    /// at a time.
    fn pad_planes(x: &[f32], c: usize, p: Padded, pro: Option<Prologue<'_, f32>>, dst: &mut [f32]) {
        let hw = p.h * p.w;
        for (ci, plane) in x.chunks_exact(hw).take(c).enumerate() {
            let d = &mut dst[ci * p.plane()..][..p.plane()];
            match pro {
                Some(pro) => {
                    let act = pro.channel(ci % pro.scale.len());
                    pad_plane(plane, d, p, |v| act.apply(v))
                }
                None => pad_plane(plane, d, p, |v| v),
            }
        }
        dst[c * p.plane()..].fill(0.0);
    }
}

/// Pools each of the `c` planes of `x` (`2h × 2w`, mapped by `pro` first) 2×2 and pads it into `dst`
/// (planes of `p`, the pooled size), using `tmp` (`h·w` values) for one pooled plane at a time.
fn pool_pad_planes(
    x: &[f32],
    c: usize,
    p: Padded,
    pro: Option<Prologue<'_, f32>>,
    tmp: &mut [f32],
    dst: &mut [f32],
) {
    let (hh, ww) = (2 * p.h, 2 * p.w);
    for (ci, plane) in x.chunks_exact(hh * ww).take(c).enumerate() {
        let pooled = &mut tmp[..p.h * p.w];
        match pro {
            Some(pro) => {
                let act = pro.channel(ci % pro.scale.len());
                pool_plane_map(plane, pooled, (hh, ww), 0.25, |v| act.apply(v))
            }
            None => pool_plane_map(plane, pooled, (hh, ww), 0.25, |v| v),
        }
        pad_plane(pooled, &mut dst[ci * p.plane()..][..p.plane()], p, |v| v);
    }
}

/// Output channels [`conv_planes`] may stage at once: two blocks of [`CO_BLOCK`] where the CPU has
/// AVX-512 ([`blocks_avx512`]), one otherwise. Callers size `stage` for this many planes.
pub const STAGE_CHANNELS: usize = 2 * CO_BLOCK;

/// Convolves the `w.c_in` padded planes of `x` (a buffer of [`Padded::buffer_len`]) with `w` and
/// hands each output row to `emit(channel, row index, row)` (`w` values). `stage` holds
/// [`STAGE_CHANNELS`] · [`Padded::positions`] values.
pub fn conv_planes(
    x: &[f32],
    p: Padded,
    w: &Packed,
    stage: &mut [f32],
    mut emit: impl FnMut(usize, usize, &[f32]),
) {
    let positions = p.positions();
    assert!(
        x.len() >= p.buffer_len(w.c_in) && stage.len() >= STAGE_CHANNELS * positions,
        "direct 3×3: buffer sizes"
    );
    let wide = super::simd::has_avx512f();
    let mut b = 0;
    while b < w.blocks() {
        let pair = wide && b + 1 < w.blocks();
        let staged = if pair { 2 * CO_BLOCK } else { CO_BLOCK };
        let stage = &mut stage[..staged * positions];
        if pair {
            blocks_wide(x, p, w.c_in, [w.block(b), w.block(b + 1)], stage);
        } else if wide {
            blocks_wide(x, p, w.c_in, [w.block(b)], stage);
        } else {
            block(x, p, w.c_in, w.block(b), stage);
        }
        for c in 0..staged.min(w.c_out - b * CO_BLOCK) {
            let plane = &stage[c * positions..][..positions];
            for y in 0..p.h {
                emit(b * CO_BLOCK + c, y, &plane[y * p.pw()..][..p.w]);
            }
        }
        b += staged / CO_BLOCK;
    }
}

/// `NB` blocks of output channels (weights `wbs`) over every position, into `stage` (`NB` ·
/// [`CO_BLOCK`] planes of [`Padded::positions`]), by [`blocks_avx512`]; only called where the CPU
/// has AVX-512F. Each output sums its products in the order of [`block`] (channel, then tap, one
/// fused multiply-add each), so its values equal the AVX2 block's bit for bit.
fn blocks_wide<const NB: usize>(
    x: &[f32],
    p: Padded,
    c_in: usize,
    wbs: [&[f32]; NB],
    stage: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    {
        assert!(
            wbs.iter().all(|wb| wb.len() >= c_in * 9 * CO_BLOCK)
                && stage.len() >= NB * CO_BLOCK * p.positions()
                && x.len() >= p.buffer_len(c_in),
            "direct 3×3: buffer sizes"
        );
        // SAFETY: `conv_planes` calls this only where the CPU has AVX-512F; the sizes the loads
        // and stores reach are asserted above (see `blocks_avx512`).
        unsafe { blocks_avx512(x, p, c_in, wbs, stage) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (x, p, c_in, wbs, stage);
        unreachable!("direct 3×3: the AVX-512 block runs only on x86-64");
    }
}

/// Why a second kernel: on CPUs with two 512-bit FMA ports (Intel Xeon) the AVX2 block uses half of
/// them; this one keeps 8 output channels × 32 positions in sixteen 512-bit registers, so each tap
/// costs two input loads and eight weight broadcasts for sixteen FMAs, and each pass over the
/// padded input serves 8 output channels instead of 4. The last 16 positions of a plane (where
/// [`Padded::positions`] is an odd number of 16-blocks) run with one vector.
///
/// # Safety
/// The CPU must have AVX-512F. Reads `x[ci·plane + q + off + 0..16·V]` for every input channel,
/// block start `q` (`q + 16·V ≤ positions`) and tap offset (at most `(c_in − 1)·plane + positions
/// − 1 + 2·pw + 2 < buffer_len`); reads `wbs[b][..c_in·9·CO_BLOCK]`; writes
/// `stage[..NB·CO_BLOCK·positions]`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn blocks_avx512<const NB: usize>(
    x: &[f32],
    p: Padded,
    c_in: usize,
    wbs: [&[f32]; NB],
    stage: &mut [f32],
) {
    let positions = p.positions();
    let mut q = 0;
    while q + 32 <= positions {
        positions_avx512::<NB, 2>(x, p, c_in, wbs, stage, q);
        q += 32;
    }
    if q < positions {
        positions_avx512::<NB, 1>(x, p, c_in, wbs, stage, q);
    }
}

/// `NB` · [`CO_BLOCK`] output channels at the `16·V` positions from `q` (see [`blocks_avx512`]).
///
/// # Safety
/// As [`blocks_avx512`], for this `q`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn positions_avx512<const NB: usize, const V: usize>(
    x: &[f32],
    p: Padded,
    c_in: usize,
    wbs: [&[f32]; NB],
    stage: &mut [f32],
    q: usize,
) {
    use std::arch::x86_64::*;
    let (plane, positions) = (p.plane(), p.positions());
    let offs = taps(p.pw());
    let (xp, sp) = (x.as_ptr(), stage.as_mut_ptr());
    let wps: [*const f32; NB] = std::array::from_fn(|b| wbs[b].as_ptr());
    let mut acc = [[[_mm512_setzero_ps(); V]; CO_BLOCK]; NB];
    for ci in 0..c_in {
        let xb = xp.add(ci * plane + q);
        for (t, &off) in offs.iter().enumerate() {
            let s = xb.add(off);
            let v: [__m512; V] = std::array::from_fn(|k| _mm512_loadu_ps(s.add(16 * k)));
            for (acc_b, &wp) in acc.iter_mut().zip(&wps) {
                let wc = wp.add((ci * 9 + t) * CO_BLOCK);
                for (c, acc_c) in acc_b.iter_mut().enumerate() {
                    let wv = _mm512_set1_ps(*wc.add(c));
                    for k in 0..V {
                        acc_c[k] = _mm512_fmadd_ps(wv, v[k], acc_c[k]);
                    }
                }
            }
        }
    }
    for (b, acc_b) in acc.iter().enumerate() {
        for (c, acc_c) in acc_b.iter().enumerate() {
            for (k, &sum) in acc_c.iter().enumerate() {
                _mm512_storeu_ps(sp.add((b * CO_BLOCK + c) * positions + q + 16 * k), sum);
            }
        }
    }
}

/// One block of output channels over every position, into `stage` ([`CO_BLOCK`] planes of
/// [`Padded::positions`]).
fn block(x: &[f32], p: Padded, c_in: usize, wb: &[f32], stage: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if super::simd::has_avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA; `conv_planes` checked the buffer sizes the loads and
        // stores reach (see `block_avx2`).
        unsafe { block_avx2(x, p, c_in, wb, stage) };
        return;
    }
    block_portable(x, p, c_in, wb, stage)
}

/// The tap offsets of a 3×3 window in a padded plane.
fn taps(pw: usize) -> [usize; 9] {
    [0, 1, 2, pw, pw + 1, pw + 2, 2 * pw, 2 * pw + 1, 2 * pw + 2]
}

/// [`block`] for AVX2 + FMA: 4 channels × 3 vectors of 8 positions in twelve registers.
///
/// # Safety
/// The CPU must have AVX2 and FMA. Reads `x[ci·plane + q + off + 0..8]` for every input channel,
/// block start `q < positions`, tap offset and vector (at most `(c_in − 1)·plane + positions − 1 +
/// 2·pw + 2 < buffer_len`); writes `stage[c·positions + q..][..24]`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn block_avx2(x: &[f32], p: Padded, c_in: usize, wb: &[f32], stage: &mut [f32]) {
    use std::arch::x86_64::*;
    let (plane, positions) = (p.plane(), p.positions());
    let offs = taps(p.pw());
    let (xp, wp, sp) = (x.as_ptr(), wb.as_ptr(), stage.as_mut_ptr());
    for q in (0..positions).step_by(PX_BLOCK) {
        let mut acc = [_mm256_setzero_ps(); CO_BLOCK * VECS];
        for ci in 0..c_in {
            let xb = xp.add(ci * plane + q);
            let wc = wp.add(ci * 9 * CO_BLOCK);
            for (t, &off) in offs.iter().enumerate() {
                let s = xb.add(off);
                let v: [__m256; VECS] = std::array::from_fn(|k| _mm256_loadu_ps(s.add(8 * k)));
                for c in 0..CO_BLOCK {
                    let wv = _mm256_broadcast_ss(&*wc.add(t * CO_BLOCK + c));
                    for k in 0..VECS {
                        acc[c * VECS + k] = _mm256_fmadd_ps(wv, v[k], acc[c * VECS + k]);
                    }
                }
            }
        }
        for c in 0..CO_BLOCK {
            for k in 0..VECS {
                _mm256_storeu_ps(sp.add(c * positions + q + 8 * k), acc[c * VECS + k]);
            }
        }
    }
}

/// [`block`] without SIMD intrinsics: the same loop over `[f32; 24]` accumulators.
fn block_portable(x: &[f32], p: Padded, c_in: usize, wb: &[f32], stage: &mut [f32]) {
    let (plane, positions) = (p.plane(), p.positions());
    let offs = taps(p.pw());
    for q in (0..positions).step_by(PX_BLOCK) {
        let mut acc = [[0.0f32; PX_BLOCK]; CO_BLOCK];
        for ci in 0..c_in {
            let xb = &x[ci * plane + q..];
            let wc = &wb[ci * 9 * CO_BLOCK..][..9 * CO_BLOCK];
            for (t, &off) in offs.iter().enumerate() {
                let v = &xb[off..][..PX_BLOCK];
                for (c, a) in acc.iter_mut().enumerate() {
                    let wv = wc[t * CO_BLOCK + c];
                    for (a, &v) in a.iter_mut().zip(v) {
                        *a += wv * v;
                    }
                }
            }
        }
        for (c, a) in acc.iter().enumerate() {
            stage[c * positions + q..][..PX_BLOCK].copy_from_slice(a);
        }
    }
}

/// `y = conv3x3(map(x), w)` (stride 1, padding 1) of `x` `[n, c_in, h, w]` NCHW, `w` packed
/// ([`Packed`]), then `post(channel, row)` on each output row; images run in parallel.
pub fn forward(
    (n, h, w): (usize, usize, usize),
    x: &[f32],
    wt: &Packed,
    pro: Option<Prologue<'_, f32>>,
    post: Option<super::epilogue::RowMap<'_, f32>>,
) -> Vec<f32> {
    // Every output row is written by `forward_into`.
    let mut y = output_vec(n * wt.c_out * h * w);
    forward_into((n, h, w), x, wt, pro, post, &mut y);
    y
}

/// The one-path convolution of geometry `g` (one that [`prefers_single`]) with its
/// `[c_out, c_in, 3, 3]` weight `w`, `post` on each output row, into `y` (every value written).
pub fn single_into(
    g: &ConvGeometry,
    x: &[f32],
    w: &[f32],
    post: Option<super::epilogue::RowMap<'_, f32>>,
    y: &mut [f32],
) {
    let packed = Packed::from_oihw(w, g.c_out, g.c_in);
    forward_into((g.n, g.h, g.w), x, &packed, None, post, y)
}

/// [`forward`] into `y` (`[n, c_out, h, w]`, every value written).
pub fn forward_into(
    (n, h, w): (usize, usize, usize),
    x: &[f32],
    wt: &Packed,
    pro: Option<Prologue<'_, f32>>,
    post: Option<super::epilogue::RowMap<'_, f32>>,
    y: &mut [f32],
) {
    let p = Padded { h, w };
    let (img_in, img_out) = (wt.c_in * h * w, wt.c_out * h * w);
    assert!(
        x.len() >= n * img_in && y.len() == n * img_out,
        "direct 3×3: input or output size"
    );
    y.par_chunks_mut(img_out.max(1))
        .enumerate()
        .for_each(|(i, out)| {
            with_scratch(|s: &mut Scratch<f32>| {
                let [padded, stage] =
                    s.many([p.buffer_len(wt.c_in), STAGE_CHANNELS * p.positions()]);
                pad_planes(&x[i * img_in..][..img_in], wt.c_in, p, pro, padded);
                conv_planes(padded, p, wt, stage, |co, yy, row| {
                    let o = &mut out[(co * h + yy) * w..][..w];
                    o.copy_from_slice(row);
                    if let Some(post) = post {
                        post(co, o);
                    }
                });
            })
        });
}

/// The three packed weights of a four-path octave layer ([`octave_forward`]).
#[derive(Clone, Debug)]
pub struct OctavePacked {
    hh: Packed,
    lh: Packed,
    /// `[W_HL | W_LL]` along the input channels: the low output reads `[pool(X_H); X_L]`.
    low: Packed,
}

impl OctavePacked {
    /// Bytes the packed weights take.
    pub fn bytes(&self) -> usize {
        [&self.hh, &self.lh, &self.low]
            .iter()
            .map(|p| p.data.len())
            .sum::<usize>()
            * std::mem::size_of::<f32>()
    }

    /// Packs the four `[c_out, c_in, 3, 3]` weights of `g`.
    pub fn new(g: &OctaveGeometry, w: OctaveWeights<'_, f32>) -> Self {
        let c_low = g.in_h + g.in_l;
        OctavePacked {
            hh: Packed::from_oihw(w.hh, g.out_h, g.in_h),
            lh: Packed::from_oihw(w.lh, g.out_h, g.in_l),
            low: Packed::new(g.out_l, c_low, |co, ci| match ci < g.in_h {
                true => &w.hl[(co * g.in_h + ci) * 9..][..9],
                false => &w.ll[(co * g.in_l + ci - g.in_h) * 9..][..9],
            }),
        }
    }
}

/// Whether inference runs a four-path 3×3 octave layer directly ([`octave_forward`]) rather than by
/// the fused Winograd kernel: where every path has at most [`DIRECT_MAX_CHANNELS`] channels in and
/// out and the low branch's map is at least [`DIRECT_MIN_LOW_SIDE`] on each side, and, on CPUs with
/// AVX-512, the input or the output branches have at most [`DIRECT_MAX_SIDE_AVX512`] channels each
/// and the input or the output high branch at most [`DIRECT_MAX_HIGH_AVX512`] (on maps up to
/// [`DIRECT_LARGE_MAP_AVX512`] pixels). Where the AVX-512 is full-width (Intel), the high-branch
/// bound does not apply and [`DIRECT_MAX_CHANNELS_FULL_WIDTH`] and
/// [`DIRECT_MIN_LOW_SIDE_FULL_WIDTH`] replace the channel and map bounds.
/// `OCTCONV_OCTAVE=direct` or `=winograd` forces the choice (for measurements).
///
/// Measured per layer with `octconv bench … --profile` (AMD EPYC, AVX2, 2 threads, batch 32; direct
/// against Winograd, useful MACs per second): 16 + 16 channels at 32×32 45 against 31 GMAC/s, 32 + 32
/// at 32×32 69–75 against 47–51, 64 + 64 at 16×16 70–75 against 65; but 128 + 128 at 8×8 51–56
/// against 58–60, and 64 + 192 at 8×8 (4×4 low maps, where a block of 16 positions holds 4×4
/// outputs in 24 computed ones) 26 against 52.
///
/// Where the CPU has AVX-512 the GEMMs of the Winograd kernel run on 16-lane vectors and win more
/// often, so the direct kernel also requires the input branches or the output branches to have at
/// most [`DIRECT_MAX_SIDE_AVX512`] channels each (AMD EPYC Zen 4, AVX-512, 2 threads, the same
/// measurement, milliseconds per layer direct against Winograd). It wins at U-Net's 16 + 16 channels
/// at 128×128 (3.6–3.8 against 5.4–6.1), the seed WRN's 16 + 16 at 32×32 (1.7–1.9 against 2.1–2.5)
/// and 8 + 24 (1.1–1.3 against 1.5–2.3), and DenseNet-121's 64 + 64 → 16 + 16 growth layers at α =
/// .5 (their class 62–73 against 72–99 ms per pass), where few outputs share each Winograd input
/// transform; it loses at 32 + 32 (U-Net at 64×64: 3.2–3.4 against 2.5–2.7) and where 48-channel
/// branches go in and out (WRN-16-4's 64-channel layers at 32×32: α = .75, 16 + 48, 4.3–4.5 against
/// 3.7–4.0; α = .25, 48 + 16, 9.5–9.7 against 6.8–7.2).
pub fn prefers(g: &OctaveGeometry) -> bool {
    let largest = [g.in_h, g.in_l, g.out_h, g.out_l]
        .into_iter()
        .max()
        .unwrap_or(0);
    let (lh, lw) = g.low_hw();
    let narrow_side = g.in_h.max(g.in_l).min(g.out_h.max(g.out_l));
    let wide_gemm = super::simd::has_avx512f();
    let full_width = super::simd::full_width_avx512();
    let narrow_high = g.in_h.min(g.out_h);
    let min_low_side = if full_width {
        DIRECT_MIN_LOW_SIDE_FULL_WIDTH
    } else {
        DIRECT_MIN_LOW_SIDE
    };
    let max_channels = if full_width {
        DIRECT_MAX_CHANNELS_FULL_WIDTH
    } else {
        DIRECT_MAX_CHANNELS
    };
    forced().unwrap_or(
        largest <= max_channels
            && (!wide_gemm
                || (narrow_side <= DIRECT_MAX_SIDE_AVX512
                    && (full_width
                        || narrow_high <= DIRECT_MAX_HIGH_AVX512
                        || g.h * g.w > DIRECT_LARGE_MAP_AVX512)))
            && lh.min(lw) >= min_low_side,
    )
}

/// On CPUs with full-width AVX-512 ([`super::simd::full_width_avx512`]: Intel Xeon), the smallest
/// side of the low branch's map at which [`prefers`] picks the direct kernel, which there also
/// needs no narrow high branch ([`DIRECT_MAX_HIGH_AVX512`] does not apply): its 512-bit kernel
/// does twice the AVX2 kernel's work per cycle, the Winograd kernel's transforms do not. Measured
/// (Intel Xeon, AVX-512, 2 threads, `octconv bench … --profile` with `OCTCONV_OCTAVE=direct` and
/// `=winograd` alternating, fastest of two, ms per layer direct against Winograd): DenseNet-121 at
/// α = .5, all 42 growth layers (64 + 64 → 16 + 16 at 56², 28² and 14², the last with 7×7 low
/// maps) 49.1 against 62.5 in sum, every one faster direct; the seed WRN's 16 + 16 at 32×32 (α =
/// .5) 1.50 / 1.30 against 1.80 / 1.59 and 24 + 8 (α = .25) 2.16 / 1.97 against 2.33 / 2.17,
/// while its 32 + 32 layers at 16×16 stay faster by Winograd (1.37 against 1.26; the narrower
/// side has 32 channels).
pub const DIRECT_MIN_LOW_SIDE_FULL_WIDTH: usize = 7;

/// On CPUs with full-width AVX-512, the most channels of any path at which [`prefers`] picks the
/// direct kernel (the narrower side still at most [`DIRECT_MAX_SIDE_AVX512`] per branch): with 24
/// or 8 output channels per branch the Winograd GEMMs are that shallow whatever the input.
/// Measured as for [`DIRECT_MIN_LOW_SIDE_FULL_WIDTH`]: DenseNet-121's 42 growth layers (128 → 32
/// channels at 56², 28², 14²) at α = .25 (96 + 32 → 24 + 8) 62.2 against 80.6 ms in sum and at α
/// = .75 (32 + 96 → 8 + 24) 30.7 against 45.0, every one faster direct.
pub const DIRECT_MAX_CHANNELS_FULL_WIDTH: usize = 128;

/// On CPUs with AVX-512, the most channels of the narrower high branch (input or output) at which
/// [`prefers`] picks the direct kernel: once the Winograd transforms ran by rows in registers
/// ([`super::winograd_input`], [`super::winograd_output`]), the fused Winograd kernel won where a
/// 24-channel high branch goes in and out (AMD EPYC Zen 4, 2 threads, ms per layer, direct against
/// Winograd: the seed WRN at α = .25, 24 + 8 channels at 32×32, 2.4–3.4 against 2.0–2.2; U-Net at
/// α = .25, 48 + 16 → 24 + 8 at 128×128, 17.5–17.7 against 13.5–13.6), while the direct kernel
/// still won with 8 high channels (the seed at α = .75, 8 + 24: 1.2–1.5 against 1.3–1.8) and at
/// U-Net's 16 + 16 at 128×128 (4.8–5.4 against 5.9–6.2). Lowered from 16 to 8 after the seed's 16 +
/// 16 layers at 32×32 (α = .5) ran 1.5–1.55 ms by Winograd against 1.9–2.2 direct: whole pass (ms,
/// old and new binary alternating, `octconv bench … --samples 128 --repeats 3`) seed α = .5 10.4–11.5
/// against 11.5–12.1, DenseNet-121 α = .5 (its 64 + 64 → 16 + 16 growth layers at 56² and 28² move
/// too) 152.9–173.9 against 160.3–188.3 (the machine's noise is bimodal; lower halves compared).
pub const DIRECT_MAX_HIGH_AVX512: usize = 8;

/// On CPUs with AVX-512, the high map size (pixels) above which [`DIRECT_MAX_HIGH_AVX512`] does
/// not apply (the direct kernel stays where the narrower side has at most
/// [`DIRECT_MAX_SIDE_AVX512`] channels): at 128×128 the fused Winograd kernel's per-image buffers
/// raised U-Net's α = .25 peak memory from 43.0 to 57.3 MiB (scratch 14.3 → 28.7 MiB, batch 4),
/// which misses the memory target, for about 4 ms per pass.
pub const DIRECT_LARGE_MAP_AVX512: usize = 64 * 64;

/// On CPUs with AVX-512, the most channels per branch of the narrower side (inputs or outputs) at
/// which [`prefers`] picks the direct kernel.
pub const DIRECT_MAX_SIDE_AVX512: usize = 24;

/// Whether an f32 one-path convolution runs by [`forward`] rather than by Winograd (its forward, in
/// inference and training alike: [`super::conv2d::dispatch_forward`], and with an output map
/// [`super::conv2d::infer_post`] where the AVX-512 stem kernel does not take it first,
/// [`super::stem::applies`]): 3×3, stride 1, padding 1, one group, at most
/// [`DIRECT_MAX_SINGLE_IN`] input channels and a map of at least 8×8 — the stems, whose Winograd
/// GEMMs are 3 deep (MobileNet v2's 3 → 32 stem at 112×112 ran at 14–20 GMAC/s, the seed WRN's
/// 3 → 32 stem at 32×32 at 13). `OCTCONV_OCTAVE=winograd` turns it off.
pub fn prefers_single(g: &ConvGeometry) -> bool {
    forced() != Some(false)
        && super::winograd::applies(g)
        && g.c_in <= DIRECT_MAX_SINGLE_IN
        && g.h.min(g.w) >= 8
}

/// The most input channels at which [`prefers_single`] picks the direct kernel.
pub const DIRECT_MAX_SINGLE_IN: usize = 4;

/// `OCTCONV_OCTAVE=direct` (`Some(true)`) or `=winograd` (`Some(false)`), read once.
fn forced() -> Option<bool> {
    static FORCED: std::sync::OnceLock<Option<bool>> = std::sync::OnceLock::new();
    *FORCED.get_or_init(|| match std::env::var("OCTCONV_OCTAVE").as_deref() {
        Ok("direct") => Some(true),
        Ok("winograd") => Some(false),
        _ => None,
    })
}

/// The most channels of any path at which [`prefers`] picks the direct kernel (but see
/// [`DIRECT_MAX_CHANNELS_FULL_WIDTH`]).
pub const DIRECT_MAX_CHANNELS: usize = 64;
/// The smallest side of the low branch's map at which [`prefers`] picks the direct kernel.
pub const DIRECT_MIN_LOW_SIDE: usize = 8;

/// The four-path octave convolution (3×3, stride 1, padding 1) of `xh` `[n, in_h, h, w]` and `xl`
/// `[n, in_l, h/2, w/2]`, each input mapped by its prologue as it is read: per image, the high input
/// is padded once, `[pool(X_H); X_L]` is padded once at the low resolution and read by the low
/// output (one convolution over both) and by L→H, whose output goes to scratch and is added,
/// upsampled ×2, to each H→H row as it is written. Returns `(Y_H, Y_L)`.
pub fn octave_forward(
    g: &OctaveGeometry,
    xh: &[f32],
    xl: &[f32],
    wt: &OctavePacked,
    [pro_h, pro_l]: [Option<Prologue<'_, f32>>; 2],
) -> (Vec<f32>, Vec<f32>) {
    assert!(g.applies(), "direct octave 3×3: geometry");
    let (lhh, lww) = g.low_hw();
    let (ph, pl) = (Padded { h: g.h, w: g.w }, Padded { h: lhh, w: lww });
    let (in_img_h, in_img_l) = (g.in_h * g.h * g.w, g.in_l * lhh * lww);
    let (img_h, img_l) = (g.out_h * g.h * g.w, g.out_l * lhh * lww);
    assert!(
        xh.len() >= g.n * in_img_h && xl.len() >= g.n * in_img_l,
        "direct octave 3×3: input sizes"
    );
    // Every element of both outputs is written by the `emit` calls below.
    let (mut y_h, mut y_l) = (output_vec(g.n * img_h), output_vec(g.n * img_l));
    let c_low = g.in_h + g.in_l;
    y_h.par_chunks_mut(img_h)
        .zip(y_l.par_chunks_mut(img_l))
        .enumerate()
        .for_each(|(i, (out_h, out_l))| {
            with_scratch(|s: &mut Scratch<f32>| {
                let [pad_h, pad_l, stage, lh, tmp] = s.many([
                    ph.buffer_len(g.in_h),
                    pl.buffer_len(c_low),
                    STAGE_CHANNELS * ph.positions().max(pl.positions()),
                    g.out_h * lhh * lww,
                    lhh * lww,
                ]);
                let xh = &xh[i * in_img_h..][..in_img_h];
                pad_planes(xh, g.in_h, ph, pro_h, pad_h);
                pool_pad_planes(xh, g.in_h, pl, pro_h, tmp, pad_l);
                let xl = &xl[i * in_img_l..][..in_img_l];
                pad_planes(xl, g.in_l, pl, pro_l, &mut pad_l[g.in_h * pl.plane()..]);
                // Low output: [W_HL | W_LL] · [pool(X_H); X_L].
                conv_planes(pad_l, pl, &wt.low, stage, |co, y, row| {
                    out_l[(co * lhh + y) * lww..][..lww].copy_from_slice(row)
                });
                // L→H at the low resolution, into scratch.
                let pad_xl = &pad_l[g.in_h * pl.plane()..];
                conv_planes(pad_xl, pl, &wt.lh, stage, |co, y, row| {
                    lh[(co * lhh + y) * lww..][..lww].copy_from_slice(row)
                });
                // H→H, with L→H added (nearest ×2) as each row is written.
                conv_planes(pad_h, ph, &wt.hh, stage, |co, y, row| {
                    let up = &lh[(co * lhh + y / 2) * lww..][..lww];
                    let o = &mut out_h[(co * g.h + y) * g.w..][..g.w];
                    add_upsampled_row(o, row, up);
                });
            })
        });
    (y_h, y_l)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The portable block (the path of CPUs without AVX2 + FMA) computes what the AVX2 block does,
    /// to rounding (FMA against separate multiply and add), on a map whose blocks span rows.
    #[test]
    fn portable_block_equals_the_avx2_block_to_rounding() {
        let p = Padded { h: 5, w: 3 };
        let c_in = 7;
        let x: Vec<f32> = (0..p.buffer_len(c_in))
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect();
        let wb: Vec<f32> = (0..c_in * 9 * CO_BLOCK)
            .map(|i| ((i * 53 % 97) as f32 - 48.0) / 40.0)
            .collect();
        let mut want = vec![0.0; CO_BLOCK * p.positions()];
        block_portable(&x, p, c_in, &wb, &mut want);
        let mut got = vec![0.0; CO_BLOCK * p.positions()];
        block(&x, p, c_in, &wb, &mut got);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-5 * w.abs().max(1.0), "{g} vs {w}");
        }
        // And the portable block against a sum written out for one output.
        let (c, q) = (2, p.pw() + 1);
        let direct: f32 = (0..c_in)
            .flat_map(|ci| (0..9).map(move |t| (ci, t)))
            .map(|(ci, t)| {
                wb[(ci * 9 + t) * CO_BLOCK + c] * x[ci * p.plane() + q + taps(p.pw())[t]]
            })
            .sum();
        assert!((want[c * p.positions() + q] - direct).abs() < 1e-4);
    }

    /// The AVX-512 kernel (two weight blocks at once, or one for an odd last block; 32 positions a
    /// step with a 16-position tail) gives the AVX2 block's values bit for bit, plane by plane:
    /// both sum each output's products in the same order with one FMA each. Maps: 5×3 (48
    /// positions: one step and a tail), 6×6 (64: two steps, no tail), 2×2 (16: the tail only).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_blocks_equal_the_avx2_block_bit_for_bit() {
        if !(crate::kernels::simd::has_avx512f() && crate::kernels::simd::has_avx2_fma()) {
            eprintln!("skipped: this CPU lacks AVX-512F or AVX2 + FMA");
            return;
        }
        for (p, c_in) in [
            (Padded { h: 5, w: 3 }, 7),
            (Padded { h: 6, w: 6 }, 3),
            (Padded { h: 2, w: 2 }, 1),
        ] {
            let x: Vec<f32> = (0..p.buffer_len(c_in))
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
                .collect();
            let wbs: [Vec<f32>; 2] = std::array::from_fn(|b| {
                (0..c_in * 9 * CO_BLOCK)
                    .map(|i| (((i + 11 * b) * 53 % 97) as f32 - 48.0) / 40.0)
                    .collect()
            });
            let n = CO_BLOCK * p.positions();
            let mut want = vec![0.0; 2 * n];
            for (b, wb) in wbs.iter().enumerate() {
                unsafe { block_avx2(&x, p, c_in, wb, &mut want[b * n..][..n]) };
            }
            let mut pair = vec![f32::NAN; 2 * n];
            blocks_wide(&x, p, c_in, [&wbs[0][..], &wbs[1][..]], &mut pair);
            assert_eq!(bits(&pair), bits(&want), "{p:?}: two blocks");
            let mut one = vec![f32::NAN; n];
            blocks_wide(&x, p, c_in, [&wbs[1][..]], &mut one);
            assert_eq!(bits(&one), bits(&want[n..]), "{p:?}: one block");
        }
    }

    #[cfg(target_arch = "x86_64")]
    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }
}
