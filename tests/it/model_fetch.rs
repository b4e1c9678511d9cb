//! `iscamd model fetch` against an HTTP server on loopback, and `iscamd model annotate`:
//! a model lands only whole and with the right checksum; every failure is one line and
//! leaves nothing behind.
//!
//! The server is a few lines of std: it must misbehave on purpose (announce a length and
//! close early), which a stock file server does not.

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener};
use std::path::Path;
use std::process::{Command, Output};

use crate::common::{image, model_path, F32_MODEL};

/// Serves `/squeezenet1.0.onnx` (the shared float model) whole, `/short.onnx` cut off
/// after half its announced length, and 404 for anything else. Returns its port.
fn serve(model: Vec<u8>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            reader.read_line(&mut request).unwrap();
            let mut header = String::new();
            while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
                header.clear();
            }
            let path = request.split_whitespace().nth(1).unwrap_or("").to_string();
            let head = |status: &str, len: usize| {
                format!("HTTP/1.1 {status}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n")
            };
            let _ = match path.as_str() {
                "/squeezenet1.0.onnx" => stream
                    .write_all(head("200 OK", model.len()).as_bytes())
                    .and_then(|_| stream.write_all(&model)),
                "/short.onnx" => stream
                    .write_all(head("200 OK", model.len()).as_bytes())
                    .and_then(|_| stream.write_all(&model[..model.len() / 2])),
                _ => stream.write_all(head("404 Not Found", 0).as_bytes()),
            };
            let _ = stream.shutdown(Shutdown::Both);
        }
    });
    port
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn fetch(dir: &Path, url: &str, sha: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_iscamd"))
        .args(["model", "fetch", "--url", url, "--sha256", sha, "--dir"])
        .arg(dir)
        .output()
        .unwrap()
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The one `error:` line of a failed fetch.
fn error_line(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    errors[0].to_string()
}

#[test]
fn a_fetched_model_lands_where_the_daemon_looks_and_runs() {
    let model = model_path(F32_MODEL);
    let port = serve(std::fs::read(&model).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{port}/squeezenet1.0.onnx");
    let out = fetch(dir.path(), &url, &sha256(&model));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("cam_layer = fire9/concat"), "{stdout}");
    assert!(
        stdout.contains("runs it when [model] path is not set"),
        "{stdout}"
    );
    assert_eq!(files_in(dir.path()), ["squeezenet1.0.onnx"]);

    // No --model, no $ISCAMD_MODEL: the default lookup finds it through $ISCAMD_MODEL_DIR,
    // with the ImageNet labels iscamd carries (no labels file beside it).
    let out = Command::new(env!("CARGO_BIN_EXE_iscamd"))
        .args(["classify", "--top", "1"])
        .arg(image("n01440764_tench"))
        .env_remove("ISCAMD_MODEL")
        .env("ISCAMD_MODEL_DIR", dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("tench [0]"), "{stdout}");
}

#[test]
fn a_failed_fetch_says_why_in_one_line_and_leaves_no_file() {
    let model = model_path(F32_MODEL);
    let sha = sha256(&model);
    let port = serve(std::fs::read(&model).unwrap());
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let wrong_sha = format!(
        "{}{}",
        &sha[..63],
        if sha.ends_with('0') { '1' } else { '0' }
    );
    let cases = [
        (
            format!("http://127.0.0.1:{port}/squeezenet1.0.onnx"),
            wrong_sha,
            "checksum mismatch",
        ),
        (
            format!("http://127.0.0.1:{port}/short.onnx"),
            sha.clone(),
            "cut short",
        ),
        (
            format!("http://127.0.0.1:{port}/missing.onnx"),
            sha.clone(),
            "HTTP 404",
        ),
        (
            format!("http://127.0.0.1:{closed}/squeezenet1.0.onnx"),
            sha.clone(),
            "Connection refused",
        ),
    ];
    for (url, sha, why) in cases {
        let dir = tempfile::tempdir().unwrap();
        let line = error_line(&fetch(dir.path(), &url, &sha));
        assert!(line.contains(why) && line.contains(&url), "{url}: {line}");
        assert!(line.ends_with("nothing was written"), "{line}");
        assert!(
            files_in(dir.path()).is_empty(),
            "{url}: {:?}",
            files_in(dir.path())
        );
    }
}

#[test]
fn annotate_writes_metadata_and_keeps_the_model_runnable() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("m.onnx");
    std::fs::copy(model_path(F32_MODEL), &copy).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_iscamd"))
        .args([
            "model",
            "annotate",
            "--resize",
            "240",
            "--labels",
            "imagenet1k",
        ])
        .arg(&copy)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("resize = 240"), "{stdout}");
    let classify = |path: &Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_iscamd"))
            .args(["classify", "--format", "json", "--top", "1", "--model"])
            .arg(path)
            .arg(image("n01440764_tench"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        line["top"][0]["index"].as_u64().unwrap()
    };
    assert_eq!(classify(&copy), classify(&model_path(F32_MODEL)));

    // Not a model: refused, and the file is as it was.
    let text = dir.path().join("notes.onnx");
    std::fs::write(&text, "not a model").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_iscamd"))
        .args(["model", "annotate"])
        .arg(&text)
        .output()
        .unwrap();
    assert!(error_line(&out).contains("not an ONNX model"), "{out:?}");
    assert_eq!(std::fs::read_to_string(&text).unwrap(), "not a model");
}
