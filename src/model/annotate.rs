//! Writing iscamd's metadata (`metadata_props`: preprocessing, CAM layer, labels) into an
//! ONNX file, so that the file alone says how to feed and explain it (docs/models.md).

use std::collections::BTreeMap;
use std::path::Path;

use prost::Message as _;
use tract_onnx::pb;

use super::graph::find_cam_layer;
use crate::error::{Error, Result};

/// Largest ONNX file annotated: protobuf's own limit.
const MAX_ONNX_BYTES: u64 = 2 << 30;

/// The metadata of the ONNX model zoo's SqueezeNet 1.0 (`squeezenet1.0-8.onnx`): RGB
/// 224×224 scaled to 0..1 and normalised with ImageNet's mean/std, softmax output.
pub const ZOO_SQUEEZENET: &[(&str, &str)] = &[
    ("channel_order", "RGB"),
    ("pixel_range", "0-255"),
    ("mean", "123.675,116.28,103.53"),
    ("std", "58.395,57.12,57.375"),
    ("input_size", "224"),
    ("resize", "256"),
    ("output_kind", "probabilities"),
    ("labels", "imagenet1k"),
];

/// The metadata `annotate` wrote: what was given, and what it found in the graph.
pub type Metadata = BTreeMap<String, String>;

/// What [`annotate`] wrote, and where its CAM layer came from.
#[derive(Clone, Debug)]
pub struct Annotation {
    pub metadata: Metadata,
    /// `given`, `already in the file`, or why the graph points at it.
    pub cam_origin: String,
}

/// Adds `given` to the model's metadata (replacing keys it has), and the keys iscamd
/// can find in the graph itself when neither the file nor `given` has them: `cam_layer`
/// ([`find_cam_layer`]), `input_name` and `output_name`.
///
/// Only the file's `metadata_props` entries change: every other byte is kept as it was,
/// fields this build's ONNX schema does not know included.
pub fn annotate(
    bytes: &[u8],
    given: &Metadata,
) -> std::result::Result<(Vec<u8>, Annotation), String> {
    let model = pb::ModelProto::decode(bytes).map_err(|e| format!("not an ONNX model: {e}"))?;
    let graph = model.graph.as_ref().ok_or("the model has no graph")?;
    let mut meta: Metadata = model
        .metadata_props
        .iter()
        .map(|p| (p.key.clone(), p.value.clone()))
        .collect();
    let cam_origin = match (
        given.contains_key("cam_layer"),
        meta.contains_key("cam_layer"),
    ) {
        (true, _) => "given".to_string(),
        (false, true) => "already in the file".to_string(),
        (false, false) => String::new(),
    };
    meta.extend(given.clone());
    let found = [
        ("input_name", first_input(graph)),
        ("output_name", graph.output.first().map(|o| o.name.clone())),
    ];
    for (key, value) in found {
        if let (false, Some(value)) = (meta.contains_key(key), value) {
            meta.insert(key.into(), value);
        }
    }
    let cam_origin = if meta.contains_key("cam_layer") {
        cam_origin
    } else {
        let logits = meta.get("output_name").map_or("", String::as_str);
        let found = find_cam_layer(graph, logits)
            .ok_or("no convolution in the model: give --cam-layer NAME")?;
        meta.insert("cam_layer".into(), found.tensor);
        found.why
    };
    let mut out = without_field(bytes, METADATA_PROPS)?;
    for (key, value) in &meta {
        let entry = pb::StringStringEntryProto {
            key: key.clone(),
            value: value.clone(),
        };
        prost::encoding::message::encode(METADATA_PROPS, &entry, &mut out);
    }
    let annotation = Annotation {
        metadata: meta,
        cam_origin,
    };
    Ok((out, annotation))
}

/// `ModelProto.metadata_props`'s field number.
const METADATA_PROPS: u32 = 14;

/// The message `bytes` without its top-level fields numbered `field`, the others copied
/// byte for byte.
fn without_field(bytes: &[u8], field: u32) -> std::result::Result<Vec<u8>, String> {
    use prost::encoding::{decode_key, decode_varint, WireType};
    let bad = |e: prost::DecodeError| format!("not an ONNX model: {e}");
    let mut out = Vec::with_capacity(bytes.len());
    let mut rest = bytes;
    while !rest.is_empty() {
        let start = rest;
        let (tag, wire_type) = decode_key(&mut rest).map_err(bad)?;
        let len = match wire_type {
            WireType::Varint => decode_varint(&mut rest).map(|_| 0).map_err(bad)?,
            WireType::SixtyFourBit => 8,
            WireType::ThirtyTwoBit => 4,
            WireType::LengthDelimited => decode_varint(&mut rest).map_err(bad)?,
            WireType::StartGroup | WireType::EndGroup => {
                return Err("not an ONNX model: protobuf groups".into())
            }
        };
        let len = usize::try_from(len)
            .ok()
            .filter(|&n| n <= rest.len())
            .ok_or("not an ONNX model: truncated")?;
        rest = &rest[len..];
        if tag != field {
            out.extend_from_slice(&start[..start.len() - rest.len()]);
        }
    }
    Ok(out)
}

/// [`annotate`] on a file, replaced in one rename: a failure leaves it as it was.
pub fn annotate_file(path: &Path, given: &Metadata) -> Result<Annotation> {
    let bytes = crate::file::read_capped(path, "model", MAX_ONNX_BYTES)?;
    let (annotated, annotation) = annotate(&bytes, given).map_err(|e| Error::model(path, e))?;
    replace_file(path, &annotated)?;
    Ok(annotation)
}

/// Writes `bytes` to a temporary file beside `path`, then renames it over `path`.
pub(crate) fn replace_file(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let dir = dir.unwrap_or(Path::new("."));
    let cannot = |e: std::io::Error| Error::model(path, format!("cannot write: {e}"));
    let mut tmp = tempfile::Builder::new()
        .prefix(".iscamd-")
        .tempfile_in(dir)
        .map_err(cannot)?;
    tmp.write_all(bytes).map_err(cannot)?;
    tmp.as_file().sync_all().map_err(cannot)?;
    keep_readable(tmp.as_file()).map_err(cannot)?;
    tmp.persist(path).map_err(|e| cannot(e.error))?;
    Ok(())
}

/// A temporary file is created 0600; a model must be readable by the daemon's user.
pub(crate) fn keep_readable(file: &std::fs::File) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o644))?;
    }
    Ok(())
}

/// The first graph input that is not a weight (older files list weights as inputs).
fn first_input(graph: &pb::GraphProto) -> Option<String> {
    let weights: Vec<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    graph
        .input
        .iter()
        .find(|i| !weights.contains(&i.name.as_str()))
        .map(|i| i.name.clone())
}
