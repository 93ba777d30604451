//! The planned training step's octave convolution for every shape the fused 3×3 kernel does not
//! take (1×1 layers, strided layers, one branch in and two out, two in and one out, grouped and
//! depthwise paths): the convolutions [`OctConv2d::forward_unfused`] runs, recorded with their
//! backwards ([`ConvBackward`]), and the adjoints of its pooling and upsampling.
//!
//! The forward runs **the same ops in the same order** as `forward_unfused` (the same concatenated
//! inputs and weights, the same sums), so its output is bit-identical to the autograd path's: a
//! model's ReLU and max decisions do not depend on which step runs, and the two steps' gradients
//! differ only by the rounding of the backward sums.

use super::{concat_groups, group_part, OctConv2d};
use crate::layers::adjoint::{block_sum, hw, spread};
use crate::layers::conv::ConvBackward;
use crate::ops::{add_upsampled, avg_pool2x2, upsample_nearest2x};
use crate::tape::{Backward, ParamGrads, Recorded};
use crate::value::OctValue;
use candle_core::{DType, Device, Result, Tensor};
use octconv_spec::ir::Path;

/// What a convolution of the plan reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    /// The high input as the paths see it (pooled first with stride 2).
    High,
    /// [`Source::High`] pooled (H→L).
    HighPooled,
    /// The low input.
    Low,
    /// The low input pooled (L→L with stride 2).
    LowPooled,
}

/// One convolution of the plan: its sources concatenated along the channels, with the paths'
/// weights concatenated likewise.
struct Unit {
    /// The sources and their channel counts, in concatenation order.
    sources: Vec<(Source, usize)>,
    /// The parameters, one per source, in the same order.
    weights: Vec<Tensor>,
    back: ConvBackward,
    /// The convolution's groups: the sources are joined group by group ([`concat_groups`]).
    groups: usize,
    /// Whether it writes the high output.
    to_high: bool,
    /// L→H at stride 1: its output is upsampled ×2 before the sum.
    upsampled: bool,
}

impl OctConv2d {
    /// The planned step's record of [`OctConv2d::forward_unfused`] on f32 CPU inputs and weights.
    /// `None` for a layer with `downsample = stride` and two branches (which `forward_unfused`
    /// rejects; autograd then reports the error).
    pub(super) fn record_paths(&self, x: &OctValue, needs_grad: bool) -> Result<Option<Recorded>> {
        let s = &self.spec;
        if matches!(x, OctValue::Flat(_)) || (s.strided_conv() && (s.in_l > 0 || s.out_l > 0)) {
            return Ok(None);
        }
        let s2 = s.stride == 2;
        let pool_first = s2 && !s.strided_conv();
        let (xh, xl) = x.branches();
        let weight = |p: Path| self.weights[p as usize].as_ref();
        let high = xh.map(|h| {
            if pool_first {
                avg_pool2x2(h)
            } else {
                Ok(h.clone())
            }
        });
        let high = high.transpose()?;
        let high_pooled = match (&high, weight(Path::HL)) {
            (Some(h), Some(_)) => Some(avg_pool2x2(h)?),
            _ => None,
        };
        let low_in = match (xl, weight(Path::LL)) {
            (Some(l), Some(_)) if s2 => Some((Source::LowPooled, avg_pool2x2(l)?)),
            (Some(l), Some(_)) => Some((Source::Low, l.clone())),
            _ => None,
        };
        let fuse_high = self.strided_pair() && xh.is_some() && xl.is_some();
        let fuse_low = !s.depthwise && weight(Path::HL).is_some() && weight(Path::LL).is_some();
        let record = |parts: &[(Source, &Tensor, Path)], to_high, upsampled| -> Result<_> {
            let xs: Vec<&Tensor> = parts.iter().map(|p| p.1).collect();
            let ws = parts
                .iter()
                .map(|p| weight(p.2).cloned())
                .collect::<Option<Vec<Tensor>>>()
                .ok_or_else(|| candle_core::Error::Msg("octconv: a path has no weight".into()))?;
            // A joint unit (the fused low output, or a stride-2 pair) has the layer's groups.
            let groups = if parts.len() == 1 {
                self.path_groups(parts[0].2)
            } else {
                s.groups
            };
            let (x, w) = match (&xs[..], &ws[..]) {
                ([x], [w]) => ((*x).clone(), w.clone()),
                _ => (concat_groups(&xs, groups)?, Tensor::cat(&ws, 1)?),
            };
            let (y, back) = ConvBackward::record(&x, &w, self.conv_params(groups), needs_grad)?;
            let sources = parts
                .iter()
                .map(|p| Ok((p.0, p.1.dim(1)?)))
                .collect::<Result<_>>()?;
            let unit = Unit {
                sources,
                weights: ws,
                groups,
                back,
                to_high,
                upsampled,
            };
            Ok((y, unit))
        };
        let mut units = Vec::new();
        // The high output, as `forward_unfused` sums it.
        let y_high = match (&high, xl) {
            (Some(h), Some(l)) if fuse_high => {
                let parts = [(Source::High, h, Path::HH), (Source::Low, l, Path::LH)];
                let (y, u) = record(&parts, true, false)?;
                units.push(u);
                Some(y)
            }
            _ => {
                let hh = match (&high, weight(Path::HH)) {
                    (Some(h), Some(_)) => {
                        Some(record(&[(Source::High, h, Path::HH)], true, false)?)
                    }
                    _ => None,
                };
                let lh = match (xl, weight(Path::LH)) {
                    (Some(l), Some(_)) => Some(record(&[(Source::Low, l, Path::LH)], true, !s2)?),
                    _ => None,
                };
                let y = match (hh.as_ref().map(|u| &u.0), lh.as_ref().map(|u| &u.0)) {
                    (Some(a), Some(b)) if s2 => Some((a + b)?),
                    (Some(a), Some(b)) => Some(add_upsampled(a, b)?),
                    (Some(a), None) => Some(a.clone()),
                    (None, Some(b)) if s2 => Some(b.clone()),
                    (None, Some(b)) => Some(upsample_nearest2x(b)?),
                    (None, None) => None,
                };
                units.extend(hh.into_iter().chain(lh).map(|u| u.1));
                y
            }
        };
        // The low output: one convolution over both inputs where `forward_unfused` fuses them.
        let y_low = match (&high_pooled, &low_in) {
            (Some(ph), Some((src, li))) if fuse_low => {
                let parts = [(Source::HighPooled, ph, Path::HL), (*src, li, Path::LL)];
                let (y, u) = record(&parts, false, false)?;
                units.push(u);
                Some(y)
            }
            _ => {
                let hl = match &high_pooled {
                    Some(ph) => Some(record(&[(Source::HighPooled, ph, Path::HL)], false, false)?),
                    None => None,
                };
                let ll = match &low_in {
                    Some((src, li)) => Some(record(&[(*src, li, Path::LL)], false, false)?),
                    None => None,
                };
                let y = match (hl.as_ref().map(|u| &u.0), ll.as_ref().map(|u| &u.0)) {
                    (Some(a), Some(b)) => Some((a + b)?),
                    (a, b) => a.or(b).cloned(),
                };
                units.extend(hl.into_iter().chain(ll).map(|u| u.1));
                y
            }
        };
        let y = match (y_high, y_low) {
            (Some(h), None) if s.out_l == 0 => OctValue::Single(h),
            (high, Some(low)) => OctValue::Pair { high, low },
            _ => candle_core::bail!(
                "octconv: input does not match the layer (expected high {} / low {} channels)",
                s.in_h,
                s.in_l
            ),
        };
        let back = PathsBackward {
            units,
            input: InputShape::of(x)?,
            high_hw: high.as_ref().map(hw).transpose()?,
            pool_first,
            needs_grad,
        };
        Ok(Some((y, Box::new(back))))
    }
}

/// `a + b` for gradients that may be missing.
fn plus(a: Option<Tensor>, b: Option<Tensor>) -> Result<Option<Tensor>> {
    Ok(match (a, b) {
        (Some(a), Some(b)) => Some((a + b)?),
        (a, b) => a.or(b),
    })
}

/// `[N, C, H, W]`.
type Dims = (usize, usize, usize, usize);

/// The shape of the layer's input (the planned step runs on f32 CPU tensors).
#[derive(Clone, Copy)]
struct InputShape {
    high: Option<Dims>,
    low: Option<Dims>,
    /// One tensor (a high branch only), not a pair.
    single: bool,
}

impl InputShape {
    fn of(x: &OctValue) -> Result<Self> {
        let (h, l) = x.branches();
        Ok(InputShape {
            high: h.map(Tensor::dims4).transpose()?,
            low: l.map(Tensor::dims4).transpose()?,
            single: matches!(x, OctValue::Single(_)),
        })
    }
}

/// The backward of [`OctConv2d::record_paths`].
struct PathsBackward {
    units: Vec<Unit>,
    input: InputShape,
    /// Height and width of [`Source::High`].
    high_hw: Option<(usize, usize)>,
    /// Whether the high input was pooled before the paths read it (stride 2).
    pool_first: bool,
    needs_grad: bool,
}

impl Backward for PathsBackward {
    fn backward(
        self: Box<Self>,
        grad: &OctValue,
        params: &mut ParamGrads,
    ) -> Result<Vec<Option<OctValue>>> {
        let (dyh, dyl) = grad.branches();
        let missing =
            || candle_core::Error::Msg("octave convolution backward: a gradient is missing".into());
        // Gradients of High, HighPooled, Low, LowPooled.
        let mut d: [Option<Tensor>; 4] = Default::default();
        for u in &self.units {
            let dy = if u.to_high { dyh } else { dyl }.ok_or_else(missing)?;
            // An upsampled path's output gradient is the 2×2 block sum of dY_H.
            let dy = if u.upsampled {
                block_sum(dy, 2)?
            } else {
                dy.clone()
            };
            let (dw, dx) = u.back.gradients(&dy)?;
            // Per group, source `k`'s channels follow those of the sources before it: `start`
            // counts channels per group.
            let mut start = 0;
            for ((src, c), w) in u.sources.iter().zip(&u.weights) {
                let per_group = c / u.groups.max(1);
                let part = if u.sources.len() == 1 {
                    dw.clone()
                } else {
                    dw.narrow(1, start, per_group)?
                };
                params.add(w, part)?;
                if let Some(dx) = &dx {
                    let part = if u.sources.len() == 1 {
                        dx.clone()
                    } else {
                        group_part(dx, u.groups, start, per_group)?
                    };
                    let slot = &mut d[*src as usize];
                    *slot = plus(slot.take(), Some(part))?;
                }
                start += per_group;
            }
        }
        if !self.needs_grad {
            return Ok(vec![None]);
        }
        let [d_high, d_high_pooled, d_low, d_low_pooled] = d;
        let InputShape { high, low, single } = self.input;
        let d_high = match (d_high_pooled, self.high_hw) {
            (Some(g), Some(out)) => plus(d_high, Some(spread(&g, out)?))?,
            _ => d_high,
        };
        // A branch no path reads (none in the builtins) gets zeros.
        let zeros = |(n, c, h, w): Dims| Tensor::zeros((n, c, h, w), DType::F32, &Device::Cpu);
        let dxh = match (d_high, high) {
            (Some(g), Some((_, _, h, w))) if self.pool_first => Some(spread(&g, (h, w))?),
            (Some(g), _) => Some(g),
            (None, Some(dims)) => Some(zeros(dims)?),
            (None, None) => None,
        };
        let dxl = match (d_low_pooled, low) {
            (Some(g), Some((_, _, h, w))) => plus(d_low, Some(spread(&g, (h, w))?))?,
            _ => d_low,
        };
        let dx = match (single, low) {
            (true, _) => OctValue::Single(dxh.ok_or_else(missing)?),
            (false, Some(dims)) => OctValue::Pair {
                high: dxh,
                low: dxl.map_or_else(|| zeros(dims), Ok)?,
            },
            (false, None) => candle_core::bail!("octave convolution backward: no low input"),
        };
        Ok(vec![Some(dx)])
    }
}
