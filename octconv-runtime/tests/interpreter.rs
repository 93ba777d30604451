//! The interpreter: builds every builtin, output shapes equal the checker's, bad inputs are errors,
//! initialisation is deterministic, BN and dropout behave in train and eval modes.

use candle_core::{DType, Device, ModuleT, Tensor};
use candle_nn::VarBuilder;
use octconv_runtime::init::init_params;
use octconv_runtime::weights::check_weights;
use octconv_runtime::OctModel;
use octconv_spec::{check_builtin, check_text, Model, Shape};

fn ir(call: &str) -> Model {
    let c = check_builtin(call);
    assert!(c.ok(), "{}", c.render_diagnostics(false));
    c.model.unwrap()
}

fn build(ir: Model, seed: u64) -> OctModel {
    let params = init_params(&ir, seed, DType::F32, &Device::Cpu).unwrap();
    OctModel::new(
        ir,
        VarBuilder::from_tensors(params, DType::F32, &Device::Cpu),
    )
    .unwrap()
}

fn input(m: &Model, n: usize, seed: u64) -> Tensor {
    let d = m.input;
    let count = n * d.c * d.h * d.w;
    // A deterministic, non-trivial input without candle's (unseedable) RNG.
    let v: Vec<f32> = (0..count)
        .map(|i| (((i as u64 * 2654435761 + seed) % 1000) as f32 / 500.0) - 1.0)
        .collect();
    Tensor::from_vec(v, (n, d.c, d.h, d.w), &Device::Cpu).unwrap()
}

#[test]
fn every_builtin_builds_and_its_output_shape_equals_the_checkers() {
    for call in [
        "wrn(n = 1, k = 1, alpha = 0)",
        "wrn(n = 1, k = 2, alpha = 0.25)",
        "wrn(n = 1, k = 1, alpha = 0.5)",
        "wrn(n = 1, k = 1, alpha = 0.75)",
        "wrn(n = 1, k = 1, alpha = 1)",
        "wrn(n = 1, k = 2, alphas = [0.5, 0.25, 0])",
        "resnet(depth = 26, alpha = 0.25, classes = 7)",
        "mobilenet_v1(width = 0.25, alpha = 0.5, classes = 5)",
    ] {
        let m = ir(call);
        let expected = m.output;
        let net = build(m.clone(), 1);
        // forward_value checks every layer's output shape against the checker's (an error otherwise).
        let y = net.forward_t(&input(&m, 2, 0), false).unwrap();
        match expected {
            Shape::Flat { features } => assert_eq!(y.dims(), [2, features], "{call}"),
            other => panic!("{call}: unexpected output {other}"),
        }
        let v: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        assert!(v.iter().all(|x| x.is_finite()), "{call}: non-finite output");
    }
}

#[test]
fn models_without_a_head_and_with_the_per_branch_head_run() {
    let text = "model a() { input [3, 8, 8]; octconv(8, kernel = 3, alpha = 0.5); bn(); relu(); octconv(4, kernel = 3, alpha = 0); }
                model b() { input [4, 8, 8]; split(alpha = 0.5); max_pool(kernel = 3, stride = 2, padding = 1); avg_pool(kernel = 2); global_avg_pool(per_branch = true); bn(); dropout(p = 0.5); linear(3); }";
    for (name, dims) in [("a", vec![2, 4, 8, 8]), ("b", vec![2, 3])] {
        let c = check_text("t.oct", text, Some(name));
        assert!(c.ok(), "{}", c.render_diagnostics(false));
        let m = c.model.unwrap();
        let net = build(m.clone(), 3);
        assert_eq!(
            net.forward_t(&input(&m, 2, 1), false).unwrap().dims(),
            dims.as_slice()
        );
        assert_eq!(
            net.forward_t(&input(&m, 2, 1), true).unwrap().dims(),
            dims.as_slice()
        );
    }
}

/// What the head experiment of `docs/reproduction.md` found: `merge()` upsamples the low branch by
/// nearest ×2, and a global average of a nearest-upsampled map is the average of the map, so
/// merge-then-pool and per-branch pooling give the same features in the same order, and the same
/// logits for the same weights.
#[test]
fn merge_then_pool_equals_per_branch_pooling_with_nearest_upsampling() {
    let body = "input [3, 16, 16]; octconv(12, kernel = 3, alpha = 0.25); bn(); relu(); octconv(16, kernel = 3, stride = 2, alpha = 0.25); bn(); relu();";
    let text = format!(
        "model merged() {{ {body} merge(); global_avg_pool(); linear(5); }}
         model branches() {{ {body} global_avg_pool(per_branch = true); linear(5); }}"
    );
    let net = |name: &str| {
        let c = check_text("t.oct", &text, Some(name));
        assert!(c.ok(), "{}", c.render_diagnostics(false));
        let m = c.model.unwrap();
        (build(m.clone(), 7), input(&m, 3, 2))
    };
    let ((merged, x), (branches, _)) = (net("merged"), net("branches"));
    for train in [false, true] {
        let logits = |net: &OctModel| -> Vec<f32> {
            let y = net.forward_t(&x, train).unwrap();
            y.flatten_all().unwrap().to_vec1().unwrap()
        };
        let (a, b) = (logits(&merged), logits(&branches));
        assert_eq!(a.len(), 15);
        let spread = a.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(spread > 1e-3, "logits must not be trivially zero: {a:?}");
        for (p, q) in a.iter().zip(&b) {
            assert!(
                (p - q).abs() <= 1e-5 * (1.0 + p.abs()),
                "train {train}: {a:?} vs {b:?}"
            );
        }
    }
}

/// The seed's mixing head (`merge(to = low)`, 1×1 conv, BN, ReLU, then pooling) is not per-branch
/// pooling in disguise: per-branch pooling followed by `linear` is affine in its input, so
/// `f(a + b) + f(0) = f(a) + f(b)`; the mixing head's ReLU breaks that on random weights.
#[test]
fn the_mixing_head_is_not_affine_like_per_branch_pooling() {
    let text = "model per_branch() { input [6, 8, 8]; pyramid(); global_avg_pool(per_branch = true); linear(4); }
         model mixing() { input [6, 8, 8]; pyramid(); merge(to = low); conv(12, kernel = 1, bias = true); bn(); relu(); global_avg_pool(); linear(4); }";
    let defect = |name: &str| -> f32 {
        let c = check_text("t.oct", text, Some(name));
        assert!(c.ok(), "{}", c.render_diagnostics(false));
        let m = c.model.unwrap();
        let net = build(m.clone(), 11);
        let (a, b) = (input(&m, 6, 1), input(&m, 6, 2));
        let zero = a.zeros_like().unwrap();
        let ab = (&a + &b).unwrap();
        let f = |x: &Tensor| -> Vec<f32> {
            let y = net.forward_t(x, false).unwrap();
            y.flatten_all().unwrap().to_vec1().unwrap()
        };
        let (fa, fb, fab, f0) = (f(&a), f(&b), f(&ab), f(&zero));
        (0..fa.len())
            .map(|i| (fab[i] + f0[i] - fa[i] - fb[i]).abs())
            .fold(0.0, f32::max)
    };
    let per_branch = defect("per_branch");
    let mixing = defect("mixing");
    assert!(
        per_branch < 1e-5,
        "per-branch pooling is affine: {per_branch}"
    );
    // Rounding alone gives about 1e-7 here (the per-branch figure).
    assert!(
        mixing > 1e-3 && mixing > 100.0 * per_branch,
        "the mixing head must not be affine: {mixing} (per-branch {per_branch})"
    );
}

#[test]
fn wrong_input_shape_is_an_error_not_a_panic() {
    let m = ir("wrn(n = 1, k = 1, alpha = 0.25)");
    let net = build(m, 0);
    for shape in [vec![2, 3, 16, 16], vec![2, 1, 32, 32], vec![3, 32, 32]] {
        let x = Tensor::zeros(shape.as_slice(), DType::F32, &Device::Cpu).unwrap();
        let e = net.forward_t(&x, false).unwrap_err().to_string();
        assert!(
            e.contains("does not match model `wrn`: expected [N, 3, 32, 32]"),
            "{e}"
        );
    }
}

#[test]
fn initialisation_is_deterministic_per_seed_and_per_parameter() {
    let m = ir("wrn(n = 1, k = 1, alpha = 0.25)");
    let a = init_params(&m, 42, DType::F32, &Device::Cpu).unwrap();
    let b = init_params(&m, 42, DType::F32, &Device::Cpu).unwrap();
    let c = init_params(&m, 43, DType::F32, &Device::Cpu).unwrap();
    let get = |p: &std::collections::HashMap<String, Tensor>, n: &str| -> Vec<f32> {
        p[n].flatten_all().unwrap().to_vec1().unwrap()
    };
    let name = "wide0.res0.octconv0.hh.weight";
    assert_eq!(get(&a, name), get(&b, name));
    assert_ne!(get(&a, name), get(&c, name));
    assert_ne!(
        get(&a, "wide0.res0.octconv0.hl.weight")[..4],
        get(&a, "wide0.res0.octconv0.ll.weight")[..4]
    );
    // A value fixed by the algorithm (ChaCha8, stream = FNV-1a of the name): guards against silent
    // changes of the initialisation across versions and machines.
    let first = get(&a, "octconv0.hh.weight")[0];
    let again = get(
        &init_params(&m, 42, DType::F32, &Device::Cpu).unwrap(),
        "octconv0.hh.weight",
    )[0];
    assert_eq!(first.to_bits(), again.to_bits());
    // Kaiming normal: std ≈ sqrt(2 / fan_in) for a large layer, where the fan-in counts both
    // paths into the output branch (H→H from 384 high channels, L→H from 128 low ones), as for the
    // plain convolution of 512 channels that the octave one replaces.
    let big = ir("wrn(n = 1, k = 8, alpha = 0.25)");
    let p = init_params(&big, 1, DType::F32, &Device::Cpu).unwrap();
    let w = get(&p, "wide2.res0.octconv1.hh.weight");
    assert_eq!(w.len(), 384 * 384 * 9);
    let fan_in: f64 = (384.0 + 128.0) * 9.0;
    let std = (w.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / w.len() as f64).sqrt();
    assert!(
        (std / (2.0 / fan_in).sqrt() - 1.0).abs() < 0.02,
        "std {std}"
    );
    assert!(get(&p, "bn0.h.weight").iter().all(|&x| x == 1.0));
    assert!(get(&p, "bn0.l.running_var").iter().all(|&x| x == 1.0));
    assert!(get(&p, "linear0.bias").iter().all(|&x| x == 0.0));
    check_weights(&big, &p).unwrap();
}

#[test]
fn weight_problems_are_reported_by_name() {
    let m = ir("wrn(n = 1, k = 1, alpha = 0.25)");
    let mut p = init_params(&m, 0, DType::F32, &Device::Cpu).unwrap();
    p.remove("octconv0.hl.weight");
    p.insert(
        "linear0.weight".into(),
        Tensor::zeros((3, 3), DType::F32, &Device::Cpu).unwrap(),
    );
    p.insert(
        "bn0.h.bias".into(),
        Tensor::zeros(48, DType::F64, &Device::Cpu).unwrap(),
    );
    p.insert(
        "stray".into(),
        Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap(),
    );
    let e = check_weights(&m, &p).unwrap_err();
    let text = e.to_string();
    assert_eq!(e.problems.len(), 4, "{text}");
    assert!(
        text.contains("missing tensor `octconv0.hl.weight` (shape [4, 3, 3, 3])"),
        "{text}"
    );
    assert!(
        text.contains("tensor `linear0.weight` has shape [3, 3], the model needs [10, 64]"),
        "{text}"
    );
    assert!(
        text.contains("tensor `bn0.h.bias` has dtype F64, expected f32"),
        "{text}"
    );
    assert!(text.contains("unexpected tensor `stray`"), "{text}");
}

#[test]
fn batch_norm_uses_batch_statistics_in_training_and_running_ones_in_eval() {
    let c = check_text(
        "t.oct",
        "model m() { input [2, 4, 4]; split(alpha = 0.5); bn(momentum = 1.0); merge(); }",
        None,
    );
    let m = c.model.unwrap();
    let varmap = candle_nn::VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let net = OctModel::new(m.clone(), vb).unwrap();
    let x = (input(&m, 4, 5) * 3.0).unwrap().affine(1.0, 2.0).unwrap();
    let y = net.forward_t(&x, true).unwrap();
    // Train mode: every channel of the output has mean ≈ 0 over the batch and space.
    let means: Vec<f32> = y.mean((0, 2, 3)).unwrap().to_vec1().unwrap();
    assert!(means.iter().all(|m| m.abs() < 1e-4), "{means:?}");
    // With momentum 1 the running statistics are the last batch's, so eval reproduces train mode
    // (up to the unbiased-variance correction).
    let vars = varmap.data().lock().unwrap();
    let rm: Vec<f32> = vars["bn0.h.running_mean"].as_tensor().to_vec1().unwrap();
    assert!(rm[0].abs() > 0.1, "running mean was updated: {rm:?}");
    drop(vars);
    let y_eval = net.forward_t(&x, false).unwrap();
    let d: f32 = (y - y_eval)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!(d < 0.2, "{d}");
}

#[test]
fn dropout_is_identity_in_eval_and_reproducible_in_training() {
    let c = check_text(
        "t.oct",
        "model m() { input [4, 8, 8]; dropout(p = 0.5); }",
        None,
    );
    let m = c.model.unwrap();
    let net = build(m.clone(), 0);
    let x = Tensor::ones((2, 4, 8, 8), DType::F32, &Device::Cpu).unwrap();
    let eval: Vec<f32> = net
        .forward_t(&x, false)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(eval.len(), 2 * 4 * 8 * 8);
    assert!(eval.iter().all(|&v| v == 1.0));
    net.set_dropout_seed(11);
    let a: Vec<f32> = net
        .forward_t(&x, true)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    net.set_dropout_seed(11);
    let b: Vec<f32> = net
        .forward_t(&x, true)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(a, b);
    let zeros = a.iter().filter(|&&v| v == 0.0).count();
    assert!(a.iter().all(|&v| v == 0.0 || v == 2.0));
    assert!((200..312).contains(&zeros), "{zeros} of 512 dropped");
}
