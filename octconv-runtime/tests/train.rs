//! Training on a tiny generated dataset: the loss falls, and a run interrupted and resumed ends with
//! exactly the weights of an uninterrupted run.

use octconv_runtime::data::{Dataset, Images, Split};
use octconv_runtime::train::{read_metrics, Event, Finish, TrainConfig, Trainer};
use std::sync::atomic::{AtomicBool, Ordering};

/// Class 0: bright top half; class 1: bright bottom half; with a little structured noise.
fn data(n: usize) -> Split {
    let make = |n: usize, offset: usize| {
        let mut images = Vec::new();
        let mut labels = Vec::new();
        for i in 0..n {
            let label = (i % 2) as u32;
            for c in 0..3 {
                for y in 0..8 {
                    for x in 0..8 {
                        let bright = (y < 4) == (label == 0);
                        let noise = ((i + offset) * 31 + c * 7 + y * 5 + x * 3) % 40;
                        images.push(if bright {
                            180 + noise as u8
                        } else {
                            40 + noise as u8
                        });
                    }
                }
            }
            labels.push(label);
        }
        Dataset {
            classes: vec!["top".into(), "bottom".into()],
            shape: [3, 8, 8],
            images: Images::Pixels(images),
            labels,
            masks: None,
        }
    };
    Split {
        train: make(n, 0),
        test: make(16, 1000),
    }
}

fn model() -> octconv_spec::Model {
    let c = octconv_spec::check_text(
        "t.oct",
        "model t() { input [3, 8, 8]; octconv(8, kernel = 3, alpha = 0.5); bn(); relu(); dropout(p = 0.1); merge(); global_avg_pool(); linear(2); }",
        None,
    );
    c.model.expect("valid")
}

fn config(epochs: usize) -> TrainConfig {
    TrainConfig {
        model: "t()".into(),
        data: "generated".into(),
        epochs,
        batch: 8,
        lr: 0.1,
        milestones: vec![3],
        gamma: 0.5,
        cosine: false,
        warmup: 0.0,
        momentum: 0.9,
        nesterov: true,
        weight_decay: 5e-4,
        decay_bn_and_bias: false,
        seed: 3,
        augment: true,
        norm: Default::default(),
        init: None,
        seg_loss: Default::default(),
        train_limit: None,
        test_limit: None,
    }
}

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("octconv-train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn smoke_training_run_learns_and_writes_its_files() {
    let d = data(64);
    let dir = tmp("smoke");
    let cfg = TrainConfig {
        augment: false,
        ..config(4)
    };
    let mut t = Trainer::new(model(), cfg.clone(), &dir, &d, false).unwrap();
    let mut epochs = 0;
    let fin = t
        .run(&d, &AtomicBool::new(false), |e| {
            if let Event::Epoch(_) = e {
                epochs += 1
            }
        })
        .unwrap();
    assert_eq!(fin, Finish::Completed);
    assert_eq!(epochs, 4);
    let m = read_metrics(&dir).unwrap();
    assert_eq!(m.len(), 4);
    assert!(
        m[3].train_loss < m[0].train_loss * 0.7,
        "loss did not fall: {m:?}"
    );
    assert!(m[3].test_acc >= 0.9, "{m:?}");
    for f in [
        "run.json",
        "checkpoint.safetensors",
        "best.safetensors",
        "final.safetensors",
    ] {
        assert!(dir.join(f).exists(), "{f}");
    }
    // A second start in the same directory refuses to overwrite it.
    let e = Trainer::new(model(), cfg, &dir, &d, false)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("--resume"), "{e}");
}

fn final_weights(dir: &std::path::Path) -> Vec<(String, Vec<f32>)> {
    let t =
        candle_core::safetensors::load(dir.join("final.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    let mut v: Vec<_> = t
        .into_iter()
        .map(|(k, t)| (k, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn resume_equals_an_uninterrupted_run() {
    let d = data(40);
    let whole = tmp("whole");
    Trainer::new(model(), config(3), &whole, &d, false)
        .unwrap()
        .run(&d, &AtomicBool::new(false), |_| {})
        .unwrap();
    // Interrupt in the middle of epoch 2 (batch 2 of 5), then resume twice more.
    let parts = tmp("parts");
    let stop = AtomicBool::new(false);
    let mut t = Trainer::new(model(), config(3), &parts, &d, false).unwrap();
    let fin = t
        .run(&d, &stop, |e| {
            if let Event::Batch {
                epoch: 1, batch: 1, ..
            } = e
            {
                stop.store(true, Ordering::SeqCst)
            }
        })
        .unwrap();
    assert_eq!(fin, Finish::Interrupted { epoch: 1, batch: 2 });
    drop(t);
    let mut t = Trainer::new(model(), config(3), &parts, &d, true).unwrap();
    assert_eq!(
        t.run(&d, &AtomicBool::new(false), |_| {}).unwrap(),
        Finish::Completed
    );
    assert_eq!(final_weights(&whole), final_weights(&parts));
    assert_eq!(read_metrics(&whole).unwrap(), {
        let mut m = read_metrics(&parts).unwrap();
        for r in &mut m {
            r.seconds = 0.0;
            r.images_per_s = 0.0;
        }
        let mut w = read_metrics(&whole).unwrap();
        for r in &mut w {
            r.seconds = 0.0;
            r.images_per_s = 0.0;
        }
        assert_eq!(m, w);
        read_metrics(&whole).unwrap()
    });
    // Resuming with other settings is refused.
    let mut other = config(3);
    other.lr = 0.2;
    let e = Trainer::new(model(), other, &parts, &d, true)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("different settings"), "{e}");
}

#[test]
fn an_interrupted_epoch_reports_the_time_before_and_after_the_interruption() {
    let d = data(40);
    let dir = tmp("seconds");
    let stop = AtomicBool::new(false);
    let mut t = Trainer::new(model(), config(1), &dir, &d, false).unwrap();
    // 0.3 s pass inside the epoch before the interruption; the rest of it takes milliseconds.
    let fin = t
        .run(&d, &stop, |e| {
            if let Event::Batch { batch: 1, .. } = e {
                std::thread::sleep(std::time::Duration::from_millis(300));
                stop.store(true, Ordering::SeqCst)
            }
        })
        .unwrap();
    assert_eq!(fin, Finish::Interrupted { epoch: 0, batch: 2 });
    drop(t);
    let mut t = Trainer::new(model(), config(1), &dir, &d, true).unwrap();
    assert_eq!(
        t.run(&d, &AtomicBool::new(false), |_| {}).unwrap(),
        Finish::Completed
    );
    let m = read_metrics(&dir).unwrap();
    assert_eq!(m.len(), 1);
    assert!(m[0].seconds >= 0.3, "epoch seconds {}", m[0].seconds);
    assert!(
        (m[0].images_per_s * m[0].seconds - 40.0).abs() < 1e-6,
        "{:?}",
        m[0]
    );
}

#[test]
fn a_diverging_run_stops_and_keeps_the_last_good_checkpoint() {
    let d = data(32);
    let dir = tmp("nan");
    let mut cfg = config(3);
    cfg.lr = 1e30;
    cfg.nesterov = false;
    let mut t = Trainer::new(model(), cfg, &dir, &d, false).unwrap();
    let fin = t.run(&d, &AtomicBool::new(false), |_| {}).unwrap();
    assert!(matches!(fin, Finish::Diverged { .. }), "{fin:?}");
    assert!(!dir.join("final.safetensors").exists());
}

/// `train/` and `val/` folders of PNGs of several sizes (two classes told apart by brightness).
fn image_folder(root: &std::path::Path) -> Split {
    for (split, n) in [("train", 16u32), ("val", 4)] {
        for (c, class) in ["dark", "light"].iter().enumerate() {
            let d = root.join(split).join(class);
            std::fs::create_dir_all(&d).unwrap();
            for i in 0..n {
                let (w, h) = (80 + 13 * (i % 4), 100 - 7 * (i % 3));
                image::RgbImage::from_fn(w, h, |x, y| {
                    let v = (60 + 120 * c as u32 + (x * 3 + y * 5 + i * 11) % 50) as u8;
                    image::Rgb([v, v / 2, 255 - v])
                })
                .save(d.join(format!("{i}.png")))
                .unwrap();
            }
        }
    }
    let mut split = octconv_runtime::data::DataSource::Folder(root.to_path_buf())
        .load()
        .unwrap();
    split.fit_to([3, 72, 72]).unwrap();
    split
}

#[test]
fn resume_on_streamed_images_with_resized_crops_equals_an_uninterrupted_run() {
    let root = tmp("folder-data");
    let d = image_folder(&root);
    let ir = octconv_spec::check_text(
        "t.oct",
        "model t() { input [3, 72, 72]; conv(4, kernel = 3, stride = 4); bn(); relu(); global_avg_pool(); linear(2); }",
        None,
    )
    .model
    .expect("valid");
    let cfg = TrainConfig {
        norm: octconv_runtime::data::Norm::Imagenet,
        ..config(2)
    };
    let whole = tmp("folder-whole");
    Trainer::new(ir.clone(), cfg.clone(), &whole, &d, false)
        .unwrap()
        .with_data_threads(1)
        .unwrap()
        .run(&d, &AtomicBool::new(false), |_| {})
        .unwrap();
    // Interrupted in epoch 2, resumed with another number of data threads.
    let parts = tmp("folder-parts");
    let stop = AtomicBool::new(false);
    let mut t = Trainer::new(ir.clone(), cfg.clone(), &parts, &d, false)
        .unwrap()
        .with_data_threads(3)
        .unwrap();
    let fin = t
        .run(&d, &stop, |e| {
            if let Event::Batch {
                epoch: 1, batch: 0, ..
            } = e
            {
                stop.store(true, Ordering::SeqCst)
            }
        })
        .unwrap();
    assert_eq!(fin, Finish::Interrupted { epoch: 1, batch: 1 });
    drop(t);
    let mut t = Trainer::new(ir, cfg, &parts, &d, true).unwrap();
    assert_eq!(
        t.run(&d, &AtomicBool::new(false), |_| {}).unwrap(),
        Finish::Completed
    );
    assert_eq!(final_weights(&whole), final_weights(&parts));
}

fn model_with(body: usize, classes: usize) -> octconv_spec::Model {
    octconv_spec::check_text(
        "t.oct",
        &format!("model t() {{ input [3, 8, 8]; octconv({body}, kernel = 3, alpha = 0.5); bn(); relu(); merge(); global_avg_pool(); linear({classes}); }}"),
        None,
    )
    .model
    .expect("valid")
}

#[test]
fn fine_tuning_takes_the_body_from_the_file_and_replaces_only_a_different_classifier() {
    use octconv_runtime::train::fine_tune_params;
    let d = data(16);
    let dir = tmp("fine-tune-source");
    Trainer::new(model(), config(1), &dir, &d, false)
        .unwrap()
        .run(&d, &AtomicBool::new(false), |_| {})
        .unwrap();
    let file = dir.join("final.safetensors");
    let saved =
        octconv_runtime::weights::read_safetensors(&file, &candle_core::Device::Cpu).unwrap();
    let values = |t: &candle_core::Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let fresh = |m: &octconv_spec::Model| {
        octconv_runtime::init::init_params(m, 9, candle_core::DType::F32, &candle_core::Device::Cpu)
            .unwrap()
    };
    // The same model: every tensor from the file, nothing replaced.
    let same = model_with(8, 2);
    let (p, replaced) = fine_tune_params(&same, fresh(&same), &file).unwrap();
    assert!(replaced.is_empty(), "{replaced:?}");
    assert_eq!(
        p.len(),
        saved.len() - 2,
        "all but the two normalisation entries"
    );
    for (k, v) in &p {
        assert_eq!(values(v), values(&saved[k]), "{k}");
    }
    // Five classes: the classifier starts from the seeded initialisation, the body from the file.
    let five = model_with(8, 5);
    let init = fresh(&five);
    let (p, replaced) = fine_tune_params(&five, init.clone(), &file).unwrap();
    assert_eq!(replaced.len(), 2, "{replaced:?}");
    assert!(
        replaced
            .iter()
            .any(|r| r.starts_with("linear0.weight [5, 8] (file: [2, 8])")),
        "{replaced:?}"
    );
    assert_eq!(
        values(&p["linear0.weight"]),
        values(&init["linear0.weight"])
    );
    assert_eq!(
        values(&p["octconv0.hh.weight"]),
        values(&saved["octconv0.hh.weight"])
    );
    // Another body is refused, naming the tensors.
    let wide = model_with(16, 2);
    let e = fine_tune_params(&wide, fresh(&wide), &file)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("octconv0.hh.weight") && e.contains("only its last layer"),
        "{e}"
    );
}
