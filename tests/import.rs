//! `octconv import`: the name rules against committed lists of torchvision's and octconv.pytorch's
//! state-dict keys (tests/fixtures/, written by bench/torchvision_keys.py), the `.pth` reader on small
//! `torch.save` files (bench/make_import_fixtures.py), and the binary on synthetic checkpoints: values
//! land on the right names, and every problem is named with nothing written. (Numerical agreement
//! with PyTorch is bench/check_import.py's, figures in docs/import.md.)

mod common;

use common::{octconv, stderr, values};
use octconv::candle_core::{DType, Device, Tensor};
use octconv::runtime::import::{self, Mapping, SourceEntry};
use octconv::spec::params::model_params;
use octconv::spec::{check_builtin, Model};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// A fresh directory for one test.
fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("octconv-import-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A file under tests/fixtures/.
fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(path)
}

/// The keys and shapes of a fixture list (`<key> <d0>,<d1>,…`, `-` for 0-d, `#` comments).
fn keys(path: &str) -> Vec<SourceEntry> {
    let text = std::fs::read_to_string(fixture(path)).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (name, dims) = l.split_once(' ').expect("`key shape`");
            let shape = match dims {
                "-" => vec![],
                d => d.split(',').map(|x| x.parse().unwrap()).collect(),
            };
            SourceEntry {
                name: name.to_string(),
                shape,
            }
        })
        .collect()
}

fn model(call: &str) -> Model {
    check_builtin(call).model.expect("valid builtin call")
}

/// Every key of the fixture (but the dropped counters) fills a distinct parameter of `call` with
/// its shape, and every parameter is filled; returns the number of pairs.
fn assert_maps_exactly(fixture: &str, call: &str, mapping: Mapping) -> usize {
    let source = keys(fixture);
    let m = model(call);
    let pairs = import::plan(&m, mapping, &source).unwrap_or_else(|e| panic!("{fixture}: {e}"));
    let kept = source.iter().filter(|e| !import::dropped(&e.name)).count();
    let params = model_params(&m);
    assert!(!pairs.is_empty());
    assert_eq!(pairs.len(), kept, "{fixture}: every kept key is paired");
    assert_eq!(pairs.len(), params.len(), "{fixture}: every parameter");
    let targets: HashSet<&str> = pairs.iter().map(|a| a.target.as_str()).collect();
    assert_eq!(targets.len(), pairs.len(), "{fixture}: distinct targets");
    let shape: HashMap<&str, &Vec<usize>> =
        source.iter().map(|e| (e.name.as_str(), &e.shape)).collect();
    for p in &params {
        let a = pairs.iter().find(|a| a.target == p.name).unwrap();
        assert_eq!(
            shape[a.source.as_str()],
            &p.shape,
            "{} ← {}",
            p.name,
            a.source
        );
    }
    pairs.len()
}

#[test]
fn torchvision_resnet50_maps_onto_resnet_50() {
    let n = assert_maps_exactly(
        "torchvision/resnet50.txt",
        "resnet(depth = 50, alpha = 0, strided = true)",
        Mapping::Torchvision,
    );
    assert_eq!(n, 267);
}

#[test]
fn torchvision_resnext50_32x4d_maps_onto_resnext() {
    let n = assert_maps_exactly(
        "torchvision/resnext50_32x4d.txt",
        "resnext(depth = 50, groups = 32, width = 4, alpha = 0, strided = true)",
        Mapping::Torchvision,
    );
    assert_eq!(n, 267);
}

#[test]
fn torchvision_mobilenet_v2_maps_onto_mobilenet_v2() {
    let n = assert_maps_exactly(
        "torchvision/mobilenet_v2.txt",
        "mobilenet_v2(width = 1.0, alpha = 0, strided = true)",
        Mapping::Torchvision,
    );
    assert_eq!(n, 262);
}

#[test]
fn torchvision_densenet121_maps_onto_densenet() {
    let n = assert_maps_exactly(
        "torchvision/densenet121.txt",
        "densenet(depth = 121, growth = 32, alpha = 0)",
        Mapping::Torchvision,
    );
    assert_eq!(n, 606);
}

#[test]
fn octconv_pytorch_oct_resnet50_maps_onto_resnet_at_half() {
    let n = assert_maps_exactly(
        "octconv_pytorch/oct_resnet50.txt",
        "resnet(depth = 50, alpha = 0.5)",
        Mapping::OctconvPytorch,
    );
    // Four paths and two BNs per octave layer: twice as many tensors as at α = 0, roughly.
    assert_eq!(n, 559);
}

#[test]
fn a_checkpoint_of_another_depth_lists_what_does_not_fit() {
    let source = keys("torchvision/resnet50.txt");
    let e = import::plan(
        &model("resnet(depth = 101, alpha = 0, strided = true)"),
        Mapping::Torchvision,
        &source,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("missing: parameters of ours no source tensor fills (255)"),
        "{e}"
    );
    assert!(
        e.contains("`bottleneck11.res0.bottleneck_branch0.bn0.bias` [256]"),
        "{e}"
    );
}

#[test]
fn families_and_alphas_without_rules_are_refused_with_the_fix() {
    let e = import::plan(
        &model("wrn(n = 1, k = 1, alpha = 0)"),
        Mapping::Torchvision,
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("`wrn`") && e.contains("resnet, resnext"), "{e}");
    let e = import::plan(&model("resnet(alpha = 0.25)"), Mapping::Torchvision, &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("--set alpha=0"), "{e}");
    let e = import::plan(&model("resnet(alpha = 0.25)"), Mapping::OctconvPytorch, &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("--set alpha=0.5"), "{e}");
    let e = import::plan(
        &model("mobilenet_v1(alpha = 0.5)"),
        Mapping::OctconvPytorch,
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("stem"), "{e}");
    // torchvision convolves with stride 2: a model whose stride-2 octave convolutions pool first
    // (the default) is refused with the option that fixes it, for each family that has them; the
    // same names with `strided = true` map (above), and DenseNet has nothing to refuse.
    for (call, layers, first) in [
        (
            "resnet(depth = 50, alpha = 0)",
            6,
            "bottleneck_down1.res0.bottleneck_branch0.octconv1",
        ),
        (
            "resnext(depth = 50, groups = 32, width = 4, alpha = 0)",
            6,
            "resnext_stage1.res0.resnext_branch0.octconv1",
        ),
        ("mobilenet_v2(width = 1.0, alpha = 0)", 5, "octconv0"),
    ] {
        let e = import::plan(&model(call), Mapping::Torchvision, &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--set strided=true"), "{e}");
        assert!(
            e.contains("average-pools 2×2 and then convolves with stride 1"),
            "{e}"
        );
        assert!(
            e.contains(&format!("{layers} such layer(s), the first `{first}`")),
            "{e}"
        );
    }
    assert!(Mapping::Torchvision
        .rule(&model("densenet(depth = 121, growth = 32, alpha = 0)"))
        .is_ok());
    assert_eq!(
        "octconv-pytorch".parse::<Mapping>(),
        Ok(Mapping::OctconvPytorch)
    );
    assert!("keras"
        .parse::<Mapping>()
        .unwrap_err()
        .contains("torchvision"));
}

#[test]
fn pth_state_dicts_are_read_through_the_pickle_reader() {
    let t = import::read_state_dict(&fixture("import/tiny_state_dict.pth")).unwrap();
    let mut names: Vec<&str> = t.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "bn1.num_batches_tracked",
            "bn1.running_mean",
            "conv1.weight",
            "fc.weight"
        ]
    );
    assert_eq!(t["conv1.weight"].dims(), [2, 3, 1, 1]);
    assert_eq!(values(&t["conv1.weight"]), [0., 1., 2., 3., 4., 5.]);
    assert_eq!(t["bn1.running_mean"].dtype(), DType::F64);
    assert_eq!(t["fc.weight"].dtype(), DType::F16);
    let fc = t["fc.weight"].to_dtype(DType::F32).unwrap();
    assert_eq!(values(&fc), [-1., -0.5, 0., 0.5]);
    // A training checkpoint: the state dict under `state_dict`, DataParallel's prefix removed.
    let c = import::read_state_dict(&fixture("import/tiny_checkpoint.pth")).unwrap();
    let mut names: Vec<&str> = c.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "bn1.num_batches_tracked",
            "bn1.running_mean",
            "conv1.weight",
            "fc.weight"
        ]
    );
    assert_eq!(values(&c["conv1.weight"]), [0., 1., 2., 3., 4., 5.]);
}

/// The small model the binary tests import onto (torchvision's `mobilenet_v2(width_mult=0.25,
/// num_classes=2)` has these shapes and computes its function: stride-2 convolutions).
const SMALL: &str = "mobilenet_v2(width = 0.25, alpha = 0, classes = 2, strided = true)";

/// A synthetic torchvision state dict for [`SMALL`]: torchvision's mobilenet_v2 keys, shapes from
/// the name rule, values `k + i / 1000` for the k-th key (f64, so the import converts them), and
/// an int64 `num_batches_tracked` per BN.
fn synthetic_state_dict() -> HashMap<String, Tensor> {
    let m = model(SMALL);
    let rule = Mapping::Torchvision.rule(&m).unwrap();
    let shapes: HashMap<String, Vec<usize>> = model_params(&m)
        .into_iter()
        .map(|p| (p.name, p.shape))
        .collect();
    let mut out = HashMap::new();
    for (k, e) in keys("torchvision/mobilenet_v2.txt").into_iter().enumerate() {
        let t = if import::dropped(&e.name) {
            Tensor::new(5i64, &Device::Cpu).unwrap()
        } else {
            let shape = &shapes[&rule(&e.name).expect("a target")];
            let n: usize = shape.iter().product();
            let v: Vec<f64> = (0..n).map(|i| k as f64 + i as f64 / 1000.0).collect();
            Tensor::from_vec(v, shape.as_slice(), &Device::Cpu).unwrap()
        };
        out.insert(e.name, t);
    }
    out
}

fn save(t: &HashMap<String, Tensor>, path: &Path) {
    octconv::candle_core::safetensors::save(t, path).unwrap();
}

fn load(path: &Path) -> HashMap<String, Tensor> {
    octconv::candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

fn import_args<'a>(from: &'a Path, out: &'a Path) -> Vec<&'a str> {
    vec![
        "import",
        SMALL,
        "--from",
        from.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]
}

#[test]
fn safetensors_import_puts_each_value_under_its_name_and_runs() {
    let d = dir("roundtrip");
    let (src, out) = (d.join("tv.safetensors"), d.join("ours.safetensors"));
    let source = synthetic_state_dict();
    save(&source, &src);
    let o = octconv(&import_args(&src, &out));
    assert!(o.status.success(), "{}", stderr(&o));
    // Nothing computes differently: no note.
    assert!(!stderr(&o).contains("note"), "{}", stderr(&o));
    let ours = load(&out);
    let rule = Mapping::Torchvision.rule(&model(SMALL)).unwrap();
    let mut checked = 0;
    for (name, t) in &source {
        let Some(target) = rule(name) else { continue };
        let got = &ours[&target];
        assert_eq!(got.dtype(), DType::F32, "{target}");
        let want = values(&t.to_dtype(DType::F32).unwrap());
        assert_eq!(values(got), want, "{name} → {target}");
        checked += 1;
    }
    assert_eq!(checked, model_params(&model(SMALL)).len());
    assert_eq!(values(&ours[import::NORM_MEAN]), import::IMAGENET_MEAN);
    assert_eq!(values(&ours[import::NORM_STD]), import::IMAGENET_STD);
    assert_eq!(ours.len(), checked + 2, "parameters and normalisation only");
    // Under the names the trainer's weight files use, which `eval` reads.
    let (_, norm) = octconv::runtime::train::split_run_weights(ours).unwrap();
    let imagenet = (
        import::IMAGENET_MEAN.to_vec(),
        import::IMAGENET_STD.to_vec(),
    );
    assert_eq!(norm, Some(imagenet));
    // Without --force an existing file is kept.
    let o = octconv(&import_args(&src, &out));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--force"), "{}", stderr(&o));
    // The imported weights run like ours.
    let (x, y) = (d.join("x.safetensors"), d.join("y.safetensors"));
    let input = Tensor::zeros((1, 3, 224, 224), DType::F32, &Device::Cpu).unwrap();
    save(&HashMap::from([("input".to_string(), input)]), &x);
    let (w, xs, ys) = (
        out.to_str().unwrap(),
        x.to_str().unwrap(),
        y.to_str().unwrap(),
    );
    let o = octconv(&["run", SMALL, "--weights", w, "--input", xs, "--output", ys]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(load(&y)["output"].dims(), [1, 2]);
    let onnx = d.join("m.onnx");
    let o = octconv(&[
        "export",
        SMALL,
        "--weights",
        w,
        "-o",
        onnx.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn every_problem_is_named_and_nothing_is_written() {
    let d = dir("problems");
    let (src, out) = (d.join("tv.safetensors"), d.join("ours.safetensors"));
    let mut source = synthetic_state_dict();
    source.remove("features.3.conv.1.0.weight").unwrap();
    source.insert(
        "features.19.weight".into(),
        Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap(),
    );
    source.insert(
        "classifier.1.bias".into(),
        Tensor::zeros(1000, DType::F32, &Device::Cpu).unwrap(),
    );
    save(&source, &src);
    let o = octconv(&import_args(&src, &out));
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("3 problem(s)"), "{err}");
    assert!(
        err.contains("missing")
            && err.contains("`stage1.res0.inverted0.octconv1.hh.weight` [48, 1, 3, 3]"),
        "{err}"
    );
    assert!(
        err.contains("unexpected") && err.contains("`features.19.weight` [4]"),
        "{err}"
    );
    assert!(
        err.contains("source `classifier.1.bias` [1000] → ours `linear0.bias` [2]"),
        "{err}"
    );
    assert!(!out.exists());
    let left: Vec<_> = std::fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 1, "only the source: {left:?}");
}

#[test]
fn bad_paths_maps_and_families_are_explained() {
    let d = dir("errors");
    let out = d.join("w.safetensors");
    let missing = d.join("nope.pth");
    let o = octconv(&import_args(&missing, &out));
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("cannot open the checkpoint"),
        "{}",
        stderr(&o)
    );
    let junk = d.join("junk.pth");
    std::fs::write(&junk, b"not a checkpoint").unwrap();
    let o = octconv(&import_args(&junk, &out));
    assert!(stderr(&o).contains("torch.save"), "{}", stderr(&o));
    let pth = fixture("import/tiny_state_dict.pth");
    let (p, w) = (pth.to_str().unwrap(), out.to_str().unwrap());
    let o = octconv(&["import", SMALL, "--from", p, "--map", "keras", "-o", w]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("use one of: torchvision, octconv-pytorch"),
        "{}",
        stderr(&o)
    );
    let o = octconv(&[
        "import",
        "wrn(n = 1, k = 1, alpha = 0)",
        "--from",
        p,
        "-o",
        w,
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("no name rules for model family `wrn`"),
        "{}",
        stderr(&o)
    );
    // The same MobileNet with the pooling rule is refused before the checkpoint is read (this
    // one is no MobileNet), with the fix.
    let pooling = SMALL.replace(", strided = true", "");
    let o = octconv(&["import", &pooling, "--from", p, "-o", w]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("import with --set strided=true") && !stderr(&o).contains("unexpected"),
        "{}",
        stderr(&o)
    );
    // The tiny state dict is no MobileNet: its tensors are listed, not guessed.
    let o = octconv(&["import", SMALL, "--from", p, "-o", w]);
    assert!(
        stderr(&o).contains("unexpected") && stderr(&o).contains("`conv1.weight` [2, 3, 1, 1]"),
        "{}",
        stderr(&o)
    );
    assert!(!out.exists());
}
