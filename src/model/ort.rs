//! The ONNX Runtime backend (feature `ort`): libonnxruntime is loaded at run time, only
//! when a model is loaded with `backend = "ort"`, so the binary starts without it.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::ndarray::{Array4, ArrayD};
use ort::ep::{self, ExecutionProviderDispatch};
use ort::session::Session;
use ort::value::TensorRef;
use prost::Message;
use tract_onnx::pb;

use super::{qdq, Backend, OrtOptions, Provider};
use crate::error::{with_causes, Error, Result};

/// ONNX Runtime once loaded, with its environment: the first library loaded serves the
/// whole process (it cannot be unloaded or replaced).
static LOADED: Mutex<Option<(PathBuf, &'static ort::environment::Environment)>> = Mutex::new(None);

pub struct OrtBackend {
    /// `Session::run` needs `&mut`; ONNX Runtime parallelises inside one run.
    session: Mutex<Session>,
    input: String,
    outputs: Vec<String>,
    providers: Vec<Provider>,
}

impl OrtBackend {
    /// Builds a session for `path` whose outputs are `outputs` (graph outputs or any
    /// intermediate tensor, which is made a graph output here: ONNX Runtime can only
    /// return those; in a QDQ graph, as the model reads it: [`qdq::outputs_as_read`]).
    pub fn load(
        path: &Path,
        mut proto: pb::ModelProto,
        input: &str,
        outputs: &[String],
        options: &OrtOptions,
    ) -> Result<Self> {
        let fail =
            |what: &str, e: &dyn std::fmt::Display| Error::model(path, format!("{what}: {e}"));
        let environment = load_library(options).map_err(|e| Error::model(path, with_causes(&e)))?;

        let graph = proto
            .graph
            .as_mut()
            .ok_or_else(|| Error::model(path, "has no graph"))?;
        let outputs = qdq::outputs_as_read(graph, outputs);
        for name in &outputs {
            if !graph.output.iter().any(|o| &o.name == name) {
                graph.output.push(pb::ValueInfoProto {
                    name: name.clone(),
                    ..Default::default()
                });
            }
        }
        let bytes = proto.encode_to_vec();

        let providers = if options.providers.is_empty() {
            vec![Provider::Cpu]
        } else {
            options.providers.clone()
        };
        let dispatch: Vec<ExecutionProviderDispatch> = providers
            .iter()
            .map(|p| provider(*p, options).error_on_failure())
            .collect();
        let mut builder = Session::builder(environment)
            .map_err(|e| fail("ONNX Runtime", &e))?
            .with_execution_providers(dispatch)
            .map_err(|e| {
                fail(
                    &format!("cannot register execution providers {}", list(&providers)),
                    &e,
                )
            })?;
        if options.threads > 0 {
            builder = builder
                .with_intra_threads(options.threads)
                .map_err(|e| fail("ONNX Runtime", &e))?;
        }
        let session = builder
            .commit_from_memory(&bytes)
            .map_err(|e| fail("ONNX Runtime cannot load it", &e))?;
        Ok(OrtBackend {
            session: Mutex::new(session),
            input: input.to_string(),
            outputs,
            providers,
        })
    }
}

impl Backend for OrtBackend {
    fn describe(&self) -> String {
        format!("ort ({})", list(&self.providers))
    }

    fn run(&self, input: Array4<f32>) -> Result<(ArrayD<f32>, Option<ArrayD<f32>>)> {
        let err = |e: ort::Error| Error::Inference(format!("ONNX Runtime: {e}"));
        let shape: Vec<i64> = input.shape().iter().map(|&d| d as i64).collect();
        let data = input
            .as_slice()
            .ok_or_else(|| Error::Inference("input tensor is not contiguous".into()))?;
        let value = TensorRef::from_array_view((shape, data)).map_err(err)?;
        let mut session = self.session.lock().expect("session poisoned");
        let outputs = session
            .run(ort::inputs![self.input.as_str() => value])
            .map_err(err)?;
        let mut arrays = self.outputs.iter().map(|name| -> Result<ArrayD<f32>> {
            let (shape, data) = outputs[name.as_str()]
                .try_extract_tensor::<f32>()
                .map_err(err)?;
            let shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
            ArrayD::from_shape_vec(shape, data.to_vec())
                .map_err(|e| Error::Inference(e.to_string()))
        });
        let logits = arrays.next().expect("outputs start with the logits")?;
        let activations = arrays.next().transpose()?;
        Ok((logits, activations))
    }
}

fn provider(p: Provider, options: &OrtOptions) -> ExecutionProviderDispatch {
    match p {
        Provider::Cpu => ep::CPU::default().build(),
        Provider::Cuda => ep::CUDA::default().build(),
        Provider::TensorRt => {
            let mut trt = ep::TensorRT::default()
                .with_fp16(options.tensorrt_fp16)
                .with_int8(options.tensorrt_int8);
            if let Some(dir) = &options.engine_cache {
                trt = trt
                    .with_engine_cache(true)
                    .with_engine_cache_path(dir.display())
                    .with_timing_cache(true)
                    .with_timing_cache_path(dir.display());
            }
            trt.build()
        }
    }
}

fn list(providers: &[Provider]) -> String {
    providers
        .iter()
        .map(Provider::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why libonnxruntime cannot be loaded.
#[derive(Debug, thiserror::Error)]
enum LoadError {
    #[error("ONNX Runtime library {} does not exist (set [model] ort_library or ORT_DYLIB_PATH)", .0.display())]
    Missing(PathBuf),
    #[error("ONNX Runtime is already loaded from {}; one process cannot load {} too", .loaded.display(), .wanted.display())]
    Twice { loaded: PathBuf, wanted: PathBuf },
    #[error(
        "backend \"ort\" needs ONNX Runtime: set [model] ort_library or ORT_DYLIB_PATH to \
             libonnxruntime.so (the onnxruntime pip wheel ships one; docs/backends.md)"
    )]
    NotConfigured,
    #[error("cannot load ONNX Runtime from {}", .path.display())]
    Load {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Loads libonnxruntime once per process, from the configured path or `ORT_DYLIB_PATH`.
fn load_library(
    options: &OrtOptions,
) -> std::result::Result<&'static ort::environment::Environment, LoadError> {
    let mut loaded = LOADED.lock().expect("ONNX Runtime loader poisoned");
    let wanted = options
        .library
        .clone()
        .or_else(|| std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from));
    if let Some(w) = wanted.as_ref().filter(|w| !w.is_file()) {
        return Err(LoadError::Missing(w.clone()));
    }
    if let Some((path, environment)) = loaded.as_ref() {
        return match wanted {
            Some(w) if &w != path => Err(LoadError::Twice {
                loaded: path.clone(),
                wanted: w,
            }),
            _ => Ok(environment),
        };
    }
    let path = wanted.ok_or(LoadError::NotConfigured)?;
    let cannot = |source: Box<dyn std::error::Error + Send + Sync>| LoadError::Load {
        path: path.clone(),
        source,
    };
    let environment = ort::init_from(&path)
        .map_err(|e| cannot(e.into()))?
        .with_name("iscamd")
        .build()
        .map_err(|e| cannot(e.into()))?;
    // Lives as long as the process, as the library does.
    let environment: &'static _ = Box::leak(Box::new(environment));
    *loaded = Some((path, environment));
    Ok(environment)
}
