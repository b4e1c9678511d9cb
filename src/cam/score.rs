//! Batched scoring of masked inputs: the expensive part of every method.
//! Workers (one per pass in flight) take batches of (channel, step) jobs in order, build the
//! masked inputs and run them through the model.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::model::ndarray::{Array3, Array4, ArrayView3, Axis};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use super::masks::{map_planes, normalise, Upsampler};
use super::{CamParams, Method};
use crate::error::{Error, Result};
use crate::model::{softmax, Classifier};

/// Per channel, averaged over its steps.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ChannelScore {
    pub prob: f64,
    pub logit_diff: f64,
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn score_masks(
    classifier: &Classifier,
    x: &Array3<f32>,
    activations: ArrayView3<f32>,
    channels: &[usize],
    class: usize,
    clean_logit: f32,
    params: &CamParams,
    threads: usize,
    deadline: super::Deadline,
) -> Result<Vec<ChannelScore>> {
    let steps = params.steps();
    let jobs = channels.len() * steps;
    let (_, input_size, _) = x.dim();
    let s = params.score_size.unwrap_or(input_size);
    let scaled;
    let x = if s == input_size {
        x
    } else {
        scaled = resize_planes(x, s);
        &scaled
    };
    let (_, h, w) = activations.dim();
    let upsampler = Upsampler::new(h, w, s, s);
    let builder = MaskedInputs {
        x,
        activations,
        channels,
        steps,
        method: params.method,
        upsampler,
        seed: params.seed,
    };

    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(usize, f64, f64)>> = Mutex::new(Vec::with_capacity(jobs));
    let failure: Mutex<Option<Error>> = Mutex::new(None);
    let worker = || {
        let mut mask_cache: Option<(usize, Vec<f32>)> = None;
        loop {
            let start = next.fetch_add(params.batch, Ordering::Relaxed);
            if start >= jobs || failure.lock().expect("poisoned").is_some() {
                return;
            }
            if let Err(e) = deadline.check(start.min(jobs), jobs) {
                failure.lock().expect("poisoned").get_or_insert(e);
                return;
            }
            let end = (start + params.batch).min(jobs);
            let input = builder.batch(start..end, &mut mask_cache);
            match classifier.forward_owned(input) {
                Ok(out) => {
                    let mut local = Vec::with_capacity(end - start);
                    for (i, row) in out.logits.axis_iter(Axis(0)).enumerate() {
                        let row = row.to_vec();
                        local.push((
                            start + i,
                            softmax(&row)[class],
                            (row[class] - clean_logit) as f64,
                        ));
                    }
                    results.lock().expect("poisoned").extend(local);
                }
                Err(e) => {
                    failure.lock().expect("poisoned").get_or_insert(e);
                    return;
                }
            }
        }
    };
    // As many passes at once as the model runs fastest on these threads (measured once per
    // model and thread count); any threads left split each pass's matrix products.
    let split = classifier.split(threads).split;
    let pass_worker = || split.scope(worker);
    std::thread::scope(|scope| {
        for _ in 1..split.in_flight {
            scope.spawn(pass_worker);
        }
        pass_worker();
    });
    if let Some(e) = failure.into_inner().expect("poisoned") {
        return Err(e);
    }
    let mut scores = vec![ChannelScore::default(); channels.len()];
    for (job, prob, diff) in results.into_inner().expect("poisoned") {
        let s = &mut scores[job / steps];
        s.prob += prob / steps as f64;
        s.logit_diff += diff / steps as f64;
    }
    Ok(scores)
}

/// Each plane of `x` resized to `size`×`size` (triangle filter: antialiased when shrinking).
fn resize_planes(x: &Array3<f32>, size: usize) -> Array3<f32> {
    let size = size as u32;
    map_planes(x, |plane| {
        image::imageops::resize(plane, size, size, image::imageops::FilterType::Triangle)
    })
}

/// SS-CAM's noise for one mask: an `S×S` draw of its own per (channel, step), broadcast
/// over the colour planes, as torchcam does. Each draw has its own ChaCha stream, so a
/// map depends on the seed only, not on batching or threads.
fn add_noise(mask: &mut [f32], sigma: f32, seed: u64, channel: usize, step: usize) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(((channel as u64) << 32) | step as u64);
    let normal = Normal::new(0.0f32, sigma).expect("sigma validated as finite and ≥ 0");
    for m in mask {
        *m += normal.sample(&mut rng);
    }
}

struct MaskedInputs<'a> {
    x: &'a Array3<f32>,
    activations: ArrayView3<'a, f32>,
    channels: &'a [usize],
    steps: usize,
    method: Method,
    upsampler: Upsampler,
    seed: u64,
}

impl MaskedInputs<'_> {
    /// The masked inputs of jobs `range` (job = channel index × steps + step) as one batch.
    fn batch(
        &self,
        range: std::ops::Range<usize>,
        cache: &mut Option<(usize, Vec<f32>)>,
    ) -> Array4<f32> {
        let (c, s, _) = self.x.dim();
        let plane = s * s;
        let len = range.len();
        let mut data = vec![0.0f32; len * c * plane];
        let x = self.x.as_slice().expect("input is contiguous");
        let mut noisy = Vec::new();
        for (slot, job) in range.enumerate() {
            let (ci, step) = (job / self.steps, job % self.steps);
            let channel = self.channels[ci];
            if cache.as_ref().is_none_or(|(k, _)| *k != channel) {
                let mut mask = vec![0.0; plane];
                let normalised = normalise(self.activations.index_axis(Axis(0), channel))
                    .expect("selected channels are not constant");
                self.upsampler.apply_into(normalised.view(), &mut mask);
                *cache = Some((channel, mask));
            }
            let mask = &cache.as_ref().expect("just filled").1;
            let out = &mut data[slot * c * plane..][..c * plane];
            match self.method {
                // `cam` and `recipro` never reach the masked passes.
                Method::Cam | Method::Recipro | Method::ScoreCam => {
                    for (o, (xv, m)) in out.iter_mut().zip(x.iter().zip(mask.iter().cycle())) {
                        *o = xv * m;
                    }
                }
                Method::IsCam { steps } => {
                    // X_i = x ⊙ M · i(i+1)/(2N) for step i = 1..N.
                    let i = (step + 1) as f32;
                    let scale = i * (i + 1.0) / (2.0 * steps as f32);
                    for (o, (xv, m)) in out.iter_mut().zip(x.iter().zip(mask.iter().cycle())) {
                        *o = xv * m * scale;
                    }
                }
                Method::SsCam { sigma, .. } => {
                    noisy.clone_from(mask);
                    add_noise(&mut noisy, sigma, self.seed, channel, step);
                    for (o, (xv, m)) in out.iter_mut().zip(x.iter().zip(noisy.iter().cycle())) {
                        *o = xv * m;
                    }
                }
            }
        }
        Array4::from_shape_vec((len, c, s, s), data).expect("batch shape")
    }
}
