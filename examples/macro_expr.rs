//! `octnet!` as an expression: `octnet!(wrn(…)).build(vb)` and the `<…>` spelling.
//!
//! `cargo run --release --example macro_expr`

use octconv::candle_core::{DType, Device, ModuleT, Tensor};

fn main() -> anyhow::Result<()> {
    let varmap = octconv::candle_nn::VarMap::new();
    let vb = octconv::candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let net = octconv::octnet!(wrn(n = 1, k = 2, alpha = 0.25)).build(vb.clone())?;
    let same = octconv::octnet!(<wrn(n = 1, k = 2, alpha = 0.25)>).build(vb)?;
    let x = Tensor::ones((1, 3, 32, 32), DType::F32, &Device::Cpu)?;
    println!(
        "{:?} {:?}",
        net.forward_t(&x, false)?.dims(),
        same.forward_t(&x, false)?.dims()
    );
    Ok(())
}
