//! `octconv_transpose`: the transposed octave convolution of encoder-decoders, stride 2.
//!
//! Every path is a transposed convolution that doubles its input's size (kernel 2 without padding,
//! or kernel 3 with padding 1 and output padding 1, as PyTorch's `ConvTranspose2d`): H→H on the
//! high input, L→L on the low input, H→L on the high input average-pooled 2×2, and L→H on the low
//! input followed by nearest ×2 upsampling. Both output branches are twice the input's size.

use super::DefaultValue::{Bool as B, Derived, Int as I, Required};
use super::PTy::{Bool, Float, Int};
use super::{Args, Param};
use crate::diag::{DiagKind, Diagnostic};
use crate::ir::{OctConvSpec, Op, Path};
use crate::shape::{hw, product, Dims, Shape};

/// `out`.
pub(super) const OUT: Param = Param::new("out", Int, Required);
/// `kernel`.
pub(super) const KERNEL: Param = Param::new("kernel", Int, I(2));
/// `stride`.
pub(super) const STRIDE: Param = Param::new("stride", Int, I(2));
/// `alpha`.
pub(super) const ALPHA: Param = Param::new("alpha", Float, Derived("α_in"));
/// `bias`.
pub(super) const BIAS: Param = Param::new("bias", Bool, B(true));

/// The parameters, in signature order.
pub(super) const PARAMS: &[Param] = &[OUT, KERNEL, STRIDE, ALPHA, BIAS];

/// `octconv_transpose(out, kernel = 2, stride = 2, alpha, bias = true)`.
pub(crate) fn apply(a: &Args, input: &Shape) -> Result<(Op, Shape), Diagnostic> {
    let (Some(high), Some((in_h, in_l))) = (input.high(), input.split_channels()) else {
        return Err(a
            .call_error(
                DiagKind::LayerInput,
                format!("octconv_transpose needs a feature map, but its input is {input}"),
            )
            .with_label("input is flat"));
    };
    let out = a.dim(OUT, 1)?;
    let kernel = a.dim(KERNEL, 1)?;
    if kernel != 2 && kernel != 3 {
        return Err(a
            .error(
                DiagKind::Structure,
                KERNEL,
                format!("octconv_transpose supports kernel 2 or 3, found {kernel}"),
            )
            .with_label("unsupported kernel")
            .with_help("kernel = 2 (no padding) or kernel = 3 (padding 1, output padding 1) both double the size"));
    }
    let stride = a.dim(STRIDE, 1)?;
    if stride != 2 {
        return Err(a
            .error(
                DiagKind::Structure,
                STRIDE,
                format!("octconv_transpose upsamples by stride 2, found {stride}"),
            )
            .with_label("unsupported stride")
            .with_help("use `octconv` for stride 1, and chain layers for ×4"));
    }
    let (out_h, out_l) = super::octconv::out_split(a, in_h, in_l, out)?;
    let spec = OctConvSpec::dense((in_h, in_l), (out_h, out_l), kernel, stride, a.flag(BIAS)?);
    if spec.path_channels(Path::HL).is_some() && (high.h % 2 != 0 || high.w % 2 != 0) {
        return Err(a
            .call_error(
                DiagKind::Divisibility,
                format!(
                    "octconv_transpose's H→L path pools the high branch 2×2, but it is {}×{}",
                    high.h, high.w
                ),
            )
            .with_label("odd size")
            .with_help("set alpha = 0 for this layer, or resize so the high branch is even"));
    }
    let output = Shape::octave(out_h, out_l, 2 * high.h, 2 * high.w);
    Ok((Op::OctConvTranspose(spec), output))
}

/// MACs: every input pixel of a path meets k² weights per output channel (H→L reads the high input
/// pooled 2×2).
pub(super) fn macs(op: &Op, input: &Shape, _output: &Shape) -> Option<u64> {
    let Op::OctConvTranspose(o) = op else {
        return Some(0);
    };
    let k2 = (o.kernel * o.kernel) as u64;
    let high_in = input.high()?;
    let half = |d: Dims| (d.h / 2) as u64 * (d.w / 2) as u64;
    let mut total = 0u64;
    for p in o.paths() {
        let (i, out) = o.path_channels(p)?;
        let at = match p {
            Path::HH => hw(high_in),
            Path::HL => half(high_in),
            Path::LH | Path::LL => hw(input.low()?),
        };
        total = total.checked_add(product(&[out as u64, i as u64, k2, at])?)?;
    }
    Some(total)
}
