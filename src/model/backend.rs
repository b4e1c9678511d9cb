//! The engine that runs the graph: tract (always built in) or ONNX Runtime (feature `ort`).
//! Everything above it — preprocessing, labels, the CAM layer, every CAM method — is shared.

use std::fmt;
use std::str::FromStr;

use super::ndarray::{Array4, ArrayD};
use serde::Deserialize;

use crate::error::{Error, Result};

/// Runs a batch of preprocessed inputs and returns the selected outputs.
pub trait Backend: Send + Sync {
    /// What runs the model, for logs and `iscamd check` (e.g. `tract` or `ort: cuda, cpu`).
    fn describe(&self) -> String;

    /// Runs `input` (`[batch, 3, s, s]`) and returns the logits and, when a CAM layer was
    /// selected at load time, its activations — as the graph gives them.
    fn run(&self, input: Array4<f32>) -> Result<(ArrayD<f32>, Option<ArrayD<f32>>)>;

    /// What iscamd's own ops replaced in the backend's plan (tract only).
    fn op_swaps(&self) -> Option<super::Swaps> {
        None
    }

    /// The matrix kernels the backend's plans run and how they were chosen (tract only).
    fn matrix_kernels(&self) -> Option<super::kernels::Chosen> {
        None
    }

    /// Where a pass of one image (`[1, 3, s, s]`) spends its time, op by op, averaged
    /// over `passes` passes after one to warm up (tract only).
    fn profile(&self, _input: Array4<f32>, _passes: usize) -> Result<Option<Vec<OpTime>>> {
        Ok(None)
    }

    /// How `threads` threads run passes: one pass per thread unless the backend measures
    /// (tract) or splits passes itself (ONNX Runtime's intra-op threads).
    fn split(&self, threads: usize) -> super::kernels::ChosenSplit {
        use super::kernels::{ChosenSplit, Split};
        ChosenSplit::unmeasured(threads, Split::passes(threads), "one pass per thread")
    }
}

/// One kind of op of a plan and the time its nodes take in a pass.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct OpTime {
    /// The op's name in the plan (tract's, or iscamd's own op's).
    pub op: String,
    /// How many nodes of the plan run it.
    pub nodes: usize,
    pub seconds_per_pass: f64,
    /// Each of those nodes, slowest first.
    pub by_node: Vec<NodeTime>,
}

/// One node of a plan and the time it takes in a pass.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct NodeTime {
    /// The node's name in the plan.
    pub name: String,
    /// What the op says of itself (its kernel, shapes, packing).
    pub info: String,
    pub seconds_per_pass: f64,
}

/// Which backend loads the model (`[model] backend`, `--backend`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// tract: pure Rust, SIMD kernels on any CPU, nothing to install.
    #[default]
    Tract,
    /// ONNX Runtime, loaded at run time (needs the `ort` feature and libonnxruntime).
    Ort,
}

impl FromStr for BackendKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        from_name("backend", s)
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            BackendKind::Tract => "tract",
            BackendKind::Ort => "ort",
        })
    }
}

/// ONNX Runtime execution providers, in the order a user prefers them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    TensorRt,
    Cuda,
    Cpu,
}

impl FromStr for Provider {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        from_name("provider", s)
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Provider::TensorRt => "tensorrt",
            Provider::Cuda => "cuda",
            Provider::Cpu => "cpu",
        })
    }
}

/// How the ONNX Runtime backend is set up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrtOptions {
    /// `libonnxruntime.so`; `None`: the `ORT_DYLIB_PATH` environment variable.
    pub library: Option<std::path::PathBuf>,
    /// Execution providers in order of preference; each must register or loading fails.
    pub providers: Vec<Provider>,
    /// Intra-op threads; 0 lets ONNX Runtime choose (one per core).
    pub threads: usize,
    pub tensorrt_fp16: bool,
    pub tensorrt_int8: bool,
    /// Where TensorRT keeps built engines, so that they are built once.
    pub engine_cache: Option<std::path::PathBuf>,
}

impl Default for OrtOptions {
    fn default() -> Self {
        OrtOptions {
            library: None,
            providers: vec![Provider::Cpu],
            threads: 0,
            tensorrt_fp16: false,
            tensorrt_int8: false,
            engine_cache: None,
        }
    }
}

/// Parses a name as the config file spells it (serde's lowercase names), so that a flag and
/// a config key accept the same words and list the same choices when they refuse one.
fn from_name<T: serde::de::DeserializeOwned>(what: &'static str, s: &str) -> Result<T> {
    use serde::de::IntoDeserializer;
    T::deserialize(IntoDeserializer::<serde::de::value::Error>::into_deserializer(s))
        .map_err(|e| Error::invalid(what, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_as_in_the_config_file() {
        assert_eq!("ort".parse::<BackendKind>().unwrap(), BackendKind::Ort);
        assert_eq!("tensorrt".parse::<Provider>().unwrap(), Provider::TensorRt);
        let e = "gpu".parse::<Provider>().unwrap_err().to_string();
        assert!(
            e.contains("gpu") && e.contains("tensorrt") && e.contains("cpu"),
            "{e}"
        );
        assert_eq!(Provider::TensorRt.to_string(), "tensorrt");
    }
}
