//! The report of `octconv sweep`: one row per α (cost model, accuracy, training and inference time),
//! written as `sweep.json` and `sweep.md` (the plots next to them are `super::sweep_plot`'s).

use super::bench::Row;
use octconv_runtime::train::EpochRecord;
use octconv_spec::cost::{relative, theory_macs_ratio, theory_memory_ratio};
use octconv_spec::Model;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::Path;

/// Measured inference time of one α (seeded random weights; time does not depend on them).
#[derive(Serialize, Debug, Clone)]
pub struct Inference {
    /// Median milliseconds per image.
    pub per_sample_ms: f64,
    /// Median seconds per batch.
    pub median_batch_s: f64,
    /// Median time relative to the first α.
    pub relative: f64,
    /// Measured peak memory of one forward pass of a batch (`bench`'s `peak_bytes`).
    pub peak_bytes: u64,
    /// That peak relative to the first α.
    pub peak_relative: f64,
}

impl From<&Row> for Inference {
    fn from(r: &Row) -> Self {
        Inference {
            per_sample_ms: r.per_sample_ms,
            median_batch_s: r.median_s,
            relative: r.relative,
            peak_bytes: r.peak_bytes,
            peak_relative: r.memory_relative,
        }
    }
}

/// One α of the sweep.
#[derive(Serialize, Debug, Clone)]
pub struct SweepRow {
    /// The α.
    pub alpha: f64,
    /// The model call trained.
    pub model: String,
    /// Parameters.
    pub params: u64,
    /// MACs per image (cost model).
    pub macs: u64,
    /// MACs relative to the first α.
    pub macs_relative: f64,
    /// The seed's per-layer FLOPs theory at this α (`cost::theory_macs_ratio`).
    pub flops_theory: f64,
    /// Activation memory per image, all layer outputs in f32 (cost model).
    pub activation_bytes: u64,
    /// Activation memory relative to the first α.
    pub memory_relative: f64,
    /// The seed's per-layer memory theory at this α (`cost::theory_memory_ratio`).
    pub memory_theory: f64,
    /// `completed` or `diverged at epoch N`.
    pub status: String,
    /// Epochs finished.
    pub epochs: usize,
    /// Test accuracy after the last finished epoch.
    pub final_test_acc: Option<f64>,
    /// Test accuracy of the best epoch (the best [`EpochRecord::score`]: accuracy, or mean IoU for
    /// segmentation, whose weights `best.safetensors` holds).
    pub best_test_acc: Option<f64>,
    /// The epoch of `best_test_acc`.
    pub best_epoch: Option<usize>,
    /// Seconds of training (sum over epochs, evaluation excluded).
    pub train_seconds: f64,
    /// Training images per second over all epochs.
    pub train_images_per_s: Option<f64>,
    /// Measured inference time, unless `--no-bench`.
    pub inference: Option<Inference>,
}

impl SweepRow {
    /// The row of `model` at `alpha`, against the `baseline` model (the first α).
    pub fn new(
        alpha: f64,
        model: &Model,
        baseline: &Model,
        status: String,
        metrics: &[EpochRecord],
        inference: Option<Inference>,
    ) -> Self {
        let best = metrics
            .iter()
            .max_by(|a, b| a.score().total_cmp(&b.score()));
        let train_seconds: f64 = metrics.iter().map(|r| r.seconds).sum();
        let images: f64 = metrics.iter().map(|r| r.images_per_s * r.seconds).sum();
        SweepRow {
            alpha,
            model: model.call_string(),
            params: model.params(),
            macs: model.macs(),
            // One spec at several α: a zero baseline means zero everywhere (relative 1).
            macs_relative: relative(model.macs(), baseline.macs()).unwrap_or(1.0),
            flops_theory: theory_macs_ratio(alpha),
            activation_bytes: model.activation_bytes(),
            memory_relative: relative(model.activation_bytes(), baseline.activation_bytes())
                .unwrap_or(1.0),
            memory_theory: theory_memory_ratio(alpha),
            status,
            epochs: metrics.len(),
            final_test_acc: metrics.last().map(|r| r.test_acc),
            best_test_acc: best.map(|r| r.test_acc),
            best_epoch: best.map(|r| r.epoch),
            train_seconds,
            train_images_per_s: (train_seconds > 0.0).then(|| images / train_seconds),
            inference,
        }
    }
}

/// The whole sweep: settings shared by every α, then one row each.
#[derive(Serialize, Debug, Clone)]
pub struct SweepReport {
    /// The command line that wrote the report.
    pub command: String,
    /// The spec as given.
    pub spec: String,
    /// The data as given.
    pub data: String,
    /// Training images used.
    pub train_images: usize,
    /// Test images used.
    pub test_images: usize,
    /// Epochs per α.
    pub epochs: usize,
    /// Training batch size.
    pub batch: usize,
    /// Base learning rate.
    pub lr: f64,
    /// The learning-rate schedule, in words.
    pub schedule: String,
    /// The seed every α shares.
    pub seed: u64,
    /// Where it ran.
    pub device: String,
    /// CPU threads.
    pub threads: usize,
    /// Batch of the inference timing, if timed.
    pub bench_batch: Option<usize>,
    /// One row per α, in the order given.
    pub rows: Vec<SweepRow>,
}

fn pct(x: Option<f64>) -> String {
    x.map_or("–".into(), |v| format!("{:.2} %", 100.0 * v))
}

/// `sweep.md`: the settings, the table, what the accuracies show, and the plots.
pub fn markdown(r: &SweepReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# α sweep of `{}`\n", r.spec);
    let _ = writeln!(s, "Command: `{}`\n", r.command);
    let _ = writeln!(
        s,
        "Data `{}`: {} training and {} test images. Every α: {} epochs, batch {}, lr {}, {} schedule, seed {} (same initialisation seed, data order and augmentation). Device {}, {} threads.\n",
        r.data, r.train_images, r.test_images, r.epochs, r.batch, r.lr, r.schedule, r.seed, r.device, r.threads
    );
    let _ = writeln!(s, "| α | params | MACs vs α₀ | FLOPs theory | activation memory vs α₀ | memory theory | test acc (final) | test acc (best, epoch) | epochs | training time | train img/s | inference ms / image | inference time vs α₀ | status |");
    let _ = writeln!(
        s,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for row in &r.rows {
        let (ms, rel) = match &row.inference {
            Some(i) => (
                format!("{:.3}", i.per_sample_ms),
                format!("{:.0} %", 100.0 * i.relative),
            ),
            None => ("–".into(), "–".into()),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {:.1} % | {:.1} % | {:.1} % | {:.1} % | {} | {} | {} | {:.0} s | {} | {} | {} | {} |",
            row.alpha,
            row.params,
            100.0 * row.macs_relative,
            100.0 * row.flops_theory,
            100.0 * row.memory_relative,
            100.0 * row.memory_theory,
            pct(row.final_test_acc),
            match (row.best_test_acc, row.best_epoch) {
                (Some(a), Some(e)) => format!("{:.2} % ({e})", 100.0 * a),
                _ => "–".into(),
            },
            row.epochs,
            row.train_seconds,
            row.train_images_per_s.map_or("–".into(), |v| format!("{v:.0}")),
            ms,
            rel,
            row.status
        );
    }
    let _ = writeln!(s, "\nMACs and activation memory are the cost model's whole-network figures (`octconv check`); the theory columns are the seed's per-layer formulas. Inference is timed on seeded random weights and input{}.\n", r.bench_batch.map_or(String::new(), |b| format!(", batch {b}")));
    s.push_str(&findings(&r.rows));
    s.push_str("\n![test accuracy against α](accuracy-vs-alpha.png)\n\n![relative inference time against α](time-vs-alpha.png)\n\n![learning curves](curves.png)\n");
    s
}

/// The accuracy ordering in words, computed from the rows (final test accuracy).
fn findings(rows: &[SweepRow]) -> String {
    let done: Vec<&SweepRow> = rows.iter().filter(|r| r.final_test_acc.is_some()).collect();
    let Some(best) = done.iter().max_by(|a, b| {
        a.final_test_acc
            .unwrap_or(0.0)
            .total_cmp(&b.final_test_acc.unwrap_or(0.0))
    }) else {
        return "No α has finished an epoch yet.\n".into();
    };
    let mut s = format!(
        "Highest final test accuracy: α = {} ({}).",
        best.alpha,
        pct(best.final_test_acc)
    );
    if let Some(base) = rows.first().and_then(|r| r.final_test_acc) {
        let diffs: Vec<String> = done
            .iter()
            .filter(|r| r.alpha != rows[0].alpha)
            .map(|r| {
                format!(
                    "α = {}: {:+.2} points",
                    r.alpha,
                    100.0 * (r.final_test_acc.unwrap_or(0.0) - base)
                )
            })
            .collect();
        if !diffs.is_empty() {
            let _ = write!(s, " Against α = {}: {}.", rows[0].alpha, diffs.join(", "));
        }
    }
    s.push('\n');
    s
}

/// Writes `sweep.json` and `sweep.md` into `dir`; returns the markdown (the plots are
/// `sweep_plot::write_plots`).
pub fn write_files(r: &SweepReport, dir: &Path) -> anyhow::Result<String> {
    let md = markdown(r);
    std::fs::write(dir.join("sweep.json"), serde_json::to_vec_pretty(r)?)?;
    std::fs::write(dir.join("sweep.md"), &md)?;
    Ok(md)
}
