//! `octnet!` on a `.oct` file, resolved relative to this source file like `include_str!`; editing the
//! file rebuilds this example.
//!
//! `cargo run --release --example macro_file`

use octconv::candle_core::{DType, Device, ModuleT, Tensor};

octconv::octnet! {
    use "custom.oct";
    pub struct Custom = custom(width = 32);
}

fn main() -> anyhow::Result<()> {
    println!(
        "Custom: {} parameters, {} MACs",
        Custom::PARAMS,
        Custom::MACS
    );
    let varmap = octconv::candle_nn::VarMap::new();
    let net = Custom::new(octconv::candle_nn::VarBuilder::from_varmap(
        &varmap,
        DType::F32,
        &Device::Cpu,
    ))?;
    let x = Tensor::ones((2, 3, 32, 32), DType::F32, &Device::Cpu)?;
    println!("output: {:?}", net.forward_t(&x, false)?.dims());
    Ok(())
}
