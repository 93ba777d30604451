//! `octnet!` on an inline spec with several declarations.
//!
//! `cargo run --release --example macro_inline`

use octconv::candle_core::{DType, Device, ModuleT, Tensor};

octconv::octnet! {
    model tiny(c: int = 8, alpha: float = 0.5) {
        input [3, 16, 16];
        octconv(c, kernel = 3, alpha = alpha); bn(); relu();
        merge(); global_avg_pool(); linear(10);
    }
    pub struct Tiny = tiny();
    pub struct TinyWide = tiny(c = 32, alpha = 0.25);
}

fn main() -> anyhow::Result<()> {
    for (name, params, macs) in [
        ("Tiny", Tiny::PARAMS, Tiny::MACS),
        ("TinyWide", TinyWide::PARAMS, TinyWide::MACS),
    ] {
        println!("{name}: {params} parameters, {macs} MACs");
    }
    let varmap = octconv::candle_nn::VarMap::new();
    let net = Tiny::new(octconv::candle_nn::VarBuilder::from_varmap(
        &varmap,
        DType::F32,
        &Device::Cpu,
    ))?;
    let y = net.forward_t(
        &Tensor::ones((4, 3, 16, 16), DType::F32, &Device::Cpu)?,
        false,
    )?;
    println!("Tiny output: {:?}", y.dims());
    Ok(())
}
