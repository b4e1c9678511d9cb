//! Test data from ../shared (or $ISCAMD_TEST_DATA / $ISCAMD_MODEL_DIR). Missing data is
//! a failure, never a skip.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use iscamd::analysis::Analysis;
use iscamd::cam::CamParams;
use iscamd::model::{top_k, BackendOptions, BatchPlan, Classifier, ModelOptions, TractOptions};
use iscamd::source::decode_image;
use tract_onnx::prelude::tract_ndarray::{ArrayD, IxDyn};

pub mod broker;
pub mod caption;
pub mod daemon;
pub mod http;
pub mod process;
pub mod schemas;
#[cfg(feature = "gstreamer")]
pub mod streams;

pub const F32_MODEL: &str = "squeezenet1.0-dc.onnx";
pub const INT8_MODEL: &str = "squeezenet1.0-dc-int8.onnx";

fn must_exist(p: PathBuf, what: &str) -> PathBuf {
    assert!(
        p.exists(),
        "{what} not found at {} — tests need ../shared (models, images, reference) beside the repo, \
         or set ISCAMD_TEST_DATA (the shared folder) / ISCAMD_MODEL_DIR",
        p.display()
    );
    p
}

pub fn shared_dir() -> PathBuf {
    let p = std::env::var_os("ISCAMD_TEST_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    must_exist(p, "shared test data")
}

pub fn model_dir() -> PathBuf {
    let p = std::env::var_os("ISCAMD_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| shared_dir().join("models"));
    must_exist(p, "model directory")
}

pub fn model_path(name: &str) -> PathBuf {
    must_exist(model_dir().join(name), "model")
}

pub fn images_dir() -> PathBuf {
    must_exist(shared_dir().join("images"), "images directory")
}

pub fn reference_dir() -> PathBuf {
    must_exist(shared_dir().join("reference"), "reference directory")
}

pub fn image(stem: &str) -> PathBuf {
    must_exist(images_dir().join(format!("{stem}.JPEG")), "image")
}

pub fn load(name: &str) -> Classifier {
    load_path(&model_path(name))
}

pub fn load_path(path: &Path) -> Classifier {
    Classifier::load(&ModelOptions {
        path: path.to_owned(),
        backend: BackendOptions::Tract(TractOptions {
            batch_plan: BatchPlan::Split,
            ..Default::default()
        }),
        ..Default::default()
    })
    .expect("model loads")
}

/// The model at `path` with every one of iscamd's ops put in and tract's kernel ladder (a
/// measured choice may leave an op out, and takes seconds).
pub fn load_with_every_op(path: &Path) -> Classifier {
    use iscamd::model::kernels::{Choice, Matmul};
    Classifier::load(&ModelOptions {
        path: path.to_owned(),
        backend: BackendOptions::Tract(TractOptions {
            matmul: Matmul::Forced(Choice::default()),
            ..Default::default()
        }),
        ..Default::default()
    })
    .expect("model loads")
}

/// Top-1 and top-5 correct over the 250 labelled images, and each image's top-1 class.
pub fn accuracy(classifier: &Classifier) -> (usize, usize, Vec<(String, usize)>) {
    let (mut top1, mut top5, mut predictions) = (0, 0, Vec::new());
    for (path, truth) in labelled_images() {
        let analysis = Analysis::of_frame(classifier, decode_image(&path).unwrap()).unwrap();
        let top = top_k(&analysis.probabilities, 5);
        top1 += usize::from(top[0] == truth);
        top5 += usize::from(top.contains(&truth));
        predictions.push((
            path.file_stem().unwrap().to_string_lossy().into_owned(),
            top[0],
        ));
    }
    (top1, top5, predictions)
}

/// Mean Pearson r between `model`'s reduced-N default maps and `f32_model`'s, for the f32
/// model's top-1 class, on every 50th labelled image (5 images).
pub fn mean_map_r(f32_model: &Classifier, model: &Classifier) -> f64 {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let params = CamParams::new("iscam", None, None).unwrap();
    let mut rs = Vec::new();
    for (path, _) in labelled_images().into_iter().step_by(50) {
        let frame = decode_image(&path).unwrap();
        let reference = Analysis::of_frame(f32_model, frame.clone()).unwrap();
        let class = top_k(&reference.probabilities, 1)[0];
        let other = Analysis::of_frame(model, frame).unwrap();
        let map = |a: &Analysis, m| a.explain(m, Some(class), &params, threads).unwrap().map;
        let r = pearson(
            map(&reference, f32_model).as_slice().unwrap(),
            map(&other, model).as_slice().unwrap(),
        );
        println!("{}: r = {r:.4}", path.display());
        rs.push(r);
    }
    assert_eq!(rs.len(), 5);
    rs.iter().sum::<f64>() / rs.len() as f64
}

pub fn npy(path: &Path) -> ArrayD<f32> {
    let file =
        std::fs::File::open(must_exist(path.to_owned(), "reference array")).expect("open npy");
    let npy = npyz::NpyFile::new(std::io::BufReader::new(file)).expect("parse npy");
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let data: Vec<f32> = npy.into_vec().expect("npy holds f32");
    ArrayD::from_shape_vec(IxDyn(&shape), data).expect("npy shape")
}

/// Pearson correlation of two equally long sequences.
pub fn pearson(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    iscamd::cam::pearson(a, b)
}

/// The reference images (../shared/reference/index.json), sorted.
pub fn reference_images() -> Vec<String> {
    let index: serde_json::Value = serde_json::from_slice(
        &std::fs::read(reference_dir().join("index.json")).expect("index.json"),
    )
    .expect("json");
    let mut names: Vec<String> = index["images"]
        .as_object()
        .expect("images")
        .keys()
        .cloned()
        .collect();
    names.sort();
    names
}

/// The images with their true class: the line of their WordNet id in the labels file.
pub fn labelled_images() -> Vec<(PathBuf, usize)> {
    let labels =
        std::fs::read_to_string(model_dir().join("imagenet1k_labels.txt")).expect("labels file");
    let wnids: Vec<&str> = labels
        .lines()
        .map(|l| l.split(' ').next().unwrap_or(""))
        .collect();
    let mut files: Vec<PathBuf> = std::fs::read_dir(images_dir())
        .expect("read images")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "JPEG"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 250, "expected the 250 labelled sample images");
    files
        .into_iter()
        .map(|p| {
            let stem = p.file_stem().unwrap().to_string_lossy().into_owned();
            let wnid = stem.split('_').next().unwrap().to_string();
            let class = wnids
                .iter()
                .position(|w| *w == wnid)
                .unwrap_or_else(|| panic!("{wnid} not in labels"));
            (p, class)
        })
        .collect()
}
