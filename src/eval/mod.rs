//! `iscamd eval`: how faithful each explanation method is, and what it costs, over a set
//! of images — so that claims about methods (and our own defaults) rest on numbers.

pub mod live_vs_fresh;
pub mod metrics;
mod plan;
mod plot;
mod report;
pub mod road;
pub mod sanity;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::model::ndarray::{Array2, Array3, Axis};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub use plan::{Methods, Resume};
pub use plot::write_plots;
pub use report::{
    done, pick_cheapest, read_rows, summarise, summarise_run, write_report, MethodSummary, Pick,
    Row, CSV_HEADER,
};

use crate::analysis::Analysis;
use crate::cam::{display, CamParams, Explanation, Weighting};
use crate::error::{Error, Result};
use crate::model::{softmax, top_k, Classifier};
use crate::source::decode_image;

/// A method to evaluate, by the spec it was written as (`iscam:n=4,k=32`).
#[derive(Clone, Debug, PartialEq)]
pub struct MethodSpec {
    pub label: String,
    pub kind: SpecKind,
}

#[derive(Clone, Debug, PartialEq)]
pub enum SpecKind {
    Cam(CamParams),
    /// A seeded random map: the floor every method must beat.
    Random,
    /// A centred Gaussian: the "objects are in the middle" prior.
    Center,
}

impl MethodSpec {
    /// Parses a CAM method spec ([`crate::cam::spec`]: `iscam:n=10,k=0`, `scorecam`, …)
    /// or a control: `random`, `center`.
    pub fn parse(spec: &str, weighting: Weighting, seed: u64) -> Result<Self> {
        let kind = match spec.trim() {
            "random" => SpecKind::Random,
            "center" => SpecKind::Center,
            name if name.starts_with("random:") || name.starts_with("center:") => {
                return Err(Error::invalid(
                    "method",
                    format!("{spec:?}: the controls take no parameters"),
                ))
            }
            cam => {
                let mut params = crate::cam::spec::parse(cam).map_err(|e| match e {
                    Error::Invalid { reason, .. } if reason.contains("expected cam, recipro") => {
                        Error::invalid(
                            "method",
                            format!(
                                "{spec:?}: unknown method (cam, recipro, scorecam, sscam, iscam, random, center)"
                            ),
                        )
                    }
                    other => other,
                })?;
                params.weighting = weighting;
                params.seed = seed;
                SpecKind::Cam(params)
            }
        };
        Ok(MethodSpec {
            label: spec.to_string(),
            kind,
        })
    }
}

/// Expands a sweep such as `iscam:n=1..10,k=8|16|32` into one spec per combination
/// (`iscam:n=1,k=8`, `iscam:n=1,k=16`, …): `a..b` is every whole number from a to b,
/// `a|b|c` lists values.
pub fn expand_sweep(sweep: &str) -> Result<Vec<String>> {
    let bad = |reason: String| Error::invalid("sweep", format!("{sweep:?}: {reason}"));
    let (name, args) = sweep
        .split_once(':')
        .ok_or_else(|| bad("expected METHOD:key=values,… e.g. iscam:n=1..10,k=8|16|32".into()))?;
    let mut specs = vec![format!("{name}:")];
    for arg in args.split(',').filter(|a| !a.is_empty()) {
        let (key, values) = arg
            .split_once('=')
            .ok_or_else(|| bad(format!("{arg:?} is not key=values")))?;
        let values: Vec<String> = match values.split_once("..") {
            Some((a, b)) => {
                let range = |v: &str| {
                    v.parse::<usize>()
                        .map_err(|_| bad(format!("{v:?} in {arg:?} is not a whole number")))
                };
                let (a, b) = (range(a)?, range(b)?);
                if a > b || b - a >= 1000 {
                    return Err(bad(format!(
                        "{arg:?}: expected a..b with a ≤ b, at most 1000 values"
                    )));
                }
                (a..=b).map(|v| v.to_string()).collect()
            }
            None => values.split('|').map(str::to_string).collect(),
        };
        specs = specs
            .iter()
            .flat_map(|s| {
                let sep = if s.ends_with(':') { "" } else { "," };
                values.iter().map(move |v| format!("{s}{sep}{key}={v}"))
            })
            .collect();
        if specs.len() > 10_000 {
            return Err(bad("more than 10000 combinations".into()));
        }
    }
    Ok(specs
        .into_iter()
        .map(|s| s.trim_end_matches(':').to_string())
        .collect())
}

/// Settings shared by every method.
#[derive(Clone, Debug)]
pub struct EvalOptions {
    /// Deletion / insertion steps.
    pub steps: usize,
    pub seed: u64,
    /// How a CAM map's channels are weighted (recorded in the report).
    pub weighting: Weighting,
    pub threads: usize,
    /// σ of the insertion baseline's Gaussian blur, in input pixels.
    pub blur_sigma: f32,
    /// ROAD's removal shares in percent ([`road`]); none: no ROAD.
    pub road: Vec<u32>,
    /// σ of ROAD's imputation noise.
    pub road_noise: f32,
    /// Where to write each input and display map as raw little-endian f32 (for checks by
    /// other tools, e.g. scripts/road-gradcam.py).
    pub save_maps: Option<PathBuf>,
}

/// Evaluates every method not yet in `done` (image, method) on one image.
///
/// CAM specs that differ only in `k` are scored once, at the largest `k` asked for, and
/// the others are derived from it ([`crate::cam::Explanation::restricted`]): a sweep over
/// `k` costs no more passes than its largest member.
pub fn evaluate_image(
    classifier: &Classifier,
    image: &Path,
    specs: &[MethodSpec],
    options: &EvalOptions,
    done: &HashSet<(String, String)>,
    mut on_row: impl FnMut(Row) -> Result<()>,
) -> Result<()> {
    let name = image.display().to_string();
    let todo: Vec<&MethodSpec> = specs
        .iter()
        .filter(|s| !done.contains(&(name.clone(), s.label.clone())))
        .collect();
    if todo.is_empty() {
        return Ok(());
    }
    let analysis = Analysis::of_frame(classifier, decode_image(image)?)?;
    let class = top_k(&analysis.probabilities, 1)[0];
    let activations = analysis
        .activations
        .as_ref()
        .ok_or_else(|| Error::model(classifier.path(), "has no CAM layer"))?;
    let (_, h, w) = activations.dim();
    let s = classifier.input_size();
    let blurred = metrics::blur(&analysis.input, options.blur_sigma);
    let mut families: Vec<(CamParams, Explanation)> = Vec::new();
    for spec in todo {
        let t0 = Instant::now();
        let (map, passes, millis) = match &spec.kind {
            SpecKind::Cam(params) => {
                let family = CamParams {
                    channels: 0,
                    ..params.clone()
                };
                let known = families.iter().find(|(f, _)| *f == family);
                let e = match known
                    .and_then(|(_, e)| e.restricted(activations.view(), params.channels))
                {
                    Some(e) => e,
                    None => {
                        let widest = widest(specs, &family);
                        let e =
                            analysis.explain(classifier, Some(class), &widest, options.threads)?;
                        families.retain(|(f, _)| *f != family);
                        families.push((family, e.clone()));
                        e.restricted(activations.view(), params.channels)
                            .expect("the widest run covers every k of its family")
                    }
                };
                (e.map, e.passes, e.millis)
            }
            SpecKind::Random => (random_map(h, w, options.seed, &name), 0, elapsed_ms(t0)),
            SpecKind::Center => (center_map(h, w), 0, elapsed_ms(t0)),
        };
        let saliency = display::display_map(&map, s, s);
        let control = display::display_map(&shuffled(&map, options.seed, &name), s, s);
        let score = |inputs: Vec<Array3<f32>>| {
            class_probabilities(classifier, inputs, class, options.threads)
        };
        let f = metrics::faithfulness(
            &analysis.input,
            &blurred,
            &saliency,
            &control,
            options.steps,
            score,
        )?;
        let mut row = Row::new(&name, &spec.label, class, &f, passes, millis);
        if !options.road.is_empty() {
            let t0 = Instant::now();
            // The same noise for every method of an image: differences between methods are
            // then the maps', not the noise's.
            let road = road::road(
                &analysis.input,
                &metrics::ranking(&saliency),
                &options.road,
                options.road_noise,
                options.seed ^ salt(&name),
                options.threads,
                score,
            )?;
            row = row.with_road(&road, elapsed_ms(t0));
        }
        if let Some(dir) = &options.save_maps {
            save_maps(dir, image, &spec.label, &analysis.input, &saliency)?;
        }
        on_row(row)?;
    }
    Ok(())
}

/// `DIR/STEM.input.f32` (`[3,S,S]`) and `DIR/STEM.METHOD.saliency.f32` (`[S,S]`), METHOD
/// with every character but letters, digits and `=._-` made `_`.
fn save_maps(
    dir: &Path,
    image: &Path,
    method: &str,
    input: &Array3<f32>,
    saliency: &Array2<f32>,
) -> Result<()> {
    let stem = image
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let method: String = method
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '=' | '.' | '_' | '-' => c,
            _ => '_',
        })
        .collect();
    let write = |name: String, values: Vec<f32>| {
        let path = dir.join(name);
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(&path, bytes).map_err(|e| Error::input(&path, format!("cannot write: {e}")))
    };
    write(format!("{stem}.input.f32"), input.iter().copied().collect())?;
    write(
        format!("{stem}.{method}.saliency.f32"),
        saliency.iter().copied().collect(),
    )
}

fn elapsed_ms(t0: Instant) -> f64 {
    t0.elapsed().as_secs_f64() * 1e3
}

/// The member of `family` (CAM params up to `k`) with the most channels among `specs`.
fn widest(specs: &[MethodSpec], family: &CamParams) -> CamParams {
    let ks: Vec<usize> = specs
        .iter()
        .filter_map(|s| match &s.kind {
            SpecKind::Cam(p)
                if CamParams {
                    channels: 0,
                    ..p.clone()
                } == *family =>
            {
                Some(p.channels)
            }
            _ => None,
        })
        .collect();
    let k = if ks.contains(&0) {
        0
    } else {
        ks.into_iter().max().unwrap_or(0)
    };
    CamParams {
        channels: k,
        ..family.clone()
    }
}

/// `p_c` of each input, forwarded one per pass on `threads` threads.
pub fn class_probabilities(
    classifier: &Classifier,
    inputs: Vec<Array3<f32>>,
    class: usize,
    threads: usize,
) -> Result<Vec<f64>> {
    let mut out = vec![0.0; inputs.len()];
    let chunk = inputs.len().div_ceil(threads.max(1)).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = inputs
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || -> Result<Vec<f64>> {
                    part.iter()
                        .map(|x| {
                            let f = classifier.forward(x.view().insert_axis(Axis(0)))?;
                            Ok(softmax(&f.logits.row(0).to_vec())[class])
                        })
                        .collect()
                })
            })
            .collect();
        let mut i = 0;
        for h in handles {
            for p in h.join().expect("scoring thread panicked")? {
                out[i] = p;
                i += 1;
            }
        }
        Ok::<_, Error>(())
    })?;
    Ok(out)
}

/// Uniform noise at the CAM resolution, seeded per image (so each image gets its own).
fn random_map(h: usize, w: usize, seed: u64, image: &str) -> Array2<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ salt(image));
    Array2::from_shape_simple_fn((h, w), || rng.random::<f32>())
}

/// [`display::shuffled`], seeded per image. What a map loses against it is what its
/// placement is worth, whatever its coverage.
fn shuffled(map: &Array2<f32>, seed: u64, image: &str) -> Array2<f32> {
    display::shuffled(map, seed ^ salt(image) ^ 0x5eed)
}

fn salt(image: &str) -> u64 {
    image
        .bytes()
        .fold(0u64, |a, b| a.wrapping_mul(31).wrapping_add(b as u64))
}

/// A centred Gaussian (σ = a quarter of the side) at the CAM resolution.
fn center_map(h: usize, w: usize) -> Array2<f32> {
    let (cy, cx) = ((h as f32 - 1.0) / 2.0, (w as f32 - 1.0) / 2.0);
    let (sy, sx) = (h as f32 / 4.0, w as f32 / 4.0);
    Array2::from_shape_fn((h, w), |(y, x)| {
        (-((y as f32 - cy) / sy).powi(2) / 2.0 - ((x as f32 - cx) / sx).powi(2) / 2.0).exp()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cam::Method;

    #[test]
    fn specs_parse_and_refuse() {
        let w = Weighting::Prob;
        let s = MethodSpec::parse("iscam:n=4,k=32", w, 0).unwrap();
        let SpecKind::Cam(p) = s.kind else { panic!() };
        assert_eq!((p.steps(), p.channels), (4, 32));
        let SpecKind::Cam(p) = MethodSpec::parse("sscam:n=35,sigma=2", w, 0).unwrap().kind else {
            panic!()
        };
        assert_eq!(
            p.method,
            Method::SsCam {
                steps: 35,
                sigma: 2.0
            }
        );
        let SpecKind::Cam(p) = MethodSpec::parse("iscam", w, 0).unwrap().kind else {
            panic!()
        };
        assert_eq!(
            p,
            crate::cam::spec::parse("iscam").unwrap(),
            "one set of defaults"
        );
        let SpecKind::Cam(p) = MethodSpec::parse("iscam:n=3,k=128,r=163", w, 0)
            .unwrap()
            .kind
        else {
            panic!()
        };
        assert_eq!((p.steps(), p.channels, p.score_size), (3, 128, Some(163)));
        assert_eq!(
            MethodSpec::parse("random", w, 0).unwrap().kind,
            SpecKind::Random
        );
        for (bad, says) in [
            ("gradcam", "unknown method"),
            ("random:n=1", "no parameters"),
            ("iscam:n=0", "n must be"),
            ("iscam:q=1", "unknown parameter"),
            ("iscam:n=x", "whole number"),
            ("iscam:r=big", "whole number"),
            ("iscam:sigma=1", "sscam only"),
        ] {
            let e = MethodSpec::parse(bad, w, 0).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn sweeps_expand_and_refuse() {
        assert_eq!(
            expand_sweep("iscam:n=1..3,k=8|16").unwrap(),
            vec![
                "iscam:n=1,k=8",
                "iscam:n=1,k=16",
                "iscam:n=2,k=8",
                "iscam:n=2,k=16",
                "iscam:n=3,k=8",
                "iscam:n=3,k=16"
            ]
        );
        let by_select = expand_sweep("scorecam:k=8|16,select=variance|contribution").unwrap();
        assert_eq!(by_select.len(), 4);
        for spec in &by_select {
            crate::cam::spec::parse(spec).unwrap();
        }
        assert_eq!(by_select[1], "scorecam:k=8,select=contribution");
        for bad in ["iscam", "iscam:n=3..1", "iscam:n=a..3", "iscam:n"] {
            assert!(expand_sweep(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn controls_are_shaped_and_seeded() {
        let c = center_map(13, 13);
        assert_eq!(c[[6, 6]], 1.0);
        assert!(c[[0, 0]] < 0.1);
        assert_eq!(random_map(13, 13, 1, "a"), random_map(13, 13, 1, "a"));
        assert_ne!(random_map(13, 13, 1, "a"), random_map(13, 13, 1, "b"));
    }
}
