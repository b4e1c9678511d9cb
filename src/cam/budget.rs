//! What one full map may cost, so that no request can tie up the CAM worker for hours:
//! a number of masked passes, checked before a map is started, and a wall time, past
//! which a running map is abandoned.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::CamParams;
use crate::error::{Error, Result};

/// Default `[cam] max_passes`: eight times the default map's 64 passes, which admits
/// all-channel Score-CAM on SqueezeNet (512 channels).
pub const DEFAULT_MAX_PASSES: usize = 512;
/// Default `[cam] max_time`.
pub const DEFAULT_MAX_TIME: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Budget {
    pub max_passes: usize,
    pub max_time: Duration,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            max_passes: DEFAULT_MAX_PASSES,
            max_time: DEFAULT_MAX_TIME,
        }
    }
}

impl Budget {
    /// Refuses a map that needs more passes than the budget, naming both.
    pub fn admit(&self, params: &CamParams, layer_channels: usize) -> Result<()> {
        let passes = params.passes(layer_channels);
        if passes > self.max_passes {
            return Err(Error::invalid(
                "cam.max_passes",
                format!(
                    "{params} needs {passes} masked passes, above the budget of {} \
                     (choose fewer steps or channels, or raise [cam] max_passes)",
                    self.max_passes
                ),
            ));
        }
        Ok(())
    }

    /// When a map started now must be done.
    pub fn deadline(&self) -> Deadline {
        Deadline {
            at: Some(Instant::now() + self.max_time),
            max_time: self.max_time,
            stop: None,
        }
    }
}

/// Whether a map must stop at once, whatever its time budget (the daemon stops).
type Stop = Arc<dyn Fn() -> bool + Send + Sync>;

/// The time by which a map must be done; checked between batches of masked passes.
#[derive(Clone)]
pub struct Deadline {
    at: Option<Instant>,
    max_time: Duration,
    stop: Option<Stop>,
}

impl Deadline {
    /// No deadline: the command-line tools run a map to its end.
    pub const NONE: Deadline = Deadline {
        at: None,
        max_time: Duration::ZERO,
        stop: None,
    };

    /// Also abandons the map as soon as `stop` says so, so that a stopping daemon
    /// answers whoever asked for it instead of waiting for the map.
    pub fn or_when(self, stop: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        Deadline {
            stop: Some(Arc::new(stop)),
            ..self
        }
    }

    /// An error once the deadline has passed, saying how far the map got.
    pub(crate) fn check(&self, done: usize, total: usize) -> Result<()> {
        if self.stop.as_ref().is_some_and(|stop| stop()) {
            return Err(Error::Stage(format!(
                "the daemon is stopping: the map was abandoned with {done} of {total} \
                 masked passes done"
            )));
        }
        match self.at {
            Some(at) if Instant::now() > at => Err(Error::invalid(
                "cam.max_time",
                format!(
                    "the map was abandoned after {:?}, its time budget, with {done} of \
                     {total} masked passes done",
                    self.max_time
                ),
            )),
            _ => Ok(()),
        }
    }
}
