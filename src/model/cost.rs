//! What a forward pass costs, by tract's own cost model, and what this CPU can do at best:
//! together they say how much of the machine a measured throughput uses (`iscamd bench`).

use crate::error::with_causes;
use std::path::Path;
use std::time::Instant;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::{AxesMapping, Cost};
use tract_onnx::tract_core::ops::einsum::EinSum;

use crate::error::{Error, Result};

/// Multiply-adds of one forward pass of the ONNX model at `path` on a `[1,3,S,S]` input:
/// the sum of every node's FMA cost (whatever its datum type) in the decluttered graph.
pub fn forward_macs(path: &Path, input_size: usize) -> Result<u64> {
    let bad = |e: TractError| Error::model(path, with_causes(e.as_ref()));
    let s = input_size;
    let model = tract_onnx::onnx()
        .model_for_path(path)
        .and_then(|m| {
            m.with_input_fact(
                0,
                InferenceFact::dt_shape(f32::datum_type(), tvec![1, 3, s, s]),
            )
        })
        .and_then(|m| m.into_typed())
        .and_then(|m| m.into_decluttered())
        .map_err(bad)?;
    let mut macs = 0u64;
    for node in model.nodes() {
        let inputs = model.node_input_facts(node.id).map_err(bad)?;
        for (cost, count) in node.op.cost(&inputs).map_err(bad)? {
            if let Cost::FMA(_) = cost {
                macs += count.to_i64().map_err(|e| Error::model(path, e))?.max(0) as u64;
            }
        }
    }
    Ok(macs)
}

/// GFLOP/s (2 flops per multiply-add) of an `n`×`n`×`n` single-precision matrix product
/// through tract's optimised kernels on one thread: the best of `repeat` runs after one
/// warm-up. The practical peak that convolutions (which tract lowers to such products)
/// can approach.
pub fn sgemm_gflops(n: usize, repeat: usize) -> Result<f64> {
    let bad = |e: TractError| Error::Inference(with_causes(e.as_ref()));
    let mut model = TypedModel::default();
    let a = model.add_source("a", f32::fact([n, n])).map_err(bad)?;
    let b = model
        .add_const(
            "b",
            Tensor::from(tract_ndarray::Array2::<f32>::from_elem((n, n), 0.5)),
        )
        .map_err(bad)?;
    let axes: AxesMapping = "mk,kn->mn".parse().map_err(bad)?;
    let c = model
        .wire_node("c", EinSum::new(axes, f32::datum_type()), &[a, b])
        .map_err(bad)?;
    model.select_output_outlets(&c).map_err(bad)?;
    let plan = model
        .into_optimized()
        .and_then(|m| m.into_runnable())
        .map_err(bad)?;
    let input: TValue = Tensor::from(tract_ndarray::Array2::<f32>::from_elem((n, n), 1.0)).into();
    plan.run(tvec![input.clone()]).map_err(bad)?;
    let mut best = f64::MAX;
    for _ in 0..repeat.max(1) {
        let t0 = Instant::now();
        plan.run(tvec![input.clone()]).map_err(bad)?;
        best = best.min(t0.elapsed().as_secs_f64());
    }
    Ok(2.0 * (n * n * n) as f64 / best / 1e9)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_matrix_product_runs_and_is_timed() {
        let g = super::sgemm_gflops(64, 2).unwrap();
        assert!(g.is_finite() && g > 0.0, "{g}");
    }
}
