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

pub use crate::param_info::{Init, ParamInfo};

/// The parameters of one layer, in a fixed order (each op's rule is in its module of
/// [`crate::layers`]).
pub fn layer_params(layer: &Layer) -> Vec<ParamInfo> {
    crate::layers::def_of(&layer.op).map_or_else(Vec::new, |d| (d.costs.weights)(layer))
}

/// All parameters and buffers of a model, in layer order.
pub fn model_params(model: &Model) -> Vec<ParamInfo> {
    model.layers.iter().flat_map(layer_params).collect()
}
