//! The graph under construction: nodes in order, initializers, constants, and the typed values that
//! flow between layers (a map, an octave pair or a flat vector, with their sizes).

use super::proto::{
    attribute_type, AttributeProto, NodeProto, TensorProto, FLOAT as F32_TYPE, INT64 as I64_TYPE,
};
use super::{ExportOptions, Upsample};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};
use octconv_spec::Dims;
use std::collections::{HashMap, HashSet};

/// A feature map in the graph: its value name and its `[C, H, W]` per sample.
#[derive(Clone, Debug)]
pub(super) struct Map {
    /// Value name.
    pub name: String,
    /// Channels and size.
    pub dims: Dims,
}

/// A layer's output in the graph, shaped like [`crate::value::OctValue`].
#[derive(Clone, Debug)]
pub(super) enum Val {
    /// `[N, C, H, W]`.
    Single(Map),
    /// High (absent at α = 1) and low branch.
    Pair {
        /// High-frequency branch.
        high: Option<Map>,
        /// Low-frequency branch.
        low: Map,
    },
    /// `[N, F]`: the value name and `F`.
    Flat(String, usize),
}

impl Val {
    /// The high (or only) map and the low one.
    pub fn branches(&self) -> Result<(Option<&Map>, Option<&Map>)> {
        match self {
            Val::Single(m) => Ok((Some(m), None)),
            Val::Pair { high, low } => Ok((high.as_ref(), Some(low))),
            Val::Flat(..) => bail!("internal error: a feature map was expected, not a flat vector"),
        }
    }

    /// Channels of a map or pair (features of a vector).
    pub fn channels(&self) -> usize {
        match self {
            Val::Single(m) => m.dims.c,
            Val::Pair { high, low } => high.as_ref().map_or(0, |h| h.dims.c) + low.dims.c,
            Val::Flat(_, f) => *f,
        }
    }

    /// The same value with `f` applied to each map (`tag` distinguishes the branches' names).
    pub fn map(&self, mut f: impl FnMut(&Map, &str) -> Result<Map>) -> Result<Val> {
        Ok(match self {
            Val::Single(m) => Val::Single(f(m, "")?),
            Val::Pair { high, low } => Val::Pair {
                high: high.as_ref().map(|h| f(h, ".h")).transpose()?,
                low: f(low, ".l")?,
            },
            Val::Flat(..) => bail!("internal error: a feature map was expected, not a flat vector"),
        })
    }
}

/// An attribute of a node.
pub(super) enum Attr<'a> {
    /// One integer.
    Int(&'a str, i64),
    /// A list of integers.
    Ints(&'a str, Vec<i64>),
    /// One float.
    Float(&'a str, f32),
    /// One string.
    Str(&'a str, &'a str),
}

impl Attr<'_> {
    fn proto(&self) -> AttributeProto {
        let blank = AttributeProto::default;
        let (name, a) = match self {
            Attr::Int(n, i) => (
                n,
                AttributeProto {
                    r#type: attribute_type::INT,
                    i: *i,
                    ..blank()
                },
            ),
            Attr::Ints(n, v) => (
                n,
                AttributeProto {
                    r#type: attribute_type::INTS,
                    ints: v.clone(),
                    ..blank()
                },
            ),
            Attr::Float(n, f) => (
                n,
                AttributeProto {
                    r#type: attribute_type::FLOAT,
                    f: *f,
                    ..blank()
                },
            ),
            Attr::Str(n, v) => (
                n,
                AttributeProto {
                    r#type: attribute_type::STRING,
                    s: v.as_bytes().to_vec(),
                    ..blank()
                },
            ),
        };
        AttributeProto {
            name: name.to_string(),
            ..a
        }
    }
}

/// Collects nodes and initializers; every node's single output is named after the node.
pub(super) struct Builder<'a> {
    /// Nodes in topological order.
    pub nodes: Vec<NodeProto>,
    /// Weights and constants.
    pub initializers: Vec<TensorProto>,
    weights: &'a HashMap<String, Tensor>,
    /// Export settings.
    pub opts: &'a ExportOptions,
    names: HashSet<String>,
}

impl<'a> Builder<'a> {
    /// An empty graph reading `weights`.
    pub fn new(weights: &'a HashMap<String, Tensor>, opts: &'a ExportOptions) -> Self {
        Builder {
            nodes: Vec::new(),
            initializers: Vec::new(),
            weights,
            opts,
            names: HashSet::from(["input".to_string()]),
        }
    }

    /// Appends node `op` named `name` (made unique if taken) reading `inputs`; returns its output.
    pub fn node(&mut self, op: &str, name: &str, inputs: &[&str], attrs: &[Attr]) -> String {
        let name = self.unique(name);
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![name.clone()],
            name: name.clone(),
            op_type: op.to_string(),
            attribute: attrs.iter().map(Attr::proto).collect(),
            ..Default::default()
        });
        name
    }

    /// `name`, or `name.2`, `name.3`, … if a value of that name exists.
    fn unique(&mut self, name: &str) -> String {
        let mut candidate = name.to_string();
        let mut i = 2;
        while !self.names.insert(candidate.clone()) {
            candidate = format!("{name}.{i}");
            i += 1;
        }
        candidate
    }

    /// The f32 values and dims of parameter `param` of the weights file.
    pub fn param(&self, param: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let t = self
            .weights
            .get(param)
            .with_context(|| format!("the weights have no tensor `{param}`"))?;
        let values = t
            .to_dtype(DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .with_context(|| format!("reading tensor `{param}`"))?;
        Ok((values, t.dims().to_vec()))
    }

    /// The initializer for parameter `param`, as stored; returns its name.
    pub fn weight(&mut self, param: &str) -> Result<String> {
        if self.names.contains(param) {
            return Ok(param.to_string());
        }
        let (values, dims) = self.param(param)?;
        Ok(self.floats(param, &dims, &values))
    }

    /// A float initializer named `name` with the given shape and values; returns its name.
    pub fn floats(&mut self, name: &str, dims: &[usize], values: &[f32]) -> String {
        let name = self.unique(name);
        self.initializers.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: F32_TYPE,
            name: name.clone(),
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        });
        name
    }

    /// A shared 1-D int64 constant (shapes, axes, slice bounds), named by its values.
    pub fn ints(&mut self, values: &[i64]) -> String {
        let text: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        let name = format!("const.i64[{}]", text.join(","));
        if self.names.insert(name.clone()) {
            self.initializers.push(TensorProto {
                dims: vec![values.len() as i64],
                data_type: I64_TYPE,
                name: name.clone(),
                raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
                ..Default::default()
            });
        }
        name
    }

    /// A shared float constant of shape `dims`, named by its values.
    pub fn float_const(&mut self, dims: &[usize], values: &[f32]) -> String {
        let text: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        let name = format!("const.f32[{}]", text.join(","));
        if !self.names.contains(&name) {
            self.floats(&name, dims, values);
        }
        name
    }

    /// `AveragePool` 2×2, stride 2: the octave down-sampling.
    pub fn pool2(&mut self, name: &str, x: &Map) -> Map {
        let d = x.dims;
        let out = self.node(
            "AveragePool",
            name,
            &[&x.name],
            &[
                Attr::Ints("kernel_shape", vec![2, 2]),
                Attr::Ints("strides", vec![2, 2]),
            ],
        );
        Map {
            name: out,
            dims: Dims::new(d.c, d.h / 2, d.w / 2),
        }
    }

    /// Nearest-neighbour upsampling by `s` per side, in the encoding the options choose.
    pub fn upsample(&mut self, name: &str, x: &Map, s: usize) -> Map {
        let d = x.dims;
        let (si, h, w) = (s as i64, d.h as i64, d.w as i64);
        let out = match self.opts.upsample {
            Upsample::Resize => {
                let scales = self.float_const(&[4], &[1.0, 1.0, s as f32, s as f32]);
                self.node(
                    "Resize",
                    name,
                    &[&x.name, "", &scales],
                    &[
                        Attr::Str("mode", "nearest"),
                        Attr::Str("coordinate_transformation_mode", "asymmetric"),
                        Attr::Str("nearest_mode", "floor"),
                    ],
                )
            }
            Upsample::Expand => {
                // [N, C, H, W] → [N, C, H, 1, W, 1] → broadcast [N, C, H, s, W, s] → [N, C, sH, sW].
                let six = self.ints(&[0, 0, h, 1, w, 1]);
                let r = self.node("Reshape", &format!("{name}.rows"), &[&x.name, &six], &[]);
                let by = self.ints(&[1, 1, 1, si, 1, si]);
                let e = self.node("Expand", &format!("{name}.expand"), &[&r, &by], &[]);
                let four = self.ints(&[0, 0, h * si, w * si]);
                self.node("Reshape", name, &[&e, &four], &[])
            }
        };
        Map {
            name: out,
            dims: Dims::new(d.c, d.h * s, d.w * s),
        }
    }

    /// Channels `[from, from + c)` of `x` (`Slice` on axis 1).
    pub fn channels(&mut self, name: &str, x: &Map, from: usize, c: usize) -> Map {
        let starts = self.ints(&[from as i64]);
        let ends = self.ints(&[(from + c) as i64]);
        let axes = self.ints(&[1]);
        let out = self.node("Slice", name, &[&x.name, &starts, &ends, &axes], &[]);
        Map {
            name: out,
            dims: Dims::new(c, x.dims.h, x.dims.w),
        }
    }

    /// Concatenation along channels, in order (the one map itself if there is one).
    pub fn concat(&mut self, name: &str, xs: &[&Map]) -> Result<Map> {
        let Some(first) = xs.first() else {
            bail!("internal error: concat of nothing at `{name}`")
        };
        if xs.len() == 1 {
            return Ok((*first).clone());
        }
        let inputs: Vec<&str> = xs.iter().map(|m| m.name.as_str()).collect();
        let out = self.node("Concat", name, &inputs, &[Attr::Int("axis", 1)]);
        let c = xs.iter().map(|m| m.dims.c).sum();
        Ok(Map {
            name: out,
            dims: Dims::new(c, first.dims.h, first.dims.w),
        })
    }

    /// Element-wise sum, in order (`Add` for two, `Sum` for more; the value itself for one).
    pub fn sum(&mut self, name: &str, xs: &[&str]) -> Result<String> {
        Ok(match xs {
            [] => bail!("internal error: sum of nothing at `{name}`"),
            [one] => one.to_string(),
            [a, b] => self.node("Add", name, &[a, b], &[]),
            _ => self.node("Sum", name, xs, &[]),
        })
    }
}
