//! `conv`: a plain convolution on a single-frequency tensor.

use super::Args;
use crate::diag::{DiagKind, Diagnostic};
use crate::ir::{ConvSpec, Op};
use crate::shape::{Dims, Shape};

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
    let out = a.dim("out", 0, 1)?;
    let kernel = a.dim("kernel", 0, 1)?;
    let stride = a.dim("stride", 1, 1)?;
    let padding = a.dim("padding", (kernel / 2) as i64, 0)?;
    let groups = a.dim("groups", 1, 1)?;
    if d.c % groups != 0 || out % groups != 0 {
        return Err(a
            .error(
                DiagKind::Structure,
                "groups",
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
            .error(DiagKind::KernelTooLarge, "kernel", format!("kernel {kernel}×{kernel} is larger than the {}×{} feature map (padded to {ph}×{pw})", d.h, d.w))
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
        bias: a.bool("bias").unwrap_or(false),
    };
    Ok((Op::Conv(spec), Shape::Single(out_dims)))
}
