//! One OctConv layer, forward or forward + backward, at several α (a benchmark, not a test).
//!
//! `cargo run --release --example layer_bench -- [--train] [--batch 32] [--channels 160] [--size 32]
//! [--repeats 10] [--alphas 0,0.25,0.5,0.75] [--json]`
//!
//! The layer takes a high/low pair (`c_in = c_out = channels`, 3×3, stride 1), as inside a network;
//! at α = 0 it is a plain convolution. Prints the median, mean and GFLOP/s (2 FLOPs per MAC, the
//! backward counted as 2× the forward) per α; `--json` prints one JSON object per α. `--train` runs
//! the planned training step's record and backward of the layer (`OCTCONV_STEP=autograd`: candle's
//! autograd). The PyTorch
//! side is `bench/compare_pytorch.py`, which runs this binary and PyTorch alternately.

use octconv::candle_core::{Device, Tensor, Var};
use octconv::runtime::layers::{OctConv2d, OctLayer};
use octconv::runtime::tape::ParamGrads;
use octconv::spec::ir::{OctConvSpec, Path};
use octconv::spec::shape::channel_split;
use octconv::OctValue;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::Instant;

struct Args {
    train: bool,
    batch: usize,
    channels: usize,
    size: usize,
    repeats: usize,
    alphas: Vec<f64>,
    json: bool,
}

fn parse() -> anyhow::Result<Args> {
    let mut a = Args {
        train: false,
        batch: 32,
        channels: 160,
        size: 32,
        repeats: 10,
        alphas: vec![0.0, 0.25, 0.5, 0.75],
        json: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--train" => a.train = true,
            "--json" => a.json = true,
            "--batch" => a.batch = value()?.parse()?,
            "--channels" => a.channels = value()?.parse()?,
            "--size" => a.size = value()?.parse()?,
            "--repeats" => a.repeats = value()?.parse()?,
            "--alphas" => {
                a.alphas = value()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?
            }
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    Ok(a)
}

fn random(rng: &mut ChaCha8Rng, shape: (usize, usize, usize, usize)) -> anyhow::Result<Tensor> {
    let n = shape.0 * shape.1 * shape.2 * shape.3;
    let v: Vec<f32> = (0..n).map(|_| rng.random::<f32>() - 0.5).collect();
    Ok(Tensor::from_vec(v, shape, &Device::Cpu)?)
}

fn main() -> anyhow::Result<()> {
    octconv::runtime::malloc::tune_for_tensors();
    octconv::runtime::threads::tune_candle_pool();
    let a = parse()?;
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let (b, c, s) = (a.batch, a.channels, a.size);
    let mut base = None;
    for &alpha in &a.alphas {
        let (ch, cl) = channel_split(c, alpha);
        let spec = OctConvSpec {
            in_h: ch,
            in_l: cl,
            out_h: ch,
            out_l: cl,
            kernel: 3,
            stride: 1,
            groups: 1,
            depthwise: false,
            bias: false,
            downsample: Default::default(),
        };
        let mut weights: [Option<Tensor>; 4] = Default::default();
        let mut vars = Vec::new();
        let mut macs = 0u64;
        for (i, p) in Path::ALL.into_iter().enumerate() {
            if let Some((ci, co)) = spec.path_channels(p) {
                let v = Var::from_tensor(&(random(&mut rng, (co, ci, 3, 3))? * 0.05)?)?;
                let hw = if matches!(p, Path::HH) {
                    s * s
                } else {
                    s * s / 4
                };
                macs += (b * co * ci * 9 * hw) as u64;
                weights[i] = Some(v.as_tensor().clone());
                vars.push(v);
            }
        }
        let layer = OctConv2d::from_weights(spec, weights, None, None);
        let xh = Var::from_tensor(&random(&mut rng, (b, ch, s, s))?)?;
        let x = if cl == 0 {
            OctValue::Single(xh.as_tensor().clone())
        } else {
            let xl = Var::from_tensor(&random(&mut rng, (b, cl, s / 2, s / 2))?)?;
            OctValue::Pair {
                high: Some(xh.as_tensor().clone()),
                low: xl.as_tensor().clone(),
            }
        };
        let planned = octconv::runtime::tape::planned(&Device::Cpu);
        let step = || -> anyhow::Result<()> {
            if a.train && planned {
                // The planned step's record and backward (loss = the sum of both outputs).
                let (y, back) = OctLayer::train_record(&layer, &[&x], &[true])?
                    .ok_or_else(|| anyhow::anyhow!("the layer has no planned backward"))?;
                let ones = y.map(|t| t.ones_like())?;
                back.backward(&ones, &mut ParamGrads::default())?;
                return Ok(());
            }
            let y = layer.forward(&x)?;
            if a.train {
                let (h, l) = y.branches();
                let mut loss = h.expect("high branch").sum_all()?;
                if let Some(l) = l {
                    loss = (loss + l.sum_all()?)?;
                }
                loss.backward()?;
            }
            Ok(())
        };
        step()?; // warm-up
        let mut times = Vec::new();
        for _ in 0..a.repeats {
            let t = Instant::now();
            step()?;
            times.push(t.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        let mean = times.iter().sum::<f64>() / times.len() as f64;
        let flops = 2.0 * macs as f64 * if a.train { 3.0 } else { 1.0 };
        let t0 = *base.get_or_insert(median);
        if a.json {
            println!(
                "{{\"alpha\": {alpha}, \"train\": {}, \"median_s\": {median:.6}, \"mean_s\": {mean:.6}, \"gflops\": {:.1}, \"relative\": {:.4}}}",
                a.train,
                flops / median / 1e9,
                median / t0
            );
        } else {
            println!(
                "α {alpha:<5} {} median {:7.1} ms  mean {:7.1} ms  {:6.1} GFLOP/s  {:5.1} % of α = 0",
                if a.train { "fwd+bwd" } else { "fwd" },
                median * 1e3,
                mean * 1e3,
                flops / median / 1e9,
                100.0 * median / t0
            );
        }
    }
    Ok(())
}
