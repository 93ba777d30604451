//! SGD against hand-computed steps (PyTorch's definition) and the learning-rate schedules.

use candle_core::{Device, Tensor, Var};
use octconv_runtime::optim::{Schedule, Sgd, SgdConfig};

/// Minimises Σ w² / 2 (gradient w) for three steps and compares with the formula by hand.
fn run(config: SgdConfig, name: &str) -> Vec<f64> {
    let w = Var::from_tensor(&Tensor::new(&[1.0f64, -2.0], &Device::Cpu).unwrap()).unwrap();
    let mut opt = Sgd::new([(name.to_string(), w.clone())], config);
    for _ in 0..3 {
        let loss = (w.as_tensor().sqr().unwrap().sum_all().unwrap() * 0.5).unwrap();
        let g = loss.backward().unwrap();
        opt.step(&g, 0.1).unwrap();
    }
    w.as_tensor().to_vec1().unwrap()
}

fn by_hand(p0: f64, momentum: f64, nesterov: bool, wd: f64) -> f64 {
    let (mut p, mut b) = (p0, None::<f64>);
    for _ in 0..3 {
        let d = p + wd * p;
        let buf = match b {
            Some(b) => momentum * b + d,
            None => d,
        };
        b = Some(buf);
        let step = if nesterov { d + momentum * buf } else { buf };
        p -= 0.1 * step;
    }
    p
}

#[test]
fn sgd_momentum_nesterov_and_weight_decay_follow_the_formula() {
    for (momentum, nesterov, wd) in [
        (0.0, false, 0.0),
        (0.9, false, 0.0),
        (0.9, true, 0.0),
        (0.9, false, 0.1),
        (0.9, true, 0.1),
    ] {
        let cfg = SgdConfig {
            momentum,
            nesterov,
            weight_decay: wd,
            decay_bn_and_bias: false,
        };
        let got = run(cfg, "conv.weight2d");
        for (g, p0) in got.iter().zip([1.0, -2.0]) {
            let want = by_hand(p0, momentum, nesterov, wd);
            assert!(
                (g - want).abs() < 1e-12,
                "μ {momentum} nesterov {nesterov} wd {wd}: {g} vs {want}"
            );
        }
    }
}

#[test]
fn biases_and_bn_weights_skip_weight_decay_unless_asked() {
    let cfg = SgdConfig {
        momentum: 0.0,
        nesterov: false,
        weight_decay: 0.5,
        decay_bn_and_bias: false,
    };
    let exempt = run(cfg.clone(), "bn0.h.weight");
    assert!((exempt[0] - by_hand(1.0, 0.0, false, 0.0)).abs() < 1e-12);
    let decayed = run(
        SgdConfig {
            decay_bn_and_bias: true,
            ..cfg
        },
        "bn0.h.weight",
    );
    assert!((decayed[0] - by_hand(1.0, 0.0, false, 0.5)).abs() < 1e-12);
}

#[test]
fn running_statistics_are_not_optimised() {
    let rm = Var::from_tensor(&Tensor::new(&[1.0f64], &Device::Cpu).unwrap()).unwrap();
    let loss = rm.as_tensor().sum_all().unwrap();
    let g = loss.backward().unwrap();
    let mut opt = Sgd::new(
        [("bn0.running_mean".to_string(), rm.clone())],
        SgdConfig::default(),
    );
    opt.step(&g, 1.0).unwrap();
    assert_eq!(rm.as_tensor().to_vec1::<f64>().unwrap(), [1.0]);
}

#[test]
fn schedules() {
    let step = Schedule::Step {
        milestones: vec![100, 150],
        gamma: 0.2,
    };
    assert_eq!(step.lr(0.1, 0.0, 0.0), 0.1);
    assert!((step.lr(0.1, 100.0, 0.0) - 0.02).abs() < 1e-15);
    assert!((step.lr(0.1, 199.5, 0.0) - 0.004).abs() < 1e-15);
    let cos = Schedule::Cosine { epochs: 10 };
    assert_eq!(cos.lr(0.1, 0.0, 0.0), 0.1);
    assert!((cos.lr(0.1, 5.0, 0.0) - 0.05).abs() < 1e-12);
    assert!(cos.lr(0.1, 10.0, 0.0).abs() < 1e-12);
    assert!((cos.lr(0.1, 0.5, 1.0) - 0.5 * cos.lr(0.1, 0.5, 0.0)).abs() < 1e-12);
}

/// [`run`] on an f32 CPU parameter (the fused in-place update) with a 1000-value gradient of
/// varied sizes, three steps, against the formula by hand in f64.
#[test]
fn fused_f32_update_follows_the_formula_for_every_setting() {
    let p0: Vec<f32> = (0..1000)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
        .collect();
    for (momentum, nesterov, wd) in [
        (0.0, false, 0.0),
        (0.0, false, 0.1),
        (0.9, false, 0.0),
        (0.9, true, 0.0),
        (0.9, false, 5e-4),
        (0.9, true, 5e-4),
    ] {
        let cfg = SgdConfig {
            momentum,
            nesterov,
            weight_decay: wd,
            decay_bn_and_bias: false,
        };
        let w = Var::from_tensor(&Tensor::new(p0.as_slice(), &Device::Cpu).unwrap()).unwrap();
        let mut opt = Sgd::new([("conv.weight2d".to_string(), w.clone())], cfg);
        for _ in 0..3 {
            let loss = (w.as_tensor().sqr().unwrap().sum_all().unwrap() * 0.5).unwrap();
            opt.step(&loss.backward().unwrap(), 0.1).unwrap();
        }
        let got: Vec<f32> = w.as_tensor().to_vec1().unwrap();
        for (g, &p) in got.iter().zip(&p0) {
            let want = by_hand(p as f64, momentum, nesterov, wd);
            assert!(
                (*g as f64 - want).abs() <= 1e-6 * (1.0 + want.abs()),
                "μ {momentum} nesterov {nesterov} wd {wd}: {g} vs {want}"
            );
        }
    }
}

/// Two steps, the momentum buffers through `state` / `load_state` into a new optimiser, a third step:
/// bit for bit the weights of three steps in one optimiser (exact resume depends on it).
#[test]
fn momentum_state_round_trips_bit_for_bit() {
    let cfg = SgdConfig {
        momentum: 0.9,
        nesterov: true,
        weight_decay: 5e-4,
        decay_bn_and_bias: false,
    };
    let p0: Vec<f32> = (0..64).map(|i| (i as f32 - 30.0) / 7.0).collect();
    let make = || Var::from_tensor(&Tensor::new(p0.as_slice(), &Device::Cpu).unwrap()).unwrap();
    let step = |opt: &mut Sgd, w: &Var| {
        let loss = (w.as_tensor().powf(4.0).unwrap().sum_all().unwrap() * 0.25).unwrap();
        opt.step(&loss.backward().unwrap(), 0.01).unwrap();
    };
    let w1 = make();
    let mut a = Sgd::new([("fc.weight".to_string(), w1.clone())], cfg.clone());
    for _ in 0..3 {
        step(&mut a, &w1);
    }
    let w2 = make();
    let mut b = Sgd::new([("fc.weight".to_string(), w2.clone())], cfg.clone());
    step(&mut b, &w2);
    step(&mut b, &w2);
    let state = b.state().unwrap();
    assert_eq!(state["fc.weight"].dims(), &[64]);
    let mut c = Sgd::new([("fc.weight".to_string(), w2.clone())], cfg);
    c.load_state(state).unwrap();
    step(&mut c, &w2);
    let (x, y): (Vec<f32>, Vec<f32>) = (
        w1.as_tensor().to_vec1().unwrap(),
        w2.as_tensor().to_vec1().unwrap(),
    );
    assert_eq!(x, y);
}

#[test]
fn a_momentum_buffer_of_the_wrong_shape_is_an_error_naming_it() {
    let w = Var::from_tensor(&Tensor::zeros(4, candle_core::DType::F32, &Device::Cpu).unwrap())
        .unwrap();
    let mut opt = Sgd::new([("fc.weight".to_string(), w)], SgdConfig::default());
    let mut bad = std::collections::HashMap::new();
    bad.insert(
        "fc.weight".to_string(),
        Tensor::zeros(5, candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    let err = opt.load_state(bad).unwrap_err().to_string();
    assert!(err.contains("fc.weight") && err.contains("[5]"), "{err}");
}
