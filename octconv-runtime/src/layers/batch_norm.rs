//! `OctBatchNorm`: batch normalisation with separate statistics per branch.

use crate::kernels::batch_norm::{
    cap_of, images_contiguous, BatchNormTrain, BatchStats, ChannelAffine,
};
use crate::kernels::epilogue::{ChannelEpilogue, Clamp};
use crate::kernels::prologue::Prologue;
use crate::layers::Activation;
use crate::tape::{Backward, ParamGrads, Recorded};
use crate::value::OctValue;
use candle_core::{DType, Result, Tensor, Var};
use candle_nn::{Init, ModuleT, VarBuilder};
use octconv_spec::Shape;
use std::sync::{Arc, Mutex};

/// Batch normalisation of one tensor `[N, C, …]`: `weight`, `bias`, `running_mean`, `running_var`.
///
/// Train mode normalises with the batch statistics (biased variance) and updates the running ones as
/// PyTorch does (`r ← (1 − m)·r + m·s`, with the unbiased variance). f32 tensors on the CPU use our
/// kernels; anything else uses candle-nn's `BatchNorm` on the same variables.
#[derive(Clone, Debug)]
pub struct BatchNorm2d {
    weight: Tensor,
    bias: Tensor,
    running_mean: Var,
    running_var: Var,
    eps: f64,
    momentum: f64,
}

impl BatchNorm2d {
    /// Replaces the parameters and running statistics with private copies (a snapshot for a
    /// frozen model: [`crate::layers::OctLayer::freeze`]).
    pub fn freeze(&mut self) -> Result<()> {
        use crate::layers::octconv::snapshot;
        self.weight = snapshot(&self.weight)?;
        self.bias = snapshot(&self.bias)?;
        // A detached view is no variable, so `from_tensor` copies it into a new one.
        self.running_mean = Var::from_tensor(&self.running_mean.as_tensor().detach())?;
        self.running_var = Var::from_tensor(&self.running_var.as_tensor().detach())?;
        Ok(())
    }

    /// Loads (or, in a `VarMap`, creates) the parameters of `c` channels.
    pub fn new(c: usize, eps: f64, momentum: f64, vb: VarBuilder) -> Result<Self> {
        if eps < 0.0 {
            candle_core::bail!("batch norm: eps must not be negative (got {eps})")
        }
        Ok(BatchNorm2d {
            running_mean: Var::from_tensor(&vb.get_with_hints(
                c,
                "running_mean",
                Init::Const(0.),
            )?)?,
            running_var: Var::from_tensor(&vb.get_with_hints(
                c,
                "running_var",
                Init::Const(1.),
            )?)?,
            weight: vb.get_with_hints(c, "weight", Init::Const(1.))?,
            bias: vb.get_with_hints(c, "bias", Init::Const(0.))?,
            eps,
            momentum,
        })
    }

    /// The inference map `y = a·x + b` per channel: `a = weight / √(running_var + eps)`,
    /// `b = bias − running_mean · a`.
    pub fn inference_affine(&self) -> Result<(Tensor, Tensor)> {
        let inv_std = (self.running_var.as_detached_tensor() + self.eps)?
            .sqrt()?
            .recip()?;
        let a = (&self.weight * inv_std)?;
        let b = (&self.bias - (self.running_mean.as_detached_tensor() * &a)?)?;
        Ok((a, b))
    }

    fn fast_path(&self, x: &Tensor) -> bool {
        crate::kernels::serves(x.device())
            && x.dtype() == DType::F32
            && self.weight.dtype() == DType::F32
    }

    /// Normalises `x`.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_act_t(x, train, None)
    }

    /// Normalises `x`, then applies `act` (ReLU and ReLU6 in the same pass on the CPU, forward and
    /// backward).
    pub fn forward_act_t(
        &self,
        x: &Tensor,
        train: bool,
        act: Option<Activation>,
    ) -> Result<Tensor> {
        let cap = match act {
            Some(a) => match a.clamp() {
                Some(c) => cap_of(c),
                // An activation our kernel does not apply runs after it.
                None => return a.tensor(&self.forward_act_t(x, train, None)?),
            },
            None => None,
        };
        if !self.fast_path(x) {
            let bn = candle_nn::BatchNorm::new_with_momentum(
                self.weight.dim(0)?,
                self.running_mean.as_tensor().clone(),
                self.running_var.as_tensor().clone(),
                self.weight.clone(),
                self.bias.clone(),
                self.eps,
                self.momentum,
            )?;
            let y = bn.forward_t(x, train)?;
            return match act {
                Some(a) => a.tensor(&y),
                None => Ok(y),
            };
        }
        if !train {
            let (a, b) = self.inference_affine()?;
            // The first channels of a concatenation chain's buffer are read in place.
            let x = match images_contiguous(x.layout()) {
                true => x.clone(),
                false => x.contiguous()?,
            };
            return x.apply_op3(&a, &b, ChannelAffine { cap });
        }
        self.train_kernel(x, cap, true).map(|(y, _)| y)
    }

    /// Training mode on our kernel (the caller checked [`BatchNorm2d::fast_path`]): normalises `x`
    /// with its batch statistics, applies the activation `cap` stands for, and updates the running
    /// statistics. With `graph` the output carries candle's autograd node; without, the caller runs
    /// the returned op's backward itself ([`BnBackward`]).
    fn train_kernel(
        &self,
        x: &Tensor,
        cap: Option<f32>,
        graph: bool,
    ) -> Result<(Tensor, BatchNormTrain)> {
        let op = BatchNormTrain {
            eps: self.eps,
            stats: Arc::new(Mutex::new(BatchStats::default())),
            cap,
        };
        let stats = op.stats.clone();
        let (x, w, b) = (
            x.contiguous()?,
            self.weight.contiguous()?,
            self.bias.contiguous()?,
        );
        let y = if graph {
            x.apply_op3(&w, &b, op.clone())?
        } else {
            x.apply_op3_no_bwd(&w.detach(), &b.detach(), &op)?
        };
        let st = stats
            .lock()
            .map_err(|_| candle_core::Error::Msg("stats poisoned".into()))?;
        let m = self.momentum;
        let unbiased = if st.count > 1 {
            st.count as f64 / (st.count - 1) as f64
        } else {
            1.0
        };
        let update = |var: &Var, batch: Vec<f64>| -> Result<()> {
            let old: Vec<f32> = var.as_tensor().to_dtype(DType::F32)?.to_vec1()?;
            let new: Vec<f32> = old
                .iter()
                .zip(batch)
                .map(|(&r, s)| ((1.0 - m) * r as f64 + m * s) as f32)
                .collect();
            var.set(&Tensor::from_vec(new, old.len(), var.device())?.to_dtype(var.dtype())?)
        };
        update(&self.running_mean, st.mean.clone())?;
        update(
            &self.running_var,
            st.var.iter().map(|v| v * unbiased).collect(),
        )?;
        drop(st);
        Ok((y, op))
    }

    /// The training forward of the planned step ([`crate::tape`]) with `act` in the same pass:
    /// `None` where our kernel does not serve `x` or `act` (the step then runs
    /// [`BatchNorm2d::forward_act_t`] under autograd).
    pub fn train_record(
        &self,
        x: &Tensor,
        act: Option<Activation>,
    ) -> Result<Option<(Tensor, BnBackward)>> {
        let cap = match act.map(|a| a.clamp()) {
            Some(Some(c)) => cap_of(c),
            Some(None) => return Ok(None),
            None => None,
        };
        if !self.fast_path(x) {
            return Ok(None);
        }
        let x = x.contiguous()?;
        let (y, op) = self.train_kernel(&x, cap, false)?;
        let back = BnBackward {
            op,
            x,
            weight: self.weight.clone(),
            bias: self.bias.clone(),
        };
        Ok(Some((y, back)))
    }
}

/// The backward of one training-mode batch norm (with its activation), recorded by
/// [`BatchNorm2d::train_record`].
pub struct BnBackward {
    op: BatchNormTrain,
    /// The input (the backward recomputes the output from it; the output is not held).
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
}

impl BnBackward {
    /// `dx`, adding the gradients of the weight and bias to `params`.
    pub fn run(&self, grad: &Tensor, params: &mut ParamGrads) -> Result<Tensor> {
        use candle_core::CustomOp3;
        // `BatchNormTrain::bwd` does not read the forward's result: `x` stands in for it.
        let (dx, dw, db) = self
            .op
            .bwd(&self.x, &self.weight, &self.bias, &self.x, grad)?;
        let missing =
            || candle_core::Error::Msg("batch norm backward: a gradient is missing".into());
        params.add(&self.weight, dw.ok_or_else(missing)?)?;
        params.add(&self.bias, db.ok_or_else(missing)?)?;
        dx.ok_or_else(missing)
    }
}

/// A batch norm's inference map per branch (`scale`, `shift` per channel), and whether a ReLU
/// follows: what a convolution applies to its input as it reads it, instead of reading a normalised
/// copy (see [`crate::kernels::prologue`]).
#[derive(Clone, Debug)]
pub struct InputMap {
    /// The tensor's (or high branch's) map.
    pub high: Option<(Vec<f32>, Vec<f32>)>,
    /// The low branch's map.
    pub low: Option<(Vec<f32>, Vec<f32>)>,
    /// Whether a ReLU follows the affine map.
    pub relu: bool,
}

impl InputMap {
    /// The kernel prologue of one branch's map.
    pub fn prologue(&self, high: bool) -> Option<Prologue<'_, f32>> {
        let branch = if high { &self.high } else { &self.low };
        branch.as_ref().map(|(scale, shift)| Prologue {
            scale,
            shift,
            relu: self.relu,
        })
    }
}

/// Batch normalisation of a tensor, a flat batch, or each branch of an octave pair (parameters under
/// `h.` and `l.`). Train mode normalises with batch statistics and updates the running ones.
#[derive(Clone, Debug)]
pub struct OctBatchNorm {
    /// The tensor's (or high branch's) normalisation.
    high: Option<BatchNorm2d>,
    /// The low branch's normalisation.
    low: Option<BatchNorm2d>,
}

impl OctBatchNorm {
    /// [`BatchNorm2d::freeze`] for both branches.
    pub fn freeze(&mut self) -> Result<()> {
        for bn in [&mut self.high, &mut self.low].into_iter().flatten() {
            bn.freeze()?;
        }
        Ok(())
    }

    /// Loads the parameters for inputs of shape `input` from `vb`.
    pub fn new(input: &Shape, eps: f64, momentum: f64, vb: VarBuilder) -> Result<Self> {
        let bn = |c: usize, vb: VarBuilder| -> Result<Option<BatchNorm2d>> {
            (c > 0)
                .then(|| BatchNorm2d::new(c, eps, momentum, vb))
                .transpose()
        };
        Ok(match input {
            Shape::Pair { high, low } => OctBatchNorm {
                high: bn(high.c, vb.pp("h"))?,
                low: bn(low.c, vb.pp("l"))?,
            },
            other => OctBatchNorm {
                high: bn(other.channels(), vb)?,
                low: None,
            },
        })
    }

    /// The inference map of each branch as f32 vectors (`None` for a branch without channels), for a
    /// convolution that applies it as it reads its input ([`crate::layers::OctConv2d::forward_prologue`]);
    /// `relu` adds the ReLU that follows. `None` unless the parameters are f32.
    pub fn input_map(&self, relu: bool) -> Result<Option<InputMap>> {
        let affine = |bn: &Option<BatchNorm2d>| -> Result<Option<(Vec<f32>, Vec<f32>)>> {
            bn.as_ref()
                .map(|bn| {
                    let (a, b) = bn.inference_affine()?;
                    Ok((a.to_vec1::<f32>()?, b.to_vec1::<f32>()?))
                })
                .transpose()
        };
        let f32_params = [&self.high, &self.low]
            .into_iter()
            .flatten()
            .all(|bn| bn.weight.dtype() == DType::F32);
        if !f32_params {
            return Ok(None);
        }
        Ok(Some(InputMap {
            high: affine(&self.high)?,
            low: affine(&self.low)?,
            relu,
        }))
    }

    /// Inference of `act(self(y))` where `y` is a convolution's fresh output that nothing else
    /// holds: on f32 CPU tensors the map is applied to `y` in place, one pass per branch and no
    /// allocation ([`crate::kernels::epilogue`]); elsewhere op by op. `act` is `None`,
    /// [`Activation::Relu`] or [`Activation::Relu6`] (what [`octconv_spec::plan::OutputMaps`] plans).
    pub fn infer_in_place(&self, y: OctValue, act: Option<Activation>) -> Result<OctValue> {
        let clamp = act.map_or(Some(Clamp::Identity), Activation::clamp);
        let fast = |bn: &Option<BatchNorm2d>, t: &Tensor| {
            bn.as_ref().is_some_and(|bn| bn.fast_path(t)) && t.is_contiguous()
        };
        let all_fast = match &y {
            OctValue::Single(t) | OctValue::Flat(t) => fast(&self.high, t),
            OctValue::Pair { high, low } => {
                high.as_ref().is_none_or(|h| fast(&self.high, h)) && fast(&self.low, low)
            }
        };
        let Some(clamp) = clamp.filter(|_| all_fast) else {
            let y = self.forward_t(&y, false)?;
            return match act {
                Some(a) => a.forward(&y),
                None => Ok(y),
            };
        };
        let apply = |bn: &Option<BatchNorm2d>, t: &Tensor| -> Result<()> {
            let Some(bn) = bn else {
                candle_core::bail!("batch norm: unexpected branch")
            };
            let (a, b) = bn.inference_affine()?;
            t.inplace_op1(&ChannelEpilogue {
                scale: a.to_vec1()?,
                shift: b.to_vec1()?,
                clamp,
            })
        };
        match &y {
            OctValue::Single(t) | OctValue::Flat(t) => apply(&self.high, t)?,
            OctValue::Pair { high, low } => {
                if let Some(h) = high {
                    apply(&self.high, h)?;
                }
                apply(&self.low, low)?;
            }
        }
        Ok(y)
    }

    /// The training forward of the planned step ([`crate::tape`]), `act` applied in the same pass:
    /// `None` unless our kernel serves every branch.
    pub fn train_record_act(
        &self,
        x: &OctValue,
        act: Option<Activation>,
    ) -> Result<Option<Recorded>> {
        let one = |bn: &Option<BatchNorm2d>, t: &Tensor| -> Result<Option<(Tensor, BnBackward)>> {
            match bn {
                Some(bn) => bn.train_record(t, act),
                None => candle_core::bail!("batch norm: unexpected branch"),
            }
        };
        let (y, high, low) = match x {
            OctValue::Single(t) | OctValue::Flat(t) => {
                let Some((y, b)) = one(&self.high, t)? else {
                    return Ok(None);
                };
                let y = match x {
                    OctValue::Flat(_) => OctValue::Flat(y),
                    _ => OctValue::Single(y),
                };
                (y, Some(b), None)
            }
            OctValue::Pair { high, low } => {
                let h = match high {
                    Some(t) => match one(&self.high, t)? {
                        Some(r) => Some(r),
                        None => return Ok(None),
                    },
                    None => None,
                };
                let Some((yl, bl)) = one(&self.low, low)? else {
                    return Ok(None);
                };
                let (yh, bh) = h.map_or((None, None), |(y, b)| (Some(y), Some(b)));
                (OctValue::Pair { high: yh, low: yl }, bh, Some(bl))
            }
        };
        Ok(Some((y, Box::new(OctBnBackward { high, low }))))
    }

    /// Normalises `x` (`train` selects batch statistics and updates the running ones).
    pub fn forward_t(&self, x: &OctValue, train: bool) -> Result<OctValue> {
        self.forward_act_t(x, train, None)
    }

    /// Normalises `x`, then applies `act` to every branch (ReLU and ReLU6 in one pass per branch on
    /// the CPU).
    pub fn forward_act_t(
        &self,
        x: &OctValue,
        train: bool,
        act: Option<Activation>,
    ) -> Result<OctValue> {
        let apply = |bn: &Option<BatchNorm2d>, t: &Tensor| -> Result<Tensor> {
            match bn {
                Some(bn) => bn.forward_act_t(t, train, act),
                None => candle_core::bail!("batch norm: unexpected branch"),
            }
        };
        Ok(match x {
            OctValue::Single(t) => OctValue::Single(apply(&self.high, t)?),
            OctValue::Flat(t) => OctValue::Flat(apply(&self.high, t)?),
            OctValue::Pair { high, low } => OctValue::Pair {
                high: high.as_ref().map(|h| apply(&self.high, h)).transpose()?,
                low: apply(&self.low, low)?,
            },
        })
    }
}

/// The backward of [`OctBatchNorm::train_record_act`]: one [`BnBackward`] per branch.
struct OctBnBackward {
    high: Option<BnBackward>,
    low: Option<BnBackward>,
}

impl Backward for OctBnBackward {
    fn backward(
        self: Box<Self>,
        grad: &OctValue,
        params: &mut ParamGrads,
    ) -> Result<Vec<Option<OctValue>>> {
        let missing = || candle_core::Error::Msg("batch norm backward: a branch is missing".into());
        let dx = match grad {
            OctValue::Single(g) | OctValue::Flat(g) => {
                let dx = self.high.as_ref().ok_or_else(missing)?.run(g, params)?;
                match grad {
                    OctValue::Flat(_) => OctValue::Flat(dx),
                    _ => OctValue::Single(dx),
                }
            }
            OctValue::Pair { high, low } => OctValue::Pair {
                high: match (high, &self.high) {
                    (Some(g), Some(b)) => Some(b.run(g, params)?),
                    (None, None) => None,
                    _ => return Err(missing()),
                },
                low: self.low.as_ref().ok_or_else(missing)?.run(low, params)?,
            },
        };
        Ok(vec![Some(dx)])
    }
}
