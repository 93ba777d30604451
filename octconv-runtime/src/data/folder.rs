//! Class-per-folder images: `train/<class>/*` and `val/<class>/*` (ImageNet's layout; `test/` is
//! accepted in place of `val/`), JPEG or PNG of any size, from a directory or a `.tar.gz` of that
//! layout. Only the file list is kept: images are decoded when a batch needs them, so a directory
//! of a million files costs its names, not its pixels (an archive's members are held encoded, since
//! a `.tar.gz` cannot be read out of order). Classes are the sorted folder names of `train/`.
//!
//! Before anything runs, every file is probed (`decode::probe`): empty, not an image and truncated
//! files are errors naming the file, as are an empty class folder and an evaluation class that
//! `train/` lacks.

use super::decode::{probe, ImageFile, Source};
use super::{Dataset, Images, Split};
use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

/// Images by split and class: `(split, class) → files`; a class folder without images maps to an
/// empty list, so that it can be named.
type Listing = BTreeMap<(String, String), Vec<ImageFile>>;

/// The evaluation split's folder names (one of them, not both).
pub(super) const EVAL_SPLITS: [&str; 2] = ["val", "test"];

/// True for the names the readers take as images: `.jpg`, `.jpeg`, `.png` in any case.
pub(super) fn is_image(name: &str) -> bool {
    let l = name.to_ascii_lowercase();
    l.ends_with(".jpg") || l.ends_with(".jpeg") || l.ends_with(".png")
}

/// `…/train/<class>/<file>` → `("train", class, Some(file))`, `…/train/<class>/` →
/// `("train", class, None)`; tolerates a leading top-level folder.
fn classify(path: &str, is_dir: bool) -> Option<(String, String, Option<String>)> {
    let parts: Vec<&str> = path
        .trim_start_matches("./")
        .split('/')
        .filter(|p| !p.is_empty())
        .collect();
    let n = parts.len();
    let (split, class, file) = if is_dir {
        (n >= 2).then(|| (parts[n - 2], parts[n - 1], None))?
    } else {
        if n < 3 || !is_image(parts[n - 1]) {
            return None;
        }
        (parts[n - 3], parts[n - 2], Some(parts[n - 1].to_string()))
    };
    (split == "train" || EVAL_SPLITS.contains(&split))
        .then(|| (split.to_string(), class.to_string(), file))
}

fn from_dir(root: &Path) -> Result<Listing> {
    let mut files = Listing::new();
    for split in ["train", "val", "test"] {
        let dir = root.join(split);
        if split != "train" && !dir.is_dir() {
            continue;
        }
        let classes = std::fs::read_dir(&dir).with_context(|| {
            format!(
                "cannot read `{}` (expected {split}/<class>/…)",
                dir.display()
            )
        })?;
        for class in classes {
            let class = class?;
            // `path().is_dir()` follows symbolic links (a linked class folder counts).
            if !class.path().is_dir() {
                continue;
            }
            let name = class.file_name().to_string_lossy().into_owned();
            let list = files.entry((split.into(), name)).or_default();
            let entries = std::fs::read_dir(class.path())
                .with_context(|| format!("cannot read `{}`", class.path().display()))?;
            for f in entries {
                let f = f?;
                let fname = f.file_name().to_string_lossy().into_owned();
                if is_image(&fname) {
                    list.push(ImageFile {
                        name: f.path().display().to_string(),
                        source: Source::Path(f.path()),
                    });
                }
            }
        }
    }
    Ok(files)
}

fn from_tar_gz(path: &Path) -> Result<Listing> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open `{}`", path.display()))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut files = Listing::new();
    let entries = archive
        .entries()
        .with_context(|| format!("`{}` is not a readable .tar.gz", path.display()))?;
    for entry in entries {
        let mut entry =
            entry.with_context(|| format!("`{}` is corrupt or truncated", path.display()))?;
        let name = entry.path()?.to_string_lossy().into_owned();
        let is_dir = entry.header().entry_type().is_dir();
        let Some((split, class, file)) = classify(&name, is_dir) else {
            continue;
        };
        let list = files.entry((split, class)).or_default();
        if file.is_some() {
            let mut bytes = Vec::with_capacity(entry.size() as usize);
            entry.read_to_end(&mut bytes).with_context(|| {
                format!(
                    "`{}`: cannot read `{name}` (truncated archive?)",
                    path.display()
                )
            })?;
            list.push(ImageFile {
                name: format!("{}: {name}", path.display()),
                source: Source::Bytes(Arc::from(bytes)),
            });
        }
    }
    Ok(files)
}

/// One split's files in class order (files sorted by name within a class) with their labels.
fn split_of(files: &mut Listing, split: &str, classes: &[String]) -> Dataset {
    let mut list = Vec::new();
    let mut labels = Vec::new();
    for (label, class) in classes.iter().enumerate() {
        if let Some(mut f) = files.remove(&(split.to_string(), class.clone())) {
            f.sort_by(|a, b| a.name.cmp(&b.name));
            labels.extend(std::iter::repeat_n(label as u32, f.len()));
            list.extend(f);
        }
    }
    Dataset {
        classes: classes.to_vec(),
        shape: [0, 0, 0],
        images: Images::Files(Arc::new(list)),
        labels,
        masks: None,
    }
}

/// Lists a class-per-folder dataset from a directory or a `.tar.gz` and probes every file. The
/// datasets' `shape` is left `[0, 0, 0]`: the model's input decides it ([`Split::fit_to`](super::Split::fit_to)).
pub(super) fn load(path: &Path) -> Result<Split> {
    let name = path.to_string_lossy();
    let mut files = if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
        from_tar_gz(path)?
    } else {
        from_dir(path)?
    };
    let eval = EVAL_SPLITS
        .into_iter()
        .find(|s| files.keys().any(|(split, _)| split == s))
        .unwrap_or("val");
    if let Some((split, class)) = files.iter().find_map(|(k, v)| v.is_empty().then_some(k)) {
        bail!(
            "`{}`: the class folder `{split}/{class}` has no JPEG or PNG images; add images or remove the folder",
            path.display()
        );
    }
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
        .find(|(s, c)| s == eval && !classes.contains(c))
    {
        bail!(
            "`{}`: {eval} class `{extra}` does not exist in train/ (the classes are the folders of train/)",
            path.display()
        );
    }
    if files
        .keys()
        .any(|(s, _)| EVAL_SPLITS.contains(&s.as_str()) && s != eval)
    {
        bail!(
            "`{}` has both `val/` and `test/`; keep one evaluation split",
            path.display()
        );
    }
    let train = split_of(&mut files, "train", &classes);
    let test = split_of(&mut files, eval, &classes);
    if test.is_empty() {
        bail!(
            "`{}` has no `val/<class>/` (or `test/<class>/`) images to evaluate on",
            path.display()
        );
    }
    for ds in [&train, &test] {
        if let Images::Files(list) = &ds.images {
            list.par_iter().try_for_each(probe)?;
        }
    }
    Ok(Split { train, test })
}
