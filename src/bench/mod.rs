//! `iscamd bench`: forward-pass throughput and heatmap latency of each backend, model,
//! batch plan and thread count on the machine at hand, as ratios within one run.
//!
//! Each measurement comes back as a typed row through a callback, so that a long run shows
//! its rows as they are measured; formatting them is the caller's.

mod heatmaps;
mod report;
mod throughput;

use std::path::{Path, PathBuf};

use image::RgbImage;

pub use heatmaps::{HeatmapRow, LiveLatency, LiveWeights};
pub use report::{Machine, Report};
pub use throughput::{Costs, ModelCost, ThroughputRow};

use crate::cam::CamParams;
use crate::error::Result;
use crate::model::config::ModelConfig;
use crate::model::kernels::{EnvSettings, Policy};
use crate::model::{BackendKind, BackendOptions, BatchPlan, Classifier};

/// What to measure.
pub struct Bench {
    /// The frame every pass runs on.
    pub frame: RgbImage,
    pub models: Vec<PathBuf>,
    /// Labels, preprocessing and backend settings shared by every model.
    pub model: ModelConfig,
    pub engines: Vec<Engine>,
    /// Batch sizes of the throughput table.
    pub batches: Vec<usize>,
    /// Images per throughput measurement (rounded up to whole batches).
    pub images: usize,
    /// tract's batch plans (ONNX Runtime always runs a batch whole).
    pub plans: Vec<BatchPlan>,
    /// Maps to time, each with the spec it was written as.
    pub heatmaps: Vec<(String, CamParams)>,
    /// Times each map is made, for its p50 and p95.
    pub repeat: u32,
    /// Frames of the live-map latency; 0 skips it.
    pub live_frames: usize,
    /// Cores to use: passes in flight (tract) or intra-op threads (ONNX Runtime).
    pub threads: usize,
}

impl Bench {
    /// Loads `path` on `engine`; `threads` is ONNX Runtime's intra-op thread count.
    pub fn load(
        &self,
        path: &Path,
        plan: BatchPlan,
        engine: Engine,
        threads: usize,
    ) -> Result<Classifier> {
        let settings = ModelConfig {
            backend: engine.backend,
            threads,
            ..self.model.clone()
        };
        let mut options = settings.options(path.to_owned(), plan);
        if let BackendOptions::Tract(tract) = &mut options.backend {
            tract.kernels = engine.kernels;
        }
        Classifier::load(&options)
    }
}

/// A backend, and for tract the kernel policy its plans are optimised under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Engine {
    pub backend: BackendKind,
    pub kernels: Policy,
}

impl Engine {
    /// Every backend asked for, and for tract every kernel policy asked for (none: the
    /// process default).
    pub fn all(backends: &[BackendKind], kernels: &[Policy]) -> Vec<Engine> {
        let default = EnvSettings::or_default().policy;
        backends
            .iter()
            .flat_map(|&backend| match backend {
                BackendKind::Tract if !kernels.is_empty() => kernels
                    .iter()
                    .map(|&kernels| Engine { backend, kernels })
                    .collect(),
                _ => vec![Engine {
                    backend,
                    kernels: default,
                }],
            })
            .collect()
    }
}

/// As its label: `tract`, `tract/stock`, `ort`.
impl serde::Serialize for Engine {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let label = match (self.backend, self.kernels) {
            (BackendKind::Tract, Policy::Stock) => format!("{}/stock", self.backend),
            _ => self.backend.to_string(),
        };
        f.pad(&label)
    }
}

/// Where one forward pass of the frame spends its time on `engine`, op by op.
pub struct OpProfile {
    pub model: String,
    pub engine: Engine,
    /// Seconds of one pass, measured around the whole pass.
    pub pass: f64,
    pub ops: Vec<crate::model::OpTime>,
}

impl Bench {
    /// The op profile of every model on every tract engine, one thread, `images` passes
    /// each.
    pub fn profiles(&self, mut on_profile: impl FnMut(&OpProfile)) -> Result<()> {
        let tract = self
            .engines
            .iter()
            .filter(|e| e.backend == BackendKind::Tract);
        for &engine in tract {
            for path in &self.models {
                let classifier = self.load(path, BatchPlan::Split, engine, 1)?;
                let input = classifier.preprocess().tensor(&self.frame);
                let batch = input.insert_axis(crate::model::ndarray::Axis(0));
                classifier.forward(batch.view())?;
                let start = std::time::Instant::now();
                for _ in 0..self.images {
                    classifier.forward(batch.view())?;
                }
                let pass = start.elapsed().as_secs_f64() / self.images.max(1) as f64;
                if let Some(ops) = classifier.profile(&self.frame, self.images)? {
                    on_profile(&OpProfile {
                        model: file_name(path),
                        engine,
                        pass,
                        ops,
                    });
                }
            }
        }
        Ok(())
    }
}

/// p50 and p95 (nearest rank) of a set of timings, in seconds.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
}

impl Percentiles {
    pub fn of(seconds: &[f64]) -> Self {
        Percentiles {
            p50: percentile(seconds, 50.0),
            p95: percentile(seconds, 95.0),
        }
    }
}

/// Nearest-rank percentile; NaN for no values.
fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v = [5.0, 1.0, 4.0, 2.0, 3.0];
        assert_eq!(Percentiles::of(&v), Percentiles { p50: 3.0, p95: 5.0 });
        assert_eq!(percentile(&[7.0], 95.0), 7.0);
        assert!(percentile(&[], 50.0).is_nan());
    }

    #[test]
    fn kernel_policies_multiply_tract_only() {
        let engines = Engine::all(
            &[BackendKind::Tract, BackendKind::Ort],
            &[Policy::Tuned, Policy::Stock],
        );
        let names: Vec<String> = engines.iter().map(|e| e.to_string()).collect();
        assert_eq!(names, ["tract", "tract/stock", "ort"]);
    }
}
