//! The elaborated model: a flat list of layers in execution order, each with a stable hierarchical
//! name, its inputs, shapes, parameter count, MACs and output activation size.
//!
//! Layer 0 is always the `input` node. Every other layer reads the layers listed in `inputs` (indices
//! of earlier layers): one for ordinary layers, two or more for `add` and `concat` (a residual's main
//! branch first, then its shortcut), the map and then the gates for `scale`. The layers form a DAG in
//! topological order; the runtime interpreter and the code generator walk this list in order.

use crate::shape::{Dims, Shape};
use crate::source::Span;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A plain convolution on a single-frequency tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvSpec {
    /// Input channels.
    pub in_c: usize,
    /// Output channels.
    pub out_c: usize,
    /// Square kernel size.
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding on each side.
    pub padding: usize,
    /// Groups.
    pub groups: usize,
    /// Whether a bias is added.
    pub bias: bool,
}

/// One of the four OctConv paths.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Path {
    /// High → high.
    HH,
    /// High → low (average-pool 2×2, then convolve).
    HL,
    /// Low → high (convolve, then nearest ×2 upsample; no upsample at stride 2).
    LH,
    /// Low → low.
    LL,
}

impl Path {
    /// All paths in parameter order.
    pub const ALL: [Path; 4] = [Path::HH, Path::HL, Path::LH, Path::LL];

    /// Whether the path writes the high output (H→H, L→H).
    pub fn to_high(self) -> bool {
        matches!(self, Path::HH | Path::LH)
    }

    /// `H→H`, `H→L`, `L→H` or `L→L`, for messages.
    pub fn arrow(self) -> &'static str {
        match self {
            Path::HH => "H→H",
            Path::HL => "H→L",
            Path::LH => "L→H",
            Path::LL => "L→L",
        }
    }

    /// The parameter-name segment: `hh`, `hl`, `lh`, `ll`.
    pub fn as_str(self) -> &'static str {
        match self {
            Path::HH => "hh",
            Path::HL => "hl",
            Path::LH => "lh",
            Path::LL => "ll",
        }
    }
}

/// An octave convolution (Chen et al. 2019) with explicit channel counts per branch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OctConvSpec {
    /// High-frequency input channels.
    pub in_h: usize,
    /// Low-frequency input channels (0 for a single-frequency input, α_in = 0).
    pub in_l: usize,
    /// High-frequency output channels (0 at α_out = 1).
    pub out_h: usize,
    /// Low-frequency output channels (0 at α_out = 0: the output is single-frequency).
    pub out_l: usize,
    /// Square, odd kernel size; padding is `kernel / 2` ("same").
    pub kernel: usize,
    /// 1 or 2. Stride 2 average-pools before the convolutions, as in the paper's code, unless
    /// `downsample` is [`Downsample::Stride`].
    pub stride: usize,
    /// Groups per path.
    pub groups: usize,
    /// Depthwise: one filter per channel, cross-frequency paths dropped.
    pub depthwise: bool,
    /// Whether each output branch gets a bias (added once per branch).
    pub bias: bool,
    /// How stride 2 halves the map: [`Downsample::Pool`] (the paper's rule) except on single-branch
    /// layers that asked for [`Downsample::Stride`]; always `Pool` at stride 1 and in transposed
    /// convolutions.
    pub downsample: Downsample,
}

/// How a stride-2 octave convolution halves its input.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Downsample {
    /// Average-pool 2×2, then convolve with stride 1 (the OctConv paper's rule, on every path).
    #[default]
    Pool,
    /// Convolve with stride 2 directly, padding `kernel / 2` (torchvision's `Conv2d(stride = 2,
    /// padding = k // 2)`); single-branch layers (α_in = α_out = 0) only. An odd side `n` gives
    /// `(n + 1) / 2`.
    Stride,
}

impl Downsample {
    /// Every mode, in the order help texts list them.
    pub const ALL: [Downsample; 2] = [Downsample::Pool, Downsample::Stride];

    /// The mode a `downsample` word names, if any.
    pub fn from_word(word: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.as_str() == word)
    }

    /// The word the `downsample` argument takes: `pool`, `stride`.
    pub fn as_str(self) -> &'static str {
        match self {
            Downsample::Pool => "pool",
            Downsample::Stride => "stride",
        }
    }
}

impl OctConvSpec {
    /// A layer from the input split `(in_h, in_l)` to the output split `(out_h, out_l)` with one
    /// group, not depthwise, and pooled downsampling: what a transposed octave convolution and an
    /// automatic residual projection always are, and the base of every `octconv`.
    pub fn dense(
        (in_h, in_l): (usize, usize),
        (out_h, out_l): (usize, usize),
        kernel: usize,
        stride: usize,
        bias: bool,
    ) -> OctConvSpec {
        OctConvSpec {
            in_h,
            in_l,
            out_h,
            out_l,
            kernel,
            stride,
            groups: 1,
            depthwise: false,
            bias,
            downsample: Downsample::Pool,
        }
    }

    /// Input and output channels of a path, or `None` if the path is absent.
    pub fn path_channels(&self, p: Path) -> Option<(usize, usize)> {
        let (i, o) = match p {
            Path::HH => (self.in_h, self.out_h),
            Path::HL => (self.in_h, self.out_l),
            Path::LH => (self.in_l, self.out_h),
            Path::LL => (self.in_l, self.out_l),
        };
        let cross = matches!(p, Path::HL | Path::LH);
        (i > 0 && o > 0 && !(self.depthwise && cross)).then_some((i, o))
    }

    /// The paths that exist, in parameter order.
    pub fn paths(&self) -> impl Iterator<Item = Path> + '_ {
        Path::ALL
            .into_iter()
            .filter(|p| self.path_channels(*p).is_some())
    }

    /// α of the input split.
    pub fn alpha_in(&self) -> f64 {
        crate::shape::split_alpha(self.in_h, self.in_l)
    }

    /// α of the output split.
    pub fn alpha_out(&self) -> f64 {
        crate::shape::split_alpha(self.out_h, self.out_l)
    }

    /// Whether the layer halves its input by a stride-2 convolution rather than by pooling first
    /// (stride 2 and [`Downsample::Stride`]).
    pub fn strided_conv(&self) -> bool {
        self.stride == 2 && self.downsample == Downsample::Stride
    }

    /// Whether this layer at stride 1 on its input 2×2-average-pooled beforehand is the same layer
    /// on the input itself: a stride-2 layer that pools first, without an L→H path (at stride 2
    /// L→H reads `X_L` as it is, with no upsampling; at stride 1 it would read `pool(X_L)` and
    /// upsample). H→H and L→L pool once, H→L twice, either way.
    pub fn runs_on_pooled_input(&self) -> bool {
        let lh = self.in_l > 0 && self.out_h > 0 && !self.depthwise;
        self.stride == 2 && !self.strided_conv() && !lh
    }
}

/// Pooling window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolSpec {
    /// Square window size.
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Padding on each side.
    pub padding: usize,
}

/// What a layer computes.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Op {
    /// The model input (layer 0).
    Input,
    /// Plain convolution.
    Conv(ConvSpec),
    /// Octave convolution.
    OctConv(OctConvSpec),
    /// Transposed octave convolution, stride 2: every path doubles its input's size (kernel 2, or
    /// kernel 3 with padding 1 and output padding 1). Weights are `[in, out, k, k]` per path.
    OctConvTranspose(OctConvSpec),
    /// Batch normalisation; separate statistics per branch of a pair.
    BatchNorm {
        /// Added to the variance.
        eps: f64,
        /// Running-statistics momentum.
        momentum: f64,
    },
    /// ReLU.
    Relu,
    /// Dropout with drop probability `p` (identity in eval mode).
    Dropout {
        /// Drop probability.
        p: f64,
    },
    /// Average pooling (per branch on a pair).
    AvgPool(PoolSpec),
    /// Max pooling (per branch on a pair).
    MaxPool(PoolSpec),
    /// Single-frequency → pair: the last `low` channels, average-pooled 2×2, become the low branch.
    Split {
        /// Channels moved to the low branch.
        low: usize,
    },
    /// Pair → single-frequency: `concat([high, upsample_nearest_x2(low)])`, high channels first.
    Merge,
    /// Single-frequency → pair with every channel in both branches: high = x, low = x average-pooled
    /// 2×2 (the seed's octave input).
    Pyramid,
    /// `[C, H, W]` → `[C]`; with `per_branch`, a pair → `[Ch + Cl]` (the head the paper warns against).
    GlobalAvgPool {
        /// Pool each branch of a pair separately and concatenate (explicit opt-in).
        per_branch: bool,
    },
    /// `[C, H, W]` → `[C·H·W]`.
    Flatten,
    /// Fully connected layer on a flat vector.
    Linear {
        /// Input features.
        in_f: usize,
        /// Output features.
        out_f: usize,
        /// Whether a bias is added.
        bias: bool,
    },
    /// Element-wise sum of all inputs: a residual (main branch, shortcut), an `add(…)` skip or the
    /// join of `branches add`.
    Add,
    /// Concatenation of all inputs along channels, in order; on pairs high with high and low with low.
    Concat,
    /// `inputs[0]` (a map or pair) multiplied per channel by `inputs[1]`, a flat vector with one gate
    /// per channel (high channels first): the end of a squeeze-and-excitation block.
    Scale,
    /// Nearest-neighbour upsampling of every branch by an integer factor.
    Upsample {
        /// Factor per side.
        scale: usize,
    },
    /// Logistic sigmoid.
    Sigmoid,
    /// `min(max(x, 0), 6)`.
    Relu6,
    /// `x · relu6(x + 3) / 6` (MobileNet v3).
    HardSwish,
    /// `x · sigmoid(x)` (SiLU, swish).
    Silu,
    /// Pair → single-frequency at the low resolution: `concat([avg_pool_2x2(high), low])`.
    MergeLow,
}

impl Op {
    /// The layer kind as written in specs (`octconv`, `bn`, …).
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Input => "input",
            Op::Conv(_) => "conv",
            Op::OctConv(_) => "octconv",
            Op::OctConvTranspose(_) => "octconv_transpose",
            Op::BatchNorm { .. } => "bn",
            Op::Relu => "relu",
            Op::Dropout { .. } => "dropout",
            Op::AvgPool(_) => "avg_pool",
            Op::MaxPool(_) => "max_pool",
            Op::Split { .. } => "split",
            Op::Merge => "merge",
            Op::Pyramid => "pyramid",
            Op::GlobalAvgPool { .. } => "global_avg_pool",
            Op::Flatten => "flatten",
            Op::Linear { .. } => "linear",
            Op::Add => "add",
            Op::Concat => "concat",
            Op::Scale => "scale",
            Op::Upsample { .. } => "upsample",
            Op::Sigmoid => "sigmoid",
            Op::Relu6 => "relu6",
            Op::HardSwish => "hardswish",
            Op::Silu => "silu",
            Op::MergeLow => "merge",
        }
    }

    /// The op as one line of JSON (`{"type":"conv","in_c":3,…}`): the form in which generated code
    /// carries each layer's op to the runtime's one constructor, so the code generator writes no
    /// per-op code. [`Op::from_json`] reads it back exactly (floats round-trip bit for bit).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("an Op always serialises")
    }

    /// The op written by [`Op::to_json`], or why the text is not one.
    pub fn from_json(text: &str) -> Result<Op, String> {
        serde_json::from_str(text).map_err(|e| format!("`{text}` is not an op: {e}"))
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Conv(c) => {
                write!(f, "conv {k}x{k}", k = c.kernel)?;
                if c.stride != 1 {
                    write!(f, " s{}", c.stride)?;
                }
                if c.groups != 1 {
                    write!(f, " g{}", c.groups)?;
                }
                Ok(())
            }
            Op::OctConv(o) => {
                write!(f, "octconv {k}x{k}", k = o.kernel)?;
                if o.stride != 1 {
                    write!(f, " s{}", o.stride)?;
                }
                if o.strided_conv() {
                    write!(f, " strided")?;
                }
                if o.depthwise {
                    write!(f, " dw")?;
                } else if o.groups != 1 {
                    write!(f, " g{}", o.groups)?;
                }
                write!(f, " α {:.3}→{:.3}", o.alpha_in(), o.alpha_out())
            }
            Op::OctConvTranspose(o) => write!(
                f,
                "octconv_t {k}x{k} s2 α {:.3}→{:.3}",
                o.alpha_in(),
                o.alpha_out(),
                k = o.kernel
            ),
            Op::Dropout { p } => write!(f, "dropout {p}"),
            Op::AvgPool(p) | Op::MaxPool(p) => {
                write!(f, "{} {k}x{k} s{}", self.kind(), p.stride, k = p.kernel)
            }
            Op::GlobalAvgPool { per_branch: true } => write!(f, "global_avg_pool per-branch"),
            Op::Upsample { scale } => write!(f, "upsample x{scale}"),
            Op::MergeLow => write!(f, "merge to low"),
            _ => write!(f, "{}", self.kind()),
        }
    }
}

/// One elaborated layer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Layer {
    /// Stable hierarchical name (`wide0.res0.octconv1`); parameter names extend it.
    pub name: String,
    /// What it computes.
    pub op: Op,
    /// Indices of the layers it reads (empty for the input).
    pub inputs: Vec<usize>,
    /// Shape of its (first) input.
    pub input: Shape,
    /// Shape of its output.
    pub output: Shape,
    /// Trainable parameters (BN running statistics excluded).
    pub params: u64,
    /// Multiply-accumulates per sample (convolutions and linear layers).
    pub macs: u64,
    /// Bytes of its output activation per sample, as f32.
    pub activation_bytes: u64,
    /// Where the layer is written in the spec.
    #[serde(skip)]
    pub span: Span,
}

/// A model argument as bound (after defaults).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModelArg {
    /// Parameter name.
    pub name: String,
    /// Value, as spec text.
    pub value: String,
}

/// An elaborated, checked model.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Model {
    /// Model name.
    pub name: String,
    /// `///` documentation.
    pub docs: Vec<String>,
    /// All parameters with their bound values.
    pub args: Vec<ModelArg>,
    /// Input `[C, H, W]`.
    pub input: Dims,
    /// Output shape.
    pub output: Shape,
    /// Layers in execution order; `layers[0]` is the input.
    pub layers: Vec<Layer>,
}

impl Model {
    /// Total trainable parameters.
    pub fn params(&self) -> u64 {
        self.layers
            .iter()
            .fold(0u64, |a, l| a.saturating_add(l.params))
    }

    /// Total MACs per sample.
    pub fn macs(&self) -> u64 {
        self.layers
            .iter()
            .fold(0u64, |a, l| a.saturating_add(l.macs))
    }

    /// Sum of all layers' output activations per sample, in bytes (f32), input excluded.
    pub fn activation_bytes(&self) -> u64 {
        self.layers
            .iter()
            .skip(1)
            .fold(0u64, |a, l| a.saturating_add(l.activation_bytes))
    }

    /// The call that produces this model, e.g. `wrn(n = 4, k = 10, alpha = 0.25, …)`.
    pub fn call_string(&self) -> String {
        let args: Vec<String> = self
            .args
            .iter()
            .map(|a| format!("{} = {}", a.name, a.value))
            .collect();
        format!("{}({})", self.name, args.join(", "))
    }
}
