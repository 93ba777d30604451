//! ONNX export: an elaborated model and its weights as one graph of standard ONNX operators, for ONNX
//! Runtime, TensorRT, OpenVINO, tract and the browser engines.
//!
//! | layer | ONNX |
//! |---|---|
//! | `conv`, each path of `octconv` | `Conv` (the branch bias on the branch's first path; strides 2 for `downsample = stride`) |
//! | each path of `octconv_transpose` | `ConvTranspose` |
//! | H→L and stride-2 pooling, `split`'s low branch, `pyramid`, `merge(to = low)` | `AveragePool` 2×2 |
//! | L→H, `merge`, `upsample` | `Resize` (nearest, asymmetric, floor) or reshape → `Expand` → reshape ([`Upsample`]) |
//! | `merge`, `concat`, per-branch `global_avg_pool` | `Concat` |
//! | `bn` | `BatchNormalization`, or folded into the convolution before it ([`ExportOptions::fold_bn`]) |
//! | `relu`, `sigmoid`, `hardswish` | `Relu`, `Sigmoid`, `HardSwish` |
//! | `relu6` | `Clip(0, 6)` |
//! | `avg_pool`, `max_pool`, `global_avg_pool` | `AveragePool` (counting the padding), `MaxPool`, `GlobalAveragePool` + `Flatten` |
//! | `split` | `Slice` |
//! | `add`, residual joins | `Add` / `Sum` |
//! | `scale` | `Reshape` (+ `Slice` per branch) + `Mul` |
//! | `flatten`, `linear` | `Flatten`, `Gemm` |
//! | `dropout` | nothing (evaluation mode) |
//!
//! Node and initializer names follow the parameter names (`wide0.res0.octconv1.hh` reads
//! `wide0.res0.octconv1.hh.weight`); the graph's input is `input`, its output `output`.

mod builder;
mod conv;
mod fold;
mod layers;
pub mod proto;

use anyhow::{bail, Result};
use builder::{Builder, Map, Val};
use candle_core::Tensor;
use fold::BnFold;
use octconv_spec::ir::{Layer, Model, Op};
use octconv_spec::Shape;
use prost::Message;
use proto::tensor_shape_proto::{dimension, Dimension};
use proto::{
    type_proto, GraphProto, ModelProto, OperatorSetIdProto, StringStringEntryProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};
use std::collections::HashMap;
use std::ops::RangeInclusive;

/// The ONNX operator-set versions the exporter writes (`HardSwish` needs 14).
pub const OPSETS: RangeInclusive<i64> = 14..=21;

/// The default operator set.
pub const DEFAULT_OPSET: i64 = 17;

/// The graph's batch dimension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Batch {
    /// A fixed batch size.
    Fixed(usize),
    /// A symbolic batch dimension `N`.
    Dynamic,
}

/// How nearest-neighbour upsampling is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Upsample {
    /// One `Resize` node (mode nearest, coordinate transformation asymmetric, nearest mode floor).
    #[default]
    Resize,
    /// `Reshape` to `[N, C, H, 1, W, 1]`, `Expand` to `[N, C, H, s, W, s]`, `Reshape` back.
    Expand,
}

/// Export settings.
#[derive(Clone, Debug, PartialEq)]
pub struct ExportOptions {
    /// Operator-set version, in [`OPSETS`].
    pub opset: i64,
    /// Batch dimension of the input and output.
    pub batch: Batch,
    /// Fold each batch norm that directly follows a convolution (and reads nothing else) into it.
    pub fold_bn: bool,
    /// Upsampling encoding.
    pub upsample: Upsample,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            opset: DEFAULT_OPSET,
            batch: Batch::Fixed(1),
            fold_bn: false,
            upsample: Upsample::default(),
        }
    }
}

/// The IR version that goes with an operator set (the ONNX versioning table).
fn ir_version(opset: i64) -> i64 {
    match opset {
        ..=14 => 7,
        15..=18 => 8,
        19..=20 => 9,
        _ => 10,
    }
}

/// Builds the ONNX model of `model` with `weights` (checked by the caller with
/// [`crate::weights::check_weights`]).
pub fn export(
    model: &Model,
    weights: &HashMap<String, Tensor>,
    opts: &ExportOptions,
) -> Result<ModelProto> {
    if !OPSETS.contains(&opts.opset) {
        bail!(
            "opset {} is not supported: the exporter writes opsets {} to {}",
            opts.opset,
            OPSETS.start(),
            OPSETS.end()
        );
    }
    if opts.batch == Batch::Fixed(0) {
        bail!("the batch size must be at least 1");
    }
    let out_dims = match model.output {
        Shape::Single(d) => vec![d.c, d.h, d.w],
        Shape::Flat { features } => vec![features],
        Shape::Pair { .. } => bail!(
            "model `{}` ends on an octave pair; ONNX has one output tensor, so end the spec with \
             `merge();` (or a convolution with α_out = 0)",
            model.name
        ),
    };
    let mut b = Builder::new(weights, opts);
    let folds = foldable_batch_norms(model, opts.fold_bn);
    let mut values: Vec<Val> = Vec::with_capacity(model.layers.len());
    for (i, layer) in model.layers.iter().enumerate() {
        let fold = match folds.get(&i) {
            Some(&bn) => Some(BnFold::new(&b, &model.layers[bn])?),
            None => None,
        };
        let inputs: Vec<&Val> = layer.inputs.iter().map(|&j| &values[j]).collect();
        let v = emit(&mut b, model, layer, &inputs, fold.as_ref(), &folds)?;
        values.push(v);
    }
    let last = values.pop().expect("a model has an input layer");
    let last = match last {
        Val::Single(m) => m.name,
        Val::Flat(v, _) => v,
        Val::Pair { .. } => unreachable!("pair outputs are refused above"),
    };
    name_output(&mut b, &last);
    let batch_dim = |batch: Batch| Dimension {
        value: Some(match batch {
            Batch::Fixed(n) => dimension::Value::DimValue(n as i64),
            Batch::Dynamic => dimension::Value::DimParam("N".to_string()),
        }),
    };
    let value_info = |name: &str, dims: &[usize]| ValueInfoProto {
        name: name.to_string(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: proto::FLOAT,
                shape: Some(TensorShapeProto {
                    dim: std::iter::once(batch_dim(opts.batch))
                        .chain(dims.iter().map(|&d| Dimension {
                            value: Some(dimension::Value::DimValue(d as i64)),
                        }))
                        .collect(),
                }),
            })),
        }),
        ..Default::default()
    };
    let d = model.input;
    let graph = GraphProto {
        node: b.nodes,
        name: model.name.clone(),
        initializer: b.initializers,
        doc_string: model.docs.join("\n"),
        input: vec![value_info("input", &[d.c, d.h, d.w])],
        output: vec![value_info("output", &out_dims)],
        ..Default::default()
    };
    let mut meta = vec![
        ("spec".to_string(), model.call_string()),
        ("parameters".to_string(), model.params().to_string()),
        ("fold_bn".to_string(), opts.fold_bn.to_string()),
    ];
    meta.extend(
        model
            .args
            .iter()
            .map(|a| (format!("arg.{}", a.name), a.value.clone())),
    );
    Ok(ModelProto {
        ir_version: ir_version(opts.opset),
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: opts.opset,
        }],
        producer_name: "octconv".to_string(),
        producer_version: env!("CARGO_PKG_VERSION").to_string(),
        doc_string: model.call_string(),
        graph: Some(graph),
        metadata_props: meta
            .into_iter()
            .map(|(key, value)| StringStringEntryProto { key, value })
            .collect(),
        ..Default::default()
    })
}

/// The model's protobuf bytes.
pub fn encode(model: &ModelProto) -> Vec<u8> {
    model.encode_to_vec()
}

/// Renames the value `last` to `output`: the node that produces it, when nothing else reads it;
/// otherwise (the input itself, or a value other nodes read) an `Identity` node.
fn name_output(b: &mut Builder, last: &str) {
    let read = b.nodes.iter().any(|n| n.input.iter().any(|i| i == last));
    let producer = b
        .nodes
        .iter_mut()
        .find(|n| n.output.iter().any(|o| o == last));
    match producer {
        Some(node) if !read => {
            for o in node.output.iter_mut().filter(|o| *o == last) {
                *o = "output".to_string();
            }
        }
        _ => {
            b.nodes.push(proto::NodeProto {
                input: vec![last.to_string()],
                output: vec!["output".to_string()],
                name: "output".to_string(),
                op_type: "Identity".to_string(),
                ..Default::default()
            });
        }
    }
}

/// With `fold`, the batch norms that can be folded: conv layer index → BN layer index, where the BN
/// reads only that convolution and nothing else reads the convolution.
fn foldable_batch_norms(model: &Model, fold: bool) -> HashMap<usize, usize> {
    let mut folds = HashMap::new();
    if !fold {
        return folds;
    }
    let mut readers = vec![0usize; model.layers.len()];
    for l in &model.layers {
        for &j in &l.inputs {
            readers[j] += 1;
        }
    }
    for (i, l) in model.layers.iter().enumerate() {
        if let (Op::BatchNorm { .. }, [j]) = (&l.op, l.inputs.as_slice()) {
            let conv = matches!(
                model.layers[*j].op,
                Op::Conv(_) | Op::OctConv(_) | Op::OctConvTranspose(_)
            );
            if conv && readers[*j] == 1 {
                folds.insert(*j, i);
            }
        }
    }
    folds
}

/// The nodes of one layer; returns its output value.
fn emit(
    b: &mut Builder,
    model: &Model,
    layer: &Layer,
    inputs: &[&Val],
    fold: Option<&BnFold>,
    folds: &HashMap<usize, usize>,
) -> Result<Val> {
    let name = layer.name.as_str();
    let x = || -> Result<&Val> {
        inputs
            .first()
            .copied()
            .ok_or_else(|| anyhow::anyhow!("internal error: layer `{name}` has no input"))
    };
    Ok(match &layer.op {
        Op::Input => {
            let d = model.input;
            Val::Single(Map {
                name: "input".to_string(),
                dims: d,
            })
        }
        Op::Conv(s) => conv::conv(b, name, s, x()?, fold)?,
        Op::OctConv(s) => conv::octconv(b, name, s, x()?, fold, false)?,
        Op::OctConvTranspose(s) => conv::octconv(b, name, s, x()?, fold, true)?,
        Op::BatchNorm { eps, .. } => {
            let folded = layer.inputs.first().is_some_and(|j| {
                folds
                    .get(j)
                    .is_some_and(|&bn| model.layers[bn].name == name)
            });
            if folded {
                x()?.clone()
            } else {
                layers::batch_norm(b, name, *eps, x()?)?
            }
        }
        Op::Relu => layers::unary(b, name, "Relu", &[], x()?)?,
        Op::Sigmoid => layers::unary(b, name, "Sigmoid", &[], x()?)?,
        Op::HardSwish => layers::unary(b, name, "HardSwish", &[], x()?)?,
        Op::Silu => {
            let s = layers::unary(b, &format!("{name}.sigmoid"), "Sigmoid", &[], x()?)?;
            layers::mul(b, name, &[x()?, &s])?
        }
        Op::Relu6 => layers::relu6(b, name, x()?)?,
        Op::Dropout { .. } => x()?.clone(),
        Op::AvgPool(s) => layers::pool(b, name, false, s, x()?)?,
        Op::MaxPool(s) => layers::pool(b, name, true, s, x()?)?,
        Op::Split { low } => layers::split(b, name, *low, x()?)?,
        Op::Merge => layers::merge(b, name, x()?)?,
        Op::MergeLow => layers::merge_low(b, name, x()?)?,
        Op::Pyramid => layers::pyramid(b, name, x()?)?,
        Op::GlobalAvgPool { .. } => layers::global_avg_pool(b, name, x()?)?,
        Op::Flatten => layers::flatten(b, name, x()?)?,
        Op::Linear { out_f, bias, .. } => layers::linear(b, name, *out_f, *bias, x()?)?,
        Op::Add => layers::add(b, name, inputs)?,
        Op::Concat => layers::concat(b, name, inputs)?,
        Op::Scale => {
            let [x, g] = inputs else {
                bail!("internal error: `{name}` (scale) needs a value and its gates")
            };
            layers::scale(b, name, x, g)?
        }
        Op::Upsample { scale } => layers::upsample(b, name, *scale, x()?)?,
    })
}
