//! Image classification datasets: CIFAR-10 binary batches and IDX files (Fashion-MNIST) decoded into
//! memory by our own small readers, and class-per-folder JPEG/PNG images of any size (a directory or
//! a `.tar.gz`) streamed: listed and probed up front, decoded, cropped and resized on worker threads
//! when a batch needs them. Truncated, corrupt or mislabelled files are errors naming the file,
//! never panics.

mod batch;
mod cifar;
pub mod decode;
mod folder;
mod idx;
pub mod seg;
pub mod synthetic;
pub mod transform;

pub use batch::{epoch_order, Batcher, Crop, HostBatch, Norm, IMAGENET_MEAN, IMAGENET_STD};
pub use decode::{Decoder, ImageFile};

use anyhow::{bail, Result};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

/// The seed of the fixed pseudo-random samples (`--train-limit`, measured statistics): the same
/// images on every machine and run.
pub const SAMPLE_SEED: u64 = 0x5eed;

/// Where a dataset's pixels are.
#[derive(Clone, Debug, PartialEq)]
pub enum Images {
    /// Decoded in memory, all of the dataset's `shape`: image after image, channel-major bytes.
    Pixels(Vec<u8>),
    /// Encoded files of any size, decoded (and resized to `shape`) when a batch needs them.
    Files(Arc<Vec<ImageFile>>),
}

/// Labelled images; a batch holds them as `[N, C, H, W]` of `shape`.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// Class names, index = label.
    pub classes: Vec<String>,
    /// `[C, H, W]` of every image in a batch (for files: the model's input, set by
    /// [`Split::fit_to`]).
    pub shape: [usize; 3],
    /// The pixels or the files.
    pub images: Images,
    /// One label per image (all 0 in a segmentation set, whose targets are `masks`).
    pub labels: Vec<u32>,
    /// Segmentation masks, one per image (`seg:` data); `None` for classification.
    pub masks: Option<Arc<seg::Masks>>,
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

    /// Bytes per image of `shape`.
    pub fn image_size(&self) -> usize {
        self.shape.iter().product()
    }

    /// The decoded pixels of image `i` (`[C, H, W]` bytes); `None` for a dataset of files.
    pub fn image(&self, i: usize) -> Option<&[u8]> {
        let n = self.image_size();
        match &self.images {
            Images::Pixels(p) => p.get(i * n..(i + 1) * n),
            Images::Files(_) => None,
        }
    }

    /// Keeps `n` images (all if `n` is larger): a fixed pseudo-random sample in the original order, so
    /// a limit on a class-sorted source (a folder) still covers every class.
    pub fn truncate(&mut self, n: usize) {
        if n >= self.len() {
            return;
        }
        let mut keep = batch::epoch_order(self.len(), SAMPLE_SEED, 0);
        keep.truncate(n);
        keep.sort_unstable();
        self.images = match &self.images {
            Images::Pixels(p) => {
                let size = self.image_size();
                Images::Pixels(
                    keep.iter()
                        .flat_map(|&i| &p[i * size..(i + 1) * size])
                        .copied()
                        .collect(),
                )
            }
            Images::Files(f) => {
                Images::Files(Arc::new(keep.iter().map(|&i| f[i].clone()).collect()))
            }
        };
        self.labels = keep.iter().map(|&i| self.labels[i]).collect();
        if let Some(m) = &self.masks {
            self.masks = Some(Arc::new(m.select(&keep)));
        }
    }

    /// Checks that `labels` index `classes` and that there is one image per label.
    fn validate(&self, what: &str) -> Result<()> {
        match &self.images {
            Images::Pixels(p) if p.len() != self.len() * self.image_size() => bail!(
                "{what}: {} bytes of pixels for {} images of {:?}",
                p.len(),
                self.len(),
                self.shape
            ),
            Images::Files(f) if f.len() != self.len() => {
                bail!("{what}: {} files for {} labels", f.len(), self.len())
            }
            _ => {}
        }
        if let Some(m) = &self.masks {
            if m.files.len() != self.len() {
                bail!("{what}: {} masks for {} images", m.files.len(), self.len());
            }
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

impl Split {
    /// True for segmentation data (masks as targets).
    pub fn is_segmentation(&self) -> bool {
        self.train.masks.is_some()
    }

    /// Segmentation: checks that no mask holds an index of `classes` or more (naming the first
    /// that does) and names the classes `0 … classes − 1` where the data named fewer.
    pub fn set_classes(&mut self, classes: usize) -> Result<()> {
        for ds in [&mut self.train, &mut self.test] {
            if let Some((file, index)) = ds.masks.as_ref().and_then(|m| m.beyond(classes)) {
                bail!(
                    "mask `{}` holds class index {index}, but there are {classes} classes (indices 0–{}, {} = ignore); raise --classes or fix the mask",
                    file.name,
                    classes.saturating_sub(1),
                    seg::IGNORE
                );
            }
            while ds.classes.len() < classes {
                ds.classes.push(ds.classes.len().to_string());
            }
        }
        Ok(())
    }

    /// Makes the images fit a model's input `[C, H, W]`: files are decoded to `C` channels (1: grey,
    /// 3: RGB) and cropped/resized to `H × W`; decoded datasets must already have that shape.
    pub fn fit_to(&mut self, input: [usize; 3]) -> Result<()> {
        for ds in [&mut self.train, &mut self.test] {
            match ds.images {
                Images::Files(_) => {
                    if input[0] != 1 && input[0] != 3 {
                        bail!(
                            "the model takes {} channels, but images are read as 1 (grey) or 3 (RGB)",
                            input[0]
                        );
                    }
                    ds.shape = input;
                }
                Images::Pixels(_) if ds.shape != input => bail!(
                    "the model takes {input:?} but the data has images of {:?}; change the spec's `input` or the data",
                    ds.shape
                ),
                Images::Pixels(_) => {}
            }
        }
        Ok(())
    }
}

/// Where a dataset comes from, as written on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataSource {
    /// `cifar10:DIR`: `data_batch_1..5.bin` and `test_batch.bin`.
    Cifar10(PathBuf),
    /// `folder:PATH`: `train/<class>/*.jpg|png` and `val/<class>/…` (or `test/`), a directory or a
    /// `.tar.gz`; images of any size.
    Folder(PathBuf),
    /// `fashion-mnist[:DIR]`: IDX files, gzipped or not.
    FashionMnist(PathBuf),
    /// `seg:DIR`: `train/images/*` with `train/masks/<stem>.png`, and `val/` (or `test/`).
    Seg(PathBuf),
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
            "seg" => DataSource::Seg(need("DIR")?),
            other => bail!("unknown data source `{other}`: use `cifar10:DIR`, `folder:DIR|FILE.tar.gz`, `fashion-mnist[:DIR]` or `seg:DIR`"),
        })
    }
}

impl DataSource {
    /// Reads the training and test sets (a folder: lists and probes its files; their `shape` is set
    /// by [`Split::fit_to`]).
    pub fn load(&self) -> Result<Split> {
        let split = match self {
            DataSource::Cifar10(dir) => cifar::load(dir)?,
            DataSource::Folder(path) => folder::load(path)?,
            DataSource::FashionMnist(dir) => idx::load_fashion_mnist(dir)?,
            DataSource::Seg(dir) => seg::load(dir)?,
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
