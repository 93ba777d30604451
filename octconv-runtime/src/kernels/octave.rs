//! The whole octave convolution (all four paths, 3×3, stride 1) as one forward kernel, with a backward
//! per output branch.
//!
//! The per-op layer runs eight passes over memory besides its four convolutions: pool the high input,
//! concatenate it with the low input (and the weights), convolve L→H into its own tensor, read the
//! H→H output back to add the upsampled L→H output, and the autograd nodes of each. Here, per group of
//! images:
//!
//! 1. the high input is Winograd-transformed once (`V_h`; F(4×4, 3×3), or F(2×2, 3×3) on request);
//! 2. its 2×2 average pool goes to scratch and is transformed together with the low input into one
//!    low-resolution `V_l = [V(pool X_H); V(X_L)]`, read by both low-resolution products: the low
//!    output `U_[HL|LL] · V_l` (one deeper GEMM) and L→H `U_LH · V_l[X_L rows]`;
//! 3. L→H is output-transformed into scratch, and the H→H output transform adds it, upsampled ×2,
//!    to each row as it writes the high output: no separate upsample-add pass, no zero-filled output.
//!
//! The backward runs the same building blocks (Winograd input gradients and weight gradients per path)
//! on raw buffers, per output: two autograd nodes replace about ten.

use super::conv2d::{algorithm, Algorithm};
use super::conv2d::{dispatch_backward_data, dispatch_backward_filter};
use super::epilogue::RowMap;
use super::gemm::{gemm_parallelism, images_per_task};
use super::geometry::ConvGeometry;
use super::prologue::Prologue;
use super::resample::{pool, pool_plane, pool_plane_map};
use super::scratch::{output_vec, with_scratch, Scratch};
use super::tiling::{multiply, multiply_rows, Planes, Tiling, F2, F4};
use super::Element;
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

/// Channel counts and the high input's spatial size of an octave layer with all four paths; the low
/// input is `h / 2 × w / 2`. The fused 3×3 kernel here (stride 1, padding 1, one group), the 1×1
/// kernel ([`super::pointwise`], with a stride) and the kernel-2 transposed one
/// ([`super::transpose`]) share it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OctaveGeometry {
    /// Batch size.
    pub n: usize,
    /// High input channels.
    pub in_h: usize,
    /// Low input channels.
    pub in_l: usize,
    /// High output channels.
    pub out_h: usize,
    /// Low output channels.
    pub out_l: usize,
    /// High branch height (even).
    pub h: usize,
    /// High branch width (even).
    pub w: usize,
}

impl OctaveGeometry {
    /// Low branch height and width.
    pub fn low_hw(&self) -> (usize, usize) {
        (self.h / 2, self.w / 2)
    }

    /// Whether the fused kernel handles this layer: every channel count positive, an even size.
    pub fn applies(&self) -> bool {
        self.in_h > 0
            && self.in_l > 0
            && self.out_h > 0
            && self.out_l > 0
            && self.h >= 2
            && self.w >= 2
            && self.h.is_multiple_of(2)
            && self.w.is_multiple_of(2)
    }

    /// Whether inference should run the per-path convolutions instead: [`algorithm`] finds too few
    /// tiles in the batch for either Winograd variant (small maps of a small batch), where im2col
    /// per path beats the fused Winograd kernel (the U-Net of issue #23 at batch 4, 8×8 high maps,
    /// α = .25: 4.9 against 16 ms in one layer). Training keeps the fused kernel.
    pub fn prefers_per_path(&self) -> bool {
        algorithm(&self.hh()) == Algorithm::Im2col
    }

    /// One 3×3 "same" convolution of this layer: `c_in → c_out` at `(h, w)`.
    fn conv(&self, c_in: usize, c_out: usize, hw: (usize, usize)) -> ConvGeometry {
        ConvGeometry::same3x3(self.n, (c_in, c_out), hw, 1)
    }

    fn hh(&self) -> ConvGeometry {
        self.conv(self.in_h, self.out_h, (self.h, self.w))
    }
    fn hl(&self) -> ConvGeometry {
        self.conv(self.in_h, self.out_l, self.low_hw())
    }
    fn lh(&self) -> ConvGeometry {
        self.conv(self.in_l, self.out_h, self.low_hw())
    }
    fn ll(&self) -> ConvGeometry {
        self.conv(self.in_l, self.out_l, self.low_hw())
    }

    /// Elements of the flat weight vector: H→H, H→L, L→H, L→L, each `[cout, cin, 3, 3]`.
    pub fn weight_len(&self) -> usize {
        9 * (self.in_h + self.in_l) * (self.out_h + self.out_l)
    }

    /// Elements of the high output (the flat output's first part).
    pub fn high_out_len(&self) -> usize {
        self.n * self.out_h * self.h * self.w
    }

    /// Elements of the low output (the flat output's second part).
    pub fn low_out_len(&self) -> usize {
        let (lh, lw) = self.low_hw();
        self.n * self.out_l * lh * lw
    }

    /// The four weights' ranges in the flat weight vector.
    fn weight_ranges(&self) -> [std::ops::Range<usize>; 4] {
        let sizes = [
            self.out_h * self.in_h,
            self.out_l * self.in_h,
            self.out_h * self.in_l,
            self.out_l * self.in_l,
        ];
        let mut start = 0;
        sizes.map(|s| {
            let r = start..start + 9 * s;
            start = r.end;
            r
        })
    }
}

/// The four weights `[cout, cin, 3, 3]` of an octave layer as slices: from the flat vector
/// (H→H, H→L, L→H, L→L), or from the two branches' vectors `[H→H; L→H]` (into the high output) and
/// `[H→L; L→L]` (into the low one), as the training ops hold them.
#[derive(Clone, Copy, Debug)]
pub struct OctaveWeights<'a, T> {
    /// H→H.
    pub hh: &'a [T],
    /// H→L.
    pub hl: &'a [T],
    /// L→H.
    pub lh: &'a [T],
    /// L→L.
    pub ll: &'a [T],
}

impl<'a, T> OctaveWeights<'a, T> {
    /// The four parts of the flat vector of [`OctaveGeometry::weight_len`] values.
    pub fn from_flat(g: &OctaveGeometry, w: &'a [T]) -> Self {
        let [hh, hl, lh, ll] = g.weight_ranges();
        OctaveWeights {
            hh: &w[hh],
            hl: &w[hl],
            lh: &w[lh],
            ll: &w[ll],
        }
    }

    /// The parts of the branch vectors `high = [H→H; L→H]` and `low = [H→L; L→L]`.
    pub fn from_branches(g: &OctaveGeometry, high: &'a [T], low: &'a [T]) -> Self {
        let (hh, lh) = high.split_at(9 * g.out_h * g.in_h);
        let (hl, ll) = low.split_at(9 * g.out_l * g.in_h);
        OctaveWeights { hh, hl, lh, ll }
    }
}

/// `[W_HL | W_LL]` concatenated along the input channels: `[out_l, in_h + in_l, 3, 3]` (the
/// backward's low product; the forward transforms the two parts where they are).
fn low_weight<T: Element>(g: &OctaveGeometry, w_hl: &[T], w_ll: &[T]) -> Vec<T> {
    let mut w = Vec::with_capacity(9 * g.out_l * (g.in_h + g.in_l));
    for co in 0..g.out_l {
        w.extend_from_slice(&w_hl[co * g.in_h * 9..][..g.in_h * 9]);
        w.extend_from_slice(&w_ll[co * g.in_l * 9..][..g.in_l * 9]);
    }
    w
}

/// The fused forward pass on raw NCHW buffers: returns `(Y_H, Y_L)`, each in its own allocation. The
/// high branch runs the Winograd variant that [`algorithm`] picks for H→H, the low branch the one it
/// picks at the low resolution ([`forward_with`]).
pub fn forward<T: Element>(g: &OctaveGeometry, xh: &[T], xl: &[T], w: &[T]) -> (Vec<T>, Vec<T>) {
    forward_with(algorithm(&g.hh()), g, xh, xl, w)
}

/// [`forward`] with the high branch's Winograd variant given: [`Algorithm::WinogradF4`] runs F(4×4)
/// for the high branch and, for the low one, F(4×4) where [`algorithm`] picks it there, else F(2×2);
/// anything else runs F(2×2) throughout.
pub fn forward_with<T: Element>(
    alg: Algorithm,
    g: &OctaveGeometry,
    xh: &[T],
    xl: &[T],
    w: &[T],
) -> (Vec<T>, Vec<T>) {
    forward_prologue_with(alg, g, xh, xl, w, [None, None])
}

/// [`forward`] of the inputs mapped by their prologues `[high, low]` (inference: the batch norm and
/// ReLU before the convolution, applied as the kernel reads its inputs), the four weights as
/// separate slices (no flat copy of them per call).
pub fn forward_prologue<T: Element>(
    g: &OctaveGeometry,
    xh: &[T],
    xl: &[T],
    w: OctaveWeights<'_, T>,
    pros: [Option<Prologue<'_, T>>; 2],
) -> (Vec<T>, Vec<T>) {
    forward_weights(algorithm(&g.hh()), g, xh, xl, w, pros)
}

/// [`forward_prologue`] on weights [`prepare`]d for `g`, into `(y_h, y_l)`
/// ([`OctaveGeometry::high_out_len`] and [`OctaveGeometry::low_out_len`] values, every one
/// written; allocate them after preparing the weights), each output plane of each branch
/// mapped by `posts[branch]` (`post(channel, plane)`, a slice of that branch's buffer) as soon as
/// the output transform has written it, in cache: the convolution's output stage (batch norm,
/// activation, a residual join) without a pass of its own over the outputs.
pub fn forward_staged_into<T: Element>(
    g: &OctaveGeometry,
    (xh, xl): (&[T], &[T]),
    w: &Prepared<T>,
    pros: [Option<Prologue<'_, T>>; 2],
    posts: [Option<RowMap<'_, T>>; 2],
    (y_h, y_l): (&mut [T], &mut [T]),
) {
    assert!(
        y_h.len() == g.high_out_len() && y_l.len() == g.low_out_len(),
        "octave convolution: output sizes"
    );
    assert!(
        w.geometry == *g,
        "octave convolution: weights prepared for {:?}",
        w.geometry
    );
    forward_prepared(g, (xh, xl), w, (pros, posts), (y_h, y_l));
}

/// The fused kernel's four weights transformed for the Winograd variants it runs on a geometry
/// (`U_HH`, `U_LH` and `U_[HL|LL]`, the last transformed from `W_HL` and `W_LL` where they are),
/// made before the outputs are allocated ([`prepare`]), so that the transforms' temporaries are
/// gone before the outputs count at the memory peak.
pub struct Prepared<T> {
    geometry: OctaveGeometry,
    variants: Variants,
    u: [Vec<T>; 3],
}

impl<T> Prepared<T> {
    /// The geometry the weights were prepared for.
    pub fn geometry(&self) -> &OctaveGeometry {
        &self.geometry
    }

    /// Bytes the transformed weights take.
    pub fn bytes(&self) -> usize {
        self.u.iter().map(|u| u.len()).sum::<usize>() * std::mem::size_of::<T>()
    }
}

/// The Winograd variants of the high branch and of the low-resolution products.
#[derive(Clone, Copy)]
enum Variants {
    F4F4,
    F4F2,
    F2F2,
}

/// [`Prepared`] weights for `g` (the variants [`forward_prologue`] picks).
pub fn prepare<T: Element>(g: &OctaveGeometry, w: OctaveWeights<'_, T>) -> Prepared<T> {
    prepare_with(algorithm(&g.hh()), g, w)
}

/// [`prepare`] with the high branch's variant given (as in [`forward_with`]).
fn prepare_with<T: Element>(
    alg: Algorithm,
    g: &OctaveGeometry,
    w: OctaveWeights<'_, T>,
) -> Prepared<T> {
    // The kernel is Winograd throughout: where `algorithm` would pick im2col (too few tiles for
    // either variant), F(2×2), the narrower of the two, serves.
    let low_f4 = algorithm(&g.ll()) == Algorithm::WinogradF4;
    let (variants, u) = match (alg, low_f4) {
        (Algorithm::WinogradF4, true) => (Variants::F4F4, transform::<T, F4, F4>(g, w)),
        (Algorithm::WinogradF4, false) => (Variants::F4F2, transform::<T, F4, F2>(g, w)),
        _ => (Variants::F2F2, transform::<T, F2, F2>(g, w)),
    };
    Prepared {
        geometry: *g,
        variants,
        u,
    }
}

/// `[U_HH, U_LH, U_[HL|LL]]` for tilings `A` (high) and `B` (low resolution).
fn transform<T: Element, A: Tiling, B: Tiling>(
    g: &OctaveGeometry,
    w: OctaveWeights<'_, T>,
) -> [Vec<T>; 3] {
    [
        A::weights(w.hh, g.out_h, g.in_h),
        B::weights(w.lh, g.out_h, g.in_l),
        B::weights_joined(&[(w.hl, g.in_h), (w.ll, g.in_l)], g.out_l),
    ]
}

/// [`forward_prologue`] with the high branch's Winograd variant given (as in [`forward_with`]).
pub fn forward_prologue_with<T: Element>(
    alg: Algorithm,
    g: &OctaveGeometry,
    xh: &[T],
    xl: &[T],
    w: &[T],
    pros: [Option<Prologue<'_, T>>; 2],
) -> (Vec<T>, Vec<T>) {
    forward_weights(alg, g, xh, xl, OctaveWeights::from_flat(g, w), pros)
}

/// [`forward_prologue_with`] on the four weights as slices. The outputs are allocated after the
/// weights are transformed, so that the transforms' temporaries are gone before the outputs count
/// at the memory peak.
fn forward_weights<T: Element>(
    alg: Algorithm,
    g: &OctaveGeometry,
    xh: &[T],
    xl: &[T],
    w: OctaveWeights<'_, T>,
    pros: [Option<Prologue<'_, T>>; 2],
) -> (Vec<T>, Vec<T>) {
    forward_on(g, (xh, xl), &prepare_with(alg, g, w), pros)
}

/// [`forward_prologue`] on weights [`prepare`]d for `g`, into outputs it allocates (after the
/// weights were prepared, so that the transforms' temporaries are gone by the memory peak).
pub fn forward_on<T: Element>(
    g: &OctaveGeometry,
    x: (&[T], &[T]),
    w: &Prepared<T>,
    pros: [Option<Prologue<'_, T>>; 2],
) -> (Vec<T>, Vec<T>) {
    // Every element of both outputs is written by the output transforms.
    let (mut y_h, mut y_l) = (output_vec(g.high_out_len()), output_vec(g.low_out_len()));
    forward_staged_into(g, x, w, pros, [None, None], (&mut y_h, &mut y_l));
    (y_h, y_l)
}

/// [`forward_weights`] without input or output maps (the training op's forward).
fn forward_unmapped<T: Element>(
    alg: Algorithm,
    g: &OctaveGeometry,
    (xh, xl): (&[T], &[T]),
    w: OctaveWeights<'_, T>,
) -> (Vec<T>, Vec<T>) {
    forward_weights(alg, g, xh, xl, w, [None, None])
}

/// The fused forward on prepared weights into the outputs `y` (every value written).
fn forward_prepared<T: Element>(
    g: &OctaveGeometry,
    x: (&[T], &[T]),
    w: &Prepared<T>,
    maps: Maps<'_, T>,
    y: (&mut [T], &mut [T]),
) {
    match w.variants {
        Variants::F4F4 => forward_tiled::<T, F4, F4>(g, x, &w.u, maps, y),
        Variants::F4F2 => forward_tiled::<T, F4, F2>(g, x, &w.u, maps, y),
        Variants::F2F2 => forward_tiled::<T, F2, F2>(g, x, &w.u, maps, y),
    }
}

/// The input maps `[high, low]` (prologues) and the output maps `[high, low]` of the fused kernel.
type Maps<'a, T> = ([Option<Prologue<'a, T>>; 2], [Option<RowMap<'a, T>>; 2]);

/// The fused forward with tiling `A` for the high branch (H→H) and `B` for the low-resolution
/// products (H→L, L→L and L→H before its upsampling); `pro_h`, `pro_l` map the inputs as they are
/// read (the H→L pool reads the mapped high input).
fn forward_tiled<T: Element, A: Tiling, B: Tiling>(
    g: &OctaveGeometry,
    (xh, xl): (&[T], &[T]),
    [u_hh, u_lh, u_low]: &[Vec<T>; 3],
    ([pro_h, pro_l], [post_h, post_l]): Maps<'_, T>,
    (out_h, out_l): (&mut [T], &mut [T]),
) {
    let c_low = g.in_h + g.in_l;
    let hh = g.hh();
    let (lhh, lww) = g.low_hw();
    let (tiles_h, tiles_l) = (A::tiles(g.h, g.w), B::tiles(lhh, lww));
    let (img_h, img_l) = (g.out_h * g.h * g.w, g.out_l * lhh * lww);
    let (in_img_h, in_img_l) = (g.in_h * g.h * g.w, g.in_l * lhh * lww);
    let nb = images_per_task(g.n, tiles_l, B::TARGET_TILES);
    let par = gemm_parallelism(g.n.div_ceil(nb));
    out_h
        .par_chunks_mut(nb * img_h)
        .zip(out_l.par_chunks_mut(nb * img_l))
        .enumerate()
        .for_each(|(t, (yh, yl))| {
            with_scratch(|s: &mut Scratch<T>| {
                let (i0, cnt) = (t * nb, yh.len() / img_h);
                let xh = &xh[i0 * in_img_h..][..cnt * in_img_h];
                let xl = &xl[i0 * in_img_l..][..cnt * in_img_l];
                // The low branch runs over all `cnt` images of the task (GEMMs `cnt · tiles_l`
                // wide), the high branch over `nh` images at a time (`nh · tiles_h` wide).
                let nh = A::TARGET_TILES.div_ceil(tiles_h).clamp(1, cnt);
                let (ld_h, ld_l) = (nh * tiles_h, cnt * tiles_l);
                // The low-resolution products finish before the high branch starts, so the
                // transformed inputs of both share one buffer, and so do their products (where
                // the pooled high input waits for its transform before any product is made): the
                // largest scratch of DenseNet-121 at α > 0 (3.5 MB per task at α = .75), now the
                // larger of each pair instead of the sum.
                let (len_vh, len_mh) = (A::FREQS * g.in_h * ld_h, A::FREQS * g.out_h * ld_h);
                let (len_vl, len_ml) = (
                    B::FREQS * c_low * ld_l,
                    B::FREQS * g.out_h.max(g.out_l) * ld_l,
                );
                let len_pooled = cnt * g.in_h * lhh * lww;
                // Where the high products would be the largest buffer, they are made for half the
                // output channels at a time (WRN-16-4's 192 + 64-channel layers at 8×8, α = .25).
                let low_m = len_ml.max(len_pooled);
                let cb_h = match len_mh > low_m && g.out_h > 1 {
                    true => g.out_h.div_ceil(2),
                    false => g.out_h,
                };
                let [v, m, lh] = s.many([
                    len_vh.max(len_vl),
                    (A::FREQS * cb_h * ld_h).max(low_m),
                    cnt * g.out_h * lhh * lww,
                ]);
                let v_l = &mut v[..len_vl];
                // The low-resolution input [pool(X_H); X_L], transformed channel block by block.
                let pooled = &mut m[..len_pooled];
                pool_into(xh, pooled, cnt * g.in_h, (g.h, g.w), pro_h);
                let (v_ph, v_xl) = v_l.split_at_mut(B::FREQS * g.in_h * ld_l);
                B::input(&g.hl(), pooled, v_ph, ld_l, None);
                B::input(&g.ll(), xl, v_xl, ld_l, pro_l);
                let m_l = &mut m[..len_ml];
                // Low output.
                multiply::<T, B>(u_low, (g.out_l, c_low), v_l, ld_l, m_l, par);
                let out = Planes {
                    out: yl,
                    add_up: None,
                    plane_rows: None,
                    post: post_l,
                };
                B::output(m_l, ld_l, g.out_l, (lhh, lww), cnt, out);
                // L→H at low resolution, into scratch.
                let v_xl = &v_l[B::FREQS * g.in_h * ld_l..];
                multiply::<T, B>(u_lh, (g.out_h, g.in_l), v_xl, ld_l, m_l, par);
                let out = Planes {
                    out: &mut *lh,
                    add_up: None,
                    plane_rows: None,
                    post: None,
                };
                B::output(m_l, ld_l, g.out_h, (lhh, lww), cnt, out);
                // H→H, with L→H added (nearest ×2) as each high row is written.
                let v_h = &mut v[..len_vh];
                let lh_img = g.out_h * lhh * lww;
                for j0 in (0..cnt).step_by(nh) {
                    let k = nh.min(cnt - j0);
                    let ld = k * tiles_h;
                    A::input(&hh, &xh[j0 * in_img_h..][..k * in_img_h], v_h, ld, pro_h);
                    for co0 in (0..g.out_h).step_by(cb_h) {
                        let cb = cb_h.min(g.out_h - co0);
                        let rows = ((co0, cb, g.out_h), g.in_h);
                        multiply_rows::<T, A>(u_hh, rows, v_h, ld, m, par);
                        let out = Planes {
                            out: &mut yh[j0 * img_h..][..k * img_h],
                            add_up: Some(&lh[j0 * lh_img..][..k * lh_img]),
                            plane_rows: None,
                            post: post_h,
                        };
                        A::output_channels(m, ld, (co0, cb, g.out_h), (g.h, g.w), k, out);
                    }
                }
            })
        });
}

/// 2×2 average pooling of `planes` planes of `h × w` (even) into `dst` (serial: callers run per
/// task), each value mapped by its channel's `pro` map first (plane `p` is channel `p mod c`).
fn pool_into<T: Element>(
    x: &[T],
    dst: &mut [T],
    planes: usize,
    (h, w): (usize, usize),
    pro: Option<Prologue<'_, T>>,
) {
    let q = T::from_f64(0.25);
    let pairs = x.chunks_exact(h * w).zip(dst.chunks_exact_mut(h * w / 4));
    for (p, (plane, o)) in pairs.take(planes).enumerate() {
        match pro {
            Some(pro) => {
                let act = pro.channel(p % pro.scale.len());
                pool_plane_map(plane, o, (h, w), q, |v| act.apply(v))
            }
            None => pool_plane(plane, o, (h, w), q),
        }
    }
}

/// Gradients through the high output: `(dX_H, dX_L, dW)` from `dY_H` via H→H and L→H; `dW` is the
/// high branch's `[dW_HH; dW_LH]`.
pub fn backward_high<T: Element>(
    g: &OctaveGeometry,
    xh: &[T],
    xl: &[T],
    w: &OctaveWeights<'_, T>,
    dyh: &[T],
) -> (Vec<T>, Vec<T>, Vec<T>) {
    // L→H was upsampled ×2 (nearest): its output gradient is the 2×2 block sum of dY_H.
    let dsum = {
        let _t = super::timing::span("octave backward: pools, concatenations, spreads");
        pool(dyh, g.n * g.out_h, g.h, g.w, T::ONE)
    };
    let dxh = dispatch_backward_data(&g.hh(), dyh, w.hh);
    let dxl = dispatch_backward_data(&g.lh(), &dsum, w.lh);
    let mut dw = dispatch_backward_filter(&g.hh(), xh, dyh);
    dw.extend_from_slice(&dispatch_backward_filter(&g.lh(), xl, &dsum));
    (dxh, dxl, dw)
}

/// Gradients through the low output: `(dX_H, dX_L, dW)` from `dY_L` via one convolution over
/// `[pool(X_H); X_L]` (H→L and L→L together); `dW` is the low branch's `[dW_HL; dW_LL]`.
pub fn backward_low<T: Element>(
    g: &OctaveGeometry,
    xh: &[T],
    xl: &[T],
    w: &OctaveWeights<'_, T>,
    dyl: &[T],
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let (lh, lw) = g.low_hw();
    let mut dxh = output_vec(g.n * g.in_h * g.h * g.w);
    let mut dxl = output_vec(g.n * g.in_l * lh * lw);
    let dw = backward_low_into(g, xh, xl, w, dyl, (&mut dxh, &mut dxl), false);
    (dxh, dxl, dw)
}

/// [`backward_low`] writing `(dX_H, dX_L)` into `dx`, or adding to it with `accumulate` (the input
/// gradients of the high output already there: each is then written once); returns `dW`.
fn backward_low_into<T: Element>(
    g: &OctaveGeometry,
    xh: &[T],
    xl: &[T],
    w: &OctaveWeights<'_, T>,
    dyl: &[T],
    (dxh, dxl): (&mut [T], &mut [T]),
    accumulate: bool,
) -> Vec<T> {
    let (lhh, lww) = g.low_hw();
    let low_px = lhh * lww;
    let c_low = g.in_h + g.in_l;
    let lo = g.conv(c_low, g.out_l, (lhh, lww));
    // [pool(X_H); X_L] per image.
    let t = super::timing::span("octave backward: pools, concatenations, spreads");
    let pooled = pool(xh, g.n * g.in_h, g.h, g.w, T::from_f64(0.25));
    let mut xcat = output_vec(g.n * c_low * low_px);
    for i in 0..g.n {
        let dst = &mut xcat[i * c_low * low_px..][..c_low * low_px];
        let (d_h, d_l) = dst.split_at_mut(g.in_h * low_px);
        d_h.copy_from_slice(&pooled[i * g.in_h * low_px..][..g.in_h * low_px]);
        d_l.copy_from_slice(&xl[i * g.in_l * low_px..][..g.in_l * low_px]);
    }
    let w_low = low_weight(g, w.hl, w.ll);
    drop(t);
    let dxcat = dispatch_backward_data(&lo, dyl, &w_low);
    // The pooled part spreads ¼ over each 2×2 block of X_H; the rest is dX_L.
    let t = super::timing::span("octave backward: pools, concatenations, spreads");
    dxh.par_chunks_mut(g.in_h * g.h * g.w)
        .zip(dxl.par_chunks_mut(g.in_l * low_px))
        .enumerate()
        .for_each(|(i, (oh, ol))| {
            let src = &dxcat[i * c_low * low_px..][..c_low * low_px];
            let (s_h, s_l) = src.split_at(g.in_h * low_px);
            if accumulate {
                ol.iter_mut().zip(s_l).for_each(|(o, &v)| *o += v);
            } else {
                ol.copy_from_slice(s_l);
            }
            spread_quarter(oh, s_h, g.in_h, (g.h, g.w), (lhh, lww), accumulate);
        });
    drop(t);
    let dw_low = dispatch_backward_filter(&lo, &xcat, dyl);
    // [dW_HL; dW_LL] from the rows [dW_HL[co] | dW_LL[co]] of the concatenated convolution.
    let hl_len = 9 * g.out_l * g.in_h;
    let mut dw = output_vec(hl_len + 9 * g.out_l * g.in_l);
    let (dw_hl, dw_ll) = dw.split_at_mut(hl_len);
    for co in 0..g.out_l {
        let row = &dw_low[co * c_low * 9..][..c_low * 9];
        dw_hl[co * g.in_h * 9..][..g.in_h * 9].copy_from_slice(&row[..g.in_h * 9]);
        dw_ll[co * g.in_l * 9..][..g.in_l * 9].copy_from_slice(&row[g.in_h * 9..]);
    }
    dw
}

/// The whole backward of the fused octave convolution (both outputs): `(dX_H, dX_L, dW)` with `dW`
/// the flat `[dW_HH; dW_HL; dW_LH; dW_LL]` ([`OctaveGeometry::weight_ranges`]); `w` as
/// [`OctaveWeights`]. The low output's input gradients are added to the high output's as they are
/// spread, so each input gradient is written once. The planned training step's backward.
pub fn backward<T: Element>(
    g: &OctaveGeometry,
    xh: &[T],
    xl: &[T],
    w: &OctaveWeights<'_, T>,
    (dyh, dyl): (&[T], &[T]),
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let (mut dxh, mut dxl, dw_high) = backward_high(g, xh, xl, w, dyh);
    let dw_low = backward_low_into(g, xh, xl, w, dyl, (&mut dxh, &mut dxl), true);
    let (hh, lh) = dw_high.split_at(w.hh.len());
    let (hl, ll) = dw_low.split_at(w.hl.len());
    let mut dw = Vec::with_capacity(dw_high.len() + dw_low.len());
    for part in [hh, hl, lh, ll] {
        dw.extend_from_slice(part);
    }
    (dxh, dxl, dw)
}

/// `dst = ¼ · upsample_nearest2x(low)` (or `dst += …` with `accumulate`) for `planes` planes (`dst`
/// `h × w`, `low` `lh × lw`, `h = 2·lh`).
fn spread_quarter<T: Element>(
    dst: &mut [T],
    low: &[T],
    planes: usize,
    (h, w): (usize, usize),
    (lh, lw): (usize, usize),
    accumulate: bool,
) {
    let q = T::from_f64(0.25);
    for p in 0..planes {
        let l = &low[p * lh * lw..][..lh * lw];
        let o = &mut dst[p * h * w..][..h * w];
        for y in 0..h {
            let lrow = &l[(y / 2) * lw..][..lw];
            for (pair, v) in o[y * w..][..w].chunks_exact_mut(2).zip(lrow) {
                if accumulate {
                    pair[0] += q * *v;
                    pair[1] += q * *v;
                } else {
                    pair[0] = q * *v;
                    pair[1] = q * *v;
                }
            }
        }
    }
}

/// The contiguous data of one argument.
fn data<'a, T>(s: &'a [T], l: &Layout) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((o0, o1)) => Ok(&s[o0..o1]),
        None => bail!("octave conv kernel: arguments must be contiguous"),
    }
}

/// Which output of the fused convolution an op yields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Branch {
    High,
    Low,
}

impl Branch {
    fn other(self) -> Branch {
        match self {
            Branch::High => Branch::Low,
            Branch::Low => Branch::High,
        }
    }

    /// Elements of the weights of the paths into this output.
    fn weight_len(self, g: &OctaveGeometry) -> usize {
        let out = match self {
            Branch::High => g.out_h,
            Branch::Low => g.out_l,
        };
        9 * out * (g.in_h + g.in_l)
    }

    /// This branch's two weights from its vector `own`; the other two are empty.
    fn own_weights<'a, T>(self, g: &OctaveGeometry, own: &'a [T]) -> OctaveWeights<'a, T> {
        match self {
            Branch::High => {
                let (hh, lh) = own.split_at(9 * g.out_h * g.in_h);
                OctaveWeights {
                    hh,
                    hl: &[],
                    lh,
                    ll: &[],
                }
            }
            Branch::Low => {
                let (hl, ll) = own.split_at(9 * g.out_l * g.in_h);
                OctaveWeights {
                    hh: &[],
                    hl,
                    lh: &[],
                    ll,
                }
            }
        }
    }

    /// The four weights from this branch's vector `own` and the other branch's `other`.
    fn weights<'a, T>(
        self,
        g: &OctaveGeometry,
        own: &'a [T],
        other: &'a [T],
    ) -> OctaveWeights<'a, T> {
        match self {
            Branch::High => OctaveWeights::from_branches(g, own, other),
            Branch::Low => OctaveWeights::from_branches(g, other, own),
        }
    }
}

/// One output of the fused octave convolution as a candle op: arguments `X_H [n, in_h, h, w]`,
/// `X_L [n, in_l, h/2, w/2]` and the weights of the paths into this output (the high op: `[W_HH;
/// W_LH]`, the low op: `[W_HL; W_LL]`, each flat); the op holds the other branch's weights too, for
/// the forward, which needs all four.
///
/// candle's custom ops have one result, and cutting a flat two-part result into views would cost the
/// backward several passes (`narrow`'s gradient pads with zeros and concatenates). So the high op runs
/// the whole fused forward and leaves the low output in `stash`, where the low op, applied right
/// after it on the same arguments, picks it up (it computes it itself if the stash is empty). Each op's
/// backward covers the paths into its own output, and its weight gradient is that of its own weight
/// argument: with all four weights as one argument of both ops, each weight gradient was a full-size
/// vector half of zeros, and candle added the two (issue #24).
#[derive(Clone, Debug)]
struct OctaveOutput {
    geometry: OctaveGeometry,
    branch: Branch,
    stash: Arc<Mutex<Option<CpuStorage>>>,
    /// The other branch's weights (read by the forward only).
    other: Tensor,
}

impl OctaveOutput {
    fn check(&self, lh: &Layout, ll: &Layout, lw: &Layout) -> Result<()> {
        let g = &self.geometry;
        let (lhh, lww) = g.low_hw();
        if lh.shape().dims() != [g.n, g.in_h, g.h, g.w]
            || ll.shape().dims() != [g.n, g.in_l, lhh, lww]
            || lw.shape().elem_count() != self.branch.weight_len(g)
            || self.other.elem_count() != self.branch.other().weight_len(g)
        {
            bail!(
                "octave conv kernel: arguments {:?}, {:?}, {:?} do not match {:?}",
                lh.shape().dims(),
                ll.shape().dims(),
                lw.shape().dims(),
                g
            )
        }
        Ok(())
    }

    /// Returns this op's output of `(high, low)`, stashing the other one for the low op.
    fn split<T: Element>(
        &self,
        (high, low): (Vec<T>, Vec<T>),
        wrap: fn(Vec<T>) -> CpuStorage,
    ) -> Result<CpuStorage> {
        let (mine, other) = match self.branch {
            Branch::High => (high, low),
            Branch::Low => (low, high),
        };
        if self.branch == Branch::High {
            *self
                .stash
                .lock()
                .map_err(|_| candle_core::Error::Msg("stash poisoned".into()))? = Some(wrap(other));
        }
        Ok(wrap(mine))
    }
}

impl CustomOp3 for OctaveOutput {
    fn name(&self) -> &'static str {
        match self.branch {
            Branch::High => "octconv-octave-conv-high",
            Branch::Low => "octconv-octave-conv-low",
        }
    }

    fn cpu_fwd(
        &self,
        sh: &CpuStorage,
        lh: &Layout,
        sl: &CpuStorage,
        ll: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.check(lh, ll, lw)?;
        let _t = super::timing::span("octave forward");
        let g = &self.geometry;
        let (lhh, lww) = g.low_hw();
        let shape = match self.branch {
            Branch::High => Shape::from((g.n, g.out_h, g.h, g.w)),
            Branch::Low => Shape::from((g.n, g.out_l, lhh, lww)),
        };
        if self.branch == Branch::Low {
            let stashed = self
                .stash
                .lock()
                .map_err(|_| candle_core::Error::Msg("stash poisoned".into()))?
                .take();
            if let Some(low) = stashed {
                return Ok((low, shape));
            }
        }
        let other = self.other.contiguous()?;
        let (so, lo) = other.storage_and_layout();
        let alg = algorithm(&g.hh());
        let out = match (sh, sl, sw, &*so) {
            (
                CpuStorage::F32(h),
                CpuStorage::F32(l),
                CpuStorage::F32(w),
                candle_core::Storage::Cpu(CpuStorage::F32(o)),
            ) => {
                let w = self.branch.weights(g, data(w, lw)?, data(o, lo)?);
                let y = forward_unmapped(alg, g, (data(h, lh)?, data(l, ll)?), w);
                self.split(y, CpuStorage::F32)?
            }
            (
                CpuStorage::F64(h),
                CpuStorage::F64(l),
                CpuStorage::F64(w),
                candle_core::Storage::Cpu(CpuStorage::F64(o)),
            ) => {
                let w = self.branch.weights(g, data(w, lw)?, data(o, lo)?);
                let y = forward_unmapped(alg, g, (data(h, lh)?, data(l, ll)?), w);
                self.split(y, CpuStorage::F64)?
            }
            _ => bail!("octave conv kernel: all arguments must be f32 or all f64 CPU tensors"),
        };
        Ok((out, shape))
    }

    fn bwd(
        &self,
        xh: &Tensor,
        xl: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = self.geometry;
        let grad = grad.contiguous()?;
        let dev = xh.device();
        let (xh, xl, w) = (xh.contiguous()?, xl.contiguous()?, w.contiguous()?);
        let (sh, lh) = xh.storage_and_layout();
        let (sl, ll) = xl.storage_and_layout();
        let (sw, lw) = w.storage_and_layout();
        let (sd, ld) = grad.storage_and_layout();
        let branch = self.branch;
        macro_rules! run {
            ($h:expr, $l:expr, $w:expr, $d:expr) => {{
                let args = (data($h, lh)?, data($l, ll)?, data($w, lw)?, data($d, ld)?);
                // The paths into this output read this branch's weights only.
                let wts = branch.own_weights(&g, args.2);
                let (dh, dl, dw) = match branch {
                    Branch::High => backward_high(&g, args.0, args.1, &wts, args.3),
                    Branch::Low => backward_low(&g, args.0, args.1, &wts, args.3),
                };
                (
                    Tensor::from_vec(dh, xh.shape(), dev)?,
                    Tensor::from_vec(dl, xl.shape(), dev)?,
                    Tensor::from_vec(dw, w.shape(), dev)?,
                )
            }};
        }
        use candle_core::Storage::Cpu;
        let (dh, dl, dw) = match (&*sh, &*sl, &*sw, &*sd) {
            (
                Cpu(CpuStorage::F32(h)),
                Cpu(CpuStorage::F32(l)),
                Cpu(CpuStorage::F32(w)),
                Cpu(CpuStorage::F32(d)),
            ) => run!(h, l, w, d),
            (
                Cpu(CpuStorage::F64(h)),
                Cpu(CpuStorage::F64(l)),
                Cpu(CpuStorage::F64(w)),
                Cpu(CpuStorage::F64(d)),
            ) => run!(h, l, w, d),
            _ => bail!("octave conv kernel: all arguments must be f32 or all f64 CPU tensors"),
        };
        Ok((Some(dh), Some(dl), Some(dw)))
    }
}

/// Runs the fused octave convolution on `X_H`, `X_L` with the four weights `[cout, cin, 3, 3]`
/// (H→H, H→L, L→H, L→L); returns `(Y_H, Y_L)`. Callers check [`OctaveGeometry::applies`] and that
/// the tensors are f32 or f64 on the CPU.
pub fn octave_conv(
    g: OctaveGeometry,
    xh: &Tensor,
    xl: &Tensor,
    weights: [&Tensor; 4],
) -> Result<(Tensor, Tensor)> {
    let [hh, hl, lh, ll] = weights;
    let w_high = Tensor::cat(&[hh.flatten_all()?, lh.flatten_all()?], 0)?;
    let w_low = Tensor::cat(&[hl.flatten_all()?, ll.flatten_all()?], 0)?;
    let (xh, xl) = (xh.contiguous()?, xl.contiguous()?);
    let stash = Arc::new(Mutex::new(None));
    let op = |branch, other: &Tensor| OctaveOutput {
        geometry: g,
        branch,
        stash: stash.clone(),
        other: other.detach(),
    };
    let yh = xh.apply_op3(&xl, &w_high, op(Branch::High, &w_low))?;
    let yl = xh.apply_op3(&xl, &w_low, op(Branch::Low, &w_high))?;
    Ok((yh, yl))
}
