//! One frame through the model, and optionally through a CAM: what `classify`,
//! `explain` and the daemon share.

use std::time::{Instant, SystemTime};

use crate::model::ndarray::{Array3, Axis, Ix3};
use image::RgbImage;
use serde::Serialize;

use crate::cam::caption::Caption;
use crate::cam::{self, CamParams, Deadline, Explanation};
use crate::error::{Error, Result};
use crate::model::{softmax, top_k, Classifier};

/// A class with its softmax probability.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ClassScore {
    pub index: usize,
    pub label: String,
    pub score: f64,
}

/// Milliseconds per stage of one image's way through iscamd: the one latency record of
/// every output (`latency_ms` of predictions, heatmaps, `classify` and `explain`). Only the
/// stages that ran are set, and only those are serialised.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct Latency {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decode: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preprocess: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inference: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cam: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub render: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<f64>,
}

/// A classified frame, with what a CAM needs to explain it later.
pub struct Analysis {
    pub frame: RgbImage,
    /// The preprocessed input `[3,S,S]`.
    pub input: Array3<f32>,
    pub logits: Vec<f32>,
    pub probabilities: Vec<f64>,
    /// CAM-layer activations `[C,h,w]`, from the same forward pass.
    pub activations: Option<Array3<f32>>,
    pub latency: Latency,
}

impl Analysis {
    /// Preprocesses and classifies one frame (one forward pass).
    pub fn of_frame(classifier: &Classifier, frame: RgbImage) -> Result<Self> {
        let t0 = Instant::now();
        let input = classifier.preprocess().tensor(&frame);
        let t1 = Instant::now();
        let forward = classifier.forward(input.view().insert_axis(Axis(0)))?;
        let t2 = Instant::now();
        let logits = forward.logits.index_axis(Axis(0), 0).to_vec();
        let activations = forward
            .activations
            .map(|a| a.index_axis_move(Axis(0), 0).into_dimensionality::<Ix3>())
            .transpose()
            .map_err(|e| Error::Inference(e.to_string()))?;
        Ok(Analysis {
            frame,
            input,
            probabilities: softmax(&logits),
            logits,
            activations,
            latency: Latency {
                preprocess: Some(ms(t1 - t0)),
                inference: Some(ms(t2 - t1)),
                ..Latency::default()
            },
        })
    }

    /// The `k` most probable classes.
    pub fn top(&self, classifier: &Classifier, k: usize) -> Vec<ClassScore> {
        top_k(&self.probabilities, k)
            .into_iter()
            .map(|i| self.class_score(classifier, i))
            .collect()
    }

    pub fn class_score(&self, classifier: &Classifier, index: usize) -> ClassScore {
        ClassScore {
            index,
            label: classifier.labels().name(index),
            score: self.probabilities[index],
        }
    }

    /// The overlay caption of `explanation`, a full map of this frame.
    pub fn caption(
        &self,
        classifier: &Classifier,
        explanation: &Explanation,
        time: Option<SystemTime>,
        source: String,
    ) -> Caption {
        let class = self.class_score(classifier, explanation.class);
        Caption {
            class: class.label,
            score: class.score,
            method: explanation.params.to_string(),
            passes: explanation.passes,
            live: false,
            time,
            source,
        }
    }

    /// Explains `class` (default: the top-1 class) with the given CAM.
    pub fn explain(
        &self,
        classifier: &Classifier,
        class: Option<usize>,
        params: &CamParams,
        threads: usize,
    ) -> Result<Explanation> {
        self.explain_until(classifier, class, params, threads, Deadline::NONE)
    }

    /// [`Analysis::explain`], abandoned with an error once `deadline` has passed.
    pub fn explain_until(
        &self,
        classifier: &Classifier,
        class: Option<usize>,
        params: &CamParams,
        threads: usize,
        deadline: Deadline,
    ) -> Result<Explanation> {
        let activations = self.activations.as_ref().ok_or_else(|| {
            Error::model(
                classifier.path(),
                "has no CAM layer to explain with (set --cam-layer)",
            )
        })?;
        let class = class.unwrap_or_else(|| top_k(&self.probabilities, 1)[0]);
        let input = cam::Input {
            x: &self.input,
            logits: &self.logits,
            activations: activations.view(),
        };
        cam::explain_until(classifier, input, class, params, threads, deadline)
    }
}

pub(crate) fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::Latency;

    #[test]
    fn latency_serialises_the_stages_that_ran() {
        let heatmap = Latency {
            cam: Some(812.5),
            render: Some(9.0),
            ..Latency::default()
        };
        let json = serde_json::to_string(&heatmap).unwrap();
        assert_eq!(json, r#"{"cam":812.5,"render":9.0}"#);
    }
}
