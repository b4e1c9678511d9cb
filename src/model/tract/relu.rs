//! Folds a ReLU that tract leaves behind a reshape into the matrix product before it.
//!
//! tract fuses a `max(x, c)` that directly follows a matrix product into the product's
//! kernel, where it costs nothing. Its grouped convolutions (conv1 and the 3×3 expands of
//! SqueezeNet, f32) end in a reshape, so their ReLUs stay separate passes over the whole
//! activation: about 5 % of an f32 forward pass on this project's x86 (perf; docs/benchmarks.md,
//! "Speed"). A reshape does not move a value, so the maximum can be taken in the kernel
//! instead, as tract does it when nothing is in between: [`install`] adds the scalar as an
//! input of the product, takes the maximum before the product stores its tile, and routes the
//! ReLU's consumers to the reshape.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::binary::OptBinByScalar;
use tract_onnx::tract_core::ops::change_axes::IntoShape;
use tract_onnx::tract_core::ops::matmul::optimized::{OptMatMul, ProtoFusedSpec};
use tract_onnx::tract_core::tract_linalg::BinOp;

use super::swap::Swapped;

/// Folds every f32 `max(reshape(product), c)` of `model` into its product; says how many
/// ReLUs behind a reshape it found and folded.
pub fn install(model: &mut TypedModel) -> TractResult<Swapped> {
    let mut swapped = Swapped::default();
    // Patches append nodes: the ones present now are all that can be candidates.
    for relu in 0..model.nodes.len() {
        let Some(candidate) = behind_reshape(model, relu) else {
            continue;
        };
        swapped.candidates += 1;
        if let Some((product, floor)) = foldable(model, candidate)? {
            let patch = fold(model, relu, candidate.reshape, product, floor)?;
            patch.apply(model)?;
            swapped.replaced += 1;
        }
    }
    Ok(swapped)
}

/// The patch that takes the maximum with `floor` in `product`'s kernel and wires the
/// reshape behind it in place of the ReLU.
fn fold(
    model: &TypedModel,
    relu: usize,
    reshape: usize,
    product: usize,
    floor: Tensor,
) -> TractResult<TypedModelPatch> {
    let mut patch = TypedModelPatch::default();
    let product_node = &model.nodes[product];
    let mut inputs = patch.taps(model, &product_node.inputs)?;
    let slot = inputs.len();
    inputs.push(patch.add_const(format!("{}.floor", model.nodes[relu].name), floor)?);
    let mut op = product_node
        .op_as::<OptMatMul>()
        .context("checked by foldable")?
        .clone();
    let store = op.micro_ops.len() - 1;
    op.micro_ops
        .insert(store, ProtoFusedSpec::BinScalar(slot, BinOp::Max));
    let wire = patch.wire_node(&product_node.name, op, &inputs)?;
    let reshape_node = &model.nodes[reshape];
    let wire = patch.wire_node(&reshape_node.name, reshape_node.op.clone(), &wire)?;
    patch.shunt_outside(model, OutletId::new(relu, 0), wire[0])?;
    Ok(patch)
}

/// A ReLU-like node `max(x, c)` whose `x` is a reshape: what the fold looks for.
#[derive(Clone, Copy)]
struct Candidate {
    relu: usize,
    reshape: usize,
}

fn behind_reshape(model: &TypedModel, relu: usize) -> Option<Candidate> {
    let node = &model.nodes[relu];
    let op = node.op_as::<OptBinByScalar>()?;
    let reshape = node.inputs[0].node;
    (op.linalg_op == BinOp::Max && model.nodes[reshape].op_as::<IntoShape>().is_some())
        .then_some(Candidate { relu, reshape })
}

/// For a candidate whose reshape follows an f32 matrix product, and whose scalar `c` is a
/// constant, each used by nothing else: the product's node and `c`.
fn foldable(model: &TypedModel, c: Candidate) -> TractResult<Option<(usize, Tensor)>> {
    let node = &model.nodes[c.relu];
    let floor = model.outlet_fact(node.inputs[1])?;
    let Some(floor) = floor.konst.as_ref().and_then(|k| k.as_uniform()) else {
        return Ok(None);
    };
    let single_use = |outlet: OutletId| {
        model.nodes[outlet.node].outputs[outlet.slot]
            .successors
            .len()
            == 1
            && !model.outputs.contains(&outlet)
    };
    if floor.datum_type() != f32::datum_type() || !single_use(node.inputs[0]) {
        return Ok(None);
    }
    let product = model.nodes[c.reshape].inputs[0];
    let Some(matmul) = model.nodes[product.node].op_as::<OptMatMul>() else {
        return Ok(None);
    };
    let stores_last = matches!(matmul.micro_ops.last(), Some(ProtoFusedSpec::Store(_)));
    if matmul.c_fact.datum_type != f32::datum_type() || !stores_last || !single_use(product) {
        return Ok(None);
    }
    Ok(Some((product.node, floor)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat, PaddingSpec, PoolSpec};
    use tract_onnx::tract_core::ops::math::max;
    use tract_onnx::tract_core::ops::nn::DataFormat;

    /// `max(conv(x), 0)` as tract optimises it: a convolution like SqueezeNet's conv1 and 3×3
    /// expands, whose product ends in a reshape.
    fn conv_relu(padding: usize, stride: usize) -> TypedModel {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([1, 3, 17, 17])).unwrap();
        let spec = PoolSpec {
            data_format: DataFormat::NCHW,
            kernel_shape: tvec!(3, 3),
            padding: PaddingSpec::Explicit(tvec!(padding; 2), tvec!(padding; 2)),
            dilations: None,
            strides: Some(tvec!(stride, stride)),
            input_channels: 3,
            output_channels: 8,
        };
        let weights: Vec<f32> = (0..8 * 3 * 9)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let kernel = tract_ndarray::Array4::from_shape_vec([8, 3, 3, 3], weights).unwrap();
        let kernel = model.add_const("kernel", kernel.into_tensor()).unwrap();
        let bias = model.add_const("bias", tensor1(&[0.1f32; 8])).unwrap();
        let conv = Conv {
            pool_spec: spec,
            kernel_fmt: KernelFormat::OIHW,
            group: 1,
            q_params: None,
        };
        let y = model.wire_node("conv", conv, &[x, kernel, bias]).unwrap();
        let zero = model.add_const("zero", tensor4(&[[[[0f32]]]])).unwrap();
        let relu = model.wire_node("relu", max(), &[y[0], zero]).unwrap();
        model.select_output_outlets(&relu).unwrap();
        model.into_optimized().unwrap()
    }

    use super::super::run_once as run;

    #[test]
    fn folds_the_relu_behind_a_convolutions_reshape_into_its_product() {
        let x = tract_ndarray::Array4::from_shape_fn([1, 3, 17, 17], |(_, c, y, x)| {
            ((c * 31 + y * 7 + x * 3) % 11) as f32 - 5.0
        })
        .into_tensor();
        for (padding, stride) in [(0, 2), (1, 1)] {
            let mut model = conv_relu(padding, stride);
            let expected = run(model.clone(), &x);
            assert_eq!(
                install(&mut model).unwrap().replaced,
                1,
                "padding {padding}, stride {stride}"
            );
            let relus = model
                .eval_order()
                .unwrap()
                .into_iter()
                .filter(|&n| model.nodes[n].op_is::<OptBinByScalar>())
                .count();
            assert_eq!(relus, 0, "the ReLU is still run");
            let ours = run(model, &x);
            assert_eq!(ours, expected);
            assert!(ours
                .to_plain_array_view::<f32>()
                .unwrap()
                .iter()
                .any(|&v| v == 0.0));
        }
    }
}
