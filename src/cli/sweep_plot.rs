//! The plots of `octconv sweep`: test accuracy against α, relative time against α with the seed's
//! FLOPs theory, and the overlaid learning curves of every α.

use super::plot::{draw_legend, plot_err};
use super::sweep_report::SweepReport;
use octconv_runtime::train::EpochRecord;
use octconv_spec::cost::theory_macs_ratio;
use plotters::prelude::*;
use std::path::Path;

/// One line of an α chart.
struct Series {
    label: String,
    points: Vec<(f64, f64)>,
    color: RGBAColor,
    /// Marks at the points (measured values); none for a theory curve.
    marks: bool,
}

/// Draws `series` against α into a PNG at `out`.
fn alpha_chart(
    out: &Path,
    caption: &str,
    y_desc: &str,
    y_range: std::ops::Range<f64>,
    series: &[Series],
) -> anyhow::Result<()> {
    let root = BitMapBackend::new(out, (720, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let x_max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .fold(0.0f64, f64::max)
        .max(0.75)
        + 0.05;
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 22))
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(-0.02..x_max, y_range)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("α (fraction of channels in the low-frequency branch)")
        .y_desc(y_desc)
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(plot_err)?;
    for s in series {
        let style = s.color.stroke_width(if s.marks { 2 } else { 1 });
        chart
            .draw_series(LineSeries::new(s.points.iter().copied(), style))
            .map_err(plot_err)?
            .label(s.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
        if s.marks {
            let c = s.color;
            chart
                .draw_series(s.points.iter().map(|&p| Circle::new(p, 4, c.filled())))
                .map_err(plot_err)?;
        }
    }
    draw_legend(&mut chart, SeriesLabelPosition::LowerLeft)?;
    root.present().map_err(plot_err)?;
    Ok(())
}

/// Writes `accuracy-vs-alpha.png`, `time-vs-alpha.png` and `curves.png` (from `curves`: each
/// finished α's name and epochs) into `dir`.
pub fn write_plots(
    r: &SweepReport,
    curves: &[(String, Vec<EpochRecord>)],
    dir: &Path,
    font: Option<&Path>,
) -> anyhow::Result<()> {
    super::plot::register_font(font)?;
    let pick = |i: usize| Palette99::pick(i).to_rgba();
    let acc = |f: fn(&super::sweep_report::SweepRow) -> Option<f64>| -> Vec<(f64, f64)> {
        r.rows
            .iter()
            .filter_map(|row| f(row).map(|v| (row.alpha, 100.0 * v)))
            .collect()
    };
    let (finals, bests) = (acc(|r| r.final_test_acc), acc(|r| r.best_test_acc));
    let lo = finals
        .iter()
        .chain(&bests)
        .map(|p| p.1)
        .fold(100.0f64, f64::min);
    let hi = finals
        .iter()
        .chain(&bests)
        .map(|p| p.1)
        .fold(0.0f64, f64::max);
    let pad = ((hi - lo) * 0.25).max(1.0);
    alpha_chart(
        &dir.join("accuracy-vs-alpha.png"),
        "test accuracy",
        "test accuracy (%)",
        (lo - pad).max(0.0)..(hi + pad).min(100.0),
        &[
            Series {
                label: "best epoch".into(),
                points: bests,
                color: pick(1),
                marks: true,
            },
            Series {
                label: "final epoch".into(),
                points: finals,
                color: pick(0),
                marks: true,
            },
        ],
    )?;
    let base_rate = r.rows.first().and_then(|row| row.train_images_per_s);
    let mut time = vec![
        Series {
            label: "FLOPs theory 1 − ¾α(2 − α)".into(),
            points: (0..=80)
                .map(|i| {
                    let a = i as f64 / 100.0;
                    (a, 100.0 * theory_macs_ratio(a))
                })
                .collect(),
            color: BLACK.to_rgba(),
            marks: false,
        },
        Series {
            label: "MACs (cost model)".into(),
            points: r
                .rows
                .iter()
                .map(|row| (row.alpha, 100.0 * row.macs_relative))
                .collect(),
            color: pick(4),
            marks: true,
        },
        Series {
            label: "inference time".into(),
            points: r
                .rows
                .iter()
                .filter_map(|row| {
                    row.inference
                        .as_ref()
                        .map(|i| (row.alpha, 100.0 * i.relative))
                })
                .collect(),
            color: pick(0),
            marks: true,
        },
    ];
    if let Some(b) = base_rate {
        time.push(Series {
            label: "training time per image".into(),
            points: r
                .rows
                .iter()
                .filter_map(|row| row.train_images_per_s.map(|v| (row.alpha, 100.0 * b / v)))
                .collect(),
            color: pick(1),
            marks: true,
        });
    }
    let y_max = time
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(100.0f64, f64::max)
        * 1.08;
    alpha_chart(
        &dir.join("time-vs-alpha.png"),
        "cost relative to the first α",
        "relative to the first α (%)",
        0.0..y_max,
        &time,
    )?;
    if !curves.is_empty() {
        super::plot::save_curves(&dir.join("curves.png"), curves)?;
    }
    Ok(())
}
