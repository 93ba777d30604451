//! `octconv gen` writes exactly the committed `tests/generated/gen_wrn.rs`; that file compiles (it is
//! included below) and computes bit-identically to the `octnet!` expansion of the same spec.

mod common;

use common::values;
use octconv::candle_core::{DType, Device, ModuleT, Tensor};
use octconv::candle_nn::VarBuilder;
use std::process::Command;

include!("generated/gen_wrn.rs");

octconv::octnet! {
    struct MacroWrn = wrn(n = 1, k = 1, alpha = 0.25);
}

const CALL: &str = "wrn(n = 1, k = 1, alpha = 0.25)";

/// The bit patterns of `v`, for exact comparisons with a readable diff.
fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn gen_output_is_the_committed_file() {
    let o = Command::new(env!("CARGO_BIN_EXE_octconv"))
        .args(["gen", CALL, "--name", "GenWrn"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/generated/gen_wrn.rs"
    ))
    .unwrap();
    assert!(
        String::from_utf8_lossy(&o.stdout) == committed,
        "tests/generated/gen_wrn.rs is stale: regenerate it with `cargo run --release -- gen '{CALL}' --name GenWrn -o tests/generated/gen_wrn.rs --force`"
    );
}

#[test]
fn generated_file_matches_the_macro() {
    assert_eq!(GenWrn::INPUT, MacroWrn::INPUT);
    assert_eq!(GenWrn::OUTPUT, MacroWrn::OUTPUT);
    assert_eq!(GenWrn::PARAMS, MacroWrn::PARAMS);
    assert_eq!(GenWrn::MACS, MacroWrn::MACS);
    assert_eq!(GenWrn::SPEC, MacroWrn::SPEC);
    let ir = octconv::check_builtin(CALL).model.unwrap();
    let w = octconv::runtime::init::init_params(&ir, 9, DType::F32, &Device::Cpu).unwrap();
    let a = GenWrn::new(VarBuilder::from_tensors(
        w.clone(),
        DType::F32,
        &Device::Cpu,
    ))
    .unwrap();
    let b = MacroWrn::new(VarBuilder::from_tensors(
        w.clone(),
        DType::F32,
        &Device::Cpu,
    ))
    .unwrap();
    let interp =
        octconv::OctModel::new(ir, VarBuilder::from_tensors(w, DType::F32, &Device::Cpu)).unwrap();
    let v: Vec<f32> = (0..3 * 3 * 32 * 32)
        .map(|i| ((i % 29) as f32 - 14.0) / 14.0)
        .collect();
    let x = Tensor::from_vec(v, (3, 3, 32, 32), &Device::Cpu).unwrap();
    let ya: Vec<f32> = values(&a.forward_t(&x, false).unwrap());
    let yb: Vec<f32> = values(&b.forward_t(&x, false).unwrap());
    // Equal lengths and equal bits (an empty output would not pass; a mismatch shows the diff).
    assert!(!ya.is_empty());
    assert_eq!(bits(&ya), bits(&yb));
    // `infer` (graph-free, BN + ReLU applied inside the convolutions): the generated code, the
    // macro and the interpreter agree bit for bit, and with `forward_t` to rounding.
    let ia = values(&a.infer(&x).unwrap());
    let ib = values(&b.infer(&x).unwrap());
    let ic = values(&interp.infer(&x).unwrap());
    assert_eq!(bits(&ia), bits(&ib));
    assert_eq!(bits(&ia), bits(&ic));
    let scale = ya.iter().fold(1e-30f32, |m, v| m.max(v.abs()));
    let err = ia
        .iter()
        .zip(&ya)
        .fold(0f32, |m, (p, q)| m.max((p - q).abs()))
        / scale;
    assert!(err <= 1e-4, "infer differs from forward_t by {err:e}");
}

#[test]
fn gen_reports_the_same_diagnostics_as_check() {
    let gen = Command::new(env!("CARGO_BIN_EXE_octconv"))
        .args(["gen", "wrn(alpha = 1.5)"])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let check = Command::new(env!("CARGO_BIN_EXE_octconv"))
        .args(["check", "wrn(alpha = 1.5)"])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert_eq!(gen.status.code(), Some(1));
    assert_eq!(gen.stderr, check.stderr);
    assert!(String::from_utf8_lossy(&gen.stderr).contains("α out of range"));
}
