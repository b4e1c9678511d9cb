//! `iscamd replay BUNDLE`: the same frame, classified and explained again on this machine.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

use super::ModelArgs;

/// Least correlation between a map made now and the bundle's for "the same map".
const SAME_MAP_R: f64 = 0.999;

#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// A debug bundle (`iscamd explain --bundle`, the page's bundle, `GET /api/bundle`).
    #[arg(value_name = "BUNDLE")]
    pub bundle: PathBuf,
    /// The model to replay with. Default: --model, else the file the bundle names.
    #[command(flatten)]
    pub model: ModelArgs,
}

pub fn run(args: ReplayArgs) -> Result<ExitCode> {
    let file = std::fs::File::open(&args.bundle)
        .with_context(|| format!("cannot open {}", args.bundle.display()))?;
    let bundle = iscamd::bundle::read(std::io::BufReader::new(file))
        .with_context(|| format!("{} is no debug bundle", args.bundle.display()))?;
    let manifest = &bundle.manifest;
    let path = match &args.model.model {
        Some(p) => p.clone(),
        None => PathBuf::from(&manifest.model.file),
    };
    let classifier = args
        .model
        .load_path(&path, iscamd::model::BatchPlan::Split)?;
    let replayed = iscamd::bundle::replay(&bundle, &classifier, args.model.threads())?;
    match replayed.same_model {
        Some(true) => println!("model: {} (the bundle's, same SHA-256)", path.display()),
        Some(false) => println!(
            "model: {} — NOT the bundle's (another SHA-256)",
            path.display()
        ),
        None => println!("model: {} (the bundle names no SHA-256)", path.display()),
    }
    let (then, now) = &replayed.top1;
    let same_top1 = then.index == now.index;
    println!(
        "top-1: {} — bundle {} [{}] {:.1} %, now {} [{}] {:.1} %",
        if same_top1 { "same" } else { "DIFFERENT" },
        then.label,
        then.index,
        then.score * 100.0,
        now.label,
        now.index,
        now.score * 100.0
    );
    let mut same_maps = true;
    for (spec, r) in &replayed.maps {
        let same = *r >= SAME_MAP_R;
        same_maps &= same;
        let verdict = if same { "same" } else { "DIFFERENT" };
        println!("map {spec}: {verdict} (r = {r:.5}; same at r ≥ {SAME_MAP_R})");
    }
    Ok(if same_top1 && same_maps {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
