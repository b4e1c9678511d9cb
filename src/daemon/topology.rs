//! Builds the stages from the config, joins them with bounded channels, and supervises
//! them: a stage that ends before shutdown (an error or a panic) ends the daemon.

use std::collections::BTreeSet;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc::sync_channel;
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
use crate::publish::{run_connection, ConnectionSettings, Incoming, Message, Topics};
use crate::source::{Frame, FrameSource};
use crate::stats::Stats;

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
    pub device: String,
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

impl Topology {
    /// Starts every stage.
    pub fn start(parts: Parts) -> Result<Topology> {
        let Parts {
            config,
            classifier,
            source,
            options,
            device,
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
        let stats = Arc::new(Stats::default());
        let topics = Topics::new(&config.mqtt.prefix, &device);
        let discovery_prefix = config
            .homeassistant
            .discovery
            .then(|| config.homeassistant.prefix.clone());
        let (publish, messages) = mpsc::channel::<Message>(PUBLISH_QUEUE);
        let (incoming_tx, incoming) = mpsc::channel::<Incoming>(INCOMING_QUEUE);

        let connection = ConnectionSettings {
            options,
            topics: topics.clone(),
            device: device.clone(),
            outbox: config.mqtt.outbox,
            discovery_prefix: discovery_prefix.clone(),
            shutdown_timeout: config.device.shutdown_timeout,
        };
        let stats_for_connection = stats.clone();
        t.task(CONNECTION, async move {
            run_connection(
                connection,
                messages,
                incoming_tx,
                stats_for_connection,
                connection_stop,
            )
            .await;
            Ok(())
        });

        let capture = Capture {
            source,
            frames: t.frames.clone(),
            stats: stats.clone(),
            fps: config.source.fps,
        };
        t.thread("capture", move |s| capture.run(s))?;

        // The CAM worker takes a job over a rendezvous channel, so only when it is idle.
        let (jobs, job_rx) = sync_channel::<Job>(0);
        let (render_tx, maps) = sync_channel::<Outcome>(RENDER_QUEUE);
        let weights = Arc::new(Latest::<Weights>::default());
        let worker = HeatmapWorker {
            classifier: classifier.clone(),
            jobs: job_rx,
            render: render_tx.clone(),
            weights: weights.clone(),
            threads: heatmap_threads(&config),
        };
        t.thread("heatmap", move |s| worker.run(s))?;

        let render = Render {
            classifier: classifier.clone(),
            maps,
            output: Output {
                topics: topics.clone(),
                device: device.clone(),
                qos: config.mqtt.qos.heatmap,
                retain_image: config.mqtt.retain_heatmap_image,
                image_width: config.mqtt.heatmap_image_width,
                image_quality: config.mqtt.heatmap_image_quality,
            },
            publish: publish.clone(),
            stats: stats.clone(),
        };
        t.thread("render", move |s| render.run(s))?;

        let (control_tx, control) = sync_channel::<Control>(CONTROL_QUEUE);
        let inference = Inference {
            classifier: classifier.clone(),
            frames: t.frames.clone(),
            stats: stats.clone(),
            publish: publish.clone(),
            jobs,
            live: config
                .cam
                .live
                .then(|| Live::new(config.cam.live_policy(), weights, render_tx)),
            control,
            scheduler: Scheduler::new(Triggers {
                interval: config.cam.interval,
                on_class_change: config.cam.on_class_change,
                min_confidence: config.cam.min_confidence,
                live: config.cam.live,
            }),
            topics: topics.clone(),
            device: device.clone(),
            qos: config.mqtt.qos.prediction,
            params: params.clone(),
        };
        t.thread("inference", move |s| inference.run(s))?;

        let commands = Commands {
            incoming,
            control: control_tx,
            publish: publish.clone(),
            classifier,
            defaults: params,
            stats: stats.clone(),
            topics: topics.clone(),
            device: device.clone(),
            discovery_prefix,
            rate: config.mqtt.commands_per_second,
        };
        t.task("commands", commands.run(t.shutdown.clone()));

        let stats_publisher = StatsPublisher {
            stats: stats.clone(),
            publish,
            topics,
            device,
            every: config.mqtt.stats_interval,
        };
        t.task("stats", stats_publisher.run(t.shutdown.clone()));

        let supervisor = Supervisor {
            stats,
            failed: t.ends.failure_flag(),
        };
        t.task("supervise", supervisor.run(t.shutdown.clone()));
        Ok(t)
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
                    if let Some(why) = self.on_end(ended) {
                        break Some(why);
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
