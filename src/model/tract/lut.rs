//! Element-wise float steps between a DequantizeLinear and a QuantizeLinear as one 8-bit
//! lookup table.
//!
//! tract turns `DQ → (unary element-wise op)* → Q` into a 256-entry table, but stops at an
//! op with a second input: a Clip is a `Max` and a `Min` with constants, so an int8
//! MobileNet's ReLU6 after every convolution (`DQ → Clip → Q` in the files quantizers
//! write) runs as three float passes over the activations — a quarter of its int8 pass
//! was the quantisation alone (perf, docs/benchmarks.md "Model zoo"). [`install`]
//! also walks through binary ops whose other input is a scalar constant, runs the chain
//! on the 256 possible bytes, and puts tract's table op in its place: the same bytes, as
//! the table is the chain's own output.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;
use tract_onnx::tract_core::ops::quant::{
    lookup_table, DequantizeLinearF32, QuantizeLinearI8, QuantizeLinearU8,
};

use super::swap::Swapped;

/// Replaces every `DQ → … → Q` chain of a decluttered `model` whose links are unary
/// element-wise ops or binary ones with a scalar constant, used once each; says how many
/// chains through a binary op it found (tract folds the others itself) and replaced.
pub fn install(model: &mut TypedModel) -> TractResult<Swapped> {
    let mut swapped = Swapped::default();
    // Patches append nodes: the ones present now are all that can be candidates.
    for dq in 0..model.nodes.len() {
        if !model.nodes[dq].op_is::<DequantizeLinearF32>() {
            continue;
        }
        let Some((links, q)) = chain(model, dq)? else {
            continue;
        };
        swapped.candidates += 1;
        let Some(table) = table(model, dq, &links, q)? else {
            continue;
        };
        let mut patch = TypedModelPatch::default();
        let input = patch.tap_model(model, model.nodes[dq].inputs[0])?;
        let name = format!("{}.lookup", model.nodes[dq].name);
        let wire = patch.wire_node(name, table, &[input])?;
        patch.shunt_outside(model, OutletId::new(q, 0), wire[0])?;
        patch.apply(model)?;
        swapped.replaced += 1;
    }
    Ok(swapped)
}

/// The 8-bit type a node quantizes to, if it is a QuantizeLinear.
fn quantizes_to(node: &TypedNode) -> Option<DatumType> {
    let op = node.op_as::<ElementWiseOp>()?;
    if op.0.downcast_ref::<QuantizeLinearU8>().is_some() {
        Some(DatumType::U8)
    } else {
        op.0.downcast_ref::<QuantizeLinearI8>()
            .map(|_| DatumType::I8)
    }
}

/// The links after the DequantizeLinear `dq` up to a QuantizeLinear, and that node, when
/// one of them is a binary op with a scalar constant (a chain of unary ops alone is
/// tract's to fold).
fn chain(model: &TypedModel, dq: usize) -> TractResult<Option<(Vec<usize>, usize)>> {
    let mut links = Vec::new();
    let mut from = OutletId::new(dq, 0);
    let mut binary = false;
    while let Some(next) = model.single_succ(from.node)? {
        if quantizes_to(next).is_some() {
            return Ok(binary.then_some((links, next.id)));
        }
        let (inputs, outputs) = model.node_facts(next.id)?;
        let unary = next.inputs.len() == 1
            && next
                .op
                .axes_mapping(&inputs, &outputs)
                .is_ok_and(|m| m.is_element_wise_unary());
        let with_scalar = next.op_is::<TypedBinOp>()
            && next.inputs.len() == 2
            && next.inputs.iter().zip(&inputs).all(|(outlet, fact)| {
                *outlet == from || fact.konst.as_ref().is_some_and(|k| k.len() == 1)
            })
            && outputs[0].shape == model.outlet_fact(from)?.shape;
        if !unary && !with_scalar {
            return Ok(None);
        }
        binary |= with_scalar && !unary;
        links.push(next.id);
        from = OutletId::new(next.id, 0);
    }
    Ok(None)
}

/// tract's table op for the chain: the chain itself, run on the 256 bytes.
fn table(
    model: &TypedModel,
    dq: usize,
    links: &[usize],
    q: usize,
) -> TractResult<Option<ElementWiseOp>> {
    let dt = model.outlet_fact(model.nodes[dq].inputs[0])?.datum_type;
    if quantizes_to(&model.nodes[q]) != Some(dt) {
        return Ok(None);
    }
    let mut adhoc = TypedModel::default();
    let mut wire = adhoc.add_source("bytes", dt.fact([256]))?;
    wire = adhoc.wire_node("dq", model.nodes[dq].op.clone(), &[wire])?[0];
    for &link in links {
        let node = &model.nodes[link];
        let mut inputs = TVec::new();
        for (i, outlet) in node.inputs.iter().enumerate() {
            match &model.outlet_fact(*outlet)?.konst {
                // The chain's own input is the one that is not a constant.
                Some(k) if node.inputs.len() == 2 => {
                    let scalar = k.clone().into_tensor().into_shape(&[1])?;
                    inputs.push(adhoc.add_const(format!("{}.{i}", node.name), scalar)?);
                }
                _ => inputs.push(wire),
            }
        }
        wire = adhoc.wire_node(&*node.name, node.op.clone(), &inputs)?[0];
    }
    wire = adhoc.wire_node("q", model.nodes[q].op.clone(), &[wire])?[0];
    adhoc.select_output_outlets(&[wire])?;
    let bytes: Vec<u8> = (0..=255).collect();
    let input = match dt {
        DatumType::U8 => tensor1(&bytes),
        _ => tensor1(&bytes.iter().map(|&b| b as i8).collect::<Vec<_>>()),
    };
    let output = SimplePlan::new(adhoc)?
        .run(tvec!(input.into_tvalue()))?
        .remove(0);
    let output = output.into_tensor();
    let table: Vec<u8> = match dt {
        DatumType::U8 => output.try_as_plain_ram()?.as_slice::<u8>()?.to_vec(),
        _ => {
            let plain = output.try_as_plain_ram()?;
            plain.as_slice::<i8>()?.iter().map(|&v| v as u8).collect()
        }
    };
    Ok(Some(lookup_table(tract_linalg::routines::lut_u8(&table)?)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_core::ops::math::{max, min};
    use tract_onnx::tract_core::ops::quant::{quantize_linear_i8, quantize_linear_u8};

    /// `Q(min(max(DQ(x), 0), 6))` of `[2, 256]` bytes (every value, twice): an int8
    /// ReLU6 as quantizers write it, the constants of the rank tract gives them.
    fn relu6(dt: DatumType) -> TypedModel {
        let mut model = TypedModel::default();
        let x = model.add_source("x", dt.fact([2, 256])).unwrap();
        let zero_point = if dt == DatumType::U8 { 3 } else { -7 };
        let dq = DequantizeLinearF32::new(0.037, zero_point);
        let y = model.wire_node("dq", dq, &[x]).unwrap();
        let lo = model.add_const("lo", tensor2(&[[0f32]])).unwrap();
        let y = model.wire_node("max", max(), &[y[0], lo]).unwrap();
        let hi = model.add_const("hi", tensor2(&[[6f32]])).unwrap();
        let y = model.wire_node("min", min(), &[hi, y[0]]).unwrap();
        let q = match dt {
            DatumType::U8 => quantize_linear_u8(0.0239, 2),
            _ => quantize_linear_i8(0.0239, -128),
        };
        let y = model.wire_node("q", q, &y).unwrap();
        model.select_output_outlets(&y).unwrap();
        model
    }

    use super::super::run_optimized as run;

    #[test]
    fn a_chain_with_constants_becomes_a_table_of_the_same_bytes() {
        for dt in [DatumType::U8, DatumType::I8] {
            let bytes: Vec<u8> = (0..512).map(|i| (i % 256) as u8).collect();
            let x = tract_ndarray::Array2::from_shape_vec([2, 256], bytes)
                .unwrap()
                .into_tensor();
            let x = x.cast_to_dt(dt).unwrap().into_owned();
            let model = relu6(dt).into_decluttered().unwrap();
            let expected = run(model.clone(), &x);
            let mut ours = model;
            let swapped = install(&mut ours).unwrap();
            assert_eq!(
                swapped,
                Swapped {
                    candidates: 1,
                    replaced: 1
                },
                "{dt:?}"
            );
            assert!(
                !ours.nodes.iter().any(|n| n.op_is::<TypedBinOp>()),
                "{dt:?}"
            );
            assert_eq!(run(ours, &x), expected, "{dt:?}");
        }
    }
}
