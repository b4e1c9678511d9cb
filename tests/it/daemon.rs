//! `iscamd run` end to end against a real mosquitto: the MQTT contract of docs/mqtt.md.

use std::path::Path;
use std::time::Duration;

use crate::common::broker::{retained, Mosquitto, Observer};
use crate::common::daemon::*;
use crate::common::process::Daemon;
use crate::common::{images_dir, model_path, F32_MODEL};
use base64::Engine;

fn check_prediction(p: &serde_json::Value) {
    check_prediction_for(p, DEVICE)
}

fn check_prediction_for(p: &serde_json::Value, device: &str) {
    assert_eq!(p["schema"], "iscamd.prediction/1");
    assert_eq!(p["device"], device);
    let run = p["run"].as_str().unwrap();
    assert!(
        run.len() == 16 && run.chars().all(|c| c.is_ascii_hexdigit()),
        "{run}"
    );
    assert!(p["seq"].as_u64().unwrap() >= 1);
    assert!(p["frame"].as_u64().unwrap() >= 1);
    assert!(p["ts"].as_str().unwrap().ends_with('Z'));
    assert_eq!(p["model"], F32_MODEL);
    let top = p["top"].as_array().unwrap();
    assert_eq!(top.len(), 5);
    for c in top {
        assert!(c["index"].as_u64().unwrap() < 1000 && c["label"].is_string());
        assert!((0.0..=1.0).contains(&c["score"].as_f64().unwrap()));
    }
    assert!(p["latency_ms"]["inference"].as_f64().unwrap() > 0.0);
    assert!(p["latency_ms"]["preprocess"].as_f64().unwrap() >= 0.0);
}

#[test]
fn publishes_predictions_heatmaps_stats_and_availability() {
    let Setup {
        broker,
        observer,
        mut daemon,
        _dir,
    } = setup(
        "iscamd/#",
        5,
        // 4 steps × 32 channels, not the default 1 × 64: the [cam] keys must reach the heatmap.
        "[cam]\ninterval = \"2s\"\nsteps = 4\nchannels = 32\n[mqtt.qos]\nprediction = 1\nheatmap = 1\n",
    );

    observer.wait_for(
        &topic("availability"),
        Duration::from_secs(30),
        "online",
        |m| m.iter().any(|m| m.text() == "online"),
    );
    let heatmaps = observer.wait_for(
        &topic("heatmap"),
        Duration::from_secs(90),
        "two heatmaps",
        |m| m.len() >= 2,
    );
    observer.wait_for(&topic("stats"), Duration::from_secs(10), "stats", |m| {
        !m.is_empty()
    });
    let status = daemon.terminate();
    assert!(status.success(), "exit {status:?}:\n{}", daemon.log_text());

    let predictions = observer.on(&topic("prediction"));
    assert!(
        predictions.len() >= 10,
        "only {} predictions",
        predictions.len()
    );
    let mut last_frame = 0;
    for (i, p) in predictions.iter().enumerate() {
        let p = p.json();
        check_prediction(&p);
        assert_eq!(
            p["seq"].as_u64().unwrap(),
            i as u64 + 1,
            "seq counts predictions without gaps"
        );
        let frame = p["frame"].as_u64().unwrap();
        assert!(frame > last_frame, "frames increase");
        last_frame = frame;
    }
    let first = predictions[0].json();
    assert_eq!(
        first["top"][0]["label"], "tench",
        "the first image of ../shared/images is a tench"
    );

    let h = heatmaps[0].json();
    assert_eq!(h["schema"], "iscamd.heatmap/1");
    assert_eq!(h["method"]["name"], "iscam");
    assert_eq!(h["method"]["steps"], 4);
    assert_eq!(h["passes"], 128);
    assert_eq!(h["map"]["encoding"], "u8-base64");
    let (w, hh) = (
        h["map"]["width"].as_u64().unwrap(),
        h["map"]["height"].as_u64().unwrap(),
    );
    let data = base64::engine::general_purpose::STANDARD
        .decode(h["map"]["data"].as_str().unwrap())
        .unwrap();
    assert_eq!((w, hh, data.len() as u64), (13, 13, 169));
    assert_eq!(
        data.iter().max(),
        Some(&255),
        "the map is normalised to 0..=255"
    );
    let frames: Vec<u64> = heatmaps
        .iter()
        .map(|m| m.json()["frame"].as_u64().unwrap())
        .collect();
    assert!(
        frames.windows(2).all(|f| f[1] > f[0]),
        "heatmaps explain later frames: {frames:?}"
    );

    let images = observer.on(&topic("heatmap/image"));
    assert!(!images.is_empty());
    let jpeg = image::load_from_memory_with_format(&images[0].payload, image::ImageFormat::Jpeg)
        .expect("a JPEG");
    assert_eq!(jpeg.width(), 200, "configured heatmap_image_width");
    let band = crate::common::caption::find_band(&jpeg.to_rgb8());
    let band = band.expect("the image carries its caption band and colour scale");
    assert!(band.text_pixels > 100, "the caption has text: {band:?}");

    let stats = observer.on(&topic("stats")).last().unwrap().json();
    assert_eq!(stats["schema"], "iscamd.stats/2");
    assert!(stats["frames_processed"].as_u64().unwrap() > 0);
    assert!(stats["rss_bytes"].as_u64().unwrap() > 0);

    let availability: Vec<String> = observer
        .on(&topic("availability"))
        .iter()
        .map(|m| m.text())
        .collect();
    assert_eq!(
        availability.last().map(String::as_str),
        Some("offline"),
        "{availability:?}"
    );
    assert_eq!(
        retained(broker.port, &topic("availability")).as_deref(),
        Some("offline")
    );
    assert!(
        retained(broker.port, &topic("heatmap/image")).is_some(),
        "the heatmap image is retained"
    );
    let discovery = retained(broker.port, "homeassistant/device/iscamd_cam7/config")
        .expect("discovery retained");
    let discovery: serde_json::Value = serde_json::from_str(&discovery).unwrap();
    assert_eq!(
        discovery["components"]["heatmap"]["image_topic"],
        topic("heatmap/image")
    );
}

/// A restart and a loss both make `seq` jump; `run` tells them apart.
#[test]
fn every_payload_names_its_run_and_a_restart_starts_a_new_one() {
    let broker = Mosquitto::start();
    let observer = Observer::connect(broker.port, "iscamd/#");
    let dir = tempfile::tempdir().unwrap();
    let extra = "commands_per_second = 100\n[cam]\ninterval = \"1s\"\nmethod = \"iscam:k=4\"\n";
    let config = write_config(dir.path(), broker.port, 5, extra);
    let mut runs = Vec::new();
    for _ in 0..2 {
        let since = std::time::Instant::now();
        let mut daemon = Daemon::start(&config, dir.path());
        let fresh =
            |m: &[crate::common::broker::Received]| m.iter().filter(|r| r.at > since).count();
        observer.wait_for(
            &topic("heatmap"),
            Duration::from_secs(60),
            "a heatmap",
            |m| fresh(m) > 0,
        );
        observer.publish(&topic("cmd"), r#"{"id":"r","cmd":"republish"}"#);
        observer.wait_for(
            &topic("cmd/result"),
            Duration::from_secs(10),
            "a result",
            |m| fresh(m) > 0,
        );
        observer.wait_for(&topic("stats"), Duration::from_secs(10), "stats", |m| {
            fresh(m) > 0
        });
        let announced: serde_json::Value =
            serde_json::from_str(&retained(broker.port, &topic("run")).expect("run is retained"))
                .unwrap();
        assert_eq!(announced["schema"], "iscamd.run/1");
        assert!(announced["started"].as_str().unwrap().ends_with('Z'));
        let run = announced["run"].as_str().unwrap().to_string();
        assert!(daemon.terminate().success());
        for kind in ["prediction", "heatmap", "stats", "cmd/result"] {
            let of_this_start: Vec<_> = observer
                .on(&topic(kind))
                .into_iter()
                .filter(|m| m.at > since)
                .collect();
            assert!(!of_this_start.is_empty(), "{kind}");
            for m in &of_this_start {
                assert_eq!(m.json()["run"], run.as_str(), "{kind} of run {run}");
            }
            if kind == "prediction" {
                assert_eq!(
                    of_this_start[0].json()["seq"],
                    1,
                    "seq starts at 1 in every run"
                );
            }
        }
        runs.push(run);
    }
    assert_ne!(runs[0], runs[1], "a restart is a new run");
}

#[test]
fn sigkill_leaves_offline_through_the_last_will() {
    let Setup {
        broker,
        observer,
        mut daemon,
        _dir,
    } = setup("iscamd/#", 5, "[cam]\ninterval = \"0s\"\n");
    first_prediction(&observer);
    assert_eq!(
        retained(broker.port, &topic("availability")).as_deref(),
        Some("online")
    );
    daemon.child.kill().unwrap();
    daemon.child.wait().unwrap();
    observer.wait_for(
        &topic("availability"),
        Duration::from_secs(10),
        "the last will",
        |m| m.last().is_some_and(|m| m.text() == "offline"),
    );
    assert_eq!(
        retained(broker.port, &topic("availability")).as_deref(),
        Some("offline")
    );
}

#[test]
fn remove_discovery_leaves_nothing_retained() {
    let Setup {
        broker,
        observer,
        mut daemon,
        _dir: dir,
    } = setup("homeassistant/#", 5, "");
    let discovery = "homeassistant/device/iscamd_cam7/config";
    observer.wait_for(discovery, Duration::from_secs(30), "discovery", |m| {
        !m.is_empty()
    });
    assert!(daemon.terminate().success());
    let removed = std::process::Command::new(env!("CARGO_BIN_EXE_iscamd"))
        .args(["run", "--remove-discovery", "--config"])
        .arg(dir.path().join("iscamd.toml"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&removed.stdout);
    assert!(
        removed.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&removed.stderr)
    );
    assert!(said.contains("retained topics emptied"), "{said}");
    for t in [discovery.to_string(), topic("availability"), topic("run")] {
        assert_eq!(retained(broker.port, &t), None, "{t} is still retained");
    }
}

#[test]
fn hup_reloads_and_usr1_usr2_and_pipe_do_not_end_the_daemon() {
    let Setup {
        broker: _broker,
        observer,
        mut daemon,
        _dir,
    } = setup("iscamd/#", 5, "[cam]\ninterval = \"0s\"\n");
    first_prediction(&observer);
    for signal in ["HUP", "USR1", "USR2", "PIPE"] {
        let sent = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(daemon.child.id().to_string())
            .status()
            .unwrap();
        assert!(sent.success());
    }
    // The reload runs beside the signal handler, so its line may come after SIGUSR2's.
    let mut log = String::new();
    for line in [
        "SIGUSR1 received and ignored",
        "SIGUSR2 received and ignored",
        "reloaded: nothing changed",
    ] {
        log = wait_for_log(&daemon, line, Duration::from_secs(10));
    }
    let before = observer.on(&topic("prediction")).len();
    observer.wait_for(
        &topic("prediction"),
        Duration::from_secs(10),
        "predictions after the signals",
        |m| m.len() >= before + 5,
    );
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "the daemon ended:\n{log}"
    );
    assert!(daemon.terminate().success(), "{}", daemon.log_text());
}

#[test]
fn commands_are_validated_answered_and_never_stop_predictions() {
    let extra = "commands_per_second = 100\n[cam]\ninterval = \"0s\"\non_class_change = false\n";
    let Setup {
        broker,
        observer,
        mut daemon,
        _dir,
    } = setup("iscamd/#", 5, extra);
    first_prediction(&observer);

    observer.publish(
        &topic("cmd"),
        r#"{"id":"a","cmd":"explain","method":"iscam","steps":2,"channels":4}"#,
    );
    let results = observer.wait_for(
        &topic("cmd/result"),
        Duration::from_secs(60),
        "the explain result",
        |m| !m.is_empty(),
    );
    let result = results[0].json();
    assert_eq!(
        (result["id"].as_str(), result["ok"].as_bool()),
        (Some("a"), Some(true)),
        "{result}"
    );
    let heatmap = observer.on(&topic("heatmap"))[0].json();
    assert_eq!(heatmap["request_id"], "a");
    assert_eq!(
        (
            heatmap["method"]["steps"].as_u64(),
            heatmap["method"]["channels"].as_u64()
        ),
        (Some(2), Some(4))
    );
    assert_eq!(heatmap["passes"], 8);

    let bad: Vec<(String, &str)> = vec![
        ("{oops".into(), "invalid JSON"),
        (
            r#"{"id":"b","cmd":"selfdestruct"}"#.into(),
            "unknown command",
        ),
        (r#"{"id":"c","cmd":"explain","steps":0}"#.into(), "steps"),
        (
            r#"{"id":"d","cmd":"explain","steps":1000000}"#.into(),
            "steps",
        ),
        (r#"{"id":"e","cmd":"explain","channels":600}"#.into(), "600"),
        (
            r#"{"id":"f","cmd":"explain","steps":"many"}"#.into(),
            "invalid type",
        ),
        (
            format!(
                r#"{{"id":"g","cmd":"explain","pad":"{}"}}"#,
                "x".repeat(1 << 20)
            ),
            "bytes",
        ),
    ];
    let before = observer.on(&topic("prediction")).len();
    for (payload, _) in &bad {
        observer.publish(&topic("cmd"), payload.clone());
    }
    let results = observer.wait_for(
        &topic("cmd/result"),
        Duration::from_secs(20),
        "error results",
        |m| m.len() > bad.len(),
    );
    for (r, (payload, expected)) in results[1..].iter().zip(&bad) {
        let r = r.json();
        assert_eq!(r["ok"], false, "{r}");
        let error = r["error"].as_str().unwrap();
        assert!(
            error.contains(expected),
            "{}: {error}",
            &payload[..payload.len().min(60)]
        );
    }
    observer.wait_for(
        &topic("prediction"),
        Duration::from_secs(10),
        "predictions after the bad commands",
        |m| m.len() > before + 5,
    );

    let settings = observer.on(&topic("settings"));
    assert_eq!(
        settings[0].json()["heatmap_interval_s"],
        0.0,
        "the config's"
    );
    assert_eq!(settings[0].json()["live"], false);
    observer.publish(
        &topic("cmd"),
        r#"{"id":"s","cmd":"set","interval":"30s","live":true}"#,
    );
    let settings = observer.wait_for(
        &topic("settings"),
        Duration::from_secs(10),
        "new settings",
        |m| m.len() >= 2,
    );
    let now = settings.last().unwrap().json();
    assert_eq!(now["schema"], "iscamd.settings/1");
    assert_eq!(
        (now["heatmap_interval_s"].as_f64(), now["live"].as_bool()),
        (Some(30.0), Some(true))
    );
    let retained_settings = retained(broker.port, &topic("settings")).expect("settings retained");
    assert!(
        retained_settings.contains(r#""live":true"#),
        "{retained_settings}"
    );
    assert!(daemon.terminate().success());
}

#[test]
fn broker_outage_loses_no_qos1_prediction() {
    let Setup {
        mut broker,
        observer,
        mut daemon,
        _dir,
    } = setup(
        &format!("{BASE}/#"),
        5,
        "[cam]\ninterval = \"0s\"\non_class_change = false\n[mqtt.qos]\nprediction = 1\n",
    );
    observer.wait_for(
        &topic("prediction"),
        Duration::from_secs(30),
        "predictions",
        |m| m.len() >= 5,
    );

    broker.stop();
    std::thread::sleep(Duration::from_secs(10));
    broker.restart();
    observer.wait_for(
        &topic("availability"),
        Duration::from_secs(60),
        "online again",
        |m| m.iter().filter(|m| m.text() == "online").count() >= 2,
    );
    std::thread::sleep(Duration::from_secs(4));
    assert!(daemon.terminate().success());

    let log = daemon.log_text();
    assert!(
        log.contains("lost the broker") && log.contains("retrying in"),
        "backoff not visible in the log:\n{log}"
    );
    let seqs: Vec<u64> = observer
        .on(&topic("prediction"))
        .iter()
        .map(|m| m.json()["seq"].as_u64().unwrap())
        .collect();
    let max = *seqs.iter().max().unwrap();
    let mut unique = seqs.clone();
    unique.sort();
    unique.dedup();
    let missing: Vec<u64> = (1..=max)
        .filter(|s| unique.binary_search(s).is_err())
        .collect();
    println!("outage: {} predictions received ({} unique, max seq {max}), {} duplicates, missing {missing:?}", seqs.len(), unique.len(), seqs.len() - unique.len());
    assert!(
        missing.is_empty(),
        "QoS-1 predictions lost in the outage: {missing:?}"
    );
    assert!(
        seqs.windows(2)
            .all(|w| w[1] > w[0] || seqs.len() != unique.len()),
        "order kept when nothing was duplicated"
    );
}

#[test]
fn starts_without_a_broker_and_connects_when_it_appears() {
    let port = crate::common::broker::free_port();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), port, 5, "[cam]\ninterval = \"0s\"\n");
    let mut daemon = Daemon::start(&config, dir.path());
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "iscamd exited without a broker:\n{}",
        daemon.log_text()
    );
    let broker = Mosquitto::start_with(port, "");
    let observer = Observer::connect(broker.port, "iscamd/#");
    observer.wait_for(
        &topic("prediction"),
        Duration::from_secs(60),
        "predictions",
        |m| m.len() >= 3,
    );
    assert!(daemon.log_text().contains("cannot connect to the broker"));
    assert!(daemon.terminate().success());
}

/// With `[mqtt] username`, the embedded broker asks every client for that login and keeps
/// the daemon's client id for the daemon.
#[test]
fn the_embedded_broker_asks_for_the_login_and_keeps_the_daemons_client_id() {
    let port = crate::common::broker::free_port();
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, "s3cret\n").unwrap();
    std::fs::set_permissions(
        &password_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let extra = format!(
        "username = \"viewer\"\npassword_file = \"{}\"\n[cam]\ninterval = \"0s\"\n",
        password_file.display()
    );
    let text = config_text(port, &images_at(5), &extra);
    // No broker host: the daemon runs its own on `port`.
    let text = text.replace("host = \"127.0.0.1\"\n", "");
    let config = dir.path().join("iscamd.toml");
    std::fs::write(&config, text).unwrap();
    let mut daemon = Daemon::start(&config, dir.path());
    crate::common::broker::wait_for_port(port);
    let login = Some(("viewer", "s3cret"));
    let observer = Observer::connect_as(port, &topic("prediction"), login);
    first_prediction(&observer);

    use crate::common::broker::accepts;
    assert!(!accepts(port, "anonymous", None), "no login");
    assert!(
        !accepts(port, "guess", Some(("viewer", "wrong"))),
        "a wrong password"
    );
    assert!(accepts(port, "viewer-2", login), "the configured login");
    let own_id = format!("iscamd-{DEVICE}");
    for _ in 0..5 {
        assert!(
            !accepts(port, &own_id, login),
            "the daemon's client id is the daemon's"
        );
    }
    // Predictions go on: the daemon's own connection was not taken over.
    let before = observer.on(&topic("prediction")).len();
    observer.wait_for(
        &topic("prediction"),
        Duration::from_secs(10),
        "five more predictions",
        |m| m.len() >= before + 5,
    );
    let log = daemon.log_text();
    assert!(
        !log.contains("lost the broker"),
        "the daemon's session was taken over:\n{log}"
    );
    assert!(daemon.terminate().success());
}

#[test]
fn zero_setup_runs_its_own_broker() {
    let port = crate::common::broker::free_port();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("iscamd.log");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_iscamd"))
        .args(["run", "--images"])
        .arg(images_dir())
        .args([
            "--mqtt-port",
            &port.to_string(),
            "--device-id",
            "zero",
            "--model",
        ])
        .arg(model_path(F32_MODEL))
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut daemon = Daemon { child, log };
    crate::common::broker::wait_for_port(port);
    let observer = Observer::connect(port, "iscamd/zero/#");
    let predictions = observer.wait_for(
        "iscamd/zero/prediction",
        Duration::from_secs(30),
        "predictions",
        |m| m.len() >= 3,
    );
    check_prediction_for(&predictions[0].json(), "zero");
    assert!(
        daemon.log_text().contains("embedded MQTT broker listening"),
        "{}",
        daemon.log_text()
    );
    assert!(daemon.terminate().success());
}

#[test]
fn a_fast_source_drops_frames_and_counts_them() {
    let Setup {
        observer,
        mut daemon,
        broker: _broker,
        _dir,
    } = setup(
        "iscamd/#",
        200,
        "[cam]\ninterval = \"0s\"\non_class_change = false\n",
    );
    let stats = observer.wait_for(
        &topic("stats"),
        Duration::from_secs(30),
        "stats with drops",
        |m| {
            m.last()
                .is_some_and(|s| s.json()["frames_dropped"].as_u64().unwrap_or(0) > 0)
        },
    );
    assert!(daemon.terminate().success());
    let s = stats.last().unwrap().json();
    let frames: Vec<u64> = observer
        .on(&topic("prediction"))
        .iter()
        .map(|m| m.json()["frame"].as_u64().unwrap())
        .collect();
    let seqs: Vec<u64> = observer
        .on(&topic("prediction"))
        .iter()
        .map(|m| m.json()["seq"].as_u64().unwrap())
        .collect();
    assert!(
        frames.windows(2).any(|w| w[1] > w[0] + 1),
        "frame numbers show the drops"
    );
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "seq has no gaps");
    assert!(s["frames_captured"].as_u64().unwrap() > s["frames_processed"].as_u64().unwrap());
}

#[test]
fn check_reports_each_part() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), broker.port, 5, "");
    let run = |config: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_iscamd"))
            .arg("check")
            .arg("--config")
            .arg(config)
            .output()
            .unwrap()
    };
    let ok = run(&config);
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "{out}");
    for part in ["config", "model", "source", "broker"] {
        assert!(
            out.lines().any(|l| l.starts_with("ok") && l.contains(part)),
            "{part}: {out}"
        );
    }
    // Which ops stay in the plan is measured on the machine at hand, so any may be left out.
    assert!(
        out.contains("on tract (iscamd's ops, replaced/found: ") && out.contains("matrix kernels"),
        "check names what runs the model: {out}"
    );
    drop(broker);
    let down = run(&config);
    let out = String::from_utf8_lossy(&down.stdout);
    assert_eq!(down.status.code(), Some(1), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("FAIL") && l.contains("broker")),
        "{out}"
    );

    std::fs::write(
        &config,
        std::fs::read_to_string(&config)
            .unwrap()
            .replace("stats_interval", "stats_intervall"),
    )
    .unwrap();
    let bad = run(&config);
    let out = String::from_utf8_lossy(&bad.stdout);
    assert_eq!(bad.status.code(), Some(1));
    assert!(out.contains("stats_intervall"), "{out}");
}

#[test]
fn commands_beyond_the_rate_are_refused_and_discovery_follows_home_assistant() {
    let Setup {
        broker: _broker,
        observer,
        mut daemon,
        _dir,
    } = setup(
        "#",
        5,
        "commands_per_second = 1\n[cam]\ninterval = \"0s\"\n",
    );
    let discovery = "homeassistant/device/iscamd_cam7/config";
    observer.wait_for(discovery, Duration::from_secs(30), "discovery", |m| {
        !m.is_empty()
    });
    let config: serde_json::Value = observer.on(discovery)[0].json();
    assert_eq!(config["availability_topic"], topic("availability"));
    let label = &config["components"]["label"];
    assert_eq!(label["state_topic"], topic("prediction"));
    assert_eq!(label["default_entity_id"], "sensor.iscamd_cam7_label");

    observer.publish("homeassistant/status", "online");
    observer.wait_for(discovery, Duration::from_secs(10), "discovery again", |m| {
        m.len() >= 2
    });

    for i in 0..5 {
        observer.publish(
            &topic("cmd"),
            format!(r#"{{"id":{i},"cmd":"set","interval":"0s"}}"#),
        );
    }
    let results = observer.wait_for(
        &topic("cmd/result"),
        Duration::from_secs(10),
        "5 results",
        |m| m.len() >= 5,
    );
    let refused = results
        .iter()
        .filter(|r| {
            r.json()["error"]
                .as_str()
                .is_some_and(|e| e.contains("rate limited"))
        })
        .count();
    assert!(refused >= 3, "{refused} of 5 refused at 1 command/s");
    assert_eq!(results[0].json()["ok"], true);
    assert!(daemon.terminate().success());
}

#[test]
fn a_256_mib_command_costs_a_reconnect_and_nothing_else() {
    // The observer must not subscribe to cmd: it would choke on the payload itself.
    let Setup {
        broker,
        observer,
        mut daemon,
        _dir,
    } = setup(
        &topic("prediction"),
        5,
        "[mqtt.qos]\nprediction = 1\n[cam]\ninterval = \"0s\"\n",
    );
    first_prediction(&observer);
    let (client, pump) = big_publisher(broker.port);
    let payload = vec![b'{'; (256 << 20) - 1024];
    client
        .publish(topic("cmd"), rumqttc::QoS::AtMostOnce, false, payload)
        .unwrap();
    let sent = std::time::Instant::now();
    client.disconnect().unwrap();
    pump.join().unwrap();
    // The daemon drops the connection — on the oversized packet (max_packet_size 4 MiB),
    // or earlier on a ping the broker, busy receiving 256 MiB, answers late — reconnects,
    // and predictions go on.
    let log = wait_for_log(&daemon, "lost the broker", Duration::from_secs(60));
    let reason = log.lines().find(|l| l.contains("lost the broker")).unwrap();
    eprintln!("{reason}");
    let after = |m: &[crate::common::broker::Received]| m.iter().filter(|r| r.at > sent).count();
    observer.wait_for(
        &topic("prediction"),
        Duration::from_secs(60),
        "predictions after the huge command",
        |m| after(m) >= 10,
    );
    let seqs: Vec<u64> = observer
        .on(&topic("prediction"))
        .iter()
        .map(|m| m.json()["seq"].as_u64().unwrap())
        .collect();
    // QoS 1 is at least once: a prediction in flight when the connection dropped may come
    // twice (docs/mqtt.md: subscribers deduplicate by seq), but none may be missing.
    let mut distinct = seqs.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert!(
        distinct.windows(2).all(|w| w[1] == w[0] + 1) && distinct.len() >= 10,
        "QoS-1 predictions lost across the reconnect: {seqs:?}"
    );
    assert!(daemon.child.try_wait().unwrap().is_none());
    assert!(daemon.terminate().success());
}

#[test]
fn a_flood_of_1000_commands_per_second_is_rate_limited_and_predictions_keep_flowing() {
    let Setup {
        broker,
        observer,
        mut daemon,
        _dir,
    } = setup("iscamd/#", 5, "[cam]\ninterval = \"0s\"\n");
    first_prediction(&observer);
    let (client, pump) = big_publisher(broker.port);
    let start = std::time::Instant::now();
    let mut sent = 0;
    while start.elapsed() < Duration::from_secs(3) {
        for _ in 0..10 {
            client
                .publish(
                    topic("cmd"),
                    rumqttc::QoS::AtMostOnce,
                    false,
                    format!(r#"{{"id":"{sent}","cmd":"set","interval":"0s"}}"#),
                )
                .unwrap();
            sent += 1;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let flood = start.elapsed();
    client.disconnect().unwrap();
    pump.join().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let during = observer
        .on(&topic("prediction"))
        .iter()
        .filter(|m| m.at > start && m.at < start + flood + Duration::from_secs(1))
        .count();
    let results = observer.wait_for(
        &topic("cmd/result"),
        Duration::from_secs(30),
        "results",
        |m| m.len() >= sent / 2,
    );
    let accepted = results
        .iter()
        .filter(|r| r.json()["ok"] == serde_json::Value::Bool(true))
        .count();
    eprintln!(
        "{sent} commands in {flood:?}: {accepted} accepted, {} answered, {during} predictions meanwhile",
        results.len()
    );
    // 2 commands/s with a burst of 2: at most 2 + 2 × 3 s (+1 for timing).
    assert!(accepted <= 9, "{accepted} accepted at 2 commands/s");
    assert!(
        during >= 8,
        "{during} predictions at 5 fps during a {flood:?} flood"
    );
    assert!(daemon.child.try_wait().unwrap().is_none());
    assert!(daemon.terminate().success());
}

#[test]
fn a_retained_command_is_cleared_at_connect_not_run() {
    let broker = Mosquitto::start();
    let (client, pump) = big_publisher(broker.port);
    client
        .publish(
            topic("cmd"),
            rumqttc::QoS::AtLeastOnce,
            true,
            r#"{"id":"r","cmd":"set","interval":"0s"}"#,
        )
        .unwrap();
    client.disconnect().unwrap();
    pump.join().unwrap();
    let observer = Observer::connect(broker.port, "iscamd/#");
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), broker.port, 5, "");
    let mut daemon = Daemon::start(&config, dir.path());
    first_prediction(&observer);
    assert_eq!(
        retained(broker.port, &topic("cmd")),
        None,
        "the retained command is cleared"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        observer.on(&topic("cmd/result")).is_empty(),
        "a retained command was answered"
    );
    assert!(daemon.terminate().success());
}

/// The default prediction policy on a still scene: every frame is classified, but only the
/// first prediction and one per `prediction_interval` are published, and `seq` has no gaps.
#[test]
fn a_still_scene_gets_few_predictions_by_default_and_seq_has_no_gaps() {
    let broker = Mosquitto::start();
    let observer = Observer::connect(broker.port, "iscamd/#");
    let dir = tempfile::tempdir().unwrap();
    let tench = format!(
        "kind = \"images\"\npath = \"{}\"\nfps = 5",
        images_dir().join("n01440764_tench.JPEG").display()
    );
    let extra = "prediction_policy = \"on_change\"\nprediction_interval = \"2s\"\n\
                 [cam]\ninterval = \"0s\"\n";
    let config = write_config_with_source(dir.path(), broker.port, &tench, extra);
    let started = std::time::Instant::now();
    let mut daemon = Daemon::start(&config, dir.path());
    let processed =
        |m: &crate::common::broker::Received| m.json()["frames_processed"].as_u64().unwrap_or(0);
    observer.wait_for(
        &topic("stats"),
        Duration::from_secs(60),
        "30 frames processed",
        |m| m.last().is_some_and(|s| processed(s) >= 30),
    );
    assert!(daemon.terminate().success());
    let elapsed = started.elapsed().as_secs_f64();
    let seqs: Vec<u64> = observer
        .on(&topic("prediction"))
        .iter()
        .map(|m| m.json()["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "seq has gaps"
    );
    // `every` would have published at least 30.
    assert!(
        seqs.len() >= 2 && seqs.len() as f64 <= 2.0 + elapsed / 2.0,
        "{} predictions in {elapsed:.1} s",
        seqs.len()
    );
    eprintln!(
        "{} predictions for 30+ frames in {elapsed:.1} s: {:.2} messages/s",
        seqs.len(),
        seqs.len() as f64 / elapsed
    );
}

/// A camera absent at start: the daemon stays up and online, retries with backoff (not a
/// busy loop), says so in its log, and reports `camera` in its stats.
#[test]
fn an_absent_camera_is_retried_and_reported() {
    let broker = Mosquitto::start();
    let observer = Observer::connect(broker.port, "iscamd/#");
    let dir = tempfile::tempdir().unwrap();
    let camera = "kind = \"camera\"\ndevice = \"/dev/video-iscamd-absent\"";
    let config = write_config_with_source(dir.path(), broker.port, camera, "");
    let mut daemon = Daemon::start(&config, dir.path());
    observer.wait_for(
        &topic("availability"),
        Duration::from_secs(30),
        "online",
        |m| m.iter().any(|m| m.text() == "online"),
    );
    let stats = observer.wait_for(
        &topic("stats"),
        Duration::from_secs(20),
        "stats after 4 s",
        |m| {
            m.iter()
                .any(|s| s.json()["uptime_s"].as_f64().unwrap_or(0.0) >= 4.0)
        },
    );
    let last = stats.last().unwrap().json();
    let camera = &last["source"];
    assert_eq!(camera["ok"], false, "{last}");
    assert_eq!(camera["restarts"], 0, "{last}");
    let error = camera["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("/dev/video-iscamd-absent") && error.contains("no such camera"),
        "{last}"
    );
    assert_eq!(last["frames_captured"], 0);
    assert!(observer.on(&topic("prediction")).is_empty());

    let log = wait_for_log(&daemon, "retrying in", Duration::from_secs(5));
    // Backoff 0.5, 1, 2 s…: a handful of attempts in the first seconds, not thousands.
    let attempts = log.matches("cannot open").count();
    assert!(
        (2..=6).contains(&attempts),
        "{attempts} attempts in ~4 s:\n{log}"
    );
    assert!(daemon.terminate().success(), "{}", daemon.log_text());
    assert!(!daemon.log_text().contains("panicked"));
}

#[test]
fn live_maps_fill_the_frames_between_full_maps_and_never_outlive_their_class() {
    // Three tench frames, then three lionfish frames: stable scenes with cuts. (A full
    // map of 4 passes takes well under the 500 ms between frames.)
    let scene = tempfile::tempdir().unwrap();
    for (name, stem) in [
        ("a", "n01440764_tench"),
        ("b", "n01440764_tench"),
        ("c", "n01440764_tench"),
        ("d", "n02643566_lionfish"),
        ("e", "n02643566_lionfish"),
        ("f", "n02643566_lionfish"),
    ] {
        std::fs::copy(
            crate::common::image(stem),
            scene.path().join(format!("{name}.JPEG")),
        )
        .unwrap();
    }
    let broker = Mosquitto::start();
    let observer = Observer::connect(broker.port, "iscamd/#");
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        broker.port,
        2,
        "[cam]\ninterval = \"0s\"\nlive = true\nsteps = 1\nchannels = 4\n",
    );
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &images_dir().display().to_string(),
        &scene.path().display().to_string(),
    );
    std::fs::write(&config, text).unwrap();
    let mut daemon = Daemon::start(&config, dir.path());

    let heatmaps = observer.wait_for(
        &topic("heatmap"),
        Duration::from_secs(90),
        "live maps of both classes",
        |m| {
            let live: Vec<_> = m
                .iter()
                .map(|m| m.json())
                .filter(|h| h["fresh"] == false)
                .collect();
            live.iter().any(|h| h["class"]["index"] == 0)
                && live.iter().any(|h| h["class"]["index"] == 119)
        },
    );
    observer.wait_for(&topic("stats"), Duration::from_secs(10), "stats", |m| {
        m.last()
            .is_some_and(|s| s.json()["live_maps"].as_u64().unwrap_or(0) > 0)
    });
    assert!(daemon.terminate().success(), "{}", daemon.log_text());

    let heatmaps: Vec<serde_json::Value> = heatmaps.iter().map(|m| m.json()).collect();
    let mut fresh_class = std::collections::HashMap::new();
    for (i, h) in heatmaps.iter().enumerate() {
        assert_eq!(
            h["seq"].as_u64().unwrap(),
            i as u64 + 1,
            "one sequence for full and live maps"
        );
        let frame = h["frame"].as_u64().unwrap();
        let weights_frame = h["weights_frame"].as_u64().unwrap();
        if h["fresh"] == true {
            assert_eq!(weights_frame, frame);
            assert_eq!(h["age_ms"], 0.0);
            assert_eq!(h["passes"], 4);
            assert!(h.get("drift").is_none());
            fresh_class.insert(frame, h["class"]["index"].clone());
        } else {
            assert!(weights_frame < frame, "{h}");
            assert_eq!(h["passes"], 0);
            assert!(h["age_ms"].as_f64().unwrap() >= 0.0);
            assert_eq!(h["method"]["steps"], 1, "the full map's method");
            assert_eq!(
                fresh_class.get(&weights_frame),
                Some(&h["class"]["index"]),
                "a live map explains the class of the full map its weights come from, published before it: {h}"
            );
            // The same picture again: the same activations.
            assert!(h["drift"].as_f64().unwrap() < 1e-9, "{h}");
        }
    }
    let live = heatmaps.iter().filter(|h| h["fresh"] == false).count();
    assert!(live >= 2, "{live} live maps");
}

#[test]
fn cam_method_maps_every_frame_with_no_pass_and_no_full_map_first() {
    let Setup {
        broker: _broker,
        observer,
        mut daemon,
        _dir,
    } = setup(
        "iscamd/#",
        4,
        "[cam]\nmethod = \"cam\"\ninterval = \"0s\"\nlive = true\n",
    );
    let heatmaps = observer.wait_for(
        &topic("heatmap"),
        Duration::from_secs(60),
        "six cam maps",
        |m| m.len() >= 6,
    );
    let predictions = observer.on(&topic("prediction"));
    assert!(daemon.terminate().success(), "{}", daemon.log_text());
    // Maps at frame rate (4 fps), images at most one a second (heatmap_image_interval),
    // each with its info.
    let (all, images, infos) = (
        observer.on(&topic("heatmap")),
        observer.on(&topic("heatmap/image")),
        observer.on(&topic("heatmap/info")),
    );
    let span = all.last().unwrap().at - all[0].at;
    assert!(
        !images.is_empty() && images.len() as f64 <= 2.0 + span.as_secs_f64(),
        "{} images for {} maps in {span:?}",
        images.len(),
        all.len()
    );
    assert_eq!(images.len(), infos.len());
    let info = infos.last().unwrap().json();
    assert_eq!(info["schema"], "iscamd.heatmap_info/1");
    assert!(info.get("map").is_none(), "{info}");
    let top1: std::collections::HashMap<u64, serde_json::Value> = predictions
        .iter()
        .map(|m| m.json())
        .map(|p| (p["frame"].as_u64().unwrap(), p["top"][0]["index"].clone()))
        .collect();
    let frames: Vec<u64> = heatmaps
        .iter()
        .map(|m| m.json()["frame"].as_u64().unwrap())
        .collect();
    // The render stage may drop a map while it is busy, so frames may be skipped; but the
    // first frame already has its map: no full map is needed first.
    assert!(frames.windows(2).all(|w| w[1] > w[0]), "{frames:?}");
    assert_eq!(Some(&frames[0]), top1.keys().min(), "the first frame's map");
    for h in heatmaps.iter().map(|m| m.json()) {
        assert_eq!(h["method"]["name"], "cam", "{h}");
        assert_eq!(
            (h["passes"].clone(), h["fresh"].clone()),
            (0.into(), true.into()),
            "{h}"
        );
        let frame = h["frame"].as_u64().unwrap();
        if let Some(class) = top1.get(&frame) {
            assert_eq!(
                &h["class"]["index"], class,
                "the frame's own top-1 class: {h}"
            );
        }
    }
}
