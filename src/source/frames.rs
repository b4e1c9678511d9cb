//! Live frame sources for the daemon, behind one small trait so that the camera (which
//! needs hardware) and the file/pattern sources (which tests use) are interchangeable.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use image::{Rgb, RgbImage};

use super::decode::decode_image;
use super::files::expand_inputs;
use crate::error::{Error, Result};

/// One captured frame.
#[derive(Clone, Debug)]
pub struct Frame {
    /// Counts frames produced by the source from 1; gaps downstream mean frames dropped.
    pub number: u64,
    pub image: RgbImage,
    pub captured: SystemTime,
}

/// Something that yields frames. `next_frame` may block until the next frame is due.
pub trait FrameSource: Send {
    /// The next frame; `Ok(None)` when the source is exhausted;
    /// [`Error::SourceUnavailable`] while a device is down and being retried.
    fn next_frame(&mut self) -> Result<Option<RgbImage>>;
    /// A short description for logs.
    fn describe(&self) -> String;
    /// True when the device delivers frames at its own rate (a camera): the reader must
    /// keep up rather than pace itself, or it would get stale buffered frames.
    fn paced_by_device(&self) -> bool {
        false
    }
    /// The state of a live source (a camera or a stream), which can go down and come back.
    fn health(&self) -> Option<crate::source::SourceHealth> {
        None
    }
    /// How long before `next_frame` returned it the last frame was captured, where the
    /// source can tell (a stream's clock); the frame is stamped that much earlier.
    fn captured_ago(&self) -> Duration {
        Duration::ZERO
    }
}

/// Image files from a file or directory, in name order, optionally looping. Unreadable
/// files are reported and skipped, never fatal.
pub struct ImageFiles {
    root: PathBuf,
    files: Vec<PathBuf>,
    next: usize,
    looping: bool,
}

impl ImageFiles {
    pub fn open(path: PathBuf, looping: bool) -> Result<Self> {
        let files: Vec<PathBuf> = expand_inputs(std::slice::from_ref(&path))
            .into_iter()
            .collect::<Result<_>>()?;
        Ok(ImageFiles {
            root: path,
            files,
            next: 0,
            looping,
        })
    }
}

impl FrameSource for ImageFiles {
    fn next_frame(&mut self) -> Result<Option<RgbImage>> {
        let mut failures = 0;
        loop {
            if self.next >= self.files.len() {
                if !self.looping {
                    return Ok(None);
                }
                self.next = 0;
            }
            let path = &self.files[self.next];
            self.next += 1;
            match decode_image(path) {
                Ok(image) => return Ok(Some(image)),
                Err(e) => {
                    tracing::warn!("skipping frame: {e}");
                    failures += 1;
                    if failures >= self.files.len() {
                        return Err(Error::input(
                            &self.root,
                            "no file in the source could be decoded",
                        ));
                    }
                }
            }
        }
    }

    fn describe(&self) -> String {
        format!("{} image(s) from {}", self.files.len(), self.root.display())
    }
}

/// A moving colour pattern: frames without a camera or files.
pub struct Pattern {
    width: u32,
    height: u32,
    tick: u32,
}

impl Pattern {
    pub fn new(width: u32, height: u32) -> Self {
        Pattern {
            width,
            height,
            tick: 0,
        }
    }
}

impl FrameSource for Pattern {
    fn next_frame(&mut self) -> Result<Option<RgbImage>> {
        self.tick = self.tick.wrapping_add(1);
        let t = self.tick;
        Ok(Some(RgbImage::from_fn(self.width, self.height, |x, y| {
            Rgb([
                (x.wrapping_add(t * 4)) as u8,
                (y.wrapping_add(t * 2)) as u8,
                ((x ^ y).wrapping_add(t)) as u8,
            ])
        })))
    }

    fn describe(&self) -> String {
        format!("test pattern {}x{}", self.width, self.height)
    }
}

/// Paces a source to `fps`: the time to wait before the next frame is due.
pub struct Pacer {
    period: Duration,
    next_due: std::time::Instant,
}

impl Pacer {
    pub fn new(fps: f64) -> Self {
        Pacer {
            period: Duration::from_secs_f64(1.0 / fps),
            next_due: std::time::Instant::now(),
        }
    }

    /// Sleeps until the next frame is due; a late source does not try to catch up.
    pub fn wait(&mut self) {
        let now = std::time::Instant::now();
        if self.next_due > now {
            std::thread::sleep(self.next_due - now);
        }
        self.next_due = self.next_due.max(now) + self.period;
    }
}
