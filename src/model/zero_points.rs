//! Per-channel int8 weights — what ONNX Runtime's `quantize_static(per_channel=True)` and
//! most toolchains write — come with a zero point per output channel, and those are all
//! zero (symmetric weights). tract takes a zero-point *tensor* at its word: every
//! convolution then sums its input over the channels, multiplies the sums by the zeros and
//! subtracts the products, in generic loops (a fifth of a per-channel SqueezeNet pass).
//! A scalar zero point is what tract recognises and leaves out. This pass makes every
//! weight zero point whose values are all the same that scalar, before tract reads the
//! graph; the per-channel scales stay as they are.

use tract_onnx::pb::{GraphProto, TensorProto};

use super::head::Constant;

/// ONNX TensorProto.DataType codes of 8-bit zero points.
const UINT8: i32 = 2;
const INT8: i32 = 3;

/// The weight zero points of `QLinearConv` (input 5) and `QLinearMatMul` (input 5) that
/// are vectors of one value, replaced by a scalar of that value; says how many.
pub fn make_uniform_scalar(graph: &mut GraphProto) -> usize {
    let mut scalars: Vec<TensorProto> = Vec::new();
    let mut count = 0;
    for node in &mut graph.node {
        if !matches!(node.op_type.as_str(), "QLinearConv" | "QLinearMatMul")
            || !node.domain.is_empty()
        {
            continue;
        }
        let Some(name) = node.input.get(5).filter(|n| !n.is_empty()) else {
            continue;
        };
        let Some(tensor) = graph.initializer.iter().find(|t| &t.name == name) else {
            continue;
        };
        let Some(scalar) = uniform_scalar(tensor) else {
            continue;
        };
        node.input[5] = scalar.name.clone();
        if !scalars.iter().any(|s| s.name == scalar.name) {
            scalars.push(scalar);
        }
        count += 1;
    }
    graph.initializer.extend(scalars);
    count
}

/// A scalar of the same type holding the one value of an 8-bit vector with more than one
/// element, all equal.
fn uniform_scalar(tensor: &TensorProto) -> Option<TensorProto> {
    if ![UINT8, INT8].contains(&tensor.data_type) || tensor.dims.len() != 1 {
        return None;
    }
    let values = Constant::decode(tensor).ok()?.values;
    let (&first, rest) = values.split_first()?;
    if rest.is_empty() || rest.iter().any(|&v| v != first) {
        return None;
    }
    let byte = match tensor.data_type {
        INT8 => first as i8 as u8,
        _ => first as u8,
    };
    Some(TensorProto {
        name: format!("{}.uniform", tensor.name),
        data_type: tensor.data_type,
        raw_data: vec![byte],
        ..TensorProto::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::pb::NodeProto;

    fn zero_point(name: &str, data_type: i32, values: &[u8]) -> TensorProto {
        TensorProto {
            name: name.into(),
            data_type,
            dims: vec![values.len() as i64],
            raw_data: values.to_vec(),
            ..TensorProto::default()
        }
    }

    fn conv(zero_point: &str) -> NodeProto {
        NodeProto {
            op_type: "QLinearConv".into(),
            input: ["x", "xs", "xz", "w", "ws", zero_point, "ys", "yz"]
                .map(String::from)
                .to_vec(),
            output: vec!["y".into()],
            ..NodeProto::default()
        }
    }

    #[test]
    fn equal_zero_points_become_one_scalar_and_others_stay() {
        let mut graph = GraphProto {
            node: vec![conv("zeros"), conv("zeros"), conv("mixed")],
            initializer: vec![
                zero_point("zeros", INT8, &[0, 0, 0]),
                zero_point("mixed", INT8, &[0, 1, 0]),
            ],
            ..GraphProto::default()
        };
        assert_eq!(make_uniform_scalar(&mut graph), 2);
        assert_eq!(graph.node[0].input[5], "zeros.uniform");
        assert_eq!(graph.node[1].input[5], "zeros.uniform");
        assert_eq!(graph.node[2].input[5], "mixed");
        let scalar = graph
            .initializer
            .iter()
            .find(|t| t.name == "zeros.uniform")
            .unwrap();
        assert!(scalar.dims.is_empty());
        assert_eq!(
            (scalar.data_type, scalar.raw_data.as_slice()),
            (INT8, &[0u8][..])
        );
    }

    #[test]
    fn a_uint8_zero_point_keeps_its_value_and_a_scalar_is_left_alone() {
        let mut graph = GraphProto {
            node: vec![conv("u8"), conv("scalar")],
            initializer: vec![zero_point("u8", UINT8, &[128, 128]), {
                let mut t = zero_point("scalar", UINT8, &[7]);
                t.dims.clear();
                t
            }],
            ..GraphProto::default()
        };
        assert_eq!(make_uniform_scalar(&mut graph), 1);
        let scalar = graph
            .initializer
            .iter()
            .find(|t| t.name == "u8.uniform")
            .unwrap();
        assert_eq!(scalar.raw_data, [128]);
        assert_eq!(graph.node[1].input[5], "scalar");
    }
}
