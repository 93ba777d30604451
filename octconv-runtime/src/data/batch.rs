//! Mini-batches: seeded shuffling, the "standard augmentation" (horizontal flip and 4-pixel
//! pad-and-crop), and per-channel normalisation.

use super::Dataset;
use candle_core::{Device, Result, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The order of the images in epoch `epoch` for `seed`: the same on every machine and when resuming.
pub fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(epoch);
    let mut order: Vec<usize> = (0..n).collect();
    // Fisher–Yates.
    for i in (1..n).rev() {
        let j = rng.random_range(0..=i);
        order.swap(i, j);
    }
    order
}

/// Turns images into normalised `f32` tensors, optionally augmented.
#[derive(Clone, Debug)]
pub struct Batcher {
    /// Per-channel mean of pixels in [0, 1].
    pub mean: Vec<f32>,
    /// Per-channel standard deviation.
    pub std: Vec<f32>,
    /// Random horizontal flip and `pad`-pixel zero pad-and-crop.
    pub augment: bool,
    /// Padding of the random crop (4 in the standard augmentation).
    pub pad: usize,
}

impl Batcher {
    /// A batcher normalising with `ds`'s statistics.
    pub fn new(ds: &Dataset, augment: bool) -> Self {
        let (mean, std) = ds.channel_stats();
        Batcher {
            mean,
            std,
            augment,
            pad: 4,
        }
    }

    /// The images `indices` of `ds` as `[B, C, H, W]` and their labels as `[B]` (u32). Augmentation
    /// draws from `rng`.
    pub fn batch(
        &self,
        ds: &Dataset,
        indices: &[usize],
        rng: &mut ChaCha8Rng,
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        self.batch_host(ds, indices, rng).to_tensors(device)
    }

    /// [`Batcher::batch`] in host memory, without a device: what a loader thread prepares ahead of
    /// the training step.
    pub fn batch_host(&self, ds: &Dataset, indices: &[usize], rng: &mut ChaCha8Rng) -> HostBatch {
        let [c, h, w] = ds.shape;
        let mut x = Vec::with_capacity(indices.len() * c * h * w);
        let mut y = Vec::with_capacity(indices.len());
        for &i in indices {
            let img = ds.image(i);
            let (flip, dy, dx) = if self.augment {
                let p = self.pad as i64;
                (
                    rng.random::<bool>(),
                    rng.random_range(-p..=p),
                    rng.random_range(-p..=p),
                )
            } else {
                (false, 0, 0)
            };
            for ch in 0..c {
                let (m, s) = (self.mean[ch], self.std[ch]);
                let plane = &img[ch * h * w..(ch + 1) * h * w];
                for yy in 0..h as i64 {
                    for xx in 0..w as i64 {
                        // Output pixel (yy, xx) reads the padded image at (yy + dy, xx + dx).
                        let sy = yy + dy;
                        let sx0 = xx + dx;
                        let sx = if flip { w as i64 - 1 - sx0 } else { sx0 };
                        let v = if sy < 0 || sy >= h as i64 || sx < 0 || sx >= w as i64 {
                            0.0
                        } else {
                            plane[sy as usize * w + sx as usize] as f32 / 255.0
                        };
                        x.push((v - m) / s);
                    }
                }
            }
            y.push(ds.labels[i]);
        }
        HostBatch {
            shape: [indices.len(), c, h, w],
            x,
            y,
        }
    }
}

/// A normalised (and augmented) batch in host memory: images `[B, C, H, W]` and labels.
#[derive(Clone, Debug, PartialEq)]
pub struct HostBatch {
    /// `[B, C, H, W]`.
    pub shape: [usize; 4],
    /// The pixels, row-major.
    pub x: Vec<f32>,
    /// The labels.
    pub y: Vec<u32>,
}

impl HostBatch {
    /// The images as `[B, C, H, W]` and the labels as `[B]` (u32) on `device`.
    pub fn to_tensors(self, device: &Device) -> Result<(Tensor, Tensor)> {
        let n = self.shape[0];
        Ok((
            Tensor::from_vec(self.x, self.shape.to_vec(), device)?,
            Tensor::from_vec(self.y, n, device)?,
        ))
    }
}
