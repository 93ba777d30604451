//! `OctBatchNorm`: batch normalisation with separate statistics per branch.

use crate::OctValue;
use candle_core::{Result, Tensor};
use candle_nn::{BatchNorm, BatchNormConfig, ModuleT, VarBuilder};
use octconv_spec::Shape;

/// Batch normalisation of a tensor, a flat batch, or each branch of an octave pair (parameters under
/// `h.` and `l.`). Train mode normalises with batch statistics and updates the running ones.
#[derive(Clone, Debug)]
pub struct OctBatchNorm {
    /// The tensor's (or high branch's) normalisation.
    high: Option<BatchNorm>,
    /// The low branch's normalisation.
    low: Option<BatchNorm>,
}

impl OctBatchNorm {
    /// Loads the parameters for inputs of shape `input` from `vb`.
    pub fn new(input: &Shape, eps: f64, momentum: f64, vb: VarBuilder) -> Result<Self> {
        let cfg = BatchNormConfig {
            eps,
            remove_mean: true,
            affine: true,
            momentum,
        };
        let bn = |c: usize, vb: VarBuilder| -> Result<Option<BatchNorm>> {
            (c > 0)
                .then(|| candle_nn::batch_norm(c, cfg, vb))
                .transpose()
        };
        Ok(match input {
            Shape::Pair { high, low } => OctBatchNorm {
                high: bn(high.c, vb.pp("h"))?,
                low: bn(low.c, vb.pp("l"))?,
            },
            other => OctBatchNorm {
                high: bn(other.channels(), vb)?,
                low: None,
            },
        })
    }

    /// Normalises `x` (`train` selects batch statistics and updates the running ones).
    pub fn forward_t(&self, x: &OctValue, train: bool) -> Result<OctValue> {
        let apply = |bn: &Option<BatchNorm>, t: &Tensor| -> Result<Tensor> {
            match bn {
                Some(bn) => bn.forward_t(t, train),
                None => candle_core::bail!("batch norm: unexpected branch"),
            }
        };
        Ok(match x {
            OctValue::Single(t) => OctValue::Single(apply(&self.high, t)?),
            OctValue::Flat(t) => OctValue::Flat(apply(&self.high, t)?),
            OctValue::Pair { high, low } => OctValue::Pair {
                high: high.as_ref().map(|h| apply(&self.high, h)).transpose()?,
                low: apply(&self.low, low)?,
            },
        })
    }
}
