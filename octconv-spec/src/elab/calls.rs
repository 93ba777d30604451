//! Calls: builtin layers and user blocks.

use super::*;

impl<'p> Elab<'p> {
    pub(super) fn call(&mut self, call: &Call, env: &Env, cur: Cur) -> Cur {
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

    /// Whether the model has its input yet; reports (once) a layer before `input`.
    pub(super) fn has_input(&mut self, def: &LayerDef, call: &Call, cur: Cur) -> bool {
        if cur.node != NO_INPUT {
            return true;
        }
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
        false
    }

    /// Binds `args` to the parameters of layer `def`, reporting every problem (missing required
    /// ones included); `None` if there was one.
    pub(super) fn bind_layer(
        &mut self,
        def: &LayerDef,
        args: &[Arg],
        span: Span,
        env: &Env,
    ) -> Option<Slots> {
        let sig = def.sig();
        let mut diags = Diagnostics::default();
        let slots = bind::bind(def.name, &sig, args, env, &mut diags);
        let slots = slots.filter(|s| bind::missing(def.name, &sig, s, span, &mut diags));
        for d in diags.into_vec() {
            self.report(d);
        }
        slots
    }

    pub(super) fn call_layer(
        &mut self,
        def: &'static LayerDef,
        call: &Call,
        env: &Env,
        cur: Cur,
    ) -> Cur {
        if def.reads_values() {
            return self.call_join(def, call, env, cur);
        }
        let Some(slots) = self.bind_layer(def, &call.args, call.span, env) else {
            return cur.poisoned();
        };
        if !self.has_input(def, call, cur) {
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
                let alpha = alpha_after(&op, out, &args, cur.alpha);
                self.named(call.label.as_ref(), def.name, env, |e, name| {
                    e.labelled = call.label.is_some();
                    match e.push_layer(name, op, vec![cur.node], shape, out, call.span) {
                        Some(node) => Cur {
                            node,
                            shape: Some(out),
                            alpha,
                        },
                        None => cur.poisoned(),
                    }
                })
            }
            Err(d) => {
                self.report(d);
                // Layers that keep the shape pass it on, so later layers are still checked.
                if def.keeps_shape {
                    cur
                } else {
                    cur.poisoned()
                }
            }
        }
    }

    pub(super) fn call_block(&mut self, def: &'p Def, call: &Call, env: &Env, cur: Cur) -> Cur {
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
        self.named(call.label.as_ref(), &def.name.name, env, |e, name| {
            e.push_scope(&name);
            e.frames.push(Frame {
                block: def.name.name.clone(),
                call_span: call.span,
            });
            e.open_names(
                format!("block `{}` (called as `{name}`)", def.name.name),
                true,
            );
            let out = e.exec(&def.body, &mut inner, cur, true);
            e.close_names();
            e.frames.pop();
            e.scopes.pop();
            out
        })
    }
}

/// The α that produced the split of a layer's output `out` (the default α_out of the next octconv):
/// the layer's `alpha_out` if it sets one, 0 without a pair, else the input's `input_alpha`.
fn alpha_after(op: &Op, out: Shape, args: &Args, input_alpha: f64) -> f64 {
    match (op, out) {
        (_, Shape::Single(_) | Shape::Flat { .. }) => 0.0,
        // `alpha_out` is 0 in the baseline.
        (Op::OctConv(_) | Op::OctConvTranspose(_), _) => args.alpha_out().unwrap_or(input_alpha),
        (Op::Split { .. }, _) => args.alpha_out().unwrap_or(0.0),
        _ => input_alpha,
    }
}
