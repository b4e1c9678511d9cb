use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// File extensions treated as images when a directory is expanded.
const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "bmp", "webp", "tif", "tiff", "gif"];

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
        match std::fs::metadata(path) {
            Ok(meta) if meta.is_dir() => out.extend(images_in(path)),
            Ok(_) => out.push(Ok(path.clone())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                out.push(Err(Error::input(path, "no such file or directory")))
            }
            Err(e) => out.push(Err(Error::input(path, e))),
        }
    }
    out
}

/// The image files of a directory, by extension, sorted; an error if it has none.
fn images_in(dir: &Path) -> Vec<Result<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            return vec![Err(Error::input(
                dir,
                format!("cannot read directory: {e}"),
            ))]
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && is_image_path(p))
        .collect();
    if files.is_empty() {
        let reason = "directory holds no image files (.jpg, .jpeg, .png, …)";
        return vec![Err(Error::input(dir, reason))];
    }
    files.sort();
    files.into_iter().map(Ok).collect()
}
