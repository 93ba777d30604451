//! The `octconv` binary end to end: `check` on builtins and files, `--json`, `--set`, `--model`,
//! exit codes and diagnostics on stderr.

mod common;

use common::{octconv, stderr, stdout};

#[test]
fn check_builtin_wrn_prints_the_table_and_totals() {
    let o = octconv(&["check", "wrn(n = 4, k = 10, alpha = 0.25)"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.starts_with("model wrn(n = 4, k = 10, alpha = 0.25, classes = 10, drop = 0.0, alphas = [0.25, 0.25, 0.25])"), "{out}");
    assert!(out.contains("wide0.res0.octconv0"), "{out}");
    assert!(out.contains("parameters        36,479,194"), "{out}");
    assert!(out.contains("vs. alpha = 0     MACs 67.9 %"), "{out}");
}

#[test]
fn check_json_has_the_documented_fields() {
    let o = octconv(&["check", "wrn(n = 4, k = 10, alpha = 0.5)", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("valid JSON");
    assert_eq!(v["model"], "wrn");
    assert_eq!(v["input"], serde_json::json!([3, 32, 32]));
    assert_eq!(v["output"], serde_json::json!([10]));
    assert_eq!(v["params"], 36_479_194);
    assert!(v["macs"].as_u64().unwrap() > 2_000_000_000);
    assert!(v["activation_bytes"].as_u64().unwrap() > 0);
    let ratio = v["macs_ratio_vs_alpha0"].as_f64().unwrap();
    assert!((0.43..0.46).contains(&ratio), "{ratio}");
    assert!(v["memory_ratio_vs_alpha0"].as_f64().unwrap() < 0.7);
    let layers = v["layers"].as_array().unwrap();
    let stem = &layers[0];
    assert_eq!(stem["name"], "octconv0");
    assert_eq!(stem["op"], "octconv");
    assert_eq!(stem["out_high"], serde_json::json!([8, 32, 32]));
    assert_eq!(stem["out_low"], serde_json::json!([8, 16, 16]));
    assert_eq!(stem["params"], 16 * 3 * 9);
    assert!(stem["macs"].as_u64().unwrap() > 0);
    let last = layers.last().unwrap();
    assert_eq!(last["out_low"], serde_json::Value::Null);
}

#[test]
fn check_invalid_spec_exits_1_with_diagnostics_on_stderr() {
    let dir = std::env::temp_dir().join(format!("octconv-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad_head.oct");
    std::fs::write(
        &path,
        "model bad(alpha: float = 0.25) {\n    input [3, 32, 32];\n    octconv(640, kernel = 3, alpha = alpha, stride = 2);\n    octconv(640, kernel = 3, stride = 2);\n    global_avg_pool();\n    linear(10);\n}\n",
    )
    .unwrap();
    let o = octconv(&["check", path.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).is_empty());
    let err = stderr(&o);
    assert!(err.contains("error: invalid head: global_avg_pool needs a single-frequency tensor, but its input is an octave pair (high [480, 8, 8], low [160, 4, 4])"), "{err}");
    assert!(
        err.contains(&format!("--> {}:5:5", path.display())),
        "{err}"
    );
    assert!(
        err.contains("= help: insert `merge();` before the pooling"),
        "{err}"
    );
}

#[test]
fn check_files_with_model_and_set() {
    let dir = std::env::temp_dir().join(format!("octconv-cli-set-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("two.oct");
    std::fs::write(
        &path,
        "model a(c: int = 8) { input [3, 8, 8]; conv(c, kernel = 3); global_avg_pool(); }\nmodel b() { input [3, 8, 8]; flatten(); }\n",
    )
    .unwrap();
    let p = path.to_str().unwrap();
    let o = octconv(&["check", p]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("several models: a, b"));
    let o = octconv(&["check", p, "--model", "a", "--set", "c=32", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["output"], serde_json::json!([32]));
    let o = octconv(&["check", p, "--model", "a", "--set", "c=oops"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("unknown variable `oops`"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn check_missing_file_and_bad_call_are_clear_errors() {
    let o = octconv(&["check", "does/not/exist.oct"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("cannot read spec file `does/not/exist.oct`"),
        "{}",
        stderr(&o)
    );
    let o = octconv(&["check", "wrn(n = 4,"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("syntax error"), "{}", stderr(&o));
}

#[test]
fn check_the_specs_shipped_in_the_repository() {
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/specs")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let mut p = octconv_spec::loader::Program::new();
        p.load_file(&path);
        assert!(!p.diags.has_errors(), "{}", path.display());
        for model in p.model_names() {
            let o = octconv(&["check", path.to_str().unwrap(), "--model", model]);
            assert!(
                o.status.success(),
                "{} {model}: {}\n{text}",
                path.display(),
                stderr(&o)
            );
        }
    }
}

#[test]
fn builtins_lists_models_and_layers() {
    let o = octconv(&["builtins"]);
    assert!(o.status.success());
    let out = stdout(&o);
    for needle in [
        "wrn(n: int = 4",
        "resnet(depth: int = 50",
        "mobilenet_v1(width: float = 1.0",
        "octconv",
        "global_avg_pool",
    ] {
        assert!(out.contains(needle), "{needle} missing:\n{out}");
    }
}
