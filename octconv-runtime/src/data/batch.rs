//! Mini-batches: seeded shuffling, augmentation (CIFAR's flip + pad-and-crop, or ImageNet's
//! RandomResizedCrop + flip), evaluation crops and per-channel normalisation. Images of a batch are
//! decoded and transformed on worker threads; every image's randomness is drawn from the batch's
//! generator before the work is shared out, so a batch does not depend on the thread count.

use super::decode::{Decoded, Decoder};
use super::seg::{decode_mask, Masks};
use super::transform::{
    crop_resize, crop_resize_nearest, random_resized_crop, resize_center_crop, scale_crop, CropBox,
    RngDraws,
};
use super::{Dataset, Images};
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use std::sync::Arc;
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

/// ImageNet's per-channel mean (RGB, pixels in [0, 1]), as torchvision's recipes use it.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet's per-channel standard deviation.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Where a new run's normalisation statistics come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Norm {
    /// Measured on the training set (all of a decoded set; of a folder, a fixed sample of up to
    /// [`STATS_PIXELS`] pixels: every image of CIFAR-10, 5 000 of ImageNet).
    #[default]
    Data,
    /// ImageNet's constants [`IMAGENET_MEAN`] and [`IMAGENET_STD`] (RGB only).
    Imagenet,
}

impl std::str::FromStr for Norm {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "data" => Ok(Norm::Data),
            "imagenet" => Ok(Norm::Imagenet),
            other => bail!("unknown normalisation `{other}`: use `data` or `imagenet`"),
        }
    }
}

/// How many output pixels (per channel) of a folder dataset the measured statistics read at most:
/// 5 000 images at 224 × 224, so all of CIFAR-10 (50 000 at 32 × 32) and a fixed sample of a larger
/// set, which bounds the start-up cost.
pub const STATS_PIXELS: usize = 5000 * 224 * 224;

/// The geometry of augmentation and evaluation, chosen by the input size ([`Crop::for_input`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Crop {
    /// CIFAR's standard augmentation: horizontal flip and a `pad`-pixel zero pad-and-crop. Images
    /// of another size are first resized (short side to the input) and center-cropped, which is
    /// also the evaluation crop (nothing for images of the input size).
    Pad {
        /// Padding of the random crop (4 in the standard augmentation).
        pad: usize,
    },
    /// ImageNet's: torchvision's `RandomResizedCrop` (`scale` of the area, aspect `ratio`) and a
    /// horizontal flip; evaluation resizes the short side to `input / eval_fraction` (224 → 256)
    /// and takes the center crop.
    Resized {
        /// Area fraction range (0.08–1).
        scale: (f64, f64),
        /// Aspect ratio range (3/4–4/3).
        ratio: (f64, f64),
        /// The center crop's share of the resized short side (0.875 = 224 / 256).
        eval_fraction: f64,
    },
    /// Segmentation's joint augmentation: image and mask scaled by one random factor from `scale`
    /// times the size at which they cover the input, cropped at one random place and flipped
    /// together (image bilinear, mask nearest). Evaluation resizes the whole image and mask to the
    /// input (the aspect ratio is not kept; every pixel is counted).
    Joint {
        /// Range of the scale factor (1–2).
        scale: (f64, f64),
    },
}

impl Crop {
    /// ImageNet's recipe.
    pub const IMAGENET: Crop = Crop::Resized {
        scale: (0.08, 1.0),
        ratio: (3.0 / 4.0, 4.0 / 3.0),
        eval_fraction: 0.875,
    };

    /// CIFAR's pad-and-crop for inputs up to 64 × 64, ImageNet's resized crop for larger ones.
    pub fn for_input(shape: [usize; 3]) -> Crop {
        if shape[1].max(shape[2]) <= 64 {
            Crop::Pad { pad: 4 }
        } else {
            Crop::IMAGENET
        }
    }

    /// Segmentation's recipe.
    pub const JOINT: Crop = Crop::Joint { scale: (1.0, 2.0) };

    /// The evaluation box of a `w × h` image for an `out_w × out_h` input.
    fn eval_box(&self, w: usize, h: usize, out_w: usize, out_h: usize) -> CropBox {
        let fraction = match *self {
            Crop::Pad { .. } => 1.0,
            Crop::Resized { eval_fraction, .. } => eval_fraction,
            Crop::Joint { .. } => return CropBox::full(w, h),
        };
        let short = (out_w.max(out_h) as f64 / fraction).round_ties_even() as usize;
        if (w, h) == (out_w, out_h) && fraction == 1.0 {
            CropBox::full(w, h)
        } else {
            resize_center_crop(w, h, short, out_w, out_h)
        }
    }
}

/// Turns images into normalised `f32` tensors, augmented or with the evaluation crop.
#[derive(Clone, Debug)]
pub struct Batcher {
    /// Per-channel mean of pixels in [0, 1].
    pub mean: Vec<f32>,
    /// Per-channel standard deviation.
    pub std: Vec<f32>,
    /// Random augmentation (else the evaluation crop).
    pub augment: bool,
    /// The geometry of augmentation and evaluation.
    pub crop: Crop,
    /// The JPEG decoder.
    pub decoder: Decoder,
    /// Worker threads that decode and transform a batch's images (`None`: the global pool).
    pub pool: Option<Arc<rayon::ThreadPool>>,
}

/// Where image `i` reads pixel `(ch, y, x)`: `data[ch · cs + y · ys + x · xs]`.
struct Layout<'a> {
    data: &'a [u8],
    width: usize,
    height: usize,
    strides: [usize; 3],
}

impl Batcher {
    /// A batcher for `ds` that normalises with `norm`'s statistics and crops as its input size
    /// asks ([`Crop::for_input`]).
    pub fn new(ds: &Dataset, augment: bool, norm: Norm) -> Result<Self> {
        let mut b = Self::with_stats(ds, augment, vec![0.0; ds.shape[0]], vec![1.0; ds.shape[0]]);
        (b.mean, b.std) = match norm {
            Norm::Data => b.channel_stats(ds)?,
            Norm::Imagenet if ds.shape[0] == 3 => (IMAGENET_MEAN.to_vec(), IMAGENET_STD.to_vec()),
            Norm::Imagenet => bail!(
                "ImageNet's statistics are for RGB images, but the model takes {} channel(s); use `--norm data`",
                ds.shape[0]
            ),
        };
        Ok(b)
    }

    /// A batcher for `ds` that normalises with the given statistics (a resumed run's).
    pub fn with_stats(ds: &Dataset, augment: bool, mean: Vec<f32>, std: Vec<f32>) -> Self {
        Batcher {
            mean,
            std,
            augment,
            crop: match ds.masks {
                Some(_) => Crop::JOINT,
                None => Crop::for_input(ds.shape),
            },
            decoder: Decoder::default(),
            pool: None,
        }
    }

    /// Uses `threads` worker threads for the images of a batch.
    pub fn with_threads(mut self, threads: usize) -> Result<Self> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("octconv-data-{i}"))
            .build()?;
        self.pool = Some(Arc::new(pool));
        Ok(self)
    }

    /// Per-channel mean and standard deviation of `ds`'s pixels in [0, 1], as evaluation sees
    /// them: every image of a decoded set, a fixed sample of up to [`STATS_PIXELS`] pixels of a
    /// folder.
    pub fn channel_stats(&self, ds: &Dataset) -> Result<(Vec<f32>, Vec<f32>)> {
        let [c, h, w] = ds.shape;
        let hw = h * w;
        let plain = Batcher {
            mean: vec![0.0; c],
            std: vec![1.0; c],
            augment: false,
            ..self.clone()
        };
        let mut sample: Vec<usize> = match ds.images {
            Images::Pixels(_) => (0..ds.len()).collect(),
            Images::Files(_) => epoch_order(ds.len(), super::SAMPLE_SEED, 0),
        };
        if matches!(ds.images, Images::Files(_)) {
            sample.truncate(STATS_PIXELS.div_ceil(hw.max(1)));
            sample.sort_unstable();
        }
        let mut sum = vec![0f64; c];
        let mut sq = vec![0f64; c];
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        for idx in sample.chunks(256) {
            let b = plain.batch_host(ds, idx, &mut rng)?;
            for img in b.x.chunks_exact((c * hw).max(1)) {
                for ch in 0..c {
                    for &v in &img[ch * hw..(ch + 1) * hw] {
                        sum[ch] += v as f64;
                        sq[ch] += v as f64 * v as f64;
                    }
                }
            }
        }
        let n = (sample.len() * hw).max(1) as f64;
        let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
        let std = sq
            .iter()
            .zip(&mean)
            .map(|(s, m)| ((s / n - m * m).max(1e-12)).sqrt() as f32)
            .collect();
        Ok((mean.into_iter().map(|m| m as f32).collect(), std))
    }

    /// The images `indices` of `ds` as `[B, C, H, W]` and their labels as `[B]` (u32).
    /// Augmentation draws from `rng`.
    pub fn batch(
        &self,
        ds: &Dataset,
        indices: &[usize],
        rng: &mut ChaCha8Rng,
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let host = self.batch_host(ds, indices, rng)?;
        host.to_tensors(device)
    }

    /// [`Batcher::batch`] in host memory, without a device: what a loader thread prepares ahead of
    /// the training step. A file that cannot be decoded is an error naming it.
    pub fn batch_host(
        &self,
        ds: &Dataset,
        indices: &[usize],
        rng: &mut ChaCha8Rng,
    ) -> Result<HostBatch> {
        let [c, h, w] = ds.shape;
        let size = c * h * w;
        if size == 0 {
            bail!("the dataset's image shape is not set (call `Split::fit_to` with the model's input)");
        }
        // One generator per image, drawn in order: the batch is the same on any number of threads.
        let seeds: Vec<u64> = indices
            .iter()
            .map(|_| if self.augment { rng.random() } else { 0 })
            .collect();
        let mut x = vec![0f32; indices.len() * size];
        // A class label per image, or a mask per image (segmentation).
        let per = if ds.masks.is_some() { h * w } else { 1 };
        let mut y = vec![0u32; indices.len() * per];
        let work = |x: &mut [f32], y: &mut [u32]| {
            x.par_chunks_mut(size)
                .zip(y.par_chunks_mut(per))
                .zip(indices.par_iter().zip(&seeds))
                .try_for_each_init(
                    fast_image_resize::Resizer::new,
                    |resizer, ((xo, yo), (&i, &seed))| match &ds.masks {
                        Some(masks) => self.pair_into(ds, masks, i, seed, xo, yo, resizer),
                        None => {
                            yo[0] = ds.labels[i];
                            self.image_into(ds, i, seed, xo, resizer)
                        }
                    },
                )
        };
        match &self.pool {
            Some(pool) => pool.install(|| work(&mut x, &mut y))?,
            None => work(&mut x, &mut y)?,
        }
        Ok(HostBatch {
            shape: [indices.len(), c, h, w],
            x,
            y_shape: if per == 1 {
                vec![indices.len()]
            } else {
                vec![indices.len(), h, w]
            },
            y,
        })
    }

    /// Writes image `i` of a segmentation set and its mask, jointly transformed, into `out`
    /// (`[C, H, W]`, normalised) and `target` (`[H, W]` class indices, 255 = ignore).
    #[allow(clippy::too_many_arguments)]
    fn pair_into(
        &self,
        ds: &Dataset,
        masks: &Masks,
        i: usize,
        seed: u64,
        out: &mut [f32],
        target: &mut [u32],
        resizer: &mut fast_image_resize::Resizer,
    ) -> Result<()> {
        let [c, h, w] = ds.shape;
        let Images::Files(files) = &ds.images else {
            bail!("segmentation images are files");
        };
        let img = files[i].decode(c, self.decoder)?;
        let file = &masks.files[i];
        let mask = decode_mask(&file.bytes()?).with_context(|| format!("`{}`", file.name))?;
        if (img.width, img.height) != (mask.width, mask.height) {
            bail!(
                "`{}` is {}×{} but its mask `{}` is {}×{}",
                files[i].name,
                img.width,
                img.height,
                file.name,
                mask.width,
                mask.height
            );
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (crop, flip) = match (self.augment, self.crop) {
            (true, Crop::Joint { scale }) => {
                let b = scale_crop(img.width, img.height, w, h, scale, &mut rng);
                (b, rng.random::<bool>())
            }
            _ => (CropBox::full(img.width, img.height), false),
        };
        let pixels = crop_resize(&img, crop, w, h, resizer)?;
        let indices =
            crop_resize_nearest(&mask.indices, mask.width, mask.height, crop, w, h, resizer)?;
        let src = Layout {
            data: &pixels,
            width: w,
            height: h,
            strides: [1, w * c, c],
        };
        self.emit(&src, flip, 0, 0, out);
        for (row, t) in indices.chunks_exact(w).zip(target.chunks_exact_mut(w)) {
            for (x, t) in t.iter_mut().enumerate() {
                *t = row[if flip { w - 1 - x } else { x }] as u32;
            }
        }
        Ok(())
    }

    /// Writes image `i` of `ds`, transformed and normalised, into `out` (`[C, H, W]`).
    fn image_into(
        &self,
        ds: &Dataset,
        i: usize,
        seed: u64,
        out: &mut [f32],
        resizer: &mut fast_image_resize::Resizer,
    ) -> Result<()> {
        let [c, h, w] = ds.shape;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let decoded;
        let src = match &ds.images {
            Images::Pixels(p) if !matches!(self.crop, Crop::Resized { .. }) || !self.augment => {
                Layout {
                    data: &p[i * out.len()..(i + 1) * out.len()],
                    width: w,
                    height: h,
                    strides: [h * w, w, 1],
                }
            }
            images => {
                let img = match images {
                    Images::Files(f) => f[i].decode(c, self.decoder)?,
                    Images::Pixels(p) => {
                        interleave(&p[i * out.len()..(i + 1) * out.len()], c, h, w)
                    }
                };
                let crop = match (self.augment, self.crop) {
                    (true, Crop::Resized { scale, ratio, .. }) => random_resized_crop(
                        img.width,
                        img.height,
                        scale,
                        ratio,
                        &mut RngDraws(&mut rng),
                    ),
                    _ => self.crop.eval_box(img.width, img.height, w, h),
                };
                decoded = crop_resize(&img, crop, w, h, resizer)?;
                Layout {
                    data: &decoded,
                    width: w,
                    height: h,
                    strides: [1, w * c, c],
                }
            }
        };
        let (flip, dy, dx) = match (self.augment, self.crop) {
            (false, _) => (false, 0, 0),
            (true, Crop::Pad { pad }) => {
                let p = pad as i64;
                (
                    rng.random::<bool>(),
                    rng.random_range(-p..=p),
                    rng.random_range(-p..=p),
                )
            }
            (true, Crop::Resized { .. } | Crop::Joint { .. }) => (rng.random::<bool>(), 0, 0),
        };
        self.emit(&src, flip, dy, dx, out);
        Ok(())
    }

    /// Normalises `src` into planar `out`, flipped horizontally and shifted by `(dy, dx)` with zero
    /// padding (the standard pad-and-crop).
    fn emit(&self, src: &Layout, flip: bool, dy: i64, dx: i64, out: &mut [f32]) {
        let (h, w) = (src.height as i64, src.width as i64);
        let [cs, ys, xs] = src.strides;
        for (ch, plane) in out.chunks_exact_mut(src.width * src.height).enumerate() {
            let (m, s) = (self.mean[ch], self.std[ch]);
            // Every byte's normalised value, computed as `(v / 255 − m) / s` once.
            let lut: [f32; 256] = std::array::from_fn(|v| (v as f32 / 255.0 - m) / s);
            let pad = (0.0 - m) / s;
            for (yy, row) in plane.chunks_exact_mut(src.width).enumerate() {
                // Output pixel (yy, xx) reads the padded image at (yy + dy, xx + dx).
                let sy = yy as i64 + dy;
                if sy < 0 || sy >= h {
                    row.fill(pad);
                    continue;
                }
                let line = &src.data[ch * cs + sy as usize * ys..];
                for (xx, o) in row.iter_mut().enumerate() {
                    let sx0 = xx as i64 + dx;
                    let sx = if flip { w - 1 - sx0 } else { sx0 };
                    *o = if sx < 0 || sx >= w {
                        pad
                    } else {
                        lut[line[sx as usize * xs] as usize]
                    };
                }
            }
        }
    }
}

/// Planar `[C, H, W]` bytes as an interleaved image.
fn interleave(planar: &[u8], c: usize, h: usize, w: usize) -> Decoded {
    let hw = h * w;
    Decoded {
        width: w,
        height: h,
        channels: c,
        pixels: (0..hw * c).map(|k| planar[(k % c) * hw + k / c]).collect(),
    }
}

/// A normalised (and augmented) batch in host memory: images `[B, C, H, W]` and labels `[B]` or
/// masks `[B, H, W]`.
#[derive(Clone, Debug, PartialEq)]
pub struct HostBatch {
    /// `[B, C, H, W]`.
    pub shape: [usize; 4],
    /// The pixels, row-major.
    pub x: Vec<f32>,
    /// The labels, or the masks' class indices (255 = ignore).
    pub y: Vec<u32>,
    /// `[B]` for labels, `[B, H, W]` for masks.
    pub y_shape: Vec<usize>,
}

impl HostBatch {
    /// The images as `[B, C, H, W]` and the labels as `[B]` (u32) on `device`.
    pub fn to_tensors(self, device: &Device) -> Result<(Tensor, Tensor)> {
        Ok((
            Tensor::from_vec(self.x, self.shape.to_vec(), device)?,
            Tensor::from_vec(self.y, self.y_shape, device)?,
        ))
    }
}
