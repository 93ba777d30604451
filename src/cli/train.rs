//! `octconv train SPEC --data … --run-dir DIR [--epochs N] [--batch B] [--lr …] [--seed S] [--resume] …`

use super::spec_args::SpecArgs;
use anyhow::bail;
use indicatif::{ProgressBar, ProgressStyle};
use octconv_runtime::train::{Event, Finish, TrainConfig, Trainer};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Arguments of `octconv train`.
#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    spec: SpecArgs,
    /// `cifar10:DIR`, `folder:DIR|FILE.tar.gz` or `fashion-mnist[:DIR]`.
    #[arg(long)]
    data: String,
    /// Directory for run.json, metrics.jsonl, checkpoint, best and final weights.
    #[arg(long)]
    run_dir: PathBuf,
    /// Epochs (the seed: 200).
    #[arg(long, default_value_t = 200)]
    epochs: usize,
    /// Batch size.
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// Base learning rate.
    #[arg(long, default_value_t = 0.1)]
    lr: f64,
    /// Epochs at which the step schedule multiplies the rate by --gamma.
    #[arg(long, value_delimiter = ',', default_values_t = [100usize, 150])]
    milestones: Vec<usize>,
    /// Factor of the step schedule.
    #[arg(long, default_value_t = 0.2)]
    gamma: f64,
    /// Cosine schedule over all epochs (the paper) instead of steps.
    #[arg(long)]
    cosine: bool,
    /// Linear warm-up epochs.
    #[arg(long, default_value_t = 0.0)]
    warmup: f64,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    momentum: f64,
    /// Nesterov momentum.
    #[arg(long)]
    nesterov: bool,
    /// Weight decay.
    #[arg(long, default_value_t = 5e-4)]
    weight_decay: f64,
    /// Also decay BN parameters and biases.
    #[arg(long)]
    decay_bn_and_bias: bool,
    /// Seed of initialisation, order, augmentation and dropout.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Turn off the standard augmentation (flip + 4-pixel pad-and-crop).
    #[arg(long)]
    no_augment: bool,
    /// Use only the first N training images.
    #[arg(long)]
    train_limit: Option<usize>,
    /// Use only the first N test images.
    #[arg(long)]
    test_limit: Option<usize>,
    /// Continue the run in --run-dir exactly where it stopped.
    #[arg(long)]
    resume: bool,
    #[command(flatten)]
    device: super::spec_args::DeviceArgs,
}

/// Trains; Ctrl-C saves a checkpoint and exits with status 130.
pub fn run(args: &TrainArgs, color: bool) -> anyhow::Result<ExitCode> {
    let Some(model) = args.spec.model(color) else {
        return Ok(ExitCode::from(1));
    };
    let data = super::spec_args::load_data(&model, &args.data, args.train_limit, args.test_limit)?;
    let classes = data.train.classes.len();
    if model.output != (octconv_spec::Shape::Flat { features: classes }) {
        bail!("model `{}` outputs {} but `{}` has {classes} classes (set e.g. `--set classes={classes}`)", model.name, model.output, args.data);
    }
    let cfg = TrainConfig {
        model: model.call_string(),
        data: args.data.clone(),
        epochs: args.epochs,
        batch: args.batch,
        lr: args.lr,
        milestones: if args.cosine {
            Vec::new()
        } else {
            args.milestones.clone()
        },
        gamma: args.gamma,
        cosine: args.cosine,
        warmup: args.warmup,
        momentum: args.momentum,
        nesterov: args.nesterov,
        weight_decay: args.weight_decay,
        decay_bn_and_bias: args.decay_bn_and_bias,
        seed: args.seed,
        augment: !args.no_augment,
        train_limit: args.train_limit,
        test_limit: args.test_limit,
    };
    eprintln!(
        "training {} on {} ({} train / {} test images) for {} epochs, batch {}, run dir {}",
        cfg.model,
        args.data,
        data.train.len(),
        data.test.len(),
        cfg.epochs,
        cfg.batch,
        args.run_dir.display()
    );
    let device = args.device.open()?;
    let mut trainer = Trainer::new_on(model, cfg, &args.run_dir, &data, args.resume, &device)?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        // A second Ctrl-C while saving is ignored: the checkpoint write must finish.
        let _ = ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst));
    }
    let style = ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg}")
        .expect("valid template")
        .progress_chars("=> ");
    let mut bar: Option<ProgressBar> = None;
    let finish = trainer.run(&data, &stop, |e| match e {
        Event::Batch { epoch, batch, batches, loss, acc, images_per_s } => {
            let b = bar.get_or_insert_with(|| {
                let b = ProgressBar::new(batches as u64).with_style(style.clone());
                b.set_prefix(format!("{}", epoch + 1));
                b
            });
            b.set_position(batch as u64 + 1);
            b.set_message(format!("loss {loss:.4} acc {:.2}% {images_per_s:.0} img/s", 100.0 * acc));
        }
        Event::Epoch(r) => {
            if let Some(b) = bar.take() {
                b.finish_and_clear();
            }
            eprintln!(
                "epoch {:>3}: lr {:.4}  train loss {:.4} acc {:.2}%  test loss {:.4} acc {:.2}%  {:.0} s, {:.0} img/s",
                r.epoch,
                r.lr,
                r.train_loss,
                100.0 * r.train_acc,
                r.test_loss,
                100.0 * r.test_acc,
                r.seconds,
                r.images_per_s
            );
        }
    })?;
    if let Some(b) = bar.take() {
        b.finish_and_clear();
    }
    Ok(match finish {
        Finish::Completed => {
            eprintln!(
                "done: weights in {}/final.safetensors and best.safetensors",
                args.run_dir.display()
            );
            ExitCode::SUCCESS
        }
        Finish::Interrupted { epoch, batch } => {
            eprintln!(
                "interrupted: checkpoint saved at epoch {} batch {}; continue with the same command and --resume",
                epoch + 1,
                batch
            );
            ExitCode::from(130)
        }
        Finish::Diverged { epoch, batch } => {
            eprintln!(
                "error: the loss became NaN or infinite at epoch {} batch {}; the last good checkpoint is kept in {} (try a lower --lr or --warmup)",
                epoch + 1,
                batch,
                args.run_dir.display()
            );
            ExitCode::from(1)
        }
    })
}
