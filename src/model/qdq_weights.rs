//! Weights that stay dequantized in a QDQ graph, dequantized once at load.
//!
//! What [`super::qdq`] does not fold into an integer op — the classifier's Gemm, a
//! convolution whose output no QuantizeLinear follows — reads its weights through a
//! DequantizeLinear of an 8-bit constant. tract keeps such a constant in 8 bits and
//! dequantizes it on every pass, because folding it would make the constant four times
//! larger (its `PropConst` folds nothing that grows); the float product after it then
//! also packs the weights on every pass, which it does once, at load, for a constant. On a
//! QDQ MobileNetV2 the classifier's dequantization and packing took 3.6 of a 22 ms pass
//! (x86, docs/benchmarks.md). This pass replaces each such DequantizeLinear by the float
//! constant it computes, `(x − zero point) · scale` per tensor or along its axis, as
//! tract's `DequantizeLinearF32` computes it.

use tract_onnx::pb::{GraphProto, NodeProto, TensorProto};

use super::head::Constant;

/// ONNX TensorProto.DataType of float.
const FLOAT: i32 = 1;

/// Replaces the DequantizeLinear nodes of constants by the float constants they compute,
/// but for tensors named in `keep` (the outputs the backend is asked for). Returns how
/// many; a node whose constants do not decode, or do not fit together, is left as it is
/// (tract's loader then says what is wrong with it).
pub fn dequantize_constants(graph: &mut GraphProto, keep: &[String]) -> usize {
    let mut computed: Vec<(usize, TensorProto)> = Vec::new();
    for (i, node) in graph.node.iter().enumerate() {
        let kept = node
            .output
            .iter()
            .any(|o| keep.contains(o) || graph.output.iter().any(|g| &g.name == o));
        if node.op_type != "DequantizeLinear" || !node.domain.is_empty() || kept {
            continue;
        }
        if let Some(values) = dequantized(graph, node) {
            computed.push((i, values));
        }
    }
    let count = computed.len();
    let (indices, constants): (Vec<usize>, Vec<TensorProto>) = computed.into_iter().unzip();
    let mut i = 0;
    graph.node.retain(|_| {
        i += 1;
        !indices.contains(&(i - 1))
    });
    graph.initializer.extend(constants);
    count
}

/// The float constant `node` computes, when all its inputs are constants.
fn dequantized(graph: &GraphProto, node: &NodeProto) -> Option<TensorProto> {
    let constant = |i: usize| -> Option<Constant> {
        let name = node.input.get(i).filter(|n| !n.is_empty())?;
        let tensor = graph.initializer.iter().find(|t| &t.name == name)?;
        Constant::decode(tensor).ok()
    };
    let (x, scale) = (constant(0)?, constant(1)?);
    let zero_point = match node.input.get(2).filter(|n| !n.is_empty()) {
        Some(_) => constant(2)?,
        None => Constant {
            dims: vec![],
            values: vec![0.0],
        },
    };
    if scale.values.len() != zero_point.values.len() || x.dims.is_empty() {
        return None;
    }
    // Per tensor, or one scale per index along `axis` (ONNX's default: 1).
    let (len, inner) = match scale.values.len() {
        1 => (1, 1),
        n => {
            let axis = node
                .attribute
                .iter()
                .find(|a| a.name == "axis")
                .map_or(1, |a| a.i);
            let axis = usize::try_from(axis.rem_euclid(x.dims.len() as i64)).ok()?;
            (x.dims[axis] == n).then_some(())?;
            (n, x.dims[axis + 1..].iter().product::<usize>())
        }
    };
    let raw_data = x
        .values
        .iter()
        .enumerate()
        .flat_map(|(i, &v)| {
            let at = (i / inner) % len;
            // As tract's DequantizeLinearF32: the difference exact, one rounding.
            let y = (v - zero_point.values[at]) * scale.values[at];
            y.to_le_bytes()
        })
        .collect();
    Some(TensorProto {
        name: node.output.first()?.clone(),
        dims: x.dims.iter().map(|&d| d as i64).collect(),
        data_type: FLOAT,
        raw_data,
        ..TensorProto::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::pb::{AttributeProto, ValueInfoProto};

    fn bytes(name: &str, dims: &[i64], data_type: i32, values: &[i8]) -> TensorProto {
        TensorProto {
            name: name.into(),
            dims: dims.to_vec(),
            data_type,
            raw_data: values.iter().map(|&v| v as u8).collect(),
            ..TensorProto::default()
        }
    }

    fn floats(name: &str, values: &[f32]) -> TensorProto {
        TensorProto {
            name: name.into(),
            dims: vec![values.len() as i64],
            data_type: FLOAT,
            float_data: values.to_vec(),
            ..TensorProto::default()
        }
    }

    fn dequantize(inputs: &[&str], output: &str, axis: Option<i64>) -> NodeProto {
        NodeProto {
            op_type: "DequantizeLinear".into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            attribute: axis
                .map(|i| AttributeProto {
                    name: "axis".into(),
                    i,
                    ..AttributeProto::default()
                })
                .into_iter()
                .collect(),
            ..NodeProto::default()
        }
    }

    fn float_values(t: &TensorProto) -> Vec<f32> {
        Constant::decode(t).unwrap().values
    }

    #[test]
    fn weights_per_tensor_and_per_axis_become_float_constants() {
        let mut graph = GraphProto {
            initializer: vec![
                bytes("w", &[2, 3], 3, &[-128, 0, 127, 1, 2, 3]),
                floats("s", &[0.5]),
                bytes("z", &[], 3, &[1]),
                bytes("pc", &[2, 3], 2, &[0, 10, 20, 30, 40, 50]),
                floats("pc.s", &[1.0, 0.25]),
                bytes("pc.z", &[2], 2, &[10, 30]),
            ],
            node: vec![
                dequantize(&["w", "s", "z"], "w.f", None),
                dequantize(&["pc", "pc.s", "pc.z"], "pc.f", Some(0)),
                dequantize(&["x", "s", "z"], "x.f", None),
                dequantize(&["w", "s", "z"], "asked", None),
            ],
            output: vec![ValueInfoProto {
                name: "out".into(),
                ..ValueInfoProto::default()
            }],
            ..GraphProto::default()
        };
        assert_eq!(dequantize_constants(&mut graph, &["asked".into()]), 2);
        // The activations' and the kept tensor's DequantizeLinear stay.
        let left: Vec<&str> = graph.node.iter().map(|n| n.output[0].as_str()).collect();
        assert_eq!(left, ["x.f", "asked"]);
        let constant = |name: &str| graph.initializer.iter().find(|t| t.name == name).unwrap();
        assert_eq!(
            float_values(constant("w.f")),
            [-64.5, -0.5, 63.0, 0.0, 0.5, 1.0]
        );
        assert_eq!(
            float_values(constant("pc.f")),
            [-10.0, 0.0, 10.0, 0.0, 2.5, 5.0]
        );
        assert_eq!(constant("pc.f").dims, [2, 3]);
    }

    #[test]
    fn scales_that_do_not_fit_the_axis_are_left_to_tract() {
        let mut graph = GraphProto {
            initializer: vec![
                bytes("w", &[2, 3], 3, &[1, 2, 3, 4, 5, 6]),
                floats("s", &[0.5, 0.25]),
                bytes("z", &[2], 3, &[0, 0]),
            ],
            node: vec![dequantize(&["w", "s", "z"], "w.f", Some(1))],
            ..GraphProto::default()
        };
        assert_eq!(dequantize_constants(&mut graph, &[]), 0);
        assert_eq!(graph.node.len(), 1);
    }
}
