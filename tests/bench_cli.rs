//! `octconv bench`: the JSON rows and their invariants, the table, training mode, and its errors.

mod common;
use common::{octconv, stderr, stdout};

fn json(args: &[&str]) -> serde_json::Value {
    let o = octconv(args);
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_str(&stdout(&o)).expect("bench --json prints one JSON object")
}

#[test]
fn bench_json_has_one_row_per_alpha_with_theory_and_measured_values() {
    let v = json(&[
        "bench",
        "wrn(n = 1, k = 1)",
        "--alphas",
        "0,0.5",
        "--batch",
        "2",
        "--samples",
        "3",
        "--repeats",
        "2",
        "--json",
    ]);
    assert_eq!(v["mode"], "inference");
    assert_eq!(
        (
            v["batch"].as_u64(),
            v["samples"].as_u64(),
            v["repeats"].as_u64()
        ),
        (Some(2), Some(3), Some(2))
    );
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    let f = |r: &serde_json::Value, k: &str| r[k].as_f64().unwrap_or_else(|| panic!("{k} in {r}"));
    for r in rows {
        assert!(f(r, "median_s") > 0.0 && f(r, "mean_s") > 0.0 && f(r, "std_s") >= 0.0);
        // 3 samples per repeat: per-sample time is the repeat (2 batches) over 3 images.
        assert!(f(r, "per_sample_ms") > 0.0);
        let peak = r["peak_bytes"].as_u64().unwrap();
        assert!(peak > 0);
        assert_eq!(
            r["peak_activation_bytes"].as_u64().unwrap()
                + r["peak_scratch_bytes"].as_u64().unwrap(),
            peak,
            "the peak splits into activations and scratch"
        );
        assert!(
            r["peak_layer"].as_str().unwrap().starts_with("wide")
                || r["peak_layer"].as_str().unwrap().contains("conv"),
            "{r}"
        );
        assert_eq!(
            r["params"], rows[0]["params"],
            "OctConv keeps the parameter count across α"
        );
    }
    assert_eq!(f(&rows[0], "relative"), 1.0);
    assert_eq!(f(&rows[0], "theory"), 1.0);
    assert_eq!(f(&rows[1], "theory"), 1.0 - 0.75 * 0.5 * 1.5);
    assert_eq!(f(&rows[1], "memory_theory"), 1.0 - 0.75 * 0.5);
    // The cost model's MACs fall with α (independently of any timing).
    assert!(f(&rows[1], "macs_relative") < 0.6, "{}", rows[1]);
    assert!(rows[1]["macs"].as_u64() < rows[0]["macs"].as_u64());
}

/// `peak_bytes` of each α in `bench --alphas LIST` (inference and training mode), by α.
fn peaks(list: &str, train: bool) -> Vec<(f64, u64)> {
    let mut args = vec![
        "bench",
        "wrn(n = 2, k = 2)",
        "--alphas",
        list,
        "--batch",
        "8",
        "--samples",
        "8",
        "--repeats",
        "1",
        "--threads",
        "1",
        "--json",
    ];
    if train {
        args.push("--train");
    }
    json(&args)["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["alpha"].as_f64().unwrap(),
                r["peak_bytes"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Issue #29: scratch pools and one-time allocations used to be charged to whichever α ran first.
/// Measured on one thread: with two, the peak depends on scheduling — the `gemm` crate allocates
/// its packing buffers per call and per participating thread, so buffers are live together or one
/// after the other depending on which thread runs which task. Under load, as when the test suite
/// runs beside it, that moved α = .25's inference peak by 2.0 % (4 824 024 against 4 728 320 bytes)
/// and once by exactly 1 MiB, 15.7 % (6 679 480 against 5 630 808 in a CI run on an AVX-512 machine,
/// which allocation not established; 5 630 808 in every quiet run of both orders). The 4 % tolerance
/// stays for allocator rounding.
#[test]
fn bench_peak_memory_of_an_alpha_does_not_depend_on_what_ran_before() {
    for train in [false, true] {
        let alone = peaks("0.25", train)[0].1;
        let first = peaks("0.25,0.75,0", train)[0].1;
        let last = peaks("0,0.75,0.25", train)[2].1;
        for (what, other) in [("first", first), ("last", last)] {
            let d = (other as f64 - alone as f64).abs() / alone as f64;
            assert!(
                d <= 0.04,
                "train = {train}: α = .25 {what} in the list peaks at {other} bytes, alone at {alone} ({d:.3})"
            );
        }
    }
}

#[test]
fn bench_train_mode_times_training_steps_and_prints_the_table() {
    let o = octconv(&[
        "bench",
        "wrn(n = 1, k = 1)",
        "--alphas",
        "0.25",
        "--batch",
        "4",
        "--samples",
        "4",
        "--repeats",
        "1",
        "--train",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("Training steps of `wrn(n = 1, k = 1)`"),
        "{out}"
    );
    assert!(
        out.contains(
            "| α | mean s | median s | std s | median ms / sample | relative | FLOPs theory"
        ),
        "{out}"
    );
    assert!(out.contains("| 0.25 |"), "{out}");
}

#[test]
fn bench_rejects_specs_without_alpha_and_bad_flags() {
    let dir = std::env::temp_dir().join(format!("octconv-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let spec = dir.join("plain.oct");
    std::fs::write(&spec, "model plain(c: int = 4) { input [3, 8, 8]; conv(c, kernel = 3); relu(); global_avg_pool(); linear(2); }\n").unwrap();
    let o = octconv(&[
        "bench",
        spec.to_str().unwrap(),
        "--batch",
        "1",
        "--samples",
        "1",
        "--repeats",
        "1",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    // The whole message: what (no `alpha` parameter), where (the --alphas setting), and the fix.
    let err = stderr(&o);
    for line in [
        "error: model `plain` has no parameter `alpha`",
        "= note: parameters: c",
        "(while setting alpha = 0 for --alphas; the spec needs an `alpha` parameter)",
    ] {
        assert!(err.contains(line), "missing {line:?} in:\n{err}");
    }

    let o = octconv(&["bench", "wrn(n = 1, k = 1)", "--set", "alpha=0.5"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("conflicts with --alphas"),
        "{}",
        stderr(&o)
    );

    let o = octconv(&["bench", "wrn(n = 1, k = 1)", "--batch", "0"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("at least 1"), "{}", stderr(&o));

    let o = octconv(&[
        "bench",
        "wrn(n = 1, k = 1)",
        "--alphas",
        "1.5",
        "--repeats",
        "1",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bench_train_times_a_spec_without_a_class_output_with_the_surrogate_loss() {
    // One octave layer, merged: its output is a feature map, not a class vector.
    let dir = std::env::temp_dir().join(format!("octconv-bench-layer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let spec = dir.join("layer.oct");
    std::fs::write(
        &spec,
        "model layer(alpha: float = 0.25) { input [8, 8, 8]; split(alpha = alpha); \
         octconv(8, kernel = 3, alpha = alpha); merge(); }",
    )
    .unwrap();
    let v = json(&[
        "bench",
        spec.to_str().unwrap(),
        "--alphas",
        "0,0.5",
        "--batch",
        "2",
        "--samples",
        "2",
        "--repeats",
        "1",
        "--train",
        "--json",
    ]);
    assert_eq!(v["mode"], "train");
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for r in rows {
        assert!(r["median_s"].as_f64().unwrap() > 0.0, "{r}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bench_profile_charges_every_layer_to_a_kernel_class_with_its_share_of_macs() {
    let v = json(&[
        "bench",
        "wrn(n = 1, k = 1)",
        "--alphas",
        "0,0.5",
        "--batch",
        "2",
        "--samples",
        "2",
        "--repeats",
        "2",
        "--json",
        "--profile",
    ]);
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    let ir = octconv::check_builtin("wrn(n = 1, k = 1, alpha = 0.5)")
        .model
        .unwrap();
    for (r, octave) in rows.iter().zip([false, true]) {
        let p = r["profile"].as_array().expect("a profile per row");
        assert!(!p.is_empty());
        let f = |c: &serde_json::Value, k: &str| c[k].as_f64().unwrap();
        // Shares of time and of MACs each sum to one; classes are sorted by time.
        let time: f64 = p.iter().map(|c| f(c, "time_share")).sum();
        let macs: f64 = p.iter().map(|c| f(c, "macs_share")).sum();
        assert!(
            (time - 1.0).abs() < 1e-9 && (macs - 1.0).abs() < 1e-9,
            "{time} {macs}"
        );
        assert!(p.windows(2).all(|w| f(&w[0], "ms") >= f(&w[1], "ms")));
        // Every layer is in exactly one class.
        let layers: u64 = p.iter().map(|c| c["layers"].as_u64().unwrap()).sum();
        assert_eq!(layers as usize, ir.layers.len());
        let classes: Vec<&str> = p.iter().map(|c| c["class"].as_str().unwrap()).collect();
        assert_eq!(
            classes.contains(&"octconv 3×3 s1 dense octave"),
            octave,
            "{classes:?}"
        );
        assert!(classes.contains(&"bn") && classes.contains(&"linear"));
        // The slowest layers: real layer names with their class, sorted by time, at most 12, and
        // none slower than its whole class.
        let slow = r["profile_layers"]
            .as_array()
            .expect("slowest layers per row");
        assert_eq!(slow.len(), ir.layers.len().min(12));
        assert!(slow.windows(2).all(|w| f(&w[0], "ms") >= f(&w[1], "ms")));
        for l in slow {
            let name = l["layer"].as_str().unwrap();
            let layer = ir.layers.iter().find(|x| x.name == name).expect(name);
            let class = l["class"].as_str().unwrap();
            assert!(class.starts_with(layer.op.kind()), "{name}: {class}");
            let in_class = p.iter().find(|c| c["class"] == class).unwrap();
            assert!(f(l, "ms") <= f(in_class, "ms") + 1e-9, "{name}");
        }
    }
}

#[test]
fn bench_profile_layers_lists_that_many_slowest_layers_or_every_layer_with_zero() {
    let ir = octconv::check_builtin("wrn(n = 1, k = 1, alpha = 0.5)")
        .model
        .unwrap();
    for (asked, want) in [("3", 3), ("0", ir.layers.len())] {
        let v = json(&[
            "bench",
            "wrn(n = 1, k = 1)",
            "--alphas",
            "0.5",
            "--batch",
            "2",
            "--samples",
            "2",
            "--repeats",
            "1",
            "--json",
            "--profile",
            "--layers",
            asked,
        ]);
        let slow = v["rows"][0]["profile_layers"].as_array().unwrap();
        assert_eq!(slow.len(), want, "--layers {asked}");
        // Every layer once: the names are the network's, none repeated.
        let mut names: Vec<&str> = slow.iter().map(|l| l["layer"].as_str().unwrap()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), want, "--layers {asked}: distinct layers");
        assert!(names.iter().all(|n| ir.layers.iter().any(|l| l.name == *n)));
    }
}

#[test]
fn bench_train_profile_reports_forward_backward_and_update_kernels_and_the_rest() {
    let v = json(&[
        "bench",
        "wrn(n = 1, k = 1)",
        "--alphas",
        "0,0.5",
        "--batch",
        "4",
        "--samples",
        "8",
        "--repeats",
        "2",
        "--json",
        "--train",
        "--profile",
    ]);
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for (r, octave) in rows.iter().zip([false, true]) {
        assert!(
            r.get("profile").is_none(),
            "no inference profile in a training bench"
        );
        let k = r["train_kernels"]
            .as_array()
            .expect("a kernel table per row");
        let names: Vec<&str> = k.iter().map(|c| c["kernel"].as_str().unwrap()).collect();
        for want in [
            "batch norm forward (train)",
            "batch norm backward",
            "SGD update",
        ] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
        assert_eq!(names.contains(&"octave forward"), octave, "{names:?}");
        assert!(names.iter().any(|n| n.starts_with("conv dW")), "{names:?}");
        assert_eq!(names.last(), Some(&"rest"));
        // The SGD update runs once per step; the shares (reported + rest) make the step.
        let sgd = k.iter().find(|c| c["kernel"] == "SGD update").unwrap();
        assert!((sgd["calls"].as_f64().unwrap() - 1.0).abs() < 1e-9, "{sgd}");
        let share: f64 = k.iter().map(|c| c["time_share"].as_f64().unwrap()).sum();
        assert!((share - 1.0).abs() < 0.05, "shares sum to {share}");
    }
}
