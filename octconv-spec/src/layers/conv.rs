//! `conv`: a plain convolution on a single-frequency tensor.

use super::DefaultValue::{Bool as B, Derived, Int as I, Required};
use super::PTy::{Bool, Int};
use super::{Args, Param};
use crate::diag::{DiagKind, Diagnostic};
use crate::ir::{ConvSpec, Layer, Op};
use crate::param_info::{Init, ParamInfo};
use crate::shape::{hw, product, Dims, Shape};

/// `out`.
pub(super) const OUT: Param = Param::new("out", Int, Required);
/// `kernel`.
pub(super) const KERNEL: Param = Param::new("kernel", Int, Required);
/// `stride`.
pub(super) const STRIDE: Param = Param::new("stride", Int, I(1));
/// `padding`.
pub(super) const PADDING: Param = Param::new("padding", Int, Derived("kernel / 2"));
/// `groups`.
pub(super) const GROUPS: Param = Param::new("groups", Int, I(1));
/// `bias`.
pub(super) const BIAS: Param = Param::new("bias", Bool, B(false));

/// The parameters, in signature order.
pub(super) const PARAMS: &[Param] = &[OUT, KERNEL, STRIDE, PADDING, GROUPS, BIAS];

/// `conv(out, kernel, stride = 1, padding = kernel / 2, groups = 1, bias = false)`.
pub(crate) fn apply(a: &Args, input: &Shape) -> Result<(Op, Shape), Diagnostic> {
    let d = match input {
        Shape::Single(d) => *d,
        Shape::Pair { .. } => {
            return Err(a
                .call_error(
                    DiagKind::LayerInput,
                    format!("conv needs a single-frequency tensor, but its input is {input}"),
                )
                .with_label("octave pair here")
                .with_help("use `octconv(…)` on octave pairs, or insert `merge();` first"))
        }
        Shape::Flat { .. } => {
            return Err(a
                .call_error(
                    DiagKind::LayerInput,
                    format!("conv needs a feature map, but its input is {input}"),
                )
                .with_label("input is flat"))
        }
    };
    let out = a.dim(OUT, 1)?;
    let kernel = a.dim(KERNEL, 1)?;
    let stride = a.dim(STRIDE, 1)?;
    let padding = a.dim_or(PADDING, (kernel / 2) as i64, 0)?;
    let groups = a.dim(GROUPS, 1)?;
    if d.c % groups != 0 || out % groups != 0 {
        return Err(a
            .error(
                DiagKind::Structure,
                GROUPS,
                format!(
                    "groups = {groups} must divide the input channels ({}) and `out` ({out})",
                    d.c
                ),
            )
            .with_label("does not divide"));
    }
    let (ph, pw) = (d.h + 2 * padding, d.w + 2 * padding);
    if kernel > ph || kernel > pw {
        return Err(a
            .error(DiagKind::KernelTooLarge, KERNEL, format!("kernel {kernel}×{kernel} is larger than the {}×{} feature map (padded to {ph}×{pw})", d.h, d.w))
            .with_label("kernel too large")
            .with_help("use a smaller kernel or apply the layer before the map is reduced"));
    }
    let out_dims = Dims::new(out, (ph - kernel) / stride + 1, (pw - kernel) / stride + 1);
    let spec = ConvSpec {
        in_c: d.c,
        out_c: out,
        kernel,
        stride,
        padding,
        groups,
        bias: a.flag(BIAS)?,
    };
    Ok((Op::Conv(spec), Shape::Single(out_dims)))
}

/// Trainable parameters: `out · in / groups · k²` weights, plus `out` biases.
pub(super) fn params(op: &Op, _input: &Shape) -> Option<u64> {
    let Op::Conv(c) = op else { return Some(0) };
    let w = product(&[
        c.out_c as u64,
        (c.in_c / c.groups) as u64,
        c.kernel as u64,
        c.kernel as u64,
    ])?;
    w.checked_add(if c.bias { c.out_c as u64 } else { 0 })
}

/// MACs: every output pixel meets `in / groups · k²` weights per output channel.
pub(super) fn macs(op: &Op, _input: &Shape, output: &Shape) -> Option<u64> {
    let Op::Conv(c) = op else { return Some(0) };
    let out = output.high()?;
    product(&[
        c.out_c as u64,
        (c.in_c / c.groups) as u64,
        (c.kernel * c.kernel) as u64,
        hw(out),
    ])
}

/// `weight` `[out, in / groups, k, k]`, `bias` `[out]`.
pub(super) fn weights(layer: &Layer) -> Vec<ParamInfo> {
    let Op::Conv(c) = &layer.op else {
        return Vec::new();
    };
    let n = &layer.name;
    let mut out = Vec::new();
    let per = c.in_c / c.groups;
    out.push(ParamInfo::new(
        format!("{n}.weight"),
        vec![c.out_c, per, c.kernel, c.kernel],
        Init::KaimingNormal {
            fan_in: per * c.kernel * c.kernel,
        },
        true,
    ));
    if c.bias {
        out.push(ParamInfo::new(
            format!("{n}.bias"),
            vec![c.out_c],
            Init::Zeros,
            true,
        ));
    }
    out
}
