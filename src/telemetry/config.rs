//! `[metrics]`: the Prometheus endpoint.

use serde::Deserialize;

/// `[metrics]`: the Prometheus endpoint.
#[derive(Clone, PartialEq, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Where `/metrics` is served, e.g. `127.0.0.1:9810`; unset = no endpoint.
    pub listen: Option<std::net::SocketAddr>,
}
