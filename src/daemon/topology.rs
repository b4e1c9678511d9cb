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

use super::capture::{Capture, NewSource};
use super::command_result;
use super::commands::Commands;
use super::heatmap::{HeatmapWorker, Job, Outcome, Weights};
use super::inference::{Control, Inference, InferenceParts, CONTROL_QUEUE};
use super::latest::Latest;
use super::pipeline::Pipeline;
use super::reload::{self, Change, Reload, ReloadError, ReloadRequest, Running};
use super::render::{Output, Render};
use super::shutdown::{panic_message, End, Ended, Ends, Shutdown, Trigger, STAGE_THREAD_PREFIX};
use super::supervise::{self, Supervisor};
use crate::config::Config;
use crate::error::{with_causes, Error, Result};
use crate::events::stage::EventOutput;
use crate::model::Classifier;
use crate::publish::payload::Origin;
use crate::publish::policy::PredictionGate;
use crate::publish::{discovery, run_connection, ConnectionSettings, Incoming, Message, Topics};
use crate::source::{Frame, FrameSource};
use crate::telemetry::stage::StatsPublisher;
use crate::telemetry::Stats;
use crate::web::board::{Attached, Board};

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
    /// With the embedded broker's port filled in.
    pub config: Config,
    pub pipeline: Pipeline,
    pub source: Box<dyn FrameSource>,
    pub options: MqttOptions,
    pub origin: Origin,
    /// What a reload compares with; `None`: nothing to reload from.
    pub running: Option<Running>,
    pub reloads: Reloads,
    /// The page's view, when `[web]` serves one.
    pub board: Option<Arc<Board>>,
}

/// Where reload requests come from (SIGHUP, the reload command) and how they are met.
#[derive(Clone)]
pub struct Reloads {
    pub requests: mpsc::Sender<ReloadRequest>,
    pub reload: Option<Arc<dyn Reload>>,
    pub embedded_broker: bool,
}

/// How the topology ended.
pub enum Exit {
    Stopped,
    /// A reload changed the connection's settings: start again from these.
    Restart {
        running: Box<Running>,
        classifier: Arc<Classifier>,
    },
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
    pipeline: watch::Sender<Arc<Pipeline>>,
    sources: SyncSender<NewSource>,
    running_config: Option<Running>,
    reloads: Reloads,
    topics: Topics,
    origin: Origin,
    publish: mpsc::Sender<Message>,
    board: Option<Arc<Board>>,
}

/// What every stage is built from: the parts, and the channels and state they share.
struct Shared {
    config: Config,
    pipeline: watch::Receiver<Arc<Pipeline>>,
    origin: Origin,
    topics: Topics,
    discovery: Option<discovery::Options>,
    stats: Arc<Stats>,
    publish: mpsc::Sender<Message>,
    /// Episodes go out from the inference and render stages, counted together.
    events: EventOutput,
    board: Option<Arc<Board>>,
}

impl Shared {
    /// Tells the page (`[web]`) what these stages run with, and where its commands go.
    fn show_on_board(&self, commands: &mpsc::Sender<Incoming>) {
        let Some(board) = &self.board else {
            return;
        };
        board.configured(&self.config);
        board.attach(Attached {
            topics: self.topics.clone(),
            origin: self.origin.clone(),
            stats: self.stats.clone(),
            pipeline: self.pipeline.clone(),
            commands: commands.clone(),
        });
    }
}

/// What the connection stage is built from: its channels.
struct Connection {
    options: MqttOptions,
    messages: mpsc::Receiver<Message>,
    /// Where received commands go (the page's too).
    commands: mpsc::Sender<Incoming>,
    stop: watch::Receiver<bool>,
}

/// The ends of the channels between the heatmap path and the inference stage.
struct HeatmapPath {
    jobs: SyncSender<Job>,
    render: SyncSender<Outcome>,
    weights: Arc<Latest<Weights>>,
}

/// Sources a reload opened that may wait for the capture stage.
const NEW_SOURCE_QUEUE: usize = 1;

impl Topology {
    /// Starts every stage.
    pub fn start(parts: Parts) -> Result<Topology> {
        let Parts {
            config,
            pipeline,
            source,
            options,
            origin,
            running,
            reloads,
            board,
        } = parts;
        let (trigger, shutdown) = Trigger::new();
        let (ends, ended) = Ends::new(16);
        ends.flag_panics();
        let (stop_connection, connection_stop) = watch::channel(false);
        let (pipeline, pipeline_rx) = watch::channel(Arc::new(pipeline));
        let (sources, replacements) = sync_channel::<NewSource>(NEW_SOURCE_QUEUE);
        let (publish, messages) = mpsc::channel::<Message>(PUBLISH_QUEUE);
        let topics = Topics::new(&config.mqtt.prefix, &origin.device);
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
            pipeline,
            sources,
            running_config: running,
            reloads,
            topics: topics.clone(),
            origin: origin.clone(),
            publish: publish.clone(),
            board: board.clone(),
        };
        let shared = Shared {
            events: EventOutput::new(topics.clone(), origin.clone(), publish.clone()),
            topics,
            discovery: config.discovery(),
            stats: Arc::new(Stats::default()),
            config,
            pipeline: pipeline_rx,
            origin,
            publish,
            board,
        };
        let (commands, incoming) = mpsc::channel::<Incoming>(INCOMING_QUEUE);
        shared.show_on_board(&commands);
        let connection = Connection {
            options,
            messages,
            commands,
            stop: connection_stop,
        };
        t.start_connection(&shared, connection);
        let capture = Capture {
            source,
            replacements,
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

    /// The MQTT connection.
    fn start_connection(&mut self, shared: &Shared, connection: Connection) {
        let Connection {
            options,
            messages,
            commands,
            stop,
        } = connection;
        let settings = ConnectionSettings {
            options,
            topics: shared.topics.clone(),
            origin: shared.origin.clone(),
            outbox: shared.config.mqtt.outbox,
            discovery: shared.discovery.clone(),
            shutdown_timeout: shared.config.device.shutdown_timeout,
            board: shared.board.clone(),
        };
        let stats = shared.stats.clone();
        self.task(CONNECTION, async move {
            run_connection(settings, messages, commands, stats, stop).await;
            Ok(())
        });
    }

    /// The CAM worker and the renderer.
    fn start_heatmap_path(&mut self, shared: &Shared) -> Result<HeatmapPath> {
        // The CAM worker takes a job over a rendezvous channel, so only when it is idle.
        let (jobs, job_rx) = sync_channel::<Job>(0);
        let (render, maps) = sync_channel::<Outcome>(RENDER_QUEUE);
        let weights = Arc::new(Latest::<Weights>::default());
        let worker = HeatmapWorker {
            jobs: job_rx,
            render: render.clone(),
            weights: weights.clone(),
        };
        self.thread("heatmap", move |s| worker.run(s))?;
        let mqtt = &shared.config.mqtt;
        let renderer = Render {
            maps,
            output: Output {
                topics: shared.topics.clone(),
                origin: shared.origin.clone(),
                qos: mqtt.qos.heatmap,
                retain_image: mqtt.retain_heatmap_image,
                image_width: mqtt.heatmap_image_width,
                image_quality: mqtt.heatmap_image_quality,
                caption: shared.config.cam.caption,
                image_interval: mqtt.heatmap_image_interval,
                events: shared.events.clone(),
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
        let (control_tx, control) = sync_channel::<Control>(CONTROL_QUEUE);
        let inference = Inference::new(InferenceParts {
            pipeline: shared.pipeline.clone(),
            frames: self.frames.clone(),
            stats: shared.stats.clone(),
            publish: shared.publish.clone(),
            jobs: heatmaps.jobs,
            weights: heatmaps.weights,
            render: heatmaps.render,
            control,
            topics: shared.topics.clone(),
            origin: shared.origin.clone(),
            qos: shared.config.mqtt.qos.prediction,
            predictions: PredictionGate::new(
                shared.config.mqtt.prediction_policy,
                shared.config.mqtt.prediction_interval,
                shared.config.mqtt.prediction_min_change,
            ),
            events: shared.events.clone(),
            board: shared.board.clone(),
        });
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
            pipeline: shared.pipeline,
            reloads: self.reloads.requests.clone(),
            stats: shared.stats.clone(),
            topics: shared.topics.clone(),
            origin: shared.origin.clone(),
            discovery: shared.discovery,
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

    /// Waits for SIGINT/SIGTERM (or `stop`) or for a stage to end, meeting reload
    /// requests meanwhile; then stops every stage. An error names the stage that ended
    /// the daemon.
    pub async fn run_until_stopped(
        mut self,
        stop: impl Future<Output = ()>,
        reloads: &mut mpsc::Receiver<ReloadRequest>,
    ) -> Result<Exit> {
        tokio::pin!(stop);
        let (failure, exit) = loop {
            tokio::select! {
                _ = &mut stop => break (None, Exit::Stopped),
                ended = self.ended.recv() => {
                    let Some(ended) = ended else { break (None, Exit::Stopped) };
                    let consequence = matches!(ended.end, End::Finished);
                    if let Some(why) = self.on_end(ended) {
                        let why = if consequence { self.cause_of(why).await } else { why };
                        break (Some(why), Exit::Stopped);
                    }
                }
                Some(request) = reloads.recv() => {
                    if let Some(restart) = self.reload(request).await {
                        break (None, restart);
                    }
                }
            }
        };
        match (&failure, &exit) {
            (Some(why), _) => {
                tracing::error!("{why}; stopping (a service manager restarts the daemon)");
                supervise::failing(why);
            }
            (None, Exit::Stopped) => tracing::info!("shutting down"),
            (None, Exit::Restart { .. }) => {}
        }
        self.shut_down().await;
        failure.map_or(Ok(exit), |why| Err(Error::Stage(why)))
    }

    /// Reads the config and the model again and applies what changed; returns how to
    /// restart when the connection's settings changed.
    async fn reload(&mut self, request: ReloadRequest) -> Option<Exit> {
        let (Some(running), Some(reload)) =
            (self.running_config.clone(), self.reloads.reload.clone())
        else {
            let why = ReloadError::NoConfigFile;
            tracing::warn!("{why}");
            self.answer(&request, Some(why.to_string())).await;
            return None;
        };
        tracing::info!("reloading ({request:?})");
        let current = self.pipeline.borrow().clone();
        let embedded = self.reloads.embedded_broker;
        let prepared = tokio::task::spawn_blocking(move || {
            reload::prepare(&running, reload.as_ref(), &current, embedded)
        })
        .await
        .unwrap_or_else(|e| Err(ReloadError::Task(e)));
        let change = match prepared {
            Ok(change) => change,
            Err(e) => {
                let why = with_causes(&e);
                tracing::error!("reload refused: {why}; running on unchanged");
                self.answer(&request, Some(why)).await;
                return None;
            }
        };
        let restart = match change {
            Change::Nothing => {
                tracing::info!("reloaded: nothing changed");
                None
            }
            Change::Swap {
                running,
                pipeline,
                source,
                what,
            } => {
                if let Some(pipeline) = pipeline {
                    self.pipeline.send_replace(Arc::new(*pipeline));
                }
                if let Some(source) = source {
                    // The queue holds one: a second reload within a frame replaces it.
                    let _ = self.sources.try_send((source, running.config.source.fps));
                }
                tracing::info!("reloaded: {} changed", what.join(", "));
                if let Some(board) = &self.board {
                    board.configured(&running.config);
                }
                self.running_config = Some(*running);
                None
            }
            Change::Restart {
                running,
                classifier,
                what,
            } => {
                tracing::info!(
                    "reloaded: {} changed: restarting the stages",
                    what.join(", ")
                );
                Some(Exit::Restart {
                    running,
                    classifier,
                })
            }
        };
        self.answer(&request, None).await;
        restart
    }

    /// Answers a reload command on `cmd/result`.
    async fn answer(&self, request: &ReloadRequest, error: Option<String>) {
        if let ReloadRequest::Command(id) = request {
            let reply = command_result(&self.topics, &self.origin, id.clone(), error);
            let _ = self.publish.send(reply).await;
        }
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
