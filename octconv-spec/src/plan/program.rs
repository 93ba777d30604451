//! [`Program`]: how inference runs a model, layer by layer — the one place where inference fuses
//! layers. [`Program::lower`] decides it once from the IR; the runtime's executor
//! (`octconv_runtime::exec`) runs it for the interpreter and for the code `octnet!` and
//! `octconv gen` produce alike, so one model has one speed whichever way it was built.

use super::{bn_then_clamp, last_use, InputMaps, OutputMap, OutputMaps};
use crate::ir::{Model, Op};
use crate::shape::Shape;

/// What inference does at one layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The model's input.
    Input,
    /// Passes its first input on unchanged: a batch norm, activation or dropout that a neighbouring
    /// layer applies ([`InputMaps`], [`OutputMaps`], [`Step::BnAct`]), or a scale whose only reader
    /// applies it ([`Step::ScaleAdd`]): its value is then the unscaled map.
    PassOn,
    /// A convolution that applies batch norm `bn` and the ReLU after it as its kernel reads its
    /// input ([`InputMaps`]), then `map` to its output.
    AfterBnRelu {
        /// The batch norm layer.
        bn: usize,
        /// The output map ([`OutputMaps`]), if any.
        map: Option<OutputMap>,
    },
    /// A batch norm that applies the ReLU or ReLU6 after it (layer `act`, which passes on) in the
    /// same pass.
    BnAct {
        /// The activation layer.
        act: usize,
    },
    /// A concatenation that writes into one buffer shared by a chain of concatenations (DenseNet's
    /// growing input): each link writes only its new inputs, not a copy of everything before.
    Concat(ConcatPlace),
    /// The layer's inference, then `map` on its fresh output in place (inside its kernels where
    /// they can map each row in cache).
    Run {
        /// The output map ([`OutputMaps`]), if any.
        map: Option<OutputMap>,
    },
    /// A sum of two values one of which is squeeze-and-excitation's `scale` layer `scale` (whose
    /// only reader this is, and which passes its first input on): the scaling, the sum and `map`'s
    /// activation in one pass, reading the scale's gates (its second input) here.
    ScaleAdd {
        /// The scale layer.
        scale: usize,
        /// The output map ([`OutputMaps`]), if any.
        map: Option<OutputMap>,
    },
    /// A stride-2 octave convolution that pools first, whose input its producer already pooled
    /// ([`OutputMap::pool_for`]): it convolves that value at stride 1, then `map` as [`Step::Run`].
    OnPooled {
        /// The output map ([`OutputMaps`]), if any.
        map: Option<OutputMap>,
    },
    /// A layer whose work its reader does ([`Step::ExpandDepthwise`]): a 1×1 expansion, or the
    /// batch norm or activation of its output map. It holds no value.
    Expanded,
    /// A depthwise convolution whose input is the output of 1×1 convolution `expand` mapped by
    /// `expand_map`, which only it reads: it runs the expansion too, image by image, reading the
    /// expansion's input (its [`PlannedLayer::inputs`]), so the batch's expanded map is never held.
    ExpandDepthwise {
        /// The 1×1 expansion ([`Step::Expanded`]).
        expand: usize,
        /// The expansion's output map.
        expand_map: OutputMap,
        /// This layer's output map, if any.
        map: Option<OutputMap>,
    },
    /// A sum of two values that the output stage of the convolution behind its input at position
    /// `at` computed ([`OutputMap::add`]): it passes that input on (the joined map); its other
    /// input is the residual the convolution read.
    SumOf {
        /// Which input holds the sum (0 or 1).
        at: usize,
    },
    /// A global average pooling whose means the output stage of its input's producer computed
    /// ([`OutputMap::mean`]): it reads nothing; its value is set when the producer runs.
    Meaned,
    /// The layer's per-op forward in eval mode, nothing fused ([`Program::per_op`]: the
    /// interpreter's `infer` with the fused kernels switched off).
    Reference,
}

/// A concatenation's place in a chain that shares one buffer ([`Step::Concat`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConcatPlace {
    /// The first link: allocates the buffer of the chain's last link, `end`, and writes all its
    /// inputs at the front; its value is the buffer's first channels.
    Start {
        /// The chain's last concatenation.
        end: usize,
    },
    /// A later link of the chain that `start` began: its first input is the previous link (the
    /// buffer's first channels); it writes its other inputs after them.
    Extend {
        /// The chain's first concatenation.
        start: usize,
        /// The chain's last concatenation (after it the buffer is the last link's value alone).
        end: usize,
    },
}

/// One layer of a [`Program`].
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedLayer {
    /// The IR layer's name (for errors).
    pub name: String,
    /// The layers it reads.
    pub inputs: Vec<usize>,
    /// The output shape the checker derived (the executor verifies it).
    pub output: Shape,
    /// What inference does here.
    pub step: Step,
    /// Values whose last reader this layer is: freed once it has run.
    pub frees: Vec<usize>,
}

/// A model's inference, planned: one [`PlannedLayer`] per IR layer, in order.
#[derive(Clone, Debug, PartialEq)]
pub struct Program {
    /// The layers, in the IR's order.
    pub layers: Vec<PlannedLayer>,
}

impl Program {
    /// Plans `model`'s inference with every fusion the runtime's kernels take: input maps
    /// ([`InputMaps`]), output maps ([`OutputMaps`], including the pooled hand-off to a stride-2
    /// reader, [`Step::OnPooled`]), batch norm + activation passes ([`bn_then_clamp`]),
    /// concatenation chains ([`concat_chains`]), expansions run by their depthwise readers
    /// ([`expand_depthwise_pairs`]), squeeze-and-excitation scalings joined to their sums
    /// ([`scale_adds`]), residual sums joined by a convolution's output stage
    /// ([`residual_joins`], [`Step::SumOf`]) and global average poolings summed by one
    /// ([`stage_means`], [`Step::Meaned`]).
    pub fn lower(model: &Model) -> Program {
        let layers = &model.layers;
        let last = last_use(model);
        let inputs = InputMaps::plan(model);
        let outputs = OutputMaps::plan(model, &inputs);
        let mut steps: Vec<Step> = (0..layers.len())
            .map(|j| {
                if layers[j].inputs.is_empty() {
                    Step::Input
                } else if inputs.passed_over[j] || outputs.passed_over[j] {
                    Step::PassOn
                } else if let Some(bn) = inputs.applies[j] {
                    Step::AfterBnRelu {
                        bn,
                        map: outputs.applies[j],
                    }
                } else {
                    Step::Run {
                        map: outputs.applies[j],
                    }
                }
            })
            .collect();
        // A reader of a value its producer pools runs at stride 1 on it; a producer whose reader
        // runs otherwise keeps its map unpooled.
        for j in 0..layers.len() {
            let Some(c) = outputs.applies[j].and_then(|m| m.pool_for) else {
                continue;
            };
            match steps[c] {
                Step::Run { map } => steps[c] = Step::OnPooled { map },
                _ => {
                    if let Step::Run { map: Some(m) } | Step::AfterBnRelu { map: Some(m), .. } =
                        &mut steps[j]
                    {
                        m.pool_for = None;
                    }
                }
            }
        }
        // A batch norm left to run on its own takes the ReLU / ReLU6 that is its only reader.
        for j in 0..layers.len() {
            if steps[j] == (Step::Run { map: None })
                && bn_then_clamp(model, &last, j)
                && steps[j + 1] == (Step::Run { map: None })
            {
                steps[j] = Step::BnAct { act: j + 1 };
                steps[j + 1] = Step::PassOn;
            }
        }
        for (j, place) in concat_chains(model, &steps) {
            steps[j] = Step::Concat(place);
        }
        for (expand, dw) in expand_depthwise_pairs(model, &steps) {
            let Step::Run {
                map: Some(expand_map),
            } = steps[expand]
            else {
                continue;
            };
            let Step::Run { map } = steps[dw] else {
                continue;
            };
            steps[dw] = Step::ExpandDepthwise {
                expand,
                expand_map,
                map,
            };
            for k in [Some(expand), expand_map.bn, expand_map.act]
                .into_iter()
                .flatten()
            {
                steps[k] = Step::Expanded;
            }
        }
        for (add, scale) in scale_adds(model, &steps) {
            let Step::Run { map } = steps[add] else {
                continue;
            };
            steps[add] = Step::ScaleAdd { scale, map };
            steps[scale] = Step::PassOn;
        }
        for (add, conv, at) in residual_joins(model, &steps) {
            let Step::Run { map: add_map } = steps[add] else {
                continue;
            };
            let joined = |map: Option<OutputMap>| {
                Some(OutputMap {
                    bn: map.and_then(|m| m.bn),
                    act: add_map.and_then(|m| m.act),
                    pool: None,
                    pool_for: None,
                    add: Some(add),
                    mean: None,
                })
            };
            steps[conv] = match steps[conv] {
                Step::Run { map } => Step::Run { map: joined(map) },
                Step::AfterBnRelu { bn, map } => Step::AfterBnRelu {
                    bn,
                    map: joined(map),
                },
                _ => continue,
            };
            steps[add] = Step::SumOf { at };
        }
        for (gap, conv) in stage_means(model, &steps) {
            if let Step::Run { map } = &mut steps[conv] {
                let m = map.get_or_insert(OutputMap {
                    bn: None,
                    act: None,
                    pool: None,
                    pool_for: None,
                    add: None,
                    mean: None,
                });
                m.mean = Some(gap);
                steps[gap] = Step::Meaned;
            }
        }
        Self::with_steps(model, steps)
    }

    /// Every layer by its per-op forward in eval mode ([`Step::Reference`]), nothing fused.
    pub fn per_op(model: &Model) -> Program {
        let steps = model
            .layers
            .iter()
            .map(|l| match l.inputs.is_empty() {
                true => Step::Input,
                false => Step::Reference,
            })
            .collect();
        Self::with_steps(model, steps)
    }

    fn with_steps(model: &Model, steps: Vec<Step>) -> Program {
        // What each step reads: its inputs, and for a fused scale-add the scale's gates.
        let reads: Vec<Vec<usize>> = model
            .layers
            .iter()
            .zip(&steps)
            .map(|(l, step)| {
                let mut r = planned_inputs(model, l, step);
                match *step {
                    // A pooling its producer summed reads nothing, but its input is done with
                    // there (freed at it, though no value is fetched).
                    Step::Meaned => r.extend(&l.inputs),
                    Step::ScaleAdd { scale, .. } => r.extend(model.layers[scale].inputs.get(1)),
                    Step::Run {
                        map: Some(OutputMap { add: Some(a), .. }),
                    }
                    | Step::AfterBnRelu {
                        map: Some(OutputMap { add: Some(a), .. }),
                        ..
                    } => r.extend(joined_residual(&model.layers[a].inputs, &steps[a])),
                    _ => {}
                }
                r
            })
            .collect();
        // Each value's last reader among the steps as they run (a layer its reader runs reads
        // nothing).
        let mut last: Vec<usize> = (0..model.layers.len()).collect();
        for (j, r) in reads.iter().enumerate() {
            for &i in r {
                last[i] = last[i].max(j);
            }
        }
        let layers = model
            .layers
            .iter()
            .zip(steps)
            .enumerate()
            .map(|(j, (l, step))| {
                let mut frees: Vec<usize> = reads[j]
                    .iter()
                    .copied()
                    .filter(|&i| last[i] == j && i != j)
                    .collect();
                frees.sort_unstable();
                frees.dedup();
                PlannedLayer {
                    name: l.name.clone(),
                    inputs: planned_inputs(model, l, &step),
                    output: l.output,
                    step,
                    frees,
                }
            })
            .collect();
        Program { layers }
    }

    /// How many layers' steps satisfy `kind`.
    pub fn count(&self, kind: fn(&Step) -> bool) -> usize {
        self.layers.iter().filter(|l| kind(&l.step)).count()
    }

    /// The residual that the convolution joined by sum `add` ([`OutputMap::add`], [`Step::SumOf`])
    /// reads: the sum's other input. `None` unless `add` is such a sum.
    pub fn residual(&self, add: usize) -> Option<usize> {
        let l = self.layers.get(add)?;
        joined_residual(&l.inputs, &l.step)
    }
}

/// The input of a sum of two values that is not the one at `at` ([`Step::SumOf`]).
fn joined_residual(inputs: &[usize], step: &Step) -> Option<usize> {
    match (*step, inputs) {
        (Step::SumOf { at: 0 }, &[_, r]) | (Step::SumOf { at: 1 }, &[r, _]) => Some(r),
        _ => None,
    }
}

/// The global average poolings whose means a convolution's output stage sums, as `(gap, conv)`: a
/// global average pooling running on its own whose input is the mapped value of an octave
/// convolution — the convolution's own, or its batch norm's or activation's — that runs with an
/// output map that neither pools, hands a pooled map on nor joins a sum, and no other such
/// pooling; on an octave pair only a per-branch pooling (the others are errors of the checker).
/// Squeeze-and-excitation's squeeze: the block's last 1×1 convolution, its batch norm read by the
/// squeeze and the scaling. The runtime sums in the kernels that map rows of their output buffer
/// (the four-path and the one-branch 1×1 kernels) and pools after the convolution elsewhere.
pub fn stage_means(model: &Model, steps: &[Step]) -> Vec<(usize, usize)> {
    let layers = &model.layers;
    let mut out: Vec<(usize, usize)> = Vec::new();
    for (g, l) in layers.iter().enumerate() {
        let (Op::GlobalAvgPool { per_branch }, Step::Run { map: None }, &[e]) =
            (&l.op, steps[g], l.inputs.as_slice())
        else {
            continue;
        };
        let shape_ok = match layers[e].output {
            Shape::Single(_) => true,
            Shape::Pair { .. } => *per_branch,
            Shape::Flat { .. } => false,
        };
        // The producer whose map ends at `e`.
        let conv = (0..=e).rev().find(|&c| match (&layers[c].op, steps[c]) {
            (Op::OctConv(_), Step::Run { map: Some(m) }) => {
                m.act.or(m.bn).unwrap_or(c) == e
                    && m.pool.is_none()
                    && m.pool_for.is_none()
                    && m.add.is_none()
            }
            (Op::OctConv(_), Step::Run { map: None }) => c == e,
            _ => false,
        });
        if let (true, Some(c)) = (shape_ok, conv) {
            if !out.iter().any(|&(_, d)| d == c) {
                out.push((g, c));
            }
        }
    }
    out
}

/// The residual joins that a convolution's output stage computes, as `(add, conv, at)`: a sum of
/// two different values running on its own (with at most an activation map), whose input at
/// position `at` is an octave convolution's output — directly, or through the batch norm its
/// output map applies — that runs on its own or after its input's batch norm and ReLU
/// ([`Step::AfterBnRelu`]: a pre-activation block's last convolution) with at most that batch norm
/// as its map (no activation, no pooling) and that only this chain reads, and whose other input is
/// made before that convolution runs (the residual the stage reads). Where both inputs qualify (a
/// projection shortcut's convolution and the main branch's last one), the later convolution is
/// taken. The runtime joins in the kernels that map rows or planes of their output buffer (the
/// four-path and the one-branch 1×1 kernels, the fused 3×3 octave kernel) and as a sum after the
/// convolution elsewhere.
pub fn residual_joins(model: &Model, steps: &[Step]) -> Vec<(usize, usize, usize)> {
    let layers = &model.layers;
    let readers = super::reader_counts(model);
    // The convolution whose (batch-normed) output `end` is, if its map is at most that batch norm.
    // The sum must be `end`'s only reader: the joined value replaces it.
    let producer = |end: usize| -> Option<usize> {
        let conv = match (&layers[end].op, steps[end]) {
            _ if readers[end] != 1 => return None,
            (Op::OctConv(_), Step::Run { map: None } | Step::AfterBnRelu { map: None, .. }) => end,
            (Op::BatchNorm { .. }, Step::PassOn) => *layers[end].inputs.first()?,
            _ => return None,
        };
        let map_ok = match steps[conv] {
            Step::Run { map: None } | Step::AfterBnRelu { map: None, .. } => conv == end,
            Step::Run { map: Some(m) } | Step::AfterBnRelu { map: Some(m), .. } => {
                m.bn == Some(end)
                    && m.act.is_none()
                    && m.pool.is_none()
                    && m.pool_for.is_none()
                    && m.add.is_none()
            }
            _ => false,
        };
        (matches!(layers[conv].op, Op::OctConv(_)) && map_ok).then_some(conv)
    };
    let mut joins = Vec::new();
    for (a, l) in layers.iter().enumerate() {
        let (&[x, y], Step::Run { map }) = (l.inputs.as_slice(), steps[a]) else {
            continue;
        };
        let plain = map.is_none_or(|m| m.bn.is_none() && m.pool.is_none() && m.pool_for.is_none());
        if x == y || !matches!(l.op, Op::Add) || !plain {
            continue;
        }
        let best = [(0, x, y), (1, y, x)]
            .into_iter()
            .filter_map(|(at, end, other)| {
                let conv = producer(end)?;
                (other < conv).then_some((conv, at))
            })
            .max();
        joins.extend(best.map(|(conv, at)| (a, conv, at)));
    }
    joins
}

/// What a layer running `step` reads: its IR inputs, none for a layer its reader runs
/// ([`Step::Expanded`]), the expansion's inputs for [`Step::ExpandDepthwise`].
fn planned_inputs(model: &Model, l: &crate::ir::Layer, step: &Step) -> Vec<usize> {
    match *step {
        Step::Expanded | Step::Meaned => Vec::new(),
        Step::ExpandDepthwise { expand, .. } => model.layers[expand].inputs.clone(),
        _ => l.inputs.clone(),
    }
}

/// The 1×1 expansions that their depthwise reader runs image by image, as `(expand, depthwise)`:
/// a 1×1 convolution at stride 1 (one group) running with an output map that neither pools nor
/// halves, whose mapped value only a depthwise convolution at stride 1 reads, and that depthwise
/// layer running on its own ([`Step::Run`]). MobileNet v2's stride-1 inverted residual blocks, a
/// single branch or an octave pair.
pub fn expand_depthwise_pairs(model: &Model, steps: &[Step]) -> Vec<(usize, usize)> {
    let layers = &model.layers;
    let readers = super::reader_counts(model);
    let mut pairs = Vec::new();
    for (c, l) in layers.iter().enumerate() {
        let (Op::OctConv(d), Step::Run { .. }, [i]) = (&l.op, steps[c], l.inputs.as_slice()) else {
            continue;
        };
        if !(d.depthwise && d.stride == 1) || readers[*i] != 1 {
            continue;
        }
        let found = (0..=*i).rev().find(|&j| match (&layers[j].op, steps[j]) {
            (Op::OctConv(e), Step::Run { map: Some(m) }) => {
                m.act.or(m.bn).unwrap_or(j) == *i
                    && m.pool.is_none()
                    && m.pool_for.is_none()
                    && (e.out_h, e.out_l) == (d.in_h, d.in_l)
                    && e.kernel == 1
                    && e.stride == 1
                    && e.groups == 1
                    && !e.depthwise
                    && !matches!(layers[j].output, Shape::Flat { .. })
            }
            _ => false,
        });
        pairs.extend(found.map(|j| (j, c)));
    }
    pairs
}

/// The sums that take squeeze-and-excitation's scaling into their pass, as `(add, scale)`: an add of
/// two values, running on its own (with or without an activation map), one of whose inputs is a
/// scale layer (value and gates) that runs on its own and that only this add reads. The sum then
/// reads the scale's value input and gates itself, and the scaled map is never written.
pub fn scale_adds(model: &Model, steps: &[Step]) -> Vec<(usize, usize)> {
    let layers = &model.layers;
    let readers = super::reader_counts(model);
    let mut fused = Vec::new();
    for (j, l) in layers.iter().enumerate() {
        if !matches!(l.op, Op::Add) || l.inputs.len() != 2 || !matches!(steps[j], Step::Run { .. })
        {
            continue;
        }
        let scale = l.inputs.iter().copied().find(|&s| {
            matches!(layers[s].op, Op::Scale)
                && layers[s].inputs.len() == 2
                && readers[s] == 1
                && l.inputs.iter().filter(|&&i| i == s).count() == 1
                && steps[s] == (Step::Run { map: None })
        });
        if let Some(s) = scale {
            fused.push((j, s));
        }
    }
    fused
}

/// The concatenation chains of `model` given the other steps: a concatenation `c` extends the
/// previous link `p` when `p` is a concatenation, `c`'s first input and `p`'s last reader, and `c`
/// reads `p` only as its first input. Sharing one buffer is safe for any such chain: every link's
/// value is a view of the buffer's first channels, and a link writes only past the previous link's
/// channels, so no live value ever changes. Which chains are worth it is a matter of cost: every
/// other reader of `p` must be a batch norm, one that runs on its own ([`Step::Run`],
/// [`Step::BnAct`]) or whose map a 1×1 convolution applies as it reads ([`Step::PassOn`]); both read
/// the buffer's first channels in place, where any other kernel would make a contiguous copy, which
/// costs what the copying concatenation would. Only chains of two or more links are returned.
pub fn concat_chains(model: &Model, steps: &[Step]) -> Vec<(usize, ConcatPlace)> {
    let layers = &model.layers;
    let last = last_use(model);
    // Who reads each value.
    let mut readers = vec![Vec::new(); layers.len()];
    for (j, l) in layers.iter().enumerate() {
        for &i in &l.inputs {
            readers[i].push(j);
        }
    }
    let plain = |j: usize| matches!(steps[j], Step::Run { map: None });
    let concat = |j: usize| matches!(layers[j].op, Op::Concat) && plain(j);
    // The link each concatenation extends, if any.
    let prev: Vec<Option<usize>> = (0..layers.len())
        .map(|c| {
            let l = &layers[c];
            let p = *l.inputs.first()?;
            let ok = concat(c)
                && concat(p)
                && last[p] == c
                && !l.inputs[1..].contains(&p)
                && readers[p].iter().all(|&r| {
                    r == c
                        || matches!(layers[r].op, Op::BatchNorm { .. })
                            && matches!(
                                steps[r],
                                Step::Run { map: None } | Step::BnAct { .. } | Step::PassOn
                            )
                });
            ok.then_some(p)
        })
        .collect();
    let mut next = vec![None; layers.len()];
    for (c, p) in prev.iter().enumerate() {
        if let Some(p) = *p {
            next[p] = Some(c);
        }
    }
    let mut out = Vec::new();
    for start in 0..layers.len() {
        if prev[start].is_some() || next[start].is_none() {
            continue;
        }
        let mut links = Vec::new();
        let mut end = start;
        while let Some(c) = next[end] {
            links.push(c);
            end = c;
        }
        out.push((start, ConcatPlace::Start { end }));
        out.extend(
            links
                .into_iter()
                .map(|c| (c, ConcatPlace::Extend { start, end })),
        );
    }
    out
}
