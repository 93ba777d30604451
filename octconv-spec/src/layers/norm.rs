//! `bn` and `dropout`: element-wise layers that keep the shape (per branch on a pair).

use super::Args;
use crate::diag::{DiagKind, Diagnostic};
use crate::ir::Op;
use crate::shape::Shape;

/// `bn(eps = 1e-5, momentum = 0.1)`.
pub(crate) fn bn(a: &Args, input: &Shape) -> Result<(Op, Shape), Diagnostic> {
    let eps = a.float("eps").unwrap_or(1e-5);
    if eps <= 0.0 {
        return Err(a.error(
            DiagKind::Structure,
            "eps",
            format!("`eps` of `bn` must be positive, found {eps}"),
        ));
    }
    let momentum = a.float("momentum").unwrap_or(0.1);
    if !(0.0..=1.0).contains(&momentum) {
        return Err(a.error(
            DiagKind::Structure,
            "momentum",
            format!("`momentum` of `bn` must lie in [0, 1], found {momentum}"),
        ));
    }
    Ok((Op::BatchNorm { eps, momentum }, *input))
}

/// `dropout(p = 0.5)`.
pub(crate) fn dropout(a: &Args, input: &Shape) -> Result<(Op, Shape), Diagnostic> {
    let p = a.float("p").unwrap_or(0.5);
    if !(0.0..1.0).contains(&p) {
        let d = a
            .error(
                DiagKind::Structure,
                "p",
                format!("dropout probability must lie in [0, 1), found {p}"),
            )
            .with_label(format!("p = {p}"));
        return Err(a.with_origin(d, "p", "p comes from here"));
    }
    Ok((Op::Dropout { p }, *input))
}
