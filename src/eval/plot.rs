//! The report's plots: mean deletion / insertion curves, and quality against cost. Each is
//! drawn once as SVG (plotters) and rasterised to PNG from that SVG (resvg), so the two
//! formats never disagree.

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

use super::report::MethodSummary;
use super::sanity::{Randomisation, SanitySummary};
use crate::error::{Error, Result};

const SIZE: (u32, u32) = (1200, 460);
const FONT: &str = "sans-serif";

/// Writes `curves.svg/png` (the methods in `curve_methods`) and `cost.svg/png` (every
/// CAM method: Insertion AUC and Average Drop against passes per map) into `out`.
pub fn write_plots(
    out: &Path,
    summaries: &[MethodSummary],
    curve_methods: &[String],
) -> Result<Vec<PathBuf>> {
    let curves: Vec<&MethodSummary> = summaries
        .iter()
        .filter(|s| curve_methods.contains(&s.method))
        .collect();
    let mut written = Vec::new();
    for (name, svg) in [
        ("curves", draw(out, |root| draw_curves(root, &curves))?),
        ("cost", draw(out, |root| draw_cost(root, summaries))?),
    ] {
        let svg_path = out.join(format!("{name}.svg"));
        std::fs::write(&svg_path, &svg)
            .map_err(|e| Error::input(&svg_path, format!("cannot write: {e}")))?;
        let png_path = out.join(format!("{name}.png"));
        rasterise(&svg, &png_path)?;
        written.extend([svg_path, png_path]);
    }
    Ok(written)
}

/// Writes `sanity.svg/png`: each method's median rank correlation and SSIM with its
/// original maps as cascading randomisation redraws more layers.
pub fn write_sanity_plot(out: &Path, summaries: &[SanitySummary]) -> Result<Vec<PathBuf>> {
    let cascade: Vec<&SanitySummary> = summaries
        .iter()
        .filter(|s| s.randomisation == Randomisation::Cascade)
        .collect();
    let svg = draw(out, |root| draw_sanity(root, &cascade))?;
    let svg_path = out.join("sanity.svg");
    std::fs::write(&svg_path, &svg)
        .map_err(|e| Error::input(&svg_path, format!("cannot write: {e}")))?;
    let png_path = out.join("sanity.png");
    rasterise(&svg, &png_path)?;
    Ok(vec![svg_path, png_path])
}

fn draw_sanity(root: &Area, cascade: &[&SanitySummary]) -> DrawResult<()> {
    root.fill(&WHITE)?;
    let mut methods: Vec<&str> = Vec::new();
    for s in cascade {
        if !methods.contains(&s.method.as_str()) {
            methods.push(&s.method);
        }
    }
    let max_layers = cascade.iter().map(|s| s.layers).max().unwrap_or(1) as f64;
    type Value = fn(&SanitySummary) -> f64;
    let panels: [(&str, &str, Value); 2] = [
        (
            "Rank correlation with the original map (lower: the map follows the model)",
            "median Spearman ρ",
            |s| s.spearman,
        ),
        (
            "Structural similarity with the original map",
            "median SSIM",
            |s| s.ssim,
        ),
    ];
    for (area, (title, y_desc, value)) in root.split_evenly((1, 2)).iter().zip(panels) {
        let mut chart = ChartBuilder::on(area)
            .caption(title, (FONT, 15))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..max_layers, -0.2f64..1.05f64)?;
        chart
            .configure_mesh()
            .x_desc("layers redrawn, from the output down")
            .y_desc(y_desc)
            .draw()?;
        for (i, m) in methods.iter().enumerate() {
            // Before any layer is redrawn, every map equals itself.
            let points: Vec<(f64, f64)> = std::iter::once((0.0, 1.0))
                .chain(
                    cascade
                        .iter()
                        .filter(|s| s.method == *m)
                        .map(|s| (s.layers as f64, value(s))),
                )
                .collect();
            let style = colour(i).stroke_width(2);
            chart
                .draw_series(LineSeries::new(points.clone(), style))?
                .label(*m)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
            chart.draw_series(
                points
                    .iter()
                    .map(|&p| Circle::new(p, 3, colour(i).filled())),
            )?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font((FONT, 12))
            .draw()?;
    }
    Ok(())
}

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;
type DrawResult<T> = std::result::Result<T, Box<dyn std::error::Error + 'static>>;

fn draw(out: &Path, paint: impl FnOnce(&Area) -> DrawResult<()>) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        paint(&root)
            .and_then(|()| root.present().map_err(Into::into))
            .map_err(|e| Error::input(out, format!("cannot draw a plot: {e}")))?;
    }
    Ok(svg)
}

/// Series colours: Tableau 10, then Set 1, so a sweep's dozen lines stay distinct.
fn colour(i: usize) -> RGBColor {
    let palette: Vec<colorous::Color> = colorous::TABLEAU10
        .iter()
        .chain(colorous::SET1.iter())
        .copied()
        .collect();
    let c = palette[i % palette.len()];
    RGBColor(c.r, c.g, c.b)
}

/// The controls, drawn as thin grey lines.
fn control_colour(i: usize) -> RGBColor {
    [RGBColor(90, 90, 90), RGBColor(170, 170, 170)][i % 2]
}

fn draw_curves(root: &Area, methods: &[&MethodSummary]) -> DrawResult<()> {
    root.fill(&WHITE)?;
    let halves = root.split_evenly((1, 2));
    type Curve = fn(&MethodSummary) -> &Vec<f64>;
    let panels: [(&str, &str, Curve, SeriesLabelPosition); 2] = [
        (
            "Deletion: top pixels removed (lower is better)",
            "fraction of pixels removed",
            |s| &s.mean_deletion_curve,
            SeriesLabelPosition::UpperRight,
        ),
        (
            "Insertion: top pixels revealed on the blurred image (higher is better)",
            "fraction of pixels revealed",
            |s| &s.mean_insertion_curve,
            SeriesLabelPosition::LowerRight,
        ),
    ];
    for (area, (title, x_desc, curve, legend)) in halves.iter().zip(panels) {
        let mut chart = ChartBuilder::on(area)
            .caption(title, (FONT, 16))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..1f64, 0f64..1f64)?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc("mean p(class)")
            .draw()?;
        for (i, s) in methods.iter().enumerate() {
            let c = curve(s);
            let n = c.len().saturating_sub(1).max(1) as f64;
            let style = colour(i).stroke_width(2);
            chart
                .draw_series(LineSeries::new(
                    c.iter().enumerate().map(|(j, &p)| (j as f64 / n, p)),
                    style,
                ))?
                .label(s.method.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        }
        chart
            .configure_series_labels()
            .position(legend)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font((FONT, 12))
            .draw()?;
    }
    Ok(())
}

/// A method's label without its `k`: the points of one family are joined by a line.
fn family(method: &str) -> String {
    match method.split_once(':') {
        Some((name, args)) => {
            let kept: Vec<&str> = args.split(',').filter(|a| !a.starts_with("k=")).collect();
            if kept.is_empty() {
                name.to_string()
            } else {
                format!("{name}:{}", kept.join(","))
            }
        }
        None => method.to_string(),
    }
}

fn draw_cost(root: &Area, summaries: &[MethodSummary]) -> DrawResult<()> {
    root.fill(&WHITE)?;
    let cams: Vec<&MethodSummary> = summaries
        .iter()
        .filter(|s| s.passes_per_map > 0.0)
        .collect();
    let controls: Vec<&MethodSummary> = summaries
        .iter()
        .filter(|s| s.passes_per_map == 0.0)
        .collect();
    let mut families: Vec<String> = Vec::new();
    for s in &cams {
        let f = family(&s.method);
        if !families.contains(&f) {
            families.push(f);
        }
    }
    let max_passes = cams.iter().map(|s| s.passes_per_map).fold(10.0, f64::max) * 1.5;
    type Value = fn(&MethodSummary) -> f64;
    let panels: [(&str, Value, bool); 2] = [
        (
            "Insertion AUC (higher is better)",
            |s| s.insertion_auc.mean,
            false,
        ),
        (
            "Average Drop % (lower is better)",
            |s| s.average_drop_percent.mean,
            true,
        ),
    ];
    for (area, (title, value, percent)) in root.split_evenly((1, 2)).iter().zip(panels) {
        // Fit the axis to the data: the differences between methods are a few percent.
        let (lo, hi) = summaries
            .iter()
            .map(value)
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| {
                (l.min(v), h.max(v))
            });
        let pad = ((hi - lo) * 0.1).max(if percent { 1.0 } else { 0.01 });
        let ceiling = if percent { 100.0 } else { 1.0 };
        let (y_min, y_max) = ((lo - pad).max(0.0), (hi + pad).min(ceiling));
        let mut chart = ChartBuilder::on(area)
            .caption(title, (FONT, 16))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d((1f64..max_passes).log_scale(), y_min..y_max)?;
        chart
            .configure_mesh()
            .x_desc("masked forward passes per map (log)")
            .draw()?;
        for (i, f) in families.iter().enumerate() {
            let mut points: Vec<(f64, f64)> = cams
                .iter()
                .filter(|s| family(&s.method) == *f)
                .map(|s| (s.passes_per_map, value(s)))
                .collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            let style = colour(i).stroke_width(2);
            chart
                .draw_series(LineSeries::new(points.clone(), style))?
                .label(f.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
            chart.draw_series(
                points
                    .iter()
                    .map(|&p| Circle::new(p, 4, colour(i).filled())),
            )?;
        }
        for (j, s) in controls.iter().enumerate() {
            let style = control_colour(j).stroke_width(1);
            let y = value(s);
            chart
                .draw_series(LineSeries::new([(1.0, y), (max_passes, y)], style))?
                .label(format!("{} (no passes)", s.method))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        }
        chart
            .configure_series_labels()
            .position(if percent {
                SeriesLabelPosition::UpperRight
            } else {
                SeriesLabelPosition::LowerRight
            })
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font((FONT, 12))
            .draw()?;
    }
    Ok(())
}

/// Renders the SVG to PNG with the system's fonts (without any, the PNG has no text;
/// the SVG still has it).
fn rasterise(svg: &str, png_path: &Path) -> Result<()> {
    let mut options = resvg::usvg::Options::default();
    let fonts = options.fontdb_mut();
    fonts.load_system_fonts();
    let sans = ["DejaVu Sans", "Liberation Sans", "Noto Sans", "Arial"]
        .into_iter()
        .find(|want| {
            fonts
                .faces()
                .any(|f| f.families.iter().any(|(name, _)| name == want))
        });
    if let Some(family) = sans {
        fonts.set_sans_serif_family(family);
    }
    let fail = |e: String| Error::input(png_path, format!("cannot render the plot: {e}"));
    let tree = resvg::usvg::Tree::from_str(svg, &options).map_err(|e| fail(e.to_string()))?;
    let size = tree.size().to_int_size();
    let mut pixmap = resvg::tiny_skia::Pixmap::new(size.width(), size.height())
        .ok_or_else(|| fail("empty image".into()))?;
    resvg::render(&tree, Default::default(), &mut pixmap.as_mut());
    pixmap.save_png(png_path).map_err(|e| fail(e.to_string()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn families_drop_k() {
        assert_eq!(super::family("iscam:n=4,k=32"), "iscam:n=4");
        assert_eq!(super::family("iscam:k=32"), "iscam");
        assert_eq!(super::family("sscam:n=35,sigma=2"), "sscam:n=35,sigma=2");
        assert_eq!(super::family("scorecam"), "scorecam");
    }
}
