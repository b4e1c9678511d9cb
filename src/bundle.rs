//! Debug bundles: one frame, what the model said of it and the maps of one or more methods,
//! as a zip an engineer attaches to a bug report (`GET /api/bundle`, `iscamd explain
//! --bundle`) and [`replay`]s on another machine (`iscamd replay`).
//!
//! ```text
//! manifest.json          iscamd.bundle/1 (docs/schemas/bundle.schema.json)
//! frame.png              the frame as captured, lossless
//! input.png              the frame as the model saw it (cropped and resized), lossless
//! maps/N-NAME.png        each map over the frame
//! maps/N-NAME.json       each raw map: width, height, values (row-major, unnormalised)
//! ```

use std::io::{Read, Seek, Write};
use std::time::SystemTime;

use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::analysis::{Analysis, ClassScore};
use crate::cam::{caption, display, spec, CamParams, Explanation};
use crate::error::{Error, Result};
use crate::model::Classifier;
use crate::publish::payload::timestamp;

pub const SCHEMA: &str = "iscamd.bundle/1";
/// Longest side of the overlays in a bundle.
const OVERLAY_MAX_SIDE: u32 = 1024;
/// Most bytes one file of a bundle may unpack to (a 4K frame as PNG is ~25 MB).
const MAX_ENTRY_BYTES: u64 = 64 << 20;
/// Most maps one bundle holds.
pub const MAX_MAPS: usize = 4;

#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub schema: String,
    /// iscamd's version that made it.
    pub iscamd: String,
    pub created: String,
    /// The daemon's device and run; absent for a still.
    pub device: Option<String>,
    pub run: Option<String>,
    pub frame: FrameInfo,
    pub model: ModelInfo,
    /// The top-5, as the model said.
    pub top: Vec<Scored>,
    pub inference_ms: f64,
    pub maps: Vec<MapInfo>,
    /// The daemon's config in force, secrets blanked; absent for a still.
    pub config: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct FrameInfo {
    /// A file name, or the daemon's source.
    pub source: String,
    /// The source's frame number (the daemon's frames).
    pub number: Option<u64>,
    /// Capture time.
    pub ts: Option<String>,
    pub width: u32,
    pub height: u32,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct ModelInfo {
    pub file: String,
    pub sha256: Option<String>,
    pub classes: usize,
    pub backend: String,
    pub cam_layer: Option<String>,
    /// `227px (resize 256), BGR, 0..255, mean …, std …`.
    pub preprocess: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Scored {
    pub index: usize,
    pub label: String,
    pub score: f64,
}

impl From<ClassScore> for Scored {
    fn from(c: ClassScore) -> Self {
        Scored {
            index: c.index,
            label: c.label,
            score: c.score,
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct MapInfo {
    /// The method spec, as `--method` reads it.
    pub spec: String,
    pub weighting: String,
    pub seed: u64,
    pub class: Scored,
    pub passes: usize,
    pub millis: f64,
    pub width: usize,
    pub height: usize,
    /// The overlay PNG and the raw map's JSON in the zip.
    pub overlay: String,
    pub values: String,
}

#[derive(Serialize, Deserialize)]
struct RawMap {
    width: usize,
    height: usize,
    values: Vec<f32>,
}

/// Where a bundle's frame came from.
pub struct Origin {
    pub source: String,
    pub number: Option<u64>,
    pub captured: Option<SystemTime>,
    pub device: Option<String>,
    pub run: Option<String>,
    /// [`crate::config::redacted`].
    pub config: Option<String>,
}

/// Explains `analysis` with each of `methods` (the class each explains: `class`, else
/// the top-1), and packs it all as a zip.
pub fn explain_and_make(
    classifier: &Classifier,
    analysis: &Analysis,
    origin: Origin,
    methods: &[CamParams],
    class: Option<usize>,
    threads: usize,
) -> Result<Vec<u8>> {
    if methods.is_empty() || methods.len() > MAX_MAPS {
        return Err(Error::invalid("bundle", format!("1 to {MAX_MAPS} methods")));
    }
    let explanations = methods
        .iter()
        .map(|params| analysis.explain(classifier, class, params, threads))
        .collect::<Result<Vec<Explanation>>>()?;
    make(classifier, analysis, origin, &explanations)
}

/// Packs a frame, what the model said of it and its maps as a zip.
pub fn make(
    classifier: &Classifier,
    analysis: &Analysis,
    origin: Origin,
    explanations: &[Explanation],
) -> Result<Vec<u8>> {
    let crop = classifier.preprocess().crop_region();
    let mut files: Vec<(String, Vec<u8>)> = vec![
        ("frame.png".into(), png(&analysis.frame)?),
        (
            "input.png".into(),
            png(&classifier.preprocess().model_view(&analysis.frame))?,
        ),
    ];
    let mut maps = Vec::new();
    for (i, e) in explanations.iter().enumerate() {
        let stem = format!("maps/{i}-{}", e.params.method.name());
        let (height, width) = e.map.dim();
        let overlay = display::overlay(&analysis.frame, &e.map, crop, OVERLAY_MAX_SIDE);
        let source = origin
            .device
            .clone()
            .unwrap_or_else(|| origin.source.clone());
        let caption = analysis.caption(classifier, e, origin.captured, source);
        let overlay = caption::captioned(&overlay, &caption);
        files.push((format!("{stem}.png"), png(&overlay)?));
        let raw = RawMap {
            width,
            height,
            values: e.map.iter().copied().collect(),
        };
        files.push((
            format!("{stem}.json"),
            serde_json::to_vec(&raw).expect("a map serialises"),
        ));
        maps.push(MapInfo {
            spec: e.params.to_string(),
            weighting: e.params.weighting.name().into(),
            seed: e.params.seed,
            class: analysis.class_score(classifier, e.class).into(),
            passes: e.passes,
            millis: e.millis,
            width,
            height,
            overlay: format!("{stem}.png"),
            values: format!("{stem}.json"),
        });
    }
    let manifest = Manifest {
        schema: SCHEMA.into(),
        iscamd: env!("CARGO_PKG_VERSION").into(),
        created: timestamp(SystemTime::now()),
        device: origin.device,
        run: origin.run,
        frame: FrameInfo {
            source: origin.source,
            number: origin.number,
            ts: origin.captured.map(timestamp),
            width: analysis.frame.width(),
            height: analysis.frame.height(),
        },
        model: model_info(classifier),
        top: analysis
            .top(classifier, 5)
            .into_iter()
            .map(Scored::from)
            .collect(),
        inference_ms: analysis.latency.inference.unwrap_or_default(),
        maps,
        config: origin.config,
    };
    let manifest = serde_json::to_vec_pretty(&manifest).expect("a manifest serialises");
    files.insert(0, ("manifest.json".into(), manifest));
    zip(files)
}

fn model_info(classifier: &Classifier) -> ModelInfo {
    let p = classifier.preprocess();
    ModelInfo {
        file: classifier.path().display().to_string(),
        sha256: crate::file::sha256_hex(classifier.path()).ok(),
        classes: classifier.classes(),
        backend: classifier.backend(),
        cam_layer: classifier.cam_layer().map(|l| l.to_string()),
        preprocess: format!(
            "{}px (resize {}), {:?}, 0..{}, mean {:?}, std {:?}",
            p.input_size, p.resize, p.channel_order, p.pixel_max, p.mean, p.std
        ),
    }
}

fn png(image: &RgbImage) -> Result<Vec<u8>> {
    let mut out = std::io::Cursor::new(Vec::new());
    image
        .write_to(&mut out, image::ImageFormat::Png)
        .map_err(|e| Error::invalid("bundle", format!("cannot encode a PNG: {e}")))?;
    Ok(out.into_inner())
}

/// Stored, not deflated: PNGs are compressed already, and the JSON is small.
fn zip(files: Vec<(String, Vec<u8>)>) -> Result<Vec<u8>> {
    let failed =
        |e: &dyn std::fmt::Display| Error::invalid("bundle", format!("cannot write the zip: {e}"));
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .large_file(false);
    for (name, bytes) in files {
        writer.start_file(name, options).map_err(|e| failed(&e))?;
        writer.write_all(&bytes).map_err(|e| failed(&e))?;
    }
    Ok(writer.finish().map_err(|e| failed(&e))?.into_inner())
}

/// A bundle read back: its manifest, frame and raw maps.
pub struct Bundle {
    pub manifest: Manifest,
    pub frame: RgbImage,
    /// Per map of the manifest, its values.
    pub maps: Vec<Vec<f32>>,
}

fn bad(e: &dyn std::fmt::Display) -> Error {
    Error::invalid("bundle", e.to_string())
}

/// One file of a bundle, refused past [`MAX_ENTRY_BYTES`].
fn entry<R: Read + Seek>(archive: &mut zip::ZipArchive<R>, name: &str) -> Result<Vec<u8>> {
    let file = archive
        .by_name(name)
        .map_err(|e| bad(&format!("{name}: {e}")))?;
    let mut bytes = Vec::new();
    file.take(MAX_ENTRY_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| bad(&format!("{name}: {e}")))?;
    if bytes.len() as u64 > MAX_ENTRY_BYTES {
        return Err(bad(&format!(
            "{name} is larger than {MAX_ENTRY_BYTES} bytes"
        )));
    }
    Ok(bytes)
}

/// The file `name` of the bundle `zip`.
pub fn file(zip: &[u8], name: &str) -> Result<Vec<u8>> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(zip)).map_err(|e| bad(&e))?;
    entry(&mut archive, name)
}

/// Reads a bundle; refuses one that is not, or whose files are too large.
pub fn read(source: impl Read + Seek) -> Result<Bundle> {
    let mut archive = zip::ZipArchive::new(source).map_err(|e| bad(&e))?;
    let mut entry = |name: &str| entry(&mut archive, name);
    let manifest: Manifest = serde_json::from_slice(&entry("manifest.json")?)
        .map_err(|e| bad(&format!("manifest.json: {e}")))?;
    if manifest.schema != SCHEMA {
        return Err(bad(&format!(
            "manifest.json is {:?}, not {SCHEMA}",
            manifest.schema
        )));
    }
    let frame = image::load_from_memory_with_format(&entry("frame.png")?, image::ImageFormat::Png)
        .map_err(|e| bad(&format!("frame.png: {e}")))?
        .to_rgb8();
    let mut maps = Vec::new();
    for map in &manifest.maps {
        let raw: RawMap = serde_json::from_slice(&entry(&map.values)?)
            .map_err(|e| bad(&format!("{}: {e}", map.values)))?;
        if raw.values.len() != raw.width * raw.height {
            return Err(bad(&format!(
                "{}: {}×{} map with {} values",
                map.values,
                raw.width,
                raw.height,
                raw.values.len()
            )));
        }
        maps.push(raw.values);
    }
    Ok(Bundle {
        manifest,
        frame,
        maps,
    })
}

/// What the same frame gives on this machine with `classifier`.
pub struct Replayed {
    pub same_model: Option<bool>,
    pub top1: (Scored, Scored),
    /// Per map: its spec and the correlation of the map made now with the bundle's.
    pub maps: Vec<(String, f64)>,
}

/// Classifies and explains the bundle's frame again.
pub fn replay(bundle: &Bundle, classifier: &Classifier, threads: usize) -> Result<Replayed> {
    let sha = crate::file::sha256_hex(classifier.path()).ok();
    let same_model = match (&bundle.manifest.model.sha256, &sha) {
        (Some(a), Some(b)) => Some(a == b),
        _ => None,
    };
    let analysis = Analysis::of_frame(classifier, bundle.frame.clone())?;
    let now: Scored = analysis.top(classifier, 1).remove(0).into();
    let then = bundle
        .manifest
        .top
        .first()
        .cloned()
        .ok_or_else(|| Error::invalid("bundle", "manifest.json has no top-5"))?;
    let mut maps = Vec::new();
    for (info, values) in bundle.manifest.maps.iter().zip(&bundle.maps) {
        let mut params = spec::parse(&info.spec)?;
        params.weighting = info.weighting.parse()?;
        params.seed = info.seed;
        let e = analysis.explain(classifier, Some(info.class.index), &params, threads)?;
        let made: Vec<f32> = e.map.iter().copied().collect();
        maps.push((info.spec.clone(), display::pearson(&made, values)));
    }
    Ok(Replayed {
        same_model,
        top1: (then, now),
        maps,
    })
}
