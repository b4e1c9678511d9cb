//! The zero-pass `cam` method and class-aware channel selection against an outside
//! computation: NumPy on onnxruntime's activations with the weights onnx.numpy_helper
//! reads (tests/support/cam_numpy.py), on SqueezeNet (f32 and int8) and on small graphs
//! with the other head shapes built by the script.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{load, load_path, model_path, npy, pearson, reference_dir, reference_images};
use crate::common::{F32_MODEL, INT8_MODEL};
use iscamd::cam::{self, CamParams, Method, Selection};
use iscamd::model::{softmax, top_k, Classifier};
use tract_onnx::prelude::tract_ndarray::{Array3, Array4, Axis, Ix4};

fn script(args: &[&Path]) -> String {
    let out = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/cam_numpy.py"))
        .args(args)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "cam_numpy.py failed (scripts/setup.sh installs onnx and onnxruntime): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The input without its batch axis, its logits and its CAM-layer activations.
fn forward(classifier: &Classifier, input: Array4<f32>) -> (Array3<f32>, Vec<f32>, Array3<f32>) {
    let forward = classifier.forward(input.view()).unwrap();
    let logits = forward.logits.index_axis(Axis(0), 0).to_vec();
    let activations = forward.activations.unwrap().index_axis_move(Axis(0), 0);
    (input.index_axis_move(Axis(0), 0), logits, activations)
}

/// The map of `class` from one forward pass's input, logits and activations.
fn explain(
    classifier: &Classifier,
    (x, logits, activations): (&Array3<f32>, &[f32], &Array3<f32>),
    class: usize,
    params: &CamParams,
) -> iscamd::Result<cam::Explanation> {
    cam::explain(classifier, x, logits, activations.view(), class, params, 2)
}

/// iscamd's `cam` map of the top-1 class of `input`, that class, and the CAM layer's
/// activations (raw little-endian f32).
fn cam_map(classifier: &Classifier, input: Array4<f32>) -> (usize, Vec<f32>, Vec<u8>) {
    let (x, logits, activations) = forward(classifier, input);
    let class = top_k(&softmax(&logits), 1)[0];
    let params = cam::spec::parse("cam").unwrap();
    let e = explain(classifier, (&x, &logits, &activations), class, &params).unwrap();
    assert_eq!((e.passes, e.params.method), (0, Method::Cam));
    let raw = activations.iter().flat_map(|v| v.to_le_bytes()).collect();
    (class, e.map.iter().copied().collect(), raw)
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("iscamd-cam-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn squeezenet_cam_maps_equal_numpy_from_the_onnx_weights() {
    let dir = scratch("squeezenet");
    for model in [F32_MODEL, INT8_MODEL] {
        let classifier = load(model);
        let head = classifier.linear_head().unwrap();
        println!("{model}: head {}", head.description);
        for name in reference_images() {
            let input_path = reference_dir().join(format!("{name}.input.npy"));
            let input = npy(&input_path).into_dimensionality::<Ix4>().unwrap();
            let (class, ours, activations) = cam_map(&classifier, input);
            let ours_act = dir.join(format!("{name}.act.f32"));
            std::fs::write(&ours_act, activations).unwrap();
            let model_file = model_path(model);
            let numpy = |tag: &str, act: Option<&Path>| {
                let out = dir.join(format!("{name}.{tag}.npy"));
                let mut args = vec![Path::new("squeezenet"), &model_file, &input_path, &out];
                args.extend(act);
                let class: usize = script(&args).trim().parse().unwrap();
                (class, pearson(&ours, npy(&out).as_slice().unwrap()))
            };
            // The weights alone: NumPy on iscamd's activations.
            let (_, r_weights) = numpy("weights", Some(&ours_act));
            // Everything: NumPy on onnxruntime's activations.
            let (theirs_class, r) = numpy("ort", None);
            println!("{model} {name}: r = {r_weights:.6} on iscamd's activations, {r:.6} on onnxruntime's");
            assert_eq!(class, theirs_class, "{model} {name}: top-1 class");
            assert!(
                r_weights >= 0.9999,
                "{model} {name}: r = {r_weights} < 0.9999"
            );
            // f32: the same arithmetic. int8: tract and onnxruntime round the quantized
            // layers before the CAM layer each their own way (r ≥ 0.998 seen).
            let floor = if model == F32_MODEL { 0.9999 } else { 0.99 };
            assert!(r >= floor, "{model} {name}: r = {r} < {floor}");
        }
    }
}

#[test]
fn gemm_and_matmul_heads_give_numpy_maps_and_other_heads_a_named_error() {
    let dir = scratch("toys");
    script(&[Path::new("toys"), &dir]);
    let input = npy(&dir.join("toy.input.npy"))
        .into_dimensionality::<Ix4>()
        .unwrap();
    for head in ["gemm", "matmul"] {
        let classifier = load_path(&dir.join(format!("{head}.onnx")));
        let (class, ours, _) = cam_map(&classifier, input.clone());
        let expected_class: usize = std::fs::read_to_string(dir.join(format!("{head}.class.txt")))
            .unwrap()
            .parse()
            .unwrap();
        let theirs = npy(&dir.join(format!("{head}.map.npy")));
        assert_eq!(class, expected_class, "{head}");
        let max_diff = ours
            .iter()
            .zip(theirs.iter())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        let r = pearson(&ours, theirs.as_slice().unwrap());
        println!("{head}: r = {r:.6}, max |diff| = {max_diff:.2e}");
        assert!(
            r >= 0.9999 && max_diff < 1e-3,
            "{head}: r = {r}, max diff {max_diff}"
        );
    }
    let classifier = load_path(&dir.join("maxpool.onnx"));
    let e = classifier.linear_head().unwrap_err().to_string();
    assert!(e.contains("MaxPool") && e.contains("features"), "{e}");
    // The error reaches whoever asks for a cam map or a class-aware selection.
    let (input, logits, activations) = forward(&classifier, input);
    for spec in ["cam", "scorecam:k=2,select=contribution"] {
        let params = cam::spec::parse(spec).unwrap();
        let err = explain(&classifier, (&input, &logits, &activations), 0, &params)
            .unwrap_err()
            .to_string();
        assert!(err.contains("MaxPool"), "{spec}: {err}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn contribution_selection_follows_the_class_and_variance_does_not() {
    let classifier = load(F32_MODEL);
    let name = &reference_images()[0];
    let input = npy(&reference_dir().join(format!("{name}.input.npy")))
        .into_dimensionality::<Ix4>()
        .unwrap();
    let (x, logits, activations) = forward(&classifier, input);
    let ranked = top_k(&softmax(&logits), 2);
    let chosen = |select: Selection, class: usize| {
        let mut params = CamParams::new("scorecam", None, Some(8)).unwrap();
        params.select = select;
        let e = explain(&classifier, (&x, &logits, &activations), class, &params).unwrap();
        assert_eq!(e.passes, 8);
        e.channels_used
    };
    let by_variance: Vec<_> = ranked
        .iter()
        .map(|&c| chosen(Selection::Variance, c))
        .collect();
    let by_weight: Vec<_> = ranked
        .iter()
        .map(|&c| chosen(Selection::Contribution, c))
        .collect();
    assert_eq!(by_variance[0], by_variance[1]);
    assert_ne!(by_weight[0], by_weight[1]);
    // The channels chosen for the top class are those its weights rank highest.
    let head = classifier.linear_head().unwrap();
    let contributions = head.contributions(activations.view(), ranked[0]);
    let mut best: Vec<usize> = top_k(&contributions, 8);
    best.sort();
    assert_eq!(by_weight[0], best);
}
