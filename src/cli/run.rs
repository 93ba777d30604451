//! `octconv run SPEC [--set …] --weights W (--input X.safetensors | --image PHOTO) --output
//! Y.safetensors|Y.png [--force]`

use super::spec_args::SpecArgs;
use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor};
use octconv_runtime::data::decode::{probe, ImageFile, Source};
use octconv_runtime::data::{Batcher, Crop, Dataset, Images};
use octconv_runtime::train::split_run_weights;
use octconv_runtime::weights::{check_weights, read_safetensors, write_safetensors_atomic};
use octconv_runtime::OctModel;
use octconv_spec::Model;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

/// Arguments of `octconv run`.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    spec: SpecArgs,
    /// Weights (safetensors) with every parameter of the model, e.g. from `octconv init`.
    #[arg(long)]
    weights: PathBuf,
    /// Safetensors file with an f32 tensor named `input` of shape [N, C, H, W].
    #[arg(long, required_unless_present = "image", conflicts_with = "image")]
    input: Option<PathBuf>,
    /// A JPEG or PNG image instead of `--input`: resized to the model's input (the whole image for
    /// a segmentation model, the evaluation crop otherwise) and normalised with the statistics the
    /// weights carry.
    #[arg(long)]
    image: Option<PathBuf>,
    /// Where to write the tensor `output` (safetensors). For a model whose output is a map of class
    /// scores, a `.png` path writes the class map (a palette PNG of class indices, one file per image:
    /// `NAME-<i>.png` for a batch) and the scores next to it as `NAME.safetensors`.
    #[arg(long)]
    output: PathBuf,
    /// Overwrite `--output` if it exists.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    device: super::spec_args::DeviceArgs,
}

/// Runs the model in eval mode and writes `output`.
pub fn run(args: &RunArgs, color: bool) -> anyhow::Result<ExitCode> {
    let Some(model) = args.spec.model(color) else {
        return Ok(ExitCode::from(1));
    };
    super::spec_args::refuse_overwrite(&args.output, args.force)?;
    let device = args.device.open()?;
    let (weights, norm) = split_run_weights(read_safetensors(&args.weights, &device)?)?;
    check_weights(&model, &weights)
        .with_context(|| format!("weights file `{}`", args.weights.display()))?;
    let png = args
        .output
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("png"));
    let scores = args.output.with_extension("safetensors");
    if png && !matches!(model.output, octconv_spec::Shape::Single(_)) {
        bail!(
            "model `{}` outputs {}, not a map of class scores: write `--output` as .safetensors",
            model.name,
            model.output
        );
    }
    let x = match (&args.input, &args.image) {
        (Some(input), _) => read_input(&model, input, &device)?,
        (None, Some(image)) => {
            let Some((mean, std)) = norm else {
                bail!(
                    "`{}` carries no normalisation statistics (weights from a run or an import do); prepare the tensor yourself and pass --input",
                    args.weights.display()
                );
            };
            image_input(&model, image, mean, std, &device)?
        }
        (None, None) => bail!("give --input or --image"),
    };
    let vb = candle_nn::VarBuilder::from_tensors(weights, DType::F32, &device);
    let net = OctModel::new(model, vb).context("building the model")?;
    let y = net.infer(&x).context("running the model")?;
    let mut out = HashMap::new();
    out.insert("output".to_string(), y.clone());
    if png {
        // Every output is checked before any is written; the maps go first, the scores last.
        let paths = class_map_paths(&args.output, y.dim(0)?);
        for p in paths.iter().chain([&scores]) {
            super::spec_args::refuse_overwrite(p, args.force)?;
        }
        write_class_maps(&y, &paths)?;
        write_safetensors_atomic(&out, &scores)?;
        eprintln!(
            "wrote the class map{} {} and `output` {:?} to {}",
            if paths.len() > 1 { "s" } else { "" },
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            y.dims(),
            scores.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    write_safetensors_atomic(&out, &args.output)?;
    eprintln!("wrote `output` {:?} to {}", y.dims(), args.output.display());
    Ok(ExitCode::SUCCESS)
}

/// The tensor `input` of a safetensors file, checked against the model's input.
fn read_input(model: &Model, path: &Path, device: &Device) -> anyhow::Result<Tensor> {
    let inputs = read_safetensors(path, device)?;
    let Some(x) = inputs.get("input") else {
        let mut names: Vec<_> = inputs.keys().map(|k| format!("`{k}`")).collect();
        names.sort();
        bail!(
            "`{}` has no tensor named `input` (it has {})",
            path.display(),
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        );
    };
    if x.dtype() != DType::F32 {
        bail!(
            "tensor `input` in `{}` has dtype {:?}; expected f32",
            path.display(),
            x.dtype()
        );
    }
    let d = model.input;
    if x.rank() != 4 || x.dims()[1..] != [d.c, d.h, d.w] {
        bail!(
            "tensor `input` in `{}` has shape {:?}; model `{}` expects [N, {}, {}, {}]",
            path.display(),
            x.dims(),
            model.name,
            d.c,
            d.h,
            d.w
        );
    }
    Ok(x.clone())
}

/// One image file as a `[1, C, H, W]` input, through the evaluation transform of the pipeline.
fn image_input(
    model: &Model,
    path: &Path,
    mean: Vec<f32>,
    std: Vec<f32>,
    device: &Device,
) -> anyhow::Result<Tensor> {
    let d = model.input;
    let file = ImageFile {
        name: path.display().to_string(),
        source: Source::Path(path.to_path_buf()),
    };
    probe(&file)?;
    let ds = Dataset {
        classes: Vec::new(),
        shape: [d.c, d.h, d.w],
        images: Images::Files(Arc::new(vec![file])),
        labels: vec![0],
        masks: None,
    };
    let mut batcher = Batcher::with_stats(&ds, false, mean, std);
    if matches!(model.output, octconv_spec::Shape::Single(_)) {
        // A segmentation model sees the whole image, as in evaluation.
        batcher.crop = Crop::JOINT;
    }
    let (x, _) = batcher.batch(&ds, &[0], &mut ChaCha8Rng::seed_from_u64(0), device)?;
    Ok(x)
}

/// Where the class maps of a batch of `n` go: `path` for one image, `NAME-<i>.png` for more.
fn class_map_paths(path: &Path, n: usize) -> Vec<PathBuf> {
    if n == 1 {
        return vec![path.to_path_buf()];
    }
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    (0..n)
        .map(|i| path.with_file_name(format!("{stem}-{i}.png")))
        .collect()
}

/// Writes the argmax class of every pixel of `scores` `[N, K, H, W]` to `paths` (one per image) as
/// palette PNGs of class indices (Pascal VOC's colour map, so that the classes are visible too),
/// each through a temporary file that is removed if writing fails.
fn write_class_maps(scores: &Tensor, paths: &[PathBuf]) -> anyhow::Result<()> {
    let (_, _, h, w) = scores.dims4()?;
    let classes: Vec<u32> = scores.argmax(1)?.flatten_all()?.to_vec1()?;
    for (map, p) in classes.chunks(h * w).zip(paths) {
        let indices: Vec<u8> = map.iter().map(|&c| c.min(255) as u8).collect();
        let tmp = p.with_extension("png.tmp");
        let written = write_png(&tmp, &indices, w, h)
            .and_then(|()| std::fs::rename(&tmp, p).map_err(Into::into));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(e).with_context(|| format!("cannot write `{}`", p.display()));
        }
    }
    Ok(())
}

fn write_png(path: &Path, indices: &[u8], w: usize, h: usize) -> anyhow::Result<()> {
    let file = std::fs::File::create(path)?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w as u32, h as u32);
    enc.set_color(png::ColorType::Indexed);
    enc.set_depth(png::BitDepth::Eight);
    enc.set_palette(voc_palette());
    let mut writer = enc.write_header()?;
    writer.write_image_data(indices)?;
    writer.finish()?;
    Ok(())
}

/// Pascal VOC's colour map: class `c`'s colour spreads the bits of `c` over R, G and B.
fn voc_palette() -> Vec<u8> {
    (0..256u32)
        .flat_map(|c| {
            let mut rgb = [0u8; 3];
            let mut v = c;
            for bit in 0..8 {
                for (ch, x) in rgb.iter_mut().enumerate() {
                    *x |= (((v >> ch) & 1) as u8) << (7 - bit);
                }
                v >>= 3;
            }
            rgb
        })
        .collect()
}
