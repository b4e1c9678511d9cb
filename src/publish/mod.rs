//! Publishing over MQTT (docs/mqtt.md): topics, payloads, commands, Home Assistant
//! discovery, and the connection task that keeps an outbox through broker outages.

pub mod command;
pub mod config;
pub mod discovery;
#[cfg(feature = "embedded-broker")]
pub mod embedded;
mod mqtt;
mod options;
mod outbox;
pub mod payload;
pub mod policy;
mod probe;
mod retire;
mod tls;

pub use mqtt::{announcements, run_connection, ConnectionSettings, Incoming};
pub use options::{client_id, credentials, options};
pub use probe::probe;
pub use retire::remove_discovery;

/// What a message is, for QoS, retention and the outbox policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Availability,
    Prediction,
    Heatmap,
    /// Never kept through an outage: a stale image must not be replayed.
    HeatmapImage,
    Stats,
    /// The schedule and live maps in force (retained), changed by `set`.
    Settings,
    /// An episode's `new`, `update` or `end`, and its snapshot.
    Event,
    CommandResult,
    Discovery,
}

/// One message to publish.
#[derive(Clone, Debug)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    pub kind: Kind,
}

/// The device's topics: `<prefix>/<device>/...`.
#[derive(Clone, Debug)]
pub struct Topics {
    pub base: String,
}

impl Topics {
    pub fn new(prefix: &str, device: &str) -> Self {
        Topics {
            base: format!("{prefix}/{device}"),
        }
    }
    pub fn availability(&self) -> String {
        format!("{}/availability", self.base)
    }
    /// The retained companion of `availability`: which run of the daemon it is.
    pub fn run(&self) -> String {
        format!("{}/run", self.base)
    }
    pub fn prediction(&self) -> String {
        format!("{}/prediction", self.base)
    }
    pub fn heatmap(&self) -> String {
        format!("{}/heatmap", self.base)
    }
    pub fn heatmap_image(&self) -> String {
        format!("{}/heatmap/image", self.base)
    }
    /// The retained image's class, frame and method.
    pub fn heatmap_info(&self) -> String {
        format!("{}/heatmap/info", self.base)
    }
    /// Episodes of a class: `new`, `update`, `end`.
    pub fn event(&self) -> String {
        format!("{}/event", self.base)
    }
    /// The overlay of the last ended episode's peak frame (retained).
    pub fn event_snapshot(&self) -> String {
        format!("{}/event/snapshot", self.base)
    }
    pub fn settings(&self) -> String {
        format!("{}/settings", self.base)
    }
    /// Whether the maps still follow the model (retained), at each measure.
    pub fn health(&self) -> String {
        format!("{}/health", self.base)
    }
    pub fn stats(&self) -> String {
        format!("{}/stats", self.base)
    }
    pub fn command(&self) -> String {
        format!("{}/cmd", self.base)
    }
    pub fn command_result(&self) -> String {
        format!("{}/cmd/result", self.base)
    }
}

/// Waits (up to 5 s) until something holds `addr`. Probes by binding, not connecting,
/// so that the broker sees no half-open connection.
pub fn wait_listening(addr: std::net::SocketAddr) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::net::TcpListener::bind(addr).is_ok() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
