//! A convolution's output stage that also pools its mapped output globally
//! ([`OutputStage::means`]): squeeze-and-excitation's squeeze summed from each output row while it
//! is in cache ([`PlaneSums`]) in the kernels that map rows of their output buffer — the four-path
//! 1×1 kernel, and a one-branch 1×1 convolution by im2col, as the last layer of every SE
//! bottleneck is. Any other layer maps its output, then pools it.

use super::row_mapped::RowMapped;
use super::OctConv2d;
use crate::kernels::conv2d;
use crate::kernels::epilogue::{ChannelEpilogue, PlaneSums, RowMap};
use crate::kernels::pointwise::{self, PointwiseOctave};
use crate::kernels::scratch::output_vec;
use crate::kernels::{with_f32_all, with_f32_many};
use crate::layers::{MeansOut, OutputStage};
use crate::value::OctValue;
use candle_core::{Result, Tensor};

impl OctConv2d {
    /// [`OctConv2d::infer_then`] of a stage that computes its means, left in `out`.
    pub(super) fn infer_then_meaned(
        &self,
        x: &OctValue,
        stage: &OutputStage<'_>,
        out: &MeansOut,
    ) -> Result<OctValue> {
        let inner = stage.without_means();
        if let Some((y, means)) = self.meaned_in_kernel(x, &inner)? {
            out.set(means);
            return Ok(y);
        }
        let y = self.infer_then(x, &inner)?;
        out.set(crate::layers::global_avg_pool(&y, true)?);
        Ok(y)
    }

    /// The output and its means by the 1×1 kernels, `Ok(None)` where they do not serve the layer or
    /// its input (a bias, other shapes, not f32 on the CPU, a stage that is no epilogue).
    fn meaned_in_kernel(
        &self,
        x: &OctValue,
        stage: &OutputStage<'_>,
    ) -> Result<Option<(OctValue, OctValue)>> {
        let (Some(kernel), false) = (self.row_mapped_1x1(x)?, stage.pools()) else {
            return Ok(None);
        };
        let Some((eh, el)) = self.branch_epilogues(stage)? else {
            return Ok(None);
        };
        let (xs, w, g) = match kernel {
            RowMapped::Pointwise(g) => {
                return self.pointwise_meaned(x, g, (&eh, el.as_ref())).map(Some)
            }
            RowMapped::OneBranch(xs, w, g) => (xs, w, g),
        };
        // Every value is written by the kernel.
        let mut y = output_vec(g.n * g.out_image());
        let means = with_f32_all([xs, w], |[xv, wv]| {
            let sums = PlaneSums::new(&y, g.n, g.c_out);
            let post = |c: usize, row: &mut [f32]| {
                eh.apply_row(c, row);
                sums.add_row(c, row);
            };
            conv2d::forward_post_into(&g, xv, wv, Some(&post), &mut y);
            sums.means(g.oh() * g.ow())
        })?;
        let dev = xs.device();
        let y = Tensor::from_vec(y, (g.n, g.c_out, g.oh(), g.ow()), dev)?;
        let means = Tensor::from_vec(means, (g.n, g.c_out), dev)?;
        Ok(Some((OctValue::Single(y), OctValue::Flat(means))))
    }

    /// The four-path 1×1 kernel ([`pointwise::forward_post_into`]) with each branch's rows mapped
    /// by its epilogue and summed; the means of the high channels, then the low ones, per image.
    fn pointwise_meaned(
        &self,
        x: &OctValue,
        g: PointwiseOctave,
        (eh, el): (&ChannelEpilogue, Option<&ChannelEpilogue>),
    ) -> Result<(OctValue, OctValue)> {
        let o = &g.octave;
        let ((oh, ow), (lh, lw)) = (g.out_high_hw(), g.out_low_hw());
        let (Some(xh), xl) = x.branches() else {
            candle_core::bail!("internal error: the 1×1 octave kernel without a high input")
        };
        // Every value is written by the kernel.
        let mut yh = output_vec(o.n * o.out_h * oh * ow);
        let mut yl = output_vec(o.n * o.out_l * lh * lw);
        let ts: Vec<&Tensor> = [Some(xh), xl].into_iter().flatten().collect();
        let (mh, ml) = self.with_pointwise_weights(|wt| {
            with_f32_many(&ts, |v| {
                let xl = v.get(1).copied().unwrap_or(&[]);
                let sh = PlaneSums::new(&yh, o.n, o.out_h);
                let sl = (o.out_l > 0).then(|| PlaneSums::new(&yl, o.n, o.out_l));
                let ph = |c: usize, row: &mut [f32]| {
                    eh.apply_row(c, row);
                    sh.add_row(c, row);
                };
                let pl = |c: usize, row: &mut [f32]| {
                    if let (Some(e), Some(s)) = (el, &sl) {
                        e.apply_row(c, row);
                        s.add_row(c, row);
                    }
                };
                let post: [Option<RowMap<'_, f32>>; 2] = [Some(&ph), Some(&pl)];
                pointwise::forward_post_into(&g, (v[0], xl), wt, post, (&mut yh, &mut yl));
                (sh.means(oh * ow), sl.map(|s| s.means(lh * lw)))
            })
        })?;
        // Per image: the high channels' means, then the low ones'.
        let c = o.out_h + o.out_l;
        let mut means = Vec::with_capacity(o.n * c);
        for i in 0..o.n {
            means.extend_from_slice(&mh[i * o.out_h..][..o.out_h]);
            if let Some(ml) = &ml {
                means.extend_from_slice(&ml[i * o.out_l..][..o.out_l]);
            }
        }
        let dev = xh.device();
        let means = OctValue::Flat(Tensor::from_vec(means, (o.n, c), dev)?);
        Ok((self.pointwise_output(&g, (yh, yl), false, dev)?, means))
    }
}
