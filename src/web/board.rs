//! What the page shows, kept as the daemon publishes it: the connection stage hands every
//! message to [`Board::observe`], so the page and MQTT subscribers see the same payloads
//! (docs/mqtt.md's schemas), also while the broker is unreachable.
//!
//! Writers never wait on readers: one short lock to store a payload, and a
//! [`watch`] counter that wakes the page's event streams.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{broadcast, mpsc, watch};

use crate::analysis::Analysis;
use crate::daemon::pipeline::{Current, Pipeline};
use crate::events::Mark;
use crate::publish::payload::Origin;
use crate::publish::{Incoming, Message, Topics};
use crate::telemetry::Stats;

/// Ended episodes the page lists.
pub const EPISODES: usize = 20;
/// Maps asked for from the page, kept until their answer is read.
const REQUESTED: usize = 8;
/// Command results a waiting request may miss before it reads them.
const RESULTS: usize = 16;

/// A payload as published: JSON or a JPEG.
pub type Bytes = Arc<[u8]>;

/// The last heatmap image and its `heatmap/info`.
#[derive(Clone)]
pub struct Overlay {
    pub jpeg: Bytes,
    pub info: Bytes,
    /// The `request_id` of the command the map answers.
    pub request_id: Option<String>,
}

/// An ended episode: its `end` event and the overlay of its peak frame.
#[derive(Clone)]
pub struct Episode {
    pub end: Bytes,
    pub snapshot: Option<Bytes>,
}

/// A `cmd/result`: the command's id and the payload.
#[derive(Clone, Debug)]
pub struct Reply {
    pub id: Option<String>,
    pub payload: Bytes,
}

/// What the running stages share with the page; replaced when the stages restart.
#[derive(Clone)]
pub struct Attached {
    pub topics: Topics,
    pub origin: Origin,
    pub stats: Arc<Stats>,
    pub pipeline: Current,
    /// Where the page's commands go: the command stage, as MQTT's do.
    pub commands: mpsc::Sender<Incoming>,
}

#[derive(Default)]
struct State {
    prediction: Option<Bytes>,
    settings: Option<Bytes>,
    overlay: Option<Overlay>,
    /// A heatmap image waiting for its `heatmap/info`, published right after it.
    image: Option<Bytes>,
    requested: VecDeque<Overlay>,
    episodes: VecDeque<Episode>,
    /// The snapshot published right before its episode's `end`.
    snapshot: Option<Bytes>,
    attached: Option<Attached>,
    /// `<prefix>/<device>`: the topics the page shows.
    base: Option<String>,
    last: Option<Analysed>,
    /// The config in force, secrets blanked ([`crate::config::redacted`]).
    config: Option<Arc<str>>,
}

/// The last frame classified, with the pipeline that classified it.
#[derive(Clone)]
pub struct Analysed {
    pub pipeline: Arc<Pipeline>,
    pub analysis: Arc<Analysis>,
    pub mark: Mark,
}

/// The page's view of the daemon.
pub struct Board {
    state: Mutex<State>,
    /// Counts changes; the page's event streams wait on it.
    changes: watch::Sender<u64>,
    results: broadcast::Sender<Reply>,
}

impl Default for Board {
    fn default() -> Self {
        Board {
            state: Mutex::default(),
            changes: watch::Sender::new(0),
            results: broadcast::Sender::new(RESULTS),
        }
    }
}

impl Board {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The stages (re)started with these parts.
    pub fn attach(&self, attached: Attached) {
        let mut state = self.state();
        state.base = Some(attached.topics.base.clone());
        state.attached = Some(attached);
        drop(state);
        self.changes.send_modify(|n| *n += 1);
    }

    /// The config in force changed (a start, a reload).
    pub fn configured(&self, config: &crate::config::Config) {
        self.state().config = Some(crate::config::redacted(config).into());
    }

    pub fn config(&self) -> Option<Arc<str>> {
        self.state().config.clone()
    }

    pub fn attached(&self) -> Option<Attached> {
        self.state().attached.clone()
    }

    /// Keeps what the page shows from a message on its way to the broker.
    pub fn observe(&self, message: &Message) {
        let mut state = self.state();
        let Some(base) = &state.base else {
            return;
        };
        let Some(leaf) = message.topic.strip_prefix(base.as_str()) else {
            return;
        };
        let payload: Bytes = Arc::from(message.payload.as_slice());
        match leaf {
            "/prediction" => state.prediction = Some(payload),
            "/settings" => state.settings = Some(payload),
            "/heatmap/image" => state.image = Some(payload),
            "/heatmap/info" => {
                let Some(jpeg) = state.image.take() else {
                    return;
                };
                let overlay = Overlay {
                    jpeg,
                    request_id: string_field(&payload, "request_id"),
                    info: payload,
                };
                if overlay.request_id.is_some() {
                    if state.requested.len() == REQUESTED {
                        state.requested.pop_front();
                    }
                    state.requested.push_back(overlay.clone());
                }
                state.overlay = Some(overlay);
            }
            "/event/snapshot" => state.snapshot = Some(payload),
            "/event" if string_field(&payload, "type").as_deref() == Some("end") => {
                let snapshot = state.snapshot.take();
                let with_snapshot = bool_field(&payload, "snapshot");
                if state.episodes.len() == EPISODES {
                    state.episodes.pop_front();
                }
                state.episodes.push_back(Episode {
                    end: payload,
                    snapshot: snapshot.filter(|_| with_snapshot),
                });
            }
            "/cmd/result" => {
                let id = string_field(&payload, "id");
                // Nobody waiting is no error.
                let _ = self.results.send(Reply { id, payload });
                return;
            }
            _ => return,
        }
        drop(state);
        self.changes.send_modify(|n| *n += 1);
    }

    /// The inference stage classified a frame (an `Arc` each: no copy).
    pub fn analysed(&self, pipeline: Arc<Pipeline>, analysis: Arc<Analysis>, mark: Mark) {
        self.state().last = Some(Analysed {
            pipeline,
            analysis,
            mark,
        });
    }

    pub fn last_analysed(&self) -> Option<Analysed> {
        self.state().last.clone()
    }

    pub fn prediction(&self) -> Option<Bytes> {
        self.state().prediction.clone()
    }

    pub fn settings(&self) -> Option<Bytes> {
        self.state().settings.clone()
    }

    pub fn overlay(&self) -> Option<Overlay> {
        self.state().overlay.clone()
    }

    /// The map made for the page's request `id`, while it is among the last few.
    pub fn requested(&self, id: &str) -> Option<Overlay> {
        let state = self.state();
        let mut newest_first = state.requested.iter().rev();
        newest_first
            .find(|o| o.request_id.as_deref() == Some(id))
            .cloned()
    }

    /// The ended episodes, newest first.
    pub fn episodes(&self) -> Vec<Episode> {
        self.state().episodes.iter().rev().cloned().collect()
    }

    /// Wakes when anything the page shows changes.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Command results from now on.
    pub fn results(&self) -> broadcast::Receiver<Reply> {
        self.results.subscribe()
    }
}

fn field(payload: &[u8], key: &str) -> Option<serde_json::Value> {
    let value: serde_json::Value = serde_json::from_slice(payload).ok()?;
    value.get(key).cloned()
}

fn string_field(payload: &[u8], key: &str) -> Option<String> {
    match field(payload, key)? {
        serde_json::Value::String(s) => Some(s),
        _ => None,
    }
}

fn bool_field(payload: &[u8], key: &str) -> bool {
    field(payload, key)
        .and_then(|v| v.as_bool())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publish::Kind;

    /// A board for `iscamd/cam7` (no stages attached: no model to load).
    fn board() -> Board {
        let board = Board::default();
        board.state().base = Some(Topics::new("iscamd", "cam7").base);
        board
    }

    fn message(leaf: &str, payload: &str) -> Message {
        Message {
            topic: format!("iscamd/cam7{leaf}"),
            payload: payload.as_bytes().to_vec(),
            qos: 0,
            retain: false,
            kind: Kind::Prediction,
        }
    }

    #[test]
    fn keeps_the_last_of_each_and_pairs_images_with_their_context() {
        let board = board();
        let changes = board.changes();
        board.observe(&message("/prediction", r#"{"seq":1}"#));
        board.observe(&message("/prediction", r#"{"seq":2}"#));
        assert_eq!(&*board.prediction().unwrap(), br#"{"seq":2}"#);
        assert!(changes.has_changed().unwrap());
        // Another device's topics and unknown leaves are not the page's.
        board.observe(&message("/../cam8/prediction", r#"{"seq":9}"#));
        board.observe(&Message {
            topic: "iscamd/cam8/prediction".into(),
            ..message("", "{}")
        });
        assert_eq!(&*board.prediction().unwrap(), br#"{"seq":2}"#);

        board.observe(&message("/heatmap/image", "JPEG"));
        board.observe(&message(
            "/heatmap/info",
            r#"{"seq":3,"request_id":"web-1"}"#,
        ));
        let overlay = board.overlay().unwrap();
        assert_eq!(
            (&*overlay.jpeg, overlay.request_id.as_deref()),
            (&b"JPEG"[..], Some("web-1"))
        );
        assert!(board.requested("web-1").is_some() && board.requested("web-2").is_none());
        // An info without its image (an image dropped on the way) shows nothing new.
        board.observe(&message("/heatmap/info", r#"{"seq":4}"#));
        assert_eq!(
            &*board.overlay().unwrap().info,
            br#"{"seq":3,"request_id":"web-1"}"#
        );
    }

    #[test]
    fn keeps_the_last_ended_episodes_with_their_snapshots() {
        let board = board();
        for n in 0..EPISODES + 3 {
            board.observe(&message("/event", r#"{"type":"new"}"#));
            let with_snapshot = n % 2 == 0;
            if with_snapshot {
                board.observe(&message("/event/snapshot", &format!("JPEG{n}")));
            }
            let end = format!(r#"{{"type":"end","id":"r-{n}","snapshot":{with_snapshot}}}"#);
            board.observe(&message("/event", &end));
        }
        let episodes = board.episodes();
        assert_eq!(episodes.len(), EPISODES);
        let newest = EPISODES + 2;
        assert!(std::str::from_utf8(&episodes[0].end)
            .unwrap()
            .contains(&format!("r-{newest}")));
        assert_eq!(
            episodes[0].snapshot.as_deref(),
            Some(format!("JPEG{newest}").as_bytes())
        );
        assert!(episodes[1].snapshot.is_none());
    }

    #[test]
    fn hands_command_results_to_whoever_waits() {
        let board = board();
        let mut results = board.results();
        board.observe(&message("/cmd/result", r#"{"id":"web-3","ok":true}"#));
        let reply = results.try_recv().unwrap();
        assert_eq!(reply.id.as_deref(), Some("web-3"));
    }
}
