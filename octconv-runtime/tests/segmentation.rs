//! Segmentation end to end on generated data (discs and squares on noise): the `seg:` reader and
//! its errors, joint augmentation geometry, the ignore index in the loss and the metrics against
//! hand-computed cases, the loss gradient against finite differences, and a short U-Net run that
//! beats the best constant predictor's mean IoU.

use candle_core::{Device, Tensor, Var};
use octconv_runtime::data::seg::{decode_mask, IGNORE};
use octconv_runtime::data::synthetic::shapes;
use octconv_runtime::data::transform::{crop_resize_nearest, CropBox};
use octconv_runtime::data::{Batcher, DataSource, Norm, Split};
use octconv_runtime::segment::{Confusion, SegLoss};
use octconv_runtime::train::{Finish, TrainConfig, Trainer};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("octconv-seg-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn load(root: &Path, size: usize) -> Split {
    let mut split = DataSource::Seg(root.to_path_buf()).load().unwrap();
    split.fit_to([3, size, size]).unwrap();
    split
}

#[test]
fn generated_shapes_load_with_their_classes_and_masks() {
    let root = dir("load");
    shapes(&root, 6, 2, 40, 1).unwrap();
    let split = load(&root, 32);
    assert!(split.is_segmentation());
    assert_eq!(split.train.classes, ["background", "disc", "square"]);
    assert_eq!((split.train.len(), split.test.len()), (6, 2));
    let b = Batcher::new(&split.train, true, Norm::Data).unwrap();
    let all: Vec<usize> = (0..6).collect();
    let batch = b
        .batch_host(&split.train, &all, &mut ChaCha8Rng::seed_from_u64(0))
        .unwrap();
    assert_eq!(batch.y_shape, [6, 32, 32]);
    let mut seen = [false; 256];
    for &v in &batch.y {
        seen[v as usize] = true;
    }
    assert!(seen[0] && seen[1] && seen[2] && seen[IGNORE as usize]);
    assert_eq!(seen.iter().filter(|&&s| s).count(), 4);
}

/// Image pixels encode their mask: grey 60 · class (ignore: 255 → white).
fn coded_pair(root: &Path, w: u32, h: u32, rng: &mut ChaCha8Rng) {
    for split in ["train", "val"] {
        std::fs::create_dir_all(root.join(split).join("images")).unwrap();
        std::fs::create_dir_all(root.join(split).join("masks")).unwrap();
        // Blocks of 8 × 8 pixels of one random class.
        let classes: Vec<u8> = (0..(w / 8) * (h / 8))
            .map(|_| rng.random_range(0..4u8))
            .collect();
        let class = |x: u32, y: u32| classes[((y / 8) * (w / 8) + x / 8) as usize];
        image::GrayImage::from_fn(w, h, |x, y| image::Luma([class(x, y) * 60]))
            .save(root.join(split).join("masks/a.png"))
            .unwrap();
        image::RgbImage::from_fn(w, h, |x, y| {
            let v = class(x, y) * 60;
            image::Rgb([v, v, v])
        })
        .save(root.join(split).join("images/a.png"))
        .unwrap();
    }
}

#[test]
fn joint_augmentation_crops_scales_and_flips_image_and_mask_alike() {
    let root = dir("joint");
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    coded_pair(&root, 96, 64, &mut rng);
    let mut split = DataSource::Seg(root.clone()).load().unwrap();
    split.set_classes(181).unwrap();
    split.fit_to([3, 48, 48]).unwrap();
    let ds = &split.train;
    let b = Batcher::with_stats(ds, true, vec![0.0; 3], vec![1.0; 3]);
    let mut checked = 0;
    for seed in 0..12 {
        let batch = b
            .batch_host(ds, &[0], &mut ChaCha8Rng::seed_from_u64(seed))
            .unwrap();
        let (x, y) = (&batch.x[..48 * 48], &batch.y);
        for py in 1..47 {
            for px in 1..47 {
                // Away from block edges (all neighbours one class) the image value is the mask's.
                let c = y[py * 48 + px];
                let uniform = (0..9).all(|k| y[(py + k / 3 - 1) * 48 + px + k % 3 - 1] == c);
                if uniform {
                    let want = c as f32 / 255.0;
                    assert!(
                        (x[py * 48 + px] - want).abs() < 0.02,
                        "seed {seed} ({px}, {py}): image {} mask {c}",
                        x[py * 48 + px]
                    );
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 5000, "{checked}");
}

#[test]
fn joint_flips_happen_and_mirror_image_and_mask_together() {
    // Mask class = column / 8 (0 … 11 left to right), image grey = 20 × class: after the joint
    // transform a mask row runs up (kept) or down (flipped), and the image row runs the same way.
    let root = dir("flip");
    for split in ["train", "val"] {
        std::fs::create_dir_all(root.join(split).join("images")).unwrap();
        std::fs::create_dir_all(root.join(split).join("masks")).unwrap();
        image::GrayImage::from_fn(96, 64, |x, _| image::Luma([(x / 8) as u8]))
            .save(root.join(split).join("masks/a.png"))
            .unwrap();
        image::RgbImage::from_fn(96, 64, |x, _| {
            let v = (x / 8) as u8 * 20;
            image::Rgb([v, v, v])
        })
        .save(root.join(split).join("images/a.png"))
        .unwrap();
    }
    let mut split = DataSource::Seg(root).load().unwrap();
    split.set_classes(12).unwrap();
    split.fit_to([3, 48, 48]).unwrap();
    let ds = &split.train;
    let b = Batcher::with_stats(ds, true, vec![0.0; 3], vec![1.0; 3]);
    let mut flipped = 0;
    for seed in 0..24 {
        let batch = b
            .batch_host(ds, &[0], &mut ChaCha8Rng::seed_from_u64(seed))
            .unwrap();
        let row = &batch.y[24 * 48..25 * 48];
        let img = &batch.x[24 * 48..25 * 48];
        let (first, last) = (row[0], row[47]);
        assert_ne!(first, last, "seed {seed}: the crop spans several classes");
        let down = first > last;
        flipped += down as usize;
        assert_eq!(
            img[0] > img[47],
            down,
            "seed {seed}: image and mask disagree"
        );
    }
    assert!((4..=20).contains(&flipped), "{flipped} of 24 flipped");
}

#[test]
fn nearest_resizing_never_invents_a_class_index() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let (w, h) = (37, 23);
    let values = [3u8, 7, 200];
    let mask: Vec<u8> = (0..w * h).map(|_| values[rng.random_range(0..3)]).collect();
    let mut resizer = fast_image_resize::Resizer::new();
    for _ in 0..50 {
        let bw = rng.random_range(4.0..w as f64);
        let bh = rng.random_range(4.0..h as f64);
        let crop = CropBox {
            left: rng.random_range(0.0..=w as f64 - bw),
            top: rng.random_range(0.0..=h as f64 - bh),
            width: bw,
            height: bh,
        };
        let (ow, oh) = (rng.random_range(5..60), rng.random_range(5..60));
        let out = crop_resize_nearest(&mask, w, h, crop, ow, oh, &mut resizer).unwrap();
        assert_eq!(out.len(), ow * oh);
        assert!(out.iter().all(|v| values.contains(v)), "{out:?}");
    }
}

#[test]
fn the_loss_ignores_pixels_and_weights_classes_as_computed_by_hand() {
    // One image of 1 × 3 pixels, two classes; logits per pixel (class 0, class 1).
    let logits = Tensor::new(&[[[[2f32, 0.0, 1.0]], [[0f32, 1.0, 1.0]]]], &Device::Cpu).unwrap();
    let target = Tensor::new(&[[[0u32, 1, IGNORE as u32]]], &Device::Cpu).unwrap();
    let ls = |a: f64, b: f64| -> (f64, f64) {
        let z = (a.exp() + b.exp()).ln();
        (a - z, b - z)
    };
    let p0 = ls(2.0, 0.0).0; // pixel 0, true class 0
    let p1 = ls(0.0, 1.0).1; // pixel 1, true class 1
    let plain = SegLoss::default().loss(&logits, &target).unwrap();
    let want = -(p0 + p1) / 2.0;
    assert!((plain.to_scalar::<f32>().unwrap() as f64 - want).abs() < 1e-6);
    // Weights 1 and 3: (−1·p0 − 3·p1) / (1 + 3), as PyTorch's weighted mean.
    let weighted = SegLoss {
        class_weights: Some(vec![1.0, 3.0]),
        dice: 0.0,
    }
    .loss(&logits, &target)
    .unwrap();
    let want = -(p0 + 3.0 * p1) / 4.0;
    assert!((weighted.to_scalar::<f32>().unwrap() as f64 - want).abs() < 1e-6);
    // Dice: softmax probabilities of the two counted pixels against one-hot targets.
    let s = |a: f64, b: f64| (a.exp() / (a.exp() + b.exp()), b.exp() / (a.exp() + b.exp()));
    let (q0, q1) = (s(2.0, 0.0), s(0.0, 1.0));
    let d0 = (2.0 * q0.0 + 1.0) / (q0.0 + q1.0 + 1.0 + 1.0);
    let d1 = (2.0 * q1.1 + 1.0) / (q0.1 + q1.1 + 1.0 + 1.0);
    let dice = SegLoss {
        class_weights: None,
        dice: 0.5,
    }
    .loss(&logits, &target)
    .unwrap();
    let want = -(p0 + p1) / 2.0 + 0.5 * (1.0 - (d0 + d1) / 2.0);
    assert!((dice.to_scalar::<f32>().unwrap() as f64 - want).abs() < 1e-6);
    // Every pixel ignored: loss 0, not NaN.
    let none = Tensor::new(&[[[IGNORE as u32; 3]]], &Device::Cpu).unwrap();
    assert_eq!(
        SegLoss::default()
            .loss(&logits, &none)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap(),
        0.0
    );
}

#[test]
fn metrics_skip_ignored_pixels_as_computed_by_hand() {
    let mut c = Confusion::new(3);
    // target: 0 1 255 1 2 ; prediction: 0 1 1 0 1
    c.add(&[0, 1, 1, 0, 1], &[0, 1, IGNORE as u32, 1, 2]);
    // Counted: (0→0), (1→1), (1→0), (2→1): 2 of 4 correct.
    assert_eq!(c.pixel_accuracy(), 0.5);
    // IoU 0: tp 1 / (truth 1 + predicted 2 − 1) = 1/2; IoU 1: 1 / (2 + 2 − 1) = 1/3; IoU 2: 0/1.
    let iou = c.iou();
    assert_eq!(iou, [Some(0.5), Some(1.0 / 3.0), Some(0.0)]);
    assert!((c.mean_iou() - (0.5 + 1.0 / 3.0) / 3.0).abs() < 1e-12);
    // A class that neither occurs nor is predicted has no IoU and is left out of the mean.
    let mut d = Confusion::new(3);
    d.add(&[0, 1], &[0, 1]);
    assert_eq!(d.iou(), [Some(1.0), Some(1.0), None]);
    assert_eq!(d.mean_iou(), 1.0);
}

#[test]
fn loss_gradient_matches_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let vals: Vec<f32> = (0..2 * 3 * 2 * 2)
        .map(|_| rng.random_range(-2.0..2.0))
        .collect();
    let target = Tensor::new(
        &[[[0u32, 2], [IGNORE as u32, 1]], [[1, 1], [2, 0]]],
        &Device::Cpu,
    )
    .unwrap();
    let loss = SegLoss {
        class_weights: Some(vec![1.0, 2.0, 0.5]),
        dice: 0.7,
    };
    let x = Var::from_tensor(&Tensor::from_vec(vals.clone(), (2, 3, 2, 2), &Device::Cpu).unwrap())
        .unwrap();
    let l = loss.loss(x.as_tensor(), &target).unwrap();
    let grad: Vec<f32> = l
        .backward()
        .unwrap()
        .get(&x)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let f = |v: &[f32]| -> f64 {
        let t = Tensor::from_vec(v.to_vec(), (2, 3, 2, 2), &Device::Cpu).unwrap();
        loss.loss(&t, &target).unwrap().to_scalar::<f32>().unwrap() as f64
    };
    let eps = 1e-2f32;
    for i in 0..vals.len() {
        let (mut up, mut down) = (vals.clone(), vals.clone());
        up[i] += eps;
        down[i] -= eps;
        let fd = (f(&up) - f(&down)) / (2.0 * eps as f64);
        assert!(
            (fd - grad[i] as f64).abs() < 2e-3,
            "logit {i}: {fd} vs {}",
            grad[i]
        );
    }
}

#[test]
fn bad_pairs_are_errors_naming_the_file() {
    let root = dir("bad");
    shapes(&root, 3, 1, 24, 2).unwrap();
    let err = |root: &Path| {
        format!(
            "{:#}",
            DataSource::Seg(root.to_path_buf()).load().unwrap_err()
        )
    };
    std::fs::remove_file(root.join("train/masks/0001.png")).unwrap();
    let e = err(&root);
    assert!(
        e.contains("train/images/0001.png") && e.contains("has no mask"),
        "{e}"
    );
    image::GrayImage::new(20, 24)
        .save(root.join("train/masks/0001.png"))
        .unwrap();
    let e = err(&root);
    assert!(
        e.contains("0001.png") && e.contains("24×24") && e.contains("20×24"),
        "{e}"
    );
    image::GrayImage::from_pixel(24, 24, image::Luma([7]))
        .save(root.join("train/masks/0001.png"))
        .unwrap();
    // Index 7 with classes.txt naming 3 classes.
    let e = err(&root);
    assert!(
        e.contains("names 3 classes") && e.contains("index 7"),
        "{e}"
    );
    std::fs::remove_file(root.join("classes.txt")).unwrap();
    let mut split = DataSource::Seg(root.clone()).load().unwrap();
    let e = split.set_classes(3).unwrap_err().to_string();
    assert!(
        e.contains("train/masks/0001.png") && e.contains("index 7"),
        "{e}"
    );
    std::fs::write(root.join("val/masks/0000.png"), b"").unwrap();
    let e = err(&root);
    assert!(
        e.contains("val/masks/0000.png") && e.contains("empty"),
        "{e}"
    );
    std::fs::remove_file(root.join("val/images/0000.png")).unwrap();
    let e = err(&root);
    assert!(
        e.contains("val/masks/0000.png") && e.contains("has no image"),
        "{e}"
    );
}

#[test]
fn palette_masks_are_read_as_indices() {
    // A 4-bit palette PNG whose palette maps index 2 to red: the mask value is 2, not a colour.
    let mut bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut bytes, 5, 2);
        enc.set_color(png::ColorType::Indexed);
        enc.set_depth(png::BitDepth::Four);
        enc.set_palette(vec![0, 0, 0, 0, 255, 0, 255, 0, 0]);
        let mut w = enc.write_header().unwrap();
        // Rows of 5 pixels at 4 bits: 0 1 2 1 0 and 2 2 0 0 1.
        w.write_image_data(&[0x01, 0x21, 0x00, 0x22, 0x00, 0x10])
            .unwrap();
    }
    let m = decode_mask(&bytes).unwrap();
    assert_eq!((m.width, m.height), (5, 2));
    assert_eq!(m.indices, [0, 1, 2, 1, 0, 2, 2, 0, 0, 1]);
}

fn unet_config(epochs: usize) -> TrainConfig {
    TrainConfig {
        model: "unet".into(),
        data: "shapes".into(),
        epochs,
        batch: 8,
        lr: 0.1,
        milestones: vec![],
        gamma: 0.1,
        cosine: true,
        warmup: 0.0,
        momentum: 0.9,
        nesterov: false,
        weight_decay: 1e-4,
        decay_bn_and_bias: false,
        seed: 1,
        augment: true,
        norm: Norm::Data,
        init: None,
        seg_loss: SegLoss {
            class_weights: Some(vec![0.5, 1.0, 1.0]),
            dice: 0.5,
        },
        train_limit: None,
        test_limit: None,
    }
}

#[test]
fn a_resumed_segmentation_run_ends_with_the_weights_of_an_uninterrupted_one() {
    let root = dir("resume");
    shapes(&root.join("data"), 16, 4, 32, 6).unwrap();
    let data = load(&root.join("data"), 32);
    let ir = octconv_spec::check_builtin(
        "unet(base = 4, depth = 1, alpha = 0.25, size = 32, classes = 3)",
    )
    .model
    .expect("valid");
    let whole = root.join("whole");
    Trainer::new(ir.clone(), unet_config(2), &whole, &data, false)
        .unwrap()
        .run(&data, &AtomicBool::new(false), |_| {})
        .unwrap();
    let parts = root.join("parts");
    let stop = AtomicBool::new(false);
    let fin = Trainer::new(ir.clone(), unet_config(2), &parts, &data, false)
        .unwrap()
        .run(&data, &stop, |e| {
            if let octconv_runtime::train::Event::Batch {
                epoch: 1, batch: 0, ..
            } = e
            {
                stop.store(true, std::sync::atomic::Ordering::SeqCst)
            }
        })
        .unwrap();
    assert_eq!(fin, Finish::Interrupted { epoch: 1, batch: 1 });
    Trainer::new(ir, unet_config(2), &parts, &data, true)
        .unwrap()
        .run(&data, &AtomicBool::new(false), |_| {})
        .unwrap();
    let read = |d: &Path| std::fs::read(d.join("final.safetensors")).unwrap();
    assert!(read(&whole) == read(&parts), "resumed weights differ");
}

#[test]
fn a_short_unet_run_beats_the_best_constant_predictor() {
    let root = dir("train");
    shapes(&root.join("data"), 48, 12, 32, 5).unwrap();
    let mut data = load(&root.join("data"), 32);
    data.set_classes(3).unwrap();
    let c = octconv_spec::check_builtin(
        "unet(base = 8, depth = 2, alpha = 0.25, size = 32, classes = 3)",
    );
    let ir = c.model.expect("valid");
    let cfg = TrainConfig {
        seg_loss: SegLoss {
            class_weights: None,
            dice: 0.5,
        },
        ..unet_config(15)
    };
    let run = root.join("run");
    let mut t = Trainer::new(ir, cfg, &run, &data, false).unwrap();
    let mut last = None;
    let fin = t
        .run(&data, &AtomicBool::new(false), |e| {
            if let octconv_runtime::train::Event::Epoch(r) = e {
                last = Some(r.clone());
            }
        })
        .unwrap();
    assert_eq!(fin, Finish::Completed);
    let r = last.unwrap();
    // The best constant predictor on the validation masks: every pixel the most frequent class.
    let plain = Batcher::with_stats(&data.test, false, vec![0.0; 3], vec![1.0; 3]);
    let all: Vec<usize> = (0..data.test.len()).collect();
    let y = plain
        .batch_host(&data.test, &all, &mut ChaCha8Rng::seed_from_u64(0))
        .unwrap()
        .y;
    let best_constant = (0..3u32)
        .map(|k| {
            let mut c = Confusion::new(3);
            c.add(&vec![k; y.len()], &y);
            c.mean_iou()
        })
        .fold(0.0, f64::max);
    let miou = r.test_miou.unwrap();
    assert!(
        miou > best_constant + 0.1,
        "mean IoU {miou:.3} vs constant {best_constant:.3}"
    );
}
