//! The measured kernel choice: every candidate way of picking tract's matrix kernels
//! ([`kernels::candidates`]) is timed on the model's own plan, and the fastest is kept per
//! model — not per product, because a whole plan is what runs (products share packed
//! inputs, and iscamd's ops sit between them), and timing it is what a user would time.
//! One accumulator is settled at a time (f32 products, then i32 ones), each against tract's
//! own ladder, which keeps its place unless a candidate beats it by more than noise.

use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use tract_onnx::prelude::*;

use super::{Plan, TractBackend};
use crate::error::Result;
use crate::model::kernels::{self, CachedChoice, Candidate, Choice, Chosen};

/// Rounds of timing: every plan runs in each, so that a slow spell of the machine (another
/// process, frequency steps) falls on all of them; each plan's best round counts.
const ROUNDS: usize = 4;
/// Passes per plan per round.
const PASSES: usize = 2;
/// A candidate whose first pass is this many times the ladder's is not timed further.
const DROP_AFTER: f64 = 1.5;
/// How much faster than tract's ladder a candidate must be to replace it.
const MARGIN: f64 = 0.03;

/// What this process has chosen, by model file (path, size, modification time) and
/// settings: a model loaded again (every map size, every backend in `bench`) is measured
/// once. Its lock is held while measuring, so that two loads of one model do not measure
/// at once, each disturbing the other's timing.
static CHOSEN: Mutex<Vec<(String, Chosen)>> = Mutex::new(Vec::new());

/// The choice for this backend's model: from the cache, or measured now (and cached).
pub(super) fn choose(
    backend: &TractBackend,
    cache: Option<&Path>,
    only: Option<&[Candidate]>,
) -> Result<Chosen> {
    let path = backend.path.as_path();
    let meta = std::fs::metadata(path).ok();
    let key = format!(
        "{:?} {:?} {:?} {cache:?} {only:?}",
        std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned()),
        meta.as_ref().map(|m| m.len()),
        meta.and_then(|m| m.modified().ok()),
    );
    let mut chosen = CHOSEN.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, c)) = chosen.iter().find(|(k, _)| *k == key) {
        return Ok(c.clone());
    }
    let choice = choose_anew(backend, cache, only)?;
    chosen.push((key, choice.clone()));
    Ok(choice)
}

fn choose_anew(
    backend: &TractBackend,
    cache: Option<&Path>,
    only: Option<&[Candidate]>,
) -> Result<Chosen> {
    let path = backend.path.as_path();
    if let Some(dir) = cache {
        if let Some((cached, choice)) = CachedChoice::read(dir, path) {
            let file = cached.file(dir);
            return Ok(Chosen::Cached { choice, file });
        }
    }
    let started = Instant::now();
    let (choice, measured) = measure(backend, only)?;
    let chosen = Chosen::Measured {
        choice,
        measured: measured.clone(),
        seconds: started.elapsed().as_secs_f64(),
    };
    tracing::info!("{}: {chosen}", path.display());
    if let (Some(dir), Some(entry)) = (cache, CachedChoice::new(path, choice, measured)) {
        if let Err(e) = entry.write(dir) {
            tracing::warn!(
                "cannot keep the kernel choice in {}: {e}; it is measured again at every start",
                dir.display()
            );
        }
    }
    Ok(chosen)
}

/// Times every candidate; returns the fastest choice and each candidate's milliseconds per
/// pass, fastest first.
fn measure(
    backend: &TractBackend,
    only: Option<&[Candidate]>,
) -> Result<(Choice, Vec<(String, f64)>)> {
    let side = backend.input_size;
    let (mut baseline, _, asked) = backend.build_plan_with(Choice::default(), Some(1), side)?;
    let input: TValue = Tensor::zero::<f32>(&[1, 3, side, side])
        .map_err(|e| backend.model_error(e))?
        .into();
    let mut choice = Choice::default();
    let mut table = Vec::new();
    for accumulator in asked.list() {
        if choice != Choice::default() {
            baseline = backend.build_plan_with(choice, Some(1), side)?.0;
        }
        let label = |what: &dyn std::fmt::Display| format!("{accumulator:?}:{what}").to_lowercase();
        let mut entries: Vec<(String, Choice, Plan)> =
            vec![(label(&"tract"), choice, baseline.clone())];
        for candidate in kernels::candidates(accumulator)
            .into_iter()
            .filter(|c| only.is_none_or(|o| o.contains(c)))
        {
            let trial = choice.with(accumulator, Some(candidate));
            let (plan, _, _) = backend.build_plan_with(trial, Some(1), side)?;
            entries.push((label(&candidate), trial, plan));
        }
        let times = time_plans(backend, &entries, &input)?;
        let (best, _) = times
            .iter()
            .enumerate()
            .min_by(|a, b| a.1.total_cmp(b.1))
            .expect("tract's ladder is always an entry");
        if times[best] < times[0] * (1.0 - MARGIN) {
            choice = entries[best].1;
        }
        table.extend(entries.iter().map(|e| e.0.clone()).zip(times));
    }
    table.sort_by(|a, b| a.1.total_cmp(&b.1));
    Ok((choice, table))
}

/// Milliseconds per pass of each plan: its best round. A plan whose first pass takes more
/// than [`DROP_AFTER`] times the ladder's is out at once, with that pass as its time: the
/// slowest candidates (emulated instruction sets) would otherwise cost seconds each.
fn time_plans(
    backend: &TractBackend,
    entries: &[(String, Choice, Plan)],
    input: &TValue,
) -> Result<Vec<f64>> {
    let run = |plan: &Plan| -> Result<f64> {
        let t0 = Instant::now();
        plan.run(tvec![input.clone()])
            .map_err(|e| backend.model_error(e))?;
        Ok(t0.elapsed().as_secs_f64() * 1e3)
    };
    // The first pass also warms the plan up (first-run allocations, caches).
    let first: Vec<f64> = entries
        .iter()
        .map(|(_, _, plan)| run(plan))
        .collect::<Result<_>>()?;
    let racing: Vec<bool> = first
        .iter()
        .map(|&ms| ms <= first[0] * DROP_AFTER)
        .collect();
    let mut best: Vec<f64> = first
        .iter()
        .zip(&racing)
        .map(|(&ms, &racing)| if racing { f64::INFINITY } else { ms })
        .collect();
    for _ in 0..ROUNDS {
        for (i, (_, _, plan)) in entries.iter().enumerate().filter(|(i, _)| racing[*i]) {
            let mut ms = 0.0;
            for _ in 0..PASSES {
                ms += run(plan)?;
            }
            best[i] = best[i].min(ms / PASSES as f64);
        }
    }
    Ok(best)
}
