//! `octconv parity`: CPU against itself is exact; a device this build lacks is a clear error.

mod common;
use common::{octconv, stderr, stdout};

#[test]
fn parity_of_cpu_with_itself_is_exact() {
    let o = octconv(&[
        "parity",
        "wrn(n = 1, k = 1, alpha = 0.5)",
        "--device",
        "cpu",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["max_abs_error"], 0.0);
    assert_eq!(v["ok"], true);
    assert!(v["max_abs_output"].as_f64().unwrap() > 0.0);
}

#[cfg(not(feature = "cuda"))]
#[test]
fn parity_on_cuda_without_the_feature_is_an_error() {
    let o = octconv(&["parity", "wrn(n = 1, k = 1)", "--device", "cuda:0"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--features cuda"), "{}", stderr(&o));
}
