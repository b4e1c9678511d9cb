//! The capture stage: reads frames from the source into the latest-frame slot.

use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::latest::Latest;
use super::shutdown::Shutdown;
use crate::error::{with_causes, Error, Result};
use crate::source::config::{SourceConfig, SourceKind};
use crate::source::{Frame, FrameSource, ImageFiles, Pacer, Pattern};
use crate::telemetry::Stats;

/// Builds the frame source `[source]` describes.
pub fn open_source(s: &SourceConfig) -> Result<Box<dyn FrameSource>> {
    Ok(match s.kind {
        SourceKind::Images => {
            let path = s
                .path
                .clone()
                .ok_or_else(|| Error::invalid("source.path", "required for kind = \"images\""))?;
            Box::new(ImageFiles::open(path, s.loop_)?)
        }
        SourceKind::Pattern => Box::new(Pattern::new(s.width, s.height)),
        #[cfg(feature = "gstreamer")]
        SourceKind::Rtsp | SourceKind::Video | SourceKind::Gstreamer => {
            let spec = crate::source::stream::StreamSpec::from_config(s)?;
            crate::source::stream::validate(&spec)?;
            Box::new(crate::source::stream::StreamSource::new(spec))
        }
        #[cfg(not(feature = "gstreamer"))]
        SourceKind::Rtsp | SourceKind::Video | SourceKind::Gstreamer => {
            return Err(Error::invalid(
                "source.kind",
                "streams need the `gstreamer` feature (on by default)",
            ))
        }
        #[cfg(all(feature = "camera", target_os = "linux"))]
        SourceKind::Camera => Box::new(crate::source::CameraSource::new(
            Box::new(crate::source::camera::V4lDevice::new(&s.device.to_string())),
            crate::source::camera::Request {
                format: s.format,
                width: s.width,
                height: s.height,
                fps: s.fps,
            },
        )),
        #[cfg(not(all(feature = "camera", target_os = "linux")))]
        SourceKind::Camera => {
            return Err(Error::invalid(
                "source.kind",
                "\"camera\" needs a Linux build with the `camera` feature",
            ))
        }
    })
}

/// A source a reload opened, with its `[source] fps`.
pub type NewSource = (Box<dyn FrameSource>, f64);

pub struct Capture {
    pub source: Box<dyn FrameSource>,
    /// Sources a reload opened: each replaces the one in use between two frames.
    pub replacements: Receiver<NewSource>,
    pub frames: Arc<Latest<Frame>>,
    pub stats: Arc<Stats>,
    /// `[source] fps`, for sources that do not pace themselves.
    pub fps: f64,
}

impl Capture {
    /// Runs until shutdown, or until the source has no more frames.
    pub fn run(mut self, shutdown: Shutdown) -> Result<()> {
        // A camera streams at its own rate: read every frame (the latest wins) rather
        // than pace, which would hand out stale buffered frames.
        let mut paced_by_device = self.source.paced_by_device();
        let mut pacer = Pacer::new(self.fps);
        let mut number = 0u64;
        while !shutdown.is_shutdown() {
            if let Ok((source, fps)) = self.replacements.try_recv() {
                tracing::info!("source replaced: {}", source.describe());
                self.source = source;
                paced_by_device = self.source.paced_by_device();
                pacer = Pacer::new(fps);
            }
            if !paced_by_device {
                pacer.wait();
            }
            let next = {
                let _step = self.stats.capture_step();
                self.source.next_frame()
            };
            if let Some(health) = self.source.health() {
                self.stats.source(health);
            }
            match next {
                Ok(Some(image)) => {
                    number += 1;
                    let frame = Frame {
                        number,
                        image,
                        captured: SystemTime::now() - self.source.captured_ago(),
                    };
                    self.stats.frame_captured(self.frames.put(frame));
                }
                Ok(None) => {
                    tracing::info!("the source has no more frames");
                    return Ok(());
                }
                // Down and retrying with backoff; the source logged why.
                Err(Error::SourceUnavailable(_)) => {}
                Err(e) => {
                    self.stats.frame_error();
                    tracing::warn!("frame source: {}", with_causes(&e));
                    if !paced_by_device {
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
            }
        }
        Ok(())
    }
}
