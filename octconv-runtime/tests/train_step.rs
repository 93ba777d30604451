//! The planned training step ([`OctModel::train_step`], `octconv_runtime::tape`) against candle's
//! whole-graph autograd of the same model (`forward_t` in train mode, then `backward`), on every
//! builtin at α ∈ {0, .25, .5, .75}: the loss, the output and every parameter's gradient agree to
//! 1e-4 relative; three SGD steps with momentum, Nesterov and weight decay give the same weights.

use candle_core::{DType, Device, ModuleT, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use octconv_runtime::optim::{Sgd, SgdConfig};
use octconv_runtime::OctModel;
use octconv_spec::ir::Op;
use octconv_spec::Model;
use std::collections::HashMap;

#[path = "common/models.rs"]
mod models;

use models::{
    input, ir, rel_err, values, weights_far_from_identity, within_f32_noise, ALPHAS, BUILTINS,
    STRIDED,
};

/// A model on a fresh var map holding `m`'s seeded weights (batch norms far from the identity).
fn model(m: &Model) -> (OctModel, VarMap) {
    let varmap = VarMap::new();
    {
        let mut data = varmap.data().lock().unwrap();
        for (k, t) in weights_far_from_identity(m, 3) {
            data.insert(k, candle_core::Var::from_tensor(&t).unwrap());
        }
    }
    let net = OctModel::new(
        m.clone(),
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )
    .unwrap();
    (net, varmap)
}

/// `Σ y · r` with fixed weights `r`: a loss that any output shape has and that gives every output
/// value a different gradient.
fn loss(y: &Tensor) -> candle_core::Result<Tensor> {
    let r: Vec<f32> = (0..y.elem_count())
        .map(|i| ((i * 7 % 11) as f32 - 5.0) / 5.0)
        .collect();
    (y * Tensor::from_vec(r, y.shape(), y.device())?.to_dtype(y.dtype())?)?.sum_all()
}

/// The trainable parameters by name (running statistics left out).
fn trainable(varmap: &VarMap) -> Vec<(String, candle_core::Var)> {
    let mut v: Vec<_> = varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .filter(|(k, _)| !k.ends_with("running_mean") && !k.ends_with("running_var"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// The output, the loss and every trainable parameter's gradient by name.
type Computed = (Vec<f32>, f64, Vec<(String, Vec<f32>)>);

/// A parameter's gradient, from either path.
type GradOf = Box<dyn Fn(&Tensor) -> Option<Tensor>>;

/// The output, the loss and every trainable parameter's gradient (by name, as f32) of `m` with
/// `weights` in `dtype`, by candle's whole-graph autograd (`planned`: false) or the planned step.
fn output_loss_grads(
    m: &Model,
    weights: &HashMap<String, Tensor>,
    dtype: DType,
    planned: bool,
) -> Computed {
    let vars: HashMap<String, Var> = weights
        .iter()
        .map(|(k, t)| {
            (
                k.clone(),
                Var::from_tensor(&t.to_dtype(dtype).unwrap()).unwrap(),
            )
        })
        .collect();
    let vb = VarBuilder::from_tensors(
        vars.iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect(),
        dtype,
        &Device::Cpu,
    );
    let net = OctModel::new(m.clone(), vb).unwrap();
    let x = input(m, 2).to_dtype(dtype).unwrap();
    net.set_dropout_seed(9);
    let (y, l, grad) = if planned {
        let step = net.train_step(&x, &loss).unwrap();
        let g: GradOf = Box::new(move |t| step.grads.get(t).cloned());
        (step.output, step.loss, g)
    } else {
        let y = net.forward_t(&x, true).unwrap();
        let l = loss(&y).unwrap();
        let store = l.backward().unwrap();
        let g: GradOf = Box::new(move |t| store.get(t).cloned());
        (y, l, g)
    };
    let mut names: Vec<&String> = vars
        .keys()
        .filter(|k| !k.ends_with("running_mean") && !k.ends_with("running_var"))
        .collect();
    names.sort();
    assert!(!names.is_empty());
    let grads = names
        .into_iter()
        .map(|k| {
            let g = grad(vars[k].as_tensor()).unwrap_or_else(|| panic!("{k}: no gradient"));
            (k.clone(), values(&g.to_dtype(DType::F32).unwrap()))
        })
        .collect();
    let l = l.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
    (values(&y.to_dtype(DType::F32).unwrap()), l, grads)
}

#[test]
fn planned_step_gradients_match_whole_graph_autograd_on_every_builtin() {
    let calls = BUILTINS
        .iter()
        .flat_map(|(call, _)| ALPHAS.map(|a| format!("{call}, alpha = {a})")))
        .chain(STRIDED.map(String::from));
    for spec in calls {
        let m = ir(&spec);
        let weights = weights_far_from_identity(&m, 3);
        let (y_p, l_p, g_p) = output_loss_grads(&m, &weights, DType::F32, true);
        let (y_a, l_a, g_a) = output_loss_grads(&m, &weights, DType::F32, false);
        let e = rel_err(&y_p, &y_a);
        assert!(e <= 1e-4, "{spec}: outputs differ by {e:e}");
        assert!(
            (l_p - l_a).abs() <= 1e-4 * l_a.abs().max(1.0),
            "{spec}: loss {l_p} vs {l_a}"
        );
        assert_eq!(g_p.len(), g_a.len());
        // Autograd in f64: the exact gradient to compare the f32 noise floor against.
        let (_, _, g_exact) = output_loss_grads(&m, &weights, DType::F64, false);
        for (((name, p), (_, a)), (_, exact)) in g_p.iter().zip(&g_a).zip(&g_exact) {
            // At most 1e-4 relative to autograd's gradient; where f32 cannot resolve a gradient
            // to that (one that is zero by mathematics, such as a bias before a batch norm, is
            // rounding noise in both), the planned gradient's error against f64 within the
            // autograd one's f32 noise (`within_f32_noise`).
            let e = rel_err(p, a);
            let (planned_err, floor) = (rel_err(p, exact), rel_err(a, exact));
            assert!(
                e <= 1e-4 || within_f32_noise(planned_err, floor),
                "{spec}: gradient of {name} differs by {e:e}; against f64 the planned one is \
                     {planned_err:e} off, autograd's {floor:e}"
            );
        }
    }
}

#[test]
fn three_sgd_steps_on_the_planned_path_give_autograds_weights() {
    let config = SgdConfig {
        momentum: 0.9,
        nesterov: true,
        weight_decay: 5e-3,
        decay_bn_and_bias: false,
    };
    for spec in [
        "wrn(n = 1, k = 1, classes = 10, alpha = 0.5, drop = 0.3)",
        "densenet(depth = 121, growth = 8, classes = 5, alpha = 0.25)",
    ] {
        let m = ir(spec);
        let (a, va) = model(&m);
        let (b, vb) = model(&m);
        let mut oa = Sgd::new(trainable(&va), config.clone());
        let mut ob = Sgd::new(trainable(&vb), config.clone());
        for s in 0..3 {
            let x = (input(&m, 2) * (1.0 + 0.1 * s as f64)).unwrap();
            a.set_dropout_seed(s);
            let g = loss(&a.forward_t(&x, true).unwrap())
                .unwrap()
                .backward()
                .unwrap();
            oa.step(&g, 0.05).unwrap();
            b.set_dropout_seed(s);
            let step = b.train_step(&x, &loss).unwrap();
            ob.step(&step.grads, 0.05).unwrap();
        }
        let (pa, pb) = (trainable(&va), trainable(&vb));
        assert_eq!(pa.len(), pb.len());
        for ((name, wa), (_, wb)) in pa.iter().zip(&pb) {
            let e = rel_err(&values(wb.as_tensor()), &values(wa.as_tensor()));
            assert!(e <= 1e-4, "{spec}: {name} differs by {e:.2e} after 3 steps");
        }
    }
}

#[test]
fn planned_step_runs_every_layer_of_wrn_on_its_own_backward() {
    let m = ir("wrn(n = 1, k = 1, classes = 10, alpha = 0.5, drop = 0.3)");
    let (net, _) = model(&m);
    let step = net.train_step(&input(&m, 2), &loss).unwrap();
    assert!(step.fallbacks.is_empty(), "fell back: {:?}", step.fallbacks);
}

/// The layers that may still run under candle's autograd on the planned step: hard-swish and
/// transposed octave convolutions.
fn may_fall_back(op: &Op) -> bool {
    matches!(op, Op::HardSwish | Op::OctConvTranspose(_))
}

#[test]
fn planned_step_falls_back_only_for_transposes_and_hard_swish() {
    for (call, alpha) in BUILTINS.iter().flat_map(|(c, _)| [(c, 0.0), (c, 0.5)]) {
        let spec = format!("{call}, alpha = {alpha})");
        let m = ir(&spec);
        let (net, _) = model(&m);
        let step = net.train_step(&input(&m, 2), &loss).unwrap();
        eprintln!("{spec} α = {alpha}: {:?}", step.fallbacks);
        for name in &step.fallbacks {
            let layer = m.layers.iter().find(|l| &l.name == name).unwrap();
            assert!(
                may_fall_back(&layer.op),
                "{spec} α = {alpha}: {name} ({:?}) fell back",
                layer.op
            );
        }
    }
}
