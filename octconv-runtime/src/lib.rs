//! # octconv-runtime
//!
//! Octave layers on candle 0.11 and an interpreter that turns any checked `.oct` spec into a candle
//! [`ModuleT`](candle_core::ModuleT).
//!
//! ```no_run
//! use candle_core::{Device, DType, ModuleT, Tensor};
//! let checked = octconv_spec::check_builtin("wrn(n = 1, k = 1, alpha = 0.25)");
//! let ir = checked.model.expect("valid spec");
//! let params = octconv_runtime::init::init_params(&ir, 42, DType::F32, &Device::Cpu)?;
//! let vb = candle_nn::VarBuilder::from_tensors(params, DType::F32, &Device::Cpu);
//! let model = octconv_runtime::OctModel::new(ir, vb)?;
//! let x = Tensor::zeros((2, 3, 32, 32), DType::F32, &Device::Cpu)?;
//! let logits = model.forward_t(&x, false)?; // [2, 10]
//! # Ok::<(), candle_core::Error>(())
//! ```
//!
//! Parameter names are the IR layer names plus the suffixes documented in [`octconv_spec::params`]
//! (`wide0.res0.octconv0.hh.weight`, `bn0.h.running_var`, …).

pub mod data;
pub mod device;
pub mod device_conv;
pub mod exec;
pub mod import;
pub mod init;
pub mod kernels;
pub mod layers;
pub mod malloc;
pub mod model;
pub mod onnx;
pub mod ops;
pub mod optim;
pub mod segment;
pub mod tape;
pub mod threads;
pub mod train;
pub mod value;
pub mod weights;

pub use model::OctModel;

/// Panics with a clear message if `value` does not have the shape the checker computed; the code that
/// `octnet!` generates calls it after every layer in debug builds.
pub fn debug_assert_shape(value: &OctValue, layer: &str, expected: octconv_spec::Shape) {
    let actual = value.shape();
    assert!(
        actual == expected,
        "octnet: layer `{layer}` produced {actual}, but the spec says {expected}"
    );
}
pub use value::OctValue;
