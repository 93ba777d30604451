//! Where values meet: residual connections and their automatic shortcuts, `branches`, and the
//! value-reading layers `concat`, `add` and `scale`. The shape rules are in [`crate::layers::graph`].

use super::*;
use crate::layers::graph::{self as rules, Join, Part};
use crate::syntax::ast::{Ident, Label};

impl Elab<'_> {
    pub(super) fn residual(
        &mut self,
        body: &[Stmt],
        shortcut: Option<&[Stmt]>,
        label: Option<&Label>,
        span: Span,
        env: &Env,
        cur: Cur,
    ) -> Cur {
        let (name, key) = self.name_for(label, "res", env);
        self.push_scope(&name);
        self.open_names(format!("`{name}`"), false);
        let main = self.exec(body, &mut env.clone(), cur, true);
        self.close_names();
        let sc = match shortcut {
            Some(sc) => {
                self.push_scope(&format!("{name}.shortcut"));
                self.open_names(format!("the shortcut of `{name}`"), false);
                let out = self.exec(sc, &mut env.clone(), cur, true);
                self.close_names();
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
        if let (Some(key), Some(l)) = (key, label) {
            self.bind_value(key, l.span, out);
        }
        out
    }

    /// The shortcut when none is written: identity if the shapes agree, else a 1×1 octconv projection.
    pub(super) fn auto_shortcut(
        &mut self,
        input: Cur,
        main: Cur,
        span: Span,
        res_name: &str,
    ) -> Cur {
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
            downsample: crate::ir::Downsample::Pool,
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

    /// `branches concat|add { { … }, … } as name;`: every body runs from `cur`; the outputs are joined.
    pub(super) fn branches(
        &mut self,
        join: &Ident,
        bodies: &[Vec<Stmt>],
        label: Option<&Label>,
        span: Span,
        env: &Env,
        cur: Cur,
    ) -> Cur {
        let Some(how) = Join::named(&join.name) else {
            let mut d = Diagnostic::error(
                DiagKind::Argument,
                join.span,
                format!("`branches` cannot join with `{}`: write `branches concat {{ … }}`, `branches add {{ … }}` or `branches scale {{ … }}`", join.name),
            )
            .with_label("not a join");
            if let Some(h) = suggest::help(&join.name, ["concat", "add", "scale"]) {
                d = d.with_help(h);
            }
            self.report(d);
            return cur.poisoned();
        };
        if bodies.len() < 2 {
            self.report(
                Diagnostic::error(
                    DiagKind::Structure,
                    span,
                    format!(
                        "`branches` needs at least two bodies, found {}",
                        bodies.len()
                    ),
                )
                .with_help(
                    "write `branches concat { { … }, { … } }`; `{ }` is the identity branch",
                ),
            );
            return cur.poisoned();
        }
        let (name, key) = self.name_for(label, "branches", env);
        self.push_scope(&name);
        let mut outs = Vec::with_capacity(bodies.len());
        for (i, body) in bodies.iter().enumerate() {
            self.push_scope(&format!("{name}.{i}"));
            self.open_names(format!("branch {i} of `{name}`"), false);
            outs.push(self.exec(body, &mut env.clone(), cur, true));
            self.close_names();
            self.scopes.pop();
        }
        let parts: Option<Vec<Part>> = outs
            .iter()
            .enumerate()
            .map(|(i, o)| {
                Some(Part {
                    shape: o.shape?,
                    what: format!("branch {i}"),
                    span: bodies[i].first().map(stmt_span).unwrap_or(span),
                })
            })
            .collect();
        let out = match parts {
            Some(parts) => {
                let inputs = outs.iter().map(|o| o.node).collect();
                let layer = format!("{name}.{}", join.name);
                self.join_layer(how, &parts, inputs, layer, span, outs[0])
            }
            None => cur.poisoned(),
        };
        self.scopes.pop();
        if let (Some(key), Some(l)) = (key, label) {
            self.bind_value(key, l.span, out);
        }
        out
    }

    /// Pushes the `concat` or `add` layer joining `parts` (read from `inputs`).
    fn join_layer(
        &mut self,
        how: Join,
        parts: &[Part],
        inputs: Vec<usize>,
        name: String,
        span: Span,
        first: Cur,
    ) -> Cur {
        let shape = match rules::join(how, parts, span) {
            Ok(s) => s,
            Err(d) => {
                self.report(d);
                return first.poisoned();
            }
        };
        let op = match how {
            Join::Concat => Op::Concat,
            Join::Add => Op::Add,
            Join::Scale => Op::Scale,
        };
        // After a concat the split is whatever the channel counts give.
        let alpha = match (how, shape.split_channels()) {
            (Join::Concat, Some((h, l))) => crate::shape::split_alpha(h, l),
            (Join::Concat, None) => 0.0,
            (Join::Add | Join::Scale, _) => first.alpha,
        };
        match self.push_layer(name, op, inputs, parts[0].shape, shape, span) {
            Some(node) => Cur {
                node,
                shape: Some(shape),
                alpha,
            },
            None => first.poisoned(),
        }
    }

    /// `concat(a, …)`, `add(a, …)` and `scale(x)`: layers that read named values besides `cur`.
    pub(super) fn call_join(
        &mut self,
        def: &'static LayerDef,
        call: &Call,
        env: &Env,
        cur: Cur,
    ) -> Cur {
        let named: Vec<Arg> = call
            .args
            .iter()
            .filter(|a| a.name.is_some())
            .cloned()
            .collect();
        let slots = self.bind_layer(def, &named, call.span, env);
        let refs: Vec<&Arg> = call.args.iter().filter(|a| a.name.is_none()).collect();
        if refs.is_empty() {
            let example = match def.name {
                "scale" => "scale(x)",
                "add" => "add(x)",
                _ => "concat(enc1)",
            };
            self.report(
                Diagnostic::error(
                    DiagKind::Argument,
                    call.span,
                    format!(
                        "`{}` needs the names of the values it reads: `{example}`",
                        def.name
                    ),
                )
                .with_label("no value named")
                .with_help("bind a value with `as` (`conv(…) as enc1;`) and pass its name"),
            );
            return cur.poisoned();
        }
        if def.name == "scale" && refs.len() > 1 {
            self.report(
                Diagnostic::error(
                    DiagKind::Argument,
                    refs[1].span,
                    format!("`scale` scales one value, but {} were named", refs.len()),
                )
                .with_label("surplus value"),
            );
            return cur.poisoned();
        }
        if !self.has_input(def, call, cur) || slots.is_none() {
            return cur.poisoned();
        }
        let mut read = Vec::with_capacity(refs.len());
        for r in &refs {
            read.push(
                self.lookup(&r.value, env)
                    .map(|(c, what)| (c, what, r.value.span)),
            );
        }
        let Some(read) = read.into_iter().collect::<Option<Vec<_>>>() else {
            return cur.poisoned();
        };
        let Some(shape) = cur.shape else {
            return cur;
        };
        let mut parts = vec![Part {
            shape,
            what: "the current value".into(),
            span: call.name.span,
        }];
        for (c, what, span) in &read {
            let Some(s) = c.shape else {
                return cur.poisoned();
            };
            parts.push(Part {
                shape: s,
                what: what.clone(),
                span: *span,
            });
        }
        let (name, key) = self.name_for(call.label.as_ref(), def.name, env);
        self.labelled = call.label.is_some();
        let how = Join::named(def.name).expect("concat, add and scale are joins");
        let out = if how == Join::Scale {
            // `scale(x)` reads `x` first and the gates (the current value) second.
            let x = read[0].0;
            let parts = [parts[1].clone(), parts[0].clone()];
            self.join_layer(how, &parts, vec![x.node, cur.node], name, call.span, x)
        } else {
            let inputs = std::iter::once(cur.node)
                .chain(read.iter().map(|r| r.0.node))
                .collect();
            self.join_layer(how, &parts, inputs, name, call.span, cur)
        };
        self.labelled = false;
        if let (Some(key), Some(l)) = (key, &call.label) {
            self.bind_value(key, l.span, out);
        }
        out
    }
}
