//! What every frame goes through: the model, the `[cam]` and the `[events]` settings. The stages read the
//! current one from a watch channel, so a reload swaps it between two frames.

use std::sync::Arc;

use tokio::sync::watch;

use crate::cam::config::CamConfig;
use crate::cam::{Budget, CamParams, Method, Selection};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::events::config::EventsConfig;
use crate::model::Classifier;

pub struct Pipeline {
    pub classifier: Arc<Classifier>,
    /// The configured method, for scheduled maps and as the defaults of commands.
    pub params: CamParams,
    pub cam: CamConfig,
    pub events: EventsConfig,
    /// Threads for each full map.
    pub heatmap_threads: usize,
}

/// Where the stages find the current pipeline.
pub type Current = watch::Receiver<Arc<Pipeline>>;

impl Pipeline {
    /// Checks that the configured method fits the model and the budget.
    pub fn new(config: &Config, classifier: Arc<Classifier>) -> Result<Pipeline> {
        let params = config.cam.params()?;
        let layer = classifier.cam_layer().cloned().ok_or_else(|| {
            Error::model(
                classifier.path(),
                "has no CAM layer (set [model] cam_layer)",
            )
        })?;
        params
            .validate(layer.channels, classifier.input_size())
            .map_err(crate::cam::config::cam_key)?;
        config.cam.budget().admit(&params, layer.channels)?;
        if params.method == Method::Cam || params.select == Selection::Contribution {
            // Read at load; refused here so a model without a linear head fails at start.
            classifier.linear_head()?;
        }
        if params.method == Method::Recipro {
            // Built at load, so a tail that cannot be run fails at start, not at the first map.
            classifier.tail()?;
        }
        Ok(Pipeline {
            classifier,
            params,
            cam: config.cam.clone(),
            events: config.events.clone(),
            heatmap_threads: config.model.heatmap_threads(),
        })
    }

    pub fn budget(&self) -> Budget {
        self.cam.budget()
    }

    /// The model's file name, as predictions name it.
    pub fn model_name(&self) -> String {
        self.classifier
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}
