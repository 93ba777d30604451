//! `upsample`: nearest-neighbour upsampling of every branch by an integer factor.

use super::DefaultValue::{Int as I, Str as S};
use super::PTy::{Int, Str};
use super::{Args, Param};
use crate::diag::{DiagKind, Diagnostic};
use crate::ir::Op;
use crate::shape::{Dims, Shape};

/// `scale`.
pub(super) const SCALE: Param = Param::new("scale", Int, I(2));
/// `mode`.
pub(super) const MODE: Param = Param::new("mode", Str, S("nearest"));

/// The parameters, in signature order.
pub(super) const PARAMS: &[Param] = &[SCALE, MODE];

/// Largest `upsample` factor.
pub const MAX_UPSAMPLE: i64 = 16;

/// `upsample(scale = 2, mode = nearest)`: `[C, H, W]` → `[C, s·H, s·W]`, each branch of a pair.
pub(crate) fn upsample(a: &Args, input: &Shape) -> Result<(Op, Shape), Diagnostic> {
    let mode = a.text(MODE)?;
    if mode != "nearest" {
        return Err(a
            .error(
                DiagKind::Argument,
                MODE,
                format!("`upsample` has no mode `{mode}`; the one mode is `nearest`"),
            )
            .with_label("unknown mode")
            .with_help("write `mode = nearest`, or leave `mode` out"));
    }
    let scale = a.integer(SCALE)?;
    if !(1..=MAX_UPSAMPLE).contains(&scale) {
        return Err(a
            .error(
                DiagKind::Structure,
                SCALE,
                format!(
                    "`scale` of `upsample` must be between 1 and {MAX_UPSAMPLE}, found {scale}"
                ),
            )
            .with_label("out of range"));
    }
    let s = scale as usize;
    let up = |d: Dims| Dims::new(d.c, d.h * s, d.w * s);
    let out = match *input {
        Shape::Single(d) => Shape::Single(up(d)),
        Shape::Pair { high, low } => Shape::Pair {
            high: up(high),
            low: up(low),
        },
        Shape::Flat { .. } => {
            return Err(a
                .call_error(
                    DiagKind::LayerInput,
                    format!("upsample needs a feature map, but its input is {input}"),
                )
                .with_label("nothing to upsample"))
        }
    };
    Ok((Op::Upsample { scale: s }, out))
}
