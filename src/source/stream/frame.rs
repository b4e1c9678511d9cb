//! A GStreamer sample as an RGB image: iscamd's appsink asks for RGB, and a pipeline with
//! an appsink of its own may deliver any packed 8-bit RGB layout (Jetson's `nvvidconv`
//! gives BGRx), so those are converted here; anything else is named in the error.

use gst_video::prelude::*;
use gst_video::VideoFormat;
use gstreamer as gst;
use gstreamer_video as gst_video;
use image::RgbImage;

/// Largest frame accepted: a stream that announces more is refused, not allocated.
const MAX_SIDE: u32 = 8192;

/// The sample's caps in a few words: `RGB 1280x720 @ 30/1 fps`.
pub fn describe(info: &gst_video::VideoInfo) -> String {
    let fps = info.fps();
    format!(
        "{} {}x{} @ {}/{} fps",
        info.format().to_str(),
        info.width(),
        info.height(),
        fps.numer(),
        fps.denom()
    )
}

/// Why a sample cannot be read as a picture.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("a sample without caps")]
    NoCaps,
    #[error("not raw video: {0}")]
    NotRawVideo(String),
    #[error("a {width}x{height} frame (at most {MAX_SIDE} a side)")]
    Size { width: u32, height: u32 },
    #[error(
        "the pipeline's appsink delivers {0}; iscamd reads packed RGB/BGR(x) — \
         end the pipeline in `videoconvert ! video/x-raw,format=RGB ! appsink`"
    )]
    Format(&'static str),
    #[error("a sample without a buffer")]
    NoBuffer,
    #[error("a frame that cannot be mapped")]
    Unmappable,
    #[error("a frame whose plane cannot be read")]
    Plane(#[source] gst::glib::BoolError),
    #[error("a {width}x{height} frame with {bytes} bytes")]
    Short {
        width: u32,
        height: u32,
        bytes: usize,
    },
}

pub fn video_info(sample: &gst::Sample) -> Result<gst_video::VideoInfo, FrameError> {
    let caps = sample.caps().ok_or(FrameError::NoCaps)?;
    gst_video::VideoInfo::from_caps(caps).map_err(|_| FrameError::NotRawVideo(caps.to_string()))
}

/// The sample's picture as RGB.
pub fn to_rgb(sample: &gst::Sample, info: &gst_video::VideoInfo) -> Result<RgbImage, FrameError> {
    let (width, height) = (info.width(), info.height());
    if width == 0 || height == 0 || width > MAX_SIDE || height > MAX_SIDE {
        return Err(FrameError::Size { width, height });
    }
    // Byte offsets of R, G, B and the pixel size.
    let (r, g, b, size) = match info.format() {
        VideoFormat::Rgb => (0, 1, 2, 3),
        VideoFormat::Bgr => (2, 1, 0, 3),
        VideoFormat::Rgbx | VideoFormat::Rgba => (0, 1, 2, 4),
        VideoFormat::Bgrx | VideoFormat::Bgra => (2, 1, 0, 4),
        VideoFormat::Xrgb | VideoFormat::Argb => (1, 2, 3, 4),
        VideoFormat::Xbgr | VideoFormat::Abgr => (3, 2, 1, 4),
        other => return Err(FrameError::Format(other.to_str())),
    };
    let buffer = sample.buffer().ok_or(FrameError::NoBuffer)?;
    let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer, info)
        .map_err(|_| FrameError::Unmappable)?;
    let stride = frame.plane_stride()[0] as usize;
    let data = frame.plane_data(0).map_err(FrameError::Plane)?;
    let row_bytes = width as usize * size;
    if stride < row_bytes || data.len() < stride * (height as usize - 1) + row_bytes {
        return Err(FrameError::Short {
            width,
            height,
            bytes: data.len(),
        });
    }
    let mut rgb = Vec::with_capacity(width as usize * height as usize * 3);
    for row in data.chunks(stride).take(height as usize) {
        for px in row[..row_bytes].chunks_exact(size) {
            rgb.extend_from_slice(&[px[r], px[g], px[b]]);
        }
    }
    let bytes = rgb.len();
    RgbImage::from_raw(width, height, rgb).ok_or(FrameError::Short {
        width,
        height,
        bytes,
    })
}
