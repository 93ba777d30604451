//! Convolutions as ONNX `Conv` / `ConvTranspose` nodes: the plain convolution and each path of an
//! octave convolution, optionally with the batch norm that follows folded into the weights.

use super::builder::{Attr, Builder, Map, Val};
use super::fold::{BnFold, BranchFold};
use anyhow::{bail, Result};
use octconv_spec::ir::{ConvSpec, OctConvSpec, Path};
use octconv_spec::Dims;

/// One convolution node's geometry.
struct Geometry {
    kernel: usize,
    stride: usize,
    padding: usize,
    groups: usize,
}

/// The parameters of one convolution node: the weight's name and the bias's, and whether the
/// weights file has that bias (a folded batch norm can add one it does not have).
struct Params<'p> {
    weight: &'p str,
    bias: &'p str,
    has_bias: bool,
}

/// `Conv` (or `ConvTranspose` when `transposed`) of `x`, producing `out_c` channels; with `fold`, the
/// weights and bias are the folded ones.
#[allow(clippy::too_many_arguments)]
fn conv_node(
    b: &mut Builder,
    name: &str,
    x: &Map,
    p: Params,
    out_c: usize,
    g: Geometry,
    fold: Option<&BranchFold>,
    transposed: bool,
) -> Result<Map> {
    let (w, bias) = match fold {
        None => (
            b.weight(p.weight)?,
            p.has_bias.then(|| b.weight(p.bias)).transpose()?,
        ),
        Some(f) => {
            let (values, dims) = b.param(p.weight)?;
            let bias_values = p.has_bias.then(|| b.param(p.bias)).transpose()?;
            let (values, bias_values) =
                f.apply(&values, &dims, bias_values.map(|(v, _)| v), transposed)?;
            let w = b.floats(p.weight, &dims, &values);
            let bias = bias_values.map(|v| b.floats(p.bias, &[out_c], &v));
            (w, bias)
        }
    };
    let k = g.kernel as i64;
    let p = g.padding as i64;
    let mut inputs = vec![x.name.as_str(), w.as_str()];
    if let Some(bias) = &bias {
        inputs.push(bias);
    }
    let (op, out_dims) = if transposed {
        // Stride 2 with kernel 2 (no padding) or kernel 3 (padding 1, output padding 1): ×2 exactly.
        (
            "ConvTranspose",
            Dims::new(out_c, x.dims.h * 2, x.dims.w * 2),
        )
    } else {
        let size = |s: usize| (s + 2 * g.padding - g.kernel) / g.stride + 1;
        ("Conv", Dims::new(out_c, size(x.dims.h), size(x.dims.w)))
    };
    let mut attrs = vec![
        Attr::Ints("kernel_shape", vec![k, k]),
        Attr::Ints("strides", vec![g.stride as i64; 2]),
        Attr::Ints("pads", vec![p; 4]),
        Attr::Int("group", g.groups as i64),
    ];
    if transposed && g.kernel == 3 {
        attrs.push(Attr::Ints("output_padding", vec![1, 1]));
    }
    let out = b.node(op, name, &inputs, &attrs);
    Ok(Map {
        name: out,
        dims: out_dims,
    })
}

/// A plain convolution.
pub(super) fn conv(
    b: &mut Builder,
    name: &str,
    s: &ConvSpec,
    x: &Val,
    fold: Option<&BnFold>,
) -> Result<Val> {
    let Val::Single(x) = x else {
        bail!("internal error: `{name}` (conv) reads an octave pair")
    };
    let (w, bias) = (format!("{name}.weight"), format!("{name}.bias"));
    let p = Params {
        weight: &w,
        bias: &bias,
        has_bias: s.bias,
    };
    let g = Geometry {
        kernel: s.kernel,
        stride: s.stride,
        padding: s.padding,
        groups: s.groups,
    };
    let fold = fold.map(|f| f.branch("h", true)).transpose()?;
    let y = conv_node(b, name, x, p, s.out_c, g, fold.as_ref(), false)?;
    Ok(Val::Single(y))
}

/// An octave convolution (or its transposed form), one node per path, as the runtime computes it:
/// with stride 2 the high input is pooled before H→H and once more for H→L, the low input before L→L,
/// and L→H is not upsampled; with stride 1, H→L pools the high input once and L→H is upsampled ×2.
/// With `downsample = stride` (single-branch layers) the one path is a `Conv` with strides 2 and no
/// pooling. The transposed form doubles every path's size, pools the high input for H→L and upsamples L→H.
/// Each output branch's bias rides on the first convolution of that branch.
pub(super) fn octconv(
    b: &mut Builder,
    name: &str,
    s: &OctConvSpec,
    x: &Val,
    fold: Option<&BnFold>,
    transposed: bool,
) -> Result<Val> {
    let (xh, xl) = x.branches()?;
    let s2 = s.stride == 2 && !transposed;
    let strided = s.strided_conv() && !transposed;
    if strided && (s.in_l > 0 || s.out_l > 0) {
        bail!("internal error: `{name}` convolves with stride 2 but has a low branch");
    }
    let xh = match xh {
        Some(h) if s2 && !strided => Some(b.pool2(&format!("{name}.h.pool"), h)),
        other => other.cloned(),
    };
    let mut high: Vec<Map> = Vec::new();
    let mut low: Vec<Map> = Vec::new();
    for path in s.paths() {
        let Some((in_c, out_c)) = s.path_channels(path) else {
            continue;
        };
        let input = match path {
            Path::HH | Path::HL => xh.clone(),
            Path::LH | Path::LL => xl.cloned(),
        };
        let Some(input) = input else {
            bail!(
                "internal error: `{name}` has path {} but no input branch",
                path.arrow()
            )
        };
        let input = match path {
            Path::HL => b.pool2(&format!("{name}.hl.pool"), &input),
            Path::LL if s2 => b.pool2(&format!("{name}.ll.pool"), &input),
            _ => input,
        };
        let to_high = matches!(path, Path::HH | Path::LH);
        let (branch, into) = if to_high {
            ("h", &mut high)
        } else {
            ("l", &mut low)
        };
        // The branch's bias (and a folded batch norm's shift) goes on its first path.
        let first = into.is_empty();
        let bias = format!("{name}.{branch}.bias");
        let branch_fold = fold.map(|f| f.branch(branch, first)).transpose()?;
        let g = Geometry {
            kernel: s.kernel,
            stride: if transposed || strided { 2 } else { 1 },
            padding: if transposed {
                usize::from(s.kernel == 3)
            } else {
                s.kernel / 2
            },
            groups: if s.depthwise { in_c } else { s.groups },
        };
        let w = format!("{name}.{}.weight", path.as_str());
        let node = format!("{name}.{}", path.as_str());
        let p = Params {
            weight: &w,
            bias: &bias,
            has_bias: s.bias && first,
        };
        let y = conv_node(
            b,
            &node,
            &input,
            p,
            out_c,
            g,
            branch_fold.as_ref(),
            transposed,
        )?;
        let y = if path == Path::LH && !s2 {
            b.upsample(&format!("{node}.up"), &y, 2)
        } else {
            y
        };
        into.push(y);
    }
    let join = |b: &mut Builder, parts: Vec<Map>, tag: &str| -> Result<Option<Map>> {
        let Some(first) = parts.first() else {
            return Ok(None);
        };
        let dims = first.dims;
        let names: Vec<&str> = parts.iter().map(|m| m.name.as_str()).collect();
        let name = b.sum(&format!("{name}.{tag}"), &names)?;
        Ok(Some(Map { name, dims }))
    };
    let high = join(b, high, "h")?;
    let low = join(b, low, "l")?;
    match (high, low) {
        (Some(h), None) if s.out_l == 0 => Ok(Val::Single(h)),
        (high, Some(low)) => Ok(Val::Pair { high, low }),
        _ => bail!("internal error: `{name}`: no path produces the output"),
    }
}
