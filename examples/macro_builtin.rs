//! `octnet!` on a builtin: WRN-28-10 with α = 0.25 as a typed candle module.
//!
//! `cargo run --release --example macro_builtin`

use octconv::candle_core::{DType, Device, ModuleT, Tensor};

octconv::octnet! {
    /// WRN-28-10, α = 0.25 (the seed's CIFAR-10 network)
    pub struct Wrn28x10 = wrn(n = 4, k = 10, alpha = 0.25);
}

fn main() -> anyhow::Result<()> {
    println!(
        "Wrn28x10: input {:?}, output {:?}, {} parameters, {} MACs",
        Wrn28x10::INPUT,
        Wrn28x10::OUTPUT,
        Wrn28x10::PARAMS,
        Wrn28x10::MACS
    );
    let ir = octconv::check_builtin("wrn(n = 4, k = 10, alpha = 0.25)")
        .model
        .expect("builtin checks");
    let weights = octconv::runtime::init::init_params(&ir, 0, DType::F32, &Device::Cpu)?;
    let net = Wrn28x10::new(octconv::candle_nn::VarBuilder::from_tensors(
        weights,
        DType::F32,
        &Device::Cpu,
    ))?;
    let x = Tensor::zeros((1, 3, 32, 32), DType::F32, &Device::Cpu)?;
    println!("logits: {:?}", net.forward_t(&x, false)?.dims());
    Ok(())
}
