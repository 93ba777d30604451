//! Our batch-norm kernels against candle-nn's `BatchNorm` (composed of plain tensor ops): outputs,
//! gradients of input, weight and bias, running statistics, in train and eval mode, for feature maps
//! and flat batches.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{ModuleT, VarBuilder, VarMap};
use octconv_runtime::layers::BatchNorm2d;
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
    let c = shape[1];
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let x = Var::from_tensor(&rand_tensor(&mut rng, shape, 2.0, 0.7)).unwrap();
    let mut init = HashMap::new();
    init.insert("weight".to_string(), rand_tensor(&mut rng, &[c], 0.5, 1.0));
    init.insert("bias".to_string(), rand_tensor(&mut rng, &[c], 0.5, 0.0));
    init.insert(
        "running_mean".to_string(),
        rand_tensor(&mut rng, &[c], 0.3, 0.0),
    );
    init.insert(
        "running_var".to_string(),
        rand_tensor(&mut rng, &[c], 0.3, 1.0),
    );
    let r = rand_tensor(&mut rng, shape, 1.0, 0.0);
    let varmap = VarMap::new();
    {
        let mut data = varmap.data().lock().unwrap();
        for (k, t) in init {
            data.insert(k, Var::from_tensor(&t).unwrap());
        }
    }
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let y = if ours {
        BatchNorm2d::new(c, 1e-5, 0.1, vb.clone())
            .unwrap()
            .forward_t(x.as_tensor(), train)
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
    vec![
        y.clone(),
        grads.get(x.as_tensor()).unwrap().clone(),
        grads.get(&get("weight")).unwrap().clone(),
        grads.get(&get("bias")).unwrap().clone(),
        get("running_mean"),
        get("running_var"),
    ]
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
            for (name, a, b) in ["y", "dx", "dweight", "dbias", "running_mean", "running_var"]
                .iter()
                .zip(&ours)
                .zip(&theirs)
                .map(|((n, a), b)| (n, a, b))
            {
                let d = max_rel_diff(a, b);
                assert!(
                    d < 2e-5,
                    "{name} differs by {d:e} for {shape:?} (train = {train})"
                );
            }
        }
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
