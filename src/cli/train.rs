//! `octconv train SPEC --data … --run-dir DIR [--epochs N] [--batch B] [--lr …] [--seed S] [--resume] …`

use super::spec_args::SpecArgs;
use anyhow::bail;
use indicatif::{ProgressBar, ProgressStyle};
use octconv_runtime::data::Split;
use octconv_runtime::train::{Event, Finish, TrainConfig, Trainer};
use octconv_spec::Model;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

/// Arguments of `octconv train`.
#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    spec: SpecArgs,
    /// Directory for run.json, metrics.jsonl, checkpoint, best and final weights.
    #[arg(long)]
    run_dir: PathBuf,
    /// Continue the run in --run-dir exactly where it stopped.
    #[arg(long)]
    resume: bool,
    #[command(flatten)]
    flags: TrainFlags,
}

/// The data, schedule and optimiser flags shared by `train` and `sweep`.
#[derive(clap::Args, Debug, Clone)]
pub struct TrainFlags {
    /// `cifar10:DIR`, `folder:DIR|FILE.tar.gz` (`train/<class>/*` and `val/` or `test/`; JPEG or PNG
    /// of any size), `fashion-mnist[:DIR]` or `seg:DIR` (`train/images/*` + `train/masks/*.png`).
    #[arg(long)]
    pub data: String,
    /// Epochs (the seed: 200).
    #[arg(long, default_value_t = 200)]
    pub epochs: usize,
    /// Batch size.
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
    /// Base learning rate.
    #[arg(long, default_value_t = 0.1)]
    pub lr: f64,
    /// Epochs at which the step schedule multiplies the rate by --gamma.
    #[arg(long, value_delimiter = ',', default_values_t = [100usize, 150])]
    pub milestones: Vec<usize>,
    /// Factor of the step schedule.
    #[arg(long, default_value_t = 0.2)]
    pub gamma: f64,
    /// Cosine schedule over all epochs (the paper) instead of steps.
    #[arg(long)]
    pub cosine: bool,
    /// Linear warm-up epochs.
    #[arg(long, default_value_t = 0.0)]
    pub warmup: f64,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f64,
    /// Nesterov momentum.
    #[arg(long)]
    pub nesterov: bool,
    /// Weight decay.
    #[arg(long, default_value_t = 5e-4)]
    pub weight_decay: f64,
    /// Also decay BN parameters and biases.
    #[arg(long)]
    pub decay_bn_and_bias: bool,
    /// Seed of initialisation, order, augmentation and dropout.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Turn off augmentation (flip + 4-pixel pad-and-crop up to 64 × 64 inputs, RandomResizedCrop +
    /// flip above).
    #[arg(long)]
    pub no_augment: bool,
    /// Normalisation statistics: `data` (measured on the training set) or `imagenet` (ImageNet's
    /// mean and std).
    #[arg(long, default_value = "data")]
    pub norm: octconv_runtime::data::Norm,
    /// Worker threads that decode and augment images ahead of the step (default: the shared pool).
    #[arg(long)]
    pub data_threads: Option<usize>,
    /// Fine-tune: start from these weights (e.g. `octconv import`'s output) instead of the seeded
    /// initialisation. The model's last layer (the classifier) is initialised afresh where the file's
    /// differs, e.g. after `--set classes=N`; the replaced tensors are listed.
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// The number of classes: for classification the spec's `classes` parameter (`--set classes=N`),
    /// for segmentation checked against the masks (default: the model's output channels; a mask
    /// index at or above it is an error naming the mask).
    #[arg(long)]
    pub classes: Option<usize>,
    /// Segmentation: per-class weights of the cross-entropy, e.g. `0.5,1,1`.
    #[arg(long, value_delimiter = ',')]
    pub class_weights: Option<Vec<f32>>,
    /// Segmentation: weight of the soft Dice loss added to the cross-entropy (0: none).
    #[arg(long, default_value_t = 0.0)]
    pub dice: f64,
    /// Use only the first N training images.
    #[arg(long)]
    pub train_limit: Option<usize>,
    /// Use only the first N test images.
    #[arg(long)]
    pub test_limit: Option<usize>,
    #[command(flatten)]
    pub device: super::spec_args::DeviceArgs,
}

impl TrainFlags {
    /// The run description for `model` (what `run.json` stores and a resume must match).
    pub fn config(&self, model: &Model) -> TrainConfig {
        TrainConfig {
            model: model.call_string(),
            data: self.data.clone(),
            epochs: self.epochs,
            batch: self.batch,
            lr: self.lr,
            milestones: if self.cosine {
                Vec::new()
            } else {
                self.milestones.clone()
            },
            gamma: self.gamma,
            cosine: self.cosine,
            warmup: self.warmup,
            momentum: self.momentum,
            nesterov: self.nesterov,
            weight_decay: self.weight_decay,
            decay_bn_and_bias: self.decay_bn_and_bias,
            seed: self.seed,
            augment: !self.no_augment,
            norm: self.norm,
            init: self.init.clone(),
            seg_loss: octconv_runtime::segment::SegLoss {
                class_weights: self.class_weights.clone(),
                dice: self.dice,
            },
            train_limit: self.train_limit,
            test_limit: self.test_limit,
        }
    }

    /// The spec with `--classes N` applied as `--set classes=N` for classification data (the
    /// classifier then has N outputs; with `--init` it starts afresh). Segmentation data checks
    /// `--classes` against the masks instead.
    pub fn spec_with_classes(
        &self,
        spec: &super::spec_args::SpecArgs,
    ) -> super::spec_args::SpecArgs {
        let mut spec = spec.clone();
        if let (Some(n), false) = (self.classes, self.data.starts_with("seg:")) {
            if !spec
                .sets
                .iter()
                .any(|s| s.trim_start().starts_with("classes"))
            {
                spec.sets.push(format!("classes={n}"));
            }
        }
        spec
    }

    /// Loads the data for `model` and checks that its classes match the model's output (a class
    /// vector, or a map of class scores for `seg:` data).
    pub fn load_data(&self, model: &Model) -> anyhow::Result<Split> {
        let mut data =
            super::spec_args::load_data(model, &self.data, self.train_limit, self.test_limit)?;
        if data.is_segmentation() {
            let k = super::spec_args::check_segmentation(model, &mut data, self.classes)?;
            if let Some(w) = &self.class_weights {
                if w.len() != k {
                    bail!(
                        "--class-weights has {} values but model `{}` scores {k} classes; give one weight per class",
                        w.len(),
                        model.name
                    );
                }
            }
            return Ok(data);
        }
        if self.class_weights.is_some() || self.dice != 0.0 {
            bail!("--class-weights and --dice are for segmentation data (`seg:DIR`); `{}` is labelled by class", self.data);
        }
        super::spec_args::check_classification(model, &data, &self.data)?;
        Ok(data)
    }
}

/// The Ctrl-C flag: set once per process (the handler can be installed only once), checked between
/// batches so that an interrupted run saves its checkpoint first.
pub fn stop_flag() -> Arc<AtomicBool> {
    static STOP: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    STOP.get_or_init(|| {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        // A second Ctrl-C while saving is ignored: the checkpoint write must finish.
        let _ = ctrlc::set_handler(move || s.store(true, Ordering::SeqCst));
        stop
    })
    .clone()
}

/// Trains `model` in `run_dir` (resuming its checkpoint with `resume`) with a progress bar and one
/// line per epoch on stderr.
pub fn train_in_dir(
    model: Model,
    cfg: TrainConfig,
    data: &Split,
    run_dir: &Path,
    resume: bool,
    data_threads: Option<usize>,
    device: &candle_core::Device,
) -> anyhow::Result<Finish> {
    let mut trainer = Trainer::new_on(model, cfg, run_dir, data, resume, device)?;
    for t in trainer.replaced_on_init() {
        eprintln!("--init: the classifier tensor {t} starts from the seeded initialisation");
    }
    if let Some(n) = data_threads {
        trainer = trainer.with_data_threads(n)?;
    }
    let stop = stop_flag();
    let style = ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg}")
        .expect("valid template")
        .progress_chars("=> ");
    let mut bar: Option<ProgressBar> = None;
    let finish = trainer.run(data, &stop, |e| match e {
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
            let miou = r.test_miou.map_or(String::new(), |m| format!(" mIoU {:.2}%", 100.0 * m));
            eprintln!(
                "epoch {:>3}: lr {:.4}  train loss {:.4} acc {:.2}%  test loss {:.4} acc {:.2}%{miou}  {:.0} s, {:.0} img/s",
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
    Ok(finish)
}

/// Trains; Ctrl-C saves a checkpoint and exits with status 130.
pub fn run(args: &TrainArgs, color: bool) -> anyhow::Result<ExitCode> {
    let Some(model) = args.flags.spec_with_classes(&args.spec).model(color) else {
        return Ok(ExitCode::from(1));
    };
    let data = args.flags.load_data(&model)?;
    let cfg = args.flags.config(&model);
    eprintln!(
        "training {} on {} ({} train / {} test images) for {} epochs, batch {}, run dir {}",
        cfg.model,
        args.flags.data,
        data.train.len(),
        data.test.len(),
        cfg.epochs,
        cfg.batch,
        args.run_dir.display()
    );
    let device = args.flags.device.open()?;
    let finish = train_in_dir(
        model,
        cfg,
        &data,
        &args.run_dir,
        args.resume,
        args.flags.data_threads,
        &device,
    )?;
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
