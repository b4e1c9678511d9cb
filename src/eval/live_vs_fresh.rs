//! `iscamd eval --live`: what live maps (`[cam] live`, [`crate::cam::live`]) cost in
//! faithfulness. Each image is the reference frame of a short "sequence": the same scene
//! shifted by a few pixels or with sensor noise (where live maps are meant to be used),
//! and a cut to the next image (where they must not be). For each later frame, the live
//! map (the reference's weights over the frame's activations) is scored against a fresh
//! full map of that frame, and the drift between the frames is recorded — the numbers
//! behind the default of `[cam] live_max_drift`.

use std::path::Path;

use image::RgbImage;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use serde::Serialize;

use super::{class_probabilities, metrics, EvalOptions};
use crate::analysis::Analysis;
use crate::cam::{display, live, CamParams};
use crate::error::{Error, Result};
use crate::model::{top_k, Classifier};
use crate::source::decode_image;

/// How a later frame differs from the reference frame.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Change {
    /// The camera moved by (dx, dy) pixels of the frame.
    Shift(i32, i32),
    /// Gaussian sensor noise, σ in grey levels.
    Noise(f32),
    /// Another scene: the next image.
    Cut,
}

impl Change {
    pub fn label(&self) -> String {
        match self {
            Change::Shift(dx, dy) => format!("shift {dx},{dy} px"),
            Change::Noise(s) => format!("noise σ={s}"),
            Change::Cut => "cut to the next image".into(),
        }
    }
}

/// The later frames of every sequence.
pub const CHANGES: [Change; 6] = [
    Change::Shift(4, 0),
    Change::Shift(-8, 8),
    Change::Shift(16, 0),
    Change::Noise(4.0),
    Change::Noise(12.0),
    Change::Cut,
];

/// One later frame.
#[derive(Clone, Debug, Serialize)]
pub struct LiveRow {
    pub image: String,
    pub change: String,
    /// Whether the frame's top-1 class is the reference's (live maps need it).
    pub same_class: bool,
    /// [`live::drift`] between the frame and the reference frame.
    pub drift: f64,
    /// Pearson r of the live and the fresh map (upsampled); NaN when the class changed.
    pub r: f64,
    pub fresh_insertion_auc: f64,
    pub live_insertion_auc: f64,
    pub fresh_deletion_auc: f64,
    pub live_deletion_auc: f64,
    pub fresh_drop: f64,
    pub live_drop: f64,
}

/// Frame `image` changed by `change` (`next` is the cut's scene).
pub fn changed(image: &RgbImage, next: &RgbImage, change: Change, seed: u64) -> RgbImage {
    match change {
        Change::Shift(dx, dy) => {
            let (w, h) = image.dimensions();
            RgbImage::from_fn(w, h, |x, y| {
                let sx = (x as i64 - dx as i64).clamp(0, w as i64 - 1) as u32;
                let sy = (y as i64 - dy as i64).clamp(0, h as i64 - 1) as u32;
                *image.get_pixel(sx, sy)
            })
        }
        Change::Noise(sigma) => {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let normal = Normal::new(0.0f32, sigma).expect("σ is finite and positive");
            let mut out = image.clone();
            for v in out.iter_mut() {
                *v = (*v as f32 + normal.sample(&mut rng))
                    .round()
                    .clamp(0.0, 255.0) as u8;
            }
            out
        }
        Change::Cut => next.clone(),
    }
}

/// The live-map rows of one reference image (`next` provides the cut).
pub fn evaluate_image(
    classifier: &Classifier,
    image: &Path,
    next: &Path,
    params: &CamParams,
    options: &EvalOptions,
) -> Result<Vec<LiveRow>> {
    let frame = decode_image(image)?;
    let next_frame = decode_image(next)?;
    let reference = Analysis::of_frame(classifier, frame.clone())?;
    let class = top_k(&reference.probabilities, 1)[0];
    let full = reference.explain(classifier, Some(class), params, options.threads)?;
    let activations = |a: &Analysis| {
        a.activations
            .clone()
            .ok_or_else(|| Error::model(classifier.path(), "has no CAM layer"))
    };
    let weights = live::Reference::new(&full, activations(&reference)?.view(), 0);
    let policy = live::Policy {
        max_age: std::time::Duration::MAX,
        max_drift: 1.0,
    };
    let s = classifier.input_size();
    let mut rows = Vec::new();
    for (i, &change) in CHANGES.iter().enumerate() {
        let later = Analysis::of_frame(
            classifier,
            changed(&frame, &next_frame, change, options.seed + i as u64),
        )?;
        let later_class = top_k(&later.probabilities, 1)[0];
        let a = activations(&later)?;
        let drift = live::drift(
            &live::channel_means(activations(&reference)?.view()),
            &live::channel_means(a.view()),
        );
        let mut row = LiveRow {
            image: image.display().to_string(),
            change: change.label(),
            same_class: later_class == class,
            drift,
            r: f64::NAN,
            fresh_insertion_auc: f64::NAN,
            live_insertion_auc: f64::NAN,
            fresh_deletion_auc: f64::NAN,
            live_deletion_auc: f64::NAN,
            fresh_drop: f64::NAN,
            live_drop: f64::NAN,
        };
        if let Ok(live_map) = weights.live_map(later_class, a.view(), Default::default(), &policy) {
            let fresh = later.explain(classifier, Some(class), params, options.threads)?;
            let fresh_up = display::display_map(&fresh.map, s, s);
            let live_up = display::display_map(&live_map.map, s, s);
            let blurred = metrics::blur(&later.input, options.blur_sigma);
            let score = |map: &_| {
                metrics::faithfulness(&later.input, &blurred, map, map, options.steps, |x| {
                    class_probabilities(classifier, x, class, options.threads)
                })
            };
            let (f, l) = (score(&fresh_up)?, score(&live_up)?);
            row.r = metrics::pearson(
                fresh_up.as_slice().unwrap_or(&[]),
                live_up.as_slice().unwrap_or(&[]),
            );
            row.fresh_insertion_auc = f.insertion_auc();
            row.live_insertion_auc = l.insertion_auc();
            row.fresh_deletion_auc = f.deletion_auc();
            row.live_deletion_auc = l.deletion_auc();
            row.fresh_drop = f.drop_percent();
            row.live_drop = l.drop_percent();
        }
        rows.push(row);
    }
    Ok(rows)
}

/// Writes live.csv and live.md into `out` and returns the Markdown.
pub fn write_report(
    out: &Path,
    rows: &[LiveRow],
    model: &Path,
    params: &CamParams,
    options: &EvalOptions,
    references: usize,
) -> Result<String> {
    let csv_path = out.join("live.csv");
    let cannot_write =
        |e: &dyn std::fmt::Display| Error::input(&csv_path, format!("cannot write: {e}"));
    let mut csv = csv::Writer::from_path(&csv_path).map_err(|e| cannot_write(&e))?;
    for row in rows {
        csv.serialize(row).map_err(|e| cannot_write(&e))?;
    }
    csv.flush().map_err(|e| cannot_write(&e))?;
    let md = format!(
        "Live maps vs fresh maps: model `{}`, {references} reference image(s), full maps `{}` ({} steps, {} channels), \
         class = top-1 of the reference, {} deletion/insertion steps.\n\n{}",
        model.display(),
        params.method.name(),
        params.steps(),
        params.channels,
        options.steps,
        report(rows)
    );
    let md_path = out.join("live.md");
    std::fs::write(&md_path, &md)
        .map_err(|e| Error::input(&md_path, format!("cannot write: {e}")))?;
    Ok(md)
}

/// Means per change over the rows where a live map was made, as a Markdown table, with
/// the drift range of every change (all rows) so a threshold can be read off.
pub fn report(rows: &[LiveRow]) -> String {
    let mut md = String::from(
        "| frame change | frames | same class | drift median [max] | r(live, fresh) | Insertion AUC fresh → live | Deletion AUC fresh → live | Avg Drop % fresh → live |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for change in CHANGES {
        let label = change.label();
        let all: Vec<&LiveRow> = rows.iter().filter(|r| r.change == label).collect();
        if all.is_empty() {
            continue;
        }
        let scored: Vec<&LiveRow> = all.iter().copied().filter(|r| !r.r.is_nan()).collect();
        let mean = |f: fn(&LiveRow) -> f64| {
            if scored.is_empty() {
                f64::NAN
            } else {
                scored.iter().map(|r| f(r)).sum::<f64>() / scored.len() as f64
            }
        };
        let mut drifts: Vec<f64> = all.iter().map(|r| r.drift).collect();
        drifts.sort_by(f64::total_cmp);
        md.push_str(&format!(
            "| {label} | {} | {} | {:.4} [{:.4}] | {:.3} | {:.4} → {:.4} | {:.4} → {:.4} | {:.2} → {:.2} |\n",
            all.len(),
            scored.len(),
            drifts[drifts.len() / 2],
            drifts[drifts.len() - 1],
            mean(|r| r.r),
            mean(|r| r.fresh_insertion_auc),
            mean(|r| r.live_insertion_auc),
            mean(|r| r.fresh_deletion_auc),
            mean(|r| r.live_deletion_auc),
            mean(|r| r.fresh_drop),
            mean(|r| r.live_drop),
        ));
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shifts_move_pixels_and_noise_is_seeded() {
        let img = RgbImage::from_fn(8, 8, |x, y| image::Rgb([x as u8, y as u8, 0]));
        let other = RgbImage::new(8, 8);
        let moved = changed(&img, &other, Change::Shift(2, -1), 0);
        assert_eq!(moved.get_pixel(5, 3), img.get_pixel(3, 4));
        assert_eq!(moved.get_pixel(0, 0), img.get_pixel(0, 1), "edges repeat");
        let a = changed(&img, &other, Change::Noise(4.0), 7);
        assert_eq!(a, changed(&img, &other, Change::Noise(4.0), 7));
        assert_ne!(a, img);
        assert_eq!(changed(&img, &other, Change::Cut, 0), other);
    }
}
