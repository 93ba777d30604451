//! Where values meet: the shape rules of `concat`, `add` and `scale`, and of the joins of
//! `residual` and `branches`. One rule per join, used by every construct that joins values.

use crate::diag::{DiagKind, Diagnostic};
use crate::shape::{Dims, Shape};
use crate::source::Span;

/// One value taking part in a join, and how to name it in messages.
#[derive(Clone, Debug)]
pub(crate) struct Part {
    /// Its shape.
    pub shape: Shape,
    /// `the current value`, `` `enc1` ``, `branch 1`.
    pub what: String,
    /// Where it is named (a value reference, a branch body), or the join itself.
    pub span: Span,
}

/// How values are joined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Join {
    /// Along channels, per branch.
    Concat,
    /// Element-wise sum.
    Add,
    /// The first value scaled per channel by the second, a vector of gates (`branches scale`).
    Scale,
}

impl Join {
    /// The join called `name` (`concat`, `add`).
    pub(crate) fn named(name: &str) -> Option<Join> {
        match name {
            "concat" => Some(Join::Concat),
            "add" => Some(Join::Add),
            "scale" => Some(Join::Scale),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Join::Concat => "concat",
            Join::Add => "add",
            Join::Scale => "scale",
        }
    }
}

/// The kind of a shape, for messages.
fn kind(s: &Shape) -> &'static str {
    match s {
        Shape::Single(_) => "a single-frequency tensor",
        Shape::Pair { .. } => "an octave pair",
        Shape::Flat { .. } => "a flat vector",
    }
}

/// An error at the join `at` that labels the two parts involved.
fn mismatch(at: Span, msg: String, a: &Part, b: &Part) -> Diagnostic {
    let mut d = Diagnostic::error(DiagKind::JoinMismatch, at, msg);
    for p in [a, b] {
        if p.span != at {
            d = d.with_secondary(p.span, format!("{}: {}", p.what, p.shape));
        }
    }
    d
}

/// Parts `a` and `b` are not equal where `need` (`add needs equal shapes`) says they must be.
fn unequal(at: Span, need: &str, a: &Part, b: &Part) -> Diagnostic {
    let msg = format!(
        "{need}: {} is {}, but {} is {}",
        a.what, a.shape, b.what, b.shape
    );
    mismatch(at, msg, a, b)
}

/// The shape of `parts` joined by `join`, or which two parts do not fit and why.
pub(crate) fn join(join: Join, parts: &[Part], at: Span) -> Result<Shape, Diagnostic> {
    let first = &parts[0];
    if join == Join::Scale {
        return match parts {
            [x, gates] => scale(x, gates, at),
            _ => Err(Diagnostic::error(
                DiagKind::Structure,
                at,
                format!(
                    "a scale join takes two values (the map, then its gates), found {}",
                    parts.len()
                ),
            )
            .with_help("write `branches scale { { }, { …gates… } }`")),
        };
    }
    let verb = join.name();
    for p in &parts[1..] {
        if std::mem::discriminant(&p.shape) != std::mem::discriminant(&first.shape) {
            return Err(mismatch(
                at,
                format!(
                    "{verb} of {} and {}: {} is {}, but {} is {}",
                    kind(&first.shape),
                    kind(&p.shape),
                    first.what,
                    first.shape,
                    p.what,
                    p.shape
                ),
                first,
                p,
            )
            .with_label("different kinds of value")
            .with_help("make them the same kind first: `split(alpha = …)` turns a tensor into a pair, `merge()` a pair into a tensor"));
        }
        if join == Join::Add && p.shape != first.shape {
            return Err(unequal(at, "add needs equal shapes", first, p)
                .with_label("shapes differ")
                .with_help("project one side to the other's shape (e.g. a 1×1 `conv` or `octconv`), or use `concat`"));
        }
        let size = |d: Dims| (d.h, d.w);
        let sizes_differ = match (first.shape, p.shape) {
            (Shape::Single(a), Shape::Single(b)) => size(a) != size(b),
            (Shape::Pair { high: ha, low: la }, Shape::Pair { high: hb, low: lb }) => {
                size(ha) != size(hb) || size(la) != size(lb)
            }
            _ => false,
        };
        if sizes_differ {
            return Err(unequal(at, "concat needs equal spatial sizes", first, p)
                .with_label("spatial sizes differ")
                .with_help("`upsample` or pool one side to the other's size first"));
        }
    }
    if join == Join::Add {
        return Ok(first.shape);
    }
    let sum = |f: fn(&Shape) -> usize| parts.iter().map(|p| f(&p.shape)).sum::<usize>();
    Ok(match first.shape {
        Shape::Single(d) => Shape::Single(Dims::new(sum(|s| s.channels()), d.h, d.w)),
        Shape::Pair { high, low } => Shape::Pair {
            high: Dims::new(sum(|s| s.high().map_or(0, |d| d.c)), high.h, high.w),
            low: Dims::new(sum(|s| s.low().map_or(0, |d| d.c)), low.h, low.w),
        },
        Shape::Flat { .. } => Shape::Flat {
            features: sum(|s| s.channels()),
        },
    })
}

/// `scale(x)`: the shape of map or pair `x` scaled per channel by `gates`, a flat vector with one
/// entry per channel of `x` (or a `[C, 1, 1]` map).
pub(crate) fn scale(x: &Part, gates: &Part, at: Span) -> Result<Shape, Diagnostic> {
    if let Shape::Flat { .. } = x.shape {
        return Err(Diagnostic::error(
            DiagKind::JoinMismatch,
            x.span,
            format!("scale needs a feature map or an octave pair to scale, but {} is {}", x.what, x.shape),
        )
        .with_label("nothing to scale per channel")
        .with_help("name the block's input (e.g. `bn() as y;`) and write `scale(y)` at the end of the gate"));
    }
    let c = x.shape.channels();
    let n = match gates.shape {
        Shape::Flat { features } => Some(features),
        Shape::Single(d) if d.h == 1 && d.w == 1 => Some(d.c),
        _ => None,
    };
    match n {
        Some(n) if n == c => Ok(x.shape),
        Some(n) => Err(mismatch(
            at,
            format!(
                "scale needs one gate per channel: {} has {c} channels, but {} gives {n} gates",
                x.what, gates.what
            ),
            x,
            gates,
        )
        .with_label("gate count differs")
        .with_help(format!("make the last layer of the gate produce {c} values"))),
        None => Err(mismatch(
            at,
            format!(
                "scale needs its gates as a flat vector, but {} is {}",
                gates.what, gates.shape
            ),
            x,
            gates,
        )
        .with_label("not a gate vector")
        .with_help("end the gate with `global_avg_pool(per_branch = true)`, `linear(…)` or a 1×1 `conv` and `sigmoid()`")),
    }
}
