//! `octconv import SPEC [--set …] --from model.pth|model.safetensors [--map torchvision|octconv-pytorch]
//! -o weights.safetensors [--force]`

use super::spec_args::SpecArgs;
use octconv_runtime::import::{import, read_state_dict, Mapping};
use octconv_runtime::weights::write_safetensors_atomic;
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `octconv import`.
#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    #[command(flatten)]
    spec: SpecArgs,
    /// The PyTorch state dict: a `torch.save` file (.pth) or a .safetensors file.
    #[arg(long)]
    from: PathBuf,
    /// Whose module names the state dict has: `torchvision` or `octconv-pytorch`
    /// (github.com/d-li14/octconv.pytorch).
    #[arg(long, default_value = "torchvision", value_parser = parse_mapping)]
    map: Mapping,
    /// Where to write the weights (safetensors, our parameter names).
    #[arg(short = 'o', long = "out")]
    out: PathBuf,
    /// Overwrite `--out` if it exists.
    #[arg(long)]
    force: bool,
}

/// `--map`'s parser: the runtime's names and message.
fn parse_mapping(s: &str) -> Result<Mapping, String> {
    s.parse()
}

/// Renames the checkpoint onto the model's parameters and writes them; writes nothing unless every
/// tensor maps with the right shape.
pub fn run(args: &ImportArgs, color: bool) -> anyhow::Result<ExitCode> {
    let Some(model) = args.spec.model(color) else {
        return Ok(ExitCode::from(1));
    };
    super::spec_args::refuse_overwrite(&args.out, args.force)?;
    // Before reading a large checkpoint: a family this mapping has no rules for fails at once.
    args.map.rule(&model).map(drop)?;
    let source = read_state_dict(&args.from)?;
    let read = source.len();
    let weights = import(&model, args.map, source).map_err(|e| {
        e.context(format!(
            "importing `{}` (--map {}) onto {}",
            args.from.display(),
            args.map,
            model.call_string()
        ))
    })?;
    write_safetensors_atomic(&weights, &args.out)?;
    // `__norm.*` are the normalisation, not parameters.
    let params: Vec<_> = (weights.iter())
        .filter(|(k, _)| !k.starts_with("__"))
        .collect();
    let values: usize = params.iter().map(|(_, t)| t.elem_count()).sum();
    eprintln!(
        "imported {} tensors ({} values; {} read from {}) as {} with ImageNet's normalisation to {}",
        params.len(),
        values,
        read,
        args.from.display(),
        model.call_string(),
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}
