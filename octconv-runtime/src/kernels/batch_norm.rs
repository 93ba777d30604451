//! Batch normalisation over `[N, C, …]` as custom ops: training forward in two passes (per-channel
//! statistics, then `a·x + b`), backward in two (per-channel sums, then `dx`), and inference as one
//! per-channel affine pass.
//!
//! candle-nn's BatchNorm transposes and copies the input, then runs about ten separate tensor ops
//! (each allocating a full-size result) forward and more backward; on a small wide ResNet that was
//! a larger share of a training step than the convolutions.

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

/// Per-channel `(Σ f(i, x_i), Σ g(i, x_i))` over `[n, c, inner]`, in f64, channels in parallel.
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

/// `out[b, ch, i] = a[ch] · x[b, ch, i] + b[ch]` (+ `extra` per element if given; then `max(0, ·)` if
/// `relu`, as candle's `relu` computes it), planes in parallel.
fn affine(
    x: &[f32],
    (c, inner): (usize, usize),
    a: &[f64],
    b: &[f64],
    extra: Option<&(dyn Fn(usize, usize) -> f32 + Sync)>,
    relu: bool,
) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    if inner == 0 {
        return out;
    }
    out.par_chunks_mut(inner)
        .zip(x.par_chunks(inner))
        .enumerate()
        .for_each(|(p, (o, xs))| {
            let ch = p % c;
            let (a, b) = (a[ch] as f32, b[ch] as f32);
            match extra {
                None if relu => o
                    .iter_mut()
                    .zip(xs)
                    .for_each(|(o, &x)| *o = (a * x + b).max(0f32)),
                None => o.iter_mut().zip(xs).for_each(|(o, &x)| *o = a * x + b),
                Some(e) => {
                    debug_assert!(!relu, "the backward pass applies no ReLU");
                    let base = p * inner;
                    for (i, (o, &x)) in o.iter_mut().zip(xs).enumerate() {
                        *o = a * x + b + e(p, base + i);
                    }
                }
            }
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
    /// Apply ReLU to the output (BN + ReLU in one pass; the backward masks the gradient).
    pub relu: bool,
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
        let ((n, c, inner), x) = data(xs, xl)?;
        let (gamma, beta) = (vec1(ws, wl, c)?, vec1(bs, bl, c)?);
        let count = n * inner;
        if count == 0 {
            bail!(
                "batch norm: no values per channel (input {:?})",
                xl.shape().dims()
            )
        }
        let sums = channel_sums(x, (n, c, inner), |_, _, v| {
            v.iter().fold((0.0, 0.0), |(s, q), &x| {
                (s + x as f64, q + (x as f64) * (x as f64))
            })
        });
        let mut st = BatchStats {
            count,
            ..Default::default()
        };
        for (s, q) in sums {
            let mean = s / count as f64;
            let var = (q / count as f64 - mean * mean).max(0.0);
            st.mean.push(mean);
            st.var.push(var);
            st.inv_std.push(1.0 / (var + self.eps).sqrt());
        }
        let a: Vec<f64> = (0..c).map(|ch| gamma[ch] * st.inv_std[ch]).collect();
        let b: Vec<f64> = (0..c).map(|ch| beta[ch] - st.mean[ch] * a[ch]).collect();
        let y = affine(x, (c, inner), &a, &b, None, self.relu);
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
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = relu_masked(grad, res, self.relu)?;
        let stats = self
            .stats
            .lock()
            .map_err(|_| candle_core::Error::Msg("stats poisoned".into()))?
            .clone();
        let sums = x.apply_op2_no_bwd(
            &grad,
            &BatchNormGradSums {
                stats: stats.clone(),
            },
        )?;
        let (dbeta, dgamma) = (sums.get(0)?, sums.get(1)?);
        let dx = x.apply_op3_no_bwd(
            &grad,
            &sums,
            &BatchNormGradInput {
                stats,
                gamma: weight.to_dtype(candle_core::DType::F64)?.to_vec1()?,
            },
        )?;
        Ok((Some(dx), Some(dgamma), Some(dbeta)))
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
        let ((n, c, inner), x) = data(xs, xl)?;
        let (_, g) = data(gs, gl)?;
        let st = &self.stats;
        let sums = channel_sums(x, (n, c, inner), |ch, off, xv| {
            let (m, is) = (st.mean[ch], st.inv_std[ch]);
            let gv = &g[off..off + xv.len()];
            xv.iter().zip(gv).fold((0.0, 0.0), |(s, q), (&x, &dy)| {
                (s + dy as f64, q + dy as f64 * (x as f64 - m) * is)
            })
        });
        let mut out = vec![0f32; 2 * c];
        for (ch, (s, q)) in sums.into_iter().enumerate() {
            out[ch] = s as f32;
            out[c + ch] = q as f32;
        }
        Ok((CpuStorage::F32(out), Shape::from((2, c))))
    }
}

/// `dx = γ · inv_std · (dy − Σdy / M − x̂ · Σ(dy·x̂) / M)`.
#[derive(Clone, Debug)]
struct BatchNormGradInput {
    stats: BatchStats,
    gamma: Vec<f64>,
}

impl CustomOp3 for BatchNormGradInput {
    fn name(&self) -> &'static str {
        "octconv-batch-norm-grad-input"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
        ss: &CpuStorage,
        sl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let ((_, c, inner), x) = data(xs, xl)?;
        let (_, g) = data(gs, gl)?;
        let sums = contiguous(ss, sl)?;
        let st = &self.stats;
        let m = st.count as f64;
        // dx = k·dy + a·x + b with k = γ·is, a = −k·is·Σ(dy x̂)/M, b = −k·Σdy/M − a·mean.
        let k: Vec<f64> = (0..c).map(|ch| self.gamma[ch] * st.inv_std[ch]).collect();
        let a: Vec<f64> = (0..c)
            .map(|ch| -k[ch] * st.inv_std[ch] * sums[c + ch] as f64 / m)
            .collect();
        let b: Vec<f64> = (0..c)
            .map(|ch| -k[ch] * sums[ch] as f64 / m - a[ch] * st.mean[ch])
            .collect();
        let dy = |p: usize, i: usize| (k[p % c] as f32) * g[i];
        let dx = affine(x, (c, inner), &a, &b, Some(&dy), false);
        Ok((CpuStorage::F32(dx), xl.shape().clone()))
    }
}

/// Inference-mode batch norm as `y = a[c] · x + b[c]` (`a`, `b` computed by the caller from the
/// running statistics, so gradients reach the parameters through candle's autograd), followed by
/// ReLU if `relu`.
#[derive(Clone, Copy, Debug)]
pub struct ChannelAffine {
    /// Apply ReLU to the output.
    pub relu: bool,
}

/// `grad` where the ReLU output `res` is positive, else 0 (ReLU's backward; with `relu = false`,
/// `grad` itself). At a pre-activation of exactly 0 the gradient is 0 here and 1 in candle's `relu`.
fn relu_masked(grad: &Tensor, res: &Tensor, relu: bool) -> Result<Tensor> {
    let grad = grad.contiguous()?;
    if !relu {
        return Ok(grad);
    }
    grad.apply_op2_no_bwd(&res.contiguous()?, &ReluMask)
}

/// `(grad, res) → grad · [res > 0]` in one pass.
#[derive(Clone, Copy, Debug)]
struct ReluMask;

impl CustomOp2 for ReluMask {
    fn name(&self) -> &'static str {
        "octconv-relu-mask"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        rs: &CpuStorage,
        rl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (g, r) = (contiguous(gs, gl)?, contiguous(rs, rl)?);
        if g.len() != r.len() {
            bail!("relu mask: {} gradients for {} outputs", g.len(), r.len())
        }
        let mut out = vec![0f32; g.len()];
        out.par_chunks_mut(1 << 14)
            .zip(g.par_chunks(1 << 14).zip(r.par_chunks(1 << 14)))
            .for_each(|(o, (g, r))| {
                for ((o, &g), &r) in o.iter_mut().zip(g).zip(r) {
                    *o = if r > 0.0 { g } else { 0.0 };
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
        let ((_, c, inner), x) = data(xs, xl)?;
        let (a, b) = (vec1(as_, al, c)?, vec1(bs, bl, c)?);
        Ok((
            CpuStorage::F32(affine(x, (c, inner), &a, &b, None, self.relu)),
            xl.shape().clone(),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        _b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = relu_masked(grad, res, self.relu)?;
        let c = a.dim(0)?;
        let zeros = Tensor::zeros(c, grad.dtype(), grad.device())?;
        let dx = grad.apply_op3_no_bwd(a, &zeros, &ChannelAffine { relu: false })?;
        let identity = BatchStats {
            mean: vec![0.0; c],
            var: vec![1.0; c],
            inv_std: vec![1.0; c],
            count: 1,
        };
        let sums = x.apply_op2_no_bwd(&grad, &BatchNormGradSums { stats: identity })?;
        Ok((Some(dx), Some(sums.get(1)?), Some(sums.get(0)?)))
    }
}
