//! `avg_pool` and `max_pool`: pooling applied to each branch; on a pair the low branch must stay at
//! exactly half the high branch's size.

use super::DefaultValue::{Derived, Int as I};
use super::PTy::Int;
use super::{Args, Param};
use crate::diag::{DiagKind, Diagnostic};
use crate::ir::{Op, PoolSpec};
use crate::shape::{Dims, Shape};

/// `kernel`.
pub(super) const KERNEL: Param = Param::new("kernel", Int, I(2));
/// `stride`.
pub(super) const STRIDE: Param = Param::new("stride", Int, Derived("kernel"));
/// `padding`.
pub(super) const PADDING: Param = Param::new("padding", Int, I(0));

/// The parameters, in signature order.
pub(super) const PARAMS: &[Param] = &[KERNEL, STRIDE, PADDING];

fn pooled(p: &PoolSpec, d: Dims) -> Option<Dims> {
    let (h, w) = (d.h + 2 * p.padding, d.w + 2 * p.padding);
    (p.kernel <= h && p.kernel <= w).then(|| {
        Dims::new(
            d.c,
            (h - p.kernel) / p.stride + 1,
            (w - p.kernel) / p.stride + 1,
        )
    })
}

/// `avg_pool` / `max_pool (kernel = 2, stride = kernel, padding = 0)`.
pub(crate) fn apply(a: &Args, input: &Shape) -> Result<(Op, Shape), Diagnostic> {
    let name = a.def.name;
    let kernel = a.dim(KERNEL, 1)?;
    let stride = a.dim_or(STRIDE, kernel as i64, 1)?;
    let padding = a.dim(PADDING, 0)?;
    if 2 * padding > kernel {
        return Err(a.error(
            DiagKind::Structure,
            PADDING,
            format!(
                "`padding` of `{name}` must be at most kernel / 2 = {}, found {padding}",
                kernel / 2
            ),
        ));
    }
    let p = PoolSpec {
        kernel,
        stride,
        padding,
    };
    let op = if name == "avg_pool" {
        Op::AvgPool(p)
    } else {
        Op::MaxPool(p)
    };
    let too_large = |d: Dims, branch: &str| {
        a.error(
            DiagKind::KernelTooLarge,
            KERNEL,
            format!(
                "{name} window {kernel}×{kernel} is larger than the {}×{} feature map{branch}",
                d.h, d.w
            ),
        )
        .with_label("window too large")
    };
    match input {
        Shape::Single(d) => pooled(&p, *d)
            .map(|o| (op, Shape::Single(o)))
            .ok_or_else(|| too_large(*d, "")),
        Shape::Pair { high, low } => {
            let h = pooled(&p, *high).ok_or_else(|| too_large(*high, " of the high branch"))?;
            let l = pooled(&p, *low).ok_or_else(|| too_large(*low, " of the low branch"))?;
            if l.h * 2 != h.h || l.w * 2 != h.w {
                return Err(a
                    .call_error(
                        DiagKind::Divisibility,
                        format!(
                            "{name} on {input} gives high {h} and low {l}: the low branch would no longer be half the high branch"
                        ),
                    )
                    .with_label("breaks the octave pair")
                    .with_help("use kernel = stride = 2 on sizes divisible by 4, or `merge();` first"));
            }
            Ok((op, Shape::Pair { high: h, low: l }))
        }
        Shape::Flat { .. } => Err(a
            .call_error(
                DiagKind::LayerInput,
                format!("{name} needs a feature map, but its input is {input}"),
            )
            .with_label("input is flat")),
    }
}
