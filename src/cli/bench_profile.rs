//! `octconv bench --profile`: where one inference pass spends its time, by kernel class; with
//! `--train`, where a training step spends it, by kernel ([`train_kernels`]).
//!
//! Each layer is timed between two calls of [`OctModel::run_observed`]'s hook and charged to its
//! class ([`class_of`]): convolutions by kernel size, stride, grouping and whether they are octave
//! (two-branch) ones; every other layer by its kind. The planned program moves time between classes:
//! a batch norm or ReLU that the convolution before it applies to its output, or the one after it
//! as it reads its input (DenseNet's batch norms now land in the 1×1 class and lower its GMAC/s),
//! costs (almost) nothing here and is counted with the layers of its class; a ReLU a batch norm
//! applies in the same pass is in "bn"; the first link of a concatenation chain pays for zeroing
//! the block's buffer under "concat"; a 1×1 expansion that its depthwise reader runs
//! (`Step::Expanded`) costs nothing here and its time lands in the depthwise layer's class, while its
//! MACs stay in the 1×1 class (raising that class's GMAC/s and lowering the depthwise one's). The
//! figure of a class is the median over repeats of its summed time per pass.

use candle_core::{Device, Tensor};
use octconv_runtime::OctModel;
use octconv_spec::{Layer, Op};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Instant;

/// One kernel class of a profile.
#[derive(Serialize, Debug, Clone)]
pub struct ClassTime {
    /// The class ([`class_of`]).
    pub class: String,
    /// Layers in the class.
    pub layers: usize,
    /// Median milliseconds per pass.
    pub ms: f64,
    /// Share of the pass's time.
    pub time_share: f64,
    /// Share of the model's MACs.
    pub macs_share: f64,
    /// Multiply-accumulates per second (10⁹), 0 for classes without MACs.
    pub gmacs_per_s: f64,
}

/// The class a layer's time is charged to, e.g. `octconv 1×1 s1 dense octave`,
/// `octconv 3×3 s2 depthwise single`, `conv 7×7 s2 dense`, `bn`.
pub fn class_of(layer: &Layer) -> String {
    let grouping = |groups: usize, depthwise: bool| {
        if depthwise {
            "depthwise"
        } else if groups > 1 {
            "grouped"
        } else {
            "dense"
        }
    };
    match &layer.op {
        Op::OctConv(s) | Op::OctConvTranspose(s) => format!(
            "{} {k}×{k} s{} {} {}",
            layer.op.kind(),
            s.stride,
            grouping(s.groups, s.depthwise),
            if s.in_l > 0 || s.out_l > 0 {
                "octave"
            } else {
                "single"
            },
            k = s.kernel
        ),
        Op::Conv(s) => format!(
            "conv {k}×{k} s{} {}",
            s.stride,
            grouping(s.groups, false),
            k = s.kernel
        ),
        op => op.kind().to_string(),
    }
}

/// One layer of a profile ([`Profile::slowest`]).
#[derive(Serialize, Debug, Clone)]
pub struct LayerTime {
    /// The layer's name.
    pub layer: String,
    /// Its class ([`class_of`]).
    pub class: String,
    /// Its output shape.
    pub output: String,
    /// Median milliseconds per pass.
    pub ms: f64,
    /// Multiply-accumulates per second (10⁹), 0 for layers without MACs.
    pub gmacs_per_s: f64,
}

/// An inference profile: the time per kernel class, and the layers that take longest.
#[derive(Serialize, Debug, Clone)]
pub struct Profile {
    /// Kernel classes, largest time first.
    pub classes: Vec<ClassTime>,
    /// The slowest layers (by default [`SLOWEST`]; all with 0), largest time first (where to
    /// look next).
    pub slowest: Vec<LayerTime>,
}

/// How many layers [`Profile::slowest`] lists unless `--layers` says otherwise.
pub const SLOWEST: usize = 12;

/// Profiles `repeats` inference passes of `net` on `x` (after one untimed pass), classes sorted by
/// time, largest first, and the `layers_listed` slowest layers (every layer with 0).
pub fn profile(
    net: &OctModel,
    x: &Tensor,
    repeats: usize,
    layers_listed: usize,
    device: &Device,
) -> anyhow::Result<Profile> {
    let layers = &net.ir().layers;
    let classes: Vec<String> = layers.iter().map(class_of).collect();
    let mut per_class: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut per_layer: Vec<Vec<f64>> = vec![Vec::new(); layers.len()];
    for rep in 0..=repeats {
        let mut sums: BTreeMap<&str, f64> = BTreeMap::new();
        let mut layer_times = vec![0.0; layers.len()];
        let mut last: Option<(usize, Instant)> = None;
        let mut sync_err = None;
        let out = net.run_observed(x, false, &mut |j| {
            // GPU work is asynchronous: a layer's time ends when the device has finished it.
            if let Err(e) = device.synchronize() {
                sync_err.get_or_insert(e);
            }
            let now = Instant::now();
            if let Some((i, t)) = last {
                let dt = (now - t).as_secs_f64();
                *sums.entry(classes[i].as_str()).or_default() += dt;
                layer_times[i] += dt;
            }
            last = Some((j, now));
        })?;
        drop(out);
        if let Some(e) = sync_err {
            return Err(e.into());
        }
        if rep > 0 {
            for (c, s) in sums {
                per_class.entry(c).or_default().push(s);
            }
            for (times, t) in per_layer.iter_mut().zip(layer_times) {
                times.push(t);
            }
        }
    }
    // MACs per sample (the cost model's); a pass does `batch` times as many.
    let total_macs: u64 = layers.iter().map(|l| l.macs).sum();
    let batch = x.dim(0)? as f64;
    let mut rows: Vec<ClassTime> = per_class
        .into_iter()
        .map(|(class, mut times)| {
            times.sort_by(f64::total_cmp);
            let median = times[times.len() / 2];
            let in_class: Vec<&Layer> = layers
                .iter()
                .zip(&classes)
                .filter(|(_, c)| c.as_str() == class)
                .map(|(l, _)| l)
                .collect();
            let macs: u64 = in_class.iter().map(|l| l.macs).sum();
            ClassTime {
                class: class.to_string(),
                layers: in_class.len(),
                ms: median * 1e3,
                time_share: 0.0,
                macs_share: if total_macs == 0 {
                    0.0
                } else {
                    macs as f64 / total_macs as f64
                },
                gmacs_per_s: if median > 0.0 {
                    macs as f64 * batch / median / 1e9
                } else {
                    0.0
                },
            }
        })
        .collect();
    let total: f64 = rows.iter().map(|r| r.ms).sum();
    for r in &mut rows {
        r.time_share = if total > 0.0 { r.ms / total } else { 0.0 };
    }
    rows.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    let mut slowest: Vec<LayerTime> = layers
        .iter()
        .zip(per_layer)
        .zip(&classes)
        .filter(|((_, times), _)| !times.is_empty())
        .map(|((l, mut times), class)| {
            times.sort_by(f64::total_cmp);
            let median = times[times.len() / 2];
            LayerTime {
                layer: l.name.clone(),
                class: class.clone(),
                output: l.output.to_string(),
                ms: median * 1e3,
                gmacs_per_s: if median > 0.0 {
                    l.macs as f64 * batch / median / 1e9
                } else {
                    0.0
                },
            }
        })
        .collect();
    slowest.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    if layers_listed > 0 {
        slowest.truncate(layers_listed);
    }
    Ok(Profile {
        classes: rows,
        slowest,
    })
}

/// Prints one α's profile as two Markdown tables: the classes, then the slowest layers.
pub fn print(alpha: f64, rows: &[ClassTime], slowest: &[LayerTime]) {
    println!();
    println!("Where an inference pass spends its time at α = {alpha}:");
    println!();
    println!("| class | layers | ms per batch | time | MACs | GMAC/s |");
    println!("|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {:.2} | {:.1} % | {:.1} % | {:.1} |",
            r.class,
            r.layers,
            r.ms,
            100.0 * r.time_share,
            100.0 * r.macs_share,
            r.gmacs_per_s
        );
    }
    println!();
    println!("The slowest layers at α = {alpha}:");
    println!();
    println!("| layer | class | output | ms per batch | GMAC/s |");
    println!("|---|---|---|---|---|");
    for l in slowest {
        println!(
            "| `{}` | {} | {} | {:.2} | {:.1} |",
            l.layer, l.class, l.output, l.ms, l.gmacs_per_s
        );
    }
}

/// One kernel of a training-step profile.
#[derive(Serialize, Debug, Clone)]
pub struct KernelTime {
    /// The kernel, as it reports itself ([`octconv_runtime::kernels::timing`]), or `rest` for the
    /// time no kernel reported: candle's own ops (loss, additions of gradients, views) and the
    /// autograd walk.
    pub kernel: String,
    /// Calls per step.
    pub calls: f64,
    /// Milliseconds per step (kernels that run on both threads at once count their wall time).
    pub ms: f64,
    /// Share of the step.
    pub time_share: f64,
}

/// The per-kernel totals of `steps` timed training steps of mean length `step_s`, slowest first,
/// with the unreported rest last.
pub fn train_kernels(totals: &[(&str, f64, u64)], steps: usize, step_s: f64) -> Vec<KernelTime> {
    let steps = steps.max(1) as f64;
    let mut rows: Vec<KernelTime> = totals
        .iter()
        .map(|&(k, s, c)| KernelTime {
            kernel: k.to_string(),
            calls: c as f64 / steps,
            ms: s / steps * 1e3,
            time_share: s / steps / step_s,
        })
        .collect();
    let reported: f64 = rows.iter().map(|r| r.ms).sum();
    let rest = (step_s * 1e3 - reported).max(0.0);
    rows.push(KernelTime {
        kernel: "rest".into(),
        calls: 0.0,
        ms: rest,
        time_share: rest / (step_s * 1e3),
    });
    rows
}

/// Prints a training-step profile as a Markdown table.
pub fn print_train(alpha: f64, rows: &[KernelTime]) {
    println!();
    println!("Where a training step spends its time at α = {alpha}:");
    println!();
    println!("| kernel | calls per step | ms per step | time |");
    println!("|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {:.0} | {:.2} | {:.1} % |",
            r.kernel,
            r.calls,
            r.ms,
            100.0 * r.time_share
        );
    }
}
