//! The planned training step's backwards of the layers that move values rather than compute them
//! (`merge`, `split`, `pyramid`, `upsample`, `concat`, `flatten`, `global_avg_pool`), of max and
//! 2×2 average pooling, `scale`, the stand-alone activations and of the linear classifier ([`crate::tape`]). Each forward is the
//! layer's own (so its output is the autograd path's, bit for bit); each backward is the adjoint of
//! that map, written once per input.

use crate::kernels::max_pool::{MaxPool, MaxPoolGrad};
use crate::kernels::resample::{Pool2x2, Upsample2x};
use crate::kernels::{serves_f32, with_f32, with_f32_all};
use crate::layers::Activation;
use crate::tape::{Backward, ParamGrads, Recorded};
use crate::value::OctValue;
use candle_core::{Result, Tensor};

/// A backward without parameters, as a closure from the output's gradient to the inputs'.
struct Adjoint<F>(F);

impl<F> Backward for Adjoint<F>
where
    F: FnOnce(&OctValue) -> Result<Vec<Option<OctValue>>> + Send,
{
    fn backward(
        self: Box<Self>,
        grad: &OctValue,
        _params: &mut ParamGrads,
    ) -> Result<Vec<Option<OctValue>>> {
        (self.0)(grad)
    }
}

/// `v` without a graph (a layer's forward on the tape runs on detached values, but parameters are
/// variables).
fn detached(v: OctValue) -> Result<OctValue> {
    v.map(|t| Ok(t.detach()))
}

/// The record of a one-input layer: its output `y` (detached) and `adjoint` as its backward, run
/// only if the input needs a gradient.
fn one_input<F>(y: OctValue, needs_grad: bool, adjoint: F) -> Result<Option<Recorded>>
where
    F: FnOnce(&OctValue) -> Result<OctValue> + Send + 'static,
{
    let y = detached(y)?;
    let back =
        Adjoint(move |g: &OctValue| Ok(vec![if needs_grad { Some(adjoint(g)?) } else { None }]));
    Ok(Some((y, Box::new(back))))
}

/// The tensor of a single-frequency or flat value.
fn tensor(v: &OctValue) -> Result<&Tensor> {
    match v {
        OctValue::Single(t) | OctValue::Flat(t) => Ok(t),
        OctValue::Pair { .. } => candle_core::bail!("backward: expected one tensor, found a pair"),
    }
}

/// Whether every tensor of `x` is f32 on the CPU: the resampling kernels' adjoints here and the
/// activations' masks run on those; other values take candle's autograd.
fn f32_cpu(x: &OctValue) -> bool {
    let (h, l) = x.branches();
    match x {
        OctValue::Single(t) | OctValue::Flat(t) => serves_f32(t),
        OctValue::Pair { .. } => h.into_iter().chain(l).all(serves_f32),
    }
}

/// Height and width of `[N, C, H, W]`.
pub(crate) fn hw(t: &Tensor) -> Result<(usize, usize)> {
    let (_, _, h, w) = t.dims4()?;
    Ok((h, w))
}

/// The adjoint of 2×2 average pooling into an `out_hw` plane.
pub(crate) fn spread(t: &Tensor, out_hw: (usize, usize)) -> Result<Tensor> {
    t.contiguous()?.apply_op1_no_bwd(&Upsample2x {
        scale: 0.25,
        out_hw,
    })
}

/// The adjoint of nearest ×`s` upsampling: the sum over each `s × s` block.
pub(crate) fn block_sum(t: &Tensor, s: usize) -> Result<Tensor> {
    if s == 2 {
        return t.contiguous()?.apply_op1_no_bwd(&Pool2x2::SUM);
    }
    let (n, c, h, w) = t.dims4()?;
    t.reshape((n, c, h / s, s, w / s, s))?.sum(5)?.sum(3)
}

/// `merge()` / `merge(to = low)`: the gradient split back along the channels, the upsampled low
/// branch's summed over its blocks (to high), the pooled high branch's spread (to low).
pub(crate) fn merge(x: &OctValue, to_low: bool, needs_grad: bool) -> Result<Option<Recorded>> {
    if !f32_cpu(x) {
        return Ok(None);
    }
    let y = if to_low {
        super::merge_low(x)?
    } else {
        super::merge(x)?
    };
    let OctValue::Pair { high, low } = x else {
        return one_input(y, needs_grad, |g| Ok(g.clone()));
    };
    let high_shape = match high {
        Some(h) => Some((h.dim(1)?, hw(h)?)),
        None => None,
    };
    let cl = low.dim(1)?;
    one_input(y, needs_grad, move |g| {
        let g = tensor(g)?;
        let ch = high_shape.map_or(0, |(c, _)| c);
        let dl = g.narrow(1, ch, cl)?;
        let high = match high_shape {
            Some((c, out)) if to_low => Some(spread(&g.narrow(1, 0, c)?, out)?),
            Some((c, _)) => Some(g.narrow(1, 0, c)?),
            None => None,
        };
        let low = if to_low { dl } else { block_sum(&dl, 2)? };
        Ok(OctValue::Pair { high, low })
    })
}

/// `split(α)`: the high branch's gradient, then the low branch's spread over its pooled blocks.
pub(crate) fn split(x: &OctValue, low: usize, needs_grad: bool) -> Result<Option<Recorded>> {
    if !f32_cpu(x) {
        return Ok(None);
    }
    let y = super::split(x, low)?;
    let out = hw(tensor(x)?)?;
    one_input(y, needs_grad, move |g| {
        let OctValue::Pair { high, low } = g else {
            return Ok(g.clone());
        };
        let dl = spread(low, out)?;
        Ok(OctValue::Single(match high {
            Some(h) => Tensor::cat(&[h, &dl], 1)?,
            None => dl,
        }))
    })
}

/// `pyramid()`: the high gradient plus the low one spread.
pub(crate) fn pyramid(x: &OctValue, needs_grad: bool) -> Result<Option<Recorded>> {
    if !f32_cpu(x) {
        return Ok(None);
    }
    let y = super::pyramid(x)?;
    let out = hw(tensor(x)?)?;
    one_input(y, needs_grad, move |g| {
        let (Some(h), Some(l)) = g.branches() else {
            candle_core::bail!("pyramid backward: the gradient is not a pair")
        };
        Ok(OctValue::Single((h + spread(l, out)?)?))
    })
}

/// `upsample(s)`: each branch's gradient summed over its blocks.
pub(crate) fn upsample(x: &OctValue, s: usize, needs_grad: bool) -> Result<Option<Recorded>> {
    if !f32_cpu(x) {
        return Ok(None);
    }
    let y = super::upsample(x, s)?;
    one_input(y, needs_grad, move |g| g.map(|t| block_sum(t, s)))
}

/// `flatten()`: the gradient reshaped to the input's shape.
pub(crate) fn flatten(x: &OctValue, needs_grad: bool) -> Result<Option<Recorded>> {
    let y = super::flatten(x)?;
    let dims = tensor(x)?.dims().to_vec();
    let single = matches!(x, OctValue::Single(_));
    one_input(y, needs_grad, move |g| {
        let t = tensor(g)?.reshape(dims)?;
        Ok(if single {
            OctValue::Single(t)
        } else {
            OctValue::Flat(t)
        })
    })
}

/// `global_avg_pool`: each channel's gradient over its plane, divided by the plane's size (per
/// branch, in the concatenation order, for `per_branch`).
pub(crate) fn global_avg_pool(
    x: &OctValue,
    per_branch: bool,
    needs_grad: bool,
) -> Result<Option<Recorded>> {
    let y = super::global_avg_pool(x, per_branch)?;
    let (h, l) = x.branches();
    let hd = h.map(Tensor::dims4).transpose()?;
    let ld = l.map(Tensor::dims4).transpose()?;
    let single = matches!(x, OctValue::Single(_));
    one_input(y, needs_grad, move |g| {
        let g = tensor(g)?;
        let back = |off: usize, (n, c, h, w): (usize, usize, usize, usize)| -> Result<Tensor> {
            (g.narrow(1, off, c)? / (h * w) as f64)?
                .reshape((n, c, 1, 1))?
                .broadcast_as((n, c, h, w))?
                .contiguous()
        };
        let ch = hd.map_or(0, |d| d.1);
        let high = hd.map(|d| back(0, d)).transpose()?;
        Ok(match (single, ld) {
            (false, Some(d)) => OctValue::Pair {
                high,
                low: back(ch, d)?,
            },
            _ => OctValue::Single(high.ok_or_else(|| {
                candle_core::Error::Msg("global_avg_pool backward: no input".into())
            })?),
        })
    })
}

/// `concat(…)`: each input's channels of the gradient, branch by branch.
pub(crate) fn concat(xs: &[&OctValue], needs_grad: &[bool]) -> Result<Option<Recorded>> {
    let y = super::concat(xs)?;
    let channels = |t: Option<&Tensor>| t.map(|t| t.dim(1)).transpose();
    let shapes: Vec<(bool, Option<usize>, Option<usize>)> = xs
        .iter()
        .map(|x| {
            let (h, l) = x.branches();
            match x {
                OctValue::Single(t) | OctValue::Flat(t) => Ok((false, Some(t.dim(1)?), None)),
                OctValue::Pair { .. } => Ok((true, channels(h)?, channels(l)?)),
            }
        })
        .collect::<Result<_>>()?;
    let needs = needs_grad.to_vec();
    let back = Adjoint(move |g: &OctValue| {
        let (gh, gl) = g.branches();
        let flat = matches!(g, OctValue::Flat(_));
        let (mut oh, mut ol) = (0, 0);
        let mut out = Vec::with_capacity(shapes.len());
        for (&(pair, ch, cl), &need) in shapes.iter().zip(&needs) {
            let take =
                |g: Option<&Tensor>, off: usize, c: Option<usize>| -> Result<Option<Tensor>> {
                    match (g, c) {
                        (Some(g), Some(c)) if need => g.narrow(1, off, c).map(Some),
                        _ => Ok(None),
                    }
                };
            let high = take(gh.or(if flat { tensor(g).ok() } else { None }), oh, ch)?;
            let low = take(gl, ol, cl)?;
            oh += ch.unwrap_or(0);
            ol += cl.unwrap_or(0);
            out.push(match (need, pair, flat) {
                (false, _, _) => None,
                (true, true, _) => Some(OctValue::Pair {
                    high,
                    low: low.ok_or_else(|| {
                        candle_core::Error::Msg("concat backward: no low gradient".into())
                    })?,
                }),
                (true, false, true) => high.map(OctValue::Flat),
                (true, false, false) => high.map(OctValue::Single),
            });
        }
        Ok(out)
    });
    Ok(Some((detached(y)?, Box::new(back))))
}

/// `scale(x, gates)`: `dx` is the gradient scaled by the same gates; each gate's gradient is the
/// sum over its plane of the gradient times `x`.
pub(crate) fn scale(x: &OctValue, gates: &OctValue, needs: &[bool]) -> Result<Option<Recorded>> {
    let y = detached(super::scale(x, gates)?)?;
    let (x, gates) = (x.clone(), gates.clone());
    let needs = [needs.first() == Some(&true), needs.get(1) == Some(&true)];
    let back = Adjoint(move |g: &OctValue| {
        let dx = needs[0].then(|| super::scale(g, &gates)).transpose()?;
        let dgates = if needs[1] {
            let ((xh, xl), (gh, gl)) = (x.branches(), g.branches());
            let mut sums = Vec::new();
            for (x, g) in [(xh, gh), (xl, gl)] {
                if let (Some(x), Some(g)) = (x, g) {
                    sums.push((x * g)?.sum((2, 3))?);
                }
            }
            let d = Tensor::cat(&sums, 1)?;
            Some(gates.map(|t| d.reshape(t.shape()))?)
        } else {
            None
        };
        Ok(vec![dx, dgates])
    });
    Ok(Some((y, Box::new(back))))
}

/// Max pooling on f32 CPU tensors: our kernel's gradient (each window's gradient to its first
/// maximum), from the input, which the record keeps.
fn max_pool(pool: &super::Pool, x: &OctValue, needs_grad: bool) -> Result<Option<Recorded>> {
    let s = pool.spec;
    let op = MaxPool {
        kernel: s.kernel,
        stride: s.stride,
        padding: s.padding,
    };
    let y = x.map(|t| t.contiguous()?.apply_op1_no_bwd(&op))?;
    let kept = x.map(|t| t.contiguous())?;
    one_input(y, needs_grad, move |g| {
        let ((xh, xl), (gh, gl)) = (kept.branches(), g.branches());
        let back = |x: &Tensor, g: &Tensor| x.apply_op2_no_bwd(&g.contiguous()?, &MaxPoolGrad(op));
        match (&kept, g) {
            (OctValue::Pair { .. }, OctValue::Pair { .. }) => {
                let (Some(xl), Some(gl)) = (xl, gl) else {
                    candle_core::bail!("max pool backward: no low branch")
                };
                Ok(OctValue::Pair {
                    high: match (xh, gh) {
                        (Some(x), Some(g)) => Some(back(x, g)?),
                        _ => None,
                    },
                    low: back(xl, gl)?,
                })
            }
            (OctValue::Single(x), OctValue::Single(g)) => Ok(OctValue::Single(back(x, g)?)),
            _ => candle_core::bail!("max pool backward: the gradient's shape is not the output's"),
        }
    })
}

/// Pooling: max pooling by [`max_pool`]; average pooling with a 2×2 window, stride 2 and no
/// padding by spreading the gradient over each block. `None` for other pools (autograd).
pub(crate) fn pool(pool: &super::Pool, x: &OctValue, needs_grad: bool) -> Result<Option<Recorded>> {
    let s = pool.spec;
    if !f32_cpu(x) {
        return Ok(None);
    }
    if pool.kind == super::PoolKind::Max {
        return max_pool(pool, x, needs_grad);
    }
    if (s.kernel, s.stride, s.padding) != (2, 2, 0) {
        return Ok(None);
    }
    let y = pool.forward(x)?;
    let (h, l) = x.branches();
    let hw_of = |t: Option<&Tensor>| t.map(hw).transpose();
    let (hh, lh) = (hw_of(h)?, hw_of(l)?);
    one_input(y, needs_grad, move |g| match g {
        OctValue::Pair { high, low } => Ok(OctValue::Pair {
            high: match (high, hh) {
                (Some(t), Some(out)) => Some(spread(t, out)?),
                _ => None,
            },
            low: spread(low, lh.unwrap_or_default())?,
        }),
        OctValue::Single(t) => Ok(OctValue::Single(spread(t, hh.unwrap_or_default())?)),
        OctValue::Flat(_) => candle_core::bail!("pool backward: a flat gradient"),
    })
}

/// A stand-alone ReLU, ReLU6 or sigmoid on f32 CPU tensors: the layer's forward, and its
/// derivative kept per value as the backward needs it: one byte per value for ReLU (`x ≥ 0`,
/// candle's convention at 0) and ReLU6 (`0 < x ≤ 6`, the kernel's), the output itself for the
/// sigmoid (`y·(1 − y)`; the next layer holds it anyway). Hard-swish and SiLU: `None` (autograd).
pub(crate) fn activation(
    act: Activation,
    x: &OctValue,
    needs_grad: bool,
) -> Result<Option<Recorded>> {
    let (h, l) = x.branches();
    let tensors: Vec<&Tensor> = match x {
        OctValue::Single(t) | OctValue::Flat(t) => vec![t],
        OctValue::Pair { .. } => h.into_iter().chain(l).collect(),
    };
    if matches!(act, Activation::HardSwish | Activation::Silu) {
        return Ok(None);
    }
    // Each mask in its own loop (through a function pointer, as this was, every value cost a call).
    // (The sigmoid keeps its output instead, below; hard-swish and SiLU returned above.)
    let mask = |v: &[f32]| -> Vec<bool> {
        match act {
            Activation::Relu => v.iter().map(|&x| x >= 0.0).collect(),
            Activation::Relu6 => v.iter().map(|&x| (x > 0.0) & (x <= 6.0)).collect(),
            Activation::Sigmoid | Activation::HardSwish | Activation::Silu => vec![true; v.len()],
        }
    };
    if !f32_cpu(x) {
        return Ok(None);
    }
    let y = act.forward(x)?;
    // Per branch (high, low; or the one tensor): the mask, or the sigmoid's output.
    let kept: Vec<Derivative> = match act {
        Activation::Sigmoid => {
            let (yh, yl) = y.branches();
            match &y {
                OctValue::Single(t) | OctValue::Flat(t) => vec![Derivative::Sigmoid(t.clone())],
                OctValue::Pair { .. } => yh
                    .into_iter()
                    .chain(yl)
                    .map(|t| Derivative::Sigmoid(t.clone()))
                    .collect(),
            }
        }
        _ => tensors
            .iter()
            .map(|t| with_f32(t, |v| Derivative::Mask(mask(v))))
            .collect::<Result<_>>()?,
    };
    one_input(y, needs_grad, move |g| {
        let (gh, gl) = g.branches();
        let grads: Vec<&Tensor> = match g {
            OctValue::Single(t) | OctValue::Flat(t) => vec![t],
            OctValue::Pair { .. } => gh.into_iter().chain(gl).collect(),
        };
        if grads.len() != kept.len() {
            candle_core::bail!("activation backward: the gradient's shape is not the output's")
        }
        let mut d = grads
            .iter()
            .zip(&kept)
            .map(|(g, k)| k.times(g))
            .collect::<Result<Vec<_>>>()?;
        Ok(match g {
            OctValue::Single(_) => OctValue::Single(d.remove(0)),
            OctValue::Flat(_) => OctValue::Flat(d.remove(0)),
            OctValue::Pair { high, .. } => {
                let low = d.pop().expect("a pair has a low branch");
                OctValue::Pair {
                    high: high.as_ref().and(d.pop()),
                    low,
                }
            }
        })
    })
}

/// What an activation's backward keeps of one tensor.
enum Derivative {
    /// Whether each value's gradient passes (ReLU, ReLU6).
    Mask(Vec<bool>),
    /// The sigmoid's output.
    Sigmoid(Tensor),
}

impl Derivative {
    /// The output gradient `g` times the derivative.
    fn times(&self, g: &Tensor) -> Result<Tensor> {
        let d = match self {
            Derivative::Mask(m) => with_f32(g, |g| {
                g.iter()
                    .zip(m)
                    .map(|(&g, &p)| if p { g } else { 0.0 })
                    .collect::<Vec<f32>>()
            })?,
            Derivative::Sigmoid(y) => with_f32_all([g, y], |[g, y]| {
                g.iter()
                    .zip(y)
                    .map(|(&g, &y)| g * y * (1.0 - y))
                    .collect::<Vec<f32>>()
            })?,
        };
        Tensor::from_vec(d, g.shape(), g.device())
    }
}

/// The linear classifier: `dX = dY·W`, `dW = dYᵀ·X`, `db = Σ dY` over the batch.
pub(crate) struct LinearBackward {
    x: Tensor,
    weight: Tensor,
    bias: Option<Tensor>,
    needs_grad: bool,
}

impl LinearBackward {
    /// Records `x·Wᵀ + b` (the layer's own forward, `y`) for its backward.
    pub(crate) fn record(
        y: OctValue,
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        needs_grad: bool,
    ) -> Result<Option<Recorded>> {
        let back = LinearBackward {
            x: x.detach(),
            weight: weight.clone(),
            bias: bias.cloned(),
            needs_grad,
        };
        Ok(Some((detached(y)?, Box::new(back))))
    }
}

impl Backward for LinearBackward {
    fn backward(
        self: Box<Self>,
        grad: &OctValue,
        params: &mut ParamGrads,
    ) -> Result<Vec<Option<OctValue>>> {
        let g = tensor(grad)?;
        params.add(&self.weight, g.t()?.matmul(&self.x)?)?;
        if let Some(b) = &self.bias {
            params.add(b, g.sum(0)?)?;
        }
        if !self.needs_grad {
            return Ok(vec![None]);
        }
        let dx = g.matmul(&self.weight.detach())?;
        Ok(vec![Some(OctValue::Flat(dx))])
    }
}
