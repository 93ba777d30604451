//! The passes of one model's elaboration, all reporting into the one diagnostics context
//! (`Elab::diags`): find the model's definition, bind its parameters, run its body, check what it
//! produced, and build the IR.

use super::*;

impl<'p> Elab<'p> {
    /// Elaborates the model `req` asks for, in passes that all report into `self.diags`: find its
    /// definition, bind its parameters, run its body, check the result, and build the IR. A pass that
    /// leaves nothing for the next to work on ends the elaboration.
    pub(super) fn model(&mut self, req: &ModelRequest) -> Option<Model> {
        let def = self.model_def(req)?;
        let mut env = self.model_params(def, req)?;
        let args = model_args(def, &env);
        let out = self.model_body(def, &mut env);
        self.check_output(def, out);
        self.check_totals(def);
        self.finish(def, args, out)
    }

    /// Pass 1: the definition of the requested model; reports an unknown name or a block.
    fn model_def(&mut self, req: &ModelRequest) -> Option<&'p Def> {
        let program = self.program;
        let Some(def) = program.def(req.name) else {
            let models = program.model_names();
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
            self.report(d);
            return None;
        };
        if def.kind == DefKind::Block {
            self.report(
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
        Some(def)
    }

    /// Pass 2: the model's parameters from the call's arguments, then the `--set` overrides, then
    /// the defaults. `None` if any of them was reported.
    fn model_params(&mut self, def: &Def, req: &ModelRequest) -> Option<Env> {
        let sig = sig_of(def);
        let mut slots = bind::bind(req.name, &sig, req.args, &Env::new(), &mut self.diags)?;
        for o in req.overrides {
            self.set_override(req.name, &sig, &mut slots, o);
        }
        let env = self.bind_params(def, &sig, slots, req.name_span.unwrap_or(def.name.span))?;
        (!self.diags.has_errors()).then_some(env)
    }

    /// Puts one `--set name=value` override into its parameter's slot; reports an unknown name, a
    /// value that does not evaluate or one of the wrong type.
    fn set_override(&mut self, model: &str, sig: &[SigParam], slots: &mut Slots, o: &Arg) {
        let name = o.name.as_ref().map(|n| n.name.as_str()).unwrap_or("");
        let Some(i) = sig.iter().position(|p| p.name == name) else {
            let names: Vec<_> = sig.iter().map(|p| p.name.as_str()).collect();
            let mut d = Diagnostic::error(
                DiagKind::Argument,
                o.name.as_ref().map(|n| n.span).unwrap_or(o.span),
                format!("model `{model}` has no parameter `{name}`"),
            )
            .with_label("unknown parameter")
            .with_note(format!("parameters: {}", names.join(", ")));
            if let Some(h) = suggest::help(name, names.iter().copied()) {
                d = d.with_help(h);
            }
            self.report(d);
            return;
        };
        match eval(&o.value, &Env::new()) {
            Ok(v) => match v.val.coerce(&sig[i].ty) {
                Ok(val) => {
                    slots.values[i] = Some(v.with_val(val));
                    slots.spans[i] = Some(o.span);
                }
                Err(why) => self.report(Diagnostic::error(
                    DiagKind::Argument,
                    o.value.span,
                    format!("`{name}` has the wrong type: {why}"),
                )),
            },
            Err(d) => self.report(d),
        }
    }

    /// Pass 3: runs the model's body from no input at all; returns the value it ends on.
    fn model_body(&mut self, def: &Def, env: &mut Env) -> Cur {
        let start = Cur {
            node: NO_INPUT,
            shape: None,
            alpha: 0.0,
        };
        self.names.push(Names::root(&def.name.name));
        self.exec(&def.body, env, start, false)
    }

    /// Pass 4: the model had an `input` and does not end on an octave pair.
    fn check_output(&mut self, def: &Def, out: Cur) {
        if self.layers.is_empty() && !self.aborted && !self.reported_no_input {
            self.report(
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
            self.report(
                Diagnostic::error(
                    DiagKind::InvalidHead,
                    def.end_span,
                    format!("invalid head: model `{}` ends on {s}", def.name.name),
                )
                .with_label("the output is still an octave pair")
                .with_help("end the model with `merge();` (then e.g. `global_avg_pool(); linear(classes);`)"),
            );
        }
    }

    /// Pass 4: the model's total parameters, MACs and activation bytes fit in 64 bits.
    fn check_totals(&mut self, def: &Def) {
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
            self.report(Diagnostic::error(
                DiagKind::Limit,
                def.name.span,
                format!(
                    "the total cost of model `{}` overflows 64 bits",
                    def.name.name
                ),
            ));
        }
    }

    /// Pass 5: the IR, if no pass reported an error.
    fn finish(&mut self, def: &Def, args: Vec<ModelArg>, out: Cur) -> Option<Model> {
        if !self.diags.has_errors() && (out.shape.is_none() || self.layers.is_empty()) {
            // Every path to a poisoned value reports an error; this is a safety net.
            self.report(Diagnostic::error(
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
}

/// The model's parameters as the IR records them: every one with a value, printed.
fn model_args(def: &Def, env: &Env) -> Vec<ModelArg> {
    def.params
        .iter()
        .filter_map(|p| {
            env.get(&p.name.name).map(|v| ModelArg {
                name: p.name.name.clone(),
                value: v.val.to_string(),
            })
        })
        .collect()
}
