//! Streams through GStreamer (feature `gstreamer`): RTSP cameras, video files and any
//! pipeline a user writes (Jetson CSI cameras, hardware decoders), each ending in
//! iscamd's appsink. A stream that fails to start, errors, ends or stalls is torn down and
//! started again with backoff, like a camera.

mod frame;
mod spec;

use std::time::{Duration, Instant};

use gst::prelude::*;
use gstreamer as gst;
use gstreamer_app as gst_app;
use image::RgbImage;

pub use spec::{AtEnd, StreamSpec};

use super::frames::FrameSource;
use super::retry::{Backoff, Reconnect, SourceHealth};
use crate::error::{with_causes, Error, Result};

/// Longest one call waits for a sample, so the capture thread stays responsive.
const PULL_WAIT: Duration = Duration::from_millis(200);

/// Initialises GStreamer once; its error says what is missing.
pub fn init() -> Result<()> {
    gst::init().map_err(|e| Error::input("GStreamer", format!("cannot initialise: {e}")))
}

/// Checks that `spec` parses (every element exists, every property is known) without
/// starting it: a typo is a configuration error, found at start.
pub fn validate(spec: &StreamSpec) -> Result<()> {
    init()?;
    Pipeline::build(spec)
        .map(drop)
        .map_err(|e| Error::invalid("source.pipeline", e))
}

/// A running pipeline and its appsink; stopped when dropped.
struct Pipeline {
    pipeline: gst::Pipeline,
    sink: gst_app::AppSink,
    bus: gst::Bus,
    /// When the last frame came (or the pipeline started).
    last_frame: Instant,
    /// Caps of the frames, once the first has come.
    caps: Option<String>,
}

impl Pipeline {
    /// Parses `spec` and sets its properties, without starting it.
    fn build(spec: &StreamSpec) -> std::result::Result<Self, String> {
        let element = gst::parse::launch(&spec.description)
            .map_err(|e| format!("{} ({})", spec.redact(e.message()), spec.name))?;
        let pipeline = element
            .downcast::<gst::Pipeline>()
            .map_err(|_| "a single element is not a pipeline: end it in `! …`".to_string())?;
        if let Some(src) = pipeline.by_name(spec::SRC) {
            for (property, value) in &spec.properties {
                set_property(&src, property, value)?;
            }
        }
        let sink = find_appsink(&pipeline).ok_or("the pipeline has no appsink")?;
        let bus = pipeline.bus().ok_or("the pipeline has no bus")?;
        Ok(Pipeline {
            pipeline,
            sink,
            bus,
            last_frame: Instant::now(),
            caps: None,
        })
    }

    fn start(spec: &StreamSpec) -> std::result::Result<Self, String> {
        let p = Self::build(spec)?;
        if p.pipeline.set_state(gst::State::Playing).is_err() {
            return Err(p
                .next_problem()
                .unwrap_or_else(|| "the pipeline refused to start".into()));
        }
        Ok(p)
    }

    /// The first error on the bus, or the end of the stream, as a message.
    fn next_problem(&self) -> Option<String> {
        let message = self
            .bus
            .pop_filtered(&[gst::MessageType::Error, gst::MessageType::Eos])?;
        Some(match message.view() {
            gst::MessageView::Error(e) => describe_error(e),
            _ => END_OF_STREAM.to_string(),
        })
    }

    fn rewind(&self) -> bool {
        self.pipeline
            .seek_simple(
                gst::SeekFlags::FLUSH | gst::SeekFlags::KEY_UNIT,
                gst::ClockTime::ZERO,
            )
            .is_ok()
    }

    /// How long ago the sample's frame entered the pipeline, by the pipeline's clock.
    fn age(&self, sample: &gst::Sample) -> Option<Duration> {
        let now = self.pipeline.current_running_time()?;
        let segment = sample.segment()?.downcast_ref::<gst::ClockTime>()?;
        let pts = sample.buffer()?.pts()?;
        let then = segment.to_running_time(pts)?;
        let age = Duration::from_nanos(now.checked_sub(then)?.nseconds());
        // A clock that jumped says nothing useful.
        (age < Duration::from_secs(60)).then_some(age)
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

const END_OF_STREAM: &str = "the stream ended";

fn set_property(
    element: &gst::Element,
    property: &str,
    value: &spec::Value,
) -> std::result::Result<(), String> {
    if element.find_property(property).is_none() {
        return Err(format!("{} has no property `{property}`", element.name()));
    }
    match value {
        spec::Value::Str(s) => element.set_property(property, s),
        spec::Value::U32(n) => element.set_property(property, n),
        spec::Value::Parsed(s) => element.set_property_from_str(property, s),
    }
    Ok(())
}

fn find_appsink(pipeline: &gst::Pipeline) -> Option<gst_app::AppSink> {
    if let Some(sink) = pipeline.by_name(spec::SINK) {
        return sink.downcast().ok();
    }
    pipeline
        .iterate_recurse()
        .into_iter()
        .flatten()
        .find_map(|e| e.downcast::<gst_app::AppSink>().ok())
}

/// GStreamer's error as one line: the element, its message and the detail that says why.
fn describe_error(e: &gst::message::Error) -> String {
    // iscamd's own source element by its kind (`rtspsrc`), the user's by their name.
    let element = e
        .src()
        .map(
            |s| match s.downcast_ref::<gst::Element>().and_then(|e| e.factory()) {
                Some(factory) if s.name() == spec::SRC => factory.name().to_string(),
                _ => s.name().to_string(),
            },
        )
        .unwrap_or_else(|| "pipeline".into());
    // The debug text's last line, when it is a sentence and not a source location.
    let detail = e
        .debug()
        .and_then(|d| d.lines().last().map(|l| l.trim().to_string()))
        .filter(|d| !d.is_empty() && !d.ends_with(':') && !d.contains("(): /"));
    let error = e.error();
    let message = error.message().trim_end_matches('.');
    let hint = if error.matches(gst::ResourceError::NotAuthorized) {
        "; check source.credentials"
    } else if error.matches(gst::StreamError::TypeNotFound)
        || error.matches(gst::StreamError::WrongType)
        || error.matches(gst::StreamError::CodecNotFound)
    {
        "; not a video GStreamer can decode here"
    } else {
        ""
    };
    match detail {
        Some(detail) => format!("{element}: {message} ({detail}){hint}"),
        None => format!("{element}: {message}{hint}"),
    }
}

/// Frames from a GStreamer pipeline, restarted with backoff whenever it fails.
pub struct StreamSource {
    spec: StreamSpec,
    running: Option<Pipeline>,
    reconnect: Reconnect,
    /// The last frame's age when it was handed out.
    last_age: Duration,
    finished: bool,
}

impl StreamSource {
    pub fn new(spec: StreamSpec) -> Self {
        let name = format!("stream {}", spec.name);
        StreamSource {
            spec,
            running: None,
            reconnect: Reconnect::new(name, Backoff::standard()),
            last_age: Duration::ZERO,
            finished: false,
        }
    }

    /// Tears the pipeline down and schedules the next attempt.
    fn fail(&mut self, what: &str, problem: &str) -> Error {
        self.running = None;
        let problem = self.spec.redact(problem);
        self.reconnect.failed(what, &problem)
    }

    /// The end of the stream, as the spec wants it handled.
    fn ended(&mut self) -> Result<Option<RgbImage>> {
        match self.spec.at_end {
            AtEnd::Finish => {
                self.running = None;
                self.finished = true;
                Ok(None)
            }
            AtEnd::Loop if self.running.as_ref().is_some_and(Pipeline::rewind) => {
                Err(Error::SourceUnavailable("rewinding".into()))
            }
            _ => Err(self.fail("stopped", END_OF_STREAM)),
        }
    }

    fn pull(&mut self) -> Result<Option<RgbImage>> {
        let Some(p) = self.running.as_mut() else {
            return Err(Error::SourceUnavailable("not running".into()));
        };
        if let Some(problem) = p.next_problem() {
            return if problem == END_OF_STREAM {
                self.ended()
            } else {
                Err(self.fail("failed", &problem))
            };
        }
        let stalled = p.last_frame.elapsed();
        let Some(sample) = p
            .sink
            .try_pull_sample(gst::ClockTime::from_nseconds(PULL_WAIT.as_nanos() as u64))
        else {
            if p.sink.is_eos() {
                return self.ended();
            }
            if stalled > self.spec.stall_timeout {
                let message = format!("no frame for {:.1} s", stalled.as_secs_f64());
                return Err(self.fail("stalled", &message));
            }
            return Err(Error::SourceUnavailable("waiting for a frame".into()));
        };
        let image = frame::video_info(&sample).and_then(|info| {
            if p.caps.is_none() {
                p.caps = Some(frame::describe(&info));
            }
            frame::to_rgb(&sample, &info)
        });
        let image = match image {
            Ok(image) => image,
            Err(e) => return Err(self.fail("unreadable frame", &with_causes(&e))),
        };
        p.last_frame = Instant::now();
        self.last_age = p.age(&sample).unwrap_or_default();
        if let Some(caps) = p.caps.clone().filter(|_| !self.reconnect.is_open()) {
            self.reconnect.opened(caps);
        }
        self.reconnect.frame();
        Ok(Some(image))
    }
}

impl FrameSource for StreamSource {
    fn next_frame(&mut self) -> Result<Option<RgbImage>> {
        if self.finished {
            return Ok(None);
        }
        if self.running.is_none() {
            self.reconnect.wait_turn()?;
            match Pipeline::start(&self.spec) {
                Ok(p) => self.running = Some(p),
                Err(e) => return Err(self.fail("cannot start", &e)),
            }
        }
        self.pull()
    }

    fn describe(&self) -> String {
        format!("stream {}", self.spec.name)
    }

    fn paced_by_device(&self) -> bool {
        true
    }

    fn health(&self) -> Option<SourceHealth> {
        Some(self.reconnect.health().clone())
    }

    fn captured_ago(&self) -> Duration {
        self.last_age
    }
}

/// The frames of a video file at `every` intervals of its timeline, read as fast as they
/// decode (for `classify`/`explain` on a video): `(position, frame)`.
pub struct VideoFrames {
    spec: StreamSpec,
    running: Pipeline,
    every: Duration,
    next_at: Duration,
    done: bool,
}

impl VideoFrames {
    pub fn open(path: &std::path::Path, every: Duration) -> Result<Self> {
        init()?;
        let spec = StreamSpec::offline_video(path);
        let running = Pipeline::start(&spec).map_err(|e| Error::input(path, e))?;
        Ok(VideoFrames {
            spec,
            running,
            every: every.max(Duration::from_millis(1)),
            next_at: Duration::ZERO,
            done: false,
        })
    }

    fn fail(&mut self, problem: String) -> Option<Result<(Duration, RgbImage)>> {
        self.done = true;
        Some(Err(Error::input(
            &self.spec.name,
            self.spec.redact(&problem),
        )))
    }
}

impl Iterator for VideoFrames {
    type Item = Result<(Duration, RgbImage)>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            let timeout = gst::ClockTime::from_nseconds(self.spec.stall_timeout.as_nanos() as u64);
            let Some(sample) = self.running.sink.try_pull_sample(timeout) else {
                if let Some(problem) = self.running.next_problem().filter(|p| p != END_OF_STREAM) {
                    return self.fail(problem);
                }
                if self.running.sink.is_eos() {
                    self.done = true;
                    return None;
                }
                let waited = self.spec.stall_timeout.as_secs_f64();
                return self.fail(format!("no frame decoded in {waited:.0} s"));
            };
            let Some(pts) = sample.buffer().and_then(|b| b.pts()) else {
                continue;
            };
            let at = Duration::from_nanos(pts.nseconds());
            if at + Duration::from_millis(1) < self.next_at {
                continue;
            }
            while self.next_at <= at {
                self.next_at += self.every;
            }
            let image = frame::video_info(&sample).and_then(|info| frame::to_rgb(&sample, &info));
            return match image {
                Ok(image) => Some(Ok((at, image))),
                Err(e) => self.fail(with_causes(&e)),
            };
        }
        None
    }
}
