//! What every live source shares: it goes down, is retried with backoff, and reports its
//! state for `stats`. The camera and the GStreamer streams keep their own device logic and
//! hand failures, opens and frames to a [`Reconnect`].

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::Error;

/// How a live source is doing, for `stats` and logs.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SourceHealth {
    /// Streaming, and the last read gave a frame.
    pub ok: bool,
    pub last_error: Option<String>,
    /// Times the source was restarted after a failure.
    pub restarts: u64,
    /// What streams now: the camera's mode, or the stream's negotiated caps.
    pub mode: Option<String>,
    /// Frames per second delivered, measured over the last few seconds.
    pub fps: Option<f64>,
}

/// Waits between attempts to open a source: doubling from `first` up to `max`.
#[derive(Clone, Debug)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        Backoff {
            first,
            max,
            next: first,
        }
    }

    /// 0.5 s doubling to 30 s, as documented for every live source.
    pub fn standard() -> Self {
        Backoff::new(Duration::from_millis(500), Duration::from_secs(30))
    }

    /// The wait before the next attempt; each call doubles the one after.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

/// Longest a call to `next_frame` waits for a retry, so the capture thread stays responsive.
const MAX_WAIT: Duration = Duration::from_millis(200);
/// The window over which `fps` is measured.
const FPS_WINDOW: Duration = Duration::from_secs(3);

/// The retry schedule and health of one live source.
pub struct Reconnect {
    /// Names the source in logs, without secrets.
    name: String,
    backoff: Backoff,
    /// Closed until then; `None` while open.
    retry_at: Option<Instant>,
    health: SourceHealth,
    /// Set once the source has opened: later opens are restarts.
    opened_before: bool,
    window_start: Instant,
    window_frames: u32,
}

impl Reconnect {
    pub fn new(name: String, backoff: Backoff) -> Self {
        Reconnect {
            name,
            backoff,
            retry_at: Some(Instant::now()),
            health: SourceHealth::default(),
            opened_before: false,
            window_start: Instant::now(),
            window_frames: 0,
        }
    }

    pub fn health(&self) -> &SourceHealth {
        &self.health
    }

    pub fn is_open(&self) -> bool {
        self.retry_at.is_none()
    }

    /// While closed: `Ok` once it is time to try opening again, else (after waiting at
    /// most `MAX_WAIT`) [`Error::SourceUnavailable`] with the last failure.
    pub fn wait_turn(&mut self) -> Result<(), Error> {
        let Some(retry_at) = self.retry_at else {
            return Ok(());
        };
        let now = Instant::now();
        if now < retry_at {
            std::thread::sleep((retry_at - now).min(MAX_WAIT));
            if Instant::now() < retry_at {
                return Err(self.unavailable());
            }
        }
        Ok(())
    }

    /// The source opened and streams `mode`.
    pub fn opened(&mut self, mode: String) {
        if self.opened_before {
            self.health.restarts += 1;
        }
        self.opened_before = true;
        tracing::info!("{}: streaming {mode}", self.name);
        self.health.mode = Some(mode);
        self.retry_at = None;
        self.window_start = Instant::now();
        self.window_frames = 0;
    }

    /// A good frame: the source is healthy again.
    pub fn frame(&mut self) {
        self.backoff.reset();
        self.health.ok = true;
        self.window_frames += 1;
        let elapsed = self.window_start.elapsed();
        if elapsed >= FPS_WINDOW {
            let fps = f64::from(self.window_frames) / elapsed.as_secs_f64();
            self.health.fps = Some((fps * 100.0).round() / 100.0);
            self.window_start = Instant::now();
            self.window_frames = 0;
        }
    }

    /// Records a problem that does not close the source (one bad frame).
    pub fn note(&mut self, message: String) {
        self.health.last_error = Some(message);
    }

    /// The source failed (`what`: while doing what) and was closed by the caller: schedules
    /// the next attempt and returns the error to hand to the capture stage.
    pub fn failed(&mut self, what: &str, e: &dyn std::fmt::Display) -> Error {
        let delay = self.backoff.next_delay();
        let message = format!("{what}: {e}");
        tracing::warn!(
            "{}: {message}; retrying in {:.1} s",
            self.name,
            delay.as_secs_f64()
        );
        self.health.ok = false;
        self.health.mode = None;
        self.health.fps = None;
        self.health.last_error = Some(message);
        self.retry_at = Some(Instant::now() + delay);
        self.unavailable()
    }

    fn unavailable(&self) -> Error {
        Error::SourceUnavailable(self.health.last_error.clone().unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_bound_and_resets() {
        let mut b = Backoff::standard();
        let delays: Vec<u64> = (0..9).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(
            delays,
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(500));
    }

    #[test]
    fn a_failure_closes_until_the_backoff_has_passed() {
        let mut r = Reconnect::new(
            "test".into(),
            Backoff::new(Duration::from_millis(300), Duration::from_secs(1)),
        );
        assert!(r.wait_turn().is_ok(), "the first attempt is immediate");
        r.opened("a".into());
        r.frame();
        assert!(r.health().ok && r.is_open());
        let e = r.failed("read failed", &"EIO").to_string();
        assert!(e.contains("read failed: EIO"), "{e}");
        assert!(!r.is_open() && !r.health().ok);
        let t0 = Instant::now();
        assert!(r.wait_turn().is_err(), "not yet: 300 ms to wait");
        assert!(t0.elapsed() <= MAX_WAIT + Duration::from_millis(50));
        while r.wait_turn().is_err() {}
        assert!(t0.elapsed() >= Duration::from_millis(250));
        r.opened("a".into());
        assert_eq!(r.health().restarts, 1);
    }
}
