//! Elaboration: instantiate a model with its arguments, run its statements (blocks, `repeat`,
//! residuals, `let`, `require`, `expect`), type-check every layer against the value flowing into it,
//! and produce the flat [`Model`] IR. Errors are collected; after an error the value is "poisoned" so
//! later layers do not report follow-on errors.

use crate::bind::{self, SigParam, Slots};
use crate::cost;
use crate::diag::{DiagKind, Diagnostic, Diagnostics};
use crate::eval::{eval, Env};
use crate::ir::{Layer, Model, ModelArg, OctConvSpec, Op};
use crate::layers::{self, octconv, Args, LayerDef, MAX_DIM};
use crate::loader::Program;
use crate::shape::{Dims, Shape};
use crate::source::Span;
use crate::suggest;
use crate::syntax::ast::{Arg, Call, Def, DefKind, ExpectShape, Expr, ExprKind, Stmt};
use crate::value::{Val, Value};
use std::collections::HashMap;

mod calls;
mod graph;
mod model;
mod stmts;
mod values;

use values::Names;

/// Most layers one model may elaborate to.
pub const MAX_LAYERS: usize = 100_000;
/// Most statements one elaboration may execute (loops included).
pub const MAX_STEPS: usize = 2_000_000;
/// Largest `repeat` count.
pub const MAX_REPEAT: i64 = 100_000;
/// Deepest nesting of block calls.
pub const MAX_CALL_DEPTH: usize = 64;
/// Largest height or width of any feature map.
pub const MAX_SPATIAL: i64 = 1 << 16;
/// Deepest dynamic nesting of bodies (block calls, `repeat` and `residual` bodies together).
pub const MAX_DEPTH: usize = 256;

/// How to elaborate.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Force every α (octconv `alpha`, `split`) to 0: the plain-convolution baseline that costs are
    /// compared against.
    pub alpha_zero: bool,
}

/// Which model to elaborate and with which arguments.
#[derive(Clone, Copy, Debug)]
pub struct ModelRequest<'a> {
    /// Model name.
    pub name: &'a str,
    /// Where the name was written (a call string), if anywhere.
    pub name_span: Option<Span>,
    /// Call arguments (positional or named).
    pub args: &'a [Arg],
    /// `--set name=value` overrides, applied after `args`.
    pub overrides: &'a [Arg],
}

/// Elaborates one model of `program`. Returns the model if there were no errors, and all diagnostics.
pub fn elaborate(
    program: &Program,
    req: &ModelRequest,
    opts: Options,
) -> (Option<Model>, Diagnostics) {
    let mut e = Elab {
        program,
        opts,
        diags: Diagnostics::default(),
        layers: Vec::new(),

        scopes: vec![Scope::default()],
        frames: Vec::new(),
        steps: 0,
        depth: 0,
        aborted: false,
        reported_no_input: false,
        name_spans: HashMap::new(),
        labelled: false,
        names: Vec::new(),
        bound_anywhere: Vec::new(),
    };
    let model = e.model(req);
    (model, e.diags)
}

#[derive(Default)]
struct Scope {
    prefix: String,
    counters: HashMap<String, usize>,
}

struct Frame {
    block: String,
    call_span: Span,
}

/// The value flowing between statements: the layer that produced it and its shape (`None` after an
/// error).
#[derive(Clone, Copy, Debug)]
struct Cur {
    node: usize,
    shape: Option<Shape>,
    /// The α that produced the current split (the default α_out of the next octconv); 0 without a pair.
    alpha: f64,
}

const NO_INPUT: usize = usize::MAX;

impl Cur {
    fn poisoned(self) -> Cur {
        Cur {
            shape: None,
            ..self
        }
    }
}

struct Elab<'p> {
    program: &'p Program,
    opts: Options,
    /// The one diagnostics context every pass and statement reports into: through [`Elab::report`],
    /// which adds the block call stack, or, for the model's own arguments (no stack yet), handed to
    /// [`bind`].
    diags: Diagnostics,
    layers: Vec<Layer>,

    scopes: Vec<Scope>,
    frames: Vec<Frame>,
    steps: usize,
    depth: usize,
    aborted: bool,
    reported_no_input: bool,
    /// Where each layer name was given and whether by an `as` label (for "used twice" errors).
    name_spans: HashMap<String, (Span, bool)>,
    /// The layer being pushed was named by an `as` label.
    labelled: bool,
    /// Value names by level of nesting, innermost last ([`values`]).
    names: Vec<Names>,
    /// Every value name bound so far: key, where, and inside what (for "not visible here").
    bound_anywhere: Vec<(String, Span, String)>,
}

fn sig_of(def: &Def) -> Vec<SigParam> {
    def.params
        .iter()
        .map(|p| SigParam {
            name: p.name.name.clone(),
            ty: p.ty.clone(),
            required: p.default.is_none(),
        })
        .collect()
}

impl<'p> Elab<'p> {
    /// Records an error, adding "in block … called here" labels for the block call stack.
    fn report(&mut self, mut d: Diagnostic) {
        for f in self.frames.iter().rev().take(3) {
            d = d.with_secondary(f.call_span, format!("in block `{}` called here", f.block));
        }
        self.diags.push(d);
    }

    fn abort(&mut self, span: Span, msg: String) {
        if !self.aborted {
            self.report(
                Diagnostic::error(DiagKind::Limit, span, msg)
                    .with_help("the checker stops here; reduce repeat counts or model size"),
            );
        }
        self.aborted = true;
    }

    /// Fills parameters from `slots`, then defaults (evaluated with the earlier parameters in scope);
    /// reports missing ones.
    fn bind_params(
        &mut self,
        def: &Def,
        sig: &[SigParam],
        slots: Slots,
        call_span: Span,
    ) -> Option<Env> {
        if !bind::missing(&def.name.name, sig, &slots, call_span, &mut self.diags) {
            return None;
        }
        let mut env = Env::new();
        for (p, v) in def.params.iter().zip(slots.values) {
            let v = match (v, &p.default) {
                (Some(v), _) => v,
                (None, Some(default)) => {
                    let v = match eval(default, &env) {
                        Ok(v) => v,
                        Err(d) => {
                            self.report(d);
                            return None;
                        }
                    };
                    match v.val.coerce(&p.ty) {
                        Ok(val) => v.with_val(val),
                        Err(why) => {
                            self.report(Diagnostic::error(
                                DiagKind::Type,
                                default.span,
                                format!("default of `{}` has the wrong type: {why}", p.name.name),
                            ));
                            return None;
                        }
                    }
                }
                (None, None) => return None,
            };
            env.set(&p.name.name, v);
        }
        Some(env)
    }

    fn scope(&self) -> &Scope {
        self.scopes.last().expect("the root scope is never popped")
    }

    /// The next automatic name for `base` in the current scope: `prefix` + `base` + index.
    fn auto_name(&mut self, base: &str) -> String {
        let scope = self.scopes.last_mut().expect("root scope");
        let n = scope.counters.entry(base.to_string()).or_insert(0);
        // `b` #10 must not collide with `b1` #0: names ending in a digit or `_` get a `_` separator.
        let sep = if base.ends_with(|c: char| c.is_ascii_alphabetic()) {
            ""
        } else {
            "_"
        };
        let name = format!("{}{base}{sep}{n}", scope.prefix);
        *n += 1;
        name
    }

    /// Opens a naming scope; `name` is the full name of the block or residual.
    fn push_scope(&mut self, name: &str) {
        self.scopes.push(Scope {
            prefix: format!("{name}."),
            counters: HashMap::new(),
        });
    }

    /// Whether layer name `name` is already used; reports it if so, pointing at the label (an
    /// automatic name is never the one to change).
    fn name_taken(&mut self, name: &str, span: Span, labelled: bool) -> bool {
        let Some(&(first, first_labelled)) = self.name_spans.get(name) else {
            return false;
        };
        let (primary, other, other_msg) = if !labelled && first_labelled {
            (first, span, "clashes with the automatic name of this layer")
        } else {
            (span, first, "first used here")
        };
        self.report(
            Diagnostic::error(DiagKind::Duplicate, primary, format!("layer name `{name}` is used twice"))
                .with_label("this name")
                .with_secondary(other, other_msg)
                .with_help("`as` labels must differ from each other and from the automatic names (`<op><k>`); rename the label"),
        );
        true
    }

    fn push_layer(
        &mut self,
        name: String,
        op: Op,
        inputs: Vec<usize>,
        input: Shape,
        output: Shape,
        span: Span,
    ) -> Option<usize> {
        if self.layers.len() >= MAX_LAYERS {
            self.abort(span, format!("model has more than {MAX_LAYERS} layers"));
            return None;
        }
        let labelled = std::mem::take(&mut self.labelled);
        if self.name_taken(&name, span, labelled) {
            return None;
        }
        if !within_limits(&output) {
            self.report(Diagnostic::error(
                DiagKind::Limit,
                span,
                format!("the output {output} exceeds the checker's limits ({MAX_DIM} channels or features, {MAX_SPATIAL} pixels per side)"),
            ));
            return None;
        }
        self.name_spans.insert(name.clone(), (span, labelled));
        let costs = (
            cost::params(&op, &input),
            cost::macs(&op, &input, &output),
            cost::activation_bytes(&output),
        );
        let (Some(params), Some(macs), Some(activation_bytes)) = costs else {
            self.report(Diagnostic::error(
                DiagKind::Limit,
                span,
                format!("the cost of layer `{name}` overflows 64 bits"),
            ));
            return None;
        };
        self.layers.push(Layer {
            name,
            op,
            inputs,
            input,
            output,
            params,
            macs,
            activation_bytes,
            span,
        });
        Some(self.layers.len() - 1)
    }
}

fn stmt_span(s: &Stmt) -> Span {
    match s {
        Stmt::Require { span, .. }
        | Stmt::Input { span, .. }
        | Stmt::Expect { span, .. }
        | Stmt::Repeat { span, .. }
        | Stmt::Residual { span, .. }
        | Stmt::Branches { span, .. } => *span,
        Stmt::Let { name, .. } => name.span,
        Stmt::Call(c) => c.span,
    }
}

fn collect_vars(e: &Expr, out: &mut Vec<String>) {
    match &e.kind {
        ExprKind::Var(v) if !out.contains(v) => out.push(v.clone()),
        ExprKind::List(xs) | ExprKind::Call(_, xs) => xs.iter().for_each(|x| collect_vars(x, out)),
        ExprKind::Unary(_, x) => collect_vars(x, out),
        ExprKind::Binary(_, a, b) | ExprKind::Index(a, b) => {
            collect_vars(a, out);
            collect_vars(b, out);
        }
        ExprKind::If(a, b, c) => {
            collect_vars(a, out);
            collect_vars(b, out);
            collect_vars(c, out);
        }
        _ => {}
    }
}

/// True if every dimension of `s` is within the checker's limits (so sizes and costs fit in u64).
fn within_limits(s: &Shape) -> bool {
    let ok =
        |d: Dims| d.c as i64 <= MAX_DIM && d.h as i64 <= MAX_SPATIAL && d.w as i64 <= MAX_SPATIAL;
    match *s {
        Shape::Single(d) => ok(d),
        Shape::Pair { high, low } => ok(high) && ok(low),
        Shape::Flat { features } => features as i64 <= MAX_DIM,
    }
}
