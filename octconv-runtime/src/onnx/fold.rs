//! `--fold-bn`: a batch norm in evaluation mode that directly follows a convolution becomes a scale of
//! that convolution's output channels and a shift, folded into its weights and bias:
//! `BN(W ∗ x + b) = (s·W) ∗ x + (s·(b − μ) + β)` with `s = γ / √(σ² + ε)`.
//!
//! On an octave pair each output branch has its own statistics; every path into a branch is scaled,
//! and the shift is added once, on the branch's first path (where its bias is).

use super::builder::Builder;
use anyhow::{bail, Result};
use octconv_spec::ir::{Layer, Op};
use octconv_spec::Shape;

/// Per output channel of one branch: the scale, and the shift.
struct Affine {
    scale: Vec<f64>,
    shift: Vec<f64>,
}

/// A batch norm to fold: the affine map of each branch (`h` is the only one on a single map).
pub(super) struct BnFold {
    high: Option<Affine>,
    low: Option<Affine>,
}

/// What one convolution node folds in: its output channels' scale, and the shift if it is the
/// branch's first path.
pub(super) struct BranchFold {
    scale: Vec<f64>,
    shift: Option<Vec<f64>>,
}

impl BnFold {
    /// Reads the statistics of batch norm `bn` from the weights.
    pub fn new(b: &Builder, bn: &Layer) -> Result<Self> {
        let Op::BatchNorm { eps, .. } = bn.op else {
            bail!("internal error: `{}` is not a batch norm", bn.name)
        };
        let affine = |prefix: &str| -> Result<Affine> {
            let get = |p: &str| b.param(&format!("{}.{prefix}{p}", bn.name)).map(|(v, _)| v);
            let (gamma, beta) = (get("weight")?, get("bias")?);
            let (mean, var) = (get("running_mean")?, get("running_var")?);
            let scale: Vec<f64> = gamma
                .iter()
                .zip(&var)
                .map(|(&g, &v)| g as f64 / (v as f64 + eps).sqrt())
                .collect();
            let shift = beta
                .iter()
                .zip(&mean)
                .zip(&scale)
                .map(|((&bt, &m), &s)| bt as f64 - s * m as f64)
                .collect();
            Ok(Affine { scale, shift })
        };
        Ok(match bn.output {
            Shape::Pair { high, .. } => BnFold {
                high: (high.c > 0).then(|| affine("h.")).transpose()?,
                low: Some(affine("l.")?),
            },
            _ => BnFold {
                high: Some(affine("")?),
                low: None,
            },
        })
    }

    /// The fold of branch `tag` (`"h"` or `"l"`) for one of its paths.
    pub fn branch(&self, tag: &str, first: bool) -> Result<BranchFold> {
        let a = match tag {
            "h" => self.high.as_ref(),
            _ => self.low.as_ref(),
        };
        let Some(a) = a else {
            bail!("internal error: the batch norm to fold has no `{tag}` branch")
        };
        Ok(BranchFold {
            scale: a.scale.clone(),
            shift: first.then(|| a.shift.clone()),
        })
    }
}

impl BranchFold {
    /// The folded weights (`dims` `[out, in, k, k]`, or `[in, out, k, k]` when `transposed`) and
    /// bias: every output channel's filter scaled; the bias `s·b + shift` on the first path (`b` = 0
    /// without one), `s·b` on later ones.
    pub fn apply(
        &self,
        w: &[f32],
        dims: &[usize],
        bias: Option<Vec<f32>>,
        transposed: bool,
    ) -> Result<(Vec<f32>, Option<Vec<f32>>)> {
        let [d0, d1, kh, kw] = dims else {
            bail!("internal error: a convolution weight of shape {dims:?}")
        };
        let out_c = if transposed { *d1 } else { *d0 };
        if out_c != self.scale.len() {
            bail!(
                "internal error: folding {} batch-norm channels into a convolution with {out_c}",
                self.scale.len()
            );
        }
        let per = kh * kw;
        let w = w
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let o = if transposed {
                    (i / per) % d1
                } else {
                    i / (d1 * per)
                };
                (v as f64 * self.scale[o]) as f32
            })
            .collect();
        let bias = match (&self.shift, bias) {
            (None, None) => None,
            (shift, b) => Some(
                (0..out_c)
                    .map(|o| {
                        let b = b.as_ref().map_or(0.0, |b| b[o] as f64) * self.scale[o];
                        (b + shift.as_ref().map_or(0.0, |s| s[o])) as f32
                    })
                    .collect(),
            ),
        };
        Ok((w, bias))
    }
}
