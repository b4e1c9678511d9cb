use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use iscamd::config::Config;
use iscamd::daemon::{Cause, Reload};
use iscamd::model::{BatchPlan, Classifier};
use iscamd::source::config::SourceKind;

use super::ModelArgs;

#[derive(Args, Debug)]
pub struct RunArgs {
    /// TOML config file (docs/configuration.md). Without it, every key has its default.
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Use image files (a file or directory, looped) as the camera: sets [source] kind = "images".
    #[arg(long, value_name = "PATH")]
    pub images: Option<PathBuf>,
    /// Frames per second taken from the source ([source] fps).
    #[arg(long)]
    pub fps: Option<f64>,
    /// MQTT broker host ([mqtt] host).
    #[arg(long, value_name = "HOST")]
    pub mqtt_host: Option<String>,
    /// MQTT broker port ([mqtt] port).
    #[arg(long, value_name = "PORT")]
    pub mqtt_port: Option<u16>,
    /// Device id used in topics ([device] id; default: the host name).
    #[arg(long, value_name = "ID")]
    pub device_id: Option<String>,
    /// Time between scheduled heatmaps, e.g. "10s" ([cam] interval; "0s" = off).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub heatmap_interval: Option<Duration>,
    /// ONNX model ([model] path).
    #[arg(long, env = "ISCAMD_MODEL", value_name = "PATH")]
    pub model: Option<PathBuf>,
    /// Remove this device from Home Assistant and the broker (empties its retained
    /// discovery, availability, run and heatmap image topics), then exit. Stop the daemon first.
    #[arg(long)]
    pub remove_discovery: bool,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// TOML config file to check.
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

impl RunArgs {
    fn config(&self) -> Result<Config> {
        let mut config = match &self.config {
            Some(p) => Config::load(p)?,
            None => Config::default(),
        };
        if let Some(p) = &self.images {
            config.source.kind = SourceKind::Images;
            config.source.path = Some(p.clone());
        }
        if let Some(f) = self.fps {
            config.source.fps = f;
        }
        if let Some(h) = &self.mqtt_host {
            config.mqtt.host = Some(h.clone());
        }
        if self.mqtt_port.is_some() {
            config.mqtt.port = self.mqtt_port;
        }
        if let Some(id) = &self.device_id {
            config.device.id = Some(id.clone());
        }
        if let Some(i) = self.heatmap_interval {
            config.cam.interval = i;
        }
        if let Some(m) = &self.model {
            config.model.path = Some(m.clone());
        }
        config.validate()?;
        Ok(config)
    }
}

/// Loads the model the config names (or the default model).
fn load_model(config: &Config) -> Result<Classifier> {
    let path = match &config.model.path {
        Some(p) => p.clone(),
        None => ModelArgs::default_model_path()?,
    };
    Classifier::load(&config.model.options(path, BatchPlan::Split)).context("cannot load the model")
}

pub fn run(args: RunArgs) -> Result<ExitCode> {
    let config = args.config()?;
    if args.remove_discovery {
        println!("{}", iscamd::publish::remove_discovery(&config)?);
        return Ok(ExitCode::SUCCESS);
    }
    let classifier = load_model(&config)?;
    let reload = args
        .config
        .is_some()
        .then(|| Arc::new(FromFile(args)) as Arc<dyn Reload>);
    iscamd::daemon::run(config, classifier, reload, None)?;
    Ok(ExitCode::SUCCESS)
}

/// A reload reads the config file again, with the same command-line overrides, and the
/// model it names.
struct FromFile(RunArgs);

impl Reload for FromFile {
    fn config(&self) -> std::result::Result<Config, Cause> {
        Ok(self.0.config()?)
    }

    fn model(&self, config: &Config) -> std::result::Result<Classifier, Cause> {
        Ok(load_model(config)?)
    }
}

pub fn check(args: CheckArgs) -> Result<ExitCode> {
    let mut problems = 0;
    let mut report = |what: &str, r: Result<String>| match r {
        Ok(detail) => println!("ok    {what}: {detail}"),
        Err(e) => {
            problems += 1;
            println!("FAIL  {what}: {e:#}");
        }
    };
    let config = match &args.config {
        Some(p) => Config::load(p).map_err(anyhow::Error::from),
        None => Ok(Config::default()),
    };
    let config = match config {
        Ok(c) => {
            report(
                "config",
                Ok(args
                    .config
                    .as_ref()
                    .map_or("defaults".into(), |p| p.display().to_string())),
            );
            c
        }
        Err(e) => {
            report("config", Err(e));
            return Ok(ExitCode::FAILURE);
        }
    };
    let device = config.device_id();
    match load_model(&config) {
        Ok(classifier) => {
            report("model", Ok(describe_model(&classifier)));
            let split = classifier.split(config.model.heatmap_threads());
            report("map passes", Ok(split.to_string()));
        }
        Err(e) => report("model", Err(e)),
    }
    report("source", check_source(&config));
    report("broker", check_broker(&config, &device));
    if problems > 0 {
        println!("{problems} problem(s) found");
        Ok(ExitCode::FAILURE)
    } else {
        Ok(ExitCode::SUCCESS)
    }
}

/// The model as `check` shows it: file, classes, CAM layer and backend (with tract, the
/// op swaps and their counts).
fn describe_model(c: &Classifier) -> String {
    let layer = c
        .cam_layer()
        .map_or("no CAM layer".to_string(), |l| format!("CAM layer {l}"));
    format!(
        "{} ({} classes, {layer}) on {}",
        c.path().display(),
        c.classes(),
        c.backend()
    )
}

/// Opens the source and reads one frame.
fn check_source(config: &Config) -> Result<String> {
    let mut source = iscamd::daemon::open_source(&config.source)?;
    let d = source.describe();
    // A live source starts asynchronously: wait for its first frame or its first failure.
    let deadline = std::time::Instant::now() + config.source.stall_timeout + Duration::from_secs(1);
    let frame = loop {
        match source.next_frame() {
            Ok(frame) => break frame,
            Err(iscamd::Error::SourceUnavailable(waiting)) => {
                let failure = source.health().and_then(|h| h.last_error);
                if let Some(failure) = failure {
                    anyhow::bail!("{d}: {failure}");
                }
                if std::time::Instant::now() > deadline {
                    anyhow::bail!("{d}: {waiting}");
                }
            }
            Err(e) => return Err(e.into()),
        }
    };
    let frame = frame.context("the source gave no frame")?;
    let mode = source
        .health()
        .and_then(|h| h.mode)
        .map(|m| format!(" ({m})"))
        .unwrap_or_default();
    Ok(format!(
        "{d}, first frame {}x{}{mode}",
        frame.width(),
        frame.height()
    ))
}

fn check_broker(config: &Config, device: &str) -> Result<String> {
    let host = config
        .mqtt
        .host
        .as_deref()
        .context("no broker configured ([mqtt] host)")?;
    Ok(iscamd::publish::probe(&config.mqtt, device, host)?)
}
