//! The head: `global_avg_pool`, `flatten`, `linear`. Applying any of them to an octave pair is an
//! invalid head: the user must say how the branches meet (`merge()`, or the seed's mixing head), unless
//! opted into with `global_avg_pool(per_branch = true)`.

use super::DefaultValue::{Bool as B, Required};
use super::PTy::{Bool, Int};
use super::{Args, Param};
use crate::diag::{DiagKind, Diagnostic};
use crate::ir::{Layer, Op};
use crate::param_info::{Init, ParamInfo};
use crate::shape::{product, Shape};

/// `per_branch`.
pub(super) const PER_BRANCH: Param = Param::new("per_branch", Bool, B(false));
/// `out`.
pub(super) const OUT: Param = Param::new("out", Int, Required);
/// `bias`.
pub(super) const BIAS: Param = Param::new("bias", Bool, B(true));

/// The parameters, in signature order.
pub(super) const GAP_PARAMS: &[Param] = &[PER_BRANCH];

/// The parameters, in signature order.
pub(super) const LINEAR_PARAMS: &[Param] = &[OUT, BIAS];

fn invalid_head(a: &Args, what: &str, input: &Shape, help: &str) -> Diagnostic {
    a.call_error(
        DiagKind::InvalidHead,
        format!(
            "invalid head: {} needs a single-frequency tensor, but its input is {input}",
            a.def.name
        ),
    )
    .with_label(format!("{what} on an octave pair"))
    .with_help(help.to_string())
}

/// `global_avg_pool(per_branch = false)`: `[C, H, W]` → `[C]`.
pub(crate) fn global_avg_pool(a: &Args, input: &Shape) -> Result<(Op, Shape), Diagnostic> {
    let per_branch = a.flag(PER_BRANCH)?;
    let op = Op::GlobalAvgPool { per_branch };
    match input {
        Shape::Single(d) => Ok((op, Shape::Flat { features: d.c })),
        Shape::Pair { high, low } if per_branch => Ok((op, Shape::Flat { features: high.c + low.c })),
        Shape::Pair { .. } => Err(invalid_head(a, "pooling", input, "insert `merge();` before the pooling")
            .with_note("with each branch pooled and fed straight to the classifier, the seed's author saw accuracy plateau or training accuracy fall from about 80 % to 50 %; the fix was a learned mixing layer before the pooling: `merge(to = low); conv(c, kernel = 1, bias = true); bn(); relu();`")
            .with_note("`merge();` followed directly by pooling computes the same function as per-branch pooling; to pool per branch on purpose write `global_avg_pool(per_branch = true)`")),
        Shape::Flat { .. } => Err(a
            .call_error(DiagKind::LayerInput, format!("global_avg_pool needs a feature map, but its input is {input}"))
            .with_label("already flat")
            .with_help("remove this layer")),
    }
}

/// `flatten()`: `[C, H, W]` → `[C·H·W]`; identity on a flat vector.
pub(crate) fn flatten(a: &Args, input: &Shape) -> Result<(Op, Shape), Diagnostic> {
    match input {
        Shape::Single(d) => match usize::try_from(d.numel()) {
            Ok(features) if features <= super::MAX_DIM as usize => {
                Ok((Op::Flatten, Shape::Flat { features }))
            }
            _ => Err(a.call_error(
                DiagKind::Limit,
                format!(
                    "flatten of {input} gives more than {} features",
                    super::MAX_DIM
                ),
            )),
        },
        Shape::Flat { .. } => Ok((Op::Flatten, *input)),
        Shape::Pair { .. } => Err(invalid_head(
            a,
            "flattening",
            input,
            "insert `merge();` before flattening",
        )),
    }
}

/// `linear(out, bias = true)` on a flat vector.
pub(crate) fn linear(a: &Args, input: &Shape) -> Result<(Op, Shape), Diagnostic> {
    let out = a.dim(OUT, 1)?;
    let bias = a.flag(BIAS)?;
    match input {
        Shape::Flat { features } => Ok((
            Op::Linear {
                in_f: *features,
                out_f: out,
                bias,
            },
            Shape::Flat { features: out },
        )),
        Shape::Single(_) => Err(a
            .call_error(
                DiagKind::LayerInput,
                format!("linear needs a flat vector, but its input is the feature map {input}"),
            )
            .with_label("not flat")
            .with_help("insert `global_avg_pool();` or `flatten();` before `linear`")),
        Shape::Pair { .. } => Err(invalid_head(
            a,
            "a linear layer",
            input,
            "insert `merge();` and `global_avg_pool();` before `linear`",
        )),
    }
}

/// Trainable parameters of `linear`: `in · out` weights plus `out` biases.
pub(super) fn linear_params(op: &Op, _input: &Shape) -> Option<u64> {
    let Op::Linear { in_f, out_f, bias } = op else {
        return Some(0);
    };
    product(&[*in_f as u64, *out_f as u64])?.checked_add(if *bias { *out_f as u64 } else { 0 })
}

/// MACs of `linear`: `in · out`.
pub(super) fn linear_macs(op: &Op, _input: &Shape, _output: &Shape) -> Option<u64> {
    let Op::Linear { in_f, out_f, .. } = op else {
        return Some(0);
    };
    product(&[*in_f as u64, *out_f as u64])
}

/// `weight` `[out, in]`, `bias` `[out]`.
pub(super) fn linear_weights(layer: &Layer) -> Vec<ParamInfo> {
    let Op::Linear { in_f, out_f, bias } = &layer.op else {
        return Vec::new();
    };
    let n = &layer.name;
    let mut out = Vec::new();
    out.push(ParamInfo::new(
        format!("{n}.weight"),
        vec![*out_f, *in_f],
        Init::LecunNormal { fan_in: *in_f },
        true,
    ));
    if *bias {
        out.push(ParamInfo::new(
            format!("{n}.bias"),
            vec![*out_f],
            Init::Zeros,
            true,
        ));
    }
    out
}
