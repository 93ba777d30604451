//! A per-channel map applied in place to a convolution's output: `act(scale·y + shift)`, the
//! inference form of the batch norm after a convolution and the ReLU or ReLU6 after that.
//!
//! Post-activation networks (ResNet, ResNeXt, MobileNet, U-Net) run conv → BN → activation. Op by
//! op that is two more passes over every output, each writing a fresh tensor: for MobileNet v2 at
//! batch 8 those two passes took 59 % of an inference pass (`octconv bench --profile`), much of it
//! page faults of maps larger than the allocator keeps. In place it is one pass and no allocation.
//! The values equal those of the separate ops bit for bit: the same `scale·y + shift` in f32
//! ([`super::batch_norm`]'s affine pass), then the same clamp ([`super::clamp`]).

use super::prologue::Prologue;
use super::simd::wide_fn;
use candle_core::{bail, CpuStorage, InplaceOp1, Layout, Result};
use rayon::prelude::*;

/// What an inference kernel applies to each output row right after computing it, while the row is
/// in cache: `post(channel, row)` (for example [`ChannelEpilogue::apply_row`]).
pub type RowMap<'a, T> = &'a (dyn Fn(usize, &mut [T]) + Sync);

/// The activation after the affine map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clamp {
    /// None.
    Identity,
    /// `max(y, 0)` (NaN becomes 0, as in the batch norm's fused ReLU).
    Relu,
    /// `min(max(y, 0), 6)` (NaN becomes 0, as in [`super::clamp`]).
    Relu6,
}

// Each activation is a select, not a branch, so the loops that call them vectorise (a branch on the
// sign of every value mispredicts half the time). NaN becomes 0 in both clamps.

#[inline(always)]
pub(crate) fn identity(y: f32) -> f32 {
    y
}

#[inline(always)]
pub(crate) fn relu(y: f32) -> f32 {
    if y > 0.0 {
        y
    } else {
        0.0
    }
}

#[inline(always)]
pub(crate) fn relu6(y: f32) -> f32 {
    let y = if y > 0.0 { y } else { 0.0 };
    if y < 6.0 {
        y
    } else {
        6.0
    }
}

/// `act(scale·y + shift)` per channel of an NCHW tensor, in place.
#[derive(Clone, Debug)]
pub struct ChannelEpilogue {
    /// Per-channel scale.
    pub scale: Vec<f32>,
    /// Per-channel shift.
    pub shift: Vec<f32>,
    /// The activation.
    pub clamp: Clamp,
}

impl ChannelEpilogue {
    /// Applies the map to `y`, `c = scale.len()` channels of `plane` values per image.
    pub fn apply(&self, y: &mut [f32], plane: usize) {
        let c = self.scale.len();
        if c == 0 || plane == 0 {
            return;
        }
        // One task per plane, or per few planes when planes are small.
        let per_task = (1 << 14) / plane + 1;
        y.par_chunks_mut(plane * per_task)
            .enumerate()
            .for_each(|(t, chunk)| {
                for (i, p) in chunk.chunks_mut(plane).enumerate() {
                    self.apply_row((t * per_task + i) % c, p);
                }
            });
    }

    /// Applies channel `ch`'s map to `row` (a kernel's [`RowMap`]).
    pub fn apply_row(&self, ch: usize, row: &mut [f32]) {
        map_row(row, self.scale[ch], self.shift[ch], self.clamp)
    }

    /// The same map as a kernel prologue would apply it (for `Clamp::Identity` and `Clamp::Relu`),
    /// which tests compare against.
    pub fn as_prologue(&self) -> Option<Prologue<'_, f32>> {
        let relu = match self.clamp {
            Clamp::Identity => false,
            Clamp::Relu => true,
            Clamp::Relu6 => return None,
        };
        Some(Prologue {
            scale: &self.scale,
            shift: &self.shift,
            relu,
        })
    }
}

impl InplaceOp1 for ChannelEpilogue {
    fn name(&self) -> &'static str {
        "octconv-channel-epilogue"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        let dims = layout.shape().dims();
        if dims.len() < 2 || dims[1] != self.scale.len() || self.shift.len() != self.scale.len() {
            bail!(
                "epilogue: {} channel maps for a tensor of shape {dims:?}",
                self.scale.len()
            )
        }
        let Some((start, end)) = layout.contiguous_offsets() else {
            bail!("epilogue: the tensor must be contiguous")
        };
        let CpuStorage::F32(v) = storage else {
            bail!("epilogue: only f32 is supported")
        };
        let plane: usize = dims[2..].iter().product();
        self.apply(&mut v[start..end], plane);
        Ok(())
    }
}

/// A ReLU or ReLU6 applied in place to a fresh tensor (the activation after a residual add).
#[derive(Clone, Copy, Debug)]
pub struct InPlaceClamp(pub Clamp);

impl InplaceOp1 for InPlaceClamp {
    fn name(&self) -> &'static str {
        "octconv-clamp-in-place"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        let Some((start, end)) = layout.contiguous_offsets() else {
            bail!("clamp in place: the tensor must be contiguous")
        };
        let CpuStorage::F32(v) = storage else {
            bail!("clamp in place: only f32 is supported")
        };
        let v = &mut v[start..end];
        match self.0 {
            Clamp::Identity => {}
            Clamp::Relu => clamp_all(v, relu),
            Clamp::Relu6 => clamp_all(v, relu6),
        }
        Ok(())
    }
}

#[inline(always)]
fn clamp_all(v: &mut [f32], f: impl Fn(f32) -> f32 + Sync) {
    v.par_chunks_mut(1 << 14).for_each(|c| {
        for v in c.iter_mut() {
            *v = f(*v);
        }
    });
}

/// The residual join `act(epi(y) + r)` of ResNet-style blocks as a kernel's row map: the batch
/// norm of the convolution before the sum (`epi`, whose clamp is ignored), then the same elements
/// of `residual`, then the sum's activation, each output row while it is in cache. Op by op the sum
/// is a pass of its own that reads the output and the residual again and writes a third map: the
/// add class of ResNeXt-50 at α = 0 took 17.7 ms of a 300 ms pass (batch 8, `octconv bench
/// --profile`); ONNX Runtime adds the residual as its convolution writes, too. The values equal the
/// separate map and sum ([`super::elementwise::sum_act`]: `(a·y + b) + r`, then the clamp) bit for
/// bit.
///
/// A [`RowMap`] is told a row's channel, not where the row lies, so the join finds a row's
/// residual by the row's place in the output buffer it was made for: only kernels that map rows of
/// that buffer itself may take it ([`super::conv2d::forward_post_into`],
/// [`super::pointwise::forward_post_into`]). A row from anywhere else panics as an internal error;
/// nothing is ever read out of bounds.
pub struct ResidualJoin<'a> {
    epi: &'a ChannelEpilogue,
    residual: &'a [f32],
    base: usize,
    clamp: Clamp,
}

impl<'a> ResidualJoin<'a> {
    /// The join of rows of `output` (the buffer the kernel writes, of `residual`'s length) with
    /// `residual`.
    pub fn new(
        epi: &'a ChannelEpilogue,
        output: &[f32],
        residual: &'a [f32],
        clamp: Clamp,
    ) -> Self {
        assert_eq!(
            output.len(),
            residual.len(),
            "residual join: an output of {} values and a residual of {}",
            output.len(),
            residual.len()
        );
        ResidualJoin {
            epi,
            residual,
            base: output.as_ptr() as usize,
            clamp,
        }
    }

    /// Maps row `row` of channel `ch` (a kernel's [`RowMap`]).
    pub fn apply_row(&self, ch: usize, row: &mut [f32]) {
        let at = (row.as_ptr() as usize).checked_sub(self.base);
        let r = at
            .map(|b| b / std::mem::size_of::<f32>())
            .and_then(|i| self.residual.get(i..i + row.len()));
        let Some(r) = r else {
            panic!("internal error: a residual join was handed a row outside its output")
        };
        add_row(row, r, self.epi.scale[ch], self.epi.shift[ch], self.clamp)
    }
}

wide_fn! {
    /// `row = act((a·row + b) + r)`, compiled for AVX2 too ([`wide_fn!`]).
    fn add_row(row: &mut [f32], r: &[f32], a: f32, b: f32, clamp: Clamp) {
        let pairs = row.iter_mut().zip(r);
        match clamp {
            Clamp::Identity => pairs.for_each(|(v, &r)| *v = identity((a * *v + b) + r)),
            Clamp::Relu => pairs.for_each(|(v, &r)| *v = relu((a * *v + b) + r)),
            Clamp::Relu6 => pairs.for_each(|(v, &r)| *v = relu6((a * *v + b) + r)),
        }
    }
}

wide_fn! {
    /// `row = act(a·row + b)`. Compiled for AVX2 too ([`wide_fn!`]): the portable build ran on
    /// 4-lane SSE2 vectors, 7.9 % of MobileNet v2's inference cycles at α = 0 (`perf`, AMD EPYC,
    /// AVX-512, batch 8), behind its 1×1 and depthwise kernels.
    fn map_row(row: &mut [f32], a: f32, b: f32, clamp: Clamp) {
        match clamp {
            Clamp::Identity => row.iter_mut().for_each(|v| *v = identity(a * *v + b)),
            Clamp::Relu => row.iter_mut().for_each(|v| *v = relu(a * *v + b)),
            Clamp::Relu6 => row.iter_mut().for_each(|v| *v = relu6(a * *v + b)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A residual join adds the residual's elements at the row's place in the output, after the
    /// affine map and before the clamp, and panics on a row from another buffer (never reading
    /// out of bounds).
    #[test]
    fn a_residual_join_adds_the_residual_at_the_rows_place_and_refuses_other_rows() {
        let ep = ChannelEpilogue {
            scale: vec![1.0, 2.0],
            shift: vec![0.0, -1.0],
            clamp: Clamp::Relu6,
        };
        let mut out: Vec<f32> = (0..10).map(|i| i as f32).collect();
        let residual: Vec<f32> = (0..10).map(|i| -0.5 * i as f32).collect();
        let join = ResidualJoin::new(&ep, &out, &residual, Clamp::Relu);
        join.apply_row(1, &mut out[3..7]);
        let want: Vec<f32> = (0..10)
            .map(|i| {
                let v = i as f32;
                match i {
                    3..7 => relu((2.0 * v - 1.0) + (-0.5 * v)),
                    _ => v,
                }
            })
            .collect();
        assert_eq!(out, want);
        let mut elsewhere = vec![1.0f32; 4];
        let refused = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            join.apply_row(0, &mut elsewhere)
        }));
        assert!(refused.is_err(), "a row outside the output was joined");
    }

    /// The row map (AVX2 build where the CPU has it) gives the scalar `act(a·y + b)` of every value
    /// bit for bit, NaN mapped to 0 by the clamps, for rows of every length around the vector widths.
    #[test]
    fn row_map_equals_the_scalar_affine_map_and_clamp_bit_for_bit() {
        let values: Vec<f32> = crate::kernels::test_values(67, 9)
            .into_iter()
            .map(|v| (v * 9.0) as f32)
            .chain([f32::NAN, f32::INFINITY, -f32::INFINITY, -0.0, 6.0])
            .collect();
        for (clamp, f) in [
            (Clamp::Identity, identity as fn(f32) -> f32),
            (Clamp::Relu, relu),
            (Clamp::Relu6, relu6),
        ] {
            let ep = ChannelEpilogue {
                scale: vec![1.0, 0.7],
                shift: vec![0.0, -0.3],
                clamp,
            };
            for len in [0, 1, 3, 7, 8, 9, 15, 16, 17, 31, 33, values.len()] {
                let mut row = values[..len].to_vec();
                ep.apply_row(1, &mut row);
                for (got, &v) in row.iter().zip(&values) {
                    let want = f(0.7 * v + -0.3);
                    assert!(
                        got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                        "{clamp:?} length {len}: {v} ↦ {got}, want {want}"
                    );
                }
            }
        }
    }
}
