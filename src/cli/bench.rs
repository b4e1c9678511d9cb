use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use iscamd::analyse::Analysis;
use iscamd::cam::CamParams;
use std::collections::{BTreeSet, HashMap};

use iscamd::model::{BackendKind, BatchPlan, Classifier};
use iscamd::source::decode_image;
use tract_onnx::prelude::tract_ndarray::{Array4, Axis};

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
    /// Also time a symbolic-batch plan against per-size plans (tract).
    #[arg(long)]
    pub symbolic: bool,
    /// Backends to compare side by side, e.g. "tract,ort". Default: --backend.
    #[arg(long = "backends", value_name = "LIST", value_delimiter = ',', value_parser = super::parse_backend)]
    pub backends: Vec<BackendKind>,
    /// Heatmap latencies to time, as METHOD:STEPS:CHANNELS (channels 0 = all), comma-separated;
    /// "none" times none.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "iscam:3:128,scorecam:1:0,iscam:10:0"
    )]
    pub heatmaps: Vec<String>,
    #[command(flatten)]
    pub model: ModelArgs,
}

pub fn run(args: BenchArgs) -> Result<ExitCode> {
    let heatmaps: Vec<(&String, CamParams)> = args
        .heatmaps
        .iter()
        .filter(|s| !s.is_empty() && *s != "none")
        .map(|s| parse_heatmap(s).map(|p| (s, p)))
        .collect::<Result<_>>()?;
    let frame = decode_image(&args.image)?;
    let models = if args.models.is_empty() {
        vec![args.model.model_path()?]
    } else {
        args.models.clone()
    };
    let backends = if args.backends.is_empty() {
        vec![args.model.backend]
    } else {
        args.backends.clone()
    };
    let threads = args.model.threads();
    let thread_counts: BTreeSet<usize> = [1, threads].into();
    println!(
        "# iscamd bench: {} core(s) used, image {}",
        threads,
        args.image.display()
    );
    println!(
        "# threads: tract runs that many passes at once (one thread each); ort runs one pass \
         at a time on that many intra-op threads. \"vs first\": against the first backend's row."
    );
    println!(
        "{:<28} {:>7} {:>9} {:>6} {:>8} {:>10} {:>9} {:>9}",
        "model", "backend", "plan", "batch", "threads", "images/s", "ms/pass", "vs first"
    );
    let mut first_rate: HashMap<(usize, &str, usize, usize), f64> = HashMap::new();
    for (m, path) in models.iter().enumerate() {
        let name = file_name(path);
        for &backend in &backends {
            let mut plans = vec![BatchPlan::PerSize];
            if args.symbolic && backend == BackendKind::Tract {
                plans.push(BatchPlan::Symbolic);
            }
            for plan in plans {
                let plan_name = match plan {
                    BatchPlan::Symbolic => "symbolic",
                    BatchPlan::PerSize => "per-size",
                };
                for &t in &thread_counts {
                    let (classifier, in_flight) = match backend {
                        BackendKind::Tract => (args.model.load_with(path, plan, backend, 1)?, t),
                        BackendKind::Ort => (args.model.load_with(path, plan, backend, t)?, 1),
                    };
                    let input = classifier.preprocess().tensor(&frame);
                    for &batch in &args.batches {
                        let batch_input = input
                            .broadcast((batch, 3, input.dim().1, input.dim().2))
                            .context("batch")?
                            .to_owned();
                        classifier.forward(batch_input.view())?; // builds the plan and warms up
                        let (rate, per_pass) =
                            throughput(&classifier, &batch_input, args.images, in_flight)?;
                        let base = *first_rate.entry((m, plan_name, batch, t)).or_insert(rate);
                        println!(
                            "{name:<28} {backend:>7} {plan_name:>9} {batch:>6} {t:>8} {rate:>10.1} {per_pass:>9.1} {:>8.2}x",
                            rate / base
                        );
                    }
                }
            }
        }
    }
    if heatmaps.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    println!();
    println!(
        "{:<28} {:>7} {:<16} {:>7} {:>9} {:>8} {:>9}",
        "model", "backend", "heatmap", "passes", "seconds", "ms/pass", "vs first"
    );
    for path in &models {
        let name = file_name(path);
        let loaded: Vec<(BackendKind, Classifier)> = backends
            .iter()
            .map(|&b| {
                Ok((
                    b,
                    args.model.load_with(path, BatchPlan::PerSize, b, threads)?,
                ))
            })
            .collect::<Result<_>>()?;
        for (spec, params) in &heatmaps {
            let mut first = None;
            for (backend, classifier) in &loaded {
                let analysis = Analysis::of_frame(classifier, frame.clone())?;
                let t0 = Instant::now();
                let e = analysis.explain(classifier, None, params, threads)?;
                let secs = t0.elapsed().as_secs_f64();
                let base = *first.get_or_insert(secs);
                println!(
                    "{name:<28} {backend:>7} {spec:<16} {:>7} {secs:>9.2} {:>8.1} {:>8.2}x",
                    e.passes,
                    secs * 1e3 / e.passes.max(1) as f64,
                    base / secs
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
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

fn parse_heatmap(spec: &str) -> Result<CamParams> {
    let parts: Vec<&str> = spec.split(':').collect();
    let [method, steps, channels] = parts.as_slice() else {
        anyhow::bail!("--heatmaps {spec:?}: expected METHOD:STEPS:CHANNELS, e.g. iscam:4:32");
    };
    let steps: usize = steps
        .parse()
        .with_context(|| format!("--heatmaps {spec:?}: steps"))?;
    let channels: usize = channels
        .parse()
        .with_context(|| format!("--heatmaps {spec:?}: channels"))?;
    Ok(CamParams::new(method, Some(steps), Some(channels))?)
}
