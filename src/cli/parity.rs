//! `octconv parity SPEC --device cuda [--batch 2] [--seed S] [--tol 1e-3] [--json]`: runs the same
//! model with the same seeded weights and input on the CPU and on another device and reports the
//! largest difference of the outputs (what `scripts/gpu-check.sh` runs for every builtin).

use super::spec_args::{DeviceArgs, SpecArgs};
use candle_core::{DType, Device, ModuleT, Tensor};
use candle_nn::VarBuilder;
use octconv_runtime::init::init_params;
use octconv_runtime::OctModel;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::process::ExitCode;

/// Arguments of `octconv parity`.
#[derive(clap::Args, Debug)]
pub struct ParityArgs {
    #[command(flatten)]
    spec: SpecArgs,
    #[command(flatten)]
    device: DeviceArgs,
    /// Images in the random input batch.
    #[arg(long, default_value_t = 2)]
    batch: usize,
    /// Seed of the weights and the input.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Largest acceptable max-abs difference; above it the exit status is 1.
    #[arg(long, default_value_t = 1e-3)]
    tol: f64,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

fn forward(
    model: &octconv_spec::Model,
    seed: u64,
    x: &Tensor,
    device: &Device,
) -> anyhow::Result<Tensor> {
    let params = init_params(model, seed, DType::F32, &Device::Cpu)?
        .into_iter()
        .map(|(k, v)| Ok((k, v.to_device(device)?)))
        .collect::<anyhow::Result<_>>()?;
    let net = OctModel::new(
        model.clone(),
        VarBuilder::from_tensors(params, DType::F32, device),
    )?;
    Ok(net
        .forward_t(&x.to_device(device)?, false)?
        .to_device(&Device::Cpu)?)
}

/// Compares the device's output with the CPU's.
pub fn run(args: &ParityArgs, color: bool) -> anyhow::Result<ExitCode> {
    let Some(model) = args.spec.model(color) else {
        return Ok(ExitCode::from(1));
    };
    if args.batch == 0 {
        anyhow::bail!("--batch must be at least 1");
    }
    let device = args.device.open()?;
    let d = model.input;
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed ^ 0x5eed);
    let v: Vec<f32> = (0..args.batch * d.c * d.h * d.w)
        .map(|_| rng.random::<f32>() * 2.0 - 1.0)
        .collect();
    let x = Tensor::from_vec(v, (args.batch, d.c, d.h, d.w), &Device::Cpu)?;
    let cpu = forward(&model, args.seed, &x, &Device::Cpu)?;
    let other = forward(&model, args.seed, &x, &device)?;
    let max_abs = (&cpu - &other)?.abs()?.max_all()?.to_scalar::<f32>()? as f64;
    let scale = cpu.abs()?.max_all()?.to_scalar::<f32>()? as f64;
    let ok = max_abs <= args.tol;
    if args.json {
        println!(
            "{}",
            serde_json::json!({"spec": args.spec.spec, "device": args.device.device,
                "max_abs_error": max_abs, "max_abs_output": scale, "tol": args.tol, "ok": ok})
        );
    } else {
        println!(
            "{}: {} vs cpu, output {:?}: max abs error {max_abs:.3e} (outputs up to {scale:.3e}) {}",
            args.spec.spec,
            args.device.device,
            cpu.dims(),
            if ok { "ok" } else { "ABOVE --tol" }
        );
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
