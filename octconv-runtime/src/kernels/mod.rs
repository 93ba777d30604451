//! Our own CPU kernels behind candle custom ops, with forward and backward passes.
//!
//! candle 0.11's CPU convolution is 3–5× slower than the GEMM it could run (see [`conv2d`]); these
//! kernels keep candle's semantics and parameter layout, so a layer can switch between them and
//! candle's ops (any device other than the CPU, any dtype other than f32 and f64) without changing its weights.

pub mod batch_norm;
pub mod clamp;
pub mod conv2d;
pub mod depthwise;
pub mod direct;
pub mod elementwise;
pub mod epilogue;
pub mod expand_depthwise;
pub mod gemm;
pub mod geometry;
pub mod grouped;
pub mod grouped_channels;
pub mod grouped_octave;
pub mod max_pool;
pub mod octave;
pub mod pointwise;
pub mod pointwise_pooled;
pub mod prologue;
pub mod resample;
pub mod scratch;
pub mod simd;
pub mod stem;
pub mod tiling;
pub mod timing;
pub mod transpose;
pub mod unfold;
pub mod winograd;
pub mod winograd4;
mod winograd_input;
mod winograd_output;

pub use conv2d::{conv2d, ConvParams};
pub use geometry::ConvGeometry;

use candle_core::{Result, Tensor};
use std::sync::atomic::{AtomicU8, Ordering};

/// 0: not decided yet (read `OCTCONV_KERNELS` on first use), 1: our kernels on, 2: off.
static OWN_KERNELS: AtomicU8 = AtomicU8::new(0);

/// Whether our CPU kernels may run at all in this process: yes unless `OCTCONV_KERNELS=candle`
/// (read once) or [`set_enabled`]`(false)`. Off, every layer on the CPU runs exactly the candle ops
/// that every other device (CUDA) runs, which makes that path testable without a GPU
/// (`octconv parity --device cpu`, `tests/candle_path.rs`).
pub fn enabled() -> bool {
    match OWN_KERNELS.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => {
            let on = std::env::var("OCTCONV_KERNELS").as_deref() != Ok("candle");
            // A concurrent `set_enabled` wins over the environment.
            let _ = OWN_KERNELS.compare_exchange(
                0,
                if on { 1 } else { 2 },
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            OWN_KERNELS.load(Ordering::Relaxed) == 1
        }
    }
}

/// Switches our CPU kernels on or off for the whole process (see [`enabled`]). Models already built
/// follow the switch at their next call.
pub fn set_enabled(on: bool) {
    OWN_KERNELS.store(if on { 1 } else { 2 }, Ordering::Relaxed);
}

/// Whether our kernels serve a tensor on `device`: the CPU, with the kernels [`enabled`]. The dtype
/// checks stay with each caller (some kernels take f32 and f64, some f32 only).
pub fn serves(device: &candle_core::Device) -> bool {
    device.is_cpu() && enabled()
}

/// Whether our f32 kernels serve `t`: an f32 tensor on a device our kernels [`serves`].
pub fn serves_f32(t: &Tensor) -> bool {
    serves(t.device()) && t.dtype() == candle_core::DType::F32
}

/// Runs `f` on the contiguous f32 data of a CPU tensor.
pub(crate) fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    with_f32_all([t], |[v]| f(v))
}

/// Runs `f(data, image)` on an f32 CPU tensor of at least two dimensions whose images are each
/// contiguous ([`batch_norm::images_contiguous`]: a contiguous tensor, or the first channels of a
/// concatenation chain's buffer): `data` starts at its first value and `image` is the distance between
/// images. Any other layout is made contiguous first.
pub(crate) fn with_images_f32<R>(t: &Tensor, f: impl FnOnce(&[f32], usize) -> R) -> Result<R> {
    let t = match batch_norm::images_contiguous(t.layout()) {
        true => t.clone(),
        false => t.contiguous()?,
    };
    let (storage, layout) = t.storage_and_layout();
    let Some((start, len, image)) = batch_norm::image_span(layout) else {
        candle_core::bail!("expected a batch of images, got shape {:?}", t.dims())
    };
    match &*storage {
        candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)) if start + len <= v.len() => {
            Ok(f(&v[start..start + len], image))
        }
        _ => candle_core::bail!("expected an f32 CPU tensor with contiguous images"),
    }
}

/// Runs `f` on the contiguous f32 data of any number of CPU tensors at once.
pub(crate) fn with_f32_many<R>(ts: &[&Tensor], f: impl FnOnce(&[&[f32]]) -> R) -> Result<R> {
    let ts = ts
        .iter()
        .map(|t| t.contiguous())
        .collect::<Result<Vec<_>>>()?;
    let guards: Vec<_> = ts.iter().map(|t| t.storage_and_layout()).collect();
    let mut slices: Vec<&[f32]> = Vec::with_capacity(ts.len());
    for (storage, layout) in &guards {
        match (&**storage, layout.contiguous_offsets()) {
            (candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)), Some((a, b))) => {
                slices.push(&v[a..b])
            }
            _ => candle_core::bail!("expected a contiguous f32 CPU tensor"),
        }
    }
    Ok(f(&slices))
}

/// Runs `f` on the contiguous f32 data of `K` CPU tensors at once.
pub(crate) fn with_f32_all<const K: usize, R>(
    ts: [&Tensor; K],
    f: impl FnOnce([&[f32]; K]) -> R,
) -> Result<R> {
    with_f32_many(&ts, |slices| match <[&[f32]; K]>::try_from(slices) {
        Ok(slices) => Ok(f(slices)),
        Err(_) => candle_core::bail!("internal error: {K} tensors expected"),
    })?
}

/// The element types our kernels run on (the `gemm` crate's real types).
pub trait Element:
    Copy
    + Send
    + Sync
    + 'static
    + std::ops::AddAssign
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + PartialOrd
    + scratch::ScratchPool
{
    /// Additive identity.
    const ZERO: Self;
    /// Multiplicative identity.
    const ONE: Self;
    /// One half (Winograd's kernel transform).
    const HALF: Self;
    /// The nearest value of this type.
    fn from_f64(v: f64) -> Self;
    /// `v` itself where `Self` is f32 (for a kernel's f32-only SIMD build), else `None`.
    fn as_f32(v: &[Self]) -> Option<&[f32]>;
    /// [`Element::as_f32`] of a mutable slice.
    fn as_f32_mut(v: &mut [Self]) -> Option<&mut [f32]>;
}

impl Element for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const HALF: Self = 0.5;
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn as_f32(v: &[Self]) -> Option<&[f32]> {
        Some(v)
    }
    fn as_f32_mut(v: &mut [Self]) -> Option<&mut [f32]> {
        Some(v)
    }
}

impl Element for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const HALF: Self = 0.5;
    fn from_f64(v: f64) -> Self {
        v
    }
    fn as_f32(_: &[Self]) -> Option<&[f32]> {
        None
    }
    fn as_f32_mut(_: &mut [Self]) -> Option<&mut [f32]> {
        None
    }
}

/// Deterministic values in [-1, 1) for the kernels' unit tests (a linear congruential generator).
#[cfg(test)]
pub(crate) fn test_values(n: usize, seed: u64) -> Vec<f64> {
    const A: u64 = 6364136223846793005;
    const C: u64 = 1442695040888963407;
    let mut s = seed.wrapping_mul(A).wrapping_add(C);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(A).wrapping_add(C);
            ((s >> 40) as f64 / (1u64 << 24) as f64) * 2.0 - 1.0
        })
        .collect()
}
