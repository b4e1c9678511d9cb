use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use iscamd::analysis::{Analysis, ClassScore, Latency};
use iscamd::cam::{caption, display, spec, CamParams, Explanation, Method, Weighting};
use iscamd::model::Classifier;
use serde::Serialize;

use super::{Format, Inputs, ModelArgs, Tally};

/// Longest side of the overlay images written by `--out`.
const OVERLAY_MAX_SIDE: u32 = 1024;

#[derive(Args, Debug)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub inputs: Inputs,
    /// A method spec: cam (the classifier's weights, no masked passes), recipro (the network
    /// after the CAM layer on masked feature maps, any head), scorecam, sscam (smoothed) or
    /// iscam (integrated), with optional parameters, e.g. iscam:n=10,k=0 or
    /// iscam:k=16,select=contribution (grammar: docs/commands.md, "Method specs").
    #[arg(long, default_value = "iscam", value_name = "SPEC")]
    pub method: String,
    /// Masks per channel (the spec's n): iscam's integration steps (default 1), sscam's noise samples (default 35).
    #[arg(long, value_name = "N")]
    pub steps: Option<usize>,
    /// Use the K channels ranked highest by the spec's select (default: activation variance) (the spec's k); 0 = all. Default: 64 for iscam, all otherwise.
    #[arg(long, value_name = "K")]
    pub channels: Option<usize>,
    /// prob (α = class probability) or logit-softmax (α = softmax of logit increase, as torchcam).
    #[arg(long, default_value = "prob", value_parser = str::parse::<Weighting>)]
    pub weighting: Weighting,
    /// Masked inputs per forward pass.
    #[arg(long, default_value_t = 1, value_name = "B")]
    pub batch: usize,
    /// Class index to explain. Default: the top-1 class of each image.
    #[arg(long, value_name = "C")]
    pub class: Option<usize>,
    /// Seed of sscam's noise (same seed, same map).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Noise standard deviation of sscam (the spec's sigma; default 2).
    #[arg(long)]
    pub sigma: Option<f32>,
    /// Score the masked inputs at this side (pixels, the spec's r) instead of the model's
    /// input size: about (side/227)² of the time, at a large quality cost (docs/benchmarks.md).
    #[arg(long, value_name = "PIXELS")]
    pub score_size: Option<usize>,
    /// Write NAME.heatmap.png (overlay) and NAME.heatmap.json per image into this directory.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Leave the caption band (class, score, method, passes, image, colour scale) off the
    /// overlays `--out` writes.
    #[arg(long)]
    pub no_caption: bool,
    /// Write a debug bundle of the one image (a zip: the image, what the model said, the
    /// map; docs/web.md, "Debug bundles"), for `iscamd replay` on another machine.
    #[arg(long, value_name = "FILE")]
    pub bundle: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// The JSON object printed per image and written as NAME.heatmap.json.
#[derive(Serialize)]
pub struct Record<'a> {
    pub image: &'a Path,
    pub class: ClassScore,
    pub method: MethodRecord,
    pub passes: usize,
    pub channels_used: usize,
    pub latency_ms: Latency,
    pub map: MapRecord,
}

#[derive(Serialize)]
pub struct MethodRecord {
    /// The method spec that makes this map again.
    pub spec: String,
    pub name: &'static str,
    pub steps: usize,
    pub channels: usize,
    pub select: &'static str,
    pub weighting: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sigma: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

#[derive(Serialize)]
pub struct MapRecord {
    pub width: usize,
    pub height: usize,
    /// `L` row-major, unnormalised.
    pub values: Vec<f32>,
}

impl MethodRecord {
    pub fn of(params: &CamParams) -> Self {
        let (sigma, seed) = match params.method {
            Method::SsCam { sigma, .. } => (Some(sigma), Some(params.seed)),
            _ => (None, None),
        };
        MethodRecord {
            spec: params.to_string(),
            name: params.method.name(),
            steps: params.steps(),
            channels: params.channels,
            select: params.select.name(),
            weighting: params.weighting.name(),
            sigma,
            seed,
        }
    }
}

impl ExplainArgs {
    /// The map these flags ask for: `--method`'s spec with the other flags laid over it.
    pub fn params(&self) -> iscamd::Result<CamParams> {
        let overrides = spec::Overrides {
            steps: self.steps,
            channels: self.channels,
            sigma: self.sigma,
            score_size: self.score_size,
        };
        let mut params = spec::parse(&self.method)?.overridden(overrides)?;
        params.weighting = self.weighting;
        params.batch = self.batch;
        params.seed = self.seed;
        Ok(params)
    }
}

pub fn run(args: ExplainArgs) -> Result<ExitCode> {
    let params = args.params()?;
    let classifier = args.model.load()?;
    check_against(&classifier, &params, args.class)?;
    if let Some(layer) = classifier.cam_layer() {
        eprintln!("CAM layer {layer}");
    }
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create output directory {}", dir.display()))?;
    }
    let threads = args.model.threads();
    let one_image = args.inputs.inputs.len() == 1 && args.inputs.inputs[0].is_file();
    if args.bundle.is_some() && !one_image {
        anyhow::bail!("--bundle writes the bundle of one image: give one image file");
    }
    let mut tally = Tally::default();
    let mut stdout = std::io::stdout().lock();
    for still in args.inputs.stills() {
        let result = still.and_then(|still| {
            let t0 = Instant::now();
            let (name, stem, decoded) = (still.name(), still.stem(), still.decode_ms);
            let analysis = Analysis::of_frame(&classifier, still.image)?;
            let explanation = analysis.explain(&classifier, args.class, &params, threads)?;
            let total = decoded + t0.elapsed().as_secs_f64() * 1e3;
            Ok((name, stem, analysis, explanation, decoded, total))
        });
        let (path, stem, analysis, explanation, decoded, total) = match result {
            Ok(r) => r,
            Err(e) => {
                tally.fail(e);
                continue;
            }
        };
        if let Some(file) = &args.bundle {
            // A video is one file of many frames: its first frame's bundle is kept.
            if tally.ok == 0 {
                write_bundle(file, &path, &classifier, &analysis, &explanation)?;
            }
        }
        let record = record(&path, &classifier, &analysis, &explanation, decoded, total);
        let mut written = None;
        if let Some(dir) = &args.out {
            let outputs = Outputs {
                dir,
                stem: &stem,
                caption: !args.no_caption,
            };
            match outputs.write(&path, &classifier, &analysis, &explanation, &record) {
                Ok(png) => written = Some(png),
                Err(e) => {
                    tally.fail(anyhow::anyhow!("{}: {e:#}", path.display()));
                    continue;
                }
            }
        }
        print_record(&mut stdout, args.format, &path, &record, written.as_deref())?;
        tally.ok += 1;
    }
    Ok(tally.finish())
}

/// One image's result: a JSON line, or a line of text naming the overlay written.
fn print_record(
    out: &mut impl Write,
    format: Format,
    path: &Path,
    record: &Record,
    written: Option<&Path>,
) -> Result<()> {
    match format {
        Format::Json => writeln!(out, "{}", serde_json::to_string(record)?)?,
        Format::Text => {
            write!(
                out,
                "{}: {} [{}] {:.1}% — {} ({} channels): {} passes, {:.0} ms",
                path.display(),
                record.class.label,
                record.class.index,
                record.class.score * 100.0,
                record.method.spec,
                record.channels_used,
                record.passes,
                record.latency_ms.total.unwrap_or_default()
            )?;
            match written {
                Some(png) => writeln!(out, " → {}", png.display())?,
                None => writeln!(out)?,
            }
        }
    }
    Ok(())
}

/// The method fits the model's CAM layer and the class exists.
fn check_against(classifier: &Classifier, params: &CamParams, class: Option<usize>) -> Result<()> {
    let layer = classifier
        .cam_layer()
        .context("the model has no CAM layer: give one with --cam-layer NAME")?;
    params.validate(layer.channels, classifier.input_size())?;
    if let Some(c) = class.filter(|&c| c >= classifier.classes()) {
        anyhow::bail!(
            "--class {c}: the model has classes 0..{}",
            classifier.classes() - 1
        );
    }
    Ok(())
}

fn record<'a>(
    path: &'a Path,
    classifier: &Classifier,
    analysis: &Analysis,
    explanation: &Explanation,
    decoded: f64,
    total: f64,
) -> Record<'a> {
    let (height, width) = explanation.map.dim();
    Record {
        image: path,
        class: analysis.class_score(classifier, explanation.class),
        method: MethodRecord::of(&explanation.params),
        passes: explanation.passes,
        channels_used: explanation.channels_used.len(),
        latency_ms: Latency {
            decode: Some(decoded),
            cam: Some(explanation.millis),
            total: Some(total),
            ..analysis.latency
        },
        map: MapRecord {
            width,
            height,
            values: explanation.map.iter().copied().collect(),
        },
    }
}

/// Where `--out` writes one image's files, and how.
struct Outputs<'a> {
    dir: &'a Path,
    stem: &'a str,
    caption: bool,
}

impl Outputs<'_> {
    /// Writes STEM.heatmap.png and STEM.heatmap.json; returns the PNG's path.
    fn write(
        &self,
        image: &Path,
        classifier: &Classifier,
        analysis: &Analysis,
        explanation: &Explanation,
        record: &Record,
    ) -> Result<PathBuf> {
        let png = self.dir.join(format!("{}.heatmap.png", self.stem));
        let json = self.dir.join(format!("{}.heatmap.json", self.stem));
        let crop = classifier.preprocess().crop_region();
        let mut overlay =
            display::overlay(&analysis.frame, &explanation.map, crop, OVERLAY_MAX_SIDE);
        if self.caption {
            let name = image.file_name().unwrap_or(image.as_os_str());
            let source = name.to_string_lossy().into_owned();
            let caption = analysis.caption(classifier, explanation, None, source);
            overlay = caption::captioned(&overlay, &caption);
        }
        overlay
            .save(&png)
            .with_context(|| format!("cannot write {}", png.display()))?;
        std::fs::write(&json, serde_json::to_vec(record)?)
            .with_context(|| format!("cannot write {}", json.display()))?;
        Ok(png)
    }
}

fn write_bundle(
    file: &Path,
    image: &Path,
    classifier: &Classifier,
    analysis: &Analysis,
    explanation: &Explanation,
) -> Result<()> {
    let origin = iscamd::bundle::Origin {
        source: image.display().to_string(),
        number: None,
        captured: None,
        device: None,
        run: None,
        config: None,
    };
    let zip = iscamd::bundle::make(
        classifier,
        analysis,
        origin,
        std::slice::from_ref(explanation),
    )?;
    std::fs::write(file, zip).with_context(|| format!("cannot write {}", file.display()))?;
    eprintln!("bundle → {}", file.display());
    Ok(())
}
