//! # octconv-spec
//!
//! The `.oct` spec language of [octconv](https://github.com/octconv/octconv): a pest grammar, an
//! elaborator and checker that treats octave pairs (high/low frequency branches) as a type, a flat IR,
//! and the cost model (parameters, MACs, activation memory). No candle, no proc-macro: the CLI, the
//! runtime interpreter and the `octnet!` macro all share this crate, so every rule lives in one place:
//!
//! | rule | where |
//! |---|---|
//! | channel split `low = floor(α·c)` | [`shape::channel_split`] |
//! | shape rules of each layer | `layers/*.rs` (one module per layer family) |
//! | OctConv geometry (stride 2, odd sizes) | `layers/octconv.rs` |
//! | residual shortcut rule | [`elab`] (identity, else a 1×1 octconv projection) |
//! | parameters, MACs, memory | [`cost`] |
//!
//! ```
//! let checked = octconv_spec::check_builtin("wrn(n = 4, k = 10, alpha = 0.25)");
//! assert!(checked.ok());
//! let model = checked.model.unwrap();
//! assert_eq!(model.input.c, 3);
//! assert!((36_000_000..37_000_000).contains(&model.params()));
//! ```

// Diagnostics travel in `Result::Err` on cold paths only (a spec error ends that layer's checking);
// their size does not matter there, and boxing them would obscure every constructor.
#![allow(clippy::result_large_err)]

pub mod bind;
pub mod builtins;
pub mod check;
pub mod codegen;
pub mod cost;
pub mod diag;
pub mod elab;
pub mod eval;
pub mod ir;
pub mod layers;
pub mod loader;
pub mod param_info;
pub mod params;
pub mod plan;
pub mod report;
pub mod shape;
pub mod source;
pub mod suggest;
pub mod syntax;
pub mod value;

pub use check::{check, check_builtin, check_text, CheckRequest, Checked, SpecInput};
pub use diag::{DiagKind, Diagnostic, Severity};
pub use ir::{Layer, Model, Op};
pub use report::Report;
pub use shape::{channel_split, Dims, Shape};
pub use syntax::ast;
