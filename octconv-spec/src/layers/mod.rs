//! Builtin layers: their signatures and their shape rules, one module per family.
//!
//! Each op module turns bound arguments and the incoming [`Shape`] into an [`Op`] and an output shape,
//! or a diagnostic, and gives the op's cost rules (parameters, MACs, parameter names) as the
//! [`Costs`] of its [`LayerDef`]; [`crate::cost`] sums them over a model.

mod conv;
pub(crate) mod graph;
mod head;
mod norm;
mod octave;
pub(crate) mod octconv;
mod pool;
mod resample;
mod transpose;

use crate::bind::SigParam;
use crate::diag::{DiagKind, Diagnostic};
use crate::ir::{Layer, Op};
use crate::param_info::ParamInfo;
use crate::shape::Shape;
use crate::source::Span;
use crate::syntax::ast::{Call, Ty};
use crate::value::{Val, Value};

/// Largest channel count, spatial size, kernel or feature count the checker accepts.
pub const MAX_DIM: i64 = 1 << 24;

/// Parameter type of a builtin layer.
#[derive(Clone, Copy, Debug)]
pub(crate) enum PTy {
    Int,
    Float,
    Bool,
    Str,
}

/// What a parameter is when the call does not give it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DefaultValue {
    /// It must be given.
    Required,
    /// This integer.
    Int(i64),
    /// This number.
    Float(f64),
    /// This flag.
    Bool(bool),
    /// This word.
    Str(&'static str),
    /// Computed by the layer's rule from other arguments or the input, as described.
    Derived(&'static str),
}

impl std::fmt::Display for DefaultValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DefaultValue::Required => Ok(()),
            DefaultValue::Int(i) => write!(f, "{i}"),
            DefaultValue::Float(x) => write!(f, "{x}"),
            DefaultValue::Bool(b) => write!(f, "{b}"),
            DefaultValue::Str(w) | DefaultValue::Derived(w) => write!(f, "{w}"),
        }
    }
}

/// A builtin layer's parameter: name, type, default. Each layer module declares its parameters as
/// constants (`conv::KERNEL`) and its rule reads arguments through them (`a.dim(KERNEL, 1)`), so a
/// misspelt parameter does not compile; the name is written once.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Param {
    name: &'static str,
    ty: PTy,
    default: DefaultValue,
}

impl Param {
    /// A parameter called `name` of type `ty`.
    pub(crate) const fn new(name: &'static str, ty: PTy, default: DefaultValue) -> Self {
        Param { name, ty, default }
    }
}

/// A shape rule: the op and its output shape for bound arguments and an input, or why not.
pub(crate) type ShapeRule = fn(&Args, &Shape) -> Result<(Op, Shape), Diagnostic>;

/// How a layer's op and output shape are found.
#[derive(Clone, Copy)]
pub(crate) enum Rule {
    /// From the bound arguments and the one input.
    Map(ShapeRule),
    /// From the current value and the values its positional arguments name (`concat`, `add`,
    /// `scale`): [`graph`], called by the elaborator, which resolves the names.
    Join,
}

/// An op's trainable parameters, MACs per sample, and parameter names and shapes.
#[derive(Clone, Copy)]
pub(crate) struct Costs {
    /// Trainable parameters of the op on its (first) input.
    pub(crate) params: fn(&Op, &Shape) -> Option<u64>,
    /// Multiply-accumulates per sample, from input to output.
    pub(crate) macs: fn(&Op, &Shape, &Shape) -> Option<u64>,
    /// Its parameters and buffers, named `<layer>.<suffix>` ([`crate::params`]).
    pub(crate) weights: fn(&Layer) -> Vec<ParamInfo>,
}

/// The costs of a layer without parameters or MACs.
const FREE: Costs = Costs {
    params: |_, _| Some(0),
    macs: |_, _, _| Some(0),
    weights: |_| Vec::new(),
};

/// A builtin layer: everything the checker, the cost model and the parameter names know about it.
/// Adding a layer is one entry here (its rules in the op's module), its `Op` variant and name in
/// `Op::kind`, then in the runtime its layer type and its arms in `layers::build_op` and
/// `onnx::emit`; code generation needs nothing. The README's "Adding a layer" lists the same places.
pub struct LayerDef {
    /// Name as written in specs.
    pub name: &'static str,
    params: &'static [Param],
    /// What it does.
    pub summary: &'static str,
    rule: Rule,
    pub(crate) costs: Costs,
    /// Its output always has its input's shape (`bn`, `relu`, …): after an error in its arguments the
    /// checker passes the input on, so the layers after it are still checked.
    pub(crate) keeps_shape: bool,
}

impl LayerDef {
    /// The parameters in binding form.
    pub fn sig(&self) -> Vec<SigParam> {
        self.params
            .iter()
            .map(|p| SigParam {
                name: p.name.to_string(),
                ty: match p.ty {
                    PTy::Int => Ty::Int,
                    PTy::Float => Ty::Float,
                    PTy::Bool => Ty::Bool,
                    PTy::Str => Ty::Str,
                },
                required: p.default == DefaultValue::Required,
            })
            .collect()
    }

    /// Whether its positional arguments name values to read besides the current one
    /// (`concat(enc1)`).
    pub fn reads_values(&self) -> bool {
        matches!(self.rule, Rule::Join)
    }

    /// The call with every parameter and its default: `octconv(out, kernel, stride = 1, …)`.
    pub fn signature(&self) -> String {
        let ps: Vec<String> = self
            .params
            .iter()
            .map(|p| match p.default {
                DefaultValue::Required => p.name.to_string(),
                d => format!("{} = {d}", p.name),
            })
            .collect();
        let values = if self.reads_values() { "a, …" } else { "" };
        let sep = if !values.is_empty() && !ps.is_empty() {
            ", "
        } else {
            ""
        };
        format!("{}({values}{sep}{})", self.name, ps.join(", "))
    }
}

/// Every builtin layer.
pub const LAYERS: &[LayerDef] = &[
    LayerDef {
        name: "octconv",
        params: octconv::PARAMS,
        summary: "octave convolution, same padding, odd kernels; stride 1 or 2 (downsample = pool: average-pool 2×2, then convolve, as the paper; downsample = stride: convolve with stride 2, as torchvision, single-branch layers only); alpha = α_out; depthwise keeps each branch's channels",
        rule: Rule::Map(octconv::apply),
        costs: Costs {
            params: octconv::params,
            macs: octconv::macs,
            weights: octconv::weights,
        },
        keeps_shape: false,
    },
    LayerDef {
        name: "octconv_transpose",
        params: transpose::PARAMS,
        summary: "transposed octave convolution doubling both branches (decoders); kernel 2, or 3 with padding 1 and output padding 1; alpha = α_out",
        rule: Rule::Map(transpose::apply),
        costs: Costs {
            params: octconv::params,
            macs: transpose::macs,
            weights: octconv::weights,
        },
        keeps_shape: false,
    },
    LayerDef {
        name: "conv",
        params: conv::PARAMS,
        summary: "plain convolution on a single-frequency tensor",
        rule: Rule::Map(conv::apply),
        costs: Costs {
            params: conv::params,
            macs: conv::macs,
            weights: conv::weights,
        },
        keeps_shape: false,
    },
    LayerDef {
        name: "bn",
        params: norm::BN_PARAMS,
        summary: "batch normalisation, separate statistics per branch",
        rule: Rule::Map(norm::bn),
        costs: Costs {
            params: norm::bn_param_count,
            macs: FREE.macs,
            weights: norm::bn_weights,
        },
        keeps_shape: true,
    },
    LayerDef {
        name: "relu",
        params: &[],
        summary: "ReLU on every branch",
        rule: Rule::Map(|_, input| Ok((Op::Relu, *input))),
        costs: FREE,
        keeps_shape: true,
    },
    LayerDef {
        name: "dropout",
        params: norm::DROPOUT_PARAMS,
        summary: "dropout with probability p (0 ≤ p < 1) on every branch; the identity in eval mode",
        rule: Rule::Map(norm::dropout),
        costs: FREE,
        keeps_shape: true,
    },
    LayerDef {
        name: "avg_pool",
        params: pool::PARAMS,
        summary: "average pooling per branch",
        rule: Rule::Map(pool::apply),
        costs: FREE,
        keeps_shape: false,
    },
    LayerDef {
        name: "max_pool",
        params: pool::PARAMS,
        summary: "max pooling per branch",
        rule: Rule::Map(pool::apply),
        costs: FREE,
        keeps_shape: false,
    },
    LayerDef {
        name: "split",
        params: octave::SPLIT_PARAMS,
        summary: "single-frequency → octave pair: the last floor(α·C) channels, average-pooled 2×2, become the low branch",
        rule: Rule::Map(octave::split),
        costs: FREE,
        keeps_shape: false,
    },
    LayerDef {
        name: "pyramid",
        params: &[],
        summary: "single-frequency → octave pair with every channel in both branches: high = x, low = x average-pooled 2×2 (the seed's octave input; not a channel split)",
        rule: Rule::Map(octave::pyramid),
        costs: FREE,
        keeps_shape: false,
    },
    LayerDef {
        name: "merge",
        params: octave::MERGE_PARAMS,
        summary: "octave pair → single-frequency; to = high: concat([high, upsample_nearest_x2(low)]); to = low: concat([avg_pool_2x2(high), low]); the identity on a single-frequency tensor",
        rule: Rule::Map(octave::merge),
        costs: FREE,
        keeps_shape: false,
    },
    LayerDef {
        name: "global_avg_pool",
        params: head::GAP_PARAMS,
        summary: "[C, H, W] → [C]; per_branch = true pools each branch of a pair and concatenates (opt-in)",
        rule: Rule::Map(head::global_avg_pool),
        costs: FREE,
        keeps_shape: false,
    },
    LayerDef {
        name: "flatten",
        params: &[],
        summary: "[C, H, W] → [C·H·W]",
        rule: Rule::Map(head::flatten),
        costs: FREE,
        keeps_shape: false,
    },
    LayerDef {
        name: "linear",
        params: head::LINEAR_PARAMS,
        summary: "fully connected layer on a flat vector",
        rule: Rule::Map(head::linear),
        costs: Costs {
            params: head::linear_params,
            macs: head::linear_macs,
            weights: head::linear_weights,
        },
        keeps_shape: false,
    },
    LayerDef {
        name: "concat",
        params: &[],
        summary: "the current value and the named values joined along channels, in that order; on octave pairs high with high and low with low",
        rule: Rule::Join,
        costs: FREE,
        keeps_shape: false,
    },
    LayerDef {
        name: "add",
        params: &[],
        summary: "element-wise sum of the current value and the named values, which must have its shape",
        rule: Rule::Join,
        costs: FREE,
        keeps_shape: false,
    },
    LayerDef {
        name: "scale",
        params: &[],
        summary: "scale(x): the named map or pair x multiplied per channel by the current value, a flat vector with one gate per channel of x (high channels first): squeeze-and-excitation",
        rule: Rule::Join,
        costs: FREE,
        keeps_shape: false,
    },
    LayerDef {
        name: "upsample",
        params: resample::PARAMS,
        summary: "nearest-neighbour upsampling of every branch",
        rule: Rule::Map(resample::upsample),
        costs: FREE,
        keeps_shape: false,
    },
    LayerDef {
        name: "sigmoid",
        params: &[],
        summary: "logistic sigmoid on every branch",
        rule: Rule::Map(|_, input| Ok((Op::Sigmoid, *input))),
        costs: FREE,
        keeps_shape: true,
    },
    LayerDef {
        name: "relu6",
        params: &[],
        summary: "min(max(x, 0), 6) on every branch",
        rule: Rule::Map(|_, input| Ok((Op::Relu6, *input))),
        costs: FREE,
        keeps_shape: true,
    },
    LayerDef {
        name: "hardswish",
        params: &[],
        summary: "x · relu6(x + 3) / 6 on every branch",
        rule: Rule::Map(|_, input| Ok((Op::HardSwish, *input))),
        costs: FREE,
        keeps_shape: true,
    },
    LayerDef {
        name: "silu",
        params: &[],
        summary: "x · sigmoid(x) on every branch (swish, as EfficientNet)",
        rule: Rule::Map(|_, input| Ok((Op::Silu, *input))),
        costs: FREE,
        keeps_shape: true,
    },
];

/// The builtin layer called `name`.
pub fn layer(name: &str) -> Option<&'static LayerDef> {
    LAYERS.iter().find(|l| l.name == name)
}

/// The builtin layer that produced `op` (`None` for the model input).
pub(crate) fn def_of(op: &Op) -> Option<&'static LayerDef> {
    layer(op.kind())
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
    /// The position of `p` in this layer's signature; `None` if `p` is another layer's parameter (a
    /// bug in a rule: its value is then missing, which [`Args::no_value`] reports).
    fn index(&self, p: Param) -> Option<usize> {
        self.def.params.iter().position(|q| q.name == p.name)
    }

    /// The argument as given (`None` when the default applies).
    pub(crate) fn get(&self, p: Param) -> Option<&Value> {
        self.index(p).and_then(|i| self.values[i].as_ref())
    }

    /// The parameter's default from the layer table.
    fn default(&self, p: Param) -> DefaultValue {
        self.index(p)
            .map_or(DefaultValue::Required, |i| self.def.params[i].default)
    }

    /// The argument's span, or the call's name when the default was used.
    pub(crate) fn span(&self, p: Param) -> Span {
        self.index(p)
            .and_then(|i| self.spans[i])
            .unwrap_or(self.call.name.span)
    }

    /// The `alpha` argument of `octconv`, `octconv_transpose` or `split` (α of the output), if given
    /// or defaulted to a number; 0 in the α = 0 baseline, as [`Args::alpha`] (the one place of the
    /// baseline rule for α arguments).
    pub(crate) fn alpha_out(&self) -> Option<f64> {
        if self.alpha_zero {
            return Some(0.0);
        }
        self.float(octconv::ALPHA)
    }

    /// The integer argument, or its default; `None` for a derived default not given.
    pub(crate) fn int(&self, p: Param) -> Option<i64> {
        match (self.get(p).map(|v| &v.val), self.default(p)) {
            (Some(Val::Int(i)), _) => Some(*i),
            (None, DefaultValue::Int(i)) => Some(i),
            _ => None,
        }
    }

    /// The number argument, or its default; `None` for a derived default not given.
    pub(crate) fn float(&self, p: Param) -> Option<f64> {
        match (self.get(p), self.default(p)) {
            (Some(v), _) => v.val.as_f64(),
            (None, DefaultValue::Float(x)) => Some(x),
            _ => None,
        }
    }

    /// The flag argument, or its default.
    pub(crate) fn bool(&self, p: Param) -> Option<bool> {
        match (self.get(p).map(|v| &v.val), self.default(p)) {
            (Some(Val::Bool(b)), _) => Some(*b),
            (None, DefaultValue::Bool(b)) => Some(b),
            _ => None,
        }
    }

    /// The word argument, or its default.
    pub(crate) fn word(&self, p: Param) -> Option<&str> {
        match (self.get(p).map(|v| &v.val), self.default(p)) {
            (Some(Val::Str(w)), _) => Some(w),
            (None, DefaultValue::Str(w)) => Some(w),
            _ => None,
        }
    }

    /// Why a parameter has no value: its default is derived, and the rule did not derive it. A bug in
    /// the rule, reported as a diagnostic rather than a panic.
    fn no_value(&self, p: Param) -> Diagnostic {
        let name = p.name;
        self.call_error(
            DiagKind::Structure,
            format!(
                "internal error: `{name}` of `{}` has no value and no default (please report this)",
                self.def.name
            ),
        )
    }

    /// The integer argument or its default.
    pub(crate) fn integer(&self, p: Param) -> Result<i64, Diagnostic> {
        self.int(p).ok_or_else(|| self.no_value(p))
    }

    /// The number argument or its default.
    pub(crate) fn number(&self, p: Param) -> Result<f64, Diagnostic> {
        self.float(p).ok_or_else(|| self.no_value(p))
    }

    /// The flag argument or its default.
    pub(crate) fn flag(&self, p: Param) -> Result<bool, Diagnostic> {
        self.bool(p).ok_or_else(|| self.no_value(p))
    }

    /// The word argument (`mode = nearest`) or its default.
    pub(crate) fn text(&self, p: Param) -> Result<&str, Diagnostic> {
        self.word(p).ok_or_else(|| self.no_value(p))
    }

    /// An integer size argument in `min..=MAX_DIM`, or its default from the table.
    pub(crate) fn dim(&self, p: Param, min: i64) -> Result<usize, Diagnostic> {
        let v = self.integer(p)?;
        self.dim_checked(p, v, min)
    }

    /// An integer size argument whose default is derived (`padding = kernel / 2`): `derived` when not
    /// given.
    pub(crate) fn dim_or(&self, p: Param, derived: i64, min: i64) -> Result<usize, Diagnostic> {
        let v = self.int(p).unwrap_or(derived);
        self.dim_checked(p, v, min)
    }

    fn dim_checked(&self, p: Param, v: i64, min: i64) -> Result<usize, Diagnostic> {
        let name = p.name;
        if v < min || v > MAX_DIM {
            let kind = if v > MAX_DIM {
                DiagKind::Limit
            } else {
                DiagKind::Structure
            };
            return Err(self
                .error(
                    kind,
                    p,
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
    pub(crate) fn alpha(&self, p: Param, default: f64) -> Result<f64, Diagnostic> {
        let name = p.name;
        if self.alpha_zero {
            return Ok(0.0);
        }
        let a = self.float(p).unwrap_or(default);
        if !(0.0..=1.0).contains(&a) {
            let mut d = self
                .error(
                    DiagKind::AlphaRange,
                    p,
                    format!("α out of range: `{name}` of `{}` is {a}, but α must lie in [0, 1]", self.def.name),
                )
                .with_label(format!("{name} = {a}"))
                .with_help("α is the fraction of channels in the low-frequency branch: use a value in [0, 1] (the paper uses 0.125 to 0.5)");
            d = self.with_origin(d, p, &format!("{name} = {a} comes from here"));
            return Err(d);
        }
        Ok(a)
    }

    /// An error pointing at argument `p` (or the call).
    pub(crate) fn error(&self, kind: DiagKind, p: Param, msg: String) -> Diagnostic {
        Diagnostic::error(kind, self.span(p), msg)
    }

    /// An error pointing at the call.
    pub(crate) fn call_error(&self, kind: DiagKind, msg: String) -> Diagnostic {
        Diagnostic::error(kind, self.call.span, msg)
    }

    /// Adds a "comes from here" label where the argument's value was written, if elsewhere.
    pub(crate) fn with_origin(&self, d: Diagnostic, p: Param, msg: &str) -> Diagnostic {
        match self.get(p) {
            Some(v) if !contains(self.span(p), v.origin) => d.with_secondary(v.origin, msg),
            _ => d,
        }
    }
}

fn contains(outer: Span, inner: Span) -> bool {
    outer.file == inner.file && outer.start <= inner.start && inner.end <= outer.end
}

/// Applies builtin layer `args.def` to `input`: the op and its output shape, or why not.
pub(crate) fn apply(args: &Args, input: &Shape) -> Result<(Op, Shape), Diagnostic> {
    match args.def.rule {
        Rule::Map(rule) => rule(args, input),
        Rule::Join => unreachable!(
            "`{}` reads named values: the elaborator joins them",
            args.def.name
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_default_in_the_layer_table_has_its_parameters_type() {
        for l in LAYERS {
            for Param {
                name,
                ty,
                default: d,
            } in l.params
            {
                let ok = matches!(
                    (ty, d),
                    (_, DefaultValue::Required | DefaultValue::Derived(_))
                        | (PTy::Int, DefaultValue::Int(_))
                        | (PTy::Float, DefaultValue::Float(_))
                        | (PTy::Bool, DefaultValue::Bool(_))
                        | (PTy::Str, DefaultValue::Str(_))
                );
                assert!(
                    ok,
                    "`{name}` of `{}`: default {d:?} is not a {ty:?}",
                    l.name
                );
            }
        }
        assert_eq!(
            layer("octconv").unwrap().signature(),
            "octconv(out = input channels if depthwise, kernel, stride = 1, alpha = α_in, alpha_in = input split, groups = 1, depthwise = false, bias = false, downsample = pool)"
        );
        assert_eq!(layer("concat").unwrap().signature(), "concat(a, …)");
        assert_eq!(
            layer("upsample").unwrap().signature(),
            "upsample(scale = 2, mode = nearest)"
        );
    }
}
