//! Execution facts derived from the IR that the interpreter and the generated code share: when each
//! value is last read, and which convolutions apply the batch norm and ReLU before them as they read
//! their input in inference (the runtime's kernel prologues).

use crate::ir::{Model, OctConvSpec, Op};
use crate::shape::Shape;

/// For each layer, the last layer that reads its output (itself if none does): a value can be freed
/// after that layer has run.
pub fn last_use(model: &Model) -> Vec<usize> {
    let mut last: Vec<usize> = (0..model.layers.len()).collect();
    for (j, l) in model.layers.iter().enumerate() {
        for &i in &l.inputs {
            last[i] = last[i].max(j);
        }
    }
    last
}

/// For each layer, how many layers read its output (a layer that reads it twice counts once).
pub fn reader_counts(model: &Model) -> Vec<usize> {
    let mut counts = vec![0; model.layers.len()];
    for l in &model.layers {
        let mut ins = l.inputs.clone();
        ins.sort_unstable();
        ins.dedup();
        for i in ins {
            counts[i] += 1;
        }
    }
    counts
}

/// Whether layer `j` is a batch norm whose only reader is the ReLU right after it (`last` from
/// [`last_use`]): the two can run as one pass, or inside the convolution that reads the ReLU.
pub fn bn_then_relu(model: &Model, last: &[usize], j: usize) -> bool {
    let layers = &model.layers;
    matches!(layers[j].op, Op::BatchNorm { .. })
        && matches!(layers.get(j + 1).map(|l| &l.op), Some(Op::Relu))
        && layers[j + 1].inputs == [j]
        && last[j] == j + 1
}

/// Whether layer `j` is a batch norm whose only reader is the ReLU or ReLU6 right after it: the two
/// run as one pass, forward and backward (a ReLU after a batch norm can also go inside the
/// convolution that reads it, [`bn_then_relu`]).
pub fn bn_then_clamp(model: &Model, last: &[usize], j: usize) -> bool {
    let layers = &model.layers;
    matches!(layers[j].op, Op::BatchNorm { .. })
        && matches!(layers.get(j + 1).map(|l| &l.op), Some(Op::Relu | Op::Relu6))
        && layers[j + 1].inputs == [j]
        && last[j] == j + 1
}

/// Where inference applies a batch norm (and the ReLU after it) inside the convolution that reads
/// it, instead of writing the normalised tensor out: BN → ReLU → [dropout …] → octconv chains in
/// which each value has one reader and the convolution [takes an input map](takes_input_map).
/// Dropout is the identity in inference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputMaps {
    /// For each layer: the batch norm whose map this convolution applies.
    pub applies: Vec<Option<usize>>,
    /// For each layer: a batch norm, ReLU or dropout of such a chain, which passes its input on.
    pub passed_over: Vec<bool>,
}

impl InputMaps {
    /// Finds the chains of `model`.
    pub fn plan(model: &Model) -> Self {
        let layers = &model.layers;
        let n = layers.len();
        let last = last_use(model);
        let readers = reader_counts(model);
        let only_reader = |from: usize, to: usize| layers[to].inputs == [from] && last[from] == to;
        let mut plan = InputMaps {
            applies: vec![None; n],
            passed_over: vec![false; n],
        };
        for j in 0..n.saturating_sub(2) {
            if !bn_then_relu(model, &last, j) {
                continue;
            }
            let mut m = j + 1;
            while m + 1 < n
                && matches!(layers[m + 1].op, Op::Dropout { .. })
                && only_reader(m, m + 1)
            {
                m += 1;
            }
            let k = m + 1;
            let takes =
                matches!(layers.get(k).map(|l| &l.op), Some(Op::OctConv(s)) if takes_input_map(s));
            // A 1×1 convolution copies its input to map it: where the batch norm is the only reader
            // of a fresh convolution output, that convolution maps it in cache instead
            // ([`OutputMaps`]).
            let pointwise =
                matches!(layers.get(k).map(|l| &l.op), Some(Op::OctConv(s)) if s.kernel == 1);
            let fresh = layers[j].inputs.first().is_some_and(|&p| {
                matches!(
                    layers[p].op,
                    Op::Conv(_) | Op::OctConv(_) | Op::OctConvTranspose(_)
                ) && readers[p] == 1
            });
            if takes && only_reader(m, k) && !(pointwise && fresh) {
                plan.applies[k] = Some(j);
                plan.passed_over[j..=m].iter_mut().for_each(|p| *p = true);
            }
        }
        plan
    }

    /// How many convolutions apply an input map.
    pub fn count(&self) -> usize {
        self.applies.iter().flatten().count()
    }
}

/// Whether the runtime's kernels can apply an input map as they read this convolution's input: one
/// group, not depthwise, and either all four paths (the octave kernel) or H→H alone at 3×3 stride 1
/// (the Winograd gather maps each value) or at stride 2 of any kernel (the pooling that stride 2
/// starts with maps each value; not with `downsample = stride`, which does not pool), or 1×1 at
/// stride 1 (H→H alone maps each column block as it copies it for its GEMM; the four-path kernel
/// maps each image's branches into scratch once).
pub fn takes_input_map(s: &OctConvSpec) -> bool {
    let all_four = s.in_h > 0 && s.in_l > 0 && s.out_h > 0 && s.out_l > 0;
    let lone_hh = s.in_h > 0 && s.out_h > 0 && s.in_l == 0 && s.out_l == 0;
    let reads = (s.stride == 1 && s.kernel == 3) || (s.stride == 2 && !s.strided_conv());
    let pointwise = s.stride == 1 && s.kernel == 1 && (lone_hh || all_four);
    (reads && (all_four || lone_hh) || pointwise) && s.groups == 1 && !s.depthwise
}

/// Whether producer `j` may hand reader `c` its output 2×2-average-pooled ([`OutputMap::pool_for`]):
/// `j` a 1×1 octave convolution at stride 1 in one group (whose kernels pool each band of rows from
/// cache), `c` a stride-2 octave convolution that is the same layer at stride 1 on the pooled map
/// ([`OctConvSpec::runs_on_pooled_input`]: a pool-first layer without an L→H path — one branch, a
/// layer into the pair, a depthwise pair).
pub fn pools_for(model: &Model, j: usize, c: usize) -> bool {
    let (p, r) = (&model.layers[j], &model.layers[c]);
    match (&p.op, &r.op) {
        (Op::OctConv(ps), Op::OctConv(rs)) => {
            ps.kernel == 1
                && ps.stride == 1
                && ps.groups == 1
                && !ps.depthwise
                && !matches!(p.output, Shape::Flat { .. })
                && rs.runs_on_pooled_input()
                && r.inputs.len() == 1
        }
        _ => false,
    }
}

/// A batch norm and/or the activation after it, that inference applies to a freshly computed value
/// in place ([`OutputMaps`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutputMap {
    /// A batch norm that is the producer's only reader (convolutions only).
    pub bn: Option<usize>,
    /// A `relu` or `relu6` that is the only reader of the batch norm (or of the producer).
    pub act: Option<usize>,
    /// A max pool that is the only reader of the activation (or of the batch norm, or of the
    /// producer), after a one-branch convolution (`conv`): the ImageNet stems' 3×3 / 2 pool. The
    /// convolution's value is then the pooled map (the runtime pools each image while it is in
    /// cache where its stem kernel serves the layer, and after the convolution elsewhere): the
    /// batch of unpooled stem outputs is never held (DenseNet-121's peak at α ≥ .5).
    pub pool: Option<usize>,
    /// A stride-2 octave convolution that pools first (2×2 average), the only reader of the
    /// activation (or of the batch norm, or of the producer), after a 1×1 octave convolution at
    /// stride 1 ([`pools_for`]): the producer's value is then its map pooled ([`Shape::halved`];
    /// the runtime pools from cache), and that reader convolves it at stride 1
    /// ([`Step::OnPooled`]). MobileNet v2's expansions before its stride-2 depthwise layers: the
    /// batch's full-resolution expanded map, six times the block's channels, is never held.
    pub pool_for: Option<usize>,
    /// A sum of two values ([`Op::Add`]), the only reader of the batch norm (or of the producer),
    /// that the producer's output stage computes ([`Program::lower`]): after the batch norm the
    /// sum's other input (made before the producer runs) is added, then `act` (the sum's
    /// activation, the only reader of the sum) — the residual joins of ResNet, ResNeXt and
    /// MobileNet v2 as their last 1×1 convolution writes each row, not a pass of their own. The
    /// sum's step is [`Step::SumOf`]; its other input is the residual ([`Program::residual`]).
    pub add: Option<usize>,
    /// A global average pooling (`Op::GlobalAvgPool`) of the mapped value, one of its readers,
    /// whose means the producer's output stage sums from each row in cache
    /// ([`Program::lower`]): squeeze-and-excitation's squeeze, which otherwise reads the whole
    /// block output back from memory. Its step is [`Step::Meaned`].
    pub mean: Option<usize>,
}

/// Where inference applies a batch norm and/or a ReLU or ReLU6 to a freshly computed value in place,
/// instead of writing a normalised copy and an activated copy: conv → BN → [relu | relu6] and
/// conv → relu chains (a one-branch `conv` also takes a max pool after them), and add → relu (the residual join of post-activation networks: ResNet,
/// ResNeXt, MobileNet, U-Net), in which each value has one reader. Batch norms and ReLUs that a
/// convolution already applies to its input ([`InputMaps`]) are left to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputMaps {
    /// For each layer: the map this convolution or add applies to its output.
    pub applies: Vec<Option<OutputMap>>,
    /// For each layer: a batch norm or activation of such a chain, which passes its input on.
    pub passed_over: Vec<bool>,
}

impl OutputMaps {
    /// Finds the chains of `model`, leaving out the layers that `inputs` passes over.
    pub fn plan(model: &Model, inputs: &InputMaps) -> Self {
        let layers = &model.layers;
        let n = layers.len();
        let last = last_use(model);
        let readers = reader_counts(model);
        // The layer that reads `from` as its only input and is `from`'s only reader (a map applied
        // in place must not change what any other reader sees), unless an input map already takes
        // it.
        let reader = |from: usize| -> Option<usize> {
            let to = last[from];
            let only = readers[from] == 1 && layers[to].inputs == [from];
            (to != from && only && !inputs.passed_over[to]).then_some(to)
        };
        let act_after =
            |from: usize| reader(from).filter(|&a| matches!(layers[a].op, Op::Relu | Op::Relu6));
        let mut plan = OutputMaps {
            applies: vec![None; n],
            passed_over: vec![false; n],
        };
        for (j, layer) in layers.iter().enumerate() {
            let mut map = match layer.op {
                Op::Conv(_) | Op::OctConv(_) | Op::OctConvTranspose(_) => {
                    match reader(j).filter(|&b| matches!(layers[b].op, Op::BatchNorm { .. })) {
                        Some(bn) => OutputMap {
                            bn: Some(bn),
                            act: act_after(bn),
                            pool: None,
                            pool_for: None,
                            add: None,
                            mean: None,
                        },
                        None => OutputMap {
                            bn: None,
                            act: act_after(j),
                            pool: None,
                            pool_for: None,
                            add: None,
                            mean: None,
                        },
                    }
                }
                // An add of one value would be that value itself, not a fresh one.
                Op::Add if layer.inputs.len() >= 2 => OutputMap {
                    bn: None,
                    act: act_after(j),
                    pool: None,
                    pool_for: None,
                    add: None,
                    mean: None,
                },
                _ => continue,
            };
            if matches!(layer.op, Op::Conv(_)) {
                let last = map.act.or(map.bn).unwrap_or(j);
                map.pool = reader(last).filter(|&p| matches!(layers[p].op, Op::MaxPool(_)));
            }
            let last = map.act.or(map.bn).unwrap_or(j);
            map.pool_for = reader(last).filter(|&c| pools_for(model, j, c));
            if map.bn.is_none() && map.act.is_none() && map.pool.is_none() && map.pool_for.is_none()
            {
                continue;
            }
            plan.applies[j] = Some(map);
            for k in map.bn.into_iter().chain(map.act).chain(map.pool) {
                plan.passed_over[k] = true;
            }
        }
        plan
    }

    /// How many layers apply an output map.
    pub fn count(&self) -> usize {
        self.applies.iter().flatten().count()
    }
}

mod program;
pub use program::{ConcatPlace, PlannedLayer, Program, Step};
