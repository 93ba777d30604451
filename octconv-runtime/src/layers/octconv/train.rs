//! The octave convolution's training forward and backward on the planned step ([`crate::tape`]):
//! the fused four-path 3×3 kernel with its one-pass backward ([`octave::backward`]); every other
//! shape runs its paths on the convolution kernels ([`super::paths`]); biases after either
//! ([`BiasBackward`]).

use super::OctConv2d;
use crate::kernels::octave::{self, octave_conv, OctaveGeometry, OctaveWeights};
use crate::kernels::with_f32_all;
use crate::layers::conv::BiasBackward;
use crate::tape::{Backward, ParamGrads, Recorded};
use crate::value::OctValue;
use candle_core::{Result, Tensor};

impl OctConv2d {
    /// The training forward of the planned step: `None` where this layer's shape or the inputs take
    /// candle's autograd instead.
    pub(crate) fn record(&self, x: &OctValue, needs_grad: bool) -> Result<Option<Recorded>> {
        let recorded = self.record_unbiased(x, needs_grad)?;
        recorded
            .map(|r| BiasBackward::record(r, &self.bias_h, &self.bias_l))
            .transpose()
    }

    /// [`OctConv2d::record`] before the biases.
    fn record_unbiased(&self, x: &OctValue, needs_grad: bool) -> Result<Option<Recorded>> {
        if !self.fusable_inputs_f32(x) {
            return Ok(None);
        }
        let (
            OctValue::Pair {
                high: Some(xh),
                low: xl,
            },
            [Some(hh), Some(hl), Some(lh), Some(ll)],
        ) = (x, &self.weights)
        else {
            return self.record_paths(x, needs_grad);
        };
        let Some(g) = self.fused_geometry(xh, xl) else {
            return self.record_paths(x, needs_grad);
        };
        let (xh, xl) = (xh.contiguous()?, xl.contiguous()?);
        let detached = [hh, hl, lh, ll].map(Tensor::detach);
        let (yh, yl) = octave_conv(
            g,
            &xh,
            &xl,
            [&detached[0], &detached[1], &detached[2], &detached[3]],
        )?;
        let back = FusedBackward {
            g,
            xh,
            xl,
            weights: [hh.clone(), hl.clone(), lh.clone(), ll.clone()],
        };
        let y = OctValue::Pair {
            high: Some(yh),
            low: yl,
        };
        Ok(Some((y, Box::new(back))))
    }
}

/// The backward of the fused octave convolution: both outputs' gradients in one call.
struct FusedBackward {
    g: OctaveGeometry,
    xh: Tensor,
    xl: Tensor,
    /// H→H, H→L, L→H, L→L: the parameters, for their gradients' places.
    weights: [Tensor; 4],
}

impl Backward for FusedBackward {
    fn backward(
        self: Box<Self>,
        grad: &OctValue,
        params: &mut ParamGrads,
    ) -> Result<Vec<Option<OctValue>>> {
        let OctValue::Pair {
            high: Some(dyh),
            low: dyl,
        } = grad
        else {
            candle_core::bail!("octave convolution backward: the gradient is not a pair")
        };
        let g = self.g;
        let [hh, hl, lh, ll] = &self.weights;
        let (dxh, dxl, dw) = with_f32_all(
            [&self.xh, &self.xl, hh, hl, lh, ll, dyh, dyl],
            |[xh, xl, hh, hl, lh, ll, dyh, dyl]| {
                let w = OctaveWeights { hh, hl, lh, ll };
                octave::backward(&g, xh, xl, &w, (dyh, dyl))
            },
        )?;
        let dev = self.xh.device();
        let mut start = 0;
        for w in &self.weights {
            let len = w.elem_count();
            let part = Tensor::from_slice(&dw[start..start + len], w.shape(), dev)?;
            params.add(w, part)?;
            start += len;
        }
        Ok(vec![Some(OctValue::Pair {
            high: Some(Tensor::from_vec(dxh, self.xh.shape(), dev)?),
            low: Tensor::from_vec(dxl, self.xl.shape(), dev)?,
        })])
    }
}
