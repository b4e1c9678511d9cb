//! V4L2 cameras through nokhwa (feature `camera`, Linux). nokhwa enumerates and streams;
//! frames come out raw and are decoded by [`super::decode`].

use std::path::{Path, PathBuf};

use nokhwa::backends::capture::V4LCaptureDevice;
use nokhwa::camera_traits::CaptureBackendTrait;
use nokhwa::pixel_format::RgbFormat;
use nokhwa::utils::{
    ApiBackend, CameraFormat, CameraIndex, FrameFormat, RequestedFormat, RequestedFormatType,
    Resolution,
};

/// nokhwa's V4L2 device itself: `nokhwa::Camera` boxes it as a trait object that is not
/// `Send`, and the capture thread must own it.
type Camera = V4LCaptureDevice<'static>;

use super::{CameraDevice, Mode, PixelFormat};
use crate::error::{Error, Result};

/// A V4L2 device by index (`0` for `/dev/video0`) or path (`/dev/video2`, or a stable
/// `/dev/v4l/by-id/…` link).
pub struct V4lDevice {
    spec: String,
    camera: Option<Camera>,
}

impl V4lDevice {
    pub fn new(spec: &str) -> Self {
        V4lDevice {
            spec: spec.to_string(),
            camera: None,
        }
    }

    fn index(&self) -> Result<u32> {
        device_index(&self.spec)
    }

    fn camera(&mut self) -> Result<&mut Camera> {
        let spec = self.spec.clone();
        self.camera
            .as_mut()
            .ok_or_else(|| Error::input(spec, "camera is not open"))
    }
}

/// The N of `/dev/videoN` that `spec` names: a number, or a path (links are followed).
pub fn device_index(spec: &str) -> Result<u32> {
    if let Ok(n) = spec.parse::<u32>() {
        return Ok(n);
    }
    let path = Path::new(spec);
    let real: PathBuf = path
        .canonicalize()
        .map_err(|e| Error::input(path, format!("no such camera: {e}")))?;
    real.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("video"))
        .and_then(|n| n.parse::<u32>().ok())
        .ok_or_else(|| {
            Error::input(
                path,
                format!("{} is not a /dev/videoN device", real.display()),
            )
        })
}

fn pixel_format(f: FrameFormat) -> Option<PixelFormat> {
    match f {
        FrameFormat::MJPEG => Some(PixelFormat::Mjpeg),
        FrameFormat::YUYV => Some(PixelFormat::Yuyv),
        _ => None,
    }
}

fn camera_error(spec: &str, what: &str, e: impl std::fmt::Display) -> Error {
    Error::input(format!("camera {spec}"), format!("{what}: {e}"))
}

/// Every mode the open camera streams that we decode.
fn modes(camera: &mut Camera, spec: &str) -> Result<Vec<Mode>> {
    let formats = camera
        .compatible_camera_formats()
        .map_err(|e| camera_error(spec, "cannot list formats", e))?;
    let mut modes: Vec<Mode> = formats
        .iter()
        .filter_map(|f| {
            Some(Mode {
                format: pixel_format(f.format())?,
                width: f.width(),
                height: f.height(),
                fps: f.frame_rate(),
            })
        })
        .collect();
    modes.sort_by_key(|m| (m.format, m.width, m.height, m.fps));
    modes.dedup();
    Ok(modes)
}

impl CameraDevice for V4lDevice {
    fn open(&mut self) -> Result<Vec<Mode>> {
        self.close();
        let index = self.index()?;
        let requested = RequestedFormat::new::<RgbFormat>(RequestedFormatType::None);
        let mut camera = Camera::new(&CameraIndex::Index(index), requested)
            .map_err(|e| camera_error(&self.spec, "cannot open", e))?;
        let modes = modes(&mut camera, &self.spec)?;
        self.camera = Some(camera);
        Ok(modes)
    }

    fn start(&mut self, mode: &Mode) -> Result<()> {
        let spec = self.spec.clone();
        let format = match mode.format {
            PixelFormat::Mjpeg => FrameFormat::MJPEG,
            PixelFormat::Yuyv => FrameFormat::YUYV,
        };
        let camera = self.camera()?;
        camera
            .set_camera_format(CameraFormat::new(
                Resolution::new(mode.width, mode.height),
                format,
                mode.fps,
            ))
            .map_err(|e| camera_error(&spec, &format!("cannot set {mode}"), e))?;
        camera
            .open_stream()
            .map_err(|e| camera_error(&spec, "cannot start streaming", e))
    }

    fn read(&mut self) -> Result<Vec<u8>> {
        let spec = self.spec.clone();
        let camera = self.camera()?;
        let raw = camera
            .frame_raw()
            .map_err(|e| camera_error(&spec, "read failed", e))?;
        Ok(raw.into_owned())
    }

    fn close(&mut self) {
        if let Some(mut camera) = self.camera.take() {
            let _ = camera.stop_stream();
        }
    }

    fn describe(&self) -> String {
        match self.spec.parse::<u32>() {
            Ok(n) => format!("/dev/video{n}"),
            Err(_) => self.spec.clone(),
        }
    }
}

/// A camera the system has, with what it streams.
#[derive(Clone, Debug)]
pub struct CameraInfo {
    pub device: String,
    pub name: String,
    /// The modes we decode, or why they could not be read.
    pub modes: std::result::Result<Vec<Mode>, String>,
}

/// The V4L2 capture devices present (an empty list when there are none).
pub fn list_cameras() -> Result<Vec<CameraInfo>> {
    let found = match nokhwa::query(ApiBackend::Video4Linux) {
        Ok(found) => found,
        // No /dev/video* at all is "no cameras", not an error.
        Err(e)
            if !Path::new("/dev").read_dir().is_ok_and(|mut d| {
                d.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with("video")))
            }) =>
        {
            tracing::debug!("camera query: {e}");
            Vec::new()
        }
        Err(e) => {
            return Err(Error::input(
                "/dev/video*",
                format!("cannot list cameras: {e}"),
            ))
        }
    };
    Ok(found
        .into_iter()
        .map(|info| {
            let spec = info.index().as_string();
            let mut device = V4lDevice::new(&spec);
            let modes = device.open().map_err(|e| e.to_string());
            device.close();
            CameraInfo {
                device: device.describe(),
                name: info.human_name(),
                modes,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_specs() {
        assert_eq!(device_index("2").unwrap(), 2);
        let dir = tempfile::tempdir().unwrap();
        let video = dir.path().join("video7");
        std::fs::write(&video, "").unwrap();
        let link = dir.path().join("usb-cam-video-index0");
        std::os::unix::fs::symlink(&video, &link).unwrap();
        assert_eq!(device_index(link.to_str().unwrap()).unwrap(), 7);
        let e = device_index("/dev/null").unwrap_err().to_string();
        assert!(e.contains("not a /dev/videoN device"), "{e}");
        let e = device_index("/dev/video-nonexistent")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no such camera"), "{e}");
    }

    /// On a machine without cameras (CI), opening one is a clear error, not a panic.
    #[test]
    fn a_missing_camera_is_a_clear_error() {
        let mut d = V4lDevice::new("/dev/video-nonexistent");
        assert!(d.open().unwrap_err().to_string().contains("no such camera"));
        if !Path::new("/dev/video63").exists() {
            let mut d = V4lDevice::new("63");
            let e = d.open().unwrap_err().to_string();
            assert!(e.contains("camera 63") && e.contains("cannot open"), "{e}");
        }
    }
}
