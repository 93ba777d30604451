//! The values flowing through an octave network at run time: a batch of single-frequency feature maps,
//! an octave pair, or a batch of flat vectors. They mirror the checker's [`Shape`].

use candle_core::{Result, Tensor};
use octconv_spec::Shape;

/// A batch of values of one [`Shape`] kind.
#[derive(Clone, Debug)]
pub enum OctValue {
    /// `[N, C, H, W]`.
    Single(Tensor),
    /// High `[N, Ch, H, W]` (absent when `Ch = 0`, α = 1) and low `[N, Cl, H/2, W/2]`.
    Pair {
        /// High-frequency branch; `None` when it has no channels.
        high: Option<Tensor>,
        /// Low-frequency branch.
        low: Tensor,
    },
    /// `[N, F]`.
    Flat(Tensor),
}

impl OctValue {
    /// The high-frequency (or only) feature map and the low one, if any.
    pub fn branches(&self) -> (Option<&Tensor>, Option<&Tensor>) {
        match self {
            OctValue::Single(t) => (Some(t), None),
            OctValue::Pair { high, low } => (high.as_ref(), Some(low)),
            OctValue::Flat(_) => (None, None),
        }
    }

    /// Applies `f` to every tensor, keeping the kind.
    pub fn map(&self, mut f: impl FnMut(&Tensor) -> Result<Tensor>) -> Result<OctValue> {
        Ok(match self {
            OctValue::Single(t) => OctValue::Single(f(t)?),
            OctValue::Pair { high, low } => OctValue::Pair {
                high: high.as_ref().map(&mut f).transpose()?,
                low: f(low)?,
            },
            OctValue::Flat(t) => OctValue::Flat(f(t)?),
        })
    }

    /// Element-wise sum of two values of the same kind (a residual connection).
    pub fn add(&self, other: &OctValue) -> Result<OctValue> {
        Ok(match (self, other) {
            (OctValue::Single(a), OctValue::Single(b)) => OctValue::Single((a + b)?),
            (OctValue::Flat(a), OctValue::Flat(b)) => OctValue::Flat((a + b)?),
            (OctValue::Pair { high: ha, low: la }, OctValue::Pair { high: hb, low: lb }) => {
                let high = match (ha, hb) {
                    (Some(a), Some(b)) => Some((a + b)?),
                    (None, None) => None,
                    _ => candle_core::bail!(
                        "residual add: one octave pair has a high branch, the other not"
                    ),
                };
                OctValue::Pair {
                    high,
                    low: (la + lb)?,
                }
            }
            _ => candle_core::bail!("residual add of values of different kinds"),
        })
    }

    /// The per-sample shape (`[C, H, W]` per branch), for checks against the spec.
    pub fn shape(&self) -> Shape {
        let d = |t: &Tensor| {
            let v = t.dims();
            octconv_spec::Dims::new(v[1], v[2], v[3])
        };
        match self {
            OctValue::Single(t) => Shape::Single(d(t)),
            OctValue::Pair { high, low } => {
                let low = d(low);
                let high = high.as_ref().map(d).unwrap_or(octconv_spec::Dims::new(
                    0,
                    low.h * 2,
                    low.w * 2,
                ));
                Shape::Pair { high, low }
            }
            OctValue::Flat(t) => Shape::Flat {
                features: t.dims()[1],
            },
        }
    }

    /// The value as one tensor: a single-frequency map or a flat batch. Pairs are not tensors.
    pub fn into_tensor(self) -> Result<Tensor> {
        match self {
            OctValue::Single(t) | OctValue::Flat(t) => Ok(t),
            OctValue::Pair { .. } => {
                candle_core::bail!("the value is an octave pair; merge it first")
            }
        }
    }
}
