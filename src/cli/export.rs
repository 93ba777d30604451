//! `octconv export SPEC [--set …] --weights W -o model.onnx [--opset 17] [--batch N | --dynamic-batch]
//! [--fold-bn] [--upsample resize|expand] [--force]`

use super::spec_args::SpecArgs;
use anyhow::Context;
use candle_core::Device;
use octconv_runtime::onnx::{self, Batch, ExportOptions, Upsample};
use octconv_runtime::weights::{check_weights, read_safetensors, write_bytes_atomic};
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `octconv export`.
#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    #[command(flatten)]
    spec: SpecArgs,
    /// Weights (safetensors) with every parameter of the model, e.g. from `octconv train` or `init`.
    #[arg(long)]
    weights: PathBuf,
    /// The ONNX file to write.
    #[arg(short = 'o', long = "output")]
    output: PathBuf,
    /// ONNX operator-set version (14 to 21).
    #[arg(long, default_value_t = onnx::DEFAULT_OPSET)]
    opset: i64,
    /// Fixed batch size of the graph's input and output.
    #[arg(long, default_value_t = 1, conflicts_with = "dynamic_batch")]
    batch: usize,
    /// A symbolic batch dimension `N` instead of a fixed one.
    #[arg(long)]
    dynamic_batch: bool,
    /// Fold each batch norm that directly follows a convolution into that convolution.
    #[arg(long)]
    fold_bn: bool,
    /// How nearest-neighbour upsampling is written: one `Resize` node, or reshape → `Expand` →
    /// reshape.
    #[arg(long, value_enum, default_value_t = UpsampleArg::Resize)]
    upsample: UpsampleArg,
    /// Overwrite the output file if it exists.
    #[arg(long)]
    force: bool,
}

/// `--upsample`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum UpsampleArg {
    Resize,
    Expand,
}

/// Checks the spec and the weights, builds the graph and writes it atomically.
pub fn run(args: &ExportArgs, color: bool) -> anyhow::Result<ExitCode> {
    let Some(model) = args.spec.model(color) else {
        return Ok(ExitCode::from(1));
    };
    super::spec_args::refuse_overwrite(&args.output, args.force)?;
    let weights = read_safetensors(&args.weights, &Device::Cpu)?;
    check_weights(&model, &weights)
        .with_context(|| format!("weights file `{}`", args.weights.display()))?;
    let opts = ExportOptions {
        opset: args.opset,
        batch: if args.dynamic_batch {
            Batch::Dynamic
        } else {
            Batch::Fixed(args.batch)
        },
        fold_bn: args.fold_bn,
        upsample: match args.upsample {
            UpsampleArg::Resize => Upsample::Resize,
            UpsampleArg::Expand => Upsample::Expand,
        },
    };
    let proto = onnx::export(&model, &weights, &opts)
        .with_context(|| format!("exporting `{}`", model.call_string()))?;
    let bytes = onnx::encode(&proto);
    write_bytes_atomic(&bytes, &args.output)?;
    let nodes = proto.graph.as_ref().map_or(0, |g| g.node.len());
    eprintln!(
        "wrote {} ({} nodes, {} bytes, opset {}) to {}",
        model.call_string(),
        nodes,
        bytes.len(),
        args.opset,
        args.output.display()
    );
    Ok(ExitCode::SUCCESS)
}
