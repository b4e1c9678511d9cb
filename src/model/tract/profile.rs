//! Where a forward pass spends its time, op by op (`iscamd bench --profile`): tract's plan
//! run node by node with a clock around each. In an emulated machine whose clock counts
//! executed instructions (cross/arm-estimate.sh), the same table counts instructions.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use tract_onnx::prelude::*;
use tract_onnx::tract_core::plan::eval;

use super::Plan;
use crate::model::OpTime;

/// Runs `input` through `plan` once to warm up, then `passes` times, timing every node;
/// the ops by their total time, largest first, per pass.
pub fn profile(plan: &Plan, input: &Tensor, passes: usize) -> TractResult<Vec<OpTime>> {
    let mut state = TypedSimpleState::new(plan)?;
    state.run(tvec!(input.clone().into_tvalue()))?;
    let mut spent: HashMap<String, (BTreeSet<usize>, Duration)> = HashMap::new();
    for _ in 0..passes {
        state.run_plan_with_eval(
            tvec!(input.clone().into_tvalue()),
            |ctx, op_state, node: &TypedNode, inputs| {
                let start = Instant::now();
                let outputs = eval(ctx, op_state, node, inputs);
                let (nodes, time) = spent.entry(node.op().name().to_string()).or_default();
                nodes.insert(node.id);
                *time += start.elapsed();
                outputs
            },
        )?;
    }
    let passes = passes.max(1) as f64;
    let mut ops: Vec<OpTime> = spent
        .into_iter()
        .map(|(op, (nodes, time))| OpTime {
            op,
            nodes: nodes.len(),
            seconds_per_pass: time.as_secs_f64() / passes,
        })
        .collect();
    ops.sort_by(|a, b| b.seconds_per_pass.total_cmp(&a.seconds_per_pass));
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_core::ops::math;

    #[test]
    fn every_node_is_counted_under_its_op() {
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([1, 64])).unwrap();
        let one = model.add_const("one", tensor2(&[[1f32]])).unwrap();
        let a = model.wire_node("a", math::add(), &[x, one]).unwrap();
        let b = model.wire_node("b", math::add(), &[a[0], one]).unwrap();
        let c = model.wire_node("c", math::mul(), &[b[0], b[0]]).unwrap();
        model.select_output_outlets(&c).unwrap();
        let plan = model.into_runnable().unwrap();
        let ops = profile(&plan, &Tensor::zero::<f32>(&[1, 64]).unwrap(), 3).unwrap();
        let nodes = |name: &str| ops.iter().find(|o| o.op == name).map(|o| o.nodes);
        assert_eq!(nodes("Add"), Some(2), "{ops:?}");
        assert_eq!(nodes("Mul"), Some(1), "{ops:?}");
        assert!(ops.iter().all(|o| o.seconds_per_pass >= 0.0));
        assert!(ops
            .windows(2)
            .all(|w| w[0].seconds_per_pass >= w[1].seconds_per_pass));
    }
}
