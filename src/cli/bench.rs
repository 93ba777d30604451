//! `octconv bench SPEC [--alphas 0,0.25,0.5,0.75] [--batch 128] [--samples 256] [--repeats 20] [--train]
//! [--json]`: the seed's timing table — inference (or training steps) on random input for each α.

use super::spec_args::SpecArgs;
use anyhow::{bail, Context};
use candle_core::{DType, Device, ModuleT, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use indicatif::{ProgressBar, ProgressStyle};
use octconv_runtime::init::init_params;
use octconv_runtime::optim::{Sgd, SgdConfig};
use octconv_runtime::OctModel;
use octconv_spec::cost::relative;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::process::ExitCode;
use std::time::Instant;

/// Arguments of `octconv bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    spec: SpecArgs,
    /// Values of the spec's `alpha` parameter, one table row each.
    #[arg(long, value_delimiter = ',', default_values_t = [0.0, 0.25, 0.5, 0.75])]
    alphas: Vec<f64>,
    /// Images per batch.
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// Images per timed repeat (processed in batches of --batch).
    #[arg(long, default_value_t = 256)]
    samples: usize,
    /// Timed repeats per α (after one untimed warm-up).
    #[arg(long, default_value_t = 20)]
    repeats: usize,
    /// Time training steps (forward, loss, backward, SGD update) instead of inference. The loss is
    /// cross-entropy for a class-vector output and the surrogate mean(y²) for any other output. On
    /// the CPU the planned step runs (OCTCONV_STEP=autograd: candle's whole-graph autograd), and the
    /// layers without a backward of their own are listed; peak memory is that of a whole step.
    #[arg(long)]
    train: bool,
    /// Time inference of a model that is not frozen: its octave convolutions then prepare their
    /// weights (Winograd transforms, packing) on every pass, as they do while it is trained. By
    /// default inference runs frozen (`OctModel::freeze`), as a deployed model runs and as ONNX
    /// Runtime's session prepacks its weights once.
    #[arg(long, conflicts_with = "train")]
    unfrozen: bool,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Also time every layer of inference passes and report the time per kernel class (convolutions
    /// by kernel, stride and grouping; other layers by kind) against its share of the MACs. With
    /// `--train`: the time per kernel of a training step (forward and backward kernels, the SGD
    /// update, and the rest: candle's own ops and autograd bookkeeping).
    #[arg(long)]
    profile: bool,
    /// With `--profile`: how many of the slowest layers to list (0: every layer, for comparing a
    /// network layer by layer with another runtime's profile, e.g. `bench/ort_vs_ours.py`).
    #[arg(long, default_value_t = super::bench_profile::SLOWEST)]
    layers: usize,
    #[command(flatten)]
    device: super::spec_args::DeviceArgs,
}

/// One row of the table.
#[derive(Serialize, Debug, Clone)]
pub struct Row {
    /// The α of this row.
    pub alpha: f64,
    /// Mean seconds per batch.
    pub mean_s: f64,
    /// Median seconds per batch.
    pub median_s: f64,
    /// Standard deviation of the seconds per batch.
    pub std_s: f64,
    /// Median milliseconds per sample.
    pub per_sample_ms: f64,
    /// Median time relative to the first row.
    pub relative: f64,
    /// The seed's per-layer FLOPs theory 1 − ¾α(2 − α).
    pub theory: f64,
    /// MACs per sample from the cost model.
    pub macs: u64,
    /// MACs relative to the first row.
    pub macs_relative: f64,
    /// Parameters.
    pub params: u64,
    /// Measured peak memory of one forward pass, or with `--train` of one whole training step
    /// (forward, loss, backward, parameter gradients; [`super::bench_memory`]): activations plus
    /// kernel scratch.
    pub peak_bytes: u64,
    /// The activations' part of `peak_bytes`.
    pub peak_activation_bytes: u64,
    /// The kernel scratch's part of `peak_bytes`.
    pub peak_scratch_bytes: u64,
    /// The layer during which the peak occurs (with `--train`: `forward LAYER`, `the loss` or
    /// `backward LAYER` on the planned step).
    pub peak_layer: String,
    /// Bytes of weights the frozen model's kernels keep prepared (0 for a model that is not
    /// frozen, and with `--train`): not part of `peak_bytes`, which counts what one pass allocates.
    pub prepared_bytes: u64,
    /// Peak memory relative to the first row.
    pub memory_relative: f64,
    /// The seed's memory theory 1 − ¾α.
    pub memory_theory: f64,
    /// With `--profile`: the time per kernel class of an inference pass.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<Vec<super::bench_profile::ClassTime>>,
    /// With `--profile`: the slowest layers of an inference pass.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile_layers: Option<Vec<super::bench_profile::LayerTime>>,
    /// With `--train --profile`: the time per kernel of a training step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train_kernels: Option<Vec<super::bench_profile::KernelTime>>,
    /// With `--train` on the planned step: the layers without a backward of their own, which ran
    /// under candle's autograd (`OctModel::train_step`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train_fallbacks: Option<Vec<String>>,
}

/// What to time: `samples` images in batches of `batch`, `repeats` times after one warm-up.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Images per batch.
    pub batch: usize,
    /// Images per timed repeat.
    pub samples: usize,
    /// Timed repeats.
    pub repeats: usize,
    /// Training steps instead of inference.
    pub train: bool,
    /// Also profile inference by kernel class ([`super::bench_profile`]).
    pub profile: bool,
    /// With `profile`: how many of the slowest layers to list (0: all).
    pub layers: usize,
    /// Inference of the frozen model (`OctModel::freeze`: weights prepared once); never with
    /// `train`.
    pub freeze: bool,
}

impl Timing {
    /// Batches per repeat.
    pub fn batches(&self) -> usize {
        self.samples.div_ceil(self.batch)
    }
}

/// Fills the `*_relative` fields against the first row. The rows are one spec at several α, so a
/// zero baseline (a spec without convolutions) means zero everywhere: relative 1.
pub fn fill_relative(rows: &mut [Row]) {
    let Some(first) = rows.first() else { return };
    let (t0, m0, b0) = (first.median_s, first.macs, first.peak_bytes);
    for r in rows {
        r.relative = r.median_s / t0;
        r.macs_relative = relative(r.macs, m0).unwrap_or(1.0);
        r.memory_relative = relative(r.peak_bytes, b0).unwrap_or(1.0);
    }
}

#[derive(Serialize)]
struct Report {
    spec: String,
    mode: &'static str,
    batch: usize,
    samples: usize,
    repeats: usize,
    threads: usize,
    device: String,
    /// Inference of the frozen model (weights prepared once).
    frozen: bool,
    rows: Vec<Row>,
}

/// Runs the benchmark and prints the table or JSON.
pub fn run(args: &BenchArgs, color: bool) -> anyhow::Result<ExitCode> {
    if args.batch == 0 || args.samples == 0 || args.repeats == 0 {
        bail!("--batch, --samples and --repeats must be at least 1");
    }
    let Some(models) = args.spec.models_for_alphas(&args.alphas, color)? else {
        return Ok(ExitCode::from(1));
    };
    let timing = Timing {
        batch: args.batch,
        samples: args.samples,
        repeats: args.repeats,
        train: args.train,
        profile: args.profile,
        layers: args.layers,
        freeze: !args.train && !args.unfrozen,
    };
    let device = args.device.open()?;
    let bar = ProgressBar::new((models.len() * (args.repeats + 1) * timing.batches()) as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} batches {elapsed}")
            .expect("static template")
            .progress_chars("=> "),
    );
    let mut rows: Vec<Row> = Vec::new();
    for (a, model) in models {
        bar.set_prefix(format!("α = {a}"));
        let row = time_model(&timing, a, model, &device, &bar)
            .with_context(|| format!("benchmarking α = {a}"))?;
        rows.push(row);
    }
    bar.finish_and_clear();
    fill_relative(&mut rows);
    let report = Report {
        spec: args.spec.spec.clone(),
        mode: if args.train { "train" } else { "inference" },
        batch: args.batch,
        samples: args.samples,
        repeats: args.repeats,
        threads: rayon::current_num_threads(),
        device: args.device.device.clone(),
        frozen: timing.freeze,
        rows,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
        for row in &report.rows {
            if let Some(p) = &row.profile {
                let slowest = row.profile_layers.as_deref().unwrap_or_default();
                super::bench_profile::print(row.alpha, p, slowest);
            }
            if let Some(k) = &row.train_kernels {
                super::bench_profile::print_train(row.alpha, k);
            }
            if let Some(f) = &row.train_fallbacks {
                print_fallbacks(row.alpha, f);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The layers of a planned training step that ran under candle's autograd.
fn print_fallbacks(alpha: f64, layers: &[String]) {
    println!();
    if layers.is_empty() {
        println!("Every layer at α = {alpha} ran its own backward on the planned training step.");
    } else {
        println!(
            "Layers at α = {alpha} without a backward of their own on the planned training step \
             (they ran under candle's autograd, inputs copied): {}.",
            layers
                .iter()
                .map(|l| format!("`{l}`"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
}

fn print_table(r: &Report) {
    println!(
        "{} of `{}` on {}: batch {}, {} samples per repeat, {} repeats, {} threads; times per batch",
        if r.mode == "train" {
            "Training steps"
        } else {
            "Inference"
        },
        r.spec,
        r.device,
        r.batch,
        r.samples,
        r.repeats,
        r.threads
    );
    if r.frozen {
        let kept: Vec<String> = r
            .rows
            .iter()
            .map(|row| {
                format!(
                    "{:.1} MiB at α = {}",
                    row.prepared_bytes as f64 / (1 << 20) as f64,
                    row.alpha
                )
            })
            .collect();
        println!(
            "The model is frozen for inference (`OctModel::freeze`; `--unfrozen` times it without): its octave convolutions keep the weights they prepare, {} (not in the peak memory, which counts one pass).",
            kept.join(", ")
        );
    }
    println!();
    println!("| α | mean s | median s | std s | median ms / sample | relative | FLOPs theory | MACs (cost model) | peak memory | of it scratch | peak at layer | memory relative | memory theory |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for row in &r.rows {
        println!(
            "| {} | {:.4} | {:.4} | {:.4} | {:.3} | {:.0} % | {:.0} % | {:.0} % | {:.1} MiB | {:.1} MiB | `{}` | {:.0} % | {:.0} % |",
            row.alpha,
            row.mean_s,
            row.median_s,
            row.std_s,
            row.per_sample_ms,
            100.0 * row.relative,
            100.0 * row.theory,
            100.0 * row.macs_relative,
            row.peak_bytes as f64 / (1 << 20) as f64,
            row.peak_scratch_bytes as f64 / (1 << 20) as f64,
            row.peak_layer,
            100.0 * row.memory_relative,
            100.0 * row.memory_theory
        );
    }
}

fn random_images(
    n: usize,
    d: octconv_spec::Dims,
    seed: u64,
    device: &Device,
) -> anyhow::Result<Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let len = n * d.c * d.h * d.w;
    let v: Vec<f32> = (0..len).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect();
    Ok(Tensor::from_vec(v, (n, d.c, d.h, d.w), device)?)
}

/// Times `model` (seeded random weights and input) on `device`; the `*_relative` fields are left at 1
/// for [`fill_relative`]. The bar advances once per batch.
pub fn time_model(
    args: &Timing,
    alpha: f64,
    model: octconv_spec::Model,
    device: &Device,
    bar: &ProgressBar,
) -> anyhow::Result<Row> {
    let batches = args.batches();
    let (macs, params, d) = (model.macs(), model.params(), model.input);
    let x_all = random_images(args.samples, d, 1, device)?;
    let varmap = VarMap::new();
    {
        let mut data = varmap
            .data()
            .lock()
            .map_err(|_| anyhow::anyhow!("var map poisoned"))?;
        for (name, t) in init_params(&model, 0, DType::F32, &Device::Cpu)? {
            data.insert(name, Var::from_tensor(&t.to_device(device)?)?);
        }
    }
    let mut net = OctModel::new(model, VarBuilder::from_varmap(&varmap, DType::F32, device))?;
    // A class vector trains with cross-entropy against random labels; any other output (a feature
    // map, a pair merged or not) with the surrogate loss mean(y²), so any spec can be timed training.
    let probe = net.infer(&x_all.narrow(0, 0, 1)?)?;
    let classes = (probe.rank() == 2).then(|| probe.dim(1)).transpose()?;
    // Frozen after the one-image probe, whose geometry would otherwise keep prepared weights too.
    if args.freeze {
        net.freeze()?;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let labels: Vec<u32> = (0..args.samples)
        .map(|_| classes.map_or(0, |c| rng.random_range(0..c as u32)))
        .collect();
    let y_all = Tensor::from_vec(labels, args.samples, device)?;
    let vars = octconv_runtime::optim::named_vars(&varmap)?;
    let mut opt = Sgd::new(vars, SgdConfig::default());
    let batch_at = |b: usize| -> candle_core::Result<(Tensor, Tensor)> {
        let start = b * args.batch;
        let len = args.batch.min(args.samples - start);
        Ok((x_all.narrow(0, start, len)?, y_all.narrow(0, start, len)?))
    };
    let mut fallbacks: Option<Vec<String>> = None;
    let mut step = |b: usize| -> anyhow::Result<()> {
        let (x, y) = batch_at(b)?;
        if args.train {
            let loss = |out: &Tensor| train_loss(out, &y, classes.is_some());
            if octconv_runtime::tape::planned(device) {
                let step = net.train_step(&x, &loss)?;
                let _t = octconv_runtime::kernels::timing::span("SGD update");
                opt.step(&step.grads, 0.01)?;
                fallbacks = Some(step.fallbacks);
            } else {
                let grads = loss(&net.forward_t(&x, true)?)?.backward()?;
                let _t = octconv_runtime::kernels::timing::span("SGD update");
                opt.step(&grads, 0.01)?;
            }
        } else {
            net.infer(&x)?;
        }
        // GPU work is asynchronous: wait for it inside the timed region.
        device.synchronize()?;
        Ok(())
    };
    // Peak memory of one pass (with `--train`, one training step) on the first batch.
    let peak = if args.train {
        let (x, y) = batch_at(0)?;
        let loss = |out: &Tensor| train_loss(out, &y, classes.is_some());
        super::bench_memory::measure_train_step(&net, &x, &loss)?
    } else {
        super::bench_memory::measure(&net, &batch_at(0)?.0, false)?
    };
    let mut times = Vec::with_capacity(args.repeats);
    let kernel_profile = args.profile && args.train;
    for rep in 0..=args.repeats {
        // `--train --profile`: the kernels of the timed repeats report their time.
        if kernel_profile && rep == 1 {
            octconv_runtime::kernels::timing::collect(true);
        }
        let t = Instant::now();
        for b in 0..batches {
            step(b)?;
            bar.inc(1);
        }
        if rep > 0 {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    octconv_runtime::kernels::timing::collect(false);
    let per_batch: Vec<f64> = times.iter().map(|t| t / batches as f64).collect();
    let mean = per_batch.iter().sum::<f64>() / per_batch.len() as f64;
    let var = per_batch.iter().map(|t| (t - mean).powi(2)).sum::<f64>() / per_batch.len() as f64;
    let mut sorted = per_batch.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let steps = args.repeats * batches;
    let train_kernels = kernel_profile.then(|| {
        super::bench_profile::train_kernels(
            &octconv_runtime::kernels::timing::totals(),
            steps,
            times.iter().sum::<f64>() / steps as f64,
        )
    });
    let profile = (args.profile && !args.train)
        .then(|| {
            super::bench_profile::profile(&net, &batch_at(0)?.0, args.repeats, args.layers, device)
        })
        .transpose()?;
    let (profile, profile_layers) = match profile {
        Some(p) => (Some(p.classes), Some(p.slowest)),
        None => (None, None),
    };
    let mut rep_sorted = times.clone();
    rep_sorted.sort_by(f64::total_cmp);
    Ok(Row {
        alpha,
        mean_s: mean,
        median_s: median,
        std_s: var.sqrt(),
        per_sample_ms: rep_sorted[rep_sorted.len() / 2] / args.samples as f64 * 1e3,
        relative: 1.0,
        theory: octconv_spec::cost::theory_macs_ratio(alpha),
        macs,
        macs_relative: 1.0,
        params,
        peak_bytes: peak.total(),
        peak_activation_bytes: peak.activations,
        peak_scratch_bytes: peak.scratch,
        peak_layer: peak.layer,
        prepared_bytes: net.prepared_bytes() as u64,
        memory_relative: 1.0,
        memory_theory: octconv_spec::cost::theory_memory_ratio(alpha),
        profile,
        profile_layers,
        train_kernels,
        train_fallbacks: fallbacks,
    })
}

/// The loss `bench --train` times: cross-entropy against the labels `y` for a class vector, else
/// the surrogate `mean(out²)`.
fn train_loss(out: &Tensor, y: &Tensor, classes: bool) -> candle_core::Result<Tensor> {
    if classes {
        candle_nn::loss::cross_entropy(out, y)
    } else {
        out.sqr()?.mean_all()
    }
}
