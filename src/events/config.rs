//! `[events]`: when frames of a class make an episode.

use serde::Deserialize;

use crate::error::{Error, Result};

/// `[events]`: episodes of a class on `<prefix>/<device>/event` (see [`crate::events`]).
#[derive(Clone, PartialEq, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    pub enabled: bool,
    /// A frame counts for its top-1 class at or above this probability.
    pub min_confidence: f64,
    /// Consecutive frames that open an episode.
    pub min_frames: u32,
    /// Consecutive frames without the class that end it.
    pub end_frames: u32,
    /// How far the peak score must rise to send an `update`.
    pub peak_step: f64,
    /// Explain the peak frame when an episode ends, and retain its overlay on
    /// `<prefix>/<device>/event/snapshot`.
    pub snapshot: bool,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            enabled: true,
            min_confidence: 0.5,
            min_frames: 3,
            end_frames: 5,
            peak_step: 0.05,
            snapshot: true,
        }
    }
}

/// The largest `min_frames` and `end_frames` accepted.
pub const MAX_EVENT_FRAMES: u32 = 10_000;

impl EventsConfig {
    pub fn rules(&self) -> crate::events::Rules {
        crate::events::Rules {
            min_confidence: self.min_confidence,
            min_frames: self.min_frames,
            end_frames: self.end_frames,
            peak_step: self.peak_step,
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.min_confidence) {
            return Err(Error::invalid(
                "events.min_confidence",
                format!("{} (expected a probability in [0, 1])", self.min_confidence),
            ));
        }
        for (key, n) in [
            ("events.min_frames", self.min_frames),
            ("events.end_frames", self.end_frames),
        ] {
            if !(1..=MAX_EVENT_FRAMES).contains(&n) {
                return Err(Error::invalid(
                    key,
                    format!("{n} (expected 1..={MAX_EVENT_FRAMES})"),
                ));
            }
        }
        if !(self.peak_step > 0.0 && self.peak_step <= 1.0) {
            return Err(Error::invalid(
                "events.peak_step",
                format!("{} (expected a number in (0, 1])", self.peak_step),
            ));
        }
        Ok(())
    }
}
