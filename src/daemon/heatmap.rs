//! The heatmap worker: explains one analysed frame at a time on its own thread, so that
//! predictions keep flowing while a map is computed.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use image::codecs::jpeg::JpegEncoder;
use tokio::sync::mpsc::Sender;

use crate::analyse::Analysis;
use crate::cam::{display, CamParams};
use crate::model::Classifier;
use crate::publish::payload::{self, HeatmapLatency, MapData, MethodInfo};
use crate::publish::{Kind, Message, Topics};
use crate::stats::Stats;

/// One heatmap to make.
pub struct Job {
    pub analysis: Arc<Analysis>,
    pub frame: u64,
    pub captured: SystemTime,
    pub params: CamParams,
    pub class: Option<usize>,
    /// The command that asked for it, if any.
    pub request_id: Option<RequestId>,
}

/// A command's id (possibly absent in the command itself).
#[derive(Clone, Debug)]
pub struct RequestId(pub Option<String>);

/// How heatmaps are published.
pub struct Output {
    pub topics: Topics,
    pub device: String,
    pub qos: u8,
    pub retain_image: bool,
    pub image_width: u32,
    pub image_quality: u8,
    pub threads: usize,
}

pub fn run(
    classifier: Arc<Classifier>,
    jobs: Receiver<Job>,
    out: Output,
    tx: Sender<Message>,
    stats: Arc<Stats>,
) {
    let mut seq = 0u64;
    for job in jobs {
        let t0 = Instant::now();
        match job
            .analysis
            .explain(&classifier, job.class, &job.params, out.threads)
        {
            Ok(e) => {
                let t1 = Instant::now();
                let (h, w) = e.map.dim();
                let crop = classifier.preprocess().crop_region();
                let overlay = display::overlay(&job.analysis.frame, &e.map, crop, out.image_width);
                let mut jpeg = Vec::new();
                let encoded = JpegEncoder::new_with_quality(&mut jpeg, out.image_quality)
                    .encode_image(&overlay);
                seq += 1;
                let heatmap = payload::Heatmap {
                    header: payload::Header::new(
                        "iscamd.heatmap/1",
                        &out.device,
                        seq,
                        job.frame,
                        job.captured,
                    ),
                    class: job.analysis.class_score(&classifier, e.class),
                    method: MethodInfo {
                        name: e.params.method.name(),
                        steps: e.params.steps(),
                        channels: e.params.channels,
                        weighting: e.params.weighting.name(),
                    },
                    passes: e.passes,
                    latency_ms: HeatmapLatency {
                        cam: e.millis,
                        render: t1.elapsed().as_secs_f64() * 1e3,
                    },
                    map: MapData::u8_base64(w, h, &display::map_u8(&e.map)),
                    request_id: job.request_id.as_ref().and_then(|r| r.0.clone()),
                };
                stats.heatmaps.fetch_add(1, Relaxed);
                stats
                    .last_heatmap_ms
                    .store(t0.elapsed().as_millis() as u64, Relaxed);
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
                if let Some(id) = job.request_id {
                    messages.push(super::command_result(&out.topics, id.0, Ok(())));
                }
                for m in messages {
                    if tx.blocking_send(m).is_err() {
                        return;
                    }
                }
            }
            Err(err) => {
                stats.heatmap_errors.fetch_add(1, Relaxed);
                tracing::warn!("heatmap for frame {} failed: {err}", job.frame);
                if let Some(id) = job.request_id {
                    let _ = tx.blocking_send(super::command_result(
                        &out.topics,
                        id.0,
                        Err(err.to_string()),
                    ));
                }
            }
        }
    }
}
