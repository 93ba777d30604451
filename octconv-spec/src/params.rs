//! Parameter names, shapes and initialisation of every layer — the one naming scheme shared by the
//! runtime interpreter, the code generator and weight files.
//!
//! A parameter is named `<layer name>.<suffix>`:
//!
//! | layer | parameters |
//! |---|---|
//! | `conv` | `weight` `[out, in / groups, k, k]`, `bias` `[out]` |
//! | `octconv` | `hh.weight`, `hl.weight`, `lh.weight`, `ll.weight` `[out_p, in_p / groups, k, k]` (depthwise: `[c, 1, k, k]`) for the paths that exist; `h.bias` `[out_h]`, `l.bias` `[out_l]` |
//! | `octconv_transpose` | the same names, weights `[in_p, out_p, k, k]` (PyTorch's `ConvTranspose2d` layout) |
//! | `bn` on a tensor or flat vector | `weight`, `bias`, `running_mean`, `running_var` `[C]` |
//! | `bn` on an octave pair | `h.weight`, `h.bias`, `h.running_mean`, `h.running_var` `[Ch]` and the same under `l.` |
//! | `linear` | `weight` `[out, in]`, `bias` `[out]` |
//!
//! Branches or paths with no channels (α = 0 or 1) have no parameters.

use crate::ir::{Layer, Model};

/// How a parameter is initialised.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// Kaiming (He) normal for layers followed by ReLU: N(0, 2 / fan_in).
    KaimingNormal {
        /// Inputs per output unit (`in / groups · k · k`).
        fan_in: usize,
    },
    /// LeCun normal for the classifier: N(0, 1 / fan_in).
    LecunNormal {
        /// Input features.
        fan_in: usize,
    },
    /// All zeros (biases, BN bias and running mean).
    Zeros,
    /// All ones (BN weight and running variance).
    Ones,
}

/// One parameter or buffer of a model.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamInfo {
    /// Full name, e.g. `wide0.res0.octconv0.hh.weight`.
    pub name: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Initialisation.
    pub init: Init,
    /// False for BN running statistics (buffers).
    pub trainable: bool,
}

impl ParamInfo {
    pub(crate) fn new(name: String, shape: Vec<usize>, init: Init, trainable: bool) -> Self {
        ParamInfo {
            name,
            shape,
            init,
            trainable,
        }
    }

    /// Number of elements.
    pub fn numel(&self) -> u64 {
        self.shape.iter().map(|&d| d as u64).product()
    }
}

/// BN weight, bias and running statistics of `c` channels under `prefix`.
pub(crate) fn bn_params(out: &mut Vec<ParamInfo>, prefix: &str, c: usize) {
    if c == 0 {
        return;
    }
    out.push(ParamInfo::new(
        format!("{prefix}weight"),
        vec![c],
        Init::Ones,
        true,
    ));
    out.push(ParamInfo::new(
        format!("{prefix}bias"),
        vec![c],
        Init::Zeros,
        true,
    ));
    out.push(ParamInfo::new(
        format!("{prefix}running_mean"),
        vec![c],
        Init::Zeros,
        false,
    ));
    out.push(ParamInfo::new(
        format!("{prefix}running_var"),
        vec![c],
        Init::Ones,
        false,
    ));
}

/// The parameters of one layer, in a fixed order (each op's rule is in its module of
/// [`crate::layers`]).
pub fn layer_params(layer: &Layer) -> Vec<ParamInfo> {
    crate::layers::def_of(&layer.op).map_or_else(Vec::new, |d| (d.costs.weights)(layer))
}

/// All parameters and buffers of a model, in layer order.
pub fn model_params(model: &Model) -> Vec<ParamInfo> {
    model.layers.iter().flat_map(layer_params).collect()
}
