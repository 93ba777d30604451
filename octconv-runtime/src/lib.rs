//! Octave layers and the spec interpreter on candle.
//!
//! Placeholder crate that fixes the workspace layout. The runtime is issue #3: it will build candle
//! modules from the IR of [`octconv_spec`] (candle 0.11, CPU first, CUDA behind a feature). Nothing is
//! exported yet.
