//! `octconv parity SPEC --device cuda [--alphas 0,0.25,0.5,0.75] [--train] [--dtype f32,f64]
//! [--reference f64] [--batch 2] [--seed S] [--tol 1e-3] [--json]`: runs the same model with the
//! same seeded weights and input on the CPU (with our kernels) and on another device, and reports the
//! largest difference relative to the reference's largest magnitude: of the eval-mode outputs, and
//! with `--train` of the training loss and of every parameter's gradient after one training-mode
//! forward and backward.
//!
//! The reference is the CPU in f64 by default, so that errors are measured against (nearly) exact
//! values; the other side runs in each `--dtype`. An f32 side is also compared with our own CPU
//! kernels in f32 against the same reference (the baseline): a deep network with batch norm on a
//! tiny batch is ill-conditioned enough that any f32 implementation's gradients are off by more
//! than 1e-3 (a pre-activation that rounds to the other side of a ReLU's kink moves a gradient), so
//! an f32 side passes when it is within `--tol`, or no worse than 4× the CPU's own f32 error. An f64
//! side must be within `--tol`: there, every difference is a difference of the computation.
//!
//! With `--device cpu` the other side is the CPU with our kernels switched off: exactly the candle
//! ops that every other device runs, so the GPU's code path can be checked on any machine.

use super::spec_args::{DeviceArgs, SpecArgs};
use candle_core::{DType, Device, ModuleT, Tensor, Var};
use candle_nn::VarBuilder;
use octconv_runtime::init::init_params;
use octconv_runtime::OctModel;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::collections::HashMap;
use std::process::ExitCode;

/// Arguments of `octconv parity`.
#[derive(clap::Args, Debug)]
pub struct ParityArgs {
    #[command(flatten)]
    spec: SpecArgs,
    #[command(flatten)]
    device: DeviceArgs,
    /// Check the spec at each of these values of its `alpha` parameter (default: the spec as given).
    #[arg(long, value_delimiter = ',')]
    alphas: Vec<f64>,
    /// Also compare one training step: the training-mode loss and every parameter's gradient.
    #[arg(long)]
    train: bool,
    /// Element types of the other side, each compared with the reference.
    #[arg(long, value_delimiter = ',', default_value = "f32", value_parser = ["f32", "f64"])]
    dtype: Vec<String>,
    /// Element type of the CPU reference.
    #[arg(long, default_value = "f64", value_parser = ["f32", "f64"])]
    reference: String,
    /// Images in the random input batch.
    #[arg(long, default_value_t = 2)]
    batch: usize,
    /// Seed of the weights, the input and the labels.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Largest acceptable relative difference (see the command's description); above it the exit
    /// status is 1.
    #[arg(long, default_value_t = 1e-3)]
    tol: f64,
    /// Print one JSON object per α instead of lines.
    #[arg(long)]
    json: bool,
}

/// A gradient tensor whose largest magnitude is below this fraction of the model's largest gradient
/// vanishes (for instance a bias followed by a batch norm, whose exact gradient is 0): its error is
/// measured against that floor instead of its own rounding noise.
const VANISHING: f64 = 1e-3;

/// One comparison: which tensor, its largest absolute difference and the reference's scale.
#[derive(Serialize, Debug, Clone)]
struct Diff {
    what: String,
    max_abs_error: f64,
    max_abs_reference: f64,
    relative: f64,
}

fn f64_values(t: &Tensor) -> anyhow::Result<Tensor> {
    Ok(t.to_device(&Device::Cpu)?
        .to_dtype(DType::F64)?
        .flatten_all()?)
}

fn max_abs(t: &Tensor) -> anyhow::Result<f64> {
    Ok(f64_values(t)?.abs()?.max_all()?.to_scalar::<f64>()?)
}

impl Diff {
    /// `other` against `reference`, relative to `max(max |reference|, floor)`.
    fn of(
        what: impl Into<String>,
        reference: &Tensor,
        other: &Tensor,
        floor: f64,
    ) -> anyhow::Result<Self> {
        if reference.dims() != other.dims() {
            anyhow::bail!(
                "shapes differ: {:?} on the CPU, {:?} on the other side",
                reference.dims(),
                other.dims()
            );
        }
        let (a, b) = (f64_values(reference)?, f64_values(other)?);
        let max_abs_error = (&a - &b)?.abs()?.max_all()?.to_scalar::<f64>()?;
        let max_abs_reference = a.abs()?.max_all()?.to_scalar::<f64>()?;
        let relative = if max_abs_error == 0.0 {
            0.0
        } else {
            max_abs_error / max_abs_reference.max(floor).max(f64::MIN_POSITIVE)
        };
        Ok(Diff {
            what: what.into(),
            max_abs_error,
            max_abs_reference,
            relative,
        })
    }
}

/// What one side computes: the eval output, and with `--train` the loss and the gradients.
struct Side {
    output: Tensor,
    loss: Option<Tensor>,
    grads: Vec<(String, Tensor)>,
}

/// The differences of one side from the reference.
#[derive(Serialize)]
struct Diffs {
    output: Diff,
    loss: Option<Diff>,
    gradients: usize,
    worst_gradient: Option<Diff>,
}

impl Diffs {
    fn between(reference: &Side, other: &Side, device: &str) -> anyhow::Result<Self> {
        let output = Diff::of("output", &reference.output, &other.output, 0.0)?;
        let loss = match (&reference.loss, &other.loss) {
            (Some(a), Some(b)) => Some(Diff::of("loss", a, b, 0.0)?),
            _ => None,
        };
        if reference.grads.len() != other.grads.len() {
            anyhow::bail!(
                "{} parameters have a gradient on the CPU, {} on {device}",
                reference.grads.len(),
                other.grads.len(),
            );
        }
        let mut largest = 0f64;
        for (_, g) in &reference.grads {
            largest = largest.max(max_abs(g)?);
        }
        let mut worst: Option<Diff> = None;
        for ((name, a), (name_b, b)) in reference.grads.iter().zip(&other.grads) {
            if name != name_b {
                anyhow::bail!("gradient of `{name}` on the CPU, of `{name_b}` on {device}");
            }
            let diff = Diff::of(format!("gradient of {name}"), a, b, VANISHING * largest)?;
            if worst.as_ref().is_none_or(|w| diff.relative > w.relative) {
                worst = Some(diff);
            }
        }
        Ok(Diffs {
            output,
            loss,
            gradients: reference.grads.len(),
            worst_gradient: worst,
        })
    }

    fn all(&self) -> impl Iterator<Item = &Diff> {
        std::iter::once(&self.output)
            .chain(&self.loss)
            .chain(&self.worst_gradient)
    }

    /// Within `tol`, or (with a baseline) no worse than 4× the baseline's error, quantity by quantity.
    fn pass(&self, tol: f64, baseline: Option<&Diffs>) -> bool {
        match baseline {
            None => self.all().all(|d| d.relative <= tol),
            Some(b) => self
                .all()
                .zip(b.all())
                .all(|(d, base)| d.relative <= tol.max(4.0 * base.relative)),
        }
    }

    fn describe(&self) -> String {
        let mut s = format!(
            "output {:.2e} (max abs {:.2e}, outputs up to {:.2e})",
            self.output.relative, self.output.max_abs_error, self.output.max_abs_reference
        );
        if let Some(l) = &self.loss {
            s += &format!("; train loss {:.2e}", l.relative);
        }
        if let Some(g) = &self.worst_gradient {
            s += &format!(
                "; {} gradients, worst {:.2e} ({})",
                self.gradients, g.relative, g.what
            );
        }
        s
    }
}

/// One side's result in the report.
#[derive(Serialize)]
struct Checked {
    dtype: String,
    #[serde(flatten)]
    diffs: Diffs,
    ok: bool,
}

/// The report of one α.
#[derive(Serialize)]
struct Report {
    spec: String,
    alpha: Option<f64>,
    device: String,
    /// What the reference is (device, kernels, dtype).
    reference: String,
    /// What the other side is.
    other: String,
    batch: usize,
    output_dims: Vec<usize>,
    /// The other side in each `--dtype` against the reference.
    sides: Vec<Checked>,
    /// Our CPU kernels in f32 against the same reference, when it is not f32 itself.
    cpu_f32_baseline: Option<Diffs>,
    tol: f64,
    ok: bool,
}

struct Inputs<'a> {
    model: &'a octconv_spec::Model,
    seed: u64,
    x: &'a Tensor,
    labels: &'a [u32],
    train: bool,
}

fn dtype_of(name: &str) -> DType {
    if name == "f64" {
        DType::F64
    } else {
        DType::F32
    }
}

/// One side: with our kernels on or off (restored after), in `dtype`, on `device`.
fn compute(inp: &Inputs, kernels: bool, dtype: DType, device: &Device) -> anyhow::Result<Side> {
    octconv_runtime::kernels::set_enabled(kernels);
    let side = compute_here(inp, dtype, device);
    octconv_runtime::kernels::set_enabled(true);
    side
}

fn compute_here(inp: &Inputs, dtype: DType, device: &Device) -> anyhow::Result<Side> {
    let vars: HashMap<String, Var> = init_params(inp.model, inp.seed, dtype, &Device::Cpu)?
        .into_iter()
        .map(|(k, v)| Ok((k, Var::from_tensor(&v.to_device(device)?)?)))
        .collect::<anyhow::Result<_>>()?;
    let build = || -> anyhow::Result<OctModel> {
        let tensors = vars
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect();
        Ok(OctModel::new(
            inp.model.clone(),
            VarBuilder::from_tensors(tensors, dtype, device),
        )?)
    };
    let x = inp.x.to_dtype(dtype)?.to_device(device)?;
    // Eval mode first, while the running statistics are still the initial ones.
    let output = build()?.infer(&x)?.to_device(&Device::Cpu)?;
    if !inp.train {
        return Ok(Side {
            output,
            loss: None,
            grads: Vec::new(),
        });
    }
    let y = build()?.forward_t(&x, true)?;
    let loss = if y.rank() == 2 {
        let classes = y.dim(1)? as u32;
        let labels: Vec<u32> = inp.labels.iter().map(|l| l % classes).collect();
        let labels = Tensor::from_vec(labels, inp.labels.len(), device)?;
        candle_nn::loss::cross_entropy(&y, &labels)?
    } else {
        y.sqr()?.mean_all()?
    };
    let store = loss.backward()?;
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    let mut grads = Vec::new();
    for name in names {
        if let Some(g) = store.get(vars[name].as_tensor()) {
            grads.push((name.clone(), g.to_device(&Device::Cpu)?));
        }
    }
    Ok(Side {
        output,
        loss: Some(loss.to_device(&Device::Cpu)?),
        grads,
    })
}

fn compare(
    args: &ParityArgs,
    alpha: Option<f64>,
    model: &octconv_spec::Model,
    device: &Device,
) -> anyhow::Result<Report> {
    let d = model.input;
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed ^ 0x5eed);
    let v: Vec<f32> = (0..args.batch * d.c * d.h * d.w)
        .map(|_| rng.random::<f32>() * 2.0 - 1.0)
        .collect();
    let x = Tensor::from_vec(v, (args.batch, d.c, d.h, d.w), &Device::Cpu)?;
    let labels: Vec<u32> = (0..args.batch).map(|_| rng.random::<u32>()).collect();
    let inputs = Inputs {
        model,
        seed: args.seed,
        x: &x,
        labels: &labels,
        train: args.train,
    };
    let on_cpu = device.is_cpu();
    let reference = compute(&inputs, true, dtype_of(&args.reference), &Device::Cpu)?;
    let baseline = if args.reference != "f32" && args.dtype.iter().any(|t| t == "f32") {
        let cpu = compute(&inputs, true, DType::F32, &Device::Cpu)?;
        Some(Diffs::between(&reference, &cpu, "cpu")?)
    } else {
        None
    };
    let mut sides = Vec::new();
    for name in &args.dtype {
        // On the CPU the other side runs candle's ops, as every other device does.
        let other = compute(&inputs, !on_cpu, dtype_of(name), device)?;
        let diffs = Diffs::between(&reference, &other, &args.device.device)?;
        let base = baseline.as_ref().filter(|_| name == "f32");
        sides.push(Checked {
            dtype: name.clone(),
            ok: diffs.pass(args.tol, base),
            diffs,
        });
    }
    Ok(Report {
        spec: args.spec.spec.clone(),
        alpha,
        device: args.device.device.clone(),
        reference: format!("cpu, our kernels, {}", args.reference),
        other: if on_cpu {
            "cpu, candle ops (the path of every other device)".into()
        } else {
            "candle ops".into()
        },
        batch: args.batch,
        output_dims: reference.output.dims().to_vec(),
        ok: sides.iter().all(|s| s.ok),
        sides,
        cpu_f32_baseline: baseline,
        tol: args.tol,
    })
}

fn print_report(r: &Report) {
    let alpha = r.alpha.map(|a| format!(" at α = {a}")).unwrap_or_default();
    println!(
        "{}{alpha}: {} against the cpu in {}, output {:?}:",
        r.spec,
        r.device,
        r.reference.rsplit(' ').next().unwrap_or(""),
        r.output_dims
    );
    for s in &r.sides {
        println!(
            "  {} {}: {} {}",
            r.device,
            s.dtype,
            s.diffs.describe(),
            if s.ok { "ok" } else { "ABOVE --tol" }
        );
    }
    if let Some(b) = &r.cpu_f32_baseline {
        println!("  cpu f32 (baseline): {}", b.describe());
    }
}

/// Compares the device's results with the CPU's.
pub fn run(args: &ParityArgs, color: bool) -> anyhow::Result<ExitCode> {
    if args.batch == 0 {
        anyhow::bail!("--batch must be at least 1");
    }
    if args.train && args.batch < 2 {
        anyhow::bail!(
            "--train needs --batch 2 or more (batch norm's statistics of one image are degenerate)"
        );
    }
    let models: Vec<(Option<f64>, octconv_spec::Model)> = if args.alphas.is_empty() {
        match args.spec.model(color) {
            Some(m) => vec![(None, m)],
            None => return Ok(ExitCode::from(1)),
        }
    } else {
        match args.spec.models_for_alphas(&args.alphas, color)? {
            Some(ms) => ms.into_iter().map(|(a, m)| (Some(a), m)).collect(),
            None => return Ok(ExitCode::from(1)),
        }
    };
    let device = args.device.open()?;
    let mut all_ok = true;
    for (alpha, model) in &models {
        let r = compare(args, *alpha, model, &device)?;
        all_ok &= r.ok;
        if args.json {
            println!("{}", serde_json::to_string(&r)?);
        } else {
            print_report(&r);
        }
    }
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
