//! github.com/d-li14/octconv.pytorch's module names onto our builtins: its `oct_resnet26/50/101/152`
//! onto `resnet(depth, alpha = 0.5)`.
//!
//! Its `OctResNet` has our `resnet`'s structure: stem and last stage at α = 0, stages 1–3 at α = 0.5
//! (fixed in its code), stride 2 by 2×2 average pooling before stride-1 convolutions, nearest ×2
//! upsampling of L→H, projection shortcuts that are octave convolutions. Its `OctaveConv` holds the
//! paths `conv_h2h`, `conv_h2l`, `conv_l2h`, `conv_l2l` (ours `hh`, `hl`, `lh`, `ll`) and its
//! `Conv_BN(_ACT)` the batch norms `bn_h`, `bn_l` (ours `h.`/`l.`, or no prefix where our batch norm
//! sees a single tensor).
//!
//! Its `oct_mobilenet` (MobileNet v1) does not match our `mobilenet_v1`, and the import refuses it
//! ([`MOBILENET_DIFFERENCE`]); its `OctResNet(groups > 1)` (no named constructor) groups the H→H and
//! L→L paths differently from our `resnext` and is not mapped.

use super::torchvision::{resnet_block, resnet_blocks};
use super::{indexed, is_bn_param, param_names, require_alpha, Mapping, NameRule, Unsupported};
use octconv_spec::Model;
use std::collections::HashSet;

/// The families this mapping fills.
pub const FAMILIES: [&str; 1] = ["resnet"];

/// Why octconv.pytorch's `oct_mobilenet` cannot be imported onto our `mobilenet_v1`.
pub const MOBILENET_DIFFERENCE: &str = "octconv.pytorch's oct_mobilenet (MobileNet v1) differs from \
    our mobilenet_v1 at the start: its stem is a plain 3×3 convolution with stride 2 to 32 channels \
    of one frequency (`features.0.0`, [32, 3, 3, 3]) and its first depthwise convolution runs at \
    α = 0 before the first pointwise convolution splits the channels (α 0 → 0.5), while our stem \
    is an octave convolution that pools 2×2, convolves with stride 1 and already splits the \
    channels (`octconv0.hh`/`.hl`, [16, 3, 3, 3] each at α = 0.5), so the first depthwise \
    convolution sees an octave pair. The rest (α = 0.5, the last 14×14 block returning to α = 0, the \
    7×7 blocks at α = 0) matches, but the stem's weights cannot be carried over; see docs/import.md";

/// The name rule of `model`'s family.
pub fn rule(model: &Model) -> Result<NameRule, Unsupported> {
    match model.name.as_str() {
        "resnet" => {
            require_alpha(model, 0.5, "octconv.pytorch's oct_resnet models")?;
            let blocks = resnet_blocks(model)?;
            let ours = param_names(model);
            Ok(Box::new(move |n| oct_resnet(n, &blocks, &ours)))
        }
        "mobilenet_v1" => Err(Unsupported::new(MOBILENET_DIFFERENCE)),
        _ => Err(Unsupported::family(
            Mapping::OctconvPytorch,
            model,
            &FAMILIES,
        )),
    }
}

/// `conv_h2h` … `conv_l2l` as our path names.
fn path(conv: &str) -> Option<&'static str> {
    match conv {
        "conv_h2h" => Some("hh"),
        "conv_h2l" => Some("hl"),
        "conv_l2h" => Some("lh"),
        "conv_l2l" => Some("ll"),
        _ => None,
    }
}

/// A `Conv_BN`/`Conv_BN_ACT` module's tensors (`conv.conv_h2l.weight`, `bn_h.running_var`, …) as
/// ours under the octave convolution `conv` and batch norm `bn`. A batch norm of theirs on the high
/// branch is ours without a branch prefix where ours sees a single tensor (α = 0 outputs).
fn conv_bn(rest: &str, conv: &str, bn: &str, ours: &HashSet<String>) -> Option<String> {
    if let Some(p) = rest.strip_prefix("conv.") {
        let (c, w) = p.split_once('.')?;
        let path = path(c).filter(|_| w == "weight")?;
        return Some(format!("{conv}.{path}.weight"));
    }
    let (branch, p) = rest.split_once('.')?;
    if !is_bn_param(p) {
        return None;
    }
    let octave = match branch {
        "bn_h" => format!("{bn}.h.{p}"),
        "bn_l" => format!("{bn}.l.{p}"),
        _ => return None,
    };
    let single = format!("{bn}.{p}");
    if branch == "bn_h" && !ours.contains(&octave) && ours.contains(&single) {
        Some(single)
    } else {
        Some(octave)
    }
}

/// `oct_resnet50` → `resnet(depth = 50, alpha = 0.5)`: `conv1`/`bn1`/`fc` are our stem and head;
/// `layer{s}.{b}.conv{i}` our block's `octconv{i-1}`/`bn{i-1}`, `layer{s}.0.downsample.0` its
/// shortcut; `blocks` per stage as in [`resnet_blocks`].
pub fn oct_resnet(name: &str, blocks: &[usize; 4], ours: &HashSet<String>) -> Option<String> {
    match name {
        "conv1.weight" => return Some("conv0.weight".into()),
        "fc.weight" | "fc.bias" => return Some(format!("linear0.{}", &name[3..])),
        _ => {}
    }
    if let Some(p) = name.strip_prefix("bn1.").filter(|p| is_bn_param(p)) {
        return Some(format!("bn0.{p}"));
    }
    let (s, rest) = indexed(name, "layer")?;
    let (b, rest) = rest.split_once('.')?;
    let b: usize = b.parse().ok()?;
    let block = resnet_block(s.checked_sub(1)?, b, blocks)?;
    if let Some(rest) = rest.strip_prefix("downsample.0.") {
        let shortcut = format!("{block}.res0.shortcut");
        return conv_bn(
            rest,
            &format!("{shortcut}.octconv0"),
            &format!("{shortcut}.bn0"),
            ours,
        );
    }
    let (i, rest) = indexed(rest, "conv")?;
    let i = i.checked_sub(1).filter(|i| *i < 3)?;
    let branch = format!("{block}.res0.bottleneck_branch0");
    conv_bn(
        rest,
        &format!("{branch}.octconv{i}"),
        &format!("{branch}.bn{i}"),
        ours,
    )
}
