//! The render stage: draws full and live maps over their frames and publishes them.

use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

use image::codecs::jpeg::JpegEncoder;
use tokio::sync::mpsc::Sender;

use super::command_result;
use super::heatmap::{Freshness, Outcome, Ready};
use super::scheduler::Asker;
use super::shutdown::Shutdown;
use crate::analysis::ms;
use crate::analysis::Latency;
use crate::cam::caption::{self, Caption};
use crate::cam::display;
use crate::cam::health;
use crate::error::{Error, Result};
use crate::events::stage::{Ended, EventOutput, Snapshot};
use crate::publish::payload::Origin;
use crate::publish::payload::{self, MapData, MethodInfo};
use crate::publish::{Kind, Message, Topics};
use crate::telemetry::Stats;

/// How heatmaps are published.
pub struct Output {
    pub topics: Topics,
    pub origin: Origin,
    pub qos: u8,
    pub retain_image: bool,
    pub image_width: u32,
    pub image_quality: u8,
    /// Draw the caption band (class, method, time, device, colour scale) under the image.
    pub caption: bool,
    /// Images of maps that cost no passes (live maps, `cam`) at most this often.
    pub image_interval: Duration,
    /// Where the ends of episodes go, with their snapshots.
    pub events: EventOutput,
}

/// The render stage: overlay, JPEG, payload, publish.
pub struct Render {
    pub maps: Receiver<Outcome>,
    pub output: Output,
    pub publish: Sender<Message>,
    pub stats: Arc<Stats>,
}

/// What a map or a failed one brings: messages, then the end of the episode whose peak
/// frame it explains.
#[derive(Default)]
struct Rendered {
    messages: Vec<Message>,
    end: Option<(Box<Ended>, Snapshot)>,
}

impl Render {
    /// Runs until the heatmap and inference stages stop sending maps (they end at
    /// shutdown), so that every map made is published.
    pub fn run(self, _shutdown: Shutdown) -> Result<()> {
        let mut seq = 0u64;
        let mut last_image: Option<Instant> = None;
        for outcome in self.maps.iter() {
            let rendered = match outcome {
                Outcome::Map(ready) => {
                    seq += 1;
                    // Maps that cost passes or were asked for always get their image;
                    // those that come at frame rate (live maps, `cam`) are thinned out.
                    let now = Instant::now();
                    let with_image = ready.passes > 0
                        || ready.asker.is_some()
                        || last_image.is_none_or(|t| now - t >= self.output.image_interval);
                    if with_image {
                        last_image = Some(now);
                    }
                    rendered(*ready, seq, &self.output, &self.stats, with_image)
                }
                Outcome::Failed {
                    frame,
                    error,
                    asker,
                } => {
                    self.stats.heatmap_failed();
                    tracing::warn!("heatmap for frame {frame} failed: {error}");
                    failed(asker, error, &self.output)
                }
                Outcome::Health { sample, window } => Rendered {
                    messages: vec![health_message(&self.stats, sample, window, &self.output)],
                    end: None,
                },
            };
            for m in rendered.messages {
                if self.publish.blocking_send(m).is_err() {
                    return Err(Error::Stage("the MQTT connection stage is gone".into()));
                }
            }
            if let Some((ended, snapshot)) = rendered.end {
                self.output.events.end(&ended, snapshot)?;
            }
        }
        Ok(())
    }
}

/// Records a health sample; its message on `health` (retained), which says whether the
/// state changed with it.
fn health_message(stats: &Stats, sample: health::Sample, window: usize, out: &Output) -> Message {
    let (snapshot, changed) = stats.health_sample(sample, window);
    match (changed, snapshot.state) {
        (true, health::State::Unfaithful) => tracing::warn!(
            "explanations unfaithful: over the last {window} measured maps, deleting their most \
             salient pixels took on average {:.3} of the class's probability more than deleting \
             the same maps shuffled (at most {} counts as no better than the control)",
            snapshot.window_mean.unwrap_or_default(),
            health::UNFAITHFUL_AT_MOST
        ),
        (true, state) => tracing::info!("explanation health: {state:?}"),
        _ => {}
    }
    let payload = payload::Health {
        schema: "iscamd.health/1",
        device: &out.origin.device,
        run: &out.origin.run,
        ts: payload::timestamp(std::time::SystemTime::now()),
        changed,
        health: snapshot,
    };
    Message {
        topic: out.topics.health(),
        payload: serde_json::to_vec(&payload).expect("health serialises"),
        qos: 1,
        retain: true,
        kind: Kind::Event,
    }
}

/// What a map that could not be made answers: the command's error, or the end of the
/// episode without a snapshot.
fn failed(asker: Option<Asker>, error: String, out: &Output) -> Rendered {
    match asker {
        Some(Asker::Command(id)) => Rendered {
            messages: vec![command_result(&out.topics, &out.origin, id.0, Some(error))],
            end: None,
        },
        Some(Asker::Event(ended)) => Rendered {
            messages: Vec::new(),
            end: Some((ended, Snapshot::none())),
        },
        None => Rendered::default(),
    }
}

fn rendered(ready: Ready, seq: u64, out: &Output, stats: &Stats, with_image: bool) -> Rendered {
    let t0 = Instant::now();
    let (h, w) = ready.map.dim();
    let about = about(&ready);
    let header =
        |schema| payload::Header::new(schema, &out.origin, seq, ready.frame, ready.captured);
    let event = matches!(ready.asker, Some(Asker::Event(_)));
    let jpeg = (with_image || event)
        .then(|| overlay_jpeg(&ready, out))
        .flatten();
    let request_id = match &ready.asker {
        Some(Asker::Command(id)) => id.0.clone(),
        _ => None,
    };
    let image = jpeg.clone().filter(|_| with_image).map(|jpeg| {
        let info = payload::HeatmapInfo {
            header: header("iscamd.heatmap_info/1"),
            about: &about,
            request_id: request_id.as_deref(),
        };
        image_messages(jpeg, out, &info)
    });
    let heatmap = payload::Heatmap {
        header: header("iscamd.heatmap/1"),
        about: &about,
        latency_ms: Latency {
            cam: Some(ready.cam_ms),
            render: Some(ms(t0.elapsed())),
            ..Latency::default()
        },
        map: MapData::u8_base64(w, h, &display::map_u8(&ready.map)),
        request_id,
    };
    stats.heatmap_published(about.fresh, ready.cam_ms + ms(t0.elapsed()));
    let mut rendered = Rendered::default();
    rendered.messages.push(Message {
        topic: out.topics.heatmap(),
        payload: serde_json::to_vec(&heatmap).expect("heatmap serialises"),
        qos: out.qos,
        retain: false,
        kind: Kind::Heatmap,
    });
    rendered.messages.extend(image.into_iter().flatten());
    match ready.asker {
        Some(Asker::Command(id)) => {
            let ok = command_result(&out.topics, &out.origin, id.0, None);
            rendered.messages.push(ok);
        }
        Some(Asker::Event(ended)) => {
            let published = jpeg.is_some();
            rendered
                .messages
                .extend(jpeg.map(|jpeg| out.events.snapshot(jpeg)));
            let snapshot = Snapshot {
                heatmap_seq: Some(seq),
                published,
            };
            rendered.end = Some((ended, snapshot));
        }
        None => {}
    }
    rendered
}

/// What the map shows and how it was made.
fn about(ready: &Ready) -> payload::MapAbout {
    let (fresh, age_ms, weights_frame, drift) = match ready.freshness {
        Freshness::Fresh => (true, 0.0, ready.frame, None),
        Freshness::Live {
            age,
            weights_frame,
            drift,
        } => (false, ms(age), weights_frame, Some(drift)),
    };
    payload::MapAbout {
        class: ready.analysis.class_score(&ready.classifier, ready.class),
        method: MethodInfo::from(&ready.params),
        passes: ready.passes,
        fresh,
        age_ms,
        weights_frame,
        drift,
    }
}

/// The frame with its map laid over it, as a JPEG.
fn overlay_jpeg(ready: &Ready, out: &Output) -> Option<Vec<u8>> {
    let crop = ready.classifier.preprocess().crop_region();
    let mut overlay = display::overlay(&ready.analysis.frame, &ready.map, crop, out.image_width);
    if out.caption {
        overlay = caption::captioned(&overlay, &caption_of(ready, &out.origin.device));
    }
    let mut jpeg = Vec::new();
    let encoded =
        JpegEncoder::new_with_quality(&mut jpeg, out.image_quality).encode_image(&overlay);
    if let Err(err) = encoded {
        tracing::warn!("cannot encode the heatmap image: {err}");
        return None;
    }
    Some(jpeg)
}

fn caption_of(ready: &Ready, device: &str) -> Caption {
    let class = ready.analysis.class_score(&ready.classifier, ready.class);
    Caption {
        class: class.label,
        score: class.score,
        method: ready.params.to_string(),
        passes: ready.passes,
        live: matches!(ready.freshness, Freshness::Live { .. }),
        time: Some(ready.captured),
        source: device.to_string(),
    }
}

/// The overlay JPEG and its context, retained together so that the picture and what it
/// shows never disagree.
fn image_messages(jpeg: Vec<u8>, out: &Output, info: &payload::HeatmapInfo) -> Vec<Message> {
    [
        (out.topics.heatmap_image(), jpeg),
        (
            out.topics.heatmap_info(),
            serde_json::to_vec(info).expect("heatmap info serialises"),
        ),
    ]
    .into_iter()
    .map(|(topic, payload)| Message {
        topic,
        payload,
        qos: out.qos,
        retain: out.retain_image,
        kind: Kind::HeatmapImage,
    })
    .collect()
}
