use crate::error::{Error, Result};

/// Largest `steps` accepted: N·K masked passes must stay within what a device can do.
pub const MAX_STEPS: usize = 1000;
/// Smallest `score_size` accepted: below it SqueezeNet's pooling leaves nothing to pool.
pub const MIN_SCORE_SIZE: usize = 64;
/// Largest masked batch accepted.
pub const MAX_BATCH: usize = 256;
/// Reduced-N IS-CAM, the default: the cheapest setting whose Insertion AUC and Average
/// Drop are within 2 % of full IS-CAM (N = 10, all channels) over the 250 images of
/// `iscamd eval`'s sweep (docs/benchmarks.md): 1 step × 64 channels = 64 passes instead of
/// ~4900. One step is Score-CAM on the top-64 channels: on SqueezeNet, IS-CAM's further
/// steps did not improve either metric.
pub const REDUCED_N_STEPS: usize = 1;
/// Channels (largest activation variance first) the reduced-N default scores.
pub const REDUCED_N_CHANNELS: usize = 64;

/// How channel weights are computed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Method {
    /// Zhou et al.'s class activation map, `ReLU(Σ_k w_{c,k} A_k)` with the classifier's
    /// own weights (and the bias of a 1×1-convolution head, docs/maps.md): no masked passes.
    Cam,
    /// `α_k = p(x ⊙ M_k)`.
    ScoreCam,
    /// Mean over `steps` noisy masks `M_k + ε`, `ε ~ N(0, σ²)` from a seeded RNG.
    SsCam { steps: usize, sigma: f32 },
    /// Mean over `steps` cumulatively integrated masked inputs (the seed's rule).
    IsCam { steps: usize },
    /// Byun and Lee's Recipro-CAM: per position of the CAM layer, the class score of the
    /// network after the layer run on the activations with every other position zeroed.
    /// No masked pass of the whole model: the tail's partial passes only.
    Recipro,
}

impl Method {
    pub fn name(&self) -> &'static str {
        match self {
            Method::Cam => "cam",
            Method::ScoreCam => "scorecam",
            Method::SsCam { .. } => "sscam",
            Method::IsCam { .. } => "iscam",
            Method::Recipro => "recipro",
        }
    }
}

/// How scores become the weights α.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Weighting {
    /// α = softmax probability of the class (the authors' code).
    #[default]
    Prob,
    /// α = softmax over channels of the logit increase (torchcam).
    LogitSoftmax,
}

impl Weighting {
    pub fn name(&self) -> &'static str {
        match self {
            Weighting::Prob => "prob",
            Weighting::LogitSoftmax => "logit-softmax",
        }
    }
}

impl std::str::FromStr for Weighting {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "prob" => Ok(Weighting::Prob),
            "logit-softmax" => Ok(Weighting::LogitSoftmax),
            _ => Err(Error::invalid(
                "weighting",
                format!("{s:?} (expected prob or logit-softmax)"),
            )),
        }
    }
}

/// Which K channels a masked method scores (when it does not score them all).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Selection {
    /// Largest activation variance: the same channels whatever the class explained.
    #[default]
    Variance,
    /// Largest `w_{c,k} · mean(A_k)` (the classifier's weight times the channel's mean):
    /// the channels that add most to the explained class's logit.
    Contribution,
}

impl Selection {
    pub fn name(&self) -> &'static str {
        match self {
            Selection::Variance => "variance",
            Selection::Contribution => "contribution",
        }
    }
}

impl std::str::FromStr for Selection {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "variance" => Ok(Selection::Variance),
            "contribution" => Ok(Selection::Contribution),
            _ => Err(Error::invalid(
                "select",
                format!("{s:?} (expected variance or contribution)"),
            )),
        }
    }
}

/// Everything that defines a map besides the image and the class.
#[derive(Clone, Debug, PartialEq)]
pub struct CamParams {
    pub method: Method,
    /// Top-K channels by `select`; 0 = all non-constant channels.
    pub channels: usize,
    pub select: Selection,
    pub weighting: Weighting,
    /// Masked inputs per forward pass.
    pub batch: usize,
    /// Seed of SS-CAM's noise.
    pub seed: u64,
    /// Side of the square the masked inputs are scored at; `None` = the model's input
    /// size. Fully convolutional models (SqueezeNet) accept smaller inputs, and a pass at
    /// 163 px costs about half of one at 227: cheaper maps, at a quality cost that
    /// `iscamd eval` measures (docs/benchmarks.md).
    pub score_size: Option<usize>,
}

/// The default map: reduced-N IS-CAM.
impl Default for CamParams {
    fn default() -> Self {
        CamParams {
            method: Method::IsCam {
                steps: REDUCED_N_STEPS,
            },
            channels: REDUCED_N_CHANNELS,
            select: Selection::Variance,
            weighting: Weighting::Prob,
            batch: 1,
            seed: 0,
            score_size: None,
        }
    }
}

impl CamParams {
    /// The method's defaults: reduced-N IS-CAM ([`REDUCED_N_STEPS`] steps on the top
    /// [`REDUCED_N_CHANNELS`] channels), SS-CAM 35 steps with σ = 2 on all channels,
    /// Score-CAM all channels.
    pub fn new(method_name: &str, steps: Option<usize>, channels: Option<usize>) -> Result<Self> {
        let (method, default_channels) = match method_name {
            "cam" | "recipro" => {
                let name = method_name;
                if let Some(s) = steps.filter(|&s| s != 1) {
                    return Err(Error::invalid(
                        "steps",
                        format!("{s}: {name} runs no masked passes (use sscam or iscam for steps)"),
                    ));
                }
                if let Some(k) = channels.filter(|&k| k != 0) {
                    return Err(Error::invalid(
                        "channels",
                        format!("{k}: {name} uses every channel (k applies to the masked methods)"),
                    ));
                }
                let method = if name == "cam" {
                    Method::Cam
                } else {
                    Method::Recipro
                };
                (method, 0)
            }
            "scorecam" => {
                if let Some(s) = steps.filter(|&s| s != 1) {
                    return Err(Error::invalid("steps", format!("{s}: scorecam takes one mask per channel (use sscam or iscam for steps)")));
                }
                (Method::ScoreCam, 0)
            }
            "sscam" => (
                Method::SsCam {
                    steps: steps.unwrap_or(35),
                    sigma: 2.0,
                },
                0,
            ),
            "iscam" => (
                Method::IsCam {
                    steps: steps.unwrap_or(REDUCED_N_STEPS),
                },
                REDUCED_N_CHANNELS,
            ),
            other => {
                return Err(Error::invalid(
                    "method",
                    format!("{other:?} (expected cam, recipro, scorecam, sscam or iscam)"),
                ));
            }
        };
        Ok(CamParams {
            method,
            channels: channels.unwrap_or(default_channels),
            ..CamParams::default()
        })
    }

    /// Sets the masks per channel (Score-CAM has exactly one).
    pub fn set_steps(&mut self, n: usize) -> Result<()> {
        let why = match self.method {
            Method::Cam | Method::Recipro => "it runs no masked passes",
            _ => "scorecam takes one mask per channel",
        };
        match &mut self.method {
            Method::Cam | Method::ScoreCam | Method::Recipro if n != 1 => Err(Error::invalid(
                "steps",
                format!("{n}: {why} (use sscam or iscam for steps)"),
            )),
            Method::Cam | Method::ScoreCam | Method::Recipro => Ok(()),
            Method::SsCam { steps, .. } | Method::IsCam { steps } => {
                *steps = n;
                Ok(())
            }
        }
    }

    /// Masked inputs per channel (`cam` counts as one step of no passes).
    pub fn steps(&self) -> usize {
        match self.method {
            Method::Cam | Method::ScoreCam | Method::Recipro => 1,
            Method::SsCam { steps, .. } | Method::IsCam { steps } => steps,
        }
    }

    /// Masked forward passes a map with these parameters runs on a layer of
    /// `layer_channels` (at most: constant channels are skipped).
    pub fn passes(&self, layer_channels: usize) -> usize {
        if matches!(self.method, Method::Cam | Method::Recipro) {
            return 0;
        }
        let channels = match self.channels {
            0 => layer_channels,
            k => k.min(layer_channels),
        };
        channels.saturating_mul(self.steps())
    }

    /// Checks the parameters against a CAM layer of `layer_channels` channels and a
    /// model input of `input_size` pixels.
    pub fn validate(&self, layer_channels: usize, input_size: usize) -> Result<()> {
        if let Some(size) = self.score_size {
            if !(MIN_SCORE_SIZE..=input_size).contains(&size) {
                return Err(Error::invalid(
                    "score_size",
                    format!(
                        "{size} (expected {MIN_SCORE_SIZE}..={input_size}, the model's input size)"
                    ),
                ));
            }
        }
        let steps = self.steps();
        if !(1..=MAX_STEPS).contains(&steps) {
            return Err(Error::invalid(
                "steps",
                format!("{steps} (expected 1..={MAX_STEPS})"),
            ));
        }
        if matches!(self.method, Method::Cam | Method::Recipro) && self.channels != 0 {
            return Err(Error::invalid(
                "channels",
                format!(
                    "{}: {} uses every channel (k applies to the masked methods)",
                    self.channels,
                    self.method.name()
                ),
            ));
        }
        if self.channels > layer_channels {
            return Err(Error::invalid(
                "channels",
                format!(
                    "{} is more than the CAM layer's {layer_channels} channels (0 = all)",
                    self.channels
                ),
            ));
        }
        if !(1..=MAX_BATCH).contains(&self.batch) {
            return Err(Error::invalid(
                "batch",
                format!("{} (expected 1..={MAX_BATCH})", self.batch),
            ));
        }
        if let Method::SsCam { sigma, .. } = self.method {
            if !(sigma.is_finite() && sigma >= 0.0) {
                return Err(Error::invalid(
                    "sigma",
                    format!("{sigma} (expected a finite value ≥ 0)"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_refusals() {
        let p = CamParams::new("iscam", None, None).unwrap();
        assert_eq!(
            (p.steps(), p.channels),
            (REDUCED_N_STEPS, REDUCED_N_CHANNELS)
        );
        assert_eq!(CamParams::new("sscam", None, None).unwrap().steps(), 35);
        assert!(CamParams::new("gradcam", None, None)
            .unwrap_err()
            .to_string()
            .contains("gradcam"));
        assert!(CamParams::new("scorecam", Some(3), None).is_err());
        let e = CamParams::new("iscam", Some(0), None)
            .unwrap()
            .validate(512, 227)
            .unwrap_err()
            .to_string();
        assert!(e.contains("steps") && e.contains('0'), "{e}");
        assert!(CamParams::new("iscam", Some(1_000_000), None)
            .unwrap()
            .validate(512, 227)
            .is_err());
        let e = CamParams::new("iscam", None, Some(513))
            .unwrap()
            .validate(512, 227)
            .unwrap_err()
            .to_string();
        assert!(e.contains("513") && e.contains("512"), "{e}");
        assert!(CamParams::new("iscam", None, Some(512))
            .unwrap()
            .validate(512, 227)
            .is_ok());
        let mut p = CamParams::new("iscam", None, None).unwrap();
        for (size, ok) in [(163, true), (227, true), (228, false), (63, false)] {
            p.score_size = Some(size);
            assert_eq!(p.validate(512, 227).is_ok(), ok, "{size}");
        }
    }
}
