//! `octconv init SPEC [--set …] --seed S --out weights.safetensors [--force]`

use super::spec_args::SpecArgs;
use anyhow::Context;
use octconv_runtime::{init::init_params, weights::write_safetensors_atomic};
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `octconv init`.
#[derive(clap::Args, Debug)]
pub struct InitArgs {
    #[command(flatten)]
    spec: SpecArgs,
    /// Seed of the initialisation: the same seed gives the same weights on any machine.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where to write the weights (safetensors).
    #[arg(long)]
    out: PathBuf,
    /// Overwrite `--out` if it exists.
    #[arg(long)]
    force: bool,
}

/// Writes the initial weights; refuses to overwrite an existing file without `--force`.
pub fn run(args: &InitArgs, color: bool) -> anyhow::Result<ExitCode> {
    let Some(model) = args.spec.model(color) else {
        return Ok(ExitCode::from(1));
    };
    super::spec_args::refuse_overwrite(&args.out, args.force)?;
    let device = candle_core::Device::Cpu;
    let params = init_params(&model, args.seed, candle_core::DType::F32, &device)
        .context("initialising the weights")?;
    write_safetensors_atomic(&params, &args.out)?;
    let count: usize = params.values().map(|t| t.elem_count()).sum();
    eprintln!(
        "wrote {} tensors ({} values) of {} with seed {} to {}",
        params.len(),
        count,
        model.call_string(),
        args.seed,
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}
