//! What a parameter is: its name, shape, initialisation and whether it trains. The layer rules
//! ([`crate::layers`]) build these; [`crate::params`] collects them per layer and per model.

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
