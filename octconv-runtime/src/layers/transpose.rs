//! `octconv_transpose`: the transposed octave convolution of decoders (stride 2). See
//! `octconv_spec::layers` for the geometry: every path doubles its input's size; H→L reads the high
//! input pooled 2×2 and L→H is upsampled ×2 after its convolution.

use crate::kernels::{conv2d, ConvParams};
use crate::ops::{avg_pool2x2, upsample_nearest2x};
use crate::value::OctValue;
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use octconv_spec::ir::OctConvSpec;

/// The transposed convolution of `[N, Ci, H, W]` with `w` `[Ci, Co, k, k]`, stride 2, to
/// `[N, Co, 2H, 2W]`: PyTorch's `ConvTranspose2d` with kernel 2 (no padding) or kernel 3 (padding 1,
/// output padding 1).
///
/// Kernel 2 is a matrix product and a pixel shuffle (each input pixel writes its own 2×2 block).
/// Kernel 3 inserts zeros between the pixels and runs a stride-1 convolution with the flipped kernel.
/// Both are built from candle ops whose gradients are exact; candle's own `conv_transpose2d` is a
/// direct loop on the CPU.
pub fn conv_transpose_x2(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (n, ci, h, wd) = x.dims4()?;
    let (wi, co, k, k2) = w.dims4()?;
    if wi != ci || k != k2 {
        candle_core::bail!(
            "conv_transpose: input has {ci} channels, weight is {:?}",
            w.dims()
        );
    }
    match k {
        2 => {
            let rows = x.permute((0, 2, 3, 1))?.reshape((n * h * wd, ci))?;
            let y = rows.matmul(&w.reshape((ci, co * 4))?)?;
            y.reshape((n, h, wd, co, 2, 2))?
                .permute((0, 3, 1, 4, 2, 5))?
                .reshape((n, co, 2 * h, 2 * wd))
        }
        3 => {
            // x at even positions, zeros at odd ones: [N, C, 2H, 2W].
            let z = x.reshape((n, ci, h, 1, wd, 1))?;
            let z = Tensor::cat(&[&z, &z.zeros_like()?], 5)?;
            let z = Tensor::cat(&[&z, &z.zeros_like()?], 3)?.reshape((n, ci, 2 * h, 2 * wd))?;
            // Padding k − 1 − p = 1 before; 1 + output padding after, of which the zero row and
            // column after the last pixel are already there.
            let z = z.pad_with_zeros(2, 1, 1)?.pad_with_zeros(3, 1, 1)?;
            let rev = Tensor::new(&[2u32, 1, 0], x.device())?;
            let flipped = w
                .index_select(&rev, 2)?
                .index_select(&rev, 3)?
                .transpose(0, 1)?
                .contiguous()?;
            conv2d(
                &z,
                &flipped,
                ConvParams {
                    stride: 1,
                    pad: 0,
                    groups: 1,
                },
            )
        }
        _ => candle_core::bail!("conv_transpose supports kernel 2 or 3, found {k}"),
    }
}

/// A transposed octave convolution with its per-path weights and per-branch biases.
#[derive(Clone, Debug)]
pub struct OctConvTranspose2d {
    spec: OctConvSpec,
    /// Weights of H→H, H→L, L→H, L→L (`None` for absent paths), `[in, out, k, k]`.
    weights: [Option<Tensor>; 4],
    bias_h: Option<Tensor>,
    bias_l: Option<Tensor>,
}

impl OctConvTranspose2d {
    /// Replaces the weights and biases with private copies (a snapshot for a frozen model:
    /// [`crate::layers::OctLayer::freeze`]).
    pub fn freeze(&mut self) -> Result<()> {
        use crate::layers::octconv::snapshot;
        for w in self.weights.iter_mut().flatten() {
            *w = snapshot(w)?;
        }
        for b in [&mut self.bias_h, &mut self.bias_l].into_iter().flatten() {
            *b = snapshot(b)?;
        }
        Ok(())
    }

    /// Loads `hh.weight` … `ll.weight`, `h.bias`, `l.bias` from `vb`.
    pub fn new(spec: OctConvSpec, vb: VarBuilder) -> Result<Self> {
        let k = spec.kernel;
        let (weights, bias_h, bias_l) =
            super::octconv::load_octave(&spec, &vb, |cin, cout| (cin, cout, k, k))?;
        Ok(OctConvTranspose2d {
            spec,
            weights,
            bias_h,
            bias_l,
        })
    }

    /// Builds the layer from weight tensors (`[in, out, k, k]`) in `Path::ALL` order and biases.
    pub fn from_weights(
        spec: OctConvSpec,
        weights: [Option<Tensor>; 4],
        bias_h: Option<Tensor>,
        bias_l: Option<Tensor>,
    ) -> Self {
        OctConvTranspose2d {
            spec,
            weights,
            bias_h,
            bias_l,
        }
    }

    /// Inference (no gradient): kernel 2 on f32 CPU tensors with one path or all four runs
    /// [`crate::kernels::transpose`]; anything else [`OctConvTranspose2d::forward`].
    pub fn infer(&self, x: &OctValue) -> Result<OctValue> {
        use crate::kernels::transpose::{self, OctaveTranspose};
        let f32_cpu = crate::kernels::serves_f32;
        let s = &self.spec;
        let all_f32 = {
            let (h, l) = x.branches();
            h.into_iter()
                .chain(l)
                .chain(self.weights.iter().flatten())
                .all(f32_cpu)
        };
        if s.kernel != 2 || !all_f32 {
            return self.forward(x);
        }
        let dev = match x.branches() {
            (Some(t), _) | (None, Some(t)) => t.device().clone(),
            _ => return self.forward(x),
        };
        match (x.branches(), &self.weights) {
            ((Some(xs), None), [Some(w), None, None, None]) => {
                let (n, ci, h, wd) = xs.dims4()?;
                let y = crate::kernels::with_f32_all([xs, w], |[x, w]| {
                    transpose::forward(x, w, (n, ci, h, wd), s.out_h)
                })?;
                let y = Tensor::from_vec(y, (n, s.out_h, 2 * h, 2 * wd), &dev)?;
                Ok(OctValue::Single(super::octconv::add_bias(y, &self.bias_h)?))
            }
            ((Some(xh), Some(xl)), [Some(hh), Some(hl), Some(lh), Some(ll)]) => {
                let (n, in_h, h, w) = xh.dims4()?;
                let g = OctaveTranspose {
                    n,
                    in_h,
                    in_l: s.in_l,
                    out_h: s.out_h,
                    out_l: s.out_l,
                    h,
                    w,
                };
                let even = h % 2 == 0 && w % 2 == 0 && h > 0 && w > 0;
                if !even || in_h != s.in_h || xl.dims4()? != (n, s.in_l, h / 2, w / 2) {
                    return self.forward(x);
                }
                let (yh, yl) = crate::kernels::with_f32_all(
                    [xh, xl, hh, hl, lh, ll],
                    |[xh, xl, hh, hl, lh, ll]| {
                        transpose::forward_octave(&g, xh, xl, [hh, hl, lh, ll])
                    },
                )?;
                let yh = Tensor::from_vec(yh, (n, s.out_h, 2 * h, 2 * w), &dev)?;
                let yl = Tensor::from_vec(yl, (n, s.out_l, h, w), &dev)?;
                Ok(OctValue::Pair {
                    high: Some(super::octconv::add_bias(yh, &self.bias_h)?),
                    low: super::octconv::add_bias(yl, &self.bias_l)?,
                })
            }
            _ => self.forward(x),
        }
    }

    /// Applies the layer to a tensor or a pair.
    pub fn forward(&self, x: &OctValue) -> Result<OctValue> {
        let (xh, xl) = x.branches();
        let [hh, hl, lh, ll] = &self.weights;
        let path = |w: &Option<Tensor>, x: Option<&Tensor>| -> Result<Option<Tensor>> {
            match (w, x) {
                (Some(w), Some(x)) => conv_transpose_x2(x, w).map(Some),
                _ => Ok(None),
            }
        };
        let pooled = match (hl, xh) {
            (Some(_), Some(h)) => Some(avg_pool2x2(h)?),
            _ => None,
        };
        let lh = path(lh, xl)?.map(|t| upsample_nearest2x(&t)).transpose()?;
        let high = sum(path(hh, xh)?, lh, &self.bias_h)?;
        let low = sum(path(hl, pooled.as_ref())?, path(ll, xl)?, &self.bias_l)?;
        match (high, low) {
            (Some(h), None) if self.spec.out_l == 0 => Ok(OctValue::Single(h)),
            (high, Some(low)) => Ok(OctValue::Pair { high, low }),
            _ => candle_core::bail!("octconv_transpose: no path produces the output"),
        }
    }
}

/// `a + b + bias` over the parts that exist.
fn sum(a: Option<Tensor>, b: Option<Tensor>, bias: &Option<Tensor>) -> Result<Option<Tensor>> {
    let s = match (a, b) {
        (Some(a), Some(b)) => Some((a + b)?),
        (a, b) => a.or(b),
    };
    s.map(|s| super::octconv::add_bias(s, bias)).transpose()
}
