//! Builtin layers: their signatures and their shape rules, one module per family.
//!
//! Each op module turns bound arguments and the incoming [`Shape`] into an [`Op`] and an output shape,
//! or a diagnostic. The cost of the resulting op is computed in [`crate::cost`], never here.

mod conv;
pub(crate) mod graph;
mod head;
mod norm;
mod octave;
pub(crate) mod octconv;
mod pool;
mod resample;
mod transpose;

use crate::ast::{Call, Ty};
use crate::bind::SigParam;
use crate::diag::{DiagKind, Diagnostic};
use crate::ir::Op;
use crate::shape::Shape;
use crate::source::Span;
use crate::value::{Val, Value};

/// Largest channel count, spatial size, kernel or feature count the checker accepts.
pub const MAX_DIM: i64 = 1 << 24;

/// Parameter type of a builtin layer.
#[derive(Clone, Copy, Debug)]
enum PTy {
    Int,
    Float,
    Bool,
    Str,
}

/// A builtin layer's parameter: name, type, required.
type P = (&'static str, PTy, bool);

/// A builtin layer: name, parameters, one-line description.
pub struct LayerDef {
    /// Name as written in specs.
    pub name: &'static str,
    params: &'static [P],
    /// What it does.
    pub summary: &'static str,
    /// Its positional arguments name values to read besides the current one (`concat(enc1)`).
    pub reads_values: bool,
}

impl LayerDef {
    /// The parameters in binding form.
    pub fn sig(&self) -> Vec<SigParam> {
        self.params
            .iter()
            .map(|(n, t, r)| SigParam {
                name: n.to_string(),
                ty: match t {
                    PTy::Int => Ty::Int,
                    PTy::Float => Ty::Float,
                    PTy::Bool => Ty::Bool,
                    PTy::Str => Ty::Str,
                },
                required: *r,
            })
            .collect()
    }
}

use PTy::{Bool, Float, Int, Str};

/// Every builtin layer. Optional parameters' defaults are documented in `summary` and applied by the
/// op modules.
pub const LAYERS: &[LayerDef] = &[
    LayerDef {
        name: "octconv",
        params: &[
            ("out", Int, false),
            ("kernel", Int, true),
            ("stride", Int, false),
            ("alpha", Float, false),
            ("alpha_in", Float, false),
            ("groups", Int, false),
            ("depthwise", Bool, false),
            ("bias", Bool, false),
        ],
        summary: "octave convolution; out (required unless depthwise, which keeps the input channels), stride 1|2 (default 1), alpha = α_out (default α_in), alpha_in checks the input split, groups = 1, depthwise = false, bias = false; same padding, odd kernels",
        reads_values: false,
    },
    LayerDef {
        name: "octconv_transpose",
        params: &[
            ("out", Int, true),
            ("kernel", Int, false),
            ("stride", Int, false),
            ("alpha", Float, false),
            ("bias", Bool, false),
        ],
        summary: "transposed octave convolution doubling both branches (decoders); kernel = 2 (or 3: padding 1, output padding 1), stride = 2, alpha = α_out (default α_in), bias = true",
        reads_values: false,
    },
    LayerDef {
        name: "conv",
        params: &[
            ("out", Int, true),
            ("kernel", Int, true),
            ("stride", Int, false),
            ("padding", Int, false),
            ("groups", Int, false),
            ("bias", Bool, false),
        ],
        summary: "plain convolution on a single-frequency tensor; stride = 1, padding = kernel / 2, groups = 1, bias = false",
        reads_values: false,
    },
    LayerDef {
        name: "bn",
        params: &[("eps", Float, false), ("momentum", Float, false)],
        summary: "batch normalisation, separate statistics per branch; eps = 1e-5, momentum = 0.1",
        reads_values: false,
    },
    LayerDef {
        name: "relu",
        params: &[],
        summary: "ReLU on every branch",
        reads_values: false,
    },
    LayerDef {
        name: "dropout",
        params: &[("p", Float, false)],
        summary: "dropout with probability p = 0.5 (0 ≤ p < 1), every branch",
        reads_values: false,
    },
    LayerDef {
        name: "avg_pool",
        params: &[("kernel", Int, false), ("stride", Int, false), ("padding", Int, false)],
        summary: "average pooling per branch; kernel = 2, stride = kernel, padding = 0",
        reads_values: false,
    },
    LayerDef {
        name: "max_pool",
        params: &[("kernel", Int, false), ("stride", Int, false), ("padding", Int, false)],
        summary: "max pooling per branch; kernel = 2, stride = kernel, padding = 0",
        reads_values: false,
    },
    LayerDef {
        name: "split",
        params: &[("alpha", Float, true)],
        summary: "single-frequency → octave pair: the last floor(α·C) channels, average-pooled 2×2, become the low branch",
        reads_values: false,
    },
    LayerDef {
        name: "merge",
        params: &[("to", Str, false)],
        summary: "octave pair → single-frequency; to = high (default): concat([high, upsample_nearest_x2(low)]); to = low: concat([avg_pool_2x2(high), low]) at the low resolution; a no-op on a single-frequency tensor (α = 0)",
        reads_values: false,
    },
    LayerDef {
        name: "global_avg_pool",
        params: &[("per_branch", Bool, false)],
        summary: "[C, H, W] → [C]; per_branch = true pools each branch of a pair and concatenates (opt-in)",
        reads_values: false,
    },
    LayerDef {
        name: "flatten",
        params: &[],
        summary: "[C, H, W] → [C·H·W]",
        reads_values: false,
    },
    LayerDef {
        name: "linear",
        params: &[("out", Int, true), ("bias", Bool, false)],
        summary: "fully connected layer on a flat vector; bias = true",
        reads_values: false,
    },
    LayerDef {
        name: "concat",
        params: &[],
        summary: "concat(a, …): the current value and the named values joined along channels, in that order; on octave pairs high with high and low with low",
        reads_values: true,
    },
    LayerDef {
        name: "add",
        params: &[],
        summary: "add(a, …): element-wise sum of the current value and the named values, which must have its shape",
        reads_values: true,
    },
    LayerDef {
        name: "scale",
        params: &[],
        summary: "scale(x): the named map or pair x multiplied per channel by the current value, a flat vector with one gate per channel of x (high channels first): squeeze-and-excitation",
        reads_values: true,
    },
    LayerDef {
        name: "upsample",
        params: &[("scale", Int, false), ("mode", Str, false)],
        summary: "nearest-neighbour upsampling of every branch; scale = 2, mode = nearest",
        reads_values: false,
    },
    LayerDef {
        name: "sigmoid",
        params: &[],
        summary: "logistic sigmoid on every branch",
        reads_values: false,
    },
    LayerDef {
        name: "relu6",
        params: &[],
        summary: "min(max(x, 0), 6) on every branch",
        reads_values: false,
    },
    LayerDef {
        name: "hardswish",
        params: &[],
        summary: "x · relu6(x + 3) / 6 on every branch",
        reads_values: false,
    },
];

/// The builtin layer called `name`.
pub fn layer(name: &str) -> Option<&'static LayerDef> {
    LAYERS.iter().find(|l| l.name == name)
}

/// Bound arguments of one builtin layer call, with typed accessors that produce diagnostics.
pub(crate) struct Args<'a> {
    pub(crate) call: &'a Call,
    pub(crate) def: &'static LayerDef,
    pub(crate) values: Vec<Option<Value>>,
    pub(crate) spans: Vec<Option<Span>>,
    /// The checker is computing the α = 0 baseline: every α is forced to 0.
    pub(crate) alpha_zero: bool,
    /// The α that produced the input's split (the default α_out of an octconv).
    pub(crate) input_alpha: f64,
}

impl Args<'_> {
    fn index(&self, name: &str) -> usize {
        self.def
            .params
            .iter()
            .position(|p| p.0 == name)
            .unwrap_or_else(|| panic!("layer `{}` has no parameter `{name}`", self.def.name))
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Value> {
        self.values[self.index(name)].as_ref()
    }

    /// The argument's span, or the call's name when the default was used.
    pub(crate) fn span(&self, name: &str) -> Span {
        self.spans[self.index(name)].unwrap_or(self.call.name.span)
    }

    pub(crate) fn int(&self, name: &str) -> Option<i64> {
        match self.get(name)?.val {
            Val::Int(i) => Some(i),
            _ => None,
        }
    }

    pub(crate) fn float(&self, name: &str) -> Option<f64> {
        self.get(name)?.val.as_f64()
    }

    pub(crate) fn bool(&self, name: &str) -> Option<bool> {
        match self.get(name)?.val {
            Val::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// An integer size argument in `min..=MAX_DIM`, or `default` when not given.
    pub(crate) fn dim(&self, name: &str, default: i64, min: i64) -> Result<usize, Diagnostic> {
        let v = self.int(name).unwrap_or(default);
        if v < min || v > MAX_DIM {
            let kind = if v > MAX_DIM {
                DiagKind::Limit
            } else {
                DiagKind::Structure
            };
            return Err(self
                .error(
                    kind,
                    name,
                    format!(
                        "`{name}` of `{}` must be between {min} and {MAX_DIM}, found {v}",
                        self.def.name
                    ),
                )
                .with_label("out of range"));
        }
        Ok(v as usize)
    }

    /// An α argument (or `default`), checked to lie in [0, 1]. The baseline forces it to 0.
    pub(crate) fn alpha(&self, name: &str, default: f64) -> Result<f64, Diagnostic> {
        if self.alpha_zero {
            return Ok(0.0);
        }
        let a = self.float(name).unwrap_or(default);
        if !(0.0..=1.0).contains(&a) {
            let mut d = self
                .error(
                    DiagKind::AlphaRange,
                    name,
                    format!("α out of range: `{name}` of `{}` is {a}, but α must lie in [0, 1]", self.def.name),
                )
                .with_label(format!("{name} = {a}"))
                .with_help("α is the fraction of channels in the low-frequency branch: use a value in [0, 1] (the paper uses 0.125 to 0.5)");
            d = self.with_origin(d, name, &format!("{name} = {a} comes from here"));
            return Err(d);
        }
        Ok(a)
    }

    /// An error pointing at argument `name` (or the call).
    pub(crate) fn error(&self, kind: DiagKind, name: &str, msg: String) -> Diagnostic {
        Diagnostic::error(kind, self.span(name), msg)
    }

    /// An error pointing at the call.
    pub(crate) fn call_error(&self, kind: DiagKind, msg: String) -> Diagnostic {
        Diagnostic::error(kind, self.call.span, msg)
    }

    /// Adds a "comes from here" label where the argument's value was written, if elsewhere.
    pub(crate) fn with_origin(&self, d: Diagnostic, name: &str, msg: &str) -> Diagnostic {
        match self.get(name) {
            Some(v) if !contains(self.span(name), v.origin) => d.with_secondary(v.origin, msg),
            _ => d,
        }
    }
}

fn contains(outer: Span, inner: Span) -> bool {
    outer.file == inner.file && outer.start <= inner.start && inner.end <= outer.end
}

/// Applies builtin layer `args.def` to `input`: the op and its output shape, or why not.
pub(crate) fn apply(args: &Args, input: &Shape) -> Result<(Op, Shape), Diagnostic> {
    match args.def.name {
        "octconv" => octconv::apply(args, input),
        "conv" => conv::apply(args, input),
        "bn" => norm::bn(args, input),
        "relu" => Ok((Op::Relu, *input)),
        "sigmoid" => Ok((Op::Sigmoid, *input)),
        "relu6" => Ok((Op::Relu6, *input)),
        "hardswish" => Ok((Op::HardSwish, *input)),
        "upsample" => resample::upsample(args, input),
        "octconv_transpose" => transpose::apply(args, input),
        "dropout" => norm::dropout(args, input),
        "avg_pool" | "max_pool" => pool::apply(args, input),
        "split" => octave::split(args, input),
        "merge" => octave::merge(args, input),
        "global_avg_pool" => head::global_avg_pool(args, input),
        "flatten" => head::flatten(args, input),
        "linear" => head::linear(args, input),
        other => unreachable!("layer `{other}` is in LAYERS but has no single-input rule"),
    }
}
