//! `[metrics] listen`: a Prometheus endpoint whose text `promtool check metrics` accepts
//! and whose counters match the stats payload.

use std::io::Write;
use std::time::Duration;

use crate::common::broker::{free_port, Mosquitto};
use crate::common::daemon::*;
use crate::common::process::Daemon;

/// `GET /metrics`: the body of a 200 answer.
pub fn scrape(port: u16) -> String {
    let answer = crate::common::http::get(port, "/metrics");
    assert_eq!(answer.status, 200, "{}", answer.head);
    answer.text()
}

/// The value of the sample `series` (name and labels, as printed).
pub fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

pub fn promtool_check(text: &str) {
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; scripts/setup.sh installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn metrics_are_served_checked_by_promtool_and_match_stats() {
    let port = free_port();
    let extra = format!(
        "commands_per_second = 100\n[cam]\ninterval = \"2s\"\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n"
    );
    let Setup {
        broker: _broker,
        observer,
        mut daemon,
        _dir,
    } = setup("iscamd/#", 5, &extra);
    first_prediction(&observer);
    for i in 0..3 {
        observer.publish(
            &topic("cmd"),
            format!(r#"{{"id":{i},"cmd":"set","interval":"2s"}}"#),
        );
    }
    let stats = observer.wait_for(
        &topic("stats"),
        Duration::from_secs(30),
        "stats with 3 commands, 10 frames and a heatmap",
        |m| {
            m.last().is_some_and(|s| {
                let s = s.json();
                s["commands"] == 3
                    && s["frames_processed"].as_u64() >= Some(10)
                    && s["heatmaps"].as_u64() >= Some(1)
            })
        },
    );
    let stats = stats.last().unwrap().json();
    let text = scrape(port);
    promtool_check(&text);

    assert_eq!(sample(&text, "iscamd_commands_total"), 3.0);
    assert_eq!(sample(&text, "iscamd_commands_rejected_total"), 0.0);
    assert_eq!(sample(&text, "iscamd_broker_connected"), 1.0);
    // Scraped after the stats message: counters at least as far, never behind.
    for (series, field) in [
        ("iscamd_frames_processed_total", "frames_processed"),
        ("iscamd_predictions_total", "predictions"),
        ("iscamd_inference_seconds_count", "frames_processed"),
        ("iscamd_heatmaps_total{kind=\"full\"}", "heatmaps"),
    ] {
        let (scraped, published) = (sample(&text, series), stats[field].as_f64().unwrap());
        assert!(
            scraped >= published && scraped <= published + 50.0,
            "{series} {scraped} against stats {field} {published}"
        );
    }
    assert_eq!(
        sample(
            &text,
            "iscamd_model_info{model=\"squeezenet1.0-dc.onnx\",backend=\"tract\"}"
        ),
        1.0
    );
    assert!(
        text.contains("# TYPE iscamd_heatmap_seconds histogram"),
        "{text}"
    );
    assert!(daemon.terminate().success());
}

#[test]
fn a_metrics_address_in_use_is_a_clear_start_error() {
    let broker = Mosquitto::start();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let extra = format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n");
    let config = write_config(dir.path(), broker.port, 5, &extra);
    let mut daemon = Daemon::start(&config, dir.path());
    let status = daemon.child.wait().unwrap();
    let log = daemon.log_text();
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(
        log.contains("metrics.listen") && log.contains(&port.to_string()),
        "{log}"
    );
}
