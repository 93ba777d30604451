//! Loads a dataset and prints its size, shape, classes, channel statistics and the load time.
//!
//! `cargo run --release --example data_info -- folder:../shared/data/cifar10-jpeg.tar.gz`

use octconv::runtime::data::DataSource;
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let arg = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "folder:../shared/data/cifar10-jpeg.tar.gz".into());
    let src: DataSource = arg.parse()?;
    let t = Instant::now();
    let split = src.load()?;
    let (mean, std) = split.train.channel_stats();
    println!(
        "{arg}: {} train / {} test images of {:?}, {} classes {:?}; mean {mean:.4?}, std {std:.4?}; loaded in {:.1} s",
        split.train.len(),
        split.test.len(),
        split.train.shape,
        split.train.classes.len(),
        split.train.classes,
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
