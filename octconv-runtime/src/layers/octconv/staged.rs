//! The fused four-path 3×3 octave kernel with the layer's output stage on each plane as the
//! Winograd output transform finishes it ([`octave::forward_staged_into`]): the batch norm and
//! activation, or a residual joined ([`ResidualJoin`]), in cache instead of a pass of their own.
//!
//! Why: the kernel wrote its outputs raw, so every stage after a 3×3 octave layer was a separate
//! pass over both branches — the seed's `conv → bn → relu` before each unit's sum, and the
//! identity shortcut's sum of every WRN block (2 % of WRN-16-4's inference at α = .5, 3.5 % of the
//! seed's, `octconv bench --profile`).

use super::OctConv2d;
use crate::kernels::direct;
use crate::kernels::epilogue::{Clamp, ResidualJoin, RowMap};
use crate::kernels::octave::{self, OctaveGeometry, OctaveWeights};
use crate::kernels::prologue::Prologue;
use crate::kernels::scratch::output_vec;
use crate::layers::batch_norm::OctBatchNorm;
use crate::layers::{Activation, OutputStage};
use crate::value::OctValue;
use candle_core::{Result, Tensor};

impl OctConv2d {
    /// [`OctConv2d::infer_after_bn_relu`] followed by `stage`: in the fused octave kernel where it
    /// serves the layer ([`OctConv2d::infer_octave_staged`]), else the stage in passes of its own.
    pub fn infer_after_bn_relu_then(
        &self,
        bn: &OctBatchNorm,
        x: &OctValue,
        stage: &OutputStage<'_>,
    ) -> Result<OctValue> {
        if self.fused && self.fusable_inputs_f32(x) {
            if let Some(map) = bn.input_map(true)? {
                if let (Some(ph), Some(pl)) = (map.prologue(true), map.prologue(false)) {
                    if let Some(y) = self.infer_octave_staged(x, [Some(ph), Some(pl)], stage)? {
                        return Ok(y);
                    }
                }
            }
        }
        // Detached: the per-op fallback may carry autograd nodes the stage need not track.
        stage.apply_fresh(self.infer_after_bn_relu(bn, x)?.map(|t| Ok(t.detach()))?)
    }

    /// The fused four-path 3×3 kernel on `x` (its branches mapped by `pros` as they are read),
    /// each output plane mapped by `stage` as it is finished: its batch norm and activation, or
    /// with a residual its batch norm, the sum and the activation ([`ResidualJoin`]). `Ok(None)`
    /// where the layer does not run on that kernel in inference (a bias, not f32 on the CPU, the
    /// direct kernel's or the per-path convolutions' shapes: [`OctConv2d::infer`]'s choice), or
    /// the stage is none a plane map applies (pooling, means, another activation, a residual of
    /// other shapes).
    pub(super) fn infer_octave_staged(
        &self,
        x: &OctValue,
        pros: [Option<Prologue<'_, f32>>; 2],
        stage: &OutputStage<'_>,
    ) -> Result<Option<OctValue>> {
        let Some(g) = self.staged_geometry(x, stage)? else {
            return Ok(None);
        };
        let ((Some(xh), Some(xl)), [Some(hh), Some(hl), Some(lh), Some(ll)]) =
            (x.branches(), &self.weights)
        else {
            return Ok(None);
        };
        // With a residual the epilogues stop before the sum (the join adds it, then clamps by
        // the stage's activation); without one they are the whole stage.
        let clamp = stage.act.map_or(Some(Clamp::Identity), Activation::clamp);
        let epis = match stage.add {
            Some(_) => self.branch_epilogues(&stage.before_add())?,
            None => self.branch_epilogues(stage)?,
        };
        let (Some(clamp), Some((eh, Some(el)))) = (clamp, epis) else {
            return Ok(None);
        };
        let (lh_, lw_) = g.low_hw();
        let residual = match stage.add {
            None => None,
            Some(OctValue::Pair {
                high: Some(rh),
                low: rl,
            }) if rh.dims4()? == (g.n, g.out_h, g.h, g.w)
                && rl.dims4()? == (g.n, g.out_l, lh_, lw_)
                && [rh, rl].into_iter().all(crate::kernels::serves_f32) =>
            {
                Some((rh, rl))
            }
            Some(_) => return Ok(None),
        };
        let mut ts = vec![xh, xl, hh, hl, lh, ll];
        ts.extend(residual.iter().flat_map(|&(rh, rl)| [rh, rl]));
        let (yh, yl) = crate::kernels::with_f32_many(&ts, |v| {
            let w = OctaveWeights {
                hh: v[2],
                hl: v[3],
                lh: v[4],
                ll: v[5],
            };
            // The weights are transformed before the outputs are allocated (the transforms'
            // temporaries are gone by the memory peak); every output value is written.
            let prepared = self.prepared_octave(&g, w);
            let (mut yh, mut yl) = (output_vec(g.high_out_len()), output_vec(g.low_out_len()));
            let joins = (v.len() == 8).then(|| {
                (
                    ResidualJoin::new(&eh, &yh, v[6], clamp),
                    ResidualJoin::new(&el, &yl, v[7], clamp),
                )
            });
            let ph = |c: usize, p: &mut [f32]| match &joins {
                Some((jh, _)) => jh.apply_row(c, p),
                None => eh.apply_row(c, p),
            };
            let pl = |c: usize, p: &mut [f32]| match &joins {
                Some((_, jl)) => jl.apply_row(c, p),
                None => el.apply_row(c, p),
            };
            let posts: [Option<RowMap<'_, f32>>; 2] = [Some(&ph), Some(&pl)];
            let x = (v[0], v[1]);
            octave::forward_staged_into(&g, x, &prepared, pros, posts, (&mut yh, &mut yl));
            (yh, yl)
        })?;
        let dev = xh.device();
        Ok(Some(OctValue::Pair {
            high: Some(Tensor::from_vec(yh, (g.n, g.out_h, g.h, g.w), dev)?),
            low: Tensor::from_vec(yl, (g.n, g.out_l, lh_, lw_), dev)?,
        }))
    }

    /// The geometry of the fused kernel where [`OctConv2d::infer_octave_staged`] runs it on `x`
    /// with `stage`.
    fn staged_geometry(
        &self,
        x: &OctValue,
        stage: &OutputStage<'_>,
    ) -> Result<Option<OctaveGeometry>> {
        if stage.pools() || stage.means.is_some() {
            return Ok(None);
        }
        if !self.fused_without_bias() || !self.fusable_inputs_f32(x) {
            return Ok(None);
        }
        let (Some(xh), Some(xl)) = x.branches() else {
            return Ok(None);
        };
        let Some(g) = self.fused_geometry(xh, xl) else {
            return Ok(None);
        };
        let empty = g.n == 0;
        Ok((!empty && !direct::prefers(&g) && !g.prefers_per_path()).then_some(g))
    }
}
