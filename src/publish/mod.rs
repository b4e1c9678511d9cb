//! Publishing over MQTT (DESIGN.md §6): topics, payloads, commands, Home Assistant
//! discovery, and the connection task that keeps an outbox through broker outages.

pub mod command;
pub mod discovery;
mod mqtt;
pub mod payload;

pub use mqtt::{announcements, run_connection, ConnectionSettings, Incoming};

/// What a message is, for QoS, retention and the outbox policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Availability,
    Prediction,
    Heatmap,
    /// Never kept through an outage: a stale image must not be replayed.
    HeatmapImage,
    Stats,
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
    pub fn prediction(&self) -> String {
        format!("{}/prediction", self.base)
    }
    pub fn heatmap(&self) -> String {
        format!("{}/heatmap", self.base)
    }
    pub fn heatmap_image(&self) -> String {
        format!("{}/heatmap/image", self.base)
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
