//! Statements: bodies, `require`, `input`, `expect` and `repeat`.

use super::*;

impl Elab<'_> {
    /// Runs `body`. `nested` is false only for a model's own top-level statements (where `input` goes).
    pub(super) fn exec(&mut self, body: &[Stmt], env: &mut Env, cur: Cur, nested: bool) -> Cur {
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

    pub(super) fn exec_body(
        &mut self,
        body: &[Stmt],
        env: &mut Env,
        mut cur: Cur,
        in_block: bool,
    ) -> Cur {
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
            cur = self.stmt(stmt, env, cur, in_block);
        }
        cur
    }

    /// Runs one statement on the value `cur`: dispatches on the statement's kind.
    fn stmt(&mut self, stmt: &Stmt, env: &mut Env, cur: Cur, in_block: bool) -> Cur {
        match stmt {
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
                label,
                span,
            } => self.residual(body, shortcut.as_deref(), label.as_ref(), *span, env, cur),
            Stmt::Branches {
                join,
                bodies,
                label,
                span,
            } => self.branches(join, bodies, label.as_ref(), *span, env, cur),
            Stmt::Call(call) => self.call(call, env, cur),
        }
    }

    pub(super) fn require(&mut self, cond: &Expr, message: Option<&str>, span: Span, env: &Env) {
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
    pub(super) fn dims(&mut self, dims: &[Expr], env: &Env, max: &[i64]) -> Option<Vec<usize>> {
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

    pub(super) fn input(
        &mut self,
        dims: &[Expr],
        span: Span,
        env: &Env,
        cur: Cur,
        in_block: bool,
    ) -> Cur {
        if !self.input_placed(span, cur, in_block) {
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

    /// Whether `input` stands where it may: at the top level of a model, once, before any layer.
    /// Reports it where not, unless a layer before `input` was already reported.
    fn input_placed(&mut self, span: Span, cur: Cur, in_block: bool) -> bool {
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
            return false;
        }
        if self.reported_no_input && self.layers.is_empty() {
            // A layer before `input` was already reported.
            return false;
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
            return false;
        }
        true
    }

    pub(super) fn expect(&mut self, shape: &ExpectShape, span: Span, env: &Env, cur: Cur) {
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
    pub(super) fn repeat(
        &mut self,
        var: Option<&str>,
        from: Option<&Expr>,
        to: &Expr,
        body: &[Stmt],
        span: Span,
        env: &Env,
        mut cur: Cur,
    ) -> Cur {
        let Some((start, end)) = self.repeat_range(var.is_some(), from, to, span, env) else {
            return cur.poisoned();
        };
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

    /// The bounds `start..end` of a `repeat` (`0..count` without a variable); reports bounds that
    /// are not `int`, a negative count, and more than [`MAX_REPEAT`] iterations.
    fn repeat_range(
        &mut self,
        ranged: bool,
        from: Option<&Expr>,
        to: &Expr,
        span: Span,
        env: &Env,
    ) -> Option<(i64, i64)> {
        let start = match from {
            Some(f) => self.repeat_int(f, env),
            None => Some(0),
        };
        let (Some(start), Some(end)) = (start, self.repeat_int(to, env)) else {
            return None;
        };
        if !ranged && end < 0 {
            self.report(
                Diagnostic::error(
                    DiagKind::Structure,
                    to.span,
                    format!("`repeat` count must not be negative, found {end}"),
                )
                .with_help("guard the count with `require`, or use `max(0, …)`"),
            );
            return None;
        }
        let count = end.saturating_sub(start).max(0);
        if count > MAX_REPEAT {
            self.report(Diagnostic::error(
                DiagKind::Limit,
                span,
                format!("`repeat` runs {count} times; the limit is {MAX_REPEAT}"),
            ));
            return None;
        }
        Some((start, end))
    }

    /// A bound of `repeat`, which must be an `int`.
    fn repeat_int(&mut self, e: &Expr, env: &Env) -> Option<i64> {
        match eval(e, env) {
            Ok(Value {
                val: Val::Int(i), ..
            }) => Some(i),
            Ok(v) => {
                self.report(Diagnostic::error(
                    DiagKind::Type,
                    e.span,
                    format!("`repeat` needs an `int`, found `{}`", v.val.type_name()),
                ));
                None
            }
            Err(d) => {
                self.report(d);
                None
            }
        }
    }
}
