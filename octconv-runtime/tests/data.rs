//! Dataset readers on generated files: CIFAR-10 batches, class folders (directory and .tar.gz), IDX;
//! their errors name the file; batching is seeded, normalised and augmented as documented.

use octconv_runtime::data::{epoch_order, Batcher, DataSource, Dataset};
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
    assert!(s.train.image(2).iter().all(|&p| p == 20));
    assert_eq!(s.test.classes[9], "truck");
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

#[test]
fn folder_and_tar_gz_give_the_same_dataset() {
    let root = dir("folder");
    folder_layout(&root);
    let from_dir = DataSource::Folder(root.clone()).load().unwrap();
    assert_eq!(from_dir.train.classes, ["cat", "dog"]);
    assert_eq!(
        (
            from_dir.train.len(),
            from_dir.test.len(),
            from_dir.train.shape
        ),
        (6, 2, [3, 6, 8])
    );
    assert_eq!(from_dir.train.labels, [0, 0, 0, 1, 1, 1]);
    // Planar CHW: the red plane of a cat is 200 everywhere, its green plane 0.
    let cat = from_dir.train.image(0);
    assert!(cat[..48].iter().all(|&p| p == 200) && cat[48..96].iter().all(|&p| p == 0));
    let tgz = root.with_extension("tar.gz");
    let file = std::fs::File::create(&tgz).unwrap();
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        file,
        flate2::Compression::fast(),
    ));
    tar.append_dir_all("data", &root).unwrap();
    tar.into_inner().unwrap().finish().unwrap();
    let from_tar = DataSource::Folder(tgz).load().unwrap();
    assert_eq!(from_tar, from_dir);
}

#[test]
fn corrupt_or_mismatched_images_are_errors_naming_the_file() {
    let root = dir("corrupt");
    folder_layout(&root);
    std::fs::write(root.join("train/dog/1.png"), b"not a png").unwrap();
    let e = format!("{:#}", DataSource::Folder(root.clone()).load().unwrap_err());
    assert!(
        e.contains("train/dog/1.png") && e.contains("not a readable image"),
        "{e}"
    );
    write_png(&root.join("train/dog/1.png"), [1, 2, 3], 9, 6);
    let e = format!("{:#}", DataSource::Folder(root.clone()).load().unwrap_err());
    assert!(e.contains("train/dog/1.png") && e.contains("3×6×9"), "{e}");
    write_png(&root.join("train/dog/1.png"), [1, 2, 3], 8, 6);
    std::fs::create_dir_all(root.join("test/bird")).unwrap();
    write_png(&root.join("test/bird/0.png"), [1, 2, 3], 8, 6);
    let e = format!("{:#}", DataSource::Folder(root).load().unwrap_err());
    assert!(e.contains("test class `bird`"), "{e}");
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
        images: (0..6u8).chain(250..=255).collect(),
        labels: vec![0, 1],
    }
}

#[test]
fn batches_are_normalised_and_augmentation_is_seeded() {
    let ds = tiny();
    let plain = Batcher {
        mean: vec![0.0],
        std: vec![1.0],
        augment: false,
        pad: 1,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let (x, y) = plain
        .batch(&ds, &[1, 0], &mut rng, &candle_core::Device::Cpu)
        .unwrap();
    assert_eq!(x.dims(), [2, 1, 2, 3]);
    assert_eq!(y.to_vec1::<u32>().unwrap(), [1, 0]);
    let v: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
    assert!((v[0] - 250.0 / 255.0).abs() < 1e-6 && v[6] == 0.0);
    let stats = Batcher::new(&ds, false);
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
        mean: vec![0.0],
        std: vec![1.0],
        augment: true,
        pad: 1,
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
        images: (0..1000).map(|i| (i / 100) as u8).collect(),
        labels: (0..1000).map(|i| i / 100).collect(),
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
        .all(|(i, &l)| ds.image(i)[0] as u32 == l));
}
