//! The ONNX graph as the CAM needs to read it: which op reads and which writes each
//! tensor, its constants, and where a classifier's global pooling is. ONNX lists nodes in
//! topological order, so "last" below means nearest the outputs.

use std::collections::HashMap;

use tract_onnx::pb::{GraphProto, NodeProto, TensorProto};

/// Ops that reshape, quantize or do nothing at inference, between a global pooling and
/// the classifier's dense layer.
pub(super) const RESHAPES: [&str; 7] = [
    "QuantizeLinear",
    "DequantizeLinear",
    "Flatten",
    "Reshape",
    "Squeeze",
    "Identity",
    "Dropout",
];

/// Ops a classifier may end with that do not change which class wins: the reshapes and
/// a Softmax.
pub(super) const AFTER_LOGITS: [&str; 8] = with_softmax(RESHAPES);

const fn with_softmax(ops: [&'static str; 7]) -> [&'static str; 8] {
    let mut out = ["Softmax"; 8];
    let mut i = 0;
    while i < ops.len() {
        out[i] = ops[i];
        i += 1;
    }
    out
}

/// The graph's nodes by the tensors they read and write, and its constants.
pub(super) struct Graph<'a> {
    pub(super) nodes: &'a [NodeProto],
    pub(super) consumers: HashMap<&'a str, Vec<&'a NodeProto>>,
    pub(super) producers: HashMap<&'a str, &'a NodeProto>,
    pub(super) constants: HashMap<&'a str, &'a TensorProto>,
    pub(super) logits: String,
}

impl<'a> Graph<'a> {
    pub(super) fn new(graph: &'a GraphProto, logits: &str) -> Self {
        let mut consumers: HashMap<&str, Vec<&NodeProto>> = HashMap::new();
        let mut producers = HashMap::new();
        for node in &graph.node {
            for input in &node.input {
                consumers.entry(input.as_str()).or_default().push(node);
            }
            for output in &node.output {
                producers.insert(output.as_str(), node);
            }
        }
        // A quantized graph keeps float views of quantized tensors that nothing reads
        // (models/quantize.py names them after the float tensors): they lead nowhere.
        let read = |t: &String| consumers.contains_key(t.as_str()) || t == logits;
        let dead: Vec<&NodeProto> = graph
            .node
            .iter()
            .filter(|n| {
                matches!(n.op_type.as_str(), "QuantizeLinear" | "DequantizeLinear")
                    && !n.output.iter().any(read)
            })
            .collect();
        for readers in consumers.values_mut() {
            readers.retain(|n| !dead.iter().any(|d| std::ptr::eq(*d, *n)));
        }
        consumers.retain(|_, readers| !readers.is_empty());
        let constants = graph
            .initializer
            .iter()
            .map(|t| (t.name.as_str(), t))
            .collect();
        Graph {
            nodes: &graph.node,
            consumers,
            producers,
            constants,
            logits: logits.to_string(),
        }
    }

    /// The quantized tensor of which `cam` is a float view that nothing reads.
    pub(super) fn quantized_source(&self, cam: &str) -> Option<&'a str> {
        let view = self.producers.get(cam)?;
        let unread = !self.consumers.contains_key(cam);
        (unread && view.op_type == "DequantizeLinear")
            .then(|| view.input.first().map(String::as_str))
            .flatten()
    }

    /// The one op that reads `tensor`, if exactly one does.
    fn only_reader(&self, tensor: &str) -> Option<&'a NodeProto> {
        match self.consumers.get(tensor).map(Vec::as_slice) {
            Some([one]) if !one.output.is_empty() => Some(one),
            _ => None,
        }
    }

    /// `tensor` followed through ops of the kinds `ops`, as far as each has one reader.
    /// Bounded: a graph is acyclic, but a hostile file need not be.
    fn follow(&self, tensor: &str, ops: &[&str]) -> String {
        let mut tensor = tensor.to_string();
        for _ in 0..self.nodes.len() {
            match self.only_reader(&tensor) {
                Some(next) if ops.contains(&next.op_type.as_str()) => {
                    tensor = next.output[0].clone();
                }
                _ => break,
            }
        }
        tensor
    }

    /// Whether `node` averages a `[N, C, h, w]` tensor over all of h and w. An AveragePool
    /// is taken at its word (no padding): that its kernel covers the map is checked once
    /// the map's size is known.
    pub(super) fn is_global_pool(&self, node: &NodeProto) -> bool {
        match node.op_type.as_str() {
            "GlobalAveragePool" => true,
            "ReduceMean" => self.reduce_axes(node).is_some_and(|mut axes| {
                for a in &mut axes {
                    if *a < 0 {
                        *a += 4;
                    }
                }
                axes.sort_unstable();
                axes == [2, 3]
            }),
            "AveragePool" => ints(node, "pads").is_none_or(|p| p.iter().all(|&v| v == 0)),
            _ => false,
        }
    }

    /// A ReduceMean's axes: the attribute (opsets before 18), or its constant second input.
    fn reduce_axes(&self, node: &NodeProto) -> Option<Vec<i64>> {
        if let Some(axes) = ints(node, "axes") {
            return Some(axes);
        }
        let t = self.constants.get(node.input.get(1)?.as_str())?;
        // ONNX TensorProto.DataType 7: INT64.
        if t.data_type != 7 {
            return None;
        }
        if t.raw_data.is_empty() {
            return Some(t.int64_data.clone());
        }
        let words = t.raw_data.chunks_exact(8);
        Some(
            words
                .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
                .collect(),
        )
    }

    /// Whether the pooled tensor reaches a dense layer or the logits through reshapes.
    fn feeds_classifier(&self, pooled: &str) -> Reaches {
        let end = self.follow(pooled, &AFTER_LOGITS);
        if end == self.logits {
            return Reaches::Logits;
        }
        match self.only_reader(&end).map(|n| n.op_type.as_str()) {
            Some("Gemm" | "MatMul" | "Conv" | "QLinearMatMul" | "QLinearConv") => Reaches::Dense,
            _ => Reaches::Neither,
        }
    }

    /// The 1×1 convolution that computes `tensor`, through activations and quantization.
    fn classifier_conv(&self, tensor: &str) -> Option<&'a NodeProto> {
        let mut tensor = tensor;
        for _ in 0..self.nodes.len() {
            let node = *self.producers.get(tensor)?;
            match node.op_type.as_str() {
                "Relu" | "Clip" | "QuantizeLinear" | "DequantizeLinear" | "Identity" => {
                    tensor = node.input.first()?;
                }
                "Conv" | "QLinearConv" => {
                    let weights = node.input.get(if node.op_type == "Conv" { 1 } else { 3 })?;
                    let kernel = &self.constants.get(weights.as_str())?.dims;
                    return (kernel.len() == 4 && kernel[2] == 1 && kernel[3] == 1).then_some(node);
                }
                _ => return None,
            }
        }
        None
    }
}

enum Reaches {
    Logits,
    Dense,
    Neither,
}

/// An integer-list attribute.
pub(super) fn ints(node: &NodeProto, name: &str) -> Option<Vec<i64>> {
    node.attribute
        .iter()
        .find(|a| a.name == name)
        .map(|a| a.ints.clone())
}

/// The CAM layer iscamd finds in a graph, and why it is that one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FoundLayer {
    pub tensor: String,
    pub why: String,
}

/// The feature map a class activation map weights: the tensor that feeds the global
/// pooling before the classifier; when that pooling follows a 1×1 classifier convolution
/// (SqueezeNet: no dense layer after the pooling), that convolution's input; without a
/// global pooling, the input of the last convolution.
pub fn find_cam_layer(graph: &GraphProto, logits: &str) -> Option<FoundLayer> {
    let g = Graph::new(graph, logits);
    let pool = graph.node.iter().rev().find_map(|n| {
        let pooled = n.output.first()?;
        let reaches = g.feeds_classifier(pooled);
        (g.is_global_pool(n) && !matches!(reaches, Reaches::Neither)).then_some((n, reaches))
    });
    if let Some((pool, reaches)) = pool {
        let input = pool.input.first()?;
        let name = |n: &NodeProto| format!("{} {:?}", n.op_type, n.name);
        if let (Reaches::Logits, Some(conv)) = (&reaches, g.classifier_conv(input)) {
            return Some(FoundLayer {
                tensor: conv.input.first()?.clone(),
                why: format!(
                    "the input of the 1×1 classifier convolution {} before the global pooling {}",
                    name(conv),
                    name(pool)
                ),
            });
        }
        return Some(FoundLayer {
            tensor: input.clone(),
            why: format!(
                "the input of the global pooling {} before the classifier",
                name(pool)
            ),
        });
    }
    let conv = graph
        .node
        .iter()
        .rev()
        .find(|n| n.op_type == "Conv" || n.op_type == "QLinearConv")?;
    Some(FoundLayer {
        tensor: conv.input.first()?.clone(),
        why: format!(
            "the input of the last convolution {:?} (no global pooling before the classifier)",
            conv.name
        ),
    })
}
