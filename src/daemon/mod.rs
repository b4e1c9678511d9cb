//! `iscamd run`: the daemon, as stages joined by bounded channels (see `topology.rs`):
//!
//! ```text
//! capture ──latest frame wins──► inference ──► prediction, event ──────────┐
//!                                   │ scheduler: schedule, class change,   ├─► mqtt (connection)
//!                                   ▼ live maps, commands, episode ends    │
//!                                heatmap ──► render ──► heatmap + image, ───┘
//!                                                       episode end + snapshot
//! mqtt cmd ──► commands ──► inference        stats ─────────────────────────► mqtt
//!                                            supervise ──► systemd (sd_notify)
//! ```
//! Every stage runs until one `shutdown::Shutdown` fires; a stage that ends before
//! that (an error or a panic) ends the daemon with an error naming it, so that a service
//! manager restarts it.

mod capture;
mod commands;
mod heatmap;
mod inference;
mod latest;
pub(crate) mod pipeline;
mod reload;
mod render;
mod scheduler;
pub(crate) mod shutdown;
mod supervise;
mod topology;

use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::model::Classifier;
use crate::publish::payload::{CommandResult, Origin};
use crate::publish::{self, Kind, Message, Topics};
pub use capture::open_source;
use pipeline::Pipeline;
pub use reload::{Cause, Reload, ReloadError};
use reload::{ModelFile, ReloadRequest, Running, RELOAD_QUEUE};
use topology::{Exit, Parts, Reloads, Topology};

/// A `cmd/result` message: done, or the error why not.
fn command_result(
    topics: &Topics,
    origin: &Origin,
    id: Option<String>,
    error: Option<String>,
) -> Message {
    let ok = error.is_none();
    let payload = serde_json::to_vec(&CommandResult {
        schema: "iscamd.command_result/1",
        run: &origin.run,
        id,
        ok,
        error,
    })
    .expect("result serialises");
    Message {
        topic: topics.command_result(),
        payload,
        qos: 1,
        retain: false,
        kind: Kind::CommandResult,
    }
}

/// Runs the daemon until SIGINT/SIGTERM (or until `stop` turns true, for embedding).
/// With `reload`, SIGHUP and the reload command read the config and the model again.
pub fn run(
    config: Config,
    classifier: Classifier,
    reload: Option<Arc<dyn Reload>>,
    stop: Option<watch::Receiver<bool>>,
) -> Result<()> {
    let running = reload.as_ref().map(|_| Running {
        config: config.clone(),
        model: ModelFile::of(classifier.path()),
    });
    let mut config = config;
    let device = config.device_id();
    let broker = match config.mqtt.host.clone() {
        Some(h) => (h, None),
        None => start_embedded_broker(&mut config, &device)?,
    };
    let embedded_port = config
        .mqtt
        .host
        .is_none()
        .then_some(config.mqtt.port)
        .flatten();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .thread_name(format!("{}io", shutdown::STAGE_THREAD_PREFIX))
        .build()
        .map_err(|e| Error::Stage(format!("cannot start the I/O runtime: {e}")))?;
    let mut signals = runtime.block_on(async { StopSignals::listen() });
    let board = runtime.block_on(serve_endpoints(&config))?;
    let (requests, mut reload_requests) = mpsc::channel(RELOAD_QUEUE);
    let reloads = Reloads {
        requests,
        reload,
        embedded_broker: embedded_port.is_some(),
    };
    let mut next = (config, Arc::new(classifier), running);
    let result = runtime.block_on(async move {
        #[cfg(unix)]
        handle_other_signals(reloads.requests.clone());
        loop {
            let (config, classifier, running) = next;
            let mut parts = parts(config, classifier, running, &broker, reloads.clone())?;
            parts.board = board.clone();
            let topology = Topology::start(parts)?;
            let stopped = wait_for_shutdown(stop.clone(), &mut signals);
            match topology
                .run_until_stopped(stopped, &mut reload_requests)
                .await?
            {
                Exit::Stopped => return Ok(()),
                Exit::Restart {
                    running,
                    classifier,
                } => {
                    let mut config = running.config.clone();
                    if embedded_port.is_some() {
                        config.mqtt.port = embedded_port;
                    }
                    next = (config, classifier, Some(*running));
                }
            }
        }
    });
    // Dropping the runtime would wait for a heatmap abandoned at shutdown (minutes for a
    // full IS-CAM): shutdown is bounded by `shutdown_timeout`, not by the heatmap.
    runtime.shutdown_background();
    result
}

/// What a topology starts from: the connection's options, the source, the pipeline.
fn parts(
    config: Config,
    classifier: Arc<Classifier>,
    running: Option<Running>,
    (host, daemon_login): &Broker,
    reloads: Reloads,
) -> Result<Parts> {
    let device = config.device_id();
    if config.homeassistant.discovery {
        publish::discovery::warn_if_renamed(&device);
    }
    let mut options = publish::options(&config.mqtt, &device, host)?;
    if let Some((user, password)) = daemon_login {
        options.set_credentials(user.clone(), password.clone());
    }
    let source = open_source(&config.source)?;
    let pipeline = Pipeline::new(&config, classifier)?;
    let origin = Origin::new(device);
    tracing::info!(
        "iscamd {} starting: device {}, run {}, source {}, model {} on {}",
        env!("CARGO_PKG_VERSION"),
        origin.device,
        origin.run,
        source.describe(),
        pipeline.classifier.path().display(),
        pipeline.classifier.backend()
    );
    crate::telemetry::prometheus::model_info(
        &pipeline.model_name(),
        &config.model.backend.to_string(),
    );
    Ok(Parts {
        config,
        pipeline,
        source,
        options,
        origin,
        running,
        reloads,
        board: None,
    })
}

/// Starts the page (`[web] listen`) and `/metrics` (`[metrics] listen`, and on the
/// page's server): set up once, they serve across restarts of the stages. Returns what
/// the stages show the page.
async fn serve_endpoints(config: &Config) -> Result<Option<Arc<crate::web::Board>>> {
    let (web, metrics) = (&config.web, config.metrics.listen);
    if web.listen.is_none() && metrics.is_none() {
        return Ok(None);
    }
    let recorder = crate::telemetry::prometheus::install()?;
    if let Some(listen) = metrics {
        let bound = crate::web::start_metrics(listen, recorder.clone()).await?;
        tracing::info!("Prometheus metrics on http://{bound}/metrics");
    }
    if web.listen.is_none() {
        return Ok(None);
    }
    let board = Arc::new(crate::web::Board::default());
    let bound = crate::web::start(web, board.clone(), Some(recorder)).await?;
    tracing::info!("the page on http://{bound}/ (and /metrics)");
    Ok(Some(board))
}

/// The host to connect to and the login the daemon's own client needs there.
type Broker = (String, Option<(String, String)>);

/// Starts the in-process broker (no `[mqtt] host` configured).
#[cfg(feature = "embedded-broker")]
fn start_embedded_broker(config: &mut Config, device: &str) -> Result<Broker> {
    let port = config.mqtt.port.unwrap_or(1883);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let access =
        publish::credentials(&config.mqtt)?.map(|(username, password)| publish::embedded::Access {
            username,
            password,
            daemon_client_id: publish::client_id(&config.mqtt, device),
        });
    let daemon_login = publish::embedded::start(addr, config.mqtt.max_packet_size, access)?;
    config.mqtt.port = Some(port);
    Ok(("127.0.0.1".into(), daemon_login))
}

#[cfg(not(feature = "embedded-broker"))]
fn start_embedded_broker(_config: &mut Config, _device: &str) -> Result<Broker> {
    Err(Error::invalid(
        "mqtt.host",
        "no broker configured: set [mqtt] host (this build has no embedded broker)",
    ))
}

/// SIGHUP reloads (its default would end the process, which systemd counts as a clean
/// exit). SIGUSR1 and SIGUSR2 would end it too, silently: each is logged and otherwise
/// ignored. SIGPIPE is ignored by Rust's runtime.
#[cfg(unix)]
fn handle_other_signals(reloads: mpsc::Sender<ReloadRequest>) {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::hangup()) {
        Ok(mut received) => {
            tokio::spawn(async move {
                while received.recv().await.is_some() {
                    if reloads.try_send(ReloadRequest::Signal).is_err() {
                        tracing::warn!("SIGHUP received: a reload is already under way");
                    }
                }
            });
        }
        Err(e) => tracing::warn!("cannot handle SIGHUP: {e}"),
    }
    for (kind, name) in [
        (SignalKind::user_defined1(), "SIGUSR1"),
        (SignalKind::user_defined2(), "SIGUSR2"),
    ] {
        match signal(kind) {
            Ok(mut received) => {
                tokio::spawn(async move {
                    while received.recv().await.is_some() {
                        tracing::warn!("{name} received and ignored: iscamd gives it no meaning");
                    }
                });
            }
            Err(e) => tracing::warn!("cannot handle {name}: {e}"),
        }
    }
}

/// SIGINT and SIGTERM, listened to from before the first stage starts: one that arrives
/// while the stages start (tokio registers a handler when it is first asked, and the
/// default action ends the process) still shuts the daemon down cleanly.
struct StopSignals {
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    /// Must run inside the runtime.
    fn listen() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let listen = |kind: SignalKind, name: &str| {
                signal(kind)
                    .map_err(|e| tracing::warn!("cannot handle {name}: {e}"))
                    .ok()
            };
            StopSignals {
                interrupt: listen(SignalKind::interrupt(), "SIGINT"),
                terminate: listen(SignalKind::terminate(), "SIGTERM"),
            }
        }
        #[cfg(not(unix))]
        StopSignals {}
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        {
            async fn one(signal: &mut Option<tokio::signal::unix::Signal>) {
                match signal {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            }
            tokio::select! {
                _ = one(&mut self.interrupt) => {}
                _ = one(&mut self.terminate) => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn wait_for_shutdown(stop: Option<watch::Receiver<bool>>, signals: &mut StopSignals) {
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
    tokio::select! {
        _ = signals.recv() => {}
        _ = external => {}
    }
}
