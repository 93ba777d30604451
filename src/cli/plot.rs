//! `octconv plot RUN_DIR… -o curves.png|svg`: train/test loss and accuracy against epoch, one line
//! per run (the seed's learning-curve figure).

use anyhow::{bail, Context};
use octconv_runtime::train::{read_metrics, EpochRecord};
use plotters::prelude::*;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// A plotters error (its backend error type differs per backend) as an `anyhow` error; every
/// drawing call of `plot` and `sweep_plot` maps its error through this.
pub(super) fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("plotting: {e:?}")
}

/// Draws the legend of `chart` at `position`: the one legend style of `plot` and `sweep_plot`.
pub(super) fn draw_legend<'a, DB, CT>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
) -> anyhow::Result<()>
where
    DB: DrawingBackend + 'a,
    DB::ErrorType: 'static,
    CT: CoordTranslate,
{
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(plot_err)
}

/// Arguments of `octconv plot`.
#[derive(clap::Args, Debug)]
pub struct PlotArgs {
    /// Run directories (each with metrics.jsonl).
    #[arg(required = true)]
    runs: Vec<PathBuf>,
    /// Output file; `.png` or `.svg`.
    #[arg(short = 'o', long = "out")]
    out: PathBuf,
    /// A TrueType font for the labels (default: DejaVu Sans from the system).
    #[arg(long)]
    font: Option<PathBuf>,
    /// Legend names of the runs, in order (default: each run directory's name).
    #[arg(long = "label", value_name = "NAME")]
    labels: Vec<String>,
}

const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// plotters' pure-Rust text rendering needs a font file; we register one instead of linking fontconfig.
pub(super) fn register_font(explicit: Option<&Path>) -> anyhow::Result<()> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None => FONTS
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .context("no DejaVu Sans font found; install Debian's `fonts-dejavu-core` or pass --font FILE.ttf")?,
    };
    let bytes =
        std::fs::read(&path).with_context(|| format!("cannot read font `{}`", path.display()))?;
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow::anyhow!("`{}` is not a usable TrueType font", path.display()))?;
    Ok(())
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    runs: &[(String, Vec<EpochRecord>)],
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(plot_err)?;
    let panels = root.split_evenly((1, 2));
    let max_epoch = runs
        .iter()
        .flat_map(|(_, m)| m.iter().map(|r| r.epoch))
        .max()
        .unwrap_or(1) as f64;
    let max_loss = runs
        .iter()
        .flat_map(|(_, m)| m.iter().flat_map(|r| [r.train_loss, r.test_loss]))
        .filter(|x| x.is_finite())
        .fold(0.0f64, f64::max)
        .max(1e-3);
    // Segmentation runs also draw their test mean IoU in the accuracy panel.
    let seg = runs
        .iter()
        .any(|(_, m)| m.iter().any(|r| r.test_miou.is_some()));
    let acc_title = if seg {
        "pixel accuracy, mean IoU (%)"
    } else {
        "accuracy (%)"
    };
    for (panel, (title, is_loss)) in panels.iter().zip([("loss", true), (acc_title, false)]) {
        let y_max = if is_loss { max_loss * 1.05 } else { 100.0 };
        let mut chart = ChartBuilder::on(panel)
            .caption(title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .build_cartesian_2d(0.0..max_epoch.max(1.0), 0.0..y_max)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(plot_err)?;
        for (i, (name, m)) in runs.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let value = |r: &EpochRecord, train: bool| match (is_loss, train) {
                (true, true) => r.train_loss,
                (true, false) => r.test_loss,
                (false, true) => 100.0 * r.train_acc,
                (false, false) => 100.0 * r.test_acc,
            };
            for train in [false, true] {
                let style = if train {
                    color.mix(0.45).stroke_width(1)
                } else {
                    color.stroke_width(2)
                };
                let label = format!("{name} {}", if train { "train" } else { "test" });
                chart
                    .draw_series(LineSeries::new(
                        m.iter().map(|r| (r.epoch as f64, value(r, train))),
                        style,
                    ))
                    .map_err(plot_err)?
                    .label(label)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
            }
            let miou: Vec<(f64, f64)> = m
                .iter()
                .filter_map(|r| r.test_miou.map(|v| (r.epoch as f64, 100.0 * v)))
                .collect();
            if !is_loss && !miou.is_empty() {
                let style = color.stroke_width(2);
                chart
                    .draw_series(DashedLineSeries::new(miou, 6, 4, style))
                    .map_err(plot_err)?
                    .label(format!("{name} test mIoU"))
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 6, y), (x + 10, y), (x + 18, y)], style)
                    });
            }
        }
        // Losses fall and accuracies rise: those corners stay free of curves.
        let corner = if is_loss {
            SeriesLabelPosition::UpperRight
        } else {
            SeriesLabelPosition::LowerRight
        };
        draw_legend(&mut chart, corner)?;
    }
    root.present().map_err(plot_err)?;
    Ok(())
}

/// Draws the curves of named runs into `out` (`.png` or `.svg`); the font must be registered.
pub(super) fn save_curves(out: &Path, runs: &[(String, Vec<EpochRecord>)]) -> anyhow::Result<()> {
    let ext = out
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    match ext.as_str() {
        "png" => draw(
            BitMapBackend::new(out, (1200, 480)).into_drawing_area(),
            runs,
        ),
        "svg" => draw(SVGBackend::new(out, (1200, 480)).into_drawing_area(), runs),
        _ => bail!("`{}`: the output must end in .png or .svg", out.display()),
    }
}

/// Draws the curves of every run.
pub fn run(args: &PlotArgs) -> anyhow::Result<ExitCode> {
    if !args.labels.is_empty() && args.labels.len() != args.runs.len() {
        bail!(
            "{} --label values for {} run directories; give one per run or none",
            args.labels.len(),
            args.runs.len()
        );
    }
    let mut runs = Vec::new();
    for (i, dir) in args.runs.iter().enumerate() {
        let m = read_metrics(dir)?;
        if m.is_empty() {
            bail!("`{}` has no finished epochs yet", dir.display());
        }
        let name = match args.labels.get(i) {
            Some(label) => label.clone(),
            None => dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| dir.display().to_string()),
        };
        runs.push((name, m));
    }
    register_font(args.font.as_deref())?;
    save_curves(&args.out, &runs)?;
    eprintln!("wrote {}", args.out.display());
    Ok(ExitCode::SUCCESS)
}
