//! Test data from ../shared (or $ISCAMD_TEST_DATA / $ISCAMD_MODEL_DIR). Missing data is
//! a failure, never a skip.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use iscamd::model::{BatchPlan, Classifier, ModelOptions};
use tract_onnx::prelude::tract_ndarray::{ArrayD, IxDyn};

pub mod broker;

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
    Classifier::load(&ModelOptions {
        path: model_path(name),
        batch_plan: BatchPlan::Split,
        ..Default::default()
    })
    .expect("model loads")
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
    iscamd::eval::metrics::pearson(a, b)
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
