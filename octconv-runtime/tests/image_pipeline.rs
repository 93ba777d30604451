//! The streaming image pipeline: decoding (grey and CMYK JPEGs to RGB, bad files named), the crop
//! geometry of torchvision's `RandomResizedCrop` and `Resize` + `CenterCrop` checked by hand, and
//! batches that depend on the seed only, never on the number of worker threads.

use octconv_runtime::data::decode::{decode, probe, Decoder, ImageFile, Source};
use octconv_runtime::data::transform::{
    random_resized_crop, resize_center_crop, CropBox, CropDraws, RngDraws,
};
use octconv_runtime::data::{Batcher, DataSource, Norm};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/images")
            .join(name),
    )
    .unwrap()
}

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("octconv-pipeline-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn jpeg(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x * 7 + y * 3) as u8, (x * y) as u8, (255 - x - y) as u8])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
    out.into_inner()
}

fn in_memory(name: &str, bytes: Vec<u8>) -> ImageFile {
    ImageFile {
        name: name.into(),
        source: Source::Bytes(Arc::from(bytes)),
    }
}

#[test]
fn grey_and_cmyk_jpegs_decode_to_the_rgb_that_pillow_reads() {
    // bench/make_image_fixtures.py wrote both from the flat colour (200, 100, 50); Pillow reads the
    // CMYK file back as (200, 100, 50) and the grey one as (124, 124, 124).
    for (name, want) in [("cmyk.jpg", [200, 100, 50]), ("grey.jpg", [124, 124, 124])] {
        for decoder in [Decoder::Zune, Decoder::Image] {
            let d = decode(&fixture(name), 3, decoder).unwrap();
            assert_eq!((d.width, d.height, d.channels), (24, 16, 3), "{name}");
            let px = &d.pixels[(5 * 24 + 5) * 3..][..3];
            for (got, want) in px.iter().zip(want) {
                assert!(
                    (*got as i32 - want).abs() <= 3,
                    "{name} {decoder:?}: {px:?} vs {want:?}"
                );
            }
        }
    }
    // One grey conversion for every format and decoder: ITU-R 601 luma of (200, 100, 50) is
    // 0.299·200 + 0.587·100 + 0.114·50 = 124.2 → 124.
    let mut png = std::io::Cursor::new(Vec::new());
    image::RgbImage::from_pixel(24, 16, image::Rgb([200, 100, 50]))
        .write_to(&mut png, image::ImageFormat::Png)
        .unwrap();
    let exact = decode(png.get_ref(), 1, Decoder::Zune).unwrap();
    assert_eq!(exact.pixels.len(), 24 * 16);
    assert!(
        exact.pixels.iter().all(|&v| v == 124),
        "{:?}",
        &exact.pixels[..4]
    );
    for decoder in [Decoder::Zune, Decoder::Image] {
        let grey = decode(&fixture("cmyk.jpg"), 1, decoder).unwrap();
        assert_eq!(grey.pixels.len(), 24 * 16);
        assert!(
            (grey.pixels[5 * 24 + 5] as i32 - 124).abs() <= 3,
            "{decoder:?}: {}",
            grey.pixels[5 * 24 + 5]
        );
    }
}

#[test]
fn truncated_and_corrupt_jpegs_are_errors_naming_the_file() {
    let good = jpeg(64, 48);
    assert!(probe(&in_memory("good.jpg", good.clone())).is_ok());
    let cut = in_memory("photos/cut.jpg", good[..good.len() / 2].to_vec());
    let e = format!("{:#}", probe(&cut).unwrap_err());
    assert!(
        e.contains("photos/cut.jpg") && e.contains("truncated"),
        "{e}"
    );
    // A JPEG start and end marker around garbage: the probe passes, the decoder refuses.
    let mut garbage = vec![0xff, 0xd8, 0xff, 0xe0];
    garbage.extend((0..200u32).map(|i| (i * 37 % 251) as u8));
    garbage.extend([0xff, 0xd9]);
    let garbage = in_memory("photos/garbage.jpg", garbage);
    assert!(probe(&garbage).is_ok());
    let e = format!("{:#}", garbage.decode(3, Decoder::Zune).unwrap_err());
    assert!(
        e.contains("photos/garbage.jpg") && e.contains("corrupt"),
        "{e}"
    );
    let e = format!(
        "{:#}",
        probe(&in_memory("x.jpg", b"GIF89a....".to_vec())).unwrap_err()
    );
    assert!(e.contains("x.jpg") && e.contains("not an image"), "{e}");
}

#[test]
fn resize_and_center_crop_box_is_torchvisions() {
    // Resize(256) of 500 × 375: 341 × 256 (int(256 · 500 / 375)); CenterCrop(224) starts at
    // round((341 − 224) / 2) = round(58.5) = 58 (Python rounds halves to even) and (256 − 224) / 2
    // = 16. In source pixels: × 500 / 341 and × 375 / 256.
    let b = resize_center_crop(500, 375, 256, 224, 224);
    let (sx, sy) = (341.0 / 500.0, 256.0 / 375.0);
    let want = CropBox {
        left: 58.0 / sx,
        top: 16.0 / sy,
        width: 224.0 / sx,
        height: 224.0 / sy,
    };
    for (g, w) in [
        (b.left, want.left),
        (b.top, want.top),
        (b.width, want.width),
        (b.height, want.height),
    ] {
        assert!((g - w).abs() < 1e-9, "{b:?} vs {want:?}");
    }
}

#[test]
fn eval_crop_boxes_stay_inside_images_of_awkward_sizes() {
    // A short side resized exactly to the crop (CIFAR inputs) can overshoot the image by an ulp in
    // float arithmetic; the box must stay inside, and a 49 × 49 image must batch at 32 × 32.
    for w in 20..130 {
        for h in [w, w + 7, 2 * w + 1] {
            for out in [28, 32, 224] {
                let b = resize_center_crop(w, h, out, out, out);
                assert!(b.left >= 0.0 && b.top >= 0.0, "{w}×{h} → {out}: {b:?}");
                assert!(
                    b.left + b.width <= w as f64 && b.top + b.height <= h as f64,
                    "{w}×{h} → {out}: {b:?}"
                );
            }
        }
    }
    let root = dir("awkward");
    for split in ["train", "val"] {
        let d = root.join(split).join("x");
        std::fs::create_dir_all(&d).unwrap();
        image::RgbImage::from_pixel(49, 49, image::Rgb([9, 9, 9]))
            .save(d.join("0.png"))
            .unwrap();
    }
    let mut split = DataSource::Folder(root).load().unwrap();
    split.fit_to([3, 32, 32]).unwrap();
    let b = Batcher::new(&split.train, true, Norm::Data).unwrap();
    b.batch_host(&split.train, &[0], &mut ChaCha8Rng::seed_from_u64(0))
        .unwrap();
}

#[test]
fn random_resized_crop_stays_inside_with_its_scale_and_ratio() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let (w, h) = (400usize, 300usize);
    let mut areas = Vec::new();
    for _ in 0..2000 {
        let b = random_resized_crop(
            w,
            h,
            (0.08, 1.0),
            (0.75, 4.0 / 3.0),
            &mut RngDraws(&mut rng),
        );
        assert!(b.left >= 0.0 && b.top >= 0.0, "{b:?}");
        assert!(
            b.left + b.width <= w as f64 && b.top + b.height <= h as f64,
            "{b:?}"
        );
        let area = b.width * b.height / (w * h) as f64;
        let ratio = b.width / b.height;
        // Rounding to whole pixels moves the area and ratio a little.
        assert!((0.075..=1.0).contains(&area), "{b:?}");
        assert!((0.72..=1.39).contains(&ratio), "{b:?}");
        areas.push(area);
    }
    let mean = areas.iter().sum::<f64>() / areas.len() as f64;
    assert!(mean > 0.35 && mean < 0.65, "mean area {mean}");
    // No box of a 1000 × 10 strip has the ratio: the fallback is the central 13 × 10 crop
    // (10 · 4/3 rounded), at left (1000 − 13) / 2 = 493.
    let b = random_resized_crop(
        1000,
        10,
        (0.08, 1.0),
        (0.75, 4.0 / 3.0),
        &mut RngDraws(&mut rng),
    );
    assert_eq!(
        b,
        CropBox {
            left: 493.0,
            top: 0.0,
            width: 13.0,
            height: 10.0
        }
    );
}

/// `train/a/*.png` and `val/a/*.png` of several sizes, plus a class `b`.
fn varied_folder(root: &Path) {
    for split in ["train", "val"] {
        for (c, class) in ["a", "b"].iter().enumerate() {
            let d = root.join(split).join(class);
            std::fs::create_dir_all(&d).unwrap();
            for i in 0..5u32 {
                let (w, h) = (90 + 17 * i, 120 - 9 * i);
                let img = image::RgbImage::from_fn(w, h, |x, y| {
                    image::Rgb([(x + 40 * c as u32) as u8, y as u8, (i * 40) as u8])
                });
                img.save(d.join(format!("{i}.png"))).unwrap();
            }
        }
    }
}

#[test]
fn batches_depend_on_the_seed_not_on_the_thread_count() {
    let root = dir("threads");
    varied_folder(&root);
    let mut split = DataSource::Folder(root).load().unwrap();
    split.fit_to([3, 72, 72]).unwrap();
    let ds = &split.train;
    let batcher = Batcher::new(ds, true, Norm::Imagenet).unwrap();
    let all: Vec<usize> = (0..ds.len()).collect();
    let draw = |threads: usize, seed: u64| {
        let b = batcher.clone().with_threads(threads).unwrap();
        b.batch_host(ds, &all, &mut ChaCha8Rng::seed_from_u64(seed))
            .unwrap()
    };
    let one = draw(1, 3);
    assert_eq!(one.shape, [10, 3, 72, 72]);
    assert_eq!(one, draw(3, 3));
    assert_ne!(one.x, draw(1, 4).x);
    // Normalised with ImageNet's statistics: pixel p of channel 0 is (p / 255 − 0.485) / 0.229.
    let lo = (0.0 - 0.485) / 0.229;
    let hi = (1.0 - 0.485) / 0.229;
    assert!(one.x.iter().all(|v| (lo - 1e-5..=hi + 1e-5).contains(v)));
    // Measured statistics of the evaluation crops have mean 0 and deviation 1 by construction.
    let measured = Batcher::new(ds, false, Norm::Data).unwrap();
    let b = measured
        .batch_host(ds, &all, &mut ChaCha8Rng::seed_from_u64(0))
        .unwrap();
    let n = b.x.len() as f64;
    let mean = b.x.iter().map(|&v| v as f64).sum::<f64>() / n;
    assert!(mean.abs() < 1e-3, "{mean}");
}

#[test]
fn the_eval_crop_takes_the_middle_and_the_flip_mirrors() {
    // 100 × 50: the left half red, the right half blue. Its evaluation crop to 50 × 50 (short side
    // kept, the center 50 columns) is red left of column 25 and blue right of it.
    let root = dir("geometry");
    for split in ["train", "val"] {
        let d = root.join(split).join("x");
        std::fs::create_dir_all(&d).unwrap();
        image::RgbImage::from_fn(100, 50, |x, _| {
            image::Rgb(if x < 50 { [255, 0, 0] } else { [0, 0, 255] })
        })
        .save(d.join("0.png"))
        .unwrap();
    }
    let mut split = DataSource::Folder(root).load().unwrap();
    split.fit_to([3, 50, 50]).unwrap();
    let ds = &split.train;
    let plain = Batcher::with_stats(ds, false, vec![0.0; 3], vec![1.0; 3]);
    let x = plain
        .batch_host(ds, &[0], &mut ChaCha8Rng::seed_from_u64(0))
        .unwrap()
        .x;
    let (red, blue) = (&x[..2500], &x[5000..]);
    for y in [0, 25, 49] {
        assert!(
            red[y * 50 + 20] > 0.99 && blue[y * 50 + 20] < 0.01,
            "row {y}"
        );
        assert!(
            red[y * 50 + 30] < 0.01 && blue[y * 50 + 30] > 0.99,
            "row {y}"
        );
    }
    // Augmented (pad-and-crop geometry at 50 × 50): red stays on one side, blue on the other;
    // flipped batches put blue on the left.
    let aug = Batcher::with_stats(ds, true, vec![0.0; 3], vec![1.0; 3]);
    let mut flipped = 0;
    for seed in 0..20 {
        let x = aug
            .batch_host(ds, &[0], &mut ChaCha8Rng::seed_from_u64(seed))
            .unwrap()
            .x;
        let row = &x[25 * 50..26 * 50];
        if row[10] < 0.01 && row[40] > 0.99 {
            flipped += 1;
        } else {
            assert!(row[10] > 0.99 && row[40] < 0.01, "seed {seed}: {row:?}");
        }
    }
    assert!((3..=17).contains(&flipped), "{flipped} of 20 flipped");
}

#[test]
fn imagenet_statistics_need_rgb_input() {
    let root = dir("grey");
    varied_folder(&root);
    let mut split = DataSource::Folder(root).load().unwrap();
    split.fit_to([1, 72, 72]).unwrap();
    let e = Batcher::new(&split.train, false, Norm::Imagenet).unwrap_err();
    assert!(e.to_string().contains("--norm data"), "{e}");
    let e = split.fit_to([4, 72, 72]).unwrap_err();
    assert!(e.to_string().contains("4 channels"), "{e}");
}

#[test]
fn a_directory_split_holds_file_paths_not_pixels() {
    // Streaming: loading a directory keeps one path per image and no image bytes, so memory does
    // not grow with the pixels (batches are decoded on demand, at most two ahead of the step).
    let root = dir("paths");
    varied_folder(&root);
    let split = DataSource::Folder(root).load().unwrap();
    for ds in [&split.train, &split.test] {
        let octconv_runtime::data::Images::Files(files) = &ds.images else {
            panic!("a folder must stream");
        };
        assert_eq!(files.len(), ds.len());
        assert!(!files.is_empty());
        assert!(files.iter().all(|f| matches!(f.source, Source::Path(_))));
    }
}

/// Draws recorded from torch's generator, replayed in order.
struct Replay(std::collections::VecDeque<f64>);

impl CropDraws for Replay {
    fn area_fraction(&mut self, _: f64, _: f64) -> f64 {
        self.0.pop_front().expect("a recorded area draw")
    }

    fn aspect(&mut self, _: f64, _: f64) -> f64 {
        self.0.pop_front().expect("a recorded aspect draw")
    }

    fn offset(&mut self, n: usize) -> usize {
        let v = self.0.pop_front().expect("a recorded offset") as usize;
        assert!(v <= n, "offset {v} beyond {n}");
        v
    }
}

#[test]
fn random_resized_crop_replays_torchvisions_boxes() {
    // bench/torchvision_crop_draws.py recorded torchvision 0.29's RandomResizedCrop.get_params
    // boxes with the draws that made them (fallback central crops of 1000 × 10 strips included).
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/torchvision_crops.json"),
    )
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cases = v["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 48);
    for c in cases {
        let (w, h) = (
            c["width"].as_u64().unwrap() as usize,
            c["height"].as_u64().unwrap() as usize,
        );
        let draws = c["draws"].as_array().unwrap();
        let mut replay = Replay(draws.iter().map(|d| d.as_f64().unwrap()).collect());
        let b = random_resized_crop(w, h, (0.08, 1.0), (0.75, 4.0 / 3.0), &mut replay);
        assert!(replay.0.is_empty(), "{c}: draws left over");
        let want = &c["box"];
        let got = [b.top, b.left, b.height, b.width].map(|x| x as u64);
        let want = ["top", "left", "height", "width"].map(|k| want[k].as_u64().unwrap());
        assert_eq!(got, want, "{w}×{h} seed {}", c["seed"]);
    }
}
