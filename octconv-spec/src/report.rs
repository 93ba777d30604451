//! The cost report of a checked model: per-layer rows, totals, and ratios against the same network
//! with every α set to 0. `octconv check` prints it as a table or JSON.

use crate::ir::{Layer, Model};
use crate::shape::Shape;
use serde::Serialize;
use std::fmt::Write;

/// One row of the report.
#[derive(Clone, Debug, Serialize)]
pub struct LayerRow {
    /// Hierarchical layer name.
    pub name: String,
    /// Layer kind (`octconv`, `bn`, …).
    pub op: String,
    /// Human-readable op (`octconv 3x3 s2 α 0.250→0.250`).
    pub detail: String,
    /// Output of the high branch (or the whole output if not a pair): `[C, H, W]` or `[F]`.
    pub out_high: Vec<usize>,
    /// Output of the low branch, `null` unless the output is an octave pair.
    pub out_low: Option<Vec<usize>>,
    /// Trainable parameters.
    pub params: u64,
    /// MACs per sample.
    pub macs: u64,
    /// Output activation bytes per sample (f32).
    pub activation_bytes: u64,
}

/// The whole report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Model name.
    pub model: String,
    /// The call with all arguments bound, e.g. `wrn(n = 4, k = 10, …)`.
    pub call: String,
    /// Input `[C, H, W]`.
    pub input: Vec<usize>,
    /// Output shape (`[F]` or `[C, H, W]`).
    pub output: Vec<usize>,
    /// Total trainable parameters.
    pub params: u64,
    /// Total MACs per sample.
    pub macs: u64,
    /// Sum of layer output activations per sample, bytes (f32).
    pub activation_bytes: u64,
    /// Parameters of the α = 0 network.
    pub params_alpha0: Option<u64>,
    /// MACs of the α = 0 network.
    pub macs_alpha0: Option<u64>,
    /// Activation bytes of the α = 0 network.
    pub activation_bytes_alpha0: Option<u64>,
    /// `macs / macs_alpha0`.
    pub macs_ratio_vs_alpha0: Option<f64>,
    /// `activation_bytes / activation_bytes_alpha0`.
    pub memory_ratio_vs_alpha0: Option<f64>,
    /// Why there are no α = 0 figures (the baseline's first error), if there are none.
    pub baseline_error: Option<String>,
    /// Per-layer rows (the input node excluded).
    pub layers: Vec<LayerRow>,
}

fn dims_of(s: &Shape) -> (Vec<usize>, Option<Vec<usize>>) {
    match s {
        Shape::Single(d) => (vec![d.c, d.h, d.w], None),
        Shape::Pair { high, low } => (
            vec![high.c, high.h, high.w],
            Some(vec![low.c, low.h, low.w]),
        ),
        Shape::Flat { features } => (vec![*features], None),
    }
}

fn row(l: &Layer) -> LayerRow {
    let (out_high, out_low) = dims_of(&l.output);
    LayerRow {
        name: l.name.clone(),
        op: l.op.kind().to_string(),
        detail: l.op.to_string(),
        out_high,
        out_low,
        params: l.params,
        macs: l.macs,
        activation_bytes: l.activation_bytes,
    }
}

fn ratio(a: u64, b: Option<u64>) -> Option<f64> {
    b.and_then(|b| crate::cost::relative(a, b))
}

impl Report {
    /// Builds the report of `model`, with `baseline` the same network at α = 0 (if it elaborated).
    pub fn new(model: &Model, baseline: Option<&Model>) -> Report {
        let base = |f: fn(&Model) -> u64| baseline.map(f);
        Report {
            model: model.name.clone(),
            call: model.call_string(),
            input: vec![model.input.c, model.input.h, model.input.w],
            output: dims_of(&model.output).0,
            params: model.params(),
            macs: model.macs(),
            activation_bytes: model.activation_bytes(),
            params_alpha0: base(Model::params),
            macs_alpha0: base(Model::macs),
            activation_bytes_alpha0: base(Model::activation_bytes),
            macs_ratio_vs_alpha0: ratio(model.macs(), base(Model::macs)),
            memory_ratio_vs_alpha0: ratio(model.activation_bytes(), base(Model::activation_bytes)),
            baseline_error: None,
            layers: model.layers.iter().skip(1).map(row).collect(),
        }
    }

    /// The report as an aligned text table with totals.
    pub fn table(&self) -> String {
        let fmt_dims = |d: &[usize]| {
            format!(
                "[{}]",
                d.iter()
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let header = [
            "layer", "op", "out high", "out low", "params", "MACs", "act. mem",
        ];
        let rows: Vec<[String; 7]> = self
            .layers
            .iter()
            .map(|r| {
                [
                    r.name.clone(),
                    r.detail.clone(),
                    fmt_dims(&r.out_high),
                    r.out_low
                        .as_deref()
                        .map(fmt_dims)
                        .unwrap_or_else(|| "-".into()),
                    group(r.params),
                    human(r.macs as f64, ""),
                    human_bytes(r.activation_bytes),
                ]
            })
            .collect();
        let mut width = header.map(|h| h.chars().count());
        for r in &rows {
            for (w, c) in width.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let mut out = String::new();
        let _ = writeln!(out, "model {}", self.call);
        let _ = writeln!(
            out,
            "input {}  →  output {}\n",
            fmt_dims(&self.input),
            fmt_dims(&self.output)
        );
        let line = |cells: &[String], out: &mut String| {
            for (i, (c, w)) in cells.iter().zip(width).enumerate() {
                let pad = w - c.chars().count();
                if i >= 4 {
                    let _ = write!(out, "{}{c}  ", " ".repeat(pad));
                } else {
                    let _ = write!(out, "{c}{}  ", " ".repeat(pad));
                }
            }
            out.truncate(out.trim_end().len());
            out.push('\n');
        };
        line(&header.map(String::from), &mut out);
        line(&width.map(|w| "-".repeat(w)), &mut out);
        for r in &rows {
            line(r, &mut out);
        }
        let _ = writeln!(out);
        let _ = writeln!(out, "layers            {}", self.layers.len());
        let _ = writeln!(
            out,
            "parameters        {} ({})",
            group(self.params),
            human(self.params as f64, "")
        );
        let _ = writeln!(
            out,
            "MACs / sample     {} ({})",
            group(self.macs),
            human(self.macs as f64, "MAC")
        );
        let _ = writeln!(
            out,
            "activations       {} per sample (f32, all layer outputs)",
            human_bytes(self.activation_bytes)
        );
        match (self.macs_ratio_vs_alpha0, self.memory_ratio_vs_alpha0) {
            (Some(m), Some(a)) => {
                let _ = writeln!(
                    out,
                    "vs. alpha = 0     MACs {:.1} %, activation memory {:.1} %, parameters {} (α = 0: {})",
                    100.0 * m,
                    100.0 * a,
                    group(self.params),
                    group(self.params_alpha0.unwrap_or(0))
                );
            }
            _ => {
                let why = match (&self.baseline_error, self.macs_alpha0) {
                    (Some(e), _) => format!("with every α set to 0 the spec does not check: {e}"),
                    (None, Some(0)) => "the network has no MACs".to_string(),
                    _ => "no baseline".to_string(),
                };
                let _ = writeln!(out, "vs. alpha = 0     n/a ({why})");
            }
        }
        out
    }
}

/// `36479194` → `36,479,194`.
pub fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// `5.25e9` → `5.25 G`.
pub fn human(x: f64, unit: &str) -> String {
    let (v, p) = if x >= 1e9 {
        (x / 1e9, "G")
    } else if x >= 1e6 {
        (x / 1e6, "M")
    } else if x >= 1e3 {
        (x / 1e3, "k")
    } else {
        return format!("{x:.0} {unit}").trim_end().to_string();
    };
    format!("{v:.2} {p}{unit}")
}

/// Bytes in KiB / MiB.
pub fn human_bytes(b: u64) -> String {
    let x = b as f64;
    if x >= 1024.0 * 1024.0 {
        format!("{:.2} MiB", x / 1024.0 / 1024.0)
    } else if x >= 1024.0 {
        format!("{:.1} KiB", x / 1024.0)
    } else {
        format!("{b} B")
    }
}
