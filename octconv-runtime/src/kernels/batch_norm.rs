//! Batch normalisation over `[N, C, …]` as custom ops: training forward in two passes (per-channel
//! statistics, then `a·x + b`), backward in one op of two passes (per-channel sums, then `dx`, the
//! ReLU's mask applied as the gradient is read), and inference as one per-channel affine pass.
//!
//! Sums run in f64, in 8 independent lanes: one chain of dependent f64 additions per value was most of
//! the time of these memory-bound passes. (f32 lanes were faster still, but a deep network at batch 2
//! has batch norms so ill-conditioned that DenseNet's gradients then moved 2 % from the f64 ones.) The
//! statistics sum `x − x₀` (`x₀` the channel's first value), so the variance does not cancel when the
//! mean is large against the spread.
//!
//! candle-nn's BatchNorm transposes and copies the input, then runs about ten separate tensor ops
//! (each allocating a full-size result) forward and more backward; on a small wide ResNet that was
//! a larger share of a training step than the convolutions.

use super::epilogue::Clamp;
use super::simd::wide_fn;
use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

/// Batch statistics of one forward pass, per channel: mean and `1 / sqrt(var + eps)` (biased var).
#[derive(Clone, Debug, Default)]
pub struct BatchStats {
    /// Mean over the batch and spatial positions.
    pub mean: Vec<f64>,
    /// Biased variance.
    pub var: Vec<f64>,
    /// `1 / sqrt(var + eps)`.
    pub inv_std: Vec<f64>,
    /// Values per channel (`N · H · W`).
    pub count: usize,
    /// The forward's map `y = a · x + b` per channel, `(a, b)` as it applied them in f32: the backward
    /// recomputes from `x` where the activation let a value through, instead of reading `y`.
    pub map: Vec<(f32, f32)>,
}

/// `(n, c, inner)`: batch, channels, values per channel and image.
type Dims3 = (usize, usize, usize);

/// The [`Dims3`] of a contiguous f32 `[N, C, …]` argument, and its data.
fn data<'a>(s: &'a CpuStorage, l: &Layout) -> Result<(Dims3, &'a [f32])> {
    let d = l.shape().dims();
    if d.len() < 2 {
        bail!("batch norm: input must have at least 2 dimensions, got {d:?}")
    }
    let inner: usize = d[2..].iter().product();
    Ok(((d[0], d[1], inner), contiguous(s, l)?))
}

/// Whether `l` lays out each image (the values past the first dimension) contiguously, images
/// `stride[0]` apart: a contiguous tensor, or the first channels of one (a concatenation chain's
/// buffer, [`crate::exec`]).
pub fn images_contiguous(l: &Layout) -> bool {
    let (d, st) = (l.shape().dims(), l.stride());
    let mut want = 1;
    for k in (1..d.len()).rev() {
        if d[k] > 1 && st[k] != want {
            return false;
        }
        want *= d[k];
    }
    d.len() >= 2 && (d[0] <= 1 || st[0] >= want)
}

/// Where the data of a layout whose images are each contiguous ([`images_contiguous`], at least two
/// dimensions) lies: its first value, how many values from there, and the distance between images.
pub fn image_span(l: &Layout) -> Option<(usize, usize, usize)> {
    let d = l.shape().dims();
    if d.len() < 2 || !images_contiguous(l) {
        return None;
    }
    let (n, per_image) = (d[0], d[1..].iter().product::<usize>());
    let image = if n > 1 { l.stride()[0] } else { per_image };
    let len = if n == 0 {
        0
    } else {
        (n - 1) * image + per_image
    };
    Some((l.start_offset(), len, image))
}

/// The f32 data of an argument whose images are each contiguous ([`images_contiguous`]): its dims
/// `(n, c, inner)`, the data from the first value on, and the distance between images.
fn images<'a>(s: &'a CpuStorage, l: &Layout) -> Result<(Dims3, &'a [f32], usize)> {
    let d = l.shape().dims();
    let Some((start, len, image)) = image_span(l) else {
        bail!(
            "batch norm kernel: each image must be contiguous (got {d:?}, strides {:?})",
            l.stride()
        )
    };
    let (n, c, inner) = (d[0], d[1], d[2..].iter().product::<usize>());
    match s {
        CpuStorage::F32(v) if start + len <= v.len() => {
            Ok(((n, c, inner), &v[start..start + len], image))
        }
        CpuStorage::F32(_) => bail!("batch norm kernel: the layout runs past its storage"),
        _ => bail!("batch norm kernel: only f32 is supported"),
    }
}

/// The contiguous f32 data of an argument.
fn contiguous<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let Some((start, end)) = l.contiguous_offsets() else {
        bail!("batch norm kernel: arguments must be contiguous")
    };
    match s {
        CpuStorage::F32(v) => Ok(&v[start..end]),
        _ => bail!("batch norm kernel: only f32 is supported"),
    }
}

fn vec1(s: &CpuStorage, l: &Layout, c: usize) -> Result<Vec<f64>> {
    let v = contiguous(s, l)?;
    if v.len() != c {
        bail!(
            "batch norm: parameter has {} values for {c} channels",
            v.len()
        )
    }
    Ok(v.iter().map(|&v| v as f64).collect())
}

/// Per-channel sums of two quantities, channels in parallel: `f(ch, off, plane)` sums one plane (the
/// values of channel `ch` in one image, starting at `off`).
fn channel_sums(
    x: &[f32],
    (n, c, inner): (usize, usize, usize),
    f: impl Fn(usize, usize, &[f32]) -> (f64, f64) + Sync,
) -> Vec<(f64, f64)> {
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let mut acc = (0.0, 0.0);
            for b in 0..n {
                let off = (b * c + ch) * inner;
                let (s1, s2) = f(ch, off, &x[off..off + inner]);
                acc.0 += s1;
                acc.1 += s2;
            }
            acc
        })
        .collect()
}

/// Values summed in f32 lanes before the lanes are added to the f64 totals: each of the 16 lanes
/// sums 4 values, so the f32 rounding stays at a few units in the last place.
const BLOCK: usize = 64;

/// `Σ_i (u_i, v_i)` for `(u_i, v_i) = f([c[i] for c in cols])` over equally long columns: 16 f32
/// lanes per [`BLOCK`] values, totals in f64. The lanes are filled 16 values at a time from
/// fixed-size windows, which the compiler keeps in vector registers (indexing the lanes by `i % 16`
/// kept them on the stack, one scalar at a time).
#[inline(always)]
fn lane_sums<const K: usize>(cols: [&[f32]; K], f: impl Fn([f32; K]) -> (f32, f32)) -> (f64, f64) {
    const L: usize = 16;
    let len = cols.iter().map(|c| c.len()).min().unwrap_or(0);
    let (mut s, mut q) = (0f64, 0f64);
    let full = len / BLOCK * BLOCK;
    for base in (0..full).step_by(BLOCK) {
        let (mut ls, mut lq) = ([0f32; L], [0f32; L]);
        for start in (base..base + BLOCK).step_by(L) {
            let w: [&[f32; L]; K] =
                cols.map(|c| c[start..start + L].try_into().expect("16 values"));
            for l in 0..L {
                let (u, v) = f(w.map(|c| c[l]));
                ls[l] += u;
                lq[l] += v;
            }
        }
        s += ls.iter().map(|&v| v as f64).sum::<f64>();
        q += lq.iter().map(|&v| v as f64).sum::<f64>();
    }
    for i in full..len {
        let (u, v) = f(cols.map(|c| c[i]));
        s += u as f64;
        q += v as f64;
    }
    (s, q)
}

/// The activation a batch-norm kernel applies to its output, `min(max(y, 0), cap)`, as its cap:
/// ∞ for ReLU, 6 for ReLU6, `None` for no activation.
pub fn cap_of(act: Clamp) -> Option<f32> {
    match act {
        Clamp::Identity => None,
        Clamp::Relu => Some(f32::INFINITY),
        Clamp::Relu6 => Some(6.0),
    }
}

/// 1 where the activation's output `y` (or its input: the same test) is strictly between 0 and
/// `cap` (its gradient passes), else 0: a product instead of a branch, which mispredicted on every
/// other value of a ReLU's random mask. At a pre-activation of exactly 0 (or 6) the gradient is 0
/// here; candle's `relu` passes it at 0, and [`super::clamp`]'s ReLU6 at 6.
#[inline(always)]
fn pass(y: f32, cap: f32) -> f32 {
    f32::from(u8::from((y > 0.0) & (y < cap)))
}

/// The activation after a training batch norm as its backward tests it: `(a, b, cap)`, the value
/// `a · x + b` passing where it is in `(0, cap)`.
type Gate = (f32, f32, f32);

/// `(Σ (x − shift), Σ (x − shift)²)` over a plane, in f64 throughout (the variance of an
/// ill-conditioned batch norm, a deep network at batch 2, moved its gradients by 1 % in f32 lanes):
/// eight lanes, value `i` in lane `i mod 8`, the lanes added in order at the end. The AVX2 build
/// converts eight values at a time with intrinsics (the compiler left the portable loop's f32 → f64
/// conversions scalar); both run the same operations in the same order, so they agree bit for bit.
fn shifted_sums(x: &[f32], shift: f32) -> (f64, f64) {
    #[cfg(target_arch = "x86_64")]
    if super::simd::has_avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA (checked at run time).
        return unsafe { shifted_sums_avx2(x, shift) };
    }
    shifted_sums_portable(x, shift)
}

/// [`shifted_sums`] on any CPU.
fn shifted_sums_portable(x: &[f32], shift: f32) -> (f64, f64) {
    const L: usize = 8;
    let shift = shift as f64;
    let (mut s, mut q) = ([0f64; L], [0f64; L]);
    let mut chunks = x.chunks_exact(L);
    for c in &mut chunks {
        for l in 0..L {
            let d = c[l] as f64 - shift;
            s[l] += d;
            q[l] += d * d;
        }
    }
    for &v in chunks.remainder() {
        let d = v as f64 - shift;
        s[0] += d;
        q[0] += d * d;
    }
    (s.iter().sum(), q.iter().sum())
}

/// [`shifted_sums`] with AVX2 intrinsics.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn shifted_sums_avx2(x: &[f32], shift: f32) -> (f64, f64) {
    use std::arch::x86_64::*;
    let sh = _mm256_set1_pd(shift as f64);
    let (mut s_lo, mut s_hi) = (_mm256_setzero_pd(), _mm256_setzero_pd());
    let (mut q_lo, mut q_hi) = (_mm256_setzero_pd(), _mm256_setzero_pd());
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        // SAFETY: `c` holds 8 values; unaligned loads.
        let v = unsafe { _mm256_loadu_ps(c.as_ptr()) };
        // Lanes 0–3 and 4–7 of the portable loop.
        let d_lo = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v)), sh);
        let d_hi = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_extractf128_ps::<1>(v)), sh);
        s_lo = _mm256_add_pd(s_lo, d_lo);
        s_hi = _mm256_add_pd(s_hi, d_hi);
        q_lo = _mm256_add_pd(q_lo, _mm256_mul_pd(d_lo, d_lo));
        q_hi = _mm256_add_pd(q_hi, _mm256_mul_pd(d_hi, d_hi));
    }
    let (mut s, mut q) = ([0f64; 8], [0f64; 8]);
    // SAFETY: each array holds 8 values; unaligned stores of 4 at offsets 0 and 4.
    unsafe {
        _mm256_storeu_pd(s.as_mut_ptr(), s_lo);
        _mm256_storeu_pd(s.as_mut_ptr().add(4), s_hi);
        _mm256_storeu_pd(q.as_mut_ptr(), q_lo);
        _mm256_storeu_pd(q.as_mut_ptr().add(4), q_hi);
    }
    let shift = shift as f64;
    for &v in chunks.remainder() {
        let d = v as f64 - shift;
        s[0] += d;
        q[0] += d * d;
    }
    (s.iter().sum(), q.iter().sum())
}

wide_fn! {
    /// `(Σ dy', Σ dy' · (x − mean))` over a plane, `dy' = dy` where the activation after the batch
    /// norm let the value through ([`Gate`]), or everywhere without one.
    fn grad_sums(x: &[f32], dy: &[f32], gate: Option<Gate>, mean: f32) -> (f64, f64) {
        let dy = &dy[..x.len()];
        match gate {
            Some((a, b, cap)) => lane_sums([x, dy], |[x, dy]| {
                let g = dy * pass(a * x + b, cap);
                (g, g * (x - mean))
            }),
            None => lane_sums([x, dy], |[x, dy]| (dy, dy * (x - mean))),
        }
    }
}

wide_fn! {
    /// `o = a · x + b` (then `min(max(·, 0), cap)` with a cap) over a plane.
    fn affine_plane(o: &mut [f32], x: &[f32], a: f32, b: f32, cap: Option<f32>) {
        match cap {
            Some(cap) => o
                .iter_mut()
                .zip(x)
                .for_each(|(o, &x)| *o = (a * x + b).max(0f32).min(cap)),
            None => o.iter_mut().zip(x).for_each(|(o, &x)| *o = a * x + b),
        }
    }
}

wide_fn! {
    /// `dx = k · dy' + a · x + b` over a plane (`dy'` as in [`grad_sums`]).
    fn grad_input_plane(
        dx: &mut [f32],
        x: &[f32],
        dy: &[f32],
        gate: Option<Gate>,
        kab: (f32, f32, f32),
    ) {
        let (k, a, b) = kab;
        match gate {
            Some((ga, gb, cap)) => {
                for ((o, &x), &g) in dx.iter_mut().zip(x).zip(dy) {
                    *o = k * (g * pass(ga * x + gb, cap)) + a * x + b;
                }
            }
            None => {
                for ((o, &x), &g) in dx.iter_mut().zip(x).zip(dy) {
                    *o = k * g + a * x + b;
                }
            }
        }
    }
}

/// `out[b, ch, i] = a[ch] · x[b, ch, i] + b[ch]` (then `min(max(·, 0), cap)` with a cap), planes in
/// parallel.
fn affine(
    x: &[f32],
    (c, inner): (usize, usize),
    a: &[f64],
    b: &[f64],
    cap: Option<f32>,
) -> Vec<f32> {
    // Every element is written: the planes cover the output.
    let mut out = super::scratch::output_vec(x.len());
    if inner == 0 {
        return out;
    }
    out.par_chunks_mut(inner)
        .zip(x.par_chunks(inner))
        .enumerate()
        .for_each(|(p, (o, xs))| {
            let ch = p % c;
            affine_plane(o, xs, a[ch] as f32, b[ch] as f32, cap);
        });
    out
}

/// [`affine`] of `n` images that lie `image` values apart in `x` (each one contiguous): the output is
/// contiguous.
fn affine_strided(
    x: &[f32],
    (n, c, inner): Dims3,
    image: usize,
    a: &[f64],
    b: &[f64],
    cap: Option<f32>,
) -> Vec<f32> {
    // Every element is written: the planes cover the output.
    let mut out = super::scratch::output_vec(n * c * inner);
    if inner == 0 {
        return out;
    }
    out.par_chunks_mut(inner).enumerate().for_each(|(p, o)| {
        let (i, ch) = (p / c, p % c);
        let xs = &x[i * image + ch * inner..][..inner];
        affine_plane(o, xs, a[ch] as f32, b[ch] as f32, cap);
    });
    out
}

/// Training-mode batch norm `(x, weight, bias) → y` with batch statistics; the statistics are left
/// in [`BatchNormTrain::stats`] for the running averages and the backward.
#[derive(Clone, Debug)]
pub struct BatchNormTrain {
    /// Added to the variance.
    pub eps: f64,
    /// Filled by the forward pass.
    pub stats: Arc<Mutex<BatchStats>>,
    /// The activation applied to the output ([`cap_of`]; BN + ReLU or ReLU6 in one pass, the
    /// backward masks the gradient).
    pub cap: Option<f32>,
}

impl CustomOp3 for BatchNormTrain {
    fn name(&self) -> &'static str {
        "octconv-batch-norm-train"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _t = super::timing::span("batch norm forward (train)");
        let ((n, c, inner), x) = data(xs, xl)?;
        let (gamma, beta) = (vec1(ws, wl, c)?, vec1(bs, bl, c)?);
        let count = n * inner;
        if count == 0 {
            bail!(
                "batch norm: no values per channel (input {:?})",
                xl.shape().dims()
            )
        }
        // Sums of x − x₀ per channel (x₀: the channel's first value).
        let shift = |ch: usize| x[ch * inner];
        let sums = channel_sums(x, (n, c, inner), |ch, _, v| shifted_sums(v, shift(ch)));
        let mut st = BatchStats {
            count,
            ..Default::default()
        };
        for (ch, (s, q)) in sums.into_iter().enumerate() {
            let d = s / count as f64;
            let mean = shift(ch) as f64 + d;
            let var = (q / count as f64 - d * d).max(0.0);
            st.mean.push(mean);
            st.var.push(var);
            st.inv_std.push(1.0 / (var + self.eps).sqrt());
        }
        let a: Vec<f64> = (0..c).map(|ch| gamma[ch] * st.inv_std[ch]).collect();
        let b: Vec<f64> = (0..c).map(|ch| beta[ch] - st.mean[ch] * a[ch]).collect();
        let y = affine(x, (c, inner), &a, &b, self.cap);
        st.map = a
            .iter()
            .zip(&b)
            .map(|(&a, &b)| (a as f32, b as f32))
            .collect();
        *self
            .stats
            .lock()
            .map_err(|_| candle_core::Error::Msg("stats poisoned".into()))? = st;
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let stats = self
            .stats
            .lock()
            .map_err(|_| candle_core::Error::Msg("stats poisoned".into()))?
            .clone();
        let sums = Arc::new(Mutex::new(Vec::new()));
        let op = BatchNormBackward {
            stats,
            gamma: weight.to_dtype(candle_core::DType::F64)?.to_vec1()?,
            cap: self.cap,
            sums: sums.clone(),
        };
        let dx = x.apply_op2_no_bwd(&grad.contiguous()?, &op)?;
        let sums = std::mem::take(
            &mut *sums
                .lock()
                .map_err(|_| candle_core::Error::Msg("sums poisoned".into()))?,
        );
        let c = sums.len() / 2;
        let dbeta = Tensor::from_slice(&sums[..c], c, x.device())?;
        let dgamma = Tensor::from_slice(&sums[c..], c, x.device())?;
        Ok((Some(dx), Some(dgamma), Some(dbeta)))
    }
}

/// The whole training-mode backward `(x, dy) → dx` of a batch norm (with the activation after it
/// when `cap` is set: `dy` counts where `0 < y < cap`, `y` recomputed from `x` by the forward's map
/// rather than read), leaving `[Σ dy, Σ dy · x̂]` (the gradients of β and γ) in
/// `sums`. Two passes: the per-channel sums, then `dx = γ · inv_std · (dy − Σdy / M − x̂ · Σ(dy·x̂) / M)`;
/// the masked gradient is never written.
#[derive(Clone, Debug)]
struct BatchNormBackward {
    stats: BatchStats,
    gamma: Vec<f64>,
    cap: Option<f32>,
    sums: Arc<Mutex<Vec<f32>>>,
}

impl CustomOp2 for BatchNormBackward {
    fn name(&self) -> &'static str {
        "octconv-batch-norm-backward"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _t = super::timing::span("batch norm backward");
        let ((n, c, inner), x) = data(xs, xl)?;
        let g = contiguous(gs, gl)?;
        let st = &self.stats;
        if g.len() != x.len() || (self.cap.is_some() && st.map.len() != c) {
            bail!(
                "batch norm backward: {} gradients for {} inputs of {c} channels",
                g.len(),
                x.len()
            )
        }
        let gate = |ch: usize| self.cap.map(|cap| (st.map[ch].0, st.map[ch].1, cap));
        let sums = channel_sums(x, (n, c, inner), |ch, off, xv| {
            grad_sums(xv, &g[off..], gate(ch), st.mean[ch] as f32)
        });
        // Σ dy and Σ dy · x̂ = inv_std · Σ dy · (x − mean).
        let sum_dy: Vec<f64> = sums.iter().map(|s| s.0).collect();
        let sum_dyx: Vec<f64> = (0..c).map(|ch| sums[ch].1 * st.inv_std[ch]).collect();
        let m = st.count as f64;
        // dx = k·dy' + a·x + b with k = γ·is, a = −k·is·Σ(dy x̂)/M, b = −k·Σdy/M − a·mean.
        let k: Vec<f64> = (0..c).map(|ch| self.gamma[ch] * st.inv_std[ch]).collect();
        let a: Vec<f64> = (0..c)
            .map(|ch| -k[ch] * st.inv_std[ch] * sum_dyx[ch] / m)
            .collect();
        let b: Vec<f64> = (0..c)
            .map(|ch| -k[ch] * sum_dy[ch] / m - a[ch] * st.mean[ch])
            .collect();
        // Every element is written: the planes cover `dx`.
        let mut dx = super::scratch::output_vec(x.len());
        if inner > 0 {
            dx.par_chunks_mut(inner).enumerate().for_each(|(p, o)| {
                let ch = p % c;
                let (k, a, b) = (k[ch] as f32, a[ch] as f32, b[ch] as f32);
                let off = p * inner;
                let (xv, gv) = (&x[off..off + inner], &g[off..off + inner]);
                grad_input_plane(o, xv, gv, gate(ch), (k, a, b));
            });
        }
        let mut out: Vec<f32> = sum_dy.iter().map(|&v| v as f32).collect();
        out.extend(sum_dyx.iter().map(|&v| v as f32));
        *self
            .sums
            .lock()
            .map_err(|_| candle_core::Error::Msg("sums poisoned".into()))? = out;
        Ok((CpuStorage::F32(dx), xl.shape().clone()))
    }
}

/// `[Σ dy, Σ dy · x̂]` per channel, as a `[2, C]` tensor (`x̂` from the forward's statistics).
#[derive(Clone, Debug)]
struct BatchNormGradSums {
    stats: BatchStats,
}

impl CustomOp2 for BatchNormGradSums {
    fn name(&self) -> &'static str {
        "octconv-batch-norm-grad-sums"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _t = super::timing::span("batch norm gradient sums");
        let ((n, c, inner), x) = data(xs, xl)?;
        let (_, g) = data(gs, gl)?;
        if g.len() != x.len() {
            bail!(
                "batch norm gradient: {} gradients for {} inputs",
                g.len(),
                x.len()
            )
        }
        let st = &self.stats;
        let sums = channel_sums(x, (n, c, inner), |ch, off, xv| {
            let (s, q) = grad_sums(xv, &g[off..], None, st.mean[ch] as f32);
            (s, q * st.inv_std[ch])
        });
        let mut out = vec![0f32; 2 * c];
        for (ch, (s, q)) in sums.into_iter().enumerate() {
            out[ch] = s as f32;
            out[c + ch] = q as f32;
        }
        Ok((CpuStorage::F32(out), Shape::from((2, c))))
    }
}

/// Inference-mode batch norm as `y = a[c] · x + b[c]` (`a`, `b` computed by the caller from the
/// running statistics, so gradients reach the parameters through candle's autograd), followed by
/// the activation of `cap` ([`cap_of`]).
#[derive(Clone, Copy, Debug)]
pub struct ChannelAffine {
    /// The activation applied to the output.
    pub cap: Option<f32>,
}

/// `grad` where the activation's output `res` is in `(0, cap)`, else 0 (the activation's backward;
/// without a cap, `grad` itself).
fn masked(grad: &Tensor, res: &Tensor, cap: Option<f32>) -> Result<Tensor> {
    let grad = grad.contiguous()?;
    match cap {
        None => Ok(grad),
        Some(cap) => grad.apply_op2_no_bwd(&res.contiguous()?, &ActivationMask { cap }),
    }
}

/// `(grad, res) → grad · [0 < res < cap]` in one pass.
#[derive(Clone, Copy, Debug)]
struct ActivationMask {
    cap: f32,
}

impl CustomOp2 for ActivationMask {
    fn name(&self) -> &'static str {
        "octconv-activation-mask"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        rs: &CpuStorage,
        rl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _t = super::timing::span("activation mask");
        let (g, r) = (contiguous(gs, gl)?, contiguous(rs, rl)?);
        if g.len() != r.len() {
            bail!(
                "activation mask: {} gradients for {} outputs",
                g.len(),
                r.len()
            )
        }
        // Every element is written, chunk by chunk.
        let mut out = super::scratch::output_vec(g.len());
        out.par_chunks_mut(1 << 14)
            .zip(g.par_chunks(1 << 14).zip(r.par_chunks(1 << 14)))
            .for_each(|(o, (g, r))| {
                for ((o, &g), &r) in o.iter_mut().zip(g).zip(r) {
                    *o = g * pass(r, self.cap);
                }
            });
        Ok((CpuStorage::F32(out), gl.shape().clone()))
    }
}

impl CustomOp3 for ChannelAffine {
    fn name(&self) -> &'static str {
        "octconv-channel-affine"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        as_: &CpuStorage,
        al: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _t = super::timing::span("batch norm (eval)");
        let ((n, c, inner), x, image) = images(xs, xl)?;
        let (a, b) = (vec1(as_, al, c)?, vec1(bs, bl, c)?);
        let y = if image == c * inner {
            affine(x, (c, inner), &a, &b, self.cap)
        } else {
            affine_strided(x, (n, c, inner), image, &a, &b, self.cap)
        };
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        _b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = masked(grad, res, self.cap)?;
        let c = a.dim(0)?;
        let zeros = Tensor::zeros(c, grad.dtype(), grad.device())?;
        let dx = grad.apply_op3_no_bwd(a, &zeros, &ChannelAffine { cap: None })?;
        let identity = BatchStats {
            mean: vec![0.0; c],
            var: vec![1.0; c],
            inv_std: vec![1.0; c],
            count: 1,
            map: Vec::new(),
        };
        // The forward reads the first channels of a concatenation buffer in place; the sums want
        // contiguous data.
        let sums = x
            .contiguous()?
            .apply_op2_no_bwd(&grad, &BatchNormGradSums { stats: identity })?;
        Ok((Some(dx), Some(sums.get(1)?), Some(sums.get(0)?)))
    }
}

#[cfg(test)]
mod tests {
    /// The AVX2 build of the statistics sums agrees with the portable one bit for bit (lengths with
    /// and without a remainder; skipped on a CPU without AVX2).
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn shifted_sums_avx2_equals_portable_bit_for_bit() {
        if !super::super::simd::has_avx2_fma() {
            return;
        }
        for len in [0, 1, 7, 8, 9, 64, 1001] {
            let x: Vec<f32> = (0..len)
                .map(|i| ((i * 7919 % 1013) as f32 - 500.0) / 37.0)
                .collect();
            let portable = super::shifted_sums_portable(&x, 0.3);
            // SAFETY: the CPU has AVX2 and FMA (checked above).
            let wide = unsafe { super::shifted_sums_avx2(&x, 0.3) };
            assert_eq!(portable.0.to_bits(), wide.0.to_bits(), "sum, {len} values");
            assert_eq!(
                portable.1.to_bits(),
                wide.1.to_bits(),
                "squares, {len} values"
            );
        }
    }
}
