//! systemd supervision over `sd_notify`: `READY=1` once the model is loaded and the first
//! frame processed — or the camera found down and being retried, which is the daemon doing
//! its job (a restart would not bring the camera back) —, `STATUS=` with frame rate,
//! camera and broker state, `WATCHDOG=1` only while
//! the pipeline makes progress, `STOPPING=1` at shutdown. Without `NOTIFY_SOCKET` (not
//! under systemd) every notification is a no-op.
//!
//! Progress is judged per [`Stage`](crate::telemetry::Stage): a thread marks when it starts
//! a step (reading a frame, analysing one) and when it finishes; a stage stuck in one step
//! for longer than the watchdog's ping interval starves the watchdog, and systemd restarts
//! the service. A stage that is waiting (for a frame, for the pacer) is not stuck.
//! A stage that has died stops the pings at once, before the topology shuts down.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;

use super::shutdown::Shutdown;
use crate::error::Result;
use crate::publish::payload::Origin;
use crate::telemetry::Stats;

/// Tells systemd we are stopping.
pub fn stopping() {
    notify(&[NotifyState::Stopping]);
}

/// Tells systemd why the daemon is about to fail.
pub fn failing(why: &str) {
    notify(&[NotifyState::Status(&format!("failed: {why}"))]);
}

fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!("sd_notify: {e}");
    }
}

/// The supervision stage.
pub struct Supervisor {
    pub stats: Arc<Stats>,
    pub origin: Origin,
    /// Set the moment any stage fails ([`super::shutdown::Ends::failure_flag`]).
    pub failed: Arc<AtomicBool>,
}

impl Supervisor {
    /// Runs until shutdown.
    pub async fn run(self, mut shutdown: Shutdown) -> Result<()> {
        let stats = &self.stats;
        let watchdog = sd_notify::watchdog_enabled();
        // systemd asks for pings at half the watchdog timeout; without a watchdog, STATUS
        // still goes out now and then.
        let period = watchdog.map_or(Duration::from_secs(10), |w| {
            (w / 2).max(Duration::from_millis(50))
        });
        if let Some(w) = watchdog {
            tracing::info!(
                "systemd watchdog: {w:?}, pinging every {period:?} while the pipeline makes progress"
            );
        }
        let mut ready = false;
        let mut starved = false;
        loop {
            let wait = if ready {
                period
            } else {
                Duration::from_millis(100)
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.recv() => return Ok(()),
            }
            // A stage has died: the topology is stopping the daemon; no more pings.
            if self.failed.load(Relaxed) {
                continue;
            }
            if !ready {
                if stats.processed() == 0 && !stats.source_down() {
                    continue;
                }
                ready = true;
                notify(&[
                    NotifyState::Ready,
                    NotifyState::Status(&status(stats, &self.origin)),
                ]);
                continue;
            }
            let stuck = stats.stuck_stage(period);
            match stuck {
                None => {
                    starved = false;
                    let status = status(stats, &self.origin);
                    if watchdog.is_some() {
                        notify(&[NotifyState::Watchdog, NotifyState::Status(&status)]);
                    } else {
                        notify(&[NotifyState::Status(&status)]);
                    }
                }
                Some((name, stuck_for)) => {
                    let message = format!(
                        "stalled: {name} stuck in one step for {:.1} s",
                        stuck_for.as_secs_f64()
                    );
                    if !starved {
                        tracing::error!("{message}: not feeding the watchdog");
                        starved = true;
                    }
                    notify(&[NotifyState::Status(&message)]);
                }
            }
        }
    }
}

fn status(stats: &Stats, origin: &Origin) -> String {
    let s = stats.snapshot(origin);
    let source = match &s.source {
        Some(c) if !c.ok => format!(
            ", source down ({}; restarted {}×)",
            c.last_error.as_deref().unwrap_or("starting"),
            c.restarts
        ),
        _ => String::new(),
    };
    format!(
        "{:.1} fps, {} predictions, {} heatmaps{source}, broker {}",
        s.fps,
        s.predictions,
        s.heatmaps,
        if s.connected {
            "connected"
        } else {
            "disconnected"
        }
    )
}
