//! Binding call arguments to parameters — one rule for builtin layers, user blocks and models:
//! positional arguments first, then named ones; unknown, repeated, surplus and ill-typed arguments are
//! errors (all reported); missing required arguments are reported by [`missing`].

use crate::diag::{DiagKind, Diagnostic, Diagnostics};
use crate::eval::{eval, Env};
use crate::source::Span;
use crate::suggest;
use crate::syntax::ast::{Arg, Ty};
use crate::value::Value;

/// One parameter of a callee.
#[derive(Clone, Debug)]
pub struct SigParam {
    /// Name.
    pub name: String,
    /// Declared type.
    pub ty: Ty,
    /// Whether a value must be given (no default).
    pub required: bool,
}

/// The result of binding: one slot per parameter, with the span of the argument that filled it.
#[derive(Clone, Debug, Default)]
pub struct Slots {
    /// Bound values.
    pub values: Vec<Option<Value>>,
    /// Span of the argument that filled each slot.
    pub spans: Vec<Option<Span>>,
}

/// Binds `args` (evaluated in `env`) to `params` of `callee`. Returns `None` if any argument was
/// rejected; every problem is pushed to `diags`.
pub fn bind(
    callee: &str,
    params: &[SigParam],
    args: &[Arg],
    env: &Env,
    diags: &mut Diagnostics,
) -> Option<Slots> {
    let mut slots = Slots {
        values: vec![None; params.len()],
        spans: vec![None; params.len()],
    };
    let mut ok = true;
    let mut positional = 0;
    let mut seen_named = false;
    for arg in args {
        let idx = match &arg.name {
            None => {
                if seen_named {
                    diags.push(
                        Diagnostic::error(
                            DiagKind::Argument,
                            arg.span,
                            format!(
                                "positional argument after a named one in the call of `{callee}`"
                            ),
                        )
                        .with_help("write positional arguments first, or name this one"),
                    );
                    ok = false;
                    continue;
                }
                let i = positional;
                positional += 1;
                if i >= params.len() {
                    let names: Vec<_> = params.iter().map(|p| p.name.as_str()).collect();
                    diags.push(
                        Diagnostic::error(
                            DiagKind::Argument,
                            arg.span,
                            format!(
                                "`{callee}` takes {} argument(s), but {} positional arguments were given",
                                params.len(),
                                i + 1
                            ),
                        )
                        .with_label("surplus argument")
                        .with_note(format!("parameters: {}", describe(params, &names))),
                    );
                    ok = false;
                    continue;
                }
                i
            }
            Some(name) => {
                seen_named = true;
                match params.iter().position(|p| p.name == name.name) {
                    Some(i) => i,
                    None => {
                        let names: Vec<_> = params.iter().map(|p| p.name.as_str()).collect();
                        let mut d = Diagnostic::error(
                            DiagKind::Argument,
                            name.span,
                            format!("`{callee}` has no parameter `{}`", name.name),
                        )
                        .with_label("unknown argument")
                        .with_note(format!("parameters: {}", describe(params, &names)));
                        if let Some(h) = suggest::help(&name.name, names.iter().copied()) {
                            d = d.with_help(h);
                        }
                        diags.push(d);
                        ok = false;
                        continue;
                    }
                }
            }
        };
        if let Some(prev) = slots.spans[idx] {
            diags.push(
                Diagnostic::error(
                    DiagKind::Argument,
                    arg.span,
                    format!(
                        "argument `{}` of `{callee}` is given twice",
                        params[idx].name
                    ),
                )
                .with_secondary(prev, "first given here"),
            );
            ok = false;
            continue;
        }
        match word_or_eval(&arg.value, &params[idx].ty, env) {
            Ok(v) => match v.val.coerce(&params[idx].ty) {
                Ok(val) => {
                    slots.values[idx] = Some(v.with_val(val));
                    slots.spans[idx] = Some(arg.span);
                }
                Err(why) => {
                    diags.push(
                        Diagnostic::error(
                            DiagKind::Argument,
                            arg.value.span,
                            format!(
                                "argument `{}` of `{callee}` has the wrong type: {why}",
                                params[idx].name
                            ),
                        )
                        .with_label(format!("expected `{}`", params[idx].ty)),
                    );
                    ok = false;
                }
            },
            Err(d) => {
                diags.push(d);
                ok = false;
            }
        }
    }
    ok.then_some(slots)
}

/// Evaluates an argument. A string option may be written as a bare word (`mode = nearest`): a name
/// that is not a variable in scope is then the string itself.
fn word_or_eval(e: &crate::syntax::ast::Expr, ty: &Ty, env: &Env) -> Result<Value, Diagnostic> {
    match &e.kind {
        crate::syntax::ast::ExprKind::Var(name) if *ty == Ty::Str && env.get(name).is_none() => {
            Ok(Value::new(crate::value::Val::Str(name.clone()), e.span))
        }
        _ => eval(e, env),
    }
}

/// Reports required parameters that no argument filled; returns `false` if any is missing.
pub fn missing(
    callee: &str,
    params: &[SigParam],
    slots: &Slots,
    call_span: Span,
    diags: &mut Diagnostics,
) -> bool {
    let names: Vec<&str> = params
        .iter()
        .zip(&slots.values)
        .filter(|(p, v)| p.required && v.is_none())
        .map(|(p, _)| p.name.as_str())
        .collect();
    if names.is_empty() {
        return true;
    }
    let list = names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ");
    let all: Vec<_> = params.iter().map(|p| p.name.as_str()).collect();
    diags.push(
        Diagnostic::error(
            DiagKind::Argument,
            call_span,
            format!(
                "missing argument{} {list} in the call of `{callee}`",
                if names.len() > 1 { "s" } else { "" }
            ),
        )
        .with_label(format!("{list} not given"))
        .with_note(format!("parameters: {}", describe(params, &all))),
    );
    false
}

fn describe(params: &[SigParam], names: &[&str]) -> String {
    if params.is_empty() {
        return "none".to_string();
    }
    params
        .iter()
        .zip(names)
        .map(|(p, n)| {
            if p.required {
                format!("{n}: {}", p.ty)
            } else {
                format!("{n}: {} (optional)", p.ty)
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}
