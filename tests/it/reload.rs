//! Reloading a running daemon (SIGHUP, `{"cmd":"reload"}`) against a real mosquitto: a
//! changed `[cam]` reaches the next heatmap without a reconnect or a gap in seq, a broken
//! config is refused while predictions go on, and a new model file runs the next frames.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::broker::{Mosquitto, Observer};
use crate::common::daemon::*;
use crate::common::process::Daemon;
use crate::common::{image, model_path, F32_MODEL, INT8_MODEL};

/// Replaces the config's `[cam]` tail (write_config puts `extra` last).
fn rewrite(config: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(config).unwrap();
    assert!(text.contains(from), "{text}");
    std::fs::write(config, text.replace(from, to)).unwrap();
}

#[test]
fn a_changed_cam_section_reaches_the_next_heatmap_without_a_reconnect_or_a_gap() {
    let cam = "[cam]\ninterval = \"1s\"\non_class_change = false\nmethod = \"iscam:n=1,k=4\"\n";
    let Setup {
        broker: _broker,
        observer,
        mut daemon,
        _dir,
    } = setup("iscamd/#", 5, cam);
    let config = _dir.path().join("iscamd.toml");
    let first = observer.wait_for(
        &topic("heatmap"),
        Duration::from_secs(60),
        "a heatmap",
        |m| !m.is_empty(),
    );
    assert_eq!(first[0].json()["method"]["name"], "iscam");

    rewrite(
        &config,
        "method = \"iscam:n=1,k=4\"",
        "method = \"sscam:n=2,k=4\"",
    );
    hup(&daemon);
    let log = wait_for_log(&daemon, "reloaded:", Duration::from_secs(30));
    assert!(log.contains("reloaded: [cam] changed"), "{log}");
    observer.wait_for(
        &topic("heatmap"),
        Duration::from_secs(60),
        "a heatmap of the new method",
        |m| m.iter().any(|h| h.json()["method"]["name"] == "sscam"),
    );
    let before = observer.on(&topic("prediction")).len();
    observer.wait_for(
        &topic("prediction"),
        Duration::from_secs(10),
        "more predictions",
        |m| m.len() >= before + 3,
    );
    assert!(daemon.terminate().success(), "{}", daemon.log_text());

    let heatmaps: Vec<_> = observer
        .on(&topic("heatmap"))
        .iter()
        .map(|h| h.json())
        .collect();
    let first_new = heatmaps
        .iter()
        .position(|h| h["method"]["name"] == "sscam")
        .unwrap();
    assert!(
        heatmaps[first_new..]
            .iter()
            .all(|h| h["method"]["name"] == "sscam"),
        "after the reload every heatmap is sscam"
    );
    assert_eq!(heatmaps[first_new]["method"]["steps"], 2);
    let predictions: Vec<_> = observer
        .on(&topic("prediction"))
        .iter()
        .map(|p| p.json())
        .collect();
    let run = &predictions[0]["run"];
    for (i, p) in predictions.iter().enumerate() {
        assert_eq!(
            p["seq"].as_u64().unwrap(),
            i as u64 + 1,
            "seq without a gap"
        );
        assert_eq!(&p["run"], run, "one run: the stages were not restarted");
    }
    let log = daemon.log_text();
    assert_eq!(log.matches("connected to the broker").count(), 1, "{log}");
}

#[test]
fn a_broken_config_is_refused_and_the_daemon_runs_on() {
    let cam = "[cam]\ninterval = \"0s\"\non_class_change = false\n";
    let Setup {
        broker: _broker,
        observer,
        mut daemon,
        _dir,
    } = setup("iscamd/#", 5, cam);
    let config = _dir.path().join("iscamd.toml");
    first_prediction(&observer);

    rewrite(&config, "interval = \"0s\"", "interval = \"soon\"");
    hup(&daemon);
    let log = wait_for_log(&daemon, "reload refused", Duration::from_secs(30));
    let line = log.lines().find(|l| l.contains("reload refused")).unwrap();
    assert!(
        line.contains("interval") && line.contains("running on unchanged"),
        "{line}"
    );

    // The same through the command, answered on cmd/result.
    let r1 = reload_command(&observer, "r1");
    assert_eq!(r1["ok"], false);
    assert!(r1["error"].as_str().unwrap().contains("interval"), "{r1}");

    let before = observer.on(&topic("prediction")).len();
    observer.wait_for(
        &topic("prediction"),
        Duration::from_secs(10),
        "predictions after the refused reloads",
        |m| m.len() >= before + 5,
    );

    rewrite(
        &config,
        "interval = \"soon\"",
        "interval = \"0s\"\nmin_confidence = 0.6",
    );
    let r2 = reload_command(&observer, "r2");
    assert_eq!(r2["ok"], true, "{r2}");
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "{}",
        daemon.log_text()
    );
    assert!(daemon.terminate().success(), "{}", daemon.log_text());
}

/// Sends `{"cmd":"reload"}` with `id`; returns its result.
fn reload_command(observer: &Observer, id: &str) -> serde_json::Value {
    observer.publish(&topic("cmd"), format!(r#"{{"id":"{id}","cmd":"reload"}}"#));
    let results = observer.wait_for(&topic("cmd/result"), Duration::from_secs(30), id, |m| {
        m.iter().any(|r| r.json()["id"] == id)
    });
    let result = results.iter().map(|r| r.json()).find(|r| r["id"] == id);
    result.unwrap()
}

/// The top-1 score `iscamd classify` gives `image` with `model`.
fn classify_score(model: &Path, image: &Path) -> f64 {
    let out = Command::new(env!("CARGO_BIN_EXE_iscamd"))
        .args(["classify", "--format", "json", "--top", "1", "--model"])
        .arg(model)
        .arg(image)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    line["top"][0]["score"].as_f64().unwrap()
}

#[test]
fn a_new_model_file_runs_the_next_frames() {
    let broker = Mosquitto::start();
    let observer = Observer::connect(broker.port, "iscamd/#");
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.onnx");
    std::fs::copy(model_path(F32_MODEL), &model).unwrap();
    let tench = image("n01440764_tench");
    let extra = "[cam]\ninterval = \"0s\"\n";
    let config = write_config_for(dir.path(), broker.port, &model, &tench, extra);
    let mut daemon = Daemon::start(&config, dir.path());
    let score = |p: &crate::common::broker::Received| p.json()["top"][0]["score"].as_f64().unwrap();

    let f32_score = classify_score(&model_path(F32_MODEL), &tench);
    let int8_score = classify_score(&model_path(INT8_MODEL), &tench);
    assert!(
        (f32_score - int8_score).abs() > 1e-3,
        "{f32_score} {int8_score}"
    );
    let first = observer.wait_for(
        &topic("prediction"),
        Duration::from_secs(30),
        "a prediction",
        |m| !m.is_empty(),
    );
    assert!(
        (score(&first[0]) - f32_score).abs() < 1e-4,
        "{} {f32_score}",
        score(&first[0])
    );

    // A new file takes the old one's name in one rename, as a package or `model fetch` does.
    let staged = dir.path().join("model.onnx.new");
    std::fs::copy(model_path(INT8_MODEL), &staged).unwrap();
    std::fs::rename(&staged, &model).unwrap();
    hup(&daemon);
    let log = wait_for_log(&daemon, "reloaded:", Duration::from_secs(60));
    assert!(log.contains("reloaded: the model changed"), "{log}");
    let predictions = observer.wait_for(
        &topic("prediction"),
        Duration::from_secs(30),
        "a prediction from the int8 model",
        |m| m.iter().any(|p| (score(p) - int8_score).abs() < 1e-4),
    );
    let switched = predictions
        .iter()
        .position(|p| (score(p) - int8_score).abs() < 1e-4)
        .unwrap();
    assert!(
        predictions[..switched]
            .iter()
            .all(|p| (score(p) - f32_score).abs() < 1e-4),
        "every prediction comes from one of the two models"
    );
    assert!(daemon.terminate().success(), "{}", daemon.log_text());
}

/// A changed `[events]` ends the open episode (`stopped`, with its snapshot) and the next
/// one opens by the new rules, on the same connection.
#[test]
fn a_changed_events_section_ends_the_episode_and_the_next_follows_the_new_rules() {
    let broker = Mosquitto::start();
    let observer = Observer::connect(broker.port, "iscamd/#");
    let dir = tempfile::tempdir().unwrap();
    let source = format!(
        "kind = \"images\"\npath = \"{}\"\nfps = 5",
        image("n01440764_tench").display()
    );
    let extra = "[cam]\ninterval = \"0s\"\non_class_change = false\n[events]\nmin_frames = 3\n";
    let config = write_config_with_source(dir.path(), broker.port, &source, extra);
    let mut daemon = Daemon::start(&config, dir.path());
    let events = |observer: &Observer| -> Vec<serde_json::Value> {
        observer
            .on(&topic("event"))
            .iter()
            .map(|m| m.json())
            .collect()
    };
    observer.wait_for(&topic("event"), Duration::from_secs(60), "a new", |m| {
        !m.is_empty()
    });

    rewrite(&config, "min_frames = 3", "min_frames = 10");
    hup(&daemon);
    let log = wait_for_log(&daemon, "reloaded:", Duration::from_secs(30));
    assert!(log.contains("[events]"), "{log}");
    // The end waits for the map of its peak frame (the first map of this daemon, which may
    // first measure how many passes to run at once), so it may come after the next new.
    observer.wait_for(
        &topic("event"),
        Duration::from_secs(60),
        "the first episode's end and the second episode",
        |m| {
            let of_type = |t: &str| m.iter().filter(|e| e.json()["type"] == t).count();
            of_type("new") >= 2 && of_type("end") >= 1
        },
    );
    assert!(daemon.terminate().success(), "{}", daemon.log_text());

    let events = events(&observer);
    let of = |id: &serde_json::Value| -> Vec<&serde_json::Value> {
        events.iter().filter(|e| &e["id"] == id).collect()
    };
    let first = of(&events[0]["id"]);
    assert_eq!(first.len(), 2, "{events:#?}");
    let (new, end) = (first[0], first[1]);
    assert_eq!((&new["type"], &new["frames"]), (&"new".into(), &3.into()));
    assert_eq!(
        (&end["type"], &end["reason"]),
        (&"end".into(), &"stopped".into())
    );
    assert_eq!(end["snapshot"], true, "{end}");
    let second = events
        .iter()
        .find(|e| e["id"] != new["id"])
        .expect("a second episode");
    assert_eq!(second["type"], "new");
    assert_eq!(
        second["frames"], 10,
        "opened by the new min_frames: {second}"
    );
    assert_eq!(second["run"], new["run"], "the same run: no restart");
}
