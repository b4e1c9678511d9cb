//! Copies of a model with some layers' weights redrawn at random: the model parameter
//! randomisation test of Adebayo et al. ("Sanity Checks for Saliency Maps", 2018) asks
//! whether a map changes when the network it explains does.
//!
//! A layer is a node that multiplies by weights (Conv, Gemm, MatMul and their quantized
//! forms); its parameters are the initializers it reads, directly or through a
//! DequantizeLinear (QDQ graphs). Each tensor is redrawn with its own statistics, so that
//! activations keep their scale and quantized tensors their range: float weights from a
//! normal distribution with the tensor's mean and standard deviation, integer ones
//! uniformly between the tensor's smallest and largest value. A layer's new weights
//! depend on the seed and its name only, so they are the same whichever other layers are
//! redrawn with it.

use std::collections::HashMap;
use std::path::Path;

use prost::Message as _;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use tract_onnx::pb::{tensor_proto::DataType, ModelProto, TensorProto};

use super::onnx::OnnxFile;
use crate::error::{Error, Result};

/// Ops whose parameters are weights, and which of their inputs those are.
const LAYER_OPS: [(&str, &[usize]); 7] = [
    ("Conv", &[1, 2]),
    ("ConvInteger", &[1]),
    ("QLinearConv", &[3, 8]),
    ("Gemm", &[1, 2]),
    ("MatMul", &[0, 1]),
    ("MatMulInteger", &[0, 1]),
    ("QLinearMatMul", &[0, 3]),
];

/// A layer with weights, by its node's name (or, unnamed, its first output's).
#[derive(Clone, Debug, PartialEq)]
pub struct Layer {
    pub name: String,
    pub op: String,
    /// The initializers redrawn for it.
    pub params: Vec<String>,
}

/// A model file read for redrawing.
pub struct Randomiser {
    proto: ModelProto,
    layers: Vec<Layer>,
}

impl Randomiser {
    pub fn read(path: &Path) -> Result<Self> {
        let proto = OnnxFile::read(path)?.proto;
        let layers = find_layers(&proto);
        if layers.is_empty() {
            return Err(Error::model(path, "has no layer with weights to randomise"));
        }
        Ok(Randomiser { proto, layers })
    }

    /// The layers, from the output back to the input (the order of a cascade).
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// The model with `layers`' weights redrawn, as ONNX bytes.
    pub fn randomised(&self, layers: &[&Layer], seed: u64) -> Result<Vec<u8>> {
        let mut proto = self.proto.clone();
        let graph = proto
            .graph
            .as_mut()
            .expect("a model with layers has a graph");
        let index: HashMap<String, usize> = graph
            .initializer
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        for layer in layers {
            let mut rng = ChaCha8Rng::seed_from_u64(seed ^ salt(&layer.name));
            for name in &layer.params {
                let tensor = &mut graph.initializer[index[name]];
                redraw(tensor, &mut rng).map_err(|why| {
                    Error::invalid("randomise", format!("{} of {}: {why}", name, layer.name))
                })?;
            }
        }
        Ok(proto.encode_to_vec())
    }
}

fn find_layers(proto: &ModelProto) -> Vec<Layer> {
    let Some(graph) = &proto.graph else {
        return Vec::new();
    };
    let initializers: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|t| t.name.as_str()).collect();
    // A weight reached through DequantizeLinear (QDQ): the quantized initializer.
    let dequantized: HashMap<&str, &str> = graph
        .node
        .iter()
        .filter(|n| n.op_type == "DequantizeLinear")
        .filter_map(|n| {
            let (x, out) = (n.input.first()?.as_str(), n.output.first()?.as_str());
            initializers.contains(x).then_some((out, x))
        })
        .collect();
    let mut layers: Vec<Layer> = graph
        .node
        .iter()
        .filter_map(|node| {
            let (_, inputs) = LAYER_OPS.iter().find(|(op, _)| *op == node.op_type)?;
            let params: Vec<String> = inputs
                .iter()
                .filter_map(|&i| node.input.get(i))
                .filter_map(|name| {
                    let name = name.as_str();
                    initializers
                        .contains(name)
                        .then_some(name)
                        .or_else(|| dequantized.get(name).copied())
                })
                .map(str::to_string)
                .collect();
            let name = if node.name.is_empty() {
                node.output.first().cloned().unwrap_or_default()
            } else {
                node.name.clone()
            };
            (!params.is_empty()).then(|| Layer {
                name,
                op: node.op_type.clone(),
                params,
            })
        })
        .collect();
    // ONNX lists nodes in topological order: the cascade runs it backwards.
    layers.reverse();
    layers
}

/// Redraws a tensor in place with its own statistics.
fn redraw(t: &mut TensorProto, rng: &mut ChaCha8Rng) -> std::result::Result<(), String> {
    let kind = DataType::try_from(t.data_type).map_err(|_| "unknown data type".to_string())?;
    let raw = !t.raw_data.is_empty();
    match kind {
        DataType::Float => {
            let mut v: Vec<f32> = if raw {
                t.raw_data
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
                    .collect()
            } else {
                std::mem::take(&mut t.float_data)
            };
            let n = v.len().max(1) as f64;
            let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
            let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
            let normal = Normal::new(mean, var.sqrt().max(1e-12)).map_err(|e| e.to_string())?;
            v.iter_mut().for_each(|x| *x = normal.sample(rng) as f32);
            if raw {
                t.raw_data = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            } else {
                t.float_data = v;
            }
        }
        DataType::Int8 | DataType::Uint8 => {
            let signed = kind == DataType::Int8;
            let widen = |b: u8| if signed { b as i8 as i32 } else { b as i32 };
            if raw {
                let (lo, hi) = range(t.raw_data.iter().map(|&b| widen(b)));
                t.raw_data
                    .iter_mut()
                    .for_each(|b| *b = rng.random_range(lo..=hi) as u8);
            } else {
                // Typed storage keeps 8-bit values in int32_data.
                let (lo, hi) = range(t.int32_data.iter().copied());
                t.int32_data
                    .iter_mut()
                    .for_each(|x| *x = rng.random_range(lo..=hi));
            }
        }
        DataType::Int32 => {
            if raw {
                let v: Vec<i32> = t
                    .raw_data
                    .chunks_exact(4)
                    .map(|b| i32::from_le_bytes(b.try_into().expect("4 bytes")))
                    .collect();
                let (lo, hi) = range(v.iter().copied());
                t.raw_data = (0..v.len())
                    .flat_map(|_| rng.random_range(lo..=hi).to_le_bytes())
                    .collect();
            } else {
                let (lo, hi) = range(t.int32_data.iter().copied());
                t.int32_data
                    .iter_mut()
                    .for_each(|x| *x = rng.random_range(lo..=hi));
            }
        }
        other => return Err(format!("weights of type {other:?} are not redrawn")),
    }
    Ok(())
}

/// The smallest and largest value; (0, 0) for none.
fn range(values: impl Iterator<Item = i32>) -> (i32, i32) {
    let (lo, hi) = values.fold((i32::MAX, i32::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        (0, 0)
    } else {
        (lo, hi)
    }
}

fn salt(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}
