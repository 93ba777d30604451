//! Dataset readers on generated files: CIFAR-10 batches, class folders (directory and .tar.gz), IDX;
//! their errors name the file; batching is seeded, normalised and augmented as documented.

use octconv_runtime::data::{epoch_order, Batcher, Crop, DataSource, Dataset, Images, Norm};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::io::Write;
use std::path::{Path, PathBuf};

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("octconv-data-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn cifar_batch(path: &Path, records: &[(u8, u8)]) {
    let mut bytes = Vec::new();
    for &(label, fill) in records {
        bytes.push(label);
        bytes.extend(std::iter::repeat_n(fill, 3072));
    }
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn cifar10_batches_are_read_and_bad_files_are_named() {
    let d = dir("cifar");
    for i in 1..=5 {
        cifar_batch(
            &d.join(format!("data_batch_{i}.bin")),
            &[(i as u8, 10 * i as u8), (0, 1)],
        );
    }
    cifar_batch(&d.join("test_batch.bin"), &[(9, 200)]);
    let split: DataSource = format!("cifar10:{}", d.display()).parse().unwrap();
    let s = split.load().unwrap();
    assert_eq!(
        (s.train.len(), s.test.len(), s.train.shape),
        (10, 1, [3, 32, 32])
    );
    assert_eq!(s.train.labels[..4], [1, 0, 2, 0]);
    assert!(s.train.image(2).unwrap().iter().all(|&p| p == 20));
    assert_eq!(s.test.classes[9], "truck");
    // Decoded sets are not resized: another input shape is an error naming both.
    let e = s.clone().fit_to([3, 16, 16]).unwrap_err().to_string();
    assert!(
        e.contains("takes [3, 16, 16]") && e.contains("[3, 32, 32]"),
        "{e}"
    );
    // Truncated file.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(d.join("data_batch_3.bin"))
        .unwrap();
    f.write_all(&[1, 2, 3]).unwrap();
    let e = split.load().unwrap_err().to_string();
    assert!(
        e.contains("data_batch_3.bin") && e.contains("truncated"),
        "{e}"
    );
    // Mislabelled record.
    cifar_batch(&d.join("data_batch_3.bin"), &[(3, 0), (12, 0)]);
    let e = split.load().unwrap_err().to_string();
    assert!(
        e.contains("data_batch_3.bin") && e.contains("record 1 has label 12"),
        "{e}"
    );
    std::fs::remove_file(d.join("test_batch.bin")).unwrap();
    cifar_batch(&d.join("data_batch_3.bin"), &[(3, 0)]);
    let e = format!("{:#}", split.load().unwrap_err());
    assert!(e.contains("test_batch.bin"), "{e}");
}

fn write_png(path: &Path, rgb: [u8; 3], w: u32, h: u32) {
    let img = image::RgbImage::from_pixel(w, h, image::Rgb(rgb));
    img.save(path).unwrap();
}

fn folder_layout(root: &Path) {
    for (split, n) in [("train", 3), ("test", 1)] {
        for (class, color) in [("cat", [200, 0, 0]), ("dog", [0, 100, 50])] {
            let d = root.join(split).join(class);
            std::fs::create_dir_all(&d).unwrap();
            for i in 0..n {
                write_png(&d.join(format!("{i}.png")), color, 8, 6);
            }
        }
    }
}

/// The eval-mode batch of every training image, unnormalised (pixels / 255).
fn pixels(split: &mut octconv_runtime::data::Split, shape: [usize; 3]) -> Vec<f32> {
    split.fit_to(shape).unwrap();
    let b = Batcher::with_stats(
        &split.train,
        false,
        vec![0.0; shape[0]],
        vec![1.0; shape[0]],
    );
    let all: Vec<usize> = (0..split.train.len()).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    b.batch_host(&split.train, &all, &mut rng).unwrap().x
}

#[test]
fn folder_and_tar_gz_give_the_same_images() {
    let root = dir("folder");
    folder_layout(&root);
    let mut from_dir = DataSource::Folder(root.clone()).load().unwrap();
    assert_eq!(from_dir.train.classes, ["cat", "dog"]);
    assert_eq!((from_dir.train.len(), from_dir.test.len()), (6, 2));
    assert_eq!(from_dir.train.labels, [0, 0, 0, 1, 1, 1]);
    // Planar CHW at the images' own size: the red plane of a cat is 200 everywhere, its green 0.
    let cat = pixels(&mut from_dir, [3, 6, 8]);
    assert!(cat[..48].iter().all(|&p| p == 200.0 / 255.0) && cat[48..96].iter().all(|&p| p == 0.0));
    let tgz = root.with_extension("tar.gz");
    let file = std::fs::File::create(&tgz).unwrap();
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        file,
        flate2::Compression::fast(),
    ));
    tar.append_dir_all("data", &root).unwrap();
    tar.into_inner().unwrap().finish().unwrap();
    let mut from_tar = DataSource::Folder(tgz).load().unwrap();
    assert_eq!(from_tar.train.labels, from_dir.train.labels);
    assert_eq!(pixels(&mut from_tar, [3, 6, 8]), cat);
    // Another input size: the images are resized (a flat colour stays that colour).
    let small = pixels(&mut from_dir, [3, 4, 4]);
    assert_eq!(small.len(), 6 * 3 * 16);
    assert!(
        small[..16]
            .iter()
            .all(|&p| (p - 200.0 / 255.0).abs() < 1e-6),
        "{:?}",
        &small[..16]
    );
    // Grey input: one channel per image.
    assert_eq!(pixels(&mut from_dir, [1, 6, 8]).len(), 6 * 48);
}

#[test]
fn bad_files_and_folders_are_errors_naming_them() {
    let root = dir("corrupt");
    folder_layout(&root);
    let load = |root: &Path| {
        format!(
            "{:#}",
            DataSource::Folder(root.to_path_buf()).load().unwrap_err()
        )
    };
    std::fs::write(root.join("train/dog/1.png"), b"not a png").unwrap();
    let e = load(&root);
    assert!(
        e.contains("train/dog/1.png") && e.contains("is not an image"),
        "{e}"
    );
    std::fs::write(root.join("train/dog/1.png"), b"").unwrap();
    let e = load(&root);
    assert!(
        e.contains("train/dog/1.png") && e.contains("is empty (0 bytes)"),
        "{e}"
    );
    let png = std::fs::read(root.join("train/dog/0.png")).unwrap();
    std::fs::write(root.join("train/dog/1.png"), &png[..png.len() - 20]).unwrap();
    let e = load(&root);
    assert!(
        e.contains("train/dog/1.png") && e.contains("truncated"),
        "{e}"
    );
    std::fs::write(root.join("train/dog/1.png"), &png).unwrap();
    // Images of another size are fine now.
    write_png(&root.join("train/dog/2.png"), [1, 2, 3], 9, 7);
    assert!(DataSource::Folder(root.clone()).load().is_ok());
    std::fs::create_dir_all(root.join("test/bird")).unwrap();
    write_png(&root.join("test/bird/0.png"), [1, 2, 3], 8, 6);
    let e = load(&root);
    assert!(
        e.contains("test class `bird` does not exist in train/"),
        "{e}"
    );
    std::fs::remove_dir_all(root.join("test/bird")).unwrap();
    std::fs::create_dir_all(root.join("train/empty")).unwrap();
    let e = load(&root);
    assert!(e.contains("`train/empty` has no JPEG or PNG images"), "{e}");
    std::fs::remove_dir_all(root.join("train/empty")).unwrap();
    std::fs::rename(root.join("test"), root.join("val")).unwrap();
    assert_eq!(
        DataSource::Folder(root.clone()).load().unwrap().test.len(),
        2
    );
    std::fs::create_dir_all(root.join("test/cat")).unwrap();
    write_png(&root.join("test/cat/0.png"), [1, 2, 3], 8, 6);
    let e = load(&root);
    assert!(e.contains("both `val/` and `test/`"), "{e}");
}

fn idx(path: &Path, dims: &[u32], data: &[u8], gzip: bool) {
    let mut bytes = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        bytes.extend(d.to_be_bytes());
    }
    bytes.extend(data);
    if gzip {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&bytes).unwrap();
        std::fs::write(path.with_extension("gz"), e.finish().unwrap()).unwrap();
    } else {
        std::fs::write(path, bytes).unwrap();
    }
}

#[test]
fn fashion_mnist_idx_files_gzipped_or_not() {
    let d = dir("idx");
    idx(
        &d.join("train-images-idx3-ubyte"),
        &[2, 28, 28],
        &[7; 2 * 784],
        true,
    );
    idx(&d.join("train-labels-idx1-ubyte"), &[2], &[3, 9], true);
    idx(
        &d.join("t10k-images-idx3-ubyte"),
        &[1, 28, 28],
        &[1; 784],
        false,
    );
    idx(&d.join("t10k-labels-idx1-ubyte"), &[1], &[0], false);
    let src: DataSource = format!("fashion-mnist:{}", d.display()).parse().unwrap();
    let s = src.load().unwrap();
    assert_eq!(
        (s.train.len(), s.train.shape, s.train.labels.clone()),
        (2, [1, 28, 28], vec![3, 9])
    );
    assert_eq!(s.test.classes[9], "ankle-boot");
    idx(&d.join("t10k-labels-idx1-ubyte"), &[1], &[10], false);
    let e = src.load().unwrap_err().to_string();
    assert!(
        e.contains("t10k-labels-idx1-ubyte") && e.contains("label 0 is 10"),
        "{e}"
    );
    std::fs::write(d.join("t10k-labels-idx1-ubyte"), [0, 0, 8, 3]).unwrap();
    let e = src.load().unwrap_err().to_string();
    assert!(e.contains("not an IDX file"), "{e}");
    assert!("fashion-mnist".parse::<DataSource>().is_ok());
    assert!("imagenet:/x"
        .parse::<DataSource>()
        .unwrap_err()
        .to_string()
        .contains("unknown data source"));
}

fn tiny() -> Dataset {
    // Two 1×2×3 images: pixels 0..5 and 250..255.
    Dataset {
        classes: vec!["a".into(), "b".into()],
        shape: [1, 2, 3],
        images: Images::Pixels((0..6u8).chain(250..=255).collect()),
        labels: vec![0, 1],
        masks: None,
    }
}

#[test]
fn batches_are_normalised_and_augmentation_is_seeded() {
    let ds = tiny();
    let plain = Batcher {
        crop: Crop::Pad { pad: 1 },
        ..Batcher::with_stats(&ds, false, vec![0.0], vec![1.0])
    };
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let (x, y) = plain
        .batch(&ds, &[1, 0], &mut rng, &candle_core::Device::Cpu)
        .unwrap();
    assert_eq!(x.dims(), [2, 1, 2, 3]);
    assert_eq!(y.to_vec1::<u32>().unwrap(), [1, 0]);
    let v: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
    assert!((v[0] - 250.0 / 255.0).abs() < 1e-6 && v[6] == 0.0);
    let stats = Batcher::new(&ds, false, Norm::Data).unwrap();
    let (x, _) = stats
        .batch(&ds, &[0, 1], &mut rng, &candle_core::Device::Cpu)
        .unwrap();
    let v: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
    let mean = v.iter().sum::<f32>() / v.len() as f32;
    let var = v.iter().map(|a| (a - mean).powi(2)).sum::<f32>() / v.len() as f32;
    assert!(
        mean.abs() < 1e-5 && (var - 1.0).abs() < 1e-4,
        "{mean} {var}"
    );
    // Augmented batches: reproducible from the seed, and every output is a flipped/shifted copy.
    let aug = Batcher {
        crop: Crop::Pad { pad: 1 },
        ..Batcher::with_stats(&ds, true, vec![0.0], vec![1.0])
    };
    let draw = |seed| {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (x, _) = aug
            .batch(&ds, &[0; 16], &mut rng, &candle_core::Device::Cpu)
            .unwrap();
        x.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    };
    assert_eq!(draw(5), draw(5));
    assert_ne!(draw(5), draw(6));
    let v = draw(5);
    // A pixel of image 0 is k / 255 for k in 0..6, or padding 0.
    assert!(v
        .iter()
        .all(|p| (0..6).any(|k| (p - k as f32 / 255.0).abs() < 1e-6)));
}

#[test]
fn epoch_order_is_a_seeded_permutation() {
    let a = epoch_order(100, 1, 0);
    let mut sorted = a.clone();
    sorted.sort();
    assert_eq!(sorted, (0..100).collect::<Vec<_>>());
    assert_eq!(a, epoch_order(100, 1, 0));
    assert_ne!(a, epoch_order(100, 1, 1));
    assert_ne!(a, epoch_order(100, 2, 0));
}

#[test]
fn limits_sample_every_class_of_a_class_sorted_source() {
    let mut ds = Dataset {
        classes: (0..10).map(|c| c.to_string()).collect(),
        shape: [1, 1, 1],
        images: Images::Pixels((0..1000).map(|i| (i / 100) as u8).collect()),
        labels: (0..1000).map(|i| i / 100).collect(),
        masks: None,
    };
    ds.truncate(100);
    assert_eq!(ds.len(), 100);
    for c in 0..10u32 {
        assert!(
            ds.labels.iter().filter(|&&l| l == c).count() >= 3,
            "class {c} missing: {:?}",
            ds.labels
        );
    }
    // Images stay with their labels.
    assert!(ds
        .labels
        .iter()
        .enumerate()
        .all(|(i, &l)| ds.image(i).unwrap()[0] as u32 == l));
}
