//! Image classification datasets read by our own small readers: CIFAR-10 binary batches,
//! class-per-folder images (a directory or a `.tar.gz`), and IDX files (Fashion-MNIST). Truncated,
//! corrupt or mislabelled files are errors naming the file, never panics.

mod batch;
mod cifar;
mod folder;
mod idx;

pub use batch::{epoch_order, Batcher, HostBatch};

use anyhow::{bail, Result};
use std::path::PathBuf;
use std::str::FromStr;

/// Labelled images of one size, stored as bytes `[N, C, H, W]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// Class names, index = label.
    pub classes: Vec<String>,
    /// `[C, H, W]` of every image.
    pub shape: [usize; 3],
    /// Pixels, image after image, channel-major.
    pub images: Vec<u8>,
    /// One label per image.
    pub labels: Vec<u32>,
}

impl Dataset {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True if there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Bytes per image.
    pub fn image_size(&self) -> usize {
        self.shape.iter().product()
    }

    /// The pixels of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_size();
        &self.images[i * n..(i + 1) * n]
    }

    /// Keeps `n` images (all if `n` is larger): a fixed pseudo-random sample in the original order, so
    /// a limit on a class-sorted source (a folder) still covers every class.
    pub fn truncate(&mut self, n: usize) {
        if n >= self.len() {
            return;
        }
        let mut keep = batch::epoch_order(self.len(), 0x5eed, 0);
        keep.truncate(n);
        keep.sort_unstable();
        let size = self.image_size();
        let mut images = Vec::with_capacity(n * size);
        for &i in &keep {
            images.extend_from_slice(self.image(i));
        }
        self.labels = keep.iter().map(|&i| self.labels[i]).collect();
        self.images = images;
    }

    /// Per-channel mean and standard deviation of the pixels scaled to [0, 1].
    pub fn channel_stats(&self) -> (Vec<f32>, Vec<f32>) {
        let [c, h, w] = self.shape;
        let hw = h * w;
        let mut sum = vec![0f64; c];
        let mut sq = vec![0f64; c];
        for img in self.images.chunks_exact(self.image_size().max(1)) {
            for ch in 0..c {
                for &p in &img[ch * hw..(ch + 1) * hw] {
                    let v = p as f64 / 255.0;
                    sum[ch] += v;
                    sq[ch] += v * v;
                }
            }
        }
        let n = (self.len() * hw).max(1) as f64;
        let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
        let std = sq
            .iter()
            .zip(&mean)
            .map(|(s, m)| ((s / n - m * m).max(1e-12)).sqrt() as f32)
            .collect();
        (mean.into_iter().map(|m| m as f32).collect(), std)
    }

    /// Checks that `labels` index `classes` and `images` has one image per label.
    fn validate(&self, what: &str) -> Result<()> {
        if self.images.len() != self.len() * self.image_size() {
            bail!(
                "{what}: {} bytes of pixels for {} images of {:?}",
                self.images.len(),
                self.len(),
                self.shape
            );
        }
        if let Some((i, l)) = self
            .labels
            .iter()
            .enumerate()
            .find(|(_, &l)| l as usize >= self.classes.len())
        {
            bail!(
                "{what}: image {i} has label {l}, but there are {} classes",
                self.classes.len()
            );
        }
        Ok(())
    }
}

/// A training and a test set with the same classes and image shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Split {
    /// Training images.
    pub train: Dataset,
    /// Test images.
    pub test: Dataset,
}

/// Where a dataset comes from, as written on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataSource {
    /// `cifar10:DIR`: `data_batch_1..5.bin` and `test_batch.bin`.
    Cifar10(PathBuf),
    /// `folder:PATH`: `train/<class>/*.jpg|png` and `test/<class>/…`, a directory or a `.tar.gz`.
    Folder(PathBuf),
    /// `fashion-mnist[:DIR]`: IDX files, gzipped or not.
    FashionMnist(PathBuf),
}

/// Where Debian's `dataset-fashion-mnist` puts its files.
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

impl FromStr for DataSource {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let (kind, path) = s.split_once(':').unwrap_or((s, ""));
        let need = |what: &str| -> Result<PathBuf> {
            if path.is_empty() {
                bail!("`{kind}` needs a path: write `{kind}:{what}`");
            }
            Ok(PathBuf::from(path))
        };
        Ok(match kind {
            "cifar10" => DataSource::Cifar10(need("DIR")?),
            "folder" => DataSource::Folder(need("DIR_OR_TAR_GZ")?),
            "fashion-mnist" => DataSource::FashionMnist(if path.is_empty() { PathBuf::from(FASHION_MNIST_DIR) } else { PathBuf::from(path) }),
            other => bail!("unknown data source `{other}`: use `cifar10:DIR`, `folder:DIR|FILE.tar.gz` or `fashion-mnist[:DIR]`"),
        })
    }
}

impl DataSource {
    /// Reads the training and test sets.
    pub fn load(&self) -> Result<Split> {
        let split = match self {
            DataSource::Cifar10(dir) => cifar::load(dir)?,
            DataSource::Folder(path) => folder::load(path)?,
            DataSource::FashionMnist(dir) => idx::load_fashion_mnist(dir)?,
        };
        split.train.validate("training set")?;
        split.test.validate("test set")?;
        if split.train.shape != split.test.shape || split.train.classes != split.test.classes {
            bail!(
                "the training set ({:?}, {} classes) and the test set ({:?}, {} classes) do not match",
                split.train.shape,
                split.train.classes.len(),
                split.test.shape,
                split.test.classes.len()
            );
        }
        Ok(split)
    }
}
