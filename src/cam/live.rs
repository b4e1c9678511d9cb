//! Live maps: a full CAM costs hundreds of forward passes, but its result is one weight
//! per channel. While the scene is stable those weights stay valid, and a map for any
//! later frame is `ReLU(Σ α_k A_k)` over that frame's own activations, which the
//! prediction pass computes anyway: one pass per map instead of hundreds.
//!
//! The weights are trusted while the top-1 class is the one they explain, the frame's
//! channel content has not drifted from the reference frame's, and they are not too old.

use std::time::Duration;

use crate::model::ndarray::{Array2, ArrayView3, Axis};

use super::{weighted_map, CamParams, Explanation};

/// The channel weights of a full map, kept to make live maps from later frames.
#[derive(Clone, Debug)]
pub struct Reference {
    /// The class the weights explain.
    pub class: usize,
    /// How the weights were made.
    pub params: CamParams,
    /// α per CAM-layer channel.
    pub weights: Vec<f64>,
    /// Per-channel spatial means of the reference frame's activations.
    channel_means: Vec<f64>,
    /// The frame the weights were computed on.
    pub frame: u64,
}

/// When weights stop being trusted.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Policy {
    /// Refresh after this long even if nothing changed.
    pub max_age: Duration,
    /// Refresh when [`drift`] passes this (0 = identical channel content, 1 = unrelated).
    pub max_drift: f64,
}

/// Why a live map cannot be made and a full one is needed.
#[derive(Clone, Debug, PartialEq)]
pub enum Refresh {
    /// No full map yet.
    NoReference,
    /// The top-1 class is not the one the weights explain.
    ClassChanged { from: usize, to: usize },
    /// The frame's channel content moved too far from the reference frame's.
    Drifted(f64),
    /// The weights are older than the policy allows.
    TooOld(Duration),
}

impl std::fmt::Display for Refresh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refresh::NoReference => write!(f, "no full map yet"),
            Refresh::ClassChanged { from, to } => write!(f, "class changed from {from} to {to}"),
            Refresh::Drifted(d) => write!(f, "activations drifted by {d:.3}"),
            Refresh::TooOld(age) => write!(f, "weights are {:.0} s old", age.as_secs_f64()),
        }
    }
}

/// A map made from reference weights.
#[derive(Clone, Debug)]
pub struct LiveMap {
    /// `ReLU(Σ α_k A_k)` at the CAM layer's resolution, unnormalised.
    pub map: Array2<f32>,
    /// [`drift`] between this frame and the reference frame.
    pub drift: f64,
}

impl Reference {
    /// Keeps the weights of `explanation`, made from `activations` (`[C,h,w]`) of `frame`.
    pub fn new(explanation: &Explanation, activations: ArrayView3<f32>, frame: u64) -> Self {
        Reference {
            class: explanation.class,
            params: explanation.params.clone(),
            weights: explanation.weights.clone(),
            channel_means: channel_means(activations),
            frame,
        }
    }

    /// The live map of a frame with top-1 `class` and these `activations`, made `age`
    /// after the reference — or why a full map is needed instead.
    pub fn live_map(
        &self,
        class: usize,
        activations: ArrayView3<f32>,
        age: Duration,
        policy: &Policy,
    ) -> Result<LiveMap, Refresh> {
        if class != self.class {
            return Err(Refresh::ClassChanged {
                from: self.class,
                to: class,
            });
        }
        if age > policy.max_age {
            return Err(Refresh::TooOld(age));
        }
        let drift = drift(&self.channel_means, &channel_means(activations));
        if drift > policy.max_drift {
            return Err(Refresh::Drifted(drift));
        }
        Ok(LiveMap {
            map: weighted_map(activations, &self.weights),
            drift,
        })
    }
}

/// Mean activation of each channel over its spatial positions.
pub fn channel_means(activations: ArrayView3<f32>) -> Vec<f64> {
    activations
        .axis_iter(Axis(0))
        .map(|a| a.iter().map(|&v| v as f64).sum::<f64>() / a.len().max(1) as f64)
        .collect()
}

/// `1 − cos` between two frames' per-channel mean activations: what the scene contains,
/// whatever the place. Small shifts of the camera barely move it (the live map follows
/// them through the activations); a different scene does.
pub fn drift(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let (na, nb) = (norm(a), norm(b));
    if na == 0.0 && nb == 0.0 {
        0.0
    } else if na == 0.0 || nb == 0.0 {
        1.0
    } else {
        (1.0 - dot / (na * nb)).clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ndarray::Array3;

    fn explanation(class: usize, weights: Vec<f64>) -> Explanation {
        Explanation {
            class,
            params: CamParams::new("iscam", None, None).unwrap(),
            channels_used: (0..weights.len()).collect(),
            ranking: vec![0.0; weights.len()],
            passes: 0,
            prob_scores: weights.clone(),
            logit_diff_scores: weights.clone(),
            weights,
            map: Array2::zeros((2, 2)),
            millis: 0.0,
        }
    }

    const POLICY: Policy = Policy {
        max_age: Duration::from_secs(60),
        max_drift: 0.1,
    };

    #[test]
    fn a_shifted_scene_gets_a_map_that_follows_it() {
        // Channel 0 fires where the object is, channel 1 everywhere a little.
        let mut a = Array3::<f32>::zeros((2, 3, 3));
        a[[0, 0, 0]] = 4.0;
        a.index_axis_mut(Axis(0), 1).fill(0.5);
        let reference = Reference::new(&explanation(7, vec![1.0, 0.0]), a.view(), 1);
        // The object moves to the opposite corner: same channel content.
        let mut moved = Array3::<f32>::zeros((2, 3, 3));
        moved[[0, 2, 2]] = 4.0;
        moved.index_axis_mut(Axis(0), 1).fill(0.5);
        let live = reference
            .live_map(7, moved.view(), Duration::from_secs(1), &POLICY)
            .unwrap();
        assert_eq!(live.drift, 0.0);
        assert_eq!(live.map[[2, 2]], 4.0);
        assert_eq!(live.map[[0, 0]], 0.0);
    }

    #[test]
    fn class_change_drift_and_age_ask_for_a_full_map() {
        let mut a = Array3::<f32>::zeros((2, 2, 2));
        a.index_axis_mut(Axis(0), 0).fill(1.0);
        let reference = Reference::new(&explanation(3, vec![1.0, 1.0]), a.view(), 1);
        let young = Duration::from_secs(1);
        assert_eq!(
            reference.live_map(4, a.view(), young, &POLICY).unwrap_err(),
            Refresh::ClassChanged { from: 3, to: 4 }
        );
        assert_eq!(
            reference
                .live_map(3, a.view(), Duration::from_secs(61), &POLICY)
                .unwrap_err(),
            Refresh::TooOld(Duration::from_secs(61))
        );
        // Other channels light up: a different scene.
        let mut other = Array3::<f32>::zeros((2, 2, 2));
        other.index_axis_mut(Axis(0), 1).fill(1.0);
        let Err(Refresh::Drifted(d)) = reference.live_map(3, other.view(), young, &POLICY) else {
            panic!("a different scene must drift")
        };
        assert!((d - 1.0).abs() < 1e-12, "{d}");
        assert!(reference.live_map(3, a.view(), young, &POLICY).is_ok());
    }

    #[test]
    fn drift_is_scale_free_and_bounded() {
        assert!(drift(&[1.0, 2.0], &[2.0, 4.0]) < 1e-12);
        assert_eq!(drift(&[0.0, 0.0], &[0.0, 0.0]), 0.0);
        assert_eq!(drift(&[0.0, 0.0], &[1.0, 0.0]), 1.0);
        assert!((drift(&[1.0, 0.0], &[1.0, 1.0]) - (1.0 - 0.5f64.sqrt())).abs() < 1e-12);
    }
}
