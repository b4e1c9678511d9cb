//! Counters shared by the daemon's tasks, published periodically on `<p>/<d>/stats`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::source::CameraHealth;

/// Lock-free counters: each task only adds to its own.
#[derive(Debug)]
pub struct Stats {
    started: Instant,
    pub frames_captured: AtomicU64,
    pub frames_processed: AtomicU64,
    pub frames_dropped: AtomicU64,
    pub frame_errors: AtomicU64,
    pub predictions: AtomicU64,
    /// Heatmaps published, full and live.
    pub heatmaps: AtomicU64,
    /// Of which live maps (an earlier full map's weights over the frame's activations).
    pub live_maps: AtomicU64,
    /// Live maps not published because the renderer was still busy with the previous one.
    pub live_maps_dropped: AtomicU64,
    pub heatmap_errors: AtomicU64,
    pub commands: AtomicU64,
    pub commands_rejected: AtomicU64,
    pub reconnects: AtomicU64,
    pub connected: AtomicBool,
    pub outbox_len: AtomicU64,
    pub outbox_dropped: AtomicU64,
    pub messages_dropped_offline: AtomicU64,
    inference_us_total: AtomicU64,
    pub last_heatmap_ms: AtomicU64,
    /// Reading a frame from the source.
    pub capture_stage: Stage,
    /// Analysing and publishing one frame.
    pub inference_stage: Stage,
    /// Set by the capture thread when the source is a camera.
    pub camera: Mutex<Option<CameraHealth>>,
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
            camera: Mutex::new(None),
        }
    }
}

/// The stats payload (`schema: iscamd.stats/1`).
#[derive(Serialize, Debug)]
pub struct Snapshot {
    pub schema: &'static str,
    pub device: String,
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
    /// `{ok, last_error, reopen_count, mode}` when the source is a camera.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub camera: Option<CameraHealth>,
}

#[derive(Serialize, Debug)]
pub struct LatencySnapshot {
    pub inference_mean: f64,
    pub heatmap_last: f64,
}

impl Stats {
    pub fn add_inference(&self, millis: f64) {
        self.inference_us_total
            .fetch_add((millis * 1e3) as u64, Relaxed);
    }

    pub fn snapshot(&self, device: &str) -> Snapshot {
        let uptime = self.started.elapsed().as_secs_f64();
        let processed = self.frames_processed.load(Relaxed);
        Snapshot {
            schema: "iscamd.stats/1",
            device: device.to_string(),
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
            },
            rss_bytes: rss_bytes(),
            camera: self.camera.lock().expect("stats poisoned").clone(),
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
