//! Helpers shared by the finite-difference tests: seeded random tensors and the gradient check.

use candle_core::{Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// An f64 tensor of `shape` with values uniform in (−1, 1).
pub fn rand_tensor(rng: &mut ChaCha8Rng, shape: &[usize]) -> Tensor {
    let n = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.random::<f64>() * 2.0 - 1.0).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn scalar(t: &Tensor) -> f64 {
    t.to_scalar::<f64>().unwrap()
}

/// Compares autograd gradients of `f` at `inputs` with central differences on up to `samples`
/// elements per input; returns the largest relative error.
pub fn check_grad(inputs: &[Tensor], samples: usize, f: impl Fn(&[Tensor]) -> Tensor) -> f64 {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(t).unwrap())
        .collect();
    let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let grads = f(&tensors).backward().unwrap();
    let eps = 1e-6;
    let mut worst: f64 = 0.0;
    let mut rng = ChaCha8Rng::seed_from_u64(99);
    for (i, t) in inputs.iter().enumerate() {
        let g = grads
            .get(&tensors[i])
            .expect("gradient exists")
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let base = t.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        for _ in 0..samples.min(base.len()) {
            let k = rng.random_range(0..base.len());
            let eval = |delta: f64| {
                let mut v = base.clone();
                v[k] += delta;
                let mut args: Vec<Tensor> = inputs.to_vec();
                args[i] = Tensor::from_vec(v, t.shape(), &Device::Cpu).unwrap();
                scalar(&f(&args))
            };
            let fd = (eval(eps) - eval(-eps)) / (2.0 * eps);
            let err = (fd - g[k]).abs() / (1e-3 + fd.abs().max(g[k].abs()));
            worst = worst.max(err);
        }
    }
    worst
}
