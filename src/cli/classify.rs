use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Result;
use clap::Args;
use iscamd::analysis::{Analysis, ClassScore, Latency};
use iscamd::source::{decode_image, expand_inputs};
use serde::Serialize;

use super::{Format, ModelArgs, Tally};

#[derive(Args, Debug)]
pub struct ClassifyArgs {
    /// Image files, or directories of them (not recursive).
    #[arg(required = true, value_name = "IMAGE|DIR")]
    pub inputs: Vec<PathBuf>,
    /// How many classes to print per image.
    #[arg(long, default_value_t = 5)]
    pub top: usize,
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
    #[command(flatten)]
    pub model: ModelArgs,
}

#[derive(Serialize)]
struct Record<'a> {
    image: &'a std::path::Path,
    top: Vec<ClassScore>,
    latency_ms: Latency,
}

pub fn run(args: ClassifyArgs) -> Result<ExitCode> {
    let classifier = args.model.load()?;
    let mut tally = Tally::default();
    let mut stdout = std::io::stdout().lock();
    for input in expand_inputs(&args.inputs) {
        let path = match input {
            Ok(p) => p,
            Err(e) => {
                tally.fail(e);
                continue;
            }
        };
        let t0 = Instant::now();
        let analysis = match decode_image(&path).and_then(|frame| {
            let decoded = t0.elapsed();
            Analysis::of_frame(&classifier, frame).map(|a| (a, decoded))
        }) {
            Ok(a) => a,
            Err(e) => {
                tally.fail(e);
                continue;
            }
        };
        let (analysis, decoded) = analysis;
        let record = Record {
            image: &path,
            top: analysis.top(&classifier, args.top.min(classifier.classes())),
            latency_ms: Latency {
                decode: Some(decoded.as_secs_f64() * 1e3),
                total: Some(t0.elapsed().as_secs_f64() * 1e3),
                ..analysis.latency
            },
        };
        match args.format {
            Format::Json => writeln!(stdout, "{}", serde_json::to_string(&record)?)?,
            Format::Text => {
                writeln!(
                    stdout,
                    "{} ({:.0} ms)",
                    path.display(),
                    record.latency_ms.total.unwrap_or_default()
                )?;
                for (rank, c) in record.top.iter().enumerate() {
                    writeln!(
                        stdout,
                        "  {}. {:>6.2}%  {} [{}]",
                        rank + 1,
                        c.score * 100.0,
                        c.label,
                        c.index
                    )?;
                }
            }
        }
        tally.ok += 1;
    }
    Ok(tally.finish())
}
