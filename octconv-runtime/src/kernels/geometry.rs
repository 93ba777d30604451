//! The shape arithmetic of one 2-D convolution, shared by the forward and both backward kernels.

use candle_core::{bail, Result};

/// Geometry of `conv2d(x [n, c_in, h, w], weight [c_out, c_in / groups, k_h, k_w])` with square stride
/// and padding and no dilation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeometry {
    /// Batch size.
    pub n: usize,
    /// Input channels (all groups).
    pub c_in: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output channels (all groups).
    pub c_out: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Stride (both dimensions).
    pub stride: usize,
    /// Zero padding on each side (both dimensions).
    pub pad: usize,
    /// Channel groups.
    pub groups: usize,
}

impl ConvGeometry {
    /// A 3×3 "same" convolution (stride 1, padding 1) of `n` images `c_in → c_out` at `(h, w)` in
    /// `groups` groups: each path of an octave layer.
    pub(crate) fn same3x3(
        n: usize,
        (c_in, c_out): (usize, usize),
        (h, w): (usize, usize),
        groups: usize,
    ) -> Self {
        ConvGeometry {
            n,
            c_in,
            h,
            w,
            c_out,
            kh: 3,
            kw: 3,
            stride: 1,
            pad: 1,
            groups,
        }
    }

    /// Validates the geometry: channels divisible by `groups`, stride ≥ 1, a non-empty output.
    pub fn new(
        x: (usize, usize, usize, usize),
        weight: (usize, usize, usize, usize),
        stride: usize,
        pad: usize,
        groups: usize,
    ) -> Result<Self> {
        let (n, c_in, h, w) = x;
        let (c_out, per_group, kh, kw) = weight;
        if groups == 0 || stride == 0 {
            bail!("conv2d: groups and stride must be at least 1 (got groups {groups}, stride {stride})")
        }
        if c_in != per_group * groups || c_out % groups != 0 {
            bail!(
                "conv2d: input has {c_in} channels and the weight [{c_out}, {per_group}, {kh}, {kw}] \
                 expects {} with {groups} group(s)",
                per_group * groups
            )
        }
        if h + 2 * pad < kh || w + 2 * pad < kw {
            bail!(
                "conv2d: kernel {kh}×{kw} is larger than the padded input {h}×{w} (padding {pad})"
            )
        }
        Ok(ConvGeometry {
            n,
            c_in,
            h,
            w,
            c_out,
            kh,
            kw,
            stride,
            pad,
            groups,
        })
    }

    /// Output height.
    pub fn oh(&self) -> usize {
        (self.h + 2 * self.pad - self.kh) / self.stride + 1
    }

    /// Output width.
    pub fn ow(&self) -> usize {
        (self.w + 2 * self.pad - self.kw) / self.stride + 1
    }

    /// Output pixels per channel.
    pub fn out_pixels(&self) -> usize {
        self.oh() * self.ow()
    }

    /// Input channels per group.
    pub fn cin_g(&self) -> usize {
        self.c_in / self.groups
    }

    /// Output channels per group.
    pub fn cout_g(&self) -> usize {
        self.c_out / self.groups
    }

    /// The GEMM depth: one column of the unfolded input per output pixel, `cin_g · kh · kw` rows.
    pub fn k(&self) -> usize {
        self.cin_g() * self.kh * self.kw
    }

    /// A 1×1, stride 1, unpadded convolution needs no unfolding: the input already is the column matrix.
    pub fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == 0
    }

    /// Elements of one input image.
    pub fn in_image(&self) -> usize {
        self.c_in * self.h * self.w
    }

    /// Elements of one output image.
    pub fn out_image(&self) -> usize {
        self.c_out * self.out_pixels()
    }

    /// Multiply-accumulates of the forward pass.
    pub fn macs(&self) -> u64 {
        (self.n * self.c_out * self.out_pixels() * self.k()) as u64
    }
}
