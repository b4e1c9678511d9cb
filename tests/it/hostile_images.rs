//! Small hostile inputs against `iscamd classify` and `explain`: each is one clear error
//! line, the process stays small (peak RSS measured by the kernel for the child), and
//! nothing blocks.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::common::{image, model_path, F32_MODEL};

const MAX_PEAK_RSS_MB: u64 = 300;
/// How much longer than classifying a good image a refused input may take.
const MAX_EXTRA: Duration = Duration::from_secs(2);

struct Run {
    status: ExitStatus,
    stderr: String,
    peak_rss_mb: u64,
    took: Duration,
}

/// Runs iscamd and waits for it with `wait4`, which reports the child's own peak RSS.
#[allow(clippy::zombie_processes)] // reaped by wait4, which std's Child does not know of
fn run(args: &[&str]) -> Run {
    let started = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_iscamd"))
        .args(args)
        .env("ISCAMD_MODEL", model_path(F32_MODEL))
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run iscamd");
    let pid = child.id() as libc::pid_t;
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut child.stderr.unwrap(), &mut text).unwrap();
        text
    });
    let killer = watchdog(pid, Duration::from_secs(60));
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our own child, not yet waited for; status and usage are valid.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid, "wait4: {}", std::io::Error::last_os_error());
    drop(killer);
    Run {
        status: ExitStatus::from_raw(status),
        stderr: stderr.join().unwrap(),
        peak_rss_mb: usage.ru_maxrss as u64 / 1024,
        took: started.elapsed(),
    }
}

/// Kills the child if it is still running after `limit`, so that a hang fails the test
/// instead of stalling it.
fn watchdog(pid: libc::pid_t, limit: Duration) -> std::sync::mpsc::Sender<()> {
    let (done, wait) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if wait.recv_timeout(limit) == Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
            // SAFETY: signalling our own unreaped child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    });
    done
}

/// A 1-bit black PNG of 20000×20000: a few KB that decode to 400 megapixels.
fn bitmap_bomb(path: &Path) {
    let file = std::fs::File::create(path).unwrap();
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), 20_000, 20_000);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::One);
    encoder.set_compression(png::Compression::High);
    let mut writer = encoder.write_header().unwrap();
    let mut stream = writer.stream_writer().unwrap();
    let row = vec![0u8; 20_000 / 8];
    for _ in 0..20_000 {
        std::io::Write::write_all(&mut stream, &row).unwrap();
    }
    stream.finish().unwrap();
}

/// A real JPEG whose frame header claims 65535×65535.
fn huge_jpeg_header(path: &Path) {
    let mut jpeg = std::fs::read(image("n01440764_tench")).unwrap();
    let sof = jpeg
        .windows(2)
        .position(|w| w[0] == 0xFF && (0xC0..=0xC2).contains(&w[1]))
        .unwrap();
    jpeg[sof + 5..sof + 9].copy_from_slice(&[0xFF; 4]);
    std::fs::write(path, jpeg).unwrap();
}

/// The first half of a real JPEG with an end-of-image marker appended.
fn truncated_jpeg_with_end_marker(path: &Path) {
    let jpeg = std::fs::read(image("n01440764_tench")).unwrap();
    let mut cut = jpeg[..jpeg.len() / 2].to_vec();
    cut.extend_from_slice(&[0xFF, 0xD9]);
    std::fs::write(path, cut).unwrap();
}

#[test]
fn hostile_images_are_one_line_errors_in_little_memory_and_time() {
    let dir = tempfile::tempdir().unwrap();
    let at = |name: &str| dir.path().join(name);
    bitmap_bomb(&at("bomb.png"));
    huge_jpeg_header(&at("huge.jpg"));
    truncated_jpeg_with_end_marker(&at("cut.jpg"));
    let fifo = at("fifo.jpg");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let bomb_size = std::fs::metadata(at("bomb.png")).unwrap().len();
    assert!(bomb_size < 100_000, "the bomb is small: {bomb_size} bytes");

    let good = run(&["classify", image("n01440764_tench").to_str().unwrap()]);
    assert!(good.status.success(), "{}", good.stderr);
    let cases: [(PathBuf, &str); 5] = [
        (
            at("bomb.png"),
            "image is 20000×20000: above the 50-megapixel limit",
        ),
        (at("huge.jpg"), "65535"),
        (
            PathBuf::from("/dev/zero"),
            "image must be a regular file, this is a device",
        ),
        (fifo, "image must be a regular file, this is a FIFO"),
        (at("cut.jpg"), "corrupt or truncated JPEG"),
    ];
    for (path, expected) in &cases {
        let path = path.to_str().unwrap();
        let out_dir = dir.path().to_str().unwrap();
        for args in [
            vec!["classify", path],
            vec!["explain", "--out", out_dir, path],
        ] {
            let command = args[0];
            let out = run(&args);
            println!(
                "{command} {path}: exit {:?}, peak RSS {} MB, {:?}",
                out.status.code(),
                out.peak_rss_mb,
                out.took
            );
            assert_eq!(
                out.status.code(),
                Some(1),
                "{command} {path}: {}",
                out.stderr
            );
            let errors: Vec<&str> = out.stderr.lines().filter(|l| l.contains(path)).collect();
            assert_eq!(errors.len(), 1, "{command} {path}: {}", out.stderr);
            assert!(
                errors[0].contains(expected),
                "{command} {path}: {}",
                out.stderr
            );
            assert!(
                out.peak_rss_mb < MAX_PEAK_RSS_MB,
                "{command} {path}: peak RSS {} MB",
                out.peak_rss_mb
            );
            assert!(
                out.took < good.took + MAX_EXTRA,
                "{command} {path} took {:?} (a good image {:?})",
                out.took,
                good.took
            );
        }
    }
}
