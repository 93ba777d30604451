//! `octconv sweep SPEC --alphas 0,0.25,0.5,0.75 --data … --run-dir DIR [train flags…]`: the seed's α
//! experiment. One training run per α with the same seed, data order and schedule (in
//! `DIR/alpha-<α>/`, resumed where a killed sweep stopped), then the inference time of each, and the
//! report: `sweep.md`, `sweep.json` and three plots (see [`super::sweep_report`]).

use super::bench::{fill_relative, time_model, Row, Timing};
use super::spec_args::SpecArgs;
use super::sweep_plot;
use super::sweep_report::{self, Inference, SweepReport, SweepRow};
use super::train::{train_in_dir, TrainFlags};
use anyhow::{bail, Context};
use candle_core::Device;
use indicatif::ProgressBar;
use octconv_runtime::data::Split;
use octconv_runtime::train::{read_metrics, EpochRecord, Finish, RunDir};
use octconv_spec::Model;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Arguments of `octconv sweep`.
#[derive(clap::Args, Debug)]
pub struct SweepArgs {
    #[command(flatten)]
    spec: SpecArgs,
    /// Values of the spec's `alpha` parameter; the first is the baseline of the relative columns.
    #[arg(long, value_delimiter = ',', default_values_t = [0.0, 0.25, 0.5, 0.75])]
    alphas: Vec<f64>,
    /// Sweep directory: one run directory `alpha-<α>` per α, then sweep.md, sweep.json and the plots.
    #[arg(long)]
    run_dir: PathBuf,
    /// Images per batch when timing inference.
    #[arg(long, default_value_t = 128)]
    bench_batch: usize,
    /// Images per timed repeat when timing inference.
    #[arg(long, default_value_t = 256)]
    bench_samples: usize,
    /// Timed repeats per α (after one warm-up).
    #[arg(long, default_value_t = 5)]
    bench_repeats: usize,
    /// Do not time inference (the time columns stay empty).
    #[arg(long)]
    no_bench: bool,
    /// A TrueType font for the plots' labels (default: DejaVu Sans from the system).
    #[arg(long)]
    font: Option<PathBuf>,
    #[command(flatten)]
    flags: TrainFlags,
}

/// Written next to a run whose loss became NaN, so that a rerun of the sweep reports it instead of
/// training into the same divergence again (resumes are exact).
#[derive(Serialize, Deserialize)]
struct Diverged {
    epoch: usize,
    batch: usize,
}

const DIVERGED: &str = "diverged.json";

/// The run directory of one α: `alpha-0`, `alpha-0.25`, ….
fn alpha_dir(root: &Path, alpha: f64) -> RunDir {
    RunDir::new(root.join(format!("alpha-{alpha}")))
}

/// This process's command line as `octconv …`, quoted so that it can be pasted into a POSIX shell.
fn command_line() -> String {
    let quote = |a: String| {
        let plain = !a.is_empty()
            && a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-./:=,@%+".contains(c));
        if plain {
            a
        } else {
            format!("'{}'", a.replace('\'', r"'\''"))
        }
    };
    std::iter::once("octconv".to_string())
        .chain(std::env::args().skip(1).map(quote))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The epochs a run has finished: none if it diverged before its first one (no `metrics.jsonl`); a
/// file that exists but cannot be read is an error, not an empty row.
fn finished_epochs(dir: &RunDir) -> anyhow::Result<Vec<EpochRecord>> {
    if dir.metrics().exists() {
        read_metrics(dir.path())
    } else {
        Ok(Vec::new())
    }
}

/// How one α's training ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunStatus {
    /// Every epoch ran.
    Completed,
    /// The loss became NaN or infinite in this epoch (0-based); the run stopped there.
    Diverged {
        /// The epoch.
        epoch: usize,
    },
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunStatus::Completed => write!(f, "completed"),
            RunStatus::Diverged { epoch } => write!(f, "diverged at epoch {}", epoch + 1),
        }
    }
}

/// Runs the sweep: trains every α, times inference, writes the report.
pub fn run(args: &SweepArgs, color: bool) -> anyhow::Result<ExitCode> {
    if args.alphas.iter().any(|a| !(0.0..1.0).contains(a)) {
        bail!("every α in --alphas must be in [0, 1)");
    }
    if args.bench_batch == 0 || args.bench_samples == 0 || args.bench_repeats == 0 {
        bail!("--bench-batch, --bench-samples and --bench-repeats must be at least 1");
    }
    let Some(models) = args.spec.models_for_alphas(&args.alphas, color)? else {
        return Ok(ExitCode::from(1));
    };
    let data = args.flags.load_data(&models[0].1)?;
    if let Some((a, m)) = models.iter().find(|(_, m)| m.output != models[0].1.output) {
        bail!(
            "at α = {a} the model outputs {}, at α = {} it outputs {}",
            m.output,
            models[0].0,
            models[0].1.output
        );
    }
    let device = args.flags.device.open()?;
    std::fs::create_dir_all(&args.run_dir)
        .with_context(|| format!("cannot create `{}`", args.run_dir.display()))?;
    eprintln!(
        "sweep of {} over α = {:?} on {} ({} train / {} test images), {} epochs each, in {}",
        args.spec.spec,
        args.alphas,
        args.flags.data,
        data.train.len(),
        data.test.len(),
        args.flags.epochs,
        args.run_dir.display()
    );
    let Some(statuses) = train_all(args, &models, &data, &device)? else {
        return Ok(ExitCode::from(130));
    };
    let timings = if args.no_bench {
        None
    } else {
        Some(time_all(args, &models, &device)?)
    };
    let md = report(args, &models, &data, &statuses, timings.as_deref())?;
    print!("{md}");
    eprintln!(
        "wrote {}/sweep.md, sweep.json and the plots",
        args.run_dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Trains (or resumes, or skips as finished or diverged) every α in turn; `None` when interrupted.
fn train_all(
    args: &SweepArgs,
    models: &[(f64, Model)],
    data: &Split,
    device: &Device,
) -> anyhow::Result<Option<Vec<RunStatus>>> {
    let mut statuses = Vec::new();
    for (i, (a, model)) in models.iter().enumerate() {
        let dir = alpha_dir(&args.run_dir, *a);
        let tag = format!("α = {a} ({}/{})", i + 1, models.len());
        let diverged_file = dir.path().join(DIVERGED);
        if let Ok(text) = std::fs::read(&diverged_file) {
            let d: Diverged = serde_json::from_slice(&text)
                .with_context(|| format!("`{}` is malformed", diverged_file.display()))?;
            eprintln!("{tag}: diverged before at epoch {}, batch {}; not trained again (delete {} to retry)", d.epoch + 1, d.batch, dir.path().display());
            statuses.push(RunStatus::Diverged { epoch: d.epoch });
            continue;
        }
        let resume = dir.checkpoint().exists();
        eprintln!(
            "{tag}: {} {}",
            if resume { "resuming" } else { "training" },
            dir.path().display()
        );
        let cfg = args.flags.config(model);
        match train_in_dir(
            model.clone(),
            cfg,
            data,
            dir.path(),
            resume,
            args.flags.data_threads,
            device,
        )
        .with_context(|| format!("training α = {a} in `{}`", dir.path().display()))?
        {
            Finish::Completed => statuses.push(RunStatus::Completed),
            Finish::Interrupted { epoch, batch } => {
                eprintln!(
                    "interrupted: α = {a} saved at epoch {} batch {batch}; run the same command again to continue the sweep",
                    epoch + 1
                );
                return Ok(None);
            }
            Finish::Diverged { epoch, batch } => {
                eprintln!("{tag}: the loss became NaN or infinite at epoch {} batch {batch}; recorded, going on with the next α", epoch + 1);
                std::fs::write(
                    &diverged_file,
                    serde_json::to_vec(&Diverged { epoch, batch })?,
                )?;
                statuses.push(RunStatus::Diverged { epoch });
            }
        }
    }
    Ok(Some(statuses))
}

/// Inference time of every α (seeded random weights and input, like `bench`).
fn time_all(
    args: &SweepArgs,
    models: &[(f64, Model)],
    device: &Device,
) -> anyhow::Result<Vec<Row>> {
    let timing = Timing {
        batch: args.bench_batch,
        samples: args.bench_samples,
        repeats: args.bench_repeats,
        train: false,
        profile: false,
        layers: super::bench_profile::SLOWEST,
        freeze: true,
    };
    eprintln!(
        "timing inference: batch {}, {} samples, {} repeats per α",
        timing.batch, timing.samples, timing.repeats
    );
    let bar = ProgressBar::hidden();
    let mut rows = Vec::new();
    for (a, model) in models {
        rows.push(
            time_model(&timing, *a, model.clone(), device, &bar)
                .with_context(|| format!("timing α = {a}"))?,
        );
    }
    fill_relative(&mut rows);
    Ok(rows)
}

/// Writes `sweep.json`, `sweep.md` and the plots into the sweep directory; returns the markdown.
fn report(
    args: &SweepArgs,
    models: &[(f64, Model)],
    data: &Split,
    statuses: &[RunStatus],
    timings: Option<&[Row]>,
) -> anyhow::Result<String> {
    let (mut rows, mut curves) = (Vec::new(), Vec::new());
    for (i, ((a, model), status)) in models.iter().zip(statuses).enumerate() {
        let metrics = finished_epochs(&alpha_dir(&args.run_dir, *a))?;
        rows.push(SweepRow::new(
            *a,
            model,
            &models[0].1,
            status.to_string(),
            &metrics,
            timings.map(|t| Inference::from(&t[i])),
        ));
        if !metrics.is_empty() {
            curves.push((format!("α = {a}"), metrics));
        }
    }
    let report = SweepReport {
        command: command_line(),
        spec: args.spec.spec.clone(),
        data: args.flags.data.clone(),
        train_images: data.train.len(),
        test_images: data.test.len(),
        epochs: args.flags.epochs,
        batch: args.flags.batch,
        lr: args.flags.lr,
        schedule: if args.flags.cosine {
            "cosine".into()
        } else {
            format!("step ×{} at {:?}", args.flags.gamma, args.flags.milestones)
        },
        seed: args.flags.seed,
        device: args.flags.device.device.clone(),
        threads: rayon::current_num_threads(),
        bench_batch: (!args.no_bench).then_some(args.bench_batch),
        rows,
    };
    let md = sweep_report::write_files(&report, &args.run_dir)?;
    sweep_plot::write_plots(&report, &curves, &args.run_dir, args.font.as_deref())?;
    Ok(md)
}
