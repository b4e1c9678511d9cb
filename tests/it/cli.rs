//! The `iscamd` binary end to end: output formats, files written, and bad input of every
//! kind getting a one-line error that names it — never a panic.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::{image, model_path, F32_MODEL};
use image::{GrayImage, RgbImage, RgbaImage};

fn iscamd(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_iscamd"))
        .args(args)
        .env("ISCAMD_MODEL", model_path(F32_MODEL))
        .env_remove("RUST_LOG")
        .output()
        .expect("run iscamd");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked"),
        "iscamd panicked on {args:?}: {stderr}"
    );
    out
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json_lines(o: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON object per line"))
        .collect()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn classify_prints_top5_as_json_lines() {
    let tench = image("n01440764_tench");
    let out = iscamd(&["classify", "--format", "json", s(&tench)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 1);
    let top = lines[0]["top"].as_array().unwrap();
    assert_eq!(top.len(), 5);
    assert_eq!(top[0]["index"], 0);
    assert_eq!(top[0]["label"], "tench");
    assert!(top[0]["score"].as_f64().unwrap() > 0.9);
    assert_eq!(lines[0]["image"], s(&tench));
    assert!(lines[0]["latency_ms"]["inference"].as_f64().unwrap() > 0.0);
}

#[test]
fn explain_writes_overlay_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let hen = image("n01514859_hen");
    let out = iscamd(&[
        "explain",
        "--format",
        "json",
        "--steps",
        "2",
        "--channels",
        "4",
        "--out",
        s(dir.path()),
        s(&hen),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let record = &json_lines(&out)[0];
    assert_eq!(
        record["class"]["index"], 7,
        "the model calls this hen a cock (as the reference does)"
    );
    assert_eq!(record["method"]["name"], "iscam");
    assert_eq!(record["method"]["steps"], 2);
    assert_eq!(record["method"]["channels"], 4);
    assert_eq!(record["method"]["weighting"], "prob");
    assert_eq!(record["passes"], 8);
    assert_eq!(
        (
            record["map"]["width"].as_u64(),
            record["map"]["height"].as_u64()
        ),
        (Some(13), Some(13))
    );
    let values = record["map"]["values"].as_array().unwrap();
    assert_eq!(values.len(), 169);
    assert!(
        values.iter().any(|v| v.as_f64().unwrap() > 0.0),
        "map is not all zero"
    );
    let png = image::open(dir.path().join("n01514859_hen.heatmap.png"))
        .expect("overlay written")
        .to_rgb8();
    let frame = image::open(&hen).unwrap();
    assert_eq!(png.width(), frame.width().min(1024));
    let band = crate::common::caption::find_band(&png).expect("a caption band and scale");
    assert!(band.text_pixels > 100, "the caption has text: {band:?}");
    let scale = png.width() as f64 / frame.width() as f64;
    let frame_height = (frame.height() as f64 * scale).round() as u32;
    assert_eq!(
        band.top, frame_height,
        "the band is under the frame, not over it"
    );

    let bare_dir = tempfile::tempdir().unwrap();
    let bare = iscamd(&[
        "explain",
        "--no-caption",
        "--channels",
        "4",
        "--out",
        s(bare_dir.path()),
        s(&hen),
    ]);
    assert!(bare.status.success(), "{}", stderr(&bare));
    let png = image::open(bare_dir.path().join("n01514859_hen.heatmap.png"))
        .unwrap()
        .to_rgb8();
    assert_eq!(
        png.height(),
        frame_height,
        "--no-caption: the overlay alone"
    );
    assert!(crate::common::caption::find_band(&png).is_none());
    let written: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("n01514859_hen.heatmap.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(&written, record);
}

/// Formats the image crate decodes into RGB correctly, down to a single pixel and up to
/// 10000×10000.
#[test]
fn a_bundle_replays_to_the_same_top1_and_map_and_names_another_model() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("tench.zip");
    let tench = image("n01440764_tench");
    let out = iscamd(&[
        "explain",
        s(&tench),
        "--method",
        "scorecam:k=16",
        "--bundle",
        s(&bundle),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let zip = std::fs::read(&bundle).unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&iscamd::bundle::file(&zip, "manifest.json").unwrap()).unwrap();
    crate::common::schemas::Schemas::get()
        .check(&manifest)
        .unwrap();
    assert_eq!(manifest["maps"][0]["spec"], "scorecam:k=16");
    for file in ["frame.png", "input.png"] {
        let png = iscamd::bundle::file(&zip, file).unwrap();
        image::load_from_memory_with_format(&png, image::ImageFormat::Png).expect(file);
    }

    let replayed = iscamd(&["replay", s(&bundle)]);
    let said = String::from_utf8_lossy(&replayed.stdout).into_owned();
    assert!(replayed.status.success(), "{said}{}", stderr(&replayed));
    assert!(
        said.contains("same SHA-256") && said.contains("top-1: same"),
        "{said}"
    );
    assert!(said.contains("map scorecam:k=16: same (r = 1.0"), "{said}");

    let int8 = model_path(crate::common::INT8_MODEL);
    let other = iscamd(&["replay", s(&bundle), "--model", s(&int8)]);
    let said = String::from_utf8_lossy(&other.stdout);
    assert!(
        said.contains("NOT the bundle's"),
        "{said}{}",
        stderr(&other)
    );

    std::fs::write(&bundle, &zip[..zip.len() / 2]).unwrap();
    let broken = iscamd(&["replay", s(&bundle)]);
    assert_eq!(broken.status.code(), Some(2));
    assert!(
        stderr(&broken).contains("no debug bundle"),
        "{}",
        stderr(&broken)
    );
    let many = iscamd(&[
        "explain",
        s(&crate::common::images_dir()),
        "--bundle",
        s(&bundle),
    ]);
    assert_eq!(many.status.code(), Some(2));
    assert!(stderr(&many).contains("one image"), "{}", stderr(&many));
}

#[test]
fn odd_but_valid_images_are_classified() {
    let dir = tempfile::tempdir().unwrap();
    let gray = dir.path().join("gray.png");
    image::DynamicImage::ImageRgb8(image::open(image("n01440764_tench")).unwrap().to_rgb8())
        .to_luma8()
        .save(&gray)
        .unwrap();
    let rgba = dir.path().join("rgba.png");
    image::DynamicImage::ImageRgb8(image::open(image("n01440764_tench")).unwrap().to_rgb8())
        .to_rgba8()
        .save(&rgba)
        .unwrap();
    let tiny = dir.path().join("tiny.png");
    RgbImage::from_pixel(1, 1, image::Rgb([200, 30, 30]))
        .save(&tiny)
        .unwrap();
    let huge = dir.path().join("huge.png");
    GrayImage::from_pixel(8_000, 6_000, image::Luma([90]))
        .save(&huge)
        .unwrap();
    let _ = RgbaImage::new(1, 1);
    let out = iscamd(&[
        "classify",
        "--format",
        "json",
        s(&gray),
        s(&rgba),
        s(&tiny),
        s(&huge),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 4);
    assert_eq!(
        lines[1]["top"][0]["label"], "tench",
        "RGBA loses only its alpha"
    );
}

fn bad_files(dir: &Path) -> (PathBuf, PathBuf) {
    let text = dir.join("notes.jpg");
    std::fs::write(&text, "this is not a picture").unwrap();
    let jpeg = std::fs::read(image("n01440764_tench")).unwrap();
    let truncated = dir.join("truncated.jpg");
    std::fs::write(&truncated, &jpeg[..jpeg.len() / 3]).unwrap();
    (text, truncated)
}

#[test]
fn bad_files_get_named_errors_and_a_directory_run_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let (text, truncated) = bad_files(dir.path());
    std::fs::copy(image("n01440764_tench"), dir.path().join("good.JPEG")).unwrap();
    let missing = dir.path().join("missing.jpg");
    let out = iscamd(&["classify", "--format", "json", s(dir.path()), s(&missing)]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(
        json_lines(&out).len(),
        1,
        "the good image is still classified"
    );
    for (path, what) in [
        (&text, "not an image"),
        (&truncated, "decode"),
        (&missing, "no such file"),
    ] {
        let line = err
            .lines()
            .find(|l| l.contains(s(path)))
            .unwrap_or_else(|| panic!("no error names {path:?}: {err}"));
        assert!(line.contains(what), "{line}");
    }
    assert!(err.contains("3 of 4 inputs failed"), "{err}");
}

#[test]
fn bad_parameters_are_refused_with_the_reason() {
    let tench = image("n01440764_tench");
    for (args, expected) in [
        (vec!["--method", "gradcam"], "gradcam"),
        (vec!["--steps", "0"], "steps"),
        (vec!["--steps", "1000000"], "steps"),
        (vec!["--channels", "513"], "512 channels"),
        (vec!["--batch", "0"], "batch"),
        (vec!["--weighting", "softmax"], "weighting"),
        (vec!["--class", "1000"], "class"),
        (vec!["--cam-layer", "no/such/layer"], "no/such/layer"),
        (
            vec!["--model", "/nonexistent/model.onnx"],
            "/nonexistent/model.onnx",
        ),
    ] {
        let mut full = vec!["explain"];
        full.extend(&args);
        full.push(s(&tench));
        let out = iscamd(&full);
        assert!(!out.status.success(), "{args:?} was accepted");
        let err = stderr(&out);
        assert!(err.contains(expected), "{args:?}: {err}");
        assert!(
            err.lines().count() <= 3,
            "{args:?}: error should be short: {err}"
        );
    }
}

#[test]
fn a_file_that_is_not_a_model_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.onnx");
    std::fs::write(&garbage, [0xffu8; 4096]).unwrap();
    let out = iscamd(&[
        "classify",
        "--model",
        s(&garbage),
        s(&image("n01440764_tench")),
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("garbage.onnx"), "{}", stderr(&out));

    // The daemon too: it exits non-zero (so systemd's Restart=on-failure applies) and says why.
    let config = dir.path().join("iscamd.toml");
    std::fs::write(
        &config,
        format!(
            "[source]\nkind = \"pattern\"\n[model]\npath = \"{}\"\n[mqtt]\nhost = \"127.0.0.1\"\n",
            garbage.display()
        ),
    )
    .unwrap();
    // (Without $ISCAMD_MODEL, which would take precedence over the config file.)
    let out = Command::new(env!("CARGO_BIN_EXE_iscamd"))
        .args(["run", "--config", s(&config)])
        .env_remove("ISCAMD_MODEL")
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    assert!(stderr(&out).contains("garbage.onnx"), "{}", stderr(&out));
}

/// A full disk (here /dev/full, which fails every write with ENOSPC) is an error that names
/// the file, never a panic, for every file iscamd writes.
#[test]
fn a_full_disk_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let heatmap = dir.path().join("n01440764_tench.heatmap.png");
    std::os::unix::fs::symlink("/dev/full", &heatmap).unwrap();
    let out = iscamd(&[
        "explain",
        "--steps",
        "1",
        "--channels",
        "2",
        "--out",
        s(dir.path()),
        s(&image("n01440764_tench")),
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("n01440764_tench.heatmap") && err.contains("No space left on device"),
        "{err}"
    );

    let eval_dir = tempfile::tempdir().unwrap();
    let eval = |out: &Path| {
        iscamd(&[
            "eval",
            "--methods",
            "iscam:n=1,k=2",
            "--steps",
            "2",
            "--out",
            s(out),
            s(&image("n01440764_tench")),
        ])
    };
    std::os::unix::fs::symlink("/dev/full", eval_dir.path().join("report.md")).unwrap();
    let out = eval(eval_dir.path());
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("report.md") && err.contains("No space left on device"),
        "{err}"
    );
    // per_image.csv is read to resume: a device there is refused, not read forever.
    let odd_dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink("/dev/full", odd_dir.path().join("per_image.csv")).unwrap();
    let out = eval(odd_dir.path());
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("per_image.csv: is not a regular file"),
        "{err}"
    );
}

/// `iscamd cameras` lists V4L2 devices; with none (CI, this machine) it says so and exits 0.
#[cfg(all(feature = "camera", target_os = "linux"))]
#[test]
fn cameras_lists_devices_or_says_there_are_none() {
    let out = iscamd(&["cameras"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let has_video = std::fs::read_dir("/dev").unwrap().any(|e| {
        e.unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("video")
    });
    if has_video {
        assert!(stdout.contains("/dev/video"), "{stdout}");
    } else {
        assert_eq!(stdout.trim(), "no cameras found");
    }
}

/// A kernel policy in the environment that iscamd does not know stops it before any work.
#[test]
fn unknown_kernel_settings_in_the_environment_are_refused() {
    let tench = image("n01440764_tench");
    for (variable, value, refusal) in [
        (
            "ISCAMD_KERNELS",
            "fast",
            "ISCAMD_KERNELS: unknown kernel policy \"fast\"",
        ),
        (
            "ISCAMD_MATMUL",
            "f32=bogus",
            "ISCAMD_MATMUL: \"bogus\": tract has no such tier",
        ),
        (
            "ISCAMD_MATMUL",
            "f16=tract",
            "ISCAMD_MATMUL: \"f16\": expected f32, i32, without or max-pool",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_iscamd"))
            .args(["classify", s(&tench)])
            .env("ISCAMD_MODEL", model_path(F32_MODEL))
            .env(variable, value)
            .output()
            .expect("run iscamd");
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(stderr(&out).contains(refusal), "{}", stderr(&out));
    }
}

/// `bench` prints a throughput row per kernel choice, plan, batch and thread count, a heatmap
/// latency row per kernel choice and the live-map latencies; a plan or kernel choice it does
/// not know is refused by name.
#[test]
#[cfg(feature = "eval")]
fn bench_prints_every_row_it_is_asked_for() {
    let tench = image("n01440764_tench");
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("bench.json");
    let out = iscamd(&[
        "bench",
        "--report",
        s(&report),
        "--image",
        s(&tench),
        "--plans",
        "split,batched",
        "--kernels",
        "tuned,stock",
        "--batches",
        "1,2",
        "--images",
        "2",
        "--threads",
        "1",
        "--heatmaps",
        "iscam:n=1,k=4",
        "--repeat",
        "1",
        "--live-frames",
        "2",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .filter(|l| l.starts_with("squeezenet1.0-dc.onnx"))
        .map(|l| l.split_whitespace().collect())
        .collect();
    // model, backend, plan, batch, threads, (in flight x per pass), images/s, …
    let throughput: Vec<(&str, &str, &str)> = rows
        .iter()
        .filter(|r| r.len() == 11)
        .map(|r| (r[1], r[2], r[3]))
        .collect();
    let expected: Vec<(&str, &str, &str)> = ["tract", "tract/stock"]
        .into_iter()
        .flat_map(|k| {
            [
                ("split", "1"),
                ("split", "2"),
                ("batched", "1"),
                ("batched", "2"),
            ]
            .map(|(plan, batch)| (k, plan, batch))
        })
        .collect();
    assert_eq!(throughput, expected, "{stdout}");
    for r in rows.iter().filter(|r| r.len() == 11) {
        assert_eq!((r[4], r[5]), ("1", "(1x1)"), "one thread, one pass: {r:?}");
        let rate: f64 = r[6].parse().unwrap();
        assert!(rate > 0.0, "{r:?}");
    }
    let heatmaps: Vec<&Vec<&str>> = rows
        .iter()
        .filter(|r| r.get(2) == Some(&"iscam:n=1,k=4"))
        .collect();
    assert_eq!(
        heatmaps.len(),
        2,
        "a heatmap row per kernel choice: {stdout}"
    );
    for heatmap in heatmaps {
        assert_eq!(heatmap[3], "4", "passes of IS-CAM 1 × 4: {heatmap:?}");
    }
    assert!(stdout.contains("live map"), "{stdout}");

    // The report holds the same rows, with the machine and the kernels chosen.
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(json["schema"], "iscamd.bench/1");
    assert!(!json["machine"]["cpu"].as_str().unwrap().is_empty());
    assert_eq!(json["throughput"].as_array().unwrap().len(), expected.len());
    assert_eq!(json["throughput"][1]["plan"], "split");
    assert_eq!(json["heatmaps"].as_array().unwrap().len(), 2);
    assert!(json["live"]["prediction"]["p50"].as_f64().unwrap() > 0.0);
    let tract = json["models"][0]["tract"].as_str().unwrap();
    assert!(tract.contains("matrix kernels"), "{tract}");

    for (flag, value, refusal) in [
        ("--plans", "lazy", "unknown plan \"lazy\""),
        ("--kernels", "fast", "unknown kernel policy \"fast\""),
    ] {
        let out = iscamd(&["bench", "--image", s(&tench), flag, value]);
        assert!(!out.status.success());
        assert!(stderr(&out).contains(refusal), "{}", stderr(&out));
    }
}

/// `bench --profile` lists the ops of a pass with their share of its time, the matrix
/// products among them; it refuses to profile without tract.
#[test]
#[cfg(feature = "eval")]
fn bench_profile_lists_the_ops_of_a_pass() {
    let tench = image("n01440764_tench");
    let out = iscamd(&["bench", "--profile", "--images", "2", "--image", s(&tench)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("on tract, one thread:"), "{stdout}");
    // op, nodes, ms/pass, share%
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|r| r.len() == 4 && r[3].ends_with('%') && r[0] != "op")
        .collect();
    let matmul = rows.iter().find(|r| r[0] == "OptMatMul").expect(&stdout);
    assert!(matmul[1].parse::<usize>().unwrap() > 0, "{matmul:?}");
    let shares: f64 = rows
        .iter()
        .map(|r| r[3].trim_end_matches('%').parse::<f64>().unwrap())
        .sum();
    assert!(
        (shares - 100.0).abs() < 1.0,
        "shares add up to {shares}: {stdout}"
    );

    let out = iscamd(&[
        "bench",
        "--profile",
        "--backends",
        "ort",
        "--image",
        s(&tench),
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("add tract to --backends"),
        "{}",
        stderr(&out)
    );
}

/// A config the daemon must not run with is refused at start: exit 2, one line naming the
/// key and what it accepts. `cam.channels` is checked against the model's CAM layer.
#[test]
fn bad_daemon_configs_exit_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "garbage\n").unwrap();
    let ca = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let good = dir.path().join("ca.pem");
    std::fs::write(&good, ca.cert.pem()).unwrap();
    // TLS material is checked at start, before any connection is tried.
    let garbage_tls = |key: &str| {
        let (ca, cert) = if key == "ca" {
            (&garbage, &good)
        } else {
            (&good, &garbage)
        };
        format!(
            "[mqtt]\nhost = \"127.0.0.1\"\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"",
            s(ca),
            s(cert),
            s(&garbage)
        )
    };
    for (i, (section, key)) in [
        ("[mqtt]\nhost = \"127.0.0.1\"\nport = 0", "mqtt.port"),
        ("[mqtt]\nkeep_alive = \"65536s\"", "mqtt.keep_alive"),
        ("[model]\nthreads = 100000", "model.threads"),
        ("[cam]\ninterval = \"1ns\"", "cam.interval"),
        ("[mqtt]\nstats_interval = \"0s\"", "mqtt.stats_interval"),
        ("[device]\nid = \"\"", "device.id"),
        ("[mqtt]\nprefix = \"a/\"", "mqtt.prefix"),
        ("[cam]\nsteps = 0", "cam.steps"),
        ("[cam]\nchannels = 100000", "cam.channels"),
        ("[source]\nkind = \"images\"", "source.path"),
        ("[cam]\nmax_passes = 0", "cam.max_passes"),
        ("[cam]\nmax_time = \"0s\"", "cam.max_time"),
        ("[cam]\nmethod = \"iscam:n=10,k=0\"", "cam.max_passes"),
        (&garbage_tls("ca"), "mqtt.ca"),
        (&garbage_tls("cert"), "mqtt.cert"),
    ]
    .into_iter()
    .enumerate()
    {
        let path = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&path, section).unwrap();
        let out = iscamd(&["run", "--config", s(&path)]);
        assert_eq!(out.status.code(), Some(2), "{section:?}: {}", stderr(&out));
        let err = stderr(&out);
        let last = err.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("error: ") && last.contains(key),
            "{section:?}: {err}"
        );
    }
}
