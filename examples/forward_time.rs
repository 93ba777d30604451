//! Forward time of a builtin at several α (a benchmark, not a test).
//!
//! `cargo run --release --example forward_time -- 'wrn(n = 2, k = 4, alpha = {a})' 32 5`
//! prints the median of 5 eval-mode forward passes at batch 32 for α ∈ {0, .25, .5, .75}.

use octconv::candle_core::{DType, Device, ModuleT, Tensor};
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let call = args
        .get(1)
        .map(String::as_str)
        .unwrap_or("wrn(n = 2, k = 4, alpha = {a})");
    let batch: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(32);
    let reps: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(5);
    println!(
        "| α | GMACs / batch | median forward ms | images/s | time vs α = 0 | MACs vs α = 0 |"
    );
    println!("|---|---|---|---|---|---|");
    let mut base: Option<(f64, f64)> = None;
    for a in ["0", "0.25", "0.5", "0.75"] {
        let spec = call.replace("{a}", a);
        let checked = octconv::check_builtin(&spec);
        let Some(ir) = checked.model.clone() else {
            anyhow::bail!("{}", checked.render_diagnostics(false));
        };
        let macs = ir.macs() as f64 * batch as f64;
        let d = ir.input;
        let params = octconv::runtime::init::init_params(&ir, 0, DType::F32, &Device::Cpu)?;
        let vb = octconv::candle_nn::VarBuilder::from_tensors(params, DType::F32, &Device::Cpu);
        let net = octconv::OctModel::new(ir, vb)?;
        let x = Tensor::ones((batch, d.c, d.h, d.w), DType::F32, &Device::Cpu)?;
        net.forward_t(&x, false)?; // warm-up
        let mut times = Vec::new();
        for _ in 0..reps {
            let t = Instant::now();
            net.forward_t(&x, false)?;
            times.push(t.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        let med = times[times.len() / 2];
        let (t0, m0) = *base.get_or_insert((med, macs));
        println!(
            "| {a} | {:.2} | {:.1} | {:.1} | {:.0} % | {:.0} % |",
            macs / 1e9,
            med * 1e3,
            batch as f64 / med,
            100.0 * med / t0,
            100.0 * macs / m0
        );
    }
    Ok(())
}
