use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use iscamd::analysis::Analysis;
use iscamd::cam::{display, live, spec, CamParams};
use std::collections::{BTreeSet, HashMap};

use iscamd::model::kernels::{self, Policy};
use iscamd::model::ndarray::{Array4, Axis};
use iscamd::model::{cost, BackendKind, BatchPlan, Classifier};
use iscamd::source::decode_image;

use super::ModelArgs;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Image used for every pass.
    #[arg(long, value_name = "PATH")]
    pub image: PathBuf,
    /// Models to compare (repeat the flag). Default: --model.
    #[arg(long = "compare", value_name = "PATH")]
    pub models: Vec<PathBuf>,
    /// Batch sizes for forward throughput, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    pub batches: Vec<usize>,
    /// Images pushed through per measurement (rounded up to whole batches).
    #[arg(long, default_value_t = 32)]
    pub images: usize,
    /// How tract runs a batch, comma-separated: split (one image per pass of the batch-1
    /// plan, what iscamd does), batched (one plan per batch size), symbolic (one plan with a
    /// symbolic batch dimension). ONNX Runtime always runs the batch whole.
    #[arg(long, value_delimiter = ',', default_value = "split", value_parser = parse_plan)]
    pub plans: Vec<BatchPlan>,
    /// Backends to compare side by side, e.g. "tract,ort". Default: --backend.
    #[arg(long = "backends", value_name = "LIST", value_delimiter = ',', value_parser = super::parse_backend)]
    pub backends: Vec<BackendKind>,
    /// tract's kernels to compare, comma-separated: tuned (iscamd's own pooling, packing,
    /// ReLU and quantize ops, and on AMD Zen 4 its matrix-kernel choice; row "tract") and
    /// stock (tract as it ships; row "tract/stock"). Default: $ISCAMD_KERNELS, or tuned.
    #[arg(long, value_delimiter = ',', value_parser = Policy::parse)]
    pub kernels: Vec<Policy>,
    /// Heatmap latencies to time, as method specs (docs/commands.md, "Method specs"),
    /// comma-separated, e.g. "iscam,scorecam,iscam:n=10,k=0"; "none" times none.
    #[arg(long, default_value = "iscam,scorecam,iscam:n=10,k=0")]
    pub heatmaps: String,
    /// Times each heatmap is made, for its p50 and p95 latency.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub repeat: u32,
    /// Frames timed for the live-map latency (a forward pass plus the weighted sum, from
    /// the first heatmap's weights); 0 skips it.
    #[arg(long, default_value_t = 30)]
    pub live_frames: usize,
    #[command(flatten)]
    pub model: ModelArgs,
}

impl BenchArgs {
    /// The maps `--heatmaps` asks for, each with the spec it was written as.
    pub fn heatmaps(&self) -> iscamd::Result<Vec<(String, CamParams)>> {
        spec::split_list(&self.heatmaps)
            .into_iter()
            .filter(|s| s != "none")
            .map(|s| spec::parse(&s).map(|p| (s, p)))
            .collect()
    }
}

pub fn run(args: BenchArgs) -> Result<ExitCode> {
    let heatmaps = args.heatmaps()?;
    let frame = decode_image(&args.image)?;
    let models = if args.models.is_empty() {
        vec![args.model.model_path()?]
    } else {
        args.models.clone()
    };
    let engines = engines(&args);
    let threads = args.model.threads();
    println!(
        "# iscamd bench: {} core(s) used, image {}",
        threads,
        args.image.display()
    );
    throughput_table(&args, &models, &engines, &frame)?;
    if heatmaps.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    let live_weights = heatmap_table(&args, &models, &engines, &frame, &heatmaps)?;
    if let (Some((path, engine, spec, weights)), true) = (live_weights, args.live_frames > 0) {
        let classifier = args
            .model
            .load_with(&path, BatchPlan::Split, engine.pair(), threads)?;
        live_latency(&classifier, &frame, &weights, &spec, args.live_frames)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Every backend asked for, and for tract every kernel policy asked for.
fn engines(args: &BenchArgs) -> Vec<Engine> {
    let backends = if args.backends.is_empty() {
        vec![args.model.backend]
    } else {
        args.backends.clone()
    };
    backends
        .iter()
        .flat_map(|&backend| match backend {
            BackendKind::Tract if !args.kernels.is_empty() => args
                .kernels
                .iter()
                .map(|&kernels| Engine { backend, kernels })
                .collect(),
            _ => vec![Engine {
                backend,
                kernels: Policy::from_env().unwrap_or_default(),
            }],
        })
        .collect()
}

/// The machine's single-thread peak and each model's cost, as table notes.
fn print_costs(args: &BenchArgs, models: &[PathBuf]) -> Result<(f64, HashMap<PathBuf, u64>)> {
    println!(
        "# threads: tract runs that many passes at once (one thread each); ort runs one pass \
         at a time on that many intra-op threads. \"vs first\": against the model's first row \
         with the same batch and threads."
    );
    let policy = Policy::from_env().unwrap_or_default();
    println!("# tract kernels: {}", kernels::matrix_kernels(policy));
    let peak = cost::sgemm_gflops(1024, 5)?;
    println!(
        "# peak: {peak:.1} GFLOP/s on one thread, the best of 5 single-precision 1024×1024×1024 \
         matrix products through tract's kernels; \"% peak\" is against that × threads"
    );
    let mut macs = HashMap::new();
    for path in models {
        let classifier =
            args.model
                .load_with(path, BatchPlan::Split, (BackendKind::Tract, policy), 1)?;
        let m = cost::forward_macs(path, classifier.input_size())?;
        println!(
            "# {}: {:.3} G multiply-adds per image (tract's cost model)",
            file_name(path),
            m as f64 / 1e9
        );
        macs.insert(path.clone(), m);
    }
    Ok((peak, macs))
}

/// Forward-pass throughput per model, engine, plan, thread count and batch.
fn throughput_table(
    args: &BenchArgs,
    models: &[PathBuf],
    engines: &[Engine],
    frame: &image::RgbImage,
) -> Result<()> {
    let (peak, macs) = print_costs(args, models)?;
    println!(
        "{:<28} {:>11} {:>9} {:>6} {:>8} {:>10} {:>9} {:>9} {:>8} {:>7}",
        "model",
        "backend",
        "plan",
        "batch",
        "threads",
        "images/s",
        "ms/pass",
        "vs first",
        "GFLOP/s",
        "% peak"
    );
    let thread_counts: BTreeSet<usize> = [1, args.model.threads()].into();
    let mut first_rate: HashMap<(usize, usize, usize), f64> = HashMap::new();
    for (m, path) in models.iter().enumerate() {
        let name = file_name(path);
        for engine in engines {
            let plans = match engine.backend {
                BackendKind::Tract => args.plans.clone(),
                BackendKind::Ort => vec![BatchPlan::Batched],
            };
            for plan in plans {
                for &t in &thread_counts {
                    let (classifier, in_flight) = match engine.backend {
                        BackendKind::Tract => {
                            (args.model.load_with(path, plan, engine.pair(), 1)?, t)
                        }
                        BackendKind::Ort => {
                            (args.model.load_with(path, plan, engine.pair(), t)?, 1)
                        }
                    };
                    let input = classifier.preprocess().tensor(frame);
                    for &batch in &args.batches {
                        let batch_input = input
                            .broadcast((batch, 3, input.dim().1, input.dim().2))
                            .context("batch")?
                            .to_owned();
                        classifier.forward(batch_input.view())?; // builds the plan and warms up
                        let (rate, per_pass) =
                            throughput(&classifier, &batch_input, args.images, in_flight)?;
                        let base = *first_rate.entry((m, batch, t)).or_insert(rate);
                        let gflops = rate * 2.0 * macs[path] as f64 / 1e9;
                        let label = plan_name(plan);
                        println!(
                            "{name:<28} {engine:>11} {label:>9} {batch:>6} {t:>8} {rate:>10.1} {per_pass:>9.1} {:>8.2}x {gflops:>8.1} {:>6.0}%",
                            rate / base,
                            100.0 * gflops / (peak * t as f64)
                        );
                    }
                }
            }
        }
    }
    Ok(())
}

/// The first heatmap's weights, for the live-map latency.
type LiveWeights = Option<(PathBuf, Engine, String, live::Reference)>;

/// Heatmap latency per model, method spec and engine.
fn heatmap_table(
    args: &BenchArgs,
    models: &[PathBuf],
    engines: &[Engine],
    frame: &image::RgbImage,
    heatmaps: &[(String, CamParams)],
) -> Result<LiveWeights> {
    println!();
    println!(
        "# heatmaps made {} time(s) each on the same frame: latency p50 / p95 (nearest rank)",
        args.repeat
    );
    println!(
        "{:<28} {:>11} {:<16} {:>7} {:>9} {:>9} {:>8} {:>9}",
        "model", "backend", "heatmap", "passes", "p50 s", "p95 s", "ms/pass", "vs first"
    );
    let threads = args.model.threads();
    let mut live_weights = None;
    for path in models {
        let name = file_name(path);
        let loaded: Vec<(&Engine, Classifier)> = engines
            .iter()
            .map(|e| {
                let classifier = args
                    .model
                    .load_with(path, BatchPlan::Split, e.pair(), threads)?;
                Ok((e, classifier))
            })
            .collect::<Result<_>>()?;
        for (spec, params) in heatmaps {
            let mut first = None;
            for (engine, classifier) in &loaded {
                let analysis = Analysis::of_frame(classifier, frame.clone())?;
                let mut seconds = Vec::new();
                let mut passes = 0;
                for _ in 0..args.repeat {
                    let t0 = Instant::now();
                    let e = analysis.explain(classifier, None, params, threads)?;
                    seconds.push(t0.elapsed().as_secs_f64());
                    passes = e.passes;
                    if let (None, Some(a)) = (&live_weights, &analysis.activations) {
                        let weights = live::Reference::new(&e, a.view(), 0);
                        live_weights = Some((path.clone(), **engine, spec.clone(), weights));
                    }
                }
                let (p50, p95) = (percentile(&seconds, 50.0), percentile(&seconds, 95.0));
                let base = *first.get_or_insert(p50);
                println!(
                    "{name:<28} {engine:>11} {spec:<16} {passes:>7} {p50:>9.2} {p95:>9.2} {:>8.1} {:>8.2}x",
                    p50 * 1e3 / passes.max(1) as f64,
                    base / p50
                );
            }
        }
    }
    Ok(live_weights)
}

/// A backend, and for tract whose kernel choice its plans are optimised under.
#[derive(Clone, Copy, Debug)]
struct Engine {
    backend: BackendKind,
    kernels: Policy,
}

impl Engine {
    fn pair(&self) -> (BackendKind, Policy) {
        (self.backend, self.kernels)
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

/// Live maps: a frame's forward pass plus the weighted sum, against the forward pass alone.
fn live_latency(
    classifier: &Classifier,
    frame: &image::RgbImage,
    weights: &live::Reference,
    spec: &str,
    frames: usize,
) -> Result<()> {
    let policy = live::Policy {
        max_age: std::time::Duration::MAX,
        max_drift: 1.0,
    };
    let (mut forward, mut total, mut render) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..frames {
        let t0 = Instant::now();
        let analysis = Analysis::of_frame(classifier, frame.clone())?;
        let t1 = Instant::now();
        let activations = analysis.activations.as_ref().context("no CAM layer")?;
        let live = weights
            .live_map(
                weights.class,
                activations.view(),
                Default::default(),
                &policy,
            )
            .map_err(|why| anyhow::anyhow!("no live map: {why}"))?;
        forward.push((t1 - t0).as_secs_f64());
        total.push(t0.elapsed().as_secs_f64());
        // What the daemon's renderer thread adds, beside the inference thread.
        let t2 = Instant::now();
        let crop = classifier.preprocess().crop_region();
        let overlay = display::overlay(frame, &live.map, crop, 640);
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 80).encode_image(&overlay)?;
        render.push(t2.elapsed().as_secs_f64());
    }
    println!();
    println!(
        "# live maps from the weights of {spec}, {frames} frames: preprocessing + forward pass + weighted sum"
    );
    println!("{:<34} {:>9} {:>9}", "per frame", "p50 ms", "p95 ms");
    for (what, v) in [
        ("prediction only", &forward),
        ("prediction + live map", &total),
        ("render: overlay + JPEG, 640 px", &render),
    ] {
        println!(
            "{what:<34} {:>9.1} {:>9.1}",
            percentile(v, 50.0) * 1e3,
            percentile(v, 95.0) * 1e3
        );
    }
    println!(
        "{:<34} {:>8.3}x",
        "live map / prediction (p50)",
        percentile(&total, 50.0) / percentile(&forward, 50.0)
    );
    Ok(())
}

/// Nearest-rank percentile.
fn percentile(values: &[f64], p: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

fn file_name(path: &std::path::Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Images per second and wall milliseconds per forward pass, with `threads` runs in flight.
fn throughput(
    classifier: &Classifier,
    batch_input: &Array4<f32>,
    images: usize,
    threads: usize,
) -> Result<(f64, f64)> {
    let batch = batch_input.len_of(Axis(0));
    let passes = images.div_ceil(batch).max(threads);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let t0 = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < passes {
                        classifier.forward(batch_input.view())?;
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().expect("bench thread panicked"))
    })?;
    let secs = t0.elapsed().as_secs_f64();
    Ok((
        (passes * batch) as f64 / secs,
        secs * 1e3 / passes as f64 * threads as f64,
    ))
}

fn parse_plan(s: &str) -> Result<BatchPlan, String> {
    match s {
        "split" => Ok(BatchPlan::Split),
        "batched" => Ok(BatchPlan::Batched),
        "symbolic" => Ok(BatchPlan::Symbolic),
        _ => Err(format!(
            "unknown plan {s:?}: expected split, batched or symbolic"
        )),
    }
}

fn plan_name(plan: BatchPlan) -> &'static str {
    match plan {
        BatchPlan::Split => "split",
        BatchPlan::Batched => "batched",
        BatchPlan::Symbolic => "symbolic",
    }
}

#[cfg(test)]
mod tests {
    use iscamd::cam::{spec, CamParams};

    #[test]
    fn default_heatmaps_include_the_daemon_default() {
        let heatmaps = crate::cli::default_of::<super::BenchArgs>("heatmaps");
        let parsed: Vec<CamParams> = spec::split_list(&heatmaps)
            .iter()
            .map(|s| spec::parse(s).unwrap())
            .collect();
        assert!(parsed.contains(&CamParams::new("iscam", None, None).unwrap()));
    }
}
