//! The inference stage: classifies the newest frame, publishes the prediction, and asks
//! the [`Scheduler`] whether to explain it.

use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::Sender;

use super::command_result;
use super::heatmap::{Job, Live, Outcome, Weights};
use super::latest::Latest;
use super::pipeline::{Current, Pipeline};
use super::scheduler::{
    Asker, Decision, Reason, Request, Scheduler, Triggers, MAX_PENDING_REQUESTS,
};
use super::shutdown::Shutdown;
use crate::analysis::Analysis;
use crate::error::{Error, Result};
use crate::events::stage::{Ended, EventOutput, Events, Snapshot};
use crate::events::Mark;
use crate::model::top_k;
use crate::publish::payload;
use crate::publish::payload::Origin;
use crate::publish::policy::PredictionGate;
use crate::publish::{Kind, Message, Topics};
use crate::source::Frame;
use crate::telemetry::Stats;
use crate::web::Board;

/// What the command stage asks of the inference stage.
pub enum Control {
    Explain(Request),
    Set {
        interval: Option<Duration>,
        live: Option<bool>,
    },
}

/// Control messages that may wait; the command stage refuses more as busy.
pub const CONTROL_QUEUE: usize = 8;

/// What the inference stage is built from.
pub struct InferenceParts {
    pub pipeline: Current,
    pub frames: Arc<Latest<Frame>>,
    pub stats: Arc<Stats>,
    pub publish: Sender<Message>,
    pub jobs: SyncSender<Job>,
    /// Where the CAM worker leaves reference weights, and where live maps go.
    pub weights: Arc<Latest<Weights>>,
    pub render: SyncSender<Outcome>,
    pub control: Receiver<Control>,
    pub topics: Topics,
    pub origin: Origin,
    pub qos: u8,
    /// Which predictions are published (`[mqtt] prediction_policy`).
    pub predictions: PredictionGate,
    pub events: EventOutput,
    /// The page's view: the last frame classified, for its debug bundles.
    pub board: Option<Arc<Board>>,
}

pub struct Inference {
    parts: InferenceParts,
    /// The pipeline in use, swapped between frames when a reload changes it.
    current: Arc<Pipeline>,
    model: String,
    scheduler: Scheduler,
    /// Live maps between full maps (`[cam] live`).
    live: Option<Live>,
    /// Episodes of a class (`[events]`).
    events: Option<Events>,
}

impl Inference {
    pub fn new(mut parts: InferenceParts) -> Self {
        let current = parts.pipeline.borrow_and_update().clone();
        let (triggers, live) = schedule(&current, &parts);
        Inference {
            events: Events::new(&current.events, parts.events.clone()),
            model: current.model_name(),
            current,
            scheduler: Scheduler::new(triggers),
            live,
            parts,
        }
    }

    pub fn run(mut self, shutdown: Shutdown) -> Result<()> {
        let hooks = hooks::TestHooks::from_env();
        let stats = self.parts.stats.clone();
        let mut seq = 0u64;
        self.publish_settings()?;
        while !shutdown.is_shutdown() {
            self.take_reload()?;
            self.take_control()?;
            let Some(frame) = self.parts.frames.take(Duration::from_millis(200)) else {
                self.explain_waiting_peak()?;
                continue;
            };
            let _step = stats.inference_step();
            hooks.before_frame(stats.processed(), &shutdown);
            let mark = Mark {
                frame: frame.number,
                at: frame.captured,
            };
            let analysis = match Analysis::of_frame(&self.current.classifier, frame.image) {
                Ok(a) => Arc::new(a),
                Err(e) => {
                    stats.frame_error();
                    tracing::warn!("frame {}: {e}", frame.number);
                    continue;
                }
            };
            stats.frame_processed(analysis.latency.inference.unwrap_or_default());
            if let Some(board) = &self.parts.board {
                board.analysed(self.current.clone(), analysis.clone(), mark);
            }
            let top1 = top_k(&analysis.probabilities, 1)[0];
            let score = analysis.probabilities[top1];
            if self.parts.predictions.admit(Instant::now(), top1, score) {
                seq += 1;
                self.publish_prediction(&analysis, mark, seq)?;
            }
            if let Some(events) = &mut self.events {
                let ended = events.observe(&analysis, mark, (top1, score), &self.current)?;
                self.explain_peaks(ended)?;
            }
            self.explain(analysis, mark)?;
        }
        self.stop_events()
    }

    /// Asks for the maps of ended episodes' peak frames; an end that finds no room in
    /// the queue goes without one.
    fn explain_peaks(&mut self, ended: Vec<Ended>) -> Result<()> {
        for ended in ended {
            let request = Request {
                params: ended.pipeline.params.clone(),
                class: Some(ended.episode.class),
                asker: Asker::Event(Box::new(ended)),
            };
            if let Err(refused) = self.scheduler.request(request) {
                tracing::debug!("no room to explain an event's peak frame");
                self.end_without_map(refused)?;
            }
        }
        Ok(())
    }

    /// Ends the open episode now: the daemon stops, or new rules take over.
    fn end_episode(&mut self) -> Result<()> {
        let ended = match &mut self.events {
            Some(events) => events.stop(&self.current)?,
            None => None,
        };
        self.explain_peaks(ended.into_iter().collect())
    }

    /// At shutdown: the open episode ends, ends that wait for a map go without one, and
    /// commands that wait are told (the CAM worker stops too).
    fn stop_events(&mut self) -> Result<()> {
        self.end_episode()?;
        for request in self.scheduler.take_requests() {
            match request.asker {
                Asker::Command(id) => {
                    let why = "the daemon is stopping: the map was not started".to_string();
                    let reply =
                        command_result(&self.parts.topics, &self.parts.origin, id.0, Some(why));
                    self.send(reply)?;
                }
                Asker::Event(_) => self.end_without_map(request)?,
            }
        }
        Ok(())
    }

    /// Sends an episode's end without a snapshot (a command's request is not asked here).
    fn end_without_map(&self, request: Request) -> Result<()> {
        match request.asker {
            Asker::Event(ended) => self.parts.events.end(&ended, Snapshot::none()),
            Asker::Command(_) => Ok(()),
        }
    }

    /// Takes up a pipeline a reload made: the next frame runs through it. Requests that
    /// wait are kept; the schedule starts afresh, and live maps wait for a full map of
    /// the new pipeline. Publishes the settings it brings.
    fn take_reload(&mut self) -> Result<()> {
        if !self.parts.pipeline.has_changed().unwrap_or(false) {
            return Ok(());
        }
        let next = self.parts.pipeline.borrow_and_update().clone();
        let (triggers, live) = schedule(&next, &self.parts);
        self.scheduler.set_triggers(triggers);
        self.live = live;
        self.model = next.model_name();
        if next.events != self.current.events {
            match &mut self.events {
                Some(events) if next.events.enabled => {
                    let ended = events.renew(&next.events, &self.current)?;
                    self.explain_peaks(ended.into_iter().collect())?;
                }
                _ => {
                    self.end_episode()?;
                    self.events = Events::new(&next.events, self.parts.events.clone());
                }
            }
        }
        self.current = next;
        self.publish_settings()
    }

    /// Takes the commands' requests into the scheduler; refuses those it has no room for.
    fn take_control(&mut self) -> Result<()> {
        loop {
            match self.parts.control.try_recv() {
                Ok(Control::Explain(request)) => {
                    if let Err(refused) = self.scheduler.request(request) {
                        let busy = format!(
                            "busy: {MAX_PENDING_REQUESTS} explain requests already wait; \
                             try again later"
                        );
                        if let Asker::Command(id) = refused.asker {
                            let reply = command_result(
                                &self.parts.topics,
                                &self.parts.origin,
                                id.0,
                                Some(busy),
                            );
                            self.send(reply)?;
                        }
                    }
                }
                Ok(Control::Set { interval, live }) => {
                    if let Some(d) = interval {
                        tracing::info!("heatmap interval set to {d:?} by command");
                        self.scheduler.set_interval(d);
                    }
                    if let Some(on) = live {
                        let state = if on { "on" } else { "off" };
                        tracing::info!("live maps turned {state} by command");
                        self.set_live(on);
                    }
                    self.publish_settings()?;
                }
                Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => return Ok(()),
            }
        }
    }

    fn set_live(&mut self, on: bool) {
        self.scheduler.set_live(on);
        if !on {
            self.live = None;
        } else if self.live.is_none() {
            self.live = Some(live_maps(&self.current, &self.parts));
        }
    }

    /// The schedule and live maps in force, retained for subscribers (Home Assistant's
    /// number and switch read it).
    fn publish_settings(&self) -> Result<()> {
        let triggers = self.scheduler.triggers();
        let settings = payload::Settings {
            schema: "iscamd.settings/1",
            device: &self.parts.origin.device,
            run: &self.parts.origin.run,
            heatmap_interval_s: triggers.interval.as_secs_f64(),
            live: triggers.live,
        };
        self.send(Message {
            topic: self.parts.topics.settings(),
            payload: serde_json::to_vec(&settings).expect("settings serialise"),
            qos: 1,
            retain: true,
            kind: Kind::Settings,
        })
    }

    fn publish_prediction(&self, analysis: &Analysis, mark: Mark, seq: u64) -> Result<()> {
        let prediction = payload::Prediction {
            header: payload::Header::new(
                "iscamd.prediction/1",
                &self.parts.origin,
                seq,
                mark.frame,
                mark.at,
            ),
            model: &self.model,
            top: analysis.top(&self.current.classifier, 5),
            latency_ms: analysis.latency,
        };
        if let Some(top) = prediction.top.first() {
            tracing::debug!(
                "prediction {seq}: frame {}: {} [{}] {:.1} %",
                mark.frame,
                top.label,
                top.index,
                top.score * 100.0
            );
        }
        let payload = serde_json::to_vec(&prediction).expect("prediction serialises");
        self.send(Message {
            topic: self.parts.topics.prediction(),
            payload,
            qos: self.parts.qos,
            retain: false,
            kind: Kind::Prediction,
        })?;
        self.parts.stats.prediction_published(mark.at);
        Ok(())
    }

    /// Hands the CAM worker the map the scheduler asks for, or publishes a live map.
    fn explain(&mut self, analysis: Arc<Analysis>, mark: Mark) -> Result<()> {
        let top1 = top_k(&analysis.probabilities, 1)[0];
        let now = Instant::now();
        let mut decision = self
            .scheduler
            .decide(now, top1, analysis.probabilities[top1]);
        if let (Decision::Live, Some(live)) = (&decision, &mut self.live) {
            let stamp = (mark.frame, mark.at);
            match live.publish(&analysis, stamp, top1, &self.current, &self.parts.stats) {
                Ok(()) => return Ok(()),
                Err(why) => {
                    tracing::debug!("frame {}: full map needed: {why}", mark.frame);
                    decision = Decision::Full(Reason::LiveExpired);
                }
            }
        }
        let job = match decision {
            Decision::Requested(request) => self.requested_job(request, analysis, mark),
            Decision::Full(reason) => {
                tracing::debug!("frame {}: full map ({reason:?})", mark.frame);
                Job {
                    pipeline: self.current.clone(),
                    analysis,
                    frame: mark.frame,
                    captured: mark.at,
                    params: self.current.params.clone(),
                    class: None,
                    asker: None,
                    reference: true,
                }
            }
            Decision::Live | Decision::Nothing => return Ok(()),
        };
        self.hand_over(job, now)
    }

    /// While no frame comes, an ended episode's map (of its peak frame, which needs no
    /// new one) goes to the CAM worker as soon as the worker is free.
    fn explain_waiting_peak(&mut self) -> Result<()> {
        let Some(request) = self.scheduler.take_frameless() else {
            return Ok(());
        };
        let Asker::Event(ended) = &request.asker else {
            self.scheduler.requeue(request);
            return Ok(());
        };
        let (analysis, mark) = (ended.peak.clone(), ended.episode.peak);
        let job = self.requested_job(request, analysis, mark);
        self.hand_over(job, Instant::now())
    }

    /// Gives the CAM worker a job if it is free; a requested one waits again if not.
    fn hand_over(&mut self, job: Job, now: Instant) -> Result<()> {
        let requested = job.asker.is_some();
        match self.parts.jobs.try_send(job) {
            Ok(()) if requested => self.scheduler.started_request(),
            Ok(()) => self.scheduler.started_full(now),
            Err(TrySendError::Full(job)) => {
                if let Some(asker) = job.asker {
                    self.scheduler.requeue(Request {
                        params: job.params,
                        class: job.class,
                        asker,
                    });
                }
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(Error::Stage("the heatmap stage is gone".into()))
            }
        }
        Ok(())
    }

    /// A command's map is of this frame; an event's, of its peak frame.
    fn requested_job(&self, request: Request, analysis: Arc<Analysis>, mark: Mark) -> Job {
        let (pipeline, analysis, mark) = match &request.asker {
            Asker::Event(e) => (e.pipeline.clone(), e.peak.clone(), e.episode.peak),
            Asker::Command(_) => (self.current.clone(), analysis, mark),
        };
        Job {
            pipeline,
            analysis,
            frame: mark.frame,
            captured: mark.at,
            params: request.params,
            class: request.class,
            asker: Some(request.asker),
            reference: false,
        }
    }

    fn send(&self, message: Message) -> Result<()> {
        self.parts
            .publish
            .blocking_send(message)
            .map_err(|_| Error::Stage("the MQTT connection stage is gone".into()))
    }
}

/// The schedule and live maps a pipeline's `[cam]` settings ask for.
fn schedule(pipeline: &Pipeline, parts: &InferenceParts) -> (Triggers, Option<Live>) {
    let cam = &pipeline.cam;
    let triggers = Triggers {
        interval: cam.interval,
        on_class_change: cam.on_class_change,
        min_confidence: cam.min_confidence,
        live: cam.live,
    };
    let live = cam.live.then(|| live_maps(pipeline, parts));
    (triggers, live)
}

fn live_maps(pipeline: &Pipeline, parts: &InferenceParts) -> Live {
    Live::new(
        pipeline.cam.live_policy(),
        parts.weights.clone(),
        parts.render.clone(),
    )
}

/// Test-only faults, read from the environment in builds with the `test-hooks` feature
/// and compiled out of every other build.
mod hooks {
    use super::Shutdown;

    #[derive(Default)]
    pub struct TestHooks {
        #[cfg(feature = "test-hooks")]
        hang_after: Option<u64>,
        #[cfg(feature = "test-hooks")]
        panic_after: Option<u64>,
    }

    /// Hangs the inference stage after N frames (the watchdog must starve).
    #[cfg(feature = "test-hooks")]
    pub const HANG: &str = "ISCAMD_TEST_HANG_INFERENCE_AFTER";
    /// Panics the inference stage after N frames (the daemon must exit non-zero).
    #[cfg(feature = "test-hooks")]
    pub const PANIC: &str = "ISCAMD_TEST_PANIC_INFERENCE_AFTER";

    impl TestHooks {
        #[cfg(feature = "test-hooks")]
        pub fn from_env() -> Self {
            let read = |name| std::env::var(name).ok().and_then(|v| v.parse().ok());
            TestHooks {
                hang_after: read(HANG),
                panic_after: read(PANIC),
            }
        }

        #[cfg(not(feature = "test-hooks"))]
        pub fn from_env() -> Self {
            TestHooks::default()
        }

        #[cfg(feature = "test-hooks")]
        pub fn before_frame(&self, processed: u64, shutdown: &Shutdown) {
            if self.panic_after.is_some_and(|n| processed >= n) {
                panic!("{PANIC}: the inference stage panics on purpose");
            }
            if self.hang_after.is_some_and(|n| processed >= n) {
                tracing::warn!("{HANG}: hanging the inference thread");
                while !shutdown.is_shutdown() {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
            }
        }

        #[cfg(not(feature = "test-hooks"))]
        pub fn before_frame(&self, _processed: u64, _shutdown: &Shutdown) {}
    }
}
