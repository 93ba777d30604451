//! Functional building blocks: nearest ×2 upsampling with a correct gradient, 2×2 average pooling, and
//! padded pooling.

use candle_core::{Result, Tensor};

/// Nearest-neighbour ×2 upsampling of `[N, C, H, W]` as reshape → broadcast → reshape.
///
/// candle 0.11's `upsample_nearest2d` backward overwrites the incoming gradient instead of adding to it
/// (see DEVELOPERS.md), which breaks the L→H path whenever the low input is also used elsewhere; the
/// broadcast formulation is exact, its gradient (a sum over each 2×2 block) is correct, and it is faster.
pub fn upsample_nearest2x(x: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    x.reshape((n, c, h, 1, w, 1))?
        .broadcast_as((n, c, h, 2, w, 2))?
        .reshape((n, c, 2 * h, 2 * w))
}

/// 2×2 average pooling with stride 2 (the octave down-sampling).
pub fn avg_pool2x2(x: &Tensor) -> Result<Tensor> {
    x.avg_pool2d(2)
}

/// Pads the two spatial dimensions of `[N, C, H, W]` by `p` on each side with `value`.
pub fn pad_spatial(x: &Tensor, p: usize, value: f64) -> Result<Tensor> {
    if p == 0 {
        return Ok(x.clone());
    }
    let (n, c, h, w) = x.dims4()?;
    let rows = Tensor::full(value, (n, c, p, w), x.device())?.to_dtype(x.dtype())?;
    let x = Tensor::cat(&[&rows, x, &rows], 2)?;
    let cols = Tensor::full(value, (n, c, h + 2 * p, p), x.device())?.to_dtype(x.dtype())?;
    Tensor::cat(&[&cols, &x, &cols], 3)
}

/// Average pooling; padding counts as zeros (PyTorch's `count_include_pad = True`).
pub fn avg_pool(x: &Tensor, kernel: usize, stride: usize, padding: usize) -> Result<Tensor> {
    pad_spatial(x, padding, 0.0)?.avg_pool2d_with_stride(kernel, stride)
}

/// Max pooling; padding never wins (it is −∞).
pub fn max_pool(x: &Tensor, kernel: usize, stride: usize, padding: usize) -> Result<Tensor> {
    pad_spatial(x, padding, f64::NEG_INFINITY)?.max_pool2d_with_stride(kernel, stride)
}
