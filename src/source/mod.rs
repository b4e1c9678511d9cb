//! Where frames come from: image files and directories of them (`classify`, `explain`,
//! the daemon's `images` source), a test pattern, and cameras.

pub mod camera;
mod files;
mod frames;

pub use camera::{CameraHealth, CameraSource};
pub use files::{decode_image, decode_image_bytes, expand_inputs, is_image_path};
pub use frames::{Frame, FrameSource, ImageFiles, Pacer, Pattern};
