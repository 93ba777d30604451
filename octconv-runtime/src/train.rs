//! The training loop: seeded mini-batch SGD with per-epoch evaluation, metrics in `metrics.jsonl`,
//! atomic checkpoints that resume exactly (every batch's randomness is a function of the seed, the
//! epoch and the batch index, so nothing but counters needs saving), best and final weights, a stop on
//! non-finite loss, and a clean stop on request (Ctrl-C).

use crate::data::{epoch_order, Batcher, Dataset, Norm, Split};
use crate::init::init_params;
use crate::model::OctModel;
use crate::optim::{Schedule, Sgd, SgdConfig};
use crate::segment::{predict, Confusion, SegLoss};
use crate::weights::{read_safetensors, write_safetensors_atomic};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, ModuleT, Tensor, Var, D};
use candle_nn::{VarBuilder, VarMap};
use octconv_spec::Model;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Hyper-parameters of a run (stored in `run.json`; a resumed run must use the same).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// The model call (`wrn(n = 1, k = 2, …)`), for the record and the resume check.
    pub model: String,
    /// Data source as given.
    pub data: String,
    /// Epochs.
    pub epochs: usize,
    /// Batch size.
    pub batch: usize,
    /// Base learning rate.
    pub lr: f64,
    /// Step milestones (empty with `cosine`).
    pub milestones: Vec<usize>,
    /// Step factor.
    pub gamma: f64,
    /// Cosine schedule instead of steps.
    pub cosine: bool,
    /// Linear warm-up epochs.
    pub warmup: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// Nesterov momentum.
    pub nesterov: bool,
    /// Weight decay.
    pub weight_decay: f64,
    /// Also decay BN parameters and biases.
    pub decay_bn_and_bias: bool,
    /// Seed of initialisation, data order, augmentation and dropout.
    pub seed: u64,
    /// Augmentation: flip + 4-pixel pad-and-crop for inputs up to 64 × 64, RandomResizedCrop +
    /// flip for larger ones (`data::Crop::for_input`).
    pub augment: bool,
    /// Where the normalisation statistics come from (runs older than this field measured them).
    #[serde(default)]
    pub norm: Norm,
    /// Fine-tuning: the weights file the run starts from instead of the seeded initialisation
    /// ([`fine_tune_params`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<PathBuf>,
    /// The loss of segmentation data (`seg:`): class weights and Dice (unused for classification).
    #[serde(default, skip_serializing_if = "is_default")]
    pub seg_loss: SegLoss,
    /// Training images used (`None`: all).
    pub train_limit: Option<usize>,
    /// Test images used (`None`: all).
    pub test_limit: Option<usize>,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

impl TrainConfig {
    fn schedule(&self) -> Schedule {
        if self.cosine {
            Schedule::Cosine {
                epochs: self.epochs,
            }
        } else {
            Schedule::Step {
                milestones: self.milestones.clone(),
                gamma: self.gamma,
            }
        }
    }
}

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1-based epoch.
    pub epoch: usize,
    /// Learning rate at the end of the epoch.
    pub lr: f64,
    /// Mean training loss.
    pub train_loss: f64,
    /// Training accuracy (0–1, on augmented batches; segmentation: each batch's pixel accuracy,
    /// weighted by its number of images).
    pub train_acc: f64,
    /// Test loss.
    pub test_loss: f64,
    /// Test accuracy (0–1; segmentation: pixel accuracy).
    pub test_acc: f64,
    /// Segmentation: mean IoU on the test set (0–1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_miou: Option<f64>,
    /// Wall time of the training part of the epoch.
    pub seconds: f64,
    /// Training images per second.
    pub images_per_s: f64,
}

impl EpochRecord {
    /// What "best" means for a run: the test mean IoU for segmentation, else the test accuracy
    /// (`best.safetensors` is the epoch with the highest score).
    pub fn score(&self) -> f64 {
        self.test_miou.unwrap_or(self.test_acc)
    }
}

/// Progress reported to the caller.
#[derive(Debug)]
pub enum Event<'a> {
    /// A batch finished.
    Batch {
        /// 0-based epoch.
        epoch: usize,
        /// 0-based batch.
        batch: usize,
        /// Batches per epoch.
        batches: usize,
        /// Mean loss so far this epoch.
        loss: f64,
        /// Accuracy so far this epoch.
        acc: f64,
        /// Images per second so far this epoch.
        images_per_s: f64,
    },
    /// An epoch finished (after evaluation).
    Epoch(&'a EpochRecord),
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Finish {
    /// All epochs done.
    Completed,
    /// Stopped on request; a checkpoint at (epoch, batch) was written.
    Interrupted {
        /// 0-based epoch.
        epoch: usize,
        /// Next batch.
        batch: usize,
    },
    /// The loss became NaN or infinite; the last good checkpoint is kept.
    Diverged {
        /// 0-based epoch.
        epoch: usize,
        /// Batch.
        batch: usize,
    },
}

/// Test-set evaluation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Evaluation {
    /// Mean cross-entropy.
    pub loss: f64,
    /// Accuracy (0–1).
    pub accuracy: f64,
    /// Accuracy per class (0–1; NaN-free: classes without images get 0).
    pub per_class: Vec<f64>,
    /// `confusion[true][predicted]` counts (segmentation: of pixels).
    pub confusion: Vec<Vec<u64>>,
    /// Segmentation: per-class IoU (`None`: the class neither occurs nor is predicted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iou: Option<Vec<Option<f64>>>,
    /// Segmentation: mean of the defined per-class IoUs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean_iou: Option<f64>,
}

/// Runs `model` in eval mode over `ds` in batches (segmentation sets: with the plain per-pixel
/// cross-entropy; [`evaluate_with`] takes the training loss).
pub fn evaluate(
    model: &OctModel,
    ds: &Dataset,
    batcher: &Batcher,
    batch: usize,
) -> Result<Evaluation> {
    evaluate_with(model, ds, batcher, batch, &SegLoss::default())
}

/// [`evaluate`] with `seg_loss` as the loss of a segmentation set.
pub fn evaluate_with(
    model: &OctModel,
    ds: &Dataset,
    batcher: &Batcher,
    batch: usize,
    seg_loss: &SegLoss,
) -> Result<Evaluation> {
    let k = ds.classes.len();
    let mut confusion = Confusion::new(k);
    let mut loss_sum = 0.0;
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let plain = Batcher {
        augment: false,
        ..batcher.clone()
    };
    let order: Vec<usize> = (0..ds.len()).collect();
    for idx in order.chunks(batch.max(1)) {
        let (x, y) = plain.batch(ds, idx, &mut rng, model.device())?;
        let logits = model.infer(&x)?;
        let loss = task_loss(&logits, &y, seg_loss)?;
        loss_sum += loss.to_scalar::<f32>()? as f64 * idx.len() as f64;
        confusion.add(&predictions(&logits)?, &y.flatten_all()?.to_vec1::<u32>()?);
    }
    let rows = confusion.rows();
    let per_class = rows
        .iter()
        .enumerate()
        .map(|(i, r)| r[i] as f64 / r.iter().sum::<u64>().max(1) as f64)
        .collect();
    let seg = ds.masks.is_some();
    Ok(Evaluation {
        loss: loss_sum / ds.len().max(1) as f64,
        accuracy: confusion.pixel_accuracy(),
        per_class,
        confusion: rows,
        iou: seg.then(|| confusion.iou()),
        mean_iou: seg.then(|| confusion.mean_iou()),
    })
}

/// Cross-entropy of class logits `[B, K]` against labels `[B]`, or the segmentation loss of
/// `[B, K, H, W]` against masks `[B, H, W]`.
fn task_loss(logits: &Tensor, y: &Tensor, seg_loss: &SegLoss) -> Result<Tensor> {
    if y.rank() == 3 {
        seg_loss.loss(logits, y)
    } else {
        Ok(candle_nn::loss::cross_entropy(logits, y)?)
    }
}

/// The predicted class of each image (`[B, K]` logits) or pixel (`[B, K, H, W]`).
fn predictions(logits: &Tensor) -> Result<Vec<u32>> {
    if logits.rank() == 4 {
        predict(logits)
    } else {
        Ok(logits.argmax(D::Minus1)?.to_vec1()?)
    }
}

/// Names of the tensors that are run state, not model parameters.
const STATE: &str = "__state";
/// Name of the per-channel input mean in a weights file (runs and imports write it; `eval` reads it).
pub const NORM_MEAN: &str = "__norm.mean";
/// Name of the per-channel input standard deviation in a weights file (as [`NORM_MEAN`]).
pub const NORM_STD: &str = "__norm.std";
const OPT: &str = "__opt.";

/// The files of a run directory, named in one place (the trainer, `sweep`, `plot` and the tests use
/// these).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunDir(PathBuf);

impl RunDir {
    /// The run directory at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        RunDir(path.into())
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// `run.json`: the settings ([`TrainConfig`]); a resume must match them.
    pub fn settings(&self) -> PathBuf {
        self.0.join("run.json")
    }

    /// `metrics.jsonl`: one [`EpochRecord`] per finished epoch.
    pub fn metrics(&self) -> PathBuf {
        self.0.join("metrics.jsonl")
    }

    /// `checkpoint.safetensors`: weights, BN statistics, momentum buffers and [`Progress`].
    pub fn checkpoint(&self) -> PathBuf {
        self.0.join("checkpoint.safetensors")
    }

    /// `best.safetensors`: the weights of the epoch with the best test accuracy.
    pub fn best(&self) -> PathBuf {
        self.0.join("best.safetensors")
    }

    /// `final.safetensors`: the weights after the last epoch.
    pub fn final_weights(&self) -> PathBuf {
        self.0.join("final.safetensors")
    }
}

/// Where a run stands: the epoch in progress, its next batch and running sums, and the best test
/// accuracy so far. Saved in checkpoints as the tensor `__state`.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Progress {
    /// Epoch in progress (0-based); equal to the epoch count when the run is done.
    epoch: usize,
    /// Next batch of that epoch.
    batch: usize,
    /// Sum of per-image training losses of the epoch so far.
    loss_sum: f64,
    /// Correctly classified training images of the epoch so far (segmentation: each batch's pixel
    /// accuracy times its images).
    correct: f64,
    /// Training images of the epoch so far.
    seen: f64,
    /// Seconds spent in the epoch before the last interruption.
    seconds: f64,
    /// Best [`EpochRecord::score`] of a finished epoch (−1 before the first).
    best: f64,
}

impl Progress {
    /// Number of values in the `__state` tensor.
    const LEN: usize = 7;

    /// A new run.
    fn start() -> Self {
        Progress {
            epoch: 0,
            batch: 0,
            loss_sum: 0.0,
            correct: 0.0,
            seen: 0.0,
            seconds: 0.0,
            best: -1.0,
        }
    }

    /// The start of the epoch after this one (the best accuracy carries over).
    fn next_epoch(self) -> Self {
        Progress {
            epoch: self.epoch + 1,
            best: self.best,
            ..Progress::start()
        }
    }

    /// The `__state` tensor.
    fn to_state(self) -> Result<Tensor> {
        let v = [
            self.epoch as f64,
            self.batch as f64,
            self.loss_sum,
            self.correct,
            self.seen,
            self.seconds,
            self.best,
        ];
        Ok(Tensor::new(&v, &Device::Cpu)?)
    }

    /// Reads the `__state` values of checkpoint `path`.
    fn from_state(v: &[f64], path: &Path) -> Result<Self> {
        let [epoch, batch, loss_sum, correct, seen, seconds, best] = v else {
            bail!(
                "checkpoint `{}` has a malformed `__state` ({} values, expected {})",
                path.display(),
                v.len(),
                Self::LEN
            );
        };
        Ok(Progress {
            epoch: *epoch as usize,
            batch: *batch as usize,
            loss_sum: *loss_sum,
            correct: *correct,
            seen: *seen,
            seconds: *seconds,
            best: *best,
        })
    }
}

/// What a checkpoint restores besides the parameters.
struct Restored {
    params: HashMap<String, Tensor>,
    progress: Progress,
    norm: Normalisation,
    momentum: HashMap<String, Tensor>,
}

/// A training run in a directory.
pub struct Trainer {
    cfg: TrainConfig,
    dir: RunDir,
    varmap: VarMap,
    model: OctModel,
    opt: Sgd,
    batcher: Batcher,
    progress: Progress,
    replaced_on_init: Vec<String>,
}

impl Trainer {
    /// Starts a run in `dir`, or resumes the checkpoint there with `resume`. The data decides the
    /// normalisation statistics of a new run.
    pub fn new(
        ir: Model,
        cfg: TrainConfig,
        dir: &Path,
        data: &Split,
        resume: bool,
    ) -> Result<Self> {
        Self::new_on(ir, cfg, dir, data, resume, &Device::Cpu)
    }

    /// [`Trainer::new`] on `device` (weights, batches and optimiser state live there; checkpoints are
    /// the same files on every device, so a run may resume on another one).
    pub fn new_on(
        ir: Model,
        cfg: TrainConfig,
        dir: &Path,
        data: &Split,
        resume: bool,
        device: &Device,
    ) -> Result<Self> {
        let dir = RunDir::new(dir);
        // A new run measures its normalisation before anything is written: a bad image stops it
        // with nothing written.
        let fresh = match resume {
            false => Some(Batcher::new(&data.train, cfg.augment, cfg.norm)?),
            true => None,
        };
        let mut replaced_on_init = Vec::new();
        std::fs::create_dir_all(dir.path())
            .with_context(|| format!("cannot create run directory `{}`", dir.path().display()))?;
        let (params, progress, momentum, batcher) = match fresh {
            None => {
                let r = restore(&ir, &cfg, &dir, device)?;
                let (mean, std) = r.norm;
                let batcher = Batcher::with_stats(&data.train, cfg.augment, mean, std);
                (r.params, r.progress, r.momentum, batcher)
            }
            Some(batcher) => {
                let (params, replaced) = start(&ir, &cfg, &dir, device)?;
                replaced_on_init = replaced;
                (params, Progress::start(), HashMap::new(), batcher)
            }
        };
        let varmap = VarMap::new();
        {
            let mut data = varmap
                .data()
                .lock()
                .map_err(|_| anyhow::anyhow!("var map poisoned"))?;
            for (name, t) in params {
                data.insert(name, Var::from_tensor(&t)?);
            }
        }
        let model = OctModel::new(ir, VarBuilder::from_varmap(&varmap, DType::F32, device))?;
        let vars = crate::optim::named_vars(&varmap)?;
        let mut opt = Sgd::new(
            vars,
            SgdConfig {
                momentum: cfg.momentum,
                nesterov: cfg.nesterov,
                weight_decay: cfg.weight_decay,
                decay_bn_and_bias: cfg.decay_bn_and_bias,
            },
        );
        opt.load_state(momentum)?;
        Ok(Trainer {
            cfg,
            dir,
            varmap,
            model,
            opt,
            batcher,
            progress,
            replaced_on_init,
        })
    }

    /// Decodes and augments each batch's images on `threads` worker threads (the default is the
    /// global pool, shared with the computation).
    pub fn with_data_threads(mut self, threads: usize) -> Result<Self> {
        self.batcher = self.batcher.with_threads(threads)?;
        Ok(self)
    }

    /// Fine-tuning: the classifier tensors a new run initialised itself because `--init`'s file
    /// lacked them or held another shape (`name [ours] (file: …)`); empty otherwise.
    pub fn replaced_on_init(&self) -> &[String] {
        &self.replaced_on_init
    }

    /// The model being trained.
    pub fn model(&self) -> &OctModel {
        &self.model
    }

    /// All parameters and buffers plus the normalisation statistics: what `best` and `final` hold.
    fn weights(&self) -> Result<HashMap<String, Tensor>> {
        let mut out: HashMap<String, Tensor> = self
            .varmap
            .data()
            .lock()
            .map_err(|_| anyhow::anyhow!("var map poisoned"))?
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect();
        out.insert(
            NORM_MEAN.into(),
            Tensor::new(self.batcher.mean.as_slice(), &Device::Cpu)?,
        );
        out.insert(
            NORM_STD.into(),
            Tensor::new(self.batcher.std.as_slice(), &Device::Cpu)?,
        );
        Ok(out)
    }

    fn save_checkpoint(&self) -> Result<()> {
        let mut t = self.weights()?;
        for (k, v) in self.opt.state()? {
            t.insert(format!("{OPT}{k}"), v);
        }
        t.insert(STATE.into(), self.progress.to_state()?);
        write_safetensors_atomic(&t, &self.dir.checkpoint())
    }

    /// Trains until done, diverged or `stop` is set; `on` sees every batch and epoch.
    pub fn run(
        &mut self,
        data: &Split,
        stop: &AtomicBool,
        mut on: impl FnMut(Event),
    ) -> Result<Finish> {
        let n = data.train.len();
        let batches = n.div_ceil(self.cfg.batch.max(1));
        let schedule = self.cfg.schedule();
        while self.progress.epoch < self.cfg.epochs {
            let epoch = self.progress.epoch;
            let order = epoch_order(n, self.cfg.seed, epoch as u64);
            let started = Instant::now();
            let mut lr = self.cfg.lr;
            let first = self.progress.batch;
            let (batch, seed) = (self.cfg.batch, self.cfg.seed);
            let batcher = self.batcher.clone();
            let (order, train) = (&order, &data.train);
            // A loader thread decodes and augments the next batches (at most two ahead) while the
            // step runs. Every batch's randomness depends only on (seed, epoch, batch), so the
            // batches, and resumes, are those of a serial loop.
            let interrupted = std::thread::scope(|scope| -> Result<Option<Finish>> {
                let (send, batches_ahead) = std::sync::mpsc::sync_channel(2);
                scope.spawn(move || {
                    for b in first..batches {
                        let idx = &order[b * batch..((b + 1) * batch).min(n)];
                        let mut rng = ChaCha8Rng::seed_from_u64(seed);
                        rng.set_stream(((epoch as u64) << 32) | b as u64);
                        // The receiver is gone when the step loop stopped early.
                        // An error (a file that does not decode) ends the stream after it is sent.
                        let host = batcher.batch_host(train, idx, &mut rng);
                        let failed = host.is_err();
                        if send.send(host).is_err() || failed {
                            return;
                        }
                    }
                });
                for b in first..batches {
                    if stop.load(Ordering::SeqCst) {
                        self.progress.batch = b;
                        // The epoch's seconds so far, so that a resumed epoch reports its whole time.
                        self.progress.seconds += started.elapsed().as_secs_f64();
                        self.save_checkpoint()?;
                        return Ok(Some(Finish::Interrupted { epoch, batch: b }));
                    }
                    let host = batches_ahead
                        .recv()
                        .context("the batch loader thread stopped")?
                        .with_context(|| format!("epoch {} batch {b}: the checkpoint on disk is that of the last finished epoch or interruption", epoch + 1))?;
                    let len = host.shape[0];
                    self.model.set_dropout_seed(
                        self.cfg.seed
                            ^ (((epoch as u64) << 32) | b as u64)
                                .wrapping_mul(0x9e37_79b9_7f4a_7c15),
                    );
                    let (x, y) = host.to_tensors(self.model.device())?;
                    let t = epoch as f64 + b as f64 / batches as f64;
                    lr = schedule.lr(self.cfg.lr, t, self.cfg.warmup);
                    let seg_loss = &self.cfg.seg_loss;
                    let value =
                        |loss: &Tensor| -> Result<f64> { Ok(loss.to_scalar::<f32>()? as f64) };
                    // The planned step on the CPU (crate::tape), else candle's autograd; no update
                    // after a loss that is not finite.
                    let (logits, loss_v) = if crate::tape::planned(self.model.device()) {
                        let step = self.model.train_step(&x, &|logits| {
                            task_loss(logits, &y, seg_loss)
                                .map_err(|e| candle_core::Error::Msg(format!("{e:#}")))
                        })?;
                        let v = value(&step.loss)?;
                        if v.is_finite() {
                            self.opt.step(&step.grads, lr)?;
                        }
                        (step.output, v)
                    } else {
                        let logits = self.model.forward_t(&x, true)?;
                        let loss = task_loss(&logits, &y, seg_loss)?;
                        let v = value(&loss)?;
                        if v.is_finite() {
                            self.opt.step(&loss.backward()?, lr)?;
                        }
                        (logits, v)
                    };
                    if !loss_v.is_finite() {
                        return Ok(Some(Finish::Diverged { epoch, batch: b }));
                    }
                    // Correct images, or correct pixels of the counted ones scaled to images.
                    let mut c = Confusion::new(logits.dim(1)?);
                    c.add(&predictions(&logits)?, &y.flatten_all()?.to_vec1::<u32>()?);
                    self.progress.loss_sum += loss_v * len as f64;
                    self.progress.correct += c.pixel_accuracy() * len as f64;
                    self.progress.seen += len as f64;
                    let secs = self.progress.seconds + started.elapsed().as_secs_f64();
                    on(Event::Batch {
                        epoch,
                        batch: b,
                        batches,
                        loss: self.progress.loss_sum / self.progress.seen,
                        acc: self.progress.correct / self.progress.seen,
                        images_per_s: self.progress.seen / secs.max(1e-9),
                    });
                }
                Ok(None)
            })?;
            if let Some(finish) = interrupted {
                return Ok(finish);
            }
            let seconds = self.progress.seconds + started.elapsed().as_secs_f64();
            let eval = evaluate_with(
                &self.model,
                &data.test,
                &self.batcher,
                self.cfg.batch,
                &self.cfg.seg_loss,
            )?;
            let record = EpochRecord {
                epoch: epoch + 1,
                lr,
                train_loss: self.progress.loss_sum / self.progress.seen.max(1.0),
                train_acc: self.progress.correct / self.progress.seen.max(1.0),
                test_loss: eval.loss,
                test_acc: eval.accuracy,
                test_miou: eval.mean_iou,
                seconds,
                images_per_s: self.progress.seen / seconds.max(1e-9),
            };
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.metrics())?;
            writeln!(f, "{}", serde_json::to_string(&record)?)?;
            let score = record.score();
            if score > self.progress.best {
                self.progress.best = score;
                write_safetensors_atomic(&self.weights()?, &self.dir.best())?;
            }
            self.progress = self.progress.next_epoch();
            self.save_checkpoint()?;
            on(Event::Epoch(&record));
        }
        write_safetensors_atomic(&self.weights()?, &self.dir.final_weights())?;
        Ok(Finish::Completed)
    }
}

/// Reads the checkpoint of `dir` to resume it: the settings must be `cfg`, and the weights must fit
/// `ir`; metric lines past the checkpoint are dropped.
fn restore(ir: &Model, cfg: &TrainConfig, dir: &RunDir, device: &Device) -> Result<Restored> {
    let checkpoint = dir.checkpoint();
    if !checkpoint.exists() {
        bail!(
            "nothing to resume: `{}` does not exist",
            checkpoint.display()
        );
    }
    let settings = dir.settings();
    let saved: TrainConfig = serde_json::from_slice(
        &std::fs::read(&settings)
            .with_context(|| format!("cannot read `{}`", settings.display()))?,
    )
    .with_context(|| format!("`{}` is not a run description", settings.display()))?;
    if saved != *cfg {
        bail!(
            "`{}` was started with different settings; resume with the same spec, data and flags\n  saved: {}\n  now:   {}",
            dir.path().display(),
            serde_json::to_string(&saved)?,
            serde_json::to_string(cfg)?
        );
    }
    let mut t = read_safetensors(&checkpoint, device)?;
    let state: Vec<f64> = t
        .remove(STATE)
        .context("checkpoint has no `__state`")?
        .to_vec1()?;
    let progress = Progress::from_state(&state, &checkpoint)?;
    let mean: Vec<f32> = t
        .remove(NORM_MEAN)
        .context("checkpoint has no normalisation")?
        .to_vec1()?;
    let std: Vec<f32> = t
        .remove(NORM_STD)
        .context("checkpoint has no normalisation")?
        .to_vec1()?;
    let names: Vec<String> = t.keys().filter(|k| k.starts_with(OPT)).cloned().collect();
    let mut momentum = HashMap::new();
    for n in names {
        let v = t.remove(&n).expect("listed");
        momentum.insert(n[OPT.len()..].to_string(), v);
    }
    crate::weights::check_weights(ir, &t)?;
    truncate_metrics(dir, progress.epoch)?;
    Ok(Restored {
        params: t,
        progress,
        norm: (mean, std),
        momentum,
    })
}

/// Starts a new run in `dir` (refused if it holds one): writes the settings, clears old metrics and
/// returns the seeded initial parameters on `device`.
fn start(
    ir: &Model,
    cfg: &TrainConfig,
    dir: &RunDir,
    device: &Device,
) -> Result<(HashMap<String, Tensor>, Vec<String>)> {
    if dir.checkpoint().exists() {
        bail!(
            "`{}` already holds a run; pass --resume to continue it or choose another --run-dir",
            dir.path().display()
        );
    }
    let fresh = init_params(ir, cfg.seed, DType::F32, &Device::Cpu)?;
    // Read before anything is written: a file that does not fit stops the run with nothing written.
    let (params, replaced) = match &cfg.init {
        Some(path) => fine_tune_params(ir, fresh, path)?,
        None => (fresh, Vec::new()),
    };
    std::fs::write(dir.settings(), serde_json::to_vec_pretty(cfg)?)?;
    let _ = std::fs::remove_file(dir.metrics());
    let params = params
        .into_iter()
        .map(|(k, v)| Ok((k, v.to_device(device)?)))
        .collect::<Result<_>>()?;
    Ok((params, replaced))
}

/// The parameters of `ir` for fine-tuning from the weights file `path` (e.g. `octconv import`'s
/// output): every tensor is taken from the file, except those of the model's last layer with
/// parameters (the classifier) that the file lacks or holds with another shape, which keep their
/// seeded initialisation from `fresh` and are listed (`name [ours] (file: [theirs])`). Any other
/// missing or mis-shaped tensor, and any tensor of the file that the model does not have, is an
/// error listing them all. The file's `__`-prefixed entries (normalisation) are ignored.
pub fn fine_tune_params(
    ir: &Model,
    mut fresh: HashMap<String, Tensor>,
    path: &Path,
) -> Result<(HashMap<String, Tensor>, Vec<String>)> {
    let (mut file, _) = split_run_weights(read_safetensors(path, &Device::Cpu)?)
        .with_context(|| format!("initial weights `{}`", path.display()))?;
    let head = ir
        .layers
        .iter()
        .rev()
        .find(|l| !octconv_spec::params::layer_params(l).is_empty())
        .map(|l| format!("{}.", l.name));
    let in_head = |name: &str| head.as_ref().is_some_and(|h| name.starts_with(h.as_str()));
    let mut replaced = Vec::new();
    let mut problems = Vec::new();
    let mut names: Vec<String> = fresh.keys().cloned().collect();
    names.sort();
    for name in names {
        let ours = fresh[&name].dims().to_vec();
        match file.remove(&name) {
            Some(t) if t.dims() == ours.as_slice() => {
                fresh.insert(name, t.to_dtype(DType::F32)?);
            }
            Some(t) if in_head(&name) => {
                replaced.push(format!("{name} {ours:?} (file: {:?})", t.dims()))
            }
            None if in_head(&name) => replaced.push(format!("{name} {ours:?} (not in the file)")),
            Some(t) => problems.push(format!(
                "`{name}` is {:?} in the file but {ours:?} in the model",
                t.dims()
            )),
            None => problems.push(format!("`{name}` {ours:?} is missing from the file")),
        }
    }
    let mut extra: Vec<String> = file.into_keys().collect();
    extra.sort();
    problems.extend(
        extra
            .into_iter()
            .map(|n| format!("`{n}` is in the file but not in the model")),
    );
    if !problems.is_empty() {
        bail!(
            "`{}` does not fit model `{}` (only its last layer, the classifier, may differ):\n  {}",
            path.display(),
            ir.name,
            problems.join("\n  ")
        );
    }
    Ok((fresh, replaced))
}

/// Drops metric lines of epochs after `epochs` (written before a crash, not checkpointed).
fn truncate_metrics(dir: &RunDir, epochs: usize) -> Result<()> {
    let path = dir.metrics();
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(());
    };
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<EpochRecord>(l)
                .map(|r| r.epoch <= epochs)
                .unwrap_or(false)
        })
        .collect();
    std::fs::write(
        &path,
        kept.iter().map(|l| format!("{l}\n")).collect::<String>(),
    )?;
    Ok(())
}

/// Reads a run's `metrics.jsonl`.
pub fn read_metrics(dir: &Path) -> Result<Vec<EpochRecord>> {
    let path = RunDir::new(dir).metrics();
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read `{}`", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| {
                format!("`{}` line {}: not a metrics record", path.display(), i + 1)
            })
        })
        .collect()
}

/// Per-channel `(mean, std)` a run normalised its inputs with.
pub type Normalisation = (Vec<f32>, Vec<f32>);

/// Splits weights written by a run into model parameters and the normalisation statistics.
pub fn split_run_weights(
    mut t: HashMap<String, Tensor>,
) -> Result<(HashMap<String, Tensor>, Option<Normalisation>)> {
    let norm = match (t.remove(NORM_MEAN), t.remove(NORM_STD)) {
        (Some(m), Some(s)) => Some((m.to_vec1()?, s.to_vec1()?)),
        _ => None,
    };
    t.retain(|k, _| !k.starts_with("__"));
    Ok((t, norm))
}
