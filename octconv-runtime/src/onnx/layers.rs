//! Every layer other than the convolutions as ONNX nodes. Each function takes the layer's name, its
//! inputs as graph values and returns its output value, computing what the runtime layer of the same
//! name computes in evaluation mode.

use super::builder::{Attr, Builder, Map, Val};
use anyhow::{bail, Result};
use octconv_spec::ir::PoolSpec;
use octconv_spec::Dims;

/// Batch normalisation with running statistics, per branch.
pub(super) fn batch_norm(b: &mut Builder, name: &str, eps: f64, x: &Val) -> Result<Val> {
    let one = |b: &mut Builder, x: &str, prefix: &str, out: &str| -> Result<String> {
        let p = |s: &str| format!("{name}.{prefix}{s}");
        let inputs = [
            x.to_string(),
            b.weight(&p("weight"))?,
            b.weight(&p("bias"))?,
            b.weight(&p("running_mean"))?,
            b.weight(&p("running_var"))?,
        ];
        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        Ok(b.node(
            "BatchNormalization",
            out,
            &inputs,
            &[Attr::Float("epsilon", eps as f32)],
        ))
    };
    match x {
        Val::Flat(v, f) => Ok(Val::Flat(one(b, v, "", name)?, *f)),
        Val::Single(m) => Ok(Val::Single(Map {
            name: one(b, &m.name, "", name)?,
            dims: m.dims,
        })),
        Val::Pair { .. } => x.map(|m, tag| {
            let prefix = format!("{}.", &tag[1..]);
            Ok(Map {
                name: one(b, &m.name, &prefix, &format!("{name}{tag}"))?,
                dims: m.dims,
            })
        }),
    }
}

/// An element-wise operator on every branch (or on a flat vector).
pub(super) fn unary(
    b: &mut Builder,
    name: &str,
    op: &str,
    inputs: &[&str],
    x: &Val,
) -> Result<Val> {
    let apply = |b: &mut Builder, v: &str, out: &str| {
        let mut all = vec![v];
        all.extend_from_slice(inputs);
        b.node(op, out, &all, &[])
    };
    match x {
        Val::Flat(v, f) => Ok(Val::Flat(apply(b, v, name), *f)),
        _ => x.map(|m, tag| {
            Ok(Map {
                name: apply(b, &m.name, &format!("{name}{tag}")),
                dims: m.dims,
            })
        }),
    }
}

/// `Clip(x, 0, 6)`.
pub(super) fn relu6(b: &mut Builder, name: &str, x: &Val) -> Result<Val> {
    let lo = b.float_const(&[], &[0.0]);
    let hi = b.float_const(&[], &[6.0]);
    unary(b, name, "Clip", &[&lo, &hi], x)
}

/// Average or max pooling per branch; average pooling counts the zero padding, as the runtime does.
pub(super) fn pool(b: &mut Builder, name: &str, max: bool, s: &PoolSpec, x: &Val) -> Result<Val> {
    let (k, st, p) = (s.kernel as i64, s.stride as i64, s.padding as i64);
    x.map(|m, tag| {
        let mut attrs = vec![
            Attr::Ints("kernel_shape", vec![k, k]),
            Attr::Ints("strides", vec![st, st]),
            Attr::Ints("pads", vec![p; 4]),
        ];
        if !max {
            attrs.push(Attr::Int("count_include_pad", 1));
        }
        let op = if max { "MaxPool" } else { "AveragePool" };
        let out = b.node(op, &format!("{name}{tag}"), &[&m.name], &attrs);
        let size = |n: usize| (n + 2 * s.padding - s.kernel) / s.stride + 1;
        Ok(Map {
            name: out,
            dims: Dims::new(m.dims.c, size(m.dims.h), size(m.dims.w)),
        })
    })
}

/// Single-frequency map → pair: the last `low` channels, pooled 2×2, are the low branch (`low` = 0:
/// the identity).
pub(super) fn split(b: &mut Builder, name: &str, low: usize, x: &Val) -> Result<Val> {
    let Val::Single(m) = x else {
        bail!("internal error: `{name}` (split) reads a pair or a vector")
    };
    if low == 0 {
        return Ok(x.clone());
    }
    let c = m.dims.c;
    let high = (c > low).then(|| b.channels(&format!("{name}.h"), m, 0, c - low));
    let l = b.channels(&format!("{name}.l.full"), m, c - low, low);
    let low = b.pool2(&format!("{name}.l"), &l);
    Ok(Val::Pair { high, low })
}

/// Pair → `concat([high, upsample ×2 (low)])`; a single map passes unchanged.
pub(super) fn merge(b: &mut Builder, name: &str, x: &Val) -> Result<Val> {
    let Val::Pair { high, low } = x else {
        return Ok(x.clone());
    };
    let up = b.upsample(&format!("{name}.l.up"), low, 2);
    let parts: Vec<&Map> = high.iter().chain([&up]).collect();
    Ok(Val::Single(b.concat(name, &parts)?))
}

/// Pair → `concat([avg_pool 2×2 (high), low])` at the low resolution.
pub(super) fn merge_low(b: &mut Builder, name: &str, x: &Val) -> Result<Val> {
    let Val::Pair { high, low } = x else {
        bail!("internal error: `{name}` (merge to low) reads a single map")
    };
    let pooled = high.as_ref().map(|h| b.pool2(&format!("{name}.h.pool"), h));
    let parts: Vec<&Map> = pooled.iter().chain([low]).collect();
    Ok(Val::Single(b.concat(name, &parts)?))
}

/// Single map → pair with every channel in both branches, the low one pooled 2×2.
pub(super) fn pyramid(b: &mut Builder, name: &str, x: &Val) -> Result<Val> {
    let Val::Single(m) = x else {
        bail!("internal error: `{name}` (pyramid) reads a pair or a vector")
    };
    let low = b.pool2(&format!("{name}.l"), m);
    Ok(Val::Pair {
        high: Some(m.clone()),
        low,
    })
}

/// Global average pooling to `[N, C]`; with `per_branch` on a pair, each branch pooled, then
/// concatenated (high first).
pub(super) fn global_avg_pool(b: &mut Builder, name: &str, x: &Val) -> Result<Val> {
    let maps: Vec<(Map, &str)> = match x {
        Val::Single(m) => vec![(m.clone(), "")],
        Val::Pair { high, low } => high
            .iter()
            .map(|h| (h.clone(), ".h"))
            .chain([(low.clone(), ".l")])
            .collect(),
        Val::Flat(..) => bail!("internal error: `{name}` (global_avg_pool) reads a vector"),
    };
    let mut pooled = Vec::new();
    for (m, tag) in &maps {
        let out = b.node(
            "GlobalAveragePool",
            &format!("{name}.pool{tag}"),
            &[&m.name],
            &[],
        );
        pooled.push(Map {
            name: out,
            dims: Dims::new(m.dims.c, 1, 1),
        });
    }
    let parts: Vec<&Map> = pooled.iter().collect();
    let all = b.concat(&format!("{name}.concat"), &parts)?;
    let out = b.node("Flatten", name, &[&all.name], &[Attr::Int("axis", 1)]);
    Ok(Val::Flat(out, all.dims.c))
}

/// `[N, C, H, W]` → `[N, C·H·W]`.
pub(super) fn flatten(b: &mut Builder, name: &str, x: &Val) -> Result<Val> {
    match x {
        Val::Single(m) => {
            let out = b.node("Flatten", name, &[&m.name], &[Attr::Int("axis", 1)]);
            Ok(Val::Flat(out, m.dims.c * m.dims.h * m.dims.w))
        }
        Val::Flat(..) => Ok(x.clone()),
        Val::Pair { .. } => bail!("internal error: `{name}` (flatten) reads a pair"),
    }
}

/// `y = x Wᵀ + b` (`Gemm` with `transB`).
pub(super) fn linear(
    b: &mut Builder,
    name: &str,
    out_f: usize,
    bias: bool,
    x: &Val,
) -> Result<Val> {
    let Val::Flat(v, _) = x else {
        bail!("internal error: `{name}` (linear) reads a feature map")
    };
    let w = b.weight(&format!("{name}.weight"))?;
    let mut inputs = vec![v.clone(), w];
    if bias {
        inputs.push(b.weight(&format!("{name}.bias"))?);
    }
    let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    let out = b.node("Gemm", name, &inputs, &[Attr::Int("transB", 1)]);
    Ok(Val::Flat(out, out_f))
}

/// Element-wise sum of all inputs, branch by branch.
pub(super) fn add(b: &mut Builder, name: &str, xs: &[&Val]) -> Result<Val> {
    join(b, name, xs, |b, out, parts| {
        let names: Vec<&str> = parts.iter().map(|m| m.name.as_str()).collect();
        let dims = parts[0].dims;
        Ok(Map {
            name: b.sum(out, &names)?,
            dims,
        })
    })
}

/// Element-wise product of two values of one shape, branch by branch.
pub(super) fn mul(b: &mut Builder, name: &str, xs: &[&Val]) -> Result<Val> {
    join(b, name, xs, |b, out, parts| {
        let [x, y] = parts else {
            bail!(
                "internal error: `{out}` multiplies {} values, not 2",
                parts.len()
            )
        };
        Ok(Map {
            name: b.node("Mul", out, &[&x.name, &y.name], &[]),
            dims: x.dims,
        })
    })
}

/// Concatenation along channels, branch by branch.
pub(super) fn concat(b: &mut Builder, name: &str, xs: &[&Val]) -> Result<Val> {
    join(b, name, xs, |b, out, parts| b.concat(out, parts))
}

/// Applies `f` to the inputs' high branches and to their low ones (or to their single maps).
fn join(
    b: &mut Builder,
    name: &str,
    xs: &[&Val],
    mut f: impl FnMut(&mut Builder, &str, &[&Map]) -> Result<Map>,
) -> Result<Val> {
    match xs.first() {
        Some(Val::Single(_) | Val::Flat(..)) => {
            let flat = matches!(xs[0], Val::Flat(..));
            let maps = xs
                .iter()
                .map(|x| match x {
                    Val::Single(m) if !flat => Ok(m.clone()),
                    Val::Flat(v, f) if flat => Ok(Map {
                        name: v.clone(),
                        dims: Dims::new(*f, 1, 1),
                    }),
                    _ => bail!("internal error: `{name}` joins values of different kinds"),
                })
                .collect::<Result<Vec<_>>>()?;
            let refs: Vec<&Map> = maps.iter().collect();
            let m = f(b, name, &refs)?;
            Ok(if flat {
                Val::Flat(m.name, m.dims.c)
            } else {
                Val::Single(m)
            })
        }
        Some(Val::Pair { .. }) => {
            let mut highs = Vec::new();
            let mut lows = Vec::new();
            for x in xs {
                let Val::Pair { high, low } = x else {
                    bail!("internal error: `{name}` joins a pair with a map")
                };
                highs.extend(high.iter());
                lows.push(low);
            }
            let high = (!highs.is_empty())
                .then(|| f(b, &format!("{name}.h"), &highs))
                .transpose()?;
            let low = f(b, &format!("{name}.l"), &lows)?;
            Ok(Val::Pair { high, low })
        }
        None => bail!("internal error: `{name}` joins nothing"),
    }
}

/// `x` multiplied per channel by the gates `g` (one per channel, high channels first).
pub(super) fn scale(b: &mut Builder, name: &str, x: &Val, g: &Val) -> Result<Val> {
    let gates = match g {
        Val::Flat(v, _) => v.clone(),
        Val::Single(m) => m.name.clone(),
        Val::Pair { .. } => bail!("internal error: `{name}` (scale) has pair gates"),
    };
    let to4 = b.ints(&[0, -1, 1, 1]);
    let g4 = b.node("Reshape", &format!("{name}.gates"), &[&gates, &to4], &[]);
    let g4 = Map {
        name: g4,
        dims: Dims::new(x.channels(), 1, 1),
    };
    let high_c = match x {
        Val::Pair { high, .. } => high.as_ref().map_or(0, |h| h.dims.c),
        _ => 0,
    };
    let is_pair = matches!(x, Val::Pair { .. });
    x.map(|m, tag| {
        let gates = if is_pair {
            let from = if tag == ".h" { 0 } else { high_c };
            b.channels(&format!("{name}.gates{tag}"), &g4, from, m.dims.c)
        } else {
            g4.clone()
        };
        let out = b.node("Mul", &format!("{name}{tag}"), &[&m.name, &gates.name], &[]);
        Ok(Map {
            name: out,
            dims: m.dims,
        })
    })
}

/// Nearest-neighbour upsampling of every branch by `s`.
pub(super) fn upsample(b: &mut Builder, name: &str, s: usize, x: &Val) -> Result<Val> {
    x.map(|m, tag| Ok(b.upsample(&format!("{name}{tag}"), m, s)))
}
