//! `octconv data-bench DATA [--size 224] [--threads N] [--images N] [--decoder zune|image] [--json]`:
//! how fast the image pipeline lists, decodes and augments a dataset, without a model.

use anyhow::Context;
use octconv_runtime::data::{epoch_order, Batcher, DataSource, Decoder, Images};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use std::process::ExitCode;
use std::time::Instant;

/// Arguments of `octconv data-bench`.
#[derive(clap::Args, Debug)]
pub struct DataBenchArgs {
    /// `folder:DIR|FILE.tar.gz`, `seg:DIR`, `cifar10:DIR` or `fashion-mnist[:DIR]`.
    data: String,
    /// Output height and width of the images (a model's input size).
    #[arg(long, default_value_t = 224)]
    size: usize,
    /// Output channels: 3 (RGB) or 1 (grey).
    #[arg(long, default_value_t = 3)]
    channels: usize,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Images to time (a seeded sample of the training split).
    #[arg(long, default_value_t = 512)]
    images: usize,
    /// Images per batch of the pipeline.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// The JPEG decoder: `zune` (zune-jpeg, strict) or `image` (the `image` crate).
    #[arg(long, default_value = "zune")]
    decoder: Decoder,
    /// Time the evaluation crop instead of the training augmentation.
    #[arg(long)]
    eval: bool,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// Lists and probes the data, then times decoding alone and the whole pipeline (decode, crop,
/// resize, flip, normalise) on the same images.
pub fn run(args: &DataBenchArgs) -> anyhow::Result<ExitCode> {
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if threads == 0 || args.size == 0 {
        anyhow::bail!("--threads and --size must be at least 1");
    }
    let t = Instant::now();
    let src: DataSource = args.data.parse()?;
    let mut split = src
        .load()
        .with_context(|| format!("loading `{}`", args.data))?;
    let listed = t.elapsed().as_secs_f64();
    split.fit_to([args.channels, args.size, args.size])?;
    let ds = &split.train;
    let mut sample = epoch_order(ds.len(), 0, 0);
    sample.truncate(args.images.max(1));
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    let decode_rate = match &ds.images {
        Images::Files(files) => {
            let t = Instant::now();
            pool.install(|| {
                sample
                    .par_iter()
                    .try_for_each(|&i| files[i].decode(args.channels, args.decoder).map(|_| ()))
            })?;
            Some(sample.len() as f64 / t.elapsed().as_secs_f64())
        }
        Images::Pixels(_) => None,
    };
    // Fixed statistics: the figure is the pipeline's, not the measurement's.
    let mut batcher = Batcher::with_stats(
        ds,
        !args.eval,
        vec![0.5; args.channels],
        vec![0.25; args.channels],
    )
    .with_threads(threads)?;
    batcher.decoder = args.decoder;
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let t = Instant::now();
    for idx in sample.chunks(args.batch.max(1)) {
        batcher.batch_host(ds, idx, &mut rng)?;
    }
    let pipeline_rate = sample.len() as f64 / t.elapsed().as_secs_f64();
    if args.json {
        let v = serde_json::json!({
            "data": args.data,
            "train_images": ds.len(),
            "eval_images": split.test.len(),
            "classes": ds.classes.len(),
            "listed_s": listed,
            "size": args.size,
            "threads": threads,
            "decoder": format!("{:?}", args.decoder).to_lowercase(),
            "timed_images": sample.len(),
            "decode_images_per_s": decode_rate,
            "pipeline_images_per_s": pipeline_rate,
            "crop": format!("{:?}", batcher.crop),
            "augment": !args.eval,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{}: {} train / {} eval images, {} classes; listed and probed in {listed:.2} s",
        args.data,
        ds.len(),
        split.test.len(),
        ds.classes.len()
    );
    println!(
        "{} images to {}×{}×{}, {threads} thread(s), {:?} decoder, {}: {:?}",
        sample.len(),
        args.channels,
        args.size,
        args.size,
        args.decoder,
        if args.eval {
            "evaluation crop"
        } else {
            "training augmentation"
        },
        batcher.crop
    );
    if let Some(r) = decode_rate {
        println!("decode only:                  {r:>9.0} images/s");
    }
    println!("decode + crop + normalise:    {pipeline_rate:>9.0} images/s");
    Ok(ExitCode::SUCCESS)
}
