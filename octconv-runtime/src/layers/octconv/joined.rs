//! The residual join in a convolution's output stage ([`OutputStage::add`]): `act(bn(conv(x)) +
//! r)` with each output row joined while it is in cache, where a kernel maps rows of its output
//! buffer ([`ResidualJoin`]): the four-path 1×1 kernel, and a one-branch 1×1 convolution by im2col
//! — the last layer of every ResNet / ResNeXt bottleneck and MobileNet v2 block — and the fused
//! 3×3 octave kernel plane by plane ([`super::staged`]). Any other layer runs its stage up to the
//! residual, then the sum in one pass into its fresh output ([`OutputStage::join_fresh`]).

use super::row_mapped::RowMapped;
use super::OctConv2d;
use crate::kernels::conv2d;
use crate::kernels::epilogue::{ChannelEpilogue, Clamp, ResidualJoin, RowMap};
use crate::kernels::pointwise::{self, PointwiseOctave};
use crate::kernels::scratch::output_vec;
use crate::kernels::with_f32_many;
use crate::layers::{Activation, OutputStage};
use crate::value::OctValue;
use candle_core::{Result, Tensor};

impl OctConv2d {
    /// [`OctConv2d::infer_then`] of a stage with a residual ([`OutputStage::add`]).
    pub(super) fn infer_then_joined(
        &self,
        x: &OctValue,
        stage: &OutputStage<'_>,
        residual: &OctValue,
    ) -> Result<OctValue> {
        if let Some(y) = self.infer_joined_in_kernel(x, stage, residual)? {
            return Ok(y);
        }
        if let Some(y) = self.infer_octave_staged(x, [None, None], stage)? {
            return Ok(y);
        }
        stage.join_fresh(self.infer_then(x, &stage.before_add())?)
    }

    /// The join in the 1×1 kernels, `Ok(None)` where they do not serve the layer, its input or
    /// the residual (a bias, other shapes, not f32 on the CPU, an activation that is not a clamp).
    fn infer_joined_in_kernel(
        &self,
        x: &OctValue,
        stage: &OutputStage<'_>,
        residual: &OctValue,
    ) -> Result<Option<OctValue>> {
        let clamp = stage.act.map_or(Some(Clamp::Identity), Activation::clamp);
        let (Some(clamp), Some(kernel)) = (clamp, self.row_mapped_1x1(x)?) else {
            return Ok(None);
        };
        let Some(epis) = self.branch_epilogues(&stage.before_add())? else {
            return Ok(None);
        };
        match (kernel, residual) {
            (RowMapped::Pointwise(g), _) => self.pointwise_joined(x, g, epis, (residual, clamp)),
            (RowMapped::OneBranch(xs, w, _), OctValue::Single(r)) => {
                let p = self.conv_params(1);
                let y = conv2d::infer_post_joined(xs, w, p, &epis.0, (r, clamp))?;
                Ok(y.map(OctValue::Single))
            }
            _ => Ok(None),
        }
    }

    /// The four-path 1×1 kernel ([`pointwise::forward_post_into`]) with each output branch's rows
    /// mapped by its epilogue (the stage up to the residual) and joined with that branch of
    /// `residual`.
    fn pointwise_joined(
        &self,
        x: &OctValue,
        g: PointwiseOctave,
        (eh, el): (ChannelEpilogue, Option<ChannelEpilogue>),
        (residual, clamp): (&OctValue, Clamp),
    ) -> Result<Option<OctValue>> {
        let s = &self.spec;
        let o = &g.octave;
        let ((oh, ow), (lh, lw)) = (g.out_high_hw(), g.out_low_hw());
        let (rh, rl) = match (residual, s.out_l) {
            (OctValue::Single(r), 0) => (r, None),
            (OctValue::Pair { high: Some(h), low }, l) if l > 0 => (h, Some(low)),
            _ => return Ok(None),
        };
        let f32_cpu = crate::kernels::serves_f32;
        let shapes_fit = rh.dims4()? == (o.n, o.out_h, oh, ow)
            && rl.map_or(Ok(true), |r| r.dims4().map(|d| d == (o.n, o.out_l, lh, lw)))?;
        if !shapes_fit || !f32_cpu(rh) || !rl.is_none_or(f32_cpu) {
            return Ok(None);
        }
        let (Some(xh), xl) = x.branches() else {
            return Ok(None);
        };
        // Every value is written by the kernel.
        let mut yh = output_vec(o.n * o.out_h * oh * ow);
        let mut yl = output_vec(o.n * o.out_l * lh * lw);
        let ts: Vec<&Tensor> = [Some(xh), Some(rh), xl, rl].into_iter().flatten().collect();
        self.with_pointwise_weights(|wt| {
            with_f32_many(&ts, |v| {
                let (xh, rh) = (v[0], v[1]);
                let mut rest = v[2..].iter().copied();
                let xl = xl.and_then(|_| rest.next()).unwrap_or(&[]);
                let rl = rl.and_then(|_| rest.next()).unwrap_or(&[]);
                let jh = ResidualJoin::new(&eh, &yh, rh, clamp);
                let jl = el.as_ref().map(|e| ResidualJoin::new(e, &yl, rl, clamp));
                let ph = |c: usize, row: &mut [f32]| jh.apply_row(c, row);
                let pl = |c: usize, row: &mut [f32]| {
                    if let Some(j) = &jl {
                        j.apply_row(c, row)
                    }
                };
                let post: [Option<RowMap<'_, f32>>; 2] = [Some(&ph), Some(&pl)];
                pointwise::forward_post_into(&g, (xh, xl), wt, post, (&mut yh, &mut yl));
            })
        })?;
        self.pointwise_output(&g, (yh, yl), false, xh.device())
            .map(Some)
    }
}
