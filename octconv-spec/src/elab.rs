//! Elaboration: instantiate a model with its arguments, run its statements (blocks, `repeat`,
//! residuals, `let`, `require`, `expect`), type-check every layer against the value flowing into it,
//! and produce the flat [`Model`] IR. Errors are collected; after an error the value is "poisoned" so
//! later layers do not report follow-on errors.

use crate::ast::{Arg, Call, Def, DefKind, ExpectShape, Expr, ExprKind, Stmt};
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
use crate::value::{Val, Value};
use std::collections::HashMap;

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

    fn model(&mut self, req: &ModelRequest) -> Option<Model> {
        let Some(def) = self.program.def(req.name) else {
            let models = self.program.model_names();
            let mut d = Diagnostic::error(
                DiagKind::UnknownName,
                req.name_span,
                format!("unknown model `{}`", req.name),
            )
            .with_label("no such model")
            .with_note(format!("models: {}", models.join(", ")));
            if let Some(h) = suggest::help(req.name, models.iter().copied()) {
                d = d.with_help(h);
            }
            self.diags.push(d);
            return None;
        };
        if def.kind == DefKind::Block {
            self.diags.push(
                Diagnostic::error(
                    DiagKind::Structure,
                    req.name_span.unwrap_or(def.name.span),
                    format!(
                        "`{}` is a block, not a model: it has no input of its own",
                        req.name
                    ),
                )
                .with_help(format!("check a model that uses `{}`", req.name)),
            );
            return None;
        }
        let sig = sig_of(def);
        let empty = Env::new();
        let mut slots = bind::bind(req.name, &sig, req.args, &empty, &mut self.diags)?;
        for o in req.overrides {
            let name = o.name.as_ref().map(|n| n.name.as_str()).unwrap_or("");
            let Some(i) = sig.iter().position(|p| p.name == name) else {
                let names: Vec<_> = sig.iter().map(|p| p.name.as_str()).collect();
                let mut d = Diagnostic::error(
                    DiagKind::Argument,
                    o.name.as_ref().map(|n| n.span).unwrap_or(o.span),
                    format!("model `{}` has no parameter `{name}`", req.name),
                )
                .with_label("unknown parameter")
                .with_note(format!("parameters: {}", names.join(", ")));
                if let Some(h) = suggest::help(name, names.iter().copied()) {
                    d = d.with_help(h);
                }
                self.diags.push(d);
                continue;
            };
            match eval(&o.value, &empty) {
                Ok(v) => match v.val.coerce(&sig[i].ty) {
                    Ok(val) => {
                        slots.values[i] = Some(v.with_val(val));
                        slots.spans[i] = Some(o.span);
                    }
                    Err(why) => self.diags.push(Diagnostic::error(
                        DiagKind::Argument,
                        o.value.span,
                        format!("`{name}` has the wrong type: {why}"),
                    )),
                },
                Err(d) => self.diags.push(d),
            }
        }
        let mut env = self.bind_params(def, &sig, slots, req.name_span.unwrap_or(def.name.span))?;
        if self.diags.has_errors() {
            return None;
        }
        let args = def
            .params
            .iter()
            .filter_map(|p| {
                env.get(&p.name.name).map(|v| ModelArg {
                    name: p.name.name.clone(),
                    value: v.val.to_string(),
                })
            })
            .collect();
        let start = Cur {
            node: NO_INPUT,
            shape: None,
            alpha: 0.0,
        };
        let out = self.exec(&def.body, &mut env, start, false);
        if self.layers.is_empty() && !self.aborted && !self.reported_no_input {
            self.diags.push(
                Diagnostic::error(
                    DiagKind::Structure,
                    def.name.span,
                    format!("model `{}` has no `input` statement", def.name.name),
                )
                .with_label("no input")
                .with_help("start the model with `input [C, H, W];`"),
            );
        }
        if let Some(s @ Shape::Pair { .. }) = out.shape {
            self.diags.push(
                Diagnostic::error(
                    DiagKind::InvalidHead,
                    def.end_span,
                    format!("invalid head: model `{}` ends on {s}", def.name.name),
                )
                .with_label("the output is still an octave pair")
                .with_help("end the model with `merge();` (then e.g. `global_avg_pool(); linear(classes);`)"),
            );
        }
        let totals = self
            .layers
            .iter()
            .try_fold((0u64, 0u64, 0u64), |(p, m, a), l| {
                Some((
                    p.checked_add(l.params)?,
                    m.checked_add(l.macs)?,
                    a.checked_add(l.activation_bytes)?,
                ))
            });
        if totals.is_none() {
            self.diags.push(Diagnostic::error(
                DiagKind::Limit,
                def.name.span,
                format!(
                    "the total cost of model `{}` overflows 64 bits",
                    def.name.name
                ),
            ));
        }
        if !self.diags.has_errors() && (out.shape.is_none() || self.layers.is_empty()) {
            // Every path to a poisoned value reports an error; this is a safety net.
            self.diags.push(Diagnostic::error(
                DiagKind::Structure,
                def.name.span,
                format!("internal error: model `{}` could not be elaborated, but no error was reported (please report this)", def.name.name),
            ));
        }
        if self.diags.has_errors() {
            return None;
        }
        let input = match self.layers.first().map(|l| l.output) {
            Some(Shape::Single(d)) => d,
            _ => return None,
        };
        Some(Model {
            name: def.name.name.clone(),
            docs: def.docs.clone(),
            args,
            input,
            output: out.shape?,
            layers: std::mem::take(&mut self.layers),
        })
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
        if let Some(&(first, first_labelled)) = self.name_spans.get(&name) {
            // Point at the label: an automatic name is never the one to change.
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

    /// Runs `body`. `nested` is false only for a model's own top-level statements (where `input` goes).
    fn exec(&mut self, body: &[Stmt], env: &mut Env, cur: Cur, nested: bool) -> Cur {
        self.depth += 1;
        let out = if self.depth > MAX_DEPTH {
            let span = body.first().map(stmt_span).unwrap_or_default();
            self.abort(
                span,
                format!(
                    "blocks, `repeat` and `residual` bodies are nested deeper than {MAX_DEPTH}"
                ),
            );
            cur.poisoned()
        } else {
            self.exec_body(body, env, cur, nested)
        };
        self.depth -= 1;
        out
    }

    fn exec_body(&mut self, body: &[Stmt], env: &mut Env, mut cur: Cur, in_block: bool) -> Cur {
        for stmt in body {
            if self.aborted {
                return cur.poisoned();
            }
            self.steps += 1;
            if self.steps > MAX_STEPS {
                let span = stmt_span(stmt);
                self.abort(
                    span,
                    format!("elaboration executed more than {MAX_STEPS} statements"),
                );
                return cur.poisoned();
            }
            cur = match stmt {
                Stmt::Require {
                    cond,
                    message,
                    span,
                } => {
                    self.require(cond, message.as_deref(), *span, env);
                    cur
                }
                Stmt::Input { dims, span } => self.input(dims, *span, env, cur, in_block),
                Stmt::Expect { shape, span } => {
                    self.expect(shape, *span, env, cur);
                    cur
                }
                Stmt::Let { name, value } => {
                    match eval(value, env) {
                        Ok(v) => env.set(&name.name, v),
                        Err(d) => self.report(d),
                    }
                    cur
                }
                Stmt::Repeat {
                    var,
                    from,
                    to,
                    body,
                    span,
                } => self.repeat(
                    var.as_ref().map(|v| v.name.as_str()),
                    from.as_ref(),
                    to,
                    body,
                    *span,
                    env,
                    cur,
                ),
                Stmt::Residual {
                    body,
                    shortcut,
                    span,
                } => self.residual(body, shortcut.as_deref(), *span, env, cur),
                Stmt::Call(call) => self.call(call, env, cur),
            };
        }
        cur
    }

    fn require(&mut self, cond: &Expr, message: Option<&str>, span: Span, env: &Env) {
        match eval(cond, env) {
            Ok(Value {
                val: Val::Bool(true),
                ..
            }) => {}
            Ok(Value {
                val: Val::Bool(false),
                ..
            }) => {
                let mut vars = Vec::new();
                collect_vars(cond, &mut vars);
                vars.dedup();
                let values: Vec<String> = vars
                    .iter()
                    .filter_map(|v| env.get(v).map(|x| format!("{v} = {}", x.val)))
                    .collect();
                // Later statements assume the requirement; stop here instead of reporting follow-ons.
                self.aborted = true;
                let mut d = Diagnostic::error(
                    DiagKind::Require,
                    cond.span,
                    format!(
                        "requirement failed: {}",
                        message.unwrap_or("condition is false")
                    ),
                )
                .with_label("this is false");
                if !values.is_empty() {
                    d = d.with_note(format!("with {}", values.join(", ")));
                }
                self.report(d);
            }
            Ok(v) => self.report(Diagnostic::error(
                DiagKind::Type,
                span,
                format!(
                    "`require` needs a `bool` condition, found `{}`",
                    v.val.type_name()
                ),
            )),
            Err(d) => self.report(d),
        }
    }

    /// Evaluates a list of dimensions to positive integers no larger than `max`.
    fn dims(&mut self, dims: &[Expr], env: &Env, max: &[i64]) -> Option<Vec<usize>> {
        let mut out = Vec::new();
        for (i, e) in dims.iter().enumerate() {
            match eval(e, env) {
                Ok(Value {
                    val: Val::Int(v), ..
                }) => {
                    let limit = max.get(i).copied().unwrap_or(MAX_DIM);
                    if v < 1 || v > limit {
                        let kind = if v > limit {
                            DiagKind::Limit
                        } else {
                            DiagKind::Structure
                        };
                        self.report(
                            Diagnostic::error(
                                kind,
                                e.span,
                                format!("dimension must be between 1 and {limit}, found {v}"),
                            )
                            .with_label("invalid size"),
                        );
                        return None;
                    }
                    out.push(v as usize);
                }
                Ok(v) => {
                    self.report(Diagnostic::error(
                        DiagKind::Type,
                        e.span,
                        format!("dimensions must be `int`, found `{}`", v.val.type_name()),
                    ));
                    return None;
                }
                Err(d) => {
                    self.report(d);
                    return None;
                }
            }
        }
        Some(out)
    }

    fn input(&mut self, dims: &[Expr], span: Span, env: &Env, cur: Cur, in_block: bool) -> Cur {
        if in_block {
            self.report(
                Diagnostic::error(
                    DiagKind::Structure,
                    span,
                    "`input` must be a top-level statement of a model, not inside a block, `repeat` or `residual`",
                )
                .with_help("write `input [C, H, W];` as the model's first statement; a block takes its input from the statement before its call"),
            );
            self.reported_no_input = true;
            return cur.poisoned();
        }
        if self.reported_no_input && self.layers.is_empty() {
            // A layer before `input` was already reported.
            return cur.poisoned();
        }
        if cur.node != NO_INPUT || !self.layers.is_empty() {
            let mut d = Diagnostic::error(
                DiagKind::Duplicate,
                span,
                "`input` must come once, before any layer",
            )
            .with_label("misplaced `input`");
            if let Some(first) = self.layers.first() {
                d = d.with_secondary(first.span, "the model's input is declared here");
            }
            self.report(d);
            return cur.poisoned();
        }
        if dims.len() != 3 {
            self.report(
                Diagnostic::error(
                    DiagKind::Structure,
                    span,
                    format!("`input` needs [C, H, W], found {} dimensions", dims.len()),
                )
                .with_help("write e.g. `input [3, 32, 32];`"),
            );
            self.reported_no_input = true;
            return cur.poisoned();
        }
        let Some(d) = self.dims(dims, env, &[MAX_DIM, MAX_SPATIAL, MAX_SPATIAL]) else {
            self.reported_no_input = true;
            return cur.poisoned();
        };
        let shape = Shape::Single(Dims::new(d[0], d[1], d[2]));
        match self.push_layer("input".into(), Op::Input, vec![], shape, shape, span) {
            Some(node) => Cur {
                node,
                shape: Some(shape),
                alpha: 0.0,
            },
            None => cur.poisoned(),
        }
    }

    fn expect(&mut self, shape: &ExpectShape, span: Span, env: &Env, cur: Cur) {
        if self.opts.alpha_zero && matches!(shape, ExpectShape::Pair(..)) {
            // Statements about an octave split do not apply to the α = 0 baseline.
            return;
        }
        let expected = match shape {
            ExpectShape::Plain(d) => match d.len() {
                3 => self
                    .dims(d, env, &[])
                    .map(|d| Shape::Single(Dims::new(d[0], d[1], d[2]))),
                1 => self
                    .dims(d, env, &[])
                    .map(|d| Shape::Flat { features: d[0] }),
                n => {
                    self.report(Diagnostic::error(
                        DiagKind::Structure,
                        span,
                        format!("`expect` takes [C, H, W] or [F], found {n} dimensions"),
                    ));
                    None
                }
            },
            ExpectShape::Pair(h, l) => {
                if h.len() != 3 || l.len() != 3 {
                    self.report(Diagnostic::error(
                        DiagKind::Structure,
                        span,
                        "`expect high = [C, H, W], low = [C, H, W]` needs three dimensions per branch",
                    ));
                    None
                } else {
                    match (self.dims(h, env, &[]), self.dims(l, env, &[])) {
                        (Some(h), Some(l)) => Some(Shape::Pair {
                            high: Dims::new(h[0], h[1], h[2]),
                            low: Dims::new(l[0], l[1], l[2]),
                        }),
                        _ => None,
                    }
                }
            }
        };
        if let (Some(expected), Some(actual)) = (expected, cur.shape) {
            if expected != actual {
                self.report(
                    Diagnostic::error(
                        DiagKind::Expect,
                        span,
                        format!("expect failed: expected {expected}, found {actual}"),
                    )
                    .with_label(format!("the value here is {actual}")),
                );
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn repeat(
        &mut self,
        var: Option<&str>,
        from: Option<&Expr>,
        to: &Expr,
        body: &[Stmt],
        span: Span,
        env: &Env,
        mut cur: Cur,
    ) -> Cur {
        let int = |e: &Expr, this: &mut Self| -> Option<i64> {
            match eval(e, env) {
                Ok(Value {
                    val: Val::Int(i), ..
                }) => Some(i),
                Ok(v) => {
                    this.report(Diagnostic::error(
                        DiagKind::Type,
                        e.span,
                        format!("`repeat` needs an `int`, found `{}`", v.val.type_name()),
                    ));
                    None
                }
                Err(d) => {
                    this.report(d);
                    None
                }
            }
        };
        let start = match from {
            Some(f) => int(f, self),
            None => Some(0),
        };
        let (Some(start), Some(end)) = (start, int(to, self)) else {
            return cur.poisoned();
        };
        if var.is_none() && end < 0 {
            self.report(
                Diagnostic::error(
                    DiagKind::Structure,
                    to.span,
                    format!("`repeat` count must not be negative, found {end}"),
                )
                .with_help("guard the count with `require`, or use `max(0, …)`"),
            );
            return cur.poisoned();
        }
        let count = end.saturating_sub(start).max(0);
        if count > MAX_REPEAT {
            self.report(Diagnostic::error(
                DiagKind::Limit,
                span,
                format!("`repeat` runs {count} times; the limit is {MAX_REPEAT}"),
            ));
            return cur.poisoned();
        }
        for i in start..end {
            if self.aborted {
                break;
            }
            self.steps += 1;
            if self.steps > MAX_STEPS {
                self.abort(
                    span,
                    format!(
                        "elaboration executed more than {MAX_STEPS} statements and loop iterations"
                    ),
                );
                return cur.poisoned();
            }
            let mut inner = env.clone();
            if let Some(v) = var {
                inner.set(v, Value::new(Val::Int(i), span));
            }
            cur = self.exec(body, &mut inner, cur, true);
        }
        cur
    }

    fn residual(
        &mut self,
        body: &[Stmt],
        shortcut: Option<&[Stmt]>,
        span: Span,
        env: &Env,
        cur: Cur,
    ) -> Cur {
        let name = self.auto_name("res");
        self.push_scope(&name);
        let main = self.exec(body, &mut env.clone(), cur, true);
        let sc = match shortcut {
            Some(sc) => {
                self.push_scope(&format!("{name}.shortcut"));
                let out = self.exec(sc, &mut env.clone(), cur, true);
                self.scopes.pop();
                out
            }
            None => self.auto_shortcut(cur, main, span, &name),
        };
        let out = match (main.shape, sc.shape) {
            (Some(a), Some(b)) if a == b => {
                let add = format!("{name}.add");
                match self.push_layer(add, Op::Add, vec![main.node, sc.node], a, a, span) {
                    Some(node) => Cur { node, ..main },
                    None => main.poisoned(),
                }
            }
            (Some(a), Some(b)) => {
                self.report(
                    Diagnostic::error(
                        DiagKind::ResidualMismatch,
                        span,
                        format!("residual mismatch: the main branch gives {a}, but the shortcut gives {b}"),
                    )
                    .with_label("branches disagree")
                    .with_help("make the shortcut produce the main branch's shape (e.g. a 1×1 `octconv` with the same `out`, `stride` and `alpha`)"),
                );
                // Continue with the main branch's shape so later layers are still checked.
                main
            }
            _ => main.poisoned(),
        };
        self.scopes.pop();
        out
    }

    /// The shortcut when none is written: identity if the shapes agree, else a 1×1 octconv projection.
    fn auto_shortcut(&mut self, input: Cur, main: Cur, span: Span, res_name: &str) -> Cur {
        let (Some(from), Some(to)) = (input.shape, main.shape) else {
            return input.poisoned();
        };
        if from == to {
            return input;
        }
        let mismatch = |why: String| {
            Diagnostic::error(
                DiagKind::ResidualMismatch,
                span,
                format!("residual mismatch: cannot project the input {from} to the main branch's output {to}: {why}"),
            )
            .with_label("no automatic shortcut")
            .with_help("write an explicit `shortcut { … }` that produces the main branch's shape")
        };
        let (Some(fh), Some(th), Some((in_h, in_l)), Some((out_h, out_l))) = (
            from.high(),
            to.high(),
            from.split_channels(),
            to.split_channels(),
        ) else {
            self.report(mismatch("flat vectors have no projection".into()));
            return input.poisoned();
        };
        let stride = if fh.h == th.h && fh.w == th.w {
            1
        } else if fh.h == 2 * th.h && fh.w == 2 * th.w {
            2
        } else {
            self.report(mismatch(format!(
                "the size changes from {}×{} to {}×{}, not by 1 or 2",
                fh.h, fh.w, th.h, th.w
            )));
            return input.poisoned();
        };
        let spec = OctConvSpec {
            in_h,
            in_l,
            out_h,
            out_l,
            kernel: 1,
            stride,
            groups: 1,
            depthwise: false,
            bias: false,
        };
        match octconv::infer(&spec, &from) {
            Ok(out) if out == to => {
                let name = format!("{res_name}.shortcut.octconv0");
                match self.push_layer(name, Op::OctConv(spec), vec![input.node], from, out, span) {
                    Some(node) => Cur {
                        node,
                        shape: Some(out),
                        alpha: main.alpha,
                    },
                    None => input.poisoned(),
                }
            }
            Ok(out) => {
                self.report(mismatch(format!("a 1×1 projection would give {out}")));
                input.poisoned()
            }
            Err((_, msg, _)) => {
                self.report(mismatch(msg));
                input.poisoned()
            }
        }
    }

    fn call(&mut self, call: &Call, env: &Env, cur: Cur) -> Cur {
        if let Some(def) = layers::layer(&call.name.name) {
            return self.call_layer(def, call, env, cur);
        }
        let program = self.program;
        match program.def(&call.name.name) {
            Some(def) if def.kind == DefKind::Block => self.call_block(def, call, env, cur),
            Some(def) => {
                self.report(
                    Diagnostic::error(
                        DiagKind::Structure,
                        call.name.span,
                        format!("`{}` is a model; models cannot be called", call.name.name),
                    )
                    .with_secondary(def.name.span, "model defined here")
                    .with_help(format!(
                        "turn the reusable part of `{}` into a `block`",
                        call.name.name
                    )),
                );
                cur.poisoned()
            }
            None => {
                let mut candidates: Vec<&str> = layers::LAYERS.iter().map(|l| l.name).collect();
                candidates.extend(
                    program
                        .defs
                        .iter()
                        .filter(|d| d.kind == DefKind::Block)
                        .map(|d| d.name.name.as_str()),
                );
                let mut d = Diagnostic::error(
                    DiagKind::UnknownName,
                    call.name.span,
                    format!("unknown layer or block `{}`", call.name.name),
                )
                .with_label("not a builtin layer or a block in scope");
                match suggest::help(&call.name.name, candidates.iter().copied()) {
                    Some(h) => d = d.with_help(h),
                    None => {
                        d = d.with_note(format!(
                            "builtin layers: {}",
                            layers::LAYERS
                                .iter()
                                .map(|l| l.name)
                                .collect::<Vec<_>>()
                                .join(", ")
                        ))
                    }
                }
                self.report(d);
                cur.poisoned()
            }
        }
    }

    fn call_layer(&mut self, def: &'static LayerDef, call: &Call, env: &Env, cur: Cur) -> Cur {
        let sig = def.sig();
        let mut diags = Diagnostics::default();
        let slots = bind::bind(def.name, &sig, &call.args, env, &mut diags);
        let slots = slots.filter(|s| bind::missing(def.name, &sig, s, call.span, &mut diags));
        for d in diags.into_vec() {
            self.report(d);
        }
        let Some(slots) = slots else {
            return cur.poisoned();
        };
        if cur.node == NO_INPUT {
            if !self.reported_no_input {
                self.reported_no_input = true;
                self.report(
                    Diagnostic::error(
                        DiagKind::Structure,
                        call.span,
                        format!("layer `{}` comes before the model's `input`", def.name),
                    )
                    .with_help("start the model with `input [C, H, W];`"),
                );
            }
            return cur.poisoned();
        }
        let Some(shape) = cur.shape else {
            return cur;
        };
        let args = Args {
            call,
            def,
            values: slots.values,
            spans: slots.spans,
            alpha_zero: self.opts.alpha_zero,
            input_alpha: cur.alpha,
        };
        match layers::apply(&args, &shape) {
            Ok((op, out)) => {
                let alpha = match (&op, out) {
                    (_, Shape::Single(_) | Shape::Flat { .. }) => 0.0,
                    (Op::OctConv(_), _) if !self.opts.alpha_zero => {
                        args.float("alpha").unwrap_or(cur.alpha)
                    }
                    (Op::Split { .. }, _) if !self.opts.alpha_zero => {
                        args.float("alpha").unwrap_or(0.0)
                    }
                    _ => cur.alpha,
                };
                let name = match &call.label {
                    Some(l) => format!("{}{}", self.scope().prefix, l.name),
                    None => self.auto_name(def.name),
                };
                self.labelled = call.label.is_some();
                match self.push_layer(name, op, vec![cur.node], shape, out, call.span) {
                    Some(node) => Cur {
                        node,
                        shape: Some(out),
                        alpha,
                    },
                    None => cur.poisoned(),
                }
            }
            Err(d) => {
                self.report(d);
                // Layers that keep the shape pass it on, so later layers are still checked.
                if matches!(def.name, "bn" | "relu" | "dropout") {
                    cur
                } else {
                    cur.poisoned()
                }
            }
        }
    }

    fn call_block(&mut self, def: &'p Def, call: &Call, env: &Env, cur: Cur) -> Cur {
        if self.frames.iter().any(|f| f.block == def.name.name) {
            // Also reported statically by the loader; this guard stops the elaborator.
            self.report(Diagnostic::error(
                DiagKind::Recursion,
                call.name.span,
                format!("recursive block: `{}` calls itself", def.name.name),
            ));
            return cur.poisoned();
        }
        if self.frames.len() >= MAX_CALL_DEPTH {
            self.abort(
                call.span,
                format!("block calls are nested deeper than {MAX_CALL_DEPTH}"),
            );
            return cur.poisoned();
        }
        let sig = sig_of(def);
        let mut diags = Diagnostics::default();
        let slots = bind::bind(&def.name.name, &sig, &call.args, env, &mut diags);
        for d in diags.into_vec() {
            self.report(d);
        }
        let Some(slots) = slots else {
            return cur.poisoned();
        };
        let Some(mut inner) = self.bind_params(def, &sig, slots, call.span) else {
            return cur.poisoned();
        };
        let name = match &call.label {
            Some(l) => format!("{}{}", self.scope().prefix, l.name),
            None => self.auto_name(&def.name.name),
        };
        self.push_scope(&name);
        self.frames.push(Frame {
            block: def.name.name.clone(),
            call_span: call.span,
        });
        let out = self.exec(&def.body, &mut inner, cur, true);
        self.frames.pop();
        self.scopes.pop();
        out
    }
}

fn stmt_span(s: &Stmt) -> Span {
    match s {
        Stmt::Require { span, .. }
        | Stmt::Input { span, .. }
        | Stmt::Expect { span, .. }
        | Stmt::Repeat { span, .. }
        | Stmt::Residual { span, .. } => *span,
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
