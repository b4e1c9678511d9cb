//! Chains of ops on constants computed once, when the plan is built, where their result is
//! small. A quantized convolution's plan sums each output channel's weights
//! (`kernel_as_i32` → `sum_ker_g_c_k`); tract folds such steps into constants unless one
//! produces more than 4 MiB, and the weights of ResNet-18's last convolutions widened to
//! i32 are 9.4 MiB: it widened and summed them again in every pass, 29 % of an int8
//! ResNet-18 pass (docs/benchmarks.md). [`install`] follows such a step through the ops
//! that alone read it until the value is no larger than the constants it came from, and
//! puts that value in the plan; the large one is never kept.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::konst::Const;
use tract_onnx::tract_core::ops::source::TypedSource;

use super::swap::Swapped;

/// Folds every chain of `model` that starts at an op whose inputs are all constants and
/// ends, through ops with one input and one reader, at a value no larger than those
/// constants; says how many such starts it found (candidates) and folded (replaced).
pub fn install(model: &mut TypedModel) -> TractResult<Swapped> {
    let mut swapped = Swapped::default();
    let mut from = 0;
    while let Some((id, folded)) = next_chain(model, from)? {
        swapped.candidates += 1;
        from = id + 1;
        let Some((last, values)) = folded else {
            continue;
        };
        let mut patch = TypedModelPatch::default();
        for (slot, value) in values.into_iter().enumerate() {
            let name = format!("{}.folded.{slot}", model.nodes[last].name);
            let wire = patch.wire_node(name, Const::new(value.into_arc_tensor())?, &[])?[0];
            patch.shunt_outside(model, OutletId::new(last, slot), wire)?;
        }
        patch.apply(model)?;
        swapped.replaced += 1;
    }
    Ok(swapped)
}

/// The next node from `from` on whose inputs are all constants, and where its chain ends
/// with what it computes, if it ends small enough.
#[allow(clippy::type_complexity)]
fn next_chain(
    model: &TypedModel,
    from: usize,
) -> TractResult<Option<(usize, Option<(usize, TVec<TValue>)>)>> {
    for node in &model.nodes[from.min(model.nodes.len())..] {
        if node.op_is::<Const>() || node.op_is::<TypedSource>() || node.inputs.is_empty() {
            continue;
        }
        let facts = model.node_input_facts(node.id)?;
        let Some(inputs) = facts
            .iter()
            .map(|f| f.konst.clone().map(|k| k.into_tvalue()))
            .collect::<Option<TVec<TValue>>>()
        else {
            continue;
        };
        let budget: usize = inputs.iter().map(bytes).sum();
        return Ok(Some((node.id, chain_end(model, node, inputs, budget)?)));
    }
    Ok(None)
}

/// Evaluates `node` on `inputs`, then the ops that alone read each result, until the value
/// takes at most `budget` bytes: that node and value, or `None` (an op that does not
/// evaluate out of a plan, a reader that is not alone, a model output on the way).
fn chain_end<'m>(
    model: &'m TypedModel,
    mut node: &'m TypedNode,
    inputs: TVec<TValue>,
    budget: usize,
) -> TractResult<Option<(usize, TVec<TValue>)>> {
    let Ok(Some(mut values)) = node.op.eval_out_of_plan(inputs) else {
        return Ok(None);
    };
    loop {
        if values.iter().map(bytes).sum::<usize>() <= budget {
            return Ok(Some((node.id, values)));
        }
        let output = OutletId::new(node.id, 0);
        let next = model.single_succ(node.id)?;
        let Some(next) = next.filter(|n| n.inputs.len() == 1 && !model.outputs.contains(&output))
        else {
            return Ok(None);
        };
        let Ok(Some(next_values)) = next.op.eval_out_of_plan(values) else {
            return Ok(None);
        };
        (node, values) = (next, next_values);
    }
}

fn bytes(t: &TValue) -> usize {
    t.datum_type().size_of() * t.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_core::ops::cast::cast;
    use tract_onnx::tract_core::ops::nn::{Reduce, Reducer};

    /// A plan that widens a large constant to i32 and sums it, then adds the sums to its
    /// input: the widened weights are over tract's budget, so tract keeps both steps.
    fn summed_weights(rows: usize, cols: usize) -> TypedModel {
        let mut model = TypedModel::default();
        let x = model.add_source("x", i32::fact([rows, 1])).unwrap();
        let weights: Vec<i8> = (0..rows * cols).map(|i| (i % 251) as i8).collect();
        let weights = tract_ndarray::Array2::from_shape_vec([rows, cols], weights).unwrap();
        let w = model.add_const("w", weights.into_tensor()).unwrap();
        let wide = model
            .wire_node("wide", cast(i32::datum_type()), &[w])
            .unwrap();
        let sums = Reduce::new(tvec!(1), Reducer::Sum);
        let sums = model.wire_node("sums", sums, &wide).unwrap();
        let y = model
            .wire_node("y", tract_onnx::tract_core::ops::math::add(), &[x, sums[0]])
            .unwrap();
        model.select_output_outlets(&y).unwrap();
        model
    }

    #[test]
    fn computes_the_sums_of_large_weights_once() {
        // 512 × 4,608 bytes, as ResNet-18's last convolutions: 9 MiB as i32.
        let model = summed_weights(512, 4608).into_optimized().unwrap();
        let ops = |m: &TypedModel| -> Vec<String> {
            m.nodes.iter().map(|n| n.op().name().to_string()).collect()
        };
        assert!(ops(&model).iter().any(|o| o == "Cast"), "{:?}", ops(&model));
        let x = Tensor::from_shape(&[512, 1], &(0..512).collect::<Vec<i32>>()).unwrap();
        let expected = super::super::run_once(model.clone(), &x);
        let mut folded = model;
        assert_eq!(
            install(&mut folded).unwrap(),
            Swapped {
                candidates: 1,
                replaced: 1
            }
        );
        let left = ops(&folded);
        assert!(
            !left.iter().any(|o| o == "Cast" || o.starts_with("Reduce")),
            "{left:?}"
        );
        assert_eq!(super::super::run_once(folded, &x), expected);
    }

    #[test]
    fn leaves_a_chain_whose_value_stays_larger_than_its_constants() {
        // Widened and not summed: folding would keep four times the weights.
        let mut model = TypedModel::default();
        let w = model
            .add_const("w", Tensor::zero::<i8>(&[2048, 4096]).unwrap())
            .unwrap();
        let wide = model
            .wire_node("wide", cast(i32::datum_type()), &[w])
            .unwrap();
        model.select_output_outlets(&wide).unwrap();
        let mut model = model.into_optimized().unwrap();
        let swapped = install(&mut model).unwrap();
        assert_eq!(swapped.replaced, 0);
        assert!(model.nodes.iter().any(|n| n.op().name() == "Cast"));
    }
}
