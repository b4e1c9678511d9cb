//! The command stage: parses `<prefix>/<device>/cmd` payloads, limits their rate, and
//! answers them or passes them to the inference stage.

use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc::{Receiver, Sender};

use super::command_result;
use super::inference::{Control, CONTROL_QUEUE};
use super::pipeline::Current;
use super::reload::ReloadRequest;
use super::scheduler::{Asker, Request, RequestId};
use super::shutdown::Shutdown;
use crate::error::{with_causes, Result};
use crate::publish::command::{self, Command, CommandError, Limits};
use crate::publish::payload::Origin;
use crate::publish::{announcements, discovery, Incoming, Message, Topics};
use crate::telemetry::Stats;

pub struct Commands {
    pub incoming: Receiver<Incoming>,
    pub control: SyncSender<Control>,
    pub publish: Sender<Message>,
    /// The configured method (what a command's unset fields default to), the budget
    /// requests must fit and the model they must suit.
    pub pipeline: Current,
    /// Where `reload` goes; the topology answers it.
    pub reloads: Sender<ReloadRequest>,
    pub stats: Arc<Stats>,
    pub topics: Topics,
    pub origin: Origin,
    pub discovery: Option<discovery::Options>,
    /// `[mqtt] commands_per_second`.
    pub rate: f64,
}

impl Commands {
    pub async fn run(mut self, mut shutdown: Shutdown) -> Result<()> {
        let mut bucket = TokenBucket::new(self.rate, Instant::now());
        loop {
            let payload = tokio::select! {
                incoming = self.incoming.recv() => match incoming {
                    Some(Incoming::Command(payload)) => payload,
                    None => return Ok(()),
                },
                _ = shutdown.recv() => return Ok(()),
            };
            let pipeline = self.pipeline.borrow().clone();
            let limits = Limits {
                defaults: &pipeline.params,
                budget: &pipeline.budget(),
                layer_channels: pipeline.classifier.cam_layer().map_or(0, |l| l.channels),
                classes: pipeline.classifier.classes(),
                input_size: pipeline.classifier.input_size(),
            };
            let (id, parsed) = command::parse(&payload, &limits);
            let parsed = match bucket.take(Instant::now()) {
                true => parsed,
                false => Err(CommandError::RateLimited(self.rate)),
            };
            if let Some(result) = self.act(parsed, &id).await {
                let error = result.err().map(|e| with_causes(&e));
                if let Some(e) = &error {
                    self.stats.command_rejected();
                    tracing::warn!("command refused: {e}");
                }
                let _ = self
                    .publish
                    .send(command_result(&self.topics, &self.origin, id, error))
                    .await;
            }
        }
    }

    /// Carries out a command; the reply to send now, or `None` when the reply comes
    /// with the heatmap.
    async fn act(
        &self,
        parsed: std::result::Result<Command, CommandError>,
        id: &Option<String>,
    ) -> Option<std::result::Result<(), CommandError>> {
        let control = match parsed {
            Err(e) => return Some(Err(e)),
            Ok(Command::Republish) => {
                let announce = announcements(&self.topics, &self.origin, self.discovery.as_ref());
                for m in announce {
                    let _ = self.publish.send(m).await;
                }
                return Some(Ok(()));
            }
            Ok(Command::Explain { params, class }) => Control::Explain(Request {
                params,
                class,
                asker: Asker::Command(RequestId(id.clone())),
            }),
            Ok(Command::Set { interval, live }) => Control::Set { interval, live },
            Ok(Command::Reload) => {
                let request = ReloadRequest::Command(id.clone());
                return match self.reloads.try_send(request) {
                    Ok(()) => None,
                    Err(_) => Some(Err(CommandError::Busy(
                        "a reload is already under way".into(),
                    ))),
                };
            }
        };
        let answer_now = matches!(control, Control::Set { .. });
        match self.control.try_send(control) {
            Ok(()) => answer_now.then_some(Ok(())),
            Err(TrySendError::Full(_)) => Some(Err(CommandError::Busy(format!(
                "{CONTROL_QUEUE} commands already wait for the inference stage"
            )))),
            Err(TrySendError::Disconnected(_)) => Some(Err(CommandError::Stopping)),
        }
    }
}

/// Commands allowed per second, with a burst of one second's worth.
struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(rate: f64, now: Instant) -> Self {
        TokenBucket {
            rate,
            tokens: rate.max(1.0),
            last: now,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let refill = now.saturating_duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.rate.max(1.0));
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_bucket_allows_a_burst_of_one_second_then_the_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(2.0, t0);
        assert!(bucket.take(t0));
        assert!(bucket.take(t0));
        assert!(!bucket.take(t0), "the burst is one second's worth");
        assert!(!bucket.take(t0 + Duration::from_millis(400)));
        assert!(bucket.take(t0 + Duration::from_millis(500)));
        // Ten idle seconds refill no more than the burst.
        let later = t0 + Duration::from_secs(10);
        assert!(bucket.take(later) && bucket.take(later));
        assert!(!bucket.take(later));
    }

    #[test]
    fn a_slow_rate_still_allows_one_command() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(0.2, t0);
        assert!(bucket.take(t0));
        assert!(!bucket.take(t0 + Duration::from_secs(4)));
        assert!(bucket.take(t0 + Duration::from_secs(6)));
    }
}
