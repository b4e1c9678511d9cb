//! One matrix product per quantized 1×1 convolution, not one per row of the image.
//!
//! tract turns a 1×1 convolution into an `EinSum` over the image's rows and columns, and
//! lowers that to matrix products along one of them: one product per row, each as wide as
//! the row (13 to 55 columns in SqueezeNet), so that every product ends in a partial tile
//! and the per-tile work of its kernel outweighs the multiply-adds of short ones. tract
//! merges such axes into one (`merge_consecutive_same_role_axes`) only in einsums of two
//! inputs; a quantized einsum has nine (zero points and scales), and stays per row. This
//! pass merges them there: the axes that only the activations and the output have, next
//! to each other in both, become one axis on the way in and are split back on the way out
//! (reshapes of contiguous data, which cost nothing).

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::einsum::EinSum;

use super::swap::Swapped;

/// Merges the spatial axes of every quantized `EinSum` of `model` that has two or more
/// that are not 1; says how many quantized einsums it found and how many it merged.
pub fn install(model: &mut TypedModel) -> TractResult<Swapped> {
    let mut swapped = Swapped::default();
    // Patches append nodes: the ones present now are all that can be candidates.
    for id in 0..model.nodes.len() {
        let node = &model.nodes[id];
        let Some(op) = node.op_as::<EinSum>().filter(|op| op.q_params.is_some()) else {
            continue;
        };
        swapped.candidates += 1;
        let input = model.outlet_fact(node.inputs[0])?;
        let Some(run) = spatial_run(&op.axes, input) else {
            continue;
        };
        let mut merged = op.clone();
        for &drop in &run.axes[1..] {
            merged.axes = merged.axes.remove_axis(drop)?;
        }
        let dims: TVec<TDim> = run.dims.iter().map(|&d| d.into()).collect();
        let product: TDim = run.dims.iter().product::<usize>().into();
        let mut patch = TypedModelPatch::default();
        let mut taps = patch.taps(model, &node.inputs)?;
        let name = node.name.clone();
        taps[0] = patch.wire_node(
            format!("{name}.merge_spatial"),
            AxisOp::Reshape(run.in_start, dims.clone(), tvec![product.clone()]),
            &[taps[0]],
        )?[0];
        let wire = patch.wire_node(&name, merged, &taps)?[0];
        let wire = patch.wire_node(
            format!("{name}.split_spatial"),
            AxisOp::Reshape(run.out_start, tvec![product], dims),
            &[wire],
        )?[0];
        patch.shunt_outside(model, OutletId::new(id, 0), wire)?;
        patch.apply(model)?;
        swapped.replaced += 1;
    }
    Ok(swapped)
}

/// Axes of the activations (input 0) that no other input has, next to each other and in
/// the same order in the activations and the output.
#[derive(Debug, PartialEq)]
struct Run {
    axes: Vec<char>,
    dims: Vec<usize>,
    /// Position of the first in the activations and in the output.
    in_start: usize,
    out_start: usize,
}

/// The longest run of spatial axes in `axes` with two or more that are not 1 (merging a 1
/// saves no product), given the activations' fact.
fn spatial_run(axes: &AxesMapping, activations: &TypedFact) -> Option<Run> {
    let shape = activations.shape.as_concrete()?;
    let spatial = |axis: &Axis| {
        axis.inputs[0].len() == 1
            && axis.outputs[0].len() == 1
            && axis.inputs[1..]
                .iter()
                .all(|positions| positions.is_empty())
    };
    let order: Vec<&Axis> = axes.axes(InOut::In(0)).collect();
    let mut best: Option<Run> = None;
    let mut start = 0;
    while start < order.len() {
        let mut end = start;
        while end < order.len()
            && spatial(order[end])
            && order[end].outputs[0][0] == order[start].outputs[0][0] + (end - start)
        {
            end += 1;
        }
        let run = &order[start..end.max(start + 1)];
        let dims: Vec<usize> = run.iter().map(|a| shape[a.inputs[0][0]]).collect();
        let longer = best.as_ref().is_none_or(|b| b.axes.len() < run.len());
        if end > start && dims.iter().filter(|&&d| d != 1).count() >= 2 && longer {
            best = Some(Run {
                axes: run.iter().map(|a| a.repr).collect(),
                dims,
                in_start: start,
                out_start: run[0].outputs[0][0],
            });
        }
        start = end.max(start + 1);
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fact(shape: &[usize]) -> TypedFact {
        u8::fact(shape)
    }

    #[test]
    fn rows_and_columns_of_a_1x1_convolution_are_one_run() {
        // Activations NIHW, weights OI, bias O, six scalars; output NOHW.
        let axes: AxesMapping = "nihw,oi,o,,,,,,->nohw".parse().unwrap();
        let run = spatial_run(&axes, &fact(&[1, 96, 55, 55])).unwrap();
        assert_eq!(run.axes, ['h', 'w']);
        assert_eq!(run.dims, [55, 55]);
        assert_eq!((run.in_start, run.out_start), (2, 2));
    }

    #[test]
    fn a_run_needs_two_axes_that_are_not_1_in_the_same_order_in_the_output() {
        let axes: AxesMapping = "nihw,oi,o,,,,,,->nohw".parse().unwrap();
        assert_eq!(spatial_run(&axes, &fact(&[1, 96, 1, 55])), None);
        let swapped: AxesMapping = "nihw,oi,o,,,,,,->nowh".parse().unwrap();
        assert_eq!(spatial_run(&swapped, &fact(&[1, 96, 55, 55])), None);
        // A batch of 4 next to the rows: n is spatial too, but i sits between them.
        let batch: AxesMapping = "nihw,oi,o,,,,,,->nohw".parse().unwrap();
        let run = spatial_run(&batch, &fact(&[4, 96, 13, 13])).unwrap();
        assert_eq!(run.axes, ['h', 'w']);
    }
}
