//! Folds a ReLU that tract leaves behind a reshape into the matrix product before it.
//!
//! tract fuses a `max(x, c)` that directly follows a matrix product into the product's
//! kernel, where it costs nothing. Its grouped convolutions (conv1 and the 3×3 expands of
//! SqueezeNet, f32) end in a reshape, so their ReLUs stay separate passes over the whole
//! activation: about 5 % of an f32 forward pass on this project's x86 (perf; README,
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

/// Folds every f32 `max(reshape(product), c)` of `model` into its product; returns how many.
pub fn install(model: &mut TypedModel) -> TractResult<usize> {
    let mut folded = 0;
    for relu in 0..model.nodes.len() {
        let Some((product, reshape, floor)) = foldable(model, relu)? else {
            continue;
        };
        let floor = model.add_const(format!("{}.floor", model.nodes[relu].name), floor)?;
        let slot = model.nodes[product].inputs.len();
        model.add_edge(floor, InletId::new(product, slot))?;
        let op = model.nodes[product]
            .op_as_mut::<OptMatMul>()
            .context("checked above")?;
        let store = op.micro_ops.len() - 1;
        op.micro_ops
            .insert(store, ProtoFusedSpec::BinScalar(slot, BinOp::Max));
        let relu_output = OutletId::new(relu, 0);
        let reshaped = OutletId::new(reshape, 0);
        for inlet in model.nodes[relu].outputs[0].successors.clone() {
            model.add_edge(reshaped, inlet)?;
        }
        for output in model.outputs.iter_mut().filter(|o| **o == relu_output) {
            *output = reshaped;
        }
        folded += 1;
    }
    Ok(folded)
}

/// For a ReLU-like node `max(x, c)` whose `x` is a reshape of an f32 matrix product used by
/// nothing else: the product's node, the reshape's, and the scalar `c`.
fn foldable(model: &TypedModel, relu: usize) -> TractResult<Option<(usize, usize, Tensor)>> {
    let node = &model.nodes[relu];
    let Some(op) = node.op_as::<OptBinByScalar>() else {
        return Ok(None);
    };
    let floor = model.outlet_fact(node.inputs[1])?;
    let Some(floor) = floor.konst.as_ref().and_then(|k| k.as_uniform()) else {
        return Ok(None);
    };
    let reshape = node.inputs[0].node;
    let single_use = |outlet: OutletId| {
        model.nodes[outlet.node].outputs[outlet.slot]
            .successors
            .len()
            == 1
            && !model.outputs.contains(&outlet)
    };
    if op.linalg_op != BinOp::Max
        || floor.datum_type() != f32::datum_type()
        || model.nodes[reshape].op_as::<IntoShape>().is_none()
        || !single_use(node.inputs[0])
    {
        return Ok(None);
    }
    let product = model.nodes[reshape].inputs[0];
    let Some(matmul) = model.nodes[product.node].op_as::<OptMatMul>() else {
        return Ok(None);
    };
    let stores_last = matches!(matmul.micro_ops.last(), Some(ProtoFusedSpec::Store(_)));
    if matmul.c_fact.datum_type != f32::datum_type() || !stores_last || !single_use(product) {
        return Ok(None);
    }
    Ok(Some((product.node, reshape, floor)))
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

    fn run(model: TypedModel, x: &Tensor) -> Tensor {
        let out = model
            .into_runnable()
            .unwrap()
            .run(tvec!(x.clone().into_tvalue()))
            .unwrap();
        out[0].clone().into_tensor()
    }

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
                install(&mut model).unwrap(),
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
