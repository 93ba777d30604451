//! # octconv
//!
//! Octave Convolution networks (Chen et al. 2019, "Drop an Octave") that are checked before they run.
//!
//! This facade crate re-exports the spec language and checker ([`spec`]), the candle runtime
//! ([`runtime`]) and the exact `candle_core` / `candle_nn` versions it uses, so user code matches them.
//! The `octnet!` macro turns a spec into a candle module at compile time. The `octconv` binary is the
//! command-line interface.

pub use candle_core;
pub use candle_nn;
pub use octconv_macros::octnet;
pub use octconv_runtime as runtime;
pub use octconv_runtime::{OctModel, OctValue};
pub use octconv_spec as spec;
pub use octconv_spec::{check, check_builtin, check_text, CheckRequest, Checked, SpecInput};
