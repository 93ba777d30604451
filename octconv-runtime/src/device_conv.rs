//! The convolution where our CPU kernels do not run (CUDA above all, and dtypes other than f32 and
//! f64): candle's own forward, with a backward of our own.
//!
//! candle 0.11 computes a convolution's input gradient with its `conv_transpose2d`, which is a
//! direct loop (on CUDA, one thread per input element looping over every output channel and tap,
//! with no GEMM), and fails outright when `(h + 2·pad − k)` is not a multiple of the stride. Here:
//! - the input gradient is a stride-1 convolution of the output gradient (with `stride − 1` zeros
//!   inserted between its elements when the stride is larger) with the flipped, transposed kernel,
//!   which candle runs as im2col + GEMM (cuBLAS), or cuDNN;
//! - the weight gradient is one GEMM, `dYᵀ · im2col(x)`, with the columns taken by `unfold` views of
//!   the padded input, instead of candle's convolution of the transposed input by the transposed
//!   output gradient (a batched GEMM with as few rows as the kernel has taps).
//!
//! `OCTCONV_DEVICE_CONV_BWD=candle` (read once) keeps candle's own backward, for A/B timings.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CudaStorage, CustomOp3, Layout, Result, Shape, Tensor};

/// Whether candle's own convolution backward is asked for (`OCTCONV_DEVICE_CONV_BWD=candle`).
fn candle_backward() -> bool {
    static CANDLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *CANDLE.get_or_init(|| std::env::var("OCTCONV_DEVICE_CONV_BWD").as_deref() == Ok("candle"))
}

/// `conv2d(x, w)` (square kernels, any stride, padding and groups) on candle's forward, with the
/// backward described in the module docs.
pub fn conv2d(x: &Tensor, w: &Tensor, pad: usize, stride: usize, groups: usize) -> Result<Tensor> {
    let (_, _, kh, kw) = w.dims4()?;
    if candle_backward() || kh != kw || pad >= kh || !(x.track_op() || w.track_op()) {
        return x.conv2d(w, pad, stride, 1, groups);
    }
    if groups == 1 {
        return one_group(x, w, pad, stride);
    }
    // As candle does for groups: one convolution per group, concatenated.
    let xs = x.chunk(groups, 1)?;
    let ws = w.chunk(groups, 0)?;
    let ys = xs
        .iter()
        .zip(&ws)
        .map(|(x, w)| one_group(x, w, pad, stride))
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&ys, 1)
}

fn one_group(x: &Tensor, w: &Tensor, pad: usize, stride: usize) -> Result<Tensor> {
    let y = x.detach().conv2d(&w.detach(), pad, stride, 1, 1)?;
    x.apply_op3(w, &y.contiguous()?, ConvWithBackward { pad, stride })
}

/// The forward is the convolution already computed (the third argument, copied); the backward is
/// [`input_grad`] and [`weight_grad`].
struct ConvWithBackward {
    pad: usize,
    stride: usize,
}

impl CustomOp3 for ConvWithBackward {
    fn name(&self) -> &'static str {
        "octconv-device-conv2d"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        y: &CpuStorage,
        ly: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        Ok((y.try_clone(ly)?, ly.shape().clone()))
    }

    fn cuda_fwd(
        &self,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
        y: &CudaStorage,
        ly: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        Ok((y.try_clone(ly)?, ly.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dx = if x.track_op() {
            let (_, _, h, wd) = x.dims4()?;
            Some(input_grad(grad, w, (h, wd), self.pad, self.stride)?)
        } else {
            None
        };
        let dw = if w.track_op() {
            Some(weight_grad(x, grad, w.dims4()?.2, self.pad, self.stride)?)
        } else {
            None
        };
        Ok((dx, dw, None))
    }
}

/// `g` (`[N, C, H, W]`) with `s − 1` zeros between neighbouring elements along both spatial axes.
fn spread(g: &Tensor, s: usize) -> Result<Tensor> {
    if s == 1 {
        return Ok(g.clone());
    }
    let (n, c, h, w) = g.dims4()?;
    let zeros = g.zeros_like()?;
    let parts: Vec<&Tensor> = std::iter::once(g)
        .chain(std::iter::repeat_n(&zeros, s - 1))
        .collect();
    let g = Tensor::stack(&parts, 4)?
        .reshape((n, c, h, w * s))?
        .narrow(3, 0, (w - 1) * s + 1)?;
    let zeros = g.zeros_like()?;
    let parts: Vec<&Tensor> = std::iter::once(&g)
        .chain(std::iter::repeat_n(&zeros, s - 1))
        .collect();
    let w2 = (w - 1) * s + 1;
    Tensor::stack(&parts, 3)?
        .reshape((n, c, h * s, w2))?
        .narrow(2, 0, (h - 1) * s + 1)
}

/// dL/dx of `y = conv2d(x, w, pad, stride)` for an input of `(h, w)`: the spread output gradient
/// convolved (stride 1, padding `k − 1 − pad`) with the kernel flipped in space and with its two
/// channel axes swapped. Rows and columns of `x` that no output reads (when `h + 2·pad − k` is not
/// a multiple of the stride) get zeros from the extra padding at the end.
fn input_grad(
    grad: &Tensor,
    w: &Tensor,
    (h, wd): (usize, usize),
    pad: usize,
    stride: usize,
) -> Result<Tensor> {
    let k = w.dim(2)?;
    let (_, _, ho, wo) = grad.dims4()?;
    let g = spread(grad, stride)?;
    let covered = |o: usize| (o - 1) * stride + k - 2 * pad;
    let (rh, rw) = (h - covered(ho), wd - covered(wo));
    let g = if rh > 0 || rw > 0 {
        g.pad_with_zeros(2, 0, rh)?.pad_with_zeros(3, 0, rw)?
    } else {
        g
    };
    let wt = w.flip(&[2, 3])?.transpose(0, 1)?.contiguous()?;
    g.conv2d(&wt, k - 1 - pad, 1, 1, 1)
}

/// dL/dw of `y = conv2d(x, w, pad, stride)`: `dYᵀ · im2col(x)` as one GEMM, the columns taken by
/// `unfold` views of the padded input.
fn weight_grad(x: &Tensor, grad: &Tensor, k: usize, pad: usize, stride: usize) -> Result<Tensor> {
    let (n, c, _, _) = x.dims4()?;
    let (_, o, ho, wo) = grad.dims4()?;
    let xp = x
        .detach()
        .pad_with_zeros(2, pad, pad)?
        .pad_with_zeros(3, pad, pad)?;
    // [N, C, Ho, Wo, k, k] → [N, Ho, Wo, C, k, k] → [N·Ho·Wo, C·k·k]
    let cols = xp
        .unfold(2, k, stride)?
        .unfold(3, k, stride)?
        .narrow(2, 0, ho)?
        .narrow(3, 0, wo)?
        .permute((0, 2, 3, 1, 4, 5))?
        .contiguous()?
        .reshape((n * ho * wo, c * k * k))?;
    // [O, N·Ho·Wo]
    let g = grad
        .transpose(0, 1)?
        .contiguous()?
        .reshape((o, n * ho * wo))?;
    g.matmul(&cols)?.reshape((o, c, k, k))
}
