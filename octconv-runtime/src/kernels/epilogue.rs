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

/// A convolution's bias and then its [`ChannelEpilogue`], in one pass in place on the fresh
/// output of the convolution without its bias: `act(a·(y + c) + b)` per channel, the values of the
/// bias added by its own op and then the map, bit for bit. The seed's plain network has a bias in
/// every convolution; its Winograd layers added it with candle's broadcast sum, a pass of its own
/// with a fresh tensor (8 % of the cycles of `seed_wrn(n = 2, k = 2)` at α = 0, `perf record`),
/// before the map's pass.
#[derive(Clone, Debug)]
pub struct BiasedEpilogue {
    /// Per-channel bias, added first.
    pub bias: Vec<f32>,
    /// The map after it.
    pub epi: ChannelEpilogue,
}

impl InplaceOp1 for BiasedEpilogue {
    fn name(&self) -> &'static str {
        "octconv-biased-epilogue"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        let dims = layout.shape().dims();
        let c = self.epi.scale.len();
        if dims.len() < 2 || dims[1] != c || self.bias.len() != c || self.epi.shift.len() != c {
            bail!("biased epilogue: {c} channel maps for a tensor of shape {dims:?}")
        }
        let Some((start, end)) = layout.contiguous_offsets() else {
            bail!("biased epilogue: the tensor must be contiguous")
        };
        let CpuStorage::F32(v) = storage else {
            bail!("biased epilogue: only f32 is supported")
        };
        let plane: usize = dims[2..].iter().product();
        if c == 0 || plane == 0 {
            return Ok(());
        }
        let e = &self.epi;
        v[start..end]
            .par_chunks_mut(plane)
            .enumerate()
            .for_each(|(p, row)| {
                let ch = p % c;
                biased_row(row, self.bias[ch], e.scale[ch], e.shift[ch], e.clamp)
            });
        Ok(())
    }
}

wide_fn! {
    /// `row = act(a·(row + c) + b)`, compiled for AVX2 too ([`wide_fn!`]).
    fn biased_row(row: &mut [f32], c: f32, a: f32, b: f32, clamp: Clamp) {
        match clamp {
            Clamp::Identity => row.iter_mut().for_each(|v| *v = identity(a * (*v + c) + b)),
            Clamp::Relu => row.iter_mut().for_each(|v| *v = relu(a * (*v + c) + b)),
            Clamp::Relu6 => row.iter_mut().for_each(|v| *v = relu6(a * (*v + c) + b)),
        }
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
/// [`super::pointwise::forward_post_into`], and [`super::octave::forward_staged_into`], whose
/// "rows" are whole planes of its output). A row from anywhere else panics as an internal error;
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
        let r = row_index(self.base, self.residual.len(), row)
            .map(|i| &self.residual[i..][..row.len()]);
        let Some(r) = r else {
            panic!("internal error: a residual join was handed a row outside its output")
        };
        add_row(row, r, self.epi.scale[ch], self.epi.shift[ch], self.clamp)
    }
}

/// The index in an output buffer of `len` values starting at address `base` at which `row` starts,
/// if the whole row lies in the buffer (how [`ResidualJoin`] and [`PlaneSums`] place the rows a
/// [`RowMap`] is handed).
fn row_index(base: usize, len: usize, row: &[f32]) -> Option<usize> {
    let i = (row.as_ptr() as usize).checked_sub(base)? / std::mem::size_of::<f32>();
    (i + row.len() <= len).then_some(i)
}

/// The sums of each image's channel planes of one output buffer, taken from the rows a kernel
/// maps ([`RowMap`]) while they are in cache: the global average pooling of a convolution's mapped
/// output without reading it back (squeeze-and-excitation's squeeze: 7.6 ms of an SE-ResNet-50
/// pass at α = 0, batch 8, each reading a block output of up to 25.7 MB from memory). As for
/// [`ResidualJoin`], a row's image is found from its place in the buffer, so only kernels that map
/// rows of the buffer itself may take it; a row from anywhere else panics as an internal error.
/// Each row is summed as the global pooling sums a plane ([`super::elementwise::plane_sum`]), the
/// rows in f64; the kernels map each image's rows on one thread in a fixed order, so the sums do not
/// depend on scheduling.
pub struct PlaneSums {
    base: usize,
    len: usize,
    image: usize,
    channels: usize,
    sums: Vec<std::sync::atomic::AtomicU64>,
}

impl PlaneSums {
    /// The sums of `output`, `n` images of `channels` planes each.
    pub fn new(output: &[f32], n: usize, channels: usize) -> Self {
        assert!(
            n > 0 && output.len().is_multiple_of(n),
            "plane sums: {} values in {n} images",
            output.len()
        );
        PlaneSums {
            base: output.as_ptr() as usize,
            len: output.len(),
            image: output.len() / n,
            channels,
            sums: (0..n * channels)
                .map(|_| std::sync::atomic::AtomicU64::new(0f64.to_bits()))
                .collect(),
        }
    }

    /// Adds row `row` of channel `ch` (after the kernel's map) to its plane's sum.
    pub fn add_row(&self, ch: usize, row: &[f32]) {
        use std::sync::atomic::Ordering::Relaxed;
        let at = row_index(self.base, self.len, row).filter(|_| ch < self.channels);
        let Some(i) = at else {
            panic!("internal error: plane sums were handed a row outside their output")
        };
        let sum = f64::from(super::elementwise::plane_sum(row));
        let slot = &self.sums[(i / self.image) * self.channels + ch];
        let _ = slot.fetch_update(Relaxed, Relaxed, |s| {
            Some((f64::from_bits(s) + sum).to_bits())
        });
    }

    /// Each image's plane means (`plane` values a plane), `[n, channels]` row-major.
    pub fn means(&self, plane: usize) -> Vec<f32> {
        self.sums
            .iter()
            .map(|s| {
                (f64::from_bits(s.load(std::sync::atomic::Ordering::Relaxed)) / plane as f64) as f32
            })
            .collect()
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

    /// The biased epilogue equals the bias's own sum and then the map, bit for bit (NaN, signed
    /// zeros and infinities included); with the identity map (scale 1, shift −0) it is the sum
    /// alone.
    #[test]
    fn biased_epilogue_equals_the_bias_sum_then_the_map_bit_for_bit() {
        use candle_core::{Device, Tensor};
        let values: Vec<f32> = crate::kernels::test_values(2 * 3 * 19, 4)
            .into_iter()
            .enumerate()
            .map(|(i, v)| match i % 23 {
                0 => f32::NAN,
                1 => -0.0,
                2 => f32::INFINITY,
                _ => (v * 5.0) as f32,
            })
            .collect();
        let bias = vec![0.25f32, -0.0, -3.5];
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for (scale, shift, clamp) in [
            (vec![0.5, 2.0, 1.5], vec![0.1, -0.2, 0.0], Clamp::Relu6),
            (vec![0.5, 2.0, 1.5], vec![0.1, -0.2, 0.0], Clamp::Identity),
            (vec![1.0; 3], vec![-0.0; 3], Clamp::Identity),
        ] {
            let epi = ChannelEpilogue {
                scale,
                shift,
                clamp,
            };
            let t = Tensor::from_vec(values.clone(), (2, 3, 19), &Device::Cpu).unwrap();
            t.inplace_op1(&BiasedEpilogue {
                bias: bias.clone(),
                epi: epi.clone(),
            })
            .unwrap();
            let got = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let mut want = values.clone();
            for (p, row) in want.chunks_mut(19).enumerate() {
                row.iter_mut().for_each(|v| *v += bias[p % 3]);
                epi.apply_row(p % 3, row);
            }
            assert_eq!(bits(&got), bits(&want), "{clamp:?}");
            if epi.scale == [1.0; 3] {
                let sums: Vec<f32> = values
                    .chunks(19)
                    .enumerate()
                    .flat_map(|(p, r)| r.iter().map(move |v| v + [0.25f32, -0.0, -3.5][p % 3]))
                    .collect();
                assert_eq!(bits(&got), bits(&sums), "the identity map is the sum alone");
            }
        }
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
