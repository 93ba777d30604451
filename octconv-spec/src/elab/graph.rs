//! Where values meet: residual connections and their automatic shortcuts, `branches`, and the
//! value-reading layers `concat`, `add` and `scale`. The shape rules are in [`crate::layers::graph`].

use super::*;
use crate::layers::graph::{self as rules, Join, Part};
use crate::syntax::ast::{Ident, Label};

impl Elab<'_> {
    /// `residual { … } shortcut { … } as name;`: the body, and the shortcut (written, else automatic),
    /// both run from `cur` and are added.
    pub(super) fn residual(
        &mut self,
        body: &[Stmt],
        shortcut: Option<&[Stmt]>,
        label: Option<&Label>,
        span: Span,
        env: &Env,
        cur: Cur,
    ) -> Cur {
        self.named(label, "res", env, |e, name| {
            e.push_scope(&name);
            e.open_names(format!("`{name}`"), false);
            let main = e.exec(body, &mut env.clone(), cur, true);
            e.close_names();
            let sc = match shortcut {
                Some(sc) => e.shortcut(sc, &name, env, cur),
                None => e.auto_shortcut(cur, main, span, &name),
            };
            let out = e.residual_add(&name, main, sc, span);
            e.scopes.pop();
            out
        })
    }

    /// The written `shortcut { … }` of residual `res_name`, run from `cur`.
    fn shortcut(&mut self, body: &[Stmt], res_name: &str, env: &Env, cur: Cur) -> Cur {
        self.push_scope(&format!("{res_name}.shortcut"));
        self.open_names(format!("the shortcut of `{res_name}`"), false);
        let out = self.exec(body, &mut env.clone(), cur, true);
        self.close_names();
        self.scopes.pop();
        out
    }

    /// The `add` that ends residual `res_name`; reports branches whose shapes disagree.
    fn residual_add(&mut self, res_name: &str, main: Cur, sc: Cur, span: Span) -> Cur {
        match (main.shape, sc.shape) {
            (Some(a), Some(b)) if a == b => {
                let add = format!("{res_name}.add");
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
        }
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
        let spec = match projection(from, to) {
            Ok(spec) => spec,
            Err(why) => {
                self.report(
                    Diagnostic::error(
                        DiagKind::ResidualMismatch,
                        span,
                        format!("residual mismatch: cannot project the input {from} to the main branch's output {to}: {why}"),
                    )
                    .with_label("no automatic shortcut")
                    .with_help("write an explicit `shortcut { … }` that produces the main branch's shape"),
                );
                return input.poisoned();
            }
        };
        let name = format!("{res_name}.shortcut.octconv0");
        match self.push_layer(name, Op::OctConv(spec), vec![input.node], from, to, span) {
            Some(node) => Cur {
                node,
                shape: Some(to),
                alpha: main.alpha,
            },
            None => input.poisoned(),
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
        let Some(how) = self.join_named(join) else {
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
        self.named(label, "branches", env, |e, name| {
            e.push_scope(&name);
            let outs = e.run_branches(&name, bodies, env, cur);
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
                    e.join_layer(how, &parts, inputs, layer, span, outs[0])
                }
                None => cur.poisoned(),
            };
            e.scopes.pop();
            out
        })
    }

    /// The join `branches` names; reports a word that names none.
    fn join_named(&mut self, join: &Ident) -> Option<Join> {
        let how = Join::named(&join.name);
        if how.is_none() {
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
        }
        how
    }

    /// Runs every body of `branches` `name` from `cur`, each in its own scope.
    fn run_branches(&mut self, name: &str, bodies: &[Vec<Stmt>], env: &Env, cur: Cur) -> Vec<Cur> {
        let mut outs = Vec::with_capacity(bodies.len());
        for (i, body) in bodies.iter().enumerate() {
            self.push_scope(&format!("{name}.{i}"));
            self.open_names(format!("branch {i} of `{name}`"), false);
            outs.push(self.exec(body, &mut env.clone(), cur, true));
            self.close_names();
            self.scopes.pop();
        }
        outs
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
        let Some(refs) = self.value_refs(def, call) else {
            return cur.poisoned();
        };
        if !self.has_input(def, call, cur) || slots.is_none() {
            return cur.poisoned();
        }
        // Every reference is looked up (and reported) before any is used.
        let read: Vec<_> = refs
            .iter()
            .map(|r| {
                self.lookup(&r.value, env)
                    .map(|(c, what)| (c, what, r.value.span))
            })
            .collect();
        let Some(read) = read.into_iter().collect::<Option<Vec<_>>>() else {
            return cur.poisoned();
        };
        let Some(shape) = cur.shape else {
            return cur;
        };
        let Some(parts) = join_parts(shape, call, &read) else {
            return cur.poisoned();
        };
        self.named(call.label.as_ref(), def.name, env, |e, name| {
            e.labelled = call.label.is_some();
            let how = Join::named(def.name).expect("concat, add and scale are joins");
            let out = if how == Join::Scale {
                // `scale(x)` reads `x` first and the gates (the current value) second.
                let x = read[0].0;
                let parts = [parts[1].clone(), parts[0].clone()];
                e.join_layer(how, &parts, vec![x.node, cur.node], name, call.span, x)
            } else {
                let inputs = std::iter::once(cur.node)
                    .chain(read.iter().map(|r| r.0.node))
                    .collect();
                e.join_layer(how, &parts, inputs, name, call.span, cur)
            };
            e.labelled = false;
            out
        })
    }

    /// The positional arguments of a join: the values it reads. Reports none, or more than one for
    /// `scale`.
    fn value_refs<'c>(&mut self, def: &LayerDef, call: &'c Call) -> Option<Vec<&'c Arg>> {
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
            return None;
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
            return None;
        }
        Some(refs)
    }
}

/// The 1×1 octconv that projects `from` to `to` (stride 1 or 2), or why there is none.
fn projection(from: Shape, to: Shape) -> Result<OctConvSpec, String> {
    let (Some(fh), Some(th), Some(split_in), Some(split_out)) = (
        from.high(),
        to.high(),
        from.split_channels(),
        to.split_channels(),
    ) else {
        return Err("flat vectors have no projection".into());
    };
    let Some(stride) = [1, 2]
        .into_iter()
        .find(|&s| fh.h == s * th.h && fh.w == s * th.w)
    else {
        return Err(format!(
            "the size changes from {}×{} to {}×{}, not by 1 or 2",
            fh.h, fh.w, th.h, th.w
        ));
    };
    let spec = OctConvSpec::dense(split_in, split_out, 1, stride, false);
    match octconv::infer(&spec, &from) {
        Ok(out) if out == to => Ok(spec),
        Ok(out) => Err(format!("a 1×1 projection would give {out}")),
        Err((_, msg, _)) => Err(msg),
    }
}

/// What a join reads: the current value (`shape`), then each named value; `None` if one of those has
/// no shape (its error is reported).
fn join_parts(shape: Shape, call: &Call, read: &[(Cur, String, Span)]) -> Option<Vec<Part>> {
    let current = Part {
        shape,
        what: "the current value".into(),
        span: call.name.span,
    };
    let named = read.iter().map(|(c, what, span)| {
        Some(Part {
            shape: c.shape?,
            what: what.clone(),
            span: *span,
        })
    });
    std::iter::once(Some(current)).chain(named).collect()
}
