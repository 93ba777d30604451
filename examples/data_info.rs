//! Loads a dataset and prints its size, classes, channel statistics at an input size and the load
//! time (`octconv data-bench` times the pipeline itself).
//!
//! `cargo run --release --example data_info -- folder:../shared/data/cifar10-jpeg.tar.gz [SIZE]`

use octconv::runtime::data::{Batcher, DataSource, Norm};
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let arg = args
        .next()
        .unwrap_or_else(|| "folder:../shared/data/cifar10-jpeg.tar.gz".into());
    let size: usize = args.next().map_or(Ok(32), |s| s.parse())?;
    let src: DataSource = arg.parse()?;
    let t = Instant::now();
    let mut split = src.load()?;
    let channels = if split.train.shape[0] == 1 { 1 } else { 3 };
    split.fit_to([channels, size, size])?;
    let b = Batcher::new(&split.train, false, Norm::Data)?;
    println!(
        "{arg}: {} train / {} test images as {:?}, {} classes {:?}; mean {:.4?}, std {:.4?}; loaded in {:.1} s",
        split.train.len(),
        split.test.len(),
        split.train.shape,
        split.train.classes.len(),
        split.train.classes,
        b.mean,
        b.std,
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
