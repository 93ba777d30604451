//! Where values meet: `concat`, `add` and `scale` (squeeze-and-excitation), on tensors, octave pairs
//! and flat batches. Shapes were checked by the spec checker; these functions only compute.

use crate::kernels::elementwise::{scale_add_act, scale_planes, sum_act};
use crate::kernels::epilogue::Clamp;
use crate::kernels::{serves, with_f32_many};
use crate::layers::{OctLayer, OutputStage};
use crate::value::OctValue;
use candle_core::{DType, Result, Tensor};
use rayon::prelude::*;

/// The tensors of one branch (high or low) of every value, skipping empty (`None`) high branches.
fn cat_branch(parts: Vec<&Tensor>) -> Result<Option<Tensor>> {
    match parts.len() {
        0 => Ok(None),
        1 => Ok(Some(parts[0].clone())),
        _ => Tensor::cat(&parts, 1).map(Some),
    }
}

/// Concatenation along channels, in order; pairs join high with high and low with low.
pub fn concat(xs: &[&OctValue]) -> Result<OctValue> {
    let Some(first) = xs.first() else {
        candle_core::bail!("concat of no values");
    };
    match first {
        OctValue::Single(_) | OctValue::Flat(_) => {
            let ts = xs
                .iter()
                .map(|x| match x {
                    OctValue::Single(t) | OctValue::Flat(t) => Ok(t),
                    OctValue::Pair { .. } => {
                        candle_core::bail!("concat of a pair with a single-frequency value")
                    }
                })
                .collect::<Result<Vec<_>>>()?;
            let t = Tensor::cat(&ts, 1)?;
            Ok(match first {
                OctValue::Flat(_) => OctValue::Flat(t),
                _ => OctValue::Single(t),
            })
        }
        OctValue::Pair { .. } => {
            let mut highs = Vec::with_capacity(xs.len());
            let mut lows = Vec::with_capacity(xs.len());
            for x in xs {
                let OctValue::Pair { high, low } = x else {
                    candle_core::bail!("concat of a pair with a single-frequency value");
                };
                highs.extend(high.as_ref());
                lows.push(low);
            }
            Ok(OctValue::Pair {
                high: cat_branch(highs)?,
                low: cat_branch(lows)?.expect("a pair has a low branch"),
            })
        }
    }
}

/// Inference of [`concat`]: each branch's channels copied image by image on all threads where
/// every part is an f32 CPU map of one batch and size (candle's `cat` copied on one thread: U-Net's
/// four decoder concatenations took 1.8 ms against ONNX Runtime's 1.0 at α = .5, batch 4, 128²);
/// [`concat`] elsewhere. The values are the same copies.
pub fn concat_infer(xs: &[&OctValue]) -> Result<OctValue> {
    let branch = |parts: Vec<&Tensor>| -> Result<Option<Tensor>> {
        match parts.len() {
            0 | 1 => cat_branch(parts),
            _ => cat_channels(&parts).map(Some),
        }
    };
    if let Some(ts) = singles(xs) {
        if let Some(t) = branch(ts)? {
            return Ok(OctValue::Single(t));
        }
    }
    let pairs: Option<Vec<(Option<&Tensor>, &Tensor)>> = xs
        .iter()
        .map(|x| match x {
            OctValue::Pair { high, low } => Some((high.as_ref(), low)),
            _ => None,
        })
        .collect();
    match pairs {
        Some(pairs) if !pairs.is_empty() => {
            let highs: Vec<&Tensor> = pairs.iter().filter_map(|p| p.0).collect();
            let lows: Vec<&Tensor> = pairs.iter().map(|p| p.1).collect();
            match branch(lows)? {
                Some(low) => Ok(OctValue::Pair {
                    high: branch(highs)?,
                    low,
                }),
                None => concat(xs),
            }
        }
        _ => concat(xs),
    }
}

/// The maps `parts` concatenated along channels (dimension 1) for inference: image by image on
/// all threads where every part is a 4-D f32 map of one batch and size on the CPU, else candle's
/// `cat` (one thread). No gradient.
fn cat_channels(parts: &[&Tensor]) -> Result<Tensor> {
    let dims: Vec<&[usize]> = parts.iter().map(|t| t.dims()).collect();
    let fits = !parts.is_empty()
        && served_maps(parts)
        && dims
            .iter()
            .all(|d| d[0] == dims[0][0] && d[2..] == dims[0][2..]);
    if !fits {
        return Tensor::cat(parts, 1);
    }
    let n = dims[0][0];
    let per: Vec<usize> = dims.iter().map(|d| d[1..].iter().product()).collect();
    let image: usize = per.iter().sum();
    let y = with_f32_many(parts, |vs| {
        // Every value is written: the parts' images side by side fill each output image.
        let mut y = crate::kernels::scratch::output_vec(n * image);
        y.par_chunks_mut(image.max(1))
            .enumerate()
            .for_each(|(i, out)| {
                let mut at = 0;
                for (v, &p) in vs.iter().zip(&per) {
                    out[at..at + p].copy_from_slice(&v[i * p..][..p]);
                    at += p;
                }
            });
        y
    })?;
    let mut shape = dims[0].to_vec();
    shape[1] = dims.iter().map(|d| d[1]).sum();
    Tensor::from_vec(y, shape, parts[0].device())
}

/// Writes `part` (`[N, c, H, W]`) into channels `at … at + c` of `buffer` (`[N, C, H, W]`, the
/// same `N`, `H`, `W`), in place: image by image on all threads where both are contiguous f32 maps
/// on a device our kernels serve, else candle's `slice_set` (one thread). A concatenation chain's
/// links write their new inputs this way ([`crate::exec`]): by `slice_set` DenseNet-121's `concat`
/// class took 5.2 ms at α = 0 and 3.9 at α = .5 (batch 8), this way 3.8 and 3.0 (`octconv bench
/// --profile`, Intel Xeon, 2 threads).
pub(crate) fn write_channels(buffer: &Tensor, part: &Tensor, at: usize) -> Result<()> {
    let fits = served_maps(&[buffer, part])
        && buffer.is_contiguous()
        && part.is_contiguous()
        && buffer.dims()[0] == part.dims()[0]
        && buffer.dims()[2..] == part.dims()[2..]
        && at + part.dims()[1] <= buffer.dims()[1];
    if !fits {
        return buffer.slice_set(&part.contiguous()?, 1, at);
    }
    buffer.inplace_op2(part, &WriteChannels { at })
}

/// [`write_channels`] as candle's in-place op on the buffer's storage.
struct WriteChannels {
    at: usize,
}

impl candle_core::InplaceOp2 for WriteChannels {
    fn name(&self) -> &'static str {
        "octconv-write-channels"
    }

    fn cpu_fwd(
        &self,
        s1: &mut candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
    ) -> Result<()> {
        use candle_core::CpuStorage::F32;
        let (Some((a0, a1)), Some((b0, b1))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("write channels: both tensors must be contiguous")
        };
        let (F32(buffer), F32(part)) = (s1, s2) else {
            candle_core::bail!("write channels: only f32 is supported")
        };
        let (d1, d2) = (l1.dims(), l2.dims());
        if d1.len() != 4 || d2.len() != 4 || d1[0] != d2[0] || d1[2..] != d2[2..] {
            candle_core::bail!("write channels: {d2:?} does not fit into {d1:?}")
        }
        let (n, c_all, c) = (d1[0], d1[1], d2[1]);
        if self.at + c > c_all {
            candle_core::bail!("write channels: {c} channels at {} of {c_all}", self.at)
        }
        let plane: usize = d1[2..].iter().product();
        let (image, per) = (c_all * plane, c * plane);
        if n == 0 || per == 0 {
            return Ok(());
        }
        let (buffer, part) = (&mut buffer[a0..a1], &part[b0..b1]);
        buffer
            .par_chunks_mut(image)
            .zip(part.par_chunks(per))
            .for_each(|(dst, src)| dst[self.at * plane..][..per].copy_from_slice(src));
        Ok(())
    }
}

/// The tensors of `xs` if every value is a single-frequency map.
fn singles<'a>(xs: &[&'a OctValue]) -> Option<Vec<&'a Tensor>> {
    xs.iter()
        .map(|x| match x {
            OctValue::Single(t) => Some(t),
            _ => None,
        })
        .collect()
}

/// Whether every part is a 4-D f32 map on a device our kernels serve.
fn served_maps(ts: &[&Tensor]) -> bool {
    ts.iter()
        .all(|t| serves(t.device()) && t.dtype() == DType::F32 && t.rank() == 4)
}

/// Element-wise sum of values of one shape.
pub fn add(xs: &[&OctValue]) -> Result<OctValue> {
    let Some((first, rest)) = xs.split_first() else {
        candle_core::bail!("add of no values");
    };
    rest.iter().try_fold((*first).clone(), |acc, x| acc.add(x))
}

/// `x` (`[N, C, H, W]`, or a pair with `Ch + Cl = C`) times `gates` (`[N, C]` or `[N, C, 1, 1]`) per
/// channel; on a pair the first `Ch` gates scale the high branch and the rest the low branch.
pub fn scale(x: &OctValue, gates: &OctValue) -> Result<OctValue> {
    let g = match gates {
        OctValue::Flat(t) | OctValue::Single(t) => t.flatten_from(1)?,
        OctValue::Pair { .. } => candle_core::bail!("scale: the gates are an octave pair"),
    };
    let (n, c) = g.dims2()?;
    let by = |t: &Tensor, from: usize| -> Result<Tensor> {
        let ct = t.dim(1)?;
        let gt = g.narrow(1, from, ct)?.reshape((n, ct, 1, 1))?;
        t.broadcast_mul(&gt)
    };
    match x {
        OctValue::Single(t) if t.dim(1)? == c => Ok(OctValue::Single(by(t, 0)?)),
        OctValue::Pair { high, low } if x.shape().channels() == c => {
            let ch = high.as_ref().map_or(Ok(0), |h| h.dim(1))?;
            Ok(OctValue::Pair {
                high: high.as_ref().map(|h| by(h, 0)).transpose()?,
                low: by(low, ch)?,
            })
        }
        _ => candle_core::bail!("scale: {} gates for a value of shape {}", c, x.shape()),
    }
}

/// Whether our element-wise kernels serve these tensors: f32 on the CPU, all of one shape.
fn served(ts: &[&Tensor]) -> bool {
    ts.iter()
        .all(|t| serves(t.device()) && t.dtype() == DType::F32 && t.dims() == ts[0].dims())
}

/// Inference of `clamp(add(xs))` in one threaded pass per branch ([`sum_act`]), or `None` where the
/// kernel does not serve the values (the caller then runs [`add`] and the activation op by op).
pub fn add_infer(xs: &[&OctValue], clamp: Clamp) -> Result<Option<OctValue>> {
    let sum = |ts: Vec<&Tensor>| -> Result<Option<Tensor>> {
        if ts.is_empty() || !served(&ts) {
            return Ok(None);
        }
        let y = with_f32_many(&ts, |s| sum_act(s, clamp))?;
        Tensor::from_vec(y, ts[0].shape(), ts[0].device()).map(Some)
    };
    if let Some(ts) = singles(xs) {
        return Ok(sum(ts)?.map(OctValue::Single));
    }
    let pairs: Option<Vec<(&Tensor, &Tensor)>> = xs
        .iter()
        .map(|v| match v {
            OctValue::Pair { high: Some(h), low } => Some((h, low)),
            _ => None,
        })
        .collect();
    let Some(pairs) = pairs else {
        return Ok(None);
    };
    let (hs, ls): (Vec<&Tensor>, Vec<&Tensor>) = pairs.into_iter().unzip();
    match (sum(hs)?, sum(ls)?) {
        (Some(high), Some(low)) => Ok(Some(OctValue::Pair {
            high: Some(high),
            low,
        })),
        _ => Ok(None),
    }
}

/// Inference of [`scale`] by one threaded pass per branch ([`scale_planes`]), or `None` where the
/// kernel does not serve the values (the caller then runs [`scale`]).
pub fn scale_infer(x: &OctValue, gates: &OctValue) -> Result<Option<OctValue>> {
    let g = match gates {
        OctValue::Flat(t) | OctValue::Single(t) => t.flatten_from(1)?,
        OctValue::Pair { .. } => return Ok(None),
    };
    let (n, c) = g.dims2()?;
    let by = |t: &Tensor, from: usize| -> Result<Option<Tensor>> {
        let (tn, ct) = (t.dim(0)?, t.dim(1)?);
        if !served(&[t]) || !served(&[&g]) || tn != n || t.rank() != 4 || from + ct > c {
            return Ok(None);
        }
        let gt = g.narrow(1, from, ct)?;
        let plane = t.dims()[2..].iter().product::<usize>();
        let y = with_f32_many(&[t, &gt], |s| scale_planes(s[0], s[1], plane))?;
        Tensor::from_vec(y, t.shape(), t.device()).map(Some)
    };
    Ok(match x {
        OctValue::Single(t) if t.dim(1)? == c => by(t, 0)?.map(OctValue::Single),
        OctValue::Pair { high: Some(h), low } if x.shape().channels() == c => {
            match (by(h, 0)?, by(low, h.dim(1)?)?) {
                (Some(high), Some(low)) => Some(OctValue::Pair {
                    high: Some(high),
                    low,
                }),
                _ => None,
            }
        }
        _ => None,
    })
}

/// Inference of `stage(add(…))` where input `at` of the two is `scale(x, gates)` given as `x`
/// ([`octconv_spec::plan::Step::ScaleAdd`]): the scaling, the sum and the activation in one threaded
/// pass per branch ([`scale_add_act`]) where the kernel serves the values and the stage is at most
/// an activation; otherwise the scale, then the add and its stage, op by op.
pub fn scale_add_infer(
    xs: &[&OctValue],
    (at, gates): (usize, &OctValue),
    stage: Option<&OutputStage<'_>>,
) -> Result<OctValue> {
    let clamp = match stage.map(|s| (s.bn.is_some(), s.pool.is_some(), s.act.map(|a| a.clamp()))) {
        None | Some((false, false, None)) => Some(Clamp::Identity),
        Some((false, false, Some(Some(c)))) => Some(c),
        _ => None,
    };
    if let (Some(clamp), [_, _], Some(g)) = (clamp, xs, flat_gates(gates)?) {
        let (x, r) = (xs[at], xs[1 - at]);
        if let Some(y) = scale_add_fused(x, r, &g, clamp)? {
            return Ok(y);
        }
    }
    // Op by op: the scaled value in the add's input order.
    let scaled = match scale_infer(xs[at], gates)? {
        Some(y) => y,
        None => scale(xs[at], gates)?,
    };
    let mut ins: Vec<&OctValue> = xs.to_vec();
    if let Some(slot) = ins.get_mut(at) {
        *slot = &scaled;
    }
    match stage {
        Some(stage) => super::layer::Add.infer_then(&ins, stage),
        None => super::layer::Add.infer(&ins),
    }
}

/// The gates `[N, C]` of a scale, or `None` for a pair.
fn flat_gates(gates: &OctValue) -> Result<Option<Tensor>> {
    match gates {
        OctValue::Flat(t) | OctValue::Single(t) => t.flatten_from(1).map(Some),
        OctValue::Pair { .. } => Ok(None),
    }
}

/// [`scale_add_act`] branch by branch (the first `Ch` gates for the high branch of a pair, the rest
/// for the low one), or `None` where the kernel does not serve the values.
fn scale_add_fused(
    x: &OctValue,
    r: &OctValue,
    g: &Tensor,
    clamp: Clamp,
) -> Result<Option<OctValue>> {
    let (n, c) = g.dims2()?;
    let by = |t: &Tensor, r: &Tensor, from: usize| -> Result<Option<Tensor>> {
        let (tn, ct) = (t.dim(0)?, t.dim(1)?);
        if !served(&[t, r]) || !served(&[g]) || tn != n || t.rank() != 4 || from + ct > c {
            return Ok(None);
        }
        let gt = g.narrow(1, from, ct)?;
        let plane = t.dims()[2..].iter().product::<usize>();
        let y = with_f32_many(&[t, &gt, r], |s| {
            scale_add_act(s[0], s[1], plane, s[2], clamp)
        })?;
        Tensor::from_vec(y, t.shape(), t.device()).map(Some)
    };
    Ok(match (x, r) {
        (OctValue::Single(t), OctValue::Single(rt)) if t.dim(1)? == c => {
            by(t, rt, 0)?.map(OctValue::Single)
        }
        (
            OctValue::Pair { high: Some(h), low },
            OctValue::Pair {
                high: Some(rh),
                low: rl,
            },
        ) if x.shape().channels() == c => match (by(h, rh, 0)?, by(low, rl, h.dim(1)?)?) {
            (Some(high), Some(low)) => Some(OctValue::Pair {
                high: Some(high),
                low,
            }),
            _ => None,
        },
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// `write_channels` puts a part's channels where `slice_set` would, image by image, and leaves
    /// every other channel alone: the parallel path (contiguous f32, its storage from the start or,
    /// for one image, from an offset) and the fallback (a strided view), at the front, in the
    /// middle and at the end of the buffer, and no channels at all.
    #[test]
    fn write_channels_equals_slice_set_and_keeps_the_other_channels() {
        let dev = Device::Cpu;
        let (c_all, h, w) = (7, 2, 5);
        for n in [3, 1] {
            let start: Vec<f32> = (0..n * c_all * h * w).map(|i| i as f32).collect();
            for (c, at) in [(2, 0), (3, 2), (2, 5), (0, 3)] {
                let wide = Tensor::arange(0f32, (n * (c + 1) * h * w) as f32, &dev)
                    .unwrap()
                    .neg()
                    .unwrap()
                    .reshape((n, c + 1, h, w))
                    .unwrap();
                for part in [
                    wide.narrow(1, 0, c).unwrap().contiguous().unwrap(),
                    wide.narrow(1, 1, c).unwrap(),
                ] {
                    let want = Tensor::from_vec(start.clone(), (n, c_all, h, w), &dev).unwrap();
                    if c > 0 {
                        want.slice_set(&part.contiguous().unwrap(), 1, at).unwrap();
                    }
                    let got = Tensor::from_vec(start.clone(), (n, c_all, h, w), &dev).unwrap();
                    write_channels(&got, &part, at).unwrap();
                    let (got, want) = (
                        got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                        want.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                    );
                    assert_eq!(got, want, "{n} images, {c} channels at {at}");
                }
            }
        }
    }
}
