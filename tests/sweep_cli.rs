//! `octconv sweep` end to end on a tiny generated dataset: one run per α, the report and plots, and a
//! sweep continued after a stop gives the same numbers as one run straight through.

mod common;

use common::{dataset, octconv, stderr};
use std::path::{Path, PathBuf};

const SPEC: &str = "model t(alpha: float = 0.5, classes: int = 2) { input [3, 8, 8]; octconv(8, kernel = 3, alpha = alpha); bn(); relu(); octconv(8, kernel = 3, alpha = alpha); bn(); relu(); merge(); global_avg_pool(); linear(classes); }\n";

struct Fixture {
    root: PathBuf,
    spec: String,
    data: String,
}

fn fixture(name: &str) -> Fixture {
    let root = std::env::temp_dir().join(format!("octconv-sweep-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    dataset(&root.join("data"));
    let spec = root.join("t.oct");
    std::fs::write(&spec, SPEC).unwrap();
    Fixture {
        spec: spec.to_str().unwrap().to_string(),
        data: format!("folder:{}", root.join("data").display()),
        root,
    }
}

fn sweep(f: &Fixture, dir: &Path, alphas: &str, extra: &[&str]) -> std::process::Output {
    let mut a = vec![
        "sweep",
        &f.spec,
        "--alphas",
        alphas,
        "--data",
        &f.data,
        "--run-dir",
        dir.to_str().unwrap(),
        "--epochs",
        "2",
        "--batch",
        "8",
        "--lr",
        "0.05",
        "--no-augment",
        "--seed",
        "3",
        "--threads",
        "1",
        "--bench-batch",
        "8",
        "--bench-samples",
        "8",
        "--bench-repeats",
        "1",
    ];
    a.extend_from_slice(extra);
    octconv(&a)
}

fn report(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("sweep.json")).unwrap()).unwrap()
}

fn is_png(path: &Path) -> bool {
    image::open(path)
        .map(|i| i.width() > 100 && i.height() > 100)
        .unwrap_or(false)
}

#[test]
fn sweep_trains_each_alpha_and_writes_table_json_and_plots() {
    let f = fixture("full");
    let dir = f.root.join("sweep");
    let o = sweep(&f, &dir, "0,0.5", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r = report(&dir);
    let rows = r["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(r["epochs"], 2);
    assert_eq!(r["seed"], 3);
    for (row, alpha) in rows.iter().zip([0.0, 0.5]) {
        assert_eq!(row["alpha"].as_f64().unwrap(), alpha);
        assert_eq!(row["status"], "completed");
        assert_eq!(row["epochs"], 2);
        let acc = row["final_test_acc"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&acc), "{acc}");
        assert!(row["best_test_acc"].as_f64().unwrap() >= acc);
        assert!(row["inference"]["per_sample_ms"].as_f64().unwrap() > 0.0);
        assert!(row["train_seconds"].as_f64().unwrap() > 0.0);
        // Each α is an ordinary training run directory.
        let run = dir.join(format!("alpha-{alpha}"));
        assert_eq!(
            std::fs::read_to_string(run.join("metrics.jsonl"))
                .unwrap()
                .lines()
                .count(),
            2
        );
        assert!(run.join("final.safetensors").is_file());
    }
    // Same parameters (OctConv moves channels between branches), fewer MACs and less memory at α = .5.
    assert_eq!(rows[0]["params"], rows[1]["params"]);
    assert_eq!(rows[0]["macs_relative"].as_f64().unwrap(), 1.0);
    let macs = rows[1]["macs_relative"].as_f64().unwrap();
    assert!(macs < 0.8 && macs > 0.3, "{macs}");
    assert!(rows[1]["memory_relative"].as_f64().unwrap() < 1.0);
    assert!((rows[1]["flops_theory"].as_f64().unwrap() - 0.4375).abs() < 1e-12);
    let md = std::fs::read_to_string(dir.join("sweep.md")).unwrap();
    assert!(md.contains("| α | params | MACs vs α₀"), "{md}");
    assert!(md.contains("\n| 0 | ") && md.contains("\n| 0.5 | "), "{md}");
    assert!(md.contains("Highest final test accuracy"), "{md}");
    // The recorded command can be pasted back into a shell.
    assert!(
        r["command"]
            .as_str()
            .unwrap()
            .starts_with(&format!("octconv sweep {} --alphas 0,0.5 --data ", f.spec)),
        "{}",
        r["command"]
    );
    for png in ["accuracy-vs-alpha.png", "time-vs-alpha.png", "curves.png"] {
        assert!(is_png(&dir.join(png)), "{png}");
    }
    // Running the finished sweep again trains nothing more and rewrites the same accuracies.
    let o = sweep(&f, &dir, "0,0.5", &[]);
    assert!(
        o.status.success() && stderr(&o).contains("resuming"),
        "{}",
        stderr(&o)
    );
    let again = report(&dir);
    for i in 0..2 {
        assert_eq!(
            again["rows"][i]["final_test_acc"],
            rows[i]["final_test_acc"]
        );
        assert_eq!(again["rows"][i]["epochs"], 2);
    }
    // Changed training flags do not silently mix into a finished sweep.
    let o = octconv(&[
        "sweep",
        &f.spec,
        "--alphas",
        "0",
        "--data",
        &f.data,
        "--run-dir",
        dir.to_str().unwrap(),
        "--epochs",
        "3",
        "--batch",
        "8",
        "--no-bench",
        "--threads",
        "1",
    ]);
    assert!(
        !o.status.success() && stderr(&o).contains("different settings"),
        "{}",
        stderr(&o)
    );

    // A sweep stopped after its first α and continued later ends with the same numbers.
    let split = f.root.join("split");
    assert!(sweep(&f, &split, "0", &["--no-bench"]).status.success());
    assert!(sweep(&f, &split, "0,0.5", &[]).status.success());
    let continued = report(&split);
    for i in 0..2 {
        assert_eq!(
            continued["rows"][i]["final_test_acc"],
            rows[i]["final_test_acc"]
        );
        assert_eq!(
            continued["rows"][i]["best_test_acc"],
            rows[i]["best_test_acc"]
        );
    }
    let _ = std::fs::remove_dir_all(&f.root);
}

#[test]
fn sweep_rejects_bad_alphas_before_training() {
    let f = fixture("bad");
    let dir = f.root.join("sweep");
    let o = sweep(&f, &dir, "0,1.5", &[]);
    assert!(
        !o.status.success() && stderr(&o).contains("[0, 1)"),
        "{}",
        stderr(&o)
    );
    let o = sweep(&f, &dir, "0.25", &["--set", "alpha=0.5"]);
    assert!(
        !o.status.success() && stderr(&o).contains("conflicts with --alphas"),
        "{}",
        stderr(&o)
    );
    let o = octconv(&[
        "sweep",
        &f.spec,
        "--alphas",
        "0.25",
        "--data",
        &f.data,
        "--run-dir",
        dir.to_str().unwrap(),
        "--bench-repeats",
        "0",
    ]);
    assert!(
        !o.status.success() && stderr(&o).contains("at least 1"),
        "{}",
        stderr(&o)
    );
    assert!(
        !dir.join("alpha-0.25").exists(),
        "nothing may be trained on bad input"
    );
    let _ = std::fs::remove_dir_all(&f.root);
}
