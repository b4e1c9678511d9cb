//! The model zoo of ../shared/models/zoo: torchvision architectures with random weights
//! (ResNet-18, MobileNetV2, MobileNetV3-Small, EfficientNet-B0, ShuffleNetV2, SqueezeNet
//! 1.1), each with ONNX Runtime's logits and torchcam's maps for three input tensors. For
//! every model: the CAM layer iscamd finds is the index's, its logits are ONNX Runtime's,
//! its `cam` and Score-CAM maps are torchcam's, and an MLP head is refused by `cam`; its
//! int8 files (models/quantize.py: per-tensor, per-channel, QDQ) run on tract's integer
//! kernels with ONNX Runtime's top-1 on the same file.

use std::path::PathBuf;

use crate::common::{load_path, model_dir, npy, pearson};
use iscamd::cam::{self, CamParams, Weighting};
use iscamd::model::tail::Tail;
use iscamd::model::Classifier;
use tract_onnx::prelude::tract_ndarray::{Array2, Array3, Axis, Ix4};

#[derive(serde::Deserialize)]
struct Model {
    file: String,
    // Read by the int8 tests, which need ONNX Runtime (feature `ort`).
    #[cfg_attr(not(feature = "ort"), allow(dead_code))]
    mean: Vec<f32>,
    #[cfg_attr(not(feature = "ort"), allow(dead_code))]
    std: Vec<f32>,
    cam_layer: String,
    cam_head: String,
    refs: Vec<Reference>,
}

#[derive(serde::Deserialize)]
struct Reference {
    input: String,
    class: usize,
    logits: String,
    scorecam: String,
    cam: Option<String>,
}

fn zoo_dir() -> PathBuf {
    model_dir().join("zoo")
}

fn model(file: &str) -> Model {
    let index = std::fs::read(zoo_dir().join("index.json")).expect("zoo/index.json");
    let models: Vec<Model> = serde_json::from_slice(&index).expect("zoo index");
    models
        .into_iter()
        .find(|m| m.file == file)
        .unwrap_or_else(|| panic!("{file} is not in zoo/index.json"))
}

/// One reference input run through the model: the input, logits and CAM activations.
struct Run {
    x: Array3<f32>,
    logits: Vec<f32>,
    activations: Array3<f32>,
}

fn run(classifier: &Classifier, reference: &Reference) -> Run {
    let input = npy(&zoo_dir().join(&reference.input))
        .into_dimensionality::<Ix4>()
        .unwrap();
    let forward = classifier.forward(input.view()).unwrap();
    Run {
        x: input.index_axis_move(Axis(0), 0),
        logits: forward.logits.index_axis(Axis(0), 0).to_vec(),
        activations: forward
            .activations
            .expect("the CAM layer's activations")
            .index_axis_move(Axis(0), 0),
    }
}

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The model loaded with no CAM layer named: the one iscamd finds must be the index's.
fn load_and_check_layer(m: &Model) -> Classifier {
    let classifier = load_path(&zoo_dir().join(&m.file));
    let layer = classifier.cam_layer().expect("a CAM layer is found");
    println!("{}: CAM layer {layer}", m.file);
    assert_eq!(layer.name, m.cam_layer, "{}: the CAM layer found", m.file);
    classifier
}

/// Logits within 1e-4 of the largest |logit| of ONNX Runtime's (float summation order).
fn check_logits(m: &Model, r: &Reference, run: &Run) {
    let expected = npy(&zoo_dir().join(&r.logits));
    let expected = expected.as_slice().unwrap();
    let scale = expected.iter().fold(0.0f32, |a, &v| a.max(v.abs()));
    let diff = run
        .logits
        .iter()
        .zip(expected)
        .fold(0.0f32, |a, (x, y)| a.max((x - y).abs()));
    println!(
        "{} {}: logits differ by {diff} (scale {scale})",
        m.file, r.input
    );
    assert!(
        diff <= 1e-4 * scale.max(1.0),
        "{}: logits differ by {diff}",
        m.file
    );
}

/// `Σ_k weights_k A_k` over the run's activations.
fn weighted_sum(run: &Run, weights: &[f64]) -> Array2<f32> {
    let (_, h, w) = run.activations.dim();
    let mut sum = Array2::<f64>::zeros((h, w));
    for (a, &wk) in run.activations.axis_iter(Axis(0)).zip(weights) {
        sum.zip_mut_with(&a, |s, &v| *s += wk * v as f64);
    }
    sum.mapv(|v| v as f32)
}

fn map_r(ours: &Array2<f32>, reference: &str) -> f64 {
    let theirs = npy(&zoo_dir().join(reference));
    assert_eq!(ours.shape(), theirs.shape(), "{reference}: map shape");
    pearson(ours.as_slice().unwrap(), theirs.as_slice().unwrap())
}

fn explain(
    classifier: &Classifier,
    run: &Run,
    class: usize,
    spec: &str,
) -> iscamd::Result<cam::Explanation> {
    let params = match spec {
        "scorecam" => CamParams::new("scorecam", None, Some(0)),
        other => CamParams::new(other, None, None),
    }
    .unwrap();
    cam::explain(
        classifier,
        &run.x,
        &run.logits,
        run.activations.view(),
        class,
        &params,
        threads(),
    )
}

/// The layer, the logits of every reference input, the `cam` map (or its refusal) on
/// each, and Score-CAM over all channels on the first `scorecam_images` inputs.
fn check_model(file: &str, scorecam_images: std::ops::Range<usize>) {
    let m = model(file);
    let classifier = load_and_check_layer(&m);
    for (i, r) in m.refs.iter().enumerate() {
        let run = run(&classifier, r);
        check_logits(&m, r, &run);
        let cam = explain(&classifier, &run, r.class, "cam");
        match (&r.cam, cam) {
            (Some(reference), Ok(e)) => {
                // torchcam's CAM is `Σ_k w_k A_k` unclipped (its `relu` is off), min-max
                // normalised; iscamd's map is the same sum clipped at zero, as its other
                // methods' maps. Compared before the clip; the clipped map is printed.
                let raw = weighted_sum(&run, &e.weights);
                let corr = map_r(&raw, reference);
                let clipped = map_r(&e.map, reference);
                println!(
                    "{file} {}: cam r = {corr:.6} (clipped: {clipped:.6})",
                    r.input
                );
                assert!(corr >= 0.99, "{file} {}: cam r = {corr}", r.input);
            }
            (None, Err(e)) => {
                let line = iscamd::error::with_causes(&e);
                println!("{file}: cam refused: {line}");
                assert_eq!(m.cam_head, "mlp (CAM not defined)");
                assert!(line.contains("is not linear"), "{line}");
                assert!(!line.contains('\n'), "{line}");
            }
            (Some(_), Err(e)) => panic!("{file}: cam refused: {}", iscamd::error::with_causes(&e)),
            (None, Ok(_)) => panic!("{file}: cam made a map for an MLP head"),
        }
        if scorecam_images.contains(&i) {
            let e = explain(&classifier, &run, r.class, "scorecam").unwrap();
            let map = e.reweighted(run.activations.view(), Weighting::LogitSoftmax);
            let corr = map_r(&map, &r.scorecam);
            println!("{file} {}: scorecam r = {corr:.6}", r.input);
            assert!(corr >= 0.99, "{file} {}: scorecam r = {corr}", r.input);
        }
    }
}

/// Per model: a test for CI, with Score-CAM on the images `$ci` (all-channel Score-CAM of
/// the 1,280-channel models costs half a minute an image), and one for
/// scripts/test-heavy.sh with Score-CAM on the others.
macro_rules! zoo_tests {
    ($($name:ident, $heavy:ident: $file:literal, $ci:expr;)*) => {$(
        #[test]
        fn $name() {
            check_model($file, $ci);
        }

        #[test]
        #[ignore = "heavy: scripts/test-heavy.sh"]
        fn $heavy() {
            let ci: std::ops::Range<usize> = $ci;
            check_model($file, ci.end..3);
        }
    )*};
}

zoo_tests! {
    resnet18, resnet18_scorecam_on_more_images: "resnet18.onnx", 0..1;
    mobilenet_v2, mobilenet_v2_scorecam_on_more_images: "mobilenet_v2.onnx", 0..0;
    mobilenet_v3_small, mobilenet_v3_small_scorecam_on_more_images: "mobilenet_v3_small.onnx", 0..1;
    efficientnet_b0, efficientnet_b0_scorecam_on_more_images: "efficientnet_b0.onnx", 0..0;
    shufflenet_v2, shufflenet_v2_scorecam_on_more_images: "shufflenet_v2_x1_0.onnx", 0..1;
    squeezenet1_1, squeezenet1_1_scorecam_on_more_images: "squeezenet1_1.onnx", 0..1;
}

#[cfg(feature = "ort")]
mod int8 {
    use std::path::{Path, PathBuf};
    use std::process::Command;

    use super::{model, zoo_dir, Model};
    use crate::common::{images_dir, labelled_images, load_with_every_op};
    use crate::ort_backend::ort_library;
    use iscamd::analysis::Analysis;
    use iscamd::model::{top_k, BackendOptions, Classifier, ModelOptions, OrtOptions, Provider};
    use iscamd::source::decode_image;

    /// The zoo model annotated with its preprocessing, then quantized by models/quantize.py
    /// with `args`, calibrated on 32 shared images.
    fn quantized(m: &Model, dir: &Path, args: &[&str]) -> PathBuf {
        let float = dir.join("float.onnx");
        std::fs::copy(zoo_dir().join(&m.file), &float).unwrap();
        let list = |v: &[f32]| v.iter().map(f32::to_string).collect::<Vec<_>>().join(",");
        let out = Command::new(env!("CARGO_BIN_EXE_iscamd"))
            .args([
                "model",
                "annotate",
                "--channel-order",
                "RGB",
                "--input-size",
                "224",
            ])
            .args([
                "--resize",
                "256",
                "--mean",
                &list(&m.mean),
                "--std",
                &list(&m.std),
            ])
            .arg(&float)
            .output()
            .unwrap();
        assert!(out.status.success(), "annotate: {out:?}");
        let int8 = dir.join("int8.onnx");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/quantize.py");
        let out = Command::new("python3")
            .arg(script)
            .arg(&float)
            .arg(images_dir())
            .arg("-o")
            .arg(&int8)
            .args(["--limit", "32"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "quantize.py {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        int8
    }

    /// Top-1 of tract and of ONNX Runtime on the same int8 file agree on at least 3 of 4 of
    /// 21 shared images (random weights leave the top classes close: quantization noise
    /// may swap a near-tie), every depthwise convolution and every float chain with constants
    /// between int8 tensors runs on iscamd's 8-bit ops, and a
    /// QDQ file's convolutions run as QLinearConv (but the one that makes the CAM layer).
    fn check(file: &str, args: &[&str]) {
        let m = model(file);
        let dir = tempfile::tempdir().unwrap();
        let int8 = quantized(&m, dir.path(), args);
        let tract = load_with_every_op(&int8);
        let described = tract.backend();
        println!("{file} {args:?}: {described}");
        for op in ["depthwise", "lookup-table"] {
            let (replaced, found) = described
                .split(&format!("{op} "))
                .nth(1)
                .and_then(|rest| rest.split(',').next())
                .and_then(|n| n.split_once('/'))
                .unwrap_or_else(|| panic!("no {op} count in {described}"));
            assert_eq!(replaced, found, "{file}: {op} replaced/found");
        }
        if args.contains(&"qdq") {
            let folded = described
                .split("QDQ Conv → QLinearConv ")
                .nth(1)
                .and_then(|rest| rest.split(';').next())
                .unwrap_or_else(|| panic!("no QDQ folding in {described}"));
            let (done, all) = folded.split_once('/').unwrap();
            let (done, all): (usize, usize) = (done.parse().unwrap(), all.parse().unwrap());
            // The CAM layer is asked for as the model reads it, dequantized: the
            // convolution before it folds too.
            assert_eq!(done, all, "{file}: {done} of {all} QDQ convolutions folded");
        }
        let ort = Classifier::load(&ModelOptions {
            path: int8,
            backend: BackendOptions::Ort(OrtOptions {
                library: Some(ort_library()),
                providers: vec![Provider::Cpu],
                ..Default::default()
            }),
            ..Default::default()
        })
        .expect("the int8 file loads on ONNX Runtime");
        // The classifier's weights read through its quantization, for `cam`: every linear
        // head; MobileNetV3's MLP head refused by name.
        match (tract.linear_head(), file.starts_with("mobilenet_v3")) {
            (Ok(_), false) => {}
            (Err(e), true) if e.to_string().contains("HardSigmoid") => {}
            (head, _) => panic!("{file} {args:?}: head {:?}", head.map(|_| "linear")),
        }
        let images: Vec<_> = labelled_images().into_iter().step_by(12).collect();
        if args.contains(&"qdq") {
            quantized_activations(file, [&tract, &ort], &images[0].0);
        }
        let top1 = |c: &Classifier, path: &Path| {
            let analysis = Analysis::of_frame(c, decode_image(path).unwrap()).unwrap();
            top_k(&analysis.probabilities, 1)[0]
        };
        let same = images
            .iter()
            .filter(|(path, _)| top1(&tract, path) == top1(&ort, path))
            .count();
        println!(
            "{file} {args:?}: same top-1 as ONNX Runtime on {same} of {}",
            images.len()
        );
        assert!(
            4 * same >= 3 * images.len(),
            "{file} {args:?}: {same} of {}",
            images.len()
        );
    }

    /// A QDQ file's CAM layer on both backends: the values its quantized bytes stand for
    /// (at most 256), as the model reads them after the QuantizeLinear.
    fn quantized_activations(file: &str, backends: [&Classifier; 2], image: &Path) {
        for classifier in backends {
            let frame = decode_image(image).unwrap();
            let analysis = Analysis::of_frame(classifier, frame).unwrap();
            let activations = analysis.activations.expect("the CAM layer's activations");
            let values: std::collections::HashSet<u32> =
                activations.iter().map(|v| v.to_bits()).collect();
            println!(
                "{file} on {}: {} values",
                classifier.backend(),
                values.len()
            );
            assert!(
                values.len() <= 256,
                "{file} on {}: {} distinct values in the CAM layer",
                classifier.backend(),
                values.len()
            );
        }
    }

    #[test]
    fn resnet18_qdq() {
        check("resnet18.onnx", &["--format", "qdq"]);
    }

    #[test]
    fn mobilenet_v2_per_channel() {
        check("mobilenet_v2.onnx", &["--per-channel"]);
    }

    macro_rules! heavy {
        ($($name:ident: $file:literal, $args:expr;)*) => {$(
            #[test]
            #[ignore = "heavy: scripts/test-heavy.sh"]
            fn $name() {
                check($file, $args);
            }
        )*};
    }

    heavy! {
        resnet18_per_tensor: "resnet18.onnx", &[];
        resnet18_per_channel: "resnet18.onnx", &["--per-channel"];
        mobilenet_v2_per_tensor: "mobilenet_v2.onnx", &[];
        mobilenet_v2_qdq: "mobilenet_v2.onnx", &["--format", "qdq"];
        mobilenet_v3_small_per_tensor: "mobilenet_v3_small.onnx", &[];
        mobilenet_v3_small_per_channel: "mobilenet_v3_small.onnx", &["--per-channel"];
        mobilenet_v3_small_qdq: "mobilenet_v3_small.onnx", &["--format", "qdq"];
        efficientnet_b0_per_tensor: "efficientnet_b0.onnx", &[];
        efficientnet_b0_per_channel: "efficientnet_b0.onnx", &["--per-channel"];
        efficientnet_b0_qdq: "efficientnet_b0.onnx", &["--format", "qdq"];
        shufflenet_v2_per_tensor: "shufflenet_v2_x1_0.onnx", &[];
        shufflenet_v2_per_channel: "shufflenet_v2_x1_0.onnx", &["--per-channel"];
        shufflenet_v2_qdq: "shufflenet_v2_x1_0.onnx", &["--format", "qdq"];
        squeezenet1_1_per_tensor: "squeezenet1_1.onnx", &[];
        squeezenet1_1_per_channel: "squeezenet1_1.onnx", &["--per-channel"];
        squeezenet1_1_qdq: "squeezenet1_1.onnx", &["--format", "qdq"];
    }
}

/// Recipro-CAM's masked outputs, factored at the pooling, against the whole tail run on
/// one masked copy of the activations per position.
fn factored_equals_whole(classifier: &Classifier, activations: &Array3<f32>) -> Array2<f32> {
    let layer = classifier.cam_layer().unwrap();
    let shape = (layer.channels, layer.height, layer.width);
    let factored = classifier.tail().unwrap();
    assert!(
        factored.factored(),
        "{}: factored at its pooling",
        layer.name
    );
    let whole = Tail::build_with(classifier.path(), &layer.name, "logits", shape, false).unwrap();
    assert!(!whole.factored());
    let (a, b) = (
        factored.masked_outputs(activations.view()).unwrap(),
        whole.masked_outputs(activations.view()).unwrap(),
    );
    let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let diff = a
        .iter()
        .zip(&b)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
    println!(
        "{}: factored vs whole tail: max diff {diff} (scale {scale})",
        layer.name
    );
    assert!(
        diff <= 1e-4 * scale.max(1.0),
        "{}: differ by {diff}",
        layer.name
    );
    // A position-wise part (SqueezeNet's conv_final) runs once instead of once per position.
    let saving = if factored.passes() > 1 { 10 } else { 1 };
    assert!(
        factored.macs_per_map * saving <= whole.macs_per_map,
        "{}: factoring saves work ({} vs {} multiply-adds)",
        layer.name,
        factored.macs_per_map,
        whole.macs_per_map
    );
    a
}

/// Recipro-CAM on SqueezeNet's padded 1×1-convolution head, ResNet-18's linear head (where
/// it is CAM up to an affine map) and MobileNetV3-Small's MLP head (which `cam` refuses).
#[test]
fn recipro_runs_every_head_and_factoring_changes_nothing() {
    let squeezenet = crate::common::load(crate::common::F32_MODEL);
    let frame = iscamd::source::decode_image(&crate::common::image("n01440764_tench")).unwrap();
    let analysis = iscamd::analysis::Analysis::of_frame(&squeezenet, frame).unwrap();
    factored_equals_whole(&squeezenet, analysis.activations.as_ref().unwrap());
    let recipro = CamParams::new("recipro", None, None).unwrap();
    let e = analysis.explain(&squeezenet, None, &recipro, 1).unwrap();
    assert_eq!(
        (e.class, e.passes),
        (0, 3),
        "tench; two passes of conv_final, one after pooling"
    );

    let resnet = model("resnet18.onnx");
    let classifier = load_path(&zoo_dir().join(&resnet.file));
    let r = &resnet.refs[0];
    let resnet_run = run(&classifier, r);
    let outputs = factored_equals_whole(&classifier, &resnet_run.activations);
    let (_, h, w) = resnet_run.activations.dim();
    let scores: Vec<f32> = outputs.column(r.class).to_vec();
    let weights = classifier.linear_head().unwrap().class_weights(r.class);
    let pre_relu_cam = weighted_sum(&resnet_run, &weights);
    let affine = pearson(&scores, pre_relu_cam.as_slice().unwrap());
    assert!(
        affine > 0.99999,
        "linear head: Recipro-CAM is CAM up to an affine map, r = {affine}"
    );
    assert_eq!(outputs.nrows(), h * w);

    let mobilenet = model("mobilenet_v3_small.onnx");
    let classifier = load_path(&zoo_dir().join(&mobilenet.file));
    let mlp_run = run(&classifier, &mobilenet.refs[0]);
    assert!(classifier.linear_head().is_err(), "an MLP head: no CAM");
    factored_equals_whole(&classifier, &mlp_run.activations);
    let e = cam::explain(
        &classifier,
        &mlp_run.x,
        &mlp_run.logits,
        mlp_run.activations.view(),
        mobilenet.refs[0].class,
        &recipro,
        1,
    )
    .unwrap();
    assert_eq!(e.passes, 1, "the MLP once, on a batch of 49 pooled vectors");
    assert!(e.map.iter().any(|&v| v > 0.0));
}
