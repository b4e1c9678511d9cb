//! `iscamd model fetch` and `iscamd model annotate`: getting a model the daemon can run.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Result};
use clap::{Args, Subcommand};
use iscamd::error::with_causes;
use iscamd::model::annotate::{self, Annotation, Metadata};
use iscamd::model::fetch::{self, Download};

#[derive(Subcommand, Debug)]
pub enum ModelCommand {
    /// Download a model, check its SHA-256, write its metadata and store it where the
    /// daemon looks. Without --url: the ONNX model zoo's SqueezeNet 1.0, as
    /// squeezenet1.0.onnx, the model the daemon runs by default.
    Fetch(FetchArgs),
    /// Write preprocessing and CAM-layer metadata into an ONNX classifier (in place).
    Annotate(AnnotateArgs),
}

#[derive(Args, Debug)]
pub struct FetchArgs {
    /// Download this model instead (needs --sha256).
    #[arg(long, value_name = "URL", requires = "sha256")]
    url: Option<String>,
    /// The SHA-256 the download must have (hex).
    #[arg(long, value_name = "HEX", requires = "url", value_parser = parse_sha256)]
    sha256: Option<String>,
    /// Folder to store it in. Default: the first that exists of $ISCAMD_MODEL_DIR,
    /// ./models, /var/lib/iscamd/models.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// File name to store it as. Default: squeezenet1.0.onnx for the zoo model, else the
    /// last part of the URL.
    #[arg(long, value_name = "FILE")]
    name: Option<String>,
    #[command(flatten)]
    metadata: MetadataArgs,
}

#[derive(Args, Debug)]
pub struct AnnotateArgs {
    /// The ONNX file to annotate.
    #[arg(value_name = "MODEL")]
    model: PathBuf,
    #[command(flatten)]
    metadata: MetadataArgs,
}

/// Metadata keys (docs/models.md); a key not given keeps the file's value.
#[derive(Args, Debug)]
struct MetadataArgs {
    /// RGB or BGR.
    #[arg(long)]
    channel_order: Option<String>,
    /// 0-255 or 0-1.
    #[arg(long)]
    pixel_range: Option<String>,
    /// Per-channel mean, e.g. 123.675,116.28,103.53.
    #[arg(long)]
    mean: Option<String>,
    /// Per-channel std, e.g. 58.395,57.12,57.375.
    #[arg(long)]
    std: Option<String>,
    /// Side of the square input, in pixels.
    #[arg(long)]
    input_size: Option<String>,
    /// Side the image is resized to before the centre crop.
    #[arg(long)]
    resize: Option<String>,
    /// Tensor a CAM weights. Default: found in the graph, the input of the global pooling
    /// before the classifier (docs/models.md, "The CAM layer").
    #[arg(long)]
    cam_layer: Option<String>,
    /// logits or probabilities.
    #[arg(long)]
    output_kind: Option<String>,
    /// Labels set: imagenet1k (built in) or NAME for NAME_labels.txt beside the model.
    #[arg(long)]
    labels: Option<String>,
}

impl MetadataArgs {
    fn given(&self) -> Metadata {
        let keys = [
            ("channel_order", &self.channel_order),
            ("pixel_range", &self.pixel_range),
            ("mean", &self.mean),
            ("std", &self.std),
            ("input_size", &self.input_size),
            ("resize", &self.resize),
            ("cam_layer", &self.cam_layer),
            ("output_kind", &self.output_kind),
            ("labels", &self.labels),
        ];
        keys.into_iter()
            .filter_map(|(k, v)| Some((k.to_string(), v.clone()?)))
            .collect()
    }
}

fn parse_sha256(s: &str) -> Result<String> {
    let hex = s.trim().to_ascii_lowercase();
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(hex)
    } else {
        bail!("expected 64 hex digits")
    }
}

pub fn run(command: ModelCommand) -> Result<ExitCode> {
    match command {
        ModelCommand::Fetch(args) => fetch(args),
        ModelCommand::Annotate(args) => {
            let annotation = annotate::annotate_file(&args.model, &args.metadata.given())?;
            println!("{}: metadata written", args.model.display());
            print_annotation(&annotation);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn fetch(args: FetchArgs) -> Result<ExitCode> {
    let mut metadata = args.metadata.given();
    let (download, default_name) = match (&args.url, &args.sha256) {
        (Some(url), Some(sha256)) => {
            let name = url
                .split(['?', '#'])
                .next()
                .and_then(|u| u.rsplit('/').next())
                .filter(|n| !n.is_empty())
                .ok_or_else(|| anyhow!("{url}: no file name in the URL: pass --name FILE"))?;
            let download = Download {
                url: url.clone(),
                sha256: sha256.clone(),
                metadata,
            };
            (download, name.to_string())
        }
        _ => {
            let zoo = annotate::ZOO_SQUEEZENET.iter();
            for (k, v) in zoo.map(|(k, v)| (k.to_string(), v.to_string())) {
                metadata.entry(k).or_insert(v);
            }
            let (url, sha256) = zoo_squeezenet();
            metadata.insert("source".into(), url.clone());
            metadata.insert("source_sha256".into(), sha256.clone());
            let download = Download {
                url,
                sha256,
                metadata,
            };
            (download, fetch::DEFAULT_MODEL.to_string())
        }
    };
    let name = args.name.unwrap_or(default_name);
    if name.contains('/') || name.starts_with('.') {
        bail!("--name {name:?}: a plain file name, not a path");
    }
    let dir = match args.dir {
        Some(d) => d,
        None => fetch::download_dir()?,
    };
    let dest = dir.join(&name);
    eprintln!("downloading {} → {}", download.url, dest.display());
    let bar = progress_bar();
    let mut progress = |done: u64, total: Option<u64>| {
        if let Some(bar) = &bar {
            bar.set_length(total.unwrap_or(0));
            bar.set_position(done);
        }
    };
    let result = fetch::fetch(&download, &dest, &mut progress);
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let annotation = result.map_err(|e| anyhow!("{}; nothing was written", with_causes(&e)))?;
    println!("{}: sha256 ok, metadata written", dest.display());
    print_annotation(&annotation);
    if name == fetch::DEFAULT_MODEL {
        println!("the daemon runs it when [model] path is not set");
    } else {
        println!("run it with [model] path = \"{}\"", dest.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Where the default model is downloaded from, and its SHA-256: the ONNX model zoo, or in
/// builds with `test-hooks` a server the tests name (`ISCAMD_TEST_ZOO_URL`,
/// `ISCAMD_TEST_ZOO_SHA256`), so that the default path runs end to end without the internet.
fn zoo_squeezenet() -> (String, String) {
    #[cfg(feature = "test-hooks")]
    if let (Ok(url), Ok(sha256)) = (
        std::env::var("ISCAMD_TEST_ZOO_URL"),
        std::env::var("ISCAMD_TEST_ZOO_SHA256"),
    ) {
        return (url, sha256);
    }
    (
        fetch::ZOO_SQUEEZENET_URL.into(),
        fetch::ZOO_SQUEEZENET_SHA256.into(),
    )
}

/// A progress bar on a terminal; nothing in a log.
fn progress_bar() -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(0);
    let style = indicatif::ProgressStyle::with_template(
        "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {eta}",
    );
    if let Ok(style) = style {
        bar.set_style(style);
    }
    Some(bar)
}

fn print_annotation(annotation: &Annotation) {
    for (k, v) in &annotation.metadata {
        println!("  {k} = {v}");
    }
    println!("  (cam_layer: {})", annotation.cam_origin);
}
