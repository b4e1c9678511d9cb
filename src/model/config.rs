//! `[model]`: the model file, its preprocessing overrides and the backend.

use std::path::PathBuf;

use serde::Deserialize;

use super::{
    BackendKind, BackendOptions, BatchPlan, ChannelOrder, ModelOptions, OrtOptions,
    PreprocessOverrides, Provider, TractOptions,
};
use crate::error::{Error, Result};

#[derive(Clone, PartialEq, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    pub path: Option<PathBuf>,
    pub labels: Option<PathBuf>,
    pub cam_layer: Option<String>,
    pub input_size: Option<u32>,
    pub resize: Option<u32>,
    pub channel_order: Option<ChannelOrder>,
    pub mean: Option<[f32; 3]>,
    pub std: Option<[f32; 3]>,
    /// Inference threads; 0 = all cores.
    pub threads: usize,
    /// `tract` (default, built in) or `ort` (ONNX Runtime; needs the `ort` feature).
    pub backend: BackendKind,
    /// ONNX Runtime execution providers in order of preference; default `["cpu"]`.
    pub providers: Vec<Provider>,
    /// ONNX Runtime library (`libonnxruntime.so`); default: `$ORT_DYLIB_PATH`.
    pub ort_library: Option<PathBuf>,
    /// TensorRT: allow FP16 / INT8 kernels.
    pub tensorrt_fp16: bool,
    pub tensorrt_int8: bool,
    /// TensorRT engine cache, so an engine is built once; default
    /// `$STATE_DIRECTORY/tensorrt` under systemd.
    pub engine_cache: Option<PathBuf>,
}

impl ModelConfig {
    /// Threads for each full map: all cores but the one inference needs.
    pub fn heatmap_threads(&self) -> usize {
        let threads = match self.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        threads.saturating_sub(1).max(1)
    }

    /// What to load: the model at `path` (the configured one, or a default the caller found)
    /// with these overrides.
    pub fn options(&self, path: PathBuf, batch_plan: BatchPlan) -> ModelOptions {
        // ISCAMD_KERNELS, ISCAMD_MATMUL and ISCAMD_IN_FLIGHT, checked when iscamd starts.
        let kernels = super::kernels::EnvSettings::or_default();
        let backend = match self.backend {
            BackendKind::Tract => BackendOptions::Tract(TractOptions {
                batch_plan,
                kernels: kernels.policy,
                matmul: kernels.matmul,
                in_flight: kernels.in_flight,
            }),
            BackendKind::Ort => BackendOptions::Ort(OrtOptions {
                library: self.ort_library.clone(),
                providers: self.providers.clone(),
                threads: self.threads,
                tensorrt_fp16: self.tensorrt_fp16,
                tensorrt_int8: self.tensorrt_int8,
                engine_cache: self.engine_cache.clone().or_else(|| {
                    std::env::var_os("STATE_DIRECTORY").map(|d| PathBuf::from(d).join("tensorrt"))
                }),
            }),
        };
        ModelOptions {
            path,
            labels: self.labels.clone(),
            cam_layer: self.cam_layer.clone(),
            preprocess: PreprocessOverrides {
                input_size: self.input_size,
                resize: self.resize,
                channel_order: self.channel_order,
                mean: self.mean,
                std: self.std,
                pixel_max: None,
            },
            backend,
        }
    }
}

/// Inference threads accepted (0 = one per core).
pub const MAX_THREADS: usize = 256;

impl ModelConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        if self.backend != BackendKind::Ort
            && (!self.providers.is_empty() || self.ort_library.is_some())
        {
            return Err(Error::invalid(
                "model.providers/ort_library",
                "apply to backend = \"ort\" only; set [model] backend = \"ort\" or remove them",
            ));
        }
        if self.backend == BackendKind::Ort && cfg!(not(feature = "ort")) {
            return Err(Error::invalid(
                "model.backend",
                "\"ort\" is not built in; rebuild with `cargo build --release --features ort`",
            ));
        }
        if self.threads > MAX_THREADS {
            return Err(Error::invalid(
                "model.threads",
                format!(
                    "{} (expected 0 = one per core, or 1..={MAX_THREADS})",
                    self.threads
                ),
            ));
        }
        Ok(())
    }
}
