//! JSON payloads of the MQTT contract, version 1. Each carries `schema`.

use std::time::SystemTime;

use base64::Engine;
use serde::Serialize;

use crate::analysis::{ClassScore, Latency};
use crate::cam::CamParams;

/// RFC 3339 UTC time with milliseconds.
pub fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// Who publishes: the device and this run of the daemon. `run` is new at every start,
/// so that a subscriber can tell a restart (new `run`, `seq` from 1) from lost messages
/// (same `run`, a gap in `seq`).
#[derive(Clone, Debug)]
pub struct Origin {
    pub device: String,
    pub run: String,
    pub started: SystemTime,
}

impl Origin {
    /// A new run of `device`: 16 random hex digits.
    pub fn new(device: String) -> Self {
        Origin {
            device,
            run: format!("{:016x}", rand::random::<u64>()),
            started: SystemTime::now(),
        }
    }
}

/// The retained companion of `availability` (`schema: iscamd.run/1`): which run is online.
#[derive(Serialize, Debug)]
pub struct Run<'a> {
    pub schema: &'static str,
    pub device: &'a str,
    pub run: &'a str,
    pub started: String,
    pub version: &'static str,
}

impl<'a> Run<'a> {
    pub fn new(origin: &'a Origin) -> Self {
        Run {
            schema: "iscamd.run/1",
            device: &origin.device,
            run: &origin.run,
            started: timestamp(origin.started),
            version: env!("CARGO_PKG_VERSION"),
        }
    }
}

/// The settings `set` changes, as they are in force (retained on `<p>/<d>/settings`).
#[derive(Serialize, Debug)]
pub struct Settings<'a> {
    pub schema: &'static str,
    pub device: &'a str,
    pub run: &'a str,
    /// Seconds between scheduled heatmaps; 0 = no schedule.
    pub heatmap_interval_s: f64,
    pub live: bool,
}

/// The fields every per-frame message starts with.
#[derive(Serialize, Debug)]
pub struct Header<'a> {
    pub schema: &'static str,
    pub device: &'a str,
    pub run: &'a str,
    /// Counts messages of this kind: +1 each, so subscribers can detect loss.
    pub seq: u64,
    /// The source frame number.
    pub frame: u64,
    pub ts: String,
}

impl<'a> Header<'a> {
    pub fn new(
        schema: &'static str,
        origin: &'a Origin,
        seq: u64,
        frame: u64,
        captured: SystemTime,
    ) -> Self {
        Header {
            schema,
            device: &origin.device,
            run: &origin.run,
            seq,
            frame,
            ts: timestamp(captured),
        }
    }
}

#[derive(Serialize, Debug)]
pub struct Prediction<'a> {
    #[serde(flatten)]
    pub header: Header<'a>,
    pub model: &'a str,
    pub top: Vec<ClassScore>,
    pub latency_ms: Latency,
}

#[derive(Serialize, Debug, Clone)]
pub struct MethodInfo {
    pub name: &'static str,
    pub steps: usize,
    pub channels: usize,
    /// How the `channels` were chosen: variance or contribution.
    pub select: &'static str,
    pub weighting: &'static str,
}

impl From<&CamParams> for MethodInfo {
    fn from(p: &CamParams) -> Self {
        MethodInfo {
            name: p.method.name(),
            steps: p.steps(),
            channels: p.channels,
            select: p.select.name(),
            weighting: p.weighting.name(),
        }
    }
}

#[derive(Serialize, Debug)]
pub struct MapData {
    pub width: usize,
    pub height: usize,
    pub encoding: &'static str,
    pub data: String,
}

impl MapData {
    /// The map normalised to 0..=255, row-major, base64.
    pub fn u8_base64(width: usize, height: usize, bytes: &[u8]) -> Self {
        MapData {
            width,
            height,
            encoding: "u8-base64",
            data: base64::engine::general_purpose::STANDARD.encode(bytes),
        }
    }
}

/// What a map shows and how it was made: part of every heatmap, and published alone
/// beside its image (`heatmap/info`).
#[derive(Serialize, Debug)]
pub struct MapAbout {
    pub class: ClassScore,
    pub method: MethodInfo,
    /// Masked forward passes this map cost (0 for a live map).
    pub passes: usize,
    /// `false` for a live map: an earlier full map's channel weights over this frame's
    /// own activations.
    pub fresh: bool,
    /// Age of the weights in milliseconds (0 for a fresh map).
    pub age_ms: f64,
    /// The frame the weights were computed on (`frame` itself for a fresh map).
    pub weights_frame: u64,
    /// Live maps: how far this frame drifted from `weights_frame` (1 − cosine of the
    /// per-channel mean activations).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drift: Option<f64>,
}

/// The context of the retained heatmap image (`iscamd.heatmap_info/1`).
#[derive(Serialize, Debug)]
pub struct HeatmapInfo<'a> {
    #[serde(flatten)]
    pub header: Header<'a>,
    #[serde(flatten)]
    pub about: &'a MapAbout,
    /// The `id` of the `explain` command the map answers, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<&'a str>,
}

#[derive(Serialize, Debug)]
pub struct Heatmap<'a> {
    #[serde(flatten)]
    pub header: Header<'a>,
    #[serde(flatten)]
    pub about: &'a MapAbout,
    pub latency_ms: Latency,
    pub map: MapData,
    /// The `id` of the `explain` command this answers, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

#[derive(Serialize, Debug)]
pub struct CommandResult<'a> {
    pub schema: &'static str,
    pub run: &'a str,
    pub id: Option<String>,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A frame an event refers to.
#[derive(Serialize, Debug)]
pub struct FrameRef {
    pub frame: u64,
    pub ts: String,
}

/// An episode of a class (`iscamd.event/1` on `<prefix>/<device>/event`); see
/// [`crate::events`] for when each is sent.
#[derive(Serialize, Debug)]
pub struct Event<'a> {
    /// `frame` and `ts` are those of the frame the change was decided on.
    #[serde(flatten)]
    pub header: Header<'a>,
    /// `new`, `update` or `end`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// `<run>-<n>`: the same in every message of one episode.
    pub id: String,
    pub class: ClassRef,
    pub start: FrameRef,
    /// The last frame of the class so far; on `end`, the episode's end.
    pub last: FrameRef,
    /// Frames of the class in the episode so far.
    pub frames: u64,
    pub peak: Peak,
    /// `end` only: why it ended (`left`, `stopped`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// `end` only: the `seq` of the heatmap of the peak frame (null when none was made).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heatmap_seq: Option<Option<u64>>,
    /// `end` only: whether `event/snapshot` now holds this episode's overlay.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<bool>,
}

#[derive(Serialize, Debug)]
pub struct ClassRef {
    pub index: usize,
    pub label: String,
}

#[derive(Serialize, Debug)]
pub struct Peak {
    pub score: f64,
    pub frame: u64,
    pub ts: String,
}

/// `health`: a measure of the explanations' health and the state it leaves (`iscamd.health/1`).
#[derive(Serialize)]
pub struct Health<'a> {
    pub schema: &'static str,
    pub device: &'a str,
    pub run: &'a str,
    pub ts: String,
    /// The state changed with this measure: the event a subscriber acts on.
    pub changed: bool,
    #[serde(flatten)]
    pub health: crate::cam::health::HealthSnapshot,
}
