//! `OctModel::freeze`: a frozen model infers every builtin bit for bit as before, at several batch
//! sizes (each its own prepared weights) and on repeated passes (the kept ones); it is a snapshot
//! of the variables it was built from; and it refuses training.

use candle_core::{DType, Device, ModuleT, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use octconv_runtime::OctModel;

#[path = "common/models.rs"]
#[allow(dead_code)] // shared helpers this file does not use
mod models;

use models::{input, ir, values, weights_far_from_identity, ALPHAS, BUILTINS};

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn a_frozen_model_infers_every_builtin_bit_for_bit_as_before_at_two_batch_sizes_and_four_alphas() {
    for (call, has_fused_3x3) in BUILTINS {
        for alpha in ALPHAS {
            let spec = format!("{call}, alpha = {alpha})");
            let m = ir(&spec);
            let vb = VarBuilder::from_tensors(
                weights_far_from_identity(&m, 7),
                DType::F32,
                &Device::Cpu,
            );
            let mut net = OctModel::new(m.clone(), vb).unwrap();
            let (x3, x2) = (input(&m, 3), input(&m, 2));
            let want3 = bits(&values(&net.infer(&x3).unwrap()));
            let want2 = bits(&values(&net.infer(&x2).unwrap()));
            assert_eq!(net.prepared_bytes(), 0, "{spec}: not frozen, nothing kept");
            net.freeze().unwrap();
            assert!(net.is_frozen());
            // Batch 3 prepares, batch 2 prepares for its own geometry, batch 3 again reuses.
            for (x, want, what) in [
                (&x3, &want3, "3"),
                (&x2, &want2, "2"),
                (&x3, &want3, "3 again"),
            ] {
                let got = bits(&values(&net.infer(x).unwrap()));
                assert!(
                    &got == want,
                    "{spec}: frozen inference at batch {what} differs"
                );
            }
            // The 3×3 stride-1 layers of these families run kernels whose weights are kept: the
            // four-path ones (α > 0) and the one-branch Winograd ones (every α).
            if has_fused_3x3 {
                assert!(net.prepared_bytes() > 0, "{spec}: no prepared weights kept");
            }
        }
    }
}

#[test]
fn a_frozen_model_is_a_snapshot_of_its_variables_and_refuses_training() {
    let m = ir("seed_wrn(n = 2, k = 1, classes = 10, alpha = 0.5)");
    let varmap = VarMap::new();
    {
        let mut data = varmap.data().lock().unwrap();
        for (name, t) in weights_far_from_identity(&m, 3) {
            data.insert(name, Var::from_tensor(&t).unwrap());
        }
    }
    let build = || {
        OctModel::new(
            m.clone(),
            VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
        )
        .unwrap()
    };
    let x = input(&m, 2);
    let mut net = build();
    let before = bits(&values(&net.infer(&x).unwrap()));
    net.freeze().unwrap();
    assert_eq!(bits(&values(&net.infer(&x).unwrap())), before);
    // Every variable halved in place, as an optimizer or a load would write them.
    for var in varmap.all_vars() {
        var.set(&(var.as_tensor() * 0.5).unwrap()).unwrap();
    }
    let changed = bits(&values(&build().infer(&x).unwrap()));
    assert_ne!(
        changed, before,
        "the variables' change shows in a model built from them"
    );
    assert_eq!(
        bits(&values(&net.infer(&x).unwrap())),
        before,
        "the frozen model still computes with its snapshot"
    );
    // Training is refused with an error that says why and what to do.
    let loss = |y: &Tensor| y.sqr()?.mean_all();
    let err = net
        .train_step(&x, &loss)
        .err()
        .expect("train_step on a frozen model");
    let msg = err.to_string();
    assert!(
        msg.contains("frozen") && msg.contains("build it again"),
        "{msg}"
    );
    assert!(
        net.forward_t(&x, true).is_err(),
        "training-mode forward on a frozen model"
    );
    // Inference in eval mode through `forward_t` still runs, and no gradient of it reaches the
    // variables (the snapshot is detached from them).
    let y = net.forward_t(&x, false).unwrap();
    let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    for var in varmap.all_vars() {
        assert!(
            grads.get(var.as_tensor()).is_none(),
            "a gradient reached a variable through the frozen model"
        );
    }
}
