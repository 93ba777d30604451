//! A generated segmentation set, "shapes": discs (class 1) and squares (class 2) of random colours
//! on coloured noise (class 0), with a one-pixel [`IGNORE`](super::seg::IGNORE) ring on every shape's
//! edge, written in the `seg:` layout. The tests and the README's U-Net recipe use it; colour alone
//! does not tell a disc from a square, their outlines do.

use super::seg::IGNORE;
use anyhow::{Context, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::Path;

/// Writes `DIR/{train,val}/{images,masks}/NNNN.png` (`train` and `val` images of `size × size`) and
/// `DIR/classes.txt`; the same `seed` writes the same files.
pub fn shapes(dir: &Path, train: usize, val: usize, size: u32, seed: u64) -> Result<()> {
    if size < 16 {
        anyhow::bail!("shapes need images of at least 16 × 16 pixels, not {size}");
    }
    for (split, n, stream) in [("train", train, 0), ("val", val, 1)] {
        let images = dir.join(split).join("images");
        let masks = dir.join(split).join("masks");
        for d in [&images, &masks] {
            std::fs::create_dir_all(d)
                .with_context(|| format!("cannot create `{}`", d.display()))?;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(stream);
        for i in 0..n {
            let (img, mask) = one(size, &mut rng);
            let name = format!("{i:04}.png");
            img.save(images.join(&name))
                .with_context(|| format!("cannot write `{}`", images.join(&name).display()))?;
            mask.save(masks.join(&name))
                .with_context(|| format!("cannot write `{}`", masks.join(&name).display()))?;
        }
    }
    std::fs::write(dir.join("classes.txt"), "background\ndisc\nsquare\n")
        .with_context(|| format!("cannot write `{}`", dir.join("classes.txt").display()))?;
    Ok(())
}

/// One image and its mask: two to four shapes, later ones on top.
fn one(size: u32, rng: &mut ChaCha8Rng) -> (image::RgbImage, image::GrayImage) {
    let tint: [u8; 3] = [
        rng.random_range(0..128),
        rng.random_range(0..128),
        rng.random_range(0..128),
    ];
    let mut img = image::RgbImage::from_fn(size, size, |_, _| {
        image::Rgb(tint.map(|t| t + rng.random_range(0..128u8)))
    });
    let mut mask = image::GrayImage::new(size, size);
    let s = size as f32;
    for _ in 0..rng.random_range(2..=4) {
        let disc = rng.random::<bool>();
        let r = rng.random_range(s * 0.08..s * 0.2);
        let (cx, cy) = (rng.random_range(r..s - r), rng.random_range(r..s - r));
        let colour: [u8; 3] = [rng.random(), rng.random(), rng.random()];
        for y in 0..size {
            for x in 0..size {
                let (dx, dy) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
                // Signed distance to the outline: negative inside.
                let d = if disc {
                    (dx * dx + dy * dy).sqrt() - r
                } else {
                    dx.abs().max(dy.abs()) - r
                };
                if d < 0.5 {
                    img.put_pixel(x, y, image::Rgb(colour));
                    let class = if d > -0.5 {
                        IGNORE
                    } else if disc {
                        1
                    } else {
                        2
                    };
                    mask.put_pixel(x, y, image::Luma([class]));
                }
            }
        }
    }
    (img, mask)
}
