//! Where frames come from: image files and directories of them (`classify`, `explain`,
//! the daemon's `images` source), a test pattern, and cameras.

pub mod camera;
pub mod config;
mod decode;
mod files;
mod frames;
mod retry;
mod stills;
#[cfg(feature = "gstreamer")]
pub mod stream;

pub use camera::CameraSource;
pub use decode::{decode_file_bytes, decode_image, decode_image_bytes, limits};
pub use files::{expand_inputs, is_image_path};
pub use frames::{Frame, FrameSource, ImageFiles, Pacer, Pattern};
pub use retry::{Backoff, Reconnect, SourceHealth};
pub use stills::{is_video_path, stills, Still};
