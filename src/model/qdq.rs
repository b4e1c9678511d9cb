//! QDQ graphs — what ONNX Runtime's `quantize_static` writes by default, and what most
//! quantization toolchains emit — keep every op in float between a DequantizeLinear of
//! each input and a QuantizeLinear of its output. tract runs such an op in float and
//! converts the int8 tensors around it, so a QDQ model runs slower than its float model.
//! This pass folds each convolution in that pattern into the `QLinearConv` it stands for
//! (the QOperator form, which tract runs on its integer kernels) before tract reads the
//! graph, as ONNX Runtime's own QDQ fusion does:
//!
//! ```text
//! DQ(x_q) ─┐
//! DQ(W_q) ─┼─ Conv ─ [Relu] ─ Q ─→ y_q   ⇒   QLinearConv(x_q, W_q, B_q) ─→ y_q
//! DQ(B_q) ─┘
//! ```
//!
//! A Relu between the Conv and the Q folds only when the Q saturates at zero (its zero
//! point is the type's lowest value), which is what the Relu did. Everything else — Add,
//! Mul, pooling, the classifier's Gemm — stays as it is: tract folds the unary ones into
//! lookup tables itself.

use std::collections::{HashMap, HashSet};

use tract_onnx::pb::{GraphProto, NodeProto, TensorProto};

use super::head::Constant;

/// ONNX TensorProto.DataType codes.
const UINT8: i32 = 2;
const INT8: i32 = 3;
const INT32: i32 = 6;

/// What [`fold`] did to a graph.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Folded {
    /// Convolutions now a `QLinearConv`.
    pub convs: usize,
    /// Convolutions between DequantizeLinear and QuantizeLinear left in float (a Relu that
    /// the Q does not saturate, a bias in another scale, a tensor asked for as an output).
    pub left: usize,
}

impl std::fmt::Display for Folded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "QDQ Conv → QLinearConv {}/{}",
            self.convs,
            self.convs + self.left
        )
    }
}

/// Folds the QDQ convolutions of `graph` into `QLinearConv`s, leaving the tensors named in
/// `keep` (the outputs the backend is asked for) computed as before.
pub fn fold(graph: &mut GraphProto, keep: &[String]) -> Folded {
    let mut folded = Folded::default();
    let mut replaced: HashMap<usize, NodeProto> = HashMap::new();
    let mut removed: HashSet<usize> = HashSet::new();
    let mut new_constants = Vec::new();
    {
        let view = View::new(graph, keep);
        for (i, node) in graph.node.iter().enumerate() {
            if node.op_type != "Conv" || !node.domain.is_empty() || !view.is_qdq_conv(node) {
                continue;
            }
            match view.qlinear_conv(node) {
                Some(conv) => {
                    folded.convs += 1;
                    removed.extend(conv.removed);
                    new_constants.extend(conv.bias);
                    replaced.insert(i, conv.node);
                }
                None => folded.left += 1,
            }
        }
    }
    if folded.convs == 0 {
        return folded;
    }
    let nodes = std::mem::take(&mut graph.node);
    graph.node = nodes
        .into_iter()
        .enumerate()
        .filter(|(i, _)| !removed.contains(i))
        .map(|(i, n)| replaced.remove(&i).unwrap_or(n))
        .collect();
    graph.initializer.extend(new_constants);
    drop_unread_dequantize(graph, keep);
    folded
}

/// `outputs` as a backend asks a QDQ graph for them: a tensor that only a QuantizeLinear
/// reads, whose bytes only a DequantizeLinear of the same scale and zero point reads, as
/// that DequantizeLinear's output — the values the model goes on with, where the float
/// tensor may hold the sums before a Relu or Clip that the quantizer dropped because the
/// Q saturates as they did (MobileNetV2's last convolution: half its values negative). The
/// graph's own outputs and every other tensor as they are. Asked so, the convolution
/// before a CAM layer folds into an integer op like the others.
pub fn outputs_as_read(graph: &GraphProto, outputs: &[String]) -> Vec<String> {
    // Nothing asked for yet: what the view keeps is the graph's outputs.
    let view = View::new(graph, &[]);
    let as_read = |tensor: &str| {
        let (_, q) = view
            .sole_reader(tensor)
            .filter(|(_, q)| q.op_type == "QuantizeLinear" && q.input.len() == 3)?;
        let (_, dq) = view.sole_reader(q.output.first()?)?;
        let same = dq.op_type == "DequantizeLinear" && dq.input[1..] == q.input[1..];
        same.then(|| dq.output.first().cloned()).flatten()
    };
    outputs
        .iter()
        .map(|name| match view.kept.contains(name.as_str()) {
            true => name.clone(),
            false => as_read(name).unwrap_or_else(|| name.clone()),
        })
        .collect()
}

/// The DequantizeLinear nodes of weights that no op reads any more.
fn drop_unread_dequantize(graph: &mut GraphProto, keep: &[String]) {
    let read: HashSet<String> = graph
        .node
        .iter()
        .flat_map(|n| n.input.iter().cloned())
        .chain(graph.output.iter().map(|o| o.name.clone()))
        .chain(keep.iter().cloned())
        .collect();
    let constants: HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let dead: HashSet<usize> = graph
        .node
        .iter()
        .enumerate()
        .filter(|(_, n)| {
            n.op_type == "DequantizeLinear"
                && n.input
                    .first()
                    .is_some_and(|x| constants.contains(x.as_str()))
                && !n.output.iter().any(|o| read.contains(o))
        })
        .map(|(i, _)| i)
        .collect();
    let mut i = 0;
    graph.node.retain(|_| {
        i += 1;
        !dead.contains(&(i - 1))
    });
}

/// One convolution rewritten: its `QLinearConv`, the nodes it replaces (the Relu, the Q)
/// and the int32 bias it needs, when the graph's bias is in float.
struct QLinearConv {
    node: NodeProto,
    removed: Vec<usize>,
    bias: Option<TensorProto>,
}

/// Puts each of `rewrites`' nodes in place of the node at its index and drops the nodes
/// at `removed`: the passes that run ops on bytes build their edits against the graph as
/// it was, then make them at once.
pub(super) fn splice(
    graph: &mut GraphProto,
    mut rewrites: HashMap<usize, Vec<NodeProto>>,
    removed: &[usize],
) {
    let nodes = std::mem::take(&mut graph.node);
    graph.node = nodes
        .into_iter()
        .enumerate()
        .filter(|(i, _)| !removed.contains(i))
        .flat_map(|(i, n)| rewrites.remove(&i).unwrap_or_else(|| vec![n]))
        .collect();
}

/// `Q(input)` into the scale and zero point named: the bytes of a dequantized tensor in
/// another scale (tract turns `Q(DQ(x))` into a 256-entry lookup table).
pub(super) fn requantize(input: &str, scale: &str, zero_point: &str) -> NodeProto {
    let requantized = format!("{input}.requantized");
    NodeProto {
        name: requantized.clone(),
        op_type: "QuantizeLinear".into(),
        input: vec![input.into(), scale.into(), zero_point.into()],
        output: vec![requantized],
        ..Default::default()
    }
}

/// The graph's producers, readers and constants, by tensor name.
pub(super) struct View<'a> {
    producers: HashMap<&'a str, (usize, &'a NodeProto)>,
    readers: HashMap<&'a str, Vec<(usize, &'a NodeProto)>>,
    constants: HashMap<&'a str, &'a TensorProto>,
    /// Tensors that must stay: graph outputs and the outputs asked for.
    kept: HashSet<&'a str>,
}

/// A DequantizeLinear's index and inputs: the quantized tensor, its scale and zero point.
pub(super) struct Dequantized<'a> {
    pub(super) node: usize,
    pub(super) quantized: &'a str,
    pub(super) scale: &'a str,
    pub(super) zero_point: &'a str,
}

impl<'a> View<'a> {
    pub(super) fn new(graph: &'a GraphProto, keep: &'a [String]) -> Self {
        let mut producers = HashMap::new();
        let mut readers: HashMap<&str, Vec<(usize, &NodeProto)>> = HashMap::new();
        for (i, node) in graph.node.iter().enumerate() {
            for output in &node.output {
                producers.insert(output.as_str(), (i, node));
            }
            for input in node.input.iter().filter(|n| !n.is_empty()) {
                readers.entry(input.as_str()).or_default().push((i, node));
            }
        }
        let constants = graph
            .initializer
            .iter()
            .map(|t| (t.name.as_str(), t))
            .collect();
        let kept = graph
            .output
            .iter()
            .map(|o| o.name.as_str())
            .chain(keep.iter().map(String::as_str))
            .collect();
        View {
            producers,
            readers,
            constants,
            kept,
        }
    }

    /// A convolution whose data and weights are dequantized: the pattern, foldable or not.
    fn is_qdq_conv(&self, conv: &NodeProto) -> bool {
        let dequantized = |i: usize| {
            conv.input
                .get(i)
                .and_then(|t| self.producers.get(t.as_str()))
                .is_some_and(|(_, n)| n.op_type == "DequantizeLinear")
        };
        dequantized(0) && dequantized(1)
    }

    pub(super) fn dequantized(&self, tensor: &str) -> Option<Dequantized<'a>> {
        let (index, node) = *self.producers.get(tensor)?;
        if node.op_type != "DequantizeLinear" || node.input.len() != 3 {
            return None;
        }
        Some(Dequantized {
            node: index,
            quantized: &node.input[0],
            scale: &node.input[1],
            zero_point: &node.input[2],
        })
    }

    fn constant(&self, name: &str) -> Option<Constant> {
        Constant::decode(self.constants.get(name)?).ok()
    }

    /// A constant of one value.
    pub(super) fn scalar(&self, name: &str) -> Option<f32> {
        match self.constant(name)?.values[..] {
            [v] => Some(v),
            _ => None,
        }
    }

    pub(super) fn data_type(&self, name: &str) -> Option<i32> {
        self.constants.get(name).map(|t| t.data_type)
    }

    /// The one op reading `tensor`, unless the tensor must stay.
    pub(super) fn only_reader(&self, tensor: &str) -> Option<(usize, &'a NodeProto)> {
        if self.kept.contains(tensor) {
            return None;
        }
        self.sole_reader(tensor)
    }

    /// The one op reading `tensor`, kept or not.
    fn sole_reader(&self, tensor: &str) -> Option<(usize, &'a NodeProto)> {
        match self.readers.get(tensor).map(Vec::as_slice) {
            Some([one]) => Some(*one),
            _ => None,
        }
    }

    /// The QuantizeLinear the convolution's output goes to, through a Relu it saturates,
    /// with the indices of the nodes the fold removes.
    fn output_quantize(&self, conv: &NodeProto) -> Option<(&'a NodeProto, Vec<usize>)> {
        let (i, next) = self.only_reader(conv.output.first()?)?;
        let (relu, (j, q)) = match next.op_type.as_str() {
            "QuantizeLinear" => (None, (i, next)),
            "Relu" => (Some(i), self.only_reader(next.output.first()?)?),
            _ => return None,
        };
        if q.op_type != "QuantizeLinear" || q.input.len() != 3 {
            return None;
        }
        let zero_point = self.constant(&q.input[2])?.values;
        let lowest = match self.data_type(&q.input[2])? {
            UINT8 => 0.0,
            INT8 => -128.0,
            _ => return None,
        };
        if relu.is_some() && zero_point != [lowest] {
            return None;
        }
        Some((q, relu.into_iter().chain([j]).collect()))
    }

    /// The `QLinearConv` that `conv` stands for, when every part of the pattern is there
    /// in a form `QLinearConv` takes: per-tensor data and output scales, 8-bit data and
    /// weights, and a bias in the data scale × the weight scale.
    fn qlinear_conv(&self, conv: &NodeProto) -> Option<QLinearConv> {
        let x = self.dequantized(&conv.input[0])?;
        let w = self.dequantized(&conv.input[1])?;
        let eight_bit = |t: &str| matches!(self.data_type(t), Some(UINT8 | INT8));
        if !eight_bit(w.quantized) || !eight_bit(w.zero_point) || !eight_bit(x.zero_point) {
            return None;
        }
        let x_scale = self.scalar(x.scale)?;
        let w_scale = self.constant(w.scale)?.values;
        let (q, removed) = self.output_quantize(conv)?;
        if self.constant(&q.input[1])?.values.len() != 1 {
            return None;
        }
        let (bias_input, bias) = match conv.input.get(2).filter(|b| !b.is_empty()) {
            None => (None, None),
            Some(b) => self.bias(conv, b, x_scale, &w_scale)?,
        };
        let mut inputs: Vec<String> = [
            x.quantized,
            x.scale,
            x.zero_point,
            w.quantized,
            w.scale,
            w.zero_point,
            q.input[1].as_str(),
            q.input[2].as_str(),
        ]
        .map(String::from)
        .to_vec();
        inputs.extend(bias_input);
        Some(QLinearConv {
            node: NodeProto {
                name: conv.name.clone(),
                op_type: "QLinearConv".into(),
                input: inputs,
                output: q.output.clone(),
                attribute: conv.attribute.clone(),
                ..Default::default()
            },
            removed,
            bias,
        })
    }

    /// The bias as `QLinearConv` takes it: int32 in the scale `x_scale × w_scale`. An int32
    /// DequantizeLinear already in that scale is read as is; a float constant is quantized
    /// into a new initializer.
    fn bias(
        &self,
        conv: &NodeProto,
        name: &str,
        x_scale: f32,
        w_scale: &[f32],
    ) -> Option<(Option<String>, Option<TensorProto>)> {
        let channels = self.constant(name).map(|c| c.values.len());
        let scales: Vec<f32> = match (w_scale.len(), channels) {
            (1, Some(m)) => vec![x_scale * w_scale[0]; m],
            (_, _) => w_scale.iter().map(|w| x_scale * w).collect(),
        };
        if let Some(b) = self.dequantized(name) {
            let zero = self.constant(b.zero_point)?.values;
            let scale = self.constant(b.scale)?.values;
            let same = |a: f32, b: f32| (a - b).abs() <= 1e-6 * a.abs().max(b.abs());
            let in_scale = match scale.len() {
                1 => scales.iter().all(|&s| same(s, scale[0])),
                _ => {
                    scale.len() == scales.len()
                        && scale.iter().zip(&scales).all(|(&a, &b)| same(a, b))
                }
            };
            let int32 = self.data_type(b.quantized) == Some(INT32);
            return (int32 && in_scale && zero.iter().all(|&z| z == 0.0))
                .then(|| (Some(b.quantized.to_string()), None));
        }
        let values = self.constant(name)?.values;
        if values.len() != scales.len() || scales.iter().any(|&s| s <= 0.0) {
            return None;
        }
        let quantized: Vec<i32> = values
            .iter()
            .zip(&scales)
            .map(|(&v, &s)| (v / s).round().clamp(i32::MIN as f32, i32::MAX as f32) as i32)
            .collect();
        let tensor = TensorProto {
            name: format!("{}_bias_int32", conv.name),
            dims: vec![quantized.len() as i64],
            data_type: INT32,
            int32_data: quantized,
            ..Default::default()
        };
        Some((Some(tensor.name.clone()), Some(tensor)))
    }
}

/// Small ONNX graphs for the tests of the passes that rewrite them.
#[cfg(test)]
pub(super) mod proto {
    use tract_onnx::pb::{GraphProto, NodeProto, TensorProto};

    /// A one-value initializer: float (`data_type` 1) or an integer type.
    pub fn scalar(name: &str, data_type: i32, value: f32) -> TensorProto {
        let mut t = TensorProto {
            name: name.into(),
            data_type,
            ..Default::default()
        };
        match data_type {
            1 => t.float_data = vec![value],
            _ => t.int32_data = vec![value as i32],
        }
        t
    }

    pub fn node(op: &str, inputs: &[&str], output: &str) -> NodeProto {
        NodeProto {
            name: format!("{op}_{output}"),
            op_type: op.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            ..Default::default()
        }
    }

    pub fn ops(g: &GraphProto) -> Vec<&str> {
        g.node.iter().map(|n| n.op_type.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::proto::{node, ops, scalar};
    use super::*;
    use tract_onnx::pb::{attribute_proto::AttributeType, AttributeProto};

    /// `x_q → DQ → Conv(DQ(W), bias) → [Relu] → Q(zero point zp) → y_q → DQ → y`.
    fn graph(relu: bool, zp: f32, float_bias: bool) -> GraphProto {
        let mut conv = node("Conv", &["x", "w", "b"], "c");
        conv.attribute.push(AttributeProto {
            name: "kernel_shape".into(),
            ints: vec![1, 1],
            r#type: AttributeType::Ints as i32,
            ..Default::default()
        });
        let mut nodes = vec![
            node("DequantizeLinear", &["x_q", "x_s", "x_zp"], "x"),
            node("DequantizeLinear", &["w_q", "w_s", "w_zp"], "w"),
        ];
        if !float_bias {
            nodes.push(node("DequantizeLinear", &["b_q", "b_s", "b_zp"], "b"));
        }
        nodes.push(conv);
        let q_in = if relu {
            nodes.push(node("Relu", &["c"], "r"));
            "r"
        } else {
            "c"
        };
        nodes.push(node("QuantizeLinear", &[q_in, "y_s", "y_zp"], "y_q"));
        nodes.push(node("DequantizeLinear", &["y_q", "y_s", "y_zp"], "y"));
        let mut w = scalar("w_q", INT8, 3.0);
        w.dims = vec![1, 1, 1, 1];
        let mut initializer = vec![
            scalar("x_s", 1, 0.5),
            scalar("x_zp", INT8, 0.0),
            w,
            scalar("w_s", 1, 0.25),
            scalar("w_zp", INT8, 0.0),
            scalar("y_s", 1, 0.1),
            scalar("y_zp", INT8, zp),
        ];
        if float_bias {
            initializer.push(scalar("b", 1, 0.5));
        } else {
            initializer.extend([
                scalar("b_q", INT32, 4.0),
                scalar("b_s", 1, 0.125),
                scalar("b_zp", INT32, 0.0),
            ]);
        }
        GraphProto {
            node: nodes,
            initializer,
            ..Default::default()
        }
    }

    #[test]
    fn a_qdq_conv_becomes_a_qlinear_conv_reading_the_quantized_tensors() {
        let mut g = graph(false, 0.0, false);
        assert_eq!(fold(&mut g, &[]), Folded { convs: 1, left: 0 });
        assert_eq!(
            ops(&g),
            ["DequantizeLinear", "QLinearConv", "DequantizeLinear"]
        );
        let conv = &g.node[1];
        assert_eq!(
            conv.input,
            ["x_q", "x_s", "x_zp", "w_q", "w_s", "w_zp", "y_s", "y_zp", "b_q"]
        );
        assert_eq!(conv.output, ["y_q"]);
        assert_eq!(conv.attribute[0].name, "kernel_shape");
    }

    #[test]
    fn a_relu_folds_only_where_the_quantize_saturates_at_zero() {
        let mut g = graph(true, -128.0, false);
        assert_eq!(fold(&mut g, &[]).convs, 1);
        assert!(!ops(&g).contains(&"Relu"));
        let mut g = graph(true, 3.0, false);
        assert_eq!(fold(&mut g, &[]), Folded { convs: 0, left: 1 });
        assert!(ops(&g).contains(&"Relu") && ops(&g).contains(&"Conv"));
    }

    #[test]
    fn a_float_bias_is_quantized_in_the_product_of_the_scales() {
        let mut g = graph(false, 0.0, true);
        assert_eq!(fold(&mut g, &[]).convs, 1);
        let bias = g.initializer.iter().find(|t| t.data_type == INT32).unwrap();
        // 0.5 / (0.5 × 0.25) = 4.
        assert_eq!(bias.int32_data, [4]);
        assert_eq!(
            g.node
                .iter()
                .find(|n| n.op_type == "QLinearConv")
                .unwrap()
                .input[8],
            bias.name
        );
    }

    #[test]
    fn a_tensor_is_asked_for_as_its_quantized_values_are_read() {
        let g = graph(false, 0.0, false);
        let asked = |g: &GraphProto, names: &[&str]| {
            outputs_as_read(g, &names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
        };
        assert_eq!(asked(&g, &["c", "x"]), ["y", "x"]);
        let mut g = graph(true, -128.0, false);
        assert_eq!(asked(&g, &["r", "c"]), ["y", "c"]);
        assert_eq!(fold(&mut g, &["y".into()]).convs, 1);
        let mut other_scale = graph(false, 0.0, false);
        other_scale.node.last_mut().unwrap().input[1] = "x_s".into();
        assert_eq!(asked(&other_scale, &["c"]), ["c"]);
        let mut graph_output = graph(false, 0.0, false);
        graph_output.output.push(tract_onnx::pb::ValueInfoProto {
            name: "c".into(),
            ..Default::default()
        });
        assert_eq!(asked(&graph_output, &["c"]), ["c"]);
    }

    #[test]
    fn a_tensor_asked_for_keeps_its_convolution() {
        let mut g = graph(false, 0.0, false);
        assert_eq!(fold(&mut g, &["c".into()]), Folded { convs: 0, left: 1 });
        assert!(ops(&g).contains(&"Conv"));
    }
}
