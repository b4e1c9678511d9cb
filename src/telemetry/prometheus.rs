//! The Prometheus metrics (docs/metrics.md): the `metrics` crate's recorder, rendered on
//! `/metrics` by iscamd's HTTP server (`[metrics] listen`, `[web] listen`: crate::web).
//! [`crate::telemetry::Stats`] records into it beside its own counters; without either
//! endpoint no recorder is installed and those calls cost next to nothing.

use std::sync::Mutex;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::error::{Error, Result};

/// How often the recorder's housekeeping runs (the exporter's own default).
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Histogram buckets, in seconds: from a fast inference to a slow full map.
const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Installs the recorder (once per process, inside the daemon's runtime); the handle
/// renders `/metrics` (crate::web serves it).
pub fn install() -> Result<PrometheusHandle> {
    let failed = |e: &dyn std::fmt::Display| Error::Stage(format!("cannot record metrics: {e}"));
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
        .map_err(|e| failed(&e))?
        .install_recorder()
        .map_err(|e| failed(&e))?;
    // The recorder's housekeeping (histogram windows), which its own listener ran.
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(UPKEEP_EVERY).await;
            upkeep.run_upkeep();
        }
    });
    describe();
    metrics::gauge!("iscamd_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    Ok(handle)
}

/// The model in use, as `iscamd_model_info{model, backend} 1`; a model it replaces
/// drops to 0.
pub fn model_info(model: &str, backend: &str) {
    static CURRENT: Mutex<Option<(String, String)>> = Mutex::new(None);
    let mut current = CURRENT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((m, b)) = current.take() {
        metrics::gauge!("iscamd_model_info", "model" => m, "backend" => b).set(0.0);
    }
    let labels = (model.to_string(), backend.to_string());
    metrics::gauge!("iscamd_model_info", "model" => labels.0.clone(), "backend" => labels.1.clone())
        .set(1.0);
    *current = Some(labels);
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    for (name, help) in [
        (
            "iscamd_frames_captured_total",
            "Frames read from the source.",
        ),
        ("iscamd_frames_processed_total", "Frames classified."),
        (
            "iscamd_frames_dropped_total",
            "Frames replaced before inference took them.",
        ),
        (
            "iscamd_frame_errors_total",
            "Frames that could not be read or analysed.",
        ),
        ("iscamd_predictions_total", "Predictions published."),
        (
            "iscamd_heatmaps_total",
            "Heatmaps published, by kind (full or live).",
        ),
        (
            "iscamd_live_maps_dropped_total",
            "Live maps skipped: the renderer was busy.",
        ),
        ("iscamd_heatmap_errors_total", "Heatmaps that failed."),
        ("iscamd_commands_total", "Commands received."),
        ("iscamd_commands_rejected_total", "Commands refused."),
        ("iscamd_reconnects_total", "Reconnections to the broker."),
        (
            "iscamd_outbox_dropped_total",
            "QoS-1 messages dropped from the full outbox.",
        ),
        (
            "iscamd_dropped_while_offline_total",
            "Messages not kept while the broker was unreachable.",
        ),
        (
            "iscamd_source_restarts_total",
            "Restarts of the live source after failures.",
        ),
        (
            "iscamd_explanation_health_checks_total",
            "Maps whose health was measured ([cam] health_every).",
        ),
    ] {
        describe_counter!(name, help);
        // Every counter from 0, so that rates work from the first scrape.
        if name != "iscamd_heatmaps_total" {
            metrics::counter!(name).absolute(0);
        }
    }
    for kind in ["full", "live"] {
        metrics::counter!("iscamd_heatmaps_total", "kind" => kind).absolute(0);
    }
    for (name, help) in [
        (
            "iscamd_broker_connected",
            "1 while connected to the broker.",
        ),
        ("iscamd_outbox_queued", "Messages waiting in the outbox."),
        (
            "iscamd_source_up",
            "1 while the live source delivers frames.",
        ),
        (
            "iscamd_model_info",
            "The model in use (1) and those it replaced (0).",
        ),
        ("iscamd_build_info", "iscamd's version."),
        (
            "iscamd_explanation_faithfulness",
            "Mean over the health window of how much more of the class's probability deleting a map's top pixels takes than deleting its shuffled copy's.",
        ),
        (
            "iscamd_explanation_health_score",
            "The last measured map's score (the same difference, one frame).",
        ),
        (
            "iscamd_explanation_faithful",
            "1 while maps beat their shuffled control over the window, 0 when they do not (NaN while measuring).",
        ),
    ] {
        describe_gauge!(name, help);
    }
    for (name, help) in [
        ("iscamd_inference_seconds", "Time to classify a frame."),
        (
            "iscamd_heatmap_seconds",
            "Time to make and draw a full map.",
        ),
        (
            "iscamd_capture_to_publish_seconds",
            "From a frame's capture to its prediction's publication.",
        ),
    ] {
        describe_histogram!(name, Unit::Seconds, help);
    }
}
