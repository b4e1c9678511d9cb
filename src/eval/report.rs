//! Results of an evaluation: one CSV row per image × method (appended as they come, so an
//! interrupted run resumes), and the summary tables built from all rows.

use std::collections::{BTreeMap, HashSet};
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::metrics::Faithfulness;
use super::road::Road;
use super::{EvalOptions, Methods};
use crate::error::{Error, Result};

pub const CSV_HEADER: &str =
    "image,method,class,y,o,drop_percent,increase,coverage,shuffled_drop_percent,deletion_auc,insertion_auc,passes,millis,deletion_curve,insertion_curve,road_morf,road_lerf,road_millis,road_morf_curve,road_lerf_curve";

/// One image × method.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub image: String,
    pub method: String,
    pub class: usize,
    pub y: f64,
    pub o: f64,
    pub drop_percent: f64,
    pub increase: u8,
    /// Mean of the display map: the share of the image Average Drop keeps.
    pub coverage: f64,
    /// Average Drop's term for the same map with its cells shuffled.
    pub shuffled_drop_percent: f64,
    pub deletion_auc: f64,
    pub insertion_auc: f64,
    pub passes: usize,
    pub millis: f64,
    /// Space-separated curve values.
    pub deletion_curve: String,
    pub insertion_curve: String,
    /// ROAD ([`super::road`]): mean `p_c` with the most / least relevant pixels imputed,
    /// over the removal shares; empty when the run had no ROAD.
    pub road_morf: Option<f64>,
    pub road_lerf: Option<f64>,
    /// Imputation and scoring time of ROAD for this map.
    pub road_millis: Option<f64>,
    pub road_morf_curve: String,
    pub road_lerf_curve: String,
}

fn join(curve: &[f64]) -> String {
    curve
        .iter()
        .map(|v| format!("{v:.6}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn split(curve: &str) -> Vec<f64> {
    curve
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect()
}

impl Row {
    pub fn new(
        image: &str,
        method: &str,
        class: usize,
        f: &Faithfulness,
        passes: usize,
        millis: f64,
    ) -> Self {
        Row {
            image: image.into(),
            method: method.into(),
            class,
            y: f.y,
            o: f.o,
            drop_percent: f.drop_percent(),
            increase: u8::from(f.increased()),
            coverage: f.coverage,
            shuffled_drop_percent: f.control_drop_percent(),
            deletion_auc: f.deletion_auc(),
            insertion_auc: f.insertion_auc(),
            passes,
            millis,
            deletion_curve: join(&f.deletion),
            insertion_curve: join(&f.insertion),
            road_morf: None,
            road_lerf: None,
            road_millis: None,
            road_morf_curve: String::new(),
            road_lerf_curve: String::new(),
        }
    }

    pub fn with_road(self, road: &Road, millis: f64) -> Self {
        Row {
            road_morf: Some(road.morf_mean()),
            road_lerf: Some(road.lerf_mean()),
            road_millis: Some(millis),
            road_morf_curve: join(&road.morf),
            road_lerf_curve: join(&road.lerf),
            ..self
        }
    }

    /// ROAD's (LeRF − MoRF) / 2.
    pub fn road_combined(&self) -> Option<f64> {
        Some((self.road_lerf? - self.road_morf?) / 2.0)
    }

    /// Appends the row to `per_image.csv` (header first when the file is new).
    pub fn append(&self, csv_path: &Path) -> Result<()> {
        let fresh = !csv_path.exists()
            || std::fs::metadata(csv_path)
                .map(|m| m.len() == 0)
                .unwrap_or(true);
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(csv_path)
            .map_err(|e| Error::input(csv_path, format!("cannot write: {e}")))?;
        // An interrupted run may have left half a line: end it, so this row starts its own.
        let start = if !fresh && !ends_with_newline(csv_path) {
            b"\n".to_vec()
        } else {
            Vec::new()
        };
        let mut writer = csv::WriterBuilder::new()
            .has_headers(fresh)
            .from_writer(start);
        writer
            .serialize(self)
            .map_err(|e| Error::input(csv_path, e))?;
        let bytes = writer.into_inner().map_err(|e| Error::input(csv_path, e))?;
        file.write_all(&bytes)
            .and_then(|_| file.sync_data())
            .map_err(|e| Error::input(csv_path, format!("cannot write: {e}")))
    }
}

fn ends_with_newline(path: &Path) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let mut last = [0u8; 1];
    std::fs::File::open(path)
        .and_then(|mut f| {
            f.seek(SeekFrom::End(-1))
                .and_then(|_| f.read_exact(&mut last))
        })
        .map(|_| last[0] == b'\n')
        .unwrap_or(true)
}

/// Rows already in `per_image.csv` (none when it does not exist). A last line cut short
/// by an interruption is ignored.
pub fn read_rows(csv_path: &Path) -> Result<Vec<Row>> {
    match std::fs::metadata(csv_path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::input(csv_path, e)),
        // A device or pipe would be read forever (/dev/zero) or consumed.
        Ok(m) if !m.is_file() => return Err(Error::input(csv_path, "is not a regular file")),
        Ok(_) => {}
    }
    let mut reader = csv::Reader::from_path(csv_path).map_err(|e| Error::input(csv_path, e))?;
    let header = reader
        .headers()
        .map_err(|e| Error::input(csv_path, e))?
        .iter()
        .collect::<Vec<_>>()
        .join(",");
    if header != CSV_HEADER {
        return Err(Error::input(
            csv_path,
            "is not an iscamd per_image.csv (other columns): use another --out directory",
        ));
    }
    Ok(reader.deserialize::<Row>().filter_map(|r| r.ok()).collect())
}

/// (image, method) pairs already evaluated.
pub fn done(rows: &[Row]) -> HashSet<(String, String)> {
    rows.iter()
        .map(|r| (r.image.clone(), r.method.clone()))
        .collect()
}

/// Mean with a 95 % bootstrap confidence interval.
#[derive(Clone, Debug, Serialize)]
pub struct Estimate {
    pub mean: f64,
    pub low: f64,
    pub high: f64,
}

fn estimate(values: &[f64], seed: u64) -> Estimate {
    let n = values.len();
    let mean = values.iter().sum::<f64>() / n.max(1) as f64;
    if n < 2 {
        return Estimate {
            mean,
            low: mean,
            high: mean,
        };
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut means: Vec<f64> = (0..1000)
        .map(|_| (0..n).map(|_| values[rng.random_range(0..n)]).sum::<f64>() / n as f64)
        .collect();
    means.sort_by(f64::total_cmp);
    Estimate {
        mean,
        low: means[25],
        high: means[974],
    }
}

/// Summary of one method.
#[derive(Clone, Debug, Serialize)]
pub struct MethodSummary {
    pub method: String,
    pub images: usize,
    pub passes_per_map: f64,
    pub median_ms_per_map: f64,
    pub average_drop_percent: Estimate,
    pub average_increase_percent: Estimate,
    /// Mean share of the image the maps keep (mean of `L↑`).
    pub coverage: f64,
    /// Average Drop of the same maps with their cells shuffled.
    pub shuffled_average_drop_percent: Estimate,
    pub deletion_auc: Estimate,
    pub insertion_auc: Estimate,
    pub mean_deletion_curve: Vec<f64>,
    pub mean_insertion_curve: Vec<f64>,
    /// Over the maps scored by ROAD; none when none was.
    pub road: Option<RoadSummary>,
}

/// ROAD of one method ([`super::road`]).
#[derive(Clone, Debug, Serialize)]
pub struct RoadSummary {
    pub images: usize,
    pub morf: Estimate,
    pub lerf: Estimate,
    /// (LeRF − MoRF) / 2.
    pub combined: Estimate,
    pub median_ms_per_map: f64,
    pub mean_morf_curve: Vec<f64>,
    pub mean_lerf_curve: Vec<f64>,
}

fn road_summary(rows: &[&Row], seed: u64) -> Option<RoadSummary> {
    let scored: Vec<&Row> = rows
        .iter()
        .copied()
        .filter(|r| r.road_combined().is_some())
        .collect();
    if scored.is_empty() {
        return None;
    }
    let col = |f: fn(&Row) -> Option<f64>| scored.iter().filter_map(|r| f(r)).collect::<Vec<f64>>();
    let mut ms = col(|r| r.road_millis);
    ms.sort_by(f64::total_cmp);
    Some(RoadSummary {
        images: scored.len(),
        morf: estimate(&col(|r| r.road_morf), seed),
        lerf: estimate(&col(|r| r.road_lerf), seed),
        combined: estimate(&col(Row::road_combined), seed),
        median_ms_per_map: ms.get(ms.len() / 2).copied().unwrap_or(f64::NAN),
        mean_morf_curve: mean_curve(scored.iter().map(|r| split(&r.road_morf_curve))),
        mean_lerf_curve: mean_curve(scored.iter().map(|r| split(&r.road_lerf_curve))),
    })
}

fn mean_curve(curves: impl Iterator<Item = Vec<f64>>) -> Vec<f64> {
    let mut sum: Vec<f64> = Vec::new();
    let mut n = 0;
    for c in curves {
        if sum.is_empty() {
            sum = vec![0.0; c.len()];
        }
        if c.len() == sum.len() {
            sum.iter_mut().zip(&c).for_each(|(s, v)| *s += v);
            n += 1;
        }
    }
    sum.into_iter().map(|s| s / n.max(1) as f64).collect()
}

/// Summaries in the order methods were given.
pub fn summarise(rows: &[Row], order: &[String], seed: u64) -> Vec<MethodSummary> {
    let mut by_method: BTreeMap<&str, Vec<&Row>> = BTreeMap::new();
    for r in rows {
        by_method.entry(&r.method).or_default().push(r);
    }
    order
        .iter()
        .filter_map(|m| by_method.get(m.as_str()).map(|rs| (m, rs)))
        .map(|(method, rs)| {
            let col = |f: fn(&Row) -> f64| rs.iter().map(|r| f(r)).collect::<Vec<f64>>();
            let mut ms = col(|r| r.millis);
            ms.sort_by(f64::total_cmp);
            MethodSummary {
                method: method.clone(),
                images: rs.len(),
                passes_per_map: col(|r| r.passes as f64).iter().sum::<f64>() / rs.len() as f64,
                median_ms_per_map: ms[ms.len() / 2],
                average_drop_percent: estimate(&col(|r| r.drop_percent), seed),
                average_increase_percent: estimate(&col(|r| 100.0 * r.increase as f64), seed),
                coverage: col(|r| r.coverage).iter().sum::<f64>() / rs.len() as f64,
                shuffled_average_drop_percent: estimate(&col(|r| r.shuffled_drop_percent), seed),
                deletion_auc: estimate(&col(|r| r.deletion_auc), seed),
                insertion_auc: estimate(&col(|r| r.insertion_auc), seed),
                mean_deletion_curve: mean_curve(rs.iter().map(|r| split(&r.deletion_curve))),
                mean_insertion_curve: mean_curve(rs.iter().map(|r| split(&r.insertion_curve))),
                road: road_summary(rs, seed),
            }
        })
        .collect()
}

fn cell(e: &Estimate, digits: usize) -> String {
    format!("{:.d$} [{:.d$}, {:.d$}]", e.mean, e.low, e.high, d = digits)
}

/// The cheapest method that is as faithful as a baseline: fewer passes per map, Insertion
/// AUC at least `(1 − tolerance)` times the baseline's and Average Drop at most
/// `(1 + tolerance)` times it, and — where both were scored by ROAD — ROAD's (LeRF − MoRF)/2
/// no more than `tolerance` of the baseline's below it. Ties in passes go to the higher
/// Insertion AUC.
#[derive(Clone, Debug, Serialize)]
pub struct Pick {
    pub baseline: String,
    pub tolerance_percent: f64,
    /// Whether ROAD took part in the rule.
    pub road: bool,
    /// `None` when nothing cheaper qualifies.
    pub method: Option<String>,
    /// Baseline passes ÷ picked passes.
    pub pass_ratio: Option<f64>,
}

pub fn pick_cheapest(summaries: &[MethodSummary], baseline: &str, tolerance: f64) -> Option<Pick> {
    let base = summaries.iter().find(|s| s.method == baseline)?;
    let ins = base.insertion_auc.mean * (1.0 - tolerance);
    let drop = base.average_drop_percent.mean * (1.0 + tolerance);
    let best = summaries
        .iter()
        .filter(|s| s.passes_per_map > 0.0 && s.passes_per_map < base.passes_per_map)
        .filter(|s| s.insertion_auc.mean >= ins && s.average_drop_percent.mean <= drop)
        .filter(|s| match (&s.road, &base.road) {
            (Some(r), Some(b)) => {
                r.combined.mean >= b.combined.mean - tolerance * b.combined.mean.abs()
            }
            _ => true,
        })
        .min_by(|a, b| {
            a.passes_per_map
                .total_cmp(&b.passes_per_map)
                .then(b.insertion_auc.mean.total_cmp(&a.insertion_auc.mean))
        });
    Some(Pick {
        baseline: baseline.to_string(),
        tolerance_percent: tolerance * 100.0,
        road: base.road.is_some(),
        method: best.map(|s| s.method.clone()),
        pass_ratio: best.map(|s| base.passes_per_map / s.passes_per_map),
    })
}

/// A run's summary of these images (the CSV may hold others): report.md/json and the
/// plots in `out`; the Markdown comes back for printing.
pub fn summarise_run(
    out: &Path,
    images: &[PathBuf],
    methods: &Methods,
    model: &Path,
    options: &EvalOptions,
    baseline: Option<(&str, f64)>,
) -> Result<(String, Vec<PathBuf>)> {
    let wanted: HashSet<String> = images.iter().map(|p| p.display().to_string()).collect();
    let rows: Vec<Row> = read_rows(&out.join("per_image.csv"))?
        .into_iter()
        .filter(|r| wanted.contains(&r.image))
        .collect();
    let summaries = summarise(&rows, &methods.labels(), options.seed);
    let road = match options.road.as_slice() {
        [] => "no ROAD".to_string(),
        shares => format!(
            "ROAD removal shares {:?} %, imputation noise σ = {}",
            shares, options.road_noise
        ),
    };
    let context = format!(
        "Model `{}`, {} image(s), class = top-1 of each image, weighting `{}`, {} deletion/insertion steps, insertion \
         baseline: Gaussian blur σ = {} px of the input; {road}. Maps of one method and steps that differ only in k \
         are computed once at the largest k; the others' ms/map is that run's time × their share of its channels.",
        model.display(),
        wanted.len(),
        options.weighting.name(),
        options.steps,
        options.blur_sigma
    );
    let pick = baseline.and_then(|(b, tolerance)| pick_cheapest(&summaries, b, tolerance));
    let md = write_report(out, &summaries, pick.as_ref(), &context)?;
    let plots = super::write_plots(out, &summaries, &methods.curves)?;
    Ok((md, plots))
}

/// The ROAD table, for the methods ROAD scored (empty when none).
fn road_table(summaries: &[MethodSummary]) -> String {
    let scored: Vec<(&str, &RoadSummary)> = summaries
        .iter()
        .filter_map(|s| s.road.as_ref().map(|r| (s.method.as_str(), r)))
        .collect();
    let Some((_, first)) = scored.first() else {
        return String::new();
    };
    let shares = first.mean_morf_curve.len();
    let mut md = format!(
        "\nROAD (Rong et al. 2022): `p_c` with a share of the pixels removed and filled by noisy linear \
         imputation, the most relevant first (MoRF ↓) or the least relevant first (LeRF ↑), averaged over {shares} \
         removal shares; (LeRF − MoRF)/2 ↑ is pytorch-grad-cam's ROADCombined. Cost: {} masked passes per map plus \
         the imputations.\n\n\
         | method | images | ROAD MoRF ↓ | ROAD LeRF ↑ | (LeRF − MoRF)/2 ↑ | ROAD ms/map (median) |\n\
         | --- | --- | --- | --- | --- | --- |\n",
        2 * shares
    );
    for (method, r) in scored {
        md.push_str(&format!(
            "| {method} | {} | {} | {} | {} | {:.0} |\n",
            r.images,
            cell(&r.morf, 4),
            cell(&r.lerf, 4),
            cell(&r.combined, 4),
            r.median_ms_per_map
        ));
    }
    md
}

/// Writes `report.md` and `report.json` into `out`; returns the Markdown.
pub fn write_report(
    out: &Path,
    summaries: &[MethodSummary],
    pick: Option<&Pick>,
    context: &str,
) -> Result<String> {
    let mut md = format!(
        "# iscamd eval\n\n{context}\n\nMeans with 95 % bootstrap confidence intervals. Lower is better for Average Drop and \
         Deletion AUC, higher for Average Increase and Insertion AUC. Passes: masked forward passes per map. \
         Coverage: mean of the map over the image (what Average Drop keeps of it). \
         Shuffled: Average Drop of the same map with its cells in random places (same coverage).\n\n\
         | method | images | passes/map | ms/map (median) | Avg Drop % ↓ | Avg Increase % ↑ | Deletion AUC ↓ | Insertion AUC ↑ | coverage | Avg Drop % shuffled |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
    );
    for s in summaries {
        md.push_str(&format!(
            "| {} | {} | {:.0} | {:.0} | {} | {} | {} | {} | {:.2} | {} |\n",
            s.method,
            s.images,
            s.passes_per_map,
            s.median_ms_per_map,
            cell(&s.average_drop_percent, 2),
            cell(&s.average_increase_percent, 1),
            cell(&s.deletion_auc, 4),
            cell(&s.insertion_auc, 4),
            s.coverage,
            cell(&s.shuffled_average_drop_percent, 2),
        ));
    }
    md.push_str(&road_table(summaries));
    if let Some(p) = pick {
        let rule = if p.road {
            "Insertion AUC, Average Drop and ROAD (LeRF − MoRF)/2"
        } else {
            "Insertion AUC and Average Drop"
        };
        md.push_str(&match (&p.method, p.pass_ratio) {
            (Some(m), Some(r)) => format!(
                "\nCheapest within {}% of `{}` ({rule}): **`{m}`**, {r:.1}× fewer passes.\n",
                p.tolerance_percent, p.baseline
            ),
            _ => format!(
                "\nNothing cheaper than `{}` is within {}% of it on {rule}.\n",
                p.baseline, p.tolerance_percent
            ),
        });
    }
    let write = |name: &str, bytes: &[u8]| {
        let p = out.join(name);
        std::fs::write(&p, bytes).map_err(|e| Error::input(&p, format!("cannot write: {e}")))
    };
    write("report.md", md.as_bytes())?;
    let json = serde_json::json!({ "context": context, "methods": summaries, "pick": pick });
    write(
        "report.json",
        serde_json::to_string_pretty(&json)
            .expect("report serialises")
            .as_bytes(),
    )?;
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(image: &str, method: &str, drop: f64) -> Row {
        let f = Faithfulness {
            y: 1.0,
            o: 1.0 - drop / 100.0,
            o_control: 1.0,
            coverage: 0.5,
            deletion: vec![1.0, 0.0],
            insertion: vec![0.0, 1.0],
        };
        Row::new(image, method, 0, &f, 8, 10.0)
    }

    #[test]
    fn rows_survive_a_round_trip_and_a_cut_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("per_image.csv");
        row("a.jpg", "iscam", 10.0).append(&csv).unwrap();
        row("b.jpg", "iscam", 30.0).append(&csv).unwrap();
        let mut f = OpenOptions::new().append(true).open(&csv).unwrap();
        f.write_all(b"c.jpg,iscam,0,0.5").unwrap(); // interrupted mid-row
        assert_eq!(read_rows(&csv).unwrap().len(), 2);
        row("d.jpg", "iscam", 20.0).append(&csv).unwrap(); // resumed
        let rows = read_rows(&csv).unwrap();
        assert_eq!(rows.len(), 3);
        let rows: Vec<Row> = rows.into_iter().filter(|r| r.image != "d.jpg").collect();
        assert!(done(&rows).contains(&("b.jpg".into(), "iscam".into())));
        let s = &summarise(&rows, &["iscam".into()], 0)[0];
        assert!((s.average_drop_percent.mean - 20.0).abs() < 1e-9);
        assert!(s.average_drop_percent.low <= 20.0 && s.average_drop_percent.high >= 20.0);
        assert_eq!(s.mean_deletion_curve, vec![1.0, 0.0]);
    }

    #[test]
    fn the_pick_is_the_cheapest_within_tolerance() {
        let at = |method: &str, passes: usize, drop: f64| {
            let mut r = row("a.jpg", method, drop);
            r.passes = passes;
            r
        };
        let rows = vec![
            at("full", 5000, 20.0),
            at("good", 64, 20.3),
            at("better-but-dearer", 128, 19.0),
            at("cheap-but-worse", 8, 25.0),
            at("random", 0, 10.0),
        ];
        let order: Vec<String> = rows.iter().map(|r| r.method.clone()).collect();
        let summaries = summarise(&rows, &order, 0);
        let pick = pick_cheapest(&summaries, "full", 0.02).unwrap();
        assert_eq!(pick.method.as_deref(), Some("good"));
        assert!((pick.pass_ratio.unwrap() - 5000.0 / 64.0).abs() < 1e-9);
        let strict = pick_cheapest(&summaries, "full", 0.0).unwrap();
        assert_eq!(
            strict.method.as_deref(),
            Some("better-but-dearer"),
            "19 ≤ 20 qualifies at 0 %"
        );
        assert!(pick_cheapest(&summaries, "absent", 0.02).is_none());
    }

    #[test]
    fn road_vetoes_a_pick_it_does_not_confirm() {
        let at = |method: &str, passes: usize, morf: f64| {
            let mut r = row("a.jpg", method, 20.0);
            r.passes = passes;
            let road = Road {
                percentages: vec![10, 90],
                morf: vec![morf, morf],
                lerf: vec![0.8, 0.8],
            };
            r.with_road(&road, 5.0)
        };
        let rows = vec![
            at("full", 500, 0.2),
            at("cheap", 8, 0.5),
            at("middle", 64, 0.2),
        ];
        let order: Vec<String> = rows.iter().map(|r| r.method.clone()).collect();
        let summaries = summarise(&rows, &order, 0);
        assert!((summaries[0].road.as_ref().unwrap().combined.mean - 0.3).abs() < 1e-12);
        let pick = pick_cheapest(&summaries, "full", 0.01).unwrap();
        assert!(pick.road);
        assert_eq!(pick.method.as_deref(), Some("middle"), "cheap fails ROAD");
        let md = write_report(
            tempfile::tempdir().unwrap().path(),
            &summaries,
            Some(&pick),
            "",
        )
        .unwrap();
        assert!(
            md.contains("| cheap | 1 | 0.5000 [0.5000, 0.5000] | 0.8000"),
            "{md}"
        );
        let plain = summarise(&[row("a.jpg", "full", 20.0)], &["full".into()], 0);
        assert!(plain[0].road.is_none());
    }
}
