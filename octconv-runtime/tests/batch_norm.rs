//! Our batch-norm kernels (f32) against candle-nn's `BatchNorm` (composed of plain tensor ops, run in
//! f64): outputs, gradients of input, weight and bias, running statistics, in train and eval mode,
//! for feature maps and flat batches, with and without the ReLU our kernels fuse.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{ModuleT, VarBuilder, VarMap};
use octconv_runtime::layers::{Activation, BatchNorm2d};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;

fn rand_tensor(rng: &mut ChaCha8Rng, shape: &[usize], scale: f32, shift: f32) -> Tensor {
    let n = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| (rng.random::<f32>() * 2.0 - 1.0) * scale + shift)
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn max_rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
    let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(a.len(), b.len());
    let scale = 1.0 + b.iter().fold(0f32, |m, v| m.max(v.abs()));
    a.iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

/// Both implementations over the same variables: returns (y, dx, dγ, dβ, running mean, running var).
fn run(shape: &[usize], train: bool, ours: bool, seed: u64) -> Vec<Tensor> {
    run_with(shape, train, ours, seed, None, (2.0, 0.7))
}

/// [`run`] with an activation after the batch norm (ours: fused into its forward and backward
/// kernels; the reference: `relu(y)`, or `relu(y) − relu(y − 6)` for ReLU6) and the input drawn
/// uniformly from `shift ± scale`. With ReLU6, γ is about 4, so that outputs reach the cap.
fn run_with(
    shape: &[usize],
    train: bool,
    ours: bool,
    seed: u64,
    act: Option<Activation>,
    (scale, shift): (f32, f32),
) -> Vec<Tensor> {
    let c = shape[1];
    // candle-nn, the reference, in f64 (ours is f32 only).
    let dtype = if ours { DType::F32 } else { DType::F64 };
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let x = rand_tensor(&mut rng, shape, scale, shift);
    let x = Var::from_tensor(&x.to_dtype(dtype).unwrap()).unwrap();
    let mut init = HashMap::new();
    let gamma = if act == Some(Activation::Relu6) {
        4.0
    } else {
        1.0
    };
    init.insert(
        "weight".to_string(),
        rand_tensor(&mut rng, &[c], 0.5, gamma),
    );
    init.insert("bias".to_string(), rand_tensor(&mut rng, &[c], 0.5, 0.0));
    init.insert(
        "running_mean".to_string(),
        rand_tensor(&mut rng, &[c], 0.3, 0.0),
    );
    init.insert(
        "running_var".to_string(),
        rand_tensor(&mut rng, &[c], 0.3, 1.0),
    );
    let r = rand_tensor(&mut rng, shape, 1.0, 0.0)
        .to_dtype(dtype)
        .unwrap();
    let varmap = VarMap::new();
    {
        let mut data = varmap.data().lock().unwrap();
        for (k, t) in init {
            data.insert(k, Var::from_tensor(&t.to_dtype(dtype).unwrap()).unwrap());
        }
    }
    let vb = VarBuilder::from_varmap(&varmap, dtype, &Device::Cpu);
    let y = if ours {
        BatchNorm2d::new(c, 1e-5, 0.1, vb.clone())
            .unwrap()
            .forward_act_t(x.as_tensor(), train, act)
            .unwrap()
    } else {
        let bn = candle_nn::batch_norm(
            c,
            candle_nn::BatchNormConfig {
                eps: 1e-5,
                remove_mean: true,
                affine: true,
                momentum: 0.1,
            },
            vb.clone(),
        )
        .unwrap();
        let y = bn.forward_t(x.as_tensor(), train).unwrap();
        let y = match act {
            None => y,
            Some(Activation::Relu) => y.relu().unwrap(),
            Some(Activation::Relu6) => {
                (y.relu().unwrap() - (&y - 6.0).unwrap().relu().unwrap()).unwrap()
            }
            Some(a) => panic!("no reference for {a:?}"),
        };
        // candle-nn's BatchNorm holds its own copies of the running statistics.
        let mut data = varmap.data().lock().unwrap();
        data.insert(
            "running_mean".into(),
            Var::from_tensor(&bn.running_mean().copy().unwrap()).unwrap(),
        );
        data.insert(
            "running_var".into(),
            Var::from_tensor(&bn.running_var().copy().unwrap()).unwrap(),
        );
        y
    };
    let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let data = varmap.data().lock().unwrap();
    let get = |k: &str| data.get(k).unwrap().as_tensor().clone();
    [
        y.clone(),
        grads.get(x.as_tensor()).unwrap().clone(),
        grads.get(&get("weight")).unwrap().clone(),
        grads.get(&get("bias")).unwrap().clone(),
        get("running_mean"),
        get("running_var"),
    ]
    .into_iter()
    .map(|t| t.to_dtype(DType::F32).unwrap())
    .collect()
}

/// Every output of [`run`] within 2e-5 (relative to the largest value) of the reference's.
fn assert_outputs_close(ours: &[Tensor], theirs: &[Tensor], case: &str) {
    let names = ["y", "dx", "dweight", "dbias", "running_mean", "running_var"];
    for ((name, a), b) in names.iter().zip(ours).zip(theirs) {
        let d = max_rel_diff(a, b);
        assert!(d < 2e-5, "{name} differs by {d:e} for {case}");
    }
}

#[test]
fn batch_norm_matches_candle_nn_in_train_and_eval_mode() {
    for (i, shape) in [
        vec![4, 3, 5, 6],
        vec![2, 8, 4, 4],
        vec![16, 5],
        vec![1, 2, 3, 3],
    ]
    .into_iter()
    .enumerate()
    {
        for train in [true, false] {
            let ours = run(&shape, train, true, i as u64);
            let theirs = run(&shape, train, false, i as u64);
            assert_outputs_close(&ours, &theirs, &format!("{shape:?} (train = {train})"));
        }
    }
}

#[test]
fn fused_batch_norm_relu_backward_matches_candle_nn_then_relu() {
    fused_batch_norm_matches_candle_nn_then(Activation::Relu);
}

#[test]
fn fused_batch_norm_relu6_backward_matches_candle_nn_then_relu6() {
    fused_batch_norm_matches_candle_nn_then(Activation::Relu6);
}

fn fused_batch_norm_matches_candle_nn_then(act: Activation) {
    // Planes of 99 values cross the kernels' 64-value summation blocks with a remainder; a mean of
    // 40 against a spread of 0.5 would cancel in a variance taken as E[x²] − mean².
    for (i, (shape, scale, shift)) in [
        (vec![3, 4, 9, 11], 2.0, 0.3),
        (vec![2, 6, 8, 8], 1.0, -0.2),
        (vec![4, 3, 5, 6], 0.5, 40.0),
    ]
    .into_iter()
    .enumerate()
    {
        let ours = run_with(&shape, true, true, 10 + i as u64, Some(act), (scale, shift));
        let theirs = run_with(
            &shape,
            true,
            false,
            10 + i as u64,
            Some(act),
            (scale, shift),
        );
        assert_outputs_close(&ours, &theirs, &format!("{shape:?} ± {scale} at {shift}"));
    }
}

#[test]
fn train_mode_output_has_zero_mean_and_unit_variance_per_channel() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let x = rand_tensor(&mut rng, &[8, 3, 4, 4], 3.0, 5.0);
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let y = BatchNorm2d::new(3, 0.0, 0.1, vb)
        .unwrap()
        .forward_t(&x, true)
        .unwrap();
    let y = y.transpose(0, 1).unwrap().flatten_from(1).unwrap();
    let mean: Vec<f32> = y.mean(1).unwrap().to_vec1().unwrap();
    let var: Vec<f32> = y.sqr().unwrap().mean(1).unwrap().to_vec1().unwrap();
    for c in 0..3 {
        assert!(
            mean[c].abs() < 1e-5 && (var[c] - 1.0).abs() < 1e-4,
            "channel {c}: mean {} var {}",
            mean[c],
            var[c]
        );
    }
}
