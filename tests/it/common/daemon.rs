//! A daemon on a real mosquitto, set up the same way by every test that runs one.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::broker::{Mosquitto, Observer};
use super::process::Daemon;
use super::{images_dir, model_path, F32_MODEL};

pub const DEVICE: &str = "cam7";
pub const BASE: &str = "iscamd/cam7";

pub fn topic(t: &str) -> String {
    format!("{BASE}/{t}")
}

/// A config for the images source at `fps` against `port`, with `extra` laid over it
/// (see [`config_text`]).
pub fn write_config(dir: &Path, port: u16, fps: u32, extra: &str) -> PathBuf {
    write_config_with_source(dir, port, &images_at(fps), extra)
}

/// The body of `[source]` for the shared images at `fps`.
pub fn images_at(fps: u32) -> String {
    format!(
        "kind = \"images\"\npath = \"{}\"\nfps = {fps}",
        images_dir().display()
    )
}

/// [`write_config`] with `model` in place of the shared f32 model and the images source
/// reading `images` (a file or a directory) at 5 frames a second.
pub fn write_config_for(
    dir: &Path,
    port: u16,
    model: &Path,
    images: &Path,
    extra: &str,
) -> PathBuf {
    let config = write_config(dir, port, 5, extra);
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace(
            &model_path(F32_MODEL).display().to_string(),
            &model.display().to_string(),
        )
        .replace(
            &images_dir().display().to_string(),
            &images.display().to_string(),
        );
    std::fs::write(&config, text).unwrap();
    config
}

/// Asks the daemon to reload its config (SIGHUP).
pub fn hup(daemon: &crate::common::process::Daemon) {
    let sent = std::process::Command::new("kill")
        .args(["-HUP", &daemon.child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}

/// A config with `source` as the body of `[source]`, against `port`; `extra` as above.
pub fn write_config_with_source(dir: &Path, port: u16, source: &str, extra: &str) -> PathBuf {
    let path = dir.join("iscamd.toml");
    std::fs::write(&path, config_text(port, source, extra)).unwrap();
    path
}

/// The config every daemon test starts from — device `cam7`, `source` as the body of
/// `[source]`, the f32 model, a broker on `port`, every prediction published, stats each
/// second — with `extra` laid over it. `extra` is TOML whose leading keys belong to
/// `[mqtt]`; its keys replace the base's, its tables merge into the base's, except
/// `[source]`, which replaces the base's whole.
pub fn config_text(port: u16, source: &str, extra: &str) -> String {
    let base = format!(
        r#"
[device]
id = "{DEVICE}"
shutdown_timeout = "3s"

[source]
{source}

[model]
path = "{model}"

[mqtt]
host = "127.0.0.1"
port = {port}
stats_interval = "1s"
prediction_policy = "every"
heatmap_image_width = 200
keep_alive = "2s"
"#,
        model = model_path(F32_MODEL).display(),
    );
    let mut config: toml::Table = base.parse().expect("the base config");
    let extra: toml::Table = format!("[mqtt]\n{extra}")
        .parse()
        .unwrap_or_else(|e| panic!("extra config {extra:?}: {e}"));
    for (key, value) in extra {
        match (config.get_mut(&key), value) {
            (Some(toml::Value::Table(base)), toml::Value::Table(over)) if key != "source" => {
                base.extend(over)
            }
            (_, value) => {
                config.insert(key, value);
            }
        }
    }
    toml::to_string(&config).unwrap()
}

/// A broker, an observer of `filter` on it, and the daemon running on it.
/// Destructure it with every field bound (`broker: _broker`, `_dir`): a field left to `..` would
/// be dropped at once, and with it the broker or the daemon's directory.
pub struct Setup {
    pub broker: Mosquitto,
    pub observer: Observer,
    pub daemon: Daemon,
    pub _dir: tempfile::TempDir,
}

pub fn setup(filter: &str, fps: u32, extra: &str) -> Setup {
    let broker = Mosquitto::start();
    let observer = Observer::connect(broker.port, filter);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), broker.port, fps, extra);
    let daemon = Daemon::start(&config, dir.path());
    Setup {
        broker,
        observer,
        daemon,
        _dir: dir,
    }
}

/// Waits for the daemon's first prediction: it is up, the model loaded.
pub fn first_prediction(observer: &Observer) {
    observer.wait_for(
        &topic("prediction"),
        Duration::from_secs(30),
        "a prediction",
        |m| !m.is_empty(),
    );
}

/// A raw client that may publish up to MQTT's largest packet (256 MiB).
pub fn big_publisher(port: u16) -> (rumqttc::Client, std::thread::JoinHandle<()>) {
    let mut options = rumqttc::MqttOptions::new(
        format!("big-{}", super::broker::free_port()),
        "127.0.0.1",
        port,
    );
    options.set_max_packet_size(300 << 20, 300 << 20);
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut connection) = rumqttc::Client::new(options, 1024);
    let pump = std::thread::spawn(move || {
        for event in connection.iter() {
            match event {
                Ok(rumqttc::Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    });
    (client, pump)
}

pub fn wait_for_log(daemon: &Daemon, needle: &str, timeout: Duration) -> String {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let log = daemon.log_text();
        if log.contains(needle) {
            return log;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {needle:?} in the log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
