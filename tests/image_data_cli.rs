//! The streaming image pipeline from the command line: `octconv data-bench`, and `octconv train`
//! refusing a bad image by name before it writes anything.

mod common;

use common::{octconv, stderr, stdout};
use std::path::Path;

/// ImageNet's layout: `train/<class>/*.jpg` and `val/<class>/*.jpg`, JPEGs of several sizes.
fn imagenet_layout(root: &Path) {
    for (split, n) in [("train", 6u32), ("val", 2)] {
        for (c, class) in ["n01", "n02"].iter().enumerate() {
            let d = root.join(split).join(class);
            std::fs::create_dir_all(&d).unwrap();
            for i in 0..n {
                image::RgbImage::from_fn(90 + 11 * i, 70 + 9 * i, |x, y| {
                    image::Rgb([(x + 60 * c as u32) as u8, y as u8, 128])
                })
                .save(d.join(format!("{i}.JPEG")))
                .unwrap();
            }
        }
    }
}

/// A small classifier of 72 × 72 images (ImageNet-style crops) into the two classes.
const SPEC: &str = "model t() { input [3, 72, 72]; conv(4, kernel = 3, stride = 4); bn(); relu(); global_avg_pool(); linear(2); }";

/// `octconv train SPEC` (written to `root/t.oct`) on `root/data` into `root/run`, one epoch.
fn train(root: &Path, extra: &[&str]) -> std::process::Output {
    let spec_path = root.join("t.oct");
    std::fs::write(&spec_path, SPEC).unwrap();
    let data = format!("folder:{}", root.join("data").display());
    let run = root.join("run");
    let mut args = vec![
        "train",
        spec_path.to_str().unwrap(),
        "--data",
        &data,
        "--run-dir",
        run.to_str().unwrap(),
        "--epochs",
        "1",
    ];
    args.extend_from_slice(extra);
    octconv(&args)
}

#[test]
fn data_bench_reports_decoded_and_augmented_images_per_second() {
    let root = std::env::temp_dir().join(format!("octconv-data-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    imagenet_layout(&root);
    let data = format!("folder:{}", root.display());
    let o = octconv(&[
        "data-bench",
        &data,
        "--size",
        "64",
        "--threads",
        "2",
        "--images",
        "12",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["train_images"], 12);
    assert_eq!(v["eval_images"], 4);
    assert_eq!(v["timed_images"], 12);
    assert!(v["decode_images_per_s"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["pipeline_images_per_s"].as_f64().unwrap() > 0.0, "{v}");
    let o = octconv(&["data-bench", &data, "--size", "64", "--images", "4"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("decode + crop + normalise"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn train_refuses_a_bad_image_by_name_and_writes_nothing() {
    let root = std::env::temp_dir().join(format!("octconv-bad-image-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    imagenet_layout(&root.join("data"));
    std::fs::write(root.join("data/train/n02/3.JPEG"), b"").unwrap();
    let run = root.join("run");
    let o = train(&root, &["--batch", "4"]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("train/n02/3.JPEG") && e.contains("is empty (0 bytes)"),
        "{e}"
    );
    assert!(!run.exists(), "the run directory was created");
    // With the file repaired the same command trains and evaluates on val/.
    image::RgbImage::from_pixel(64, 80, image::Rgb([10, 20, 30]))
        .save(root.join("data/train/n02/3.JPEG"))
        .unwrap();
    let o = train(
        &root,
        &["--batch", "4", "--norm", "imagenet", "--data-threads", "2"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("12 train / 4 test images"),
        "{}",
        stderr(&o)
    );
    // A model with more outputs than the data has classes is refused by eval too.
    let three = root.join("three.oct");
    std::fs::write(&three, SPEC.replace("linear(2)", "linear(3)")).unwrap();
    let o = octconv(&[
        "eval",
        three.to_str().unwrap(),
        "--weights",
        run.join("best.safetensors").to_str().unwrap(),
        "--data",
        &format!("folder:{}", root.join("data").display()),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("has 2 classes"), "{}", stderr(&o));
}

#[test]
fn a_corrupt_image_that_passes_the_probe_stops_train_before_it_writes() {
    let root = std::env::temp_dir().join(format!("octconv-corrupt-image-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    imagenet_layout(&root.join("data"));
    // JPEG start and end markers around garbage: the probe passes, decoding fails while `train`
    // measures the normalisation, before the run directory exists.
    let mut garbage = vec![0xff, 0xd8, 0xff, 0xe0];
    garbage.extend((0..300u32).map(|i| (i * 37 % 251) as u8));
    garbage.extend([0xff, 0xd9]);
    std::fs::write(root.join("data/train/n01/2.JPEG"), garbage).unwrap();
    let run = root.join("run");
    let o = train(&root, &[]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("train/n01/2.JPEG") && e.contains("corrupt"),
        "{e}"
    );
    assert!(!run.exists(), "the run directory was created");
}
