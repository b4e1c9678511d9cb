//! The heatmap stage: the CAM worker computes one full map at a time on its own thread,
//! so that predictions keep flowing while it works. Live maps come from the inference
//! stage (one weighted sum per frame, see [`crate::cam::live`]). The render stage
//! draws and publishes both, so every heatmap has one sequence and one format.

use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::model::ndarray::Array2;

use super::latest::Latest;
use super::pipeline::Pipeline;
use super::scheduler::Asker;
use super::shutdown::Shutdown;
use crate::analysis::Analysis;
use crate::cam::{health, live, CamParams, Deadline, Method};
use crate::error::{Error, Result};
use crate::model::Classifier;
use crate::telemetry::Stats;

/// One full map to make.
pub struct Job {
    /// The model and settings the frame was analysed with.
    pub pipeline: Arc<Pipeline>,
    pub analysis: Arc<Analysis>,
    pub frame: u64,
    pub captured: SystemTime,
    pub params: CamParams,
    pub class: Option<usize>,
    /// The command or event that asked for it, if any.
    pub asker: Option<Asker>,
    /// Keep its weights for live maps (the schedule's maps of the top-1 class).
    pub reference: bool,
}

/// The newest full map's weights, for the inference thread's live maps.
pub struct Weights {
    /// Whose: weights of a pipeline a reload replaced are of no use.
    pub pipeline: Arc<Pipeline>,
    pub reference: live::Reference,
    pub made: Instant,
}

/// A map to draw and publish, or why it could not be made; or a measure of the maps'
/// health.
pub enum Outcome {
    Map(Box<Ready>),
    Failed {
        frame: u64,
        error: String,
        asker: Option<Asker>,
    },
    Health {
        sample: health::Sample,
        /// `[cam] health_window` of the pipeline measured.
        window: usize,
    },
}

pub struct Ready {
    pub classifier: Arc<Classifier>,
    pub analysis: Arc<Analysis>,
    pub frame: u64,
    pub captured: SystemTime,
    pub class: usize,
    /// At the CAM layer's resolution, unnormalised.
    pub map: Array2<f32>,
    /// How the map was made (for live maps: the reference map's method).
    pub params: CamParams,
    pub passes: usize,
    pub cam_ms: f64,
    pub freshness: Freshness,
    pub asker: Option<Asker>,
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
pub struct HeatmapWorker {
    pub jobs: Receiver<Job>,
    pub render: SyncSender<Outcome>,
    /// Where the newest reference map's weights go, for live maps.
    pub weights: Arc<Latest<Weights>>,
}

impl HeatmapWorker {
    /// Runs until shutdown or until the inference stage stops sending jobs.
    pub fn run(self, shutdown: Shutdown) -> Result<()> {
        let mut full_maps = 0u64;
        for job in self.jobs.iter() {
            if shutdown.is_shutdown() {
                // No more maps, but whoever asked for one still gets its answer: a
                // command its error, an episode its end (without a snapshot).
                let stopping = Outcome::Failed {
                    frame: job.frame,
                    error: "the daemon is stopping".into(),
                    asker: job.asker,
                };
                if self.render.send(stopping).is_err() {
                    break;
                }
                continue;
            }
            let pipeline = job.pipeline.clone();
            let (analysis, frame) = (job.analysis.clone(), job.frame);
            let stopping = shutdown.clone();
            let (outcome, reference) = compute(job, move || stopping.is_shutdown());
            let check = match &outcome {
                Outcome::Map(ready) if health_due(&mut full_maps, &pipeline) => {
                    Some((ready.map.clone(), ready.class))
                }
                _ => None,
            };
            if self.render.send(outcome).is_err() {
                return Err(Error::Stage("the render stage is gone".into()));
            }
            // After the map is on its way: the measure adds no latency to it.
            if let Some((map, class)) = check {
                let p = analysis.probabilities[class];
                let input = &analysis.input;
                match health::measure(&pipeline.classifier, input, p, &map, class, frame) {
                    Ok(sample) => {
                        let window = pipeline.cam.health_window;
                        if self
                            .render
                            .send(Outcome::Health { sample, window })
                            .is_err()
                        {
                            return Err(Error::Stage("the render stage is gone".into()));
                        }
                    }
                    Err(e) => {
                        tracing::warn!("cannot measure the health of frame {frame}'s map: {e}")
                    }
                }
            }
            // After the full map is queued, so no live map made from it is published first.
            if let Some(reference) = reference {
                self.weights.put(Weights {
                    pipeline,
                    reference,
                    made: Instant::now(),
                });
            }
        }
        Ok(())
    }
}

/// Counts a full map; whether its health is to be measured (`[cam] health_every`).
fn health_due(full_maps: &mut u64, pipeline: &Pipeline) -> bool {
    *full_maps += 1;
    let every = u64::from(pipeline.cam.health_every);
    every > 0 && (*full_maps).is_multiple_of(every)
}

/// One full map, and its weights when the job keeps them for live maps. A map still
/// running after `[cam] max_time`, or when `stop` says so, is abandoned.
fn compute(
    job: Job,
    stop: impl Fn() -> bool + Send + Sync + 'static,
) -> (Outcome, Option<live::Reference>) {
    let pipeline = &job.pipeline;
    let deadline: Deadline = pipeline.budget().deadline().or_when(stop);
    let threads = pipeline.heatmap_threads;
    let classifier = &pipeline.classifier;
    match job
        .analysis
        .explain_until(classifier, job.class, &job.params, threads, deadline)
    {
        Ok(e) => {
            let reference = match (job.reference, &job.analysis.activations) {
                (true, Some(a)) => Some(live::Reference::new(&e, a.view(), job.frame)),
                _ => None,
            };
            let ready = Ready {
                classifier: classifier.clone(),
                analysis: job.analysis,
                frame: job.frame,
                captured: job.captured,
                class: e.class,
                params: e.params.clone(),
                passes: e.passes,
                cam_ms: e.millis,
                map: e.map,
                freshness: Freshness::Fresh,
                asker: job.asker,
            };
            (Outcome::Map(Box::new(ready)), reference)
        }
        Err(err) => {
            let failed = Outcome::Failed {
                frame: job.frame,
                error: err.to_string(),
                asker: job.asker,
            };
            (failed, None)
        }
    }
}

/// What the inference stage needs for live maps.
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
        pipeline: &Arc<Pipeline>,
        stats: &Stats,
    ) -> Result<(), live::Refresh> {
        if let Some(newer) = self.weights.take(Duration::ZERO) {
            self.current = Some(newer);
        }
        if let Some(w) = &self.current {
            if !Arc::ptr_eq(&w.pipeline, pipeline) {
                self.current = None;
            }
        }
        let Some(activations) = &analysis.activations else {
            return Err(live::Refresh::NoReference);
        };
        let t0 = Instant::now();
        let (map, params, freshness) = if pipeline.params.method == Method::Cam {
            // The classifier's own weights: every frame's map costs no pass and no full map.
            let head = pipeline.classifier.linear_head();
            let head = head.map_err(|_| live::Refresh::NoReference)?;
            let map = head.class_map(activations.view(), class);
            (map, pipeline.params.clone(), Freshness::Fresh)
        } else if pipeline.params.method == Method::Recipro {
            // The tail's partial passes only: every frame gets a map of its own.
            let map = crate::cam::recipro_map(&pipeline.classifier, activations.view(), class)
                .map_err(|_| live::Refresh::NoReference)?;
            (map, pipeline.params.clone(), Freshness::Fresh)
        } else {
            let Some(w) = &self.current else {
                return Err(live::Refresh::NoReference);
            };
            let age = w.made.elapsed();
            let live = w
                .reference
                .live_map(class, activations.view(), age, &self.policy)?;
            let freshness = Freshness::Live {
                age,
                weights_frame: w.reference.frame,
                drift: live.drift,
            };
            (live.map, w.reference.params.clone(), freshness)
        };
        let ready = Ready {
            classifier: pipeline.classifier.clone(),
            analysis: analysis.clone(),
            frame,
            captured,
            class,
            map,
            params,
            passes: 0,
            cam_ms: t0.elapsed().as_secs_f64() * 1e3,
            freshness,
            asker: None,
        };
        if self.render.try_send(Outcome::Map(Box::new(ready))).is_err() {
            stats.live_map_dropped();
        }
        Ok(())
    }
}
