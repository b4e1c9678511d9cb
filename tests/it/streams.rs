//! The GStreamer sources against real streams: an RTSP server on loopback (H.264 over TCP
//! and UDP, with and without credentials, killed and restarted) and video files encoded
//! from the shared images, through `iscamd run`, `check` and `explain --every`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::broker::{Mosquitto, Observer, Received};
use crate::common::daemon::{topic, wait_for_log, write_config_with_source};
use crate::common::process::Daemon;
use crate::common::streams::{cpu_by_thread, cpu_time, encode_video, frames, RtspServer, Serve};

/// Two images SqueezeNet is sure of, and their classes.
const PANDA: (&str, u64) = ("n02510455_giant_panda", 388);
const MACAW: (&str, u64) = ("n01818515_macaw", 88);

fn iscamd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_iscamd"))
}

/// A daemon config: `[source]` as given, a broker on `port`, stats every second.
fn config(dir: &Path, port: u16, source: &str) -> std::path::PathBuf {
    write_config_with_source(dir, port, source, "")
}

fn top1(m: &Received) -> u64 {
    m.json()["top"][0]["index"].as_u64().unwrap()
}

/// The top-1 classes of `predictions` with repeats collapsed: `[388, 88, 388]`.
fn runs(predictions: &[Received]) -> Vec<u64> {
    let mut runs: Vec<u64> = Vec::new();
    for class in predictions.iter().map(top1) {
        if runs.last() != Some(&class) {
            runs.push(class);
        }
    }
    runs
}

/// Frames of each image in `panda_then_macaw`.
const FRAMES_EACH: usize = 10;
/// The frames `panda_then_macaw` writes.
const CLIP_FRAMES: u64 = 2 * FRAMES_EACH as u64;

/// Panda for 2 s, macaw for 2 s, looped, at 5 fps.
fn panda_then_macaw(dir: &Path) -> std::path::PathBuf {
    frames(dir, &[(PANDA.0, FRAMES_EACH), (MACAW.0, FRAMES_EACH)])
}

fn last_stats(observer: &Observer) -> serde_json::Value {
    observer
        .on(&topic("stats"))
        .last()
        .map(Received::json)
        .unwrap_or_default()
}

#[test]
fn rtsp_predictions_follow_the_stream_over_tcp_and_udp() {
    let dir = tempfile::tempdir().unwrap();
    let login = ("viewer".to_string(), "s3cret-pw".to_string());
    let frames = panda_then_macaw(dir.path());
    std::fs::write(dir.path().join("camera.credentials"), "viewer:s3cret-pw\n").unwrap();
    for (transport, size) in [
        ("tcp", (640, 480)),
        ("udp", (640, 480)),
        ("tcp", (1280, 720)),
    ] {
        let server = RtspServer::start(
            &frames,
            Serve {
                fps: 5,
                size: Some(size),
                login: Some(login.clone()),
            },
        );
        let broker = Mosquitto::start();
        let observer = Observer::connect(broker.port, "iscamd/#");
        let run_dir = tempfile::tempdir().unwrap();
        let source = format!(
            "kind = \"rtsp\"\nurl = \"{}\"\ntransport = \"{transport}\"\ncredentials = \"{}\"\nfps = 10",
            server.url(),
            dir.path().join("camera.credentials").display()
        );
        let daemon = Daemon::start(
            &config(run_dir.path(), broker.port, &source),
            run_dir.path(),
        );
        let wanted = [PANDA.1, MACAW.1];
        let predictions = observer.wait_for(
            &topic("prediction"),
            Duration::from_secs(60),
            "panda, macaw and panda again",
            |m| {
                runs(m).windows(3).any(|w| {
                    w[0] == w[2] && w[0] != w[1] && wanted.contains(&w[0]) && wanted.contains(&w[1])
                })
            },
        );
        let seen = runs(&predictions);
        // H.264 at 640x480 keeps both images recognisable: no third class in between.
        assert!(
            seen.iter().all(|c| wanted.contains(c)),
            "{transport}: classes {seen:?}"
        );
        let stats = observer.wait_for(
            &topic("stats"),
            Duration::from_secs(10),
            "stats with latency",
            |m| {
                m.last()
                    .is_some_and(|s| s.json()["latency_ms"]["capture_to_publish_p50"].is_number())
            },
        );
        let stats = stats.last().unwrap().json();
        let source = &stats["source"];
        assert_eq!(source["ok"], true, "{stats}");
        let mode = format!("RGB {}x{}", size.0, size.1);
        assert!(
            source["mode"].as_str().unwrap().starts_with(&mode),
            "{stats}"
        );
        let p50 = stats["latency_ms"]["capture_to_publish_p50"]
            .as_f64()
            .unwrap();
        let p95 = stats["latency_ms"]["capture_to_publish_p95"]
            .as_f64()
            .unwrap();
        assert!(p50 > 0.0 && p95 >= p50, "{stats}");
        let log = daemon.log_text();
        assert!(
            !log.contains("s3cret-pw"),
            "the password is in the log:\n{log}"
        );
        assert!(!stats.to_string().contains("s3cret-pw"));
        println!(
            "{transport} {}x{}: {} predictions, classes {seen:?}, capture→publish p50 {p50:.0} ms p95 {p95:.0} ms, stream {}",
            size.0,
            size.1,
            predictions.len(),
            source["mode"]
        );
    }
}

#[test]
fn an_rtsp_outage_is_survived_without_a_busy_loop() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = RtspServer::start(
        &panda_then_macaw(dir.path()),
        Serve {
            fps: 5,
            ..Serve::default()
        },
    );
    let broker = Mosquitto::start();
    let observer = Observer::connect(broker.port, "iscamd/#");
    // No scheduled heatmap: the daemon's CPU time during the outage is the source's alone.
    let source = format!(
        "kind = \"rtsp\"\nurl = \"{}\"\nstall_timeout = \"3s\"\n[cam]\ninterval = \"0s\"",
        server.url()
    );
    let daemon = Daemon::start(&config(dir.path(), broker.port, &source), dir.path());
    observer.wait_for(
        &topic("prediction"),
        Duration::from_secs(60),
        "predictions",
        |m| m.len() >= 5,
    );

    server.stop();
    let down = Instant::now();
    let cpu_before = cpu_time(daemon.child.id());
    let threads_before = cpu_by_thread(daemon.child.id());
    let stats = observer.wait_for(&topic("stats"), Duration::from_secs(15), "ok=false", |m| {
        m.last().is_some_and(|s| s.json()["source"]["ok"] == false)
    });
    println!(
        "the loss was reported after {:.1} s: {}",
        down.elapsed().as_secs_f64(),
        stats.last().unwrap().json()["source"]
    );
    std::thread::sleep(Duration::from_secs(10).saturating_sub(down.elapsed()));
    let outage_cpu = cpu_time(daemon.child.id()) - cpu_before;
    let busy_threads: Vec<String> = cpu_by_thread(daemon.child.id())
        .into_iter()
        .map(|(name, cpu)| {
            (
                name.clone(),
                cpu.saturating_sub(threads_before.get(&name).copied().unwrap_or_default()),
            )
        })
        .filter(|(_, cpu)| !cpu.is_zero())
        .map(|(name, cpu)| format!("{name} {:.2} s", cpu.as_secs_f64()))
        .collect();
    let outage = down.elapsed();
    let predictions_before = observer.on(&topic("prediction")).len();
    server.resume();

    let stats = observer.wait_for(
        &topic("stats"),
        Duration::from_secs(60),
        "ok=true again, restarted",
        |m| {
            m.last().is_some_and(|s| {
                s.json()["source"]["ok"] == true
                    && s.json()["source"]["restarts"].as_u64() >= Some(1)
            })
        },
    );
    observer.wait_for(
        &topic("prediction"),
        Duration::from_secs(30),
        "predictions resume",
        |m| m.len() >= predictions_before + 5,
    );
    let log = daemon.log_text();
    assert!(log.contains("retrying in"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    assert!(
        observer
            .on(&topic("availability"))
            .iter()
            .all(|m| m.text() == "online"),
        "the daemon went offline"
    );
    // Waiting with backoff: a busy loop would burn a whole core for the outage.
    let share = outage_cpu.as_secs_f64() / outage.as_secs_f64();
    println!(
        "outage of {:.1} s: {:.2} s CPU ({:.1} % of a core; {busy_threads:?}); recovered: {}",
        outage.as_secs_f64(),
        outage_cpu.as_secs_f64(),
        share * 100.0,
        stats.last().unwrap().json()["source"]
    );
    assert!(
        share < 0.25,
        "{:.0} % of a core while the stream was down; by thread: {busy_threads:?}\n{log}",
        share * 100.0
    );
}

/// `iscamd check` with `[source]`: its output and status.
fn check(dir: &Path, source: &str) -> (bool, String) {
    let config = config(dir, 1, source);
    let out = iscamd()
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = stdout
        .lines()
        .find(|l| l.contains("source:"))
        .unwrap_or_default()
        .to_string();
    (line.starts_with("ok"), line)
}

#[test]
fn broken_streams_get_one_clear_line_each_and_the_daemon_retries() {
    let dir = tempfile::tempdir().unwrap();
    let server = RtspServer::start(
        &panda_then_macaw(dir.path()),
        Serve {
            fps: 5,
            login: Some(("viewer".into(), "right".into())),
            ..Serve::default()
        },
    );
    std::fs::write(dir.path().join("wrong.credentials"), "viewer:wrong-pw\n").unwrap();
    std::fs::write(dir.path().join("right.credentials"), "viewer:right\n").unwrap();
    let closed = crate::common::broker::free_port();
    let not_a_video = dir.path().join("notes.mp4");
    let noise: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
    std::fs::write(&not_a_video, noise).unwrap();
    let cases = [
        (
            "a typo",
            "kind = \"gstreamer\"\npipeline = \"videotestsrcc ! videoconvert\"".to_string(),
            "no element \"videotestsrcc\"",
        ),
        (
            "a closed port",
            format!("kind = \"rtsp\"\nurl = \"rtsp://127.0.0.1:{closed}/cam\""),
            "Failed to connect",
        ),
        (
            "wrong credentials",
            format!(
                "kind = \"rtsp\"\nurl = \"{}\"\ncredentials = \"{}\"",
                server.url(),
                dir.path().join("wrong.credentials").display()
            ),
            "Unauthorized",
        ),
        (
            "not a video",
            format!("kind = \"video\"\npath = \"{}\"", not_a_video.display()),
            "not a video",
        ),
    ];
    for (what, source, expected) in &cases {
        let (ok, line) = check(dir.path(), source);
        println!("{what}: {line}");
        assert!(!ok && line.contains(expected), "{what}: {line}");
        assert!(!line.contains("wrong-pw"), "{line}");
    }
    let (ok, line) = check(
        dir.path(),
        &format!(
            "kind = \"rtsp\"\nurl = \"{}\"\ncredentials = \"{}\"",
            server.url(),
            dir.path().join("right.credentials").display()
        ),
    );
    assert!(ok && line.contains("RGB 640x480"), "{line}");

    // The daemon refuses a pipeline that cannot parse at start (exit 2) …
    let broker = Mosquitto::start();
    let out = iscamd()
        .args(["run", "--config"])
        .arg(config(dir.path(), broker.port, &cases[0].1))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no element \"videotestsrcc\""), "{stderr}");
    // … and keeps retrying a camera it cannot reach, online, with backoff.
    let observer = Observer::connect(broker.port, "iscamd/#");
    let run_dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(
        &config(run_dir.path(), broker.port, &cases[2].1),
        run_dir.path(),
    );
    observer.wait_for(
        &topic("availability"),
        Duration::from_secs(30),
        "online",
        |m| m.iter().any(|m| m.text() == "online"),
    );
    let log = wait_for_log(&daemon, "retrying in 1.0 s", Duration::from_secs(20));
    assert!(
        log.contains("Unauthorized") && !log.contains("wrong-pw"),
        "{log}"
    );
}

#[test]
fn a_video_file_runs_through_the_daemon_and_explain_every() {
    let dir = tempfile::tempdir().unwrap();
    let frames = panda_then_macaw(dir.path());
    for name in ["clip.mp4", "clip.avi"] {
        let video = dir.path().join(name);
        encode_video(&frames, 5, &video);
        let out_dir = dir.path().join(format!("out-{name}"));
        let out = iscamd()
            .args(["explain", "--every", "1s", "--format", "json", "--out"])
            .arg(&out_dir)
            .arg(&video)
            .env(
                "ISCAMD_MODEL",
                crate::common::model_path(crate::common::F32_MODEL),
            )
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let classes: Vec<u64> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["class"]["index"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        // 4 s of video, a map every second: panda at 0 and 1 s, macaw at 2 and 3 s.
        assert_eq!(classes, [PANDA.1, PANDA.1, MACAW.1, MACAW.1], "{name}");
        assert!(out_dir.join("clip.t2000ms.heatmap.png").is_file());
    }

    let broker = Mosquitto::start();
    let observer = Observer::connect(broker.port, "iscamd/#");
    let source = format!(
        "kind = \"video\"\npath = \"{}\"\nloop = false\nfps = 10",
        dir.path().join("clip.mp4").display()
    );
    let daemon = Daemon::start(&config(dir.path(), broker.port, &source), dir.path());
    wait_for_log(&daemon, "no more frames", Duration::from_secs(60));
    // The latest frame wins, so a loaded machine drops some frames, never the last.
    let predictions = observer.wait_for(
        &topic("prediction"),
        Duration::from_secs(30),
        "the prediction of the clip's last frame",
        |m| m.last().is_some_and(|p| p.json()["frame"] == CLIP_FRAMES),
    );
    assert_eq!(
        runs(&predictions),
        [PANDA.1, MACAW.1],
        "played once, in order"
    );
    let stats = last_stats(&observer);
    assert!(stats.is_object());
}
