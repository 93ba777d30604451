//! The cost model against hand-computed cases and the paper's formulas.

use octconv_spec::cost::{theory_macs_ratio, theory_memory_ratio};
use octconv_spec::{check_text, Layer, Model};

fn model(text: &str) -> (Model, Model) {
    let c = check_text("t.oct", text, None);
    assert!(c.ok(), "{}", c.render_diagnostics(false));
    (c.model.unwrap(), c.baseline.expect("α = 0 baseline"))
}

fn layer<'a>(m: &'a Model, name: &str) -> &'a Layer {
    m.layers
        .iter()
        .find(|l| l.name == name)
        .unwrap_or_else(|| panic!("no layer {name}"))
}

#[test]
fn single_octconv_mac_and_memory_ratios_are_exactly_the_papers() {
    for alpha in [0.125, 0.25, 0.5, 0.75] {
        for c in [64usize, 128, 256] {
            let text = format!(
                "model m() {{ input [{c}, 32, 32]; split(alpha = {alpha}); octconv({c}, kernel = 3) as conv; merge(); }}"
            );
            let (m, base) = model(&text);
            let (l, l0) = (layer(&m, "conv"), layer(&base, "conv"));
            let macs_ratio = l.macs as f64 / l0.macs as f64;
            let mem_ratio = l.activation_bytes as f64 / l0.activation_bytes as f64;
            assert_eq!(
                macs_ratio,
                theory_macs_ratio(alpha),
                "MACs at α = {alpha}, c = {c}"
            );
            assert_eq!(
                mem_ratio,
                theory_memory_ratio(alpha),
                "memory at α = {alpha}, c = {c}"
            );
            assert_eq!(l.params, l0.params, "parameters do not depend on α");
        }
    }
    // The figures quoted by the paper: 67 / 44 / 30 % FLOPs and 81 / 63 / 44 % memory.
    let pct = |x: f64| (100.0 * x).round() as i64;
    assert_eq!(
        [0.25, 0.5, 0.75].map(|a| pct(theory_macs_ratio(a))),
        [67, 44, 30]
    );
    assert_eq!(
        [0.25, 0.5, 0.75].map(|a| pct(theory_memory_ratio(a))),
        [81, 63, 44]
    );
}

#[test]
fn octconv_costs_by_hand_stride_1_and_2() {
    // Input pair: high [4, 16, 16], low [4, 8, 8]; output 8 channels at α = 0.5 → 4 / 4; 3×3 kernel.
    let (m, _) = model("model m() { input [8, 16, 16]; split(alpha = 0.5); octconv(8, kernel = 3) as s1; octconv(8, kernel = 3, stride = 2) as s2; merge(); }");
    let s1 = layer(&m, "s1");
    // H→H at 16×16: 4·4·9·256; H→L, L→H, L→L at 8×8: 3 × 4·4·9·64.
    assert_eq!(s1.macs, 4 * 4 * 9 * 256 + 3 * 4 * 4 * 9 * 64);
    assert_eq!(s1.params, 4 * (4 * 4 * 9));
    assert_eq!(s1.activation_bytes, 4 * (4 * 256 + 4 * 64));
    let s2 = layer(&m, "s2");
    // Stride 2: H→H at 8×8, H→L at 4×4, L→H at the low input's 8×8 (no upsample), L→L at 4×4.
    assert_eq!(
        s2.macs,
        4 * 4 * 9 * 64 + 4 * 4 * 9 * 16 + 4 * 4 * 9 * 64 + 4 * 4 * 9 * 16
    );
    assert_eq!(
        s2.output.to_string(),
        "an octave pair (high [4, 8, 8], low [4, 4, 4])"
    );
}

#[test]
fn first_and_last_octconv_have_two_paths() {
    let (m, _) = model("model m() { input [3, 32, 32]; octconv(16, kernel = 3, alpha = 0.25) as first; octconv(10, kernel = 1, alpha = 0) as last; global_avg_pool(); }");
    let first = layer(&m, "first");
    // α_in = 0: H→H (12 out) at 32×32 and H→L (4 out) at 16×16.
    assert_eq!(first.macs, 12 * 3 * 9 * 1024 + 4 * 3 * 9 * 256);
    assert_eq!(first.params, 16 * 3 * 9);
    let last = layer(&m, "last");
    // α_out = 0: H→H from 12 channels at 32×32 and L→H from 4 channels at the low 16×16.
    assert_eq!(last.macs, 10 * 12 * 1024 + 10 * 4 * 256);
    assert_eq!(last.output.to_string(), "[10, 32, 32]");
}

#[test]
fn depthwise_and_grouped_octconv() {
    let (m, _) = model("model m() { input [16, 8, 8]; split(alpha = 0.25); octconv(kernel = 3, depthwise = true) as dw; octconv(16, kernel = 3, groups = 4) as g; merge(); }");
    let dw = layer(&m, "dw");
    assert_eq!(dw.params, 16 * 9);
    assert_eq!(dw.macs, 12 * 9 * 64 + 4 * 9 * 16);
    let g = layer(&m, "g");
    // Paths 12→12, 12→4, 4→12, 4→4 with 4 groups: out · (in / 4) · 9 each.
    assert_eq!(g.params, (12 * 3 + 4 * 3 + 12 + 4) * 9);
}

#[test]
fn plain_layers_by_hand() {
    let (m, _) = model("model m() { input [3, 224, 224]; conv(64, kernel = 7, stride = 2, bias = true) as c; bn() as b; max_pool(kernel = 3, stride = 2, padding = 1) as p; global_avg_pool(); linear(1000) as fc; }");
    let c = layer(&m, "c");
    assert_eq!(c.output.to_string(), "[64, 112, 112]");
    assert_eq!(c.params, 64 * 3 * 49 + 64);
    assert_eq!(c.macs, 64 * 3 * 49 * 112 * 112);
    assert_eq!(layer(&m, "b").params, 128);
    assert_eq!(layer(&m, "p").output.to_string(), "[64, 56, 56]");
    assert_eq!(layer(&m, "fc").params, 64 * 1000 + 1000);
    assert_eq!(layer(&m, "fc").macs, 64 * 1000);
}

/// WRN-(6n+4)-k at α = 0, counted by hand: 3×3 convolutions, 1×1 projections where the width changes,
/// BN weight and bias, and the classifier.
fn wrn_by_hand(n: u64, k: u64, classes: u64) -> (u64, u64) {
    let (mut params, mut macs) = (16 * 3 * 9, 16 * 3 * 9 * 32 * 32);
    let mut c_in = 16;
    for (i, (stage, hw)) in [(16 * k, 32u64 * 32), (32 * k, 16 * 16), (64 * k, 8 * 8)]
        .into_iter()
        .enumerate()
    {
        for b in 0..n {
            params += 2 * c_in + 2 * stage; // bn on the block input, bn between the convolutions
            params += stage * c_in * 9 + stage * stage * 9;
            macs += (stage * c_in * 9 + stage * stage * 9) * hw;
            if b == 0 && (i > 0 || c_in != stage) {
                params += stage * c_in; // 1×1 projection where width or size changes
                macs += stage * c_in * hw;
            }
            c_in = stage;
        }
    }
    params += 2 * c_in + c_in * classes + classes;
    macs += c_in * classes;
    (params, macs)
}

#[test]
fn wrn_matches_a_hand_count_and_the_published_parameter_count() {
    for (n, k) in [(4, 10), (2, 4), (1, 1), (3, 8)] {
        let c = octconv_spec::check_builtin(&format!("wrn(n = {n}, k = {k}, alpha = 0)"));
        let m = c.model.expect("checks");
        assert_eq!(
            (m.params(), m.macs()),
            wrn_by_hand(n, k, 10),
            "WRN n = {n}, k = {k}"
        );
    }
    // Zagoruyko & Komodakis: WRN-28-10 has 36.5 M parameters.
    assert_eq!(wrn_by_hand(4, 10, 10).0, 36_479_194);
}
