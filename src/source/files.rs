use std::path::{Path, PathBuf};

use image::{ImageReader, RgbImage};

use crate::error::{Error, Result};

/// File extensions treated as images when a directory is expanded.
const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "bmp", "webp", "tif", "tiff", "gif"];

/// Largest image accepted, in pixels: far beyond any camera, small enough that a
/// corrupt header cannot make us allocate gigabytes.
const MAX_PIXELS: u64 = 20_000 * 20_000;

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
pub fn decode_image(path: &Path) -> Result<RgbImage> {
    let reader = ImageReader::open(path)
        .map_err(|e| Error::input(path, format!("cannot open: {e}")))?
        .with_guessed_format()
        .map_err(|e| Error::input(path, format!("cannot read: {e}")))?;
    if reader.format().is_none() {
        return Err(Error::input(
            path,
            "not an image (unrecognised file format)",
        ));
    }
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| Error::input(path, format!("cannot decode image header: {e}")))?;
    if u64::from(w) * u64::from(h) > MAX_PIXELS {
        return Err(Error::input(
            path,
            format!("image is {w}x{h}, larger than the {MAX_PIXELS}-pixel limit"),
        ));
    }
    let mut reader = ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|e| Error::input(path, format!("cannot open: {e}")))?;
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(MAX_PIXELS * 8);
    reader.limits(limits);
    let image = reader
        .decode()
        .map_err(|e| Error::input(path, format!("cannot decode image: {e}")))?;
    Ok(image.into_rgb8())
}
