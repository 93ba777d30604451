//! Helpers of the tests of single octave layers in f32: seeded values, specs and layers with random
//! weights, and a value's numbers.
#![allow(dead_code)]

use candle_core::{Device, Tensor};
use octconv_runtime::layers::OctConv2d;
use octconv_runtime::OctValue;
use octconv_spec::ir::{Downsample, OctConvSpec, Path};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// An f32 tensor of `shape` with values uniform in [-1, 1).
pub fn f32_tensor(rng: &mut ChaCha8Rng, shape: &[usize]) -> Tensor {
    let n = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// A dense octave layer of channels `(in_h, in_l, out_h, out_l)`, one group, no bias, pooling first
/// at stride 2.
pub fn spec(c: (usize, usize, usize, usize), kernel: usize, stride: usize) -> OctConvSpec {
    OctConvSpec {
        in_h: c.0,
        in_l: c.1,
        out_h: c.2,
        out_l: c.3,
        kernel,
        stride,
        groups: 1,
        depthwise: false,
        bias: false,
        downsample: Downsample::Pool,
    }
}

/// The layer of `s` with random weights for each of its paths (and a random high bias if `bias`).
pub fn layer(s: OctConvSpec, bias: bool, rng: &mut ChaCha8Rng) -> OctConv2d {
    let per = |cin: usize| if s.depthwise { 1 } else { cin / s.groups };
    let weights = Path::ALL.map(|p| {
        s.path_channels(p)
            .map(|(cin, cout)| f32_tensor(rng, &[cout, per(cin), s.kernel, s.kernel]))
    });
    let b = bias.then(|| f32_tensor(rng, &[s.out_h]));
    OctConv2d::from_weights(s, weights, b, None)
}

/// The numbers of `v`'s branches (high, then low), in order.
pub fn values(v: &OctValue) -> Vec<f32> {
    let (h, l) = v.branches();
    [h, l]
        .into_iter()
        .flatten()
        .flat_map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        .collect()
}
