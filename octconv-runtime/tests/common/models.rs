//! Helpers shared by the whole-model tests (`fused_models.rs`, `onnx_tract.rs`): every builtin at a
//! test size, seeded weights with batch norms far from the identity, inputs, and the error measure.

use candle_core::{DType, Device, Tensor};
use octconv_runtime::init::init_params;
use octconv_spec::{check_builtin, Model};
use std::collections::HashMap;

/// Every builtin (its call without the closing parenthesis, so that `alpha` can be appended) and
/// whether it has 3×3 stride-1 octave convolutions: where the fused kernel and the BN + ReLU
/// prologues apply. MobileNets have depthwise and 1×1 ones only, and ResNeXt's 3×3 ones are grouped.
pub const BUILTINS: [(&str, bool); 9] = [
    ("wrn(n = 1, k = 1, classes = 10", true),
    ("resnet(depth = 26, classes = 5", true),
    ("mobilenet_v1(width = 0.25, classes = 5", false),
    (
        "resnext(depth = 50, groups = 8, width = 4, classes = 5",
        false,
    ),
    ("se_resnet(depth = 50, reduction = 16, classes = 5", true),
    ("mobilenet_v2(width = 0.35, classes = 5", false),
    ("densenet(depth = 121, growth = 8, classes = 5", true),
    ("unet(base = 8, depth = 2, size = 32, classes = 2", true),
    ("seed_wrn(n = 2, k = 1, classes = 10", true),
];

/// The builtins with stride-2 octave convolutions, at α = 0 with `strided = true` (they convolve
/// with stride 2, as torchvision's models, instead of pooling 2×2 first): complete calls.
pub const STRIDED: [&str; 5] = [
    "resnet(depth = 26, classes = 5, alpha = 0, strided = true)",
    "mobilenet_v1(width = 0.25, classes = 5, alpha = 0, strided = true)",
    "resnext(depth = 50, groups = 8, width = 4, classes = 5, alpha = 0, strided = true)",
    "se_resnet(depth = 50, reduction = 16, classes = 5, alpha = 0, strided = true)",
    "mobilenet_v2(width = 0.35, classes = 5, alpha = 0, strided = true)",
];

/// The α values every whole-model test covers.
pub const ALPHAS: [&str; 4] = ["0", "0.25", "0.5", "0.75"];

/// A tensor's values, flattened.
pub fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// The checked model of a builtin call (panics with the diagnostics if it is invalid).
pub fn ir(call: &str) -> Model {
    let c = check_builtin(call);
    assert!(c.ok(), "{}", c.render_diagnostics(false));
    c.model.unwrap()
}

/// Whether an f32 gradient whose error against the f64 gradient is `err` is within the f32 noise of
/// the reference path, whose error against f64 is `floor`: at most [`NOISE_FACTOR`] times it. For
/// gradients f32 cannot resolve to 1e-4 (deep networks in train mode at batch 2; a bias before a
/// batch norm, zero by mathematics, is pure rounding noise).
#[allow(dead_code)] // candle_path.rs and onnx_tract.rs include this file without it
pub fn within_f32_noise(err: f64, floor: f64) -> bool {
    err <= NOISE_FACTOR * floor
}

/// How far two f32 computations of one ill-conditioned gradient may differ in their (max-norm)
/// error against f64. `octconv parity` allows 4× on a few dozen quantities; these tests compare
/// thousands of gradient tensors per run, and on an AVX2 machine the ratio of two correct
/// realizations reached 4.2 (SE-ResNet-50 at α = .5, a squeeze-and-excitation weight, with the
/// default algorithms) and 4.4 (ResNet-26 at α = .5, a batch norm's β, with
/// `OCTCONV_CONV=im2col`), while with the default algorithms it stayed under 4 on the AVX-512
/// machine. A wrong kernel is off by orders of magnitude more in the well-conditioned gradients,
/// whose floor is ~1e-6. Not covered: under `OCTCONV_CONV=im2col` (a debugging override; the tests
/// run the default algorithms) one more BN β gradient of ResNet-26 at α = .5 differs by 166×
/// (2.1e-3 against 1.3e-5), probably a ReLU decision flipped near a tie at batch 2.
#[allow(dead_code)] // candle_path.rs and onnx_tract.rs include this file without it
pub const NOISE_FACTOR: f64 = 8.0;

/// The largest absolute difference relative to the largest magnitude of `b` (the reference).
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1e-30f64, |m, v| m.max(v.abs() as f64));
    a.iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs() as f64))
        / scale
}

/// Deterministic values in `[lo, hi)` for parameter `name`.
fn spread(name: &str, len: usize, (lo, hi): (f32, f32)) -> Vec<f32> {
    let seed = name
        .bytes()
        .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
    (0..len as u64)
        .map(|i| {
            let v = (seed.wrapping_add(i).wrapping_mul(2654435761) % 1000) as f32 / 1000.0;
            lo + (hi - lo) * v
        })
        .collect()
}

/// Seeded initial weights with every 1-D parameter (BN weights, biases and running statistics,
/// convolution biases) spread away from its initial value, so that a batch norm or bias applied
/// wrongly shows.
pub fn weights_far_from_identity(m: &Model, seed: u64) -> HashMap<String, Tensor> {
    init_params(m, seed, DType::F32, &Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(k, t)| {
            let range = if k.ends_with("running_var") {
                Some((0.5, 2.0))
            } else if t.rank() == 1 {
                Some((-0.5, 1.5))
            } else {
                None
            };
            let t = match range {
                Some(r) => Tensor::new(spread(&k, t.elem_count(), r), &Device::Cpu).unwrap(),
                None => t,
            };
            (k, t)
        })
        .collect()
}

/// A deterministic input batch of `n` images for `m`, values in [−1, 1).
pub fn input(m: &Model, n: usize) -> Tensor {
    let d = m.input;
    let count = n * d.c * d.h * d.w;
    let x: Vec<f32> = (0..count)
        .map(|i| (((i as u64 * 40503) % 997) as f32 / 498.5) - 1.0)
        .collect();
    Tensor::from_vec(x, (n, d.c, d.h, d.w), &Device::Cpu).unwrap()
}
