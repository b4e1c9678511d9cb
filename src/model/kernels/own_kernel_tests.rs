//! The checks every one of iscamd's own int8 matrix kernels passes: its products, and the
//! steps tract fuses into its tiles, equal tract's own plan and plain Rust, on shapes off
//! its tile.

use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::matmul::optimized::OptMatMul;
use tract_onnx::tract_core::ops::{cast::cast, einsum::EinSum, math, quant::scale};

use super::{optimising_with, Candidate, Choice, Policy};
use tract_onnx::tract_core::tract_linalg::{mmm::RoundingPolicy, Scaler};

const K: usize = 41;

/// (M, N) of the products: tract puts the longer of M and N on the A side, so the first
/// has the weights as A (the kernel's panel header from constants, rows contiguous in C),
/// the second the activations (packed at run time by iscamd's packer, which marks their
/// panels when the weights hold no −128; columns contiguous in C), as 1×1 convolutions
/// over a large image have them. Neither is a multiple of a tile.
const SHAPES: [(usize, usize); 2] = [(29, 13), (19, 23)];

/// `W·x + bias`, then, with `requantise`, scaled, clamped and cast to bytes as a
/// per-tensor int8 convolution ends: what tract fuses into the kernel's tile.
fn model(w: &Tensor, n: usize, requantise: bool) -> TypedModel {
    let m = w.shape()[0];
    let mut model = TypedModel::default();
    let x = model
        .add_source("x", i8::datum_type().fact([K, n]))
        .unwrap();
    let w = model.add_const("w", w.clone()).unwrap();
    let axes: AxesMapping = "mk,kn->mn".parse().unwrap();
    let op = EinSum::new(axes, i32::datum_type());
    let mut c = model.wire_node("matmul", op, &[w, x]).unwrap()[0];
    let bias: Vec<i32> = (0..m as i32).map(|i| 1000 * i - 9000).collect();
    let bias = tract_ndarray::Array2::from_shape_vec((m, 1), bias).unwrap();
    let bias = model.add_const("bias", bias.into_tensor()).unwrap();
    c = model.wire_node("add", math::add(), &[c, bias]).unwrap()[0];
    if requantise {
        let mut wire = |name: &str, op: TypedBinOp, operand: Tensor| {
            let operand = model.add_const(format!("{name}.k"), operand).unwrap();
            let inputs = match name {
                "scale" => [operand, c],
                _ => [c, operand],
            };
            c = model.wire_node(name, op, &inputs).unwrap()[0];
        };
        wire("scale", scale(), tensor2(&[[0.0007f32]]));
        wire("max", math::max(), tensor2(&[[-128i32]]));
        wire("min", math::min(), tensor2(&[[127i32]]));
        c = model
            .wire_node("cast", cast(i8::datum_type()), &[c])
            .unwrap()[0];
    }
    model.select_output_outlets(&[c]).unwrap();
    model
}

/// The model's plan with the kernel `name` of `tier`, checked to run it, and tract's own.
fn plans(
    model: TypedModel,
    tier: &'static str,
    name: &str,
) -> (Arc<TypedRunnableModel>, Arc<TypedRunnableModel>) {
    let ours = Candidate {
        tier,
        widest: false,
    };
    let choice = Choice::default().with(DatumType::I32, Some(ours));
    let (optimised, _) = optimising_with(Policy::Tuned, choice, || model.clone().into_optimized());
    // iscamd's packer of activations, which knows whether the weights hold a −128.
    let mut optimised = optimised.unwrap();
    crate::model::tract::install_row_packing(&mut optimised).unwrap();
    let runs_ours = optimised.nodes.iter().any(|node| {
        node.op_as::<OptMatMul>()
            .is_some_and(|op| op.mmm.iter().any(|k| k.name() == name))
    });
    assert!(runs_ours, "the plan does not run {name}:\n{optimised}");
    let tracts = model.into_optimized().unwrap();
    (
        optimised.into_runnable().unwrap(),
        tracts.into_runnable().unwrap(),
    )
}

fn bytes(shape: [usize; 2], seed: u64, low: i8) -> Tensor {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let values = (0..shape[0] * shape[1])
        .map(|_| rng.random_range(low..=i8::MAX))
        .collect();
    tract_ndarray::Array2::from_shape_vec(shape, values)
        .unwrap()
        .into_tensor()
}

fn run(plan: &Arc<TypedRunnableModel>, x: &Tensor) -> Tensor {
    plan.run(tvec!(x.clone().into_tvalue()))
        .unwrap()
        .remove(0)
        .into_tensor()
}

/// `W·x + bias` computed plainly.
fn product(w: &Tensor, x: &Tensor) -> Tensor {
    let (w, x) = (
        w.to_plain_array_view::<i8>().unwrap(),
        x.to_plain_array_view::<i8>().unwrap(),
    );
    let (rows, columns) = (w.shape()[0], x.shape()[1]);
    let c = tract_ndarray::Array2::from_shape_fn((rows, columns), |(m, n)| {
        let dot: i32 = (0..K).map(|k| w[[m, k]] as i32 * x[[k, n]] as i32).sum();
        dot + 1000 * m as i32 - 9000
    });
    c.into_tensor()
}

/// Each of [`SHAPES`], with and without a −128 among the activations, and weights without
/// −128, then with one in rows 8–15; K = 41: ten blocks of four and one, so five pairs
/// and one block alone where a kernel pairs them.
pub fn products_and_fused_steps_equal_tracts(tier: &'static str, name: &str) {
    for (m, n) in SHAPES {
        let clean = bytes([m, K], 2, -127);
        let mut mixed = clean.clone();
        mixed.to_plain_array_view_mut::<i8>().unwrap()[[9, 3]] = i8::MIN;
        for (activations, low) in [("any", i8::MIN), ("no -128", -127)] {
            let x = bytes([K, n], 1, low);
            for (weights, w) in [("no -128", &clean), ("one -128", &mixed)] {
                let case = format!("{m}×{n}, activations {activations}, weights {weights}");
                let (ours, tracts) = plans(model(w, n, false), tier, name);
                let expected = product(w, &x);
                assert_eq!(run(&tracts, &x), expected, "{case}: tract's own plan");
                assert_eq!(run(&ours, &x), expected, "{case}");
                let (ours, tracts) = plans(model(w, n, true), tier, name);
                assert_eq!(run(&ours, &x), run(&tracts, &x), "{case}, requantised");
            }
        }
    }
}

/// −127 × −128 everywhere: the largest products, summed over every K, with the weights on
/// either side.
pub fn the_largest_products_do_not_overflow(tier: &'static str, name: &str) {
    for (m, n) in SHAPES {
        let w = tract_ndarray::Array2::from_elem((m, K), -127i8).into_tensor();
        let x = tract_ndarray::Array2::from_elem((K, n), i8::MIN).into_tensor();
        let (ours, _) = plans(model(&w, n, false), tier, name);
        assert_eq!(run(&ours, &x), product(&w, &x), "{m}×{n}");
    }
}

/// A kernel's rescaling of `LANES` values at a time (`scale(values, shift, mult)`) equals
/// tract's `Scaler` with round-half-to-even, on −5000..5000 and `extremes`, for shifts that
/// shrink, keep and grow the values: 2^30 puts ties within them; the others are scales of
/// int8 files.
pub fn rescaling_equals_tracts<const LANES: usize>(
    extremes: &[i32],
    scale: impl Fn(&[i32], isize, i32) -> [i32; LANES],
) {
    let mut values: Vec<i32> = (-5000..5000).collect();
    values.extend(extremes);
    values.resize(values.len().next_multiple_of(LANES), 0);
    let scalings = [
        (-31, 0x4000_0000),
        (0, 0x4000_0000),
        (1, 0x4000_0000),
        (3, 0x4000_0000),
        (30, 0x5d79_8700),
        (7, 0x5d79_8700),
        (9, 0x6e63_1d80),
        (31, 0x7fff_ff80),
    ];
    for (shift, mult) in scalings {
        let scaler = Scaler::from_fuse_params(shift, RoundingPolicy::Even, mult);
        for chunk in values.chunks(LANES) {
            let tracts: Vec<i32> = chunk.iter().map(|&v| scaler * v).collect();
            let ours = scale(chunk, shift, mult);
            assert_eq!(
                ours[..],
                tracts[..],
                "{chunk:?} scaled by ({shift}, {mult:#x})"
            );
        }
    }
}
