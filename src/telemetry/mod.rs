//! Counters shared by the daemon's stages, published periodically on `<p>/<d>/stats` and,
//! with `[metrics] listen`, recorded for Prometheus (crate::prometheus).

pub mod config;
pub mod prometheus;
pub mod stage;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use metrics::{counter, gauge, histogram};
use serde::Serialize;

use crate::cam::health::{Health, HealthSnapshot, Sample, State};
use crate::source::SourceHealth;

/// The daemon's counters: each stage records what happens to it through a method, and
/// the stats stage and the supervisor read them as a [`Snapshot`]. Lock-free but for the
/// source's health and the latency window.
#[derive(Debug)]
pub struct Stats {
    started: Instant,
    frames_captured: AtomicU64,
    frames_processed: AtomicU64,
    frames_dropped: AtomicU64,
    frame_errors: AtomicU64,
    predictions: AtomicU64,
    /// Heatmaps published, full and live.
    heatmaps: AtomicU64,
    /// Of which live maps (an earlier full map's weights over the frame's activations).
    live_maps: AtomicU64,
    /// Live maps not published because the renderer was still busy with the previous one.
    live_maps_dropped: AtomicU64,
    heatmap_errors: AtomicU64,
    commands: AtomicU64,
    commands_rejected: AtomicU64,
    reconnects: AtomicU64,
    connected: AtomicBool,
    outbox_len: AtomicU64,
    outbox_dropped: AtomicU64,
    messages_dropped_offline: AtomicU64,
    inference_us_total: AtomicU64,
    last_heatmap_ms: AtomicU64,
    /// Reading a frame from the source.
    capture_stage: Stage,
    /// Analysing and publishing one frame.
    inference_stage: Stage,
    /// Set by the capture stage when the source is live (a camera or a stream).
    source: Mutex<Option<SourceHealth>>,
    /// Capture→publish latency of the last predictions.
    capture_to_publish: Mutex<LatencyWindow>,
    /// The explanations' health, once measured.
    health: Mutex<Option<Health>>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            started: Instant::now(),
            frames_captured: AtomicU64::new(0),
            frames_processed: AtomicU64::new(0),
            frames_dropped: AtomicU64::new(0),
            frame_errors: AtomicU64::new(0),
            predictions: AtomicU64::new(0),
            heatmaps: AtomicU64::new(0),
            live_maps: AtomicU64::new(0),
            live_maps_dropped: AtomicU64::new(0),
            heatmap_errors: AtomicU64::new(0),
            commands: AtomicU64::new(0),
            commands_rejected: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            connected: AtomicBool::new(false),
            outbox_len: AtomicU64::new(0),
            outbox_dropped: AtomicU64::new(0),
            messages_dropped_offline: AtomicU64::new(0),
            inference_us_total: AtomicU64::new(0),
            last_heatmap_ms: AtomicU64::new(0),
            capture_stage: Stage::default(),
            inference_stage: Stage::default(),
            source: Mutex::new(None),
            capture_to_publish: Mutex::new(LatencyWindow::default()),
            health: Mutex::new(None),
        }
    }
}

/// The stats payload (`schema: iscamd.stats/2`).
#[derive(Serialize, Debug)]
pub struct Snapshot {
    pub schema: &'static str,
    pub device: String,
    pub run: String,
    pub uptime_s: f64,
    pub fps: f64,
    pub frames_captured: u64,
    pub frames_processed: u64,
    pub frames_dropped: u64,
    pub frame_errors: u64,
    pub predictions: u64,
    pub heatmaps: u64,
    pub live_maps: u64,
    pub live_maps_dropped: u64,
    pub heatmap_errors: u64,
    pub commands: u64,
    pub commands_rejected: u64,
    pub reconnects: u64,
    pub connected: bool,
    pub queue_depth: u64,
    pub outbox_dropped: u64,
    pub dropped_while_offline: u64,
    pub latency_ms: LatencySnapshot,
    pub rss_bytes: Option<u64>,
    /// `{ok, last_error, restarts, mode, fps}` when the source is live (a camera or a stream).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceHealth>,
    /// The explanations' health (`[cam] health_every`), once measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub faithfulness: Option<HealthSnapshot>,
}

#[derive(Serialize, Debug)]
pub struct LatencySnapshot {
    pub inference_mean: f64,
    pub heatmap_last: f64,
    /// Median time from a frame's capture to its prediction's publication, over the last
    /// predictions; `null` before the first.
    pub capture_to_publish_p50: Option<f64>,
    pub capture_to_publish_p95: Option<f64>,
}

/// The last [`LatencyWindow::LEN`] latencies, in milliseconds.
#[derive(Debug, Default)]
struct LatencyWindow {
    values: std::collections::VecDeque<f64>,
}

impl LatencyWindow {
    const LEN: usize = 256;

    fn push(&mut self, ms: f64) {
        if self.values.len() == Self::LEN {
            self.values.pop_front();
        }
        self.values.push_back(ms);
    }

    /// The `q` quantile (nearest rank), `None` when empty.
    fn quantile(&self, q: f64) -> Option<f64> {
        let mut sorted: Vec<f64> = self.values.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        let last = sorted.len().checked_sub(1)?;
        Some(sorted[((last as f64) * q).round() as usize])
    }
}

impl Stats {
    /// A frame was read; `replaced_unread` when it replaced one inference never took.
    pub fn frame_captured(&self, replaced_unread: bool) {
        self.frames_captured.fetch_add(1, Relaxed);
        counter!("iscamd_frames_captured_total").increment(1);
        if replaced_unread {
            self.frames_dropped.fetch_add(1, Relaxed);
            counter!("iscamd_frames_dropped_total").increment(1);
        }
    }

    /// A frame could not be read or analysed.
    pub fn frame_error(&self) {
        self.frame_errors.fetch_add(1, Relaxed);
        counter!("iscamd_frame_errors_total").increment(1);
    }

    /// A frame was classified in `inference_ms`.
    pub fn frame_processed(&self, inference_ms: f64) {
        self.frames_processed.fetch_add(1, Relaxed);
        self.inference_us_total
            .fetch_add((inference_ms * 1e3) as u64, Relaxed);
        counter!("iscamd_frames_processed_total").increment(1);
        histogram!("iscamd_inference_seconds").record(inference_ms / 1e3);
    }

    /// Frames classified since the start.
    pub fn processed(&self) -> u64 {
        self.frames_processed.load(Relaxed)
    }

    /// A prediction for the frame captured at `captured` was handed to the publisher.
    pub fn prediction_published(&self, captured: std::time::SystemTime) {
        self.predictions.fetch_add(1, Relaxed);
        let age = captured.elapsed().unwrap_or_default();
        counter!("iscamd_predictions_total").increment(1);
        histogram!("iscamd_capture_to_publish_seconds").record(age.as_secs_f64());
        self.capture_to_publish
            .lock()
            .expect("stats poisoned")
            .push(age.as_secs_f64() * 1e3);
    }

    /// A heatmap was published: a full one that took `millis` to make and draw, or a live one.
    pub fn heatmap_published(&self, fresh: bool, millis: f64) {
        self.heatmaps.fetch_add(1, Relaxed);
        let kind = if fresh {
            self.last_heatmap_ms.store(millis as u64, Relaxed);
            histogram!("iscamd_heatmap_seconds").record(millis / 1e3);
            "full"
        } else {
            self.live_maps.fetch_add(1, Relaxed);
            "live"
        };
        counter!("iscamd_heatmaps_total", "kind" => kind).increment(1);
    }

    /// A measure of the explanations' health, judged over the last `window` ones (a new
    /// window restarts the judgement); the state after it, and whether it changed.
    pub fn health_sample(&self, sample: Sample, window: usize) -> (HealthSnapshot, bool) {
        let mut health = self.health.lock().expect("stats poisoned");
        let health = match health.as_mut() {
            Some(h) if h.window() == window => h,
            _ => health.insert(Health::new(window)),
        };
        gauge!("iscamd_explanation_health_score").set(sample.score);
        let changed = health.record(sample).is_some();
        let snapshot = health.snapshot();
        counter!("iscamd_explanation_health_checks_total").increment(1);
        if let Some(mean) = snapshot.window_mean {
            gauge!("iscamd_explanation_faithfulness").set(mean);
        }
        let faithful = match snapshot.state {
            State::Measuring => f64::NAN,
            State::Faithful => 1.0,
            State::Unfaithful => 0.0,
        };
        gauge!("iscamd_explanation_faithful").set(faithful);
        (snapshot, changed)
    }

    /// A live map was skipped: the renderer was still busy.
    pub fn live_map_dropped(&self) {
        self.live_maps_dropped.fetch_add(1, Relaxed);
        counter!("iscamd_live_maps_dropped_total").increment(1);
    }

    pub fn heatmap_failed(&self) {
        self.heatmap_errors.fetch_add(1, Relaxed);
        counter!("iscamd_heatmap_errors_total").increment(1);
    }

    pub fn command_received(&self) {
        self.commands.fetch_add(1, Relaxed);
        counter!("iscamd_commands_total").increment(1);
    }

    pub fn command_rejected(&self) {
        self.commands_rejected.fetch_add(1, Relaxed);
        counter!("iscamd_commands_rejected_total").increment(1);
    }

    /// The broker connection came up (`reconnect`: not for the first time) or went down.
    pub fn broker_connected(&self, up: bool, reconnect: bool) {
        self.connected.store(up, Relaxed);
        gauge!("iscamd_broker_connected").set(f64::from(u8::from(up)));
        if up && reconnect {
            self.reconnects.fetch_add(1, Relaxed);
            counter!("iscamd_reconnects_total").increment(1);
        }
    }

    /// The outbox's state: messages queued, and dropped since the start because it was
    /// full or because the broker was unreachable.
    pub fn outbox(&self, queued: usize, dropped: u64, dropped_offline: u64) {
        self.outbox_len.store(queued as u64, Relaxed);
        self.outbox_dropped.store(dropped, Relaxed);
        self.messages_dropped_offline
            .store(dropped_offline, Relaxed);
        gauge!("iscamd_outbox_queued").set(queued as f64);
        counter!("iscamd_outbox_dropped_total").absolute(dropped);
        counter!("iscamd_dropped_while_offline_total").absolute(dropped_offline);
    }

    pub fn source(&self, health: SourceHealth) {
        gauge!("iscamd_source_up").set(f64::from(u8::from(health.ok)));
        counter!("iscamd_source_restarts_total").absolute(health.restarts);
        *self.source.lock().expect("stats poisoned") = Some(health);
    }

    /// The live source is down and being retried.
    pub fn source_down(&self) -> bool {
        self.source
            .lock()
            .expect("stats poisoned")
            .as_ref()
            .is_some_and(|c| !c.ok && c.last_error.is_some())
    }

    /// Marks the capture stage busy reading a frame until the guard is dropped.
    pub fn capture_step(&self) -> StepGuard<'_> {
        self.capture_stage.step()
    }

    /// Marks the inference stage busy with a frame until the guard is dropped.
    pub fn inference_step(&self) -> StepGuard<'_> {
        self.inference_stage.step()
    }

    /// A stage stuck in one step for longer than `limit`: its name and for how long.
    pub fn stuck_stage(&self, limit: Duration) -> Option<(&'static str, Duration)> {
        [
            ("capture", &self.capture_stage),
            ("inference", &self.inference_stage),
        ]
        .into_iter()
        .map(|(name, stage)| (name, stage.stuck_for()))
        .find(|(_, stuck)| *stuck > limit)
    }

    pub fn snapshot(&self, origin: &crate::publish::payload::Origin) -> Snapshot {
        let uptime = self.started.elapsed().as_secs_f64();
        let processed = self.frames_processed.load(Relaxed);
        let window = self.capture_to_publish.lock().expect("stats poisoned");
        Snapshot {
            schema: "iscamd.stats/2",
            device: origin.device.clone(),
            run: origin.run.clone(),
            uptime_s: uptime,
            fps: if uptime > 0.0 {
                processed as f64 / uptime
            } else {
                0.0
            },
            frames_captured: self.frames_captured.load(Relaxed),
            frames_processed: processed,
            frames_dropped: self.frames_dropped.load(Relaxed),
            frame_errors: self.frame_errors.load(Relaxed),
            predictions: self.predictions.load(Relaxed),
            heatmaps: self.heatmaps.load(Relaxed),
            live_maps: self.live_maps.load(Relaxed),
            live_maps_dropped: self.live_maps_dropped.load(Relaxed),
            heatmap_errors: self.heatmap_errors.load(Relaxed),
            commands: self.commands.load(Relaxed),
            commands_rejected: self.commands_rejected.load(Relaxed),
            reconnects: self.reconnects.load(Relaxed),
            connected: self.connected.load(Relaxed),
            queue_depth: self.outbox_len.load(Relaxed),
            outbox_dropped: self.outbox_dropped.load(Relaxed),
            dropped_while_offline: self.messages_dropped_offline.load(Relaxed),
            latency_ms: LatencySnapshot {
                inference_mean: if processed > 0 {
                    self.inference_us_total.load(Relaxed) as f64 / 1e3 / processed as f64
                } else {
                    0.0
                },
                heatmap_last: self.last_heatmap_ms.load(Relaxed) as f64,
                capture_to_publish_p50: window.quantile(0.5),
                capture_to_publish_p95: window.quantile(0.95),
            },
            rss_bytes: rss_bytes(),
            source: self.source.lock().expect("stats poisoned").clone(),
            faithfulness: self
                .health
                .lock()
                .expect("stats poisoned")
                .as_ref()
                .map(Health::snapshot),
        }
    }
}

/// When a thread's current step began, if it is in one.
#[derive(Debug)]
pub struct Stage {
    epoch: Instant,
    /// Milliseconds since `epoch` + 1 when the step began; 0 while idle.
    busy_since: AtomicU64,
}

impl Default for Stage {
    fn default() -> Self {
        Stage {
            epoch: Instant::now(),
            busy_since: AtomicU64::new(0),
        }
    }
}

impl Stage {
    /// Marks the start of a step; the step ends when the guard is dropped.
    pub fn step(&self) -> StepGuard<'_> {
        self.busy_since
            .store(self.epoch.elapsed().as_millis() as u64 + 1, Relaxed);
        StepGuard(self)
    }

    /// How long the current step has been running (zero when idle).
    pub fn stuck_for(&self) -> Duration {
        match self.busy_since.load(Relaxed) {
            0 => Duration::ZERO,
            since => self
                .epoch
                .elapsed()
                .saturating_sub(Duration::from_millis(since - 1)),
        }
    }
}

/// Ends a [`Stage`] step when dropped.
pub struct StepGuard<'a>(&'a Stage);

impl Drop for StepGuard<'_> {
    fn drop(&mut self) {
        self.0.busy_since.store(0, Relaxed);
    }
}

/// Resident set size from /proc (Linux); `None` elsewhere.
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stage_is_stuck_only_inside_a_step() {
        let stage = Stage::default();
        assert_eq!(stage.stuck_for(), Duration::ZERO);
        {
            let _step = stage.step();
            std::thread::sleep(Duration::from_millis(30));
            assert!(stage.stuck_for() >= Duration::from_millis(25));
        }
        assert_eq!(stage.stuck_for(), Duration::ZERO);
    }
}
