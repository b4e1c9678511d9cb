//! The daemon's TOML configuration: every key has a default (docs/configuration.md lists them) and
//! unknown keys are errors, so a typo never silently falls back to a default.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::cam::{spec, CamParams, Method, Weighting};
use crate::error::{Error, Result};
use crate::model::{
    BackendKind, BackendOptions, BatchPlan, ChannelOrder, ModelOptions, OrtOptions,
    PreprocessOverrides, Provider, TractOptions,
};
use crate::publish::discovery::Format as DiscoveryFormat;
use crate::publish::policy::PredictionPolicy;
use crate::source::camera::FormatChoice;

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
}

/// `[events]`: episodes of a class on `<prefix>/<device>/event` (see [`crate::events`]).
#[derive(Clone, PartialEq, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    pub enabled: bool,
    /// A frame counts for its top-1 class at or above this probability.
    pub min_confidence: f64,
    /// Consecutive frames that open an episode.
    pub min_frames: u32,
    /// Consecutive frames without the class that end it.
    pub end_frames: u32,
    /// How far the peak score must rise to send an `update`.
    pub peak_step: f64,
    /// Explain the peak frame when an episode ends, and retain its overlay on
    /// `<prefix>/<device>/event/snapshot`.
    pub snapshot: bool,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            enabled: true,
            min_confidence: 0.5,
            min_frames: 3,
            end_frames: 5,
            peak_step: 0.05,
            snapshot: true,
        }
    }
}

/// The largest `min_frames` and `end_frames` accepted.
pub const MAX_EVENT_FRAMES: u32 = 10_000;

impl EventsConfig {
    pub fn rules(&self) -> crate::events::Rules {
        crate::events::Rules {
            min_confidence: self.min_confidence,
            min_frames: self.min_frames,
            end_frames: self.end_frames,
            peak_step: self.peak_step,
        }
    }

    fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.min_confidence) {
            return Err(key_error(
                "events.min_confidence",
                format!("{} (expected a probability in [0, 1])", self.min_confidence),
            ));
        }
        for (key, n) in [
            ("events.min_frames", self.min_frames),
            ("events.end_frames", self.end_frames),
        ] {
            if !(1..=MAX_EVENT_FRAMES).contains(&n) {
                return Err(key_error(
                    key,
                    format!("{n} (expected 1..={MAX_EVENT_FRAMES})"),
                ));
            }
        }
        if !(self.peak_step > 0.0 && self.peak_step <= 1.0) {
            return Err(key_error(
                "events.peak_step",
                format!("{} (expected a number in (0, 1])", self.peak_step),
            ));
        }
        Ok(())
    }
}

/// `[metrics]`: the Prometheus endpoint.
#[derive(Clone, PartialEq, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Where `/metrics` is served, e.g. `127.0.0.1:9810`; unset = no endpoint.
    pub listen: Option<std::net::SocketAddr>,
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    Camera,
    Images,
    #[default]
    Pattern,
    /// An RTSP camera (`url`), through GStreamer.
    Rtsp,
    /// A video file (`path`), through GStreamer.
    Video,
    /// Any GStreamer pipeline (`pipeline`).
    Gstreamer,
}

impl SourceKind {
    /// Sources built on GStreamer (feature `gstreamer`).
    pub fn is_stream(self) -> bool {
        matches!(
            self,
            SourceKind::Rtsp | SourceKind::Video | SourceKind::Gstreamer
        )
    }

    /// The name in the config file.
    pub fn name(self) -> &'static str {
        match self {
            SourceKind::Camera => "camera",
            SourceKind::Images => "images",
            SourceKind::Pattern => "pattern",
            SourceKind::Rtsp => "rtsp",
            SourceKind::Video => "video",
            SourceKind::Gstreamer => "gstreamer",
        }
    }
}

/// `[source] transport`: how RTSP carries the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// RTP interleaved in the RTSP connection: no lost packets, passes NAT and firewalls.
    #[default]
    Tcp,
    Udp,
    /// UDP, falling back to TCP when no packet arrives.
    Auto,
}

#[derive(Clone, PartialEq, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourceConfig {
    pub kind: SourceKind,
    /// Image file or directory (`images`).
    pub path: Option<PathBuf>,
    /// Start again after the last image (`images`).
    #[serde(rename = "loop")]
    pub loop_: bool,
    /// Frames per second offered by the source.
    pub fps: f64,
    /// Frame size: generated (`pattern`), or asked of the camera, which streams its
    /// nearest mode.
    pub width: u32,
    pub height: u32,
    /// Camera: an index (`0` for /dev/video0) or a device path, e.g. a stable
    /// `/dev/v4l/by-id/…` link.
    pub device: CameraDevice,
    /// Camera pixel format: `mjpeg`, `yuyv` or `auto`.
    pub format: FormatChoice,
    /// `gstreamer`: the pipeline, in `gst-launch-1.0` syntax.
    pub pipeline: Option<String>,
    /// `rtsp`: the camera's `rtsp://` URL.
    pub url: Option<String>,
    /// `rtsp`: `tcp`, `udp` or `auto`.
    pub transport: Transport,
    /// `rtsp`: the jitter buffer's length.
    #[serde(with = "humantime_serde")]
    pub latency: Duration,
    /// `rtsp`: a file holding `user:password`, so that the password is in no URL.
    pub credentials: Option<PathBuf>,
    /// Streams: no frame for this long restarts the stream.
    #[serde(with = "humantime_serde")]
    pub stall_timeout: Duration,
}

/// `[source] device`: a number or a path.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum CameraDevice {
    Index(u32),
    Path(String),
}

impl Default for CameraDevice {
    fn default() -> Self {
        CameraDevice::Index(0)
    }
}

impl std::fmt::Display for CameraDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CameraDevice::Index(n) => write!(f, "{n}"),
            CameraDevice::Path(p) => f.write_str(p),
        }
    }
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            kind: SourceKind::Pattern,
            path: None,
            loop_: true,
            fps: 5.0,
            width: 640,
            height: 480,
            device: CameraDevice::default(),
            format: FormatChoice::Auto,
            pipeline: None,
            url: None,
            transport: Transport::default(),
            latency: Duration::from_millis(200),
            credentials: None,
            stall_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Clone, PartialEq, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    pub path: Option<PathBuf>,
    pub labels: Option<PathBuf>,
    pub cam_layer: Option<String>,
    pub input_size: Option<u32>,
    pub resize: Option<u32>,
    pub channel_order: Option<ChannelOrder>,
    pub mean: Option<[f32; 3]>,
    pub std: Option<[f32; 3]>,
    /// Inference threads; 0 = all cores.
    pub threads: usize,
    /// `tract` (default, built in) or `ort` (ONNX Runtime; needs the `ort` feature).
    pub backend: BackendKind,
    /// ONNX Runtime execution providers in order of preference; default `["cpu"]`.
    pub providers: Vec<Provider>,
    /// ONNX Runtime library (`libonnxruntime.so`); default: `$ORT_DYLIB_PATH`.
    pub ort_library: Option<PathBuf>,
    /// TensorRT: allow FP16 / INT8 kernels.
    pub tensorrt_fp16: bool,
    pub tensorrt_int8: bool,
    /// TensorRT engine cache, so an engine is built once; default
    /// `$STATE_DIRECTORY/tensorrt` under systemd.
    pub engine_cache: Option<PathBuf>,
}

impl ModelConfig {
    /// Threads for each full map: all cores but the one inference needs.
    pub fn heatmap_threads(&self) -> usize {
        let threads = match self.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        threads.saturating_sub(1).max(1)
    }

    /// What to load: the model at `path` (the configured one, or a default the caller found)
    /// with these overrides.
    pub fn options(&self, path: PathBuf, batch_plan: BatchPlan) -> ModelOptions {
        let backend = match self.backend {
            BackendKind::Tract => BackendOptions::Tract(TractOptions {
                batch_plan,
                // ISCAMD_KERNELS, ISCAMD_MATMUL and ISCAMD_IN_FLIGHT, checked when iscamd starts.
                kernels: crate::model::kernels::Policy::from_env().unwrap_or_default(),
                matmul: crate::model::kernels::Matmul::from_env().unwrap_or_default(),
                in_flight: crate::model::kernels::InFlight::from_env().unwrap_or_default(),
            }),
            BackendKind::Ort => BackendOptions::Ort(OrtOptions {
                library: self.ort_library.clone(),
                providers: self.providers.clone(),
                threads: self.threads,
                tensorrt_fp16: self.tensorrt_fp16,
                tensorrt_int8: self.tensorrt_int8,
                engine_cache: self.engine_cache.clone().or_else(|| {
                    std::env::var_os("STATE_DIRECTORY").map(|d| PathBuf::from(d).join("tensorrt"))
                }),
            }),
        };
        ModelOptions {
            path,
            labels: self.labels.clone(),
            cam_layer: self.cam_layer.clone(),
            preprocess: PreprocessOverrides {
                input_size: self.input_size,
                resize: self.resize,
                channel_order: self.channel_order,
                mean: self.mean,
                std: self.std,
                pixel_max: None,
            },
            backend,
        }
    }
}

#[derive(Clone, PartialEq, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CamConfig {
    pub method: String,
    pub steps: Option<usize>,
    pub channels: Option<usize>,
    pub weighting: String,
    pub batch: usize,
    pub seed: u64,
    /// SS-CAM's noise σ; unset: the spec's (default 2).
    pub sigma: Option<f32>,
    /// Score masked inputs at this side instead of the model's input size (cheaper).
    pub score_size: Option<usize>,
    /// Time between scheduled heatmaps; "0s" turns the schedule off.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Explain when the top-1 class changes.
    pub on_class_change: bool,
    /// Class-change triggers fire only at or above this top-1 probability.
    pub min_confidence: f64,
    /// Publish a live map for every frame between full maps, from the last full map's
    /// channel weights and the frame's own activations (one forward pass per map).
    pub live: bool,
    /// Live maps stop, and a full map is made, once the weights are this old.
    #[serde(with = "humantime_serde")]
    pub live_max_age: Duration,
    /// Live maps stop, and a full map is made, once the frame's channel content drifts
    /// this far (1 − cosine of per-channel mean activations) from the full map's frame.
    pub live_max_drift: f64,
    /// Most masked passes one map may run; requests above it are refused.
    pub max_passes: usize,
    /// Most time one map may take; a map still running then is abandoned.
    #[serde(with = "humantime_serde")]
    pub max_time: Duration,
}

impl Default for CamConfig {
    fn default() -> Self {
        CamConfig {
            method: "iscam".into(),
            steps: None,
            channels: None,
            weighting: "prob".into(),
            batch: 1,
            seed: 0,
            sigma: None,
            score_size: None,
            interval: Duration::from_secs(30),
            on_class_change: true,
            min_confidence: 0.5,
            live: false,
            live_max_age: Duration::from_secs(300),
            live_max_drift: LIVE_MAX_DRIFT,
            max_passes: crate::cam::DEFAULT_MAX_PASSES,
            max_time: crate::cam::DEFAULT_MAX_TIME,
        }
    }
}

/// Default of `[cam] live_max_drift`: between what small camera shifts and sensor noise
/// cause and what a cut to another scene causes. `iscamd eval --live` on 12 images
/// (docs/benchmarks.md): shifts up to 16 px and noise up to σ = 12 drift at most 0.055,
/// cuts to another image at least 0.36.
pub const LIVE_MAX_DRIFT: f64 = 0.1;

/// Largest `[cam] max_passes`: ~90 minutes of SqueezeNet passes on a fast x86 core.
pub const MAX_MAX_PASSES: usize = 1_000_000;
/// Accepted `[cam] max_time`.
pub const MAX_TIMES: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(3600);

impl CamConfig {
    /// The cost budget of every full map.
    pub fn budget(&self) -> crate::cam::Budget {
        crate::cam::Budget {
            max_passes: self.max_passes,
            max_time: self.max_time,
        }
    }

    /// The live-map policy these keys describe.
    pub fn live_policy(&self) -> crate::cam::live::Policy {
        crate::cam::live::Policy {
            max_age: self.live_max_age,
            max_drift: self.live_max_drift,
        }
    }

    /// The CAM parameters these keys describe.
    pub fn params(&self) -> Result<CamParams> {
        let mut p = spec::parse_with(&self.method, self.steps, self.channels)
            .map_err(|e| key_error("cam.method", e))?;
        p.weighting = self
            .weighting
            .parse::<Weighting>()
            .map_err(|e| key_error("cam.weighting", e))?;
        p.batch = self.batch;
        p.seed = self.seed;
        p.score_size = self.score_size.or(p.score_size);
        if let (Method::SsCam { ref mut sigma, .. }, Some(s)) = (&mut p.method, self.sigma) {
            *sigma = s;
        }
        Ok(p)
    }
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
    pub format: DiscoveryFormat,
    /// The device page's "Visit" link, e.g. the camera's dashboard (`http://` or `https://`).
    pub configuration_url: Option<String>,
}

impl Default for HomeAssistantConfig {
    fn default() -> Self {
        HomeAssistantConfig {
            discovery: true,
            prefix: "homeassistant".into(),
            format: DiscoveryFormat::default(),
            configuration_url: None,
        }
    }
}

/// Heatmap intervals accepted, in the config and from `set` commands (zero turns them off).
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
pub const MAX_INTERVAL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Inference threads accepted (0 = one per core).
pub const MAX_THREADS: usize = 256;

impl SourceConfig {
    fn validate(&self) -> Result<()> {
        if !(self.fps.is_finite() && self.fps > 0.0 && self.fps <= 1000.0) {
            return Err(key_error(
                "source.fps",
                format!("{} (expected a number in (0, 1000])", self.fps),
            ));
        }
        let required = match self.kind {
            SourceKind::Images | SourceKind::Video => self.path.is_none().then_some("source.path"),
            SourceKind::Rtsp => self.url.is_none().then_some("source.url"),
            SourceKind::Gstreamer => self.pipeline.is_none().then_some("source.pipeline"),
            SourceKind::Camera | SourceKind::Pattern => None,
        };
        if let Some(key) = required {
            return Err(key_error(
                key,
                format!("required for kind = \"{}\"", self.kind.name()),
            ));
        }
        if self.kind.is_stream() && !cfg!(feature = "gstreamer") {
            return Err(key_error(
                "source.kind",
                format!(
                    "\"{}\" needs the `gstreamer` feature (on by default); rebuild with it",
                    self.kind.name()
                ),
            ));
        }
        if let Some(url) = &self.url {
            if !url.starts_with("rtsp://") && !url.starts_with("rtsps://") {
                return Err(key_error(
                    "source.url",
                    "expected an rtsp:// or rtsps:// URL",
                ));
            }
        }
        if self.stall_timeout < Duration::from_millis(100) || self.latency > Duration::from_secs(60)
        {
            return Err(key_error(
                "source.stall_timeout/latency",
                "expected stall_timeout ≥ 100ms and latency ≤ 60s",
            ));
        }
        if self.kind == SourceKind::Camera && !cfg!(all(feature = "camera", target_os = "linux")) {
            return Err(key_error(
                "source.kind",
                "\"camera\" needs a Linux build with the `camera` feature (on by default)",
            ));
        }
        if self.width == 0 || self.height == 0 || self.width > 8192 || self.height > 8192 {
            return Err(key_error(
                "source.width/height",
                format!("{}x{} (expected 1..=8192)", self.width, self.height),
            ));
        }
        Ok(())
    }
}

impl ModelConfig {
    fn validate(&self) -> Result<()> {
        if self.backend != BackendKind::Ort
            && (!self.providers.is_empty() || self.ort_library.is_some())
        {
            return Err(key_error(
                "model.providers/ort_library",
                "apply to backend = \"ort\" only; set [model] backend = \"ort\" or remove them",
            ));
        }
        if self.backend == BackendKind::Ort && cfg!(not(feature = "ort")) {
            return Err(key_error(
                "model.backend",
                "\"ort\" is not built in; rebuild with `cargo build --release --features ort`",
            ));
        }
        if self.threads > MAX_THREADS {
            return Err(key_error(
                "model.threads",
                format!(
                    "{} (expected 0 = one per core, or 1..={MAX_THREADS})",
                    self.threads
                ),
            ));
        }
        Ok(())
    }
}

impl CamConfig {
    fn validate(&self) -> Result<()> {
        // The channels are checked against the model's CAM layer once it is loaded.
        self.params()?
            .validate(usize::MAX, usize::MAX)
            .map_err(cam_key)?;
        if !self.interval.is_zero() && !(MIN_INTERVAL..=MAX_INTERVAL).contains(&self.interval) {
            return Err(key_error(
                "cam.interval",
                format!(
                    "{:?} (expected \"0s\" = off, or {MIN_INTERVAL:?} to {MAX_INTERVAL:?})",
                    self.interval
                ),
            ));
        }
        if !(0.0..=1.0).contains(&self.live_max_drift) {
            return Err(key_error(
                "cam.live_max_drift",
                format!("{} (expected 0..=1)", self.live_max_drift),
            ));
        }
        if self.live_max_age.is_zero() {
            return Err(key_error("cam.live_max_age", "0s (expected more than 0)"));
        }
        if !(1..=MAX_MAX_PASSES).contains(&self.max_passes) {
            return Err(key_error(
                "cam.max_passes",
                format!("{} (expected 1..={MAX_MAX_PASSES})", self.max_passes),
            ));
        }
        if !MAX_TIMES.contains(&self.max_time) {
            return Err(key_error(
                "cam.max_time",
                format!(
                    "{:?} (expected {:?} to {:?})",
                    self.max_time,
                    MAX_TIMES.start(),
                    MAX_TIMES.end()
                ),
            ));
        }
        if !(0.0..=1.0).contains(&self.min_confidence) {
            return Err(key_error(
                "cam.min_confidence",
                format!("{} (expected 0..=1)", self.min_confidence),
            ));
        }
        Ok(())
    }
}

/// A device id is one MQTT topic level: no `/`, `+` or `#` (they would split it or make
/// it a wildcard), no spaces or control characters (which other tools mangle).
fn validate_device_id(id: &str) -> Result<()> {
    if id.trim().is_empty() {
        return Err(key_error(
            "device.id",
            "empty (unset it to use the host name)",
        ));
    }
    let bad = |c: char| matches!(c, '/' | '+' | '#') || c.is_whitespace() || c.is_control();
    if let Some(c) = id.chars().find(|&c| bad(c)) {
        return Err(key_error(
            "device.id",
            format!(
                "{id:?} contains {c:?} (expected one MQTT topic level: letters, digits, \
                 - _ . and the like; no /, +, #, spaces or control characters)"
            ),
        ));
    }
    Ok(())
}

/// A topic prefix: one or more levels, none empty, no wildcards.
fn validate_topic_prefix(key: &'static str, prefix: &str) -> Result<()> {
    let empty_level = prefix.split('/').any(str::is_empty);
    if empty_level || prefix.contains(['#', '+']) {
        return Err(key_error(
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
    fn validate(&self) -> Result<()> {
        for (key, q) in [
            ("mqtt.qos.prediction", self.qos.prediction),
            ("mqtt.qos.heatmap", self.qos.heatmap),
        ] {
            if q > 1 {
                return Err(key_error(key, format!("{q} (expected 0 or 1)")));
            }
        }
        validate_topic_prefix("mqtt.prefix", &self.prefix)?;
        if self.port == Some(0) {
            return Err(key_error("mqtt.port", "0 (expected 1..=65535)"));
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
                return Err(key_error(key, format!("{value} (expected {min}..={max})")));
            }
        }
        if !(self.commands_per_second > 0.0 && self.commands_per_second <= 1000.0) {
            return Err(key_error(
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
            return Err(key_error(
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
                return Err(key_error(
                    key,
                    format!("{value:?} (expected {least:?} to 24h)"),
                ));
            }
        }
        if !(self.prediction_min_change > 0.0 && self.prediction_min_change <= 1.0) {
            return Err(key_error(
                "mqtt.prediction_min_change",
                format!("{} (expected above 0, up to 1)", self.prediction_min_change),
            ));
        }
        Ok(())
    }

    fn validate_credentials(&self) -> Result<()> {
        if self.cert.is_some() != self.key.is_some() {
            return Err(key_error(
                "mqtt.cert/key",
                "give both a client certificate and its key, or neither",
            ));
        }
        if (self.cert.is_some() || self.key.is_some()) && self.ca.is_none() {
            return Err(key_error(
                "mqtt.ca",
                "required with a client certificate (TLS)",
            ));
        }
        if self.password_file.is_some() && self.username.is_none() {
            return Err(key_error(
                "mqtt.username",
                "required with mqtt.password_file",
            ));
        }
        Ok(())
    }
}

/// Names an error of the CAM parameters by its `[cam]` key.
pub fn cam_key(e: Error) -> Error {
    match e {
        Error::Invalid { what, reason } => Error::Invalid {
            what: match what {
                "steps" => "cam.steps",
                "channels" => "cam.channels",
                "batch" => "cam.batch",
                "score_size" => "cam.score_size",
                "sigma" => "cam.sigma",
                other => other,
            },
            reason,
        },
        other => other,
    }
}

fn key_error(key: &'static str, e: impl std::fmt::Display) -> Error {
    Error::Invalid {
        what: key,
        reason: e.to_string(),
    }
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
        validate_topic_prefix("homeassistant.prefix", &self.homeassistant.prefix)?;
        if let Some(url) = &self.homeassistant.configuration_url {
            let scheme = url.split_once("://").map(|(scheme, _)| scheme);
            if !matches!(scheme, Some("http" | "https")) || url.len() > 2048 {
                return Err(key_error(
                    "homeassistant.configuration_url",
                    format!("{url:?} (expected an http:// or https:// URL)"),
                ));
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

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
