use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use iscamd::bench::{
    Bench, Costs, Engine, HeatmapRow, LiveLatency, OpProfile, Report, ThroughputRow,
};
use iscamd::cam::{spec, CamParams};
use iscamd::model::kernels::Policy;
use iscamd::model::{BackendKind, BatchPlan, NodeTime};
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
    #[arg(long, value_delimiter = ',', default_value = "split", value_parser = BatchPlan::parse)]
    pub plans: Vec<BatchPlan>,
    /// Backends to compare side by side, e.g. "tract,ort". Default: --backend.
    #[arg(long = "backends", value_name = "LIST", value_delimiter = ',', value_parser = str::parse::<BackendKind>)]
    pub backends: Vec<BackendKind>,
    /// tract's kernels to compare, comma-separated: tuned (iscamd's own pooling, packing,
    /// ReLU and quantize ops, and the matrix kernels measured fastest here; row "tract") and
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
    /// Also write the run's figures, with the CPU, its instruction sets and the kernels
    /// chosen, as JSON (schema in docs/benchmarks.md) to attach to an issue.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Frames timed for the live-map latency (a forward pass plus the weighted sum, from
    /// the first heatmap's weights); 0 skips it.
    #[arg(long, default_value_t = 30)]
    pub live_frames: usize,
    /// Instead of the tables: where one forward pass spends its time on tract, op by op
    /// (one thread, mean of --images passes).
    #[arg(long)]
    pub profile: bool,
    /// With --profile: also the N nodes that took longest, each with what its op says of
    /// itself (kernel, packing, shapes)
    #[arg(long, value_name = "N", default_value_t = 0, requires = "profile")]
    pub profile_nodes: usize,
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
    let backends = match args.backends.is_empty() {
        true => vec![args.model.backend],
        false => args.backends.clone(),
    };
    let bench = Bench {
        frame: decode_image(&args.image)?,
        models: match args.models.is_empty() {
            true => vec![args.model.model_path()?],
            false => args.models.clone(),
        },
        model: args.model.settings(0),
        engines: Engine::all(&backends, &args.kernels),
        batches: args.batches.clone(),
        images: args.images,
        plans: args.plans.clone(),
        heatmaps: args.heatmaps()?,
        repeat: args.repeat,
        live_frames: args.live_frames,
        threads: args.model.threads(),
    };
    let image = args.image.display();
    println!(
        "# iscamd bench: {} core(s) used, image {image}",
        bench.threads
    );
    if args.profile {
        if !backends.contains(&BackendKind::Tract) {
            anyhow::bail!("--profile times the ops of tract's plans: add tract to --backends");
        }
        bench.profiles(|profile| print_profile(profile, args.profile_nodes))?;
        return Ok(ExitCode::SUCCESS);
    }
    let costs = bench.costs().context("cannot load the model")?;
    print_costs(&costs);
    let mut report = Report::new(
        std::env::args().collect(),
        costs.peak_gflops,
        costs.models.clone(),
    );
    bench.throughput(&costs, |row| {
        print_throughput(row);
        report.throughput.push(row.clone());
    })?;
    if !bench.heatmaps.is_empty() {
        print_heatmap_header(bench.repeat);
        let first_weights = bench.heatmaps(|row| {
            print_heatmap(row);
            report.heatmaps.push(row.clone());
        })?;
        if let (Some(weights), true) = (first_weights, bench.live_frames > 0) {
            let live = bench.live_latency(&weights)?;
            print_live(&live);
            report.live = Some(live);
        }
    }
    if let Some(path) = &args.report {
        let json = serde_json::to_vec_pretty(&report)?;
        std::fs::write(path, json).with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn print_profile(profile: &OpProfile, slowest_nodes: usize) {
    let total: f64 = profile.ops.iter().map(|o| o.seconds_per_pass).sum();
    println!(
        "\n# {} on {}, one thread: {:.3} ms per pass ({:.3} ms in the ops below)",
        profile.model,
        profile.engine,
        profile.pass * 1e3,
        total * 1e3
    );
    println!(
        "{:<28} {:>6} {:>12} {:>7}",
        "op", "nodes", "ms/pass", "share"
    );
    for op in &profile.ops {
        println!(
            "{:<28} {:>6} {:>12.4} {:>6.1}%",
            op.op,
            op.nodes,
            op.seconds_per_pass * 1e3,
            100.0 * op.seconds_per_pass / total
        );
    }
    if slowest_nodes == 0 {
        return;
    }
    let mut nodes: Vec<(&str, &NodeTime)> = profile
        .ops
        .iter()
        .flat_map(|op| op.by_node.iter().map(|node| (op.op.as_str(), node)))
        .collect();
    nodes.sort_by(|a, b| b.1.seconds_per_pass.total_cmp(&a.1.seconds_per_pass));
    println!("\n# the {slowest_nodes} slowest nodes");
    println!("{:>12} {:<28} {:<40} info", "ms/pass", "op", "node");
    for (op, node) in nodes.into_iter().take(slowest_nodes) {
        println!(
            "{:>12.4} {:<28} {:<40} {}",
            node.seconds_per_pass * 1e3,
            op,
            node.name,
            node.info
        );
    }
}

fn print_heatmap_header(repeat: u32) {
    println!();
    println!(
        "# heatmaps made {repeat} time(s) each on the same frame: latency p50 / p95 (nearest rank)"
    );
    println!(
        "{:<28} {:>11} {:<16} {:>7} {:>9} {:>9} {:>8} {:>11} {:>9}",
        "model",
        "backend",
        "heatmap",
        "passes",
        "p50 s",
        "p95 s",
        "ms/pass",
        "full passes",
        "vs first"
    );
}

fn print_costs(costs: &Costs) {
    println!(
        "# threads: tract shares them as measured for the model, passes in flight × threads \
         per pass (2x1: two passes at once, one thread each); ort runs one pass at a time on \
         that many intra-op threads. \"vs first\": against the model's first row with the \
         same batch and threads."
    );
    println!(
        "# peak: {:.1} GFLOP/s on one thread, the best of 5 single-precision 1024×1024×1024 \
         matrix products through tract's kernels; \"% peak\" is against that × threads",
        costs.peak_gflops
    );
    for model in &costs.models {
        println!(
            "# {}: {:.3} G multiply-adds per image (tract's cost model); {}",
            model.path.file_name().unwrap_or_default().to_string_lossy(),
            model.macs as f64 / 1e9,
            model.tract
        );
    }
    println!(
        "{:<28} {:>11} {:>9} {:>6} {:>10} {:>10} {:>9} {:>9} {:>8} {:>7}",
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
}

fn print_throughput(r: &ThroughputRow) {
    println!(
        "{:<28} {:>11} {:>9} {:>6} {:>10} {:>10.1} {:>9.1} {:>8.2}x {:>8.1} {:>6.0}%",
        r.model,
        r.engine,
        r.plan.name(),
        r.batch,
        format!("{} ({})", r.threads, r.split),
        r.images_per_s,
        r.ms_per_pass,
        r.vs_first,
        r.gflops,
        r.percent_of_peak
    );
}

fn print_heatmap(r: &HeatmapRow) {
    println!(
        "{:<28} {:>11} {:<16} {:>7} {:>9.3} {:>9.3} {:>8.1} {:>11.2} {:>8.2}x",
        r.model,
        r.engine,
        r.spec,
        r.passes,
        r.seconds.p50,
        r.seconds.p95,
        r.ms_per_pass,
        r.full_passes,
        r.speedup_vs_first
    );
}

fn print_live(live: &LiveLatency) {
    println!();
    println!(
        "# live maps from the weights of {}, {} frames: preprocessing + forward pass + weighted sum",
        live.spec, live.frames
    );
    println!("{:<34} {:>9} {:>9}", "per frame", "p50 ms", "p95 ms");
    for (what, p) in [
        ("prediction only", live.prediction),
        ("prediction + live map", live.prediction_and_map),
        ("render: overlay + JPEG, 640 px", live.render),
    ] {
        println!("{what:<34} {:>9.1} {:>9.1}", p.p50 * 1e3, p.p95 * 1e3);
    }
    println!(
        "{:<34} {:>8.3}x",
        "live map / prediction (p50)",
        live.prediction_and_map.p50 / live.prediction.p50
    );
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
