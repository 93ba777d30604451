//! `Conv2d`: a plain convolution on a single-frequency tensor.

use crate::kernels::{conv2d, ConvGeometry, ConvParams};
use crate::layers::OutputStage;
use crate::value::OctValue;
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use octconv_spec::ir::ConvSpec;

/// A plain 2-D convolution (`weight` `[out, in / groups, k, k]`, optional `bias` `[out]`).
#[derive(Clone, Debug)]
pub struct Conv2d {
    spec: ConvSpec,
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Conv2d {
    /// Loads `weight` (and `bias`) from `vb`.
    pub fn new(spec: ConvSpec, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get(
            (
                spec.out_c,
                spec.in_c / spec.groups,
                spec.kernel,
                spec.kernel,
            ),
            "weight",
        )?;
        let bias = spec.bias.then(|| vb.get(spec.out_c, "bias")).transpose()?;
        Ok(Conv2d { spec, weight, bias })
    }

    /// Stride, padding and groups of the convolution.
    fn params(&self) -> ConvParams {
        ConvParams {
            stride: self.spec.stride,
            pad: self.spec.padding,
            groups: self.spec.groups,
        }
    }

    /// Applies the convolution to `[N, C, H, W]`.
    pub fn forward_tensor(&self, x: &Tensor) -> Result<Tensor> {
        let y = conv2d(x, &self.weight, self.params())?;
        match &self.bias {
            Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1))?),
            None => Ok(y),
        }
    }

    /// Inference of the convolution followed by `stage`, which the im2col and depthwise kernels
    /// apply to each output row while it is in cache (without bias); else in one pass afterwards.
    pub fn infer_then(&self, x: &OctValue, stage: &OutputStage<'_>) -> Result<OctValue> {
        if let (OctValue::Single(t), None) = (x, &self.bias) {
            let p = self.params();
            let maps =
                ConvGeometry::new(t.dims4()?, self.weight.dims4()?, p.stride, p.pad, p.groups)
                    .is_ok_and(|g| conv2d::maps_rows(&g));
            if let (true, Some(e)) = (maps, stage.epilogue(true, self.spec.out_c)?) {
                if let Some(y) = conv2d::infer_post(t, &self.weight, p, &e)? {
                    return Ok(OctValue::Single(y));
                }
            }
        }
        stage.apply(self.forward(x)?)
    }

    /// Applies the convolution to a single-frequency value.
    pub fn forward(&self, x: &OctValue) -> Result<OctValue> {
        match x {
            OctValue::Single(t) => Ok(OctValue::Single(self.forward_tensor(t)?)),
            _ => candle_core::bail!("conv needs a single-frequency tensor"),
        }
    }
}
