//! Inference kernels where values meet: the sum of several tensors with the activation after it in
//! the same pass (residual joins), and squeeze-and-excitation's per-channel scaling. candle's CPU
//! binary ops run on one thread and the activation after an add was a second pass; here every
//! output value is written once, by all threads. Values equal candle's (`(a + b) + c`, then the
//! activation; `x · gate`).

use super::epilogue::{identity, relu, relu6, Clamp};
use super::scratch::output_vec;
use super::simd::wide_fn;
use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Values per task.
const CHUNK: usize = 1 << 14;

/// `act(x₀ + x₁ + …)` element-wise, summed left to right; every input has the output's length.
pub fn sum_act(xs: &[&[f32]], clamp: Clamp) -> Vec<f32> {
    let len = xs.first().map_or(0, |x| x.len());
    // Every value is written: the first two inputs (or the only one) fill each chunk.
    let mut out = output_vec(len);
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(t, o)| {
        let (from, len) = (t * CHUNK, o.len());
        let r = from..from + len;
        let Some((first, rest)) = xs.split_first() else {
            return;
        };
        o.copy_from_slice(&first[r.clone()]);
        if rest.is_empty() {
            add_act_row(o, None, clamp);
        }
        // Each later input added in turn, the activation with the last one.
        for (i, x) in rest.iter().enumerate() {
            let act = if i + 1 == rest.len() {
                clamp
            } else {
                Clamp::Identity
            };
            add_act_row(o, Some(&x[r.clone()]), act);
        }
    });
    out
}

wide_fn! {
    /// `o = act(o + r)` (`o = act(o)` without `r`) element-wise, each activation in its own loop
    /// (the elementwise passes are compiled for AVX2 where the CPU has it; the portable build's
    /// loops ran 4 lanes wide). The identity activation of a partial sum leaves it as it is.
    fn add_act_row(o: &mut [f32], r: Option<&[f32]>, clamp: Clamp) {
        match (r, clamp) {
            (Some(r), Clamp::Identity) => o.iter_mut().zip(r).for_each(|(o, &b)| *o = identity(*o + b)),
            (Some(r), Clamp::Relu) => o.iter_mut().zip(r).for_each(|(o, &b)| *o = relu(*o + b)),
            (Some(r), Clamp::Relu6) => o.iter_mut().zip(r).for_each(|(o, &b)| *o = relu6(*o + b)),
            (None, Clamp::Identity) => {}
            (None, Clamp::Relu) => o.iter_mut().for_each(|o| *o = relu(*o)),
            (None, Clamp::Relu6) => o.iter_mut().for_each(|o| *o = relu6(*o)),
        }
    }
}

/// `y = act(y + r)` in place on two contiguous f32 tensors of one length: a residual sum written
/// into a fresh output that nothing else holds ([`crate::layers::OutputStage::join_fresh`]), the
/// same values as [`sum_act`] of `[y, r]` bit for bit, without a third map at the memory peak
/// (WRN-16-4's inference at α = 0 peaked 7 MiB higher with the sum in a new tensor while the
/// convolution's input was still alive).
pub struct SumActInPlace(pub Clamp);

impl candle_core::InplaceOp2 for SumActInPlace {
    fn name(&self) -> &'static str {
        "octconv-sum-act-in-place"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let (Some((a0, a1)), Some((b0, b1))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            bail!("sum in place: both tensors must be contiguous")
        };
        let (CpuStorage::F32(y), CpuStorage::F32(r)) = (s1, s2) else {
            bail!("sum in place: only f32 is supported")
        };
        if a1 - a0 != b1 - b0 {
            bail!(
                "sum in place: {} values and {} residual values",
                a1 - a0,
                b1 - b0
            )
        }
        let (y, r) = (&mut y[a0..a1], &r[b0..b1]);
        // Each activation inlined into its own vectorised loop ([`add_act_row`]): through a
        // function pointer (as this was) every value cost a call, and the join of WRN-16-4's
        // identity-residual layers took 1–2 ms of their 5–7 ms at batch 32 (`perf`: the loop and
        // `identity` 13 % of a one-block pass; Intel Xeon, 2 threads).
        let clamp = self.0;
        y.par_chunks_mut(CHUNK)
            .zip(r.par_chunks(CHUNK))
            .for_each(|(o, r)| add_act_row(o, Some(r), clamp));
        Ok(())
    }
}

/// `x · gate` per plane: plane `p` (`plane` values) of `x` times `gates[p]` (one gate per image and
/// channel, `[N, C]` against `[N, C, H, W]`).
pub fn scale_planes(x: &[f32], gates: &[f32], plane: usize) -> Vec<f32> {
    per_plane(x.len(), plane, |k, o| {
        let g = gates[k];
        for (o, &v) in o.iter_mut().zip(&x[k * plane..][..plane]) {
            *o = v * g;
        }
    })
}

/// A fresh output of `len` values in which `fill(k, out)` writes every value of plane `k` (`plane`
/// values), planes in parallel (a few per task where they are small).
fn per_plane(len: usize, plane: usize, fill: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
    // Every value is written, plane by plane (`fill` writes all of its plane).
    let mut out = output_vec(len);
    if plane == 0 {
        return out;
    }
    let per_task = CHUNK / plane + 1;
    out.par_chunks_mut(plane * per_task)
        .enumerate()
        .for_each(|(t, o)| {
            for (i, p) in o.chunks_mut(plane).enumerate() {
                fill(t * per_task + i, p);
            }
        });
    out
}

/// `act(x · gate + r)` per plane: [`scale_planes`] and the residual sum [`sum_act`] of its result
/// and `r` in one pass, the scaled map never written (squeeze-and-excitation's scaling before the
/// residual join). The values equal those of the two passes bit for bit: the same product in f32,
/// then the same sum (a sum of two is the same in either order), then the same activation.
pub fn scale_add_act(x: &[f32], gates: &[f32], plane: usize, r: &[f32], clamp: Clamp) -> Vec<f32> {
    per_plane(x.len(), plane, |k, o| {
        let (xs, rs) = (&x[k * plane..][..plane], &r[k * plane..][..plane]);
        scale_add_row(o, xs, gates[k], rs, clamp);
    })
}

wide_fn! {
    /// `o = act(x · g + r)` element-wise (the product rounded, then the sum: no fused
    /// multiply-add), each activation in its own loop, compiled for AVX2 where the CPU has it.
    fn scale_add_row(o: &mut [f32], x: &[f32], g: f32, r: &[f32], clamp: Clamp) {
        let values = o.iter_mut().zip(x).zip(r);
        match clamp {
            Clamp::Identity => values.for_each(|((o, &v), &b)| *o = identity(v * g + b)),
            Clamp::Relu => values.for_each(|((o, &v), &b)| *o = relu(v * g + b)),
            Clamp::Relu6 => values.for_each(|((o, &v), &b)| *o = relu6(v * g + b)),
        }
    }
}

/// The mean of each plane of `plane` values in `x` (global average pooling: `[N, C, H, W]` →
/// `[N, C]`), planes in parallel. Each sum runs in 16 lanes (value `i` into lane `i mod 16`, then
/// the lanes in order, then the tail), a fixed order whatever the thread count. candle's `mean`
/// summed on one thread: 3.0 ms of SE-ResNet-50's pass at batch 8 for its 17 poolings (`octconv
/// bench --profile`, AMD EPYC, 2 threads).
pub fn plane_means(x: &[f32], plane: usize) -> Vec<f32> {
    if plane == 0 {
        return Vec::new();
    }
    let planes = x.len() / plane;
    let mut out = vec![0.0; planes];
    let per_task = CHUNK / plane + 1;
    out.par_chunks_mut(per_task).enumerate().for_each(|(t, o)| {
        for (i, m) in o.iter_mut().enumerate() {
            let k = t * per_task + i;
            *m = plane_sum(&x[k * plane..][..plane]) / plane as f32;
        }
    });
    out
}

/// Global average pooling of an f32 `[N, C, H, W]` tensor as a candle op ([`plane_means`] forward,
/// `[N, C]` out), so that inference, the planned training step and autograd all compute the same
/// values; its gradient is the incoming one spread evenly over each plane (`dy / (H·W)`, as
/// candle's `mean` gives).
#[derive(Clone, Copy, Debug)]
pub struct PlaneMeans;

impl CustomOp1 for PlaneMeans {
    fn name(&self) -> &'static str {
        "octconv-plane-means"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l.shape().dims4()?;
        let (CpuStorage::F32(v), Some((a, b))) = (s, l.contiguous_offsets()) else {
            bail!("plane means: a contiguous f32 tensor is required")
        };
        let m = plane_means(&v[a..b], h * w);
        Ok((CpuStorage::F32(m), Shape::from((n, c))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (n, c, h, w) = arg.dims4()?;
        let g = grad.affine(1.0 / (h * w) as f64, 0.0)?;
        Ok(Some(
            g.reshape((n, c, 1, 1))?
                .broadcast_as((n, c, h, w))?
                .contiguous()?,
        ))
    }
}

wide_fn! {
    /// `Σ v` in 16 lanes, then the lanes in order, then the values past the last full 16.
    pub(crate) fn plane_sum(v: &[f32]) -> f32 {
        let mut lanes = [0.0f32; 16];
        let mut chunks = v.chunks_exact(16);
        for c in &mut chunks {
            for (l, &x) in lanes.iter_mut().zip(c) {
                *l += x;
            }
        }
        let mut s = 0.0;
        for l in lanes {
            s += l;
        }
        for &x in chunks.remainder() {
            s += x;
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sums of one to four inputs (lengths around a chunk) with each activation equal the scalar
    /// loop, bit for bit.
    #[test]
    fn sum_act_equals_the_scalar_sum_then_the_activation_bit_for_bit() {
        for len in [0, 1, 5, CHUNK - 1, CHUNK, 2 * CHUNK + 7] {
            let x: Vec<Vec<f32>> = (0..4)
                .map(|k| {
                    (0..len)
                        .map(|i| ((i * 7919 + k * 104729) % 2003) as f32 / 97.0 - 10.0)
                        .collect()
                })
                .collect();
            for n in 1..=4 {
                let xs: Vec<&[f32]> = x[..n].iter().map(|v| v.as_slice()).collect();
                for (clamp, f) in [
                    (Clamp::Identity, identity as fn(f32) -> f32),
                    (Clamp::Relu, relu),
                    (Clamp::Relu6, relu6),
                ] {
                    let got = sum_act(&xs, clamp);
                    assert_eq!(got.len(), len);
                    for (i, g) in got.iter().enumerate() {
                        let mut s = xs[0][i];
                        for x in &xs[1..] {
                            s += x[i];
                        }
                        assert_eq!(g.to_bits(), f(s).to_bits(), "{n} inputs, {clamp:?}, [{i}]");
                    }
                }
            }
        }
    }

    /// The in-place residual join (`y = act(y + r)`) gives [`sum_act`]'s values bit for bit for
    /// every activation, on chunk edges and on a tensor view that starts inside its storage.
    #[test]
    fn sum_in_place_equals_sum_act_bit_for_bit() {
        use candle_core::Device;
        for len in [1, 5, CHUNK + 3] {
            let v = |k: usize| -> Vec<f32> {
                (0..len + 2)
                    .map(|i| ((i * 7919 + k * 104729) % 2003) as f32 / 97.0 - 10.0)
                    .collect()
            };
            let (y0, r0) = (v(1), v(2));
            for clamp in [Clamp::Identity, Clamp::Relu, Clamp::Relu6] {
                let want = sum_act(&[&y0[2..], &r0[..len]], clamp);
                let y = Tensor::from_vec(y0.clone(), len + 2, &Device::Cpu).unwrap();
                let y = y.narrow(0, 2, len).unwrap();
                let r = Tensor::from_slice(&r0[..len], len, &Device::Cpu).unwrap();
                y.inplace_op2(&r, &SumActInPlace(clamp)).unwrap();
                let got = y.to_vec1::<f32>().unwrap();
                let same = got
                    .iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{clamp:?}, {len} values");
            }
        }
    }

    /// Each plane is multiplied by its own gate, for planes of 1 value to more than a chunk.
    #[test]
    fn scale_planes_multiplies_each_plane_by_its_gate() {
        for (planes, plane) in [(1, 1), (6, 49), (3, CHUNK + 3), (700, 30)] {
            let x: Vec<f32> = (0..planes * plane)
                .map(|i| (i % 37) as f32 - 18.0)
                .collect();
            let gates: Vec<f32> = (0..planes).map(|p| p as f32 / 7.0 - 1.0).collect();
            let got = scale_planes(&x, &gates, plane);
            assert_eq!(got.len(), x.len());
            for (i, g) in got.iter().enumerate() {
                assert_eq!(*g, x[i] * gates[i / plane], "plane {}, [{i}]", i / plane);
            }
        }
    }

    /// The fused scale-add equals the scaling pass, then the sum and activation pass, bit for bit,
    /// for planes of 1 value to more than a chunk and each activation.
    #[test]
    fn scale_add_act_equals_scale_planes_then_sum_act_bit_for_bit() {
        for (planes, plane) in [(1, 1), (6, 49), (3, CHUNK + 3), (700, 30)] {
            let x: Vec<f32> = (0..planes * plane)
                .map(|i| ((i * 7919) % 2003) as f32 / 97.0 - 10.0)
                .collect();
            let r: Vec<f32> = (0..planes * plane)
                .map(|i| ((i * 104729) % 1009) as f32 / 53.0 - 9.0)
                .collect();
            let gates: Vec<f32> = (0..planes).map(|p| p as f32 / 7.0 - 1.3).collect();
            for clamp in [Clamp::Identity, Clamp::Relu, Clamp::Relu6] {
                let got = scale_add_act(&x, &gates, plane, &r, clamp);
                let scaled = scale_planes(&x, &gates, plane);
                for want in [
                    sum_act(&[&scaled, &r], clamp),
                    sum_act(&[&r, &scaled], clamp),
                ] {
                    assert_eq!(got.len(), want.len());
                    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                        assert_eq!(g.to_bits(), w.to_bits(), "{clamp:?}, plane {plane}, [{i}]");
                    }
                }
            }
        }
    }

    /// Each plane's mean is the lane-ordered sum over its size, for sizes around the 16 lanes.
    #[test]
    fn plane_means_sum_each_plane_in_sixteen_lanes_then_the_tail() {
        for (planes, plane) in [
            (1, 1),
            (5, 15),
            (3, 16),
            (4, 17),
            (2, 49),
            (700, 30),
            (2, 3136),
        ] {
            let x: Vec<f32> = (0..planes * plane)
                .map(|i| ((i * 7919) % 101) as f32 / 13.0 - 3.0)
                .collect();
            let got = plane_means(&x, plane);
            assert_eq!(got.len(), planes);
            for (p, &m) in got.iter().enumerate() {
                let v = &x[p * plane..][..plane];
                let mut lanes = [0.0f32; 16];
                for (i, &x) in v[..plane / 16 * 16].iter().enumerate() {
                    lanes[i % 16] += x;
                }
                let mut s = lanes.iter().fold(0.0f32, |a, &l| a + l);
                for &x in &v[plane / 16 * 16..] {
                    s += x;
                }
                assert_eq!(
                    m.to_bits(),
                    (s / plane as f32).to_bits(),
                    "plane {p} of {plane}"
                );
                let exact = v.iter().map(|&x| x as f64).sum::<f64>() / plane as f64;
                assert!((m as f64 - exact).abs() <= 1e-5 * (1.0 + exact.abs()));
            }
        }
    }

    /// The op's means agree with candle's `mean` to rounding, and its gradient equals candle's
    /// (`dy / (H·W)` on every value of the plane) exactly.
    #[test]
    fn plane_means_op_matches_candle_mean_and_its_gradient() {
        use candle_core::{Device, Var};
        let dev = Device::Cpu;
        let (n, c, h, w) = (2, 3, 5, 7);
        let xv: Vec<f32> = (0..n * c * h * w)
            .map(|i| ((i * 37) % 23) as f32 / 5.0 - 2.0)
            .collect();
        let x = Var::from_vec(xv, (n, c, h, w), &dev).unwrap();
        let r = Tensor::from_vec(
            (0..n * c).map(|i| i as f32 - 2.5).collect::<Vec<f32>>(),
            (n, c),
            &dev,
        )
        .unwrap();
        let ours = x.as_tensor().apply_op1(PlaneMeans).unwrap();
        let theirs = x.as_tensor().mean((2, 3)).unwrap();
        let (a, b) = (
            ours.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            theirs.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        for (p, q) in a.iter().zip(&b) {
            assert!((p - q).abs() <= 1e-6 * (1.0 + q.abs()), "{p} vs {q}");
        }
        let grad = |y: &Tensor| {
            let g = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            g.get(x.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        assert_eq!(grad(&ours), grad(&theirs));
    }
}
