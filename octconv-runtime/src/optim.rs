//! SGD with momentum, optional Nesterov and weight decay (candle-nn's SGD has neither), and the
//! learning-rate schedules of the paper and the seed: step, cosine, linear warm-up.

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};
use std::collections::HashMap;

/// Hyper-parameters of [`Sgd`].
#[derive(Clone, Debug, PartialEq)]
pub struct SgdConfig {
    /// Momentum (0.9 in the seed).
    pub momentum: f64,
    /// Nesterov momentum.
    pub nesterov: bool,
    /// L2 weight decay added to the gradient.
    pub weight_decay: f64,
    /// Also decay BN parameters and biases (off: they are usually exempt).
    pub decay_bn_and_bias: bool,
}

impl Default for SgdConfig {
    fn default() -> Self {
        SgdConfig {
            momentum: 0.9,
            nesterov: false,
            weight_decay: 5e-4,
            decay_bn_and_bias: false,
        }
    }
}

/// Stochastic gradient descent as PyTorch defines it:
/// `d = g + wd·p; b = μ·b + d (b = d at the first step); d = d + μ·b (Nesterov) or b; p -= lr·d`.
pub struct Sgd {
    vars: Vec<(String, Var)>,
    config: SgdConfig,
    buffers: HashMap<String, Tensor>,
}

/// True for parameters exempt from weight decay by default: biases and BN weights.
fn exempt(name: &str, var: &Var) -> bool {
    name.ends_with(".bias") || (var.rank() == 1 && name.ends_with(".weight"))
}

impl Sgd {
    /// An optimiser over the trainable `vars` (BN running statistics are skipped by name).
    pub fn new(vars: impl IntoIterator<Item = (String, Var)>, config: SgdConfig) -> Self {
        let mut vars: Vec<(String, Var)> = vars
            .into_iter()
            .filter(|(n, _)| !n.ends_with(".running_mean") && !n.ends_with(".running_var"))
            .collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        Sgd {
            vars,
            config,
            buffers: HashMap::new(),
        }
    }

    /// One step with learning rate `lr`.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        let c = &self.config;
        for (name, var) in &self.vars {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let mut d = g.clone();
            if c.weight_decay != 0.0 && (c.decay_bn_and_bias || !exempt(name, var)) {
                d = (d + (var.as_tensor() * c.weight_decay)?)?;
            }
            if c.momentum != 0.0 {
                let b = match self.buffers.get(name) {
                    Some(b) => ((b * c.momentum)? + &d)?,
                    None => d.clone(),
                };
                d = if c.nesterov {
                    (d + (&b * c.momentum)?)?
                } else {
                    b.clone()
                };
                self.buffers.insert(name.clone(), b.detach());
            }
            var.set(&(var.as_tensor() - (d * lr)?)?)?;
        }
        Ok(())
    }

    /// The momentum buffers, for checkpoints (names are the parameters').
    pub fn state(&self) -> &HashMap<String, Tensor> {
        &self.buffers
    }

    /// Restores momentum buffers saved by [`Sgd::state`].
    pub fn load_state(&mut self, buffers: HashMap<String, Tensor>) {
        self.buffers = buffers;
    }
}

/// A learning-rate schedule over epochs (fractional epochs within an epoch).
#[derive(Clone, Debug, PartialEq)]
pub enum Schedule {
    /// `base · gamma^k` after the k-th milestone (the seed: ×0.2 at epochs 100 and 150 of 200).
    Step {
        /// Epochs at which the rate is multiplied by `gamma`.
        milestones: Vec<usize>,
        /// The factor.
        gamma: f64,
    },
    /// `base · (1 + cos(π · t / epochs)) / 2` (the paper).
    Cosine {
        /// Total epochs.
        epochs: usize,
    },
}

impl Schedule {
    /// The rate at (fractional) epoch `t` for base rate `base`, with a linear warm-up over the first
    /// `warmup` epochs.
    pub fn lr(&self, base: f64, t: f64, warmup: f64) -> f64 {
        let scheduled = match self {
            Schedule::Step { milestones, gamma } => {
                let k = milestones.iter().filter(|&&m| t >= m as f64).count();
                base * gamma.powi(k as i32)
            }
            Schedule::Cosine { epochs } => {
                let frac = (t / (*epochs).max(1) as f64).clamp(0.0, 1.0);
                base * 0.5 * (1.0 + (std::f64::consts::PI * frac).cos())
            }
        };
        if warmup > 0.0 && t < warmup {
            scheduled * (t / warmup)
        } else {
            scheduled
        }
    }
}
