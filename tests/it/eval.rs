//! `iscamd eval` end to end on real images: reports, resume, and refusals.

use std::process::{Command, Output};

use crate::common::{image, images_dir, load, model_path, F32_MODEL};
use iscamd::analysis::Analysis;
use iscamd::cam::CamParams;
use iscamd::source::decode_image;

fn eval(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_iscamd"))
        .arg("eval")
        .args(args)
        .env("ISCAMD_MODEL", model_path(F32_MODEL))
        .output()
        .unwrap()
}

fn images() -> String {
    images_dir().display().to_string()
}

#[test]
fn reports_every_method_and_resumes_an_interrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let images = images();
    let run = |limit: &str| {
        eval(&[
            &images,
            "--methods",
            "iscam:n=1,k=4",
            "--sweep",
            "iscam:n=1,k=2|4",
            "--steps",
            "4",
            "--limit",
            limit,
            "--out",
            out,
        ])
    };
    let first = run("1");
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let csv = dir.path().join("per_image.csv");
    let rows_after_first = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(
        rows_after_first.lines().count(),
        1 + 4,
        "header + iscam k=4, random, center, iscam k=2"
    );

    // An interruption mid-row, then a run over two images: the first image's rows are kept
    // as they were, the second image's are added.
    std::fs::write(
        &csv,
        format!("{rows_after_first}/x/cut.JPEG,iscam:n=1,k=4,3,0.5"),
    )
    .unwrap();
    let second = run("2");
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert!(String::from_utf8_lossy(&second.stderr).contains("resuming: 4 result(s)"));
    let text = std::fs::read_to_string(&csv).unwrap();
    assert!(
        text.starts_with(&rows_after_first),
        "earlier rows are not recomputed"
    );
    let mut reader = csv::Reader::from_path(&csv).unwrap();
    let complete = reader.records().filter(|r| r.is_ok()).count();
    assert_eq!(complete, 8, "two images × four methods:\n{text}");

    let report = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    for method in ["iscam:n=1,k=4", "random", "center", "iscam:n=1,k=2"] {
        assert!(
            report
                .lines()
                .any(|l| l.starts_with(&format!("| {method} | 2 |"))),
            "{method} in:\n{report}"
        );
    }
    // ROAD (on by default): every map scored, a second table, the random control last.
    let rows: Vec<iscamd::eval::Row> = iscamd::eval::read_rows(&csv).unwrap();
    assert!(rows
        .iter()
        .all(|r| r.road_morf_curve.split(' ').count() == 9));
    for method in ["iscam:n=1,k=4", "random"] {
        assert!(
            report.contains(&format!("| {method} | 2 | 0.")),
            "ROAD row of {method} in:\n{report}"
        );
    }
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("report.json")).unwrap()).unwrap();
    let methods = json["methods"].as_array().unwrap();
    assert_eq!(
        methods[0]["road"]["mean_lerf_curve"]
            .as_array()
            .unwrap()
            .len(),
        9
    );
    assert_eq!(methods.len(), 4);
    assert_eq!(
        methods[0]["mean_deletion_curve"].as_array().unwrap().len(),
        5,
        "steps + 1 points"
    );
    assert_eq!(methods[0]["passes_per_map"], 4.0);
    assert_eq!(
        methods[3]["passes_per_map"], 2.0,
        "k=2 counts its own passes"
    );
    for name in ["curves", "cost"] {
        let svg = std::fs::read_to_string(dir.path().join(format!("{name}.svg"))).unwrap();
        assert!(
            svg.contains("<svg") && svg.contains("iscam:n=1"),
            "{name}.svg"
        );
        let png = ::image::open(dir.path().join(format!("{name}.png"))).unwrap();
        assert_eq!((png.width(), png.height()), (1200, 460), "{name}.png");
    }
}

/// A sweep over k scores once at the largest k: the smaller maps derived from it must be
/// the maps a direct run computes.
#[test]
fn maps_derived_for_a_smaller_k_equal_direct_ones() {
    let classifier = load(F32_MODEL);
    let frame = decode_image(&image("n01440764_tench")).unwrap();
    let analysis = Analysis::of_frame(&classifier, frame).unwrap();
    let params = |k| CamParams::new("iscam", Some(2), Some(k)).unwrap();
    let wide = analysis.explain(&classifier, None, &params(24), 2).unwrap();
    let direct = analysis.explain(&classifier, None, &params(8), 2).unwrap();
    let activations = analysis.activations.as_ref().unwrap().view();
    let derived = wide.restricted(activations, 8).unwrap();
    assert_eq!(derived.channels_used, direct.channels_used);
    assert_eq!((derived.passes, direct.passes), (16, 16));
    let diff = derived
        .map
        .iter()
        .zip(&direct.map)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        diff <= 1e-6 * direct.map.iter().fold(0.0f32, |a, &b| a.max(b)),
        "max |diff| {diff}"
    );
    assert!(
        direct.restricted(activations, 24).is_none(),
        "k=24 was never scored"
    );
}

#[test]
fn bad_inputs_are_refused_clearly() {
    let empty = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let o = out.path().to_str().unwrap();
    for (args, expected) in [
        (
            vec![empty.path().to_str().unwrap(), "--out", o],
            "no image files",
        ),
        (
            vec![&images(), "--methods", "gradcam", "--out", o],
            "unknown method",
        ),
        (
            vec![&images(), "--methods", "iscam:n=0", "--out", o],
            "n must be at least 1",
        ),
        (vec![&images(), "--steps", "0", "--out", o], "--steps 0"),
        (
            vec![&images(), "--road", "0,50", "--out", o],
            "percentages in 1..=99",
        ),
        (
            vec![&images(), "--road-noise", "2", "--out", o],
            "--road-noise 2",
        ),
    ] {
        let r = eval(&args);
        assert!(!r.status.success(), "{args:?} accepted");
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(err.contains(expected), "{args:?}: {err}");
    }
}

#[test]
fn live_writes_a_row_per_frame_change_and_a_table() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let run = eval(&[
        &images(),
        "--live",
        "--live-method",
        "iscam:n=1,k=8",
        "--limit",
        "1",
        "--steps",
        "4",
        "--out",
        out,
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let csv = std::fs::read_to_string(dir.path().join("live.csv")).unwrap();
    let changes = ["shift", "noise", "cut to the next image"];
    assert_eq!(
        csv.lines().count(),
        1 + 6,
        "header + one row per frame change:\n{csv}"
    );
    let md = std::fs::read_to_string(dir.path().join("live.md")).unwrap();
    for change in changes {
        assert!(md.contains(change), "{md}");
    }
    assert!(String::from_utf8_lossy(&run.stdout).contains("Live maps vs fresh maps"));
}

/// Model parameter randomisation: a map that ignores the model (the centre prior) fails,
/// Score-CAM's maps change with the model and pass.
#[test]
fn sanity_fails_a_model_independent_map_and_passes_score_cam() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let run = eval(&[
        &images(),
        "--sanity",
        "--sanity-steps",
        "1",
        "--methods",
        "scorecam:k=16",
        "--limit",
        "2",
        "--out",
        out,
    ]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("sanity.json")).unwrap()).unwrap();
    let verdict = |method: &str| {
        let v = report["verdicts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["method"] == method)
            .unwrap_or_else(|| panic!("{method} in {report}"));
        (
            v["passes"].as_bool().unwrap(),
            v["ssim_all_layers"].as_f64().unwrap(),
        )
    };
    assert_eq!(
        verdict("center"),
        (false, 1.0),
        "the same map whatever the model"
    );
    assert!(!verdict("random").0, "nor does the seeded random map");
    let (passes, ssim) = verdict("scorecam:k=16");
    assert!(
        passes && ssim < 0.5,
        "Score-CAM follows the model: SSIM {ssim}"
    );
    assert_eq!(report["layers"], 26, "SqueezeNet 1.0's convolutions");
    let csv = std::fs::read_to_string(dir.path().join("sanity.csv")).unwrap();
    // 2 images × 3 methods × (all layers in cascade + the bottom layer alone).
    assert_eq!(csv.lines().count(), 1 + 2 * 3 * 2, "{csv}");
    for file in ["sanity.md", "sanity.svg", "sanity.png"] {
        assert!(dir.path().join(file).is_file(), "{file} written");
    }
    let md = String::from_utf8_lossy(&run.stdout);
    assert!(md.contains("| center | 0 | 1.000 | FAILS |"), "{md}");
}
