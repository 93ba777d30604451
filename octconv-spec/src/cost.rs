//! The cost model: trainable parameters, multiply-accumulates and activation memory per layer.
//!
//! This is the only place these numbers are computed. MACs count convolutions and linear layers
//! (pooling, BN, ReLU, upsampling and additions are not counted, as in the paper). Activation memory
//! is the layer's output per sample in f32 bytes. For one OctConv layer with α_in = α_out = α the MACs
//! are `1 − ¾α(2 − α)` and the output memory `1 − ¾α` of the α = 0 layer whenever α·c is integral.

use crate::ir::{Op, Path};
use crate::shape::Shape;

/// Multiplies, returning `None` on u64 overflow.
fn product(xs: &[u64]) -> Option<u64> {
    xs.iter().try_fold(1u64, |acc, &x| acc.checked_mul(x))
}

fn hw(d: crate::shape::Dims) -> u64 {
    d.h as u64 * d.w as u64
}

/// Trainable parameters of `op` on an input of shape `input` (BN running statistics excluded).
pub fn params(op: &Op, input: &Shape) -> Option<u64> {
    match op {
        Op::Conv(c) => {
            let w = product(&[
                c.out_c as u64,
                (c.in_c / c.groups) as u64,
                c.kernel as u64,
                c.kernel as u64,
            ])?;
            w.checked_add(if c.bias { c.out_c as u64 } else { 0 })
        }
        Op::OctConv(o) | Op::OctConvTranspose(o) => {
            let k2 = (o.kernel * o.kernel) as u64;
            let mut total = 0u64;
            for p in o.paths() {
                let (i, out) = o.path_channels(p)?;
                let per_out = if o.depthwise {
                    1
                } else {
                    (i / o.groups) as u64
                };
                total = total.checked_add(product(&[out as u64, per_out, k2])?)?;
            }
            if o.bias {
                total = total.checked_add((o.out_h + o.out_l) as u64)?;
            }
            Some(total)
        }
        Op::BatchNorm { .. } => Some(2 * input.channels() as u64),
        Op::Linear { in_f, out_f, bias } => product(&[*in_f as u64, *out_f as u64])?
            .checked_add(if *bias { *out_f as u64 } else { 0 }),
        _ => Some(0),
    }
}

/// Multiply-accumulates per sample of `op` mapping `input` to `output`.
pub fn macs(op: &Op, input: &Shape, output: &Shape) -> Option<u64> {
    match op {
        Op::Conv(c) => {
            let out = output.high()?;
            product(&[
                c.out_c as u64,
                (c.in_c / c.groups) as u64,
                (c.kernel * c.kernel) as u64,
                hw(out),
            ])
        }
        Op::OctConv(o) => {
            let k2 = (o.kernel * o.kernel) as u64;
            let out_high = output.high()?;
            let mut total = 0u64;
            for p in o.paths() {
                let (i, out) = o.path_channels(p)?;
                // The resolution each path's convolution runs at.
                let at = match p {
                    Path::HH => hw(out_high),
                    Path::HL | Path::LL => hw(output.low()?),
                    Path::LH => hw(input.low()?),
                };
                let per_out = if o.depthwise {
                    1
                } else {
                    (i / o.groups) as u64
                };
                total = total.checked_add(product(&[out as u64, per_out, k2, at])?)?;
            }
            Some(total)
        }
        // Every input pixel of a path meets k² weights per output channel.
        Op::OctConvTranspose(o) => {
            let k2 = (o.kernel * o.kernel) as u64;
            let high_in = input.high()?;
            let half = |d: crate::shape::Dims| (d.h / 2) as u64 * (d.w / 2) as u64;
            let mut total = 0u64;
            for p in o.paths() {
                let (i, out) = o.path_channels(p)?;
                let at = match p {
                    Path::HH => hw(high_in),
                    Path::HL => half(high_in),
                    Path::LH | Path::LL => hw(input.low()?),
                };
                total = total.checked_add(product(&[out as u64, i as u64, k2, at])?)?;
            }
            Some(total)
        }
        Op::Linear { in_f, out_f, .. } => product(&[*in_f as u64, *out_f as u64]),
        _ => Some(0),
    }
}

/// Output activation bytes per sample (f32).
pub fn activation_bytes(output: &Shape) -> Option<u64> {
    output.numel().checked_mul(4)
}

/// The paper's per-layer FLOPs ratio of an OctConv with α_in = α_out = α: `1 − ¾α(2 − α)`.
pub fn theory_macs_ratio(alpha: f64) -> f64 {
    1.0 - 0.75 * alpha * (2.0 - alpha)
}

/// The paper's per-layer activation-memory ratio: `1 − ¾α`.
pub fn theory_memory_ratio(alpha: f64) -> f64 {
    1.0 - 0.75 * alpha
}
