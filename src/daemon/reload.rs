//! Reloading without a restart: SIGHUP or `{"cmd":"reload"}` reads the config file and
//! the model again. What changed decides what is rebuilt: `[cam]`, `[events]` or the model
//! swap the pipeline between two frames; `[source]` reopens the source; `[mqtt]`, `[device]` or
//! `[homeassistant]` restart the stages with a new connection. A config or model that
//! does not load is refused and the daemon runs on unchanged.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use super::pipeline::Pipeline;
use crate::config::Config;
use crate::model::Classifier;
use crate::source::FrameSource;

/// Why the config or the model did not load, with its causes.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

/// Reads what the daemon runs from where it came: the config file (with the command
/// line's overrides) and the model it names.
pub trait Reload: Send + Sync {
    fn config(&self) -> Result<Config, Cause>;
    fn model(&self, config: &Config) -> Result<Classifier, Cause>;
}

/// Why a reload was refused: the daemon runs on unchanged.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("nothing to reload: the daemon was started without a config file")]
    NoConfigFile,
    /// The config file or the model does not load.
    #[error(transparent)]
    Load(Cause),
    /// The new config does not make a pipeline or a source.
    #[error(transparent)]
    Invalid(#[from] crate::Error),
    #[error(
        "{0} changed: its endpoint is set up once, at start; restart the daemon to apply this"
    )]
    Endpoint(&'static str),
    #[error("{0} changed, and the embedded broker cannot change its settings while it runs: restart the daemon to apply this")]
    EmbeddedBroker(String),
    #[error("the reload failed")]
    Task(#[source] tokio::task::JoinError),
}

/// Who asked for a reload, and so who hears the result.
#[derive(Debug)]
pub enum ReloadRequest {
    Signal,
    /// A command, answered on `cmd/result` with its id.
    Command(Option<String>),
}

/// Reload requests that may wait; more are refused as busy.
pub const RELOAD_QUEUE: usize = 1;

/// What the running daemon was built from, to tell what a reload changes.
#[derive(Clone)]
pub struct Running {
    /// As the file said, before the embedded broker filled in its port.
    pub config: Config,
    pub model: ModelFile,
}

/// A model file as loaded: a new file at the same path is a change.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelFile {
    path: PathBuf,
    len: u64,
    modified: Option<SystemTime>,
}

impl ModelFile {
    pub fn of(path: &Path) -> ModelFile {
        let meta = std::fs::metadata(path).ok();
        ModelFile {
            path: path.to_owned(),
            len: meta.as_ref().map_or(0, |m| m.len()),
            modified: meta.and_then(|m| m.modified().ok()),
        }
    }
}

/// What a reload does.
pub enum Change {
    Nothing,
    /// Swap in a new pipeline and/or source; the connection stays.
    Swap {
        running: Box<Running>,
        pipeline: Option<Box<Pipeline>>,
        source: Option<Box<dyn FrameSource>>,
        what: Vec<&'static str>,
    },
    /// Restart the stages: the connection's settings changed.
    Restart {
        running: Box<Running>,
        classifier: Arc<Classifier>,
        what: Vec<&'static str>,
    },
}

/// Reads the config and, when it changed, the model; checks them as a start would.
pub fn prepare(
    running: &Running,
    reload: &dyn Reload,
    current: &Pipeline,
    embedded_broker: bool,
) -> Result<Change, ReloadError> {
    let config = reload.config().map_err(ReloadError::Load)?;
    let old = &running.config;
    let model_changed =
        config.model != old.model || ModelFile::of(&running.model.path) != running.model;
    let mut what = Vec::new();
    for (changed, section) in [
        (config.device != old.device, "[device]"),
        (config.mqtt != old.mqtt, "[mqtt]"),
        (config.homeassistant != old.homeassistant, "[homeassistant]"),
        (config.source != old.source, "[source]"),
        (model_changed, "the model"),
        (config.cam != old.cam, "[cam]"),
        (config.events != old.events, "[events]"),
    ] {
        if changed {
            what.push(section);
        }
    }
    if config.metrics != old.metrics {
        return Err(ReloadError::Endpoint("[metrics]"));
    }
    if config.web != old.web {
        return Err(ReloadError::Endpoint("[web]"));
    }
    if what.is_empty() {
        return Ok(Change::Nothing);
    }
    let connection: Vec<_> = what
        .iter()
        .copied()
        .filter(|section| matches!(*section, "[device]" | "[mqtt]"))
        .collect();
    let reconnect = !connection.is_empty();
    if embedded_broker && reconnect {
        return Err(ReloadError::EmbeddedBroker(connection.join(" and ")));
    }
    let classifier = match model_changed {
        true => Arc::new(reload.model(&config).map_err(ReloadError::Load)?),
        false => current.classifier.clone(),
    };
    let pipeline = Pipeline::new(&config, classifier.clone())?;
    // Discovery also follows `[events]` and `[source] fps`: when what it announces changes,
    // the stages restart to announce it.
    let rediscover = config.discovery() != old.discovery();
    let running = Box::new(Running {
        model: ModelFile::of(classifier.path()),
        config,
    });
    if reconnect || rediscover {
        return Ok(Change::Restart {
            running,
            classifier,
            what,
        });
    }
    let source = match what.contains(&"[source]") {
        true => Some(super::open_source(&running.config.source)?),
        false => None,
    };
    let swap = model_changed || what.contains(&"[cam]") || what.contains(&"[events]");
    let pipeline = swap.then(|| Box::new(pipeline));
    Ok(Change::Swap {
        running,
        pipeline,
        source,
        what,
    })
}
