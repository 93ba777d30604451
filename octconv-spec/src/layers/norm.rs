//! `bn` and `dropout`: element-wise layers that keep the shape (per branch on a pair).

use super::DefaultValue::Float as F;
use super::PTy::Float;
use super::{Args, Param};
use crate::diag::{DiagKind, Diagnostic};
use crate::ir::{Layer, Op};
use crate::param_info::{bn_params, ParamInfo};
use crate::shape::Shape;

/// `eps`.
pub(super) const EPS: Param = Param::new("eps", Float, F(1e-5));
/// `momentum`.
pub(super) const MOMENTUM: Param = Param::new("momentum", Float, F(0.1));
/// `p`.
pub(super) const P: Param = Param::new("p", Float, F(0.5));

/// The parameters, in signature order.
pub(super) const BN_PARAMS: &[Param] = &[EPS, MOMENTUM];

/// The parameters, in signature order.
pub(super) const DROPOUT_PARAMS: &[Param] = &[P];

/// `bn(eps = 1e-5, momentum = 0.1)`.
pub(crate) fn bn(a: &Args, input: &Shape) -> Result<(Op, Shape), Diagnostic> {
    let eps = a.number(EPS)?;
    if eps <= 0.0 {
        return Err(a.error(
            DiagKind::Structure,
            EPS,
            format!("`eps` of `bn` must be positive, found {eps}"),
        ));
    }
    let momentum = a.number(MOMENTUM)?;
    if !(0.0..=1.0).contains(&momentum) {
        return Err(a.error(
            DiagKind::Structure,
            MOMENTUM,
            format!("`momentum` of `bn` must lie in [0, 1], found {momentum}"),
        ));
    }
    Ok((Op::BatchNorm { eps, momentum }, *input))
}

/// `dropout(p = 0.5)`.
pub(crate) fn dropout(a: &Args, input: &Shape) -> Result<(Op, Shape), Diagnostic> {
    let p = a.number(P)?;
    if !(0.0..1.0).contains(&p) {
        let d = a
            .error(
                DiagKind::Structure,
                P,
                format!("dropout probability must lie in [0, 1), found {p}"),
            )
            .with_label(format!("p = {p}"));
        return Err(a.with_origin(d, P, "p comes from here"));
    }
    Ok((Op::Dropout { p }, *input))
}

/// Trainable parameters of `bn`: a weight and a bias per channel (running statistics are buffers).
pub(super) fn bn_param_count(_op: &Op, input: &Shape) -> Option<u64> {
    Some(2 * input.channels() as u64)
}

/// `weight`, `bias`, `running_mean`, `running_var` per channel; on a pair under `h.` and `l.`.
pub(super) fn bn_weights(layer: &Layer) -> Vec<ParamInfo> {
    let n = &layer.name;
    let mut out = Vec::new();
    match layer.input {
        Shape::Pair { high, low } => {
            bn_params(&mut out, &format!("{n}.h."), high.c);
            bn_params(&mut out, &format!("{n}.l."), low.c);
        }
        other => bn_params(&mut out, &format!("{n}."), other.channels()),
    }
    out
}
