//! Execution facts derived from the IR that the interpreter and the generated code share: when each
//! value is last read, and which convolutions apply the batch norm and ReLU before them as they read
//! their input in inference (the runtime's kernel prologues).

use crate::ir::{Model, OctConvSpec, Op};

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

/// Whether layer `j` is a batch norm whose only reader is the ReLU right after it (`last` from
/// [`last_use`]): the two can run as one pass, or inside the convolution that reads the ReLU.
pub fn bn_then_relu(model: &Model, last: &[usize], j: usize) -> bool {
    let layers = &model.layers;
    matches!(layers[j].op, Op::BatchNorm { .. })
        && matches!(layers.get(j + 1).map(|l| &l.op), Some(Op::Relu))
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
            if takes && only_reader(m, k) {
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
/// group, not depthwise, all four paths (the octave kernel) or H→H alone, and either 3×3 stride 1
/// (the Winograd gather maps each value) or stride 2 of any kernel (the pooling that stride 2
/// starts with maps each value).
pub fn takes_input_map(s: &OctConvSpec) -> bool {
    let all_four = s.in_h > 0 && s.in_l > 0 && s.out_h > 0 && s.out_l > 0;
    let lone_hh = s.in_h > 0 && s.out_h > 0 && s.in_l == 0 && s.out_l == 0;
    let reads = (s.stride == 1 && s.kernel == 3) || s.stride == 2;
    reads && s.groups == 1 && !s.depthwise && (all_four || lone_hh)
}
