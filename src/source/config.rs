//! `[source]`: where frames come from, and the checks of its keys.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::camera::FormatChoice;
use crate::error::{Error, Result};

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

impl SourceConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        if !(self.fps.is_finite() && self.fps > 0.0 && self.fps <= 1000.0) {
            return Err(Error::invalid(
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
            return Err(Error::invalid(
                key,
                format!("required for kind = \"{}\"", self.kind.name()),
            ));
        }
        if self.kind.is_stream() && !cfg!(feature = "gstreamer") {
            return Err(Error::invalid(
                "source.kind",
                format!(
                    "\"{}\" needs the `gstreamer` feature (on by default); rebuild with it",
                    self.kind.name()
                ),
            ));
        }
        if let Some(url) = &self.url {
            if !url.starts_with("rtsp://") && !url.starts_with("rtsps://") {
                return Err(Error::invalid(
                    "source.url",
                    "expected an rtsp:// or rtsps:// URL",
                ));
            }
        }
        if self.stall_timeout < Duration::from_millis(100) || self.latency > Duration::from_secs(60)
        {
            return Err(Error::invalid(
                "source.stall_timeout/latency",
                "expected stall_timeout ≥ 100ms and latency ≤ 60s",
            ));
        }
        if self.kind == SourceKind::Camera && !cfg!(all(feature = "camera", target_os = "linux")) {
            return Err(Error::invalid(
                "source.kind",
                "\"camera\" needs a Linux build with the `camera` feature (on by default)",
            ));
        }
        if self.width == 0 || self.height == 0 || self.width > 8192 || self.height > 8192 {
            return Err(Error::invalid(
                "source.width/height",
                format!("{}x{} (expected 1..=8192)", self.width, self.height),
            ));
        }
        Ok(())
    }
}
