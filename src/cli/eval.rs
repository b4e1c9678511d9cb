use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;
use iscamd::cam::Weighting;
use iscamd::eval::sanity::{self, Sanity, SanityImage};
use iscamd::eval::{self, EvalOptions, MethodSpec, Methods, Resume};
use iscamd::model::{BatchPlan, Classifier};
use iscamd::source::expand_inputs;

use super::{ModelArgs, Tally};

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Image files or directories.
    #[arg(required = true, value_name = "IMAGE|DIR")]
    pub inputs: Vec<PathBuf>,
    /// Method specs, comma-separated, e.g. "scorecam,sscam:n=35,sigma=2,iscam:n=10,k=0,iscam,cam"
    /// (n = steps, k = top-K channels, 0 = all, chosen by select=variance or
    /// select=contribution; cam = the classifier's weights, no passes; grammar:
    /// docs/commands.md, "Method specs"). The controls random and center are always added.
    #[arg(long, default_value = "scorecam,iscam:n=10,k=0,iscam")]
    pub methods: String,
    /// Also evaluate every combination of a parameter sweep, e.g.
    /// "iscam:n=1..10,k=8|16|32|64|128" (a..b: every whole number, a|b: a list). Specs that
    /// differ only in k are scored once at the largest k. Repeatable.
    #[arg(long, value_name = "SWEEP")]
    pub sweep: Vec<String>,
    /// Name the cheapest method (fewest passes) whose Insertion AUC and Average Drop are
    /// within --tolerance of this one's, e.g. "iscam:n=10,k=0" (added to the methods if absent).
    #[arg(long, value_name = "SPEC")]
    pub baseline: Option<String>,
    /// Relative tolerance for --baseline, in percent.
    #[arg(long, default_value_t = 2.0, value_name = "PERCENT")]
    pub tolerance: f64,
    /// Directory for per_image.csv, report.md, report.json and the plots (curves, cost; SVG
    /// and PNG). An existing per_image.csv is resumed.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Evaluate only the first N images.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Steps of the deletion and insertion curves.
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// ROAD's removal shares in percent, comma-separated, or "none": each map is also
    /// scored with the most and the least relevant pixels removed and filled by noisy
    /// linear imputation (2 passes per share).
    #[arg(long, default_value = "10,20,30,40,50,60,70,80,90", value_parser = parse_shares)]
    pub road: Shares,
    /// σ of ROAD's imputation noise, in the model's input units.
    #[arg(long, default_value_t = eval::road::NOISE, value_name = "SIGMA")]
    pub road_noise: f32,
    /// Also write each image's model input and each method's display map into DIR as raw
    /// little-endian f32: STEM.input.f32 ([3,S,S]) and STEM.METHOD.saliency.f32 ([S,S],
    /// METHOD with every character but letters, digits and "=._-" made "_").
    #[arg(long, value_name = "DIR")]
    pub save_maps: Option<PathBuf>,
    #[arg(long, default_value = "prob", value_parser = str::parse::<Weighting>)]
    pub weighting: Weighting,
    /// Seed of SS-CAM's noise, the random control and the bootstrap.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Measure live maps instead of comparing methods: for each image, frames shifted by a
    /// few pixels, with sensor noise, and a cut to the next image; live maps (the image's
    /// weights over each frame's activations) against fresh maps of each frame, and the
    /// drift between frames. Writes live.csv and live.md.
    #[arg(long)]
    pub live: bool,
    /// The full maps whose weights --live reuses. Default: the daemon's ([cam] defaults).
    #[arg(long, value_name = "SPEC", requires = "live")]
    pub live_method: Option<String>,
    /// Check the methods instead of comparing them: model parameter randomisation
    /// (Adebayo et al.), cascading from the output layer down and one layer at a time;
    /// per method, how much each map still resembles the original one (rank correlation,
    /// SSIM). Writes sanity.md, sanity.csv, sanity.json and sanity.svg/png.
    #[arg(long, conflicts_with_all = ["live", "baseline", "sweep"])]
    pub sanity: bool,
    /// Cascade steps of --sanity (and as many single layers), evenly spaced from the top
    /// layer alone to every layer.
    #[arg(long, default_value_t = 6, value_name = "N", requires = "sanity")]
    pub sanity_steps: usize,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// ROAD's removal shares (percent).
#[derive(Clone, Debug)]
pub struct Shares(Vec<u32>);

fn parse_shares(s: &str) -> Result<Shares> {
    if s.trim() == "none" {
        return Ok(Shares(Vec::new()));
    }
    s.split(',')
        .map(|v| match v.trim().parse::<u32>() {
            Ok(p) if (1..100).contains(&p) => Ok(p),
            _ => bail!("{v:?}: expected whole percentages in 1..=99, or none"),
        })
        .collect::<Result<_>>()
        .map(Shares)
}

pub fn run(args: EvalArgs) -> Result<ExitCode> {
    if !(1..=1000).contains(&args.steps) {
        bail!("--steps {}: expected 1..=1000", args.steps);
    }
    if !(0.0..100.0).contains(&args.tolerance) {
        bail!(
            "--tolerance {}: expected a percentage in [0, 100)",
            args.tolerance
        );
    }
    if !(0.0..=1.0).contains(&args.road_noise) {
        bail!("--road-noise {}: expected a σ in [0, 1]", args.road_noise);
    }
    if args.live {
        return run_live(args);
    }
    if args.sanity {
        return run_sanity(args);
    }
    let methods = Methods::new(
        &args.methods,
        args.baseline.as_deref(),
        &args.sweep,
        args.weighting,
        args.seed,
    )?;
    let mut tally = Tally::default();
    let images = collect_images(&args.inputs, args.limit, &mut tally);
    if images.is_empty() {
        bail!("no images to evaluate");
    }
    let classifier = args.model.load()?;
    methods.check_against(&classifier)?;
    create_dir(&args.out)?;
    if let Some(dir) = &args.save_maps {
        create_dir(dir)?;
    }
    let options = options(&args);
    let resume = Resume::read(&args.out.join("per_image.csv"))?;
    evaluate_all(
        &classifier,
        &images,
        &methods.specs,
        &options,
        &resume,
        &mut tally,
    )?;
    let baseline = args
        .baseline
        .as_deref()
        .map(|b| (b, args.tolerance / 100.0));
    let (md, plots) = eval::summarise_run(
        &args.out,
        &images,
        &methods,
        classifier.path(),
        &options,
        baseline,
    )?;
    println!("{md}");
    for plot in plots {
        eprintln!("wrote {}", plot.display());
    }
    Ok(tally.finish())
}

fn options(args: &EvalArgs) -> EvalOptions {
    EvalOptions {
        steps: args.steps,
        seed: args.seed,
        weighting: args.weighting,
        threads: args.model.threads(),
        blur_sigma: 5.0,
        road: args.road.0.clone(),
        road_noise: args.road_noise,
        save_maps: args.save_maps.clone(),
    }
}

fn create_dir(out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))
}

/// Evaluates every method on every image not already in the CSV, appending rows to it,
/// with a progress bar (or a line per image without a terminal).
fn evaluate_all(
    classifier: &Classifier,
    images: &[PathBuf],
    specs: &[MethodSpec],
    options: &EvalOptions,
    resume: &Resume,
    tally: &mut Tally,
) -> Result<()> {
    if resume.rows > 0 {
        eprintln!(
            "resuming: {} result(s) already in {}",
            resume.rows,
            resume.csv.display()
        );
    }
    let total = (images.len() * specs.len()) as u64;
    let bar = indicatif::ProgressBar::new(total).with_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} maps  {elapsed_precise} elapsed, ETA {eta_precise}  {msg}",
        )
        .expect("template"),
    );
    bar.set_position(resume.maps_done(images, specs) as u64);
    bar.reset_eta();
    for (i, image) in images.iter().enumerate() {
        let name = image
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        bar.set_message(name.clone());
        let result = eval::evaluate_image(classifier, image, specs, options, &resume.done, |row| {
            bar.inc(1);
            row.append(&resume.csv)
        });
        match result {
            Ok(()) => tally.ok += 1,
            Err(e) => bar.suspend(|| tally.fail(e)),
        }
        // Without a terminal (nohup, systemd, CI) the bar is hidden: log a line per image.
        if bar.is_hidden() {
            let secs = |d: std::time::Duration| {
                humantime::format_duration(std::time::Duration::from_secs(d.as_secs()))
            };
            eprintln!(
                "[{}/{}] {name}: {}/{total} maps, {} elapsed, ETA {}",
                i + 1,
                images.len(),
                bar.position(),
                secs(bar.elapsed()),
                secs(bar.eta()),
            );
        }
    }
    bar.finish_and_clear();
    Ok(())
}

fn run_live(args: EvalArgs) -> Result<ExitCode> {
    let params = match &args.live_method {
        Some(spec) => match MethodSpec::parse(spec, args.weighting, args.seed)?.kind {
            eval::SpecKind::Cam(p)
                if matches!(
                    p.method,
                    iscamd::cam::Method::Cam | iscamd::cam::Method::Recipro
                ) =>
            {
                bail!("--live-method {spec}: {} needs no live weights (each frame's map costs no full pass)", p.method.name())
            }
            eval::SpecKind::Cam(p) => p,
            _ => {
                bail!("--live-method {spec}: expected a masked CAM method (scorecam, sscam, iscam)")
            }
        },
        None => {
            let mut p = iscamd::cam::CamParams::new("iscam", None, None)?;
            p.weighting = args.weighting;
            p
        }
    };
    let mut tally = Tally::default();
    // Each reference image cuts to the next one: --limit N needs N + 1.
    let images = collect_images(&args.inputs, args.limit.map(|n| n + 1), &mut tally);
    if images.len() < 2 {
        bail!("--live needs at least 2 images (each sequence cuts to the next image)");
    }
    let classifier = args.model.load()?;
    create_dir(&args.out)?;
    let options = options(&args);
    let references = images.len() - 1;
    let mut rows = Vec::new();
    for (i, pair) in images.windows(2).enumerate() {
        let started = std::time::Instant::now();
        match eval::live_vs_fresh::evaluate_image(
            &classifier,
            &pair[0],
            &pair[1],
            &params,
            &options,
        ) {
            Ok(r) => {
                tally.ok += 1;
                rows.extend(r)
            }
            Err(e) => tally.fail(e),
        }
        eprintln!(
            "[{}/{references}] {}: {:.0} s",
            i + 1,
            pair[0].display(),
            started.elapsed().as_secs_f64()
        );
    }
    let md = eval::live_vs_fresh::write_report(
        &args.out,
        &rows,
        classifier.path(),
        &params,
        &options,
        references,
    )?;
    println!("{md}");
    Ok(tally.finish())
}

fn run_sanity(args: EvalArgs) -> Result<ExitCode> {
    if !(1..=100).contains(&args.sanity_steps) {
        bail!("--sanity-steps {}: expected 1..=100", args.sanity_steps);
    }
    let methods = Methods::new(&args.methods, None, &[], args.weighting, args.seed)?;
    let mut tally = Tally::default();
    let paths = collect_images(&args.inputs, args.limit, &mut tally);
    let mut images = Vec::new();
    for path in paths {
        match iscamd::source::decode_image(&path) {
            Ok(frame) => images.push(SanityImage {
                name: path.display().to_string(),
                frame,
            }),
            Err(e) => tally.fail(e),
        }
    }
    if images.is_empty() {
        bail!("no images to check");
    }
    let model = args
        .model
        .settings(args.model.threads())
        .options(args.model.model_path()?, BatchPlan::Split);
    let classifier = Classifier::load(&model).context("cannot load the model")?;
    methods.check_against(&classifier)?;
    create_dir(&args.out)?;
    let sanity = Sanity {
        model: &model,
        original: &classifier,
        methods: &methods.specs,
        steps: args.sanity_steps,
        seed: args.seed,
        threads: args.model.threads(),
    };
    let started = std::time::Instant::now();
    let rows = sanity.run(&images, |step, i| {
        eprintln!(
            "[{:.0} s] step {}: {:?} randomisation, {} layer(s) from the top (to {})",
            started.elapsed().as_secs_f64(),
            i + 1,
            step.randomisation,
            step.layers,
            step.layer
        );
    })?;
    let layers = iscamd::model::randomise::Randomiser::read(&model.path)?
        .layers()
        .len();
    for path in sanity::write_report(&args.out, &rows, layers)? {
        eprintln!("wrote {}", path.display());
    }
    print!("{}", std::fs::read_to_string(args.out.join("sanity.md"))?);
    tally.ok += images.len();
    Ok(tally.finish())
}

/// The image files under `inputs`, at most `limit`; unreadable inputs are counted.
fn collect_images(inputs: &[PathBuf], limit: Option<usize>, tally: &mut Tally) -> Vec<PathBuf> {
    let mut images = Vec::new();
    for input in expand_inputs(inputs) {
        match input {
            Ok(p) => images.push(p),
            Err(e) => tally.fail(e),
        }
    }
    images.truncate(limit.unwrap_or(usize::MAX));
    images
}

#[cfg(test)]
mod tests {
    use iscamd::cam::{spec, CamParams};

    #[test]
    fn default_methods_include_the_daemon_default_and_full_iscam() {
        let methods = crate::cli::default_of::<super::EvalArgs>("methods");
        let parsed: Vec<CamParams> = spec::split_list(&methods)
            .iter()
            .map(|s| spec::parse(s).unwrap())
            .collect();
        assert!(parsed.contains(&CamParams::new("iscam", None, None).unwrap()));
        assert!(parsed.contains(&CamParams::new("iscam", Some(10), Some(0)).unwrap()));
    }
}
