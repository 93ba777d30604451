//! Class-per-folder images, `train/<class>/*.jpg|png` and `test/<class>/…`, from a directory or straight
//! from a `.tar.gz` of that layout. Classes are the sorted folder names of `train/`.

use super::{Dataset, Split};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Encoded images by split and class: `(split, class) → [(name, bytes)]`.
type Files = BTreeMap<(String, String), Vec<(String, Vec<u8>)>>;

fn is_image(name: &str) -> bool {
    let l = name.to_ascii_lowercase();
    l.ends_with(".jpg") || l.ends_with(".jpeg") || l.ends_with(".png")
}

/// `…/train/<class>/<file>` → `("train", class, file)`; tolerates a leading top-level folder.
fn classify(path: &str) -> Option<(String, String, String)> {
    let parts: Vec<&str> = path
        .trim_start_matches("./")
        .split('/')
        .filter(|p| !p.is_empty())
        .collect();
    let n = parts.len();
    if n < 3 || !is_image(parts[n - 1]) {
        return None;
    }
    let split = parts[n - 3];
    (split == "train" || split == "test").then(|| {
        (
            split.to_string(),
            parts[n - 2].to_string(),
            parts[n - 1].to_string(),
        )
    })
}

fn from_dir(root: &Path) -> Result<Files> {
    let mut files = Files::new();
    for split in ["train", "test"] {
        let dir = root.join(split);
        let classes = std::fs::read_dir(&dir).with_context(|| {
            format!(
                "cannot read `{}` (expected {split}/<class>/…)",
                dir.display()
            )
        })?;
        for class in classes {
            let class = class?;
            if !class.file_type()?.is_dir() {
                continue;
            }
            let name = class.file_name().to_string_lossy().into_owned();
            let list = files.entry((split.into(), name.clone())).or_default();
            for f in std::fs::read_dir(class.path())? {
                let f = f?;
                let fname = f.file_name().to_string_lossy().into_owned();
                if is_image(&fname) {
                    let bytes = std::fs::read(f.path())
                        .with_context(|| format!("cannot read `{}`", f.path().display()))?;
                    list.push((format!("{split}/{name}/{fname}"), bytes));
                }
            }
        }
    }
    Ok(files)
}

fn from_tar_gz(path: &Path) -> Result<Files> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open `{}`", path.display()))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut files = Files::new();
    let entries = archive
        .entries()
        .with_context(|| format!("`{}` is not a readable .tar.gz", path.display()))?;
    for entry in entries {
        let mut entry =
            entry.with_context(|| format!("`{}` is corrupt or truncated", path.display()))?;
        let name = entry.path()?.to_string_lossy().into_owned();
        if let Some((split, class, file)) = classify(&name) {
            let mut bytes = Vec::with_capacity(entry.size() as usize);
            entry.read_to_end(&mut bytes).with_context(|| {
                format!(
                    "`{}`: cannot read `{name}` (truncated archive?)",
                    path.display()
                )
            })?;
            files
                .entry((split.clone(), class.clone()))
                .or_default()
                .push((format!("{split}/{class}/{file}"), bytes));
        }
    }
    Ok(files)
}

/// Decodes every image of one split; all must have the size and channel count of the first.
fn decode(origin: &Path, files: &Files, split: &str, classes: &[String]) -> Result<Dataset> {
    let mut ds = Dataset {
        classes: classes.to_vec(),
        shape: [0, 0, 0],
        images: Vec::new(),
        labels: Vec::new(),
    };
    for (label, class) in classes.iter().enumerate() {
        let Some(list) = files.get(&(split.to_string(), class.clone())) else {
            continue;
        };
        let mut list: Vec<_> = list.iter().collect();
        list.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, bytes) in list {
            let img = image::load_from_memory(bytes).with_context(|| {
                format!("`{}`: `{name}` is not a readable image", origin.display())
            })?;
            let gray = matches!(img.color(), image::ColorType::L8 | image::ColorType::L16);
            let (c, w, h) = (
                if gray { 1 } else { 3 },
                img.width() as usize,
                img.height() as usize,
            );
            if ds.shape == [0, 0, 0] {
                ds.shape = [c, h, w];
            } else if ds.shape != [c, h, w] {
                bail!(
                    "`{}`: `{name}` is {c}×{h}×{w}, but the first image is {:?}",
                    origin.display(),
                    ds.shape
                );
            }
            let raw = if gray {
                img.to_luma8().into_raw()
            } else {
                img.to_rgb8().into_raw()
            };
            // Interleaved HWC → planar CHW.
            for ch in 0..c {
                ds.images.extend(raw.iter().skip(ch).step_by(c));
            }
            ds.labels.push(label as u32);
        }
    }
    if ds.is_empty() {
        bail!(
            "`{}` has no images under `{split}/<class>/`",
            origin.display()
        );
    }
    Ok(ds)
}

/// Reads a class-per-folder dataset from a directory or a `.tar.gz`.
pub(super) fn load(path: &Path) -> Result<Split> {
    let name = path.to_string_lossy();
    let files = if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
        from_tar_gz(path)?
    } else {
        from_dir(path)?
    };
    let classes: Vec<String> = files
        .keys()
        .filter(|(s, _)| s == "train")
        .map(|(_, c)| c.clone())
        .collect();
    if classes.is_empty() {
        bail!(
            "`{}` has no `train/<class>/` folders with images",
            path.display()
        );
    }
    if let Some((_, extra)) = files
        .keys()
        .find(|(s, c)| s == "test" && !classes.contains(c))
    {
        bail!(
            "`{}`: test class `{extra}` does not exist in train/",
            path.display()
        );
    }
    let origin = PathBuf::from(path);
    Ok(Split {
        train: decode(&origin, &files, "train", &classes)?,
        test: decode(&origin, &files, "test", &classes)?,
    })
}
