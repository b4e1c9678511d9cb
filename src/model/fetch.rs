//! Where models live, and getting one there: a download checked against its pinned
//! SHA-256 before it takes its name, so that a failed, cut-short or wrong download never
//! leaves a file the daemon could load.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::annotate::{self, Annotation, Metadata};

/// The model file the daemon runs when the config names none.
pub const DEFAULT_MODEL: &str = "squeezenet1.0.onnx";

/// Where a packaged install keeps its models.
pub const SYSTEM_MODEL_DIR: &str = "/var/lib/iscamd/models";

/// Largest model downloaded (protobuf's own limit).
const MAX_MODEL_BYTES: u64 = 2 << 30;

/// The ONNX model zoo's SqueezeNet 1.0 (opset 8), what `iscamd model fetch` gets.
pub const ZOO_SQUEEZENET_URL: &str = "https://github.com/onnx/models/raw/main/validated/vision/\
classification/squeezenet/model/squeezenet1.0-8.onnx";
pub const ZOO_SQUEEZENET_SHA256: &str =
    "3c0bff2f7c984350d3ffa98e0167dc08c15da88f05d0c31989ebeba6fbb5e025";

/// The folders models are looked for in, in order: `$ISCAMD_MODEL_DIR`, `./models`, and
/// the packaged install's folder.
pub fn model_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(dir) = std::env::var_os("ISCAMD_MODEL_DIR") {
        dirs.push(PathBuf::from(dir));
    }
    dirs.push(PathBuf::from("models"));
    dirs.push(PathBuf::from(SYSTEM_MODEL_DIR));
    dirs
}

/// No model, or no folder for one, where [`model_dirs`] looked.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("no model found (looked for {}): run `iscamd model fetch`, or pass --model PATH", listed(.0))]
    NoModel(Vec<PathBuf>),
    #[error("none of {} exists: pass --dir DIR", listed(.0))]
    NoDir(Vec<PathBuf>),
}

fn listed(paths: &[PathBuf]) -> String {
    let list: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    list.join(", ")
}

/// The default model in the first folder of [`model_dirs`] that has it.
pub fn default_model_path() -> std::result::Result<PathBuf, LookupError> {
    let tried: Vec<PathBuf> = model_dirs().iter().map(|d| d.join(DEFAULT_MODEL)).collect();
    match tried.iter().find(|p| p.is_file()) {
        Some(p) => Ok(p.clone()),
        None => Err(LookupError::NoModel(tried)),
    }
}

/// Where `iscamd model fetch` writes: the first folder of [`model_dirs`] that exists.
pub fn download_dir() -> std::result::Result<PathBuf, LookupError> {
    let dirs = model_dirs();
    match dirs.iter().find(|d| d.is_dir()) {
        Some(d) => Ok(d.clone()),
        None => Err(LookupError::NoDir(dirs)),
    }
}

/// A model to download.
pub struct Download {
    pub url: String,
    /// Lower-case hex.
    pub sha256: String,
    /// Metadata written into the file before it takes its name.
    pub metadata: Metadata,
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url}")]
    Transfer {
        url: String,
        #[source]
        source: TransferError,
    },
    #[error("{url}: checksum mismatch: got sha256 {got}, expected {expected}")]
    Checksum {
        url: String,
        got: String,
        expected: String,
    },
    #[error("{}: {reason}", path.display())]
    Write { path: PathBuf, reason: String },
}

/// Why a download stopped before its checksum could be taken.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("the server answered HTTP {0}")]
    Status(u16),
    #[error("cannot connect")]
    Connect(#[source] std::io::Error),
    #[error(transparent)]
    Http(ureq::Error),
    #[error("{0} bytes is larger than a model can be")]
    TooLarge(u64),
    #[error("transfer cut short after {0} bytes")]
    Interrupted(u64, #[source] std::io::Error),
    #[error("transfer cut short: {got} of {expected} bytes")]
    Short { got: u64, expected: u64 },
    #[error("cannot write the download")]
    Write(#[source] std::io::Error),
}

impl From<ureq::Error> for TransferError {
    fn from(e: ureq::Error) -> Self {
        match e {
            ureq::Error::StatusCode(code) => TransferError::Status(code),
            ureq::Error::Io(io) => TransferError::Connect(io),
            other => TransferError::Http(other),
        }
    }
}

/// Progress of a download: bytes so far, and the size when the server says it.
pub type Progress<'a> = &'a mut dyn FnMut(u64, Option<u64>);

/// Downloads `download` to `dest`, checks its SHA-256 and writes its metadata; only then
/// renames it into place. Returns the metadata the file now has.
pub fn fetch(
    download: &Download,
    dest: &Path,
    progress: Progress,
) -> std::result::Result<Annotation, FetchError> {
    let url = download.url.as_str();
    let transfer = |source| FetchError::Transfer {
        url: url.into(),
        source,
    };
    let write = |e: std::io::Error| FetchError::Write {
        path: dest.into(),
        reason: e.to_string(),
    };
    let dir = dest.parent().filter(|d| !d.as_os_str().is_empty());
    let mut tmp = tempfile::Builder::new()
        .prefix(".iscamd-download-")
        .tempfile_in(dir.unwrap_or(Path::new(".")))
        .map_err(write)?;
    let got = copy_checked(url, tmp.as_file_mut(), progress).map_err(transfer)?;
    if got != download.sha256.to_ascii_lowercase() {
        return Err(FetchError::Checksum {
            url: url.into(),
            got,
            expected: download.sha256.clone(),
        });
    }
    let mut bytes = Vec::new();
    let file = tmp.as_file_mut();
    file.flush().map_err(write)?;
    std::io::Seek::rewind(file).map_err(write)?;
    file.read_to_end(&mut bytes).map_err(write)?;
    let (annotated, annotation) =
        annotate::annotate(&bytes, &download.metadata).map_err(|e| FetchError::Write {
            path: dest.into(),
            reason: format!("the download is {e}"),
        })?;
    drop(tmp);
    annotate::replace_file(dest, &annotated).map_err(|e| FetchError::Write {
        path: dest.into(),
        reason: crate::error::with_causes(&e),
    })?;
    Ok(annotation)
}

/// Streams the body of `url` into `out`; returns its SHA-256 in hex. A body shorter than
/// the announced length is an error, as is one longer than [`MAX_MODEL_BYTES`].
fn copy_checked(
    url: &str,
    out: &mut std::fs::File,
    progress: Progress,
) -> std::result::Result<String, TransferError> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(15)))
        .timeout_recv_response(Some(Duration::from_secs(30)))
        .timeout_recv_body(Some(Duration::from_secs(600)))
        .build()
        .into();
    let mut response = agent.get(url).call()?;
    let announced = response.body().content_length();
    if let Some(n) = announced.filter(|&n| n > MAX_MODEL_BYTES) {
        return Err(TransferError::TooLarge(n));
    }
    let mut body = response
        .body_mut()
        .with_config()
        .limit(MAX_MODEL_BYTES)
        .reader();
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(TransferError::Interrupted(total, e)),
        };
        digest.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(TransferError::Write)?;
        total += n as u64;
        progress(total, announced);
    }
    if let Some(expected) = announced.filter(|&n| n != total) {
        return Err(TransferError::Short {
            got: total,
            expected,
        });
    }
    Ok(hex(digest.finish().as_ref()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
