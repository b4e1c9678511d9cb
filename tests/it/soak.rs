//! Soaks, not part of the default test run (`scripts/soak.sh` runs them):
//!
//! - `soak` (10 minutes): the daemon at a high frame rate with heatmaps every few
//!   seconds, against a broker restarted on a schedule. Checks QoS-1 predictions delivered
//!   without gaps across every restart (at most one duplicate per restart:
//!   at-least-once), RSS growth after warm-up under 5 MiB, no file-descriptor growth.
//! - `live_maps_and_commands` (30 minutes): 20 fps with live maps, a changing scene and a
//!   command every 10 s. RSS sampled every 30 s and reported with its slope; the last 10
//!   minutes must grow less than 2 MiB.
//!
//! ```sh
//! cargo test --release --test it -- --ignored --nocapture soak::soak
//! SOAK_SECONDS=120 SOAK_RESTART_EVERY=30 cargo test --release --test it -- --ignored --nocapture soak::soak
//! ```

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::broker::{Mosquitto, Observer};
use crate::common::daemon::write_config_with_source;
use crate::common::images_dir;
use crate::common::process::Daemon;

fn env_secs(name: &str, default: u64) -> Duration {
    Duration::from_secs(
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default),
    )
}

fn write_config(dir: &Path, port: u16) -> std::path::PathBuf {
    let cam = "interval = \"5s\"\non_class_change = false\nsteps = 2\nchannels = 32\n";
    write_config_with(dir, port, 30, cam)
}

/// A config for the looping images source at `fps`, with these `[cam]` keys.
fn write_config_with(dir: &Path, port: u16, fps: u32, cam: &str) -> std::path::PathBuf {
    let source = format!(
        "kind = \"images\"\npath = \"{}\"\nloop = true\nfps = {fps}",
        images_dir().display()
    );
    let extra = format!(
        "keep_alive = \"5s\"\noutbox = 100000\nstats_interval = \"5s\"\n\
         [mqtt.qos]\nprediction = 1\n[device]\nid = \"soak\"\n[cam]\n{cam}"
    );
    write_config_with_source(dir, port, &source, &extra)
}

/// (RSS bytes, open file descriptors) of a process, from /proc.
fn usage(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    (rss_kib * 1024, fds)
}

#[test]
#[ignore = "10-minute soak: cargo test --release --test it -- --ignored --nocapture soak::soak"]
fn soak() {
    let total = env_secs("SOAK_SECONDS", 600);
    let restart_every = env_secs("SOAK_RESTART_EVERY", 120);
    let warm_up = (total / 10).max(Duration::from_secs(10));
    let mut broker = Mosquitto::start();
    let observer = Observer::connect(broker.port, "iscamd/soak/#");
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start(&write_config(dir.path(), broker.port), dir.path());
    let pid = daemon.child.id();

    let start = Instant::now();
    let mut next_restart = start + restart_every;
    let mut restarts = 0;
    let mut outage = Duration::ZERO;
    let mut samples: Vec<(Duration, u64, usize)> = Vec::new();
    while start.elapsed() < total {
        std::thread::sleep(Duration::from_secs(1));
        assert!(
            daemon.child.try_wait().unwrap().is_none(),
            "iscamd exited during the soak:\n{}",
            daemon.log_text()
        );
        let (rss, fds) = usage(pid);
        samples.push((start.elapsed(), rss, fds));
        if Instant::now() >= next_restart && start.elapsed() + Duration::from_secs(20) < total {
            let down = Instant::now();
            broker.stop();
            std::thread::sleep(Duration::from_secs(3));
            broker.restart();
            outage += down.elapsed();
            restarts += 1;
            next_restart += restart_every;
        }
    }
    // Let the outbox drain, then stop.
    std::thread::sleep(Duration::from_secs(10));
    assert!(daemon.terminate().success(), "{}", daemon.log_text());
    std::thread::sleep(Duration::from_secs(2));

    let seqs: Vec<u64> = observer
        .on("iscamd/soak/prediction")
        .iter()
        .map(|m| m.json()["seq"].as_u64().unwrap())
        .collect();
    let mut sorted = seqs.clone();
    sorted.sort_unstable();
    sorted.dedup();
    let duplicates = seqs.len() - sorted.len();
    let last = sorted.last().copied().unwrap_or(0);
    let missing = last as usize - sorted.len();
    let heatmaps = observer.on("iscamd/soak/heatmap").len();
    let after_warm_up: Vec<&(Duration, u64, usize)> =
        samples.iter().filter(|s| s.0 >= warm_up).collect();
    let (first, final_) = (after_warm_up[0], samples.last().unwrap());
    let rss_growth = final_.1 as f64 - first.1 as f64;
    let peak = samples.iter().map(|s| s.1).max().unwrap();
    println!(
        "soak: {:?}, {restarts} broker restarts ({:.1} s of outage in all)",
        total,
        outage.as_secs_f64()
    );
    println!(
        "predictions: {} received, seq 1..{last}, {missing} missing, {duplicates} duplicated ({:.1} per second); heatmaps: {heatmaps}",
        seqs.len(),
        seqs.len() as f64 / total.as_secs_f64()
    );
    println!(
        "RSS after warm-up ({:?}): {:.1} MiB → {:.1} MiB at the end ({:+.2} MiB), peak {:.1} MiB; fds {} → {}",
        warm_up,
        first.1 as f64 / 1048576.0,
        final_.1 as f64 / 1048576.0,
        rss_growth / 1048576.0,
        peak as f64 / 1048576.0,
        first.2,
        final_.2
    );
    assert!(
        restarts >= 1,
        "the soak must restart the broker at least once"
    );
    // QoS 1 is at-least-once: a broker stopped between receiving a message and
    // acknowledging it gets it again after the restart. Consumers deduplicate by `seq`.
    assert_eq!(missing, 0, "QoS-1 predictions lost");
    assert!(
        duplicates <= restarts,
        "{duplicates} duplicates for {restarts} restarts"
    );
    assert!(
        rss_growth < 5.0 * 1048576.0,
        "RSS grew by {rss_growth} bytes"
    );
    assert!(
        final_.2 <= first.2,
        "file descriptors leaked: {} → {}",
        first.2,
        final_.2
    );
    assert!(
        heatmaps as f64 >= total.as_secs_f64() / 20.0,
        "{heatmaps} heatmaps"
    );
}

/// Least-squares slope of `(seconds, bytes)` samples, in MiB per hour.
fn slope_mib_per_hour(samples: &[(f64, u64)]) -> f64 {
    let n = samples.len() as f64;
    let (mx, my) = samples
        .iter()
        .fold((0.0, 0.0), |(x, y), s| (x + s.0 / n, y + s.1 as f64 / n));
    let (sxy, sxx) = samples.iter().fold((0.0, 0.0), |(xy, xx), s| {
        let dx = s.0 - mx;
        (xy + dx * (s.1 as f64 - my), xx + dx * dx)
    });
    if sxx == 0.0 {
        return 0.0;
    }
    sxy / sxx * 3600.0 / 1048576.0
}

/// Commands a subscriber might send, one every 10 s in turn: maps on request, schedule
/// changes, a republish, refusals.
const COMMANDS: [&str; 6] = [
    r#"{"id":"x","cmd":"explain"}"#,
    r#"{"id":"s","cmd":"set","interval":"20s"}"#,
    r#"{"id":"r","cmd":"republish"}"#,
    r#"{"id":"b","cmd":"explain","method":"sscam","steps":1000,"channels":0}"#,
    r#"{"id":"c","cmd":"explain","class":7,"method":"scorecam:k=16"}"#,
    r#"{"id":"t","cmd":"set","interval":"30s"}"#,
];

#[test]
#[ignore = "30-minute soak: scripts/soak.sh"]
fn live_maps_and_commands() {
    let total = env_secs("SOAK_SECONDS", 1800);
    let every = Duration::from_secs(30);
    let tail = (total / 3).min(Duration::from_secs(600));
    let broker = Mosquitto::start();
    let observer = Observer::connect(broker.port, "iscamd/soak/#");
    let dir = tempfile::tempdir().unwrap();
    let cam = "interval = \"30s\"\non_class_change = true\nlive = true\nlive_max_age = \"1m\"\n";
    let config = write_config_with(dir.path(), broker.port, 20, cam);
    let mut daemon = Daemon::start(&config, dir.path());
    let pid = daemon.child.id();
    let start = Instant::now();
    let mut samples: Vec<(f64, u64)> = Vec::new();
    let mut sent = 0;
    while start.elapsed() < total {
        std::thread::sleep(Duration::from_secs(10));
        assert!(
            daemon.child.try_wait().unwrap().is_none(),
            "iscamd exited during the soak:\n{}",
            daemon.log_text()
        );
        observer.publish("iscamd/soak/cmd", COMMANDS[sent % COMMANDS.len()]);
        sent += 1;
        let t = start.elapsed();
        if t.as_secs() % every.as_secs() < 10 {
            let rss = usage(pid).0;
            println!(
                "{:>6.0} s  RSS {:.1} MiB",
                t.as_secs_f64(),
                rss as f64 / 1048576.0
            );
            samples.push((t.as_secs_f64(), rss));
        }
    }
    assert!(daemon.terminate().success(), "{}", daemon.log_text());
    let predictions = observer.on("iscamd/soak/prediction").len();
    let heatmaps = observer.on("iscamd/soak/heatmap");
    let live = heatmaps
        .iter()
        .filter(|m| m.json()["fresh"] == false)
        .count();
    let results = observer.on("iscamd/soak/cmd/result").len();
    let tail_start = total.as_secs_f64() - tail.as_secs_f64();
    let last: Vec<(f64, u64)> = samples
        .iter()
        .copied()
        .filter(|s| s.0 >= tail_start)
        .collect();
    // RSS moves by ±10 MiB with the frames and maps in flight: the growth is the fitted
    // line's, not the difference of two samples.
    let tail_slope = slope_mib_per_hour(&last);
    let growth = tail_slope * tail.as_secs_f64() / 3600.0;
    println!(
        "soak {total:?}: {predictions} predictions ({:.1}/s), {} heatmaps ({live} live), \
         {sent} commands, {results} results",
        predictions as f64 / total.as_secs_f64(),
        heatmaps.len()
    );
    println!(
        "RSS slope: {:+.2} MiB/h over the run, {tail_slope:+.2} MiB/h over the last {tail:?}, \
         which grew {growth:+.2} MiB",
        slope_mib_per_hour(&samples),
    );
    assert!(live > 0, "live maps were published");
    assert!(results + 2 >= sent, "{results} results for {sent} commands");
    assert!(
        growth < 2.0,
        "RSS grew {growth:.2} MiB in the last {tail:?}"
    );
}
