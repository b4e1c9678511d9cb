//! `[cam]`: the method of full maps, their schedule, live maps and the cost budget.

use std::time::Duration;

use serde::Deserialize;

use super::{spec, CamParams, Weighting};
use crate::error::{Error, Result};

#[derive(Clone, PartialEq, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CamConfig {
    /// The method spec, parsed when the config is read.
    #[serde(deserialize_with = "spec::deserialize")]
    pub method: CamParams,
    pub steps: Option<usize>,
    pub channels: Option<usize>,
    pub weighting: Weighting,
    pub batch: usize,
    pub seed: u64,
    /// SS-CAM's noise σ; unset: the spec's (default 2).
    pub sigma: Option<f32>,
    /// Score masked inputs at this side instead of the model's input size (cheaper).
    pub score_size: Option<usize>,
    /// Time between scheduled heatmaps; "0s" turns the schedule off.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Explain when the top-1 class changes.
    pub on_class_change: bool,
    /// Class-change triggers fire only at or above this top-1 probability.
    pub min_confidence: f64,
    /// Publish a live map for every frame between full maps, from the last full map's
    /// channel weights and the frame's own activations (one forward pass per map).
    pub live: bool,
    /// Live maps stop, and a full map is made, once the weights are this old.
    #[serde(with = "humantime_serde")]
    pub live_max_age: Duration,
    /// Live maps stop, and a full map is made, once the frame's channel content drifts
    /// this far (1 − cosine of per-channel mean activations) from the full map's frame.
    pub live_max_drift: f64,
    /// Most masked passes one map may run; requests above it are refused.
    pub max_passes: usize,
    /// Most time one map may take; a map still running then is abandoned.
    #[serde(with = "humantime_serde")]
    pub max_time: Duration,
    /// Draw a caption band (class, score, method, passes, frame time, device, colour
    /// scale) under published and written overlays.
    pub caption: bool,
    /// Measure the explanation's health on every Nth full map (0: never): a short deletion
    /// curve against the map's shuffled self, [`crate::cam::health`].
    pub health_every: u32,
    /// Samples the health state is judged on.
    pub health_window: usize,
}

impl Default for CamConfig {
    fn default() -> Self {
        CamConfig {
            method: CamParams::default(),
            steps: None,
            channels: None,
            weighting: Weighting::default(),
            batch: 1,
            seed: 0,
            sigma: None,
            score_size: None,
            interval: Duration::from_secs(30),
            on_class_change: true,
            min_confidence: 0.5,
            live: false,
            live_max_age: Duration::from_secs(300),
            live_max_drift: LIVE_MAX_DRIFT,
            max_passes: crate::cam::DEFAULT_MAX_PASSES,
            max_time: crate::cam::DEFAULT_MAX_TIME,
            caption: true,
            health_every: 5,
            health_window: 8,
        }
    }
}

/// Default of `[cam] live_max_drift`: between what small camera shifts and sensor noise
/// cause and what a cut to another scene causes. `iscamd eval --live` on 12 images
/// (docs/benchmarks.md): shifts up to 16 px and noise up to σ = 12 drift at most 0.055,
/// cuts to another image at least 0.36.
pub const LIVE_MAX_DRIFT: f64 = 0.1;

/// Largest `[cam] health_window`.
pub const MAX_HEALTH_WINDOW: usize = 1000;

/// Largest `[cam] max_passes`: ~90 minutes of SqueezeNet passes on a fast x86 core.
pub const MAX_MAX_PASSES: usize = 1_000_000;
/// Accepted `[cam] max_time`.
pub const MAX_TIMES: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(3600);

impl CamConfig {
    /// The cost budget of every full map.
    pub fn budget(&self) -> crate::cam::Budget {
        crate::cam::Budget {
            max_passes: self.max_passes,
            max_time: self.max_time,
        }
    }

    /// The live-map policy these keys describe.
    pub fn live_policy(&self) -> crate::cam::live::Policy {
        crate::cam::live::Policy {
            max_age: self.live_max_age,
            max_drift: self.live_max_drift,
        }
    }

    /// The CAM parameters these keys describe.
    pub fn params(&self) -> Result<CamParams> {
        let overrides = spec::Overrides {
            steps: self.steps,
            channels: self.channels,
            sigma: self.sigma,
            score_size: self.score_size,
        };
        let mut params = self.method.clone().overridden(overrides).map_err(cam_key)?;
        params.weighting = self.weighting;
        params.batch = self.batch;
        params.seed = self.seed;
        Ok(params)
    }
}

/// Heatmap intervals accepted, in the config and from `set` commands (zero turns them off).
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
pub const MAX_INTERVAL: Duration = Duration::from_secs(7 * 24 * 3600);

impl CamConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        // The channels are checked against the model's CAM layer once it is loaded.
        self.params()?
            .validate(usize::MAX, usize::MAX)
            .map_err(cam_key)?;
        if !self.interval.is_zero() && !(MIN_INTERVAL..=MAX_INTERVAL).contains(&self.interval) {
            return Err(Error::invalid(
                "cam.interval",
                format!(
                    "{:?} (expected \"0s\" = off, or {MIN_INTERVAL:?} to {MAX_INTERVAL:?})",
                    self.interval
                ),
            ));
        }
        if !(0.0..=1.0).contains(&self.live_max_drift) {
            return Err(Error::invalid(
                "cam.live_max_drift",
                format!("{} (expected 0..=1)", self.live_max_drift),
            ));
        }
        if self.live_max_age.is_zero() {
            return Err(Error::invalid(
                "cam.live_max_age",
                "0s (expected more than 0)",
            ));
        }
        if !(1..=MAX_MAX_PASSES).contains(&self.max_passes) {
            return Err(Error::invalid(
                "cam.max_passes",
                format!("{} (expected 1..={MAX_MAX_PASSES})", self.max_passes),
            ));
        }
        if !MAX_TIMES.contains(&self.max_time) {
            return Err(Error::invalid(
                "cam.max_time",
                format!(
                    "{:?} (expected {:?} to {:?})",
                    self.max_time,
                    MAX_TIMES.start(),
                    MAX_TIMES.end()
                ),
            ));
        }
        if !(1..=MAX_HEALTH_WINDOW).contains(&self.health_window) {
            return Err(Error::invalid(
                "cam.health_window",
                format!("{} (expected 1..={MAX_HEALTH_WINDOW})", self.health_window),
            ));
        }
        if !(0.0..=1.0).contains(&self.min_confidence) {
            return Err(Error::invalid(
                "cam.min_confidence",
                format!("{} (expected 0..=1)", self.min_confidence),
            ));
        }
        Ok(())
    }
}

/// Names an error of the CAM parameters by its `[cam]` key.
pub fn cam_key(e: Error) -> Error {
    match e {
        Error::Invalid { what, reason } => Error::Invalid {
            what: match what {
                "steps" => "cam.steps",
                "channels" => "cam.channels",
                "batch" => "cam.batch",
                "score_size" => "cam.score_size",
                "sigma" => "cam.sigma",
                other => other,
            },
            reason,
        },
        other => other,
    }
}
