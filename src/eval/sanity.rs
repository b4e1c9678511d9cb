//! `iscamd eval --sanity`: the model parameter randomisation test of Adebayo et al.
//! ("Sanity Checks for Saliency Maps", 2018). A map that barely changes when the
//! network's weights are redrawn explains the input, not the model.
//!
//! Cascading randomisation redraws the layers from the output down, a few more at each
//! step; independent randomisation redraws each of those layers alone. At every step
//! each method explains each image's class (the original model's top-1) on the
//! randomised model, and its map is compared with the original one: Spearman's rank
//! correlation of the maps at the CAM layer's resolution, and SSIM of the display maps.
//! A method passes when, with every layer redrawn, the median SSIM over the images is at
//! most [`PASS_BELOW`]: what a person sees is then no longer the same picture. The rank
//! correlation is reported beside it; it stays higher for the Score-CAM family, whose
//! masked scores are nearly equal on a random network, so that its map falls back to the
//! summed activations — where the image has structure, not what the model learnt.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use image::RgbImage;
use serde::Serialize;

use super::{center_map, random_map, MethodSpec, SpecKind};
use crate::analysis::Analysis;
use crate::cam::display;
use crate::error::{Error, Result};
use crate::model::kernels::Matmul;
use crate::model::ndarray::Array2;
use crate::model::randomise::{Layer, Randomiser};
use crate::model::{top_k, BackendOptions, Classifier, ModelOptions};

/// The largest median SSIM, with every layer redrawn, of a method that passes: maps that
/// keep more of their structure than this still show the input, not the model.
pub const PASS_BELOW: f64 = 0.5;

/// Side of the display maps SSIM compares.
const SSIM_SIDE: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Randomisation {
    /// The top `layers` layers redrawn.
    Cascade,
    /// Only the `layers`-th layer from the top redrawn.
    Independent,
}

/// One randomised model of the test.
#[derive(Clone, Debug)]
pub struct Step {
    pub randomisation: Randomisation,
    /// Cascade: how many layers from the top are redrawn; independent: which one (1 = top).
    pub layers: usize,
    /// The deepest layer redrawn.
    pub layer: String,
}

/// One image's map under one method on one randomised model, against the original.
#[derive(Clone, Debug, Serialize)]
pub struct SanityRow {
    pub image: String,
    pub method: String,
    pub randomisation: Randomisation,
    pub layers: usize,
    pub layer: String,
    /// NaN when either map is constant (a map of one value has no order).
    pub spearman: f64,
    pub ssim: f64,
    pub passes: usize,
    pub millis: f64,
}

/// The steps for a model of `layers.len()` layers: at most `count` cascade steps,
/// evenly spaced from the top layer alone to every layer, and the same layers alone.
pub fn steps(layers: &[Layer], count: usize) -> Vec<Step> {
    let n = layers.len();
    let count = count.clamp(1, n.max(1));
    let mut upto: Vec<usize> = (0..count)
        .map(|i| match count {
            1 => n,
            _ => 1 + (i * (n - 1) + (count - 1) / 2) / (count - 1),
        })
        .collect();
    upto.dedup();
    [Randomisation::Cascade, Randomisation::Independent]
        .into_iter()
        .flat_map(|randomisation| {
            upto.iter().map(move |&k| Step {
                randomisation,
                layers: k,
                layer: layers[k - 1].name.clone(),
            })
        })
        .collect()
}

/// An image to explain, decoded once.
pub struct SanityImage {
    pub name: String,
    pub frame: RgbImage,
}

/// What the test runs with.
pub struct Sanity<'a> {
    /// The model's options: each randomised copy loads with them (and the original's
    /// CAM layer and matrix kernels).
    pub model: &'a ModelOptions,
    pub original: &'a Classifier,
    pub methods: &'a [MethodSpec],
    /// Cascade steps at most (and as many independent ones).
    pub steps: usize,
    pub seed: u64,
    pub threads: usize,
}

/// A method's map of one image, its passes and time.
struct Made {
    map: Array2<f32>,
    passes: usize,
    millis: f64,
}

impl Sanity<'_> {
    /// Runs the test; `on_step` hears of each randomised model before its maps are made.
    pub fn run(
        &self,
        images: &[SanityImage],
        mut on_step: impl FnMut(&Step, usize),
    ) -> Result<Vec<SanityRow>> {
        let randomiser = Randomiser::read(&self.model.path)?;
        let originals = images
            .iter()
            .map(|image| self.maps(self.original, image, None))
            .collect::<Result<Vec<_>>>()?;
        let steps = steps(randomiser.layers(), self.steps);
        let dir = tempfile::tempdir()
            .map_err(|e| Error::invalid("sanity", format!("no temporary directory: {e}")))?;
        let mut rows = Vec::new();
        for (i, step) in steps.iter().enumerate() {
            on_step(step, i);
            let redrawn: Vec<&Layer> = match step.randomisation {
                Randomisation::Cascade => randomiser.layers()[..step.layers].iter().collect(),
                Randomisation::Independent => vec![&randomiser.layers()[step.layers - 1]],
            };
            let path = dir.path().join(format!("step-{i}.onnx"));
            let bytes = randomiser.randomised(&redrawn, self.seed)?;
            std::fs::write(&path, bytes)
                .map_err(|e| Error::input(&path, format!("cannot write: {e}")))?;
            let model = self.load(&path)?;
            for (image, (class, original)) in images.iter().zip(&originals) {
                let maps = self.maps(&model, image, Some(*class))?;
                for ((spec, made), before) in self.methods.iter().zip(maps.1).zip(original) {
                    rows.push(SanityRow {
                        image: image.name.clone(),
                        method: spec.label.clone(),
                        randomisation: step.randomisation,
                        layers: step.layers,
                        layer: step.layer.clone(),
                        spearman: spearman(&before.map, &made.map),
                        ssim: ssim(
                            &display::display_map(&before.map, SSIM_SIDE, SSIM_SIDE),
                            &display::display_map(&made.map, SSIM_SIDE, SSIM_SIDE),
                        ),
                        passes: made.passes,
                        millis: made.millis,
                    });
                }
            }
        }
        Ok(rows)
    }

    /// The randomised model at `path`, loaded as the original was.
    fn load(&self, path: &Path) -> Result<Classifier> {
        let mut options = self.model.clone();
        options.path = path.to_path_buf();
        options.cam_layer = self.original.cam_layer().map(|l| l.name.clone());
        if let (BackendOptions::Tract(tract), Some(chosen)) =
            (&mut options.backend, self.original.matrix_kernels())
        {
            tract.matmul = Matmul::Forced(chosen.choice());
        }
        Classifier::load(&options)
    }

    /// Every method's map of `image` for `class` (default: the model's top-1), and the class.
    fn maps(
        &self,
        classifier: &Classifier,
        image: &SanityImage,
        class: Option<usize>,
    ) -> Result<(usize, Vec<Made>)> {
        let analysis = Analysis::of_frame(classifier, image.frame.clone())?;
        let class = class.unwrap_or_else(|| top_k(&analysis.probabilities, 1)[0]);
        let layer = classifier
            .cam_layer()
            .ok_or_else(|| Error::model(classifier.path(), "has no CAM layer"))?;
        let (h, w) = (layer.height, layer.width);
        let maps = self
            .methods
            .iter()
            .map(|spec| {
                let t0 = Instant::now();
                let made = match &spec.kind {
                    SpecKind::Cam(params) => {
                        let e = analysis.explain(classifier, Some(class), params, self.threads)?;
                        Made {
                            map: e.map,
                            passes: e.passes,
                            millis: e.millis,
                        }
                    }
                    SpecKind::Random => Made {
                        map: random_map(h, w, self.seed, &image.name),
                        passes: 0,
                        millis: t0.elapsed().as_secs_f64() * 1e3,
                    },
                    SpecKind::Center => Made {
                        map: center_map(h, w),
                        passes: 0,
                        millis: t0.elapsed().as_secs_f64() * 1e3,
                    },
                };
                Ok(made)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((class, maps))
    }
}

/// Spearman's rank correlation: Pearson's of the ranks, ties given their mean rank.
pub fn spearman(a: &Array2<f32>, b: &Array2<f32>) -> f64 {
    let ranks = |m: &Array2<f32>| {
        let v: Vec<f32> = m.iter().copied().collect();
        let mut order: Vec<usize> = (0..v.len()).collect();
        order.sort_by(|&i, &j| v[i].total_cmp(&v[j]));
        let mut rank = vec![0f32; v.len()];
        let mut i = 0;
        while i < order.len() {
            let j = (i..order.len())
                .find(|&j| v[order[j]] != v[order[i]])
                .unwrap_or(order.len());
            let mean = (i + j - 1) as f32 / 2.0;
            order[i..j].iter().for_each(|&k| rank[k] = mean);
            i = j;
        }
        rank
    };
    display::pearson(&ranks(a), &ranks(b))
}

/// Mean structural similarity of two maps in [0, 1], as scikit-image computes it (and
/// Adebayo et al. report it): 7×7 uniform windows, sample covariances, data range 1.
/// Written here because its definition must match theirs to compare with published
/// figures; it is a dozen lines.
pub fn ssim(a: &Array2<f32>, b: &Array2<f32>) -> f64 {
    const WIN: usize = 7;
    let (c1, c2) = (0.01f64.powi(2), 0.03f64.powi(2));
    let (h, w) = a.dim();
    if h < WIN || w < WIN || a.dim() != b.dim() {
        return f64::NAN;
    }
    let n = (WIN * WIN) as f64;
    let mut total = 0.0;
    for y in 0..=h - WIN {
        for x in 0..=w - WIN {
            let (mut sa, mut sb, mut saa, mut sbb, mut sab) = (0.0, 0.0, 0.0, 0.0, 0.0);
            for dy in 0..WIN {
                for dx in 0..WIN {
                    let (p, q) = (a[[y + dy, x + dx]] as f64, b[[y + dy, x + dx]] as f64);
                    (sa, sb) = (sa + p, sb + q);
                    (saa, sbb, sab) = (saa + p * p, sbb + q * q, sab + p * q);
                }
            }
            let (ma, mb) = (sa / n, sb / n);
            let cov = n / (n - 1.0);
            let (va, vb) = ((saa / n - ma * ma) * cov, (sbb / n - mb * mb) * cov);
            let vab = (sab / n - ma * mb) * cov;
            total += ((2.0 * ma * mb + c1) * (2.0 * vab + c2))
                / ((ma * ma + mb * mb + c1) * (va + vb + c2));
        }
    }
    total / ((h - WIN + 1) * (w - WIN + 1)) as f64
}

/// Medians per method and step.
#[derive(Clone, Debug, Serialize)]
pub struct SanitySummary {
    pub method: String,
    pub randomisation: Randomisation,
    pub layers: usize,
    pub layer: String,
    pub images: usize,
    /// Median over the images; a constant map counts as rank correlation 0 (it keeps no
    /// order of the original).
    pub spearman: f64,
    pub ssim: f64,
    pub passes: f64,
    pub millis: f64,
}

/// One summary per method and step, in the order of the rows.
pub fn summarise(rows: &[SanityRow]) -> Vec<SanitySummary> {
    let mut keys: Vec<(String, Randomisation, usize)> = Vec::new();
    for r in rows {
        let key = (r.method.clone(), r.randomisation, r.layers);
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    keys.into_iter()
        .map(|(method, randomisation, layers)| {
            let of: Vec<&SanityRow> = rows
                .iter()
                .filter(|r| r.method == method && r.randomisation == randomisation)
                .filter(|r| r.layers == layers)
                .collect();
            let median_of =
                |f: &dyn Fn(&SanityRow) -> f64| median(of.iter().map(|r| f(r)).collect());
            SanitySummary {
                layer: of[0].layer.clone(),
                images: of.len(),
                spearman: median_of(&|r| if r.spearman.is_nan() { 0.0 } else { r.spearman }),
                ssim: median_of(&|r| r.ssim),
                passes: of.iter().map(|r| r.passes as f64).sum::<f64>() / of.len() as f64,
                millis: of.iter().map(|r| r.millis).sum::<f64>() / of.len() as f64,
                method,
                randomisation,
                layers,
            }
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| !x.is_nan());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// Whether each method passes: its median SSIM with every layer redrawn.
pub fn verdicts(summaries: &[SanitySummary]) -> Vec<(String, f64, bool)> {
    let mut out: Vec<(String, f64, bool)> = Vec::new();
    let all = summaries
        .iter()
        .filter(|s| s.randomisation == Randomisation::Cascade)
        .map(|s| s.layers)
        .max()
        .unwrap_or(0);
    for s in summaries {
        if s.randomisation == Randomisation::Cascade && s.layers == all {
            out.push((s.method.clone(), s.ssim, s.ssim <= PASS_BELOW));
        }
    }
    out
}

/// Writes sanity.csv (every row), sanity.json (summaries and verdicts), sanity.md (the
/// tables) and the plots into `out`; returns the paths written.
pub fn write_report(out: &Path, rows: &[SanityRow], layers: usize) -> Result<Vec<PathBuf>> {
    let summaries = summarise(rows);
    let verdicts = verdicts(&summaries);
    let csv_path = out.join("sanity.csv");
    let mut csv = csv::Writer::from_path(&csv_path)
        .map_err(|e| Error::input(&csv_path, format!("cannot write: {e}")))?;
    for r in rows {
        csv.serialize(r)
            .map_err(|e| Error::input(&csv_path, format!("cannot write: {e}")))?;
    }
    csv.flush()
        .map_err(|e| Error::input(&csv_path, format!("cannot write: {e}")))?;
    let json_path = out.join("sanity.json");
    let verdict_json: Vec<_> = verdicts
        .iter()
        .map(|(m, ssim, pass)| {
            serde_json::json!({"method": m, "ssim_all_layers": ssim, "passes": pass})
        })
        .collect();
    let json = serde_json::json!({
        "layers": layers,
        "pass_below": PASS_BELOW,
        "summaries": summaries,
        "verdicts": verdict_json,
    });
    std::fs::write(
        &json_path,
        serde_json::to_vec_pretty(&json).expect("serialises"),
    )
    .map_err(|e| Error::input(&json_path, format!("cannot write: {e}")))?;
    let md_path = out.join("sanity.md");
    std::fs::write(&md_path, markdown(&summaries, &verdicts, layers))
        .map_err(|e| Error::input(&md_path, format!("cannot write: {e}")))?;
    let mut written = vec![csv_path, json_path, md_path];
    written.extend(super::plot::write_sanity_plot(out, &summaries)?);
    Ok(written)
}

/// The report: per method, the median rank correlation and SSIM at each step, and the
/// verdict.
pub fn markdown(
    summaries: &[SanitySummary],
    verdicts: &[(String, f64, bool)],
    layers: usize,
) -> String {
    let mut s = Vec::new();
    let images = summaries.first().map_or(0, |x| x.images);
    let _ = writeln!(
        s,
        "Model parameter randomisation on {images} images, {layers} layers with weights. \
         A method passes when its maps, with every layer redrawn, keep a median SSIM \
         of at most {PASS_BELOW} with the original maps.\n"
    );
    let _ = writeln!(
        s,
        "| method | passes/map | all layers redrawn: median SSIM | verdict |"
    );
    let _ = writeln!(s, "|---|---:|---:|---|");
    for (method, ssim, pass) in verdicts {
        let passes = summaries
            .iter()
            .find(|x| &x.method == method)
            .map_or(0.0, |x| x.passes);
        let verdict = if *pass { "passes" } else { "FAILS" };
        let _ = writeln!(s, "| {method} | {passes:.0} | {ssim:.3} | {verdict} |");
    }
    for (randomisation, title) in [
        (
            Randomisation::Cascade,
            "Cascading randomisation (top layers down)",
        ),
        (
            Randomisation::Independent,
            "Independent randomisation (one layer at a time)",
        ),
    ] {
        let of: Vec<&SanitySummary> = summaries
            .iter()
            .filter(|x| x.randomisation == randomisation)
            .collect();
        let mut steps: Vec<(usize, &str)> = Vec::new();
        for x in &of {
            if !steps.iter().any(|(k, _)| *k == x.layers) {
                steps.push((x.layers, &x.layer));
            }
        }
        let mut methods: Vec<&str> = Vec::new();
        for x in &of {
            if !methods.contains(&x.method.as_str()) {
                methods.push(&x.method);
            }
        }
        let _ = writeln!(
            s,
            "
### {title}: median ρ (rank) / SSIM
"
        );
        let header: Vec<String> = steps
            .iter()
            .map(|(k, name)| match randomisation {
                Randomisation::Cascade => format!("top {k} (to {name})"),
                Randomisation::Independent => name.to_string(),
            })
            .collect();
        let _ = writeln!(s, "| method | {} |", header.join(" | "));
        let _ = writeln!(s, "|---|{}", "---:|".repeat(steps.len()));
        for m in methods {
            let cells: Vec<String> = steps
                .iter()
                .map(|(k, _)| {
                    of.iter()
                        .find(|x| x.method == m && x.layers == *k)
                        .map_or("–".into(), |x| {
                            format!("{:.2} / {:.2}", x.spearman, x.ssim)
                        })
                })
                .collect();
            let _ = writeln!(s, "| {m} | {} |", cells.join(" | "));
        }
    }
    String::from_utf8(s).expect("text")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layers(n: usize) -> Vec<Layer> {
        (0..n)
            .map(|i| Layer {
                name: format!("l{i}"),
                op: "Conv".into(),
                params: vec![format!("w{i}")],
            })
            .collect()
    }

    #[test]
    fn steps_run_from_the_top_layer_to_all() {
        let s = steps(&layers(26), 6);
        let cascade: Vec<usize> = s
            .iter()
            .filter(|s| s.randomisation == Randomisation::Cascade)
            .map(|s| s.layers)
            .collect();
        assert_eq!(cascade, [1, 6, 11, 16, 21, 26]);
        assert_eq!(s.len(), 12);
        assert_eq!(s[5].layer, "l25");
        let few: Vec<usize> = steps(&layers(3), 8).iter().map(|s| s.layers).collect();
        assert_eq!(few, [1, 2, 3, 1, 2, 3]);
        assert_eq!(steps(&layers(5), 1)[0].layers, 5);
    }

    #[test]
    fn rank_correlation_and_ssim_see_order_and_structure() {
        let a = Array2::from_shape_fn((13, 13), |(y, x)| (y * 13 + x) as f32);
        let scaled = a.mapv(|v| v * v + 3.0);
        assert!(
            (spearman(&a, &scaled) - 1.0).abs() < 1e-9,
            "monotone: same order"
        );
        let reversed = a.mapv(|v| -v);
        assert!((spearman(&a, &reversed) + 1.0).abs() < 1e-9);
        let ties = Array2::from_shape_fn((2, 2), |(y, _)| y as f32);
        let other = Array2::from_shape_fn((2, 2), |(y, x)| (y * 2 + x) as f32);
        assert!(
            (spearman(&ties, &other) - 0.894_427).abs() < 1e-5,
            "tied ranks averaged"
        );
        assert!(spearman(
            &Array2::zeros((3, 3)),
            &a.slice(crate::model::ndarray::s![..3, ..3]).to_owned()
        )
        .is_nan());

        let d = display::display_map(&a, 64, 64);
        assert!((ssim(&d, &d) - 1.0).abs() < 1e-9);
        let flipped = display::display_map(&reversed, 64, 64);
        assert!(ssim(&d, &flipped) < 0.0, "anti-correlated structure");
    }

    #[test]
    fn a_model_independent_map_fails_and_a_changing_one_passes() {
        let row = |method: &str, layers: usize, spearman: f64| SanityRow {
            image: "i".into(),
            method: method.into(),
            randomisation: Randomisation::Cascade,
            layers,
            layer: format!("l{layers}"),
            spearman,
            ssim: spearman,
            passes: 0,
            millis: 0.0,
        };
        let rows = vec![
            row("center", 1, 1.0),
            row("center", 3, 1.0),
            row("scorecam", 1, 0.9),
            row("scorecam", 3, 0.2),
        ];
        let v = verdicts(&summarise(&rows));
        assert_eq!(
            v,
            [
                ("center".into(), 1.0, false),
                ("scorecam".into(), 0.2, true)
            ]
        );
        let constant = SanityRow {
            spearman: f64::NAN,
            ..row("cam", 3, 0.1)
        };
        let of_constant = summarise(&[constant]);
        assert_eq!(
            of_constant[0].spearman, 0.0,
            "a constant map keeps no order"
        );
        let md = markdown(&summarise(&rows), &v, 3);
        assert!(md.contains("| center | 0 | 1.000 | FAILS |"), "{md}");
    }
}
