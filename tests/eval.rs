//! `iscamd eval` end to end on real images: reports, resume, and refusals.

mod common;

use std::process::{Command, Output};

use common::{images_dir, model_path, F32_MODEL};

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
        1 + 3,
        "header + iscam, random, center"
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
    assert!(String::from_utf8_lossy(&second.stderr).contains("resuming: 3 result(s)"));
    let text = std::fs::read_to_string(&csv).unwrap();
    assert!(
        text.starts_with(&rows_after_first),
        "earlier rows are not recomputed"
    );
    let mut reader = csv::Reader::from_path(&csv).unwrap();
    let complete = reader.records().filter(|r| r.is_ok()).count();
    assert_eq!(complete, 6, "two images × three methods:\n{text}");

    let report = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    for method in ["iscam:n=1,k=4", "random", "center"] {
        assert!(
            report
                .lines()
                .any(|l| l.starts_with(&format!("| {method} | 2 |"))),
            "{method} in:\n{report}"
        );
    }
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("report.json")).unwrap()).unwrap();
    let methods = json["methods"].as_array().unwrap();
    assert_eq!(methods.len(), 3);
    assert_eq!(
        methods[0]["mean_deletion_curve"].as_array().unwrap().len(),
        5,
        "steps + 1 points"
    );
    assert_eq!(methods[0]["passes_per_map"], 4.0);
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
    ] {
        let r = eval(&args);
        assert!(!r.status.success(), "{args:?} accepted");
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(err.contains(expected), "{args:?}: {err}");
    }
}
