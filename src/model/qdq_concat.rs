//! Concatenations between DequantizeLinear and QuantizeLinear, in 8 bits.
//!
//! Quantizers leave a Concat in float: each input dequantized, the float tensors joined,
//! the result quantized again — three passes in float over every byte, where the 8-bit
//! tensors could be joined as they are (ONNX Runtime fuses the pattern into its
//! `QLinearConcat`); the shipped per-channel SqueezeNet, whose fire modules all end so,
//! runs 1.2× faster without them (docs/benchmarks.md, "Model zoo"). This pass rewrites
//! the pattern before tract reads the graph:
//!
//! ```text
//! DQ(a_q, s_a) ─┐                                   a_q ──────────────┐
//!               ├─ Concat ─ [MaxPool] ─ Q(s) ─→ y_q   ⇒                ├─ Concat ─ [MaxPool] ─→ y_q
//! DQ(b_q, s_b) ─┘                                   Q(DQ(b_q), s) ────┘
//! ```
//!
//! An input already in the output's scale and zero point is read as it is; another is
//! requantized on its own (`Q(DQ(x))`, which tract turns into a 256-entry lookup table).
//! Each byte is what the float path computes: joining commutes with the element-wise Q,
//! and so does a max-pool without padding, Q being monotonic.

use std::collections::HashMap;

use tract_onnx::pb::{GraphProto, NodeProto};

use super::qdq::{requantize, splice, View};

/// Rewrites the float concatenations of `graph` that sit between DequantizeLinear and
/// QuantizeLinear, leaving the tensors named in `keep` computed as before; says how many.
pub fn fold(graph: &mut GraphProto, keep: &[String]) -> usize {
    let mut rewrites = HashMap::new();
    let mut removed = Vec::new();
    let mut folded = 0;
    {
        let view = View::new(graph, keep);
        for (i, node) in graph.node.iter().enumerate() {
            if node.op_type != "Concat" || !node.domain.is_empty() {
                continue;
            }
            if let Some(rewrite) = rewrite(&view, i, node) {
                folded += 1;
                removed.extend(rewrite.removed);
                rewrites.insert(i, rewrite.nodes);
                rewrites.extend(rewrite.replaced);
            }
        }
    }
    splice(graph, rewrites, &removed);
    folded
}

/// One concatenation in 8 bits: the nodes that take its place (requantisations, then the
/// Concat), the MaxPool after it rewired (by index), and the nodes that go.
struct Rewrite {
    nodes: Vec<NodeProto>,
    replaced: Vec<(usize, Vec<NodeProto>)>,
    removed: Vec<usize>,
}

/// The rewrite of the Concat at `index`, when every input is dequantized for it alone, in
/// the output's type, with scalar scales and zero points.
fn rewrite(view: &View<'_>, index: usize, concat: &NodeProto) -> Option<Rewrite> {
    let output = concat.output.first()?;
    let (mut next_index, mut next) = view.only_reader(output)?;
    let pool = match next.op_type.as_str() {
        "MaxPool" if unpadded(next) => {
            let pool = (next_index, next);
            (next_index, next) = view.only_reader(next.output.first()?)?;
            Some(pool)
        }
        _ => None,
    };
    if next.op_type != "QuantizeLinear" || next.input.len() != 3 {
        return None;
    }
    let (scale, zero_point) = (&next.input[1], &next.input[2]);
    let out = (view.scalar(scale)?, view.scalar(zero_point)?);
    let out_type = view.data_type(zero_point)?;
    let mut nodes = Vec::new();
    let mut removed = vec![next_index];
    let mut inputs = Vec::new();
    for input in &concat.input {
        let (reader, _) = view.only_reader(input)?;
        let dq = view.dequantized(input)?;
        if reader != index || view.data_type(dq.zero_point)? != out_type {
            return None;
        }
        let here = (view.scalar(dq.scale)?, view.scalar(dq.zero_point)?);
        if here == out {
            removed.push(dq.node);
            inputs.push(dq.quantized.to_string());
        } else {
            let requantized = requantize(input, scale, zero_point);
            inputs.push(requantized.output[0].clone());
            nodes.push(requantized);
        }
    }
    let quantized = next.output.first()?.clone();
    let mut joined = NodeProto {
        input: inputs,
        ..concat.clone()
    };
    let replaced = match pool {
        None => {
            joined.output = vec![quantized];
            vec![]
        }
        Some((pool_index, pool)) => {
            let pool = NodeProto {
                output: vec![quantized],
                ..pool.clone()
            };
            vec![(pool_index, vec![pool])]
        }
    };
    nodes.push(joined);
    Some(Rewrite {
        nodes,
        replaced,
        removed,
    })
}

/// A MaxPool without padding: with padding it would take the maximum with the float
/// padding value, not with a byte.
fn unpadded(pool: &NodeProto) -> bool {
    pool.attribute.iter().all(|a| match a.name.as_str() {
        "pads" => a.ints.iter().all(|&p| p == 0),
        "auto_pad" => matches!(a.s.as_slice(), b"" | b"NOTSET" | b"VALID"),
        _ => true,
    })
}

#[cfg(test)]
mod tests {
    use super::super::qdq::proto::{node, ops, scalar};
    use super::*;

    /// `DQ(a_q, 0.5) ⊕ DQ(b_q, 0.25) → [MaxPool] → Q(0.25) → y_q → DQ → y`, all u8.
    fn graph(pool: bool) -> GraphProto {
        let mut nodes = vec![
            node("DequantizeLinear", &["a_q", "a_s", "zp"], "a"),
            node("DequantizeLinear", &["b_q", "b_s", "zp"], "b"),
            node("Concat", &["a", "b"], "c"),
        ];
        let q_in = if pool {
            nodes.push(node("MaxPool", &["c"], "p"));
            "p"
        } else {
            "c"
        };
        nodes.push(node("QuantizeLinear", &[q_in, "b_s", "zp"], "y_q"));
        nodes.push(node("DequantizeLinear", &["y_q", "b_s", "zp"], "y"));
        GraphProto {
            node: nodes,
            initializer: vec![
                scalar("a_s", 1, 0.5),
                scalar("b_s", 1, 0.25),
                scalar("zp", 2, 0.0),
            ],
            ..Default::default()
        }
    }

    #[test]
    fn the_bytes_are_joined_and_an_input_in_another_scale_is_requantized() {
        let mut g = graph(false);
        assert_eq!(fold(&mut g, &[]), 1);
        assert_eq!(
            ops(&g),
            [
                "DequantizeLinear",
                "QuantizeLinear",
                "Concat",
                "DequantizeLinear"
            ]
        );
        assert_eq!(g.node[1].input, ["a", "b_s", "zp"]);
        assert_eq!(g.node[2].input, ["a.requantized", "b_q"]);
        assert_eq!(g.node[2].output, ["y_q"]);
    }

    #[test]
    fn an_unpadded_max_pool_runs_on_the_bytes() {
        let mut g = graph(true);
        assert_eq!(fold(&mut g, &[]), 1);
        assert_eq!(
            ops(&g),
            [
                "DequantizeLinear",
                "QuantizeLinear",
                "Concat",
                "MaxPool",
                "DequantizeLinear"
            ]
        );
        assert_eq!(g.node[3].input, ["c"]);
        assert_eq!(g.node[3].output, ["y_q"]);
        let mut padded = graph(true);
        padded.node[3]
            .attribute
            .push(tract_onnx::pb::AttributeProto {
                name: "pads".into(),
                ints: vec![1, 1, 1, 1],
                ..Default::default()
            });
        assert_eq!(fold(&mut padded, &[]), 0);
    }

    #[test]
    fn a_concatenation_asked_for_or_read_twice_stays_in_float() {
        let mut g = graph(false);
        assert_eq!(fold(&mut g, &["c".into()]), 0);
        let mut g = graph(false);
        g.node.push(node("Relu", &["b"], "r"));
        assert_eq!(fold(&mut g, &[]), 0);
        assert_eq!(ops(&g)[2], "Concat");
        assert_eq!(g.node[2].input, ["a", "b"]);
    }
}
