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

pub fn video_info(sample: &gst::Sample) -> Result<gst_video::VideoInfo, String> {
    let caps = sample.caps().ok_or("a sample without caps")?;
    gst_video::VideoInfo::from_caps(caps).map_err(|_| format!("not raw video: {caps}"))
}

/// The sample's picture as RGB.
pub fn to_rgb(sample: &gst::Sample, info: &gst_video::VideoInfo) -> Result<RgbImage, String> {
    let (width, height) = (info.width(), info.height());
    if width == 0 || height == 0 || width > MAX_SIDE || height > MAX_SIDE {
        return Err(format!(
            "a {width}x{height} frame (at most {MAX_SIDE} a side)"
        ));
    }
    // Byte offsets of R, G, B and the pixel size.
    let (r, g, b, size) = match info.format() {
        VideoFormat::Rgb => (0, 1, 2, 3),
        VideoFormat::Bgr => (2, 1, 0, 3),
        VideoFormat::Rgbx | VideoFormat::Rgba => (0, 1, 2, 4),
        VideoFormat::Bgrx | VideoFormat::Bgra => (2, 1, 0, 4),
        VideoFormat::Xrgb | VideoFormat::Argb => (1, 2, 3, 4),
        VideoFormat::Xbgr | VideoFormat::Abgr => (3, 2, 1, 4),
        other => {
            return Err(format!(
                "the pipeline's appsink delivers {}; iscamd reads packed RGB/BGR(x) — \
                 end the pipeline in `videoconvert ! video/x-raw,format=RGB ! appsink`",
                other.to_str()
            ))
        }
    };
    let buffer = sample.buffer().ok_or("a sample without a buffer")?;
    let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer, info)
        .map_err(|_| "a frame that cannot be mapped".to_string())?;
    let stride = frame.plane_stride()[0] as usize;
    let data = frame.plane_data(0).map_err(|e| e.to_string())?;
    let row_bytes = width as usize * size;
    if stride < row_bytes || data.len() < stride * (height as usize - 1) + row_bytes {
        return Err(format!(
            "a {width}x{height} frame with {} bytes",
            data.len()
        ));
    }
    let mut rgb = Vec::with_capacity(width as usize * height as usize * 3);
    for row in data.chunks(stride).take(height as usize) {
        for px in row[..row_bytes].chunks_exact(size) {
            rgb.extend_from_slice(&[px[r], px[g], px[b]]);
        }
    }
    RgbImage::from_raw(width, height, rgb).ok_or_else(|| "a short frame".to_string())
}
