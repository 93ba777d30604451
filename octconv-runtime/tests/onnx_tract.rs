//! The ONNX export checked against an independent engine: every builtin at α ∈ {0, .25, .5, .75},
//! exported and run by tract (`tract-onnx`), against `OctModel::infer` (what `octconv run` computes)
//! on the same seeded weights and a batch of 2. Batch norms and biases are far from the identity, so
//! `--fold-bn` has something to fold. Each model is exported twice: plain (fixed batch, `Resize`) and
//! with folded batch norms and a dynamic batch (with the `Expand` upsampling at α = .25 and .75). The
//! error is the largest absolute difference relative to the largest output magnitude, at most 1e-4.

#[path = "common/models.rs"]
mod models;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use models::{input, ir, rel_err, values, weights_far_from_identity, ALPHAS, BUILTINS, STRIDED};
use octconv_runtime::onnx::{self, Batch, ExportOptions, Upsample};
use octconv_runtime::OctModel;
use octconv_spec::Model;
use std::collections::{BTreeSet, HashMap};
use tract_onnx::prelude::*;

/// Runs the exported bytes in tract on `x`; with a dynamic batch, the batch is fixed to `x`'s first.
/// With `optimise`, through tract's full optimiser (what a deployment uses); without, the typed model
/// as loaded: tract 0.23.9's declutter pass fails on a 1×1 convolution after the `Expand`
/// upsampling ("Trying to substitute a 2,2,16,2,16,2 by 2,2,16,1,16,1" in the U-Net), an engine bug
/// that the `Resize` encoding (our default) does not meet.
fn tract_run(bytes: &[u8], x: &Tensor, dynamic: bool, optimise: bool) -> Vec<f32> {
    let dims = x.dims().to_vec();
    let mut model = tract_onnx::onnx()
        .model_for_read(&mut &*bytes)
        .expect("tract reads the model");
    if dynamic {
        model
            .set_input_fact(0, f32::fact(&dims).into())
            .expect("input fact");
    }
    let typed = if optimise {
        model.into_optimized().expect("tract optimises the model")
    } else {
        model.into_typed().expect("tract types the model")
    };
    let plan = typed.into_runnable().expect("tract plans the model");
    let data = values(x);
    let input = tract_ndarray::ArrayD::from_shape_vec(dims, data).unwrap();
    let out = plan
        .run(tvec!(tract_onnx::prelude::Tensor::from(input).into()))
        .expect("tract runs the model");
    out[0]
        .to_plain_array_view::<f32>()
        .expect("f32 output")
        .iter()
        .copied()
        .collect()
}

fn ours(m: &Model, weights: &HashMap<String, Tensor>, x: &Tensor) -> Vec<f32> {
    let vb = VarBuilder::from_tensors(weights.clone(), DType::F32, &Device::Cpu);
    let net = OctModel::new(m.clone(), vb).unwrap();
    values(&net.infer(x).unwrap())
}

fn export(m: &Model, weights: &HashMap<String, Tensor>, opts: &ExportOptions) -> Vec<u8> {
    let proto = onnx::export(m, weights, opts)
        .unwrap_or_else(|e| panic!("{}: export failed: {e:#}", m.call_string()));
    onnx::encode(&proto)
}

/// Layers no builtin uses (or uses only in one form), each at every α: `upsample` on a pair and on a
/// map, `hardswish`, per-branch global pooling, `flatten`, `merge(to = low)` with α_out = 1 (no high
/// branch), `relu6`, `silu`, `max_pool` with padding, and `avg_pool` with padding (which counts the zeros).
const EXTRA: &str = "
model extra(alpha: float = 0.25) {
    input [3, 16, 16];
    octconv(16, kernel = 3, alpha = alpha); bn(); hardswish();
    upsample(scale = 2);
    octconv(16, kernel = 3, stride = 2, alpha = alpha); bn(); relu6(); silu();
    avg_pool(kernel = 3, stride = 1, padding = 1);
    max_pool(kernel = 3, stride = 1, padding = 1);
    global_avg_pool(per_branch = alpha > 0.0);
    linear(10);
}
model flat(alpha: float = 0.25) {
    input [3, 8, 8];
    octconv(8, kernel = 3, alpha = alpha); relu();
    octconv(8, kernel = 1, alpha = if alpha > 0.0 { 1.0 } else { 0.0 });
    merge(to = low);
    upsample(scale = 3);
    flatten();
    linear(5);
}
";

/// The models of [`EXTRA`] at α.
fn extras(alpha: &str) -> Vec<Model> {
    ["extra", "flat"]
        .iter()
        .map(|name| {
            let c = octconv_spec::check_text(
                "extra.oct",
                EXTRA,
                Some(&format!("{name}(alpha = {alpha})")),
            );
            assert!(c.ok(), "{}", c.render_diagnostics(false));
            c.model.unwrap()
        })
        .collect()
}

/// Exports `m` plain and folded (dynamic batch, `upsample`) and checks both in tract; returns the two
/// errors.
fn check_in_tract(m: &Model, alpha: &str) -> (f64, f64) {
    let spec = m.call_string();
    let weights = weights_far_from_identity(m, 11);
    let x = input(m, 2);
    let want = ours(m, &weights, &x);
    let plain = ExportOptions {
        batch: Batch::Fixed(2),
        ..ExportOptions::default()
    };
    let got = tract_run(&export(m, &weights, &plain), &x, false, true);
    let e = rel_err(&got, &want);
    assert!(e <= 1e-4, "{spec}: tract differs from octconv by {e:e}");
    // Both upsampling encodings: `Expand` at α = .25 and .75, `Resize` at 0 and .5.
    let upsample = if matches!(alpha, "0.25" | "0.75") {
        Upsample::Expand
    } else {
        Upsample::Resize
    };
    let folded = ExportOptions {
        batch: Batch::Dynamic,
        fold_bn: true,
        upsample,
        ..ExportOptions::default()
    };
    let optimise = upsample == Upsample::Resize;
    let got = tract_run(&export(m, &weights, &folded), &x, true, optimise);
    let e_folded = rel_err(&got, &want);
    // The figures (`cargo test … --test onnx_tract -- --nocapture`).
    eprintln!("{spec}: plain {e:.1e}, folded + dynamic + {upsample:?} {e_folded:.1e}");
    assert!(
        e_folded <= 1e-4,
        "{spec}: with folded batch norms, a dynamic batch and {upsample:?}, tract differs by {e_folded:e}"
    );
    (e, e_folded)
}

#[test]
fn every_layer_of_the_language_is_in_an_exported_model_checked_in_tract() {
    let mut kinds = BTreeSet::new();
    for alpha in ALPHAS {
        let models = BUILTINS
            .iter()
            .map(|(call, _)| ir(&format!("{call}, alpha = {alpha})")))
            .chain(extras(alpha));
        for m in models {
            kinds.extend(m.layers.iter().skip(1).map(|l| l.op.kind()));
        }
    }
    let all: BTreeSet<&str> = octconv_spec::layers::LAYERS
        .iter()
        .map(|l| l.name)
        .collect();
    let missing: Vec<_> = all.difference(&kinds).collect();
    assert!(missing.is_empty(), "no exported test model has {missing:?}");
}

#[test]
fn layers_no_builtin_uses_export_and_run_in_tract_like_octconv_run_at_four_alphas() {
    for alpha in ALPHAS {
        for m in extras(alpha) {
            check_in_tract(&m, alpha);
        }
    }
}

/// `strided = true` builtins: every stride-2 octave convolution is one `Conv` with strides 2 and no
/// `AveragePool` before it (the graph has none at all), and the export runs in tract like ours.
#[test]
fn strided_builtins_export_stride_2_convs_without_pooling_and_run_in_tract() {
    for call in STRIDED {
        let m = ir(call);
        check_in_tract(&m, "0");
        let proto = onnx::export(
            &m,
            &weights_far_from_identity(&m, 11),
            &ExportOptions::default(),
        )
        .unwrap();
        let nodes = proto.graph.unwrap().node;
        assert!(
            nodes.iter().all(|n| n.op_type != "AveragePool"),
            "{call}: an AveragePool node"
        );
        let stride2 = |n: &&onnx::proto::NodeProto| {
            n.op_type == "Conv"
                && n.attribute
                    .iter()
                    .any(|a| a.name == "strides" && a.ints == [2, 2])
        };
        let want = (m.layers.iter())
            .filter(|l| match &l.op {
                octconv_spec::Op::OctConv(o) => o.strided_conv(),
                octconv_spec::Op::Conv(c) => c.stride == 2,
                _ => false,
            })
            .count();
        assert!(want >= 5, "{call}: {want} stride-2 convolutions");
        assert_eq!(nodes.iter().filter(stride2).count(), want, "{call}");
    }
}

#[test]
fn every_builtin_exported_runs_in_tract_like_octconv_run_at_four_alphas_plain_and_folded() {
    for (call, _) in BUILTINS {
        for alpha in ALPHAS {
            check_in_tract(&ir(&format!("{call}, alpha = {alpha})")), alpha);
        }
    }
}
