//! Our own CPU kernels behind candle custom ops, with forward and backward passes.
//!
//! candle 0.11's CPU convolution is 3–5× slower than the GEMM it could run (see [`conv2d`]); these
//! kernels keep candle's semantics and parameter layout, so a layer can switch between them and
//! candle's ops (any device other than the CPU, any dtype other than f32 and f64) without changing its weights.

pub mod batch_norm;
pub mod conv2d;
pub mod gemm;
pub mod geometry;
pub mod octave;
pub mod prologue;
pub mod resample;
pub mod scratch;
pub mod tiling;
pub mod unfold;
pub mod winograd;
pub mod winograd4;

pub use conv2d::{conv2d, ConvParams};
pub use geometry::ConvGeometry;

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
}

impl Element for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const HALF: Self = 0.5;
    fn from_f64(v: f64) -> Self {
        v as f32
    }
}

impl Element for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const HALF: Self = 0.5;
    fn from_f64(v: f64) -> Self {
        v
    }
}
