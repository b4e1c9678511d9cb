//! Flag definitions and the commands behind them.

#[cfg(feature = "eval")]
mod bench;
mod cameras;
mod classify;
#[cfg(feature = "eval")]
mod eval;
mod explain;
mod model;
mod replay;
mod run;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use iscamd::model::config::ModelConfig;
use iscamd::model::{BackendKind, BatchPlan, ChannelOrder, Classifier, Provider};

/// Classify camera frames with SqueezeNet on tract, and explain each decision with a
/// Score-CAM / SS-CAM / IS-CAM heatmap.
#[derive(Parser, Debug)]
#[command(
    name = "iscamd",
    version,
    propagate_version = true,
    after_help = "Environment: ISCAMD_MODEL, ISCAMD_MODEL_DIR, ISCAMD_KERNELS (tuned|stock), \
                  ISCAMD_MATMUL (force tract's matrix kernels and iscamd's ops, e.g. f32=fma), \
                  ISCAMD_IN_FLIGHT (force how many passes of a map run at once), ORT_DYLIB_PATH, \
                  RUST_LOG; see docs/configuration.md, \"Environment\"."
)]
pub struct Cli {
    /// More log output (-v: debug, -vv: trace). RUST_LOG overrides it.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Top-5 classes of each image: the model as the daemon sees it.
    Classify(classify::ClassifyArgs),
    /// Heatmaps that show which part of each image made the model decide.
    Explain(explain::ExplainArgs),
    /// Classify and explain a debug bundle's frame again: same top-1 and maps? Exit code 1 if not.
    Replay(replay::ReplayArgs),
    /// The daemon: frames from a camera, an RTSP stream, a video or any GStreamer pipeline; classify every frame, explain on schedule, trigger or command, publish over MQTT.
    Run(run::RunArgs),
    /// Check a daemon config: model, source and broker; exit code 1 on any problem.
    Check(run::CheckArgs),
    /// Faithfulness (Average Drop/Increase, deletion/insertion AUC) and cost of explanation methods.
    #[cfg(feature = "eval")]
    Eval(eval::EvalArgs),
    /// Forward-pass throughput and heatmap latency on this machine.
    #[cfg(feature = "eval")]
    Bench(bench::BenchArgs),
    /// List cameras (V4L2) and the modes iscamd can stream from each.
    Cameras,
    /// Get a model: download it with its checksum, or annotate one with its metadata.
    #[command(subcommand)]
    Model(model::ModelCommand),
}

impl Cli {
    pub fn is_daemon(&self) -> bool {
        matches!(self.command, Command::Run(_))
    }
}

pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Classify(a) => classify::run(a),
        Command::Explain(a) => explain::run(a),
        Command::Replay(a) => replay::run(a),
        Command::Run(a) => run::run(a),
        Command::Check(a) => run::check(a),
        #[cfg(feature = "eval")]
        Command::Eval(a) => eval::run(a),
        #[cfg(feature = "eval")]
        Command::Bench(a) => bench::run(a),
        Command::Cameras => cameras::run(),
        Command::Model(c) => model::run(c),
    }
}

/// Logs to stderr: warnings by default, progress too for the daemon.
pub fn init_logging(verbose: u8, daemon: bool) {
    let level = match verbose {
        0 if daemon => "info",
        0 => "warn",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("iscamd={level},tract=warn,rumqttd=off"))
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal: not in the journal or a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// The images and videos a command reads.
#[derive(Args, Debug, Clone)]
pub struct Inputs {
    /// Image files, directories of them (not recursive), or video files (.mp4, .mkv,
    /// .avi, …; read through GStreamer).
    #[arg(required = true, value_name = "IMAGE|DIR|VIDEO")]
    pub inputs: Vec<PathBuf>,
    /// For videos: one frame every this much of the video's timeline (e.g. 500ms, 2s).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub every: std::time::Duration,
}

impl Inputs {
    pub fn stills(&self) -> impl Iterator<Item = iscamd::Result<iscamd::source::Still>> {
        iscamd::source::stills(&self.inputs, self.every)
    }
}

/// Which model to run and how to feed it.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// ONNX classifier. Default: squeezenet1.0.onnx in $ISCAMD_MODEL_DIR, ./models or
    /// /var/lib/iscamd/models (`iscamd model fetch` puts it there).
    #[arg(long, env = "ISCAMD_MODEL", value_name = "PATH")]
    pub model: Option<PathBuf>,
    /// Labels file, one class per line (`WNID name` or `name`). Default: the one beside the model.
    #[arg(long, value_name = "PATH")]
    pub labels: Option<PathBuf>,
    /// Tensor whose activations feed the CAM. Default: the model's `cam_layer` metadata, else
    /// the one found in its graph (docs/models.md, "The CAM layer").
    #[arg(long, value_name = "NAME")]
    pub cam_layer: Option<String>,
    /// Side of the square model input. Default: metadata `input_size`.
    #[arg(long, value_name = "PIXELS")]
    pub input_size: Option<u32>,
    /// Side of the square resize before the centre crop. Default: metadata `resize`.
    #[arg(long, value_name = "PIXELS")]
    pub resize: Option<u32>,
    /// Channel order of the input tensor, RGB or BGR. Default: metadata `channel_order`.
    #[arg(long, value_name = "ORDER", value_parser = str::parse::<ChannelOrder>)]
    pub channel_order: Option<ChannelOrder>,
    /// Per-channel mean subtracted, "A,B,C" in tensor channel order. Default: metadata `mean`.
    #[arg(long, value_name = "A,B,C", value_parser = parse_triplet)]
    pub mean: Option<[f32; 3]>,
    /// Per-channel divisor, "A,B,C". Default: metadata `std`.
    #[arg(long, value_name = "A,B,C", value_parser = parse_triplet)]
    pub std: Option<[f32; 3]>,
    /// CPU threads for inference. Default: all cores.
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// What runs the model: tract (built in) or ort (ONNX Runtime, feature `ort`; the
    /// library comes from $ORT_DYLIB_PATH).
    #[arg(long, env = "ISCAMD_BACKEND", value_name = "NAME", default_value = "tract", value_parser = str::parse::<BackendKind>)]
    pub backend: BackendKind,
    /// ONNX Runtime execution providers in order of preference, e.g. "tensorrt,cuda,cpu";
    /// each must register or loading fails. Default: cpu.
    #[arg(long, value_name = "LIST", value_delimiter = ',', value_parser = str::parse::<Provider>)]
    pub providers: Vec<Provider>,
}

impl ModelArgs {
    pub fn model_path(&self) -> Result<PathBuf> {
        match &self.model {
            Some(p) => Ok(p.clone()),
            None => Self::default_model_path(),
        }
    }

    /// The default model (see [`iscamd::model::fetch::model_dirs`]).
    pub fn default_model_path() -> Result<PathBuf> {
        Ok(iscamd::model::fetch::default_model_path()?)
    }

    pub fn threads(&self) -> usize {
        self.threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1)
    }

    pub fn load(&self) -> Result<Classifier> {
        self.load_path(&self.model_path()?, BatchPlan::Split)
    }

    pub fn load_path(&self, path: &std::path::Path, batch_plan: BatchPlan) -> Result<Classifier> {
        let options = self
            .settings(self.threads.unwrap_or(0))
            .options(path.to_owned(), batch_plan);
        Classifier::load(&options).context("cannot load the model")
    }

    /// The model settings these flags give; `threads` is ONNX Runtime's intra-op thread
    /// count (0: one per core). tract runs each pass on one thread.
    pub fn settings(&self, threads: usize) -> ModelConfig {
        ModelConfig {
            path: None,
            labels: self.labels.clone(),
            cam_layer: self.cam_layer.clone(),
            input_size: self.input_size,
            resize: self.resize,
            channel_order: self.channel_order,
            mean: self.mean,
            std: self.std,
            threads,
            backend: self.backend,
            providers: self.providers.clone(),
            ..ModelConfig::default()
        }
    }
}

fn parse_triplet(s: &str) -> Result<[f32; 3]> {
    let v: Vec<f32> = s
        .split(',')
        .map(|p| p.trim().parse::<f32>())
        .collect::<std::result::Result<_, _>>()?;
    v.try_into()
        .map_err(|_| anyhow::anyhow!("{s:?}: expected three comma-separated numbers"))
}

/// Output format of per-image results.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Format {
    /// Lines for people.
    #[default]
    Text,
    /// One JSON object per image per line (JSON Lines).
    Json,
}

/// Counts failures over a multi-image run and turns them into the exit code.
#[derive(Default)]
pub struct Tally {
    pub ok: usize,
    pub failed: usize,
}

impl Tally {
    pub fn fail(&mut self, e: impl Into<anyhow::Error>) {
        eprintln!("error: {:#}", e.into());
        self.failed += 1;
    }

    pub fn finish(self) -> ExitCode {
        if self.failed == 0 {
            ExitCode::SUCCESS
        } else {
            eprintln!("{} of {} inputs failed", self.failed, self.failed + self.ok);
            ExitCode::FAILURE
        }
    }
}

/// The default of a flag of `A`, as --help shows it.
#[cfg(all(test, feature = "eval"))]
fn default_of<A: clap::Args>(flag: &str) -> String {
    let cmd = A::augment_args(clap::Command::new("test"));
    let arg = cmd.get_arguments().find(|a| a.get_id() == flag).unwrap();
    arg.get_default_values()[0].to_str().unwrap().to_string()
}

/// Every place that takes a method spec reads it the same way, with the same defaults.
#[cfg(test)]
mod method_specs {
    use clap::Parser;
    use iscamd::cam::{spec, CamParams};
    use iscamd::config::Config;
    #[cfg(feature = "eval")]
    use iscamd::eval::{MethodSpec, SpecKind};
    use iscamd::publish::command::{self, Command, Limits};

    const SPECS: [&str; 6] = [
        "iscam",
        "iscam:n=10,k=0",
        "scorecam",
        "sscam",
        "sscam:n=4,k=32,sigma=0.5",
        "iscam:n=3,k=128,r=163",
    ];

    fn from_explain(spec: &str) -> CamParams {
        let cli = super::Cli::try_parse_from(["iscamd", "explain", "x.jpg", "--method", spec]);
        match cli.unwrap().command {
            super::Command::Explain(args) => args.params().unwrap(),
            _ => unreachable!(),
        }
    }

    #[cfg(feature = "eval")]
    fn from_eval(spec: &str) -> CamParams {
        let weighting = iscamd::cam::Weighting::Prob;
        match MethodSpec::parse(spec, weighting, 0).unwrap().kind {
            SpecKind::Cam(p) => p,
            other => panic!("{other:?}"),
        }
    }

    #[cfg(feature = "eval")]
    fn from_bench(spec: &str) -> CamParams {
        let list = format!("none,{spec},scorecam");
        let cli =
            super::Cli::try_parse_from(["iscamd", "bench", "--image", "x", "--heatmaps", &list]);
        match cli.unwrap().command {
            super::Command::Bench(args) => args.heatmaps().unwrap().remove(0).1,
            _ => unreachable!(),
        }
    }

    fn from_config(spec: &str) -> CamParams {
        let config = Config::parse(&format!("[cam]\nmethod = {spec:?}\n")).unwrap();
        config.cam.params().unwrap()
    }

    /// As a command to a daemon whose `[cam]` is configured with another method.
    fn from_command(spec: &str) -> CamParams {
        let defaults = CamParams::new("scorecam", None, Some(7)).unwrap();
        let budget = iscamd::cam::Budget {
            max_passes: usize::MAX,
            ..Default::default()
        };
        let limits = Limits {
            defaults: &defaults,
            budget: &budget,
            layer_channels: 512,
            classes: 1000,
            input_size: 227,
        };
        let payload = format!(r#"{{"cmd":"explain","method":{spec:?}}}"#);
        match command::parse(payload.as_bytes(), &limits).1.unwrap() {
            Command::Explain { params, .. } => params,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn explain_eval_bench_config_and_commands_agree() {
        for spec in SPECS {
            let expected = spec::parse(spec).unwrap();
            let places = [
                ("explain --method", from_explain(spec)),
                #[cfg(feature = "eval")]
                ("eval --methods", from_eval(spec)),
                #[cfg(feature = "eval")]
                ("bench --heatmaps", from_bench(spec)),
                ("[cam] method", from_config(spec)),
                ("MQTT explain", from_command(spec)),
            ];
            for (place, params) in places {
                assert_eq!(
                    (params.method, params.channels, params.score_size),
                    (expected.method, expected.channels, expected.score_size),
                    "{place} reads {spec:?} differently"
                );
            }
        }
    }
}
