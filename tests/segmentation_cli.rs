//! Segmentation from the command line on generated shapes: `train` on `seg:` data, `eval` with the
//! IoU table, `run --image … --output map.png`, and the models and flags refused before training.

mod common;

use common::{octconv, stderr, stdout};

const UNET: &str = "unet(base = 4, depth = 1, alpha = 0.25, size = 32, classes = 3)";

#[test]
fn train_eval_and_run_a_unet_on_generated_shapes() {
    let root = std::env::temp_dir().join(format!("octconv-seg-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    octconv::runtime::data::synthetic::shapes(&root.join("data"), 16, 4, 40, 3).unwrap();
    let data = format!("seg:{}", root.join("data").display());
    let run = root.join("run");
    let train = |spec: &str, extra: &[&str], dir: &str| {
        let run = root.join(dir);
        let mut a = vec![
            "train",
            spec,
            "--data",
            &data,
            "--run-dir",
            run.to_str().unwrap(),
            "--epochs",
            "2",
            "--batch",
            "4",
            "--threads",
            "1",
        ];
        a.extend_from_slice(extra);
        octconv(&a)
    };
    let o = train(
        UNET,
        &["--dice", "0.5", "--class-weights", "0.5,1,1"],
        "run",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("mIoU"), "{}", stderr(&o));
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.matches("\"test_miou\"").count(), 2, "{metrics}");
    // eval: the IoU table, and JSON with per-class IoU.
    let best = run.join("best.safetensors");
    let eval = |json: bool| {
        let mut a = vec![
            "eval",
            UNET,
            "--weights",
            best.to_str().unwrap(),
            "--data",
            &data,
        ];
        if json {
            a.push("--json");
        }
        octconv(&a)
    };
    let o = eval(false);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains("mean IoU") && text.contains("square"),
        "{text}"
    );
    let v: serde_json::Value = serde_json::from_str(&stdout(&eval(true))).unwrap();
    assert_eq!(v["iou"].as_array().unwrap().len(), 3, "{v}");
    assert!(v["mean_iou"].as_f64().unwrap() >= 0.0);
    // run on an image file: a palette PNG of class indices plus the scores.
    let map = root.join("map.png");
    let o = octconv(&[
        "run",
        UNET,
        "--weights",
        best.to_str().unwrap(),
        "--image",
        root.join("data/val/images/0000.png").to_str().unwrap(),
        "--output",
        map.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let decoded = octconv::runtime::data::seg::decode_mask(&std::fs::read(&map).unwrap()).unwrap();
    assert_eq!((decoded.width, decoded.height), (32, 32));
    assert!(decoded.indices.iter().all(|&c| c < 3));
    assert!(root.join("map.safetensors").exists());
    // Refused before training, with nothing written: a class-vector model, too few classes, and
    // class weights of the wrong length.
    let o = train("wrn(n = 1, k = 1, classes = 3)", &[], "flat");
    assert!(
        !o.status.success() && stderr(&o).contains("one map of class scores"),
        "{}",
        stderr(&o)
    );
    let o = train(&UNET.replace("classes = 3", "classes = 2"), &[], "two");
    let e = stderr(&o);
    assert!(
        !o.status.success() && e.contains("holds class index 2"),
        "{e}"
    );
    let o = train(UNET, &["--class-weights", "1,2"], "weights");
    assert!(
        !o.status.success() && stderr(&o).contains("--class-weights has 2 values"),
        "{}",
        stderr(&o)
    );
    for d in ["flat", "two", "weights"] {
        assert!(!root.join(d).exists(), "{d} was written");
    }
}
