//! Forward passes per second per model, engine, batch plan, thread count and batch size.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Instant;

use serde::Serialize;

use super::{file_name, Bench, Engine};
use crate::error::{Error, Result};
use crate::model::kernels::{EnvSettings, Split};
use crate::model::ndarray::{Array4, Axis};
use crate::model::{cost, BackendKind, BatchPlan, Classifier};

/// What the machine and the models cost, against which throughput is read.
pub struct Costs {
    /// Single-thread peak: the best of 5 f32 1024³ matrix products through tract's kernels.
    pub peak_gflops: f64,
    pub models: Vec<ModelCost>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ModelCost {
    pub path: PathBuf,
    /// Multiply-adds per image, by tract's cost model.
    pub macs: u64,
    /// How tract runs it under the process's kernel policy: iscamd's ops, the matrix kernels
    /// and how they were chosen.
    pub tract: String,
}

/// One throughput measurement.
#[derive(Clone, Debug, Serialize)]
pub struct ThroughputRow {
    pub model: String,
    pub engine: Engine,
    #[serde(serialize_with = "plan_name")]
    pub plan: BatchPlan,
    pub batch: usize,
    pub threads: usize,
    /// How the threads ran passes: `2x1` is two passes in flight, one thread each.
    pub split: String,
    pub images_per_s: f64,
    /// Wall time of one pass, as one of the passes in flight.
    pub ms_per_pass: f64,
    /// Against the model's first row with the same batch and threads.
    pub vs_first: f64,
    pub gflops: f64,
    /// Against the single-thread peak × threads.
    pub percent_of_peak: f64,
}

impl Bench {
    /// The machine's peak and each model's cost.
    pub fn costs(&self) -> Result<Costs> {
        let policy = EnvSettings::or_default().policy;
        let mut models = Vec::new();
        for path in &self.models {
            let tract = Engine {
                backend: BackendKind::Tract,
                kernels: policy,
            };
            let classifier = self.load(path, BatchPlan::Split, tract, 1)?;
            models.push(ModelCost {
                path: path.clone(),
                macs: cost::forward_macs(path, classifier.input_size())?,
                tract: classifier.backend(),
            });
        }
        Ok(Costs {
            peak_gflops: cost::sgemm_gflops(1024, 5)?,
            models,
        })
    }

    /// Measures every combination, handing each row to `on_row` as it is measured. tract
    /// shares `threads` between passes as measured for the model ([`Classifier::split`]);
    /// ONNX Runtime runs one pass on `threads`.
    pub fn throughput(&self, costs: &Costs, mut on_row: impl FnMut(&ThroughputRow)) -> Result<()> {
        let thread_counts: BTreeSet<usize> = [1, self.threads].into();
        let mut first_rate: HashMap<(usize, usize, usize), f64> = HashMap::new();
        for (m, ModelCost { path, macs, .. }) in costs.models.iter().enumerate() {
            for &engine in &self.engines {
                let plans = match engine.backend {
                    BackendKind::Tract => self.plans.clone(),
                    BackendKind::Ort => vec![BatchPlan::Batched],
                };
                for plan in plans {
                    for &threads in &thread_counts {
                        let (classifier, split) = match engine.backend {
                            BackendKind::Tract => {
                                let classifier = self.load(path, plan, engine, 1)?;
                                let split = classifier.split(threads).split;
                                (classifier, split)
                            }
                            BackendKind::Ort => {
                                (self.load(path, plan, engine, threads)?, Split::passes(1))
                            }
                        };
                        let input = classifier.preprocess().tensor(&self.frame);
                        let (c, h, w) = input.dim();
                        for &batch in &self.batches {
                            let batch_input = input
                                .broadcast((batch, c, h, w))
                                .ok_or_else(|| Error::invalid("batch", batch))?
                                .to_owned();
                            classifier.forward(batch_input.view())?; // builds the plan, warms up
                            let (rate, ms_per_pass) =
                                measure(&classifier, &batch_input, self.images, split)?;
                            let first = *first_rate.entry((m, batch, threads)).or_insert(rate);
                            let gflops = rate * 2.0 * *macs as f64 / 1e9;
                            on_row(&ThroughputRow {
                                model: file_name(path),
                                engine,
                                plan,
                                batch,
                                threads,
                                split: format!("{}x{}", split.in_flight, split.per_pass),
                                images_per_s: rate,
                                ms_per_pass,
                                vs_first: rate / first,
                                gflops,
                                percent_of_peak: 100.0 * gflops
                                    / (costs.peak_gflops * threads as f64),
                            });
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// Images per second and wall milliseconds per forward pass, with `split`'s passes at once.
fn measure(
    classifier: &Classifier,
    batch_input: &Array4<f32>,
    images: usize,
    split: Split,
) -> Result<(f64, f64)> {
    let in_flight = split.in_flight;
    let batch = batch_input.len_of(Axis(0));
    let passes = images.div_ceil(batch).max(in_flight);
    let next = AtomicUsize::new(0);
    let t0 = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let handles: Vec<_> = (0..in_flight)
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    split.scope(|| {
                        while next.fetch_add(1, Relaxed) < passes {
                            classifier.forward(batch_input.view())?;
                        }
                        Ok(())
                    })
                })
            })
            .collect();
        handles.into_iter().try_for_each(|h| {
            h.join()
                .unwrap_or_else(|_| Err(Error::Inference("a benchmark pass panicked".into())))
        })
    })?;
    let secs = t0.elapsed().as_secs_f64();
    Ok((
        (passes * batch) as f64 / secs,
        secs * 1e3 / passes as f64 * in_flight as f64,
    ))
}

fn plan_name<S: serde::Serializer>(plan: &BatchPlan, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(plan.name())
}
