//! [`OutputStage`]: what inference applies to a layer's fresh output in place — the batch norm and
//! activation that follow a convolution or an add ([`octconv_spec::plan::OutputMaps`]). Layers whose
//! kernels can map each output row while it is in cache take it through
//! [`crate::layers::OctLayer::infer_then`]; any other layer's output is mapped in one pass after it.

use crate::kernels::epilogue::{ChannelEpilogue, Clamp};
use crate::layers::{Activation, OctBatchNorm, OctLayer, Pool};
use crate::value::OctValue;
use candle_core::Result;

/// The batch norm and/or activation applied to a layer's output in inference.
#[derive(Clone, Copy, Debug)]
pub struct OutputStage<'a> {
    /// The batch norm, if any.
    pub bn: Option<&'a OctBatchNorm>,
    /// The activation after it, if any (the plan admits ReLU and ReLU6).
    pub act: Option<Activation>,
    /// A max pool after them, if any (after a one-branch convolution: the ImageNet stems). Kernels
    /// that pool each image in cache take it; otherwise [`OutputStage::apply`] pools the output.
    pub pool: Option<Pool>,
    /// Whether the mapped output is then 2×2-average-pooled for its reader, a stride-2 octave
    /// convolution that pools first ([`octconv_spec::plan::OutputMap::pool_for`]). Kernels that
    /// pool each band of rows in cache take it; otherwise [`OutputStage::apply`] pools the output.
    pub halve: bool,
    /// A residual added after the batch norm and before the activation: the residual join a
    /// convolution's stage takes ([`octconv_spec::plan::OutputMap::add`]). Kernels that map rows of
    /// their output buffer join each row in cache ([`crate::kernels::epilogue::ResidualJoin`]);
    /// otherwise [`OutputStage::apply`] sums after the batch norm. Never with a pool.
    pub add: Option<&'a OctValue>,
    /// Where the global average pooling of the mapped output goes, if the stage computes it
    /// ([`octconv_spec::plan::OutputMap::mean`]): kernels that map rows of their output buffer sum
    /// each row in cache ([`crate::kernels::epilogue::PlaneSums`]); otherwise
    /// [`OutputStage::apply`] pools the mapped output. Never with a pool or a residual.
    pub means: Option<&'a MeansOut>,
}

/// The per-channel means a stage computed ([`OutputStage::means`]): a flat `[N, C]` value (on an
/// octave pair the high branch's channels, then the low one's), taken by the executor.
#[derive(Debug, Default)]
pub struct MeansOut(std::cell::RefCell<Option<OctValue>>);

impl MeansOut {
    /// Leaves `means` here.
    pub fn set(&self, means: OctValue) {
        *self.0.borrow_mut() = Some(means);
    }

    /// The means, if the stage has run.
    pub fn take(&self) -> Option<OctValue> {
        self.0.borrow_mut().take()
    }
}

/// The 2×2 average pooling of every branch of `y` (a stride-2 octave convolution's first step).
pub fn halve(y: &OctValue) -> Result<OctValue> {
    y.map(crate::ops::avg_pool2x2)
}

impl OutputStage<'_> {
    /// Applies the stage to `y`, a fresh value nothing else holds, in place where our kernels serve
    /// it ([`OctBatchNorm::infer_in_place`], [`Activation::infer_in_place`]).
    pub fn apply(&self, y: OctValue) -> Result<OctValue> {
        if let Some(out) = self.means {
            let y = self.without_means().apply(y)?;
            out.set(crate::layers::global_avg_pool(&y, true)?);
            return Ok(y);
        }
        if self.add.is_some() {
            return self.join(self.before_add().map(y)?);
        }
        let y = self.map(y)?;
        let y = match self.pool {
            Some(pool) => pool.forward(&y)?,
            None => y,
        };
        match self.halve {
            true => halve(&y),
            false => Ok(y),
        }
    }

    /// Whether the stage pools its output (a max pool or a halving).
    pub fn pools(&self) -> bool {
        self.halve || self.pool.is_some()
    }

    /// The stage without its halving: what a kernel that maps rows but cannot pool them applies,
    /// before [`halve`].
    pub fn unhalved(&self) -> Self {
        OutputStage {
            halve: false,
            ..*self
        }
    }

    /// The stage without its means ([`OutputStage::means`]).
    pub fn without_means(&self) -> Self {
        OutputStage {
            means: None,
            ..*self
        }
    }

    /// The stage up to its residual: the batch norm alone (no activation, no residual).
    pub fn before_add(&self) -> Self {
        OutputStage {
            act: None,
            add: None,
            means: None,
            ..*self
        }
    }

    /// [`OutputStage::apply`] to `y`, a fresh output that nothing else holds: a residual sum is
    /// written into `y` ([`OutputStage::join_fresh`]) where nothing follows it (no pooling, no
    /// means; `join_fresh` applies neither).
    pub fn apply_fresh(&self, y: OctValue) -> Result<OctValue> {
        match self.add {
            Some(_) if !self.pools() && self.means.is_none() => {
                self.join_fresh(self.before_add().map(y)?)
            }
            _ => self.apply(y),
        }
    }

    /// [`OutputStage::join`] of `y`, a fresh output that nothing else holds (a convolution's, made
    /// for this stage), with the sum written into `y`'s own buffers
    /// ([`crate::kernels::elementwise::SumActInPlace`]; the same values bit for bit): no third map
    /// while the convolution's input, its output and the residual are alive. Branches that are
    /// not contiguous f32 CPU tensors of the residual's shapes, or an activation that is no
    /// clamp, take [`OutputStage::join`].
    pub fn join_fresh(&self, y: OctValue) -> Result<OctValue> {
        let Some(residual) = self.add else {
            return Ok(y);
        };
        let clamp = self.act.map_or(Some(Clamp::Identity), Activation::clamp);
        let pairs = match (y.branches(), residual.branches()) {
            ((Some(a), None), (Some(b), None)) => vec![(a, b)],
            ((Some(a), Some(c)), (Some(b), Some(d))) => vec![(a, b), (c, d)],
            _ => Vec::new(),
        };
        let fits = |(a, b): &(&candle_core::Tensor, &candle_core::Tensor)| {
            a.dims() == b.dims()
                && a.is_contiguous()
                && b.is_contiguous()
                && crate::kernels::serves_f32(a)
                && crate::kernels::serves_f32(b)
        };
        let (Some(clamp), false) = (clamp, pairs.is_empty() || !pairs.iter().all(fits)) else {
            return self.join(y);
        };
        for (a, b) in pairs {
            a.inplace_op2(b, &crate::kernels::elementwise::SumActInPlace(clamp))?;
        }
        Ok(y)
    }

    /// The rest of the stage after [`OutputStage::before_add`]: `act(y + residual)` in one pass
    /// where the element-wise kernel serves it (the same sum, bit for bit, as a kernel's
    /// [`crate::kernels::epilogue::ResidualJoin`]); `y` alone without a residual.
    pub fn join(&self, y: OctValue) -> Result<OctValue> {
        let Some(residual) = self.add else {
            return Ok(y);
        };
        let act_only = OutputStage {
            bn: None,
            act: self.act,
            pool: None,
            halve: false,
            add: None,
            means: None,
        };
        crate::layers::layer::Add.infer_then(&[&y, residual], &act_only)
    }

    /// [`OutputStage::apply`] without the pool: the batch norm and activation alone (for a kernel
    /// that mapped each row and still has to pool; a stage that pools has no residual).
    pub fn map(&self, y: OctValue) -> Result<OctValue> {
        match (self.bn, self.act) {
            (Some(bn), act) => bn.infer_in_place(y, act),
            (None, Some(act)) => act.infer_in_place(y),
            (None, None) => Ok(y),
        }
    }

    /// The stage of one output branch (`high`, or the low one) of `channels` channels as a kernel
    /// epilogue, or `None` where it is not one (another activation, parameters that are not f32).
    pub fn epilogue(&self, high: bool, channels: usize) -> Result<Option<ChannelEpilogue>> {
        // A plain epilogue cannot add the residual or sum the planes.
        if self.add.is_some() || self.means.is_some() {
            return Ok(None);
        }
        let Some(clamp) = self.act.map_or(Some(Clamp::Identity), Activation::clamp) else {
            return Ok(None);
        };
        let (scale, shift) = match self.bn {
            Some(bn) => {
                let Some(map) = bn.input_map(false)? else {
                    return Ok(None);
                };
                match if high { map.high } else { map.low } {
                    Some(affine) => affine,
                    None => return Ok(None),
                }
            }
            // 1·y + (−0) is y exactly (−0 included, which + 0 would turn into +0), so an
            // activation alone, or nothing, maps like the in-place pass.
            None => (vec![1.0; channels], vec![-0.0; channels]),
        };
        if scale.len() != channels {
            return Ok(None);
        }
        Ok(Some(ChannelEpilogue {
            scale,
            shift,
            clamp,
        }))
    }
}
