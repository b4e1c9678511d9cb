//! The still frames of the command line's inputs (`classify`, `explain`, `eval`): each
//! image file, and frames sampled from each video file.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use image::RgbImage;

use super::decode::decode_image;
use super::files::expand_inputs;
use crate::error::Result;

/// File extensions read as videos (through GStreamer).
const VIDEO_EXTENSIONS: &[&str] = &[
    "mp4", "m4v", "mov", "mkv", "webm", "avi", "ogv", "ogg", "ts", "mts", "m2ts", "mpg", "mpeg",
    "flv", "3gp", "h264", "h265", "hevc", "mjpeg", "mjpg",
];

pub fn is_video_path(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| VIDEO_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// One still: an image, or a video's frame at a position of its timeline.
pub struct Still {
    pub path: PathBuf,
    /// The position in the video; `None` for an image.
    pub at: Option<Duration>,
    pub image: RgbImage,
    /// Milliseconds spent decoding it.
    pub decode_ms: f64,
}

impl Still {
    /// Names it in output: the path, and for a video frame its position (`clip.mp4@2.000s`).
    pub fn name(&self) -> PathBuf {
        match self.at {
            None => self.path.clone(),
            Some(at) => {
                let mut name = self.path.clone().into_os_string();
                name.push(format!("@{:.3}s", at.as_secs_f64()));
                name.into()
            }
        }
    }

    /// The stem of its output files: `tench`, or `clip.t2000ms` for a video frame.
    pub fn stem(&self) -> String {
        let stem = self
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "image".into());
        match self.at {
            None => stem,
            Some(at) => format!("{stem}.t{}ms", at.as_millis()),
        }
    }
}

/// The stills of `inputs`: image files and directories of them, one still each; video
/// files, a frame every `every` of their timeline. Errors come back in order, so that a
/// run can report them and carry on.
pub fn stills(inputs: &[PathBuf], every: Duration) -> impl Iterator<Item = Result<Still>> {
    expand_inputs(inputs).into_iter().flat_map(
        move |input| -> Box<dyn Iterator<Item = Result<Still>>> {
            match input {
                Ok(path) if is_video_path(&path) => video_stills(path, every),
                Ok(path) => Box::new(std::iter::once(image_still(path))),
                Err(e) => Box::new(std::iter::once(Err(e))),
            }
        },
    )
}

fn image_still(path: PathBuf) -> Result<Still> {
    let t0 = Instant::now();
    let image = decode_image(&path)?;
    Ok(Still {
        path,
        at: None,
        image,
        decode_ms: t0.elapsed().as_secs_f64() * 1e3,
    })
}

#[cfg(feature = "gstreamer")]
fn video_stills(path: PathBuf, every: Duration) -> Box<dyn Iterator<Item = Result<Still>>> {
    let frames = match super::stream::VideoFrames::open(&path, every) {
        Ok(frames) => frames,
        Err(e) => return Box::new(std::iter::once(Err(e))),
    };
    let mut t0 = Instant::now();
    Box::new(frames.map(move |frame| {
        let (at, image) = frame?;
        let decode_ms = t0.elapsed().as_secs_f64() * 1e3;
        t0 = Instant::now();
        Ok(Still {
            path: path.clone(),
            at: Some(at),
            image,
            decode_ms,
        })
    }))
}

#[cfg(not(feature = "gstreamer"))]
fn video_stills(path: PathBuf, _every: Duration) -> Box<dyn Iterator<Item = Result<Still>>> {
    Box::new(std::iter::once(Err(crate::error::Error::input(
        path,
        "video files need the `gstreamer` feature (on by default); rebuild with it",
    ))))
}
