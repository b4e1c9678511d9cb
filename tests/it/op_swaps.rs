//! iscamd's ops still find what they replace in tract's plans of the shipped models. A
//! tract update (or a change in how tract optimises these models) that turned a swap off
//! would otherwise only show as a slower device: here it fails.

use crate::common::{F32_MODEL, INT8_MODEL};
use iscamd::model::{BackendOptions, Classifier, ModelOptions, TractOptions};

/// The model with every one of iscamd's ops put in (a measured choice may leave some out).
fn with_every_op(name: &str) -> Classifier {
    crate::common::load_with_every_op(&crate::common::model_path(name))
}

fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx512f");
    #[cfg(not(target_arch = "x86_64"))]
    return false;
}

#[test]
fn every_swap_replaces_nodes_on_the_shipped_models() {
    let f32_swaps = with_every_op(F32_MODEL)
        .op_swaps()
        .expect("tract, tuned by default");
    let int8_swaps = with_every_op(INT8_MODEL)
        .op_swaps()
        .expect("tract, tuned by default");
    assert_eq!(
        f32_swaps.0.len(),
        iscamd::model::kernels::OWN_OPS.len(),
        "{f32_swaps}"
    );
    eprintln!("f32: {f32_swaps}\nint8: {int8_swaps}");
    for (name, f32_swap) in &f32_swaps.0 {
        let int8_swap = int8_swaps.get(name).expect("the same swaps on every model");
        assert!(
            !f32_swap.missed() && !int8_swap.missed(),
            "{name} found its op and replaced none of it: f32 {f32_swap:?}, int8 {int8_swap:?}"
        );
        match *name {
            // SqueezeNet has no depthwise convolution: tests/it/zoo.rs checks that op on the
            // int8 zoo models, and its unit test against tract's lowering.
            "depthwise" => {
                assert_eq!(f32_swap.candidates + int8_swap.candidates, 0);
                continue;
            }
            // Nor a float op with a constant between int8 tensors (zoo.rs again); the op
            // also takes tract's own tables (7 in the int8 SqueezeNet) where iscamd has a
            // faster lookup for the CPU (NEON; AVX-512 VBMI), none elsewhere. That it
            // missed none is checked above.
            "lookup-table" => {
                assert_eq!(f32_swap.candidates, 0);
                continue;
            }
            // Offered only where its runs are copied with AVX-512 moves.
            "float-im2col" if !avx512() => {
                assert_eq!(f32_swap.candidates + int8_swap.candidates, 0);
                continue;
            }
            // Nor weights so large that tract leaves their sums to every pass (ResNet's
            // last convolutions): its unit test runs tract's own optimiser on such a plan.
            // Nor a hard-swish (MobileNetV3): its unit test, and zoo.rs's MobileNetV3-Small.
            "constant-chains" | "hard-swish" => {
                assert_eq!(f32_swap.candidates + int8_swap.candidates, 0);
                continue;
            }
            _ => {}
        }
        assert!(
            f32_swap.replaced + int8_swap.replaced > 0,
            "{name} replaced nothing on either shipped model: f32 {f32_swap:?}, int8 {int8_swap:?}"
        );
    }
}

/// The kernel policy belongs to each model: a stock model loaded beside a tuned one (in
/// either order) runs tract as it ships, and the tuned one keeps iscamd's ops.
#[test]
fn each_model_keeps_its_own_kernel_policy() {
    use iscamd::model::kernels::{Choice, Matmul, Policy};
    // tract's matrix kernels and every own op, as given: a measured choice may leave the
    // own ops out on a busy machine, and then there would be nothing to tell apart.
    let every_own_op = Choice::parse("f32=tract,i32=tract").unwrap();
    let open = |kernels| {
        Classifier::load(&ModelOptions {
            path: crate::common::model_path(INT8_MODEL),
            backend: BackendOptions::Tract(TractOptions {
                kernels,
                matmul: Matmul::Forced(every_own_op),
                ..Default::default()
            }),
            ..Default::default()
        })
        .expect("model loads")
    };
    let (stock, tuned, stock_again) = (
        open(Policy::Stock),
        open(Policy::Tuned),
        open(Policy::Stock),
    );
    assert!(stock.op_swaps().is_none() && stock_again.op_swaps().is_none());
    let swaps = tuned.op_swaps().expect("the tuned model's swaps");
    assert!(swaps.0.iter().any(|(_, s)| s.replaced > 0), "{swaps}");
    assert!(stock.backend().contains("stock"), "{}", stock.backend());
    assert!(!tuned.backend().contains("stock"), "{}", tuned.backend());
}
