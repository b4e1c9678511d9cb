//! Heatmap latency per model, method and engine, and what a live map adds to a prediction.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use image::codecs::jpeg::JpegEncoder;
use serde::Serialize;

use super::{file_name, Bench, Engine, Percentiles};
use crate::analysis::Analysis;
use crate::cam::{display, live};
use crate::error::{Error, Result};
use crate::model::ndarray::Axis;
use crate::model::{BatchPlan, Classifier};

/// One heatmap latency measurement.
#[derive(Clone, Debug, Serialize)]
pub struct HeatmapRow {
    pub model: String,
    pub engine: Engine,
    pub spec: String,
    pub passes: usize,
    pub seconds: Percentiles,
    pub ms_per_pass: f64,
    /// The map's p50 over a forward pass's on the same engine: its cost in full passes
    /// (Recipro-CAM's partial passes are not full ones).
    pub full_passes: f64,
    /// The p50 of the spec's first engine over this one's: above 1 is faster.
    pub speedup_vs_first: f64,
}

/// The first map's weights, from which live maps are timed.
pub struct LiveWeights {
    pub model: PathBuf,
    pub engine: Engine,
    pub spec: String,
    pub weights: live::Reference,
}

/// Per frame: the prediction alone, with a live map, and the renderer's overlay + JPEG.
#[derive(Clone, Debug, Serialize)]
pub struct LiveLatency {
    pub spec: String,
    pub frames: usize,
    pub prediction: Percentiles,
    pub prediction_and_map: Percentiles,
    pub render: Percentiles,
}

impl Bench {
    /// Times every heatmap on every model and engine, handing each row to `on_row`; returns
    /// the first map's weights for [`Bench::live_latency`] (none when no map was asked for).
    pub fn heatmaps(&self, mut on_row: impl FnMut(&HeatmapRow)) -> Result<Option<LiveWeights>> {
        let mut first_weights = None;
        for path in &self.models {
            let loaded: Vec<(Engine, Classifier)> = self
                .engines
                .iter()
                .map(|&e| Ok((e, self.load(path, BatchPlan::Split, e, self.threads)?)))
                .collect::<Result<_>>()?;
            let forward: Vec<f64> = loaded
                .iter()
                .map(|(_, classifier)| self.forward_p50(classifier))
                .collect::<Result<_>>()?;
            for (spec, params) in &self.heatmaps {
                let mut first = None;
                for ((engine, classifier), forward) in loaded.iter().zip(&forward) {
                    let analysis = Analysis::of_frame(classifier, self.frame.clone())?;
                    let mut seconds = Vec::new();
                    let mut passes = 0;
                    for _ in 0..self.repeat {
                        let t0 = Instant::now();
                        let e = analysis.explain(classifier, None, params, self.threads)?;
                        seconds.push(t0.elapsed().as_secs_f64());
                        passes = e.passes;
                        if let (None, Some(a)) = (&first_weights, &analysis.activations) {
                            first_weights = Some(LiveWeights {
                                model: path.clone(),
                                engine: *engine,
                                spec: spec.clone(),
                                weights: live::Reference::new(&e, a.view(), 0),
                            });
                        }
                    }
                    let seconds = Percentiles::of(&seconds);
                    let first = *first.get_or_insert(seconds.p50);
                    on_row(&HeatmapRow {
                        model: file_name(path),
                        engine: *engine,
                        spec: spec.clone(),
                        passes,
                        seconds,
                        ms_per_pass: seconds.p50 * 1e3 / passes.max(1) as f64,
                        full_passes: seconds.p50 / forward,
                        speedup_vs_first: first / seconds.p50,
                    });
                }
            }
        }
        Ok(first_weights)
    }

    /// The p50 of one forward pass of the bench's frame, in seconds.
    fn forward_p50(&self, classifier: &Classifier) -> Result<f64> {
        let input = classifier
            .preprocess()
            .tensor(&self.frame)
            .insert_axis(Axis(0));
        let mut seconds = Vec::new();
        for _ in 0..self.repeat.max(3) {
            let t0 = Instant::now();
            classifier.forward(input.view())?;
            seconds.push(t0.elapsed().as_secs_f64());
        }
        Ok(Percentiles::of(&seconds).p50)
    }

    /// A frame's forward pass plus the weighted sum of a live map, against the forward pass
    /// alone; and what the daemon's renderer adds beside it.
    pub fn live_latency(&self, from: &LiveWeights) -> Result<LiveLatency> {
        let classifier = self.load(&from.model, BatchPlan::Split, from.engine, self.threads)?;
        let policy = live::Policy {
            max_age: Duration::MAX,
            max_drift: 1.0,
        };
        let (mut prediction, mut total, mut render) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..self.live_frames {
            let t0 = Instant::now();
            let analysis = Analysis::of_frame(&classifier, self.frame.clone())?;
            let t1 = Instant::now();
            let activations = analysis
                .activations
                .as_ref()
                .ok_or_else(|| Error::model(&from.model, "no CAM layer: live maps need one"))?;
            let weights = &from.weights;
            let map = weights
                .live_map(
                    weights.class,
                    activations.view(),
                    Default::default(),
                    &policy,
                )
                .map_err(|why| Error::Inference(format!("no live map: {why}")))?
                .map;
            prediction.push((t1 - t0).as_secs_f64());
            total.push(t0.elapsed().as_secs_f64());
            let t2 = Instant::now();
            let crop = classifier.preprocess().crop_region();
            let overlay = display::overlay(&self.frame, &map, crop, 640);
            JpegEncoder::new_with_quality(&mut Vec::new(), 80)
                .encode_image(&overlay)
                .map_err(|e| Error::Inference(format!("JPEG of the overlay: {e}")))?;
            render.push(t2.elapsed().as_secs_f64());
        }
        Ok(LiveLatency {
            spec: from.spec.clone(),
            frames: self.live_frames,
            prediction: Percentiles::of(&prediction),
            prediction_and_map: Percentiles::of(&total),
            render: Percentiles::of(&render),
        })
    }
}
