//! Which predictions are published (`[mqtt] prediction_policy`): every frame's, or only
//! those that say something new, so that subscribers such as Home Assistant, which write
//! every state change to their database, are not sent five unchanged states a second.

use std::time::{Duration, Instant};

use serde::Deserialize;

/// `[mqtt] prediction_policy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictionPolicy {
    /// Every processed frame's prediction.
    Every,
    /// When the top-1 class changes, when its score moves by `prediction_min_change`,
    /// and at least every `prediction_interval`.
    #[default]
    OnChange,
    /// One prediction per `prediction_interval`.
    Interval,
}

/// Decides, frame by frame, whether a prediction is published.
#[derive(Debug)]
pub struct PredictionGate {
    policy: PredictionPolicy,
    interval: Duration,
    min_change: f64,
    /// When the last published prediction was made, its top-1 class and score.
    last: Option<(Instant, usize, f64)>,
}

impl PredictionGate {
    pub fn new(policy: PredictionPolicy, interval: Duration, min_change: f64) -> Self {
        PredictionGate {
            policy,
            interval,
            min_change,
            last: None,
        }
    }

    /// Whether the prediction of a frame whose top-1 class is `class` with `score` is
    /// published at `now`. The first one always is.
    pub fn admit(&mut self, now: Instant, class: usize, score: f64) -> bool {
        let publish = match (self.policy, self.last) {
            (PredictionPolicy::Every, _) | (_, None) => true,
            (PredictionPolicy::Interval, Some((at, _, _))) => self.due(now, at),
            (PredictionPolicy::OnChange, Some((at, last_class, last_score))) => {
                class != last_class
                    || (score - last_score).abs() >= self.min_change
                    || self.due(now, at)
            }
        };
        if publish {
            self.last = Some((now, class, score));
        }
        publish
    }

    fn due(&self, now: Instant, last: Instant) -> bool {
        now.saturating_duration_since(last) >= self.interval
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Frames every 200 ms (5 fps): which of them are published.
    fn published(policy: PredictionPolicy, frames: &[(usize, f64)]) -> Vec<usize> {
        let mut gate = PredictionGate::new(policy, 1000 * MS, 0.05);
        let t0 = Instant::now();
        frames
            .iter()
            .enumerate()
            .filter(|(i, (class, score))| gate.admit(t0 + 200 * MS * *i as u32, *class, *score))
            .map(|(i, _)| i)
            .collect()
    }

    #[test]
    fn every_publishes_every_frame() {
        assert_eq!(
            published(PredictionPolicy::Every, &[(1, 0.9); 4]),
            [0, 1, 2, 3]
        );
    }

    #[test]
    fn on_change_publishes_changes_and_a_heartbeat() {
        let mut frames = vec![(1, 0.90); 12];
        frames[3] = (2, 0.60); // another class
        frames[4] = (2, 0.62); // small move: not news
        frames[5] = (2, 0.70); // a move of 0.08
        assert_eq!(
            published(PredictionPolicy::OnChange, &frames),
            // 6: back to class 1; 11: a second after 6 (the heartbeat)
            [0, 3, 5, 6, 11]
        );
    }

    #[test]
    fn interval_publishes_once_a_period_whatever_changes() {
        let frames: Vec<_> = (0..11).map(|i| (i % 3, 0.5)).collect();
        assert_eq!(published(PredictionPolicy::Interval, &frames), [0, 5, 10]);
    }
}
