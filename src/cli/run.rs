//! `octconv run SPEC [--set …] --weights W --input X --output Y [--force]`

use super::spec_args::SpecArgs;
use anyhow::{bail, Context};
use candle_core::DType;
use octconv_runtime::weights::{check_weights, read_safetensors, write_safetensors_atomic};
use octconv_runtime::OctModel;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `octconv run`.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    spec: SpecArgs,
    /// Weights (safetensors) with every parameter of the model, e.g. from `octconv init`.
    #[arg(long)]
    weights: PathBuf,
    /// Safetensors file with an f32 tensor named `input` of shape [N, C, H, W].
    #[arg(long)]
    input: PathBuf,
    /// Where to write the tensor `output`.
    #[arg(long)]
    output: PathBuf,
    /// Overwrite `--output` if it exists.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    device: super::spec_args::DeviceArgs,
}

/// Runs the model in eval mode and writes `output`.
pub fn run(args: &RunArgs, color: bool) -> anyhow::Result<ExitCode> {
    let Some(model) = args.spec.model(color) else {
        return Ok(ExitCode::from(1));
    };
    super::spec_args::refuse_overwrite(&args.output, args.force)?;
    let device = args.device.open()?;
    let weights = read_safetensors(&args.weights, &device)?;
    check_weights(&model, &weights)
        .with_context(|| format!("weights file `{}`", args.weights.display()))?;
    let inputs = read_safetensors(&args.input, &device)?;
    let Some(x) = inputs.get("input") else {
        let mut names: Vec<_> = inputs.keys().map(|k| format!("`{k}`")).collect();
        names.sort();
        bail!(
            "`{}` has no tensor named `input` (it has {})",
            args.input.display(),
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        );
    };
    if x.dtype() != DType::F32 {
        bail!(
            "tensor `input` in `{}` has dtype {:?}; expected f32",
            args.input.display(),
            x.dtype()
        );
    }
    let d = model.input;
    if x.rank() != 4 || x.dims()[1..] != [d.c, d.h, d.w] {
        bail!(
            "tensor `input` in `{}` has shape {:?}; model `{}` expects [N, {}, {}, {}]",
            args.input.display(),
            x.dims(),
            model.name,
            d.c,
            d.h,
            d.w
        );
    }
    let vb = candle_nn::VarBuilder::from_tensors(weights, DType::F32, &device);
    let net = OctModel::new(model, vb).context("building the model")?;
    let y = net.infer(x).context("running the model")?;
    let mut out = HashMap::new();
    out.insert("output".to_string(), y.clone());
    write_safetensors_atomic(&out, &args.output)?;
    eprintln!("wrote `output` {:?} to {}", y.dims(), args.output.display());
    Ok(ExitCode::SUCCESS)
}
