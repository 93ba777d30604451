//! The builtin model library: every builtin checks at every α, keeps its parameter count, and its IR is
//! well formed.

use octconv_spec::{check_builtin, Model, Op, Shape};

fn checked(call: &str) -> Model {
    let c = check_builtin(call);
    assert!(c.ok(), "{call}:\n{}", c.render_diagnostics(false));
    c.model.unwrap()
}

/// Layers read only earlier layers, input shapes agree with the producers' outputs, names are unique.
fn assert_well_formed(m: &Model) {
    let mut names = std::collections::HashSet::new();
    for (i, l) in m.layers.iter().enumerate() {
        assert!(names.insert(&l.name), "duplicate name {}", l.name);
        if i == 0 {
            assert_eq!(l.op, Op::Input);
            continue;
        }
        assert!(
            !l.inputs.is_empty() && l.inputs.iter().all(|&j| j < i),
            "{} reads a later layer",
            l.name
        );
        assert_eq!(
            l.input, m.layers[l.inputs[0]].output,
            "{}: input shape",
            l.name
        );
        if l.op == Op::Add {
            assert_eq!(
                m.layers[l.inputs[0]].output, m.layers[l.inputs[1]].output,
                "{}",
                l.name
            );
        }
    }
    assert_eq!(m.layers.last().unwrap().output, m.output);
}

const ALPHAS: [f64; 4] = [0.0, 0.25, 0.5, 0.75];

#[test]
fn every_builtin_checks_at_every_alpha_with_constant_parameters() {
    for (call, classes, params) in [
        ("wrn(n = 4, k = 10, alpha = {a})", 10, 36_479_194u64), // WRN-28-10: 36.5 M (Zagoruyko & Komodakis)
        ("resnet(depth = 50, alpha = {a})", 1000, 25_557_032),  // ResNet-50 (torchvision)
        ("mobilenet_v1(alpha = {a})", 1000, 4_231_976), // MobileNet v1 1.0 (Keras, trainable)
        (
            "resnext(depth = 50, groups = 32, width = 4, alpha = {a})",
            1000,
            25_028_904,
        ), // torchvision
        (
            "se_resnet(depth = 50, reduction = 16, alpha = {a})",
            1000,
            28_088_024,
        ), // timm / pretrainedmodels
        ("mobilenet_v2(width = 1.0, alpha = {a})", 1000, 3_504_872), // torchvision
        (
            "densenet(depth = 121, growth = 32, alpha = {a})",
            1000,
            7_978_856,
        ), // torchvision
    ] {
        for a in ALPHAS {
            let m = checked(&call.replace("{a}", &a.to_string()));
            assert_eq!(m.output, Shape::Flat { features: classes });
            assert_eq!(m.params(), params, "{call} at α = {a}");
            assert_well_formed(&m);
        }
    }
}

#[test]
fn unet_checks_at_every_alpha_with_the_published_parameter_count() {
    // U-Net with base 64, depth 4, 3 → 2 channels: 31 037 698 parameters (the common PyTorch
    // implementation with transposed-convolution upsampling and BN).
    for a in ALPHAS {
        let m = checked(&format!(
            "unet(base = 64, depth = 4, in_channels = 3, classes = 2, alpha = {a})"
        ));
        assert_eq!(m.params(), 31_037_698, "α = {a}");
        assert_eq!(
            m.output,
            Shape::Single(octconv_spec::Dims::new(2, 256, 256))
        );
        assert_well_formed(&m);
    }
}

#[test]
fn seed_wrn_has_the_parameter_counts_of_the_seeds_code() {
    // Counted from the seed's Keras code (issue #15): the plain network (convolutions with bias), the
    // octave network with the mixing head, and with the per-branch head; any α > 0 gives the same.
    for (n, k, plain, mix, per_branch) in [
        (4, 10, 31_368_650u64, 31_776_650u64, 31_365_130u64),
        (4, 2, 1_260_234, 1_276_298, 1_259_530),
    ] {
        let count = |alpha: f64, mix: bool| {
            let m = checked(&format!(
                "seed_wrn(n = {n}, k = {k}, alpha = {alpha}, mix = {mix})"
            ));
            assert_eq!(m.output, Shape::Flat { features: 10 });
            assert_well_formed(&m);
            m.params()
        };
        assert_eq!(count(0.0, true), plain, "n = {n}, k = {k}, α = 0");
        assert_eq!(
            count(0.0, false),
            plain,
            "n = {n}, k = {k}, α = 0, mix = false"
        );
        for a in [0.25, 0.5, 0.75] {
            assert_eq!(count(a, true), mix, "n = {n}, k = {k}, α = {a}, mix");
            assert_eq!(
                count(a, false),
                per_branch,
                "n = {n}, k = {k}, α = {a}, per branch"
            );
        }
    }
}

#[test]
fn macs_fall_with_alpha_and_match_published_alpha0_figures() {
    let macs = |call: &str| checked(call).macs();
    // Published α = 0 figures: ResNet-50 4.09 GMACs (torchvision), MobileNet v1 569 M mult-adds
    // (Howard et al.), WRN-28-10 5.25 GFLOPs.
    assert!((4.08e9..4.10e9).contains(&(macs("resnet(depth = 50, alpha = 0)") as f64)));
    assert!((568e6..570e6).contains(&(macs("mobilenet_v1(alpha = 0)") as f64)));
    assert!((5.23e9..5.26e9).contains(&(macs("wrn(alpha = 0)") as f64)));
    for call in [
        "wrn(n = 2, k = 4, alpha = {a})",
        "resnet(depth = 26, alpha = {a})",
        "mobilenet_v1(width = 0.5, alpha = {a})",
    ] {
        let m: Vec<u64> = ALPHAS
            .iter()
            .map(|a| macs(&call.replace("{a}", &a.to_string())))
            .collect();
        assert!(m.windows(2).all(|w| w[1] < w[0]), "{call}: {m:?}");
    }
}

#[test]
fn wrn_network_ratio_is_close_to_the_layer_formula() {
    // Every 3×3 layer of the WRN runs at α in and out, so the network follows 1 − ¾α(2 − α) closely
    // (the stem and the first layer of each block differ slightly).
    for a in [0.25, 0.5, 0.75] {
        let c = check_builtin(&format!("wrn(alpha = {a})"));
        let r = c.report().unwrap();
        let ratio = r.macs_ratio_vs_alpha0.unwrap();
        let theory = octconv_spec::cost::theory_macs_ratio(a);
        assert!(
            (ratio - theory).abs() < 0.02,
            "α = {a}: {ratio} vs {theory}"
        );
    }
}

#[test]
fn wrn_layer_names_and_shapes() {
    let m = checked("wrn(n = 1, k = 2, alpha = 0.25)");
    let names: Vec<&str> = m.layers.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(
        &names[..4],
        ["input", "octconv0", "wide0.res0.bn0", "wide0.res0.relu0"]
    );
    for n in [
        "wide0.res0.octconv1",
        "wide0.res0.shortcut.octconv0",
        "wide0.res0.add",
        "wide2.res0.add",
        "merge0",
        "linear0",
    ] {
        assert!(names.contains(&n), "{n} missing from {names:?}");
    }
    let stem = &m.layers[1];
    assert_eq!(
        stem.output.to_string(),
        "an octave pair (high [12, 32, 32], low [4, 16, 16])"
    );
    let merge = m.layers.iter().find(|l| l.name == "merge0").unwrap();
    assert_eq!(merge.output.to_string(), "[128, 8, 8]");
}

#[test]
fn wrn_per_stage_alphas() {
    let m = checked("wrn(n = 1, k = 4, alphas = [0.5, 0.25, 0.0])");
    let by_name = |n: &str| m.layers.iter().find(|l| l.name == n).unwrap().output;
    assert_eq!(
        by_name("wide0.res0.add").to_string(),
        "an octave pair (high [32, 32, 32], low [32, 16, 16])"
    );
    assert_eq!(
        by_name("wide1.res0.add").to_string(),
        "an octave pair (high [96, 16, 16], low [32, 8, 8])"
    );
    assert_eq!(by_name("wide2.res0.add").to_string(), "[256, 8, 8]");
    assert_eq!(m.params(), checked("wrn(n = 1, k = 4, alpha = 0)").params());
}

#[test]
fn alpha_one_is_all_low_and_does_not_crash() {
    for call in [
        "wrn(n = 1, k = 1, alpha = 1)",
        "mobilenet_v1(width = 0.25, alpha = 1)",
    ] {
        let m = checked(call);
        assert_well_formed(&m);
    }
    let m = checked("wrn(n = 1, k = 1, alpha = 1)");
    assert_eq!(
        m.layers[1].output.to_string(),
        "an octave pair (high [0, 32, 32], low [16, 16, 16])"
    );
}

#[test]
fn resnet_depths_and_stage_alpha() {
    for (depth, params) in [
        (26, None),
        (50, Some(25_557_032u64)),
        (101, Some(44_549_160)),
        (152, Some(60_192_808)),
    ] {
        let m = checked(&format!("resnet(depth = {depth}, alpha = 0.5)"));
        if let Some(p) = params {
            assert_eq!(m.params(), p, "ResNet-{depth} (torchvision count)");
        }
        // The last stage is single-frequency (α = 0), as in the official code.
        let last_add = m.layers.iter().rev().find(|l| l.op == Op::Add).unwrap();
        assert_eq!(last_add.output.to_string(), "[2048, 7, 7]");
    }
    let c = check_builtin("resnet(depth = 34)");
    assert_eq!(c.errors_of(octconv_spec::DiagKind::Require).len(), 1);
}

#[test]
fn mobilenet_width_multiplier() {
    let m = checked("mobilenet_v1(width = 0.5, alpha = 0.25)");
    let pooled = m
        .layers
        .iter()
        .find(|l| l.op.kind() == "global_avg_pool")
        .unwrap();
    assert_eq!(pooled.output, Shape::Flat { features: 512 });
}

#[test]
fn parameter_list_agrees_with_the_cost_model_and_names_are_unique() {
    for call in [
        "wrn(n = 2, k = 4, alpha = 0.25)",
        "wrn(n = 1, k = 1, alpha = 1)",
        "resnet(depth = 26, alpha = 0.5)",
        "mobilenet_v1(width = 0.25, alpha = 0.75)",
        "wrn(n = 1, k = 2, alpha = 0)",
    ] {
        let m = checked(call);
        let params = octconv_spec::params::model_params(&m);
        let trainable: u64 = params
            .iter()
            .filter(|p| p.trainable)
            .map(|p| p.numel())
            .sum();
        assert_eq!(trainable, m.params(), "{call}");
        let mut names = std::collections::HashSet::new();
        assert!(
            params.iter().all(|p| names.insert(p.name.clone())),
            "{call}: duplicate parameter names"
        );
    }
    let m = checked("wrn(n = 1, k = 2, alpha = 0.25)");
    let names: Vec<String> = octconv_spec::params::model_params(&m)
        .into_iter()
        .map(|p| p.name)
        .collect();
    for n in [
        "octconv0.hh.weight",
        "octconv0.hl.weight",
        "wide0.res0.bn0.h.running_var",
        "wide0.res0.octconv0.ll.weight",
        "wide0.res0.shortcut.octconv0.lh.weight",
        "bn0.l.bias",
        "linear0.weight",
        "linear0.bias",
    ] {
        assert!(names.iter().any(|x| x == n), "{n} missing");
    }
    assert!(
        !names.iter().any(|x| x == "octconv0.lh.weight"),
        "the first layer has no low input"
    );
}

/// `strided = true` (α = 0) turns every stride-2 octave convolution of the five ImageNet families
/// into a stride-2 convolution and changes nothing else: the same layers, names, shapes,
/// parameters and MACs. The default keeps the pooling rule; with α > 0 the `require` refuses it.
#[test]
fn strided_builtins_differ_from_the_pooling_ones_only_in_downsample() {
    use octconv_spec::ir::Downsample;
    for call in [
        "resnet(depth = 50, alpha = 0{s})",
        "resnext(depth = 50, groups = 32, width = 4, alpha = 0{s})",
        "mobilenet_v2(width = 1.0, alpha = 0{s})",
        "se_resnet(depth = 50, alpha = 0{s})",
        "mobilenet_v1(alpha = 0{s})",
    ] {
        let pool = checked(&call.replace("{s}", ""));
        let strided = checked(&call.replace("{s}", ", strided = true"));
        assert_eq!(pool.params(), strided.params(), "{call}");
        assert_eq!(pool.macs(), strided.macs(), "{call}");
        assert_eq!(pool.layers.len(), strided.layers.len(), "{call}");
        let mut changed = 0;
        for (p, s) in pool.layers.iter().zip(&strided.layers) {
            assert_eq!((&p.name, p.input, p.output), (&s.name, s.input, s.output));
            match (p.op, s.op) {
                (Op::OctConv(po), Op::OctConv(so)) if po.stride == 2 => {
                    assert_eq!(po.downsample, Downsample::Pool, "{call}: {}", p.name);
                    assert_eq!(so.downsample, Downsample::Stride, "{call}: {}", s.name);
                    assert_eq!(
                        Op::OctConv(po),
                        Op::OctConv(octconv_spec::ir::OctConvSpec {
                            downsample: Downsample::Pool,
                            ..so
                        })
                    );
                    changed += 1;
                }
                _ => assert_eq!(p.op, s.op, "{call}: {}", p.name),
            }
        }
        // ResNet / SE-ResNet / ResNeXt: 3 stages × (3×3 + shortcut); MobileNet v2: the stem and 4
        // depthwise; v1: the stem and 4 depthwise.
        let want = if call.starts_with("mobilenet") { 5 } else { 6 };
        assert_eq!(changed, want, "{call}");
        let c = check_builtin(&call.replace("alpha = 0{s}", "alpha = 0.25, strided = true"));
        assert!(!c.ok());
        let out = c.render_diagnostics(false);
        assert!(
            out.contains("strided = true needs alpha = 0: a layer with a low branch always pools"),
            "{call}: {out}"
        );
    }
}
