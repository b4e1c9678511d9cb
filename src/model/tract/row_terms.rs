//! One constant per output channel of an int8 matrix product instead of two.
//!
//! tract ends a quantized convolution's product with two steps per tile that both add a
//! constant per output channel — per row of the product, or per column where the weights
//! are its right-hand side: the bias (`rowAdd`), then the input zero point times the
//! channel's weight sum (`rowSubF`: x − v). Each step is a pass over the tile's registers
//! and a pointer set up per tile, and tiles are many (tens of thousands per SqueezeNet
//! pass). Their difference is one constant: this pass folds the two into one `rowAdd` (or
//! `colAdd`) of `bias − zero point × sum`, which the kernels add with the same 32-bit
//! wrapping arithmetic, so the products are the same to the bit.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::matmul::optimized::{OptMatMul, ProtoFusedSpec};
use tract_onnx::tract_core::tract_linalg::BinOp;

use super::swap::Swapped;

/// Folds every `rowAdd` of a constant followed by a `rowSubF` of a constant (or `colAdd`
/// and `colSubF`), in the `OptMatMul`s of `model` whose products are i32, into one; says
/// how many such products it found and folded.
pub fn install(model: &mut TypedModel) -> TractResult<Swapped> {
    let mut swapped = Swapped::default();
    for id in 0..model.nodes.len() {
        let node = &model.nodes[id];
        let Some(op) = node.op_as::<OptMatMul>() else {
            continue;
        };
        if op.c_fact.datum_type != i32::datum_type() {
            continue;
        }
        let Some((at, folded)) = foldable(model, node, op)? else {
            continue;
        };
        swapped.candidates += 1;
        let (ProtoFusedSpec::BinPerRow(add_input, ..) | ProtoFusedSpec::BinPerCol(add_input, ..)) =
            op.micro_ops[at]
        else {
            unreachable!("foldable returns a rowAdd or colAdd");
        };
        let mut new = op.clone();
        new.micro_ops.remove(at + 1);
        let mut patch = TypedModelPatch::default();
        let mut taps = patch.taps(model, &node.inputs)?;
        taps[add_input] = patch.add_const(format!("{}.row_terms", node.name), folded)?;
        let wire = patch.wire_node(&node.name, new, &taps)?[0];
        patch.shunt_outside(model, OutletId::new(id, 0), wire)?;
        patch.apply(model)?;
        swapped.replaced += 1;
    }
    Ok(swapped)
}

/// The position of a `rowAdd` of a constant directly followed by a `rowSubF` of a
/// constant with as many values (or the same per column), and their folded constant, in
/// a product without batch axes.
///
/// A per-row or per-column constant is read as a flat run of values from a place that depends on the
/// product's batch coordinates (its `MapOutputAxisToInput`); where every batch axis of the
/// output is 1 that place is the start, whatever the constants' shapes and maps.
fn foldable(
    model: &TypedModel,
    node: &TypedNode,
    op: &OptMatMul,
) -> TractResult<Option<(usize, Tensor)>> {
    let shape = op.c_fact.shape.as_concrete().unwrap_or(&[]);
    let batched = (0..shape.len())
        .filter(|&axis| Some(axis) != op.c_m_axis && Some(axis) != op.c_n_axis)
        .any(|axis| shape[axis] != 1);
    if shape.is_empty() || batched {
        return Ok(None);
    }
    for (at, pair) in op.micro_ops.windows(2).enumerate() {
        let (Some((add, add_kind)), Some((sub, sub_kind))) = (
            per_line(&pair[0], BinOp::Add),
            per_line(&pair[1], BinOp::SubF),
        ) else {
            continue;
        };
        if add_kind != sub_kind {
            continue;
        }
        let konst = |input: usize| {
            model
                .outlet_fact(node.inputs[input])
                .map(|f| f.konst.clone())
        };
        let (Some(add), Some(sub)) = (konst(add)?, konst(sub)?) else {
            continue;
        };
        let i32s = add.datum_type() == i32::datum_type() && sub.datum_type() == i32::datum_type();
        if !i32s || add.len() != sub.len() {
            continue;
        }
        return Ok(Some((at, difference(&add, &sub)?)));
    }
    Ok(None)
}

/// The input of a per-row or per-column step doing `op`, and whether it is per row.
fn per_line(spec: &ProtoFusedSpec, op: BinOp) -> Option<(usize, bool)> {
    match spec {
        ProtoFusedSpec::BinPerRow(input, o, _) if *o == op => Some((*input, true)),
        ProtoFusedSpec::BinPerCol(input, o, _) if *o == op => Some((*input, false)),
        _ => None,
    }
}

/// `add − sub` in the order of their values, shaped as `add`, wrapping as the kernels'
/// 32-bit additions do.
fn difference(add: &Tensor, sub: &Tensor) -> TractResult<Tensor> {
    let mut folded = add.clone();
    {
        let subtracted = sub.try_as_plain_ram()?;
        let mut values = folded.try_as_plain_ram_mut()?;
        let pairs = values
            .as_slice_mut::<i32>()?
            .iter_mut()
            .zip(subtracted.as_slice::<i32>()?);
        pairs.for_each(|(a, s)| *a = a.wrapping_sub(*s));
    }
    Ok(folded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_folded_constant_wraps_as_the_kernels_do() {
        let add = tensor1(&[5i32, i32::MAX, -3]);
        let sub = tensor2(&[[2i32], [-1], [i32::MIN]]);
        let folded = difference(&add, &sub).unwrap();
        assert_eq!(folded, tensor1(&[3i32, i32::MIN, i32::MAX - 2]));
    }
}
