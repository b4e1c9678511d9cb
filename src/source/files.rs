use std::path::{Path, PathBuf};

use std::io::Cursor;

use image::{ImageFormat, ImageReader, RgbImage};

use crate::error::{Error, Result};

/// File extensions treated as images when a directory is expanded.
const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "bmp", "webp", "tif", "tiff", "gif"];

/// Largest image side accepted: far beyond any camera, small enough that a corrupt
/// header cannot make us allocate tens of gigabytes.
const MAX_SIDE: u32 = 20_000;
/// Most a decoder may allocate: a 48-megapixel photo decodes in a fraction of it. Sides
/// alone do not bound memory: a GIF frame may claim 51968×12439 pixels inside a 24×16
/// screen (found by fuzzing, `tests/data/fuzz-image-decode-oom.gif`).
const MAX_DECODE_BYTES: u64 = 512 << 20;

/// True when the file name ends in an extension we decode.
pub fn is_image_path(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// Expands the command line's `IMAGE|DIR...` into image files: a directory gives its
/// image files (by extension, sorted, not recursive), a file is taken as is.
/// Paths that do not exist or directories that cannot be read come back as errors,
/// in order, so that a run can report them and carry on with the rest.
pub fn expand_inputs(paths: &[PathBuf]) -> Vec<Result<PathBuf>> {
    let mut out = Vec::new();
    for path in paths {
        if path.is_dir() {
            match std::fs::read_dir(path) {
                Ok(entries) => {
                    let mut files: Vec<PathBuf> = entries
                        .filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|p| p.is_file() && is_image_path(p))
                        .collect();
                    files.sort();
                    if files.is_empty() {
                        out.push(Err(Error::input(
                            path,
                            "directory holds no image files (.jpg, .jpeg, .png, …)",
                        )));
                    }
                    out.extend(files.into_iter().map(Ok));
                }
                Err(e) => out.push(Err(Error::input(
                    path,
                    format!("cannot read directory: {e}"),
                ))),
            }
        } else if path.exists() {
            out.push(Ok(path.clone()));
        } else {
            out.push(Err(Error::input(path, "no such file or directory")));
        }
    }
    out
}

/// Decodes an image file of any supported format (detected from its content, not its
/// name) into 8-bit RGB: grayscale is replicated, alpha is dropped, 16-bit is scaled.
/// A JPEG cut short is refused rather than decoded with a grey lower part.
pub fn decode_image(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, "image", e))?;
    decode_image_bytes(&bytes, path)
}

/// Decodes an encoded image held in memory, as [`decode_image`] does a file; `path`
/// only names its origin in errors.
pub fn decode_image_bytes(bytes: &[u8], path: &Path) -> Result<RgbImage> {
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::input(path, format!("cannot read: {e}")))?;
    let format = reader
        .format()
        .ok_or_else(|| Error::input(path, "not an image (unrecognised file format)"))?;
    if format == ImageFormat::Jpeg && !has_jpeg_end_marker(bytes) {
        return Err(Error::input(
            path,
            "cannot decode image: truncated JPEG (no end-of-image marker)",
        ));
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let image = reader
        .decode()
        .map_err(|e| Error::input(path, format!("cannot decode image: {e}")))?;
    Ok(image.into_rgb8())
}

/// The EOI marker `FF D9` near the end; encoders may append a little padding after it.
fn has_jpeg_end_marker(bytes: &[u8]) -> bool {
    let tail = &bytes[bytes.len().saturating_sub(4096)..];
    tail.windows(2).any(|w| w == [0xFF, 0xD9])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by `fuzz/run.sh` (target image_decode): 377 bytes that asked the GIF decoder
    /// for a 2.6 GB frame buffer. Refused now, before allocating.
    #[test]
    fn a_gif_frame_larger_than_its_screen_is_refused() {
        let bytes = include_bytes!("../../tests/data/fuzz-image-decode-oom.gif");
        let e = decode_image_bytes(bytes, Path::new("bomb.gif"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("bomb.gif: cannot decode image"), "{e}");
        assert!(e.to_lowercase().contains("limit"), "{e}");
    }
}
