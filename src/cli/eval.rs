//! `octconv eval SPEC --weights W --data … [--test-limit N] [--json]`

use super::spec_args::SpecArgs;
use anyhow::Context;
use candle_core::DType;
use octconv_runtime::data::Batcher;
use octconv_runtime::train::{evaluate, split_run_weights};
use octconv_runtime::weights::{check_weights, read_safetensors};
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `octconv eval`.
#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    spec: SpecArgs,
    /// Weights, e.g. RUN_DIR/best.safetensors or final.safetensors.
    #[arg(long)]
    weights: PathBuf,
    /// `cifar10:DIR`, `folder:DIR|FILE.tar.gz` (evaluates `val/` or `test/`), `fashion-mnist[:DIR]`
    /// or `seg:DIR`.
    #[arg(long)]
    data: String,
    /// Normalisation when the weights carry none: `data` (measured on the training set) or
    /// `imagenet` (ImageNet's mean and std).
    #[arg(long, default_value = "data")]
    norm: octconv_runtime::data::Norm,
    /// Worker threads that decode images (default: the shared pool).
    #[arg(long)]
    data_threads: Option<usize>,
    /// Segmentation: the number of classes (default: the model's output channels).
    #[arg(long)]
    classes: Option<usize>,
    /// Use only N test images.
    #[arg(long)]
    test_limit: Option<usize>,
    /// Batch size.
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Print one JSON object (`accuracy`, `per_class`, `confusion`, `loss`, `classes`, `images`; for
    /// segmentation also `iou` and `mean_iou`; its loss is the plain per-pixel cross-entropy).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    device: super::spec_args::DeviceArgs,
}

/// Evaluates on the test split.
pub fn run(args: &EvalArgs, color: bool) -> anyhow::Result<ExitCode> {
    let Some(model) = args.spec.model(color) else {
        return Ok(ExitCode::from(1));
    };
    let device = args.device.open()?;
    let mut data = super::spec_args::load_data(&model, &args.data, None, args.test_limit)?;
    if data.is_segmentation() {
        super::spec_args::check_segmentation(&model, &mut data, args.classes)?;
    } else {
        super::spec_args::check_classification(&model, &data, &args.data)?;
    }
    let (weights, norm) = split_run_weights(read_safetensors(&args.weights, &device)?)?;
    check_weights(&model, &weights)
        .with_context(|| format!("weights file `{}`", args.weights.display()))?;
    // A run's weights carry the training set's normalisation; other weights use --norm.
    let batcher = match norm {
        Some((mean, std)) => Batcher::with_stats(&data.train, false, mean, std),
        None => Batcher::new(&data.train, false, args.norm)?,
    };
    let batcher = match args.data_threads {
        Some(n) => batcher.with_threads(n)?,
        None => batcher,
    };
    let mut net = octconv_runtime::OctModel::new(
        model,
        candle_nn::VarBuilder::from_tensors(weights, DType::F32, &device),
    )?;
    // Inference only, batch after batch: the kernels prepare their weights once.
    net.freeze()?;
    let e = evaluate(&net, &data.test, &batcher, args.batch)?;
    let classes = &data.test.classes;
    if args.json {
        let mut v = serde_json::to_value(&e)?;
        v["classes"] = serde_json::json!(classes);
        v["images"] = serde_json::json!(data.test.len());
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let w = classes.iter().map(|c| c.len()).max().unwrap_or(5).max(5);
    if let (Some(iou), Some(miou)) = (&e.iou, e.mean_iou) {
        println!(
            "mean IoU {:.2}%, pixel accuracy {:.2}% on {} test images (loss {:.4})\n",
            100.0 * miou,
            100.0 * e.accuracy,
            data.test.len(),
            e.loss
        );
        println!("{:<w$}       IoU  pixel accuracy", "class");
        for ((c, i), a) in classes.iter().zip(iou).zip(&e.per_class) {
            let i = i.map_or("      –".to_string(), |v| format!("{:>7.2}%", 100.0 * v));
            println!("{c:<w$}  {i}  {:>13.2}%", 100.0 * a);
        }
        println!("\n(–: the class neither occurs nor is predicted; the mean leaves it out)");
    } else {
        println!(
            "accuracy {:.2}% on {} test images (loss {:.4})\n",
            100.0 * e.accuracy,
            data.test.len(),
            e.loss
        );
        println!("{:<w$}  accuracy", "class");
        for (c, a) in classes.iter().zip(&e.per_class) {
            println!("{c:<w$}  {:>7.2}%", 100.0 * a);
        }
    }
    println!("\nconfusion (rows: true class, columns: predicted)");
    print!("{:<w$}", "");
    for i in 0..classes.len() {
        print!(" {i:>6}");
    }
    println!();
    for (c, row) in classes.iter().zip(&e.confusion) {
        print!("{c:<w$}");
        for n in row {
            print!(" {n:>6}");
        }
        println!();
    }
    Ok(ExitCode::SUCCESS)
}
