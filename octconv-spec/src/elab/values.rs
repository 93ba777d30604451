//! Value names. `as name` (or `as name[i]`) after a call, a `residual` or a `branches` names the layer
//! or construct and binds the value it produces; `concat(name)`, `add(name)` and `scale(name)` read
//! it later.
//!
//! Scoping, the same as for layer names:
//! - a name is visible from its statement to the end of the body it is bound in, and inside the
//!   `residual`, `shortcut` and branch bodies nested there;
//! - a name bound inside a `residual`, `shortcut` or branch body is not visible after that body;
//! - a block body sees only its own names, and its caller sees only what the call is labelled;
//! - `repeat` bodies are not a scope (as for layer names): a name bound in a loop stays visible after
//!   it, so a loop binds one name per iteration with an index, `as enc[i]`;
//! - a name cannot be bound twice where it is visible: there is no shadowing.

use super::*;
use crate::syntax::ast::Label;

/// The value names of one level of nesting.
pub(super) struct Names {
    /// Key (`enc1`, `enc[2]`) → value and where it was bound.
    entries: HashMap<String, (Cur, Span)>,
    /// A block body: the levels outside are not visible from here.
    barrier: bool,
    /// Where the level is, for messages (`block \`down\``, `` `res0` ``).
    inside: String,
}

impl Names {
    /// The model body's level.
    pub(super) fn root(model: &str) -> Names {
        Names {
            entries: HashMap::new(),
            barrier: true,
            inside: format!("model `{model}`"),
        }
    }
}

impl Elab<'_> {
    /// Opens a level of value names; a `barrier` (block body) hides the levels outside.
    pub(super) fn open_names(&mut self, inside: String, barrier: bool) {
        self.names.push(Names {
            entries: HashMap::new(),
            barrier,
            inside,
        });
    }

    /// Closes the innermost level: its names are no longer visible.
    pub(super) fn close_names(&mut self) {
        self.names.pop();
    }

    /// The levels visible from here, innermost first.
    fn visible(&self) -> impl Iterator<Item = &Names> {
        let from = self.names.iter().rposition(|n| n.barrier).unwrap_or(0);
        self.names[from..].iter().rev()
    }

    /// The key (`enc`, `enc[2]`) and the layer-name segment (`enc`, `enc.2`) of a label.
    pub(super) fn label_key(&mut self, label: &Label, env: &Env) -> Option<(String, String)> {
        let name = &label.name.name;
        let Some(index) = &label.index else {
            return Some((name.clone(), name.clone()));
        };
        match eval(index, env) {
            Ok(Value {
                val: Val::Int(i), ..
            }) if i >= 0 => Some((format!("{name}[{i}]"), format!("{name}.{i}"))),
            Ok(v) => {
                self.report(
                    Diagnostic::error(
                        DiagKind::Type,
                        index.span,
                        format!(
                            "the index of `{name}[…]` must be a non-negative `int`, found {} `{}`",
                            v.val.type_name(),
                            v.val
                        ),
                    )
                    .with_label("not an index"),
                );
                None
            }
            Err(d) => {
                self.report(d);
                None
            }
        }
    }

    /// A labelled call or construct (a layer, a block call, `residual`, `branches`): `produce` builds
    /// it under its full name (its label's, or the next automatic one from `base`), and the value it
    /// gives is bound under the label.
    pub(super) fn named(
        &mut self,
        label: Option<&Label>,
        base: &str,
        env: &Env,
        produce: impl FnOnce(&mut Self, String) -> Cur,
    ) -> Cur {
        let (name, key) = self.name_for(label, base, env);
        let out = produce(self, name);
        if let (Some(key), Some(l)) = (key, label) {
            self.bind_value(key, l.span, out);
        }
        out
    }

    /// The full layer (or scope) name for a call or construct: its label's, or the next automatic one.
    fn name_for(
        &mut self,
        label: Option<&Label>,
        base: &str,
        env: &Env,
    ) -> (String, Option<String>) {
        match label.map(|l| (l, self.label_key(l, env))) {
            Some((_, Some((key, segment)))) => {
                (format!("{}{segment}", self.scope().prefix), Some(key))
            }
            // A bad index was reported; the automatic name keeps the rest of the check going.
            _ => (self.auto_name(base), None),
        }
    }

    /// Binds `key` to `cur` in the innermost level.
    fn bind_value(&mut self, key: String, span: Span, cur: Cur) {
        let first = self
            .visible()
            .find_map(|n| n.entries.get(&key))
            .map(|(_, at)| *at);
        if let Some(first) = first {
            // A poisoned value already has its error (a clashing layer name, for one).
            if cur.shape.is_some() {
                let d = Diagnostic::error(
                    DiagKind::Duplicate,
                    span,
                    format!("value `{key}` is already bound"),
                )
                .with_label("bound again here")
                .with_secondary(first, "first bound here")
                .with_help(format!("names cannot be shadowed: choose another name, or inside `repeat` bind one per iteration with an index (`as {key}[i]`)"));
                self.report(d);
            }
            return;
        }
        let inside = self
            .names
            .last()
            .map(|n| n.inside.clone())
            .unwrap_or_default();
        self.bound_anywhere.push((key.clone(), span, inside));
        if let Some(level) = self.names.last_mut() {
            level.entries.insert(key, (cur, span));
        }
    }

    /// The value a reference (`enc1`, `enc[i]`) names, and how to call it in messages; `None` after an
    /// error (reported here).
    pub(super) fn lookup(&mut self, e: &Expr, env: &Env) -> Option<(Cur, String)> {
        let key = self.value_key(e, env)?;
        let found = self
            .visible()
            .find_map(|n| n.entries.get(&key))
            .map(|(cur, _)| *cur);
        if let Some(cur) = found {
            return Some((cur, format!("`{key}`")));
        }
        let d = self.unbound(&key, e.span);
        self.report(d);
        None
    }

    /// The key a reference names (`enc1`, `enc[2]`); `None` after an error (reported here).
    fn value_key(&mut self, e: &Expr, env: &Env) -> Option<String> {
        match &e.kind {
            ExprKind::Var(name) => Some(name.clone()),
            ExprKind::Index(base, index) => match (&base.kind, eval(index, env)) {
                (
                    ExprKind::Var(name),
                    Ok(Value {
                        val: Val::Int(i), ..
                    }),
                ) => Some(format!("{name}[{i}]")),
                (ExprKind::Var(_), Ok(v)) => {
                    self.report(Diagnostic::error(
                        DiagKind::Type,
                        index.span,
                        format!(
                            "a value index must be an `int`, found {} `{}`",
                            v.val.type_name(),
                            v.val
                        ),
                    ));
                    None
                }
                (ExprKind::Var(_), Err(d)) => {
                    self.report(d);
                    None
                }
                _ => self.not_a_name(e),
            },
            _ => self.not_a_name(e),
        }
    }

    /// Why no value `key` is visible at `at`: it is bound only where it cannot be seen, or nowhere
    /// (then with a suggestion and the indexed names of the same base that are bound).
    fn unbound(&self, key: &str, at: Span) -> Diagnostic {
        if let Some((_, bound, inside)) = self.bound_anywhere.iter().find(|b| b.0 == key) {
            return Diagnostic::error(
                DiagKind::NotVisible,
                at,
                format!("value `{key}` is not visible here: it is bound inside {inside}"),
            )
            .with_label("not visible here")
            .with_secondary(*bound, "bound here")
            .with_help("a name is visible after its statement in the same body and in the bodies nested there; bind it outside the block, residual or branch, or label the block call or construct itself (`… as name;`)");
        }
        let mut d = Diagnostic::error(DiagKind::UnknownName, at, format!("no value named `{key}`"))
            .with_label("not bound");
        let keys: Vec<String> = self
            .visible()
            .flat_map(|n| n.entries.keys().cloned())
            .collect();
        match suggest::help(key, keys.iter().map(String::as_str)) {
            Some(h) => d = d.with_help(h),
            None => {
                d = d.with_help(format!(
                    "bind a value with `as`, e.g. `conv(out = 64, kernel = 3) as {key};`, before using it"
                ))
            }
        }
        let base = key.split('[').next().unwrap_or(key).to_string();
        let mut family: Vec<&String> = keys
            .iter()
            .filter(|k| k.starts_with(&format!("{base}[")))
            .collect();
        family.sort();
        if !family.is_empty() {
            let list: Vec<&str> = family.iter().map(|k| k.as_str()).collect();
            d = d.with_note(format!("bound here: {}", list.join(", ")));
        }
        d
    }

    fn not_a_name(&mut self, e: &Expr) -> Option<String> {
        self.report(
            Diagnostic::error(
                DiagKind::Argument,
                e.span,
                "expected the name of a value (`enc1` or `enc[i]`), found an expression",
            )
            .with_label("not a value name")
            .with_help("name values with `as` (`conv(…) as enc1;`) and pass the name"),
        );
        None
    }
}
