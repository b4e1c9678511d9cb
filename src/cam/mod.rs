//! Gradient-free class activation maps (docs/maps.md): CAM from the classifier's own
//! weights (no masked passes), and Score-CAM, SS-CAM and IS-CAM on all channels or the
//! top-K by variance or by class contribution, scored in batches of masked inputs on all
//! cores, from the activations of the prediction pass.

mod budget;
pub mod caption;
pub mod config;
pub mod display;
pub mod health;
pub mod live;
pub mod masks;
mod method;
mod score;
pub mod spec;

use std::time::Instant;

use crate::model::ndarray::{Array2, Array3, ArrayView3, Axis};

pub use budget::{Budget, Deadline, DEFAULT_MAX_PASSES, DEFAULT_MAX_TIME};
pub use display::pearson;
pub use method::{
    CamParams, Method, Selection, Weighting, MAX_STEPS, REDUCED_N_CHANNELS, REDUCED_N_STEPS,
};

use crate::error::{Error, Result};
use crate::model::{softmax, Classifier};

/// A map and how it was made.
#[derive(Clone, Debug)]
pub struct Explanation {
    /// The class explained.
    pub class: usize,
    pub params: CamParams,
    /// Channels that received a mask (constant ones and those outside the top-K do not);
    /// every channel for `cam`.
    pub channels_used: Vec<usize>,
    /// Per layer channel, the value the top-K were chosen by (variance or contribution).
    pub ranking: Vec<f64>,
    /// Masked forward passes run for this map (the prediction pass is not counted).
    pub passes: usize,
    /// Per layer channel, mean over steps of `p_c(masked)`; 0 for unused channels.
    pub prob_scores: Vec<f64>,
    /// Per layer channel, mean over steps of `logit_c(masked) − logit_c(x)`; 0 for unused.
    pub logit_diff_scores: Vec<f64>,
    /// The weights α applied to the activations (per the weighting mode).
    pub weights: Vec<f64>,
    /// `L = ReLU(Σ α_k A_k)` at the CAM layer's resolution, unnormalised.
    pub map: Array2<f32>,
    pub millis: f64,
}

/// Computes the map for `class` of the preprocessed input `x` (`[3,S,S]`), from the
/// `logits` and CAM-layer `activations` (`[C,h,w]`) of its own forward pass.
pub fn explain(
    classifier: &Classifier,
    x: &Array3<f32>,
    logits: &[f32],
    activations: ArrayView3<f32>,
    class: usize,
    params: &CamParams,
    threads: usize,
) -> Result<Explanation> {
    let input = Input {
        x,
        logits,
        activations,
    };
    explain_until(classifier, input, class, params, threads, Deadline::NONE)
}

/// One forward pass's input, logits and CAM-layer activations.
pub struct Input<'a> {
    pub x: &'a Array3<f32>,
    pub logits: &'a [f32],
    pub activations: ArrayView3<'a, f32>,
}

/// [`explain`], abandoned with an error once `deadline` has passed.
pub fn explain_until(
    classifier: &Classifier,
    Input {
        x,
        logits,
        activations,
    }: Input,
    class: usize,
    params: &CamParams,
    threads: usize,
    deadline: Deadline,
) -> Result<Explanation> {
    let started = Instant::now();
    let layer = classifier
        .cam_layer()
        .ok_or_else(|| Error::model(classifier.path(), "has no CAM layer (set --cam-layer)"))?;
    params.validate(layer.channels, classifier.input_size())?;
    if class >= logits.len() {
        return Err(Error::invalid(
            "class",
            format!("{class} (the model has classes 0..{})", logits.len() - 1),
        ));
    }
    match params.method {
        Method::Cam => {
            return class_activation_map(classifier, activations, class, params, started)
        }
        Method::Recipro => return recipro(classifier, activations, class, params, started),
        _ => {}
    }
    let ranking = match params.select {
        Selection::Variance => masks::variances(activations),
        Selection::Contribution => classifier.linear_head()?.contributions(activations, class),
    };
    let channels = masks::select_channels(activations, params.channels, &ranking);
    let scores = score::score_masks(
        classifier,
        x,
        activations,
        &channels,
        class,
        logits[class],
        params,
        threads,
        deadline,
    )?;

    let k_all = activations.len_of(Axis(0));
    let mut prob_scores = vec![0.0; k_all];
    let mut logit_diff_scores = vec![0.0; k_all];
    for (&k, s) in channels.iter().zip(&scores) {
        prob_scores[k] = s.prob;
        logit_diff_scores[k] = s.logit_diff;
    }
    let weights = weights(
        params.weighting,
        &channels,
        &prob_scores,
        &logit_diff_scores,
    );
    let map = weighted_map(activations, &weights);
    Ok(Explanation {
        class,
        params: params.clone(),
        passes: channels.len() * params.steps(),
        channels_used: channels,
        ranking,
        prob_scores,
        logit_diff_scores,
        weights,
        map,
        millis: started.elapsed().as_secs_f64() * 1e3,
    })
}

/// Zhou et al.'s CAM: the class's map from the linear head, without a masked pass.
fn class_activation_map(
    classifier: &Classifier,
    activations: ArrayView3<f32>,
    class: usize,
    params: &CamParams,
    started: Instant,
) -> Result<Explanation> {
    let head = classifier.linear_head()?;
    let map = head.class_map(activations, class);
    Ok(Explanation {
        ranking: head.contributions(activations, class),
        weights: head.class_weights(class),
        ..unscored(class, params, activations.len_of(Axis(0)), map, started)
    })
}

/// Byun and Lee's Recipro-CAM, as OpenVINO XAI computes it: per position of the CAM
/// layer, the class's score (before any final Softmax) with every other position of the
/// activations zeroed; the map is those scores less their minimum.
fn recipro(
    classifier: &Classifier,
    activations: ArrayView3<f32>,
    class: usize,
    params: &CamParams,
    started: Instant,
) -> Result<Explanation> {
    let map = recipro_map(classifier, activations, class)?;
    Ok(Explanation {
        passes: classifier.tail()?.passes(),
        ..unscored(class, params, activations.len_of(Axis(0)), map, started)
    })
}

/// A map of every one of `channels` channels that scored no masks (`cam`, `recipro`).
fn unscored(
    class: usize,
    params: &CamParams,
    channels: usize,
    map: Array2<f32>,
    started: Instant,
) -> Explanation {
    Explanation {
        class,
        params: params.clone(),
        channels_used: (0..channels).collect(),
        ranking: vec![0.0; channels],
        passes: 0,
        prob_scores: vec![0.0; channels],
        logit_diff_scores: vec![0.0; channels],
        weights: vec![0.0; channels],
        map,
        millis: started.elapsed().as_secs_f64() * 1e3,
    }
}

/// The Recipro-CAM map of `class` from the CAM layer's `activations`.
pub fn recipro_map(
    classifier: &Classifier,
    activations: ArrayView3<f32>,
    class: usize,
) -> Result<Array2<f32>> {
    let (_, h, w) = activations.dim();
    let scores = classifier.tail()?.masked_outputs(activations)?;
    if class >= scores.ncols() {
        return Err(Error::invalid(
            "class",
            format!("{class} (the tail scores {} classes)", scores.ncols()),
        ));
    }
    let column: Vec<f32> = scores.column(class).to_vec();
    let low = column.iter().copied().fold(f32::INFINITY, f32::min);
    Array2::from_shape_vec((h, w), column.iter().map(|v| v - low).collect())
        .map_err(|e| Error::Inference(e.to_string()))
}

/// The weights α per layer channel from per-channel scores (0 outside `channels`).
pub fn weights(
    weighting: Weighting,
    channels: &[usize],
    prob_scores: &[f64],
    logit_diff_scores: &[f64],
) -> Vec<f64> {
    let mut alpha = vec![0.0; prob_scores.len()];
    match weighting {
        Weighting::Prob => {
            for &k in channels {
                alpha[k] = prob_scores[k];
            }
        }
        Weighting::LogitSoftmax => {
            // Softmax over the channels used, of the step-averaged logit differences:
            // what torchcam computes (checked against ../shared/reference).
            let diffs: Vec<f32> = channels
                .iter()
                .map(|&k| logit_diff_scores[k] as f32)
                .collect();
            for (&k, a) in channels.iter().zip(softmax(&diffs)) {
                alpha[k] = a;
            }
        }
    }
    alpha
}

impl Explanation {
    /// The map this explanation would have been with only the top `k` channels of its
    /// ranking (0 = all it used): top-K channels are a prefix of the same ranking, and
    /// each channel's score depends on its own masks only, so no new passes are needed.
    /// `None` for `cam` and `recipro` and when `k` asks for channels this explanation did not score.
    /// `millis` is this run's time scaled by the share of channels kept: an estimate, not
    /// a measurement.
    pub fn restricted(&self, activations: ArrayView3<f32>, k: usize) -> Option<Explanation> {
        if matches!(self.params.method, Method::Cam | Method::Recipro) {
            return (k == 0).then(|| self.clone());
        }
        let channels = masks::select_channels(activations, k, &self.ranking);
        if !channels
            .iter()
            .all(|c| self.channels_used.binary_search(c).is_ok())
        {
            return None;
        }
        let keep = |scores: &[f64]| {
            let mut kept = vec![0.0; scores.len()];
            for &c in &channels {
                kept[c] = scores[c];
            }
            kept
        };
        let prob_scores = keep(&self.prob_scores);
        let logit_diff_scores = keep(&self.logit_diff_scores);
        let weights = weights(
            self.params.weighting,
            &channels,
            &prob_scores,
            &logit_diff_scores,
        );
        Some(Explanation {
            class: self.class,
            params: CamParams {
                channels: k,
                ..self.params.clone()
            },
            passes: channels.len() * self.params.steps(),
            map: weighted_map(activations, &weights),
            millis: self.millis * channels.len() as f64 / self.channels_used.len().max(1) as f64,
            channels_used: channels,
            ranking: self.ranking.clone(),
            prob_scores,
            logit_diff_scores,
            weights,
        })
    }

    /// The same map under another weighting (the scores are shared: no new passes).
    pub fn reweighted(&self, activations: ArrayView3<f32>, weighting: Weighting) -> Array2<f32> {
        weighted_map(
            activations,
            &weights(
                weighting,
                &self.channels_used,
                &self.prob_scores,
                &self.logit_diff_scores,
            ),
        )
    }
}

/// `ReLU(Σ_k α_k A_k)`, accumulated in f64.
pub fn weighted_map(activations: ArrayView3<f32>, weights: &[f64]) -> Array2<f32> {
    let (_, h, w) = activations.dim();
    let mut acc = Array2::<f64>::zeros((h, w));
    for (a, &alpha) in activations.axis_iter(Axis(0)).zip(weights) {
        if alpha != 0.0 {
            acc.zip_mut_with(&a, |s, &v| *s += alpha * v as f64);
        }
    }
    acc.mapv(|v| v.max(0.0) as f32)
}
