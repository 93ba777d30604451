//! CIFAR-10 binary batches: records of one label byte and 3 072 pixel bytes (R, G, B planes of 32×32).

use super::{Dataset, Images, Split};
use anyhow::{bail, Context, Result};
use std::path::Path;

const RECORD: usize = 1 + 3 * 32 * 32;
const CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// Reads one batch file into `ds`.
fn read_batch(path: &Path, ds: &mut Dataset) -> Result<()> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read CIFAR-10 batch `{}`", path.display()))?;
    if bytes.is_empty() || bytes.len() % RECORD != 0 {
        bail!(
            "`{}` is truncated or not a CIFAR-10 batch: {} bytes is not a whole number of {RECORD}-byte records",
            path.display(),
            bytes.len()
        );
    }
    for (i, rec) in bytes.chunks_exact(RECORD).enumerate() {
        if rec[0] as usize >= CLASSES.len() {
            bail!(
                "`{}`: record {i} has label {}, but CIFAR-10 has 10 classes (0–9)",
                path.display(),
                rec[0]
            );
        }
        ds.labels.push(rec[0] as u32);
        if let Images::Pixels(p) = &mut ds.images {
            p.extend_from_slice(&rec[1..]);
        }
    }
    Ok(())
}

fn empty() -> Dataset {
    Dataset {
        classes: CLASSES.iter().map(|s| s.to_string()).collect(),
        shape: [3, 32, 32],
        images: Images::Pixels(Vec::new()),
        labels: Vec::new(),
        masks: None,
    }
}

/// Reads `data_batch_1.bin` … `data_batch_5.bin` and `test_batch.bin` from `dir`.
pub(super) fn load(dir: &Path) -> Result<Split> {
    let (mut train, mut test) = (empty(), empty());
    for i in 1..=5 {
        read_batch(&dir.join(format!("data_batch_{i}.bin")), &mut train)?;
    }
    read_batch(&dir.join("test_batch.bin"), &mut test)?;
    Ok(Split { train, test })
}
