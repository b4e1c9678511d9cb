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

use crate::common::broker::{Mosquitto, Observer};
use crate::common::daemon::{config_text, first_prediction, images_at, topic};
use crate::common::process::Daemon;
use crate::common::{image, model_path, F32_MODEL};

/// Serves `/squeezenet1.0.onnx` (the model given) whole, `/short.onnx` cut off
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

/// The shared SqueezeNet 1.0 shaped like the ONNX model zoo's `squeezenet1.0-8.onnx`, the
/// file `iscamd model fetch` downloads: input `data_0` [1,3,224,224], and a Softmax after
/// the global pooling, `softmaxout_1` [1,1000,1,1], in place of the Flatten to [N,1000].
fn zoo_shaped_squeezenet() -> Vec<u8> {
    use prost::Message;
    use tract_onnx::pb::{self, attribute_proto::AttributeType};

    let bytes = std::fs::read(model_path(F32_MODEL)).unwrap();
    let mut model = pb::ModelProto::decode(&bytes[..]).unwrap();
    model.metadata_props.clear();
    let graph = model.graph.as_mut().unwrap();
    let flatten = graph.node.pop().unwrap();
    assert_eq!(
        flatten.op_type, "Flatten",
        "the shared model ends in a Flatten"
    );
    graph.node.push(pb::NodeProto {
        op_type: "Softmax".into(),
        name: "softmax".into(),
        input: flatten.input.clone(),
        output: vec!["softmaxout_1".into()],
        attribute: vec![pb::AttributeProto {
            name: "axis".into(),
            i: 1,
            r#type: AttributeType::Int as i32,
            ..Default::default()
        }],
        ..Default::default()
    });
    let input = graph.input[0].name.clone();
    for name in graph.node.iter_mut().flat_map(|n| n.input.iter_mut()) {
        if *name == input {
            *name = "data_0".into();
        }
    }
    graph.input[0].name = "data_0".into();
    set_shape(&mut graph.input[0], &[1, 3, 224, 224]);
    graph.output[0].name = "softmaxout_1".into();
    set_shape(&mut graph.output[0], &[1, 1000, 1, 1]);
    model.encode_to_vec()
}

fn set_shape(value: &mut tract_onnx::pb::ValueInfoProto, dims: &[i64]) {
    use tract_onnx::pb::tensor_shape_proto::{dimension, Dimension};
    use tract_onnx::pb::{type_proto, TensorShapeProto};
    let Some(type_proto::Value::TensorType(tensor)) =
        value.r#type.as_mut().and_then(|t| t.value.as_mut())
    else {
        panic!("{} is not a tensor", value.name);
    };
    tensor.shape = Some(TensorShapeProto {
        dim: dims
            .iter()
            .map(|&d| Dimension {
                value: Some(dimension::Value::DimValue(d)),
                ..Default::default()
            })
            .collect(),
    });
}

/// The path a packaged install takes with the model the ONNX model zoo serves: `model
/// fetch` (the default download, from a loopback server) → `check` → the daemon's
/// predictions and a heatmap.
#[test]
fn the_zoo_shaped_default_model_is_fetched_checked_and_run() {
    let dir = tempfile::tempdir().unwrap();
    let served = dir.path().join("served.onnx");
    std::fs::write(&served, zoo_shaped_squeezenet()).unwrap();
    let port = serve(std::fs::read(&served).unwrap());
    let models = dir.path().join("models");
    std::fs::create_dir(&models).unwrap();
    let iscamd = || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_iscamd"));
        command
            .env(
                "ISCAMD_TEST_ZOO_URL",
                format!("http://127.0.0.1:{port}/squeezenet1.0.onnx"),
            )
            .env("ISCAMD_TEST_ZOO_SHA256", sha256(&served))
            .env("ISCAMD_MODEL_DIR", &models);
        command
    };
    let out = iscamd().args(["model", "fetch"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("cam_layer = fire9/concat"), "{stdout}");
    assert!(stdout.contains("output_kind = probabilities"), "{stdout}");
    assert!(stdout.contains("1×1 classifier convolution"), "{stdout}");
    let model = models.join("squeezenet1.0.onnx");

    let broker = Mosquitto::start();
    let observer = Observer::connect(broker.port, "iscamd/#");
    let config = dir.path().join("iscamd.toml");
    // Scheduled maps: the zoo's preprocessing is not the shared weights', so no class is
    // confident enough for a map on a class change.
    let extra = format!(
        "[model]\npath = \"{}\"\n[cam]\ninterval = \"1s\"\n",
        model.display()
    );
    std::fs::write(&config, config_text(broker.port, &images_at(5), &extra)).unwrap();
    let out = iscamd()
        .arg("check")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains("1000 classes, CAM layer fire9/concat 512x13x13"),
        "{stdout}"
    );

    let mut daemon = Daemon::start(&config, dir.path());
    first_prediction(&observer);
    let heatmap = observer.wait_for(
        &topic("heatmap"),
        std::time::Duration::from_secs(60),
        "a heatmap",
        |m| !m.is_empty(),
    );
    let heatmap = heatmap[0].json();
    assert_eq!(heatmap["map"]["height"], 13, "{heatmap}");
    let prediction = observer.on(&topic("prediction"))[0].json();
    let score = prediction["top"][0]["score"].as_f64().unwrap();
    assert!(score > 0.0 && score <= 1.0, "{prediction}");
    assert!(daemon.terminate().success());
}
