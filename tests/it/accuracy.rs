//! The model as users run it, from the JPEG files: accuracy on the 250 labelled images
//! against onnxruntime's figures (../shared/models/MODELS.md), preprocessing against the
//! reference tensors, and heatmaps end to end.

use crate::common::{
    accuracy, image, load, mean_map_r, npy, pearson, reference_dir, reference_images, F32_MODEL,
    INT8_MODEL,
};
use iscamd::analysis::Analysis;
use iscamd::cam::CamParams;
use iscamd::model::top_k;
use iscamd::source::decode_image;
use tract_onnx::prelude::tract_ndarray::{Array3, Array4, Ix4};

fn check(model: &str, expected_top1: usize, expected_top5: usize) -> Vec<(String, usize)> {
    let (top1, top5, predictions) = accuracy(&load(model));
    println!("{model}: top-1 {top1}/250, top-5 {top5}/250 (onnxruntime: {expected_top1}, {expected_top5})");
    assert!(
        top1.abs_diff(expected_top1) <= 2,
        "{model}: top-1 {top1} vs onnxruntime {expected_top1}"
    );
    assert!(
        top5.abs_diff(expected_top5) <= 2,
        "{model}: top-5 {top5} vs onnxruntime {expected_top5}"
    );
    predictions
}

#[test]
fn f32_accuracy_matches_onnxruntime() {
    check(F32_MODEL, 165, 211);
}

/// CI checks the int8 model's top-1 against ONNX Runtime image by image
/// (tests/it/ort_backend.rs, `int8_logits_agree_with_tract`); this is the aggregate figure.
#[test]
#[ignore = "heavy: scripts/test-heavy.sh"]
fn int8_accuracy_matches_onnxruntime() {
    check(INT8_MODEL, 168, 212);
}

/// Our JPEG decoding and PIL-style resize against the reference tensors.
#[test]
fn preprocessing_is_close_to_pil() {
    let classifier = load(F32_MODEL);
    for name in reference_images() {
        let ours = classifier
            .preprocess()
            .tensor(&decode_image(&image(&name)).unwrap());
        let reference = npy(&reference_dir().join(format!("{name}.input.npy")));
        let diffs: Vec<f32> = ours
            .iter()
            .zip(reference.iter())
            .map(|(a, b)| (a - b).abs())
            .collect();
        let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
        let max = diffs.iter().copied().fold(0.0, f32::max);
        println!("{name}: input vs PIL reference: mean |diff| {mean:.3}, max {max} (0..255 scale)");
        assert!(
            mean < 2.0,
            "{name}: preprocessing is off by {mean} on average"
        );
    }
}

/// From the JPEG to the map: r ≥ 0.98 against the reference maps.
#[test]
fn heatmaps_end_to_end_from_jpeg() {
    let classifier = load(F32_MODEL);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    for name in reference_images() {
        let analysis =
            Analysis::of_frame(&classifier, decode_image(&image(&name)).unwrap()).unwrap();
        let reference_input = npy(&reference_dir().join(format!("{name}.input.npy")))
            .into_dimensionality::<Ix4>()
            .unwrap();
        let reference_top1 = top_k(
            &iscamd::model::softmax(
                &classifier
                    .forward(reference_input.view())
                    .unwrap()
                    .logits
                    .row(0)
                    .to_vec(),
            ),
            1,
        )[0];
        let params = CamParams::new("iscam", Some(4), Some(32)).unwrap();
        let e = analysis
            .explain(&classifier, Some(reference_top1), &params, threads)
            .unwrap();
        let reference = npy(&reference_dir().join(format!("{name}.iscam-n4-k32var.prob.map.npy")));
        let r = pearson(e.map.as_slice().unwrap(), reference.as_slice().unwrap());
        println!("{name}: iscam-n4-k32var from JPEG vs reference r = {r:.4}");
        assert!(r >= 0.98, "{name}: end-to-end r = {r}");
    }
}

/// A batch run as batch-1 passes (the default) gives what tract's batched and symbolic
/// plans give, image for image.
/// Three images as `classifier` takes them, one by one and as a batch.
fn three_images(classifier: &iscamd::model::Classifier) -> (Vec<Array3<f32>>, Array4<f32>) {
    use tract_onnx::prelude::tract_ndarray::{stack, Axis};
    let inputs: Vec<_> = [
        "n01440764_tench",
        "n02643566_lionfish",
        "n04259630_sombrero",
    ]
    .iter()
    .map(|stem| {
        classifier
            .preprocess()
            .tensor(&decode_image(&image(stem)).unwrap())
    })
    .collect();
    let views: Vec<_> = inputs.iter().map(|x| x.view()).collect();
    let batch = stack(Axis(0), &views).unwrap();
    (inputs, batch)
}

#[test]
fn split_batches_match_batched_plans() {
    use iscamd::model::{BackendOptions, BatchPlan, Classifier, ModelOptions, TractOptions};
    use tract_onnx::prelude::tract_ndarray::Axis;

    let load_as = |batch_plan| {
        Classifier::load(&ModelOptions {
            path: crate::common::model_path(F32_MODEL),
            backend: BackendOptions::Tract(TractOptions {
                batch_plan,
                ..Default::default()
            }),
            ..Default::default()
        })
        .expect("model loads")
    };
    let split = load_as(BatchPlan::Split);
    let (inputs, batch) = three_images(&split);
    let reference = split.forward(batch.view()).unwrap();
    let reference_activations = reference.activations.as_ref().expect("CAM layer");
    assert_eq!(reference.logits.nrows(), 3);
    for plan in [BatchPlan::Batched, BatchPlan::Symbolic] {
        let other = load_as(plan).forward(batch.view()).unwrap();
        let logit_diff = (&reference.logits - &other.logits)
            .iter()
            .fold(0f32, |m, d| m.max(d.abs()));
        let activation_diff = (reference_activations - other.activations.as_ref().unwrap())
            .iter()
            .fold(0f32, |m, d| m.max(d.abs()));
        println!("{plan:?}: max |Δ logit| {logit_diff:e}, max |Δ activation| {activation_diff:e}");
        assert!(logit_diff < 1e-3, "{plan:?}: logits differ by {logit_diff}");
        assert!(
            activation_diff < 1e-3,
            "{plan:?}: activations differ by {activation_diff}"
        );
    }
    for (i, x) in inputs.iter().enumerate() {
        let one = split.forward(x.view().insert_axis(Axis(0))).unwrap();
        assert_eq!(one.logits.row(0), reference.logits.row(i), "image {i}");
    }
}

/// Quantisation keeps the explanations: the reduced-N default map from the int8 model
/// against the f32 model's, for the f32 model's top-1 class, on every 50th image.
#[test]
fn int8_maps_follow_f32_maps() {
    let mean = mean_map_r(&load(F32_MODEL), &load(INT8_MODEL));
    println!("mean r(int8, f32): {mean:.4}");
    assert!(
        mean >= 0.95,
        "int8 maps drift from f32 maps: mean r = {mean}"
    );
}

/// iscamd's replacements inside tract's plans (max-pooling, int8 packing, quantisation and
/// requantisation, ReLU folding; src/model/tract/) change no value: the int8 model's logits
/// and activations are bit for bit tract's own, the f32 model's equal up to the summation
/// order of the matrix kernels (which iscamd's measured choice may change), in every way of
/// running a batch (the batched plans pack several images per op) — with the kernels and ops
/// measured fastest here, and with every own op on tract's kernels (a measured choice may
/// leave an op out).
#[test]
fn tuned_plans_compute_what_stock_tract_computes() {
    use iscamd::model::kernels::{Choice, Matmul, Policy};
    use iscamd::model::{BackendOptions, BatchPlan, Classifier, ModelOptions, TractOptions};

    let forward = |model, kernels, matmul, batch_plan, batch: &Array4<f32>| {
        let classifier = Classifier::load(&ModelOptions {
            path: crate::common::model_path(model),
            backend: BackendOptions::Tract(TractOptions {
                batch_plan,
                kernels,
                matmul,
                ..Default::default()
            }),
            ..Default::default()
        })
        .expect("model loads");
        classifier.forward(batch.view()).unwrap()
    };
    let (_, batch) = three_images(&load(F32_MODEL));
    let every_op = Matmul::Forced(Choice::default());
    for (model, tolerance) in [(INT8_MODEL, 0.0), (F32_MODEL, 1e-4)] {
        for plan in [BatchPlan::Split, BatchPlan::Batched, BatchPlan::Symbolic] {
            for matmul in [Matmul::default(), every_op.clone()] {
                let stock = forward(model, Policy::Stock, Matmul::default(), plan, &batch);
                let tuned = forward(model, Policy::Tuned, matmul.clone(), plan, &batch);
                let (stock_activations, tuned_activations) =
                    (stock.activations.unwrap(), tuned.activations.unwrap());
                for (what, stock, tuned) in [
                    (
                        "logits",
                        stock.logits.view().into_dyn(),
                        tuned.logits.view().into_dyn(),
                    ),
                    (
                        "activations",
                        stock_activations.view().into_dyn(),
                        tuned_activations.view().into_dyn(),
                    ),
                ] {
                    let scale = stock.iter().fold(0f32, |m, v| m.max(v.abs()));
                    let diff = (&tuned - &stock).iter().fold(0f32, |m, d| m.max(d.abs()));
                    println!(
                        "{model} {plan:?} {matmul:?} {what}: max |Δ| {diff:e} of max |v| {scale}"
                    );
                    assert!(scale > 0.0, "{model} {plan:?}: all-zero {what}");
                    assert!(
                        diff <= tolerance * scale,
                        "{model} {plan:?} {matmul:?}: {what} differ by {diff}"
                    );
                }
            }
        }
    }
}
