//! `iscamd run`: the topology. One task per concern, joined by bounded channels:
//!
//! ```text
//! capture thread ──latest frame wins──► inference thread ──► prediction ──┐
//!                                          │ trigger (schedule, class      ├─► MQTT connection task
//!                                          ▼ change, command)              │
//!                                       heatmap thread ──► heatmap + image ┘
//! MQTT cmd ──► command task ──► inference thread        stats task ──────────► MQTT
//! ```
//! Shutdown is one watch channel that every task observes.

mod heatmap;
mod latest;
mod supervise;

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::mpsc::{sync_channel, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rumqttc::{MqttOptions, Transport};
use tokio::sync::{mpsc, watch};

use crate::analyse::Analysis;
use crate::cam::CamParams;
use crate::config::{Config, SourceKind};
use crate::error::{Error, Result};
use crate::model::{top_k, Classifier};
use crate::publish::command::{self, Command, Limits};
use crate::publish::payload::{self, CommandResult, PredictionLatency};
use crate::publish::{
    self as publish_mod, announcements, ConnectionSettings, Incoming, Kind, Message, Topics,
};
use crate::source::{Frame, FrameSource, ImageFiles, Pacer, Pattern};
use crate::stats::Stats;
use heatmap::{Job, Live, Outcome, RequestId, Weights};
use latest::Latest;

/// What the command task asks of the inference thread.
enum Control {
    Explain {
        params: CamParams,
        class: Option<usize>,
        id: RequestId,
    },
    SetInterval(Duration),
}

/// Builds the frame source the config describes.
pub fn open_source(config: &Config) -> Result<Box<dyn FrameSource>> {
    let s = &config.source;
    Ok(match s.kind {
        SourceKind::Images => {
            let path = s
                .path
                .clone()
                .ok_or_else(|| Error::invalid("source.path", "required for kind = \"images\""))?;
            Box::new(ImageFiles::open(path, s.loop_)?)
        }
        SourceKind::Pattern => Box::new(Pattern::new(s.width, s.height)),
        #[cfg(all(feature = "camera", target_os = "linux"))]
        SourceKind::Camera => Box::new(crate::source::CameraSource::new(
            Box::new(crate::source::camera::V4lDevice::new(&s.device.to_string())),
            crate::source::camera::Request {
                format: s.format,
                width: s.width,
                height: s.height,
                fps: s.fps,
            },
        )),
        #[cfg(not(all(feature = "camera", target_os = "linux")))]
        SourceKind::Camera => {
            return Err(Error::invalid(
                "source.kind",
                "\"camera\" needs a Linux build with the `camera` feature",
            ))
        }
    })
}

/// The MQTT client options the config describes (credentials and certificates read now).
pub fn mqtt_options(config: &Config, device: &str, host: &str) -> Result<MqttOptions> {
    let m = &config.mqtt;
    let port = m.port.unwrap_or(if m.ca.is_some() { 8883 } else { 1883 });
    let client_id = m
        .client_id
        .clone()
        .unwrap_or_else(|| format!("iscamd-{device}"));
    let mut options = MqttOptions::new(client_id, host, port);
    options.set_keep_alive(m.keep_alive);
    options.set_max_packet_size(m.max_packet_size, m.max_packet_size);
    options.set_clean_session(true);
    let topics = Topics::new(&m.prefix, device);
    options.set_last_will(rumqttc::LastWill::new(
        topics.availability(),
        "offline",
        rumqttc::QoS::AtLeastOnce,
        true,
    ));
    if let Some(user) = &m.username {
        let password = match &m.password_file {
            Some(p) => {
                warn_if_world_readable(p);
                std::fs::read_to_string(p)
                    .map_err(|e| Error::input(p, format!("cannot read mqtt.password_file: {e}")))?
                    .trim_end_matches(['\n', '\r'])
                    .to_string()
            }
            None => String::new(),
        };
        options.set_credentials(user, password);
    }
    if let Some(ca) = &m.ca {
        let read = |p: &std::path::PathBuf, key: &str| {
            std::fs::read(p).map_err(|e| Error::input(p, format!("cannot read mqtt.{key}: {e}")))
        };
        let ca = read(ca, "ca")?;
        let client_auth = match (&m.cert, &m.key) {
            (Some(c), Some(k)) => Some((read(c, "cert")?, read(k, "key")?)),
            _ => None,
        };
        let _ = rustls::crypto::ring::default_provider().install_default();
        options.set_transport(Transport::tls(ca, client_auth, None));
    }
    Ok(options)
}

fn warn_if_world_readable(path: &std::path::Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o004 != 0 {
                tracing::warn!(
                    "{} is readable by every user: chmod 600 it (it holds the MQTT password)",
                    path.display()
                );
            }
        }
    }
}

/// A `cmd/result` message.
fn command_result(
    topics: &Topics,
    id: Option<String>,
    result: std::result::Result<(), String>,
) -> Message {
    let (ok, error) = match result {
        Ok(()) => (true, None),
        Err(e) => (false, Some(e)),
    };
    let payload = serde_json::to_vec(&CommandResult { id, ok, error }).expect("result serialises");
    Message {
        topic: topics.command_result(),
        payload,
        qos: 1,
        retain: false,
        kind: Kind::CommandResult,
    }
}

/// Runs the daemon until SIGINT/SIGTERM (or until `stop` turns true, for embedding).
pub fn run(
    config: Config,
    classifier: Classifier,
    stop: Option<watch::Receiver<bool>>,
) -> Result<()> {
    let device = config.device_id();
    let mut config = config;
    let host = match config.mqtt.host.clone() {
        Some(h) => h,
        None => start_embedded_broker(&mut config)?,
    };
    let options = mqtt_options(&config, &device, &host)?;
    let source = open_source(&config)?;
    let params = config.cam.params()?;
    let layer = classifier.cam_layer().cloned().ok_or_else(|| {
        Error::model(
            classifier.path(),
            "has no CAM layer (set [model] cam_layer)",
        )
    })?;
    params.validate(layer.channels, classifier.input_size())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .thread_name("iscamd-io")
        .build()
        .map_err(|e| Error::invalid("runtime", e))?;
    let result = runtime.block_on(run_async(
        config,
        Arc::new(classifier),
        source,
        options,
        device,
        params,
        stop,
    ));
    // Dropping the runtime would wait for a heatmap abandoned at shutdown (minutes for a
    // full IS-CAM): shutdown is bounded by `shutdown_timeout`, not by the heatmap.
    runtime.shutdown_background();
    result
}

async fn run_async(
    config: Config,
    classifier: Arc<Classifier>,
    mut source: Box<dyn FrameSource>,
    options: MqttOptions,
    device: String,
    params: CamParams,
    stop: Option<watch::Receiver<bool>>,
) -> Result<()> {
    let stats = Arc::new(Stats::default());
    let topics = Topics::new(&config.mqtt.prefix, &device);
    let discovery_prefix = config
        .homeassistant
        .discovery
        .then(|| config.homeassistant.prefix.clone());
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (publish_tx, publish_rx) = mpsc::channel::<Message>(256);
    let (incoming_tx, mut incoming_rx) = mpsc::channel::<Incoming>(16);
    let stopping = Arc::new(AtomicBool::new(false));
    tracing::info!(
        "iscamd {} starting: device {device}, source {}, model {} on {}",
        env!("CARGO_PKG_VERSION"),
        source.describe(),
        classifier.path().display(),
        classifier.backend()
    );

    let connection = tokio::spawn(publish_mod::run_connection(
        ConnectionSettings {
            options,
            topics: topics.clone(),
            device: device.clone(),
            outbox: config.mqtt.outbox,
            discovery_prefix: discovery_prefix.clone(),
            shutdown_timeout: config.device.shutdown_timeout,
        },
        publish_rx,
        incoming_tx,
        stats.clone(),
        shutdown_rx.clone(),
    ));

    // Capture thread → latest-frame slot.
    let frames: Arc<Latest<Frame>> = Arc::new(Latest::default());
    let capture = {
        let (frames, stats, stopping) = (frames.clone(), stats.clone(), stopping.clone());
        let fps = config.source.fps;
        std::thread::Builder::new()
            .name("iscamd-capture".into())
            .spawn(move || {
                // A camera streams at its own rate: read every frame (the latest wins
                // below) rather than pace, which would hand out stale buffered frames.
                let paced_by_device = source.paced_by_device();
                let mut pacer = Pacer::new(fps);
                let mut number = 0u64;
                while !stopping.load(Relaxed) {
                    if !paced_by_device {
                        pacer.wait();
                    }
                    let next = {
                        let _step = stats.capture_stage.step();
                        source.next_frame()
                    };
                    if let Some(health) = source.camera_health() {
                        *stats.camera.lock().expect("stats poisoned") = Some(health);
                    }
                    match next {
                        Ok(Some(image)) => {
                            number += 1;
                            stats.frames_captured.fetch_add(1, Relaxed);
                            if frames.put(Frame {
                                number,
                                image,
                                captured: SystemTime::now(),
                            }) {
                                stats.frames_dropped.fetch_add(1, Relaxed);
                            }
                        }
                        Ok(None) => {
                            tracing::info!("the source has no more frames");
                            break;
                        }
                        // Down and retrying with backoff; the source logged why.
                        Err(Error::SourceUnavailable(_)) => {}
                        Err(e) => {
                            stats.frame_errors.fetch_add(1, Relaxed);
                            tracing::warn!("frame source: {e}");
                            if !paced_by_device {
                                std::thread::sleep(Duration::from_secs(1));
                            }
                        }
                    }
                }
            })
            .map_err(|e| Error::invalid("thread", e))?
    };

    // Heatmaps: the CAM worker takes a job over a rendezvous channel, so only when it is
    // idle; the renderer takes full maps and live maps from a small queue.
    let (job_tx, job_rx) = sync_channel::<Job>(0);
    let (render_tx, render_rx) = sync_channel::<Outcome>(2);
    let weights = Arc::new(Latest::<Weights>::default());
    let heatmap_threads = config_threads(&config).saturating_sub(1).max(1);
    let cam_worker = {
        let (classifier, render_tx, weights) =
            (classifier.clone(), render_tx.clone(), weights.clone());
        std::thread::Builder::new()
            .name("iscamd-cam".into())
            .spawn(move || {
                heatmap::compute(classifier, job_rx, render_tx, weights, heatmap_threads)
            })
            .map_err(|e| Error::invalid("thread", e))?
    };
    let renderer = {
        let (classifier, tx, stats) = (classifier.clone(), publish_tx.clone(), stats.clone());
        let output = heatmap::Output {
            topics: topics.clone(),
            device: device.clone(),
            qos: config.mqtt.qos.heatmap,
            retain_image: config.mqtt.retain_heatmap_image,
            image_width: config.mqtt.heatmap_image_width,
            image_quality: config.mqtt.heatmap_image_quality,
        };
        std::thread::Builder::new()
            .name("iscamd-render".into())
            .spawn(move || heatmap::render(classifier, render_rx, output, tx, stats))
            .map_err(|e| Error::invalid("thread", e))?
    };

    // Inference thread.
    let (control_tx, control_rx) = std::sync::mpsc::channel::<Control>();
    let inference = {
        let worker = InferenceWorker {
            classifier: classifier.clone(),
            frames: frames.clone(),
            stopping: stopping.clone(),
            stats: stats.clone(),
            tx: publish_tx.clone(),
            jobs: job_tx,
            live: config
                .cam
                .live
                .then(|| Live::new(config.cam.live_policy(), weights, render_tx)),
            control: control_rx,
            topics: topics.clone(),
            device: device.clone(),
            qos: config.mqtt.qos.prediction,
            params: params.clone(),
            interval: config.cam.interval,
            on_class_change: config.cam.on_class_change,
            min_confidence: config.cam.min_confidence,
            hang_after: std::env::var(HANG_HOOK).ok().and_then(|v| v.parse().ok()),
        };
        std::thread::Builder::new()
            .name("iscamd-inference".into())
            .spawn(move || worker.run())
            .map_err(|e| Error::invalid("thread", e))?
    };

    // Commands.
    let commands = {
        let (tx, topics, stats, device, classifier) = (
            publish_tx.clone(),
            topics.clone(),
            stats.clone(),
            device.clone(),
            classifier.clone(),
        );
        let rate = config.mqtt.commands_per_second;
        let discovery_prefix = discovery_prefix.clone();
        tokio::spawn(async move {
            let mut bucket = TokenBucket::new(rate);
            let layer_channels = classifier.cam_layer().map_or(0, |l| l.channels);
            while let Some(Incoming::Command(payload)) = incoming_rx.recv().await {
                let limits = Limits {
                    defaults: &params,
                    layer_channels,
                    classes: classifier.classes(),
                    input_size: classifier.input_size(),
                };
                let (id, parsed) = command::parse(&payload, &limits);
                let parsed = if bucket.take() {
                    parsed
                } else {
                    Err(format!(
                        "rate limited: at most {rate} command(s) per second"
                    ))
                };
                let reply = match parsed {
                    Err(e) => {
                        stats.commands_rejected.fetch_add(1, Relaxed);
                        tracing::warn!("command refused: {e}");
                        Some(Err(e))
                    }
                    Ok(Command::Explain { params, class }) => {
                        let _ = control_tx.send(Control::Explain {
                            params,
                            class,
                            id: RequestId(id.clone()),
                        });
                        None // answered when the heatmap is published
                    }
                    Ok(Command::Set { interval }) => {
                        let _ = control_tx.send(Control::SetInterval(interval));
                        Some(Ok(()))
                    }
                    Ok(Command::Republish) => {
                        for m in announcements(&topics, &device, discovery_prefix.as_deref()) {
                            let _ = tx.send(m).await;
                        }
                        Some(Ok(()))
                    }
                };
                if let Some(result) = reply {
                    let _ = tx.send(command_result(&topics, id, result)).await;
                }
            }
        })
    };

    // Stats.
    let stats_task = {
        let (tx, topics, stats, device) = (
            publish_tx.clone(),
            topics.clone(),
            stats.clone(),
            device.clone(),
        );
        let every = config.mqtt.stats_interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
            tick.tick().await;
            loop {
                tick.tick().await;
                let payload =
                    serde_json::to_vec(&stats.snapshot(&device)).expect("stats serialise");
                if tx
                    .send(Message {
                        topic: topics.stats(),
                        payload,
                        qos: 0,
                        retain: true,
                        kind: Kind::Stats,
                    })
                    .await
                    .is_err()
                {
                    break;
                }
            }
        })
    };
    drop(publish_tx);
    let supervisor = tokio::spawn(supervise::run(stats.clone(), shutdown_rx.clone()));

    wait_for_shutdown(stop).await;
    tracing::info!("shutting down");
    supervisor.abort();
    supervise::stopping();
    stopping.store(true, Relaxed);
    frames.wake();
    let grace = config.device.shutdown_timeout;
    let threads_done = tokio::task::spawn_blocking(move || {
        let _ = capture.join();
        let _ = inference.join();
        let _ = cam_worker.join();
        let _ = renderer.join();
    });
    if tokio::time::timeout(grace, threads_done).await.is_err() {
        tracing::warn!("the heatmap in flight did not finish within {grace:?}: abandoned");
    }
    stats_task.abort();
    commands.abort();
    let _ = shutdown_tx.send(true);
    let _ = tokio::time::timeout(grace + Duration::from_secs(3), connection).await;
    Ok(())
}

/// Starts the in-process broker (no `[mqtt] host` configured); returns the host to use.
#[cfg(feature = "embedded-broker")]
fn start_embedded_broker(config: &mut Config) -> Result<String> {
    let port = config.mqtt.port.unwrap_or(1883);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    crate::publish::embedded::start(addr, config.mqtt.max_packet_size)?;
    config.mqtt.port = Some(port);
    Ok("127.0.0.1".into())
}

#[cfg(not(feature = "embedded-broker"))]
fn start_embedded_broker(_config: &mut Config) -> Result<String> {
    Err(Error::invalid(
        "mqtt.host",
        "no broker configured: set [mqtt] host (this build has no embedded broker)",
    ))
}

fn config_threads(config: &Config) -> usize {
    match config.model.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

async fn wait_for_shutdown(stop: Option<watch::Receiver<bool>>) {
    let external = async move {
        match stop {
            Some(mut rx) => {
                while !*rx.borrow() {
                    if rx.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
            }
            None => std::future::pending::<()>().await,
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
        _ = external => {}
    }
}

/// Commands allowed per second, with a burst of one second's worth.
struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(rate: f64) -> Self {
        TokenBucket {
            rate,
            tokens: rate.max(1.0),
            last: Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate)
            .min(self.rate.max(1.0));
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

struct InferenceWorker {
    classifier: Arc<Classifier>,
    frames: Arc<Latest<Frame>>,
    stopping: Arc<AtomicBool>,
    stats: Arc<Stats>,
    tx: mpsc::Sender<Message>,
    jobs: SyncSender<Job>,
    /// Live maps between full maps (`[cam] live`).
    live: Option<Live>,
    control: std::sync::mpsc::Receiver<Control>,
    topics: Topics,
    device: String,
    qos: u8,
    params: CamParams,
    interval: Duration,
    on_class_change: bool,
    min_confidence: f64,
    /// Test hook ([`HANG_HOOK`]): hang after this many frames.
    hang_after: Option<u64>,
}

/// Environment variable that makes the inference thread hang after N frames, so tests can
/// check that the systemd watchdog stops being fed. Not for production use.
pub const HANG_HOOK: &str = "ISCAMD_TEST_HANG_INFERENCE_AFTER";

impl InferenceWorker {
    fn run(mut self) {
        let model_name = self
            .classifier
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut seq = 0u64;
        let mut last_class: Option<usize> = None;
        let mut last_heatmap: Option<Instant> = None;
        let mut requests: std::collections::VecDeque<(CamParams, Option<usize>, RequestId)> =
            Default::default();
        while !self.stopping.load(Relaxed) {
            loop {
                match self.control.try_recv() {
                    Ok(Control::Explain { params, class, id }) => {
                        requests.push_back((params, class, id))
                    }
                    Ok(Control::SetInterval(d)) => {
                        tracing::info!("heatmap interval set to {d:?} by command");
                        self.interval = d;
                    }
                    Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => break,
                }
            }
            let Some(frame) = self.frames.take(Duration::from_millis(200)) else {
                continue;
            };
            let _step = self.stats.inference_stage.step();
            if self
                .hang_after
                .is_some_and(|n| self.stats.frames_processed.load(Relaxed) >= n)
            {
                tracing::warn!("{HANG_HOOK}: hanging the inference thread");
                while !self.stopping.load(Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                break;
            }
            let analysis = match Analysis::of_frame(&self.classifier, frame.image) {
                Ok(a) => Arc::new(a),
                Err(e) => {
                    self.stats.frame_errors.fetch_add(1, Relaxed);
                    tracing::warn!("frame {}: {e}", frame.number);
                    continue;
                }
            };
            self.stats.frames_processed.fetch_add(1, Relaxed);
            self.stats.add_inference(analysis.latency.inference);
            seq += 1;
            let top = analysis.top(&self.classifier, 5);
            let prediction = payload::Prediction {
                header: payload::Header::new(
                    "iscamd.prediction/1",
                    &self.device,
                    seq,
                    frame.number,
                    frame.captured,
                ),
                model: &model_name,
                top,
                latency_ms: PredictionLatency {
                    preprocess: analysis.latency.preprocess,
                    inference: analysis.latency.inference,
                },
            };
            let json = serde_json::to_vec(&prediction).expect("prediction serialises");
            if self
                .tx
                .blocking_send(Message {
                    topic: self.topics.prediction(),
                    payload: json,
                    qos: self.qos,
                    retain: false,
                    kind: Kind::Prediction,
                })
                .is_err()
            {
                break;
            }
            self.stats.predictions.fetch_add(1, Relaxed);

            let top1 = top_k(&analysis.probabilities, 1)[0];
            let confident = analysis.probabilities[top1] >= self.min_confidence;
            let changed =
                self.on_class_change && confident && last_class.is_some_and(|c| c != top1);
            last_class = Some(top1);
            let due = !self.interval.is_zero()
                && last_heatmap.is_none_or(|t| t.elapsed() >= self.interval);
            let job = if let Some((params, class, id)) = requests.pop_front() {
                Some(Job {
                    analysis,
                    frame: frame.number,
                    captured: frame.captured,
                    params,
                    class,
                    request_id: Some(id),
                    reference: false,
                })
            } else {
                let refresh = match &mut self.live {
                    Some(live) if !due && !changed => {
                        match live.publish(
                            &analysis,
                            (frame.number, frame.captured),
                            top1,
                            &self.stats,
                        ) {
                            Ok(()) => false,
                            Err(why) => {
                                tracing::debug!("frame {}: full map needed: {why}", frame.number);
                                true
                            }
                        }
                    }
                    _ => false,
                };
                (due || changed || refresh).then(|| Job {
                    analysis,
                    frame: frame.number,
                    captured: frame.captured,
                    params: self.params.clone(),
                    class: None,
                    request_id: None,
                    reference: true,
                })
            };
            if let Some(job) = job {
                match self.jobs.try_send(job) {
                    Ok(()) => last_heatmap = Some(Instant::now()),
                    Err(TrySendError::Full(job)) => {
                        // Busy: a requested map waits for the next frame; a scheduled one is skipped.
                        if let Some(id) = job.request_id {
                            requests.push_front((job.params, job.class, id));
                        }
                    }
                    Err(TrySendError::Disconnected(_)) => break,
                }
            }
        }
    }
}
