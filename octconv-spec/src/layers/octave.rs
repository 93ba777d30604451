//! `split` and `merge`: moving between single-frequency tensors and octave pairs.

use super::DefaultValue::{Required, Str as S};
use super::PTy::{Float, Str};
use super::{Args, Param};
use crate::diag::{DiagKind, Diagnostic};
use crate::ir::Op;
use crate::shape::{channel_split, Dims, Shape};

/// `alpha`.
pub(super) const ALPHA: Param = Param::new("alpha", Float, Required);
/// `to`.
pub(super) const TO: Param = Param::new("to", Str, S("high"));

/// The parameters, in signature order.
pub(super) const SPLIT_PARAMS: &[Param] = &[ALPHA];

/// The parameters, in signature order.
pub(super) const MERGE_PARAMS: &[Param] = &[TO];

/// `split(alpha)`: `[C, H, W]` → high `[C − low, H, W]`, low `[low, H/2, W/2]`, `low = floor(α·C)`.
/// At α = 0 it is the identity (an α = 0 network has no low branch).
pub(crate) fn split(a: &Args, input: &Shape) -> Result<(Op, Shape), Diagnostic> {
    let d = match input {
        Shape::Single(d) => *d,
        _ => {
            return Err(a
                .call_error(
                    DiagKind::LayerInput,
                    format!("split needs a single-frequency tensor, but its input is {input}"),
                )
                .with_label("cannot split this")
                .with_help(if input.is_pair() {
                    "the value is already an octave pair; remove this `split`"
                } else {
                    "split belongs before the head"
                }))
        }
    };
    let alpha = a.alpha(ALPHA, 0.0)?;
    if alpha == 0.0 {
        return Ok((Op::Split { low: 0 }, *input));
    }
    let (high, low) = channel_split(d.c, alpha);
    if alpha < 1.0 && (high == 0 || low == 0) {
        let empty = if low == 0 { "low" } else { "high" };
        let e = a
            .error(DiagKind::EmptyBranch, ALPHA, format!("empty branch: split(alpha = {alpha}) of {} channels leaves the {empty} branch empty (high {high} / low {low})", d.c))
            .with_label(format!("floor({alpha} · {}) = {low}", d.c))
            .with_help("use a larger α or more channels");
        return Err(a.with_origin(e, ALPHA, "α comes from here"));
    }
    if d.h % 2 != 0 || d.w % 2 != 0 {
        return Err(a
            .call_error(DiagKind::Divisibility, format!("split needs an even spatial size to halve the low branch, but the input is {}×{}", d.h, d.w))
            .with_label("odd size")
            .with_help("pad or crop the input to an even size, or pool it first"));
    }
    Ok((Op::Split { low }, Shape::pair(high, low, d.h, d.w)))
}

/// `pyramid()`: `[C, H, W]` → high `[C, H, W]`, low `[C, H/2, W/2]` (every channel in both branches).
pub(crate) fn pyramid(a: &Args, input: &Shape) -> Result<(Op, Shape), Diagnostic> {
    let Shape::Single(d) = *input else {
        return Err(a
            .call_error(
                DiagKind::LayerInput,
                format!("pyramid needs a single-frequency tensor, but its input is {input}"),
            )
            .with_label("not a single-frequency tensor"));
    };
    if d.h % 2 != 0 || d.w % 2 != 0 {
        return Err(a
            .call_error(DiagKind::Divisibility, format!("pyramid needs an even spatial size to halve the low branch, but the input is {}×{}", d.h, d.w))
            .with_label("odd size")
            .with_help("pad or crop the input to an even size"));
    }
    Ok((
        Op::Pyramid,
        Shape::Pair {
            high: d,
            low: Dims::new(d.c, d.h / 2, d.w / 2),
        },
    ))
}

/// `merge(to = high)`: pair → `[Ch + Cl, H, W]`; `merge(to = low)`: pair → `[Ch + Cl, H/2, W/2]`, the
/// high branch average-pooled 2×2. The identity on a single-frequency tensor (α = 0).
pub(crate) fn merge(a: &Args, input: &Shape) -> Result<(Op, Shape), Diagnostic> {
    let to = a.text(TO)?;
    let low = match to {
        "high" => false,
        "low" => true,
        other => {
            return Err(a
                .error(
                    DiagKind::Argument,
                    TO,
                    format!("`merge` cannot merge to `{other}`: write `to = high` (the default) or `to = low`"),
                )
                .with_label("not `high` or `low`"))
        }
    };
    match input {
        Shape::Pair { high, low: l } if low => {
            if high.c > 0 && (high.h / 2 != l.h || high.w / 2 != l.w) {
                return Err(a
                    .call_error(
                        DiagKind::Divisibility,
                        format!("merge(to = low) pools the high branch 2×2 to the low branch's size, but {input} does not halve to it"),
                    )
                    .with_label("sizes do not match"));
            }
            Ok((
                Op::MergeLow,
                Shape::Single(Dims::new(high.c + l.c, l.h, l.w)),
            ))
        }
        Shape::Pair { high, low } => Ok((
            Op::Merge,
            Shape::Single(Dims::new(high.c + low.c, high.h, high.w)),
        )),
        Shape::Single(_) => Ok((Op::Merge, *input)),
        Shape::Flat { .. } => Err(a
            .call_error(
                DiagKind::LayerInput,
                format!("merge needs an octave pair, but its input is {input}"),
            )
            .with_label("nothing to merge")),
    }
}
