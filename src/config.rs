//! The daemon's TOML configuration: every key has a default (docs/configuration.md lists them) and
//! unknown keys are errors, so a typo never silently falls back to a default.
//!
//! Each section belongs to the component it configures (`[source]` to [`crate::source`],
//! `[cam]` to [`crate::cam`], …), which checks its own keys; this module reads the file,
//! holds `[device]` and checks what spans sections.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::cam::config::CamConfig;
use crate::error::{Error, Result};
use crate::events::config::EventsConfig;
use crate::model::config::ModelConfig;
use crate::publish::config::{HomeAssistantConfig, MqttConfig};
use crate::publish::policy::PredictionPolicy;
use crate::source::config::SourceConfig;
use crate::telemetry::config::MetricsConfig;
use crate::web::WebConfig;

#[derive(Clone, PartialEq, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub device: DeviceConfig,
    pub source: SourceConfig,
    pub model: ModelConfig,
    pub cam: CamConfig,
    pub mqtt: MqttConfig,
    pub homeassistant: HomeAssistantConfig,
    pub metrics: MetricsConfig,
    pub events: EventsConfig,
    pub web: WebConfig,
}

#[derive(Clone, PartialEq, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeviceConfig {
    /// Device id in topics; default: the host name.
    pub id: Option<String>,
    /// How long shutdown may wait for the heatmap in flight and the outbox.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        DeviceConfig {
            id: None,
            shutdown_timeout: Duration::from_secs(5),
        }
    }
}

/// A device id is one MQTT topic level: no `/`, `+` or `#` (they would split it or make
/// it a wildcard), no spaces or control characters (which other tools mangle).
fn validate_device_id(id: &str) -> Result<()> {
    if id.trim().is_empty() {
        return Err(Error::invalid(
            "device.id",
            "empty (unset it to use the host name)",
        ));
    }
    let bad = |c: char| matches!(c, '/' | '+' | '#') || c.is_whitespace() || c.is_control();
    if let Some(c) = id.chars().find(|&c| bad(c)) {
        return Err(Error::invalid(
            "device.id",
            format!(
                "{id:?} contains {c:?} (expected one MQTT topic level: letters, digits, \
                 - _ . and the like; no /, +, #, spaces or control characters)"
            ),
        ));
    }
    Ok(())
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = crate::file::read_text(path, "config", crate::file::MAX_SMALL_FILE_BYTES)?;
        Self::parse(&text).map_err(|e| Error::input(path, e))
    }

    /// Parses and validates config text; errors name the key and line.
    pub fn parse(text: &str) -> Result<Self> {
        let config: Config = toml::from_str(text)
            .map_err(|e| Error::invalid("config", e.to_string().trim_end().replace('\n', " ")))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values serde cannot: ranges and combinations. Each error names its key and
    /// what it accepts.
    pub fn validate(&self) -> Result<()> {
        if let Some(id) = self.device.id.as_deref() {
            validate_device_id(id)?;
        }
        self.source.validate()?;
        self.model.validate()?;
        self.cam.validate()?;
        self.events.validate()?;
        self.homeassistant.validate()?;
        self.web.validate()?;
        self.mqtt.validate()
    }

    /// Home Assistant discovery, when `[homeassistant] discovery` is on.
    pub fn discovery(&self) -> Option<crate::publish::discovery::Options> {
        let ha = &self.homeassistant;
        ha.discovery.then(|| crate::publish::discovery::Options {
            prefix: ha.prefix.clone(),
            format: ha.format,
            configuration_url: ha.configuration_url.clone(),
            stats_interval: self.mqtt.stats_interval,
            // No prediction can come faster than frames do.
            prediction_interval: (self.mqtt.prediction_policy != PredictionPolicy::Every).then(
                || {
                    let frame = Duration::from_secs_f64(1.0 / self.source.fps);
                    self.mqtt.prediction_interval.max(frame)
                },
            ),
            events: self.events.enabled,
            event_snapshots: self.events.enabled && self.events.snapshot,
        })
    }

    /// The device id: configured, else the host name, else `iscamd`.
    pub fn device_id(&self) -> String {
        self.device.id.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "iscamd".into())
        })
    }
}

/// The config in force, as text for a person (the page, debug bundles), with every
/// secret blanked: `[web] token`, passwords in URLs (`rtsp://user:…@`) and GStreamer
/// password properties.
pub fn redacted(config: &Config) -> String {
    let text = format!("{config:#?}");
    let text = redact_after(&text, "://", |rest| {
        let end = rest.find(['/', '"', ' ', '\n']).unwrap_or(rest.len());
        let at = rest[..end].rfind('@')?;
        let colon = rest[..at].find(':')?;
        Some((colon + 1, at))
    });
    ["user-pw=", "passwd=", "password="]
        .iter()
        .fold(text, |text, key| {
            redact_after(&text, key, |rest| {
                let end = rest.find([' ', '"', '!', '\\', '\n']).unwrap_or(rest.len());
                (end > 0).then_some((0, end))
            })
        })
}

/// `text` with, after each `marker`, the span `secret` finds (start and end within what
/// follows the marker) replaced by `<redacted>`.
fn redact_after(
    text: &str,
    marker: &str,
    secret: impl Fn(&str) -> Option<(usize, usize)>,
) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(marker) {
        let (head, tail) = rest.split_at(i + marker.len());
        out.push_str(head);
        match secret(tail) {
            Some((start, end)) => {
                out.push_str(&tail[..start]);
                out.push_str("<redacted>");
                rest = &tail[end..];
            }
            None => rest = tail,
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::model::{BackendOptions, BatchPlan, ChannelOrder, Provider};

    #[test]
    fn empty_config_is_all_defaults() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.mqtt.prefix, "iscamd");
        assert_eq!(c.cam.interval, Duration::from_secs(30));
        let p = c.cam.params().unwrap();
        assert_eq!(
            (p.steps(), p.channels),
            (crate::cam::REDUCED_N_STEPS, crate::cam::REDUCED_N_CHANNELS)
        );
    }

    /// The package's /etc/iscamd/iscamd.toml shows every key commented out; each line,
    /// uncommented, must be a key this version reads with a value it accepts.
    #[test]
    fn the_packaged_config_reads_with_every_key_uncommented() {
        let packaged = include_str!("../packaging/iscamd.toml");
        let uncommented: Vec<&str> = packaged
            .lines()
            .map(|line| match line.strip_prefix("# ") {
                Some(rest) if rest.split_once(" = ").is_some_and(|(k, _)| is_key(k)) => rest,
                _ => line,
            })
            .collect();
        let keys = uncommented.iter().filter(|l| l.contains(" = ")).count();
        assert!(keys >= 50, "only {keys} keys uncommented");
        let config = Config::parse(&uncommented.join("\n")).unwrap();
        assert_eq!(config.mqtt.host.as_deref(), Some("127.0.0.1"));
        assert!(Config::parse(packaged).unwrap().mqtt.host.is_none());
    }

    #[test]
    fn the_config_shown_holds_no_secret() {
        let config = Config::parse(
            r#"
[source]
kind = "rtsp"
url = "rtsp://admin:hunter2pass@10.0.0.7:554/stream1"
[web]
listen = "0.0.0.0:8080"
token = "0123456789abcdef-secret"
"#,
        )
        .unwrap();
        let shown = redacted(&config);
        for secret in ["hunter2pass", "0123456789abcdef-secret"] {
            assert!(!shown.contains(secret), "{secret} in:\n{shown}");
        }
        assert!(
            shown.contains("rtsp://admin:<redacted>@10.0.0.7:554/stream1"),
            "{shown}"
        );
        let pipeline = Config {
            source: crate::source::config::SourceConfig {
                pipeline: Some(
                    "rtspsrc location=rtsp://cam user-id=a user-pw=s3cret ! fakesink".into(),
                ),
                ..Default::default()
            },
            ..Default::default()
        };
        let shown = redacted(&pipeline);
        assert!(
            !shown.contains("s3cret") && shown.contains("user-pw=<redacted>"),
            "{shown}"
        );
    }

    fn is_key(word: &str) -> bool {
        !word.is_empty() && word.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
    }

    #[test]
    fn fixed_key_names_parse() {
        let c = Config::parse(
            r#"
            [device]
            id = "cam7"
            [source]
            kind = "images"
            path = "/srv/frames"
            loop = false
            fps = 2.5
            [model]
            path = "/opt/m.onnx"
            channel_order = "BGR"
            [cam]
            method = "scorecam"
            channels = 16
            interval = "500ms"
            [mqtt]
            host = "broker"
            port = 8883
            prefix = "plant"
            username = "u"
            password_file = "/etc/iscamd/pw"
            ca = "/etc/iscamd/ca.pem"
            cert = "/etc/iscamd/c.pem"
            key = "/etc/iscamd/k.pem"
            outbox = 50
            max_packet_size = 1048576
            [mqtt.qos]
            prediction = 1
            heatmap = 1
            "#,
        )
        .unwrap();
        assert_eq!(c.device_id(), "cam7");
        assert_eq!(c.model.channel_order, Some(ChannelOrder::Bgr));
        assert!(!c.source.loop_);
        assert_eq!(c.cam.interval, Duration::from_millis(500));
        assert_eq!((c.mqtt.qos.prediction, c.mqtt.outbox), (1, 50));
    }

    #[test]
    fn backend_keys() {
        let c = Config::parse(
            "[model]\nbackend = \"ort\"\nproviders = [\"tensorrt\", \"cuda\", \"cpu\"]\ntensorrt_fp16 = true\n",
        );
        if cfg!(feature = "ort") {
            let c = c.unwrap();
            let o = c.model.options(PathBuf::from("m.onnx"), BatchPlan::Split);
            let BackendOptions::Ort(ort) = o.backend else {
                panic!("{:?}", o.backend)
            };
            assert_eq!(
                ort.providers,
                [Provider::TensorRt, Provider::Cuda, Provider::Cpu]
            );
            assert!(ort.tensorrt_fp16 && !ort.tensorrt_int8);
        } else {
            let e = c.unwrap_err().to_string();
            assert!(
                e.contains("model.backend") && e.contains("--features ort"),
                "{e}"
            );
        }
        // Provider keys without the ort backend are a mistake, not silently ignored.
        let e = Config::parse("[model]\nproviders = [\"cuda\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("model.providers") && e.contains("backend = \"ort\""),
            "{e}"
        );
        let e = Config::parse("[model]\nproviders = [\"gpu\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("gpu") && e.contains("tensorrt"), "{e}");
    }

    #[test]
    fn mistakes_name_their_key() {
        for (text, key) in [
            ("[cam]\nmethd = \"iscam\"", "methd"),
            ("[cam]\nmethod = \"gradcam\"", "gradcam"),
            ("[cam]\ninterval = \"soon\"", "interval"),
            ("[mqtt.qos]\nprediction = 2", "mqtt.qos.prediction"),
            ("[source]\nkind = \"images\"", "source.path"),
            ("[source]\nfps = 0", "source.fps"),
            ("[model]\nchannel_order = \"GBR\"", "GBR"),
            ("[mqtt]\ncert = \"c.pem\"", "cert"),
            ("[cam]\nlive_max_drift = 1.5", "cam.live_max_drift"),
            ("[cam]\nlive_max_age = \"0s\"", "cam.live_max_age"),
        ] {
            let e = Config::parse(text).unwrap_err().to_string();
            assert!(e.contains(key), "{text:?}: {e}");
        }
    }

    #[test]
    fn out_of_range_values_are_refused_naming_their_key() {
        for (text, key) in [
            ("[device]\nid = \"\"", "device.id"),
            ("[device]\nid = \"  \"", "device.id"),
            ("[device]\nid = \"cams/7\"", "device.id"),
            ("[device]\nid = \"cam+\"", "device.id"),
            ("[device]\nid = \"#\"", "device.id"),
            ("[device]\nid = \"cam 7\"", "device.id"),
            ("[device]\nid = \"cam\\u0000\"", "device.id"),
            ("[mqtt]\nport = 0", "mqtt.port"),
            ("[mqtt]\nkeep_alive = \"65536s\"", "mqtt.keep_alive"),
            ("[mqtt]\nkeep_alive = \"0s\"", "mqtt.keep_alive"),
            ("[mqtt]\nstats_interval = \"0s\"", "mqtt.stats_interval"),
            (
                "[mqtt]\nprediction_interval = \"10ms\"",
                "mqtt.prediction_interval",
            ),
            (
                "[mqtt]\nprediction_min_change = 0",
                "mqtt.prediction_min_change",
            ),
            (
                "[mqtt]\nprediction_policy = \"sometimes\"",
                "prediction_policy",
            ),
            (
                "[mqtt]\nheatmap_image_interval = \"2d\"",
                "mqtt.heatmap_image_interval",
            ),
            ("[homeassistant]\nprefix = \"ha/\"", "homeassistant.prefix"),
            ("[homeassistant]\nformat = \"legacy\"", "format"),
            (
                "[homeassistant]\nconfiguration_url = \"cam7.local\"",
                "homeassistant.configuration_url",
            ),
            ("[events]\nmin_frames = 0", "events.min_frames"),
            ("[events]\nend_frames = 10001", "events.end_frames"),
            ("[events]\nmin_confidence = 1.5", "events.min_confidence"),
            ("[events]\npeak_step = 0", "events.peak_step"),
            ("[mqtt]\nprefix = \"a/\"", "mqtt.prefix"),
            ("[mqtt]\nprefix = \"/a\"", "mqtt.prefix"),
            ("[mqtt]\nprefix = \"a//b\"", "mqtt.prefix"),
            ("[mqtt]\nprefix = \"\"", "mqtt.prefix"),
            ("[model]\nthreads = 100000", "model.threads"),
            ("[cam]\ninterval = \"1ns\"", "cam.interval"),
            ("[cam]\ninterval = \"30d\"", "cam.interval"),
            ("[cam]\nsteps = 0", "cam.steps"),
            ("[cam]\nsteps = 1001", "cam.steps"),
            ("[cam]\nbatch = 0", "cam.batch"),
            ("[source]\nkind = \"images\"", "source.path"),
        ] {
            let e = Config::parse(text).unwrap_err().to_string();
            assert!(e.contains(key), "{text:?}: {e}");
            assert!(
                e.contains("expected") || e.contains("required") || e.contains("empty"),
                "{text:?}: {e}"
            );
        }
        for fine in [
            "[mqtt]\nprefix = \"site/cams\"",
            "[cam]\ninterval = \"0s\"",
            "[model]\nthreads = 0",
            "[mqtt]\nkeep_alive = \"65535s\"",
            "[homeassistant]\nconfiguration_url = \"https://grafana.local/d/cam7\"",
            "[events]\nenabled = false\nmin_frames = 1\nend_frames = 1\npeak_step = 1",
        ] {
            Config::parse(fine).unwrap();
        }
    }

    /// The reference in docs/configuration.md is a config iscamd accepts.
    #[test]
    fn the_documented_example_parses() {
        let doc = include_str!("../docs/configuration.md");
        let example = doc
            .split("```toml\n")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .expect("a toml block in docs/configuration.md");
        if let Err(e) = Config::parse(example) {
            panic!("docs/configuration.md: {e}");
        }
    }
}
