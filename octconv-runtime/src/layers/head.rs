//! The head: global average pooling, flattening and the linear classifier.

use crate::value::OctValue;
use candle_core::{Result, Tensor};
use candle_nn::{Module, VarBuilder};

/// `[N, C, H, W]` → `[N, C]`; with `per_branch`, a pair → `[N, Ch + Cl]` (each branch pooled, then
/// concatenated: the explicit opt-in head).
pub fn global_avg_pool(x: &OctValue, per_branch: bool) -> Result<OctValue> {
    let gap = |t: &Tensor| t.mean((2, 3));
    Ok(OctValue::Flat(match x {
        OctValue::Single(t) => gap(t)?,
        OctValue::Pair { high, low } if per_branch => match high {
            Some(h) => Tensor::cat(&[gap(h)?, gap(low)?], 1)?,
            None => gap(low)?,
        },
        _ => candle_core::bail!("global_avg_pool needs a single-frequency tensor"),
    }))
}

/// `[N, C, H, W]` → `[N, C·H·W]`; identity on a flat batch.
pub fn flatten(x: &OctValue) -> Result<OctValue> {
    match x {
        OctValue::Single(t) => Ok(OctValue::Flat(t.flatten_from(1)?)),
        OctValue::Flat(_) => Ok(x.clone()),
        OctValue::Pair { .. } => candle_core::bail!("flatten needs a single-frequency tensor"),
    }
}

/// Fully connected layer: `weight` `[out, in]`, optional `bias` `[out]`.
#[derive(Clone, Debug)]
pub struct Linear(candle_nn::Linear);

impl Linear {
    /// Loads `weight` and `bias` from `vb`.
    pub fn new(in_f: usize, out_f: usize, bias: bool, vb: VarBuilder) -> Result<Self> {
        let w = vb.get((out_f, in_f), "weight")?;
        let b = bias.then(|| vb.get(out_f, "bias")).transpose()?;
        Ok(Linear(candle_nn::Linear::new(w, b)))
    }

    /// Applies the layer to a flat batch.
    pub fn forward(&self, x: &OctValue) -> Result<OctValue> {
        match x {
            OctValue::Flat(t) => Ok(OctValue::Flat(self.0.forward(t)?)),
            _ => candle_core::bail!("linear needs a flat batch"),
        }
    }
}
