//! Publishing the episodes [`crate::events`] finds. The inference stage follows them and
//! sends `new` and `update` at once; an `end` waits for the map of its peak frame when
//! `[events] snapshot` is on, and the render stage sends it after the snapshot.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::mpsc::Sender;

use super::config::EventsConfig;
use super::{Change, EndReason, Episode, Mark, Seen, Tracker};
use crate::analysis::Analysis;
use crate::daemon::pipeline::Pipeline;
use crate::error::{Error, Result};
use crate::publish::payload::{self, ClassRef, FrameRef, Origin, Peak};
use crate::publish::{Kind, Message, Topics};

/// An episode that ended, waiting for the map of its peak frame.
pub struct Ended {
    pub episode: Episode,
    pub reason: EndReason,
    pub label: String,
    /// The frame the end was decided on.
    pub decided: Mark,
    pub peak: Arc<Analysis>,
    /// What the peak frame was analysed with, to explain it with the same.
    pub pipeline: Arc<Pipeline>,
}

impl std::fmt::Debug for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ended")
            .field("episode", &self.episode)
            .field("reason", &self.reason)
            .finish_non_exhaustive()
    }
}

/// Where events go. The inference and render stages both send them: each message is
/// numbered and sent under one lock, so `seq` reaches the connection stage in order.
#[derive(Clone)]
pub struct EventOutput {
    topics: Topics,
    origin: Origin,
    publish: Sender<Message>,
    /// Event messages sent so far.
    sent: Arc<Mutex<u64>>,
}

/// How an `end` went with its map.
pub struct Snapshot {
    /// The `seq` of the heatmap of the peak frame.
    pub heatmap_seq: Option<u64>,
    /// `event/snapshot` holds the overlay.
    pub published: bool,
}

impl Snapshot {
    pub fn none() -> Self {
        Snapshot {
            heatmap_seq: None,
            published: false,
        }
    }
}

impl EventOutput {
    pub fn new(topics: Topics, origin: Origin, publish: Sender<Message>) -> Self {
        EventOutput {
            topics,
            origin,
            publish,
            sent: Arc::new(Mutex::new(0)),
        }
    }

    /// Sends the `end` of `ended`, after its snapshot (or without one).
    pub fn end(&self, ended: &Ended, snapshot: Snapshot) -> Result<()> {
        self.send(
            "end",
            &ended.episode,
            &ended.label,
            ended.decided,
            |event| {
                event.reason = Some(ended.reason.name());
                event.heatmap_seq = Some(snapshot.heatmap_seq);
                event.snapshot = Some(snapshot.published);
            },
        )
    }

    /// The overlay of an ended episode's peak frame, retained.
    pub fn snapshot(&self, jpeg: Vec<u8>) -> Message {
        Message {
            topic: self.topics.event_snapshot(),
            payload: jpeg,
            qos: 1,
            retain: true,
            kind: Kind::Event,
        }
    }

    fn send(
        &self,
        kind: &'static str,
        e: &Episode,
        label: &str,
        decided: Mark,
        finish: impl FnOnce(&mut payload::Event),
    ) -> Result<()> {
        let mut sent = self.sent.lock().unwrap_or_else(PoisonError::into_inner);
        *sent += 1;
        let mut event = self.event(*sent, kind, e, label, decided);
        finish(&mut event);
        let message = Message {
            topic: self.topics.event(),
            payload: serde_json::to_vec(&event).expect("event serialises"),
            qos: 1,
            retain: false,
            kind: Kind::Event,
        };
        self.publish
            .blocking_send(message)
            .map_err(|_| Error::Stage("the MQTT connection stage is gone".into()))
    }

    fn event<'a>(
        &'a self,
        seq: u64,
        kind: &'static str,
        e: &Episode,
        label: &str,
        decided: Mark,
    ) -> payload::Event<'a> {
        let frame_ref = |m: Mark| FrameRef {
            frame: m.frame,
            ts: payload::timestamp(m.at),
        };
        payload::Event {
            header: payload::Header::new(
                "iscamd.event/1",
                &self.origin,
                seq,
                decided.frame,
                decided.at,
            ),
            kind,
            id: format!("{}-{}", self.origin.run, e.number),
            class: ClassRef {
                index: e.class,
                label: label.to_owned(),
            },
            start: frame_ref(e.start),
            last: frame_ref(e.last),
            frames: e.frames,
            peak: Peak {
                score: e.peak_score,
                frame: e.peak.frame,
                ts: payload::timestamp(e.peak.at),
            },
            reason: None,
            heatmap_seq: None,
            snapshot: None,
        }
    }
}

/// The inference stage's side: the tracker and the peak frame of the open episode.
pub struct Events {
    tracker: Tracker<Arc<Analysis>>,
    /// `[events] snapshot`.
    snapshot: bool,
    output: EventOutput,
    /// The newest frame taken in.
    last: Option<Mark>,
}

impl Events {
    /// `None` when `[events]` is off.
    pub fn new(config: &EventsConfig, output: EventOutput) -> Option<Self> {
        config.enabled.then(|| Events {
            tracker: Tracker::new(config.rules()),
            snapshot: config.snapshot,
            output,
            last: None,
        })
    }

    /// Takes in a classified frame and sends what changed. Returns the episodes that
    /// ended and wait for a map of their peak frame.
    pub fn observe(
        &mut self,
        analysis: &Arc<Analysis>,
        mark: Mark,
        (class, score): (usize, f64),
        pipeline: &Arc<Pipeline>,
    ) -> Result<Vec<Ended>> {
        self.last = Some(mark);
        let seen = Seen {
            mark,
            class,
            score,
            detail: analysis.clone(),
        };
        let mut waiting = Vec::new();
        for change in self.tracker.observe(seen) {
            waiting.extend(self.take(change, mark, pipeline)?);
        }
        Ok(waiting)
    }

    /// Ends the open episode now, at the newest frame: the daemon stops, or new rules
    /// take over. Returns it if it waits for a map.
    pub fn stop(&mut self, pipeline: &Arc<Pipeline>) -> Result<Option<Ended>> {
        let Some(decided) = self.last else {
            return Ok(None);
        };
        match self.tracker.end(EndReason::Stopped) {
            Some(change) => self.take(change, decided, pipeline),
            None => Ok(None),
        }
    }

    /// New rules (a reload): the open episode ends, and the next follows them.
    pub fn renew(
        &mut self,
        config: &EventsConfig,
        pipeline: &Arc<Pipeline>,
    ) -> Result<Option<Ended>> {
        let ended = match self.last.zip(self.tracker.set_rules(config.rules())) {
            Some((decided, change)) => self.take(change, decided, pipeline)?,
            None => None,
        };
        self.snapshot = config.snapshot;
        Ok(ended)
    }

    /// Sends a change; an end that waits for a map comes back instead.
    fn take(
        &self,
        change: Change<Arc<Analysis>>,
        decided: Mark,
        pipeline: &Arc<Pipeline>,
    ) -> Result<Option<Ended>> {
        let label = |e: &Episode| pipeline.classifier.labels().name(e.class);
        let out = &self.output;
        match change {
            Change::New(e) => out.send("new", &e, &label(&e), decided, |_| {})?,
            Change::Update(e) => out.send("update", &e, &label(&e), decided, |_| {})?,
            Change::End(episode, reason, peak) => {
                let ended = Ended {
                    label: label(&episode),
                    episode,
                    reason,
                    decided,
                    peak,
                    pipeline: pipeline.clone(),
                };
                if self.snapshot {
                    return Ok(Some(ended));
                }
                out.end(&ended, Snapshot::none())?;
            }
        }
        Ok(None)
    }
}
