//! The network after the CAM layer, as plans of its own: what Recipro-CAM runs on masked
//! feature maps instead of whole images.
//!
//! Where the tail is position-wise up to a global average pooling (1×1 convolutions,
//! activations, batch norms: SqueezeNet's classifier) and whatever follows the pooling,
//! a feature map zeroed everywhere but at one position pools to
//! `(P(a) + (h·w − 1)·P(0)) / (h·w)`, `P` the position-wise part and `a` the activations
//! there: `P` runs once over the whole map and once on zeros, and only the part after the
//! pooling runs once per position, on a batch of pooled vectors. Any other tail (a CAM
//! layer earlier in the network, where 3×3 convolutions mix positions) runs whole, on one
//! masked copy of the map per position, a row of positions per pass.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use tract_onnx::pb::{
    type_proto, GraphProto, ModelProto, NodeProto, TensorProto, TypeProto, ValueInfoProto,
};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::Cost;

use super::graph::{ints, Graph};
use crate::error::{with_causes, Error, Result};
use crate::model::ndarray::{s, Array2, Array4, ArrayView3, Axis};

type Plan = Arc<TypedRunnableModel>;

/// Ops that compute each position from that position alone (1×1 convolutions are checked
/// on their kernel).
const POSITION_WISE: [&str; 17] = [
    "Conv",
    "QLinearConv",
    "Relu",
    "Clip",
    "LeakyRelu",
    "Sigmoid",
    "HardSigmoid",
    "HardSwish",
    "Mul",
    "Add",
    "BatchNormalization",
    "Identity",
    "Dropout",
    "QuantizeLinear",
    "DequantizeLinear",
    "Tanh",
    "Elu",
];

/// How the tail is run on masked maps.
enum Runs {
    /// `P` (`None`: the pooling reads the CAM layer itself) on the map and on zeros, then
    /// the rest (`after`) on a batch of `h·w` pooled vectors of shape `pooled`.
    Factored {
        position_wise: Option<(Plan, Plan)>,
        after: Plan,
        pooled: Vec<usize>,
        /// Where position (0, 0) of the CAM layer lands in the pooling's input (1×1
        /// convolutions may pad: their border holds `P(0)` too).
        offset: (usize, usize),
    },
    /// The whole tail on a row of `w` masked maps per pass.
    Whole(Plan),
}

/// The tail of a model after its CAM layer.
pub struct Tail {
    runs: Runs,
    shape: (usize, usize, usize),
    /// Multiply-adds of one map, for its cost in full passes.
    pub macs_per_map: u64,
}

impl Tail {
    /// Builds the plans of the tail from `cam` (`[1, C, h, w]`) to `logits` of the model
    /// at `path`, factored at its pooling where it can be.
    pub fn build(
        path: &Path,
        cam: &str,
        logits: &str,
        shape: (usize, usize, usize),
    ) -> Result<Tail> {
        Self::build_with(path, cam, logits, shape, true)
    }

    /// [`Tail::build`], or the whole tail on masked maps even where it could be factored
    /// (`factored = false`: what the factoring is checked against).
    pub fn build_with(
        path: &Path,
        cam: &str,
        logits: &str,
        shape: (usize, usize, usize),
        factored: bool,
    ) -> Result<Tail> {
        let bad = |why: String| Error::model(path, format!("the network after {cam}: {why}"));
        let proto = super::onnx::OnnxFile::read(path)?.proto;
        let graph = proto.graph.as_ref().ok_or_else(|| bad("no graph".into()))?;
        let (c, h, w) = shape;
        let plan = |from: &str, to: &str, dims: &[usize]| {
            let sub = subgraph(&proto, from, to).map_err(bad)?;
            let (plan, macs) = optimise(&sub, dims).map_err(|e| bad(with_causes(e.as_ref())))?;
            Ok::<_, Error>((plan, macs))
        };
        let g = Graph::new(graph, logits);
        // Scores before a final Softmax, as the reference implementation (OpenVINO XAI)
        // takes them.
        let logits = match g.producers.get(logits) {
            Some(n) if n.op_type == "Softmax" => n.input[0].as_str(),
            _ => logits,
        };
        let start = g.quantized_source(cam).unwrap_or(cam);
        if let Some(Factor {
            pool_in,
            pool_out,
            keep_dims,
            offset,
        }) = factor(&g, graph, start).filter(|_| factored)
        {
            let (position_wise, p_macs, channels) = match pool_in == cam {
                true => (None, 0, c),
                false => {
                    let (on_map, macs) = plan(cam, &pool_in, &[1, c, h, w])?;
                    let (on_zeros, _) = plan(cam, &pool_in, &[1, c, 1, 1])?;
                    let zero = run(&on_zeros, Array4::<f32>::zeros((1, c, 1, 1)).into_dyn())?;
                    (Some((on_map, on_zeros)), macs, zero.shape()[1])
                }
            };
            let pooled = match keep_dims {
                true => vec![h * w, channels, 1, 1],
                false => vec![h * w, channels],
            };
            let (after, q_macs) = plan(&pool_out, logits, &pooled)?;
            return Ok(Tail {
                runs: Runs::Factored {
                    position_wise,
                    after,
                    pooled,
                    offset,
                },
                shape,
                macs_per_map: p_macs + q_macs,
            });
        }
        let (whole, macs_per_row) = plan(cam, logits, &[w, c, h, w])?;
        Ok(Tail {
            runs: Runs::Whole(whole),
            shape,
            macs_per_map: macs_per_row * h as u64,
        })
    }

    /// Per position of the map, the tail's output (`[h·w, classes]`, row-major over
    /// positions) with every other position of `activations` zeroed.
    pub fn masked_outputs(&self, activations: ArrayView3<f32>) -> Result<Array2<f32>> {
        let (c, h, w) = self.shape;
        if activations.dim() != self.shape {
            return Err(Error::invalid(
                "activations",
                format!("{:?}, the tail takes {:?}", activations.dim(), self.shape),
            ));
        }
        match &self.runs {
            Runs::Factored {
                position_wise,
                after,
                pooled,
                offset: (top, left),
            } => {
                let x = activations.to_owned().insert_axis(Axis(0));
                let (map, zero) = match position_wise {
                    Some((on_map, on_zeros)) => (
                        run(on_map, x.into_dyn())?,
                        run(on_zeros, Array4::<f32>::zeros((1, c, 1, 1)).into_dyn())?,
                    ),
                    None => (x.into_dyn(), Array4::<f32>::zeros((1, c, 1, 1)).into_dyn()),
                };
                let channels = map.shape()[1];
                // The pooling averages every position of its input, border included.
                let n = (map.shape()[2] * map.shape()[3]) as f32;
                let mut vectors = Array2::<f32>::zeros((h * w, channels));
                for (k, mut v) in vectors.outer_iter_mut().enumerate() {
                    let (i, j) = (k / w + top, k % w + left);
                    for ch in 0..channels {
                        let z = zero[[0, ch, 0, 0]];
                        v[ch] = (map[[0, ch, i, j]] + (n - 1.0) * z) / n;
                    }
                }
                let input = vectors
                    .into_shape_with_order(pooled.clone())
                    .map_err(|e| Error::Inference(e.to_string()))?;
                into_rows(run(after, input)?, h * w)
            }
            Runs::Whole(plan) => {
                let mut rows = Vec::with_capacity(h);
                for i in 0..h {
                    let mut x = Array4::<f32>::zeros((w, c, h, w));
                    for j in 0..w {
                        x.slice_mut(s![j, .., i, j])
                            .assign(&activations.slice(s![.., i, j]));
                    }
                    rows.push(into_rows(run(plan, x.into_dyn())?, w)?);
                }
                let views: Vec<_> = rows.iter().map(|r| r.view()).collect();
                crate::model::ndarray::concatenate(Axis(0), &views)
                    .map_err(|e| Error::Inference(e.to_string()))
            }
        }
    }

    /// Passes of the tail per map: one per row of positions, or the position-wise part's
    /// two and one for the part after the pooling.
    pub fn passes(&self) -> usize {
        match &self.runs {
            Runs::Factored { position_wise, .. } => 1 + 2 * position_wise.is_some() as usize,
            Runs::Whole(_) => self.shape.1,
        }
    }

    /// Whether the tail is run once per position (`false`) or factored at its pooling.
    pub fn factored(&self) -> bool {
        matches!(self.runs, Runs::Factored { .. })
    }
}

fn run(plan: &Plan, x: tract_ndarray::ArrayD<f32>) -> Result<tract_ndarray::ArrayD<f32>> {
    let out = plan
        .run(tvec!(Tensor::from(x).into()))
        .map_err(|e| Error::Inference(with_causes(e.as_ref())))?;
    out[0]
        .clone()
        .into_tensor()
        .into_plain_array::<f32>()
        .map_err(|e| Error::Inference(with_causes(e.as_ref())))
}

/// `[n, classes]` from an output of `n` rows (`[n, classes]` or `[n, classes, 1, 1]`).
fn into_rows(out: tract_ndarray::ArrayD<f32>, n: usize) -> Result<Array2<f32>> {
    let classes = out.len() / n.max(1);
    out.into_shape_with_order((n, classes))
        .map_err(|e| Error::Inference(e.to_string()))
}

/// Where the tail can be factored at its global average pooling.
struct Factor {
    pool_in: String,
    pool_out: String,
    /// The pooled tensor keeps its spatial dimensions (`[N, C, 1, 1]`).
    keep_dims: bool,
    offset: (usize, usize),
}

/// The global average pooling the tail reaches from `start` through position-wise ops
/// only, if any.
fn factor(g: &Graph, graph: &GraphProto, start: &str) -> Option<Factor> {
    let mut tensor = start.to_string();
    let mut offset = (0, 0);
    for _ in 0..graph.node.len() {
        let readers = g.consumers.get(tensor.as_str())?;
        let [node] = readers.as_slice() else {
            return None;
        };
        if g.is_global_pool(node) {
            let keep_dims = node.op_type != "ReduceMean"
                || ints(node, "keepdims").is_none_or(|k| k.first() != Some(&0));
            return Some(Factor {
                pool_in: tensor,
                pool_out: node.output.first()?.clone(),
                keep_dims,
                offset,
            });
        }
        let (top, left) = position_wise(g, node, &tensor)?;
        offset = (offset.0 + top, offset.1 + left);
        tensor = node.output.first()?.clone();
    }
    None
}

/// Whether `node` (reading `tensor`) computes each position from that position alone —
/// an elementwise op whose other inputs are constants, or a 1×1 convolution — and by how
/// much it pads the map on top and on the left.
fn position_wise(g: &Graph, node: &NodeProto, tensor: &str) -> Option<(usize, usize)> {
    if !POSITION_WISE.contains(&node.op_type.as_str()) {
        return None;
    }
    let others_constant = node
        .input
        .iter()
        .filter(|i| i.as_str() != tensor && !i.is_empty())
        .all(|i| g.constants.contains_key(i.as_str()));
    if !others_constant {
        return None;
    }
    match node.op_type.as_str() {
        "Conv" | "QLinearConv" => {
            let weights = if node.op_type == "Conv" { 1 } else { 3 };
            let kernel = node
                .input
                .get(weights)
                .and_then(|w| g.constants.get(w.as_str()))
                .map(|t| t.dims.clone())?;
            let unit = |name| ints(node, name).is_none_or(|v| v.iter().all(|&x| x == 1));
            let pads = ints(node, "pads").unwrap_or_else(|| vec![0; 4]);
            let fits = kernel.len() == 4 && kernel[2] == 1 && kernel[3] == 1;
            let plain_pads = pads.len() == 4 && pads.iter().all(|&p| (0..=16).contains(&p));
            let auto_pad = node
                .attribute
                .iter()
                .any(|a| a.name == "auto_pad" && a.s != b"NOTSET");
            (fits && unit("strides") && unit("dilations") && plain_pads && !auto_pad)
                .then(|| (pads[0] as usize, pads[1] as usize))
        }
        // Broadcasting a constant over a [N, C, h, w] map: per channel at most.
        "Mul" | "Add" => node
            .input
            .iter()
            .filter_map(|i| g.constants.get(i.as_str()))
            .all(|t| t.dims.len() < 3 || t.dims.iter().rev().take(2).all(|&d| d == 1))
            .then_some((0, 0)),
        _ => Some((0, 0)),
    }
}

/// The part of `proto` that computes `to` from `from` (and constants), with `from` as its
/// one input.
fn subgraph(proto: &ModelProto, from: &str, to: &str) -> std::result::Result<ModelProto, String> {
    let graph = proto.graph.as_ref().ok_or("no graph")?;
    let constants: HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs: HashSet<&str> = graph
        .input
        .iter()
        .map(|i| i.name.as_str())
        .filter(|n| !constants.contains(n))
        .collect();
    let producer = |t: &str| {
        graph
            .node
            .iter()
            .position(|n| n.output.iter().any(|o| o == t))
    };
    // A quantized graph reads the quantized tensor of which `from` is a float view: the
    // tail quantizes its input as that view was dequantized.
    let read = |t: &str| graph.node.iter().any(|n| n.input.iter().any(|i| i == t));
    let requantize = match producer(from).map(|i| &graph.node[i]) {
        Some(view) if !read(from) && view.op_type == "DequantizeLinear" => {
            let mut q = view.clone();
            q.op_type = "QuantizeLinear".into();
            q.name = format!("{from}/quantize");
            q.output = vec![view.input[0].clone()];
            q.input[0] = from.to_string();
            Some(q)
        }
        _ => None,
    };
    let stop = requantize.as_ref().map_or(from, |q| q.output[0].as_str());
    let mut needed: HashSet<usize> = HashSet::new();
    let mut todo = vec![to.to_string()];
    while let Some(t) = todo.pop() {
        if t == stop || t.is_empty() || constants.contains(t.as_str()) {
            continue;
        }
        if inputs.contains(t.as_str()) {
            return Err(format!(
                "{to} depends on the model's input other than through {from} (a path around it)"
            ));
        }
        let Some(i) = producer(&t) else {
            return Err(format!("nothing computes {t}"));
        };
        if needed.insert(i) {
            todo.extend(graph.node[i].input.iter().cloned());
        }
    }
    let nodes: Vec<NodeProto> = requantize
        .into_iter()
        .chain(
            (0..graph.node.len())
                .filter(|i| needed.contains(i))
                .map(|i| graph.node[i].clone()),
        )
        .collect();
    let used: HashSet<&str> = nodes
        .iter()
        .flat_map(|n| n.input.iter().map(String::as_str))
        .collect();
    let initializer: Vec<TensorProto> = graph
        .initializer
        .iter()
        .filter(|t| used.contains(t.name.as_str()))
        .cloned()
        .collect();
    let float = |name: &str| ValueInfoProto {
        name: name.to_string(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: 1,
                shape: None,
            })),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut sub = proto.clone();
    sub.graph = Some(GraphProto {
        name: format!("{from} → {to}"),
        node: nodes,
        initializer,
        input: vec![float(from)],
        output: vec![float(to)],
        ..Default::default()
    });
    Ok(sub)
}

/// tract's optimised plan of `sub` for an f32 input of `dims`, and the multiply-adds of
/// one run of it.
fn optimise(sub: &ModelProto, dims: &[usize]) -> TractResult<(Plan, u64)> {
    let fact =
        InferenceFact::dt_shape(f32::datum_type(), dims.iter().copied().collect::<TVec<_>>());
    let typed = tract_onnx::onnx()
        .model_for_proto_model(sub)?
        .with_input_fact(0, fact)?
        .into_typed()?
        .into_decluttered()?;
    let mut macs = 0u64;
    for node in typed.nodes() {
        let inputs = typed.node_input_facts(node.id)?;
        for (cost, count) in node.op.cost(&inputs)? {
            if let Cost::FMA(_) = cost {
                macs += count.to_i64()?.max(0) as u64;
            }
        }
    }
    Ok((typed.into_optimized()?.into_runnable()?, macs))
}
