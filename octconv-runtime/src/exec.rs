//! The executor: runs a planned inference ([`octconv_spec::plan::Program`]) over a model's runtime
//! layers. The interpreter ([`crate::model::OctModel::infer`]) and the code `octnet!` and
//! `octconv gen` generate both call it, so which layers run fused is decided in one place (the
//! program) and carried out in one place (here).
//!
//! Every value is detached from the autograd graph and freed after its last reader; the values equal
//! the per-op forward in eval mode ([`Step::Reference`]) to rounding.

use crate::kernels::scratch::output_vec;
use crate::layers::graph::write_channels;
use crate::layers::{concat, Activation, MeansOut, OctBatchNorm, OctLayer, OutputStage};
use crate::value::OctValue;
use candle_core::{bail, DType, Result, Tensor};
use octconv_spec::plan::{ConcatPlace, OutputMap, PlannedLayer, Program, Step};
use octconv_spec::Shape;

/// The runtime layers a program runs, one per planned layer (`None` for the input).
pub type Layers<'a> = [Option<&'a dyn OctLayer>];

/// Runs `program` on the input batch `x` (`[N, C, H, W]`, checked by the caller) and returns the
/// last layer's value.
pub fn infer(program: &Program, layers: &Layers<'_>, x: &Tensor) -> Result<OctValue> {
    run(program, layers, x, &mut |_| ())
}

/// [`infer`], calling `at_layer(j)` just before layer `j` runs and `at_layer(n)` after the last of
/// the `n` layers (`octconv bench` finds the layer at which memory peaks, and times each layer).
/// On the CPU the whole pass runs on one of rayon's worker threads ([`crate::threads::on_pool`]),
/// where our kernels share out their work; on other devices on the calling thread.
pub fn run(
    program: &Program,
    layers: &Layers<'_>,
    x: &Tensor,
    at_layer: &mut (dyn FnMut(usize) + Send),
) -> Result<OctValue> {
    crate::threads::on_pool_for(x.device(), || run_here(program, layers, x, at_layer))
}

/// [`run`] on the calling thread.
fn run_here(
    program: &Program,
    layers: &Layers<'_>,
    x: &Tensor,
    at_layer: &mut (dyn FnMut(usize) + Send),
) -> Result<OctValue> {
    let n = program.layers.len();
    if layers.len() != n {
        bail!(
            "internal error: a program of {n} layers run over {} runtime layers",
            layers.len()
        )
    }
    validate(program)?;
    let shapes = value_shapes(program);
    let mut values: Vec<Option<OctValue>> = vec![None; n];
    // The buffer of each concatenation chain, under the chain's first link, while the chain runs.
    let mut buffers: Vec<Option<ChainBuffer>> = vec![None; n];
    for (j, planned) in program.layers.iter().enumerate() {
        at_layer(j);
        // Its reader runs it ([`Step::ExpandDepthwise`]): no value; or its producer set its value
        // ([`Step::Meaned`]), and what it would have read may go.
        if matches!(planned.step, Step::Expanded | Step::Meaned) {
            for &i in &planned.frees {
                values[i] = None;
            }
            continue;
        }
        let ins = planned
            .inputs
            .iter()
            .map(|&i| {
                values[i].as_ref().ok_or_else(|| {
                    candle_core::Error::Msg(format!(
                        "layer `{}`: input not available",
                        planned.name
                    ))
                })
            })
            .collect::<Result<Vec<&OctValue>>>()?;
        // A fused scale-add also reads the scale's gates, a convolution that joins a sum the
        // residual.
        let extra = match planned.step {
            Step::ScaleAdd { scale, .. } => Some((program.layers[scale].inputs[1], "gates")),
            Step::Run {
                map: Some(OutputMap { add: Some(a), .. }),
            }
            | Step::AfterBnRelu {
                map: Some(OutputMap { add: Some(a), .. }),
                ..
            } => program.residual(a).map(|r| (r, "residual")),
            _ => None,
        };
        let extra = match extra {
            Some((i, what)) => Some(values[i].as_ref().ok_or_else(|| {
                candle_core::Error::Msg(format!("layer `{}`: {what} not available", planned.name))
            })?),
            None => None,
        };
        // A stage that computes a global average pooling leaves its means here.
        let means = stage_mean(planned).map(|g| (g, MeansOut::default()));
        let y = step(
            program,
            layers,
            j,
            (&ins, extra, means.as_ref().map(|m| &m.1)),
            x,
            &mut buffers,
        )?;
        let meaned = match means {
            None => None,
            Some((g, out)) => {
                let Some(m) = out.take() else {
                    bail!(
                        "internal error: `{}` computed no means for `{}`",
                        planned.name,
                        program.layers[g].name
                    )
                };
                if m.shape() != shapes[g] {
                    bail!(
                        "internal error: `{}` produced means {} but the checker expects {}",
                        planned.name,
                        m.shape(),
                        shapes[g]
                    )
                }
                Some((g, m))
            }
        };
        // Cut each value loose from the autograd graph: weights are variables, so every output
        // would otherwise keep its inputs alive until the last layer.
        let y = y.map(|t| Ok(t.detach()))?;
        if y.shape() != shapes[j] {
            bail!(
                "internal error: layer `{}` produced {} but the checker expects {}",
                planned.name,
                y.shape(),
                shapes[j]
            )
        }
        drop(ins);
        for &i in &planned.frees {
            values[i] = None;
        }
        values[j] = Some(y);
        if let Some((g, m)) = meaned {
            values[g] = Some(m);
        }
    }
    at_layer(n);
    values
        .pop()
        .flatten()
        .ok_or_else(|| candle_core::Error::Msg("model has no layers".into()))
}

/// The global average pooling whose means layer `planned`'s output stage computes, if any.
fn stage_mean(planned: &PlannedLayer) -> Option<usize> {
    match planned.step {
        Step::Run { map: Some(m) } => m.mean,
        _ => None,
    }
}

/// The shape of each layer's value as the program runs: the checker's, except where an output map
/// pools ([`OutputMap::pool`], [`OutputMap::pool_for`]): the producer and the batch norm and
/// activation it passes over hold the pooled map.
fn value_shapes(program: &Program) -> Vec<Shape> {
    let mut shapes: Vec<Shape> = program.layers.iter().map(|l| l.output).collect();
    for (j, l) in program.layers.iter().enumerate() {
        let map = match l.step {
            Step::Run { map }
            | Step::OnPooled { map }
            | Step::AfterBnRelu { map, .. }
            | Step::ScaleAdd { map, .. } => map,
            _ => None,
        };
        let Some(m) = map else { continue };
        let pooled = match (m.pool, m.pool_for) {
            (Some(p), _) => program.layers[p].output,
            (None, Some(_)) => l.output.halved(),
            (None, None) => continue,
        };
        for k in [Some(j), m.bn, m.act].into_iter().flatten() {
            shapes[k] = pooled;
        }
    }
    shapes
}

/// Checks that every index in `program` points where the executor will look (a program is public
/// data: one built by hand must give an error, not a panic).
fn validate(program: &Program) -> Result<()> {
    let n = program.layers.len();
    for (j, l) in program.layers.iter().enumerate() {
        let earlier = |i: usize| i < j;
        let here_or_later = |i: usize| i >= j && i < n;
        let ok = l.inputs.iter().all(|&i| earlier(i))
            && l.frees.iter().all(|&i| earlier(i))
            && match l.step {
                Step::Input => l.inputs.is_empty(),
                Step::AfterBnRelu { bn, map } => {
                    earlier(bn) && map_ok(map, n) && joins_ok(program, j, map) && no_means(map)
                }
                Step::BnAct { act } => act < n,
                Step::Run { map } => {
                    map_ok(map, n)
                        && one_pool(map)
                        && joins_ok(program, j, map)
                        && means_ok(program, j, map)
                }
                Step::Meaned => l.inputs.is_empty(),
                Step::OnPooled { map } => map_ok(map, n) && one_pool(map) && no_join(map),
                Step::SumOf { at } => at < l.inputs.len() && l.inputs.len() == 2,
                Step::Expanded => l.inputs.is_empty(),
                Step::ExpandDepthwise {
                    expand,
                    expand_map,
                    map,
                } => {
                    earlier(expand)
                        && program.layers[expand].step == Step::Expanded
                        && map_ok(Some(expand_map), n)
                        && map_ok(map, n)
                        && no_join(Some(expand_map))
                        && no_join(map)
                        && [Some(expand_map), map]
                            .iter()
                            .flatten()
                            .all(|m| m.pool.is_none() && m.pool_for.is_none())
                        && l.inputs.len() == 1
                }
                Step::Concat(ConcatPlace::Start { end }) => here_or_later(end),
                Step::Concat(ConcatPlace::Extend { start, end }) => {
                    earlier(start) && here_or_later(end) && !l.inputs.is_empty()
                }
                Step::PassOn => !l.inputs.is_empty(),
                Step::ScaleAdd { scale, map } => {
                    earlier(scale)
                        && map_ok(map, n)
                        && no_join(map)
                        && l.inputs.contains(&scale)
                        && program.layers[scale].inputs.len() == 2
                        && program.layers[scale].inputs.iter().all(|&i| i < scale)
                }
                Step::Reference => true,
            };
        if !ok || !made_by_one(program, j) {
            bail!(
                "internal error: the planned step of layer `{}` refers outside the program or asks for a fusion the runtime does not run",
                l.name
            )
        }
    }
    Ok(())
}

/// Whether a sum that a convolution joins ([`Step::SumOf`]) or a pooling it sums
/// ([`Step::Meaned`]) has exactly one such producer before it — for a sum, the convolution behind
/// the input it passes on (that convolution, or the batch norm its map applies) — and any other
/// layer none to rely on. A sum no convolution joins would drop its residual.
fn made_by_one(program: &Program, g: usize) -> bool {
    let layers = &program.layers;
    let maps = |j: usize| match layers[j].step {
        Step::Run { map: Some(m) } | Step::AfterBnRelu { map: Some(m), .. } => Some(m),
        _ => None,
    };
    let producers: Vec<usize> = (0..g)
        .filter(|&j| maps(j).is_some_and(|m| m.add == Some(g) || m.mean == Some(g)))
        .collect();
    match layers[g].step {
        Step::SumOf { at } => match (producers.as_slice(), layers[g].inputs.get(at)) {
            (&[j], Some(&i)) => {
                i == j || maps(j).is_some_and(|m| m.add == Some(g) && m.bn == Some(i))
            }
            _ => false,
        },
        Step::Meaned => producers.len() == 1,
        _ => true,
    }
}

/// Whether a map that joins a sum (`add`) is one the runtime runs: the sum is a later layer whose
/// step is [`Step::SumOf`], its residual is made before layer `j`, and the map pools nowhere.
fn joins_ok(program: &Program, j: usize, map: Option<OutputMap>) -> bool {
    let Some(a) = map.and_then(|m| m.add) else {
        return true;
    };
    let pools = map.is_some_and(|m| m.pool.is_some() || m.pool_for.is_some());
    a > j
        && !pools
        && matches!(program.layers[a].step, Step::SumOf { .. })
        && program.residual(a).is_some_and(|r| r < j)
}

/// Whether an output map computes no means (only [`Step::Run`] runs those).
fn no_means(map: Option<OutputMap>) -> bool {
    map.is_none_or(|m| m.mean.is_none())
}

/// Whether an output map joins no sum and computes no means (only [`Step::Run`] and, for sums,
/// [`Step::AfterBnRelu`] run those).
fn no_join(map: Option<OutputMap>) -> bool {
    map.is_none_or(|m| m.add.is_none() && m.mean.is_none())
}

/// Whether a map that computes a global average pooling (`mean`) is one the runtime runs: the
/// pooling is a later layer whose step is [`Step::Meaned`], and the map neither pools nor joins.
fn means_ok(program: &Program, j: usize, map: Option<OutputMap>) -> bool {
    let Some(g) = map.and_then(|m| m.mean) else {
        return true;
    };
    let plain = map.is_some_and(|m| m.pool.is_none() && m.pool_for.is_none() && m.add.is_none());
    g > j && plain && program.layers[g].step == Step::Meaned
}

/// Whether an output map pools at most one way (a max pool or a hand-off to a stride-2 reader).
fn one_pool(map: Option<OutputMap>) -> bool {
    map.is_none_or(|m| m.pool.is_none() || m.pool_for.is_none())
}

/// Whether an output map's layers are inside a program of `n` layers.
fn map_ok(map: Option<OutputMap>, n: usize) -> bool {
    map.is_none_or(|m| {
        [m.bn, m.act, m.pool, m.pool_for, m.add, m.mean]
            .iter()
            .all(|i| i.is_none_or(|i| i < n))
    })
}

/// Layer `j`'s value by its planned step.
fn step(
    program: &Program,
    layers: &Layers<'_>,
    j: usize,
    (ins, extra, means): (&[&OctValue], Option<&OctValue>, Option<&MeansOut>),
    x: &Tensor,
    buffers: &mut [Option<ChainBuffer>],
) -> Result<OctValue> {
    let planned = &program.layers[j];
    let layer = || {
        layers[j].ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "internal error: layer `{}` has no runtime layer",
                planned.name
            ))
        })
    };
    let first = || {
        ins.first()
            .copied()
            .ok_or_else(|| candle_core::Error::Msg(format!("layer `{}`: no input", planned.name)))
    };
    Ok(match planned.step {
        Step::Input => OctValue::Single(x.clone()),
        Step::PassOn => first()?.clone(),
        Step::AfterBnRelu { bn, map } => {
            let Some(conv) = layer()?.as_octconv() else {
                bail!(
                    "internal error: `{}` is not an octave convolution",
                    planned.name
                )
            };
            let bn = batch_norm(program, layers, bn)?;
            match map {
                Some(m) => {
                    let stage = OutputStage {
                        add: extra,
                        ..stage(program, layers, m)?
                    };
                    if m.add.is_some() && stage.add.is_none() {
                        bail!(
                            "internal error: `{}` joins a sum but has no residual",
                            planned.name
                        )
                    }
                    conv.infer_after_bn_relu_then(bn, first()?, &stage)?
                }
                None => conv.infer_after_bn_relu(bn, first()?)?,
            }
        }
        Step::BnAct { act } => batch_norm(program, layers, j)?.forward_act_t(
            first()?,
            false,
            Some(activation(program, layers, act)?),
        )?,
        Step::Concat(place) => concat_step(program, j, place, ins, buffers)?,
        Step::Run { map: Some(m) } => {
            // Only octave convolutions halve their output for a stride-2 reader.
            if m.pool_for.is_some() && layer()?.as_octconv().is_none() {
                bail!(
                    "internal error: `{}` hands a pooled map on but is not an octave convolution",
                    planned.name
                )
            }
            let stage = OutputStage {
                add: extra,
                means,
                ..stage(program, layers, m)?
            };
            if m.mean.is_some() && (means.is_none() || layer()?.as_octconv().is_none()) {
                bail!(
                    "internal error: `{}` computes means but is not an octave convolution",
                    planned.name
                )
            }
            if m.add.is_some() && (stage.add.is_none() || layer()?.as_octconv().is_none()) {
                bail!(
                    "internal error: `{}` joins a sum but is not an octave convolution or has no residual",
                    planned.name
                )
            }
            layer()?.infer_then(ins, &stage)?
        }
        Step::SumOf { at } => ins.get(at).copied().cloned().ok_or_else(|| {
            candle_core::Error::Msg(format!("layer `{}`: no input", planned.name))
        })?,
        Step::ExpandDepthwise {
            expand,
            expand_map,
            map,
        } => {
            let (Some(dw), Some(ex)) = (
                layer()?.as_octconv(),
                layers[expand].and_then(|l| l.as_octconv()),
            ) else {
                bail!(
                    "internal error: `{}` or its expansion is not an octave convolution",
                    planned.name
                )
            };
            let expand_stage = stage(program, layers, expand_map)?;
            let stage = map.map(|m| stage(program, layers, m)).transpose()?;
            dw.infer_expanded(ex, first()?, (&expand_stage, stage.as_ref()))?
        }
        Step::Expanded => bail!("internal error: `{}` runs in its reader", planned.name),
        Step::Meaned => bail!("internal error: `{}` runs in its producer", planned.name),
        Step::OnPooled { map } => {
            let Some(conv) = layer()?.as_octconv() else {
                bail!(
                    "internal error: `{}` is not an octave convolution",
                    planned.name
                )
            };
            let stage = map.map(|m| stage(program, layers, m)).transpose()?;
            conv.infer_on_pooled(first()?, stage.as_ref())?
        }
        Step::Run { map: None } => layer()?.infer(ins)?,
        Step::ScaleAdd { scale, map } => {
            let (Some(gates), Some(at)) = (extra, planned.inputs.iter().position(|&i| i == scale))
            else {
                bail!("internal error: `{}` has no scale to fuse", planned.name)
            };
            let stage = map.map(|m| stage(program, layers, m)).transpose()?;
            crate::layers::scale_add_infer(ins, (at, gates), stage.as_ref())?
        }
        Step::Reference => layer()?.apply(ins, false)?,
    })
}

/// The batch norm at layer `b`.
fn batch_norm<'a>(program: &Program, layers: &Layers<'a>, b: usize) -> Result<&'a OctBatchNorm> {
    match layers[b].and_then(|l| l.as_batch_norm()) {
        Some(bn) => Ok(bn),
        None => bail!(
            "internal error: the plan applies `{}` as a batch norm",
            program.layers[b].name
        ),
    }
}

/// The activation at layer `a`.
fn activation(program: &Program, layers: &Layers<'_>, a: usize) -> Result<Activation> {
    match layers[a].and_then(|l| l.as_activation()) {
        Some(act) => Ok(act),
        None => bail!(
            "internal error: the plan applies `{}` as an activation",
            program.layers[a].name
        ),
    }
}

/// The pooling layer at `p`.
fn pool(program: &Program, layers: &Layers<'_>, p: usize) -> Result<crate::layers::Pool> {
    match layers[p].and_then(|l| l.as_pool()) {
        Some(pool) => Ok(pool),
        None => bail!(
            "internal error: the plan applies `{}` as a pool",
            program.layers[p].name
        ),
    }
}

/// The output stage of map `m`.
fn stage<'a>(program: &Program, layers: &Layers<'a>, m: OutputMap) -> Result<OutputStage<'a>> {
    Ok(OutputStage {
        bn: m.bn.map(|b| batch_norm(program, layers, b)).transpose()?,
        act: m.act.map(|a| activation(program, layers, a)).transpose()?,
        pool: m.pool.map(|p| pool(program, layers, p)).transpose()?,
        halve: m.pool_for.is_some(),
        add: None,
        means: None,
    })
}

/// The buffer of a concatenation chain and how many channels of each branch (high or single, low)
/// its links have written so far (the buffer is not initialised beyond them).
#[derive(Clone)]
struct ChainBuffer {
    value: OctValue,
    written: (usize, usize),
}

/// A link of a concatenation chain: the first link allocates the buffer of the last one and writes
/// its inputs at the front; a later link writes only its new inputs after the previous link's
/// channels. Each link's value is the buffer's first channels (the last link's is the whole buffer).
/// Values the buffer cannot hold (flat values, a pair without a high branch) fall back to a copying
/// concatenation, and so does the rest of their chain; so does a link whose first input does not
/// end where the buffer's written channels end, or whose declared output is not exactly the
/// channels written (a hand-built program): no view ever shows a channel no link has written.
fn concat_step(
    program: &Program,
    j: usize,
    place: ConcatPlace,
    ins: &[&OctValue],
    buffers: &mut [Option<ChainBuffer>],
) -> Result<OctValue> {
    let planned: &PlannedLayer = &program.layers[j];
    let (start, end, new, at) = match place {
        ConcatPlace::Start { end } => {
            buffers[j] = alloc(ins, &program.layers[end].output)?.map(|value| ChainBuffer {
                value,
                written: (0, 0),
            });
            (j, end, ins, (0, 0))
        }
        ConcatPlace::Extend { start, end } => (start, end, &ins[1..], channels(ins[0])),
    };
    let Some(buffer) = buffers[start].clone().filter(|b| b.written == at) else {
        buffers[start] = None;
        return concat(ins);
    };
    let written = match write_at(&buffer.value, new, at)? {
        Some(written) if written == declared(&planned.output) => {
            view(&buffer.value, &planned.output)?.map(|v| (v, written))
        }
        _ => None,
    };
    match written {
        Some((v, written)) => {
            buffers[start] = (j != end).then_some(ChainBuffer { written, ..buffer });
            Ok(v)
        }
        // Not a kind of value the buffer holds: this link and the rest of its chain copy.
        None => {
            buffers[start] = None;
            concat(ins)
        }
    }
}

/// The channels per branch (high or single, low) of a declared output.
fn declared(out: &Shape) -> (usize, usize) {
    match out {
        Shape::Single(d) => (d.c, 0),
        Shape::Pair { high, low } => (high.c, low.c),
        _ => (usize::MAX, usize::MAX),
    }
}

/// A buffer shaped as `out` (batch, dtype and device of `ins[0]`), or `None` for values a buffer
/// does not hold. Its values are unspecified on the CPU and zero elsewhere: no channel is read
/// before a link has written it (each link's value is a view of the channels written so far, and a
/// chain that falls back to copying drops its buffer). Zeroing it cost one pass over the buffer per
/// chain: 3.3 ms of DenseNet-121's 211 ms at batch 8 in its first block's buffer alone (256
/// channels at 56 × 56, 25.7 MB; Intel Xeon, 2 threads, `octconv bench --profile`).
fn alloc(ins: &[&OctValue], out: &Shape) -> Result<Option<OctValue>> {
    let Some(like) = ins.first().and_then(|v| v.branches().1.or(v.branches().0)) else {
        return Ok(None);
    };
    let (n, dt, dev) = (like.dim(0)?, like.dtype(), like.device());
    let t = |d: octconv_spec::shape::Dims| {
        let dims = (n, d.c, d.h, d.w);
        let len = n * d.c * d.h * d.w;
        match (dev.is_cpu(), dt) {
            (true, DType::F32) => Tensor::from_vec(output_vec::<f32>(len), dims, dev),
            (true, DType::F64) => Tensor::from_vec(output_vec::<f64>(len), dims, dev),
            _ => Tensor::zeros(dims, dt, dev),
        }
    };
    Ok(match (out, ins[0]) {
        (Shape::Single(d), OctValue::Single(_)) => Some(OctValue::Single(t(*d)?)),
        (Shape::Pair { high, low }, OctValue::Pair { high: Some(_), .. }) if high.c > 0 => {
            Some(OctValue::Pair {
                high: Some(t(*high)?),
                low: t(*low)?,
            })
        }
        _ => None,
    })
}

/// The channels of each branch (high or single, low) of `v`: where a link's new inputs go.
fn channels(v: &OctValue) -> (usize, usize) {
    let c = |t: Option<&Tensor>| t.and_then(|t| t.dim(1).ok()).unwrap_or(0);
    let (h, l) = v.branches();
    (c(h), c(l))
}

/// Writes each branch of `new` into `buffer` along channels from `at` on and returns where the
/// written channels end: `Ok(None)` (nothing written) where a value is not of the buffer's kind, for
/// the caller to copy instead.
fn write_at(
    buffer: &OctValue,
    new: &[&OctValue],
    at: (usize, usize),
) -> Result<Option<(usize, usize)>> {
    let fits = new.iter().all(|v| {
        matches!(
            (buffer, v),
            (OctValue::Single(_), OctValue::Single(_))
                | (
                    OctValue::Pair { high: Some(_), .. },
                    OctValue::Pair { high: Some(_), .. }
                )
        )
    });
    if !fits {
        return Ok(None);
    }
    let (mut oh, mut ol) = at;
    for v in new {
        match (buffer, v) {
            (OctValue::Single(b), OctValue::Single(t)) => {
                write_channels(b, t, oh)?;
                oh += t.dim(1)?;
            }
            (
                OctValue::Pair {
                    high: Some(bh),
                    low: bl,
                },
                OctValue::Pair {
                    high: Some(th),
                    low: tl,
                },
            ) => {
                write_channels(bh, th, oh)?;
                write_channels(bl, tl, ol)?;
                oh += th.dim(1)?;
                ol += tl.dim(1)?;
            }
            _ => bail!("internal error: concatenation chain: a value the buffer does not hold"),
        }
    }
    Ok(Some((oh, ol)))
}

/// The buffer's first channels, as many per branch as `out` has.
fn view(buffer: &OctValue, out: &Shape) -> Result<Option<OctValue>> {
    Ok(match (buffer, out) {
        (OctValue::Single(b), Shape::Single(d)) => Some(OctValue::Single(b.narrow(1, 0, d.c)?)),
        (
            OctValue::Pair {
                high: Some(bh),
                low,
            },
            Shape::Pair { high, low: dl },
        ) => Some(OctValue::Pair {
            high: Some(bh.narrow(1, 0, high.c)?),
            low: low.narrow(1, 0, dl.c)?,
        }),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use octconv_spec::shape::Dims;

    fn layer(inputs: Vec<usize>, c: usize, step: Step) -> PlannedLayer {
        PlannedLayer {
            name: format!("l{c}"),
            inputs,
            output: Shape::Single(Dims { c, h: 2, w: 3 }),
            step,
            frees: vec![],
        }
    }

    fn single(c: usize, v: f64) -> OctValue {
        OctValue::Single(Tensor::full(v as f32, (2, c, 2, 3), &Device::Cpu).unwrap())
    }

    fn values(v: &OctValue) -> Vec<f32> {
        let OctValue::Single(t) = v else {
            panic!("a single value")
        };
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    /// Hand-built programs whose pooled hand-offs the runtime cannot honour are refused before
    /// anything runs: a map that both max-pools and hands a pooled map on, and an expansion run by
    /// its depthwise reader whose map (or the reader's) pools; the planner's forms pass.
    #[test]
    fn programs_with_pooled_hand_offs_the_runtime_cannot_honour_are_refused() {
        let map = |pool: Option<usize>, pool_for: Option<usize>| OutputMap {
            bn: None,
            act: None,
            pool,
            pool_for,
            add: None,
            mean: None,
        };
        let fused = |expand_map: OutputMap, m: Option<OutputMap>| Program {
            layers: vec![
                layer(vec![], 2, Step::Input),
                layer(vec![], 2, Step::Expanded),
                layer(
                    vec![0],
                    2,
                    Step::ExpandDepthwise {
                        expand: 1,
                        expand_map,
                        map: m,
                    },
                ),
            ],
        };
        let run = |m: OutputMap| Program {
            layers: vec![
                layer(vec![], 2, Step::Input),
                layer(vec![0], 2, Step::Run { map: Some(m) }),
                layer(vec![1], 2, Step::OnPooled { map: None }),
            ],
        };
        assert!(validate(&fused(map(None, None), None)).is_ok());
        assert!(validate(&run(map(None, Some(2)))).is_ok());
        for bad in [
            fused(map(Some(2), None), None),
            fused(map(None, None), Some(map(None, Some(2)))),
            run(map(Some(2), Some(2))),
        ] {
            let err = validate(&bad).unwrap_err().to_string();
            assert!(err.contains("asks for a fusion"), "{err}");
        }
    }

    /// Hand-built residual joins the runtime cannot honour are refused before anything runs: a
    /// residual made after the convolution, a sum that is not `SumOf`, a join that pools, a join
    /// on a step other than `Run`, a `SumOf` no convolution joins or whose joining convolution is
    /// not behind the input it passes on; the planner's form passes.
    #[test]
    fn programs_with_residual_joins_the_runtime_cannot_honour_are_refused() {
        let join = |add: usize, pool_for: Option<usize>| OutputMap {
            bn: None,
            act: None,
            pool: None,
            pool_for,
            add: Some(add),
            mean: None,
        };
        // 0: input, 1: the residual, 2: the convolution, 3: the sum, 4: a reader (a residual
        // read before it is made is refused as any input is).
        let program = |residual: usize, conv: Step, sum: Step| Program {
            layers: vec![
                layer(vec![], 2, Step::Input),
                layer(vec![0], 2, Step::Run { map: None }),
                layer(vec![0], 2, conv),
                layer(vec![2, residual], 2, sum),
                layer(vec![3], 2, Step::Run { map: None }),
            ],
        };
        let run = |m: OutputMap| Step::Run { map: Some(m) };
        let sum = Step::SumOf { at: 0 };
        assert!(validate(&program(1, run(join(3, None)), sum)).is_ok());
        for bad in [
            program(4, run(join(3, None)), sum),
            program(1, run(join(3, None)), Step::Run { map: None }),
            program(1, run(join(3, Some(4))), sum),
            program(
                1,
                Step::OnPooled {
                    map: Some(join(3, None)),
                },
                sum,
            ),
            program(1, run(join(3, None)), Step::SumOf { at: 2 }),
            // No convolution joins the sum (its residual would be dropped), or the joining one
            // is not behind the input the sum passes on.
            program(1, Step::Run { map: None }, sum),
            program(1, run(join(3, None)), Step::SumOf { at: 1 }),
            // The residual made after the convolution, before the sum.
            Program {
                layers: vec![
                    layer(vec![], 2, Step::Input),
                    layer(vec![0], 2, run(join(3, None))),
                    layer(vec![0], 2, Step::Run { map: None }),
                    layer(vec![1, 2], 2, sum),
                ],
            },
        ] {
            let err = validate(&bad).unwrap_err().to_string();
            assert!(err.contains("asks for a fusion"), "{err}");
        }
    }

    /// Hand-built stage means the runtime cannot honour are refused before anything runs: a
    /// pooling that is not `Meaned`, one that reads inputs, one made before its producer, means
    /// on a map that pools, and a `Meaned` pooling no stage sums; the planner's form passes.
    #[test]
    fn programs_with_stage_means_the_runtime_cannot_honour_are_refused() {
        let map = |mean: usize, pool_for: Option<usize>| OutputMap {
            bn: None,
            act: None,
            pool: None,
            pool_for,
            add: None,
            mean: Some(mean),
        };
        let program = |conv: Step, gap: PlannedLayer| Program {
            layers: vec![layer(vec![], 2, Step::Input), layer(vec![0], 2, conv), gap],
        };
        let run = |m: OutputMap| Step::Run { map: Some(m) };
        let meaned = || layer(vec![], 2, Step::Meaned);
        assert!(validate(&program(run(map(2, None)), meaned())).is_ok());
        for bad in [
            program(
                run(map(2, None)),
                layer(vec![1], 2, Step::Run { map: None }),
            ),
            program(run(map(2, None)), layer(vec![1], 2, Step::Meaned)),
            program(Step::Run { map: None }, meaned()),
            program(run(map(1, None)), meaned()),
            program(run(map(2, Some(2))), meaned()),
            program(
                Step::OnPooled {
                    map: Some(map(2, None)),
                },
                meaned(),
            ),
        ] {
            let err = validate(&bad).unwrap_err().to_string();
            assert!(err.contains("asks for a fusion"), "{err}");
        }
    }

    /// The chain buffer is not initialised, so no link may view a channel no link wrote. A
    /// two-link chain as the planner builds it views the buffer (and equals the copying
    /// concatenation); links of a hand-built program whose declared output claims more channels
    /// than were written, or whose first input does not end where the written channels end, fall
    /// back to the copying concatenation: their values hold only the inputs' values.
    #[test]
    fn a_concatenation_link_never_views_channels_no_link_wrote() {
        let (a, b, c) = (single(2, 1.0), single(3, 2.0), single(1, 3.0));
        let start = Step::Concat(ConcatPlace::Start { end: 4 });
        let extend = Step::Concat(ConcatPlace::Extend { start: 3, end: 4 });
        let program = |c3: usize, c4: usize| Program {
            layers: vec![
                layer(vec![], 2, Step::Input),
                layer(vec![], 3, Step::Input),
                layer(vec![], 1, Step::Input),
                layer(vec![0, 1], c3, start),
                layer(vec![3, 2], c4, extend),
            ],
        };
        let copy = |ins: &[&OctValue]| values(&concat(ins).unwrap());
        let (pa, pb) = (
            ConcatPlace::Start { end: 4 },
            ConcatPlace::Extend { start: 3, end: 4 },
        );
        // As planned: 2 + 3 channels, then 1 more.
        let p = program(5, 6);
        let mut buffers: Vec<Option<ChainBuffer>> = vec![None; 5];
        let ab = concat_step(&p, 3, pa, &[&a, &b], &mut buffers).unwrap();
        assert!(
            buffers[3].is_some(),
            "the first link keeps the chain's buffer"
        );
        assert_eq!(values(&ab), copy(&[&a, &b]));
        let abc = concat_step(&p, 4, pb, &[&ab, &c], &mut buffers).unwrap();
        assert_eq!(values(&abc), copy(&[&a, &b, &c]));
        assert!(buffers[3].is_none(), "the last link releases the buffer");
        // Hand-built: the first link declares 6 channels but writes 5.
        let p = program(6, 7);
        let mut buffers: Vec<Option<ChainBuffer>> = vec![None; 5];
        let ab = concat_step(&p, 3, pa, &[&a, &b], &mut buffers).unwrap();
        assert_eq!(values(&ab), copy(&[&a, &b]));
        assert!(
            buffers[3].is_none(),
            "a link that cannot view its channels drops the buffer"
        );
        // Hand-built: the second link's first input (7 channels) is not the first link's value
        // (5 written); viewing the buffer would show channels 5 and 6 unwritten.
        let p = program(5, 8);
        let mut buffers: Vec<Option<ChainBuffer>> = vec![None; 5];
        concat_step(&p, 3, pa, &[&a, &b], &mut buffers).unwrap();
        let x = single(7, 4.0);
        let xc = concat_step(&p, 4, pb, &[&x, &c], &mut buffers).unwrap();
        assert_eq!(values(&xc), copy(&[&x, &c]));
        // And a buffer too small for the first link's inputs is an error, not a panic.
        let p = program(5, 3);
        let mut buffers: Vec<Option<ChainBuffer>> = vec![None; 5];
        assert!(concat_step(&p, 3, pa, &[&a, &b], &mut buffers).is_err());
    }
}
