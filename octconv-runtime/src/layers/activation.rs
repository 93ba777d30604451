//! Element-wise activations on every branch: `relu`, `sigmoid`, `relu6`, `hardswish`, `silu`.

use crate::kernels::epilogue::{Clamp, InPlaceClamp};
use crate::value::OctValue;
use candle_core::{DType, Result, Tensor};

/// Which activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `max(x, 0)`.
    Relu,
    /// `1 / (1 + e^−x)`.
    Sigmoid,
    /// `min(max(x, 0), 6)`.
    Relu6,
    /// `x · relu6(x + 3) / 6`.
    HardSwish,
    /// `x · sigmoid(x)`.
    Silu,
}

/// `min(max(x, 0), 6)`: one pass on the CPU ([`crate::kernels::clamp`]), elsewhere as
/// `relu(x) − relu(x − 6)` (exact, with ReLU's gradient).
fn relu6(t: &Tensor) -> Result<Tensor> {
    let f = t.dtype();
    if crate::kernels::serves(t.device()) && matches!(f, DType::F32 | DType::F64) {
        return t.contiguous()?.apply_op1(crate::kernels::clamp::Relu6);
    }
    t.relu()? - (t - 6.0)?.relu()?
}

impl Activation {
    /// Applies the activation to one tensor.
    pub fn tensor(self, t: &Tensor) -> Result<Tensor> {
        match self {
            Activation::Relu => t.relu(),
            Activation::Sigmoid => candle_nn::ops::sigmoid(t),
            Activation::Relu6 => relu6(t),
            Activation::HardSwish => t.mul(&(relu6(&(t + 3.0)?)? / 6.0)?),
            Activation::Silu => candle_nn::ops::silu(t),
        }
    }

    /// Applies the activation to every branch.
    pub fn forward(self, x: &OctValue) -> Result<OctValue> {
        x.map(|t| self.tensor(t))
    }

    /// The activation as an in-place clamp of our kernels ([`crate::kernels::epilogue`]): ReLU and
    /// ReLU6; `None` for the others.
    pub fn clamp(self) -> Option<Clamp> {
        match self {
            Activation::Relu => Some(Clamp::Relu),
            Activation::Relu6 => Some(Clamp::Relu6),
            Activation::Sigmoid | Activation::HardSwish | Activation::Silu => None,
        }
    }

    /// Inference of `self(y)` where `y` is a freshly computed value that nothing else holds: a
    /// ReLU or ReLU6 on f32 CPU tensors is applied in place
    /// ([`crate::kernels::epilogue::InPlaceClamp`]), anything else as [`Activation::forward`].
    pub fn infer_in_place(self, y: OctValue) -> Result<OctValue> {
        let Some(clamp) = self.clamp() else {
            return self.forward(&y);
        };
        let fast = |t: &Tensor| {
            crate::kernels::serves(t.device()) && t.dtype() == DType::F32 && t.is_contiguous()
        };
        let (h, l) = y.branches();
        let tensors: Vec<&Tensor> = match &y {
            OctValue::Single(t) | OctValue::Flat(t) => vec![t],
            OctValue::Pair { .. } => h.into_iter().chain(l).collect(),
        };
        if !tensors.iter().all(|t| fast(t)) {
            return self.forward(&y);
        }
        for t in tensors {
            t.inplace_op1(&InPlaceClamp(clamp))?;
        }
        Ok(y)
    }
}
