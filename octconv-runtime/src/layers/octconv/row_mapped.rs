//! Which 1×1 kernel maps rows of its output buffer for a layer and input, as the output stages
//! that join a residual ([`super::joined`]) or sum the planes ([`super::meaned`]) need: both find
//! a row's place from its address ([`crate::kernels::epilogue::ResidualJoin`],
//! [`crate::kernels::epilogue::PlaneSums`]).

use super::OctConv2d;
use crate::kernels::conv2d::{self, Algorithm};
use crate::kernels::epilogue::ChannelEpilogue;
use crate::kernels::pointwise::PointwiseOctave;
use crate::kernels::ConvGeometry;
use crate::layers::OutputStage;
use crate::value::OctValue;
use candle_core::{Result, Tensor};

/// A 1×1 kernel that maps rows of its output buffer.
pub(super) enum RowMapped<'a> {
    /// The four-path kernel ([`crate::kernels::pointwise::forward_post_into`]).
    Pointwise(PointwiseOctave),
    /// A one-branch convolution at stride 1 by im2col ([`conv2d::forward_post_into`]): its input,
    /// weight and geometry.
    OneBranch(&'a Tensor, &'a Tensor, ConvGeometry),
}

impl OctConv2d {
    /// The kernel for `x`, `Ok(None)` where neither serves the layer or its input (a bias, other
    /// shapes or paths, not f32 on the CPU, the fused kernels off, an empty batch).
    pub(super) fn row_mapped_1x1<'a>(&'a self, x: &'a OctValue) -> Result<Option<RowMapped<'a>>> {
        let s = &self.spec;
        let empty = x
            .branches()
            .0
            .map_or(Ok(true), |t| t.dims4().map(|d| d.0 == 0))?;
        if !self.fused_without_bias() || !self.fusable_inputs_f32(x) || empty {
            return Ok(None);
        }
        if let Some(g) = self.pointwise_geometry(x)? {
            return Ok(Some(RowMapped::Pointwise(g)));
        }
        let one_branch_1x1 = s.kernel == 1 && s.groups == 1 && !s.depthwise && s.stride == 1;
        let (true, (Some(xs), None), [Some(w), None, None, None]) =
            (one_branch_1x1, x.branches(), &self.weights)
        else {
            return Ok(None);
        };
        let p = self.conv_params(1);
        let g = ConvGeometry::new(xs.dims4()?, w.dims4()?, p.stride, p.pad, p.groups)?;
        Ok((conv2d::algorithm(&g) == Algorithm::Im2col).then_some(RowMapped::OneBranch(xs, w, g)))
    }

    /// `stage` as the epilogues of the high branch and, where the layer has one, the low branch;
    /// `Ok(None)` where it is no epilogue (another activation, parameters that are not f32).
    pub(super) fn branch_epilogues(
        &self,
        stage: &OutputStage<'_>,
    ) -> Result<Option<(ChannelEpilogue, Option<ChannelEpilogue>)>> {
        let s = &self.spec;
        let Some(eh) = stage.epilogue(true, s.out_h)? else {
            return Ok(None);
        };
        match s.out_l {
            0 => Ok(Some((eh, None))),
            c => Ok(stage.epilogue(false, c)?.map(|el| (eh, Some(el)))),
        }
    }
}
