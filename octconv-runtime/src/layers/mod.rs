//! Octave layers on candle: the layers with parameters or kernels in a module each (`octconv`,
//! `transpose`, `batch_norm`, `conv`, `pool`, `activation`, `dropout`, `head`), the parameter-free
//! graph layers (`Split`, `Merge`, `Add`, `Concat`, …) together in `layer`, with the [`OctLayer`]
//! trait and the one IR-to-runtime dispatch. Every layer works on [`OctValue`]s and can be used on its
//! own (build it from a [`VarBuilder`] with the parameter names of [`octconv_spec::params`]).
//!
//! [`OctValue`]: crate::value::OctValue
//! [`VarBuilder`]: candle_nn::VarBuilder

pub mod activation;
pub(crate) mod adjoint;
pub mod batch_norm;
pub mod conv;
pub mod dropout;
pub mod graph;
pub mod head;
pub mod layer;
pub mod octave;
pub mod octconv;
pub mod output_stage;
pub mod pool;
pub mod transpose;

pub use activation::Activation;
pub use batch_norm::{BatchNorm2d, InputMap, OctBatchNorm};
pub use conv::Conv2d;
pub use dropout::{Dropout, DropoutRng};
pub use graph::{add, concat, scale, scale_add_infer};
pub use head::{flatten, global_avg_pool, Linear};
pub use layer::{build, build_json, build_op, OctLayer};
pub use octave::{merge, merge_low, pyramid, split, upsample};
pub use octconv::OctConv2d;
pub use output_stage::{MeansOut, OutputStage};
pub use pool::{Pool, PoolKind};
pub use transpose::OctConvTranspose2d;
