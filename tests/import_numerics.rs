//! `octconv import --map torchvision` computes torchvision's functions, checked without torchvision:
//! the weights of each model are generated from a formula that `bench/make_import_outputs.py` also
//! implements, so the fixture is only the logits torchvision gave
//! (`tests/fixtures/torchvision/outputs.json`) plus the committed key lists (`<model>.txt`).
//!
//! For resnet50, resnext50_32x4d, mobilenet_v2 and densenet121: every tensor of the key list is
//! filled from the formula, written as a safetensors state dict, imported by the `octconv import`
//! binary, loaded as `octconv run` loads weights and run (eval mode, f32, CPU) on the formula's
//! input; the logits must agree with torchvision's to 1e-4 of the largest and have the same argmax.
//!
//! The formula (version 1, the script's docstring has the same text):
//!
//! ```text
//! h  = FNV-1a 64-bit hash of the tensor's name (UTF-8; basis 0xcbf29ce484222325, prime 0x100000001b3)
//! element i (row-major): k = (h + i * 2654435761) mod 2^32 (u64 wrapping), u = k / 2^32 - 0.5 (f64)
//! value in f64, then rounded to f32:
//!   `*.weight` of rank >= 2 (conv, linear)  u * 2 * sqrt(3 / fan_in), fan_in = product of dims[1..]
//!   `*.weight` of rank 1 (batch norm)       1 + 0.2 u
//!   `*.bias`, `*.running_mean`              0.1 u
//!   `*.running_var`                         1 + 0.5 (u + 0.5)
//!   `*.num_batches_tracked`                 0 (int64, as torch has it; the import drops it)
//! input `[1, 3, 224, 224]`: the name `input`, value 2 u
//! ```

mod common;

use common::{octconv, stderr, values};
use octconv::candle_core::{DType, Device, Tensor};
use octconv::candle_nn::VarBuilder;
use octconv::runtime::train::split_run_weights;
use octconv::runtime::weights::{check_weights, read_safetensors};
use octconv::{check_builtin, OctModel};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The formula's version in `outputs.json`.
const FORMULA_VERSION: u64 = 1;
/// The multiplier of the element index.
const STEP: u64 = 2_654_435_761;
/// Largest |ours − torchvision| allowed, relative to torchvision's largest |logit|.
const TOLERANCE: f64 = 1e-4;

/// FNV-1a, 64 bits, of the name's UTF-8 bytes.
fn fnv1a64(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in name.as_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// `u` of element `i` of the tensor whose name hashes to `h`: in [-0.5, 0.5), exact in f64.
fn uniform(h: u64, i: u64) -> f64 {
    let k = h.wrapping_add(i.wrapping_mul(STEP)) & 0xffff_ffff;
    k as f64 / 4_294_967_296.0 - 0.5
}

/// The f32 values of the tensor `name` of `shape`; `None` for a `num_batches_tracked` counter.
fn formula(name: &str, shape: &[usize]) -> Option<Vec<f32>> {
    let n: usize = shape.iter().product();
    let value: Box<dyn Fn(f64) -> f64> = if name.ends_with("num_batches_tracked") {
        return None;
    } else if name.ends_with(".weight") && shape.len() >= 2 {
        let fan_in: usize = shape[1..].iter().product();
        let scale = 2.0 * (3.0 / fan_in as f64).sqrt();
        Box::new(move |u| u * scale)
    } else if name.ends_with(".weight") && shape.len() == 1 {
        Box::new(|u| 1.0 + 0.2 * u)
    } else if name.ends_with(".bias") || name.ends_with(".running_mean") {
        Box::new(|u| 0.1 * u)
    } else if name.ends_with(".running_var") {
        Box::new(|u| 1.0 + 0.5 * (u + 0.5))
    } else {
        panic!("no formula for `{name}` {shape:?}")
    };
    let h = fnv1a64(name);
    Some((0..n as u64).map(|i| value(uniform(h, i)) as f32).collect())
}

/// The formula's input image `[1, 3, 224, 224]`.
fn formula_input() -> Vec<f32> {
    let h = fnv1a64("input");
    (0..3 * 224 * 224)
        .map(|i| (uniform(h, i) * 2.0) as f32)
        .collect()
}

/// A file under tests/fixtures/torchvision/.
fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/torchvision")
        .join(name)
}

/// `outputs.json`, checked to be of this formula's version.
fn outputs() -> serde_json::Value {
    let text = std::fs::read_to_string(fixture("outputs.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        v["formula_version"].as_u64(),
        Some(FORMULA_VERSION),
        "outputs.json was written with another formula; rerun bench/make_import_outputs.py"
    );
    v
}

/// The keys and shapes of a committed key list (`<key> <d0>,<d1>,…`, `-` for 0-d, `#` comments).
fn keys(model: &str) -> Vec<(String, Vec<usize>)> {
    let text = std::fs::read_to_string(fixture(&format!("{model}.txt"))).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (name, dims) = l.split_once(' ').expect("`key shape`");
            let shape = match dims {
                "-" => vec![],
                d => d.split(',').map(|x| x.parse().unwrap()).collect(),
            };
            (name.to_string(), shape)
        })
        .collect()
}

/// The state dict torchvision's `model` has when filled from the formula.
fn formula_state_dict(model: &str) -> HashMap<String, Tensor> {
    keys(model)
        .into_iter()
        .map(|(name, shape)| {
            let t = match formula(&name, &shape) {
                Some(v) => Tensor::from_vec(v, shape.as_slice(), &Device::Cpu).unwrap(),
                None => Tensor::new(0i64, &Device::Cpu).unwrap(),
            };
            (name, t)
        })
        .collect()
}

/// A fresh directory for one test.
fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "octconv-import-numerics-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Imports the formula weights of torchvision's `model` onto `call` through the binary, runs them
/// on the formula input and compares the logits with torchvision's; returns the relative error.
fn assert_matches_torchvision(model: &str, call: &str) -> f64 {
    let reference: Vec<f64> = outputs()["logits"][model]
        .as_array()
        .unwrap_or_else(|| panic!("outputs.json has no logits for `{model}`"))
        .iter()
        .map(|v| v.as_f64().unwrap() as f32 as f64)
        .collect();
    assert_eq!(reference.len(), 1000);

    let d = dir(model);
    let (src, out) = (
        d.join("state_dict.safetensors"),
        d.join("imported.safetensors"),
    );
    octconv::candle_core::safetensors::save(&formula_state_dict(model), &src).unwrap();
    let o = octconv(&[
        "import",
        call,
        "--from",
        src.to_str().unwrap(),
        "--map",
        "torchvision",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{model}: import failed: {}", stderr(&o));

    // As `octconv run` loads weights: the normalisation split off, every parameter checked.
    let (weights, norm) = split_run_weights(read_safetensors(&out, &Device::Cpu).unwrap()).unwrap();
    assert!(
        norm.is_some(),
        "{model}: imported weights carry ImageNet's normalisation"
    );
    let ir = check_builtin(call).model.expect("valid builtin call");
    check_weights(&ir, &weights).unwrap();
    let vb = VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu);
    let net = OctModel::new(ir, vb).unwrap();
    let x = Tensor::from_vec(formula_input(), (1, 3, 224, 224), &Device::Cpu).unwrap();
    let y = values(&net.infer(&x).unwrap());
    let _ = std::fs::remove_dir_all(&d);

    assert_eq!(y.len(), 1000, "{model}: 1000 logits");
    assert!(y.iter().all(|v| v.is_finite()), "{model}: finite logits");
    let diff = (y.iter().zip(&reference))
        .map(|(&a, &b)| (a as f64 - b).abs())
        .fold(0.0, f64::max);
    let scale = reference.iter().map(|v| v.abs()).fold(0.0, f64::max);
    let rel = diff / scale;
    let argmax = |v: &[f64]| (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap();
    let ours: Vec<f64> = y.iter().map(|&v| v as f64).collect();
    eprintln!(
        "{model}: max |ours − torchvision| {diff:.3e}, max |logit| {scale:.4}, relative {rel:.3e}, \
         argmax {} (torchvision {})",
        argmax(&ours),
        argmax(&reference)
    );
    assert!(
        rel <= TOLERANCE,
        "{model}: max |ours − torchvision| = {diff:.3e} is {rel:.3e} of max |logit| {scale:.4} \
         (allowed {TOLERANCE:e})"
    );
    assert_eq!(
        argmax(&ours),
        argmax(&reference),
        "{model}: same top-1 class"
    );
    rel
}

/// Parses `0x…` hex.
fn hex(s: &str) -> u64 {
    u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap()
}

#[test]
fn formula_weights_and_input_are_bit_identical_to_the_python_scripts() {
    let v = outputs();
    let probes = v["probes"].as_array().unwrap();
    assert!(probes.len() >= 5);
    for p in probes {
        let name = p["name"].as_str().unwrap();
        let shape: Vec<usize> = (p["shape"].as_array().unwrap().iter())
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(fnv1a64(name), hex(p["hash"].as_str().unwrap()), "{name}");
        let got = if name == "input" {
            formula_input()
        } else {
            formula(name, &shape).unwrap()
        };
        assert_eq!(got.len(), shape.iter().product::<usize>(), "{name}");
        let index = p["index"].as_array().unwrap();
        let bits = p["bits"].as_array().unwrap();
        assert_eq!(index.len(), bits.len());
        for (i, b) in index.iter().zip(bits) {
            let i = i.as_u64().unwrap() as usize;
            assert_eq!(
                got[i].to_bits() as u64,
                hex(b.as_str().unwrap()),
                "{name}[{i}]: {} in Rust",
                got[i]
            );
        }
    }
}

#[test]
fn imported_resnet50_computes_torchvisions_logits() {
    assert_matches_torchvision(
        "resnet50",
        "resnet(depth = 50, alpha = 0, strided = true, classes = 1000)",
    );
}

#[test]
fn imported_resnext50_32x4d_computes_torchvisions_logits() {
    assert_matches_torchvision(
        "resnext50_32x4d",
        "resnext(depth = 50, groups = 32, width = 4, alpha = 0, strided = true, classes = 1000)",
    );
}

#[test]
fn imported_mobilenet_v2_computes_torchvisions_logits() {
    assert_matches_torchvision(
        "mobilenet_v2",
        "mobilenet_v2(width = 1.0, alpha = 0, strided = true, classes = 1000)",
    );
}

#[test]
fn imported_densenet121_computes_torchvisions_logits() {
    assert_matches_torchvision(
        "densenet121",
        "densenet(depth = 121, growth = 32, alpha = 0, classes = 1000)",
    );
}
