//! models/quantize.py as the models README runs it: quantize the f32 model on sample images,
//! then load the result in iscamd and check it against the f32 model. Needs python3 with
//! onnx, onnxruntime, pillow and numpy (.ci/run installs them); without them the tests fail.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};

use crate::common::{accuracy, images_dir, load, load_path, mean_map_r, model_path, F32_MODEL};
use iscamd::analysis::Analysis;
use iscamd::source::decode_image;
use tract_onnx::prelude::Framework;

fn quantize(args: &[&std::ffi::OsStr]) -> Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/quantize.py");
    let out = Command::new("python3")
        .arg(script)
        .args(args)
        .output()
        .expect("python3 runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("is missing: pip install"),
        "quantize.py needs its Python packages: {stderr}"
    );
    out
}

/// The default output (per-tensor weights, Concats on quantized data), calibrated on 50 of the
/// sample images: its top-1 on the 250 images is within 2 points of f32's and its reduced-N
/// maps follow f32's (mean r ≥ 0.95), so the CAM layer survived the graph rewrite.
#[test]
fn quantized_model_keeps_accuracy_and_maps() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("int8.onnx");
    let out = quantize(&[
        model_path(F32_MODEL).as_os_str(),
        images_dir().as_os_str(),
        "-o".as_ref(),
        out_path.as_os_str(),
        "--limit".as_ref(),
        "50".as_ref(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "quantize.py failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("calibrated on 50 images, 8 Concat(s) on quantized data"),
        "SqueezeNet's 8 fire-module Concats should run on quantized data: {stdout}"
    );
    assert_eq!(
        concat_inputs(&out_path),
        vec!["QLinearConv"; 16],
        "every Concat should join two quantized convolution outputs"
    );

    let f32_model = load(F32_MODEL);
    let int8_model = load_path(&out_path);
    let (f32_top1, _, _) = accuracy(&f32_model);
    let (int8_top1, int8_top5, _) = accuracy(&int8_model);
    println!(
        "quantize.py int8: top-1 {int8_top1}/250, top-5 {int8_top5}/250; f32 top-1 {f32_top1}/250"
    );
    // 2 points of 250 images = 5 images.
    assert!(
        int8_top1.abs_diff(f32_top1) <= 5,
        "int8 top-1 {int8_top1} vs f32 {f32_top1} of 250"
    );

    let mean = mean_map_r(&f32_model, &int8_model);
    println!("mean r(quantize.py int8, f32): {mean:.4}");
    assert!(
        mean >= 0.95,
        "int8 maps drift from f32 maps: mean r = {mean}"
    );

    // The CAM layer is a float view of a quantized Concat here; the head reads the latter.
    let head = int8_model.linear_head().unwrap();
    assert!(
        head.description.contains("QLinearConv"),
        "{}",
        head.description
    );
    let cam = iscamd::cam::spec::parse("cam").unwrap();
    let frame = decode_image(&crate::common::image("n01440764_tench")).unwrap();
    let map = |model: &iscamd::model::Classifier| {
        let analysis = Analysis::of_frame(model, frame.clone()).unwrap();
        analysis.explain(model, Some(0), &cam, 1).unwrap().map
    };
    let r = crate::common::pearson(
        map(&f32_model).as_slice().unwrap(),
        map(&int8_model).as_slice().unwrap(),
    );
    println!("cam r(quantize.py int8, f32) on the tench: {r:.4}");
    assert!(r >= 0.95, "int8 cam map drifts from f32's: r = {r}");
}

/// The op type that produces each input of each Concat in an ONNX file.
fn concat_inputs(path: &Path) -> Vec<String> {
    let graph = tract_onnx::onnx()
        .proto_model_for_path(path)
        .expect("readable ONNX")
        .graph
        .expect("a graph");
    let producer: HashMap<&str, &str> = graph
        .node
        .iter()
        .flat_map(|n| n.output.iter().map(|o| (o.as_str(), n.op_type.as_str())))
        .collect();
    graph
        .node
        .iter()
        .filter(|n| n.op_type == "Concat")
        .flat_map(|n| &n.input)
        .map(|i| {
            producer
                .get(i.as_str())
                .unwrap_or(&"graph input")
                .to_string()
        })
        .collect()
}

#[test]
fn quantize_refuses_bad_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("int8.onnx");

    let missing = dir.path().join("no-such-model.onnx");
    let out = quantize(&[
        missing.as_os_str(),
        images_dir().as_os_str(),
        "-o".as_ref(),
        out_path.as_os_str(),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no such model file"), "{stderr}");

    let empty = tempfile::tempdir().unwrap();
    let out = quantize(&[
        model_path(F32_MODEL).as_os_str(),
        empty.path().as_os_str(),
        "-o".as_ref(),
        out_path.as_os_str(),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no images"), "{stderr}");
    assert!(
        !out_path.exists(),
        "a failed run must not leave a model behind"
    );
}
