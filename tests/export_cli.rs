//! `octconv export` through the binary: the file it writes is an ONNX model named and shaped as
//! documented, an existing file is kept without `--force`, and bad weights or options are named
//! errors (exit status 2, as every runtime error) that write nothing. (Numerical parity with an independent engine is
//! `octconv-runtime/tests/onnx_tract.rs`.)

use std::path::{Path, PathBuf};
mod common;

use common::{octconv, stderr};

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("octconv-export-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

const SPEC: &str = "wrn(n = 1, k = 1, alpha = 0.25)";

#[test]
fn export_writes_a_model_and_keeps_an_existing_file_without_force() {
    let d = dir("write");
    let (w, out) = (d.join("w.safetensors"), d.join("m.onnx"));
    let o = octconv(&["init", SPEC, "--seed", "3", "--out", w.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut args = export_args(&w, &out);
    args.push("--dynamic-batch");
    let o = octconv(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let bytes = std::fs::read(&out).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    // Names the protobuf carries as plain strings: the producer, the spec call, the graph's input
    // and output, a path's node and its initializer.
    for name in [
        "octconv",
        "wrn(n = 1, k = 1, alpha = 0.25, classes = 10",
        "input",
        "output",
        "wide0.res0.octconv0.hh",
        "wide0.res0.octconv0.hh.weight",
        "Resize",
    ] {
        assert!(text.contains(name), "the model has no {name:?}");
    }
    assert!(stderr(&o).contains("opset 17"), "{}", stderr(&o));
    // Again without --force: refused, the file unchanged.
    let o = octconv(&args);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("exists; pass --force to overwrite it"),
        "{}",
        stderr(&o)
    );
    assert_eq!(std::fs::read(&out).unwrap(), bytes);
    let mut forced = args.clone();
    forced.extend(["--force", "--upsample", "expand", "--fold-bn"]);
    let o = octconv(&forced);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&std::fs::read(&out).unwrap()).into_owned();
    assert!(text.contains("Expand") && !text.contains("Resize"));
    // `wide0.res0.bn1` reads only `wide0.res0.octconv0`: folded into it. `bn0` reads the stem, which
    // the residual's shortcut reads too: kept.
    assert!(!text.contains("wide0.res0.bn1"), "bn1 was not folded");
    assert!(text.contains("wide0.res0.bn0.h.running_var"));
}

#[test]
fn export_errors_name_the_problem_and_write_nothing() {
    let d = dir("errors");
    let (w, out) = (d.join("w.safetensors"), d.join("m.onnx"));
    let o = octconv(&[
        "init",
        "wrn(n = 1, k = 2, alpha = 0.25)",
        "--out",
        w.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Weights of another width: the same named errors as `run`.
    let err = refused(&w, &out, &[]);
    assert!(
        err.contains("the weights do not fit the model")
            && err.contains("  - tensor `wide0.res0.octconv0.hh.weight` has shape [24, 12, 3, 3], the model needs [12, 12, 3, 3]\n"),
        "{err}"
    );
    let w2 = d.join("w2.safetensors");
    assert!(octconv(&["init", SPEC, "--out", w2.to_str().unwrap()])
        .status
        .success());
    // An opset we do not write.
    let err = refused(&w2, &out, &["--opset", "11"]);
    assert!(
        err.contains("opset 11 is not supported: the exporter writes opsets 14 to 21"),
        "{err}"
    );
    // --batch and --dynamic-batch together.
    let err = refused(&w2, &out, &["--batch", "4", "--dynamic-batch"]);
    assert!(
        err.contains("'--batch <BATCH>' cannot be used with '--dynamic-batch'"),
        "{err}"
    );
}

/// `export SPEC --weights w -o out`.
fn export_args<'a>(w: &'a Path, out: &'a Path) -> Vec<&'a str> {
    vec![
        "export",
        SPEC,
        "--weights",
        w.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]
}

/// Exports `SPEC` with weights `w` to `out` and `extra` flags, expecting a refusal (exit status 2)
/// that writes nothing; returns the error text.
fn refused(w: &Path, out: &Path, extra: &[&str]) -> String {
    let mut args = export_args(w, out);
    args.extend_from_slice(extra);
    let o = octconv(&args);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(!out.exists());
    stderr(&o)
}
