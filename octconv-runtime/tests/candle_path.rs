//! The path every non-CPU device runs, checked on the CPU: with our kernels switched off
//! (`kernels::set_enabled(false)`), every layer runs candle's own ops, as it does on CUDA. Every
//! builtin at α ∈ {0, .25, .5, .75} must give the same eval output (`infer`, f32: 1e-5 relative)
//! and, in f64, the same eval output and training-mode gradients as with our kernels (1e-9). The
//! gradients are compared in f64 because in f32 a deep network with batch norm on a tiny batch is
//! ill-conditioned: our kernels' and candle's f32 gradients each differ from the f64 values by up
//! to 1e-1 (`octconv parity --device cpu --train --dtype f32,f64` shows it), so f32 would only
//! measure rounding. One test function, because the switch is process-wide (tests in one binary
//! run in parallel).

use candle_core::{DType, Device, ModuleT, Tensor, Var};
use candle_nn::VarBuilder;
use octconv_runtime::{kernels, OctModel};
use std::collections::HashMap;

#[path = "common/models.rs"]
mod models;

use models::{input, ir, rel_err, values, weights_far_from_identity, ALPHAS, BUILTINS, STRIDED};

/// The eval output and, with `grads`, every parameter's gradient (sorted by name) of `sum(y · r)`
/// in train mode, in the dtype of `params`.
fn outputs(
    m: &octconv_spec::Model,
    params: &HashMap<String, Tensor>,
    grads: bool,
) -> (Vec<f64>, Vec<(String, Vec<f64>)>) {
    let dtype = params.values().next().unwrap().dtype();
    let vars: HashMap<String, Var> = params
        .iter()
        .map(|(k, t)| (k.clone(), Var::from_tensor(t).unwrap()))
        .collect();
    let net = || {
        let t = vars
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect();
        OctModel::new(m.clone(), VarBuilder::from_tensors(t, dtype, &Device::Cpu)).unwrap()
    };
    let x = input(m, 2).to_dtype(dtype).unwrap();
    let eval = values64(&net().infer(&x).unwrap());
    if !grads {
        return (eval, Vec::new());
    }
    let y = net().forward_t(&x, true).unwrap();
    let r: Vec<f64> = (0..y.elem_count())
        .map(|i| ((i * 7 % 11) as f64) - 5.0)
        .collect();
    let r = Tensor::from_vec(r, y.shape(), &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let mut names: Vec<&String> = vars.keys().filter(|k| !k.contains("running_")).collect();
    names.sort();
    let g = names
        .into_iter()
        .map(|k| {
            let t = grads
                .get(vars[k].as_tensor())
                .unwrap_or_else(|| panic!("{k}: no gradient"));
            (k.clone(), values64(t))
        })
        .collect();
    (eval, g)
}

fn values64(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0f64, |m, x| m.max(x.abs()))
}

/// The largest absolute difference relative to the largest magnitude of `b` (the reference), or to
/// `floor` if that is larger.
fn rel_err64(a: &[f64], b: &[f64], floor: f64) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = max_abs(b).max(floor).max(1e-300);
    a.iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

/// Runs `f` with our kernels on (`true`) or off, and switches them back on.
fn with_kernels<R>(on: bool, f: impl FnOnce() -> R) -> R {
    kernels::set_enabled(on);
    let r = f();
    kernels::set_enabled(true);
    r
}

#[test]
fn every_builtin_on_candle_ops_equals_our_kernels_eval_and_gradients_at_four_alphas() {
    the_switch_runs_candles_convolution();
    // And the builtins whose stride-2 layers convolve with stride 2 (`strided = true`, α = 0).
    let calls = (BUILTINS.iter())
        .flat_map(|(call, _)| ALPHAS.map(|alpha| format!("{call}, alpha = {alpha})")))
        .chain(STRIDED.map(String::from));
    for spec in calls {
        let m = ir(&spec);
        let params = weights_far_from_identity(&m, 11);
        let (y_ours, _) = with_kernels(true, || outputs(&m, &params, false));
        let (y_candle, _) = with_kernels(false, || outputs(&m, &params, false));
        let e = rel_err64(&y_candle, &y_ours, 0.0);
        assert!(e <= 1e-5, "{spec}: f32 eval outputs differ by {e:e}");
        let params: HashMap<String, Tensor> = params
            .into_iter()
            .map(|(k, t)| (k, t.to_dtype(DType::F64).unwrap()))
            .collect();
        let (y_ours, g_ours) = with_kernels(true, || outputs(&m, &params, true));
        let (y_candle, g_candle) = with_kernels(false, || outputs(&m, &params, true));
        let e = rel_err64(&y_candle, &y_ours, 0.0);
        assert!(e <= 1e-9, "{spec}: f64 eval outputs differ by {e:e}");
        assert!(!g_ours.is_empty());
        assert_eq!(g_ours.len(), g_candle.len());
        // A gradient that vanishes in exact arithmetic (a bias followed by a batch norm) is
        // measured against a thousandth of the model's largest gradient, not its own noise.
        let floor = 1e-3 * g_ours.iter().map(|(_, g)| max_abs(g)).fold(0f64, f64::max);
        for ((name, a), (_, b)) in g_candle.iter().zip(&g_ours) {
            let e = rel_err64(a, b, floor);
            assert!(e <= 1e-9, "{spec}: f64 gradient of {name} differs by {e:e}");
        }
    }
}

/// The switch really changes the path: a convolution with our kernels off is candle's own op, bit
/// for bit, and with them on it is ours (Winograd, which rounds differently).
fn the_switch_runs_candles_convolution() {
    let ramp = |n: usize, a: usize, m: usize| -> Vec<f32> {
        (0..n)
            .map(|i| ((i * a % m) as f32 - (m / 2) as f32) / (m / 2) as f32)
            .collect()
    };
    let x = Tensor::from_vec(ramp(2 * 8 * 9 * 9, 37, 101), (2, 8, 9, 9), &Device::Cpu).unwrap();
    let w = Tensor::from_vec(ramp(16 * 8 * 9, 13, 29), (16, 8, 3, 3), &Device::Cpu).unwrap();
    let p = kernels::ConvParams {
        stride: 1,
        pad: 1,
        groups: 1,
    };
    let candle = values(&x.conv2d(&w, 1, 1, 1, 1).unwrap());
    let off = with_kernels(false, || values(&kernels::conv2d(&x, &w, p).unwrap()));
    let on = values(&kernels::conv2d(&x, &w, p).unwrap());
    assert_eq!(off, candle, "with our kernels off, conv2d is candle's op");
    assert_ne!(on, candle, "with our kernels on, conv2d is not candle's op");
    assert!(rel_err(&on, &candle) <= 1e-5);
}
