//! The cost model: trainable parameters, multiply-accumulates and activation memory per layer.
//!
//! These are the entry points for every count; each op's own rule (its parameters and MACs) is in
//! its module of [`crate::layers`], next to its shape rule. MACs count convolutions and linear layers
//! (pooling, BN, ReLU, upsampling and additions are not counted, as in the paper). Activation memory
//! is the layer's output per sample in f32 bytes. For one OctConv layer with α_in = α_out = α the MACs
//! are `1 − ¾α(2 − α)` and the output memory `1 − ¾α` of the α = 0 layer whenever α·c is integral.

use crate::ir::Op;
use crate::shape::Shape;

/// Trainable parameters of `op` on an input of shape `input` (BN running statistics excluded). Each
/// op's rule is in its module of [`crate::layers`].
pub fn params(op: &Op, input: &Shape) -> Option<u64> {
    crate::layers::def_of(op).map_or(Some(0), |d| (d.costs.params)(op, input))
}

/// Multiply-accumulates per sample of `op` mapping `input` to `output` (each op's rule is in its
/// module of [`crate::layers`]).
pub fn macs(op: &Op, input: &Shape, output: &Shape) -> Option<u64> {
    crate::layers::def_of(op).map_or(Some(0), |d| (d.costs.macs)(op, input, output))
}

/// Output activation bytes per sample (f32).
pub fn activation_bytes(output: &Shape) -> Option<u64> {
    output.numel().checked_mul(4)
}

/// `value / baseline` for two costs of the same kind (MACs, bytes, seconds as counts); `None` when the
/// baseline is 0 and no ratio exists. The one place cost ratios are computed (`check`, `bench`, `sweep`).
pub fn relative(value: u64, baseline: u64) -> Option<f64> {
    (baseline > 0).then(|| value as f64 / baseline as f64)
}

/// The paper's per-layer FLOPs ratio of an OctConv with α_in = α_out = α: `1 − ¾α(2 − α)`.
pub fn theory_macs_ratio(alpha: f64) -> f64 {
    1.0 - 0.75 * alpha * (2.0 - alpha)
}

/// The paper's per-layer activation-memory ratio: `1 − ¾α`.
pub fn theory_memory_ratio(alpha: f64) -> f64 {
    1.0 - 0.75 * alpha
}
