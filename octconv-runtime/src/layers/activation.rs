//! Element-wise activations on every branch: `relu`, `sigmoid`, `relu6`, `hardswish`.

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
        }
    }

    /// Applies the activation to every branch.
    pub fn forward(self, x: &OctValue) -> Result<OctValue> {
        x.map(|t| self.tensor(t))
    }
}
