//! The routes: the page, its JSON API (docs/web.md) and `/metrics`.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, UNIX_EPOCH};

use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
use tokio::sync::{broadcast, Semaphore};

use super::auth::{self, Token};
use super::board::{Board, Bytes};
use super::bundles;
use crate::publish::command::MAX_COMMAND_BYTES;
use crate::publish::Incoming;

/// Live views open at once; more get 503, so that open pages cost a bounded share.
const LIVE_VIEWS: usize = 32;
/// The least time between two updates of one live view.
const LIVE_GAP: Duration = Duration::from_millis(250);
/// A live view hears from the daemon at least this often (stats, the source's health).
const LIVE_TICK: Duration = Duration::from_secs(2);
/// How long a command from the page waits for its result: a full map within the budget
/// takes seconds to minutes on a small board.
const ANSWER_WITHIN: Duration = Duration::from_secs(300);

/// No script or style but the page's own files, no framing, nothing sent elsewhere.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; \
                   connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

/// What the handlers share.
#[derive(Clone)]
pub struct App {
    pub board: Arc<Board>,
    pub metrics: Option<PrometheusHandle>,
    pub token: Option<Arc<Token>>,
    live_views: Arc<Semaphore>,
    next_command: Arc<AtomicU64>,
    /// One bundle (or comparison) is made at a time: each costs full maps.
    pub(super) bundles: Arc<Semaphore>,
    /// The last comparison's bundle, whose files `/api/compare/<file>` serves.
    pub(super) compared: Arc<Mutex<Option<Vec<u8>>>>,
    /// The model file's SHA-256, computed once per file.
    model_sha256: Arc<Mutex<Option<(PathBuf, String)>>>,
}

impl App {
    pub fn new(board: Arc<Board>, metrics: Option<PrometheusHandle>, token: Option<&str>) -> App {
        App {
            board,
            metrics,
            token: token.map(|t| Arc::new(Token::new(t))),
            live_views: Arc::new(Semaphore::new(LIVE_VIEWS)),
            next_command: Arc::default(),
            bundles: Arc::new(Semaphore::new(1)),
            compared: Arc::default(),
            model_sha256: Arc::default(),
        }
    }
}

/// The page, its API and `/metrics`.
pub fn router(app: App) -> Router {
    let guarded = Router::new()
        .route("/api/status", get(status))
        .route("/api/status.js", get(status_script))
        .route("/api/live", get(live))
        .route("/api/overlay.jpg", get(overlay))
        .route("/api/requested/:id", get(requested))
        .route("/api/episodes", get(episodes))
        .route("/api/episodes/:id/snapshot.jpg", get(snapshot))
        .route("/api/device", get(device))
        .route("/api/cmd", post(command))
        .route("/api/bundle", get(bundles::configured).post(bundles::asked))
        .route("/api/compare", post(bundles::compare))
        .route("/api/compare/:file", get(bundles::compared))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(
            app.clone(),
            auth::require_token,
        ));
    Router::new()
        .route("/", get(|| asset("text/html; charset=utf-8", PAGE)))
        .route(
            "/app.js",
            get(|| asset("text/javascript; charset=utf-8", SCRIPT)),
        )
        .route("/app.css", get(|| asset("text/css; charset=utf-8", STYLE)))
        .route("/api/login", post(auth::login))
        .merge(guarded)
        .layer(middleware::from_fn(security_headers))
        .layer(DefaultBodyLimit::max(MAX_COMMAND_BYTES))
        .with_state(app)
}

/// `/metrics` alone, for `[metrics] listen`.
pub fn metrics_router(app: App) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(app)
}

const PAGE: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/app.css");

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

pub(super) fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, Json(json!({ "error": message.to_string() }))).into_response()
}

fn not_running() -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "the daemon's stages are starting",
    )
}

pub(super) fn jpeg(bytes: Bytes) -> Response {
    ([(header::CONTENT_TYPE, "image/jpeg")], bytes.to_vec()).into_response()
}

fn raw(bytes: &Option<Bytes>) -> Option<&RawValue> {
    bytes
        .as_deref()
        .and_then(|b| serde_json::from_slice(b).ok())
}

/// `GET /api/status` and each live-view update (`iscamd.web_status/1`).
#[derive(Serialize)]
struct Status<'a> {
    schema: &'static str,
    /// As on `stats`, now.
    stats: Option<crate::telemetry::Snapshot>,
    /// The last `prediction`.
    prediction: Option<&'a RawValue>,
    /// The `heatmap/info` of the image at `/api/overlay.jpg`.
    heatmap: Option<&'a RawValue>,
    /// The retained `settings`.
    settings: Option<&'a RawValue>,
}

fn status_json(board: &Board) -> String {
    let (prediction, settings) = (board.prediction(), board.settings());
    let heatmap = board.overlay().map(|o| o.info);
    let stats = board.attached().map(|a| a.stats.snapshot(&a.origin));
    let status = Status {
        schema: "iscamd.web_status/1",
        stats,
        prediction: raw(&prediction),
        heatmap: raw(&heatmap),
        settings: raw(&settings),
    };
    serde_json::to_string(&status).expect("status serialises")
}

async fn status(State(app): State<App>) -> Response {
    let body = status_json(&app.board);
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// `GET /api/status.js`: the status as a script the page loads with itself, so that its
/// first view needs no round trip (and is there when the page's `load` fires).
async fn status_script(State(app): State<App>) -> Response {
    let body = format!("window.iscamdStatus = {};\n", status_json(&app.board));
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        body,
    )
        .into_response()
}

/// `GET /api/live`: Server-Sent Events, one `status` event per change the page shows
/// (at most one per [`LIVE_GAP`]) and one per [`LIVE_TICK`] at least. A browser that
/// reads slowly only delays its own stream: the daemon never waits for it.
async fn live(State(app): State<App>) -> Response {
    let Ok(permit) = app.live_views.clone().try_acquire_owned() else {
        let why = format!("{LIVE_VIEWS} live views are open already; close one");
        return error(StatusCode::SERVICE_UNAVAILABLE, why);
    };
    let changes = app.board.changes();
    let start = (app.board.clone(), changes, permit, true);
    let stream =
        futures_util::stream::unfold(start, |(board, mut changes, permit, first)| async move {
            if !first {
                tokio::time::sleep(LIVE_GAP).await;
                tokio::select! {
                    changed = changes.changed() => changed.ok()?,
                    _ = tokio::time::sleep(LIVE_TICK) => {}
                }
            }
            changes.borrow_and_update();
            let event = Event::default().event("status").data(status_json(&board));
            Some((Ok::<_, Infallible>(event), (board, changes, permit, false)))
        });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

async fn overlay(State(app): State<App>) -> Response {
    match app.board.overlay() {
        Some(o) => jpeg(o.jpeg),
        None => error(StatusCode::NOT_FOUND, "no heatmap image yet"),
    }
}

async fn requested(State(app): State<App>, Path(id): Path<String>) -> Response {
    match app.board.requested(&id) {
        Some(o) => jpeg(o.jpeg),
        None => error(
            StatusCode::NOT_FOUND,
            format!("no map for request {id:?} (or no longer kept)"),
        ),
    }
}

/// `GET /api/episodes`: the last ended episodes, newest first, as their `end` events
/// with the address of the snapshot.
async fn episodes(State(app): State<App>) -> Response {
    let episodes: Vec<Value> = app
        .board
        .episodes()
        .into_iter()
        .filter_map(|e| {
            let end: Value = serde_json::from_slice(&e.end).ok()?;
            let snapshot = match (e.snapshot, end.get("id").and_then(Value::as_str)) {
                (Some(_), Some(id)) => Value::String(format!("/api/episodes/{id}/snapshot.jpg")),
                _ => Value::Null,
            };
            Some(json!({ "end": end, "snapshot": snapshot }))
        })
        .collect();
    Json(json!({ "schema": "iscamd.web_episodes/1", "episodes": episodes })).into_response()
}

async fn snapshot(State(app): State<App>, Path(id): Path<String>) -> Response {
    let found = app.board.episodes().into_iter().find(|e| {
        serde_json::from_slice::<Value>(&e.end)
            .ok()
            .is_some_and(|end| end.get("id").and_then(Value::as_str) == Some(&id))
    });
    match found.and_then(|e| e.snapshot) {
        Some(bytes) => jpeg(bytes),
        None => error(
            StatusCode::NOT_FOUND,
            format!("no snapshot of episode {id:?}"),
        ),
    }
}

/// `GET /api/device`: the model, how it runs, and this run of the daemon.
async fn device(State(app): State<App>) -> Response {
    let Some(attached) = app.board.attached() else {
        return not_running();
    };
    let pipeline = attached.pipeline.borrow().clone();
    let classifier = &pipeline.classifier;
    let path = classifier.path().to_path_buf();
    let sha256 = model_sha256(&app, path.clone()).await;
    let p = classifier.preprocess();
    let started = attached
        .origin
        .started
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Json(json!({
        "schema": "iscamd.web_device/1",
        "version": env!("CARGO_PKG_VERSION"),
        "device": attached.origin.device,
        "run": attached.origin.run,
        "started": started.as_secs(),
        "model": {
            "file": path,
            "sha256": sha256,
            "classes": classifier.classes(),
            "backend": classifier.backend(),
            "matrix_kernels": classifier.matrix_kernels().map(|k| k.to_string()),
            "cam_layer": classifier.cam_layer().map(|l| l.to_string()),
            "preprocess": {
                "input_size": p.input_size,
                "resize": p.resize,
                "channel_order": format!("{:?}", p.channel_order).to_uppercase(),
                "mean": p.mean,
                "std": p.std,
                "pixel_max": p.pixel_max,
            },
        },
        "method": pipeline.params.to_string(),
        "config": app.board.config().as_deref(),
    }))
    .into_response()
}

async fn model_sha256(app: &App, path: PathBuf) -> Option<String> {
    let cache = app.model_sha256.clone();
    let known = cache.lock().unwrap_or_else(PoisonError::into_inner).clone();
    if let Some((_, sha)) = known.filter(|(p, _)| *p == path) {
        return Some(sha);
    }
    let hashed = tokio::task::spawn_blocking(move || {
        let sha = crate::file::sha256_hex(&path).ok()?;
        *cache.lock().unwrap_or_else(PoisonError::into_inner) = Some((path, sha.clone()));
        Some(sha)
    });
    hashed.await.ok().flatten()
}

/// `POST /api/cmd`: an MQTT command (docs/mqtt.md, "Commands") from the page, through
/// the same command stage — parsed, rate-limited and budgeted as MQTT's — answered with
/// its `cmd/result` and, for `explain`, the map's `heatmap/info` and image.
async fn command(State(app): State<App>, Json(mut body): Json<Map<String, Value>>) -> Response {
    let Some(attached) = app.board.attached() else {
        return not_running();
    };
    let id = format!(
        "web-{}",
        app.next_command.fetch_add(1, Ordering::Relaxed) + 1
    );
    body.insert("id".into(), Value::String(id.clone()));
    let payload = serde_json::to_vec(&body).expect("a JSON object serialises");
    let mut results = app.board.results();
    attached.stats.command_received();
    if attached
        .commands
        .try_send(Incoming::Command(payload))
        .is_err()
    {
        let why = "busy: commands already wait for the command stage; try again";
        return error(StatusCode::SERVICE_UNAVAILABLE, why);
    }
    let answer = tokio::time::timeout(ANSWER_WITHIN, async {
        loop {
            match results.recv().await {
                Ok(reply) if reply.id.as_deref() == Some(&id) => return Some(reply),
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    let Ok(Some(reply)) = answer.await else {
        let why = format!("no answer to command {id} within {ANSWER_WITHIN:?}");
        return error(StatusCode::GATEWAY_TIMEOUT, why);
    };
    let result: Value = serde_json::from_slice(&reply.payload).unwrap_or(Value::Null);
    let ok = result.get("ok").and_then(Value::as_bool).unwrap_or(false);
    let map = app.board.requested(&id);
    let heatmap = map
        .as_ref()
        .and_then(|m| serde_json::from_slice::<Value>(&m.info).ok());
    let image = map.map(|_| format!("/api/requested/{id}"));
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    let answer = json!({
        "schema": "iscamd.web_command/1",
        "result": result,
        "heatmap": heatmap,
        "image": image,
    });
    (code, Json(answer)).into_response()
}

async fn metrics(State(app): State<App>) -> Response {
    match &app.metrics {
        Some(handle) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            handle.render(),
        )
            .into_response(),
        None => error(StatusCode::NOT_FOUND, "no metrics recorder"),
    }
}
