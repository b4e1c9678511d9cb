//! Ops that only move or pick values (Reshape, Transpose, Slice, MaxPool…) between
//! DequantizeLinear and QuantizeLinear, in 8 bits.
//!
//! Quantizers wrap each such op in a DequantizeLinear of its input and a QuantizeLinear of
//! its output: ShuffleNet's channel split and shuffle (a Slice, or a Reshape, a Transpose
//! and a Reshape) each converts every byte to float and back. ONNX Runtime runs these ops
//! on the bytes. This pass rewrites the pattern before tract reads the graph:
//!
//! ```text
//! DQ(x_q, s, z) ─ Move ─ Q(s', z') ─→ y_q   ⇒   x_q ─ Move ─→ y_q                 (s', z') = (s, z)
//!                                           ⇒   Q(DQ(x_q), s', z') ─ Move ─→ y_q  otherwise
//! ```
//!
//! Each byte is what the float path computes: moving values commutes with the element-wise
//! Q, and so does picking the largest (Q and DQ keep the order of values); Q(DQ(b)) in the
//! same scale and zero point is b. A tensor in another scale is
//! requantized on its own (tract turns `Q(DQ(x))` into a 256-entry lookup table).

use std::collections::HashMap;

use tract_onnx::pb::{GraphProto, NodeProto};

use super::qdq::{requantize, splice, View};

/// The ops whose output holds values of their first input only, unchanged; their other
/// inputs (shapes, axes, bounds) are not data. A MaxPool's output is the largest value of
/// each window (padding takes no part, in ONNX and in tract), and Q and DQ keep the
/// order of values: it picks the same bytes.
const MOVES: [&str; 8] = [
    "Reshape",
    "Transpose",
    "Slice",
    "Squeeze",
    "Unsqueeze",
    "Flatten",
    "Identity",
    "MaxPool",
];

/// Rewrites the moves of `graph` that sit between a DequantizeLinear and a QuantizeLinear,
/// leaving the tensors named in `keep` computed as before; says how many.
pub fn fold(graph: &mut GraphProto, keep: &[String]) -> usize {
    let mut rewrites = HashMap::new();
    let mut removed = Vec::new();
    {
        let view = View::new(graph, keep);
        for (i, node) in graph.node.iter().enumerate() {
            if !MOVES.contains(&node.op_type.as_str()) || !node.domain.is_empty() {
                continue;
            }
            if let Some(rewrite) = rewrite(&view, i, node) {
                removed.extend(rewrite.removed);
                rewrites.insert(i, rewrite.nodes);
            }
        }
    }
    let folded = rewrites.len();
    splice(graph, rewrites, &removed);
    folded
}

/// One move in 8 bits: the nodes that take its place (a requantisation, then the move)
/// and the nodes that go.
struct Rewrite {
    nodes: Vec<NodeProto>,
    removed: Vec<usize>,
}

/// The rewrite of the move at `index`, when its data is dequantized for it alone and its
/// output quantized alone, in the same type, with scalar scales and zero points.
fn rewrite(view: &View<'_>, index: usize, node: &NodeProto) -> Option<Rewrite> {
    let [output] = node.output.as_slice() else {
        return None;
    };
    let input = node.input.first()?;
    let (reader, _) = view.only_reader(input)?;
    let dq = view.dequantized(input)?;
    let (q_index, q) = view.only_reader(output)?;
    if reader != index || q.op_type != "QuantizeLinear" || q.input.len() != 3 {
        return None;
    }
    let (scale, zero_point) = (&q.input[1], &q.input[2]);
    let out = (view.scalar(scale)?, view.scalar(zero_point)?);
    let here = (view.scalar(dq.scale)?, view.scalar(dq.zero_point)?);
    if view.data_type(zero_point)? != view.data_type(dq.zero_point)? {
        return None;
    }
    let mut nodes = Vec::new();
    let mut removed = vec![q_index];
    let bytes = if here == out {
        removed.push(dq.node);
        dq.quantized.to_string()
    } else {
        let requantized = requantize(input, scale, zero_point);
        let bytes = requantized.output[0].clone();
        nodes.push(requantized);
        bytes
    };
    let mut inputs = node.input.clone();
    inputs[0] = bytes;
    nodes.push(NodeProto {
        input: inputs,
        output: q.output.clone(),
        ..node.clone()
    });
    Some(Rewrite { nodes, removed })
}

#[cfg(test)]
mod tests {
    use super::super::qdq::proto::{node, ops, scalar};
    use super::*;

    /// `DQ(x_q, s_in) → Transpose → Q(0.25) → y_q → DQ → y`, all u8.
    fn graph(s_in: f32) -> GraphProto {
        GraphProto {
            node: vec![
                node("DequantizeLinear", &["x_q", "s_in", "zp"], "x"),
                node("Transpose", &["x"], "t"),
                node("QuantizeLinear", &["t", "s", "zp"], "y_q"),
                node("DequantizeLinear", &["y_q", "s", "zp"], "y"),
            ],
            initializer: vec![
                scalar("s_in", 1, s_in),
                scalar("s", 1, 0.25),
                scalar("zp", 2, 0.0),
            ],
            ..Default::default()
        }
    }

    #[test]
    fn a_move_in_the_same_scale_runs_on_the_bytes() {
        let mut g = graph(0.25);
        assert_eq!(fold(&mut g, &[]), 1);
        assert_eq!(ops(&g), ["Transpose", "DequantizeLinear"]);
        assert_eq!(g.node[0].input, ["x_q"]);
        assert_eq!(g.node[0].output, ["y_q"]);
    }

    #[test]
    fn a_move_into_another_scale_requantizes_first() {
        let mut g = graph(0.5);
        assert_eq!(fold(&mut g, &[]), 1);
        assert_eq!(
            ops(&g),
            [
                "DequantizeLinear",
                "QuantizeLinear",
                "Transpose",
                "DequantizeLinear"
            ]
        );
        assert_eq!(g.node[1].input, ["x", "s", "zp"]);
        assert_eq!(g.node[2].input, ["x.requantized"]);
        assert_eq!(g.node[2].output, ["y_q"]);
    }

    #[test]
    fn a_move_asked_for_or_read_twice_stays_in_float() {
        let mut g = graph(0.25);
        assert_eq!(fold(&mut g, &["t".into()]), 0);
        let mut g = graph(0.25);
        g.node.push(node("Relu", &["x"], "r"));
        assert_eq!(fold(&mut g, &[]), 0);
        assert_eq!(ops(&g)[1], "Transpose");
        assert_eq!(g.node[1].input, ["x"]);
    }
}
