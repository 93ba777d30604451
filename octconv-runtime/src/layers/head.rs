//! The head: global average pooling, flattening and the linear classifier.

use crate::kernels::elementwise::PlaneMeans;
use crate::value::OctValue;
use candle_core::{Result, Tensor};
use candle_nn::{Module, VarBuilder};

/// `[N, C, H, W]` → `[N, C]`; with `per_branch`, a pair → `[N, Ch + Cl]` (each branch pooled, then
/// concatenated: the explicit opt-in head).
pub fn global_avg_pool(x: &OctValue, per_branch: bool) -> Result<OctValue> {
    let gap = |t: &Tensor| -> Result<Tensor> {
        // f32 CPU maps: our threaded kernel (with its gradient); else candle's mean.
        if crate::kernels::serves_f32(t) {
            return t.contiguous()?.apply_op1(PlaneMeans);
        }
        t.mean((2, 3))
    };
    Ok(OctValue::Flat(match x {
        OctValue::Single(t) => gap(t)?,
        OctValue::Pair { high, low } if per_branch => match high {
            Some(h) => Tensor::cat(&[gap(h)?, gap(low)?], 1)?,
            None => gap(low)?,
        },
        _ => candle_core::bail!("global_avg_pool needs a single-frequency tensor"),
    }))
}

/// `[N, C, H, W]` → `[N, C·H·W]`; identity on a flat batch.
pub fn flatten(x: &OctValue) -> Result<OctValue> {
    match x {
        OctValue::Single(t) => Ok(OctValue::Flat(t.flatten_from(1)?)),
        OctValue::Flat(_) => Ok(x.clone()),
        OctValue::Pair { .. } => candle_core::bail!("flatten needs a single-frequency tensor"),
    }
}

/// Fully connected layer: `weight` `[out, in]`, optional `bias` `[out]`.
#[derive(Clone, Debug)]
pub struct Linear(candle_nn::Linear);

impl Linear {
    /// Replaces the weight and bias with private copies (a snapshot for a frozen model:
    /// [`crate::layers::OctLayer::freeze`]).
    pub fn freeze(&mut self) -> Result<()> {
        use crate::layers::octconv::snapshot;
        let b = self.0.bias().map(snapshot).transpose()?;
        self.0 = candle_nn::Linear::new(snapshot(self.0.weight())?, b);
        Ok(())
    }

    /// Loads `weight` and `bias` from `vb`.
    pub fn new(in_f: usize, out_f: usize, bias: bool, vb: VarBuilder) -> Result<Self> {
        let w = vb.get((out_f, in_f), "weight")?;
        let b = bias.then(|| vb.get(out_f, "bias")).transpose()?;
        Ok(Linear(candle_nn::Linear::new(w, b)))
    }

    /// Inference of [`Linear::forward`]: one GEMM of our kernels on f32 CPU tensors
    /// ([`crate::kernels::gemm::linear`]), else candle's.
    pub fn infer(&self, x: &OctValue) -> Result<OctValue> {
        let OctValue::Flat(t) = x else {
            return self.forward(x);
        };
        let (w, b) = (self.0.weight(), self.0.bias());
        let f32_cpu = crate::kernels::serves_f32;
        if t.rank() != 2 || !f32_cpu(t) || !f32_cpu(w) || !b.is_none_or(f32_cpu) {
            return self.forward(x);
        }
        let (n, inp) = t.dims2()?;
        let (out, w_in) = w.dims2()?;
        if w_in != inp {
            return self.forward(x);
        }
        let y = match b {
            Some(b) => crate::kernels::with_f32_all([t, w, b], |[x, w, b]| {
                crate::kernels::gemm::linear(x, w, Some(b), (n, inp, out))
            })?,
            None => crate::kernels::with_f32_all([t, w], |[x, w]| {
                crate::kernels::gemm::linear(x, w, None, (n, inp, out))
            })?,
        };
        Ok(OctValue::Flat(Tensor::from_vec(y, (n, out), t.device())?))
    }

    /// The training forward of the planned step ([`crate::tape`]): the layer's forward, and its
    /// backward as two products with the output's gradient.
    pub(crate) fn train_record(
        &self,
        x: &OctValue,
        needs_grad: bool,
    ) -> Result<Option<crate::tape::Recorded>> {
        let OctValue::Flat(t) = x else {
            return Ok(None);
        };
        let y = self.forward(x)?;
        super::adjoint::LinearBackward::record(y, t, self.0.weight(), self.0.bias(), needs_grad)
    }

    /// Applies the layer to a flat batch.
    pub fn forward(&self, x: &OctValue) -> Result<OctValue> {
        match x {
            OctValue::Flat(t) => Ok(OctValue::Flat(self.0.forward(t)?)),
            _ => candle_core::bail!("linear needs a flat batch"),
        }
    }
}
