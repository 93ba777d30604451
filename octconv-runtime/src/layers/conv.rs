//! `Conv2d`: a plain convolution on a single-frequency tensor.

use crate::kernels::epilogue::ChannelEpilogue;
use crate::kernels::max_pool::pool3s2_hw;
use crate::kernels::{conv2d, serves_f32, stem, with_f32_all, ConvGeometry, ConvParams};
use crate::layers::octconv::add_bias;
use crate::layers::pool::PoolKind;
use crate::layers::OutputStage;
use crate::tape::{Backward, ParamGrads, Recorded};
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
    /// Replaces the weight and bias with private copies (a snapshot for a frozen model:
    /// [`crate::layers::OctLayer::freeze`]).
    pub fn freeze(&mut self) -> Result<()> {
        self.weight = crate::layers::octconv::snapshot(&self.weight)?;
        if let Some(b) = &mut self.bias {
            *b = crate::layers::octconv::snapshot(b)?;
        }
        Ok(())
    }

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

    /// The training forward of the planned step ([`crate::tape`]): our kernels on an f32 CPU input,
    /// then the bias; `None` elsewhere (candle's autograd runs the layer).
    pub fn train_record(&self, x: &OctValue, needs_grad: bool) -> Result<Option<Recorded>> {
        use crate::kernels::serves_f32;
        match x {
            OctValue::Single(t) if serves_f32(t) && serves_f32(&self.weight) => {
                let (y, back) = ConvBackward::record(t, &self.weight, self.params(), needs_grad)?;
                let recorded: Recorded = (OctValue::Single(y), Box::new(back));
                BiasBackward::record(recorded, &self.bias, &None).map(Some)
            }
            _ => Ok(None),
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
            let g = ConvGeometry::new(t.dims4()?, self.weight.dims4()?, p.stride, p.pad, p.groups)
                .ok()
                .filter(conv2d::maps_rows);
            if let (Some(g), Some(e)) = (g, stage.epilogue(true, self.spec.out_c)?) {
                if let Some(y) = self.infer_stem_pooled(t, &g, &e, stage)? {
                    return Ok(OctValue::Single(y));
                }
                if let Some(y) = conv2d::infer_post(t, &self.weight, p, &e)? {
                    let y = OctValue::Single(y);
                    return match stage.pool {
                        Some(pool) => pool.forward(&y),
                        None => Ok(y),
                    };
                }
            }
        }
        stage.apply(self.forward(x)?)
    }

    /// The stem kernel with the output stage's 3×3 / 2 max pool taken per image
    /// ([`stem::forward_post_pooled`]), where the stage has that pool and the kernel serves the
    /// layer; `Ok(None)` elsewhere.
    fn infer_stem_pooled(
        &self,
        t: &Tensor,
        g: &ConvGeometry,
        e: &ChannelEpilogue,
        stage: &OutputStage<'_>,
    ) -> Result<Option<Tensor>> {
        let Some(pool) = stage.pool else {
            return Ok(None);
        };
        let s = pool.spec;
        let fits = pool.kind == PoolKind::Max
            && (s.kernel, s.stride, s.padding) == (3, 2, 1)
            && serves_f32(t)
            && serves_f32(&self.weight)
            && stem::applies(g)
            && g.oh() >= 2
            && g.ow() >= 2;
        if !fits {
            return Ok(None);
        }
        let post = |c: usize, row: &mut [f32]| e.apply_row(c, row);
        let y = with_f32_all([t, &self.weight], |[x, w]| {
            stem::forward_post_pooled(g, x, w, Some(&post))
        })?;
        let (ph, pw) = pool3s2_hw(g.oh(), g.ow());
        Tensor::from_vec(y, (g.n, g.c_out, ph, pw), t.device()).map(Some)
    }

    /// Applies the convolution to a single-frequency value.
    pub fn forward(&self, x: &OctValue) -> Result<OctValue> {
        match x {
            OctValue::Single(t) => Ok(OctValue::Single(self.forward_tensor(t)?)),
            _ => candle_core::bail!("conv needs a single-frequency tensor"),
        }
    }
}

/// A recorded convolution followed by its biases (one per output channel of each branch, added as
/// [`add_bias`] adds them in the layers' forwards): each bias's gradient is its branch's output
/// gradient summed over images and pixels; the gradient passes on to the convolution unchanged.
pub(crate) struct BiasBackward {
    conv: Box<dyn Backward>,
    high: Option<Tensor>,
    low: Option<Tensor>,
}

impl BiasBackward {
    /// Adds the biases `high` (a single tensor's or a pair's high branch) and `low` to the recorded
    /// output; without biases, the record as it was.
    pub(crate) fn record(
        (y, conv): Recorded,
        high: &Option<Tensor>,
        low: &Option<Tensor>,
    ) -> Result<Recorded> {
        if high.is_none() && low.is_none() {
            return Ok((y, conv));
        }
        let with =
            |t: Tensor, b: &Option<Tensor>| -> Result<Tensor> { Ok(add_bias(t, b)?.detach()) };
        let y = match y {
            OctValue::Single(t) => OctValue::Single(with(t, high)?),
            OctValue::Pair { high: h, low: l } => OctValue::Pair {
                high: h.map(|t| with(t, high)).transpose()?,
                low: with(l, low)?,
            },
            OctValue::Flat(_) => candle_core::bail!("convolution bias: a flat output"),
        };
        let back = BiasBackward {
            conv,
            high: high.clone(),
            low: low.clone(),
        };
        Ok((y, Box::new(back)))
    }
}

impl Backward for BiasBackward {
    fn backward(
        self: Box<Self>,
        grad: &OctValue,
        params: &mut ParamGrads,
    ) -> Result<Vec<Option<OctValue>>> {
        let (gh, gl) = grad.branches();
        for (g, b) in [(gh, &self.high), (gl, &self.low)] {
            if let (Some(g), Some(b)) = (g, b) {
                params.add(b, g.sum((0, 2, 3))?)?;
            }
        }
        self.conv.backward(grad, params)
    }
}

/// The backward of one convolution on our kernels, recorded by [`ConvBackward::record`]: the
/// planned training step's convolutions ([`crate::tape`]).
pub(crate) struct ConvBackward {
    params: ConvParams,
    x: Tensor,
    weight: Tensor,
    /// Whether the input needs a gradient (not for the model input).
    needs_grad: bool,
}

impl ConvBackward {
    /// `conv2d(x, weight)` without a graph (f32 CPU tensors, checked by the caller) and its backward.
    pub(crate) fn record(
        x: &Tensor,
        weight: &Tensor,
        params: ConvParams,
        needs_grad: bool,
    ) -> Result<(Tensor, ConvBackward)> {
        let x = x.contiguous()?;
        let y = x.apply_op2_no_bwd(
            &weight.detach().contiguous()?,
            &conv2d::Conv2dForward(params),
        )?;
        let back = ConvBackward {
            params,
            x,
            weight: weight.clone(),
            needs_grad,
        };
        Ok((y, back))
    }
}

impl Backward for ConvBackward {
    fn backward(
        self: Box<Self>,
        grad: &OctValue,
        params: &mut ParamGrads,
    ) -> Result<Vec<Option<OctValue>>> {
        let OctValue::Single(dy) = grad else {
            candle_core::bail!("convolution backward: the gradient is not a single tensor")
        };
        Ok(vec![self.run(dy, params)?.map(OctValue::Single)])
    }
}

impl ConvBackward {
    /// Adds the weight's gradient for the output gradient `dy` to `params`; returns the input's
    /// (`None` where the input needs none).
    pub(crate) fn run(&self, dy: &Tensor, params: &mut ParamGrads) -> Result<Option<Tensor>> {
        let (dw, dx) = self.gradients(dy)?;
        params.add(&self.weight, dw)?;
        Ok(dx)
    }

    /// The weight's gradient for the output gradient `dy`, and the input's (`None` where the input
    /// needs none).
    pub(crate) fn gradients(&self, dy: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        let (_, _, h, w) = self.x.dims4()?;
        let dw = self.x.apply_op2_no_bwd(
            &dy,
            &conv2d::Conv2dBackwardFilter {
                params: self.params,
                kernel: (self.weight.dim(2)?, self.weight.dim(3)?),
            },
        )?;
        if !self.needs_grad {
            return Ok((dw, None));
        }
        let dx = dy.apply_op2_no_bwd(
            &self.weight.detach().contiguous()?,
            &conv2d::Conv2dBackwardData {
                params: self.params,
                input_hw: (h, w),
            },
        )?;
        Ok((dw, Some(dx)))
    }
}
