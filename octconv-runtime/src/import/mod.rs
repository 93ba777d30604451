//! Importing PyTorch state dicts: a `.pth` (read with candle's pickle reader) or `.safetensors` file
//! whose tensor names follow another code base's modules, renamed onto a builtin's parameters.
//!
//! Each source layout is a [`Mapping`] with one module of name rules per model family
//! ([`torchvision`], [`octconv_pytorch`]); the family is the checked model's name (`resnet`,
//! `resnext`, `mobilenet_v2`, `densenet`, …). Importing is all or nothing: [`plan`] pairs every
//! source tensor with one of our parameters and checks every shape, and lists every tensor of ours
//! with no source, every source tensor with no target and every mis-shaped pair ([`Mismatch`]).
//! `num_batches_tracked` counters are dropped; BN running statistics come along; values become f32.
//!
//! The weights [`import`] returns also hold the ImageNet normalisation both code bases train with,
//! under the names a run's weight files use ([`NORM_MEAN`], [`NORM_STD`]), so `octconv eval`
//! normalises images as the source model expects.

pub mod octconv_pytorch;
pub mod torchvision;

use anyhow::Context;
use candle_core::{DType, Device, Tensor};
use octconv_spec::params::model_params;
use octconv_spec::Model;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::Path;
use std::str::FromStr;

pub use crate::data::{IMAGENET_MEAN, IMAGENET_STD};
pub use crate::train::{NORM_MEAN, NORM_STD};

/// A source's module naming: which code base wrote the state dict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mapping {
    /// `torchvision.models` (`resnet50`, `resnext50_32x4d`, `mobilenet_v2`, `densenet121`, …).
    Torchvision,
    /// github.com/d-li14/octconv.pytorch (`oct_resnet26/50/101/152`).
    OctconvPytorch,
}

impl Mapping {
    /// Every mapping, in the order help texts list them.
    pub const ALL: [Mapping; 2] = [Mapping::Torchvision, Mapping::OctconvPytorch];

    /// The name `--map` takes.
    pub fn name(self) -> &'static str {
        match self {
            Mapping::Torchvision => "torchvision",
            Mapping::OctconvPytorch => "octconv-pytorch",
        }
    }

    /// The name rule of `model`'s family, or why this mapping cannot fill that model.
    pub fn rule(self, model: &Model) -> Result<NameRule, Unsupported> {
        match self {
            Mapping::Torchvision => torchvision::rule(model),
            Mapping::OctconvPytorch => octconv_pytorch::rule(model),
        }
    }
}

impl fmt::Display for Mapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Mapping {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Mapping::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Mapping::ALL.iter().map(|m| m.name()).collect();
                format!("unknown mapping `{s}`; use one of: {}", names.join(", "))
            })
    }
}

/// A family's name rule: the parameter of ours a source tensor fills, or `None` if it has none.
pub type NameRule = Box<dyn Fn(&str) -> Option<String>>;

/// Why a mapping cannot fill a model: its family has no rules, or the model's settings differ from
/// every source model of that family.
#[derive(Clone, Debug, PartialEq)]
pub struct Unsupported {
    /// What is wrong and how to fix it.
    pub message: String,
}

impl Unsupported {
    /// An error with `message`.
    pub fn new(message: impl Into<String>) -> Self {
        Unsupported {
            message: message.into(),
        }
    }

    /// The error for a family a mapping has no rules for; `supported` lists the ones it has.
    pub fn family(mapping: Mapping, model: &Model, supported: &[&str]) -> Self {
        Unsupported::new(format!(
            "--map {mapping} has no name rules for model family `{}` ({}); it maps {}. Import onto \
             one of those builtins, or convert the checkpoint's names yourself and save it as \
             safetensors with our parameter names (see `octconv init`)",
            model.name,
            model.call_string(),
            supported.join(", ")
        ))
    }
}

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Unsupported {}

/// A numeric argument of the checked model (`depth`, `alpha`, …), if it has one.
pub fn model_arg(model: &Model, name: &str) -> Option<f64> {
    model
        .args
        .iter()
        .find(|a| a.name == name)
        .and_then(|a| a.value.trim().parse().ok())
}

/// Errors unless the model's `alpha` is `want` (`what` names the source models in the message).
pub fn require_alpha(model: &Model, want: f64, what: &str) -> Result<(), Unsupported> {
    match model_arg(model, "alpha") {
        Some(a) if (a - want).abs() < 1e-9 => Ok(()),
        Some(a) => Err(Unsupported::new(format!(
            "{what} have α = {want}, but the model {} has α = {a}; import with --set alpha={want}",
            model.call_string()
        ))),
        None => Err(Unsupported::new(format!(
            "{what} have α = {want}, but the model {} has no `alpha` parameter",
            model.call_string()
        ))),
    }
}

/// A source tensor's name and shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceEntry {
    /// The state dict's key.
    pub name: String,
    /// The tensor's shape.
    pub shape: Vec<usize>,
}

/// One source tensor and the parameter of ours it fills.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    /// The state dict's key.
    pub source: String,
    /// Our parameter name.
    pub target: String,
}

/// Everything that keeps a state dict from filling a model, each tensor named.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Mismatch {
    /// Our parameters no source tensor fills: name and shape.
    pub missing: Vec<(String, Vec<usize>)>,
    /// Source tensors with no parameter of ours: name and shape.
    pub unexpected: Vec<(String, Vec<usize>)>,
    /// Pairs whose shapes differ: source name and shape, our name and shape.
    pub misshaped: Vec<(SourceEntry, SourceEntry)>,
    /// Parameters of ours that several source tensors map onto: ours, then the sources.
    pub duplicated: Vec<(String, Vec<String>)>,
}

impl Mismatch {
    /// Whether nothing is wrong.
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty()
            && self.unexpected.is_empty()
            && self.misshaped.is_empty()
            && self.duplicated.is_empty()
    }

    /// The number of problems.
    pub fn count(&self) -> usize {
        self.missing.len() + self.unexpected.len() + self.misshaped.len() + self.duplicated.len()
    }
}

/// At most this many lines per kind of problem are printed.
const SHOWN: usize = 25;

/// Writes `items` under `title`, at most [`SHOWN`] of them.
fn write_list(f: &mut fmt::Formatter<'_>, title: &str, items: &[String]) -> fmt::Result {
    if items.is_empty() {
        return Ok(());
    }
    writeln!(f, "{title} ({}):", items.len())?;
    for line in items.iter().take(SHOWN) {
        writeln!(f, "  - {line}")?;
    }
    if items.len() > SHOWN {
        writeln!(f, "  - … and {} more", items.len() - SHOWN)?;
    }
    Ok(())
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "the checkpoint does not fit the model ({} problem(s)); nothing was written",
            self.count()
        )?;
        let missing: Vec<String> = (self.missing.iter())
            .map(|(n, s)| format!("`{n}` {s:?}"))
            .collect();
        write_list(
            f,
            "missing: parameters of ours no source tensor fills",
            &missing,
        )?;
        let unexpected: Vec<String> = (self.unexpected.iter())
            .map(|(n, s)| format!("`{n}` {s:?}"))
            .collect();
        write_list(f, "unexpected: source tensors with no target", &unexpected)?;
        let misshaped: Vec<String> = (self.misshaped.iter())
            .map(|(s, o)| {
                format!(
                    "source `{}` {:?} → ours `{}` {:?}",
                    s.name, s.shape, o.name, o.shape
                )
            })
            .collect();
        write_list(f, "mis-shaped", &misshaped)?;
        let duplicated: Vec<String> = (self.duplicated.iter())
            .map(|(t, s)| format!("ours `{t}` ← {}", s.join(", ")))
            .collect();
        write_list(f, "filled twice", &duplicated)?;
        write!(
            f,
            "check that the spec's settings (depth, width, groups, alpha, classes) are the source \
             model's, e.g. --set classes=10, and that --map names the code base that saved it"
        )
    }
}

impl std::error::Error for Mismatch {}

/// Whether a state-dict entry is dropped without a target: BN's step counters.
pub fn dropped(name: &str) -> bool {
    name == "num_batches_tracked" || name.ends_with(".num_batches_tracked")
}

/// Pairs every source tensor with one of `model`'s parameters under `mapping`'s rules and checks
/// every shape; returns the pairs (in our parameter order) or every problem at once.
pub fn plan(
    model: &Model,
    mapping: Mapping,
    source: &[SourceEntry],
) -> anyhow::Result<Vec<Assignment>> {
    let rule = mapping.rule(model)?;
    plan_with(model, &rule, source).map_err(anyhow::Error::new)
}

/// [`plan`] with an explicit name rule.
pub fn plan_with(
    model: &Model,
    rule: &NameRule,
    source: &[SourceEntry],
) -> Result<Vec<Assignment>, Mismatch> {
    let ours: HashMap<String, Vec<usize>> = model_params(model)
        .into_iter()
        .map(|p| (p.name, p.shape))
        .collect();
    let mut mismatch = Mismatch::default();
    let mut filled: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut pairs = Vec::new();
    for entry in source.iter().filter(|e| !dropped(&e.name)) {
        let target = rule(&entry.name).filter(|t| ours.contains_key(t));
        let Some(target) = target else {
            mismatch
                .unexpected
                .push((entry.name.clone(), entry.shape.clone()));
            continue;
        };
        let shape = &ours[&target];
        if *shape != entry.shape {
            mismatch.misshaped.push((
                entry.clone(),
                SourceEntry {
                    name: target.clone(),
                    shape: shape.clone(),
                },
            ));
        }
        filled
            .entry(target.clone())
            .or_default()
            .push(entry.name.clone());
        pairs.push(Assignment {
            source: entry.name.clone(),
            target,
        });
    }
    for p in model_params(model) {
        if !filled.contains_key(&p.name) {
            mismatch.missing.push((p.name, p.shape));
        }
    }
    mismatch.duplicated = filled.into_iter().filter(|(_, s)| s.len() > 1).collect();
    mismatch.unexpected.sort();
    if !mismatch.is_empty() {
        return Err(mismatch);
    }
    let order: HashMap<String, usize> = model_params(model)
        .into_iter()
        .enumerate()
        .map(|(i, p)| (p.name, i))
        .collect();
    pairs.sort_by_key(|a| order[&a.target]);
    Ok(pairs)
}

/// The names and shapes of a state dict's tensors.
pub fn entries(tensors: &HashMap<String, Tensor>) -> Vec<SourceEntry> {
    let mut out: Vec<SourceEntry> = tensors
        .iter()
        .map(|(name, t)| SourceEntry {
            name: name.clone(),
            shape: t.dims().to_vec(),
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Renames a state dict onto `model`'s parameters (as f32), adding the ImageNet normalisation;
/// errors with every problem listed if it does not fit.
pub fn import(
    model: &Model,
    mapping: Mapping,
    mut tensors: HashMap<String, Tensor>,
) -> anyhow::Result<HashMap<String, Tensor>> {
    let pairs = plan(model, mapping, &entries(&tensors))?;
    let mut out = HashMap::with_capacity(pairs.len() + 2);
    for a in pairs {
        let t = tensors
            .remove(&a.source)
            .expect("planned from these tensors");
        let t = t
            .to_dtype(DType::F32)
            .and_then(|t| t.contiguous())
            .with_context(|| format!("converting `{}` to f32", a.source))?;
        out.insert(a.target, t);
    }
    out.insert(
        NORM_MEAN.to_string(),
        Tensor::new(&IMAGENET_MEAN, &Device::Cpu)?,
    );
    out.insert(
        NORM_STD.to_string(),
        Tensor::new(&IMAGENET_STD, &Device::Cpu)?,
    );
    Ok(out)
}

/// The zip signature PyTorch's `torch.save` files (PyTorch ≥ 1.6) start with.
const ZIP_MAGIC: &[u8] = b"PK\x03\x04";

/// Which reader a file needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Safetensors,
    Pickle,
}

/// Picks the reader: `.safetensors` by name, a zip archive as `torch.save`'s, anything else is an
/// error that says what is readable.
fn format_of(path: &Path) -> anyhow::Result<Format> {
    use std::io::Read;
    let mut head = [0u8; 4];
    let mut file = std::fs::File::open(path).with_context(|| {
        format!(
            "cannot open the checkpoint `{}`; check the path given to --from",
            path.display()
        )
    })?;
    let n = file
        .read(&mut head)
        .with_context(|| format!("cannot read the checkpoint `{}`", path.display()))?;
    if path.extension().is_some_and(|e| e == "safetensors") {
        return Ok(Format::Safetensors);
    }
    if head[..n] == *ZIP_MAGIC {
        return Ok(Format::Pickle);
    }
    anyhow::bail!(
        "`{}` is neither a safetensors file (name it *.safetensors) nor a PyTorch checkpoint in \
         torch.save's zip format; re-save it with `torch.save(model.state_dict(), path)` \
         (PyTorch ≥ 1.6) or with `safetensors.torch.save_file`",
        path.display()
    )
}

/// Strips the `module.` prefix `nn.DataParallel` adds to every key, if every key has it.
fn strip_data_parallel(tensors: HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    const PREFIX: &str = "module.";
    if tensors.is_empty() || !tensors.keys().all(|k| k.starts_with(PREFIX)) {
        return tensors;
    }
    tensors
        .into_iter()
        .map(|(k, v)| (k[PREFIX.len()..].to_string(), v))
        .collect()
}

/// Reads a `torch.save` file: the top-level state dict, or the one under `state_dict` (training
/// checkpoints such as `{'epoch': …, 'state_dict': …}`).
fn read_pickle(path: &Path) -> anyhow::Result<HashMap<String, Tensor>> {
    let why = |e: candle_core::Error| {
        anyhow::anyhow!(
            "cannot read the PyTorch checkpoint `{}`: {e}; it should hold a state dict saved with \
             `torch.save(model.state_dict(), path)`",
            path.display()
        )
    };
    let top = candle_core::pickle::read_all(path).map_err(why)?;
    if !top.is_empty() {
        return Ok(top.into_iter().collect());
    }
    match candle_core::pickle::read_all_with_key(path, Some("state_dict")) {
        Ok(nested) if !nested.is_empty() => Ok(nested.into_iter().collect()),
        _ => anyhow::bail!(
            "the PyTorch checkpoint `{}` holds no tensors at its top level nor under `state_dict`; \
             save the model's state dict itself: `torch.save(model.state_dict(), path)`",
            path.display()
        ),
    }
}

/// Reads a state dict from a `.pth` (`torch.save`, zip format) or `.safetensors` file, on the CPU,
/// without DataParallel's `module.` prefixes.
pub fn read_state_dict(path: &Path) -> anyhow::Result<HashMap<String, Tensor>> {
    let tensors = match format_of(path)? {
        Format::Pickle => read_pickle(path)?,
        Format::Safetensors => candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| {
            anyhow::anyhow!(
                "cannot read the safetensors file `{}`: {e}; is it a complete safetensors file?",
                path.display()
            )
        })?,
    };
    if tensors.is_empty() {
        anyhow::bail!("`{}` holds no tensors", path.display());
    }
    Ok(strip_data_parallel(tensors))
}

/// The parameter names of ours a rule reached, for rules that must choose between an octave pair's
/// name (`bn0.h.weight`) and a single tensor's (`bn0.weight`).
pub fn param_names(model: &Model) -> HashSet<String> {
    model_params(model).into_iter().map(|p| p.name).collect()
}

/// Splits `name` at its first `.`: `("layer1", "0.conv1.weight")`.
fn head(name: &str) -> Option<(&str, &str)> {
    name.split_once('.')
}

/// Parses `name` as `<prefix><number>.<rest>`: `indexed("layer3.1.bn2.weight", "layer")` is
/// `(3, "1.bn2.weight")`.
pub fn indexed<'a>(name: &'a str, prefix: &str) -> Option<(usize, &'a str)> {
    let (first, rest) = head(name)?;
    let n = first.strip_prefix(prefix)?.parse().ok()?;
    Some((n, rest))
}

/// Whether `p` is one of a batch norm's tensors.
pub fn is_bn_param(p: &str) -> bool {
    matches!(p, "weight" | "bias" | "running_mean" | "running_var")
}
