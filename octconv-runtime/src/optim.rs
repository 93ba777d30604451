//! SGD with momentum, optional Nesterov and weight decay (candle-nn's SGD has neither), and the
//! learning-rate schedules of the paper and the seed: step, cosine, linear warm-up.

use crate::tape::Grads;
use candle_core::{bail, CpuStorage, DType, Device, InplaceOp2, Layout, Result, Tensor, Var};
use std::collections::HashMap;
use std::sync::Mutex;

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
///
/// An f32 parameter on the CPU is updated in one pass over it, its gradient and its momentum buffer
/// (kept as a plain vector), in place ([`FusedStep`]); as tensor ops the update was six passes, each
/// allocating a full-size result, 3–4 % of a WRN-16-4 training step. Other parameters (CUDA, f64)
/// take the tensor ops.
pub struct Sgd {
    vars: Vec<(String, Var)>,
    config: SgdConfig,
    /// Momentum buffers of the tensor-op path.
    buffers: HashMap<String, Tensor>,
    /// Momentum buffers of the fused path.
    host: HashMap<String, Vec<f32>>,
}

/// True for parameters exempt from weight decay by default: biases and BN weights.
fn exempt(name: &str, var: &Var) -> bool {
    name.ends_with(".bias") || (var.rank() == 1 && name.ends_with(".weight"))
}

/// Every variable of `varmap` with its name: what [`Sgd::new`] takes (`octconv train` and
/// `octconv bench --train` build their optimiser from it).
pub fn named_vars(varmap: &candle_nn::VarMap) -> Result<Vec<(String, Var)>> {
    Ok(varmap
        .data()
        .lock()
        .map_err(|_| candle_core::Error::Msg("var map poisoned".into()))?
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect())
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
            host: HashMap::new(),
        }
    }

    /// Whether `var` takes the fused update.
    fn fused(var: &Var) -> bool {
        matches!(var.device(), Device::Cpu) && var.dtype() == DType::F32 && var.is_contiguous()
    }

    /// One step with learning rate `lr`.
    pub fn step(&mut self, grads: &impl Grads, lr: f64) -> Result<()> {
        let c = &self.config;
        for (name, var) in &self.vars {
            let Some(g) = grads.grad(var.as_tensor()) else {
                continue;
            };
            let decay = if c.decay_bn_and_bias || !exempt(name, var) {
                c.weight_decay
            } else {
                0.0
            };
            if Self::fused(var) && g.dtype() == DType::F32 {
                let mut none = Vec::new();
                let buffer = if c.momentum != 0.0 {
                    self.host.entry(name.clone()).or_default()
                } else {
                    &mut none
                };
                let op = FusedStep {
                    buffer: Mutex::new(buffer),
                    lr: lr as f32,
                    momentum: c.momentum as f32,
                    nesterov: c.nesterov,
                    decay: decay as f32,
                };
                var.as_tensor().inplace_op2(&g.contiguous()?, &op)?;
                continue;
            }
            let mut d = g.clone();
            if decay != 0.0 {
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
    pub fn state(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = self.buffers.clone();
        for (name, var) in &self.vars {
            if let Some(b) = self.host.get(name) {
                out.insert(
                    name.clone(),
                    Tensor::from_slice(b, var.shape(), var.device())?,
                );
            }
        }
        Ok(out)
    }

    /// Restores momentum buffers saved by [`Sgd::state`]. A buffer whose shape is not its
    /// parameter's is an error naming it.
    pub fn load_state(&mut self, buffers: HashMap<String, Tensor>) -> Result<()> {
        self.buffers.clear();
        self.host.clear();
        for (name, b) in buffers {
            match self.vars.iter().find(|(n, _)| *n == name) {
                Some((_, var)) if var.shape() != b.shape() => bail!(
                    "momentum buffer `{name}` has shape {:?}, its parameter {:?}",
                    b.dims(),
                    var.dims()
                ),
                Some((_, var)) if Self::fused(var) => {
                    let v = b.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                    self.host.insert(name, v);
                }
                _ => {
                    self.buffers.insert(name, b);
                }
            }
        }
        Ok(())
    }
}

/// One SGD step of an f32 parameter in place, in one pass over it, its gradient (the second
/// argument) and its momentum buffer: the formula of [`Sgd`], element by element, in f32.
struct FusedStep<'a> {
    /// The momentum buffer; empty before the first step (it then starts as `d`).
    buffer: Mutex<&'a mut Vec<f32>>,
    lr: f32,
    momentum: f32,
    nesterov: bool,
    decay: f32,
}

impl InplaceOp2 for FusedStep<'_> {
    fn name(&self) -> &'static str {
        "octconv-sgd-step"
    }

    fn cpu_fwd(
        &self,
        ps: &mut CpuStorage,
        pl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<()> {
        let (CpuStorage::F32(p), CpuStorage::F32(g)) = (ps, gs) else {
            bail!("fused SGD step: parameter and gradient must be f32")
        };
        let (Some((p0, p1)), Some((g0, g1))) = (pl.contiguous_offsets(), gl.contiguous_offsets())
        else {
            bail!("fused SGD step: parameter and gradient must be contiguous")
        };
        let (p, g) = (&mut p[p0..p1], &g[g0..g1]);
        if p.len() != g.len() {
            bail!(
                "fused SGD step: {} gradients for {} values",
                g.len(),
                p.len()
            )
        }
        let (lr, mu, wd) = (self.lr, self.momentum, self.decay);
        if mu == 0.0 {
            for (p, &g) in p.iter_mut().zip(g) {
                *p -= lr * (g + wd * *p);
            }
            return Ok(());
        }
        let mut buf = self
            .buffer
            .lock()
            .map_err(|_| candle_core::Error::Msg("momentum buffer poisoned".into()))?;
        // No buffer yet (`load_state` refuses one of another length).
        let first = buf.len() != p.len();
        if first {
            buf.clear();
            buf.resize(p.len(), 0.0);
        }
        for ((p, &g), b) in p.iter_mut().zip(g).zip(buf.iter_mut()) {
            let d = g + wd * *p;
            *b = if first { d } else { mu * *b + d };
            let step = if self.nesterov { d + mu * *b } else { *b };
            *p -= lr * step;
        }
        Ok(())
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
