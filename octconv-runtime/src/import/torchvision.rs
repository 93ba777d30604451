//! torchvision's module names onto our builtins at α = 0: `resnet50/101/152` onto `resnet`,
//! `resnext50_32x4d`/`resnext101_32x8d` onto `resnext`, `mobilenet_v2` onto `mobilenet_v2`,
//! `densenet121/161/169/201` onto `densenet`.
//!
//! The builtins follow torchvision's layouts, so every tensor has exactly one counterpart of the
//! same shape. The computation matches too only where our stride-2 convolutions convolve with
//! stride 2 as torchvision's do: by default an octave convolution (also at α = 0) average-pools 2×2
//! and then convolves with stride 1 (the OctConv paper's rule), so [`require_strided`] refuses a
//! ResNet, ResNeXt or MobileNet v2 built that way and asks for `--set strided=true` (see
//! `docs/import.md`); DenseNet has no such convolution.

use super::{indexed, is_bn_param, model_arg, require_alpha, Mapping, NameRule, Unsupported};
use octconv_spec::ir::Op;
use octconv_spec::Model;

/// The families this mapping fills.
pub const FAMILIES: [&str; 4] = ["resnet", "resnext", "mobilenet_v2", "densenet"];

/// Errors if any stride-2 octave convolution of `model` pools 2×2 before convolving (the default
/// `downsample = pool`), which torchvision's models never do: imported weights would then compute
/// another function. The builtins' `strided = true` makes them convolve with stride 2.
pub fn require_strided(model: &Model) -> Result<(), Unsupported> {
    let pooling: Vec<&str> = (model.layers.iter())
        .filter(|l| matches!(&l.op, Op::OctConv(o) if o.stride == 2 && !o.strided_conv()))
        .map(|l| l.name.as_str())
        .collect();
    let Some(first) = pooling.first() else {
        return Ok(());
    };
    Err(Unsupported::new(format!(
        "torchvision's {} convolves with stride 2 where {} average-pools 2×2 and then convolves \
         with stride 1 (the OctConv paper's rule; {} such layer(s), the first `{first}`), so the \
         imported weights would compute something else; import with --set strided=true, which \
         builds the model with torchvision's stride-2 convolutions",
        model.name,
        model.call_string(),
        pooling.len(),
    )))
}

/// The name rule of `model`'s family.
pub fn rule(model: &Model) -> Result<NameRule, Unsupported> {
    if !FAMILIES.contains(&model.name.as_str()) {
        return Err(Unsupported::family(Mapping::Torchvision, model, &FAMILIES));
    }
    require_alpha(model, 0.0, "torchvision's models (one frequency)")?;
    require_strided(model)?;
    match model.name.as_str() {
        "resnet" => {
            let blocks = resnet_blocks(model)?;
            Ok(Box::new(move |n| resnet(n, &blocks)))
        }
        "resnext" => Ok(Box::new(resnext)),
        "mobilenet_v2" => Ok(Box::new(mobilenet_v2)),
        _ => {
            let blocks = densenet_blocks(model)?;
            Ok(Box::new(move |n| densenet(n, &blocks)))
        }
    }
}

/// The model's `depth` argument.
fn depth(model: &Model) -> Result<u32, Unsupported> {
    model_arg(model, "depth")
        .map(|d| d as u32)
        .ok_or_else(|| Unsupported::new(format!("{} has no `depth`", model.call_string())))
}

/// Bottleneck blocks per stage of `resnet(depth)` (as in specs/resnet.oct).
pub fn resnet_blocks(model: &Model) -> Result<[usize; 4], Unsupported> {
    match depth(model)? {
        26 => Ok([2, 2, 2, 2]),
        50 => Ok([3, 4, 6, 3]),
        101 => Ok([3, 4, 23, 3]),
        152 => Ok([3, 8, 36, 3]),
        d => Err(Unsupported::new(format!("no ResNet of depth {d}"))),
    }
}

/// Dense layers per block of `densenet(depth)` (as in specs/densenet.oct).
fn densenet_blocks(model: &Model) -> Result<[usize; 4], Unsupported> {
    match depth(model)? {
        121 => Ok([6, 12, 24, 16]),
        161 => Ok([6, 12, 36, 24]),
        169 => Ok([6, 12, 32, 32]),
        201 => Ok([6, 12, 48, 32]),
        d => Err(Unsupported::new(format!("no DenseNet of depth {d}"))),
    }
}

/// The stem and head every torchvision ResNet/ResNeXt shares: `conv1`, `bn1`, `fc`.
fn resnet_stem_and_head(name: &str) -> Option<String> {
    if name == "conv1.weight" {
        return Some("conv0.weight".into());
    }
    if let Some(p) = name.strip_prefix("bn1.").filter(|p| is_bn_param(p)) {
        return Some(format!("bn0.{p}"));
    }
    match name {
        "fc.weight" | "fc.bias" => Some(format!("linear0.{}", &name[3..])),
        _ => None,
    }
}

/// Inside one bottleneck, torchvision's `conv{i}`/`bn{i}` (i = 1, 2, 3) and `downsample.{0,1}`,
/// given the names of our block's main branch and shortcut.
fn bottleneck(rest: &str, branch: &str, shortcut: &str) -> Option<String> {
    if let Some(p) = rest.strip_prefix("downsample.") {
        return match p.split_once('.')? {
            ("0", "weight") => Some(format!("{shortcut}.octconv0.hh.weight")),
            ("1", bn) if is_bn_param(bn) => Some(format!("{shortcut}.bn0.{bn}")),
            _ => None,
        };
    }
    if let Some((i, "weight")) = indexed(rest, "conv") {
        return (1..=3)
            .contains(&i)
            .then(|| format!("{branch}.octconv{}.hh.weight", i - 1));
    }
    let (i, p) = indexed(rest, "bn")?;
    ((1..=3).contains(&i) && is_bn_param(p)).then(|| format!("{branch}.bn{}.{p}", i - 1))
}

/// Our name of block `b` of stage `s` (both from 0) of `resnet` with `blocks` per stage:
/// `bottleneck_down{s}` first, then `bottleneck{k}` numbered across stages.
pub fn resnet_block(s: usize, b: usize, blocks: &[usize; 4]) -> Option<String> {
    if s >= 4 || b >= blocks[s] {
        return None;
    }
    if b == 0 {
        return Some(format!("bottleneck_down{s}"));
    }
    let before: usize = blocks[..s].iter().map(|n| n - 1).sum();
    Some(format!("bottleneck{}", before + b - 1))
}

/// `layer{s}.{b}.…` as (stage from 0, block in the stage, the rest).
fn stage_block(name: &str) -> Option<(usize, usize, &str)> {
    let (s, rest) = indexed(name, "layer")?;
    let (b, rest) = rest.split_once('.')?;
    (1..=4)
        .contains(&s)
        .then_some((s - 1, b.parse().ok()?, rest))
}

/// torchvision `resnet50` → `resnet(depth = 50, alpha = 0, strided = true)`; blocks named by [`resnet_block`].
pub fn resnet(name: &str, blocks: &[usize; 4]) -> Option<String> {
    if let Some(ours) = resnet_stem_and_head(name) {
        return Some(ours);
    }
    let (s, b, rest) = stage_block(name)?;
    let block = resnet_block(s, b, blocks)?;
    let branch = format!("{block}.res0.bottleneck_branch0");
    let shortcut = format!("{block}.res0.shortcut");
    if b != 0 && rest.starts_with("downsample.") {
        return None;
    }
    bottleneck(rest, &branch, &shortcut)
}

/// torchvision `resnext50_32x4d` → `resnext(depth = 50, groups = 32, width = 4, alpha = 0,
/// strided = true)`: block
/// `b` of stage `s` is `resnext_stage{s}.res{b}`.
pub fn resnext(name: &str) -> Option<String> {
    if let Some(ours) = resnet_stem_and_head(name) {
        return Some(ours);
    }
    let (s, b, rest) = stage_block(name)?;
    let block = format!("resnext_stage{s}.res{b}");
    let shortcut = format!("{block}.shortcut");
    if b != 0 && rest.starts_with("downsample.") {
        return None;
    }
    bottleneck(rest, &format!("{block}.resnext_branch0"), &shortcut)
}

/// Inverted residual blocks per stage of MobileNet v2 (`features.1` … `features.17`).
const MOBILENET_V2_STAGES: [usize; 7] = [1, 2, 3, 4, 3, 3, 1];

/// torchvision's block `features.{i}` (1 ≤ i ≤ 17) as our block's name: the first block of stage
/// `s` is `stage{s}.inverted0`, the others `stage{s}.res{j}.inverted0`.
fn mobilenet_v2_block(i: usize) -> Option<String> {
    let mut first = 1;
    for (s, n) in MOBILENET_V2_STAGES.into_iter().enumerate() {
        if i < first + n {
            let j = i - first;
            return Some(if j == 0 {
                format!("stage{s}.inverted0")
            } else {
                format!("stage{s}.res{}.inverted0", j - 1)
            });
        }
        first += n;
    }
    None
}

/// Inside block `features.{i}`: `conv.{k}.0` / `conv.{k}.1` are the conv and BN of the k-th
/// conv–BN–ReLU6 (expansion, depthwise; block 1 has no expansion), then `conv.{m}` and `conv.{m+1}`
/// the linear projection and its BN; ours number them `octconv0…` and `bn0…` in the same order.
fn inverted_residual(i: usize, rest: &str) -> Option<String> {
    let block = mobilenet_v2_block(i)?;
    let activated = if i == 1 { 1 } else { 2 };
    let (k, rest) = indexed(rest.strip_prefix("conv.")?, "")?;
    if k < activated {
        return match rest.split_once('.')? {
            ("0", "weight") => Some(format!("{block}.octconv{k}.hh.weight")),
            ("1", p) if is_bn_param(p) => Some(format!("{block}.bn{k}.{p}")),
            _ => None,
        };
    }
    match (k - activated, rest) {
        (0, "weight") => Some(format!("{block}.octconv{k}.hh.weight")),
        (1, p) if is_bn_param(p) => Some(format!("{block}.bn{activated}.{p}")),
        _ => None,
    }
}

/// torchvision `mobilenet_v2` → `mobilenet_v2(width = 1.0, alpha = 0, strided = true)`: the stem `features.0` is
/// our `octconv0`/`bn0`, the last 1×1 `features.18` our `conv0`/`bn1`, `classifier.1` our `linear0`.
pub fn mobilenet_v2(name: &str) -> Option<String> {
    if let Some(p) = name.strip_prefix("classifier.1.") {
        return matches!(p, "weight" | "bias").then(|| format!("linear0.{p}"));
    }
    let (i, rest) = indexed(name.strip_prefix("features.")?, "")?;
    match i {
        0 | 18 => {
            let (conv, bn) = if i == 0 {
                ("octconv0.hh", "bn0")
            } else {
                ("conv0", "bn1")
            };
            match rest.split_once('.')? {
                ("0", "weight") => Some(format!("{conv}.weight")),
                ("1", p) if is_bn_param(p) => Some(format!("{bn}.{p}")),
                _ => None,
            }
        }
        _ => inverted_residual(i, rest),
    }
}

/// Inside dense layer `denselayer{l}`: `norm1`, `conv1`, `norm2`, `conv2` are our branch's `bn0`,
/// `octconv0`, `bn1`, `octconv1`.
fn dense_layer(layer: usize, rest: &str) -> Option<String> {
    let branch = format!("dense_layer{layer}.branches0.1");
    if let Some((i, p)) = indexed(rest, "norm") {
        return ((1..=2).contains(&i) && is_bn_param(p))
            .then(|| format!("{branch}.bn{}.{p}", i - 1));
    }
    let (i, p) = indexed(rest, "conv")?;
    ((1..=2).contains(&i) && p == "weight").then(|| format!("{branch}.octconv{}.hh.weight", i - 1))
}

/// torchvision `densenet121` → `densenet(depth = 121, growth = 32, alpha = 0)`: dense layers are
/// numbered across blocks (`dense_layer{k}`), `transition{t}` from 0, `norm5` is our last `bn1`.
pub fn densenet(name: &str, blocks: &[usize; 4]) -> Option<String> {
    if let Some(p) = name.strip_prefix("classifier.") {
        return matches!(p, "weight" | "bias").then(|| format!("linear0.{p}"));
    }
    let rest = name.strip_prefix("features.")?;
    match rest.split_once('.')? {
        ("conv0", "weight") => return Some("conv0.weight".into()),
        ("norm0", p) if is_bn_param(p) => return Some(format!("bn0.{p}")),
        ("norm5", p) if is_bn_param(p) => return Some(format!("bn1.{p}")),
        _ => {}
    }
    if let Some((t, rest)) = indexed(rest, "transition") {
        if !(1..=3).contains(&t) {
            return None;
        }
        return match rest.split_once('.')? {
            ("norm", p) if is_bn_param(p) => Some(format!("transition{}.bn0.{p}", t - 1)),
            ("conv", "weight") => Some(format!("transition{}.octconv0.hh.weight", t - 1)),
            _ => None,
        };
    }
    let (b, rest) = indexed(rest, "denseblock")?;
    let (l, rest) = indexed(rest, "denselayer")?;
    if !(1..=4).contains(&b) || l == 0 || l > blocks[b - 1] {
        return None;
    }
    let before: usize = blocks[..b - 1].iter().sum();
    dense_layer(before + l - 1, rest)
}
