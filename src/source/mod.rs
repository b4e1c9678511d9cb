//! Where frames come from. For now: image files and directories of them
//! (`classify`, `explain`); the daemon's camera and test-pattern sources join here.

mod files;
mod frames;

pub use files::{decode_image, decode_image_bytes, expand_inputs, is_image_path};
pub use frames::{Frame, FrameSource, ImageFiles, Pacer, Pattern};
