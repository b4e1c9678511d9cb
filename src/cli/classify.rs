use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Result;
use clap::Args;
use iscamd::analysis::{Analysis, ClassScore, Latency};
use serde::Serialize;

use super::{Format, Inputs, ModelArgs, Tally};

#[derive(Args, Debug)]
pub struct ClassifyArgs {
    #[command(flatten)]
    pub inputs: Inputs,
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
    for still in args.inputs.stills() {
        let t0 = Instant::now();
        let result = still.and_then(|still| {
            let name = still.name();
            let decode_ms = still.decode_ms;
            Analysis::of_frame(&classifier, still.image).map(|a| (name, a, decode_ms))
        });
        let (name, analysis, decode_ms) = match result {
            Ok(r) => r,
            Err(e) => {
                tally.fail(e);
                continue;
            }
        };
        let record = Record {
            image: &name,
            top: analysis.top(&classifier, args.top.min(classifier.classes())),
            latency_ms: Latency {
                decode: Some(decode_ms),
                total: Some(decode_ms + t0.elapsed().as_secs_f64() * 1e3),
                ..analysis.latency
            },
        };
        match args.format {
            Format::Json => writeln!(stdout, "{}", serde_json::to_string(&record)?)?,
            Format::Text => {
                writeln!(
                    stdout,
                    "{} ({:.0} ms)",
                    name.display(),
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
