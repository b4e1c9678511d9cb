//! Publishing the episodes [`crate::events`] finds. The inference stage follows them and
//! sends `new` and `update` at once; an `end` waits for the map of its peak frame when
//! `[events] snapshot` is on, and the render stage sends it after the snapshot.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::pipeline::Pipeline;
use crate::analysis::Analysis;
use crate::config::EventsConfig;
use crate::events::{Change, EndReason, Episode, Mark, Seen, Tracker};
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

/// Where events go. The inference and render stages both send them, so they share the
/// count that becomes `seq`.
#[derive(Clone)]
pub struct EventOutput {
    topics: Topics,
    origin: Origin,
    sent: Arc<AtomicU64>,
}

/// How an `end` went with its map.
pub struct Snapshot {
    /// The `seq` of the heatmap of the peak frame.
    pub heatmap_seq: Option<u64>,
    /// `event/snapshot` holds the overlay.
    pub published: bool,
}

impl EventOutput {
    pub fn new(topics: Topics, origin: Origin) -> Self {
        EventOutput {
            topics,
            origin,
            sent: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The `end` of `ended`, after its snapshot (or without one).
    pub fn end(&self, ended: &Ended, snapshot: Snapshot) -> Message {
        let mut event = self.event("end", &ended.episode, &ended.label, ended.decided);
        event.reason = Some(ended.reason.name());
        event.heatmap_seq = Some(snapshot.heatmap_seq);
        event.snapshot = Some(snapshot.published);
        self.message(&event)
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

    fn event<'a>(
        &'a self,
        kind: &'static str,
        e: &Episode,
        label: &str,
        decided: Mark,
    ) -> payload::Event<'a> {
        let seq = self.sent.fetch_add(1, Ordering::Relaxed) + 1;
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

    fn message(&self, event: &payload::Event) -> Message {
        Message {
            topic: self.topics.event(),
            payload: serde_json::to_vec(event).expect("event serialises"),
            qos: 1,
            retain: false,
            kind: Kind::Event,
        }
    }
}

/// What the inference stage does with a change.
pub enum Step {
    Publish(Message),
    /// Explain the peak frame, then publish the end with its snapshot.
    Explain(Box<Ended>),
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

    /// Takes in a classified frame.
    pub fn observe(
        &mut self,
        analysis: &Arc<Analysis>,
        mark: Mark,
        (class, score): (usize, f64),
        pipeline: &Arc<Pipeline>,
    ) -> Vec<Step> {
        self.last = Some(mark);
        let seen = Seen {
            mark,
            class,
            score,
            detail: analysis.clone(),
        };
        let changes = self.tracker.observe(seen);
        changes
            .into_iter()
            .map(|change| self.step(change, mark, pipeline))
            .collect()
    }

    /// Ends the open episode now, at the newest frame: the daemon stops, or new rules
    /// take over.
    pub fn stop(&mut self, pipeline: &Arc<Pipeline>) -> Option<Step> {
        let decided = self.last?;
        let change = self.tracker.end(EndReason::Stopped)?;
        Some(self.step(change, decided, pipeline))
    }

    fn step(&self, change: Change<Arc<Analysis>>, decided: Mark, pipeline: &Arc<Pipeline>) -> Step {
        let label = |e: &Episode| pipeline.classifier.labels().name(e.class);
        match change {
            Change::New(e) => Step::Publish(self.publish("new", &e, &label(&e), decided)),
            Change::Update(e) => Step::Publish(self.publish("update", &e, &label(&e), decided)),
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
                    Step::Explain(Box::new(ended))
                } else {
                    Step::Publish(self.output.end(&ended, Snapshot::none()))
                }
            }
        }
    }

    fn publish(&self, kind: &'static str, e: &Episode, label: &str, decided: Mark) -> Message {
        self.output
            .message(&self.output.event(kind, e, label, decided))
    }
}

impl Snapshot {
    pub fn none() -> Self {
        Snapshot {
            heatmap_seq: None,
            published: false,
        }
    }
}
