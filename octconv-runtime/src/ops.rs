//! Functional building blocks: nearest ×2 upsampling with a correct gradient, 2×2 average pooling, and
//! padded pooling.

use candle_core::{Result, Tensor};

/// Nearest-neighbour ×2 upsampling of `[N, C, H, W]` as reshape → broadcast → reshape.
///
/// candle 0.11's `upsample_nearest2d` backward overwrites the incoming gradient instead of adding to it
/// (measured: dL/dz = 4 instead of 5 for `sum(up(z)) + sum(z)`), which breaks the L→H path whenever the
/// low input is also used elsewhere; the broadcast formulation is exact, its gradient (a sum over each
/// 2×2 block) is correct, and it is faster.
pub fn upsample_nearest2x(x: &Tensor) -> Result<Tensor> {
    upsample_nearest(x, 2)
}

/// Nearest-neighbour upsampling of `[N, C, H, W]` by `s` per side, as [`upsample_nearest2x`].
pub fn upsample_nearest(x: &Tensor, s: usize) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    x.reshape((n, c, h, 1, w, 1))?
        .broadcast_as((n, c, h, s, w, s))?
        .reshape((n, c, s * h, s * w))
}

/// Whether our CPU kernels handle `t` (f32 or f64 on the CPU); other tensors use candle's ops.
fn own_kernel(t: &Tensor) -> bool {
    crate::kernels::serves(t.device())
        && matches!(t.dtype(), candle_core::DType::F32 | candle_core::DType::F64)
}

/// 2×2 average pooling with stride 2 (the octave down-sampling).
pub fn avg_pool2x2(x: &Tensor) -> Result<Tensor> {
    if own_kernel(x) {
        x.contiguous()?
            .apply_op1(crate::kernels::resample::Pool2x2::AVG)
    } else {
        x.avg_pool2d(2)
    }
}

/// `high + upsample_nearest2x(low)`: the L→H merge, one pass on the CPU.
pub fn add_upsampled(high: &Tensor, low: &Tensor) -> Result<Tensor> {
    if own_kernel(high) && high.dtype() == low.dtype() {
        high.contiguous()?
            .apply_op2(&low.contiguous()?, crate::kernels::resample::AddUpsampled)
    } else {
        high + upsample_nearest2x(low)?
    }
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
    let x = pad_spatial(x, padding, 0.0)?;
    let (_, _, h, w) = x.dims4()?;
    // candle 0.11's average-pool backward spreads the gradient by nearest-neighbour upsampling to
    // the input's size, which misplaces it where the side is not a multiple of the window (7×7 → 3×3:
    // input column 2 got output column 0's gradient; `tests/train_record_ops.rs`): there the sum of
    // strided windows below, whose gradient is right.
    if kernel == stride && h % kernel == 0 && w % kernel == 0 {
        // 2×2 on the CPU: our threaded kernel (candle's runs on one thread: the seed WRN's two
        // average pools were 0.67 ms, 4.8 % of its α = .5 pass at batch 32), which sums each
        // window in candle's order, so the values are the same bit for bit.
        if kernel == 2 {
            return avg_pool2x2(&x);
        }
        return x.avg_pool2d_with_stride(kernel, stride);
    }
    let mut sum: Option<Tensor> = None;
    for w in windows(&x, kernel, stride)? {
        sum = Some(match sum {
            Some(s) => (s + w)?,
            None => w,
        });
    }
    sum.expect("kernel >= 1") / (kernel * kernel) as f64
}

/// Max pooling; padding never wins (it is −∞).
pub fn max_pool(x: &Tensor, kernel: usize, stride: usize, padding: usize) -> Result<Tensor> {
    if own_kernel(x) {
        let op = crate::kernels::max_pool::MaxPool {
            kernel,
            stride,
            padding,
        };
        return x.contiguous()?.apply_op1(op);
    }
    let x = pad_spatial(x, padding, f64::NEG_INFINITY)?;
    // candle 0.11's max-pool backward multiplies each gradient by (number of maxima) / kernel²
    // instead of dividing it by the number of maxima (a 2×2 pool passed back a quarter of the
    // gradient: the U-Net's down-sampling on every device but the CPU); its forward is right.
    if kernel == stride && !x.track_op() {
        return x.max_pool2d_with_stride(kernel, stride);
    }
    let mut best: Option<Tensor> = None;
    for w in windows(&x, kernel, stride)? {
        best = Some(match best {
            Some(b) => b.maximum(&w)?,
            None => w,
        });
    }
    Ok(best.expect("kernel >= 1"))
}

/// The `kernel²` shifted, strided views of `x` whose element-wise max or mean is the pooled map.
///
/// candle 0.11's pooling backward supports only `kernel == stride` (it bails otherwise, e.g. for the
/// ResNet stem's 3×3 / 2 max pool); built from `narrow` and `reshape`, these views have exact
/// gradients for any window.
fn windows(x: &Tensor, kernel: usize, stride: usize) -> Result<Vec<Tensor>> {
    let (n, c, h, w) = x.dims4()?;
    if kernel > h || kernel > w {
        candle_core::bail!("pooling window {kernel} is larger than the {h}×{w} map");
    }
    let (ho, wo) = ((h - kernel) / stride + 1, (w - kernel) / stride + 1);
    // Pad at the end so every shifted view spans `stride · out` rows and columns.
    let (need_h, need_w) = (kernel - 1 + stride * ho, kernel - 1 + stride * wo);
    let x = x
        .pad_with_zeros(2, 0, need_h.saturating_sub(h))?
        .pad_with_zeros(3, 0, need_w.saturating_sub(w))?;
    let mut out = Vec::with_capacity(kernel * kernel);
    for ky in 0..kernel {
        let rows = x
            .narrow(2, ky, stride * ho)?
            .reshape((n, c, ho, stride, x.dim(3)?))?
            .narrow(3, 0, 1)?
            .squeeze(3)?;
        for kx in 0..kernel {
            let v = rows
                .narrow(3, kx, stride * wo)?
                .reshape((n, c, ho, wo, stride))?
                .narrow(4, 0, 1)?
                .squeeze(4)?;
            out.push(v);
        }
    }
    Ok(out)
}
