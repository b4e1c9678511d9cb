//! `[mqtt]` and `[homeassistant]`: the broker, the topics and what is published on them.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::policy::PredictionPolicy;
use crate::cam::config::MIN_INTERVAL;
use crate::error::{Error, Result};

/// `[homeassistant] format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One config for the device on `<prefix>/device/<node>/config` (Home Assistant 2024.12
    /// and later).
    #[default]
    Device,
    /// One config per entity on `<prefix>/<component>/<node>/<object>/config`.
    Entity,
}

#[derive(Clone, PartialEq, Copy, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QosConfig {
    pub prediction: u8,
    pub heatmap: u8,
}

#[derive(Clone, PartialEq, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// Broker host; unset = no broker configured.
    pub host: Option<String>,
    /// Default 1883, or 8883 with TLS.
    pub port: Option<u16>,
    /// Default `iscamd-<device id>`.
    pub client_id: Option<String>,
    pub username: Option<String>,
    /// File holding the password (keeps secrets out of the config).
    pub password_file: Option<PathBuf>,
    /// CA certificate (PEM): setting it turns TLS on.
    pub ca: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub prefix: String,
    #[serde(with = "humantime_serde")]
    pub keep_alive: Duration,
    /// Largest MQTT packet, in bytes, both ways.
    pub max_packet_size: usize,
    /// QoS ≥ 1 messages kept while the broker is unreachable (oldest dropped first).
    pub outbox: usize,
    /// Which predictions are published: `every`, `on_change` or `interval`.
    pub prediction_policy: PredictionPolicy,
    /// `interval`: the period; `on_change`: the longest time without a prediction.
    #[serde(with = "humantime_serde")]
    pub prediction_interval: Duration,
    /// `on_change`: how far the top-1 score must move to count as a change.
    pub prediction_min_change: f64,
    pub retain_heatmap_image: bool,
    pub heatmap_image_width: u32,
    pub heatmap_image_quality: u8,
    /// Images of maps that cost no passes (live maps, `cam`) at most this often.
    #[serde(with = "humantime_serde")]
    pub heatmap_image_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub stats_interval: Duration,
    /// Commands accepted per second on `<prefix>/<device>/cmd`; more are refused.
    pub commands_per_second: f64,
    pub qos: QosConfig,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            host: None,
            port: None,
            client_id: None,
            username: None,
            password_file: None,
            ca: None,
            cert: None,
            key: None,
            prefix: "iscamd".into(),
            keep_alive: Duration::from_secs(30),
            max_packet_size: 4 << 20,
            outbox: 1000,
            prediction_policy: PredictionPolicy::default(),
            prediction_interval: Duration::from_secs(10),
            prediction_min_change: 0.05,
            retain_heatmap_image: true,
            heatmap_image_width: 640,
            heatmap_image_quality: 80,
            heatmap_image_interval: Duration::from_secs(1),
            stats_interval: Duration::from_secs(30),
            commands_per_second: 2.0,
            qos: QosConfig::default(),
        }
    }
}

#[derive(Clone, PartialEq, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HomeAssistantConfig {
    pub discovery: bool,
    pub prefix: String,
    /// `device`: one config per device (Home Assistant 2024.12 and later); `entity`: one
    /// per entity, for older versions.
    pub format: Format,
    /// The device page's "Visit" link, e.g. the camera's dashboard (`http://` or `https://`).
    pub configuration_url: Option<String>,
}

impl Default for HomeAssistantConfig {
    fn default() -> Self {
        HomeAssistantConfig {
            discovery: true,
            prefix: "homeassistant".into(),
            format: Format::default(),
            configuration_url: None,
        }
    }
}

/// A topic prefix: one or more levels, none empty, no wildcards.
fn validate_topic_prefix(key: &'static str, prefix: &str) -> Result<()> {
    let empty_level = prefix.split('/').any(str::is_empty);
    if empty_level || prefix.contains(['#', '+']) {
        return Err(Error::invalid(
            key,
            format!(
                "{prefix:?} (expected topic levels without # or +, none empty: no leading, \
                 trailing or double /)"
            ),
        ));
    }
    Ok(())
}

impl MqttConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        for (key, q) in [
            ("mqtt.qos.prediction", self.qos.prediction),
            ("mqtt.qos.heatmap", self.qos.heatmap),
        ] {
            if q > 1 {
                return Err(Error::invalid(key, format!("{q} (expected 0 or 1)")));
            }
        }
        validate_topic_prefix("mqtt.prefix", &self.prefix)?;
        if self.port == Some(0) {
            return Err(Error::invalid("mqtt.port", "0 (expected 1..=65535)"));
        }
        self.validate_sizes()?;
        self.validate_times()?;
        self.validate_credentials()
    }

    fn validate_sizes(&self) -> Result<()> {
        let ranges: [(&'static str, usize, usize, usize); 4] = [
            (
                "mqtt.max_packet_size",
                self.max_packet_size,
                1024,
                256 << 20,
            ),
            ("mqtt.outbox", self.outbox, 1, 1_000_000),
            (
                "mqtt.heatmap_image_quality",
                self.heatmap_image_quality.into(),
                1,
                100,
            ),
            (
                "mqtt.heatmap_image_width",
                self.heatmap_image_width as usize,
                16,
                4096,
            ),
        ];
        for (key, value, min, max) in ranges {
            if !(min..=max).contains(&value) {
                return Err(Error::invalid(
                    key,
                    format!("{value} (expected {min}..={max})"),
                ));
            }
        }
        if !(self.commands_per_second > 0.0 && self.commands_per_second <= 1000.0) {
            return Err(Error::invalid(
                "mqtt.commands_per_second",
                format!("{} (expected (0, 1000])", self.commands_per_second),
            ));
        }
        Ok(())
    }

    fn validate_times(&self) -> Result<()> {
        // MQTT carries the keep-alive in 16 bits of seconds.
        let keep_alive = Duration::from_secs(1)..=Duration::from_secs(u16::MAX.into());
        if !keep_alive.contains(&self.keep_alive) {
            return Err(Error::invalid(
                "mqtt.keep_alive",
                format!("{:?} (expected 1s to 65535s)", self.keep_alive),
            ));
        }
        let day = Duration::from_secs(24 * 3600);
        for (key, value, least) in [
            (
                "mqtt.stats_interval",
                self.stats_interval,
                Duration::from_secs(1),
            ),
            (
                "mqtt.prediction_interval",
                self.prediction_interval,
                MIN_INTERVAL,
            ),
            (
                "mqtt.heatmap_image_interval",
                self.heatmap_image_interval,
                Duration::ZERO,
            ),
        ] {
            if !(least..=day).contains(&value) {
                return Err(Error::invalid(
                    key,
                    format!("{value:?} (expected {least:?} to 24h)"),
                ));
            }
        }
        if !(self.prediction_min_change > 0.0 && self.prediction_min_change <= 1.0) {
            return Err(Error::invalid(
                "mqtt.prediction_min_change",
                format!("{} (expected above 0, up to 1)", self.prediction_min_change),
            ));
        }
        Ok(())
    }

    fn validate_credentials(&self) -> Result<()> {
        if self.cert.is_some() != self.key.is_some() {
            return Err(Error::invalid(
                "mqtt.cert/key",
                "give both a client certificate and its key, or neither",
            ));
        }
        if (self.cert.is_some() || self.key.is_some()) && self.ca.is_none() {
            return Err(Error::invalid(
                "mqtt.ca",
                "required with a client certificate (TLS)",
            ));
        }
        if self.password_file.is_some() && self.username.is_none() {
            return Err(Error::invalid(
                "mqtt.username",
                "required with mqtt.password_file",
            ));
        }
        Ok(())
    }
}

impl HomeAssistantConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        validate_topic_prefix("homeassistant.prefix", &self.prefix)?;
        if let Some(url) = &self.configuration_url {
            let scheme = url.split_once("://").map(|(scheme, _)| scheme);
            if !matches!(scheme, Some("http" | "https")) || url.len() > 2048 {
                return Err(Error::invalid(
                    "homeassistant.configuration_url",
                    format!("{url:?} (expected an http:// or https:// URL)"),
                ));
            }
        }
        Ok(())
    }
}
