//! Deterministic initialisation from a seed: Kaiming-normal convolution weights (for an OctConv path
//! the fan-in counts both paths into its output branch, as for the plain convolution it replaces),
//! LeCun-normal classifier weights, zero biases, BN weight 1 and bias 0, running mean 0 and
//! variance 1.
//!
//! Every parameter draws from its own ChaCha8 stream (the seed, with the stream chosen by a hash of the
//! parameter's name), so the same seed gives the same weights on any machine, and adding a layer does
//! not change the initial values of the others.

use candle_core::{DType, Device, Result, Tensor};
use octconv_spec::params::{model_params, Init, ParamInfo};
use octconv_spec::Model;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use std::collections::HashMap;

/// FNV-1a of a parameter name: its RNG stream.
fn stream_of(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The initial value of one parameter.
pub fn init_param(p: &ParamInfo, seed: u64, dtype: DType, device: &Device) -> Result<Tensor> {
    let n = p.numel() as usize;
    let values: Vec<f32> = match p.init {
        Init::Zeros => vec![0.0; n],
        Init::Ones => vec![1.0; n],
        Init::KaimingNormal { fan_in } | Init::LecunNormal { fan_in } => {
            let gain = if matches!(p.init, Init::KaimingNormal { .. }) {
                2.0
            } else {
                1.0
            };
            let std = (gain / fan_in.max(1) as f64).sqrt();
            let normal =
                Normal::new(0.0, std).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            rng.set_stream(stream_of(&p.name));
            (0..n).map(|_| normal.sample(&mut rng) as f32).collect()
        }
    };
    Tensor::from_vec(values, p.shape.clone(), device)?.to_dtype(dtype)
}

/// Initial values of every parameter and buffer of `model`, by name.
pub fn init_params(
    model: &Model,
    seed: u64,
    dtype: DType,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    model_params(model)
        .iter()
        .map(|p| Ok((p.name.clone(), init_param(p, seed, dtype, device)?)))
        .collect()
}
