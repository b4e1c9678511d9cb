//! Streams for the GStreamer source's tests, made with real GStreamer: an RTSP server on
//! loopback (gst-rtsp-server, in its own process so that it can be killed like a camera
//! that reboots) and video files encoded from the shared images.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::broker::free_port;
use super::image;

/// Lays out `segments` as numbered frames in `dir`: `(image stem, frames)` in order.
pub fn frames(dir: &Path, segments: &[(&str, usize)]) -> PathBuf {
    let frames = dir.join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    let mut n = 0;
    for (stem, count) in segments {
        for _ in 0..*count {
            std::os::unix::fs::symlink(image(stem), frames.join(format!("{n:05}.jpg"))).unwrap();
            n += 1;
        }
    }
    frames
}

/// How the server encodes and guards its stream.
#[derive(Clone, Default)]
pub struct Serve {
    pub fps: u32,
    pub size: Option<(u32, u32)>,
    pub login: Option<(String, String)>,
}

/// `tests/support/rtsp_server.py` serving `rtsp://127.0.0.1:PORT/cam`. Killed on drop.
pub struct RtspServer {
    child: Option<Child>,
    pub port: u16,
    frames: PathBuf,
    serve: Serve,
}

impl RtspServer {
    pub fn start(frames: &Path, serve: Serve) -> Self {
        let mut server = RtspServer {
            child: None,
            port: free_port(),
            frames: frames.to_owned(),
            serve,
        };
        server.resume();
        server
    }

    pub fn url(&self) -> String {
        format!("rtsp://127.0.0.1:{}/cam", self.port)
    }

    /// Kills the server, as a camera that loses power.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port; returns once it listens.
    pub fn resume(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/rtsp_server.py");
        let mut command = Command::new("/usr/bin/python3");
        command
            .arg(script)
            .arg(self.port.to_string())
            .arg(&self.frames)
            .args(["--fps", &self.serve.fps.max(1).to_string()]);
        if let Some((w, h)) = self.serve.size {
            command.args(["--size", &format!("{w}x{h}")]);
        }
        if let Some((user, password)) = &self.serve.login {
            command.args(["--user", user, "--password", password]);
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("tests/support/rtsp_server.py starts (scripts/setup.sh installs python3-gi)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "READY", "the RTSP server did not start");
        self.child = Some(child);
    }
}

impl Drop for RtspServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Encodes the frames in `frames` (at `fps`) into `out` with GStreamer's own encoders:
/// `.mp4` as H.264, `.avi` as MJPEG.
pub fn encode_video(frames: &Path, fps: u32, out: &Path) {
    let encoder = match out.extension().and_then(|e| e.to_str()) {
        Some("mp4") => "x264enc speed-preset=ultrafast key-int-max=5 ! h264parse ! mp4mux",
        Some("avi") => "jpegenc ! avimux",
        other => panic!("no encoder for {other:?}"),
    };
    let pipeline = format!(
        "multifilesrc location={}/%05d.jpg loop=false caps=image/jpeg,framerate={fps}/1 ! jpegdec \
         ! videoconvert ! videoscale ! video/x-raw,width=640,height=480,format=I420,pixel-aspect-ratio=1/1 \
         ! {encoder} ! filesink location={}",
        frames.display(),
        out.display()
    );
    let status = Command::new("gst-launch-1.0")
        .arg("-q")
        .arg("-e")
        .args(pipeline.split_whitespace())
        .status()
        .expect("gst-launch-1.0 runs (scripts/setup.sh installs gstreamer1.0-tools)");
    assert!(status.success(), "gst-launch-1.0 {pipeline}");
}

/// CPU time (user + system) the process has used, from /proc.
pub fn cpu_time(pid: u32) -> Duration {
    stat_cpu(&format!("/proc/{pid}/stat"))
        .expect("the process runs")
        .1
}

/// CPU time by thread name (threads of one name summed), from /proc: what names the thread
/// that spent it when a process uses more than it should.
pub fn cpu_by_thread(pid: u32) -> std::collections::BTreeMap<String, Duration> {
    let mut threads = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return threads;
    };
    for task in tasks.flatten() {
        // A thread may end between the listing and the read.
        if let Some((name, cpu)) = stat_cpu(&format!("{}/stat", task.path().display())) {
            *threads.entry(name).or_default() += cpu;
        }
    }
    threads
}

/// The command name and the user + system CPU time of a /proc `stat` file.
fn stat_cpu(path: &str) -> Option<(String, Duration)> {
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name is in parentheses and may hold spaces.
    let (head, rest) = stat.rsplit_once(')')?;
    let name = head.split_once('(')?.1.to_string();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some((name, Duration::from_millis(ticks * 10)))
}
