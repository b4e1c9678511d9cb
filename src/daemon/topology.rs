//! Builds the stages from the config, joins them with bounded channels, and supervises
//! them: a stage that ends before shutdown (an error or a panic) ends the daemon.

use std::collections::BTreeSet;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::MqttOptions;
use tokio::sync::{mpsc, watch};

use super::capture::Capture;
use super::commands::Commands;
use super::heatmap::{HeatmapWorker, Job, Live, Outcome, Weights};
use super::inference::{Control, Inference, CONTROL_QUEUE};
use super::latest::Latest;
use super::render::{Output, Render};
use super::scheduler::{Scheduler, Triggers};
use super::shutdown::{panic_message, End, Ended, Ends, Shutdown, Trigger, STAGE_THREAD_PREFIX};
use super::stats::StatsPublisher;
use super::supervise::{self, Supervisor};
use crate::cam::CamParams;
use crate::config::Config;
use crate::error::{with_causes, Error, Result};
use crate::model::Classifier;
use crate::publish::payload::Origin;
use crate::publish::{run_connection, ConnectionSettings, Incoming, Message, Topics};
use crate::source::{Frame, FrameSource};
use crate::stats::Stats;

/// How long a stage's unexpected end waits for another stage to report the failure that
/// caused it.
const CAUSE_GRACE: Duration = Duration::from_millis(500);

/// Messages waiting for the MQTT connection stage.
const PUBLISH_QUEUE: usize = 256;
/// Commands received and not yet parsed.
const INCOMING_QUEUE: usize = 16;
/// Maps waiting to be drawn: a full one and a live one.
const RENDER_QUEUE: usize = 2;

/// The stage the daemon cannot do without: everything it publishes goes through it.
const CONNECTION: &str = "mqtt";

/// What the topology is built from.
pub struct Parts {
    pub config: Config,
    pub classifier: Arc<Classifier>,
    pub source: Box<dyn FrameSource>,
    pub options: MqttOptions,
    pub origin: Origin,
    pub params: CamParams,
}

/// The running stages.
pub struct Topology {
    trigger: Trigger,
    shutdown: Shutdown,
    ends: Ends,
    ended: mpsc::Receiver<Ended>,
    running: BTreeSet<&'static str>,
    /// Stages that may finish on their own before shutdown (a source that runs out).
    may_finish: BTreeSet<&'static str>,
    frames: Arc<Latest<Frame>>,
    stop_connection: watch::Sender<bool>,
    grace: Duration,
}

/// What every stage is built from: the parts, and the channels and state they share.
struct Shared {
    config: Config,
    classifier: Arc<Classifier>,
    params: CamParams,
    origin: Origin,
    topics: Topics,
    discovery_prefix: Option<String>,
    stats: Arc<Stats>,
    publish: mpsc::Sender<Message>,
}

/// The ends of the channels between the heatmap path and the inference stage.
struct HeatmapPath {
    jobs: SyncSender<Job>,
    render: SyncSender<Outcome>,
    weights: Arc<Latest<Weights>>,
}

impl Topology {
    /// Starts every stage.
    pub fn start(parts: Parts) -> Result<Topology> {
        let Parts {
            config,
            classifier,
            source,
            options,
            origin,
            params,
        } = parts;
        let (trigger, shutdown) = Trigger::new();
        let (ends, ended) = Ends::new(16);
        ends.flag_panics();
        let (stop_connection, connection_stop) = watch::channel(false);
        let mut t = Topology {
            trigger,
            shutdown,
            ends,
            ended,
            running: BTreeSet::new(),
            may_finish: BTreeSet::from(["capture"]),
            frames: Arc::new(Latest::default()),
            stop_connection,
            grace: config.device.shutdown_timeout,
        };
        let (publish, messages) = mpsc::channel::<Message>(PUBLISH_QUEUE);
        let shared = Shared {
            topics: Topics::new(&config.mqtt.prefix, &origin.device),
            discovery_prefix: (config.homeassistant.discovery)
                .then(|| config.homeassistant.prefix.clone()),
            stats: Arc::new(Stats::default()),
            config,
            classifier,
            params,
            origin,
            publish,
        };
        let incoming = t.start_connection(&shared, options, messages, connection_stop);
        let capture = Capture {
            source,
            frames: t.frames.clone(),
            stats: shared.stats.clone(),
            fps: shared.config.source.fps,
        };
        t.thread("capture", move |s| capture.run(s))?;
        let heatmaps = t.start_heatmap_path(&shared)?;
        let control = t.start_inference(&shared, heatmaps)?;
        t.start_tasks(shared, incoming, control);
        Ok(t)
    }

    /// The MQTT connection; returns where it delivers commands.
    fn start_connection(
        &mut self,
        shared: &Shared,
        options: MqttOptions,
        messages: mpsc::Receiver<Message>,
        stop: watch::Receiver<bool>,
    ) -> mpsc::Receiver<Incoming> {
        let (incoming_tx, incoming) = mpsc::channel::<Incoming>(INCOMING_QUEUE);
        let settings = ConnectionSettings {
            options,
            topics: shared.topics.clone(),
            origin: shared.origin.clone(),
            outbox: shared.config.mqtt.outbox,
            discovery_prefix: shared.discovery_prefix.clone(),
            shutdown_timeout: shared.config.device.shutdown_timeout,
        };
        let stats = shared.stats.clone();
        self.task(CONNECTION, async move {
            run_connection(settings, messages, incoming_tx, stats, stop).await;
            Ok(())
        });
        incoming
    }

    /// The CAM worker and the renderer.
    fn start_heatmap_path(&mut self, shared: &Shared) -> Result<HeatmapPath> {
        // The CAM worker takes a job over a rendezvous channel, so only when it is idle.
        let (jobs, job_rx) = sync_channel::<Job>(0);
        let (render, maps) = sync_channel::<Outcome>(RENDER_QUEUE);
        let weights = Arc::new(Latest::<Weights>::default());
        let worker = HeatmapWorker {
            classifier: shared.classifier.clone(),
            jobs: job_rx,
            render: render.clone(),
            weights: weights.clone(),
            threads: heatmap_threads(&shared.config),
            budget: shared.config.cam.budget(),
        };
        self.thread("heatmap", move |s| worker.run(s))?;
        let mqtt = &shared.config.mqtt;
        let renderer = Render {
            classifier: shared.classifier.clone(),
            maps,
            output: Output {
                topics: shared.topics.clone(),
                origin: shared.origin.clone(),
                qos: mqtt.qos.heatmap,
                retain_image: mqtt.retain_heatmap_image,
                image_width: mqtt.heatmap_image_width,
                image_quality: mqtt.heatmap_image_quality,
            },
            publish: shared.publish.clone(),
            stats: shared.stats.clone(),
        };
        self.thread("render", move |s| renderer.run(s))?;
        Ok(HeatmapPath {
            jobs,
            render,
            weights,
        })
    }

    /// The inference stage; returns how commands reach it.
    fn start_inference(
        &mut self,
        shared: &Shared,
        heatmaps: HeatmapPath,
    ) -> Result<SyncSender<Control>> {
        let cam = &shared.config.cam;
        let (control_tx, control) = sync_channel::<Control>(CONTROL_QUEUE);
        let inference = Inference {
            classifier: shared.classifier.clone(),
            frames: self.frames.clone(),
            stats: shared.stats.clone(),
            publish: shared.publish.clone(),
            jobs: heatmaps.jobs,
            live: cam
                .live
                .then(|| Live::new(cam.live_policy(), heatmaps.weights, heatmaps.render)),
            control,
            scheduler: Scheduler::new(Triggers {
                interval: cam.interval,
                on_class_change: cam.on_class_change,
                min_confidence: cam.min_confidence,
                live: cam.live,
            }),
            topics: shared.topics.clone(),
            origin: shared.origin.clone(),
            qos: shared.config.mqtt.qos.prediction,
            params: shared.params.clone(),
        };
        self.thread("inference", move |s| inference.run(s))?;
        Ok(control_tx)
    }

    /// The command, stats and supervision tasks.
    fn start_tasks(
        &mut self,
        shared: Shared,
        incoming: mpsc::Receiver<Incoming>,
        control: SyncSender<Control>,
    ) {
        let commands = Commands {
            incoming,
            control,
            publish: shared.publish.clone(),
            classifier: shared.classifier,
            defaults: shared.params,
            budget: shared.config.cam.budget(),
            stats: shared.stats.clone(),
            topics: shared.topics.clone(),
            origin: shared.origin.clone(),
            discovery_prefix: shared.discovery_prefix,
            rate: shared.config.mqtt.commands_per_second,
        };
        self.task("commands", commands.run(self.shutdown.clone()));
        let stats_publisher = StatsPublisher {
            stats: shared.stats.clone(),
            publish: shared.publish,
            topics: shared.topics,
            origin: shared.origin.clone(),
            every: shared.config.mqtt.stats_interval,
        };
        self.task("stats", stats_publisher.run(self.shutdown.clone()));
        let supervisor = Supervisor {
            stats: shared.stats,
            origin: shared.origin,
            failed: self.ends.failure_flag(),
        };
        self.task("supervise", supervisor.run(self.shutdown.clone()));
    }

    /// Runs a stage on its own thread (CPU-bound work), reporting how it ends.
    fn thread(
        &mut self,
        stage: &'static str,
        run: impl FnOnce(Shutdown) -> Result<()> + Send + 'static,
    ) -> Result<()> {
        let (ends, shutdown) = (self.ends.clone(), self.shutdown.clone());
        std::thread::Builder::new()
            .name(format!("{STAGE_THREAD_PREFIX}{stage}"))
            .spawn(move || {
                let end = match std::panic::catch_unwind(AssertUnwindSafe(|| run(shutdown))) {
                    Ok(Ok(())) => End::Finished,
                    Ok(Err(e)) => End::Failed(with_causes(&e)),
                    Err(payload) => End::Panicked(panic_message(payload.as_ref())),
                };
                ends.report(stage, end);
            })
            .map_err(|e| Error::Stage(format!("cannot start the {stage} thread: {e}")))?;
        self.running.insert(stage);
        Ok(())
    }

    /// Runs a stage as a task on the I/O runtime, reporting how it ends.
    fn task(
        &mut self,
        stage: &'static str,
        run: impl Future<Output = Result<()>> + Send + 'static,
    ) {
        let ends = self.ends.clone();
        let inner = tokio::spawn(run);
        tokio::spawn(async move {
            let end = match inner.await {
                Ok(Ok(())) => End::Finished,
                Ok(Err(e)) => End::Failed(with_causes(&e)),
                Err(e) if e.is_panic() => End::Panicked(panic_message(e.into_panic().as_ref())),
                Err(e) => End::Failed(e.to_string()),
            };
            ends.report(stage, end);
        });
        self.running.insert(stage);
    }

    /// Waits for SIGINT/SIGTERM (or `stop`) or for a stage to end; then stops every stage.
    /// An error names the stage that ended the daemon.
    pub async fn run_until_stopped(mut self, stop: impl Future<Output = ()>) -> Result<()> {
        tokio::pin!(stop);
        let failure = loop {
            tokio::select! {
                _ = &mut stop => break None,
                ended = self.ended.recv() => {
                    let Some(ended) = ended else { break None };
                    let consequence = matches!(ended.end, End::Finished);
                    if let Some(why) = self.on_end(ended) {
                        break Some(if consequence { self.cause_of(why).await } else { why });
                    }
                }
            }
        };
        match &failure {
            Some(why) => {
                tracing::error!("{why}; stopping (a service manager restarts the daemon)");
                supervise::failing(why);
            }
            None => tracing::info!("shutting down"),
        }
        self.shut_down().await;
        failure.map_or(Ok(()), |why| Err(Error::Stage(why)))
    }

    /// A stage that finishes unasked has lost the stage feeding it, which unwinds (drops
    /// the channel) a moment before it reports its panic or error: waits that moment for
    /// the report, to name the cause rather than the consequence.
    async fn cause_of(&mut self, consequence: String) -> String {
        let cause = tokio::time::timeout(CAUSE_GRACE, async {
            while let Some(ended) = self.ended.recv().await {
                let failed = !matches!(ended.end, End::Finished);
                if let (true, Some(why)) = (failed, self.on_end(ended)) {
                    return Some(why);
                }
            }
            None
        })
        .await;
        cause.ok().flatten().unwrap_or(consequence)
    }

    /// Records a stage's end; says why the daemon must stop, if it must.
    fn on_end(&mut self, Ended { stage, end }: Ended) -> Option<String> {
        self.running.remove(stage);
        match end {
            End::Finished if self.may_finish.contains(stage) => None,
            End::Finished => Some(format!("the {stage} stage ended unexpectedly")),
            End::Failed(e) => Some(format!("the {stage} stage failed: {e}")),
            End::Panicked(m) => Some(format!("the {stage} stage panicked: {m}")),
        }
    }

    /// Stops the stages, then lets the connection flush and say `offline`.
    async fn shut_down(mut self) {
        supervise::stopping();
        self.trigger.fire();
        self.frames.wake();
        let grace = self.grace;
        let stages_done = tokio::time::timeout(grace, async {
            while self.running.iter().any(|s| *s != CONNECTION) {
                match self.ended.recv().await {
                    Some(Ended { stage, end }) => {
                        self.running.remove(stage);
                        if let End::Failed(e) | End::Panicked(e) = end {
                            tracing::warn!("while stopping, the {stage} stage: {e}");
                        }
                    }
                    None => break,
                }
            }
        })
        .await;
        if stages_done.is_err() {
            let left: Vec<_> = self.running.iter().filter(|s| **s != CONNECTION).collect();
            tracing::warn!(
                "{left:?} did not stop within {grace:?} (a heatmap in flight): abandoned"
            );
        }
        let _ = self.stop_connection.send(true);
        let connection_done = async {
            while self.running.contains(CONNECTION) {
                match self.ended.recv().await {
                    Some(Ended { stage, .. }) => {
                        self.running.remove(stage);
                    }
                    None => break,
                }
            }
        };
        let _ = tokio::time::timeout(grace + Duration::from_secs(3), connection_done).await;
    }
}

/// Threads for each full map: all cores but the one inference needs.
fn heatmap_threads(config: &Config) -> usize {
    let threads = match config.model.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    threads.saturating_sub(1).max(1)
}
