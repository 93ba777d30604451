//! `octnet!` in every form: the generated structs' constants, and outputs bit-identical to the
//! interpreter's for the same weights and input.

mod common;

use common::values;
use octconv::candle_core::{DType, Device, ModuleT, Tensor};
use octconv::candle_nn::VarBuilder;
use std::collections::HashMap;

octconv::octnet! {
    /// WRN-10-1 with α = 0.25 (a builtin call).
    #[allow(clippy::doc_markdown)]
    pub struct SmallWrn = wrn(n = 1, k = 1, alpha = 0.25, drop = 0.3);
}

octconv::octnet! {
    /// MobileNet v2 at α = 0: its plan hands pooled maps to the stride-2 depthwise layers and lets
    /// the stride-1 ones run their expansions.
    pub struct SmallMobileNetV2 = mobilenet_v2(width = 0.25, alpha = 0.0, classes = 5);
}

octconv::octnet! {
    use "../examples/custom.oct";
    pub(crate) struct Custom = custom(width = 8);
}

octconv::octnet! {
    model tiny(c: int = 8, alpha: float = 0.5) {
        input [3, 16, 16];
        octconv(c, kernel = 3, alpha = alpha); bn(); relu();
        residual { octconv(c, kernel = 3); bn(); }
        split_free_pool();
        merge(); global_avg_pool(); linear(10);
    }
    block split_free_pool() { avg_pool(kernel = 2); }
    pub struct Tiny = tiny();
    struct TinyWide = tiny(c = 16, alpha = 0.25);
}

octconv::octnet! {
    model strided_tiny() {
        input [3, 15, 15];
        octconv(8, kernel = 3, stride = 2, downsample = "stride"); bn(); relu();
        octconv(kernel = 3, stride = 2, depthwise = true, downsample = stride); bn(); relu6();
        octconv(16, kernel = 1, stride = 2, groups = 2, downsample = stride); bn(); relu();
        global_avg_pool(); linear(4);
    }
    pub struct StridedTiny = strided_tiny();
}

fn weights(ir: &octconv::spec::Model, seed: u64) -> HashMap<String, Tensor> {
    octconv::runtime::init::init_params(ir, seed, DType::F32, &Device::Cpu).unwrap()
}

fn input(c: usize, h: usize, w: usize) -> Tensor {
    let v: Vec<f32> = (0..2 * c * h * w)
        .map(|i| ((i * 7919 % 257) as f32 / 128.0) - 1.0)
        .collect();
    Tensor::from_vec(v, (2, c, h, w), &Device::Cpu).unwrap()
}

/// Same weights into the macro model and the interpreter: outputs must be bit-identical.
fn assert_same<M: ModuleT>(
    build: impl Fn(VarBuilder) -> octconv::candle_core::Result<M>,
    call: &str,
    spec: Option<(&str, &str)>,
) {
    let checked = match spec {
        None => octconv::check_builtin(call),
        Some((path, _)) => octconv::check(&octconv::CheckRequest {
            spec: octconv::SpecInput::File(std::path::Path::new(path)),
            model: Some(call),
            sets: &[],
        }),
    };
    assert!(checked.ok(), "{}", checked.render_diagnostics(false));
    let ir = checked.model.unwrap();
    let w = weights(&ir, 3);
    let d = ir.input;
    let x = input(d.c, d.h, d.w);
    let ours = build(VarBuilder::from_tensors(
        w.clone(),
        DType::F32,
        &Device::Cpu,
    ))
    .unwrap();
    let interp =
        octconv::OctModel::new(ir, VarBuilder::from_tensors(w, DType::F32, &Device::Cpu)).unwrap();
    let a: Vec<f32> = values(&ours.forward_t(&x, false).unwrap());
    let b: Vec<f32> = values(&interp.forward_t(&x, false).unwrap());
    assert!(!a.is_empty(), "{call}: no output");
    assert_eq!(bits(&a), bits(&b), "{call}: outputs differ");
}

/// The bit patterns of `v`, for exact comparisons with a readable diff.
fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn builtin_form_constants_and_bit_identical_output() {
    assert_eq!(SmallWrn::INPUT, [3, 32, 32]);
    assert_eq!(SmallWrn::OUTPUT, &[10]);
    let ir = octconv::check_builtin("wrn(n = 1, k = 1, alpha = 0.25, drop = 0.3)")
        .model
        .unwrap();
    assert_eq!(SmallWrn::PARAMS, ir.params());
    assert_eq!(SmallWrn::MACS, ir.macs());
    assert!(SmallWrn::SPEC.contains("model wrn("));
    assert_same(
        SmallWrn::new,
        "wrn(n = 1, k = 1, alpha = 0.25, drop = 0.3)",
        None,
    );
}

/// The plan's pooled hand-offs (`Step::OnPooled`) and expansions run by their depthwise readers
/// (`Step::ExpandDepthwise`) in generated code, bit-identical to the interpreter.
#[test]
fn builtin_form_with_pooled_hand_offs_and_fused_expansions_is_bit_identical() {
    use octconv::spec::plan::{Program, Step};
    let call = "mobilenet_v2(width = 0.25, alpha = 0.0, classes = 5)";
    let program = Program::lower(&octconv::check_builtin(call).model.unwrap());
    assert!(program.count(|s| matches!(s, Step::OnPooled { .. })) > 0);
    assert!(program.count(|s| matches!(s, Step::ExpandDepthwise { .. })) > 0);
    assert_same(SmallMobileNetV2::new, call, None);
}

#[test]
fn file_form_reads_the_spec_relative_to_this_file() {
    assert_eq!(Custom::INPUT, [3, 32, 32]);
    assert!(Custom::SPEC.contains("model custom("));
    assert_same(
        Custom::new,
        "custom(width = 8)",
        Some(("examples/custom.oct", "")),
    );
}

#[test]
fn inline_form_with_several_declarations() {
    assert_eq!(Tiny::INPUT, [3, 16, 16]);
    assert_eq!(TinyWide::OUTPUT, &[10]);
    const { assert!(TinyWide::PARAMS > Tiny::PARAMS) };
    let text = Tiny::SPEC;
    for (decl, call) in [
        ("tiny()", "tiny()"),
        ("tiny(c = 16, alpha = 0.25)", "tiny(c = 16, alpha = 0.25)"),
    ] {
        let checked = octconv::check_text("t.oct", text, Some(call));
        assert!(
            checked.ok(),
            "{decl}: {}",
            checked.render_diagnostics(false)
        );
        let ir = checked.model.unwrap();
        let w = weights(&ir, 5);
        let x = input(3, 16, 16);
        let interp = octconv::OctModel::new(
            ir,
            VarBuilder::from_tensors(w.clone(), DType::F32, &Device::Cpu),
        )
        .unwrap();
        let b: Vec<f32> = values(&interp.forward_t(&x, false).unwrap());
        let vb = VarBuilder::from_tensors(w, DType::F32, &Device::Cpu);
        let a = values(&if decl == "tiny()" {
            Tiny::new(vb).unwrap().forward_t(&x, false).unwrap()
        } else {
            TinyWide::new(vb).unwrap().forward_t(&x, false).unwrap()
        });
        assert!(!a.is_empty(), "{decl}: no output");
        assert_eq!(bits(&a), bits(&b), "{decl}");
    }
}

/// `downsample = stride` reaches the generated layers: odd input sizes halve as a stride-2
/// convolution does (15 → 8 → 4 → 2), and `forward_t` and `infer` equal the interpreter's bit for
/// bit.
#[test]
fn strided_downsample_passes_through_the_macro() {
    let text = StridedTiny::SPEC;
    let checked = octconv::check_text("t.oct", text, Some("strided_tiny()"));
    assert!(checked.ok(), "{}", checked.render_diagnostics(false));
    let ir = checked.model.unwrap();
    assert_eq!(StridedTiny::MACS, ir.macs());
    assert_eq!(
        ir.layers
            .iter()
            .map(|l| l.op.to_string())
            .filter(|o| o.contains("strided"))
            .count(),
        3
    );
    let w = weights(&ir, 7);
    let x = input(3, 15, 15);
    let vb = || VarBuilder::from_tensors(w.clone(), DType::F32, &Device::Cpu);
    let interp = octconv::OctModel::new(ir, vb()).unwrap();
    let ours = StridedTiny::new(vb()).unwrap();
    let a = values(&ours.forward_t(&x, false).unwrap());
    let b = values(&interp.forward_t(&x, false).unwrap());
    assert_eq!(a.len(), 2 * 4);
    assert_eq!(bits(&a), bits(&b));
    let a = values(&ours.infer(&x).unwrap());
    let b = values(&interp.infer(&x).unwrap());
    assert_eq!(bits(&a), bits(&b));
}

#[test]
fn expression_forms_build_models() {
    let ir = octconv::check_builtin("wrn(n = 1, k = 2, alpha = 0.25)")
        .model
        .unwrap();
    let w = weights(&ir, 1);
    let vb = VarBuilder::from_tensors(w.clone(), DType::F32, &Device::Cpu);
    let net = octconv::octnet!(wrn(n = 1, k = 2, alpha = 0.25))
        .build(vb)
        .unwrap();
    let vb = VarBuilder::from_tensors(w, DType::F32, &Device::Cpu);
    let net2 = octconv::octnet!(<wrn(n = 1, k = 2, alpha = 0.25)>)
        .build(vb)
        .unwrap();
    let x = input(3, 32, 32);
    let a: Vec<f32> = values(&net.forward_t(&x, false).unwrap());
    let b: Vec<f32> = values(&net2.forward_t(&x, false).unwrap());
    assert_eq!(a, b);
}

#[test]
fn wrong_input_shape_is_an_error_and_train_mode_runs() {
    let ir = octconv::check_builtin("wrn(n = 1, k = 1, alpha = 0.25, drop = 0.3)")
        .model
        .unwrap();
    let net = SmallWrn::new(VarBuilder::from_tensors(
        weights(&ir, 0),
        DType::F32,
        &Device::Cpu,
    ))
    .unwrap();
    let e = net
        .forward_t(&input(3, 16, 16), false)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("does not match model `wrn`: expected [N, 3, 32, 32]"),
        "{e}"
    );
    net.set_dropout_seed(4);
    let y = net.forward_t(&input(3, 32, 32), true).unwrap();
    assert_eq!(y.dims(), [2, 10]);
}

/// `freeze` on a generated struct: its `infer` stays bit-identical to the interpreter's (frozen or
/// not) and to its own before freezing, and the training-mode forward is refused.
#[test]
fn a_frozen_generated_model_infers_bit_identically_and_refuses_training() {
    let call = "wrn(n = 1, k = 1, alpha = 0.25, drop = 0.3)";
    let ir = octconv::check_builtin(call).model.unwrap();
    let w = weights(&ir, 5);
    let vb = || VarBuilder::from_tensors(w.clone(), DType::F32, &Device::Cpu);
    let x = input(3, 32, 32);
    let mut ours = SmallWrn::new(vb()).unwrap();
    let before = bits(&values(&ours.infer(&x).unwrap()));
    ours.freeze().unwrap();
    let mut interp = octconv::OctModel::new(ir, vb()).unwrap();
    interp.freeze().unwrap();
    for _ in 0..2 {
        assert_eq!(bits(&values(&ours.infer(&x).unwrap())), before);
        assert_eq!(bits(&values(&interp.infer(&x).unwrap())), before);
    }
    let err = ours
        .forward_t(&x, true)
        .expect_err("training a frozen model");
    assert!(err.to_string().contains("frozen"), "{err}");
}
