//! IDX files (MNIST, Fashion-MNIST), gzipped or not.

use super::{Dataset, Images, Split};
use anyhow::{bail, Context, Result};
use std::io::Read;
use std::path::{Path, PathBuf};

const CLASSES: [&str; 10] = [
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle-boot",
];

/// The file `name` or `name.gz` in `dir`.
fn find(dir: &Path, name: &str) -> Result<PathBuf> {
    for candidate in [dir.join(name), dir.join(format!("{name}.gz"))] {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "`{}` has no `{name}` or `{name}.gz` (install Debian's `dataset-fashion-mnist` or pass `fashion-mnist:DIR`)",
        dir.display()
    )
}

fn read(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).with_context(|| format!("cannot read `{}`", path.display()))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .with_context(|| format!("`{}` is not a valid gzip file", path.display()))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Parses an IDX file: magic `0, 0, 8 (u8), rank`, big-endian dimensions, data.
fn parse(path: &Path, bytes: &[u8], rank: usize) -> Result<(Vec<usize>, Vec<u8>)> {
    if bytes.len() < 4
        || bytes[0] != 0
        || bytes[1] != 0
        || bytes[2] != 8
        || bytes[3] as usize != rank
    {
        bail!(
            "`{}` is not an IDX file of unsigned bytes with {rank} dimension(s)",
            path.display()
        );
    }
    let header = 4 + 4 * rank;
    if bytes.len() < header {
        bail!("`{}` is truncated in its header", path.display());
    }
    let dims: Vec<usize> = (0..rank)
        .map(|i| {
            u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().expect("4 bytes")) as usize
        })
        .collect();
    let n: usize = dims.iter().product();
    if bytes.len() - header != n {
        bail!(
            "`{}` should hold {n} bytes of data for {dims:?}, but holds {}",
            path.display(),
            bytes.len() - header
        );
    }
    Ok((dims, bytes[header..].to_vec()))
}

fn load_pair(dir: &Path, images: &str, labels: &str) -> Result<Dataset> {
    let (ip, lp) = (find(dir, images)?, find(dir, labels)?);
    let (idims, pixels) = parse(&ip, &read(&ip)?, 3)?;
    let (ldims, labels) = parse(&lp, &read(&lp)?, 1)?;
    if idims[0] != ldims[0] {
        bail!(
            "`{}` has {} images but `{}` has {} labels",
            ip.display(),
            idims[0],
            lp.display(),
            ldims[0]
        );
    }
    if let Some((i, l)) = labels.iter().enumerate().find(|(_, &l)| l >= 10) {
        bail!(
            "`{}`: label {i} is {l}, but there are 10 classes",
            lp.display()
        );
    }
    Ok(Dataset {
        classes: CLASSES.iter().map(|s| s.to_string()).collect(),
        shape: [1, idims[1], idims[2]],
        images: Images::Pixels(pixels),
        labels: labels.into_iter().map(u32::from).collect(),
        masks: None,
    })
}

/// Reads the Fashion-MNIST training and test files from `dir`.
pub(super) fn load_fashion_mnist(dir: &Path) -> Result<Split> {
    Ok(Split {
        train: load_pair(dir, "train-images-idx3-ubyte", "train-labels-idx1-ubyte")?,
        test: load_pair(dir, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")?,
    })
}
