//! The interpreter: builds a candle module from any checked spec's IR and runs it.

use crate::layers::{self, Activation, DropoutRng, OctLayer};
use crate::tape::{accumulate, Autograd, Backward, ParamGrads, PassOn};
use crate::value::OctValue;
use candle_core::{ModuleT, Result, Tensor, Var};
use candle_nn::VarBuilder;
use octconv_spec::ir::Layer;
use octconv_spec::plan::{Program, Step};
use octconv_spec::{Model, Op};

/// A model interpreted from the checker's IR: one node per IR layer, run in order. Parameter names are
/// the IR layer names plus the suffixes of [`octconv_spec::params`].
#[derive(Clone, Debug)]
pub struct OctModel {
    ir: Model,
    /// One runtime layer per IR layer ([`layers::build`]); `None` for the input.
    nodes: Vec<Option<Box<dyn OctLayer>>>,
    /// For each layer, the last layer that reads its output (its output is freed after that).
    last_use: Vec<usize>,
    /// For each layer: a batch norm whose only reader is the ReLU or ReLU6 right after it, which it
    /// then applies itself in the same pass in the autograd forward (that activation passes its
    /// input on).
    bn_act: Vec<Option<Activation>>,
    /// Inference with every fusion ([`Program::lower`]), run by [`crate::exec`].
    program: Program,
    /// Inference op by op ([`Program::per_op`]), with the fused kernels switched off.
    reference: Program,
    /// Whether fused CPU kernels may run (the planned program in `infer`, BN + ReLU in one pass in
    /// the autograd forward, the octave convolution's kernels in its layers).
    fused: bool,
    /// Whether [`OctModel::freeze`] has run: the parameters are a snapshot and training is refused.
    frozen: bool,
    dropout_rng: DropoutRng,
    device: candle_core::Device,
}

impl OctModel {
    /// Builds the model, loading every parameter from `vb` (missing or mis-shaped ones are errors
    /// naming the tensor).
    pub fn new(ir: Model, vb: VarBuilder) -> Result<Self> {
        let dropout_rng = DropoutRng::new(0);
        let device = vb.device().clone();
        let nodes = ir
            .layers
            .iter()
            .map(|layer| layers::build(layer, vb.pp(&layer.name), &dropout_rng))
            .collect::<Result<Vec<_>>>()?;
        let last_use = octconv_spec::plan::last_use(&ir);
        let bn_act: Vec<Option<Activation>> = (0..ir.layers.len())
            .map(|j| {
                if !octconv_spec::plan::bn_then_clamp(&ir, &last_use, j) {
                    return None;
                }
                match ir.layers[j + 1].op {
                    Op::Relu6 => Some(Activation::Relu6),
                    _ => Some(Activation::Relu),
                }
            })
            .collect();
        Ok(OctModel {
            program: Program::lower(&ir),
            reference: Program::per_op(&ir),
            ir,
            nodes,
            last_use,
            bn_act,
            fused: crate::layers::octconv::fused_by_default(),
            frozen: false,
            dropout_rng,
            device,
        })
    }

    /// The device the parameters live on (inputs must be on it too).
    pub fn device(&self) -> &candle_core::Device {
        &self.device
    }

    /// The IR the model was built from.
    pub fn ir(&self) -> &Model {
        &self.ir
    }

    /// The planned inference [`OctModel::infer`] runs (with the fused kernels allowed).
    pub fn program(&self) -> &Program {
        &self.program
    }

    /// Allows (the default) or forbids every fusion: the fused CPU octave-convolution kernels in
    /// every layer, the planned program in [`OctModel::infer`] (forbidden: [`Program::per_op`]) and
    /// BN + ReLU in one pass in the autograd forward. Forbidding runs the per-path, per-op layers,
    /// the reference the fused paths are tested against.
    pub fn set_fused(&mut self, fused: bool) {
        self.fused = fused;
        for node in self.nodes.iter_mut().flatten() {
            node.set_fused(fused);
        }
    }

    /// Freezes the model for inference, as an inference session does: every layer's parameters
    /// become private copies, a snapshot that later writes to the `VarMap` it was built from do
    /// not reach, and the octave convolutions' CPU kernels then prepare their weights (Winograd
    /// transforms, packing) once per input size and keep them instead of on every pass
    /// ([`crate::layers::OctLayer::freeze`]). The values are the same, bit for bit. A frozen model
    /// refuses training ([`OctModel::train_step`], the training-mode forward): build the model
    /// again from its `VarMap` to train it, or to see changed weights. The parameters' copies cost
    /// their size once more while the variables live, and the prepared weights
    /// [`OctModel::prepared_bytes`]. Freezing twice is a no-op.
    pub fn freeze(&mut self) -> Result<()> {
        if self.frozen {
            return Ok(());
        }
        // Refused from the first layer on, so that a layer failing to freeze leaves no model that
        // trains some snapshots.
        self.frozen = true;
        for node in self.nodes.iter_mut().flatten() {
            node.freeze()?;
        }
        Ok(())
    }

    /// Whether [`OctModel::freeze`] has run.
    pub fn is_frozen(&self) -> bool {
        self.frozen
    }

    /// Bytes of weights the frozen model's kernels keep prepared (they are made by the first pass
    /// at each input size; 0 before, and for a model that is not frozen).
    pub fn prepared_bytes(&self) -> usize {
        self.nodes
            .iter()
            .flatten()
            .map(|n| n.prepared_bytes())
            .sum()
    }

    /// An error for training a frozen model.
    fn refuse_frozen(&self) -> Result<()> {
        if self.frozen {
            candle_core::bail!(
                "model `{}` is frozen for inference (OctModel::freeze: its parameters are a snapshot), so it cannot be trained; build it again from its VarMap to train it",
                self.ir.name
            )
        }
        Ok(())
    }

    /// How many octave convolutions have the shape the fused CPU kernel handles (all four paths, 3×3,
    /// stride 1, one group).
    pub fn fusable_layers(&self) -> usize {
        self.nodes
            .iter()
            .flatten()
            .filter(|n| n.as_octconv().is_some_and(|c| c.fusable()))
            .count()
    }

    /// How many convolutions apply the batch norm and ReLU before them as they read their input in
    /// [`OctModel::infer`] (BN → ReLU → [dropout] → octconv chains where each value has one reader).
    pub fn prologue_layers(&self) -> usize {
        self.program
            .count(|s| matches!(s, Step::AfterBnRelu { .. }))
    }

    /// How many convolutions apply the batch norm (and ReLU or ReLU6) after them to their output in
    /// place in [`OctModel::infer`].
    pub fn epilogue_layers(&self) -> usize {
        self.program.count(|s| {
            matches!(
                s,
                Step::Run { map: Some(_) }
                    | Step::OnPooled { map: Some(_) }
                    | Step::ExpandDepthwise { .. }
                    | Step::AfterBnRelu { map: Some(_), .. }
            )
        })
    }

    /// Reseeds the dropout masks (every dropout layer shares one stream).
    pub fn set_dropout_seed(&self, seed: u64) {
        self.dropout_rng.reseed(seed);
    }

    /// Checks that `x` is `[N, C, H, W]` with the spec's `[C, H, W]`.
    pub fn check_input(&self, x: &Tensor) -> Result<()> {
        let d = self.ir.input;
        let dims = x.dims();
        if dims.len() != 4 || dims[1..] != [d.c, d.h, d.w] {
            candle_core::bail!(
                "input of shape {:?} does not match model `{}`: expected [N, {}, {}, {}]",
                dims,
                self.ir.name,
                d.c,
                d.h,
                d.w
            );
        }
        Ok(())
    }

    /// Runs the model and returns the final value (a tensor or a flat batch).
    pub fn forward_value(&self, x: &Tensor, train: bool) -> Result<OctValue> {
        self.forward(x, train, &mut |_| ())
    }

    /// Inference without an autograd graph: the planned program ([`crate::exec`]), eval-mode batch
    /// norm, and each layer's output detached, so an activation is freed as soon as its last reader
    /// has run (with [`ModuleT::forward_t`] the graph keeps every activation alive until the output
    /// is dropped). The values equal `forward_t(x, false)` to rounding; the result has no gradient.
    pub fn infer(&self, x: &Tensor) -> Result<Tensor> {
        self.run_observed(x, false, &mut |_| ())
    }

    /// [`OctModel::infer`], or with `train` the training-mode forward of [`ModuleT::forward_t`],
    /// calling `at_layer(j)` just before layer `j` runs and `at_layer(n)` after the last of the `n`
    /// layers, so that between two calls exactly one layer ran (`octconv bench` uses it to find the
    /// layer at which memory peaks).
    pub fn run_observed(
        &self,
        x: &Tensor,
        train: bool,
        at_layer: &mut (dyn FnMut(usize) + Send),
    ) -> Result<Tensor> {
        if train {
            return self.forward(x, true, at_layer)?.into_tensor();
        }
        self.check_input(x)?;
        let layers: Vec<Option<&dyn OctLayer>> = self.nodes.iter().map(|n| n.as_deref()).collect();
        let program = if self.fused {
            &self.program
        } else {
            &self.reference
        };
        crate::exec::run(program, &layers, x, at_layer)?.into_tensor()
    }

    /// The autograd forward, layer by layer (BN + ReLU in one pass where the fused kernels are
    /// allowed).
    fn forward(
        &self,
        x: &Tensor,
        train: bool,
        at_layer: &mut dyn FnMut(usize),
    ) -> Result<OctValue> {
        if train {
            self.refuse_frozen()?;
        }
        self.check_input(x)?;
        let n = self.nodes.len();
        let mut outs: Vec<Option<OctValue>> = vec![None; n];
        for (j, (node, layer)) in self.nodes.iter().zip(&self.ir.layers).enumerate() {
            at_layer(j);
            let xs = gather(&outs, layer)?;
            let act_after_bn =
                matches!(layer.op, Op::Relu | Op::Relu6) && j > 0 && self.bn_act[j - 1].is_some();
            let y = match node {
                None => OctValue::Single(x.clone()),
                // BN + ReLU in one pass: the batch norm applies it, the ReLU passes its input on.
                Some(_) if self.fused && act_after_bn => first(&xs, layer)?.clone(),
                Some(node) if self.fused && self.bn_act[j].is_some() => {
                    match node.as_batch_norm() {
                        Some(bn) => bn.forward_act_t(first(&xs, layer)?, train, self.bn_act[j])?,
                        None => candle_core::bail!(
                            "internal error: `{}` is not a batch norm",
                            layer.name
                        ),
                    }
                }
                Some(node) => node.apply(&xs, train)?,
            };
            check_output(layer, &y)?;
            drop(xs);
            self.release(&mut outs, j);
            outs[j] = Some(y);
        }
        at_layer(n);
        outs.pop()
            .flatten()
            .ok_or_else(|| candle_core::Error::Msg("model has no layers".into()))
    }
}

impl OctModel {
    /// Frees the values whose last reader is layer `j` (it has just run).
    fn release(&self, outs: &mut [Option<OctValue>], j: usize) {
        for &i in &self.ir.layers[j].inputs {
            if self.last_use[i] == j {
                outs[i] = None;
            }
        }
    }
}

/// The values `layer` reads, in its input order (an error names the layer if one is missing).
fn gather<'a>(outs: &'a [Option<OctValue>], layer: &Layer) -> Result<Vec<&'a OctValue>> {
    layer
        .inputs
        .iter()
        .map(|&i| {
            outs.get(i).and_then(Option::as_ref).ok_or_else(|| {
                candle_core::Error::Msg(format!("layer `{}`: input not available", layer.name))
            })
        })
        .collect()
}

/// The first of `layer`'s inputs `xs`.
fn first<'a>(xs: &[&'a OctValue], layer: &Layer) -> Result<&'a OctValue> {
    xs.first()
        .copied()
        .ok_or_else(|| candle_core::Error::Msg(format!("layer `{}`: no input", layer.name)))
}

/// An error unless `y` has the shape the checker gave `layer`'s output.
fn check_output(layer: &Layer, y: &OctValue) -> Result<()> {
    if y.shape() != layer.output {
        candle_core::bail!(
            "internal error: layer `{}` produced {} but the checker expects {}",
            layer.name,
            y.shape(),
            layer.output
        );
    }
    Ok(())
}

/// Where [`OctModel::train_step_observed`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepPoint {
    /// Before layer `j`'s forward.
    Forward(usize),
    /// Before the loss and its gradient (after the last layer's forward).
    Loss,
    /// Before layer `j`'s backward.
    Backward(usize),
    /// After the last backward.
    Done,
}

/// What [`OctModel::train_step`] computed: the loss, the model's output (without a graph) and the
/// gradients of the parameters.
pub struct TrainStep {
    /// The scalar loss.
    pub loss: Tensor,
    /// The model's output (logits or map), detached.
    pub output: Tensor,
    /// The gradient of the loss with respect to every parameter that reaches it.
    pub grads: ParamGrads,
    /// The layers (IR names, in order) that had no backward of their own for these inputs and ran
    /// under candle's autograd alone.
    pub fallbacks: Vec<String>,
}

impl OctModel {
    /// One training step's forward (training mode: batch statistics, running averages updated,
    /// dropout) and backward on the planned path of [`crate::tape`]: each layer records its own
    /// backward, a value's gradient is written by the layers that read it, and the activations are
    /// held only as long as a backward needs them. `loss` maps the output to the scalar loss (it runs
    /// under candle's autograd). The gradients agree with `loss(forward_t(x, true)).backward()` to
    /// rounding.
    pub fn train_step(
        &self,
        x: &Tensor,
        loss: &(dyn Fn(&Tensor) -> Result<Tensor> + Sync),
    ) -> Result<TrainStep> {
        self.train_step_observed(x, loss, &mut |_| ())
    }

    /// [`OctModel::train_step`], calling `at(point)` just before each layer's forward, before the
    /// loss, before each layer's backward and once at the end, so that between two calls exactly one
    /// of them ran (`octconv bench --train` finds where the step's memory peaks with it). On the CPU
    /// the step runs on one of rayon's worker threads, as inference does ([`crate::exec::run`]).
    pub fn train_step_observed(
        &self,
        x: &Tensor,
        loss: &(dyn Fn(&Tensor) -> Result<Tensor> + Sync),
        at: &mut (dyn FnMut(StepPoint) + Send),
    ) -> Result<TrainStep> {
        crate::threads::on_pool_for(x.device(), || self.train_step_here(x, loss, at))
    }

    /// [`OctModel::train_step_observed`] on the calling thread.
    fn train_step_here(
        &self,
        x: &Tensor,
        loss: &(dyn Fn(&Tensor) -> Result<Tensor> + Sync),
        at: &mut (dyn FnMut(StepPoint) + Send),
    ) -> Result<TrainStep> {
        self.refuse_frozen()?;
        self.check_input(x)?;
        let n = self.nodes.len();
        let mut outs: Vec<Option<OctValue>> = vec![None; n];
        let mut tape: Vec<Option<Box<dyn Backward>>> = (0..n).map(|_| None).collect();
        let mut fallbacks = Vec::new();
        for (j, (node, layer)) in self.nodes.iter().zip(&self.ir.layers).enumerate() {
            at(StepPoint::Forward(j));
            let xs = gather(&outs, layer)?;
            // The model input needs no gradient.
            let needs: Vec<bool> = layer
                .inputs
                .iter()
                .map(|&i| !matches!(self.ir.layers[i].op, Op::Input))
                .collect();
            let act_after_bn =
                matches!(layer.op, Op::Relu | Op::Relu6) && j > 0 && self.bn_act[j - 1].is_some();
            let (y, backward): (OctValue, Option<Box<dyn Backward>>) = match node {
                None => (OctValue::Single(x.clone()), None),
                Some(_) if self.fused && act_after_bn => {
                    (first(&xs, layer)?.clone(), Some(Box::new(PassOn)))
                }
                Some(node) => {
                    let bn_act = match (node.as_batch_norm(), self.bn_act[j]) {
                        (Some(bn), Some(act)) if self.fused => Some((bn, act)),
                        _ => None,
                    };
                    let recorded = match bn_act {
                        Some((bn, act)) => bn.train_record_act(first(&xs, layer)?, Some(act))?,
                        // Without fused kernels (`OCTCONV_FUSED=0`) the layers record their
                        // unfused forms: the batch norm and its activation apart, the octave
                        // convolution per path.
                        None => node.train_record(&xs, &needs)?,
                    };
                    if recorded.is_none() {
                        fallbacks.push(layer.name.clone());
                    }
                    let (y, b) = match (recorded, bn_act) {
                        (Some(r), _) => r,
                        (None, Some((bn, act))) => Autograd::record(
                            |xs| bn.forward_act_t(first(xs, layer)?, true, Some(act)),
                            &xs,
                            &needs,
                        )?,
                        (None, None) => Autograd::record(|xs| node.apply(xs, true), &xs, &needs)?,
                    };
                    (y, Some(b))
                }
            };
            check_output(layer, &y)?;
            drop(xs);
            self.release(&mut outs, j);
            outs[j] = Some(y);
            tape[j] = backward;
        }
        let last = outs
            .pop()
            .flatten()
            .ok_or_else(|| candle_core::Error::Msg("model has no layers".into()))?;
        at(StepPoint::Loss);
        // The loss under candle's autograd, from the output made a variable.
        let out_var = last.map(|t| Ok(Var::from_tensor(t)?.as_tensor().clone()))?;
        let output = last.into_tensor()?;
        let loss_value = loss(&out_var.clone().into_tensor()?)?;
        let store = loss_value.backward()?;
        let mut grads: Vec<Option<OctValue>> = vec![None; n];
        grads[n - 1] = Some(out_var.map(|t| match store.get(t) {
            Some(g) => Ok(g.detach()),
            None => t.zeros_like(),
        })?);
        let mut params = ParamGrads::default();
        for j in (0..n).rev() {
            let Some(backward) = tape[j].take() else {
                continue;
            };
            let Some(grad) = grads[j].take() else {
                continue;
            };
            at(StepPoint::Backward(j));
            let input_grads = backward.backward(&grad, &mut params)?;
            drop(grad);
            for (&i, g) in self.ir.layers[j].inputs.iter().zip(input_grads) {
                if let Some(g) = g {
                    accumulate(&mut grads[i], g)?;
                }
            }
        }
        at(StepPoint::Done);
        Ok(TrainStep {
            loss: loss_value.detach(),
            output,
            grads: params,
            fallbacks,
        })
    }
}

impl ModuleT for OctModel {
    /// Runs the model on `[N, C, H, W]`; returns `[N, F]` (or `[N, C, H, W]` for models without a
    /// head). A wrong input shape is an error, not a panic.
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_value(xs, train)?.into_tensor()
    }
}
