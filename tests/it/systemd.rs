//! Running under systemd: the unit file verifies, and the daemon speaks sd_notify as
//! specified — READY after the first frame, WATCHDOG only while the pipeline makes
//! progress, STOPPING at SIGTERM — to a notification socket the test owns. A stage that
//! hangs starves the watchdog; a stage that dies ends the daemon with a failure (both
//! through faults of the `test-hooks` feature, which the test command turns on).

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::broker::{retained, Mosquitto};
use crate::common::daemon::write_config_with_source;
use crate::common::images_dir;
use crate::common::process::Daemon;

const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/iscamd.service");
const TEMPLATE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/iscamd@.service");

fn systemd_analyze() -> Option<Command> {
    let found = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok();
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "systemd-analyze is required under CI (apt-get install systemd)"
        );
        eprintln!("systemd-analyze not installed: unit file not checked");
        return None;
    }
    Some(Command::new("systemd-analyze"))
}

#[test]
fn unit_files_verify_and_are_hardened() {
    let Some(_) = systemd_analyze() else { return };
    let dir = tempfile::tempdir().unwrap();
    for (source, name) in [(UNIT, "iscamd.service"), (TEMPLATE, "iscamd@cam1.service")] {
        // verify insists that ExecStart exists: point it at the binary under test.
        let unit = std::fs::read_to_string(source)
            .unwrap()
            .replace("/usr/bin/iscamd", env!("CARGO_BIN_EXE_iscamd"));
        let path = dir.path().join(name);
        std::fs::write(&path, unit).unwrap();
        let verify = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&path)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&verify.stderr).to_string()
            + &String::from_utf8_lossy(&verify.stdout);
        assert!(
            verify.status.success() && said.trim().is_empty(),
            "systemd-analyze verify {name}:\n{said}"
        );
        let exposure = exposure(&path, name);
        eprintln!("systemd-analyze security {name}: exposure {exposure}");
        assert!(
            exposure <= 2.0,
            "{name}: exposure {exposure} (was 1.7): the unit lost hardening"
        );
    }
}

/// `systemd-analyze security`'s overall exposure level of a unit file.
fn exposure(path: &Path, name: &str) -> f64 {
    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=yes"])
        .arg(path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&security.stdout);
    let marker = format!("Overall exposure level for {name}: ");
    text.lines()
        .find_map(|l| l.split(&marker).nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"))
}

/// A config for the looping images source, or for `source` (the body of `[source]`).
fn write_config(dir: &Path, port: u16, source: Option<&str>) -> std::path::PathBuf {
    let images = format!(
        "kind = \"images\"\npath = \"{}\"\nloop = true\nfps = 10",
        images_dir().display()
    );
    let extra =
        "[device]\nid = \"cam-systemd\"\n[cam]\ninterval = \"0s\"\non_class_change = false\n";
    write_config_with_source(dir, port, source.unwrap_or(&images), extra)
}

/// Notifications received, in order, with when they arrived.
struct Notifications {
    socket: UnixDatagram,
    got: Vec<(Instant, String)>,
}

impl Notifications {
    fn bind(path: &Path) -> Self {
        let socket = UnixDatagram::bind(path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        Notifications {
            socket,
            got: Vec::new(),
        }
    }

    /// Collects datagrams for `time`.
    fn collect(&mut self, time: Duration) {
        let end = Instant::now() + time;
        let mut buf = [0u8; 4096];
        while Instant::now() < end {
            if let Ok(n) = self.socket.recv(&mut buf) {
                for line in String::from_utf8_lossy(&buf[..n]).lines() {
                    self.got.push((Instant::now(), line.to_string()));
                }
            }
        }
    }

    fn count_since(&self, since: Instant, what: &str) -> usize {
        self.got
            .iter()
            .filter(|(t, l)| *t >= since && l == what)
            .count()
    }

    fn lines(&self) -> Vec<&str> {
        self.got.iter().map(|(_, l)| l.as_str()).collect()
    }
}

fn start(dir: &Path, broker: &Mosquitto, extra_env: &[(&str, &str)]) -> (Daemon, Notifications) {
    start_with_source(dir, broker, extra_env, None)
}

fn start_with_source(
    dir: &Path,
    broker: &Mosquitto,
    extra_env: &[(&str, &str)],
    source: Option<&str>,
) -> (Daemon, Notifications) {
    let socket_path = dir.join("notify.sock");
    let notifications = Notifications::bind(&socket_path);
    let config = write_config(dir, broker.port, source);
    let socket = socket_path.to_str().unwrap().to_string();
    let mut env = vec![
        ("NOTIFY_SOCKET", socket.as_str()),
        ("WATCHDOG_USEC", "1000000"),
    ];
    env.extend_from_slice(extra_env);
    (Daemon::start_with_env(&config, dir, &env), notifications)
}

#[test]
fn ready_watchdog_and_stopping_arrive_as_specified() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let (mut daemon, mut notes) = start(dir.path(), &broker, &[]);
    notes.collect(Duration::from_secs(8));
    let lines = notes.lines();
    let ready = lines.iter().position(|l| *l == "READY=1");
    let first_ping = lines.iter().position(|l| *l == "WATCHDOG=1");
    assert!(
        ready.is_some() && first_ping.is_some() && ready < first_ping,
        "READY=1 before the first WATCHDOG=1:\n{lines:?}\n{}",
        daemon.log_text()
    );
    // WatchdogSec = 1 s: a ping every 0.5 s once ready.
    let pings = lines.iter().filter(|l| **l == "WATCHDOG=1").count();
    assert!(pings >= 6, "{pings} pings in 8 s:\n{lines:?}");
    let status = lines
        .iter()
        .rev()
        .find(|l| l.starts_with("STATUS="))
        .expect("STATUS lines")
        .to_string();
    assert!(
        status.contains("fps") && status.contains("broker connected"),
        "{status}"
    );

    assert!(daemon.terminate().success(), "{}", daemon.log_text());
    notes.collect(Duration::from_millis(300));
    assert!(notes.lines().contains(&"STOPPING=1"), "{:?}", notes.lines());
    eprintln!("{pings} watchdog pings in 8 s; last {status}");
}

/// An absent camera is the daemon waiting for it, not a failed start: READY arrives,
/// the watchdog keeps being fed (retrying is progress), STATUS says the camera is down.
/// Otherwise systemd would kill and restart it in a loop until the camera appears.
#[test]
fn an_absent_camera_is_ready_and_fed_with_status_saying_so() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let (mut daemon, mut notes) = start_with_source(
        dir.path(),
        &broker,
        &[],
        Some("kind = \"camera\"\ndevice = \"/dev/video-iscamd-absent\"\n"),
    );
    notes.collect(Duration::from_secs(6));
    let lines = notes.lines();
    assert!(
        lines.contains(&"READY=1"),
        "{lines:?}\n{}",
        daemon.log_text()
    );
    let pings = lines.iter().filter(|l| **l == "WATCHDOG=1").count();
    assert!(pings >= 4, "{pings} pings in 6 s:\n{lines:?}");
    let status = lines
        .iter()
        .rev()
        .find(|l| l.starts_with("STATUS="))
        .unwrap();
    assert!(
        status.contains("source down") && status.contains("no such camera"),
        "{status}"
    );
    assert!(daemon.terminate().success(), "{}", daemon.log_text());
}

/// The fault tests need the `test-hooks` feature; under CI its absence is a failure, not a
/// silent skip.
#[test]
#[allow(clippy::assertions_on_constants)] // the constant is the build's feature set
fn fault_hooks_are_compiled_in_under_ci() {
    if std::env::var_os("CI").is_some() {
        assert!(
            cfg!(feature = "test-hooks"),
            "run the tests with --features test-hooks (the README's test command does)"
        );
    }
}

#[test]
#[cfg_attr(not(feature = "test-hooks"), ignore = "needs --features test-hooks")]
fn a_panicking_stage_ends_the_daemon_offline_and_unfed() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let (mut daemon, mut notes) = start(
        dir.path(),
        &broker,
        &[("ISCAMD_TEST_PANIC_INFERENCE_AFTER", "5")],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut panicked_at = None;
    let status = loop {
        notes.collect(Duration::from_millis(100));
        if panicked_at.is_none() && daemon.log_text().contains("panics on purpose") {
            panicked_at = Some(Instant::now());
        }
        if let Some(status) = daemon.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "still running 60 s after start:\n{}",
            daemon.log_text()
        );
    };
    let exited = Instant::now();
    notes.collect(Duration::from_millis(200));
    let log = daemon.log_text();
    let panicked_at = panicked_at.unwrap_or(exited);
    assert!(!status.success(), "exit status {status:?}:\n{log}");
    assert!(
        exited.duration_since(panicked_at) < Duration::from_secs(5),
        "exited {:?} after the panic:\n{log}",
        exited.duration_since(panicked_at)
    );
    assert!(
        log.contains("the inference stage panicked"),
        "the log names the stage:\n{log}"
    );
    // The panic message reaches the log before the panic is reported; pings are judged
    // from the report on, which the log also marks.
    let pings_after = notes.count_since(panicked_at + Duration::from_millis(50), "WATCHDOG=1");
    assert_eq!(
        pings_after,
        0,
        "watchdog fed after the panic:\n{:?}",
        notes.lines()
    );
    assert!(
        notes
            .lines()
            .iter()
            .any(|l| l.starts_with("STATUS=failed: the inference stage")),
        "{:?}",
        notes.lines()
    );
    assert_eq!(
        retained(broker.port, "iscamd/cam-systemd/availability").as_deref(),
        Some("offline"),
        "{log}"
    );
}

#[test]
#[cfg_attr(not(feature = "test-hooks"), ignore = "needs --features test-hooks")]
fn a_hung_inference_thread_starves_the_watchdog() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let (mut daemon, mut notes) = start(
        dir.path(),
        &broker,
        &[("ISCAMD_TEST_HANG_INFERENCE_AFTER", "5")],
    );
    notes.collect(Duration::from_secs(4));
    assert!(
        notes.lines().contains(&"READY=1"),
        "{:?}\n{}",
        notes.lines(),
        daemon.log_text()
    );
    assert!(
        daemon.log_text().contains("hanging the inference thread"),
        "{}",
        daemon.log_text()
    );
    // Give the stall one ping interval to be noticed, then expect silence.
    notes.collect(Duration::from_secs(1));
    let quiet_from = Instant::now();
    notes.collect(Duration::from_secs(3));
    let pings = notes.count_since(quiet_from, "WATCHDOG=1");
    assert_eq!(
        pings,
        0,
        "watchdog fed while inference hangs:\n{:?}",
        notes.lines()
    );
    assert!(
        notes
            .lines()
            .iter()
            .any(|l| l.starts_with("STATUS=stalled: inference")),
        "{:?}",
        notes.lines()
    );
    assert!(daemon.log_text().contains("not feeding the watchdog"));
    daemon.terminate();
}
