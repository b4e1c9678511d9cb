//! The classifier: an ONNX model run by a [`Backend`] (tract, or ONNX Runtime with the
//! `ort` feature), returning in one forward pass both the class logits and the
//! activations of the CAM layer.

pub mod annotate;
mod backend;
pub mod config;
pub mod cost;
pub mod fetch;
mod graph;
mod head;
pub mod kernels;
mod labels;
mod onnx;
#[cfg(feature = "ort")]
mod ort;
mod preprocess;
mod qdq;
mod qdq_concat;
mod qdq_moves;
mod qdq_weights;
pub mod randomise;
pub mod tail;
mod tract;
mod zero_points;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tract_onnx::prelude::tract_ndarray::{Array2, Array4, ArrayD, ArrayView4, Ix4};

pub use backend::{Backend, BackendKind, NodeTime, OpTime, OrtOptions, Provider};
pub use graph::{find_cam_layer, FoundLayer};
pub use head::{HeadError, LinearHead};
pub use labels::Labels;
use onnx::OnnxFile;
pub use preprocess::{ChannelOrder, Preprocess, PreprocessMetadata, PreprocessOverrides};
pub use tract::{Swapped, Swaps};
/// The n-dimensional arrays iscamd's tensors are (the version tract is built with).
pub use tract_onnx::prelude::tract_ndarray as ndarray;

use crate::error::{Error, Result};

/// How the model is made runnable for different batch sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BatchPlan {
    /// A batch runs as consecutive passes of the batch-1 plan. On tract 0.23 SqueezeNet runs
    /// about twice as fast per image this way as with a batched plan (docs/benchmarks.md).
    #[default]
    Split,
    /// One optimised plan per batch size, built on first use.
    Batched,
    /// A single plan with a symbolic batch dimension.
    Symbolic,
}

impl BatchPlan {
    /// The name [`BatchPlan::parse`] reads.
    pub fn name(self) -> &'static str {
        match self {
            BatchPlan::Split => "split",
            BatchPlan::Batched => "batched",
            BatchPlan::Symbolic => "symbolic",
        }
    }

    pub fn parse(s: &str) -> std::result::Result<Self, UnknownPlan> {
        [BatchPlan::Split, BatchPlan::Batched, BatchPlan::Symbolic]
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| UnknownPlan(s.to_string()))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown plan {0:?}: expected split, batched or symbolic")]
pub struct UnknownPlan(String);

/// What to load and how to read it; `None` fields come from the model's metadata.
#[derive(Clone, Debug, Default)]
pub struct ModelOptions {
    pub path: PathBuf,
    pub labels: Option<PathBuf>,
    /// Tensor name of the CAM layer (metadata key `cam_layer`).
    pub cam_layer: Option<String>,
    pub preprocess: PreprocessOverrides,
    /// Which backend runs the model, with its own options.
    pub backend: BackendOptions,
}

/// Each backend's options.
#[derive(Clone, Debug)]
pub enum BackendOptions {
    Tract(TractOptions),
    Ort(OrtOptions),
}

impl Default for BackendOptions {
    fn default() -> Self {
        BackendOptions::Tract(TractOptions::default())
    }
}

impl BackendOptions {
    pub fn kind(&self) -> BackendKind {
        match self {
            BackendOptions::Tract(_) => BackendKind::Tract,
            BackendOptions::Ort(_) => BackendKind::Ort,
        }
    }
}

/// How tract runs the model.
#[derive(Clone, Debug, Default)]
pub struct TractOptions {
    pub batch_plan: BatchPlan,
    /// iscamd's ops and kernel choices, or tract as it ships.
    pub kernels: kernels::Policy,
    /// How the matrix kernels are chosen under the tuned policy.
    pub matmul: kernels::Matmul,
    /// How a map's passes share their threads under the tuned policy.
    pub in_flight: kernels::InFlight,
}

/// Shape of the CAM layer's activations for one image.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CamLayer {
    pub name: String,
    /// How it was chosen: `given`, `the model's metadata`, or why the graph points at it.
    pub origin: String,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl std::fmt::Display for CamLayer {
    /// `conv5 512x13x13 (the input of the global pooling …)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let CamLayer {
            name,
            origin,
            channels,
            height,
            width,
        } = self;
        write!(f, "{name} {channels}x{height}x{width} ({origin})")
    }
}

/// The result of one forward pass over a batch.
#[derive(Clone, Debug)]
pub struct Forward {
    /// `[batch, classes]`, as the model outputs them (pre-softmax for SqueezeNet).
    pub logits: Array2<f32>,
    /// `[batch, channels, h, w]` of the CAM layer, when the model has one.
    pub activations: Option<Array4<f32>>,
}

/// A loaded model, ready to run from several threads at once.
pub struct Classifier {
    path: PathBuf,
    backend: Box<dyn Backend>,
    preprocess: Preprocess,
    labels: Labels,
    cam: Option<CamLayer>,
    /// The classifier's weights over the CAM layer, or why they cannot be read.
    head: Option<std::result::Result<LinearHead, HeadError>>,
    classes: usize,
    /// The output holds probabilities (metadata `output_kind=probabilities`): logits
    /// are recovered as their logarithm, so that softmax gives them back.
    output_is_probability: bool,
    metadata: HashMap<String, String>,
    /// The output tensor, by name.
    logits_name: String,
    /// The network after the CAM layer (Recipro-CAM), built on first use.
    tail: std::sync::OnceLock<std::result::Result<std::sync::Arc<tail::Tail>, String>>,
}

impl Classifier {
    /// Loads and optimises the model, reads its preprocessing and labels, and checks
    /// that the CAM layer exists and has a `[N, C, h, w]` shape.
    pub fn load(options: &ModelOptions) -> Result<Self> {
        let path = options.path.clone();
        if !path.is_file() {
            return Err(Error::model(
                &path,
                "no such file (give the model with --model PATH)",
            ));
        }
        let onnx = OnnxFile::read(&path)?;
        let input = onnx.input(&path)?;
        let outputs = Outputs::choose(&onnx, &path, options.cam_layer.clone())?;
        let metadata = onnx.metadata.clone();
        let preprocess =
            preprocessing(input.side, &metadata, options).map_err(|e| Error::model(&path, e))?;
        let input_size = preprocess.input_size as usize;
        let head = outputs.cam.as_ref().map(|cam| {
            let graph = onnx.proto.graph.as_ref().ok_or(HeadError::NoGraph)?;
            LinearHead::read(graph, cam, &outputs.logits)
        });
        let backend = open_backend(options, onnx, &input.name, &outputs, input_size)?;
        let (classes, cam) = output_shapes(&path, backend.as_ref(), &outputs, input_size)?;
        let head = head.map(|h| h.and_then(|h| h.fits(classes, cam.as_ref()).map(|()| h)));
        let labels_path = options
            .labels
            .clone()
            .or_else(|| Labels::beside_model(&path, metadata.get("labels").map(String::as_str)));
        let builtin = || {
            let key = metadata.get("labels")?;
            Labels::builtin(key).filter(|l| l.len() == classes)
        };
        let labels = match labels_path {
            Some(p) => Labels::load(&p)?,
            None => builtin().unwrap_or_else(|| Labels::numbered(classes)),
        };
        Ok(Classifier {
            path,
            backend,
            preprocess,
            labels,
            cam,
            head,
            classes,
            output_is_probability: metadata
                .get("output_kind")
                .is_some_and(|k| k == "probabilities"),
            metadata,
            logits_name: outputs.logits.clone(),
            tail: std::sync::OnceLock::new(),
        })
    }

    /// The network after the CAM layer, as plans of its own (built once).
    pub fn tail(&self) -> Result<std::sync::Arc<tail::Tail>> {
        let layer = self
            .cam
            .as_ref()
            .ok_or_else(|| Error::model(&self.path, "has no CAM layer (set --cam-layer)"))?;
        let built = self.tail.get_or_init(|| {
            let shape = (layer.channels, layer.height, layer.width);
            tail::Tail::build(&self.path, &layer.name, &self.logits_name, shape)
                .map(std::sync::Arc::new)
                .map_err(|e| match e {
                    Error::Model { reason, .. } => reason,
                    other => other.to_string(),
                })
        });
        built.clone().map_err(|e| Error::model(&self.path, e))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn preprocess(&self) -> &Preprocess {
        &self.preprocess
    }

    pub fn labels(&self) -> &Labels {
        &self.labels
    }

    /// The CAM layer, or `None` for a model loaded without one.
    pub fn cam_layer(&self) -> Option<&CamLayer> {
        self.cam.as_ref()
    }

    /// The linear head after the CAM layer (what the `cam` method and class-aware channel
    /// ranking read), or why the model has none they can use.
    pub fn linear_head(&self) -> Result<&LinearHead> {
        match &self.head {
            Some(Ok(head)) => Ok(head),
            Some(Err(why)) => Err(Error::model(&self.path, why)),
            None => Err(Error::model(
                &self.path,
                "has no CAM layer (set --cam-layer)",
            )),
        }
    }

    pub fn classes(&self) -> usize {
        self.classes
    }

    /// The model's `metadata_props`.
    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.metadata
    }

    /// Side of the square input tensor.
    pub fn input_size(&self) -> usize {
        self.preprocess.input_size as usize
    }

    /// Runs a batch `[B, 3, S, S]` of preprocessed inputs.
    pub fn forward(&self, input: ArrayView4<f32>) -> Result<Forward> {
        let (b, c, h, w) = input.dim();
        let s = self.input_size();
        if b == 0 || c != 3 || h != s || w != s {
            return Err(Error::invalid(
                "input tensor",
                format!("shape [{b},{c},{h},{w}], expected [B,3,{s},{s}] with B ≥ 1"),
            ));
        }
        self.forward_owned(input.to_owned())
    }

    /// Runs a batch the caller no longer needs (no copy on hot paths); its shape is the
    /// caller's to get right (`[B, 3, S, S]`, S the input size or a scoring size).
    pub fn forward_owned(&self, input: Array4<f32>) -> Result<Forward> {
        let batch = input.dim().0;
        let (logits, activations) = self.backend.run(input)?;
        let shape_error = |what: &str, e: &dyn std::fmt::Display| {
            Error::Inference(format!("{what} of unexpected shape: {e}"))
        };
        let activations = activations
            .map(ArrayD::into_dimensionality::<Ix4>)
            .transpose()
            .map_err(|e| shape_error("activations", &e))?;
        let mut logits = logits
            .into_shape_with_order((batch, self.classes))
            .map_err(|e| shape_error("logits", &e))?;
        if self.output_is_probability {
            logits.mapv_inplace(|p| p.max(f32::MIN_POSITIVE).ln());
        }
        Ok(Forward {
            logits,
            activations,
        })
    }

    /// What runs the model, e.g. `tract (iscamd's ops, replaced/found: max-pool 3/3, …;
    /// tract's matrix kernels)` or `ort (cuda, cpu)`.
    pub fn backend(&self) -> String {
        self.backend.describe()
    }

    /// What iscamd's own ops replaced in tract's plan of this model (`None` on other
    /// backends and under `ISCAMD_KERNELS=stock`).
    pub fn op_swaps(&self) -> Option<Swaps> {
        self.backend.op_swaps()
    }

    /// tract's matrix kernels for this model and how they were chosen (`None` on other
    /// backends).
    pub fn matrix_kernels(&self) -> Option<kernels::Chosen> {
        self.backend.matrix_kernels()
    }

    /// Where a pass of `frame` spends its time, op by op, averaged over `passes` (`None`
    /// on backends that cannot tell: ONNX Runtime).
    pub fn profile(&self, frame: &image::RgbImage, passes: usize) -> Result<Option<Vec<OpTime>>> {
        let input = self.preprocess.tensor(frame).insert_axis(ndarray::Axis(0));
        self.backend.profile(input, passes)
    }

    /// How `threads` threads run this model's passes for a map: how many at once, how many
    /// threads each, and how that was chosen.
    pub fn split(&self, threads: usize) -> kernels::ChosenSplit {
        self.backend.split(threads)
    }
}

/// The names of the outputs a pass computes: the logits and, if there is one, the CAM
/// layer. Selects them as the graph's outputs.
struct Outputs {
    logits: String,
    cam: Option<String>,
    /// How the CAM layer was chosen.
    cam_origin: String,
}

impl Outputs {
    fn names(&self) -> Vec<String> {
        std::iter::once(self.logits.clone())
            .chain(self.cam.clone())
            .collect()
    }
}

impl Outputs {
    /// The logits (metadata `output_name`, or the first graph output) and the CAM layer
    /// (`cam_layer`: the option, metadata `cam_layer`, or [`find_cam_layer`]), each checked
    /// to exist.
    fn choose(onnx: &OnnxFile, path: &Path, cam_layer: Option<String>) -> Result<Self> {
        let logits = match onnx.metadata.get("output_name") {
            Some(n) => n.clone(),
            None => onnx
                .first_output()
                .ok_or_else(|| Error::model(path, "has no output"))?
                .to_string(),
        };
        if !onnx.has_tensor(&logits) {
            return Err(Error::model(
                path,
                format!("has no output tensor named {logits:?}"),
            ));
        }
        let found = || {
            let graph = onnx.proto.graph.as_ref()?;
            let found = find_cam_layer(graph, &logits)?;
            Some((found.tensor, found.why))
        };
        let (cam, cam_origin) = match (cam_layer, onnx.metadata.get("cam_layer")) {
            (Some(n), _) => (Some(n), "given".to_string()),
            (None, Some(n)) => (Some(n.clone()), "the model's metadata".to_string()),
            (None, None) => match found() {
                Some((n, why)) => (Some(n), why),
                None => (None, "no convolution in the model".to_string()),
            },
        };
        if let Some(n) = cam.as_ref().filter(|n| !onnx.has_tensor(n)) {
            return Err(Error::model(
                path,
                format!("has no tensor named {n:?} for the CAM layer (set --cam-layer to a conv/concat output of shape [N,C,h,w])"),
            ));
        }
        Ok(Outputs {
            logits,
            cam,
            cam_origin,
        })
    }
}

/// How to feed the model: its metadata, the overrides, and the graph's input size.
fn preprocessing(
    graph_size: Option<u32>,
    metadata: &HashMap<String, String>,
    options: &ModelOptions,
) -> Result<Preprocess> {
    let meta = |k: &str| metadata.get(k).cloned();
    let from_metadata = PreprocessMetadata {
        input_size: meta("input_size"),
        resize: meta("resize"),
        channel_order: meta("channel_order"),
        mean: meta("mean"),
        std: meta("std"),
        pixel_range: meta("pixel_range"),
    };
    Preprocess::resolve(&from_metadata, &options.preprocess, graph_size)
}

fn open_backend(
    options: &ModelOptions,
    onnx: OnnxFile,
    input: &str,
    outputs: &Outputs,
    input_size: usize,
) -> Result<Box<dyn Backend>> {
    let path = options.path.clone();
    let names = outputs.names();
    Ok(match &options.backend {
        BackendOptions::Tract(tract) => Box::new(tract::TractBackend::new(
            path,
            &onnx.proto,
            &names,
            input_size,
            tract,
        )?),
        #[cfg(feature = "ort")]
        BackendOptions::Ort(ort) => Box::new(ort::OrtBackend::load(
            &path, onnx.proto, input, &names, ort,
        )?),
        #[cfg(not(feature = "ort"))]
        BackendOptions::Ort(_) => {
            let _ = (onnx, input, names);
            return Err(Error::model(
                &path,
                "backend \"ort\" is not built in: rebuild with `cargo build --release --features ort`",
            ));
        }
    })
}

/// One pass on a blank image tells the output shapes, whatever the backend: the number
/// of classes and the CAM layer's shape.
fn output_shapes(
    path: &Path,
    backend: &dyn Backend,
    outputs: &Outputs,
    input_size: usize,
) -> Result<(usize, Option<CamLayer>)> {
    let blank = Array4::zeros((1, 3, input_size, input_size));
    let (logits, activations) = backend.run(blank)?;
    // Caffe-converted classifiers keep the pooled map's shape: [N, classes, 1, 1].
    let classes = match logits.shape() {
        [1, n] | [1, n, 1, 1] => *n,
        other => {
            let logits = &outputs.logits;
            let why = format!(
                "output {logits:?} has shape {other:?}; expected [N, classes] or [N, classes, 1, 1]"
            );
            return Err(Error::model(path, why));
        }
    };
    let cam = match (&outputs.cam, activations) {
        (Some(name), Some(a)) => match a.shape() {
            [1, c, h, w] => Some(CamLayer {
                name: name.clone(),
                origin: outputs.cam_origin.clone(),
                channels: *c,
                height: *h,
                width: *w,
            }),
            other => {
                let why =
                    format!("CAM layer {name:?} has shape {other:?}; expected [N, channels, h, w]");
                return Err(Error::model(path, why));
            }
        },
        _ => None,
    };
    Ok((classes, cam))
}

/// Softmax of a row of logits, computed in f64 for stable tails.
pub fn softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let exp: Vec<f64> = logits.iter().map(|&l| (l as f64 - max).exp()).collect();
    let sum: f64 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

/// Indices of the `k` largest values, largest first (ties: lower index first).
pub fn top_k(values: &[f64], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    idx.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}
