//! The interpreter: builds a candle module from any checked spec's IR and runs it.

use crate::layers::{self, Activation, DropoutRng, OctBatchNorm, OctConv2d, OctLayer, OutputStage};
use crate::value::OctValue;
use candle_core::{ModuleT, Result, Tensor};
use candle_nn::VarBuilder;
use octconv_spec::plan::{InputMaps, OutputMaps};
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
    /// then applies itself in the same pass, forward and backward (that activation passes its input
    /// on).
    bn_act: Vec<Option<Activation>>,
    /// For each layer: in `infer`, the batch norm whose map (with the ReLU after it) this
    /// convolution applies as it reads its input ([`OctModel::prologue_layers`]).
    prologue_of: Vec<Option<usize>>,
    /// For each layer: in `infer`, a batch norm, ReLU or dropout that passes its input on unchanged
    /// because the convolution it feeds applies it ([`OctModel::prologue_of`]).
    deferred: Vec<bool>,
    /// For each layer: in `infer`, the batch norm (and activation) this convolution applies to its
    /// output in place ([`octconv_spec::plan::OutputMaps`]).
    epilogue_of: Vec<Option<(Option<usize>, Option<Activation>)>>,
    /// For each layer: in `infer`, a batch norm or activation that passes its input on because the
    /// convolution before it applied it ([`OctModel::epilogue_of`]).
    applied_before: Vec<bool>,
    /// Whether fused CPU kernels may run (BN + ReLU or ReLU6 here, the octave convolution in its
    /// layers).
    fused: bool,
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
        let InputMaps {
            applies: prologue_of,
            passed_over: deferred,
        } = InputMaps::plan(&ir);
        let outputs = OutputMaps::plan(&ir, &InputMaps::plan(&ir));
        let epilogue_of = outputs
            .applies
            .iter()
            .map(|m| {
                m.map(|m| {
                    let act = m.act.and_then(|a| match ir.layers[a].op {
                        Op::Relu => Some(Activation::Relu),
                        Op::Relu6 => Some(Activation::Relu6),
                        _ => None,
                    });
                    (m.bn, act)
                })
            })
            .collect();
        Ok(OctModel {
            epilogue_of,
            applied_before: outputs.passed_over,
            ir,
            nodes,
            last_use,
            bn_act,
            prologue_of,
            deferred,
            fused: crate::layers::octconv::fused_by_default(),
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

    /// Allows (the default) or forbids the fused CPU octave-convolution kernel in every layer; forbidding
    /// it runs the per-path ops, the reference the fused path is tested against.
    pub fn set_fused(&mut self, fused: bool) {
        self.fused = fused;
        for node in self.nodes.iter_mut().flatten() {
            node.set_fused(fused);
        }
    }

    /// How many octave convolutions have the shape the fused CPU kernel handles (all four paths, 3×3,
    /// stride 1, one group).
    pub fn fusable_layers(&self) -> usize {
        (0..self.nodes.len())
            .filter(|&j| self.concrete::<OctConv2d>(j).is_some_and(|c| c.fusable()))
            .count()
    }

    /// How many convolutions apply the batch norm and ReLU before them as they read their input in
    /// [`OctModel::infer`] (BN → ReLU → [dropout] → octconv chains where each value has one reader).
    pub fn prologue_layers(&self) -> usize {
        self.prologue_of.iter().flatten().count()
    }

    /// How many convolutions apply the batch norm (and ReLU or ReLU6) after them to their output in
    /// place in [`OctModel::infer`].
    pub fn epilogue_layers(&self) -> usize {
        self.epilogue_of.iter().flatten().count()
    }

    /// Layer `j` as its concrete runtime type, if it is one.
    fn concrete<T: 'static>(&self, j: usize) -> Option<&T> {
        self.nodes[j].as_ref()?.as_any().downcast_ref::<T>()
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
        self.run(x, train, false, &mut |_| ())
    }

    /// Inference without an autograd graph: eval-mode batch norm, and each layer's output detached,
    /// so an activation is freed as soon as its last reader has run (with [`ModuleT::forward_t`] the
    /// graph keeps every activation alive until the output is dropped). The values equal
    /// `forward_t(x, false)`; the result has no gradient.
    pub fn infer(&self, x: &Tensor) -> Result<Tensor> {
        self.run(x, false, true, &mut |_| ())?.into_tensor()
    }

    /// [`OctModel::infer`], or with `train` the training-mode forward of [`ModuleT::forward_t`],
    /// calling `at_layer(j)` just before layer `j` runs and `at_layer(n)` after the last of the `n`
    /// layers, so that between two calls exactly one layer ran (`octconv bench` uses it to find the
    /// layer at which memory peaks).
    pub fn run_observed(
        &self,
        x: &Tensor,
        train: bool,
        at_layer: &mut dyn FnMut(usize),
    ) -> Result<Tensor> {
        self.run(x, train, !train, at_layer)?.into_tensor()
    }

    fn run(
        &self,
        x: &Tensor,
        train: bool,
        detach: bool,
        at_layer: &mut dyn FnMut(usize),
    ) -> Result<OctValue> {
        self.check_input(x)?;
        let n = self.nodes.len();
        let mut outs: Vec<Option<OctValue>> = vec![None; n];
        for (j, (node, layer)) in self.nodes.iter().zip(&self.ir.layers).enumerate() {
            at_layer(j);
            let input = |k: usize| -> Result<&OctValue> {
                layer
                    .inputs
                    .get(k)
                    .and_then(|&i| outs[i].as_ref())
                    .ok_or_else(|| {
                        candle_core::Error::Msg(format!(
                            "layer `{}`: input not available",
                            layer.name
                        ))
                    })
            };
            let all = || -> Result<Vec<&OctValue>> { (0..layer.inputs.len()).map(input).collect() };
            let prologue = detach && !train && self.fused;
            let act_after_bn =
                matches!(layer.op, Op::Relu | Op::Relu6) && j > 0 && self.bn_act[j - 1].is_some();
            // `infer`: the batch norm and activation the plan applies to this layer's output.
            let stage = match self.epilogue_of[j] {
                Some((b, act)) if prologue => {
                    let bn = match b {
                        Some(b) => match self.concrete::<OctBatchNorm>(b) {
                            Some(bn) => Some(bn),
                            None => {
                                candle_core::bail!("internal error: epilogue of `{}`", layer.name)
                            }
                        },
                        None => None,
                    };
                    Some(OutputStage { bn, act })
                }
                _ => None,
            };
            let mut staged = false;
            let y = match node {
                None => OctValue::Single(x.clone()),
                // Fused paths: BN + ReLU in one pass, and in `infer` BN + ReLU inside the
                // convolution that reads them.
                Some(_) if prologue && (self.deferred[j] || self.applied_before[j]) => {
                    input(0)?.clone()
                }
                Some(_) if self.fused && act_after_bn => input(0)?.clone(),
                Some(_) if prologue && self.prologue_of[j].is_some() => {
                    let conv = self.concrete::<OctConv2d>(j);
                    let bn = self.prologue_of[j].and_then(|b| self.concrete::<OctBatchNorm>(b));
                    let (Some(conv), Some(bn)) = (conv, bn) else {
                        candle_core::bail!("internal error: prologue of `{}`", layer.name)
                    };
                    conv.infer_after_bn_relu(bn, input(0)?)?
                }
                Some(_) if self.fused && self.bn_act[j].is_some() => {
                    let Some(bn) = self.concrete::<OctBatchNorm>(j) else {
                        candle_core::bail!("internal error: `{}` is not a batch norm", layer.name)
                    };
                    bn.forward_act_t(input(0)?, train, self.bn_act[j])?
                }
                Some(node) if prologue => match &stage {
                    Some(st) => {
                        staged = true;
                        node.infer_then(&all()?, st)?
                    }
                    None => node.infer(&all()?)?,
                },
                Some(node) => node.apply(&all()?, train)?,
            };
            // A convolution with an input map applies its output map after it, in place.
            let y = match stage {
                Some(st) if !staged => st.apply(y.map(|t| Ok(t.detach()))?)?,
                _ => y,
            };
            // `infer`: cut each output loose from the autograd graph. Weights are variables, so every
            // output would otherwise keep its inputs alive through the graph until the last layer,
            // and one inference pass would hold every activation at once.
            let y = if detach {
                y.map(|t| Ok(t.detach()))?
            } else {
                y
            };
            if y.shape() != layer.output {
                candle_core::bail!(
                    "internal error: layer `{}` produced {} but the checker expects {}",
                    layer.name,
                    y.shape(),
                    layer.output
                );
            }
            for &i in &layer.inputs {
                if self.last_use[i] == j {
                    outs[i] = None;
                }
            }
            outs[j] = Some(y);
        }
        at_layer(n);
        outs.pop()
            .flatten()
            .ok_or_else(|| candle_core::Error::Msg("model has no layers".into()))
    }
}

impl ModuleT for OctModel {
    /// Runs the model on `[N, C, H, W]`; returns `[N, F]` (or `[N, C, H, W]` for models without a
    /// head). A wrong input shape is an error, not a panic.
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_value(xs, train)?.into_tensor()
    }
}
