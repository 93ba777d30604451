//! The convolution as candle custom ops: forward, input gradient and weight gradient, each an unfold
//! (im2col / col2im) plus one GEMM on the `gemm` crate per group of images.
//!
//! Why our own: candle 0.11's CPU convolution spends as long in its scalar im2col as in the GEMM, runs
//! the input gradient through a direct-loop `conv_transpose2d` and the weight gradient as a convolution
//! with an image-sized kernel (narrow GEMMs). Here every pass is one well-shaped GEMM:
//!
//! | pass | GEMM (per group of `nb` images) |
//! |---|---|
//! | forward | `Y (cout × nb·ohw) = W (cout × k) · col(X) (k × nb·ohw)` |
//! | input gradient | `dcol (k × nb·ohw) = Wᵀ · dY`, then col2im |
//! | weight gradient | `dW (cout × k) += dY · col(X)ᵀ`, summed over image groups |
//!
//! Small feature maps put several images side by side in one column matrix so the GEMM stays wide;
//! images are spread over the rayon pool, and a batch too small to share out parallelises inside the
//! GEMM instead.

use super::epilogue::RowMap;
use super::gemm::{gemm_parallelism, images_per_task, sgemm, sum_tasks, Mat};
use super::geometry::ConvGeometry;
use super::prologue::Prologue;
use super::scratch::{output_vec, sized, with_scratch, Scratch};
use super::tiling::{self, F2, F4};
use super::unfold::{col2im, im2col, im2col_rows};
use super::Element;
use super::{depthwise, direct, grouped, winograd};
use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Stride, padding and groups of one convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvParams {
    /// Stride (both dimensions).
    pub stride: usize,
    /// Zero padding on each side.
    pub pad: usize,
    /// Channel groups.
    pub groups: usize,
}

/// `conv2d(x, weight)` through our kernels for f32 and f64 CPU tensors, with their backward;
/// any other device or dtype goes to candle's own `conv2d` with the same semantics (with the backward
/// of [`crate::device_conv`]).
pub fn conv2d(x: &Tensor, weight: &Tensor, p: ConvParams) -> Result<Tensor> {
    use candle_core::DType::{F32, F64};
    if super::serves(x.device()) && x.dtype() == weight.dtype() && matches!(x.dtype(), F32 | F64) {
        x.contiguous()?
            .apply_op2(&weight.contiguous()?, Conv2dForward(p))
    } else {
        crate::device_conv::conv2d(x, weight, p.pad, p.stride, p.groups)
    }
}

/// Whether the algorithm [`algorithm`] picks for `g` applies an output map to each row or plane
/// while it is in cache ([`infer_post`]): im2col, the depthwise and the grouped kernel do, Winograd
/// does not; where inference runs the direct kernel instead ([`direct::prefers_single`]), it does.
pub fn maps_rows(g: &ConvGeometry) -> bool {
    direct::prefers_single(g)
        || matches!(
            algorithm(g),
            Algorithm::Im2col | Algorithm::Depthwise | Algorithm::Grouped
        )
}

/// Whether the input and the weight of an inference call are f32 on a device our kernels serve.
fn f32_on_our_kernels(x: &Tensor, weight: &Tensor) -> bool {
    use candle_core::DType::F32;
    super::serves(x.device()) && x.dtype() == F32 && weight.dtype() == F32
}

/// Inference of `epi(conv2d(x, weight))` on f32 CPU tensors where the algorithm [`algorithm`] picks
/// is im2col, the depthwise or the grouped kernel, or where the stem kernel ([`super::stem`]: few
/// input channels, stride 1 or 2, first where it applies) or the direct 3×3 kernel serves a layer
/// with few input channels ([`direct::prefers_single`]), which apply the epilogue to each output row
/// while it is in cache; `Ok(None)` elsewhere (Winograd, other dtypes or devices), for the caller
/// to map the output itself. The result carries no gradient.
pub fn infer_post(
    x: &Tensor,
    weight: &Tensor,
    p: ConvParams,
    epi: &super::epilogue::ChannelEpilogue,
) -> Result<Option<Tensor>> {
    if !f32_on_our_kernels(x, weight) {
        return Ok(None);
    }
    let g = ConvGeometry::new(x.dims4()?, weight.dims4()?, p.stride, p.pad, p.groups)?;
    let alg = algorithm(&g);
    if !maps_rows(&g) || epi.scale.len() != g.c_out {
        return Ok(None);
    }
    let post = |c: usize, row: &mut [f32]| epi.apply_row(c, row);
    if super::stem::applies(&g) {
        let y = super::with_f32_all([x, weight], |[x, w]| {
            super::stem::forward_post(&g, x, w, Some(&post))
        })?;
        let dims = (g.n, g.c_out, g.oh(), g.ow());
        return Ok(Some(Tensor::from_vec(y, dims, x.device())?));
    }
    if direct::prefers_single(&g) {
        let y = super::with_f32_all([x, weight], |[x, w]| {
            // Every value is written by the direct kernel.
            let mut y = output_vec(g.n * g.out_image());
            direct::single_into(&g, x, w, Some(&post), &mut y);
            y
        })?;
        let dims = (g.n, g.c_out, g.oh(), g.ow());
        return Ok(Some(Tensor::from_vec(y, dims, x.device())?));
    }
    let y = super::with_f32_all([x, weight], |[x, w]| match alg {
        Algorithm::Depthwise => depthwise::forward_post(&g, x, w, Some(&post)),
        Algorithm::Grouped => grouped::forward_post(&g, x, w, Some(&post)),
        _ => forward_post(&g, x, w, Some(&post)),
    })?;
    Ok(Some(Tensor::from_vec(
        y,
        (g.n, g.c_out, g.oh(), g.ow()),
        x.device(),
    )?))
}

/// Inference of `clamp(epi(conv2d(x, weight)) + residual)` (a residual join, `epi`'s own clamp
/// ignored) on f32 CPU tensors where the algorithm [`algorithm`] picks is im2col and no direct
/// kernel takes the layer (the 1×1 layers before ResNet-style sums): each output row is mapped and
/// joined while it is in cache ([`super::epilogue::ResidualJoin`] over [`forward_post_into`]).
/// `Ok(None)` elsewhere, or where `residual` is not the output's shape. The result carries no
/// gradient.
pub fn infer_post_joined(
    x: &Tensor,
    weight: &Tensor,
    p: ConvParams,
    epi: &super::epilogue::ChannelEpilogue,
    (residual, clamp): (&Tensor, super::epilogue::Clamp),
) -> Result<Option<Tensor>> {
    if !f32_on_our_kernels(x, weight) || !f32_on_our_kernels(residual, weight) {
        return Ok(None);
    }
    let g = ConvGeometry::new(x.dims4()?, weight.dims4()?, p.stride, p.pad, p.groups)?;
    let dims = (g.n, g.c_out, g.oh(), g.ow());
    if algorithm(&g) != Algorithm::Im2col
        || direct::prefers_single(&g)
        || super::stem::applies(&g)
        || epi.scale.len() != g.c_out
        || residual.dims4()? != dims
    {
        return Ok(None);
    }
    // Every value is written by the kernel.
    let mut y = output_vec(g.n * g.out_image());
    super::with_f32_all([x, weight, residual], |[x, w, r]| {
        let join = super::epilogue::ResidualJoin::new(epi, &y, r, clamp);
        let post = |c: usize, row: &mut [f32]| join.apply_row(c, row);
        forward_post_into(&g, x, w, Some(&post), &mut y);
    })?;
    Ok(Some(Tensor::from_vec(y, dims, x.device())?))
}

/// Inference of `epi(conv2d(pool(x), weight))` where `pool` is the 2×2 average pooling of a
/// stride-2 octave layer that pools first, on f32 CPU tensors, where the layer on the pooled map is
/// depthwise: the depthwise kernel pools each plane as it reads it
/// ([`depthwise::forward_pooled_post`]). `Ok(None)` elsewhere, for the caller to pool and then call
/// [`infer_post`]. The result carries no gradient.
pub fn infer_post_pooled(
    x: &Tensor,
    weight: &Tensor,
    p: ConvParams,
    epi: &super::epilogue::ChannelEpilogue,
) -> Result<Option<Tensor>> {
    if !f32_on_our_kernels(x, weight) {
        return Ok(None);
    }
    let (n, c, sh, sw) = x.dims4()?;
    let g = ConvGeometry::new(
        (n, c, sh / 2, sw / 2),
        weight.dims4()?,
        p.stride,
        p.pad,
        p.groups,
    )?;
    if algorithm(&g) != Algorithm::Depthwise
        || direct::prefers_single(&g)
        || super::stem::applies(&g)
        || epi.scale.len() != g.c_out
        || g.h == 0
        || g.w == 0
    {
        return Ok(None);
    }
    let post = |c: usize, row: &mut [f32]| epi.apply_row(c, row);
    let y = super::with_f32_all([x, weight], |[x, w]| {
        depthwise::forward_pooled_post(&g, x, (sh, sw), w, Some(&post))
    })?;
    Ok(Some(Tensor::from_vec(
        y,
        (g.n, g.c_out, g.oh(), g.ow()),
        x.device(),
    )?))
}

/// Inference of `pool(epi(conv2d(x, weight)))`, `pool` the 2×2 average pooling, for a 1×1,
/// stride-1, one-group convolution on f32 CPU tensors: each band of output rows is mapped and pooled
/// in cache ([`super::pointwise_pooled`]), for a reader that pools first. `Ok(None)` elsewhere. The
/// result carries no gradient.
pub fn infer_post_halved(
    x: &Tensor,
    weight: &Tensor,
    p: ConvParams,
    epi: &super::epilogue::ChannelEpilogue,
) -> Result<Option<Tensor>> {
    if !f32_on_our_kernels(x, weight) {
        return Ok(None);
    }
    let g = ConvGeometry::new(x.dims4()?, weight.dims4()?, p.stride, p.pad, p.groups)?;
    if !g.is_pointwise() || g.groups != 1 || epi.scale.len() != g.c_out || g.h < 2 || g.w < 2 {
        return Ok(None);
    }
    let post = |c: usize, row: &mut [f32]| epi.apply_row(c, row);
    let y = super::with_f32_all([x, weight], |[x, w]| {
        super::pointwise_pooled::forward(&g, x, w, Some(&post))
    })?;
    let dims = (g.n, g.c_out, g.h / 2, g.w / 2);
    Ok(Some(Tensor::from_vec(y, dims, x.device())?))
}

/// Columns that make a GEMM wide enough to run near peak.
const TARGET_COLUMNS: usize = 512;

/// [`TARGET_COLUMNS`] of a 1×1 convolution's forward pass, whose images share a GEMM only by a copy
/// of the whole input side by side (and of the output back): one image of 14×14 is wide enough.
/// Measured (AMD EPYC, AVX-512, one thread, `gemm` crate, four images): 96 × 576 channels at 14×14
/// 49.2 GMAC/s image by image against 48.3 copied side by side, 1024 × 512 52.8 against 53.8; at
/// 7×7 the copy pays (160 × 960: 41.9 against 48.3). MobileNet v2 at batch 8 (`octconv bench
/// --profile`, alternating): its 1×1 layers 26.0–26.7 ms against 27.0–28.2.
const POINTWISE_COLUMNS: usize = 196;

/// Runs `f` on the contiguous data of a custom op's two arguments, which must share a float dtype.
fn with_data(
    (s1, l1): (&CpuStorage, &Layout),
    (s2, l2): (&CpuStorage, &Layout),
    f32_op: impl FnOnce(&[f32], &[f32]) -> Vec<f32>,
    f64_op: impl FnOnce(&[f64], &[f64]) -> Vec<f64>,
) -> Result<CpuStorage> {
    let (Some((a0, a1)), Some((b0, b1))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
    else {
        bail!("conv2d kernel: arguments must be contiguous")
    };
    match (s1, s2) {
        (CpuStorage::F32(a), CpuStorage::F32(b)) => {
            Ok(CpuStorage::F32(f32_op(&a[a0..a1], &b[b0..b1])))
        }
        (CpuStorage::F64(a), CpuStorage::F64(b)) => {
            Ok(CpuStorage::F64(f64_op(&a[a0..a1], &b[b0..b1])))
        }
        _ => bail!("conv2d kernel: both arguments must be f32 or both f64"),
    }
}

/// Copies group `grp`'s output rows (`cout_g` channels of `ohw` pixels) of images `i0 … i0 + cnt` of
/// `y` side by side into `stage` (`cout_g × cnt·ohw`), or returns them in place for one image.
fn gather_group<'a, T: Element>(
    g: &ConvGeometry,
    y: &'a [T],
    (i0, cnt, grp): (usize, usize, usize),
    stage: &'a mut Vec<T>,
) -> &'a [T] {
    let (ohw, cout_g) = (g.out_pixels(), g.cout_g());
    if cnt == 1 {
        return &y[i0 * g.out_image() + grp * cout_g * ohw..][..cout_g * ohw];
    }
    let ld = cnt * ohw;
    let stage = sized(stage, cout_g * ld);
    for i in 0..cnt {
        let img = &y[(i0 + i) * g.out_image() + grp * cout_g * ohw..];
        for co in 0..cout_g {
            stage[co * ld + i * ohw..][..ohw].copy_from_slice(&img[co * ohw..][..ohw]);
        }
    }
    stage
}

/// The column matrix of group `grp` for images `i0 … i0 + cnt` of `x` (`k × cnt·ohw`): unfolded into
/// `col`, or the input itself for one image of a pointwise convolution.
fn unfold_group<'a, T: Element>(
    g: &ConvGeometry,
    x: &'a [T],
    (i0, cnt, grp): (usize, usize, usize),
    col: &'a mut Vec<T>,
) -> &'a [T] {
    let (ohw, k) = (g.out_pixels(), g.k());
    if g.is_pointwise() && cnt == 1 {
        return &x[i0 * g.in_image() + grp * k * ohw..][..k * ohw];
    }
    let ld = cnt * ohw;
    let col = sized(col, k * ld);
    if g.is_pointwise() {
        // Each input plane is a row of the column matrix: one copy per plane (im2col copied it a
        // row of the map at a time, 7 values each at 7×7).
        for i in 0..cnt {
            let planes = &x[(i0 + i) * g.in_image() + grp * k * ohw..][..k * ohw];
            for (c, plane) in planes.chunks_exact(ohw).enumerate() {
                col[c * ld + i * ohw..][..ohw].copy_from_slice(plane);
            }
        }
        return col;
    }
    for i in 0..cnt {
        im2col(
            g,
            &x[(i0 + i) * g.in_image()..],
            grp * g.cin_g(),
            col,
            ld,
            i * ohw,
        );
    }
    col
}

/// Forward convolution; its backward applies [`Conv2dBackwardData`] and [`Conv2dBackwardFilter`].
#[derive(Clone, Copy, Debug)]
pub struct Conv2dForward(pub ConvParams);

impl CustomOp2 for Conv2dForward {
    fn name(&self) -> &'static str {
        "octconv-conv2d"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = ConvGeometry::new(
            xl.shape().dims4()?,
            wl.shape().dims4()?,
            self.0.stride,
            self.0.pad,
            self.0.groups,
        )?;
        let _t = super::timing::span("conv forward");
        let out = with_data(
            (xs, xl),
            (ws, wl),
            |x, w| dispatch_forward(&g, x, w),
            |x, w| dispatch_forward(&g, x, w),
        )?;
        Ok((out, Shape::from((g.n, g.c_out, g.oh(), g.ow()))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (_, _, h, wd) = x.dims4()?;
        let dx = grad.apply_op2_no_bwd(
            w,
            &Conv2dBackwardData {
                params: self.0,
                input_hw: (h, wd),
            },
        )?;
        let dw = x.apply_op2_no_bwd(
            &grad,
            &Conv2dBackwardFilter {
                params: self.0,
                kernel: (w.dim(2)?, w.dim(3)?),
            },
        )?;
        Ok((Some(dx), Some(dw)))
    }
}

/// The fewest 4×4 tiles in a batch for which [`algorithm`] picks Winograd F(4×4).
pub const F4_TILES: usize = 128;

/// The fewest 2×2 tiles in a batch for which [`algorithm`] picks Winograd F(2×2) (when F(4×4)
/// has too few).
pub const F2_TILES: usize = 128;

/// How a convolution is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// im2col + GEMM: any geometry.
    Im2col,
    /// Winograd F(2×2, 3×3).
    WinogradF2,
    /// Winograd F(4×4, 3×3).
    WinogradF4,
    /// The direct depthwise kernel ([`super::depthwise`]): one input channel per group.
    Depthwise,
    /// The direct grouped 3×3 kernel ([`super::grouped`]): a few input channels per group.
    Grouped,
}

/// The algorithm for a geometry. Where [`winograd::applies`] (3×3, stride 1, padding 1, one group) it
/// goes by the width of the GEMMs each would run, which is the number of tiles in the whole batch:
/// Winograd F(4×4, 3×3) where it has at least [`F4_TILES`] tiles of 4×4 and more than one per image,
/// else F(2×2, 3×3) where it
/// has at least [`F2_TILES`] tiles of 2×2, else im2col (one GEMM `9·c_in` deep over every pixel of
/// the batch). Elsewhere, the direct depthwise kernel where one input channel makes a group
/// ([`depthwise::applies`]), the direct grouped kernel where a few do ([`grouped::applies`]), else
/// im2col. `OCTCONV_CONV=f2`, `=f4`, `=depthwise`, `=grouped` or `=im2col` forces one where it
/// applies (im2col elsewhere), for comparisons (read once).
///
/// Measured on the U-Net of issue #23 at batch 4 (AMD EPYC, AVX-512, 2 threads, `octconv bench
/// --profile`, milliseconds of one layer by F4 / F2 / im2col): 32 channels at 128×128 (4 096 F4
/// tiles) 10.5 / 14.1 / 19.3; 256 at 16×16 (64 F4, 256 F2 tiles) 8.4 / 5.2 / 7.3; 512 at 8×8
/// (16 F4, 64 F2 tiles) 21.5 / 8.4 / 6.2. Earlier, at batch 32 (`examples/layer_bench`): F2 won at
/// 4×4 (128 F2 tiles), they tied at 8×8 (128 F4, 512 F2 tiles) and F4 won at 16×16 (512 F4 tiles).
/// With 256 F4 tiles as the bar, the fused octave kernel of WRN-16-4 at batch 32, α = .5 took F(2×2)
/// at its 8×8 maps and the whole pass ran 8 % slower (`farm-bench`, 10 alternating pairs); at 128
/// it is 4 % faster than before the rule. With F(4×4) at 4×4 maps (one tile per image, 128 at batch
/// 128), WRN-28-10's α = .75 inference peaked at 177 instead of 152 MiB.
pub fn algorithm(g: &ConvGeometry) -> Algorithm {
    static CHOICE: std::sync::OnceLock<Option<Algorithm>> = std::sync::OnceLock::new();
    let forced = *CHOICE.get_or_init(|| match std::env::var("OCTCONV_CONV").as_deref() {
        Ok("im2col") => Some(Algorithm::Im2col),
        Ok("f2") => Some(Algorithm::WinogradF2),
        Ok("f4") => Some(Algorithm::WinogradF4),
        Ok("depthwise") => Some(Algorithm::Depthwise),
        Ok("grouped") => Some(Algorithm::Grouped),
        _ => None,
    });
    if !winograd::applies(g) {
        return match forced {
            None | Some(Algorithm::Depthwise) if depthwise::applies(g) => Algorithm::Depthwise,
            None | Some(Algorithm::Grouped) if grouped::applies(g) => Algorithm::Grouped,
            _ => Algorithm::Im2col,
        };
    }
    let direct = |a: Algorithm| matches!(a, Algorithm::Depthwise | Algorithm::Grouped);
    if let Some(alg) = forced.filter(|&a| !direct(a)) {
        return alg;
    }
    let tiles = |t: usize| g.n * g.h.div_ceil(t) * g.w.div_ceil(t);
    // One F(4×4) tile per image (maps of at most 4×4) keeps F(2×2): its GEMMs are four times wider.
    if tiles(4) >= F4_TILES && (g.h > 4 || g.w > 4) {
        Algorithm::WinogradF4
    } else if tiles(2) >= F2_TILES {
        Algorithm::WinogradF2
    } else {
        Algorithm::Im2col
    }
}

/// The forward pass by the algorithm [`algorithm`] picks, or, for an f32 stem, by the direct 3×3
/// kernel ([`direct::prefers_single`]).
pub fn dispatch_forward<T: Element>(g: &ConvGeometry, x: &[T], w: &[T]) -> Vec<T> {
    if direct::prefers_single(g) {
        if let (Some(x32), Some(w32)) = (T::as_f32(x), T::as_f32(w)) {
            // Every value is written by the direct kernel.
            let mut y = output_vec::<T>(g.n * g.out_image());
            if let Some(y32) = T::as_f32_mut(&mut y) {
                direct::single_into(g, x32, w32, None, y32);
                return y;
            }
        }
    }
    forward_with(algorithm(g), g, x, w)
}

/// The forward pass by `alg` (a Winograd variant needs a geometry where [`winograd::applies`]).
pub fn forward_with<T: Element>(alg: Algorithm, g: &ConvGeometry, x: &[T], w: &[T]) -> Vec<T> {
    match alg {
        Algorithm::WinogradF4 => tiling::forward::<T, F4>(g, x, w, None),
        Algorithm::WinogradF2 => tiling::forward::<T, F2>(g, x, w, None),
        Algorithm::Im2col => forward(g, x, w),
        Algorithm::Depthwise => depthwise::forward(g, x, w),
        Algorithm::Grouped => grouped::forward(g, x, w),
    }
}

/// A Winograd convolution's transformed weights, made once for a geometry ([`prepare_winograd`])
/// and used by every later call ([`forward_winograd_prepared`]): a frozen model's single-branch
/// 3×3 layers, whose weights cannot change (`OctModel::freeze`).
pub struct PreparedWinograd<T> {
    geometry: ConvGeometry,
    alg: Algorithm,
    u: Vec<Vec<T>>,
}

impl<T> PreparedWinograd<T> {
    /// The geometry the weights were prepared for.
    pub fn geometry(&self) -> &ConvGeometry {
        &self.geometry
    }

    /// Bytes the transformed weights take.
    pub fn bytes(&self) -> usize {
        self.u.iter().map(Vec::len).sum::<usize>() * std::mem::size_of::<T>()
    }
}

/// The transformed weights for `g` where the forward pass ([`dispatch_forward`], or with a
/// prologue [`dispatch_forward_prologue`]) runs Winograd; `None` where it runs another algorithm
/// (then there is nothing to prepare).
pub fn prepare_winograd<T: Element>(
    g: &ConvGeometry,
    w: &[T],
    prologue: bool,
) -> Option<PreparedWinograd<T>> {
    // Without a prologue an f32 stem goes to the direct kernel first (as `dispatch_forward`).
    if !prologue && direct::prefers_single(g) && T::as_f32(w).is_some() {
        return None;
    }
    let alg = algorithm(g);
    let u = match alg {
        Algorithm::WinogradF4 => tiling::prepare::<T, F4>(g, w),
        Algorithm::WinogradF2 => tiling::prepare::<T, F2>(g, w),
        _ => return None,
    };
    Some(PreparedWinograd {
        geometry: *g,
        alg,
        u,
    })
}

/// The forward pass of `conv2d(map(x), w)` (`map` being `pro`'s, if given) on weights
/// [`prepare_winograd`]d for `g`: the values [`dispatch_forward`] or [`dispatch_forward_prologue`]
/// computes, bit for bit.
pub fn forward_winograd_prepared<T: Element>(
    g: &ConvGeometry,
    x: &[T],
    p: &PreparedWinograd<T>,
    pro: Option<Prologue<'_, T>>,
) -> Vec<T> {
    assert!(
        p.geometry == *g,
        "conv2d: weights prepared for {:?}",
        p.geometry
    );
    match p.alg {
        Algorithm::WinogradF4 => tiling::forward_prepared::<T, F4>(g, x, &p.u, pro),
        _ => tiling::forward_prepared::<T, F2>(g, x, &p.u, pro),
    }
}

/// The forward pass of `conv2d(map(x), w)` by the algorithm [`algorithm`] picks, where `map` is
/// `pro`'s per-channel map (inference: a batch norm and ReLU folded into the convolution's input).
pub fn dispatch_forward_prologue<T: Element>(
    g: &ConvGeometry,
    x: &[T],
    w: &[T],
    pro: Prologue<'_, T>,
) -> Vec<T> {
    forward_prologue_with(algorithm(g), g, x, w, pro)
}

/// [`dispatch_forward_prologue`] by `alg`: the Winograd variants map each value as their input
/// gather reads it; im2col and the direct kernels map the whole input first.
pub fn forward_prologue_with<T: Element>(
    alg: Algorithm,
    g: &ConvGeometry,
    x: &[T],
    w: &[T],
    pro: Prologue<'_, T>,
) -> Vec<T> {
    match alg {
        Algorithm::WinogradF4 => tiling::forward::<T, F4>(g, x, w, Some(pro)),
        Algorithm::WinogradF2 => tiling::forward::<T, F2>(g, x, w, Some(pro)),
        Algorithm::Im2col => forward(g, &pro.apply(x, g.h * g.w), w),
        Algorithm::Depthwise => depthwise::forward(g, &pro.apply(x, g.h * g.w), w),
        Algorithm::Grouped => grouped::forward(g, &pro.apply(x, g.h * g.w), w),
    }
}

/// The input gradient by the algorithm [`algorithm`] picks for the forward pass (a 3×3 "same"
/// convolution's input gradient is the same convolution with the flipped, transposed kernel).
pub fn dispatch_backward_data<T: Element>(g: &ConvGeometry, dy: &[T], w: &[T]) -> Vec<T> {
    backward_data_with(backward_algorithm(g), g, dy, w)
}

/// The algorithm of `g`'s gradients: [`algorithm`]'s, except im2col for a grouped convolution
/// whose forward pass only runs directly ([`grouped::applies_backward`]).
pub fn backward_algorithm(g: &ConvGeometry) -> Algorithm {
    match algorithm(g) {
        Algorithm::Grouped if !grouped::applies_backward(g) => Algorithm::Im2col,
        alg => alg,
    }
}

/// The input gradient by `alg`.
pub fn backward_data_with<T: Element>(
    alg: Algorithm,
    g: &ConvGeometry,
    dy: &[T],
    w: &[T],
) -> Vec<T> {
    let _t = super::timing::span(match alg {
        Algorithm::WinogradF4 => "conv dX winograd F4",
        Algorithm::WinogradF2 => "conv dX winograd F2",
        Algorithm::Im2col => "conv dX im2col",
        Algorithm::Depthwise => "conv dX depthwise",
        Algorithm::Grouped => "conv dX grouped",
    });
    match alg {
        Algorithm::WinogradF4 => tiling::backward_data::<T, F4>(g, dy, w),
        Algorithm::WinogradF2 => tiling::backward_data::<T, F2>(g, dy, w),
        Algorithm::Im2col => backward_data(g, dy, w),
        Algorithm::Depthwise => depthwise::backward_data(g, dy, w),
        Algorithm::Grouped => grouped::backward_data(g, dy, w),
    }
}

/// The weight gradient by the algorithm [`algorithm`] picks.
pub fn dispatch_backward_filter<T: Element>(g: &ConvGeometry, x: &[T], dy: &[T]) -> Vec<T> {
    backward_filter_with(backward_algorithm(g), g, x, dy)
}

/// The weight gradient by `alg`.
pub fn backward_filter_with<T: Element>(
    alg: Algorithm,
    g: &ConvGeometry,
    x: &[T],
    dy: &[T],
) -> Vec<T> {
    let _t = super::timing::span(match alg {
        Algorithm::WinogradF4 => "conv dW winograd F4",
        Algorithm::WinogradF2 => "conv dW winograd F2",
        Algorithm::Im2col => "conv dW im2col",
        Algorithm::Depthwise => "conv dW depthwise",
        Algorithm::Grouped => "conv dW grouped",
    });
    match alg {
        Algorithm::WinogradF4 => tiling::backward_filter::<T, F4>(g, x, dy),
        Algorithm::WinogradF2 => tiling::backward_filter::<T, F2>(g, x, dy),
        Algorithm::Im2col => backward_filter(g, x, dy),
        Algorithm::Depthwise => depthwise::backward_filter(g, x, dy),
        Algorithm::Grouped => grouped::backward_filter(g, x, dy),
    }
}

/// `y = conv2d(x, w)` on raw NCHW data by im2col + GEMM (any geometry).
pub fn forward<T: Element>(g: &ConvGeometry, x: &[T], w: &[T]) -> Vec<T> {
    forward_post(g, x, w, None)
}

/// [`forward`], applying `post` to every output row (one channel of one image, or a column block of
/// it) right after the GEMM that wrote it. With `post`, a one-image GEMM runs in column blocks of
/// about 256 KiB of output, so each block is still in cache when it is mapped.
pub fn forward_post<T: Element>(
    g: &ConvGeometry,
    x: &[T],
    w: &[T],
    post: Option<RowMap<'_, T>>,
) -> Vec<T> {
    // Every element is written by `forward_post_into`.
    let mut out = output_vec(g.n * g.out_image());
    forward_post_into(g, x, w, post, &mut out);
    out
}

/// [`forward_post`] into `out` (`n · out_image` values, every one written). `post` is handed rows
/// of `out` itself, never of a scratch buffer ([`super::epilogue::ResidualJoin`] relies on it).
pub fn forward_post_into<T: Element>(
    g: &ConvGeometry,
    x: &[T],
    w: &[T],
    post: Option<RowMap<'_, T>>,
    out: &mut [T],
) {
    let (ohw, k, cout_g) = (g.out_pixels(), g.k(), g.cout_g());
    assert_eq!(out.len(), g.n * g.out_image(), "conv2d: output size");
    // Every element is written below: by a GEMM without accumulation (which zero-fills when k = 0) or
    // by the copy out of the staging matrix.
    if out.is_empty() {
        return;
    }
    let target = if g.is_pointwise() {
        POINTWISE_COLUMNS
    } else {
        TARGET_COLUMNS
    };
    let nb = images_per_task(g.n, ohw, target);
    let par = gemm_parallelism(g.n.div_ceil(nb));
    out.par_chunks_mut(nb * g.out_image())
        .enumerate()
        .for_each(|(t, out_chunk)| {
            with_scratch(|scratch: &mut Scratch<T>| {
                let i0 = t * nb;
                let cnt = out_chunk.len() / g.out_image();
                let ld = cnt * ohw;
                for grp in 0..g.groups {
                    let wg = Mat {
                        ptr: w[grp * cout_g * k..].as_ptr(),
                        rs: k,
                        cs: 1,
                    };
                    let Scratch { col, stage, .. } = scratch;
                    if cnt == 1 && !g.is_pointwise() {
                        unfold_in_blocks(g, x, (i0, grp), col, wg, &mut out_chunk[..], post, par);
                        continue;
                    }
                    if cnt > 1 && g.groups == 1 && !g.is_pointwise() {
                        let stage = sized(stage, cout_g * ld);
                        unfold_in_channel_chunks(g, x, (i0, cnt), col, w, stage, par);
                        copy_out(g, stage, (cnt, grp), out_chunk, post);
                        continue;
                    }
                    let col = unfold_group(g, x, (i0, cnt, grp), col);
                    let rhs = Mat {
                        ptr: col.as_ptr(),
                        rs: ld,
                        cs: 1,
                    };
                    if cnt == 1 {
                        let block = match post {
                            Some(_) => ((64 << 10) / cout_g.max(1)).next_multiple_of(64).max(256),
                            None => ohw,
                        };
                        for c0 in (0..ohw).step_by(block.max(1)) {
                            let bw = block.min(ohw - c0);
                            let plane0 = grp * cout_g * ohw;
                            let dst = out_chunk[plane0 + c0..].as_mut_ptr();
                            let rhs = Mat {
                                ptr: col[c0..].as_ptr(),
                                ..rhs
                            };
                            // SAFETY: wg is cout_g × k inside w, col is k × ohw (columns c0 … c0 + bw
                            // read), dst is cout_g × ohw inside this image's output (the same
                            // columns written).
                            unsafe { sgemm((cout_g, bw, k), dst, ohw, false, wg, rhs, par) };
                            if let Some(post) = post {
                                for co in 0..cout_g {
                                    let row = &mut out_chunk[plane0 + co * ohw + c0..][..bw];
                                    post(grp * cout_g + co, row);
                                }
                            }
                        }
                    } else {
                        let stage = sized(stage, cout_g * ld);
                        // SAFETY: stage is cout_g × ld, col is k × ld.
                        unsafe {
                            sgemm((cout_g, ld, k), stage.as_mut_ptr(), ld, false, wg, rhs, par)
                        };
                        copy_out(g, stage, (cnt, grp), out_chunk, post);
                    }
                }
            })
        });
}

/// Group `grp`'s rows of the staged product (`cout_g × cnt·ohw`, images side by side) copied into
/// the `cnt` images of `out`, each row mapped by `post`.
fn copy_out<T: Element>(
    g: &ConvGeometry,
    stage: &[T],
    (cnt, grp): (usize, usize),
    out: &mut [T],
    post: Option<RowMap<'_, T>>,
) {
    let (ohw, cout_g) = (g.out_pixels(), g.cout_g());
    let ld = cnt * ohw;
    for i in 0..cnt {
        let img = &mut out[i * g.out_image() + grp * cout_g * ohw..];
        for co in 0..cout_g {
            let row = &mut img[co * ohw..][..ohw];
            row.copy_from_slice(&stage[co * ld + i * ohw..][..ohw]);
            if let Some(post) = post {
                post(grp * cout_g + co, row);
            }
        }
    }
}

/// Bytes of column matrix one task unfolds at a time for several images
/// ([`unfold_in_channel_chunks`]).
const COL_CHUNK_BYTES: usize = 1 << 20;

/// `stage = W · im2col(x)` for `cnt` images from `i0` (one group), unfolded a chunk of input
/// channels at a time (about [`COL_CHUNK_BYTES`] of column matrix) and accumulated chunk by chunk,
/// instead of the whole `c_in·k²`-deep column matrix at once: SE-ResNet-50's 3×3 stride-2 layer
/// of 512 channels at 14×14 unfolded 3.6 MB per task (4 images), its largest scratch at α = .75
/// (`octconv bench`: 8.0 MiB for 2 threads).
fn unfold_in_channel_chunks<T: Element>(
    g: &ConvGeometry,
    x: &[T],
    (i0, cnt): (usize, usize),
    col: &mut Vec<T>,
    w: &[T],
    stage: &mut [T],
    par: gemm::Parallelism,
) {
    let (ohw, k, kk) = (g.out_pixels(), g.k(), g.kh * g.kw);
    let ld = cnt * ohw;
    let per_channel = kk * ld * std::mem::size_of::<T>();
    let chunks = (g.c_in * per_channel)
        .div_ceil(COL_CHUNK_BYTES)
        .clamp(1, g.c_in.max(1));
    let chunk = g.c_in.div_ceil(chunks);
    for c0 in (0..g.c_in).step_by(chunk.max(1)) {
        let cc = chunk.min(g.c_in - c0);
        // The geometry of channels c0 … c0 + cc alone: `im2col` reads planes c0 + c of each image.
        let part = ConvGeometry { c_in: cc, ..*g };
        let col = sized(col, cc * kk * ld);
        for i in 0..cnt {
            im2col(&part, &x[(i0 + i) * g.in_image()..], c0, col, ld, i * ohw);
        }
        let lhs = Mat {
            ptr: w[c0 * kk..].as_ptr(),
            rs: k,
            cs: 1,
        };
        let rhs = Mat {
            ptr: col.as_ptr(),
            rs: ld,
            cs: 1,
        };
        // SAFETY: lhs is columns c0·kk … (c0 + cc)·kk of the c_out × k weights, col is
        // cc·kk × ld, stage is c_out × ld (written by the first chunk, accumulated after).
        unsafe {
            sgemm(
                (g.c_out, ld, cc * kk),
                stage.as_mut_ptr(),
                ld,
                c0 > 0,
                lhs,
                rhs,
                par,
            )
        };
    }
}

/// Bytes of column matrix unfolded at a time for one image ([`unfold_in_blocks`]).
const UNFOLD_BLOCK_BYTES: usize = 256 << 10;

/// Group `grp` of image `i0` (whose output is `out`) by im2col, unfolded a few output rows at a time
/// so that each block's column matrix (about [`UNFOLD_BLOCK_BYTES`]) is still in cache when its
/// GEMM reads it, and `post` applied to each row block after its GEMM. Unfolding the whole image
/// first wrote and re-read 7.4 MiB per image for a 7×7 stem (147 rows × 112² columns).
#[allow(clippy::too_many_arguments)]
fn unfold_in_blocks<T: Element>(
    g: &ConvGeometry,
    x: &[T],
    (i0, grp): (usize, usize),
    col: &mut Vec<T>,
    wg: Mat<T>,
    out: &mut [T],
    post: Option<RowMap<'_, T>>,
    par: gemm::Parallelism,
) {
    let (ow, oh, k, cout_g) = (g.ow(), g.oh(), g.k(), g.cout_g());
    let ohw = ow * oh;
    let per_row = k * ow * std::mem::size_of::<T>();
    let rows = (UNFOLD_BLOCK_BYTES / per_row.max(1)).clamp(1, oh.max(1));
    let img = &x[i0 * g.in_image()..];
    let plane0 = grp * cout_g * ohw;
    for oy0 in (0..oh).step_by(rows) {
        let oy1 = (oy0 + rows).min(oh);
        let bw = (oy1 - oy0) * ow;
        let col = sized(col, k * bw);
        im2col_rows(g, img, grp * g.cin_g(), col, bw, 0, oy0..oy1);
        let rhs = Mat {
            ptr: col.as_ptr(),
            rs: bw,
            cs: 1,
        };
        let dst = out[plane0 + oy0 * ow..].as_mut_ptr();
        // SAFETY: wg is cout_g × k, col is k × bw, dst is cout_g rows of this image's group output
        // (row stride ohw), columns oy0·ow … oy1·ow.
        unsafe { sgemm((cout_g, bw, k), dst, ohw, false, wg, rhs, par) };
        if let Some(post) = post {
            for co in 0..cout_g {
                post(
                    grp * cout_g + co,
                    &mut out[plane0 + co * ohw + oy0 * ow..][..bw],
                );
            }
        }
    }
}

/// The input gradient: `dx = conv2d_backward_data(dy, w)` (arguments: output gradient, weight).
#[derive(Clone, Copy, Debug)]
pub struct Conv2dBackwardData {
    /// The forward convolution's parameters.
    pub params: ConvParams,
    /// The forward input's height and width (not recoverable from the output with stride > 1).
    pub input_hw: (usize, usize),
}

impl CustomOp2 for Conv2dBackwardData {
    fn name(&self) -> &'static str {
        "octconv-conv2d-backward-data"
    }

    fn cpu_fwd(
        &self,
        dys: &CpuStorage,
        dyl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c_out, oh, ow) = dyl.shape().dims4()?;
        let wdims = wl.shape().dims4()?;
        let p = self.params;
        let (h, w) = self.input_hw;
        let g = ConvGeometry::new(
            (n, wdims.1 * p.groups, h, w),
            wdims,
            p.stride,
            p.pad,
            p.groups,
        )?;
        if (g.c_out, g.oh(), g.ow()) != (c_out, oh, ow) {
            bail!("conv2d backward: output gradient [{n}, {c_out}, {oh}, {ow}] does not match the forward geometry")
        }
        let dx = with_data(
            (dys, dyl),
            (ws, wl),
            |dy, w| dispatch_backward_data(&g, dy, w),
            |dy, w| dispatch_backward_data(&g, dy, w),
        )?;
        Ok((dx, Shape::from((g.n, g.c_in, g.h, g.w))))
    }
}

/// `dx` of `y = conv2d(x, w)` given `dy`, on raw NCHW data.
pub fn backward_data<T: Element>(g: &ConvGeometry, dy: &[T], w: &[T]) -> Vec<T> {
    let (ohw, k, cout_g) = (g.out_pixels(), g.k(), g.cout_g());
    let mut dx = vec![T::ZERO; g.n * g.in_image()];
    if dx.is_empty() {
        return dx;
    }
    let nb = images_per_task(g.n, ohw, TARGET_COLUMNS);
    let par = gemm_parallelism(g.n.div_ceil(nb));
    dx.par_chunks_mut(nb * g.in_image())
        .enumerate()
        .for_each(|(t, dx_chunk)| {
            with_scratch(|scratch: &mut Scratch<T>| {
                let i0 = t * nb;
                let cnt = dx_chunk.len() / g.in_image();
                let ld = cnt * ohw;
                for grp in 0..g.groups {
                    // Wᵀ: element (kidx, co) of group grp is w[(grp·cout_g + co)·k + kidx].
                    let wt = Mat {
                        ptr: w[grp * cout_g * k..].as_ptr(),
                        rs: 1,
                        cs: k,
                    };
                    let Scratch { col, stage, .. } = scratch;
                    let dy_g = gather_group(g, dy, (i0, cnt, grp), stage);
                    let rhs = Mat {
                        ptr: dy_g.as_ptr(),
                        rs: ld,
                        cs: 1,
                    };
                    if g.is_pointwise() && cnt == 1 {
                        let dst = dx_chunk[grp * k * ohw..].as_mut_ptr();
                        // SAFETY: dst is this group's k = cin_g channels of one image, k × ohw.
                        unsafe { sgemm((k, ohw, cout_g), dst, ohw, false, wt, rhs, par) };
                        continue;
                    }
                    let col = sized(col, k * ld);
                    // SAFETY: col is k × ld; wt is k × cout_g inside w; rhs is cout_g × ld.
                    unsafe { sgemm((k, ld, cout_g), col.as_mut_ptr(), ld, false, wt, rhs, par) };
                    for i in 0..cnt {
                        col2im(
                            g,
                            col,
                            ld,
                            i * ohw,
                            &mut dx_chunk[i * g.in_image()..],
                            grp * g.cin_g(),
                        );
                    }
                }
            })
        });
    dx
}

/// The weight gradient: `dw = conv2d_backward_filter(x, dy)` (arguments: forward input, output gradient).
#[derive(Clone, Copy, Debug)]
pub struct Conv2dBackwardFilter {
    /// The forward convolution's parameters.
    pub params: ConvParams,
    /// Kernel height and width.
    pub kernel: (usize, usize),
}

impl CustomOp2 for Conv2dBackwardFilter {
    fn name(&self) -> &'static str {
        "octconv-conv2d-backward-filter"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        dys: &CpuStorage,
        dyl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let xd = xl.shape().dims4()?;
        let (_, c_out, oh, ow) = dyl.shape().dims4()?;
        let p = self.params;
        if p.groups == 0 || xd.1 % p.groups != 0 {
            bail!(
                "conv2d backward: {} input channels do not split into {} groups",
                xd.1,
                p.groups
            )
        }
        let wdims = (c_out, xd.1 / p.groups, self.kernel.0, self.kernel.1);
        let g = ConvGeometry::new(xd, wdims, p.stride, p.pad, p.groups)?;
        if (g.oh(), g.ow()) != (oh, ow) {
            bail!("conv2d backward: output gradient {oh}×{ow} does not match the forward geometry")
        }
        let dw = with_data(
            (xs, xl),
            (dys, dyl),
            |x, dy| dispatch_backward_filter(&g, x, dy),
            |x, dy| dispatch_backward_filter(&g, x, dy),
        )?;
        Ok((dw, Shape::from(wdims)))
    }
}

/// `dw` of `y = conv2d(x, w)` given `dy`, on raw NCHW data.
pub fn backward_filter<T: Element>(g: &ConvGeometry, x: &[T], dy: &[T]) -> Vec<T> {
    let (ohw, k, cout_g) = (g.out_pixels(), g.k(), g.cout_g());
    let wlen = g.c_out * k;
    if g.n == 0 || ohw == 0 {
        return vec![T::ZERO; wlen];
    }
    let nb = images_per_task(g.n, ohw, TARGET_COLUMNS);
    let par = gemm_parallelism(g.n.div_ceil(nb));
    sum_tasks(g.n.div_ceil(nb), wlen, |t, scratch, dw| {
        let i0 = t * nb;
        let cnt = nb.min(g.n - i0);
        let ld = cnt * ohw;
        for grp in 0..g.groups {
            let Scratch { col, stage, .. } = scratch;
            let dy_g = gather_group(g, dy, (i0, cnt, grp), stage);
            let colm = unfold_group(g, x, (i0, cnt, grp), col);
            let lhs = Mat {
                ptr: dy_g.as_ptr(),
                rs: ld,
                cs: 1,
            };
            // col(X)ᵀ: element (pixel, kidx) is col[kidx·ld + pixel].
            let rhs = Mat {
                ptr: colm.as_ptr(),
                rs: 1,
                cs: ld,
            };
            let dst = dw[grp * cout_g * k..].as_mut_ptr();
            // SAFETY: dst is cout_g × k inside dw; lhs is cout_g × ld; rhs is ld × k.
            unsafe { sgemm((cout_g, k, ld), dst, k, true, lhs, rhs, par) };
        }
    })
}
