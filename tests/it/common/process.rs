//! The `iscamd run` process a daemon test starts: its stderr kept in a file, stopped
//! with SIGTERM or killed when the test ends.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `iscamd run`, its stderr kept in a file.
pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
}

impl Daemon {
    pub fn start(config: &Path, dir: &Path) -> Self {
        Self::start_with_env(config, dir, &[])
    }

    pub fn start_with_env(config: &Path, dir: &Path, env: &[(&str, &str)]) -> Self {
        let log = dir.join("iscamd.log");
        let child = Command::new(env!("CARGO_BIN_EXE_iscamd"))
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "iscamd=debug")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Daemon { child, log }
    }

    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        self.wait_for_exit(Duration::from_secs(20), "of SIGTERM")
    }

    /// Waits for the process to end; fails the test `within` after `what`.
    pub fn wait_for_exit(&mut self, within: Duration, what: &str) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "iscamd did not stop within {within:?} {what}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
