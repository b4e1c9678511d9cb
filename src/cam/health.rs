//! Explanation health: whether the daemon's maps still say something about its model. A
//! deployed model drifts, a file is swapped, weights go bad; predictions can look fine
//! while the maps stop meaning anything. Every few full maps the daemon measures, on that
//! live frame, how much more of the class's probability deleting the map's most salient
//! pixels removes than deleting as many pixels of the same map with its cells shuffled
//! (the same values and coverage, in the wrong places). Over a window of such samples a
//! map that does no better than its shuffled self is reported as unfaithful.

use std::collections::VecDeque;

use serde::Serialize;

use super::display::{display_map, ranking, shuffled};
use crate::error::Result;
use crate::model::ndarray::{Array2, Array3, Axis};
use crate::model::{softmax, Classifier};

/// Shares of the input's pixels deleted, most salient first: a short deletion curve.
pub const SHARES: [f64; 4] = [0.05, 0.1, 0.2, 0.4];

/// The window's mean score at or below which maps are unfaithful: deleting their most
/// salient pixels takes less than 5 % of the class's probability more than deleting the
/// shuffled map's.
pub const UNFAITHFUL_AT_MOST: f64 = 0.05;

/// One measurement on one frame.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Sample {
    /// `map_drop − control_drop`: above 0 the map's placement matters.
    pub score: f64,
    /// Mean over [`SHARES`] of `max(0, p − p_deleted) / p` with the map's top pixels deleted.
    pub map_drop: f64,
    /// The same with the shuffled map's.
    pub control_drop: f64,
    /// Forward passes it took.
    pub passes: usize,
}

/// Measures `map` (at the CAM layer's resolution) of `class` on the preprocessed input
/// `x` (`[3,S,S]`) whose probability of `class` is `p`; `seed` shuffles the control.
pub fn measure(
    classifier: &Classifier,
    x: &Array3<f32>,
    p: f64,
    map: &Array2<f32>,
    class: usize,
    seed: u64,
) -> Result<Sample> {
    let (_, h, w) = x.dim();
    let mut drops = [0.0; 2];
    for (drop, saliency) in drops.iter_mut().zip([map.clone(), shuffled(map, seed)]) {
        let order = ranking(&display_map(&saliency, h, w));
        for share in SHARES {
            let mut deleted = x.clone();
            for &pixel in &order[..((h * w) as f64 * share).round() as usize] {
                // 0 in preprocessed space: the mean colour.
                for mut plane in deleted.axis_iter_mut(Axis(0)) {
                    plane[[pixel / w, pixel % w]] = 0.0;
                }
            }
            let logits = classifier
                .forward(deleted.view().insert_axis(Axis(0)))?
                .logits;
            let q = softmax(&logits.row(0).to_vec())[class];
            *drop += if p > 0.0 { (p - q).max(0.0) / p } else { 0.0 };
        }
        *drop /= SHARES.len() as f64;
    }
    Ok(Sample {
        score: drops[0] - drops[1],
        map_drop: drops[0],
        control_drop: drops[1],
        passes: 2 * SHARES.len(),
    })
}

/// What the samples say.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Fewer samples than the window holds.
    Measuring,
    Faithful,
    Unfaithful,
}

/// The last samples and the state they give.
#[derive(Debug)]
pub struct Health {
    window: usize,
    scores: VecDeque<f64>,
    state: State,
    last: Option<Sample>,
    samples: u64,
}

/// The `faithfulness` block of stats and the `health` message.
#[derive(Clone, Debug, Serialize)]
pub struct HealthSnapshot {
    pub state: State,
    /// Mean score over the window; `null` before the first sample.
    pub window_mean: Option<f64>,
    pub window: usize,
    /// Samples taken since the start.
    pub samples: u64,
    pub last: Option<Sample>,
    pub unfaithful_at_most: f64,
}

impl Health {
    pub fn new(window: usize) -> Self {
        Health {
            window: window.max(1),
            scores: VecDeque::new(),
            state: State::Measuring,
            last: None,
            samples: 0,
        }
    }

    /// Adds a sample; returns the new state when it changed.
    pub fn record(&mut self, sample: Sample) -> Option<State> {
        if self.scores.len() == self.window {
            self.scores.pop_front();
        }
        self.scores.push_back(sample.score);
        self.last = Some(sample);
        self.samples += 1;
        let state = match (self.scores.len() == self.window, self.mean()) {
            (false, _) => State::Measuring,
            (true, Some(m)) if m <= UNFAITHFUL_AT_MOST => State::Unfaithful,
            (true, _) => State::Faithful,
        };
        let changed = state != self.state;
        self.state = state;
        changed.then_some(state)
    }

    pub fn window(&self) -> usize {
        self.window
    }

    fn mean(&self) -> Option<f64> {
        let n = self.scores.len();
        (n > 0).then(|| self.scores.iter().sum::<f64>() / n as f64)
    }

    pub fn snapshot(&self) -> HealthSnapshot {
        HealthSnapshot {
            state: self.state,
            window_mean: self.mean(),
            window: self.window,
            samples: self.samples,
            last: self.last.clone(),
            unfaithful_at_most: UNFAITHFUL_AT_MOST,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(score: f64) -> Sample {
        Sample {
            score,
            map_drop: score,
            control_drop: 0.0,
            passes: 8,
        }
    }

    #[test]
    fn the_state_follows_the_window() {
        let mut h = Health::new(3);
        assert_eq!(h.record(sample(0.4)), None, "still measuring");
        assert_eq!(h.snapshot().state, State::Measuring);
        h.record(sample(0.3));
        assert_eq!(h.record(sample(0.2)), Some(State::Faithful));
        assert_eq!(h.record(sample(0.0)), None, "mean 0.17: still faithful");
        assert_eq!(h.record(sample(-0.1)), Some(State::Unfaithful), "mean 0.03");
        let s = h.snapshot();
        assert!((s.window_mean.unwrap() - 0.1 / 3.0).abs() < 1e-9);
        assert_eq!((s.samples, s.window), (5, 3));
        assert_eq!(h.record(sample(0.5)), Some(State::Faithful));
    }
}
