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

use crate::ir::{Layer, Model, Op};
use crate::shape::Shape;

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
    fn new(name: String, shape: Vec<usize>, init: Init, trainable: bool) -> Self {
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

fn bn_params(out: &mut Vec<ParamInfo>, prefix: &str, c: usize) {
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

/// The parameters of one layer, in a fixed order.
pub fn layer_params(layer: &Layer) -> Vec<ParamInfo> {
    let n = &layer.name;
    let mut out = Vec::new();
    match &layer.op {
        Op::Conv(c) => {
            let per = c.in_c / c.groups;
            out.push(ParamInfo::new(
                format!("{n}.weight"),
                vec![c.out_c, per, c.kernel, c.kernel],
                Init::KaimingNormal {
                    fan_in: per * c.kernel * c.kernel,
                },
                true,
            ));
            if c.bias {
                out.push(ParamInfo::new(
                    format!("{n}.bias"),
                    vec![c.out_c],
                    Init::Zeros,
                    true,
                ));
            }
        }
        Op::OctConv(o) | Op::OctConvTranspose(o) => {
            let transposed = matches!(layer.op, Op::OctConvTranspose(_));
            for p in o.paths() {
                let (i, oc) = o.path_channels(p).expect("paths() yields existing paths");
                let per = if o.depthwise { 1 } else { i / o.groups };
                let k2 = o.kernel * o.kernel;
                let (shape, fan_in) = if transposed {
                    // `[in, out, k, k]` as PyTorch's ConvTranspose2d; with stride 2 an output pixel
                    // meets about in · k² / 4 weights.
                    (vec![i, oc, o.kernel, o.kernel], (i * k2 / 4).max(1))
                } else {
                    (vec![oc, per, o.kernel, o.kernel], per * k2)
                };
                out.push(ParamInfo::new(
                    format!("{n}.{}.weight", p.as_str()),
                    shape,
                    Init::KaimingNormal { fan_in },
                    true,
                ));
            }
            if o.bias {
                for (branch, c) in [("h", o.out_h), ("l", o.out_l)] {
                    if c > 0 {
                        out.push(ParamInfo::new(
                            format!("{n}.{branch}.bias"),
                            vec![c],
                            Init::Zeros,
                            true,
                        ));
                    }
                }
            }
        }
        Op::BatchNorm { .. } => match layer.input {
            Shape::Pair { high, low } => {
                bn_params(&mut out, &format!("{n}.h."), high.c);
                bn_params(&mut out, &format!("{n}.l."), low.c);
            }
            other => bn_params(&mut out, &format!("{n}."), other.channels()),
        },
        Op::Linear { in_f, out_f, bias } => {
            out.push(ParamInfo::new(
                format!("{n}.weight"),
                vec![*out_f, *in_f],
                Init::LecunNormal { fan_in: *in_f },
                true,
            ));
            if *bias {
                out.push(ParamInfo::new(
                    format!("{n}.bias"),
                    vec![*out_f],
                    Init::Zeros,
                    true,
                ));
            }
        }
        _ => {}
    }
    out
}

/// All parameters and buffers of a model, in layer order.
pub fn model_params(model: &Model) -> Vec<ParamInfo> {
    model.layers.iter().flat_map(layer_params).collect()
}
