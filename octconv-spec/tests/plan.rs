//! `plan::InputMaps`: which convolutions apply the batch norm and ReLU before them in inference.

use octconv_spec::check_builtin;
use octconv_spec::plan::InputMaps;

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
        "depthwise and 1×1 convolutions take no input map"
    );
    // One entry per layer (an empty plan would pass the check below vacuously).
    assert_eq!(plan.passed_over.len(), m.layers.len());
    assert_eq!(plan.applies.len(), m.layers.len());
    assert!(m.layers.len() > 10);
    assert!(plan.passed_over.iter().all(|p| !p));
}
