//! `octconv train` → `eval` → `plot` end to end on a tiny generated class-folder dataset.

mod common;

use common::{dataset, octconv, stderr, stdout};

const SPEC: &str = "model t(classes: int = 2) { input [3, 8, 8]; octconv(8, kernel = 3, alpha = 0.5); bn(); relu(); merge(); global_avg_pool(); linear(classes); }\n";

#[test]
fn train_eval_plot_end_to_end() {
    let root = std::env::temp_dir().join(format!("octconv-train-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    dataset(&root.join("data"));
    let spec = root.join("t.oct");
    std::fs::write(&spec, SPEC).unwrap();
    let (spec, data, run) = (
        spec.to_str().unwrap(),
        format!("folder:{}", root.join("data").display()),
        root.join("run"),
    );
    let run_s = run.to_str().unwrap();
    let train = |extra: &[&str]| {
        let mut a = vec![
            "train",
            spec,
            "--data",
            &data,
            "--run-dir",
            run_s,
            "--epochs",
            "3",
            "--batch",
            "8",
            "--lr",
            "0.05",
            "--no-augment",
            "--threads",
            "1",
        ];
        a.extend_from_slice(extra);
        octconv(&a)
    };
    let o = train(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("epoch   3:") && err.contains("test loss"),
        "{err}"
    );
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 3);
    // Starting again over a finished run is refused; resuming a finished run does nothing more.
    let o = train(&[]);
    assert!(
        !o.status.success() && stderr(&o).contains("--resume"),
        "{}",
        stderr(&o)
    );
    assert!(train(&["--resume"]).status.success());
    // eval: text and JSON.
    let best = run.join("best.safetensors");
    let o = octconv(&[
        "eval",
        spec,
        "--weights",
        best.to_str().unwrap(),
        "--data",
        &data,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("confusion (rows: true class"),
        "{}",
        stdout(&o)
    );
    let o = octconv(&[
        "eval",
        spec,
        "--weights",
        best.to_str().unwrap(),
        "--data",
        &data,
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let acc = v["accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc));
    assert_eq!(v["per_class"].as_array().unwrap().len(), 2);
    assert_eq!(v["confusion"].as_array().unwrap().len(), 2);
    let total: u64 = v["confusion"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap())
        .map(|x| x.as_u64().unwrap())
        .sum();
    assert_eq!(total, 16);
    // The run's weights also load into `run` (the normalisation tensors are ignored there).
    // plot: PNG and SVG.
    for name in ["curves.png", "curves.svg"] {
        let out = root.join(name);
        let o = octconv(&["plot", run_s, "-o", out.to_str().unwrap()]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(std::fs::metadata(&out).unwrap().len() > 1000);
    }
    // Legend labels: one per run, and the label shows in the SVG's text.
    let out = root.join("labelled.svg");
    let o = octconv(&[
        "plot",
        run_s,
        "--label",
        "merge-then-pool head",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::read_to_string(&out)
        .unwrap()
        .contains("merge-then-pool head"));
    let o = octconv(&[
        "plot",
        run_s,
        "--label",
        "a",
        "--label",
        "b",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(
        !o.status.success() && stderr(&o).contains("one per run"),
        "{}",
        stderr(&o)
    );
    // A spec whose input differs from the folder's images trains on them resized; one whose input
    // has 4 channels is refused before anything is written.
    let big = root.join("big.oct");
    std::fs::write(&big, SPEC.replace("[3, 8, 8]", "[3, 16, 16]")).unwrap();
    let o = octconv(&[
        "train",
        big.to_str().unwrap(),
        "--data",
        &data,
        "--run-dir",
        root.join("big").to_str().unwrap(),
        "--epochs",
        "1",
        "--threads",
        "1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let bad = root.join("bad.oct");
    std::fs::write(&bad, SPEC.replace("[3, 8, 8]", "[4, 8, 8]")).unwrap();
    let o = octconv(&[
        "train",
        bad.to_str().unwrap(),
        "--data",
        &data,
        "--run-dir",
        root.join("bad").to_str().unwrap(),
        "--epochs",
        "1",
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("4 channels"), "{}", stderr(&o));
    assert!(!root.join("bad").exists());
    let o = octconv(&[
        "train",
        spec,
        "--data",
        "folder:/nonexistent/x.tar.gz",
        "--run-dir",
        root.join("x").to_str().unwrap(),
    ]);
    assert!(
        !o.status.success() && stderr(&o).contains("/nonexistent/x.tar.gz"),
        "{}",
        stderr(&o)
    );
}
