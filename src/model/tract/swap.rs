//! Swapping ops in an optimised tract plan for iscamd's own (`kernels::Policy` says whether).

use tract_onnx::prelude::*;

/// Gives every node of `model` whose op is an `O` the op `replacement` makes of it, given its
/// first input's and output's facts, where it makes one; returns how many nodes it changed.
/// The replacement must compute the same output from the same inputs.
pub fn replace_ops<O: TypedOp>(
    model: &mut TypedModel,
    replacement: impl Fn(&O, &TypedFact, &TypedFact) -> Option<Box<dyn TypedOp>>,
) -> TractResult<usize> {
    let mut replaced = 0;
    for id in 0..model.nodes.len() {
        let Some(op) = model.nodes[id].op_as::<O>() else {
            continue;
        };
        let input = model.outlet_fact(model.nodes[id].inputs[0])?;
        let output = model.outlet_fact(OutletId::new(id, 0))?;
        if let Some(new) = replacement(op, input, output) {
            model.nodes[id].op = new;
            replaced += 1;
        }
    }
    Ok(replaced)
}
