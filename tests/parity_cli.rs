//! `octconv parity`: on the CPU it compares our kernels with candle's ops (the path of every other
//! device) against an f64 reference; a device this build lacks is a clear error.

mod common;
use common::{octconv, stderr, stdout};

#[test]
fn parity_on_the_cpu_compares_our_kernels_with_candle_ops_against_f64() {
    let o = octconv(&[
        "parity",
        "wrn(n = 1, k = 1)",
        "--alphas",
        "0,0.5",
        "--train",
        "--dtype",
        "f32,f64",
        "--device",
        "cpu",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "one report per α");
    for v in &lines {
        assert_eq!(v["ok"], true);
        assert!(v["other"].as_str().unwrap().contains("candle ops"));
        let sides = v["sides"].as_array().unwrap();
        assert_eq!(sides.len(), 2);
        // f64 against f64: only a difference of the computation could show.
        assert_eq!(sides[1]["dtype"], "f64");
        assert!(sides[1]["output"]["relative"].as_f64().unwrap() < 1e-12);
        assert!(sides[1]["worst_gradient"]["relative"].as_f64().unwrap() < 1e-10);
        // f32: rounding, of the same order as our kernels' own f32 error.
        assert!(sides[0]["output"]["relative"].as_f64().unwrap() < 1e-5);
        assert!(
            v["cpu_f32_baseline"]["output"]["relative"]
                .as_f64()
                .unwrap()
                > 0.0
        );
        assert!(sides[0]["gradients"].as_u64().unwrap() > 10);
    }
}

#[test]
fn parity_fails_when_the_tolerance_is_below_the_rounding() {
    let o = octconv(&[
        "parity",
        "wrn(n = 1, k = 1, alpha = 0.25)",
        "--reference",
        "f32",
        "--tol",
        "1e-12",
        "--device",
        "cpu",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stdout(&o).contains("ABOVE --tol"), "{}", stdout(&o));
}

#[cfg(not(feature = "cuda"))]
#[test]
fn parity_on_cuda_without_the_feature_is_an_error() {
    let o = octconv(&["parity", "wrn(n = 1, k = 1)", "--device", "cuda:0"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--features cuda"), "{}", stderr(&o));
}
