//! Where values meet: `concat`, `add` and `scale` (squeeze-and-excitation), on tensors, octave pairs
//! and flat batches. Shapes were checked by the spec checker; these functions only compute.

use crate::value::OctValue;
use candle_core::{Result, Tensor};

/// The tensors of one branch (high or low) of every value, skipping empty (`None`) high branches.
fn cat_branch(parts: Vec<&Tensor>) -> Result<Option<Tensor>> {
    match parts.len() {
        0 => Ok(None),
        1 => Ok(Some(parts[0].clone())),
        _ => Tensor::cat(&parts, 1).map(Some),
    }
}

/// Concatenation along channels, in order; pairs join high with high and low with low.
pub fn concat(xs: &[&OctValue]) -> Result<OctValue> {
    let Some(first) = xs.first() else {
        candle_core::bail!("concat of no values");
    };
    match first {
        OctValue::Single(_) | OctValue::Flat(_) => {
            let ts = xs
                .iter()
                .map(|x| match x {
                    OctValue::Single(t) | OctValue::Flat(t) => Ok(t),
                    OctValue::Pair { .. } => {
                        candle_core::bail!("concat of a pair with a single-frequency value")
                    }
                })
                .collect::<Result<Vec<_>>>()?;
            let t = Tensor::cat(&ts, 1)?;
            Ok(match first {
                OctValue::Flat(_) => OctValue::Flat(t),
                _ => OctValue::Single(t),
            })
        }
        OctValue::Pair { .. } => {
            let mut highs = Vec::with_capacity(xs.len());
            let mut lows = Vec::with_capacity(xs.len());
            for x in xs {
                let OctValue::Pair { high, low } = x else {
                    candle_core::bail!("concat of a pair with a single-frequency value");
                };
                highs.extend(high.as_ref());
                lows.push(low);
            }
            Ok(OctValue::Pair {
                high: cat_branch(highs)?,
                low: cat_branch(lows)?.expect("a pair has a low branch"),
            })
        }
    }
}

/// Element-wise sum of values of one shape.
pub fn add(xs: &[&OctValue]) -> Result<OctValue> {
    let Some((first, rest)) = xs.split_first() else {
        candle_core::bail!("add of no values");
    };
    rest.iter().try_fold((*first).clone(), |acc, x| acc.add(x))
}

/// `x` (`[N, C, H, W]`, or a pair with `Ch + Cl = C`) times `gates` (`[N, C]` or `[N, C, 1, 1]`) per
/// channel; on a pair the first `Ch` gates scale the high branch and the rest the low branch.
pub fn scale(x: &OctValue, gates: &OctValue) -> Result<OctValue> {
    let g = match gates {
        OctValue::Flat(t) | OctValue::Single(t) => t.flatten_from(1)?,
        OctValue::Pair { .. } => candle_core::bail!("scale: the gates are an octave pair"),
    };
    let (n, c) = g.dims2()?;
    let by = |t: &Tensor, from: usize| -> Result<Tensor> {
        let ct = t.dim(1)?;
        let gt = g.narrow(1, from, ct)?.reshape((n, ct, 1, 1))?;
        t.broadcast_mul(&gt)
    };
    match x {
        OctValue::Single(t) if t.dim(1)? == c => Ok(OctValue::Single(by(t, 0)?)),
        OctValue::Pair { high, low } if x.shape().channels() == c => {
            let ch = high.as_ref().map_or(Ok(0), |h| h.dim(1))?;
            Ok(OctValue::Pair {
                high: high.as_ref().map(|h| by(h, 0)).transpose()?,
                low: by(low, ch)?,
            })
        }
        _ => candle_core::bail!("scale: {} gates for a value of shape {}", c, x.shape()),
    }
}
