//! The ONNX Runtime backend (feature `ort`, CPU provider) against tract: logits of both
//! shipped models on every sample image, and CAM maps on the reference inputs.
//! Needs libonnxruntime: $ORT_DYLIB_PATH, else the one in python3's onnxruntime wheel.

use std::path::PathBuf;

use crate::common::{
    labelled_images, load, model_path, npy, pearson, reference_dir, reference_images,
};
use crate::common::{F32_MODEL, INT8_MODEL};
use iscamd::analysis::Analysis;
use iscamd::cam::{self, CamParams};
use iscamd::model::{
    softmax, top_k, BackendOptions, Classifier, ModelOptions, OrtOptions, Provider,
};
use iscamd::source::decode_image;
use tract_onnx::prelude::tract_ndarray::{Axis, Ix3, Ix4};

pub fn ort_library() -> PathBuf {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        return PathBuf::from(p);
    }
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import onnxruntime, glob, os; \
             print(glob.glob(os.path.dirname(onnxruntime.__file__) + '/capi/libonnxruntime.so*')[0])",
        ])
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "ONNX Runtime not found: set ORT_DYLIB_PATH to libonnxruntime.so or `pip install onnxruntime` \
         (python3 said: {})",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

fn ort_options(name: &str, providers: Vec<Provider>) -> ModelOptions {
    ModelOptions {
        path: model_path(name),
        backend: BackendOptions::Ort(OrtOptions {
            library: Some(ort_library()),
            providers,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn load_ort(name: &str) -> Classifier {
    Classifier::load(&ort_options(name, vec![Provider::Cpu])).expect("model loads on ONNX Runtime")
}

/// Both backends on the 250 images: the largest logit difference, and top-1. Where top-1
/// differs, it must be a near-tie that the logit difference explains: each backend's
/// top-1 is within `tolerance` of the other's best logit.
fn logits_agree(model: &str, tolerance: f32) -> usize {
    let (tract, ort) = (load(model), load_ort(model));
    assert_eq!(ort.backend(), "ort (cpu)");
    assert_eq!(ort.cam_layer(), tract.cam_layer());
    let (mut max_diff, mut differ) = (0.0f32, 0);
    for (path, _) in labelled_images() {
        let input = tract.preprocess().tensor(&decode_image(&path).unwrap());
        let batch = input.view().insert_axis(Axis(0));
        let (a, b) = (tract.forward(batch).unwrap(), ort.forward(batch).unwrap());
        let (a, b) = (a.logits.as_slice().unwrap(), b.logits.as_slice().unwrap());
        for (x, y) in a.iter().zip(b) {
            max_diff = max_diff.max((x - y).abs());
        }
        let top1 = |l: &[f32]| top_k(&softmax(l), 1)[0];
        let (ta, tb) = (top1(a), top1(b));
        if ta != tb {
            differ += 1;
            let (gap_a, gap_b) = (a[ta] - a[tb], b[tb] - b[ta]);
            println!(
                "{}: top-1 tract {ta}, ort {tb}; margins {gap_a:.3} (tract), {gap_b:.3} (ort)",
                path.display()
            );
            assert!(
                gap_a <= tolerance && gap_b <= tolerance,
                "{}: top-1 differs beyond a near-tie",
                path.display()
            );
        }
    }
    println!(
        "{model}: max |logit diff| tract vs ONNX Runtime = {max_diff:.2e} over 250 images; \
         top-1 differs on {differ}"
    );
    assert!(
        max_diff <= tolerance,
        "{model}: logits differ by {max_diff}"
    );
    differ
}

#[test]
fn f32_logits_agree_with_tract() {
    assert_eq!(
        logits_agree(F32_MODEL, 1e-3),
        0,
        "f32: top-1 must be identical"
    );
}

#[test]
fn int8_logits_agree_with_tract() {
    // The runtimes round requantised values differently: logits may differ by a
    // quantisation step or two, and near-ties may swap (4 of 250 images when measured).
    let differ = logits_agree(INT8_MODEL, 1.0);
    assert!(differ <= 5, "int8: top-1 differs on {differ} images");
}

/// CAM maps from both backends on the reference inputs: the correlation of each pair.
fn maps_agree(model: &str, images: &[String], methods: &[CamParams], min_r: f64) {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (tract, ort) = (load(model), load_ort(model));
    for name in images {
        let input = npy(&reference_dir().join(format!("{name}.input.npy")))
            .into_dimensionality::<Ix4>()
            .unwrap();
        let explain = |c: &Classifier, params: &CamParams| {
            let f = c.forward(input.view()).unwrap();
            let logits = f.logits.index_axis(Axis(0), 0).to_vec();
            let activations = f.activations.unwrap().index_axis_move(Axis(0), 0);
            let class = top_k(&softmax(&logits), 1)[0];
            let x = input.index_axis(Axis(0), 0).to_owned();
            cam::explain(c, &x, &logits, activations.view(), class, params, threads)
                .unwrap()
                .map
        };
        for params in methods {
            let (a, b) = (explain(&tract, params), explain(&ort, params));
            let r = pearson(a.as_slice().unwrap(), b.as_slice().unwrap());
            let label = format!("{model} {name} {}", params.method.name());
            println!(
                "{label} N={} K={}: r(tract, ort) = {r:.6}",
                params.steps(),
                params.channels
            );
            assert!(r >= min_r, "{label}: r = {r} < {min_r}");
        }
    }
}

/// Score-CAM (all channels) and the reduced-N IS-CAM default, f32, every reference input.
#[test]
fn f32_maps_agree_with_tract() {
    let images = reference_images();
    let scorecam = CamParams::new("scorecam", None, Some(0)).unwrap();
    maps_agree(F32_MODEL, &images[..1], &[scorecam], 0.999);
    let iscam = CamParams::new("iscam", None, None).unwrap();
    maps_agree(F32_MODEL, &images, &[iscam], 0.999);
}

#[test]
#[ignore = "heavy: scripts/test-heavy.sh"]
fn f32_scorecam_maps_agree_with_tract_on_every_image() {
    let scorecam = CamParams::new("scorecam", None, Some(0)).unwrap();
    maps_agree(F32_MODEL, &reference_images()[1..], &[scorecam], 0.999);
}

/// int8 on tract is slow (docs/benchmarks.md, "Speed"): one image, a small IS-CAM.
#[test]
fn int8_maps_agree_with_tract() {
    maps_agree(
        INT8_MODEL,
        &reference_images()[..1],
        &[CamParams::new("iscam", Some(2), Some(32)).unwrap()],
        0.99,
    );
}

#[test]
fn a_provider_that_cannot_register_is_an_error() {
    // The pip wheel has the CPU provider only: asking for CUDA must fail, not fall back.
    let err = Classifier::load(&ort_options(F32_MODEL, vec![Provider::Cuda, Provider::Cpu]))
        .err()
        .expect("CUDA cannot register with a CPU-only ONNX Runtime");
    let msg = err.to_string();
    println!("{msg}");
    assert!(msg.contains("cuda"), "{msg}");
}

#[test]
fn a_missing_library_is_a_clear_error() {
    let mut options = ort_options(F32_MODEL, vec![Provider::Cpu]);
    if let BackendOptions::Ort(ort) = &mut options.backend {
        ort.library = Some(PathBuf::from("/nonexistent/libonnxruntime.so"));
    }
    let msg = Classifier::load(&options)
        .err()
        .expect("no library")
        .to_string();
    assert!(
        msg.contains("/nonexistent/libonnxruntime.so") && msg.contains("ORT_DYLIB_PATH"),
        "{msg}"
    );
}

/// The same frame through `Analysis`, as the daemon runs it: same prediction either way.
#[test]
fn analysis_is_backend_independent() {
    let frame = decode_image(&crate::common::image("n01440764_tench")).unwrap();
    let a = Analysis::of_frame(&load(F32_MODEL), frame.clone()).unwrap();
    let b = Analysis::of_frame(&load_ort(F32_MODEL), frame).unwrap();
    assert_eq!(top_k(&a.probabilities, 5), top_k(&b.probabilities, 5));
    let (x, y) = (
        a.activations.unwrap(),
        b.activations.unwrap().into_dimensionality::<Ix3>().unwrap(),
    );
    assert!(pearson(x.as_slice().unwrap(), y.as_slice().unwrap()) > 0.9999);
}

/// `iscamd check` says which backend and providers run the model, and fails on a provider
/// that cannot register.
#[test]
fn check_reports_the_backend() {
    let dir = tempfile::tempdir().unwrap();
    let check = |providers: &str| {
        let config = dir.path().join("iscamd.toml");
        std::fs::write(
            &config,
            format!(
                "[source]\nkind = \"pattern\"\n[model]\npath = \"{}\"\nbackend = \"ort\"\n\
                 ort_library = \"{}\"\nproviders = [{providers}]\n[mqtt]\nhost = \"127.0.0.1\"\nport = 1\n",
                model_path(F32_MODEL).display(),
                ort_library().display()
            ),
        )
        .unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_iscamd"))
            .args(["check", "--config", config.to_str().unwrap()])
            .env_remove("ISCAMD_MODEL")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let out = check("\"cpu\"");
    assert!(
        out.contains("ok    model:") && out.contains("on ort (cpu)"),
        "{out}"
    );
    let out = check("\"tensorrt\", \"cpu\"");
    assert!(
        out.contains("FAIL  model:") && out.contains("tensorrt"),
        "{out}"
    );
}
