//! The planned training step: a training-mode forward that records, layer by layer, what each
//! layer's backward needs (a *tape*), and a backward that plays the tape in reverse.
//!
//! candle's autograd treats every op as a node: each gradient it propagates starts as a zero tensor
//! (`zeros_like`, one pass) to which the contribution is added (another pass and an allocation), and
//! a residual `add` pays that twice. At α = .75 on WRN-16-4 those passes were a quarter of a training
//! step, and they do not shrink with α. Here a layer with its own backward ([`OctLayer::train_record`]:
//! the batch norm with its activation, octave convolutions of every shape (the fused 3×3 kernel, the
//! others per path in `layers/octconv/paths.rs`), plain convolutions without bias, `add`, dropout,
//! and the adjoints of `layers/adjoint.rs`: merge, split, pyramid, upsample, concat, flatten, global
//! average, max and 2×2 average pooling, scale, ReLU, ReLU6, sigmoid, linear) calls its kernels'
//! gradients directly: a value's gradient is written once by the layer that reads it, and summed
//! only where several layers read the value. Any other layer runs under
//! candle's autograd on its own ([`Autograd`]): its inputs become variables (one copy each), and its
//! backward is that of the graph of this layer alone, so every layer in `LAYERS` trains here and
//! agrees with the whole-graph autograd of [`candle_core::ModuleT::forward_t`].

use crate::value::OctValue;
use candle_core::backprop::GradStore;
use candle_core::Device;
use candle_core::{Result, Tensor, TensorId, Var};
use std::collections::HashMap;

/// Gradients of the parameters, found by the tensors the layers hold (a parameter's tensor is its
/// [`Var`]'s).
#[derive(Default, Debug)]
pub struct ParamGrads {
    grads: HashMap<TensorId, Tensor>,
}

impl ParamGrads {
    /// The gradient of `param`, if it got one.
    pub fn get(&self, param: &Tensor) -> Option<&Tensor> {
        self.grads.get(&param.id())
    }

    /// How many parameters got a gradient.
    pub fn len(&self) -> usize {
        self.grads.len()
    }

    /// Whether no parameter got a gradient.
    pub fn is_empty(&self) -> bool {
        self.grads.is_empty()
    }

    /// Adds `grad` to `param`'s gradient.
    pub fn add(&mut self, param: &Tensor, grad: Tensor) -> Result<()> {
        self.add_id(param.id(), grad)
    }

    fn add_id(&mut self, id: TensorId, grad: Tensor) -> Result<()> {
        let sum = match self.grads.remove(&id) {
            Some(g) => (g + grad)?,
            None => grad,
        };
        self.grads.insert(id, sum);
        Ok(())
    }

    /// Adds every gradient of `store` except those of the tensors `skip` (a layer's input copies).
    fn absorb(&mut self, store: &GradStore, skip: &[TensorId]) -> Result<()> {
        for &id in store.get_ids() {
            if let (false, Some(g)) = (skip.contains(&id), store.get_id(id)) {
                // candle's gradients can carry a graph (a product with a parameter): cut it.
                self.add_id(id, g.detach())?;
            }
        }
        Ok(())
    }
}

/// Where an optimiser finds a parameter's gradient: candle's [`GradStore`] or our [`ParamGrads`].
pub trait Grads {
    /// The gradient of `param`, if it got one.
    fn grad(&self, param: &Tensor) -> Option<&Tensor>;
}

impl Grads for GradStore {
    fn grad(&self, param: &Tensor) -> Option<&Tensor> {
        self.get(param)
    }
}

impl Grads for ParamGrads {
    fn grad(&self, param: &Tensor) -> Option<&Tensor> {
        self.get(param)
    }
}

/// One layer's backward, recorded by its training forward.
pub trait Backward: Send {
    /// Given the gradient of the loss with respect to the layer's output, adds the gradients of its
    /// parameters to `params` and returns those of its inputs, in the order of its inputs (`None`
    /// where an input gets none, such as the model input).
    fn backward(
        self: Box<Self>,
        grad: &OctValue,
        params: &mut ParamGrads,
    ) -> Result<Vec<Option<OctValue>>>;
}

/// A layer's output and its recorded backward.
pub type Recorded = (OctValue, Box<dyn Backward>);

/// The fallback: the layer's own forward under candle's autograd, on copies of its inputs made
/// variables, so that the graph covers this layer alone.
pub struct Autograd {
    /// The inputs as variables (`None`: an input that needs no gradient, the model input).
    inputs: Vec<Option<OctValue>>,
    output: OctValue,
}

impl Autograd {
    /// Runs `forward` (a layer in training mode) on `xs`; `needs_grad[k]` says whether input `k`
    /// needs a gradient.
    pub fn record(
        forward: impl FnOnce(&[&OctValue]) -> Result<OctValue>,
        xs: &[&OctValue],
        needs_grad: &[bool],
    ) -> Result<Recorded> {
        let inputs: Vec<Option<OctValue>> = xs
            .iter()
            .zip(needs_grad)
            .map(|(x, &need)| {
                need.then(|| x.map(|t| Ok(Var::from_tensor(t)?.as_tensor().clone())))
                    .transpose()
            })
            .collect::<Result<_>>()?;
        let args: Vec<&OctValue> = xs
            .iter()
            .zip(&inputs)
            .map(|(x, v)| v.as_ref().unwrap_or(x))
            .collect();
        let output = forward(&args)?;
        let detached = output.map(|t| Ok(t.detach()))?;
        Ok((detached, Box::new(Autograd { inputs, output })))
    }
}

/// `Σ output · grad` over every branch: the scalar whose autograd gradient with respect to the
/// layer's inputs and parameters is the chain rule's product with `grad`.
fn contract(output: &OctValue, grad: &OctValue) -> Result<Option<Tensor>> {
    let pairs: Vec<(&Tensor, &Tensor)> = match (output, grad) {
        (OctValue::Flat(a), OctValue::Flat(b)) => vec![(a, b)],
        _ => {
            let ((oh, ol), (gh, gl)) = (output.branches(), grad.branches());
            [(oh, gh), (ol, gl)]
                .into_iter()
                .filter_map(|(o, g)| Some((o?, g?)))
                .collect()
        }
    };
    let mut sum: Option<Tensor> = None;
    for (o, g) in pairs {
        let term = (o * g)?.sum_all()?;
        sum = Some(match sum {
            Some(s) => (s + term)?,
            None => term,
        });
    }
    Ok(sum)
}

impl Backward for Autograd {
    fn backward(
        self: Box<Self>,
        grad: &OctValue,
        params: &mut ParamGrads,
    ) -> Result<Vec<Option<OctValue>>> {
        let Some(loss) = contract(&self.output, grad)? else {
            return Ok(vec![None; self.inputs.len()]);
        };
        if !loss.track_op() {
            // Neither the inputs nor any parameter reach the output (a constant layer).
            return Ok(vec![None; self.inputs.len()]);
        }
        let store = loss.backward()?;
        let mut skip = Vec::new();
        for v in self.inputs.iter().flatten() {
            let (h, l) = v.branches();
            skip.extend(h.into_iter().chain(l).map(Tensor::id));
            if let OctValue::Flat(t) = v {
                skip.push(t.id());
            }
        }
        params.absorb(&store, &skip)?;
        self.inputs
            .iter()
            .map(|v| {
                v.as_ref()
                    .map(|v| {
                        v.map(|t| match store.get(t) {
                            // A gradient can carry a graph (a product with a parameter): cut it.
                            Some(g) => Ok(g.detach()),
                            None => t.zeros_like(),
                        })
                    })
                    .transpose()
            })
            .collect()
    }
}

/// A layer that passes its input on (a ReLU its batch norm applied): the gradient passes back.
pub struct PassOn;

impl Backward for PassOn {
    fn backward(
        self: Box<Self>,
        grad: &OctValue,
        _params: &mut ParamGrads,
    ) -> Result<Vec<Option<OctValue>>> {
        Ok(vec![Some(grad.clone())])
    }
}

/// An element-wise sum: every input gets the output's gradient.
pub struct Sum {
    /// Whether each input needs a gradient.
    pub needs_grad: Vec<bool>,
}

impl Backward for Sum {
    fn backward(
        self: Box<Self>,
        grad: &OctValue,
        _params: &mut ParamGrads,
    ) -> Result<Vec<Option<OctValue>>> {
        Ok(self
            .needs_grad
            .iter()
            .map(|&n| n.then(|| grad.clone()))
            .collect())
    }
}

/// Adds `grad` to the gradient of a value (`slot`), which holds the sum of the contributions of
/// its readers so far.
pub fn accumulate(slot: &mut Option<OctValue>, grad: OctValue) -> Result<()> {
    *slot = Some(match slot.take() {
        Some(g) => g.add(&grad)?,
        None => grad,
    });
    Ok(())
}

/// Whether training (`octconv train`, `octconv bench --train`) runs the planned step
/// ([`crate::model::OctModel::train_step`]) on `device`: on the CPU with our kernels on, unless
/// `OCTCONV_STEP=autograd` asks for candle's whole-graph autograd (the reference, and the path of
/// every other device).
pub fn planned(device: &Device) -> bool {
    crate::kernels::serves(device) && std::env::var("OCTCONV_STEP").as_deref() != Ok("autograd")
}
