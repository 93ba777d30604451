//! [`OctLayer`], the one interface every runtime layer implements, and [`build_op`], the one place that
//! turns an IR op into its runtime layer. The interpreter ([`crate::model::OctModel`], through
//! [`build`]) and the code that `octnet!` and `octconv gen` generate (through [`build_json`]) build
//! their layers with it and run them through [`OctLayer::apply`].

use super::adjoint;
use super::{
    Activation, Conv2d, Dropout, DropoutRng, Linear, OctBatchNorm, OctConv2d, OctConvTranspose2d,
    OutputStage, Pool, PoolKind,
};
use crate::kernels::epilogue::Clamp;
use crate::tape::Recorded;
use crate::value::OctValue;
use candle_core::Result;
use candle_nn::VarBuilder;
use octconv_spec::ir::{Layer, Op};
use octconv_spec::shape::Shape;
use std::fmt::Debug;

/// A layer of an octave network: computes its output from its inputs (in the IR's order: one for most
/// layers, several for `add` and `concat`, the map and then its gates for `scale`).
pub trait OctLayer: LayerClone + Debug + Send + Sync {
    /// The output for `xs`, in train (`true`) or eval mode.
    fn apply(&self, xs: &[&OctValue], train: bool) -> Result<OctValue>;

    /// Inference of [`OctLayer::apply`] in eval mode, where the result needs no gradient: layers with
    /// faster inference-only kernels (the 1×1 octave convolution) use them. The values agree with
    /// `apply(xs, false)` to rounding.
    fn infer(&self, xs: &[&OctValue]) -> Result<OctValue> {
        self.apply(xs, false)
    }

    /// [`OctLayer::infer`] followed by `stage` (the batch norm and activation the plan puts after
    /// this layer) on its fresh output: convolutions with kernels that map each output row while it
    /// is in cache do so; any other layer maps its output in one pass afterwards.
    fn infer_then(&self, xs: &[&OctValue], stage: &OutputStage<'_>) -> Result<OctValue> {
        stage.apply(self.infer(xs)?)
    }

    /// The training-mode forward of the planned training step ([`crate::tape`]): the output without
    /// an autograd graph and the layer's own backward. `needs_grad[k]` says whether input `k` needs a
    /// gradient. `Ok(None)` (the default) where the layer has no such path for these inputs: the
    /// step then runs [`OctLayer::apply`] under candle's autograd for this layer alone.
    fn train_record(&self, _xs: &[&OctValue], _needs_grad: &[bool]) -> Result<Option<Recorded>> {
        Ok(None)
    }

    /// Allows or forbids fused CPU kernels where the layer has them (octave convolutions); a no-op
    /// elsewhere.
    fn set_fused(&mut self, _fused: bool) {}

    /// Freezes the layer for inference: its parameters become private copies (a snapshot that
    /// later writes to the variables it was loaded from do not reach), and an octave convolution
    /// then keeps the weights its CPU kernels prepare instead of preparing them on every pass
    /// ([`OctConv2d::freeze`]). A no-op for layers without parameters. A frozen model must not be
    /// trained ([`crate::model::OctModel::train_step`] refuses).
    fn freeze(&mut self) -> Result<()> {
        Ok(())
    }

    /// Bytes of weights the layer keeps prepared for its kernels once frozen (0 elsewhere).
    fn prepared_bytes(&self) -> usize {
        0
    }

    /// The layer as a batch norm, if it is one: the executor's fused steps apply it inside the
    /// layer next to it ([`crate::exec`]).
    fn as_batch_norm(&self) -> Option<&OctBatchNorm> {
        None
    }

    /// The layer as an octave convolution, if it is one (it can apply the batch norm and ReLU
    /// before it as its kernel reads its input).
    fn as_octconv(&self) -> Option<&OctConv2d> {
        None
    }

    /// The layer as an activation, if it is one (a batch norm or convolution before it can apply
    /// it in the same pass).
    fn as_activation(&self) -> Option<Activation> {
        None
    }

    /// The layer as a pooling layer, if it is one (a one-branch convolution before a max pool
    /// pools its output as part of its output stage: `plan::OutputMap::pool`).
    fn as_pool(&self) -> Option<Pool> {
        None
    }
}

/// Cloning boxed layers (an [`crate::model::OctModel`] is `Clone`).
pub trait LayerClone {
    /// A boxed copy.
    fn clone_box(&self) -> Box<dyn OctLayer>;
}

impl<T: OctLayer + Clone + 'static> LayerClone for T {
    fn clone_box(&self) -> Box<dyn OctLayer> {
        Box::new(self.clone())
    }
}

impl Clone for Box<dyn OctLayer> {
    fn clone(&self) -> Self {
        self.clone_box()
    }
}

/// The first input, or an error naming the layer kind.
fn one<'a>(xs: &[&'a OctValue], what: &str) -> Result<&'a OctValue> {
    xs.first()
        .copied()
        .ok_or_else(|| candle_core::Error::Msg(format!("{what}: no input")))
}

/// Implements [`OctLayer`] for a type from an expression over `self`, the inputs `xs` and `train`;
/// with `record: |self, xs, needs_grad| …`, also its [`OctLayer::train_record`].
macro_rules! oct_layer {
    ($ty:ty, |$s:ident, $xs:ident, $train:ident| $body:expr) => {
        impl OctLayer for $ty {
            fn apply(&self, $xs: &[&OctValue], $train: bool) -> Result<OctValue> {
                let $s = self;
                let _ = $train;
                $body
            }
        }
    };
    ($ty:ty, |$s:ident, $xs:ident, $train:ident| $body:expr,
     record: |$rs:ident, $rxs:ident, $needs:ident| $rec:expr) => {
        impl OctLayer for $ty {
            fn apply(&self, $xs: &[&OctValue], $train: bool) -> Result<OctValue> {
                let $s = self;
                let _ = $train;
                $body
            }
            fn train_record(
                &self,
                $rxs: &[&OctValue],
                $needs: &[bool],
            ) -> Result<Option<Recorded>> {
                let $rs = self;
                $rec
            }
        }
    };
}

/// Whether the first input needs a gradient.
fn first_needs(needs_grad: &[bool]) -> bool {
    needs_grad.first() == Some(&true)
}

impl OctLayer for Conv2d {
    fn apply(&self, xs: &[&OctValue], _train: bool) -> Result<OctValue> {
        self.forward(one(xs, "conv")?)
    }
    fn train_record(&self, xs: &[&OctValue], needs_grad: &[bool]) -> Result<Option<Recorded>> {
        Conv2d::train_record(self, one(xs, "conv")?, needs_grad.first() == Some(&true))
    }
    fn infer_then(&self, xs: &[&OctValue], stage: &OutputStage<'_>) -> Result<OctValue> {
        Conv2d::infer_then(self, one(xs, "conv")?, stage)
    }
    fn freeze(&mut self) -> Result<()> {
        Conv2d::freeze(self)
    }
}
impl OctLayer for OctConv2d {
    fn apply(&self, xs: &[&OctValue], train: bool) -> Result<OctValue> {
        if train {
            self.refuse_frozen()?;
        }
        self.forward(one(xs, "octconv")?)
    }
    fn train_record(&self, xs: &[&OctValue], needs_grad: &[bool]) -> Result<Option<Recorded>> {
        self.refuse_frozen()?;
        self.record(one(xs, "octconv")?, needs_grad.first() == Some(&true))
    }
    fn infer(&self, xs: &[&OctValue]) -> Result<OctValue> {
        OctConv2d::infer(self, one(xs, "octconv")?)
    }
    fn infer_then(&self, xs: &[&OctValue], stage: &OutputStage<'_>) -> Result<OctValue> {
        OctConv2d::infer_then(self, one(xs, "octconv")?, stage)
    }
    fn set_fused(&mut self, fused: bool) {
        OctConv2d::set_fused(self, fused);
    }
    fn as_octconv(&self) -> Option<&OctConv2d> {
        Some(self)
    }
    fn freeze(&mut self) -> Result<()> {
        OctConv2d::freeze(self)
    }
    fn prepared_bytes(&self) -> usize {
        OctConv2d::prepared_bytes(self)
    }
}
impl OctLayer for OctConvTranspose2d {
    fn apply(&self, xs: &[&OctValue], _train: bool) -> Result<OctValue> {
        self.forward(one(xs, "octconv_transpose")?)
    }
    fn infer(&self, xs: &[&OctValue]) -> Result<OctValue> {
        OctConvTranspose2d::infer(self, one(xs, "octconv_transpose")?)
    }
    fn freeze(&mut self) -> Result<()> {
        OctConvTranspose2d::freeze(self)
    }
}
impl OctLayer for OctBatchNorm {
    fn apply(&self, xs: &[&OctValue], train: bool) -> Result<OctValue> {
        self.forward_t(one(xs, "bn")?, train)
    }
    fn train_record(&self, xs: &[&OctValue], _needs_grad: &[bool]) -> Result<Option<Recorded>> {
        self.train_record_act(one(xs, "bn")?, None)
    }
    fn as_batch_norm(&self) -> Option<&OctBatchNorm> {
        Some(self)
    }
    fn freeze(&mut self) -> Result<()> {
        OctBatchNorm::freeze(self)
    }
}
impl OctLayer for Dropout {
    fn apply(&self, xs: &[&OctValue], train: bool) -> Result<OctValue> {
        self.forward_t(one(xs, "dropout")?, train)
    }
    fn train_record(&self, xs: &[&OctValue], _needs_grad: &[bool]) -> Result<Option<Recorded>> {
        Dropout::train_record(self, one(xs, "dropout")?).map(Some)
    }
}
impl OctLayer for Pool {
    fn apply(&self, xs: &[&OctValue], _train: bool) -> Result<OctValue> {
        self.forward(one(xs, "pool")?)
    }
    fn train_record(&self, xs: &[&OctValue], needs_grad: &[bool]) -> Result<Option<Recorded>> {
        adjoint::pool(self, one(xs, "pool")?, first_needs(needs_grad))
    }
    fn as_pool(&self) -> Option<Pool> {
        Some(*self)
    }
}
impl OctLayer for Linear {
    fn apply(&self, xs: &[&OctValue], _train: bool) -> Result<OctValue> {
        self.forward(one(xs, "linear")?)
    }
    fn infer(&self, xs: &[&OctValue]) -> Result<OctValue> {
        Linear::infer(self, one(xs, "linear")?)
    }
    fn train_record(&self, xs: &[&OctValue], needs_grad: &[bool]) -> Result<Option<Recorded>> {
        Linear::train_record(self, one(xs, "linear")?, first_needs(needs_grad))
    }
    fn freeze(&mut self) -> Result<()> {
        Linear::freeze(self)
    }
}
impl OctLayer for Activation {
    fn apply(&self, xs: &[&OctValue], _train: bool) -> Result<OctValue> {
        self.forward(one(xs, "activation")?)
    }
    fn as_activation(&self) -> Option<Activation> {
        Some(*self)
    }
    fn train_record(&self, xs: &[&OctValue], needs_grad: &[bool]) -> Result<Option<Recorded>> {
        adjoint::activation(*self, one(xs, "activation")?, first_needs(needs_grad))
    }
}

/// `split(alpha)`: moves the last `low` channels, pooled, to the low branch.
#[derive(Clone, Copy, Debug)]
pub struct Split {
    /// Channels moved to the low branch.
    pub low: usize,
}
oct_layer!(Split, |s, xs, train| super::split(one(xs, "split")?, s.low),
    record: |s, xs, n| adjoint::split(one(xs, "split")?, s.low, first_needs(n)));

/// `merge()` (to the high resolution) or `merge(to = low)`.
#[derive(Clone, Copy, Debug)]
pub struct Merge {
    /// Merge at the low resolution.
    pub to_low: bool,
}
oct_layer!(Merge, |s, xs, train| if s.to_low {
    super::merge_low(one(xs, "merge")?)
} else {
    super::merge(one(xs, "merge")?)
}, record: |s, xs, n| adjoint::merge(one(xs, "merge")?, s.to_low, first_needs(n)));

/// `pyramid()`: every channel in both branches, the low one pooled.
#[derive(Clone, Copy, Debug)]
pub struct Pyramid;
oct_layer!(Pyramid, |_s, xs, train| super::pyramid(one(xs, "pyramid")?),
    record: |_s, xs, n| adjoint::pyramid(one(xs, "pyramid")?, first_needs(n)));

/// `upsample(scale)`, nearest-neighbour, every branch.
#[derive(Clone, Copy, Debug)]
pub struct Upsample {
    /// Factor per side.
    pub scale: usize,
}
oct_layer!(Upsample, |s, xs, train| super::upsample(
    one(xs, "upsample")?,
    s.scale
), record: |s, xs, n| adjoint::upsample(one(xs, "upsample")?, s.scale, first_needs(n)));

/// `global_avg_pool(per_branch)`.
#[derive(Clone, Copy, Debug)]
pub struct GlobalAvgPool {
    /// Pool each branch of a pair and concatenate.
    pub per_branch: bool,
}
oct_layer!(GlobalAvgPool, |s, xs, train| super::global_avg_pool(
    one(xs, "global_avg_pool")?,
    s.per_branch
), record: |s, xs, n| adjoint::global_avg_pool(
    one(xs, "global_avg_pool")?,
    s.per_branch,
    first_needs(n)
));

/// `flatten()`.
#[derive(Clone, Copy, Debug)]
pub struct Flatten;
oct_layer!(Flatten, |_s, xs, train| super::flatten(one(xs, "flatten")?),
    record: |_s, xs, n| adjoint::flatten(one(xs, "flatten")?, first_needs(n)));

/// `add(…)` and residual sums.
#[derive(Clone, Copy, Debug)]
pub struct Add;
impl OctLayer for Add {
    fn apply(&self, xs: &[&OctValue], _train: bool) -> Result<OctValue> {
        super::add(xs)
    }
    /// The sum in one threaded pass; the backward hands the output's gradient to every input.
    fn train_record(&self, xs: &[&OctValue], needs_grad: &[bool]) -> Result<Option<Recorded>> {
        let y = OctLayer::infer(self, xs)?;
        let back = crate::tape::Sum {
            needs_grad: needs_grad.to_vec(),
        };
        Ok(Some((y, Box::new(back))))
    }
    fn infer(&self, xs: &[&OctValue]) -> Result<OctValue> {
        match super::graph::add_infer(xs, Clamp::Identity)? {
            Some(y) => Ok(y),
            None => super::add(xs),
        }
    }
    /// The activation after a residual join in the same threaded pass as the sum.
    fn infer_then(&self, xs: &[&OctValue], stage: &OutputStage<'_>) -> Result<OctValue> {
        let clamp = match (stage.bn, stage.act.map(Activation::clamp)) {
            (None, Some(Some(c))) => Some(c),
            (None, None) => Some(Clamp::Identity),
            _ => None,
        };
        match clamp.map(|c| super::graph::add_infer(xs, c)).transpose()? {
            Some(Some(y)) => Ok(y),
            _ => stage.apply(super::add(xs)?),
        }
    }
}

/// `concat(…)`.
#[derive(Clone, Copy, Debug)]
pub struct Concat;
impl OctLayer for Concat {
    fn apply(&self, xs: &[&OctValue], _train: bool) -> Result<OctValue> {
        super::concat(xs)
    }
    fn train_record(&self, xs: &[&OctValue], needs_grad: &[bool]) -> Result<Option<Recorded>> {
        adjoint::concat(xs, needs_grad)
    }
    fn infer(&self, xs: &[&OctValue]) -> Result<OctValue> {
        super::graph::concat_infer(xs)
    }
}

/// `scale(x)`: the first input scaled per channel by the second.
#[derive(Clone, Copy, Debug)]
pub struct Scale;
impl OctLayer for Scale {
    fn apply(&self, xs: &[&OctValue], _train: bool) -> Result<OctValue> {
        match xs {
            [x, gates] => super::scale(x, gates),
            _ => candle_core::bail!(
                "scale takes a value and its gates, found {} inputs",
                xs.len()
            ),
        }
    }
    fn train_record(&self, xs: &[&OctValue], needs_grad: &[bool]) -> Result<Option<Recorded>> {
        match xs {
            [x, gates] => adjoint::scale(x, gates, needs_grad),
            _ => Ok(None),
        }
    }
    fn infer(&self, xs: &[&OctValue]) -> Result<OctValue> {
        match xs {
            [x, gates] => match super::graph::scale_infer(x, gates)? {
                Some(y) => Ok(y),
                None => super::scale(x, gates),
            },
            _ => self.apply(xs, false),
        }
    }
}

/// The runtime layer of IR layer `layer`, loading its parameters from `vb` (already prefixed with
/// the layer's name); dropout layers draw from `rng`. `None` for the model input.
pub fn build(layer: &Layer, vb: VarBuilder, rng: &DropoutRng) -> Result<Option<Box<dyn OctLayer>>> {
    build_op(&layer.op, &layer.input, vb, rng)
}

/// The runtime layer of an op given as [`Op::to_json`] wrote it, on an input of shape `input`: how
/// the code that `octnet!` and `octconv gen` generate builds each layer, through the same
/// [`build_op`] as the interpreter.
pub fn build_json(
    op: &str,
    input: &Shape,
    vb: VarBuilder,
    rng: &DropoutRng,
) -> Result<Box<dyn OctLayer>> {
    let op = Op::from_json(op).map_err(candle_core::Error::Msg)?;
    build_op(&op, input, vb, rng)?
        .ok_or_else(|| candle_core::Error::Msg("the model input is not a layer".into()))
}

/// The one IR-to-runtime dispatch: the runtime layer of `op` on an input of shape `input`, loading
/// its parameters from `vb`; dropout layers draw from `rng`. `None` for the model input.
pub fn build_op(
    op: &Op,
    input: &Shape,
    vb: VarBuilder,
    rng: &DropoutRng,
) -> Result<Option<Box<dyn OctLayer>>> {
    let boxed: Box<dyn OctLayer> = match *op {
        Op::Input => return Ok(None),
        Op::Conv(spec) => Box::new(Conv2d::new(spec, vb)?),
        Op::OctConv(spec) => Box::new(OctConv2d::new(spec, vb)?),
        Op::OctConvTranspose(spec) => Box::new(OctConvTranspose2d::new(spec, vb)?),
        Op::BatchNorm { eps, momentum } => Box::new(OctBatchNorm::new(input, eps, momentum, vb)?),
        Op::Relu => Box::new(Activation::Relu),
        Op::Sigmoid => Box::new(Activation::Sigmoid),
        Op::Relu6 => Box::new(Activation::Relu6),
        Op::HardSwish => Box::new(Activation::HardSwish),
        Op::Silu => Box::new(Activation::Silu),
        Op::Dropout { p } => Box::new(Dropout::new(p, rng.clone())),
        Op::AvgPool(spec) => Box::new(Pool {
            kind: PoolKind::Avg,
            spec,
        }),
        Op::MaxPool(spec) => Box::new(Pool {
            kind: PoolKind::Max,
            spec,
        }),
        Op::Split { low } => Box::new(Split { low }),
        Op::Merge => Box::new(Merge { to_low: false }),
        Op::MergeLow => Box::new(Merge { to_low: true }),
        Op::Pyramid => Box::new(Pyramid),
        Op::Upsample { scale } => Box::new(Upsample { scale }),
        Op::GlobalAvgPool { per_branch } => Box::new(GlobalAvgPool { per_branch }),
        Op::Flatten => Box::new(Flatten),
        Op::Linear { in_f, out_f, bias } => Box::new(Linear::new(in_f, out_f, bias, vb)?),
        Op::Add => Box::new(Add),
        Op::Concat => Box::new(Concat),
        Op::Scale => Box::new(Scale),
    };
    Ok(Some(boxed))
}
