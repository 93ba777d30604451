//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

/// Runs the `octconv` binary with `args` (no colours).
pub fn octconv(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_octconv"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("run octconv")
}

/// Standard output as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Standard error as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// All values of a tensor, flattened.
pub fn values(t: &octconv::candle_core::Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// Two classes of 8×8 RGB images: bright top half or bright bottom half.
pub fn dataset(root: &Path) {
    for (split, n) in [("train", 24), ("test", 8)] {
        for (class, top) in [("top", true), ("bottom", false)] {
            let d = root.join(split).join(class);
            std::fs::create_dir_all(&d).unwrap();
            for i in 0..n {
                let img = image::RgbImage::from_fn(8, 8, |x, y| {
                    let v = if (y < 4) == top { 200 } else { 40 } + ((i * 7 + x * 3) % 20) as u8;
                    image::Rgb([v, v, v])
                });
                img.save(d.join(format!("{i}.png"))).unwrap();
            }
        }
    }
}
