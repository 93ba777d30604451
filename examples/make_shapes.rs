//! Writes the generated segmentation set "shapes" (discs and squares on coloured noise, with
//! masks) in the `seg:` layout, for the README's U-Net recipe.
//!
//! `cargo run --release --example make_shapes -- DIR [TRAIN] [VAL] [SIZE] [SEED]`
//! (defaults: 800 training and 200 validation images of 64 × 64, seed 0).

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: make_shapes DIR [TRAIN] [VAL] [SIZE] [SEED]"))?;
    let mut next = |default: u64| -> anyhow::Result<u64> {
        Ok(args
            .next()
            .map(|s| s.parse())
            .transpose()?
            .unwrap_or(default))
    };
    let (train, val, size, seed) = (next(800)?, next(200)?, next(64)?, next(0)?);
    octconv::runtime::data::synthetic::shapes(
        std::path::Path::new(&dir),
        train as usize,
        val as usize,
        size as u32,
        seed,
    )?;
    println!("wrote {train} training and {val} validation images of {size}×{size} to {dir}");
    Ok(())
}
