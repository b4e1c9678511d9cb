//! Where a forward pass spends its time, op by op (`iscamd bench --profile`): tract's plan
//! run node by node with a clock around each. In an emulated machine whose clock counts
//! executed instructions (cross/arm-estimate.sh), the same table counts instructions.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tract_onnx::prelude::*;
use tract_onnx::tract_core::plan::eval;

use super::Plan;
use crate::model::{NodeTime, OpTime};

/// Runs `input` through `plan` once to warm up, then `passes` times, timing every node;
/// the ops by their total time, largest first, per pass.
pub fn profile(plan: &Plan, input: &Tensor, passes: usize) -> TractResult<Vec<OpTime>> {
    let mut state = TypedSimpleState::new(plan)?;
    state.run(tvec!(input.clone().into_tvalue()))?;
    let mut spent: HashMap<usize, Duration> = HashMap::new();
    for _ in 0..passes {
        state.run_plan_with_eval(
            tvec!(input.clone().into_tvalue()),
            |ctx, op_state, node: &TypedNode, inputs| {
                let start = Instant::now();
                let outputs = eval(ctx, op_state, node, inputs);
                *spent.entry(node.id).or_default() += start.elapsed();
                outputs
            },
        )?;
    }
    let passes = passes.max(1) as f64;
    let mut ops: HashMap<String, Vec<NodeTime>> = HashMap::new();
    for (id, time) in spent {
        let node = plan.model().node(id);
        ops.entry(node.op().name().to_string())
            .or_default()
            .push(NodeTime {
                name: node.name.clone(),
                info: node.op().info()?.join("; "),
                seconds_per_pass: time.as_secs_f64() / passes,
            });
    }
    let slowest_first = |a: f64, b: f64| b.total_cmp(&a);
    let mut ops: Vec<OpTime> = ops
        .into_iter()
        .map(|(op, mut by_node)| {
            by_node.sort_by(|a, b| slowest_first(a.seconds_per_pass, b.seconds_per_pass));
            OpTime {
                op,
                nodes: by_node.len(),
                seconds_per_pass: by_node.iter().map(|n| n.seconds_per_pass).sum(),
                by_node,
            }
        })
        .collect();
    ops.sort_by(|a, b| slowest_first(a.seconds_per_pass, b.seconds_per_pass));
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
        let add = ops.iter().find(|o| o.op == "Add").unwrap();
        let mut names: Vec<&str> = add.by_node.iter().map(|n| n.name.as_str()).collect();
        names.sort();
        assert_eq!(names, ["a", "b"]);
        assert!(ops.iter().all(|o| o.seconds_per_pass >= 0.0));
        assert!(ops
            .windows(2)
            .all(|w| w[0].seconds_per_pass >= w[1].seconds_per_pass));
    }
}
