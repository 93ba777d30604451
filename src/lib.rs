//! # octconv
//!
//! Octave Convolution networks (Chen et al. 2019, "Drop an Octave") that are checked before they run.
//!
//! This facade crate re-exports the spec language and checker ([`spec`]); the candle runtime and the
//! `octnet!` macro join it as they land (see the workspace members `octconv-runtime` and
//! `octconv-macros`). The `octconv` binary is the command-line interface.

pub use octconv_spec as spec;
pub use octconv_spec::{check, check_builtin, check_text, CheckRequest, Checked, SpecInput};
