//! What iscamd reads from an ONNX file before a backend sees it: the protobuf, its
//! `metadata_props`, its one input and the names of its tensors. Reading is protobuf
//! decoding only, so each backend builds its own graph from the same bytes (ONNX Runtime
//! never waits for tract's analysis).

use crate::error::with_causes;
use std::collections::{HashMap, HashSet};
use std::path::Path;

use tract_onnx::pb::tensor_shape_proto::dimension;
use tract_onnx::pb::{self, type_proto};
use tract_onnx::prelude::Framework;

use crate::error::{Error, Result};

pub struct OnnxFile {
    pub proto: pb::ModelProto,
    pub metadata: HashMap<String, String>,
}

/// The graph's image input.
pub struct Input {
    pub name: String,
    /// Its width when the graph fixes it (`[N, 3, S, S]`).
    pub side: Option<u32>,
}

impl OnnxFile {
    pub fn read(path: &Path) -> Result<Self> {
        let proto = tract_onnx::onnx().proto_model_for_path(path).map_err(|e| {
            Error::model(
                path,
                format!("not an ONNX model: {}", with_causes(e.as_ref())),
            )
        })?;
        let metadata = proto
            .metadata_props
            .iter()
            .map(|p| (p.key.clone(), p.value.clone()))
            .collect();
        Ok(OnnxFile { proto, metadata })
    }

    fn graph(&self) -> Option<&pb::GraphProto> {
        self.proto.graph.as_ref()
    }

    /// The one input fed at run time (older files also list their weights as inputs).
    pub fn input(&self, path: &Path) -> Result<Input> {
        let graph = self
            .graph()
            .ok_or_else(|| Error::model(path, "has no graph"))?;
        let weights: HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
        let inputs: Vec<&pb::ValueInfoProto> = graph
            .input
            .iter()
            .filter(|i| !weights.contains(i.name.as_str()))
            .collect();
        let [input] = inputs[..] else {
            let why = format!("has {} inputs; an image classifier has one", inputs.len());
            return Err(Error::model(path, why));
        };
        let side = match input.r#type.as_ref().and_then(|t| t.value.as_ref()) {
            Some(type_proto::Value::TensorType(t)) => t
                .shape
                .as_ref()
                .and_then(|s| s.dim.get(3))
                .and_then(|d| match d.value {
                    Some(dimension::Value::DimValue(v)) => u32::try_from(v).ok(),
                    _ => None,
                }),
            None => None,
        };
        Ok(Input {
            name: input.name.clone(),
            side,
        })
    }

    /// The name of the graph's first output.
    pub fn first_output(&self) -> Option<&str> {
        self.graph()?.output.first().map(|o| o.name.as_str())
    }

    /// Whether a node computes a tensor of this name (or it is a graph input).
    pub fn has_tensor(&self, name: &str) -> bool {
        self.graph().is_some_and(|g| {
            g.node.iter().any(|n| n.output.iter().any(|o| o == name))
                || g.input.iter().any(|i| i.name == name)
        })
    }
}
