//! `octconv init` + `octconv run` round trip through the binary, and their errors.

use octconv::candle_core::{DType, Device, ModuleT, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
mod common;

use common::{octconv, stderr};

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("octconv-rt-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn save(path: &Path, name: &str, t: &Tensor) {
    let mut m = HashMap::new();
    m.insert(name.to_string(), t.clone());
    octconv::candle_core::safetensors::save(&m, path).unwrap();
}

const SPEC: &str = "wrn(n = 1, k = 1, alpha = 0.25)";

#[test]
fn init_then_run_matches_the_in_process_model() {
    let d = dir("roundtrip");
    let (w, x, y) = (
        d.join("w.safetensors"),
        d.join("x.safetensors"),
        d.join("y.safetensors"),
    );
    let o = octconv(&["init", SPEC, "--seed", "7", "--out", w.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Vec<f32> = (0..2 * 3 * 32 * 32)
        .map(|i| ((i % 17) as f32 - 8.0) / 8.0)
        .collect();
    let input = Tensor::from_vec(v, (2, 3, 32, 32), &Device::Cpu).unwrap();
    save(&x, "input", &input);
    let o = octconv(&[
        "run",
        SPEC,
        "--weights",
        w.to_str().unwrap(),
        "--input",
        x.to_str().unwrap(),
        "--output",
        y.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = octconv::candle_core::safetensors::load(&y, &Device::Cpu).unwrap();
    let out = &out["output"];
    assert_eq!(out.dims(), [2, 10]);
    // The same weights and input in process give the same logits.
    let ir = octconv::check_builtin(SPEC).model.unwrap();
    let weights = octconv::candle_core::safetensors::load(&w, &Device::Cpu).unwrap();
    let net = octconv::OctModel::new(
        ir,
        octconv::candle_nn::VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu),
    )
    .unwrap();
    // `run` is the in-process `infer` bit for bit, and the per-op eval forward to rounding (the
    // planned inference kernels sum in another order).
    let max_abs = |t: Tensor| -> f32 { t.abs().unwrap().max_all().unwrap().to_scalar().unwrap() };
    let planned = net.infer(&input).unwrap();
    assert_eq!(max_abs((out - &planned).unwrap()), 0.0);
    let per_op = net.forward_t(&input, false).unwrap();
    let rel = max_abs((out - &per_op).unwrap()) / max_abs(per_op.clone()).max(1e-30);
    assert!(rel <= 1e-5, "run differs from forward_t by {rel:e}");
    // The same seed writes the same file; outputs are never overwritten silently.
    let w2 = d.join("w2.safetensors");
    assert!(
        octconv(&["init", SPEC, "--seed", "7", "--out", w2.to_str().unwrap()])
            .status
            .success()
    );
    assert_eq!(std::fs::read(&w).unwrap(), std::fs::read(&w2).unwrap());
    let o = octconv(&["init", SPEC, "--seed", "8", "--out", w2.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("exists; pass --force"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn run_reports_wrong_tensor_names_dtypes_shapes_and_weights() {
    let d = dir("errors");
    let w = d.join("w.safetensors");
    assert!(octconv(&["init", SPEC, "--out", w.to_str().unwrap()])
        .status
        .success());
    let run = |x: &Path, weights: &Path| {
        let y = d.join("y.safetensors");
        let _ = std::fs::remove_file(&y);
        octconv(&[
            "run",
            SPEC,
            "--weights",
            weights.to_str().unwrap(),
            "--input",
            x.to_str().unwrap(),
            "--output",
            y.to_str().unwrap(),
        ])
    };
    let x = d.join("named.safetensors");
    save(
        &x,
        "images",
        &Tensor::zeros((1, 3, 32, 32), DType::F32, &Device::Cpu).unwrap(),
    );
    let o = run(&x, &w);
    assert!(
        stderr(&o).contains("has no tensor named `input` (it has `images`)"),
        "{}",
        stderr(&o)
    );
    let x = d.join("f64.safetensors");
    save(
        &x,
        "input",
        &Tensor::zeros((1, 3, 32, 32), DType::F64, &Device::Cpu).unwrap(),
    );
    assert!(
        stderr(&run(&x, &w)).contains("tensor `input`")
            && stderr(&run(&x, &w)).contains("dtype F64; expected f32")
    );
    let x = d.join("shape.safetensors");
    save(
        &x,
        "input",
        &Tensor::zeros((1, 3, 28, 28), DType::F32, &Device::Cpu).unwrap(),
    );
    let o = run(&x, &w);
    assert!(
        stderr(&o).contains("has shape [1, 3, 28, 28]; model `wrn` expects [N, 3, 32, 32]"),
        "{}",
        stderr(&o)
    );
    let x = d.join("ok.safetensors");
    save(
        &x,
        "input",
        &Tensor::zeros((1, 3, 32, 32), DType::F32, &Device::Cpu).unwrap(),
    );
    let other = d.join("other.safetensors");
    assert!(octconv(&[
        "init",
        "wrn(n = 1, k = 2, alpha = 0.25)",
        "--out",
        other.to_str().unwrap()
    ])
    .status
    .success());
    let o = run(&x, &other);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("has shape [32, 12, 3, 3], the model needs [16, 12, 3, 3]")
            || stderr(&o).contains("the model needs"),
        "{}",
        stderr(&o)
    );
    let o = run(&x, &d.join("missing.safetensors"));
    assert!(
        stderr(&o).contains("cannot read safetensors file"),
        "{}",
        stderr(&o)
    );
    assert!(run(&x, &w).status.success());
}
