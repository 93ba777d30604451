//! `octconv`: the octave convolution's argument rules and shape rule.
//!
//! Geometry (as in the paper's code): with stride 2 the high input is average-pooled before H→H and
//! pooled again for H→L, the low input is pooled before L→L, and L→H is not upsampled. With stride 1,
//! H→L pools the high input once and L→H upsamples ×2 (nearest). Padding is `kernel / 2`.
//!
//! `downsample = stride` (single-branch layers only: α_in = α_out = 0) convolves with stride 2
//! directly instead, as torchvision's `Conv2d(stride = 2, padding = k // 2)`: a side `n` becomes
//! `(n − 1) / 2 + 1`, so odd sizes are allowed. Parameters and MACs are those of pooling (the
//! convolution runs at the output resolution either way; pooling's adds are not counted). On a
//! single-branch layer with stride 1 it changes nothing and is accepted silently (blocks pass it to
//! convolutions whose stride is a parameter); the IR then records `pool`. A layer with a low branch
//! refuses it at any stride.

use super::DefaultValue::{Bool as B, Derived, Int as I, Required, Str as S};
use super::PTy::{Bool, Float, Int, Str};
use super::{Args, Param};
use crate::diag::{DiagKind, Diagnostic};
use crate::ir::{Downsample, Layer, OctConvSpec, Op, Path};
use crate::param_info::{Init, ParamInfo};
use crate::shape::{channel_split, hw, product, split_alpha, Dims, Shape};

/// `out`.
pub(super) const OUT: Param = Param::new("out", Int, Derived("input channels if depthwise"));
/// `kernel`.
pub(super) const KERNEL: Param = Param::new("kernel", Int, Required);
/// `stride`.
pub(super) const STRIDE: Param = Param::new("stride", Int, I(1));
/// `alpha`.
pub(super) const ALPHA: Param = Param::new("alpha", Float, Derived("α_in"));
/// `alpha_in`.
pub(super) const ALPHA_IN: Param = Param::new("alpha_in", Float, Derived("input split"));
/// `groups`.
pub(super) const GROUPS: Param = Param::new("groups", Int, I(1));
/// `depthwise`.
pub(super) const DEPTHWISE: Param = Param::new("depthwise", Bool, B(false));
/// `bias`.
pub(super) const BIAS: Param = Param::new("bias", Bool, B(false));
/// `downsample`: `pool` or `stride`.
pub(super) const DOWNSAMPLE: Param = Param::new("downsample", Str, S("pool"));

/// The parameters, in signature order.
pub(super) const PARAMS: &[Param] = &[
    OUT, KERNEL, STRIDE, ALPHA, ALPHA_IN, GROUPS, DEPTHWISE, BIAS, DOWNSAMPLE,
];

/// Why an OctConv geometry is invalid: kind, message, help.
pub(crate) type GeoError = (DiagKind, String, String);

/// The output shape of `spec` applied to `input`, checking divisibility and kernel sizes per path.
/// Used for user-written layers and for the automatic residual projection.
pub(crate) fn infer(spec: &OctConvSpec, input: &Shape) -> Result<Shape, GeoError> {
    let Some(high) = input.high() else {
        return Err((
            DiagKind::LayerInput,
            format!("octconv needs a feature map, but its input is {input}"),
            "octconv works on [C, H, W] tensors and octave pairs".into(),
        ));
    };
    let (in_h, in_l) = input.split_channels().unwrap_or((high.c, 0));
    if (in_h, in_l) != (spec.in_h, spec.in_l) {
        return Err((
            DiagKind::AlphaMismatch,
            format!(
                "octconv expects input channels high {} / low {}, but its input is {input}",
                spec.in_h, spec.in_l
            ),
            "the split of the input decides α_in".into(),
        ));
    }
    let s = spec.stride;
    let low_in = input.low();
    let size_err = |what: &str, h: usize, w: usize, by: usize, why: &str| -> GeoError {
        (
            DiagKind::Divisibility,
            format!("octconv with stride {s} cannot use the {what} of size {h}×{w}: it must be divisible by {by} ({why})"),
            "resize the input, change the stride, or set alpha = 0 for this layer (odd sizes cannot be halved exactly)".into(),
        )
    };
    let check_kernel = |path: Path, h: usize, w: usize| -> Result<(), GeoError> {
        if spec.kernel > h || spec.kernel > w {
            Err((
                DiagKind::KernelTooLarge,
                format!(
                    "kernel {k}×{k} is larger than the {h}×{w} feature map of the {} path",
                    path.arrow(),
                    k = spec.kernel
                ),
                "use a smaller kernel, or a smaller α / fewer stride-2 layers so the low branch stays larger than the kernel".into(),
            ))
        } else {
            Ok(())
        }
    };
    if spec.strided_conv() {
        // One path (H→H), convolved with stride 2 and padding k / 2: every size works.
        if spec.paths().any(|p| p != Path::HH) {
            return Err((
                DiagKind::Structure,
                "octconv with downsample = stride needs a single-branch layer (α_in = α_out = 0)"
                    .into(),
                "remove `downsample = stride`, or set alpha = 0 for this layer and the one before"
                    .into(),
            ));
        }
        check_kernel(Path::HH, high.h, high.w)?;
        let (oh, ow) = ((high.h - 1) / 2 + 1, (high.w - 1) / 2 + 1);
        return Ok(Shape::Single(Dims::new(spec.out_h, oh, ow)));
    }
    for p in spec.paths() {
        match p {
            Path::HH => {
                if high.h % s != 0 || high.w % s != 0 {
                    return Err(size_err(
                        "high branch",
                        high.h,
                        high.w,
                        s,
                        "stride-2 pooling",
                    ));
                }
                check_kernel(p, high.h / s, high.w / s)?;
            }
            Path::HL => {
                if high.h % (2 * s) != 0 || high.w % (2 * s) != 0 {
                    return Err(size_err(
                        "high branch",
                        high.h,
                        high.w,
                        2 * s,
                        "the H→L path pools it to the low resolution",
                    ));
                }
                check_kernel(p, high.h / (2 * s), high.w / (2 * s))?;
            }
            Path::LH => {
                let l = low_in.expect("an L→H path implies a low input");
                check_kernel(p, l.h, l.w)?;
            }
            Path::LL => {
                let l = low_in.expect("an L→L path implies a low input");
                if !l.h.is_multiple_of(s) || !l.w.is_multiple_of(s) {
                    return Err(size_err("low branch", l.h, l.w, s, "stride-2 pooling"));
                }
                check_kernel(p, l.h / s, l.w / s)?;
            }
        }
    }
    let (oh, ow) = (high.h / s, high.w / s);
    Ok(Shape::octave(spec.out_h, spec.out_l, oh, ow))
}

/// `octconv(out, kernel, stride, alpha, alpha_in, groups, depthwise, bias, downsample)`.
pub(crate) fn apply(a: &Args, input: &Shape) -> Result<(Op, Shape), Diagnostic> {
    let Some((in_h, in_l)) = input.split_channels() else {
        return Err(a
            .call_error(
                DiagKind::LayerInput,
                format!("octconv needs a feature map, but its input is {input}"),
            )
            .with_label("input is flat")
            .with_help("octconv belongs before `global_avg_pool()` / `flatten()`"));
    };
    let alpha_in = split_alpha(in_h, in_l);
    // Not in the baseline: there a declared α_in reads as 0, but a `pyramid()` pair still has
    // low channels, and that is no mismatch of the user's.
    if a.get(ALPHA_IN).is_some() && !a.alpha_zero {
        let declared = a.alpha(ALPHA_IN, alpha_in)?;
        if channel_split(in_h + in_l, declared) != (in_h, in_l) {
            let (eh, el) = channel_split(in_h + in_l, declared);
            return Err(a
                .error(
                    DiagKind::AlphaMismatch,
                    ALPHA_IN,
                    format!(
                        "α_in mismatch: octconv declares alpha_in = {declared} (high {eh} / low {el}), but its input is split high {in_h} / low {in_l} (α = {alpha_in:.4})"
                    ),
                )
                .with_label("does not match the input")
                .with_help("α_in is taken from the input; remove `alpha_in` or fix the layer before"));
        }
    }
    let depthwise = a.flag(DEPTHWISE)?;
    let out = match (a.get(OUT), depthwise) {
        (Some(_), _) => a.dim(OUT, 1)?,
        (None, true) => in_h + in_l,
        (None, false) => {
            return Err(a
                .call_error(
                    DiagKind::Argument,
                    "missing argument `out` in the call of `octconv`".into(),
                )
                .with_label("`out` not given")
                .with_note("`out` may be left out only with `depthwise = true`"))
        }
    };
    let kernel = a.dim(KERNEL, 1)?;
    if kernel % 2 == 0 {
        return Err(a
            .error(
                DiagKind::Structure,
                KERNEL,
                format!("octconv uses same padding and needs an odd kernel, found {kernel}"),
            )
            .with_label("even kernel")
            .with_help("use kernel = 1, 3, 5 or 7"));
    }
    let stride = a.dim(STRIDE, 1)?;
    if stride > 2 {
        return Err(a
            .error(
                DiagKind::Structure,
                STRIDE,
                format!("octconv supports stride 1 or 2, found {stride}"),
            )
            .with_label("unsupported stride")
            .with_help(
                "stride 2 halves both branches; chain layers or pool for larger reductions",
            ));
    }
    let (out_h, out_l) = out_split(a, in_h, in_l, out)?;
    let groups = a.dim(GROUPS, 1)?;
    if depthwise {
        if groups != 1 {
            return Err(a.error(DiagKind::Structure, GROUPS, "`groups` and `depthwise = true` cannot be combined: depthwise uses one group per channel".into()));
        }
        if (out_h, out_l) != (in_h, in_l) {
            return Err(a
                .call_error(
                    DiagKind::Structure,
                    format!(
                        "depthwise octconv must keep each branch's channels: input high {in_h} / low {in_l}, output high {out_h} / low {out_l}"
                    ),
                )
                .with_help("give `out` equal to the input channels and leave `alpha` at the input's α"));
        }
    }
    let downsample = downsample(a, stride, (in_h, in_l), (out_h, out_l))?;
    let spec = OctConvSpec {
        groups,
        depthwise,
        downsample,
        ..OctConvSpec::dense((in_h, in_l), (out_h, out_l), kernel, stride, a.flag(BIAS)?)
    };
    if !depthwise && groups > 1 {
        for p in spec.paths() {
            let (i, o) = spec.path_channels(p).unwrap_or((0, 0));
            if i % groups != 0 || o % groups != 0 {
                return Err(a
                    .error(
                        DiagKind::Structure,
                        GROUPS,
                        format!(
                            "groups = {groups} must divide the channels of every path, but path {} has {i} → {o}",
                            p.arrow()
                        ),
                    )
                    .with_label("does not divide")
                    .with_help("choose channel counts and α so each branch is a multiple of `groups`"));
            }
        }
    }
    let output =
        infer(&spec, input).map_err(|(kind, msg, help)| a.call_error(kind, msg).with_help(help))?;
    Ok((Op::OctConv(spec), output))
}

/// The `downsample` argument: `pool` (the default) or `stride`, the latter only on a layer with no low
/// branch in or out. At stride 1 either is accepted and the IR records `pool` (nothing is halved).
fn downsample(
    a: &Args,
    stride: usize,
    (in_h, in_l): (usize, usize),
    (out_h, out_l): (usize, usize),
) -> Result<Downsample, Diagnostic> {
    let word = a.text(DOWNSAMPLE)?;
    let Some(mode) = Downsample::from_word(word) else {
        return Err(a
            .error(
                DiagKind::Argument,
                DOWNSAMPLE,
                format!("`octconv` has no downsample `{word}`; use `pool` or `stride`"),
            )
            .with_label("unknown downsample")
            .with_help("`pool` average-pools 2×2 before a stride-1 convolution (the OctConv paper); `stride` convolves with stride 2 (torchvision)"));
    };
    if mode == Downsample::Stride && (in_l > 0 || out_l > 0) {
        let d = a
            .error(
                DiagKind::Structure,
                DOWNSAMPLE,
                format!(
                    "downsample = stride needs a single-branch octconv, but this one reads high {in_h} / low {in_l} and writes high {out_h} / low {out_l} channels"
                ),
            )
            .with_label("only at α = 0")
            .with_help("a layer with a low branch always pools before its stride-2 paths (the OctConv paper's geometry); remove `downsample = stride`, or give this layer and its input α = 0");
        return Err(a.with_origin(d, DOWNSAMPLE, "downsample = stride comes from here"));
    }
    Ok(if stride == 2 { mode } else { Downsample::Pool })
}

/// The output split of an octave layer with `out` channels reading a `in_h` / `in_l` split: α_out is
/// `alpha`, or without it the α that produced the input split (not the realised ratio, which `floor`
/// could shift); a layer that keeps the channel count keeps the split exactly (depthwise layers
/// always do). An α strictly between 0 and 1 that empties a branch is an error.
pub(super) fn out_split(
    a: &Args,
    in_h: usize,
    in_l: usize,
    out: usize,
) -> Result<(usize, usize), Diagnostic> {
    // In the baseline `Args::alpha` gives 0 whatever the default.
    let alpha_out = a.alpha(ALPHA, a.input_alpha)?;
    let (out_h, out_l) = if a.get(ALPHA).is_none() && out == in_h + in_l {
        (in_h, in_l)
    } else {
        channel_split(out, alpha_out)
    };
    if alpha_out > 0.0 && alpha_out < 1.0 && (out_h == 0 || out_l == 0) {
        let empty = if out_l == 0 { "low" } else { "high" };
        let d = a
            .error(
                DiagKind::EmptyBranch,
                ALPHA,
                format!(
                    "empty branch: alpha = {alpha_out} leaves the {empty} branch of {}({out}) with no channels (high {out_h} / low {out_l})",
                    a.def.name
                ),
            )
            .with_label(format!("floor({alpha_out} · {out}) = {out_l}"))
            .with_help("use more channels, a different α, or alpha = 0 / 1 if one branch is meant to be absent");
        return Err(a.with_origin(d, ALPHA, "α comes from here"));
    }
    Ok((out_h, out_l))
}

/// Trainable parameters of an octave convolution (or its transpose): `out_p · in_p / groups · k²` per
/// path (1 · k² per channel when depthwise), plus a bias per output channel.
pub(super) fn params(op: &Op, _input: &Shape) -> Option<u64> {
    let (Op::OctConv(o) | Op::OctConvTranspose(o)) = op else {
        return Some(0);
    };
    let k2 = (o.kernel * o.kernel) as u64;
    let mut total = 0u64;
    for p in o.paths() {
        let (i, out) = o.path_channels(p)?;
        let per_out = if o.depthwise {
            1
        } else {
            (i / o.groups) as u64
        };
        total = total.checked_add(product(&[out as u64, per_out, k2])?)?;
    }
    if o.bias {
        total = total.checked_add((o.out_h + o.out_l) as u64)?;
    }
    Some(total)
}

/// MACs: each path at the resolution its convolution runs at.
pub(super) fn macs(op: &Op, input: &Shape, output: &Shape) -> Option<u64> {
    let Op::OctConv(o) = op else { return Some(0) };
    let k2 = (o.kernel * o.kernel) as u64;
    let out_high = output.high()?;
    let mut total = 0u64;
    for p in o.paths() {
        let (i, out) = o.path_channels(p)?;
        let at = match p {
            Path::HH => hw(out_high),
            Path::HL | Path::LL => hw(output.low()?),
            Path::LH => hw(input.low()?),
        };
        let per_out = if o.depthwise {
            1
        } else {
            (i / o.groups) as u64
        };
        total = total.checked_add(product(&[out as u64, per_out, k2, at])?)?;
    }
    Some(total)
}

/// `hh.weight` … `ll.weight` for the paths that exist (`[out_p, in_p / groups, k, k]`, or `[in_p,
/// out_p, k, k]` transposed), `h.bias`, `l.bias`.
pub(super) fn weights(layer: &Layer) -> Vec<ParamInfo> {
    let (Op::OctConv(o) | Op::OctConvTranspose(o)) = &layer.op else {
        return Vec::new();
    };
    let n = &layer.name;
    let mut out = Vec::new();
    let transposed = matches!(layer.op, Op::OctConvTranspose(_));
    let k2 = o.kernel * o.kernel;
    let per = |i: usize| if o.depthwise { 1 } else { i / o.groups };
    // The weights one output value meets on path `p`: with stride 2 a transposed convolution's
    // output pixel meets about in · k² / 4 of them (`[in, out, k, k]` as PyTorch's ConvTranspose2d).
    let fan_in_of = |p: Path| {
        let (i, _) = o.path_channels(p).expect("paths() yields existing paths");
        if transposed {
            i * k2 / 4
        } else {
            per(i) * k2
        }
    };
    for p in o.paths() {
        let (i, oc) = o.path_channels(p).expect("paths() yields existing paths");
        // Kaiming's fan-in counts every weight that feeds an output value: both paths into the
        // output branch, as for the plain convolution the octave one replaces. (Each path on its
        // own fan-in doubles the variance of every two-path output: a ResNeXt-50 at α = .25 had
        // logits 10⁴× those at α = 0 at initialisation.)
        let fan_in = o
            .paths()
            .filter(|q| q.to_high() == p.to_high())
            .map(fan_in_of)
            .sum::<usize>()
            .max(1);
        let shape = if transposed {
            vec![i, oc, o.kernel, o.kernel]
        } else {
            vec![oc, per(i), o.kernel, o.kernel]
        };
        out.push(ParamInfo::new(
            format!("{n}.{}.weight", p.as_str()),
            shape,
            Init::KaimingNormal { fan_in },
            true,
        ));
    }
    if o.bias {
        for (branch, c) in [("h", o.out_h), ("l", o.out_l)] {
            if c > 0 {
                out.push(ParamInfo::new(
                    format!("{n}.{branch}.bias"),
                    vec![c],
                    Init::Zeros,
                    true,
                ));
            }
        }
    }
    out
}
