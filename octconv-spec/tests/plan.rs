//! `plan::InputMaps` and `plan::OutputMaps`: which convolutions apply the batch norm and ReLU before
//! them in inference, and which convolutions and adds apply the batch norm and activation after them
//! to their output in place.

use octconv_spec::plan::{InputMaps, OutputMap, OutputMaps};
use octconv_spec::{check_builtin, check_text};

#[test]
fn wrn_input_maps_cover_every_convolution_after_bn_relu_but_not_the_shortcuts() {
    let m = check_builtin("wrn(n = 1, k = 1, alpha = 0.25)")
        .model
        .unwrap();
    let plan = InputMaps::plan(&m);
    let name = |i: usize| m.layers[i].name.as_str();
    let applied: Vec<(&str, &str)> = plan
        .applies
        .iter()
        .enumerate()
        .filter_map(|(k, b)| b.map(|b| (name(k), name(b))))
        .collect();
    // Stride 2 (the first convolution of wide1 and wide2) applies the map as it pools; the
    // shortcut projections read the block input before its batch norm, so they get none.
    assert_eq!(
        applied,
        [
            ("wide0.res0.octconv0", "wide0.res0.bn0"),
            ("wide0.res0.octconv1", "wide0.res0.bn1"),
            ("wide1.res0.octconv0", "wide1.res0.bn0"),
            ("wide1.res0.octconv1", "wide1.res0.bn1"),
            ("wide2.res0.octconv0", "wide2.res0.bn0"),
            ("wide2.res0.octconv1", "wide2.res0.bn1"),
        ]
    );
    let passed: Vec<&str> = (0..m.layers.len())
        .filter(|&i| plan.passed_over[i])
        .map(name)
        .collect();
    let chain = |b: &str, d: bool| {
        let mut v = vec![
            format!("{b}.bn{}", u8::from(d)),
            format!("{b}.relu{}", u8::from(d)),
        ];
        if d {
            v.push(format!("{b}.dropout0"));
        }
        v
    };
    let want: Vec<String> = ["wide0.res0", "wide1.res0", "wide2.res0"]
        .into_iter()
        .flat_map(|b| [chain(b, false), chain(b, true)].concat())
        .collect();
    assert_eq!(passed, want);
    assert_eq!(plan.count(), 6);
}

#[test]
fn mobilenet_has_no_input_maps_its_convolutions_are_depthwise_and_1x1() {
    let m = check_builtin("mobilenet_v1(width = 0.25, alpha = 0.25)")
        .model
        .unwrap();
    let plan = InputMaps::plan(&m);
    assert_eq!(
        plan.count(),
        0,
        "depthwise convolutions take no input map, and each 1×1 one reads a batch norm of a fresh \
         convolution output, which that convolution maps instead"
    );
    // One entry per layer (an empty plan would pass the check below vacuously).
    assert_eq!(plan.passed_over.len(), m.layers.len());
    assert_eq!(plan.applies.len(), m.layers.len());
    assert!(m.layers.len() > 10);
    assert!(plan.passed_over.iter().all(|p| !p));
}

#[test]
fn output_maps_take_single_reader_bn_and_activation_chains_after_convolutions_and_adds() {
    let text = "model t() {
        input [3, 8, 8];
        conv(8, kernel = 3); bn(); relu6();
        octconv(8, kernel = 1) as y;
        bn(); relu();
        octconv(8, kernel = 3); bn();
        add(y); relu();
        octconv(8, kernel = 3) as z;
        relu();
        add(z);
        bn(); relu(); octconv(8, kernel = 3);
        global_avg_pool(); linear(4);
    }";
    let m = check_text("t.oct", text, None).model.unwrap();
    let names: Vec<&str> = m.layers.iter().map(|l| l.name.as_str()).collect();
    let at = |n: &str| names.iter().position(|&x| x == n).unwrap();
    let inputs = InputMaps::plan(&m);
    let plan = OutputMaps::plan(&m, &inputs);
    let applied: Vec<(&str, Option<&str>, Option<&str>)> = plan
        .applies
        .iter()
        .enumerate()
        .filter_map(|(j, o)| o.map(|o| (names[j], o.bn.map(|b| names[b]), o.act.map(|a| names[a]))))
        .collect();
    // conv0 → bn0 → relu6_0: the whole chain. `y` and `z` have two readers each: nothing. bn1 →
    // relu0 belong to octconv0's input map. octconv0 → bn2 is read by an add: the BN alone. add0 →
    // relu1: the ReLU alone. add1 → bn3 → relu3: an input map again.
    assert_eq!(
        applied,
        [
            ("conv0", Some("bn0"), Some("relu6_0")),
            ("octconv0", Some("bn2"), None),
            ("add0", None, Some("relu1")),
        ]
    );
    assert_eq!(inputs.applies[at("octconv0")], Some(at("bn1")));
    let passed: Vec<&str> = (0..names.len())
        .filter(|&i| plan.passed_over[i])
        .map(|i| names[i])
        .collect();
    assert_eq!(passed, ["bn0", "relu6_0", "bn2", "relu1"]);
    assert_eq!(plan.count(), 3);
    assert_eq!(
        plan.applies[at("conv0")],
        Some(OutputMap {
            bn: Some(at("bn0")),
            act: Some(at("relu6_0")),
            pool: None,
            pool_for: None,
            add: None,
            mean: None,
        })
    );
}

/// MobileNet v2 at α = 0: each expansion read only (through its batch norm and ReLU6) by a stride-2
/// depthwise layer hands that layer its map pooled, and the depthwise layer runs on it
/// (`Step::OnPooled`), at α = .5 too (depthwise pairs); a dense stride-2 pair reader (an L→H path),
/// a stride-2 reader whose input has another reader, and one with `downsample = stride` get
/// nothing pooled early.
#[test]
fn expansions_before_stride_2_layers_that_pool_first_hand_them_the_pooled_map() {
    use octconv_spec::plan::{Program, Step};
    let m = check_builtin("mobilenet_v2(width = 1.0, alpha = 0.0)")
        .model
        .unwrap();
    let program = Program::lower(&m);
    let name = |i: usize| m.layers[i].name.as_str();
    let mut pooled = Vec::new();
    for (j, l) in program.layers.iter().enumerate() {
        let Step::Run {
            map:
                Some(
                    map @ OutputMap {
                        pool_for: Some(c), ..
                    },
                ),
        } = l.step
        else {
            continue;
        };
        assert!(
            matches!(program.layers[c].step, Step::OnPooled { .. }),
            "{}",
            name(c)
        );
        assert_eq!(m.layers[c].inputs, [map.act.unwrap()], "{}", name(c));
        pooled.push((name(j), name(c)));
    }
    assert_eq!(
        pooled,
        [
            ("stage1.inverted0.octconv0", "stage1.inverted0.octconv1"),
            ("stage2.inverted0.octconv0", "stage2.inverted0.octconv1"),
            ("stage3.inverted0.octconv0", "stage3.inverted0.octconv1"),
            ("stage5.inverted0.octconv0", "stage5.inverted0.octconv1"),
        ]
    );
    assert_eq!(program.count(|s| matches!(s, Step::OnPooled { .. })), 4);
    // At α = .5 the expansions are octave pairs and their readers depthwise pairs: pooled too.
    let m = check_builtin("mobilenet_v2(width = 1.0, alpha = 0.5)")
        .model
        .unwrap();
    assert_eq!(
        Program::lower(&m).count(|s| matches!(s, Step::OnPooled { .. })),
        4
    );
    // A dense stride-2 pair reader has an L→H path, which reads its low input unpooled: no.
    let text = "model t() { input [8, 16, 16]; octconv(16, kernel = 1, alpha = 0.5); bn(); relu();
        octconv(16, kernel = 3, stride = 2, alpha = 0.5); merge(); global_avg_pool(); linear(4); }";
    let m = check_text("t.oct", text, None).model.unwrap();
    assert_eq!(
        Program::lower(&m).count(|s| matches!(s, Step::OnPooled { .. })),
        0
    );
    // A stride-2 reader whose input has a second reader, and one that convolves at stride 2.
    for (reader, extra) in [
        ("octconv(16, kernel = 3, stride = 2)", "upsample(); add(e);"),
        (
            "octconv(16, kernel = 3, stride = 2, downsample = \"stride\")",
            "",
        ),
        ("octconv(16, kernel = 3, stride = 2)", ""),
    ] {
        let text = format!(
            "model t() {{ input [8, 16, 16]; octconv(16, kernel = 1); bn(); relu6() as e;
             {reader}; {extra} global_avg_pool(); linear(4); }}"
        );
        let m = check_text("t.oct", &text, None).model.unwrap();
        let onpooled = Program::lower(&m).count(|s| matches!(s, Step::OnPooled { .. }));
        let want = usize::from(extra.is_empty() && !reader.contains("downsample"));
        assert_eq!(onpooled, want, "{reader} {extra}");
    }
}

/// `Program::lower`: a DenseNet block's concatenations form one chain per block (each link's first
/// input the previous link, read otherwise only by a batch norm); the transition's concatenation
/// ends it. A concatenation read by a convolution directly starts no chain.
#[test]
fn densenet_blocks_are_concatenation_chains_and_a_concat_read_by_a_convolution_is_not() {
    use octconv_spec::plan::{ConcatPlace, Program, Step};
    let m = check_builtin("densenet(depth = 121, growth = 8, classes = 5, alpha = 0.25)")
        .model
        .unwrap();
    let program = Program::lower(&m);
    let concats: Vec<usize> = (0..m.layers.len())
        .filter(|&j| matches!(m.layers[j].op, octconv_spec::ir::Op::Concat))
        .collect();
    // 6 + 12 + 24 + 16 dense layers, one concatenation each.
    assert_eq!(concats.len(), 58);
    let starts: Vec<(usize, usize)> = program
        .layers
        .iter()
        .enumerate()
        .filter_map(|(j, l)| match l.step {
            Step::Concat(ConcatPlace::Start { end }) => Some((j, end)),
            _ => None,
        })
        .collect();
    assert_eq!(starts.len(), 4, "one chain per dense block: {starts:?}");
    for (start, end) in starts {
        let links: Vec<usize> = concats
            .iter()
            .copied()
            .filter(|&c| c > start && c <= end)
            .collect();
        assert!(!links.is_empty());
        for &c in &links {
            assert_eq!(
                program.layers[c].step,
                Step::Concat(ConcatPlace::Extend { start, end }),
                "{}",
                m.layers[c].name
            );
        }
        // Each link reads the previous one first.
        let mut prev = start;
        for &c in &links {
            assert_eq!(m.layers[c].inputs[0], prev, "{}", m.layers[c].name);
            prev = c;
        }
    }

    let m = check_text(
        "t.oct",
        "model m() { input [4, 8, 8]; \
         branches concat { { }, { conv(4, kernel = 1); } } \
         branches concat { { }, { conv(4, kernel = 1); } } \
         conv(4, kernel = 1); }",
        None,
    )
    .model
    .unwrap();
    let program = Program::lower(&m);
    // The first concatenation is read by the second one's branch convolution: no chain.
    assert_eq!(program.count(|s| matches!(s, Step::Concat(_))), 0);
}

/// A batch norm that reads a convolution's output last but not alone gets no in-place output map:
/// the other reader must see the convolution's own values.
#[test]
fn a_batch_norm_sharing_its_input_with_another_reader_is_not_applied_in_place() {
    let m = check_text(
        "t.oct",
        "model m() { input [3, 8, 8]; conv(8, kernel = 3); \
         branches concat { { conv(4, kernel = 1); }, { bn(); relu(); } } }",
        None,
    )
    .model
    .unwrap();
    let maps = OutputMaps::plan(&m, &InputMaps::plan(&m));
    let conv = m.layers.iter().position(|l| l.name == "conv0").unwrap();
    assert_eq!(maps.applies[conv], None);
    assert_eq!(maps.applies.len(), m.layers.len());
    // The 1×1 convolution's own output feeds nothing but the concatenation.
    assert!(maps.passed_over.iter().all(|p| !p));
}

/// The ImageNet stem (conv → BN → ReLU → 3×3 / 2 max pool) is one output map with the pool: the
/// convolution applies all three, the pool passes on, and `Program::lower` carries it.
#[test]
fn stem_conv_takes_its_batch_norm_relu_and_max_pool_as_one_output_map() {
    use octconv_spec::ir::Op;
    use octconv_spec::plan::{Program, Step};
    for call in [
        "densenet(depth = 121, growth = 8, classes = 5, alpha = 0.5)",
        "resnext(depth = 50, groups = 32, width = 4, alpha = 0.25)",
    ] {
        let m = check_builtin(call).model.unwrap();
        let first = |f: fn(&Op) -> bool| (0..m.layers.len()).find(|&j| f(&m.layers[j].op)).unwrap();
        let conv = first(|op| matches!(op, Op::Conv(_)));
        let pool = first(|op| matches!(op, Op::MaxPool(_)));
        let plan = OutputMaps::plan(&m, &InputMaps::plan(&m));
        let map =
            plan.applies[conv].unwrap_or_else(|| panic!("{call}: the stem has no output map"));
        assert_eq!(map.pool, Some(pool), "{call}");
        assert!(map.bn.is_some() && map.act.is_some(), "{call}: {map:?}");
        for k in [map.bn.unwrap(), map.act.unwrap(), pool] {
            assert!(plan.passed_over[k], "{call}: layer {k} not passed over");
        }
        let program = Program::lower(&m);
        assert_eq!(
            program.layers[conv].step,
            Step::Run { map: Some(map) },
            "{call}"
        );
        assert_eq!(program.layers[pool].step, Step::PassOn, "{call}");
    }
}

/// SE-ResNet: every residual join takes the squeeze-and-excitation scaling into its pass
/// (`Step::ScaleAdd`, the scale passing its value input on), and the gates stay alive until the
/// join reads them: freed by the join, not by the scale.
#[test]
fn se_resnet_joins_take_the_scaling_into_their_pass_and_keep_the_gates_alive() {
    use octconv_spec::ir::Op;
    use octconv_spec::plan::{Program, Step};
    for alpha in ["0", "0.5"] {
        let m = check_builtin(&format!(
            "se_resnet(depth = 50, reduction = 16, alpha = {alpha})"
        ))
        .model
        .unwrap();
        let program = Program::lower(&m);
        let scales: Vec<usize> = (0..m.layers.len())
            .filter(|&j| matches!(m.layers[j].op, Op::Scale))
            .collect();
        assert_eq!(scales.len(), 16, "α = {alpha}");
        for &s in &scales {
            assert_eq!(program.layers[s].step, Step::PassOn, "α = {alpha}");
            let join = (s + 1..m.layers.len())
                .find(|&j| m.layers[j].inputs.contains(&s))
                .unwrap();
            assert!(matches!(m.layers[join].op, Op::Add));
            let Step::ScaleAdd { scale, map } = program.layers[join].step else {
                panic!("α = {alpha}: `{}` is not a scale-add", m.layers[join].name);
            };
            assert_eq!(scale, s);
            // The ReLU after the join is applied in the same pass.
            assert!(map.and_then(|m| m.act).is_some(), "α = {alpha}");
            let gates = m.layers[s].inputs[1];
            assert!(!program.layers[s].frees.contains(&gates), "α = {alpha}");
            assert!(program.layers[join].frees.contains(&gates), "α = {alpha}");
        }
    }
}

/// A scale read by more than the join keeps its own pass: the other reader needs the scaled map.
#[test]
fn a_scale_with_another_reader_is_not_fused_into_the_join() {
    use octconv_spec::plan::{Program, Step};
    let text = |extra: &str| {
        format!(
            "model m() {{ input [8, 6, 6]; conv(8, kernel = 3) as x; \
             global_avg_pool(); linear(8); sigmoid(); scale(x) as s; add(x); {extra} }}"
        )
    };
    let fused = check_text("t.oct", &text(""), None).model;
    let shared = check_text("t.oct", &text("add(s);"), None).model;
    let (Some(fused), Some(shared)) = (fused, shared) else {
        panic!("the test specs check");
    };
    let count = |m| Program::lower(m).count(|s| matches!(s, Step::ScaleAdd { .. }));
    assert_eq!(count(&fused), 1);
    assert_eq!(count(&shared), 0);
}

/// MobileNet v2 at α = 0: each stride-1 depthwise layer whose input is a 1×1 expansion's mapped
/// output (read by nothing else) runs the expansion itself (`Step::ExpandDepthwise`, reading the
/// expansion's input), and the expansion with its batch norm and ReLU6 holds no value
/// (`Step::Expanded`), at α = .5 too (octave pairs); the stride-2 depthwise layers keep their pooled
/// hand-off.
#[test]
fn stride_1_depthwise_layers_run_their_1x1_expansion_image_by_image() {
    use octconv_spec::plan::{Program, Step};
    let m = check_builtin("mobilenet_v2(width = 1.0, alpha = 0.0)")
        .model
        .unwrap();
    let program = Program::lower(&m);
    let mut fused = Vec::new();
    for (c, l) in program.layers.iter().enumerate() {
        let Step::ExpandDepthwise {
            expand, expand_map, ..
        } = l.step
        else {
            continue;
        };
        assert_eq!(l.inputs, m.layers[expand].inputs, "{}", l.name);
        assert_eq!(m.layers[c].inputs, [expand_map.act.unwrap()], "{}", l.name);
        for k in [expand, expand_map.bn.unwrap(), expand_map.act.unwrap()] {
            assert_eq!(
                program.layers[k].step,
                Step::Expanded,
                "{}",
                m.layers[k].name
            );
            assert!(program.layers[k].inputs.is_empty());
        }
        // The expansion's input stays alive until this layer has read it.
        let x = l.inputs[0];
        let freed_at = program.layers.iter().position(|p| p.frees.contains(&x));
        assert!(freed_at.is_none_or(|f| f >= c), "{}", l.name);
        fused.push(m.layers[c].name.as_str());
    }
    assert_eq!(fused.len(), 12, "{fused:?}");
    assert!(fused.contains(&"stage1.res0.inverted0.octconv1"));
    assert!(fused.contains(&"stage5.res1.inverted0.octconv1"));
    assert_eq!(program.count(|s| matches!(s, Step::OnPooled { .. })), 4);
    let m = check_builtin("mobilenet_v2(width = 1.0, alpha = 0.5)")
        .model
        .unwrap();
    // At α = .5 the same twelve layers, octave pairs (the four-path 1×1 kernel and a depthwise
    // pair) and the one-branch 7 × 7 stages alike.
    let program = Program::lower(&m);
    let fused: Vec<&str> = (0..m.layers.len())
        .filter(|&c| matches!(program.layers[c].step, Step::ExpandDepthwise { .. }))
        .map(|c| m.layers[c].name.as_str())
        .collect();
    assert_eq!(fused.len(), 12, "{fused:?}");
    let pairs = fused
        .iter()
        .filter(|n| m.layers.iter().any(|l| l.name == **n && l.output.is_pair()))
        .count();
    assert!(pairs > 0 && pairs < 12, "{pairs} pairs");
}

/// `Program::lower`: every residual sum of ResNeXt-50 (α = 0 and .5) and MobileNet v2 is joined
/// by a 1×1 convolution's output stage (`OutputMap::add`, the sum `Step::SumOf`): in identity
/// blocks by the main branch's last convolution (its batch norm, then the block input, then the
/// ReLU after the sum), in projection blocks by the shortcut's convolution (made after the main
/// branch), each reading a residual made before it, kept alive until the sum. SE-ResNet's sums
/// keep their scale-add.
#[test]
fn residual_sums_are_joined_by_the_convolution_made_last_before_them() {
    use octconv_spec::ir::Op;
    use octconv_spec::plan::{Program, Step};
    for (call, sums, relu) in [
        (
            "resnext(depth = 50, groups = 32, width = 4, alpha = 0)",
            16,
            true,
        ),
        (
            "resnext(depth = 50, groups = 32, width = 4, alpha = 0.5)",
            16,
            true,
        ),
        ("mobilenet_v2(width = 1.0, alpha = 0)", 10, false),
        ("mobilenet_v2(width = 1.0, alpha = 0.5)", 10, false),
    ] {
        let m = check_builtin(call).model.unwrap();
        let program = Program::lower(&m);
        let name = |i: usize| m.layers[i].name.as_str();
        let mut joined = 0;
        let mut shortcuts = 0;
        for (a, l) in m.layers.iter().enumerate() {
            if !matches!(l.op, Op::Add) {
                continue;
            }
            let Step::SumOf { at } = program.layers[a].step else {
                panic!("{call}: `{}` is not joined", name(a));
            };
            let bn = l.inputs[at];
            let conv = m.layers[bn].inputs[0];
            let residual = program.residual(a).unwrap();
            assert_eq!(residual, l.inputs[1 - at], "{call}");
            let Step::Run { map: Some(map) } = program.layers[conv].step else {
                panic!("{call}: `{}` runs no map", name(conv));
            };
            assert!(matches!(m.layers[conv].op, Op::OctConv(_)), "{call}");
            assert_eq!((map.bn, map.add), (Some(bn), Some(a)), "{call}");
            assert!(map.pool.is_none() && map.pool_for.is_none(), "{call}");
            assert_eq!(map.act.is_some(), relu, "{call}: `{}`", name(a));
            assert!(residual < conv, "{call}: `{}`", name(conv));
            // Read by the convolution, freed no earlier than the sum.
            assert!(
                (0..a).all(|j| !program.layers[j].frees.contains(&residual)),
                "{call}: `{}` freed before the sum",
                name(residual)
            );
            joined += 1;
            shortcuts += usize::from(name(conv).contains("shortcut"));
        }
        assert_eq!(joined, sums, "{call}");
        // ResNeXt-50's four projection blocks join at their shortcut's convolution.
        let want = if call.starts_with("resnext") { 4 } else { 0 };
        assert_eq!(shortcuts, want, "{call}");
    }
    let m = check_builtin("se_resnet(depth = 50, reduction = 16, alpha = 0.5)")
        .model
        .unwrap();
    let program = Program::lower(&m);
    assert_eq!(program.count(|s| matches!(s, Step::ScaleAdd { .. })), 16);
    assert_eq!(program.count(|s| matches!(s, Step::SumOf { .. })), 0);
}

/// A sum is joined only where the joined value can replace the convolution's: not when its batch
/// norm has another reader, not when the convolution's map has an activation of its own, and not
/// when the other input is made after the convolution.
#[test]
fn a_sum_is_not_joined_where_the_convolution_or_its_batch_norm_has_other_readers() {
    use octconv_spec::plan::{Program, Step};
    let joins = |body: &str| {
        let text = format!("model t() {{ input [8, 6, 6]; {body} global_avg_pool(); linear(4); }}");
        let m = check_text("t.oct", &text, None).model.unwrap();
        Program::lower(&m).count(|s| matches!(s, Step::SumOf { .. }))
    };
    let x = "conv(8, kernel = 3) as x;";
    assert_eq!(
        joins(&format!(
            "{x} octconv(8, kernel = 1); bn(); add(x); relu();"
        )),
        1
    );
    assert_eq!(joins(&format!("{x} octconv(8, kernel = 1); add(x);")), 1);
    // The batch norm's value read by a second sum.
    assert_eq!(
        joins(&format!(
            "{x} octconv(8, kernel = 1); bn() as b; add(x); add(b);"
        )),
        0
    );
    // The other input made after the convolution (and not itself a joinable convolution's).
    assert_eq!(
        joins(&format!(
            "{x} residual {{ octconv(8, kernel = 1); }} shortcut {{ conv(8, kernel = 3); relu(); }}"
        )),
        0
    );
    // The convolution's own ReLU before the sum.
    assert_eq!(
        joins(&format!(
            "{x} octconv(8, kernel = 1); bn(); relu(); add(x);"
        )),
        0
    );
}

/// `Program::lower`: every squeeze of SE-ResNet-50 (α = 0 and .5) is a global average pooling
/// whose means the block's last 1×1 convolution sums in its output stage (`OutputMap::mean`, the
/// pooling `Step::Meaned`, reading nothing); the pooling of a value with no convolution behind its
/// map (ResNeXt's head, after a joined sum) runs on its own, and so does one of a value that
/// another map already pools.
#[test]
fn squeezes_are_summed_by_the_output_stage_of_the_convolution_before_them() {
    use octconv_spec::ir::Op;
    use octconv_spec::plan::{Program, Step};
    for alpha in ["0", "0.5"] {
        let m = check_builtin(&format!(
            "se_resnet(depth = 50, reduction = 16, alpha = {alpha})"
        ))
        .model
        .unwrap();
        let program = Program::lower(&m);
        let gaps: Vec<usize> = (0..m.layers.len())
            .filter(|&j| matches!(m.layers[j].op, Op::GlobalAvgPool { .. }))
            .collect();
        assert_eq!(gaps.len(), 17, "α = {alpha}");
        let mut meaned = 0;
        for &g in &gaps {
            let summed_by = (0..g).find(|&c| {
                matches!(program.layers[c].step, Step::Run { map: Some(map) } if map.mean == Some(g))
            });
            match program.layers[g].step {
                Step::Meaned => {
                    let c = summed_by.expect("a producer sums the means");
                    assert!(matches!(m.layers[c].op, Op::OctConv(_)), "α = {alpha}");
                    assert!(program.layers[g].inputs.is_empty(), "α = {alpha}");
                    let Step::Run { map: Some(map) } = program.layers[c].step else {
                        unreachable!()
                    };
                    assert_eq!(map.bn, Some(m.layers[g].inputs[0]), "α = {alpha}");
                    meaned += 1;
                }
                _ => assert!(summed_by.is_none(), "α = {alpha}"),
            }
        }
        // The 16 squeezes; the head pools a ReLU after a scale-add.
        assert_eq!(meaned, 16, "α = {alpha}");
    }
    let m = check_builtin("resnext(depth = 50, groups = 32, width = 4, alpha = 0)")
        .model
        .unwrap();
    assert_eq!(Program::lower(&m).count(|s| matches!(s, Step::Meaned)), 0);
    // A plain convolution's own value pooled (no map): summed too, and freed at the pooling,
    // which fetches nothing.
    let text =
        "model t() { input [8, 6, 6]; octconv(8, kernel = 1); global_avg_pool(); linear(4); }";
    let m = check_text("t.oct", text, None).model.unwrap();
    let program = Program::lower(&m);
    assert_eq!(program.count(|s| matches!(s, Step::Meaned)), 1);
    assert_eq!(program.layers[2].step, Step::Meaned);
    assert!(program.layers[2].inputs.is_empty());
    assert_eq!(program.layers[2].frees, [1]);
}

/// Pre-activation blocks (WRN): every sum is joined, the identity blocks' by their last
/// convolution, which runs after its input's batch norm and ReLU (`Step::AfterBnRelu`) with the
/// sum as its only map (no batch norm, no activation after the sum); the residual (the block's
/// input) is made before it and freed no earlier than the sum. At α = 0 and α > 0.
#[test]
fn pre_activation_sums_are_joined_by_the_convolution_after_bn_relu() {
    use octconv_spec::ir::Op;
    use octconv_spec::plan::{Program, Step};
    for call in [
        "wrn(n = 2, k = 4, alpha = 0)",
        "wrn(n = 2, k = 4, alpha = 0.5)",
    ] {
        let m = check_builtin(call).model.unwrap();
        let program = Program::lower(&m);
        let name = |i: usize| m.layers[i].name.as_str();
        let (mut sums, mut after_bn_relu) = (0, 0);
        for (a, l) in m.layers.iter().enumerate() {
            if !matches!(l.op, Op::Add) {
                continue;
            }
            sums += 1;
            let Step::SumOf { at } = program.layers[a].step else {
                panic!("{call}: `{}` is not joined", name(a));
            };
            let conv = l.inputs[at];
            let residual = program.residual(a).unwrap();
            assert_eq!(residual, l.inputs[1 - at], "{call}");
            assert!(matches!(m.layers[conv].op, Op::OctConv(_)), "{call}");
            assert!(residual < conv, "{call}: `{}`", name(conv));
            assert!(
                (0..a).all(|j| !program.layers[j].frees.contains(&residual)),
                "{call}: `{}` freed before the sum",
                name(residual)
            );
            let map = match program.layers[conv].step {
                Step::AfterBnRelu { map: Some(map), .. } => {
                    after_bn_relu += 1;
                    map
                }
                Step::Run { map: Some(map) } => map,
                ref other => panic!("{call}: `{}` runs {other:?}", name(conv)),
            };
            assert_eq!(map.add, Some(a), "{call}");
            assert!(
                map.bn.is_none() && map.act.is_none(),
                "{call}: `{}`",
                name(a)
            );
            assert!(map.pool.is_none() && map.pool_for.is_none(), "{call}");
        }
        // Three stages of two blocks: each stage's second block has an identity shortcut.
        assert_eq!(sums, 6, "{call}");
        assert_eq!(after_bn_relu, 3, "{call}");
    }
}
