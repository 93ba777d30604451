//! The forward pass of a grouped 3×3 convolution with many channels per group (ResNeXt-50's 16 and
//! 32) as a direct kernel that runs along the output channels: f32, AVX2 + FMA.
//!
//! Why: [`super::grouped`]'s kernel runs along output positions, which suits few channels and large
//! maps; at 7×7 its rows of positions are padded to 64 lanes for 49 pixels. The group's GEMM of
//! im2col is `32 × 288` by `288 × 49·images`, too small for the GEMM library: ResNeXt-50's 7×7
//! layers (32 groups of 32 channels, batch 8) ran at 37 GMAC/s by im2col, 24 by the position kernel,
//! against 108 in ONNX Runtime (its NCHWc direct kernel keeps 16 output channels in a register).
//!
//! Here a register block is up to [`R`] pixels of one output row by 16 output channels (two 8-lane
//! vectors): for every input channel and tap, the weights of the 16 channels are loaded once and
//! each pixel's input value is broadcast against them. The input is [`super::grouped`]'s zero-padded
//! flat layout (phase planes for stride 2), so every tap is a fixed offset from the pixel's position.
//! The sums go to a stage laid out pixel-major, then into the output planes channel by channel.

use super::geometry::ConvGeometry;
use rayon::prelude::*;

/// Pixels of one output row in a register block (two 8-lane vectors each: 12 sums, 2 weight
/// vectors and a broadcast in AVX2's 16 registers).
pub const R: usize = 6;

/// Lanes of one weight vector: the block of output channels is a multiple of it.
pub const LANES: usize = 8;

/// Whether this kernel runs `g` (f32 data): a grouped 3×3 convolution (padding 1, stride 1 or 2)
/// with a multiple of [`LANES`] output channels per group and at least 16 input channels per group,
/// or at least 8 on output maps of at most 64 pixels; and a CPU with AVX2 and FMA.
///
/// Measured on ResNeXt-50 32×4d's grouped layers at batch 8 (AMD EPYC, AVX-512, 2 threads, ms by
/// this kernel against the one [`super::conv2d::algorithm`] took before): 32 channels per group
/// at 7×7 1.50 against 3.05 (im2col; ONNX Runtime 1.06), at 14×14 stride 2 1.93 against 3.14; 16
/// per group at 14×14 1.35 against 2.05 (the position kernel; ONNX Runtime 1.19), at 28×28
/// stride 2 1.89 against 2.80; 8 per group at 7×7 0.45 against 0.80, at 14×14 0.56 against 0.59,
/// but at 28×28 2.82 against 1.93 and at 56×56 stride 2 4.43 against 3.52 (with 8 output channels
/// a block holds 6 sums, and the position kernel's long rows win).
pub fn applies(g: &ConvGeometry) -> bool {
    let (cin_g, small) = (g.cin_g(), g.out_pixels() <= 64);
    g.groups > 1
        && (cin_g >= 16 || (cin_g >= 8 && small))
        && g.cout_g().is_multiple_of(LANES)
        && (g.kh, g.kw, g.pad) == (3, 3, 1)
        && matches!(g.stride, 1 | 2)
        && avx2()
}

/// Output channels per weight vector for a group of `cout_g` output channels: 16 (one AVX-512
/// register) where the CPU has AVX-512F and `cout_g` is a multiple of 16, else [`LANES`] (AVX2).
/// [`pack`] and [`channels`] agree through it.
///
/// Why: on an Intel Xeon (AVX-512, 2 threads) the AVX2 kernel ran ResNeXt-50's grouped layers at
/// 7×7 and 14×14 (batch 8) in 2.2–2.4 ms each against 1.2–1.3 ms for ONNX Runtime's NCHWc kernel.
pub fn lanes(cout_g: usize) -> usize {
    if super::simd::has_avx512f() && cout_g.is_multiple_of(2 * LANES) {
        2 * LANES
    } else {
        LANES
    }
}

fn avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        super::simd::has_avx2_fma()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The weights of every group packed for [`channels`]: per group, blocks of [`lanes`] output
/// channels, each `[ci][tap][lane]`. Groups are packed in parallel (ResNeXt-50's 7×7 layer has
/// 1.2 MB of weights; packed on one thread it was 15 % of the layer's cycles).
pub fn pack(g: &ConvGeometry, w: &[f32]) -> Vec<f32> {
    let (cin_g, cout_g) = (g.cin_g(), g.cout_g());
    let per_group = cout_g * cin_g * 9;
    // Every value is written below.
    let mut wp = super::scratch::output_vec(g.groups * per_group);
    if per_group == 0 {
        return wp;
    }
    let lanes = lanes(cout_g);
    wp.par_chunks_mut(per_group)
        .enumerate()
        .for_each(|(grp, wg)| {
            let mut to = wg.iter_mut();
            for b in (0..cout_g).step_by(lanes) {
                for ci in 0..cin_g {
                    for t in 0..9 {
                        for l in 0..lanes {
                            let co = grp * cout_g + b + l;
                            if let Some(v) = to.next() {
                                *v = w[(co * cin_g + ci) * 9 + t];
                            }
                        }
                    }
                }
            }
        });
    wp
}

/// One (image, group): `stage[pixel][co] = Σ_ci Σ_t wp[co][ci][t] · src[ci·len + pos(pixel) +
/// taps[t]]` for the group's `cout_g` output channels, where `pos(oy, ox) = oy·qw + ox`; `wp` is the
/// group's part of [`pack`], `stage` `oh·ow × cout_g`.
///
/// # Panics
/// If the CPU lacks AVX2 and FMA ([`applies`] checks), or if a buffer is too short.
#[allow(clippy::too_many_arguments)]
pub fn channels(
    src: &[f32],
    len: usize,
    taps: &[usize; 9],
    (oh, ow, qw): (usize, usize, usize),
    cin_g: usize,
    wp: &[f32],
    stage: &mut [f32],
) {
    let cout_g = wp.len() / (cin_g * 9).max(1);
    assert!(avx2(), "grouped_channels: needs AVX2 and FMA");
    assert!(
        stage.len() >= oh * ow * cout_g && cout_g.is_multiple_of(LANES),
        "grouped_channels: stage or weights"
    );
    let last = taps.iter().max().copied().unwrap_or(0) + (oh.max(1) - 1) * qw + ow;
    assert!(
        ow <= qw && (cin_g == 0 || src.len() >= (cin_g - 1) * len + last),
        "grouped_channels: input layout"
    );
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX2 and FMA are present (asserted), AVX-512F where `lanes` says 16 (the blocks
    // `pick_avx512` returns); the bounds are those asserted above.
    unsafe {
        // The block shapes of the vector width `lanes` chose (and `pack` laid out).
        let isa: (usize, usize, fn(bool, usize) -> Block) = match lanes(cout_g) {
            LANES => (LANES, R, pick_avx2),
            _ => (2 * LANES, 7, pick_avx512),
        };
        blocks(src, len, taps, (oh, ow, qw), cin_g, wp, stage, isa)
    }
}

/// One register block: `P` pixels × one or two weight vectors, as [`pick_avx2`] and
/// [`pick_avx512`] return it for a block's width (`wide`: two vectors) and pixel count.
#[cfg(target_arch = "x86_64")]
type Block = unsafe fn(BlockArgs<'_>);

/// The loops of [`channels`] around its register blocks, for weight vectors of `l` lanes (the
/// layout [`pack`] writes): per block of one or two vectors of output channels, each output row in
/// blocks of as equal sizes as allow at most `pmax` pixels (7 → 4 + 3, not 6 + 1: a single pixel's
/// one chain of sums waits on each FMA's latency), each block by `pick(wide, pixels)`.
///
/// # Safety
/// The CPU runs the blocks `pick` returns; the buffers are as [`channels`] asserts.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn blocks(
    src: &[f32],
    len: usize,
    taps: &[usize; 9],
    (oh, ow, qw): (usize, usize, usize),
    cin_g: usize,
    wp: &[f32],
    stage: &mut [f32],
    (l, pmax, pick): (usize, usize, fn(bool, usize) -> Block),
) {
    let cout_g = wp.len() / (cin_g * 9).max(1);
    let block = cin_g * 9 * l;
    let row_blocks = ow.div_ceil(pmax);
    let mut b = 0;
    while b < cout_g {
        let wide = cout_g - b >= 2 * l;
        let w = wp[(b / l) * block..].as_ptr();
        for oy in 0..oh {
            for k in 0..row_blocks {
                let (x0, x1) = (k * ow / row_blocks, (k + 1) * ow / row_blocks);
                let s = src.as_ptr().add(oy * qw + x0);
                let o = stage.as_mut_ptr().add((oy * ow + x0) * cout_g + b);
                pick(wide, x1 - x0)((s, len, taps, cin_g, w, block, o, cout_g));
            }
        }
        b += if wide { 2 * l } else { l };
    }
}

/// The AVX2 block of `p` pixels (at most [`R`]) × two 8-lane vectors (`wide`) or one.
#[cfg(target_arch = "x86_64")]
fn pick_avx2(wide: bool, p: usize) -> Block {
    match (wide, p) {
        (true, 6) => block_avx2::<6, 2>,
        (true, 5) => block_avx2::<5, 2>,
        (true, 4) => block_avx2::<4, 2>,
        (true, 3) => block_avx2::<3, 2>,
        (true, 2) => block_avx2::<2, 2>,
        (true, _) => block_avx2::<1, 2>,
        (false, 6) => block_avx2::<6, 1>,
        (false, 5) => block_avx2::<5, 1>,
        (false, 4) => block_avx2::<4, 1>,
        (false, 3) => block_avx2::<3, 1>,
        (false, 2) => block_avx2::<2, 1>,
        (false, _) => block_avx2::<1, 1>,
    }
}

/// The AVX-512 block of `p` pixels (at most 7: rows of 7 and 14 at ResNeXt's 7×7 and 14×14
/// layers) × two 16-lane vectors (`wide`) or one.
#[cfg(target_arch = "x86_64")]
fn pick_avx512(wide: bool, p: usize) -> Block {
    match (wide, p) {
        (true, 7) => block_avx512::<7, 2>,
        (true, 6) => block_avx512::<6, 2>,
        (true, 5) => block_avx512::<5, 2>,
        (true, 4) => block_avx512::<4, 2>,
        (true, 3) => block_avx512::<3, 2>,
        (true, 2) => block_avx512::<2, 2>,
        (true, _) => block_avx512::<1, 2>,
        (false, 7) => block_avx512::<7, 1>,
        (false, 6) => block_avx512::<6, 1>,
        (false, 5) => block_avx512::<5, 1>,
        (false, 4) => block_avx512::<4, 1>,
        (false, 3) => block_avx512::<3, 1>,
        (false, 2) => block_avx512::<2, 1>,
        (false, _) => block_avx512::<1, 1>,
    }
}

/// [`block_avx2`] with 16-lane vectors: `P` consecutive pixels of a row × `V` vectors of 16 output
/// channels (the `V` weight vectors of one tap are `block` values apart).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn block_avx512<const P: usize, const V: usize>(
    (s, len, taps, cin_g, w, block, o, ld): BlockArgs<'_>,
) {
    use std::arch::x86_64::{
        _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_set1_ps, _mm512_setzero_ps, _mm512_storeu_ps,
    };
    const L: usize = 2 * LANES;
    let mut acc = [[_mm512_setzero_ps(); V]; P];
    for ci in 0..cin_g {
        let sc = s.add(ci * len);
        let wc = w.add(ci * 9 * L);
        for (t, &off) in taps.iter().enumerate() {
            let st = sc.add(off);
            let wv: [_; V] = std::array::from_fn(|v| _mm512_loadu_ps(wc.add(v * block + t * L)));
            for (p, a) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_ps(*st.add(p));
                for v in 0..V {
                    a[v] = _mm512_fmadd_ps(x, wv[v], a[v]);
                }
            }
        }
    }
    for (p, a) in acc.iter().enumerate() {
        for (v, &a) in a.iter().enumerate() {
            _mm512_storeu_ps(o.add(p * ld + v * L), a);
        }
    }
}

/// The arguments of [`block_avx2`]: the block's first input position, the channel length, the
/// taps, the input channels, the first weight block and the distance to the next, the first stage
/// value and the stage's pixel stride.
type BlockArgs<'a> = (
    *const f32,
    usize,
    &'a [usize; 9],
    usize,
    *const f32,
    usize,
    *mut f32,
    usize,
);

/// `P` consecutive pixels of a row × `V` vectors of 8 output channels, summed over every input
/// channel and tap in registers, then stored.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn block_avx2<const P: usize, const V: usize>(
    (s, len, taps, cin_g, w, block, o, ld): BlockArgs<'_>,
) {
    use std::arch::x86_64::{
        _mm256_broadcast_ss, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_setzero_ps, _mm256_storeu_ps,
    };
    let mut acc = [[_mm256_setzero_ps(); V]; P];
    for ci in 0..cin_g {
        let sc = s.add(ci * len);
        let wc = w.add(ci * 9 * LANES);
        for (t, &off) in taps.iter().enumerate() {
            let st = sc.add(off);
            let wv: [_; V] =
                std::array::from_fn(|v| _mm256_loadu_ps(wc.add(v * block + t * LANES)));
            for (p, a) in acc.iter_mut().enumerate() {
                let x = _mm256_broadcast_ss(&*st.add(p));
                for v in 0..V {
                    a[v] = _mm256_fmadd_ps(x, wv[v], a[v]);
                }
            }
        }
    }
    for (p, a) in acc.iter().enumerate() {
        for (v, &a) in a.iter().enumerate() {
            _mm256_storeu_ps(o.add(p * ld + v * LANES), a);
        }
    }
}
