//! The camera source: a [`CameraDevice`] (V4L2 through nokhwa, feature `camera`) opened
//! with a negotiated mode, read frame by frame, and reopened with backoff when it goes
//! away — absent at start, unplugged, or failing reads (some UVC cameras return EIO after
//! a while). The retry logic knows nothing of V4L2, so it is tested with a scripted device.

mod format;
#[cfg(all(feature = "camera", target_os = "linux"))]
mod v4l;

use image::RgbImage;

pub use format::{decode, negotiate, yuyv_to_rgb, FormatChoice, Mode, PixelFormat, Request};
#[cfg(all(feature = "camera", target_os = "linux"))]
pub use v4l::{list_cameras, CameraInfo, V4lDevice};

use super::frames::FrameSource;
use super::retry::{Backoff, Reconnect, SourceHealth};
use crate::error::{Error, Result};

/// A capture device, as the source needs it.
pub trait CameraDevice: Send {
    /// Opens the device and lists the modes it can stream that we decode.
    fn open(&mut self) -> Result<Vec<Mode>>;
    /// Starts streaming `mode` (one of those `open` listed).
    fn start(&mut self, mode: &Mode) -> Result<()>;
    /// The next raw frame; blocks until the device delivers one.
    fn read(&mut self) -> Result<Vec<u8>>;
    /// Stops streaming and releases the device (the next `open` starts over).
    fn close(&mut self);
    fn describe(&self) -> String;
}

/// Consecutive undecodable frames after which the camera is reopened.
const MAX_BAD_FRAMES: u32 = 10;

struct Streaming {
    mode: Mode,
    bad_frames: u32,
}

/// Frames from a camera, reopened with backoff whenever it fails.
pub struct CameraSource {
    device: Box<dyn CameraDevice>,
    request: Request,
    /// `None` while closed.
    streaming: Option<Streaming>,
    reconnect: Reconnect,
}

impl CameraSource {
    pub fn new(device: Box<dyn CameraDevice>, request: Request) -> Self {
        Self::with_backoff(device, request, Backoff::standard())
    }

    pub fn with_backoff(device: Box<dyn CameraDevice>, request: Request, backoff: Backoff) -> Self {
        let name = format!("camera {}", device.describe());
        CameraSource {
            device,
            request,
            streaming: None,
            reconnect: Reconnect::new(name, backoff),
        }
    }

    pub fn health(&self) -> &SourceHealth {
        self.reconnect.health()
    }

    fn open(&mut self) -> Result<Mode> {
        let modes = self.device.open()?;
        let mode = negotiate(&modes, &self.request)?;
        self.device.start(&mode)?;
        Ok(mode)
    }

    /// Closes the device and schedules the next attempt.
    fn fail(&mut self, what: &str, e: &Error) -> Error {
        self.device.close();
        self.streaming = None;
        self.reconnect.failed(what, e)
    }

    /// Reads and decodes one frame from the open device.
    fn read(&mut self) -> Result<Option<RgbImage>> {
        let raw = match self.device.read() {
            Ok(raw) => raw,
            Err(e) => return Err(self.fail("read failed", &e)),
        };
        let Some(streaming) = self.streaming.as_mut() else {
            return Err(Error::SourceUnavailable("camera closed".into()));
        };
        match decode(&raw, &streaming.mode) {
            Ok(image) => {
                streaming.bad_frames = 0;
                self.reconnect.frame();
                Ok(Some(image))
            }
            Err(e) if streaming.bad_frames + 1 >= MAX_BAD_FRAMES => {
                Err(self.fail(&format!("{MAX_BAD_FRAMES} frames in a row undecodable"), &e))
            }
            Err(e) => {
                streaming.bad_frames += 1;
                self.reconnect.note(format!("bad frame: {e}"));
                Err(Error::input("camera frame", e))
            }
        }
    }
}

impl FrameSource for CameraSource {
    fn next_frame(&mut self) -> Result<Option<RgbImage>> {
        if self.streaming.is_none() {
            self.reconnect.wait_turn()?;
            match self.open() {
                Ok(mode) => {
                    self.reconnect.opened(mode.to_string());
                    self.streaming = Some(Streaming {
                        mode,
                        bad_frames: 0,
                    });
                }
                Err(e) => return Err(self.fail("cannot open", &e)),
            }
        }
        self.read()
    }

    fn describe(&self) -> String {
        format!("camera {}", self.device.describe())
    }

    fn paced_by_device(&self) -> bool {
        true
    }

    fn health(&self) -> Option<SourceHealth> {
        Some(self.reconnect.health().clone())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use super::*;

    /// One scripted step of the fake device.
    #[derive(Clone, Debug)]
    enum Step {
        OpenFails(&'static str),
        Opens,
        Frame,
        BadFrame,
        ReadFails(&'static str),
    }

    /// A device that follows a script and records what was asked of it.
    struct Scripted {
        script: VecDeque<Step>,
        calls: Arc<Mutex<Vec<String>>>,
    }

    impl Scripted {
        fn next(&mut self, call: &str) -> Step {
            self.calls.lock().unwrap().push(call.to_string());
            self.script.pop_front().unwrap_or(Step::Frame)
        }
    }

    const MODE: Mode = Mode {
        format: PixelFormat::Yuyv,
        width: 4,
        height: 2,
        fps: 30,
    };

    impl CameraDevice for Scripted {
        fn open(&mut self) -> Result<Vec<Mode>> {
            match self.next("open") {
                Step::OpenFails(e) => Err(Error::input("/dev/video0", e)),
                _ => Ok(vec![MODE]),
            }
        }
        fn start(&mut self, mode: &Mode) -> Result<()> {
            self.calls.lock().unwrap().push(format!("start {mode}"));
            Ok(())
        }
        fn read(&mut self) -> Result<Vec<u8>> {
            match self.next("read") {
                Step::ReadFails(e) => Err(Error::input("/dev/video0", e)),
                Step::BadFrame => Ok(vec![0; 3]),
                _ => Ok(vec![128; 16]),
            }
        }
        fn close(&mut self) {
            self.calls.lock().unwrap().push("close".into());
        }
        fn describe(&self) -> String {
            "scripted".into()
        }
    }

    fn source(script: Vec<Step>) -> (CameraSource, Arc<Mutex<Vec<String>>>) {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let device = Scripted {
            script: script.into(),
            calls: calls.clone(),
        };
        let request = Request {
            format: FormatChoice::Auto,
            width: 4,
            height: 2,
            fps: 30.0,
        };
        let backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(80));
        (
            CameraSource::with_backoff(Box::new(device), request, backoff),
            calls,
        )
    }

    /// Calls `next_frame` until it gives a frame; returns the errors seen on the way.
    fn until_frame(s: &mut CameraSource) -> Vec<String> {
        let mut errors = Vec::new();
        for _ in 0..100 {
            match s.next_frame() {
                Ok(Some(img)) => {
                    assert_eq!(img.dimensions(), (4, 2));
                    return errors;
                }
                Ok(None) => panic!("a camera never ends"),
                Err(e) => errors.push(e.to_string()),
            }
        }
        panic!("no frame after 100 calls: {errors:?}");
    }

    #[test]
    fn absent_at_start_is_retried_with_growing_waits() {
        use Step::*;
        let (mut s, calls) = source(vec![
            OpenFails("No such device"),
            OpenFails("No such device"),
            OpenFails("No such device"),
            Opens,
            Frame,
        ]);
        let t0 = Instant::now();
        let errors = until_frame(&mut s);
        // Waits of 20 + 40 + 80 ms before the fourth attempt: a backoff, not a busy loop.
        assert!(
            t0.elapsed() >= Duration::from_millis(140),
            "{:?}",
            t0.elapsed()
        );
        assert!(
            errors.iter().all(|e| e.contains("No such device")),
            "{errors:?}"
        );
        assert!(
            errors.len() < 20,
            "{} errors: the source busy-loops",
            errors.len()
        );
        let opens = calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| *c == "open")
            .count();
        assert_eq!(opens, 4);
        let h = s.health();
        assert!(h.ok && h.restarts == 0, "{h:?}");
        assert_eq!(h.mode.as_deref(), Some("yuyv 4x2 @ 30 fps"));
        assert!(h.last_error.as_deref().unwrap().contains("No such device"));
    }

    #[test]
    fn read_errors_reopen_the_camera() {
        use Step::*;
        let (mut s, calls) = source(vec![
            Opens,
            Frame,
            ReadFails("Input/output error (os error 5)"),
            Opens,
            Frame,
        ]);
        until_frame(&mut s);
        let errors = until_frame(&mut s);
        assert!(
            errors[0].contains("read failed") && errors[0].contains("os error 5"),
            "{errors:?}"
        );
        let h = s.health();
        assert!(h.ok, "{h:?}");
        assert_eq!(h.restarts, 1);
        let calls = calls.lock().unwrap().clone();
        assert_eq!(
            calls,
            [
                "open",
                "start yuyv 4x2 @ 30 fps",
                "read",
                "read",
                "close",
                "open",
                "start yuyv 4x2 @ 30 fps",
                "read"
            ]
        );
    }

    #[test]
    fn unplugged_then_replugged() {
        use Step::*;
        let (mut s, _) = source(vec![
            Opens,
            Frame,
            ReadFails("No such device (os error 19)"),
            OpenFails("No such file or directory"),
            OpenFails("No such file or directory"),
            Opens,
            Frame,
        ]);
        until_frame(&mut s);
        until_frame(&mut s);
        assert_eq!(s.health().restarts, 1);
        assert!(s.health().ok);
    }

    #[test]
    fn a_bad_frame_is_skipped_and_many_reopen() {
        use Step::*;
        let (mut s, _) = source(vec![Opens, BadFrame, Frame]);
        let errors = until_frame(&mut s);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(s.health().restarts, 0);

        let mut script = vec![Opens];
        script.extend(std::iter::repeat_n(BadFrame, MAX_BAD_FRAMES as usize));
        script.extend([Opens, Frame]);
        let (mut s, _) = source(script);
        let errors = until_frame(&mut s);
        assert!(errors.last().unwrap().contains("in a row"), "{errors:?}");
        assert_eq!(s.health().restarts, 1);
    }

    #[test]
    fn no_decodable_mode_is_retried_and_reported() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        struct NoModes(Arc<Mutex<Vec<String>>>);
        impl CameraDevice for NoModes {
            fn open(&mut self) -> Result<Vec<Mode>> {
                self.0.lock().unwrap().push("open".into());
                Ok(vec![])
            }
            fn start(&mut self, _: &Mode) -> Result<()> {
                unreachable!("nothing to start")
            }
            fn read(&mut self) -> Result<Vec<u8>> {
                unreachable!("never started")
            }
            fn close(&mut self) {}
            fn describe(&self) -> String {
                "no-modes".into()
            }
        }
        let request = Request {
            format: FormatChoice::Auto,
            width: 640,
            height: 480,
            fps: 5.0,
        };
        let mut s = CameraSource::with_backoff(
            Box::new(NoModes(calls.clone())),
            request,
            Backoff::new(Duration::from_millis(10), Duration::from_millis(10)),
        );
        let e = s.next_frame().unwrap_err().to_string();
        assert!(e.contains("no MJPEG or YUYV"), "{e}");
        assert!(!s.health().ok);
    }
}
