//! docs/schemas/: one schema per payload the daemon names, and the command schema accepts
//! what docs/mqtt.md shows and refuses what the daemon refuses. The daemon's own payloads
//! are checked in every integration test that observes them (tests/it/common/schemas.rs).

use crate::common::schemas::Schemas;
use serde_json::{json, Value};

/// Every `"iscamd.<kind>/<n>"` the code that publishes names: the daemon's stages and
/// what they publish.
fn schema_names_in_sources() -> Vec<String> {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut dirs: Vec<_> = ["publish", "daemon", "events", "telemetry"]
        .iter()
        .map(|d| src.join(d))
        .collect();
    let mut files = Vec::new();
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            match path.is_dir() {
                true => dirs.push(path),
                false => files.push(path),
            }
        }
    }
    let mut names = Vec::new();
    for path in files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
    {
        let text = std::fs::read_to_string(path).unwrap();
        for piece in text.split("\"iscamd.").skip(1) {
            let name = piece.split('"').next().unwrap();
            if name.contains('/') && !name.contains(' ') {
                names.push(format!("iscamd.{name}"));
            }
        }
    }
    names.sort();
    names.dedup();
    names
}

#[test]
fn every_payload_the_sources_name_has_a_schema() {
    let names = schema_names_in_sources();
    assert!(names.len() >= 7, "{names:?}");
    for name in names {
        let minimal = json!({ "schema": name });
        let error = Schemas::get().check(&minimal).unwrap_err();
        assert!(
            !error.contains("no schema"),
            "{name} has no schema in docs/schemas: {error}"
        );
    }
}

#[test]
fn the_command_schema_takes_the_documented_commands() {
    for command in [
        r#"{"id":"7","cmd":"explain","method":"iscam:n=4,k=32","class":5,"weighting":"prob","seed":1}"#,
        r#"{"cmd":"explain"}"#,
        r#"{"id":3,"cmd":"set","interval":"10s","live":true}"#,
        r#"{"cmd":"set","live":false}"#,
        r#"{"cmd":"republish"}"#,
        r#"{"id":null,"cmd":"reload"}"#,
    ] {
        let value: Value = serde_json::from_str(command).unwrap();
        Schemas::get()
            .check_as("command", &value)
            .unwrap_or_else(|e| panic!("{command}: {e}"));
    }
}

#[test]
fn the_command_schema_refuses_what_the_daemon_refuses() {
    for command in [
        r#"{"cmd":"reboot"}"#,
        r#"{"cmd":"set"}"#,
        r#"{"cmd":"set","live":"yes"}"#,
        r#"{"cmd":"explain","steps":0}"#,
        r#"{"cmd":"explain","fps":3}"#,
        r#"{"cmd":"reload","now":true}"#,
        r#"{"id":"x"}"#,
    ] {
        let value: Value = serde_json::from_str(command).unwrap();
        assert!(
            Schemas::get().check_as("command", &value).is_err(),
            "{command} should be refused"
        );
    }
}

#[test]
fn a_payload_that_drifts_from_its_schema_is_caught() {
    let good = json!({
        "schema": "iscamd.settings/1", "device": "cam7", "run": "9f1c2a7be04d5538",
        "heatmap_interval_s": 10.0, "live": false
    });
    Schemas::get().check(&good).unwrap();
    let mut extra = good.clone();
    extra["new_field"] = json!(1);
    let mut wrong = good.clone();
    wrong["live"] = json!("no");
    for bad in [extra, wrong, json!({"device": "cam7"})] {
        assert!(Schemas::get().check(&bad).is_err(), "{bad}");
    }
}
