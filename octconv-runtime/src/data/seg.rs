//! Segmentation data, `seg:DIR`: `train/images/*.{jpg,png}` with `train/masks/<stem>.png`, and the
//! same under `val/` (or `test/`). A mask is a single-channel PNG (8-bit grey, or a palette PNG such
//! as VOC's, read as its indices) whose values are class indices; [`IGNORE`] (255) marks pixels
//! that neither the loss nor the metrics count.
//!
//! Loading lists the pairs, probes every file, checks that each image and its mask have one size
//! (from their headers) and reads every mask once to find the largest class index, so that a
//! missing mask, a size mismatch or an index beyond `--classes` is an error naming the file before
//! anything runs. Pixels are decoded when a batch needs them.

use super::decode::{probe, ImageFile, Source};
use super::folder::{is_image, EVAL_SPLITS};
use super::{Dataset, Images, Split};
use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// The mask value of pixels that the loss and the metrics ignore.
pub const IGNORE: u8 = 255;

/// A decoded mask: one class index per pixel, row after row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mask {
    /// Width.
    pub width: usize,
    /// Height.
    pub height: usize,
    /// `height × width` indices.
    pub indices: Vec<u8>,
}

/// Reads a mask PNG as class indices: 8-bit (or 1/2/4-bit) grey values, or palette indices (not
/// their colours). 16-bit and colour masks are refused with the reason.
pub fn decode_mask(bytes: &[u8]) -> Result<Mask> {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    // No palette expansion: a VOC mask's pixels are its palette indices.
    decoder.set_transformations(png::Transformations::IDENTITY);
    let mut reader = decoder.read_info().context("not a readable PNG")?;
    let (color, depth) = reader.output_color_type();
    if !matches!(color, png::ColorType::Grayscale | png::ColorType::Indexed) {
        bail!("a mask must be a single-channel PNG (grey or palette) of class indices, found {color:?}");
    }
    let bits = match depth {
        png::BitDepth::One => 1,
        png::BitDepth::Two => 2,
        png::BitDepth::Four => 4,
        png::BitDepth::Eight => 8,
        png::BitDepth::Sixteen => {
            bail!("16-bit masks are not supported: save the mask with 8 bits")
        }
    };
    let mut buf = vec![0u8; reader.output_buffer_size().context("mask too large")?];
    let info = reader
        .next_frame(&mut buf)
        .context("corrupt or truncated PNG")?;
    let (w, h) = (info.width as usize, info.height as usize);
    let mut indices = Vec::with_capacity(w * h);
    for row in buf.chunks(info.line_size).take(h) {
        if bits == 8 {
            indices.extend_from_slice(&row[..w]);
        } else {
            let per = 8 / bits;
            let mask = (1u8 << bits) - 1;
            indices.extend((0..w).map(|x| {
                let shift = 8 - bits * (x % per + 1);
                (row[x / per] >> shift) & mask
            }));
        }
    }
    Ok(Mask {
        width: w,
        height: h,
        indices,
    })
}

/// The width and height of an image file from its header.
fn dimensions(file: &ImageFile) -> Result<(u32, u32)> {
    let bytes = file.bytes()?;
    image::ImageReader::new(std::io::Cursor::new(&bytes[..]))
        .with_guessed_format()?
        .into_dimensions()
        .with_context(|| format!("`{}`: cannot read the image size", file.name))
}

/// `DIR/<split>/<kind>/*` by file stem: images, or (`masks_only`) PNGs.
fn list(dir: &Path, masks_only: bool) -> Result<BTreeMap<String, ImageFile>> {
    let mut out = BTreeMap::new();
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot read `{}`", dir.display()))?;
    for e in entries {
        let path = e?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let wanted = if masks_only {
            name.to_ascii_lowercase().ends_with(".png")
        } else {
            is_image(&name)
        };
        if !path.is_file() || !wanted {
            continue;
        }
        let stem = path
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let file = ImageFile {
            name: path.display().to_string(),
            source: Source::Path(path.clone()),
        };
        if let Some(other) = out.insert(stem.clone(), file) {
            bail!(
                "`{}` and `{}` have the same stem `{stem}`; keep one",
                other.name,
                path.display()
            );
        }
    }
    Ok(out)
}

/// The masks of a segmentation dataset, one per image.
#[derive(Clone, Debug, PartialEq)]
pub struct Masks {
    /// The mask files.
    pub files: Vec<ImageFile>,
    /// The largest class index of each mask ([`IGNORE`] not counted; `None`: all ignored).
    pub largest: Vec<Option<u8>>,
}

impl Masks {
    /// The first mask holding an index of `classes` or more, with that index.
    pub fn beyond(&self, classes: usize) -> Option<(&ImageFile, u8)> {
        self.files
            .iter()
            .zip(&self.largest)
            .find_map(|(f, l)| l.filter(|&l| l as usize >= classes).map(|l| (f, l)))
    }

    /// Keeps the masks `keep` (sorted indices).
    pub(super) fn select(&self, keep: &[usize]) -> Masks {
        Masks {
            files: keep.iter().map(|&i| self.files[i].clone()).collect(),
            largest: keep.iter().map(|&i| self.largest[i]).collect(),
        }
    }
}

/// One split: image–mask pairs sorted by stem; checks pairing, files and sizes, and reads every
/// mask's largest class index.
fn split(root: &Path, split: &str) -> Result<(Vec<ImageFile>, Masks)> {
    let images = list(&root.join(split).join("images"), false)?;
    let masks = list(&root.join(split).join("masks"), true)?;
    if let Some((stem, img)) = images.iter().find(|(s, _)| !masks.contains_key(*s)) {
        bail!(
            "`{}` has no mask: expected `{}`",
            img.name,
            root.join(split)
                .join("masks")
                .join(format!("{stem}.png"))
                .display()
        );
    }
    if let Some(mask) = masks.iter().find(|(s, _)| !images.contains_key(*s)) {
        bail!(
            "mask `{}` has no image `{}/images/{}.(jpg|png)`",
            mask.1.name,
            split,
            mask.0
        );
    }
    if images.is_empty() {
        bail!(
            "`{}` has no images",
            root.join(split).join("images").display()
        );
    }
    let (images, masks): (Vec<_>, Vec<_>) = images.into_values().zip(masks.into_values()).unzip();
    let largest = images
        .par_iter()
        .zip(&masks)
        .map(|(img, mask)| -> Result<Option<u8>> {
            probe(img)?;
            probe(mask)?;
            let m = decode_mask(&mask.bytes()?).with_context(|| format!("`{}`", mask.name))?;
            let (w, h) = dimensions(img)?;
            if (w as usize, h as usize) != (m.width, m.height) {
                bail!(
                    "`{}` is {w}×{h} but its mask `{}` is {}×{}; image and mask must have one size",
                    img.name,
                    mask.name,
                    m.width,
                    m.height
                );
            }
            Ok(m.indices.iter().copied().filter(|&v| v != IGNORE).max())
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((
        images,
        Masks {
            files: masks,
            largest,
        },
    ))
}

/// Reads `seg:DIR`. The classes are `0 … k − 1` for the largest index `k − 1` seen in the masks
/// (named by `DIR/classes.txt`, one per line, if it exists). [`Split::set_classes`] checks a model's
/// class count against the masks.
pub(super) fn load(root: &Path) -> Result<Split> {
    let present: Vec<&str> = EVAL_SPLITS
        .into_iter()
        .filter(|s| root.join(s).is_dir())
        .collect();
    let eval = match present[..] {
        [one] => one,
        [] => bail!("`{}` has no `val/` (or `test/`) folder", root.display()),
        _ => bail!(
            "`{}` has both `val/` and `test/`; keep one evaluation split",
            root.display()
        ),
    };
    let (train_images, train_masks) = split(root, "train")?;
    let (test_images, test_masks) = split(root, eval)?;
    let largest = train_masks
        .largest
        .iter()
        .chain(&test_masks.largest)
        .flatten()
        .max()
        .copied()
        .unwrap_or(0);
    let names = root.join("classes.txt");
    let classes: Vec<String> = if names.exists() {
        let text = std::fs::read_to_string(&names)
            .with_context(|| format!("cannot read `{}`", names.display()))?;
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect::<Vec<String>>()
    } else {
        (0..=largest).map(|i| i.to_string()).collect()
    };
    if classes.is_empty() {
        bail!(
            "`{}` names no classes; write one class name per line, or delete it to number the classes",
            names.display()
        );
    }
    if classes.len() <= largest as usize {
        bail!(
            "`{}` names {} classes but a mask holds index {largest}",
            names.display(),
            classes.len()
        );
    }
    let make = |images: Vec<ImageFile>, masks: Masks| Dataset {
        classes: classes.clone(),
        shape: [0, 0, 0],
        labels: vec![0; images.len()],
        images: Images::Files(Arc::new(images)),
        masks: Some(Arc::new(masks)),
    };
    Ok(Split {
        train: make(train_images, train_masks),
        test: make(test_images, test_masks),
    })
}
