//! Evaluation of expressions: integer arithmetic is checked (overflow is an error, not a wrap or a panic),
//! `int / int` truncates like Rust, mixed arithmetic widens to float.

use crate::diag::{DiagKind, Diagnostic};
use crate::suggest;
use crate::syntax::ast::{BinOp, Expr, ExprKind, UnOp};
use crate::value::{Val, Value};
use std::collections::HashMap;

/// Functions callable in expressions, for messages and suggestions.
pub const FUNCTIONS: &[&str] = &[
    "int",
    "float",
    "min",
    "max",
    "abs",
    "floor",
    "ceil",
    "round",
    "len",
    "pow",
    "make_divisible",
];

/// Variables in scope: a block's or model's parameters, `let` bindings and loop indices.
#[derive(Clone, Debug, Default)]
pub struct Env {
    vars: HashMap<String, Value>,
}

impl Env {
    /// An empty scope.
    pub fn new() -> Self {
        Self::default()
    }

    /// Binds (or rebinds) a name.
    pub fn set(&mut self, name: &str, v: Value) {
        self.vars.insert(name.to_string(), v);
    }

    /// Looks a name up.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.vars.get(name)
    }

    /// Removes a binding (loop variables after the loop).
    pub fn remove(&mut self, name: &str) -> Option<Value> {
        self.vars.remove(name)
    }

    /// Names in scope.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.vars.keys().map(String::as_str)
    }
}

fn type_err(e: &Expr, msg: impl Into<String>) -> Diagnostic {
    Diagnostic::error(DiagKind::Type, e.span, msg)
}

/// Evaluates `e` in `env`.
pub fn eval(e: &Expr, env: &Env) -> Result<Value, Diagnostic> {
    let val = match &e.kind {
        ExprKind::Int(i) => Val::Int(*i),
        ExprKind::Float(f) => Val::Float(*f),
        ExprKind::Bool(b) => Val::Bool(*b),
        ExprKind::Str(s) => Val::Str(s.clone()),
        ExprKind::List(items) => {
            let vals = items.iter().map(|x| eval(x, env)).collect::<Result<Vec<_>, _>>()?;
            let elem_origins = vals.iter().map(|v| v.origin).collect();
            let val = Val::list(vals.into_iter().map(|v| v.val).collect())
                .map_err(|why| Diagnostic::error(DiagKind::Limit, e.span, why))?;
            return Ok(Value {
                val,
                origin: e.span,
                elem_origins,
            });
        }
        ExprKind::Var(name) => {
            return env.get(name).cloned().ok_or_else(|| {
                let mut d = Diagnostic::error(
                    DiagKind::UnknownName,
                    e.span,
                    format!("unknown variable `{name}`"),
                )
                .with_label("not in scope");
                if let Some(h) = suggest::help(name, env.names()) {
                    d = d.with_help(h);
                } else {
                    d = d.with_help(
                        "a block sees only its own parameters, `let` bindings and loop indices (pass the value as an argument); values given on the command line cannot refer to parameters",
                    );
                }
                d
            })
        }
        ExprKind::Unary(op, x) => {
            let v = eval(x, env)?.val;
            match (op, v) {
                (UnOp::Neg, Val::Int(i)) => Val::Int(
                    i.checked_neg()
                        .ok_or_else(|| type_err(e, "integer overflow in negation"))?,
                ),
                (UnOp::Neg, Val::Float(f)) => Val::Float(-f),
                (UnOp::Not, Val::Bool(b)) => Val::Bool(!b),
                (UnOp::Neg, v) => return Err(type_err(e, format!("cannot negate a `{}`", v.type_name()))),
                (UnOp::Not, v) => {
                    return Err(type_err(e, format!("`!` needs a `bool`, found `{}`", v.type_name())))
                }
            }
        }
        ExprKind::Binary(op, a, b) => binary(e, *op, a, b, env)?,
        ExprKind::Index(list, ix) => {
            let l = eval(list, env)?;
            let i = eval(ix, env)?;
            match (&l.val, &i.val) {
                (Val::List(items), Val::Int(k)) => {
                    let Some(x) = usize::try_from(*k).ok().and_then(|k| items.get(k)) else {
                        return Err(type_err(
                            ix,
                            format!("index {k} is out of range for a list of {} elements", items.len()),
                        ));
                    };
                    // An element keeps the origin of what was written in the list literal, if known.
                    let origin = l.elem_origins.get(*k as usize).copied().unwrap_or(l.origin);
                    return Ok(Value::new(x.clone(), origin));
                }
                (Val::List(_), v) => {
                    return Err(type_err(ix, format!("list index must be an `int`, found `{}`", v.type_name())))
                }
                (v, _) => return Err(type_err(list, format!("cannot index a `{}`", v.type_name()))),
            }
        }
        ExprKind::Call(f, args) => call(e, &f.name, args, env)?,
        ExprKind::If(c, t, f) => {
            return match eval(c, env)?.val {
                Val::Bool(true) => eval(t, env),
                Val::Bool(false) => eval(f, env),
                v => Err(type_err(c, format!("`if` needs a `bool` condition, found `{}`", v.type_name()))),
            }
        }
    };
    if let Val::Float(f) = val {
        if !f.is_finite() {
            return Err(type_err(e, "arithmetic produced a non-finite number"));
        }
    }
    Ok(Value::new(val, e.span))
}

fn binary(e: &Expr, op: BinOp, a: &Expr, b: &Expr, env: &Env) -> Result<Val, Diagnostic> {
    // Short-circuit boolean operators.
    if matches!(op, BinOp::And | BinOp::Or) {
        let l = match eval(a, env)?.val {
            Val::Bool(x) => x,
            v => {
                return Err(type_err(
                    a,
                    format!(
                        "`{}` needs `bool` operands, found `{}`",
                        op.symbol(),
                        v.type_name()
                    ),
                ))
            }
        };
        if (op == BinOp::And && !l) || (op == BinOp::Or && l) {
            return Ok(Val::Bool(l));
        }
        return match eval(b, env)?.val {
            Val::Bool(x) => Ok(Val::Bool(x)),
            v => Err(type_err(
                b,
                format!(
                    "`{}` needs `bool` operands, found `{}`",
                    op.symbol(),
                    v.type_name()
                ),
            )),
        };
    }
    let l = eval(a, env)?.val;
    let r = eval(b, env)?.val;
    let overflow = || type_err(e, format!("integer overflow in `{}`", op.symbol()));
    Ok(match (&l, &r) {
        (Val::Int(x), Val::Int(y)) => {
            let (x, y) = (*x, *y);
            match op {
                BinOp::Add => Val::Int(x.checked_add(y).ok_or_else(overflow)?),
                BinOp::Sub => Val::Int(x.checked_sub(y).ok_or_else(overflow)?),
                BinOp::Mul => Val::Int(x.checked_mul(y).ok_or_else(overflow)?),
                BinOp::Div | BinOp::Rem if y == 0 => return Err(type_err(b, "division by zero")),
                BinOp::Div => Val::Int(x.checked_div(y).ok_or_else(overflow)?),
                BinOp::Rem => Val::Int(x.checked_rem(y).ok_or_else(overflow)?),
                _ => Val::Bool(compare(op, x.cmp(&y))),
            }
        }
        (Val::Int(_) | Val::Float(_), Val::Int(_) | Val::Float(_)) => {
            let (x, y) = (l.as_f64().unwrap_or(0.0), r.as_f64().unwrap_or(0.0));
            match op {
                BinOp::Add => Val::Float(x + y),
                BinOp::Sub => Val::Float(x - y),
                BinOp::Mul => Val::Float(x * y),
                BinOp::Div | BinOp::Rem if y == 0.0 => return Err(type_err(b, "division by zero")),
                BinOp::Div => Val::Float(x / y),
                BinOp::Rem => Val::Float(x % y),
                _ => match x.partial_cmp(&y) {
                    Some(o) => Val::Bool(compare(op, o)),
                    None => return Err(type_err(e, "comparison of non-finite numbers")),
                },
            }
        }
        (Val::Bool(x), Val::Bool(y)) if matches!(op, BinOp::Eq | BinOp::Ne) => {
            Val::Bool((x == y) == (op == BinOp::Eq))
        }
        _ => {
            return Err(type_err(
                e,
                format!(
                    "cannot apply `{}` to `{}` and `{}`",
                    op.symbol(),
                    l.type_name(),
                    r.type_name()
                ),
            ))
        }
    })
}

fn compare(op: BinOp, o: std::cmp::Ordering) -> bool {
    use std::cmp::Ordering::*;
    match op {
        BinOp::Eq => o == Equal,
        BinOp::Ne => o != Equal,
        BinOp::Lt => o == Less,
        BinOp::Le => o != Greater,
        BinOp::Gt => o == Greater,
        _ => o != Less,
    }
}

fn call(e: &Expr, name: &str, args: &[Expr], env: &Env) -> Result<Val, Diagnostic> {
    let vals: Vec<Val> = args
        .iter()
        .map(|a| eval(a, env).map(|v| v.val))
        .collect::<Result<_, _>>()?;
    let arity = |n: usize| -> Result<(), Diagnostic> {
        if vals.len() == n {
            Ok(())
        } else {
            Err(Diagnostic::error(
                DiagKind::Argument,
                e.span,
                format!("`{name}` takes {n} argument(s), found {}", vals.len()),
            ))
        }
    };
    let num = |v: &Val| -> Result<f64, Diagnostic> {
        v.as_f64().ok_or_else(|| {
            type_err(
                e,
                format!("`{name}` needs a number, found `{}`", v.type_name()),
            )
        })
    };
    let to_int = |f: f64| -> Result<Val, Diagnostic> {
        if f.abs() < 9.0e18 {
            Ok(Val::Int(f as i64))
        } else {
            Err(type_err(
                e,
                format!("`{name}`: {f} does not fit in an `int`"),
            ))
        }
    };
    match name {
        // `int(x)` truncates toward zero like Python's `int()`, which the official code uses for splits.
        "int" => {
            arity(1)?;
            to_int(num(&vals[0])?.trunc())
        }
        "float" => {
            arity(1)?;
            Ok(Val::Float(num(&vals[0])?))
        }
        "floor" | "ceil" | "round" => {
            arity(1)?;
            let x = num(&vals[0])?;
            to_int(match name {
                "floor" => x.floor(),
                "ceil" => x.ceil(),
                _ => x.round(),
            })
        }
        "abs" => {
            arity(1)?;
            match &vals[0] {
                Val::Int(i) => i
                    .checked_abs()
                    .map(Val::Int)
                    .ok_or_else(|| type_err(e, "integer overflow in `abs`")),
                v => Ok(Val::Float(num(v)?.abs())),
            }
        }
        "len" => {
            arity(1)?;
            match &vals[0] {
                Val::List(v) => Ok(Val::Int(v.len() as i64)),
                v => Err(type_err(
                    e,
                    format!("`len` needs a list, found `{}`", v.type_name()),
                )),
            }
        }
        // `pow(b, e)`: integer power (checked), or float power if either is a float.
        "pow" => {
            arity(2)?;
            match (&vals[0], &vals[1]) {
                (Val::Int(b), Val::Int(x)) => {
                    let x = u32::try_from(*x).map_err(|_| {
                        type_err(
                            e,
                            format!("`pow`: the exponent must be a non-negative `int`, found {x}"),
                        )
                    })?;
                    b.checked_pow(x)
                        .map(Val::Int)
                        .ok_or_else(|| type_err(e, "integer overflow in `pow`"))
                }
                (b, x) => Ok(Val::Float(num(b)?.powf(num(x)?))),
            }
        }
        // `make_divisible(v, d)`: torchvision's and TensorFlow's width rounding for MobileNets: the
        // nearest multiple of `d` (at least `d`), raised by `d` if rounding lost more than 10 %.
        "make_divisible" => {
            arity(2)?;
            let (v, d) = (num(&vals[0])?, num(&vals[1])?);
            if !(d >= 1.0 && v.is_finite() && v.abs() < 1e15) {
                return Err(type_err(
                    e,
                    format!("`make_divisible`: needs a finite value and a divisor ≥ 1, found ({v}, {d})"),
                ));
            }
            let d = d.trunc();
            let mut r = (((v + d / 2.0) / d).trunc() * d).max(d);
            if r < 0.9 * v {
                r += d;
            }
            to_int(r)
        }
        "min" | "max" => {
            if vals.is_empty() {
                return Err(Diagnostic::error(
                    DiagKind::Argument,
                    e.span,
                    format!("`{name}` needs at least one argument"),
                ));
            }
            let all_int = vals.iter().all(|v| matches!(v, Val::Int(_)));
            let mut best = num(&vals[0])?;
            for v in &vals[1..] {
                let x = num(v)?;
                if (name == "min" && x < best) || (name == "max" && x > best) {
                    best = x;
                }
            }
            Ok(if all_int {
                Val::Int(best as i64)
            } else {
                Val::Float(best)
            })
        }
        _ => {
            let mut d = Diagnostic::error(
                DiagKind::UnknownName,
                e.span,
                format!("unknown function `{name}`"),
            )
            .with_note(format!("functions: {}", FUNCTIONS.join(", ")));
            if let Some(h) = suggest::help(name, FUNCTIONS) {
                d = d.with_help(h);
            }
            Err(d)
        }
    }
}
