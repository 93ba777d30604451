//! Our own CPU kernels behind candle custom ops, with forward and backward passes.
//!
//! candle 0.11's CPU convolution is 3–5× slower than the GEMM it could run (see [`conv2d`]); these
//! kernels keep candle's semantics and parameter layout, so a layer can switch between them and
//! candle's ops (any device other than the CPU, any dtype other than f32 and f64) without changing its weights.

pub mod conv2d;
pub mod geometry;
pub mod unfold;

pub use conv2d::{conv2d, ConvParams};
pub use geometry::ConvGeometry;

/// The element types our kernels run on (the `gemm` crate's real types).
pub trait Element: Copy + Send + Sync + std::ops::AddAssign + 'static {
    /// Additive identity.
    const ZERO: Self;
    /// Multiplicative identity.
    const ONE: Self;
}

impl Element for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
}

impl Element for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
}
