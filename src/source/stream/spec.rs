//! What a stream source builds, from `[source]`: a pipeline description in
//! `gst-launch-1.0` syntax that ends in iscamd's appsink, and the properties set on its
//! named elements after parsing — so that URLs, paths and passwords need no quoting and
//! never appear in the description, the logs or `stats`.

use std::path::Path;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::source::config::{SourceConfig, SourceKind, Transport};

/// The name of iscamd's appsink, and of the source element whose properties it sets.
pub const SINK: &str = "iscamd";
pub const SRC: &str = "iscamd_src";

/// A property value set after parsing.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Str(String),
    U32(u32),
    /// A flags or enum property, in GStreamer's string form (`"tcp"`).
    Parsed(&'static str),
}

#[derive(Clone, Debug)]
pub struct StreamSpec {
    pub description: String,
    /// `(property, value)` for the element named `SRC`.
    pub properties: Vec<(&'static str, Value)>,
    /// Names the stream in logs: the URL without credentials, the file or the pipeline.
    pub name: String,
    /// Strings blanked out of every error message (passwords).
    pub secrets: Vec<String>,
    /// What the end of the stream means.
    pub at_end: AtEnd,
    pub stall_timeout: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AtEnd {
    /// A live stream that ends has failed: restart it.
    Restart,
    /// A video file played once: the source is done.
    Finish,
    /// A video file played in a loop: seek back to the start.
    Loop,
}

impl StreamSpec {
    /// The stream `[source]` describes (kind `rtsp`, `video` or `gstreamer`).
    pub fn from_config(s: &SourceConfig) -> Result<Self> {
        let suffix = |sync: bool| appsink_suffix(s.fps, sync);
        let mut spec = match s.kind {
            SourceKind::Rtsp => rtsp(s, &suffix(false))?,
            SourceKind::Video => {
                let path = s.path.as_deref().ok_or_else(|| {
                    Error::invalid("source.path", "required for kind = \"video\"")
                })?;
                // A recording plays at its own rate, as the camera did.
                video(path, &suffix(true), s.loop_)
            }
            SourceKind::Gstreamer => {
                let pipeline = s.pipeline.as_deref().ok_or_else(|| {
                    Error::invalid("source.pipeline", "required for kind = \"gstreamer\"")
                })?;
                custom(pipeline, &suffix(false))
            }
            other => {
                return Err(Error::invalid(
                    "source.kind",
                    format!("\"{}\" is not a stream", other.name()),
                ))
            }
        };
        spec.stall_timeout = s.stall_timeout;
        Ok(spec)
    }

    /// A video file read as fast as it decodes, for `classify`/`explain` on a video: every
    /// frame reaches the appsink (none dropped), in order.
    pub fn offline_video(path: &Path) -> Self {
        let mut spec = video(
            path,
            &format!(
                "videoconvert ! video/x-raw,format=RGB ! appsink name={SINK} sync=false max-buffers=2"
            ),
            false,
        );
        spec.stall_timeout = Duration::from_secs(30);
        spec
    }

    /// `text` with every secret blanked.
    pub fn redact(&self, text: &str) -> String {
        self.secrets
            .iter()
            .filter(|s| !s.is_empty())
            .fold(text.to_string(), |t, s| t.replace(s.as_str(), "***"))
    }
}

/// iscamd's end of every pipeline: at most `fps` frames a second are converted to RGB,
/// and the newest one wins.
fn appsink_suffix(fps: f64, sync: bool) -> String {
    let max_rate = fps.ceil().max(1.0) as u32;
    format!(
        "videorate drop-only=true max-rate={max_rate} ! videoconvert ! video/x-raw,format=RGB \
         ! appsink name={SINK} drop=true max-buffers=1 sync={sync}"
    )
}

fn rtsp(s: &SourceConfig, suffix: &str) -> Result<StreamSpec> {
    let url = s.url.as_deref().unwrap_or_default();
    let (location, in_url) = split_credentials(url);
    let credentials = match &s.credentials {
        Some(path) => Some(read_credentials(path)?),
        None => in_url,
    };
    let mut properties = vec![
        ("location", Value::Str(location.clone())),
        (
            "protocols",
            Value::Parsed(match s.transport {
                Transport::Tcp => "tcp",
                Transport::Udp => "udp",
                Transport::Auto => "udp+tcp",
            }),
        ),
        (
            "latency",
            Value::U32(s.latency.as_millis().min(60_000) as u32),
        ),
    ];
    let mut secrets = Vec::new();
    if let Some((user, password)) = credentials {
        properties.push(("user-id", Value::Str(user)));
        properties.push(("user-pw", Value::Str(password.clone())));
        secrets.push(password);
    }
    Ok(StreamSpec {
        // Only the video stream: an audio track would find nothing to link to.
        description: format!(
            "rtspsrc name={SRC} ! application/x-rtp,media=video ! decodebin ! {suffix}"
        ),
        properties,
        name: location,
        secrets,
        at_end: AtEnd::Restart,
        stall_timeout: Duration::ZERO,
    })
}

fn video(path: &Path, suffix: &str, looping: bool) -> StreamSpec {
    StreamSpec {
        description: format!("filesrc name={SRC} ! decodebin ! {suffix}"),
        properties: vec![("location", Value::Str(path.display().to_string()))],
        name: path.display().to_string(),
        secrets: Vec::new(),
        at_end: if looping { AtEnd::Loop } else { AtEnd::Finish },
        stall_timeout: Duration::ZERO,
    }
}

fn custom(pipeline: &str, suffix: &str) -> StreamSpec {
    let pipeline = pipeline.trim().trim_end_matches('!').trim();
    // A pipeline with an appsink of its own is used as it is.
    let description = if pipeline.contains("appsink") {
        pipeline.to_string()
    } else {
        format!("{pipeline} ! {suffix}")
    };
    StreamSpec {
        description,
        properties: Vec::new(),
        name: format!("pipeline `{pipeline}`"),
        secrets: Vec::new(),
        at_end: AtEnd::Restart,
        stall_timeout: Duration::ZERO,
    }
}

/// The URL without `user:password@`, and the credentials it held (percent-decoded).
fn split_credentials(url: &str) -> (String, Option<(String, String)>) {
    let Some((scheme, rest)) = url.split_once("://") else {
        return (url.to_string(), None);
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return (url.to_string(), None);
    };
    let (user, password) = rest[..at].split_once(':').unwrap_or((&rest[..at], ""));
    (
        format!("{scheme}://{}", &rest[at + 1..]),
        Some((percent_decode(user), percent_decode(password))),
    )
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `user:password` from the first line of `path`.
fn read_credentials(path: &Path) -> Result<(String, String)> {
    let text = crate::file::read_text(path, "source.credentials", 4096)?;
    let line = text.lines().next().unwrap_or_default().trim_end();
    match line.split_once(':') {
        Some((user, password)) if !user.is_empty() => Ok((user.to_string(), password.to_string())),
        _ => Err(Error::input(
            path,
            "expected `user:password` on the first line (source.credentials)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(kind: SourceKind) -> SourceConfig {
        SourceConfig {
            kind,
            ..SourceConfig::default()
        }
    }

    #[test]
    fn credentials_in_the_url_are_moved_out_of_it() {
        let (url, creds) = split_credentials("rtsp://admin:p%40ss:w@10.0.0.5:554/stream1");
        assert_eq!(url, "rtsp://10.0.0.5:554/stream1");
        assert_eq!(creds, Some(("admin".into(), "p@ss:w".into())));
        let (url, creds) = split_credentials("rtsp://cam.local/a@b");
        assert_eq!((url.as_str(), creds), ("rtsp://cam.local/a@b", None));
    }

    #[test]
    fn an_rtsp_spec_keeps_the_password_out_of_its_description_and_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cam.credentials");
        std::fs::write(&file, "viewer:s3cret\n").unwrap();
        let mut s = config(SourceKind::Rtsp);
        s.url = Some("rtsp://old:leaked@127.0.0.1:8554/cam".into());
        s.credentials = Some(file);
        s.transport = Transport::Udp;
        let spec = StreamSpec::from_config(&s).unwrap();
        assert_eq!(spec.name, "rtsp://127.0.0.1:8554/cam");
        assert!(!spec.description.contains("s3cret") && !spec.description.contains("leaked"));
        assert!(spec
            .properties
            .contains(&("user-pw", Value::Str("s3cret".into()))));
        assert!(spec
            .properties
            .contains(&("protocols", Value::Parsed("udp"))));
        assert_eq!(
            spec.redact("auth for viewer:s3cret failed"),
            "auth for viewer:*** failed"
        );
        assert_eq!(spec.at_end, AtEnd::Restart);
        assert_eq!(spec.stall_timeout, Duration::from_secs(5));
    }

    #[test]
    fn a_credentials_file_without_a_colon_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad");
        std::fs::write(&file, "just-a-password\n").unwrap();
        let mut s = config(SourceKind::Rtsp);
        s.url = Some("rtsp://127.0.0.1/cam".into());
        s.credentials = Some(file);
        let e = StreamSpec::from_config(&s).unwrap_err().to_string();
        assert!(e.contains("user:password"), "{e}");
    }

    #[test]
    fn a_pipeline_gets_iscamds_appsink_unless_it_has_one() {
        let mut s = config(SourceKind::Gstreamer);
        s.pipeline = Some("videotestsrc ! ".into());
        let spec = StreamSpec::from_config(&s).unwrap();
        assert!(
            spec.description.starts_with("videotestsrc ! videorate"),
            "{}",
            spec.description
        );
        assert!(spec
            .description
            .ends_with("appsink name=iscamd drop=true max-buffers=1 sync=false"));
        s.pipeline = Some("videotestsrc ! videoconvert ! appsink name=mine".into());
        let spec = StreamSpec::from_config(&s).unwrap();
        assert_eq!(
            spec.description,
            "videotestsrc ! videoconvert ! appsink name=mine"
        );
    }

    #[test]
    fn a_video_file_plays_at_its_own_rate_and_loops_if_asked() {
        let mut s = config(SourceKind::Video);
        s.path = Some("clip.mp4".into());
        let spec = StreamSpec::from_config(&s).unwrap();
        assert!(spec.description.contains("sync=true"));
        assert_eq!(spec.at_end, AtEnd::Loop);
        s.loop_ = false;
        assert_eq!(StreamSpec::from_config(&s).unwrap().at_end, AtEnd::Finish);
    }
}
