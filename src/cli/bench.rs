use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use iscamd::analyse::Analysis;
use iscamd::cam::CamParams;
use iscamd::model::{BatchPlan, Classifier};
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
    /// Also time a symbolic-batch plan against per-size plans.
    #[arg(long)]
    pub symbolic: bool,
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
    let threads = args.model.threads();
    println!(
        "# iscamd bench: {} core(s) used, image {}",
        threads,
        args.image.display()
    );
    println!(
        "{:<32} {:>9} {:>6} {:>8} {:>12} {:>12}",
        "model", "plan", "batch", "threads", "images/s", "ms/pass"
    );
    for path in &models {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut plans = vec![BatchPlan::PerSize];
        if args.symbolic {
            plans.push(BatchPlan::Symbolic);
        }
        for plan in plans {
            let classifier = args.model.load_path(path, plan)?;
            let input = classifier.preprocess().tensor(&frame);
            for &batch in &args.batches {
                let batch_input = input
                    .broadcast((batch, 3, input.dim().1, input.dim().2))
                    .context("batch")?
                    .to_owned();
                classifier.forward(batch_input.view())?; // builds the plan and warms up
                for t in [1, threads]
                    .into_iter()
                    .collect::<std::collections::BTreeSet<_>>()
                {
                    let (rate, per_pass) = throughput(&classifier, &batch_input, args.images, t)?;
                    let plan_name = if plan == BatchPlan::Symbolic {
                        "symbolic"
                    } else {
                        "per-size"
                    };
                    println!(
                        "{name:<32} {plan_name:>9} {batch:>6} {t:>8} {rate:>12.1} {per_pass:>12.1}"
                    );
                }
            }
        }
    }
    if heatmaps.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    let classifier = args.model.load_path(&models[0], BatchPlan::PerSize)?;
    let analysis = Analysis::of_frame(&classifier, frame)?;
    println!();
    println!(
        "{:<24} {:>8} {:>10} {:>10} {:>12}",
        "heatmap", "passes", "seconds", "ms/pass", "vs first"
    );
    let mut first = None;
    for (spec, params) in heatmaps {
        let t0 = Instant::now();
        let e = analysis.explain(&classifier, None, &params, threads)?;
        let secs = t0.elapsed().as_secs_f64();
        let base = *first.get_or_insert(secs);
        println!(
            "{spec:<24} {:>8} {secs:>10.2} {:>10.1} {:>11.1}x",
            e.passes,
            secs * 1e3 / e.passes.max(1) as f64,
            secs / base
        );
    }
    Ok(ExitCode::SUCCESS)
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
