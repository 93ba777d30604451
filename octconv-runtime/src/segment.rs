//! Segmentation loss and metrics: per-pixel cross-entropy with an ignore index and optional class
//! weights (PyTorch's `CrossEntropyLoss(weight, ignore_index = 255)`), an optional soft Dice loss,
//! and the pixel confusion matrix behind pixel accuracy, per-class IoU and mean IoU.

use crate::data::seg::IGNORE;
use anyhow::{bail, Result};
use candle_core::{DType, Tensor, D};
use serde::{Deserialize, Serialize};

/// How a segmentation loss is formed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SegLoss {
    /// Per-class weights of the cross-entropy (`None`: all 1).
    pub class_weights: Option<Vec<f32>>,
    /// Weight of the soft Dice loss added to the cross-entropy (0: none).
    pub dice: f64,
}

impl SegLoss {
    /// The loss of `logits` `[B, K, H, W]` against `target` `[B, H, W]` (u32 class indices, 255 =
    /// ignore): the weighted mean cross-entropy over counted pixels (0 if none is counted), plus
    /// `dice` × (1 − mean over classes of `(2 |P ∩ G| + 1) / (|P| + |G| + 1)`) with softmax
    /// probabilities `P` and one-hot targets `G` of the counted pixels.
    pub fn loss(&self, logits: &Tensor, target: &Tensor) -> Result<Tensor> {
        let (b, k, h, w) = logits.dims4()?;
        if target.dims() != [b, h, w] {
            bail!(
                "the model's output {:?} does not match the masks {:?}",
                logits.dims(),
                target.dims()
            );
        }
        if let Some(cw) = &self.class_weights {
            if cw.len() != k {
                bail!(
                    "{} class weights for {k} output channels; give one weight per class",
                    cw.len()
                );
            }
        }
        let n = b * h * w;
        let flat = logits.permute((0, 2, 3, 1))?.reshape((n, k))?;
        let t = target.flatten_all()?;
        let valid = t.ne(IGNORE as u32)?;
        let t0 = valid.where_cond(&t, &t.zeros_like()?)?;
        let counted = valid.to_dtype(DType::F32)?;
        let logp = candle_nn::ops::log_softmax(&flat, D::Minus1)?;
        let picked = logp.gather(&t0.unsqueeze(1)?, 1)?.squeeze(1)?;
        let weight = match &self.class_weights {
            Some(cw) => Tensor::new(cw.as_slice(), logits.device())?
                .index_select(&t0, 0)?
                .mul(&counted)?,
            None => counted.clone(),
        };
        let total = weight.sum_all()?.to_scalar::<f32>()?;
        let ce = (picked.mul(&weight)?.sum_all()?.neg()? / f64::from(total.max(1e-12)))?;
        if self.dice == 0.0 {
            return Ok(ce);
        }
        let probs =
            candle_nn::ops::softmax(&flat, D::Minus1)?.broadcast_mul(&counted.unsqueeze(1)?)?;
        let classes = Tensor::arange(0u32, k as u32, logits.device())?;
        let onehot = t0
            .unsqueeze(1)?
            .broadcast_eq(&classes.unsqueeze(0)?)?
            .to_dtype(DType::F32)?
            .broadcast_mul(&counted.unsqueeze(1)?)?;
        let inter = probs.mul(&onehot)?.sum(0)?;
        let card = (probs.sum(0)? + onehot.sum(0)?)?;
        let dice = ((inter * 2.0)? + 1.0)?.div(&(card + 1.0)?)?;
        let dice_loss = (dice.mean_all()?.neg()? + 1.0)?;
        Ok((ce + (dice_loss * self.dice)?)?)
    }
}

/// Pixel counts `[true class][predicted class]` over the counted (non-ignored) pixels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Confusion {
    classes: usize,
    counts: Vec<u64>,
    /// Per true class, predictions of a class `classes` or above (wrong, and outside the matrix).
    outside: Vec<u64>,
}

impl Confusion {
    /// An empty matrix for `classes` classes.
    pub fn new(classes: usize) -> Self {
        Confusion {
            classes,
            counts: vec![0; classes * classes],
            outside: vec![0; classes],
        }
    }

    /// Counts `pred` against `target` pixel by pixel (or image by image); pixels whose target is
    /// 255 or beyond the classes are skipped; a prediction beyond the classes counts as wrong.
    pub fn add(&mut self, pred: &[u32], target: &[u32]) {
        let k = self.classes as u32;
        for (&p, &t) in pred.iter().zip(target) {
            if t == IGNORE as u32 || t >= k {
                continue;
            }
            if p < k {
                self.counts[(t * k + p) as usize] += 1;
            } else {
                self.outside[t as usize] += 1;
            }
        }
    }

    /// `[true][predicted]` counts as rows (predictions beyond the classes are not in them).
    pub fn rows(&self) -> Vec<Vec<u64>> {
        self.counts
            .chunks(self.classes.max(1))
            .map(|r| r.to_vec())
            .collect()
    }

    fn at(&self, t: usize, p: usize) -> u64 {
        self.counts[t * self.classes + p]
    }

    /// Correct pixels over counted pixels (0 if none).
    pub fn pixel_accuracy(&self) -> f64 {
        let total: u64 = self.counts.iter().sum::<u64>() + self.outside.iter().sum::<u64>();
        let correct: u64 = (0..self.classes).map(|c| self.at(c, c)).sum();
        correct as f64 / total.max(1) as f64
    }

    /// Per class, intersection over union of predicted and true pixels; `None` for a class that
    /// neither occurs nor is predicted (its IoU is undefined).
    pub fn iou(&self) -> Vec<Option<f64>> {
        (0..self.classes)
            .map(|c| {
                let tp = self.at(c, c);
                let truth: u64 =
                    (0..self.classes).map(|p| self.at(c, p)).sum::<u64>() + self.outside[c];
                let predicted: u64 = (0..self.classes).map(|t| self.at(t, c)).sum();
                let union = truth + predicted - tp;
                (union > 0).then(|| tp as f64 / union as f64)
            })
            .collect()
    }

    /// Mean of the defined per-class IoUs (0 if none is defined).
    pub fn mean_iou(&self) -> f64 {
        let defined: Vec<f64> = self.iou().into_iter().flatten().collect();
        defined.iter().sum::<f64>() / defined.len().max(1) as f64
    }
}

/// The predicted class of every pixel of `logits` `[B, K, H, W]`, as `[B·H·W]`.
pub fn predict(logits: &Tensor) -> Result<Vec<u32>> {
    Ok(logits.argmax(1)?.flatten_all()?.to_vec1()?)
}
