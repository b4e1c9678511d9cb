//! Heatmaps. The CAM worker computes one full map at a time on its own thread, so that
//! predictions keep flowing while it works; live maps come from the inference thread
//! (one weighted sum per frame, see [`crate::cam::live`]). The renderer draws and
//! publishes both, so every heatmap has one sequence and one format.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use image::codecs::jpeg::JpegEncoder;
use tokio::sync::mpsc::Sender;
use tract_onnx::prelude::tract_ndarray::Array2;

use super::latest::Latest;
use crate::analyse::{ms, Analysis};
use crate::cam::{display, live, CamParams};
use crate::model::Classifier;
use crate::publish::payload::{self, HeatmapLatency, MapData, MethodInfo};
use crate::publish::{Kind, Message, Topics};
use crate::stats::Stats;

/// One full map to make.
pub struct Job {
    pub analysis: Arc<Analysis>,
    pub frame: u64,
    pub captured: SystemTime,
    pub params: CamParams,
    pub class: Option<usize>,
    /// The command that asked for it, if any.
    pub request_id: Option<RequestId>,
    /// Keep its weights for live maps (the schedule's maps of the top-1 class).
    pub reference: bool,
}

/// A command's id (possibly absent in the command itself).
#[derive(Clone, Debug)]
pub struct RequestId(pub Option<String>);

/// The newest full map's weights, for the inference thread's live maps.
pub struct Weights {
    pub reference: live::Reference,
    pub made: Instant,
}

/// A map to draw and publish, or why it could not be made.
pub enum Outcome {
    Map(Box<Ready>),
    Failed {
        frame: u64,
        error: String,
        request_id: Option<RequestId>,
    },
}

pub struct Ready {
    pub analysis: Arc<Analysis>,
    pub frame: u64,
    pub captured: SystemTime,
    pub class: usize,
    /// At the CAM layer's resolution, unnormalised.
    pub map: Array2<f32>,
    pub method: MethodInfo,
    pub passes: usize,
    pub cam_ms: f64,
    pub freshness: Freshness,
    pub request_id: Option<RequestId>,
}

pub enum Freshness {
    Fresh,
    /// Weights of the full map of `weights_frame`, `age` old.
    Live {
        age: Duration,
        weights_frame: u64,
        drift: f64,
    },
}

/// The CAM worker: full maps, one at a time.
pub fn compute(
    classifier: Arc<Classifier>,
    jobs: Receiver<Job>,
    render: SyncSender<Outcome>,
    weights: Arc<Latest<Weights>>,
    threads: usize,
) {
    for job in jobs {
        let mut reference = None;
        let outcome = match job
            .analysis
            .explain(&classifier, job.class, &job.params, threads)
        {
            Ok(e) => {
                if let (true, Some(a)) = (job.reference, &job.analysis.activations) {
                    reference = Some(live::Reference::new(&e, a.view(), job.frame));
                }
                Outcome::Map(Box::new(Ready {
                    analysis: job.analysis,
                    frame: job.frame,
                    captured: job.captured,
                    class: e.class,
                    method: MethodInfo::from(&e.params),
                    passes: e.passes,
                    cam_ms: e.millis,
                    map: e.map,
                    freshness: Freshness::Fresh,
                    request_id: job.request_id,
                }))
            }
            Err(err) => Outcome::Failed {
                frame: job.frame,
                error: err.to_string(),
                request_id: job.request_id,
            },
        };
        if render.send(outcome).is_err() {
            return;
        }
        // After the full map is queued, so no live map made from it is published first.
        if let Some(reference) = reference {
            weights.put(Weights {
                reference,
                made: Instant::now(),
            });
        }
    }
}

/// What the inference thread needs for live maps.
pub struct Live {
    policy: live::Policy,
    /// Where the CAM worker leaves the newest full map's weights.
    weights: Arc<Latest<Weights>>,
    render: SyncSender<Outcome>,
    /// The weights in use.
    current: Option<Weights>,
}

impl Live {
    pub fn new(
        policy: live::Policy,
        weights: Arc<Latest<Weights>>,
        render: SyncSender<Outcome>,
    ) -> Self {
        Live {
            policy,
            weights,
            render,
            current: None,
        }
    }

    /// Publishes a live map for this frame, or says why a full map is needed.
    pub fn publish(
        &mut self,
        analysis: &Arc<Analysis>,
        (frame, captured): (u64, SystemTime),
        class: usize,
        stats: &Stats,
    ) -> Result<(), live::Refresh> {
        if let Some(newer) = self.weights.take(Duration::ZERO) {
            self.current = Some(newer);
        }
        let (Some(w), Some(activations)) = (&self.current, &analysis.activations) else {
            return Err(live::Refresh::NoReference);
        };
        let t0 = Instant::now();
        let age = w.made.elapsed();
        let live = w
            .reference
            .live_map(class, activations.view(), age, &self.policy)?;
        let ready = Ready {
            analysis: analysis.clone(),
            frame,
            captured,
            class,
            map: live.map,
            method: MethodInfo::from(&w.reference.params),
            passes: 0,
            cam_ms: t0.elapsed().as_secs_f64() * 1e3,
            freshness: Freshness::Live {
                age,
                weights_frame: w.reference.frame,
                drift: live.drift,
            },
            request_id: None,
        };
        if self.render.try_send(Outcome::Map(Box::new(ready))).is_err() {
            stats.live_maps_dropped.fetch_add(1, Relaxed);
        }
        Ok(())
    }
}

/// How heatmaps are published.
pub struct Output {
    pub topics: Topics,
    pub device: String,
    pub qos: u8,
    pub retain_image: bool,
    pub image_width: u32,
    pub image_quality: u8,
}

/// The renderer: overlay, JPEG, payload, publish.
pub fn render(
    classifier: Arc<Classifier>,
    maps: Receiver<Outcome>,
    out: Output,
    tx: Sender<Message>,
    stats: Arc<Stats>,
) {
    let mut seq = 0u64;
    for outcome in maps {
        let messages = match outcome {
            Outcome::Map(ready) => {
                seq += 1;
                messages(&classifier, *ready, seq, &out, &stats)
            }
            Outcome::Failed {
                frame,
                error,
                request_id,
            } => {
                stats.heatmap_errors.fetch_add(1, Relaxed);
                tracing::warn!("heatmap for frame {frame} failed: {error}");
                request_id
                    .map(|id| super::command_result(&out.topics, id.0, Err(error)))
                    .into_iter()
                    .collect()
            }
        };
        for m in messages {
            if tx.blocking_send(m).is_err() {
                return;
            }
        }
    }
}

fn messages(
    classifier: &Classifier,
    ready: Ready,
    seq: u64,
    out: &Output,
    stats: &Stats,
) -> Vec<Message> {
    let t0 = Instant::now();
    let (h, w) = ready.map.dim();
    let crop = classifier.preprocess().crop_region();
    let overlay = display::overlay(&ready.analysis.frame, &ready.map, crop, out.image_width);
    let mut jpeg = Vec::new();
    let encoded =
        JpegEncoder::new_with_quality(&mut jpeg, out.image_quality).encode_image(&overlay);
    let (fresh, age_ms, weights_frame, drift) = match ready.freshness {
        Freshness::Fresh => (true, 0.0, ready.frame, None),
        Freshness::Live {
            age,
            weights_frame,
            drift,
        } => (false, ms(age), weights_frame, Some(drift)),
    };
    let heatmap = payload::Heatmap {
        header: payload::Header::new(
            "iscamd.heatmap/1",
            &out.device,
            seq,
            ready.frame,
            ready.captured,
        ),
        class: ready.analysis.class_score(classifier, ready.class),
        method: ready.method,
        passes: ready.passes,
        fresh,
        age_ms,
        weights_frame,
        drift,
        latency_ms: HeatmapLatency {
            cam: ready.cam_ms,
            render: ms(t0.elapsed()),
        },
        map: MapData::u8_base64(w, h, &display::map_u8(&ready.map)),
        request_id: ready.request_id.as_ref().and_then(|r| r.0.clone()),
    };
    stats.heatmaps.fetch_add(1, Relaxed);
    if fresh {
        stats
            .last_heatmap_ms
            .store((ready.cam_ms + ms(t0.elapsed())) as u64, Relaxed);
    } else {
        stats.live_maps.fetch_add(1, Relaxed);
    }
    let json = serde_json::to_vec(&heatmap).expect("heatmap serialises");
    let mut messages = vec![Message {
        topic: out.topics.heatmap(),
        payload: json,
        qos: out.qos,
        retain: false,
        kind: Kind::Heatmap,
    }];
    match encoded {
        Ok(()) => messages.push(Message {
            topic: out.topics.heatmap_image(),
            payload: jpeg,
            qos: out.qos,
            retain: out.retain_image,
            kind: Kind::HeatmapImage,
        }),
        Err(err) => tracing::warn!("cannot encode the heatmap image: {err}"),
    }
    if let Some(id) = ready.request_id {
        messages.push(super::command_result(&out.topics, id.0, Ok(())));
    }
    messages
}
