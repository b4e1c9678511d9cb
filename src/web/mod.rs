//! The page on the board (`[web] listen`, docs/web.md): what the camera sees, what the
//! model says and why, served with a small JSON API and `/metrics` by one HTTP server.
//!
//! The server only reads the [`Board`], which the stages fill without waiting, and sends
//! commands through the command stage as MQTT's: no browser can stall a stage. Bounded:
//! connections (`MAX_CONNECTIONS`), live views, request bodies and header reading time.

mod auth;
pub mod board;
mod bundles;
pub mod config;
mod server;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

pub use board::Board;
pub use config::WebConfig;
pub use server::App;

use crate::error::{Error, Result};

/// Connections served at once; more are closed as they come.
const MAX_CONNECTIONS: usize = 256;
/// A client that has not sent its request's headers by then is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds `listen` (named `key` in errors) and serves the page, its API and `/metrics`.
pub async fn start(
    config: &WebConfig,
    board: Arc<Board>,
    metrics: Option<PrometheusHandle>,
) -> Result<SocketAddr> {
    let Some(listen) = config.listen else {
        return Err(Error::invalid("web.listen", "not set"));
    };
    let app = App::new(board, metrics, config.token.as_deref());
    start_router("web.listen", listen, server::router(app)).await
}

/// Serves `/metrics` alone on `listen` (`[metrics] listen`).
pub async fn start_metrics(listen: SocketAddr, metrics: PrometheusHandle) -> Result<SocketAddr> {
    let app = App::new(Arc::default(), Some(metrics), None);
    start_router("metrics.listen", listen, server::metrics_router(app)).await
}

async fn start_router(key: &'static str, listen: SocketAddr, router: Router) -> Result<SocketAddr> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| Error::invalid(key, format!("cannot listen on {listen}: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::invalid(key, format!("{listen}: {e}")))?;
    tokio::spawn(serve(listener, router));
    Ok(bound)
}

/// Accepts connections for ever, each served on its own task.
async fn serve(listener: TcpListener, router: Router) {
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: wait rather than spin.
                tracing::warn!("web: cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            continue;
        };
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = connection.await {
                tracing::debug!("web: connection ended: {e}");
            }
        });
    }
}
