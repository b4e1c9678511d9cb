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
use crate::model::kernels::{
    self, CachedChoice, Candidate, Choice, Chosen, ChosenSplit, OwnOps, PoolIsa, Split, OWN_OPS,
};

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
    let input = zero_input(backend)?;
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
        choice = entries[winner(&times)].1;
        table.extend(entries.iter().map(|e| e.0.clone()).zip(times));
    }
    choice = measure_own_ops(backend, choice, &input, &mut table)?;
    table.sort_by(|a, b| a.1.total_cmp(&b.1));
    Ok((choice, table))
}

/// With the kernels of `choice`: the plan with each of iscamd's ops that replaced something
/// left out, and with max-pooling in each compiled form. What beats the plan with every op
/// by more than [`MARGIN`] is kept — each op on its own (their effects add up: they replace
/// different steps).
fn measure_own_ops(
    backend: &TractBackend,
    mut choice: Choice,
    input: &TValue,
    table: &mut Vec<(String, f64)>,
) -> Result<Choice> {
    let side = backend.input_size;
    let (plan, swaps, _) = backend.build_plan_with(choice, Some(1), side)?;
    let replaced = |name| {
        swaps
            .as_ref()
            .and_then(|s| s.get(name))
            .is_some_and(|s| s.replaced > 0)
    };
    let mut entries = vec![("ops:every".to_string(), choice.ops, plan)];
    let mut trials: Vec<(String, OwnOps)> = OWN_OPS
        .into_iter()
        .filter(|name| replaced(name))
        .map(|name| (format!("ops:without {name}"), choice.ops.with(name, false)))
        .collect();
    if replaced("max-pool") {
        trials.extend(
            PoolIsa::available()
                .into_iter()
                .filter(|&isa| isa != choice.ops.pool())
                .map(|isa| {
                    (
                        format!("ops:max-pool {}", isa.name()),
                        choice.ops.with_pool(isa),
                    )
                }),
        );
    }
    for (label, ops) in trials {
        let (plan, _, _) = backend.build_plan_with(Choice { ops, ..choice }, Some(1), side)?;
        entries.push((label, ops, plan));
    }
    let times = time_plans(backend, &entries, input)?;
    let beats = |i: usize| times[i] < times[0] * (1.0 - MARGIN);
    let mut ops = choice.ops;
    let faster = entries
        .iter()
        .enumerate()
        .skip(1)
        .filter(|(i, _)| beats(*i));
    for (_, (_, trial, _)) in faster {
        for name in OWN_OPS.into_iter().filter(|n| !trial.runs(n)) {
            ops = ops.with(name, false);
        }
    }
    let fastest_pool = (0..entries.len())
        .filter(|&i| i == 0 || entries[i].0.starts_with("ops:max-pool") && beats(i))
        .min_by(|&a, &b| times[a].total_cmp(&times[b]));
    if let Some(i) = fastest_pool {
        ops = ops.with_pool(entries[i].1.pool());
    }
    choice.ops = ops;
    table.extend(entries.iter().map(|e| e.0.clone()).zip(times));
    Ok(choice)
}

/// The entry to keep, by time per pass: the fastest, if it beats the first (what runs
/// without a choice) by more than [`MARGIN`]; else the first.
fn winner(times: &[f64]) -> usize {
    let fastest = (0..times.len()).min_by(|&a, &b| times[a].total_cmp(&times[b]));
    match fastest {
        Some(i) if times[i] < times[0] * (1.0 - MARGIN) => i,
        _ => 0,
    }
}

/// How `threads` threads run this model's passes fastest, from the cache or measured now:
/// each even way to share them ([`Split::candidates`]) runs the model's plan as a map runs
/// it, passes per second counted; all passes in flight stay unless another way beats that
/// by more than [`MARGIN`]. Kept in the model's cache entry, if it has one.
pub(super) fn split(backend: &TractBackend, threads: usize) -> Result<ChosenSplit> {
    let path = backend.path.as_path();
    let cached = backend
        .cache
        .as_deref()
        .and_then(|dir| Some((dir, CachedChoice::read(dir, path)?.0)));
    if let Some((dir, entry)) = &cached {
        if let Some(known) = entry.split(threads) {
            let how = format!(
                "measured on this CPU (cached in {})",
                entry.file(dir).display()
            );
            return Ok(ChosenSplit {
                how,
                ..known.clone()
            });
        }
    }
    let plan = backend.plan(1, backend.input_size)?;
    let input = zero_input(backend)?;
    let candidates = Split::candidates(threads);
    let mut rates = vec![0.0f64; candidates.len()];
    for _ in 0..ROUNDS {
        for (split, rate) in candidates.iter().zip(&mut rates) {
            *rate = rate.max(passes_per_second(backend, &plan, &input, *split)?);
        }
    }
    let seconds_per_pass: Vec<f64> = rates.iter().map(|r| 1.0 / r).collect();
    let chosen = winner(&seconds_per_pass);
    let mut measured: Vec<(String, f64)> = candidates
        .iter()
        .map(|s| format!("{}x{}", s.in_flight, s.per_pass))
        .zip(rates)
        .collect();
    measured.sort_by(|a, b| b.1.total_cmp(&a.1));
    let split = ChosenSplit {
        threads,
        split: candidates[chosen],
        how: "measured".into(),
        measured,
    };
    tracing::info!("{}: {split}", path.display());
    if let Some((dir, mut entry)) = cached {
        entry.splits.push(split.clone());
        if let Err(e) = entry.write(dir) {
            tracing::warn!(
                "cannot keep how passes share threads in {}: {e}",
                dir.display()
            );
        }
    }
    Ok(split)
}

/// Passes per second of `split`: its passes in flight, each running [`PASSES`] passes.
fn passes_per_second(
    backend: &TractBackend,
    plan: &Plan,
    input: &TValue,
    split: Split,
) -> Result<f64> {
    let run_passes = || -> Result<()> {
        split.scope(|| {
            for _ in 0..PASSES {
                plan.run(tvec![input.clone()])
                    .map_err(|e| backend.model_error(e))?;
            }
            Ok(())
        })
    };
    let started = Instant::now();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (1..split.in_flight)
            .map(|_| scope.spawn(run_passes))
            .collect();
        let mine = run_passes();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .chain([mine])
            .collect::<Result<Vec<()>>>()
    })?;
    Ok((split.in_flight * PASSES) as f64 / started.elapsed().as_secs_f64())
}

fn zero_input(backend: &TractBackend) -> Result<TValue> {
    let side = backend.input_size;
    Ok(Tensor::zero::<f32>(&[1, 3, side, side])
        .map_err(|e| backend.model_error(e))?
        .into())
}

/// Milliseconds per pass of each plan: its best round. A plan whose first pass takes more
/// than [`DROP_AFTER`] times the ladder's is out at once, with that pass as its time: the
/// slowest candidates (emulated instruction sets) would otherwise cost seconds each.
fn time_plans(
    backend: &TractBackend,
    entries: &[(String, impl Sized, Plan)],
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

#[cfg(test)]
mod tests {
    use super::winner;

    /// The selection on the timings measured for the int8 SqueezeNet on an Intel Xeon with
    /// AMX (ms per pass, docs/benchmarks.md): tract's ladder answers with its AMX kernels,
    /// which measured twice as slow as its VNNI ones there, so the VNNI candidate is kept.
    /// (This machine may have no AMX: the timings are the forced part.)
    #[test]
    fn vnni_is_kept_over_amx_when_amx_measures_slower() {
        let labels = [
            "i32:tract (amx)",
            "i32:avx512vnni",
            "i32:avx512amx-int8",
            "i32:avxvnni",
        ];
        let times = [31.0, 15.8, 30.2, 147.3];
        assert_eq!(labels[winner(&times)], "i32:avx512vnni");
    }

    #[test]
    fn the_first_entry_stays_unless_beaten_by_more_than_noise() {
        assert_eq!(winner(&[20.0, 19.8, 25.0]), 0, "1 % is noise");
        assert_eq!(winner(&[20.0, 19.0, 18.0]), 2);
        assert_eq!(winner(&[20.0]), 0);
        assert_eq!(winner(&[20.0, f64::NAN]), 0);
    }
}
