//! The linear head that follows the CAM layer, read from the ONNX graph: the classifier's
//! own weights `w_{c,k}` for class `c` and CAM channel `k`. The zero-pass `cam` method
//! (Zhou et al., CVPR 2016: `CAM_c = Σ_k w_{c,k} A_k`) and the class-aware channel ranking
//! (`w_{c,k} · mean(A_k)`) need nothing else.
//!
//! Two shapes of head are understood, with QuantizeLinear/DequantizeLinear anywhere between
//! their ops and dequantized weights (`QLinearConv`, or `DequantizeLinear` of a constant),
//! where "global average pooling" is a GlobalAveragePool, a ReduceMean over H and W, or an
//! AveragePool whose kernel covers the map:
//! - a 1×1 convolution, optionally a ReLU, then a global average pooling (SqueezeNet's
//!   `conv_final → relu → GlobalAveragePool`). Padding adds a border where the convolution
//!   sees only zeros: its value is `ReLU(b_c)` everywhere, so it carries no spatial
//!   information and the map keeps the CAM layer's grid;
//! - a global average pooling, Flatten/Reshape/Squeeze/Dropout, then `Gemm`, or `MatMul`
//!   and `Add` (ResNet, MobileNet, EfficientNet, ShuffleNet).
//!
//! Either may end in a Softmax.

use tract_onnx::pb::{GraphProto, NodeProto, TensorProto};

use super::graph::{ints, Graph, AFTER_LOGITS, RESHAPES};
use super::ndarray::{Array2, ArrayView3, Axis};
use super::CamLayer;

/// The classifier's weights over the CAM layer's channels.
#[derive(Clone, Debug)]
pub struct LinearHead {
    /// `[classes, channels]`.
    weights: Array2<f32>,
    bias: Vec<f32>,
    /// Whether the map adds the bias: a 1×1 convolution's output is the class's score at
    /// each place, bias included, before the model's own ReLU and pooling; a head that
    /// pools first adds its bias to the pooled value, the same for every place, and the
    /// map leaves it out (Zhou et al.'s CAM, as torchcam and pytorch-grad-cam compute it).
    bias_in_map: bool,
    /// An AveragePool's kernel, which must cover the CAM layer's map.
    pool_kernel: Option<[usize; 2]>,
    /// The ops found, e.g. `Conv "conv_final" (1×1) → Relu → GlobalAveragePool → Flatten`.
    pub description: String,
}

const EXPECTED: &str = "the cam method needs a linear head after the CAM layer: a 1×1 Conv (then ReLU and a global average pooling), or a global average pooling (GlobalAveragePool, ReduceMean over H and W, or an AveragePool over the whole map) → Flatten → Gemm or MatMul(+Add)";

/// Why the ops after the CAM layer are not a head the `cam` method can read.
#[derive(Clone, Debug, thiserror::Error)]
pub enum HeadError {
    /// An op the head cannot contain.
    #[error("the CAM layer {cam:?} leads to {op} {node:?}; {EXPECTED}")]
    Unsupported {
        cam: String,
        op: String,
        node: String,
    },
    /// An op of a kind the head may contain, used in a way it may not.
    #[error("{op} {node:?} {problem}; {EXPECTED}")]
    Op {
        op: String,
        node: String,
        problem: String,
    },
    #[error("nothing reads {0:?} on the way to the logits; {EXPECTED}")]
    Unread(String),
    #[error("{tensor:?} feeds {readers} ops on the way to the logits; {EXPECTED}")]
    Branches { tensor: String, readers: usize },
    /// An op after the classifier's dense layer that makes the head non-linear (an MLP).
    #[error("the head after the CAM layer is not linear: {op} {node:?} follows {dense}; the cam method needs the classifier's weights on the pooled map — explain this model with a method that runs it (recipro, scorecam, sscam, iscam)")]
    NotLinear {
        op: String,
        node: String,
        dense: String,
    },
    #[error("the graph after {0:?} has a cycle")]
    Cycle(String),
    /// A weight, bias or quantization parameter that cannot be read.
    #[error("tensor {name:?} {problem}")]
    Tensor { name: String, problem: String },
    #[error("the head after the CAM layer ({head}) has weights for {classes} classes × {channels} channels; the model has {model_classes} classes and {model_channels} CAM channels")]
    Mismatch {
        head: String,
        classes: usize,
        channels: usize,
        model_classes: usize,
        model_channels: usize,
    },
    #[error("the head after the CAM layer ({head}) averages {kernel:?} windows of the {map:?} map, not the whole map; {EXPECTED}")]
    PartialPool {
        kernel: [usize; 2],
        map: [usize; 2],
        head: String,
    },
    #[error("the model has no graph")]
    NoGraph,
}

impl HeadError {
    fn op(node: &NodeProto, problem: impl Into<String>) -> Self {
        HeadError::Op {
            op: node.op_type.clone(),
            node: node.name.clone(),
            problem: problem.into(),
        }
    }

    fn tensor(name: &str, problem: impl Into<String>) -> Self {
        HeadError::Tensor {
            name: name.to_string(),
            problem: problem.into(),
        }
    }
}

impl LinearHead {
    /// Follows the graph from the CAM layer `cam` to the `logits` output.
    pub fn read(graph: &GraphProto, cam: &str, logits: &str) -> Result<Self, HeadError> {
        let g = Graph::new(graph, logits);
        let mut ops = Vec::new();
        let start = g.quantized_source(cam).unwrap_or(cam);
        let mut tensor = g.skip(start, &["QuantizeLinear", "DequantizeLinear"], &mut ops)?;
        let node = g.consumer(&tensor)?;
        let pool_kernel;
        let bias_in_map = matches!(node.op_type.as_str(), "Conv" | "QLinearConv");
        let (weights, bias) = if matches!(node.op_type.as_str(), "Conv" | "QLinearConv") {
            let linear = g.conv(node)?;
            ops.push(format!("{} {:?} (1×1)", node.op_type, node.name));
            tensor = g.skip(
                &node.output[0],
                &["Relu", "QuantizeLinear", "DequantizeLinear"],
                &mut ops,
            )?;
            let pool = g.consumer(&tensor)?;
            pool_kernel = g.pool(cam, pool, &mut ops)?;
            tensor = pool.output[0].clone();
            linear
        } else {
            pool_kernel = g.pool(cam, node, &mut ops)?;
            tensor = g.skip(&node.output[0], &RESHAPES, &mut ops)?;
            let dense = g.consumer(&tensor)?;
            let (linear, out) = g.dense(dense)?;
            ops.push(dense.op_type.clone());
            tensor = out;
            linear
        };
        let end = g.skip(&tensor, &AFTER_LOGITS, &mut ops)?;
        if end != logits {
            // A non-linearity may read the tensor twice (HardSwish as x · HardSigmoid(x)).
            let readers = g.consumers.get(end.as_str());
            let Some(next) = readers.and_then(|r| r.first()) else {
                return Err(HeadError::Unread(end));
            };
            return Err(match ops.iter().rev().find(|op| is_dense(op)) {
                Some(dense) => HeadError::NotLinear {
                    op: next.op_type.clone(),
                    node: next.name.clone(),
                    dense: dense.clone(),
                },
                None => unsupported(cam, next),
            });
        }
        Ok(LinearHead {
            weights,
            bias,
            bias_in_map,
            pool_kernel,
            description: ops.join(" → "),
        })
    }

    /// The head's weights span the model's classes and the CAM layer's channels, and its
    /// pooling covers the whole map.
    pub fn fits(&self, classes: usize, layer: Option<&CamLayer>) -> Result<(), HeadError> {
        let channels = layer.map_or(0, |c| c.channels);
        if self.classes() != classes || self.channels() != channels {
            return Err(HeadError::Mismatch {
                head: self.description.clone(),
                classes: self.classes(),
                channels: self.channels(),
                model_classes: classes,
                model_channels: channels,
            });
        }
        let map = layer.map(|l| [l.height, l.width]);
        match (self.pool_kernel, map) {
            (Some(kernel), Some(map)) if kernel != map => Err(HeadError::PartialPool {
                kernel,
                map,
                head: self.description.clone(),
            }),
            _ => Ok(()),
        }
    }

    pub fn classes(&self) -> usize {
        self.weights.nrows()
    }

    pub fn channels(&self) -> usize {
        self.weights.ncols()
    }

    /// `w_{c,k}` for every channel `k`.
    pub fn class_weights(&self, class: usize) -> Vec<f64> {
        self.weights.row(class).iter().map(|&w| w as f64).collect()
    }

    /// `ReLU(Σ_k w_{c,k} A_k [+ b_c])` over `activations` (`[C,h,w]`): the class's score at
    /// each place before the pooling averages it into the logit (the bias as
    /// `bias_in_map` says).
    pub fn class_map(&self, activations: ArrayView3<f32>, class: usize) -> Array2<f32> {
        let (_, h, w) = activations.dim();
        let bias = if self.bias_in_map {
            self.bias[class] as f64
        } else {
            0.0
        };
        let mut acc = Array2::<f64>::from_elem((h, w), bias);
        for (a, &wk) in activations.axis_iter(Axis(0)).zip(self.weights.row(class)) {
            if wk != 0.0 {
                acc.zip_mut_with(&a, |s, &v| *s += wk as f64 * v as f64);
            }
        }
        acc.mapv(|v| v.max(0.0) as f32)
    }

    /// `w_{c,k} · mean(A_k)` per channel: how much channel `k` adds to class `c`'s logit.
    pub fn contributions(&self, activations: ArrayView3<f32>, class: usize) -> Vec<f64> {
        activations
            .axis_iter(Axis(0))
            .zip(self.weights.row(class))
            .map(|(a, &w)| {
                let mean = a.iter().map(|&v| v as f64).sum::<f64>() / a.len().max(1) as f64;
                w as f64 * mean
            })
            .collect()
    }
}

fn unsupported(cam: &str, found: &NodeProto) -> HeadError {
    HeadError::Unsupported {
        cam: cam.to_string(),
        op: found.op_type.clone(),
        node: found.name.clone(),
    }
}

fn is_dense(op: &str) -> bool {
    ["Gemm", "MatMul"].contains(&op) || op.starts_with("Conv ") || op.starts_with("QLinearConv ")
}

/// Weights `[classes, channels]` and bias.
type Linear = (Array2<f32>, Vec<f32>);

impl<'a> Graph<'a> {
    /// The one op that reads `tensor`.
    fn consumer(&self, tensor: &str) -> Result<&'a NodeProto, HeadError> {
        match self.consumers.get(tensor).map(Vec::as_slice) {
            Some([one]) if !one.output.is_empty() => Ok(one),
            Some([one]) => Err(HeadError::op(one, "has no output")),
            None | Some([]) => Err(HeadError::Unread(tensor.to_string())),
            Some(many) => Err(HeadError::Branches {
                tensor: tensor.to_string(),
                readers: many.len(),
            }),
        }
    }

    /// Follows `tensor` through ops of the kinds `ops` and returns the first tensor whose
    /// reader is of another kind (or that nothing reads), noting the ops passed in `path`.
    fn skip(
        &self,
        tensor: &str,
        ops: &[&str],
        path: &mut Vec<String>,
    ) -> Result<String, HeadError> {
        let mut tensor = tensor.to_string();
        // A graph is acyclic, but a hostile file need not be: bound the walk.
        for _ in 0..self.producers.len() + 1 {
            match self.consumers.get(tensor.as_str()).map(Vec::as_slice) {
                Some([one]) if ops.contains(&one.op_type.as_str()) && !one.output.is_empty() => {
                    path.push(one.op_type.clone());
                    tensor = one.output[0].clone();
                }
                _ => return Ok(tensor),
            }
        }
        Err(HeadError::Cycle(tensor))
    }

    /// Checks that `node` is a global average pooling and notes it; returns an
    /// AveragePool's kernel, which [`LinearHead::fits`] checks against the map.
    fn pool(
        &self,
        cam: &str,
        node: &NodeProto,
        path: &mut Vec<String>,
    ) -> Result<Option<[usize; 2]>, HeadError> {
        if !self.is_global_pool(node) {
            return Err(unsupported(cam, node));
        }
        path.push(node.op_type.clone());
        if node.op_type != "AveragePool" {
            return Ok(None);
        }
        let kernel = ints(node, "kernel_shape").unwrap_or_default();
        match kernel[..] {
            [h, w] if h > 0 && w > 0 => Ok(Some([h as usize, w as usize])),
            _ => Err(HeadError::op(node, "has no 2-D kernel")),
        }
    }

    /// A constant's values: an initializer, or the DequantizeLinear of one.
    fn constant(&self, name: &str) -> Result<Constant, HeadError> {
        if let Some(t) = self.constants.get(name) {
            return Constant::decode(t);
        }
        // The quantized values must be an initializer: no chain of ops, so a hostile
        // graph cannot send this into a loop.
        let dequantize = self
            .producers
            .get(name)
            .filter(|n| n.op_type == "DequantizeLinear");
        let Some(node) = dequantize else {
            return Err(HeadError::tensor(name, "is not a constant the graph holds"));
        };
        let not_constant =
            || HeadError::tensor(name, "dequantizes a tensor that is not a constant");
        let input = |i: usize| -> Option<Result<Constant, HeadError>> {
            let t = node.input.get(i).filter(|n| !n.is_empty())?;
            Some(
                self.constants
                    .get(t.as_str())
                    .map_or_else(|| Err(not_constant()), |t| Constant::decode(t)),
            )
        };
        let q = input(0).unwrap_or_else(|| Err(not_constant()))?;
        let scale = input(1).unwrap_or_else(|| Err(not_constant()))?;
        let zero = input(2).transpose()?.map_or(vec![0.0], |z| z.values);
        // One scale and zero point for all: ONNX ignores `axis` then (a Gemm's bias of
        // `[classes]` comes with the default axis, 1).
        if let ([scale], [zero]) = (&scale.values[..], &zero[..]) {
            let values = q.values.iter().map(|&v| (v - zero) * scale).collect();
            return Ok(Constant { values, ..q });
        }
        // Per-channel parameters run along `axis` (ONNX's default: 1).
        let axis = node
            .attribute
            .iter()
            .find(|a| a.name == "axis")
            .map_or(1, |a| a.i);
        let axis = usize::try_from(if axis < 0 {
            axis + q.dims.len() as i64
        } else {
            axis
        })
        .ok()
        .filter(|&a| a < q.dims.len().max(1));
        let Some(axis) = axis else {
            return Err(HeadError::tensor(
                name,
                "is dequantized along a missing axis",
            ));
        };
        let along = q.dims.get(axis).copied().unwrap_or(1);
        let inner: usize = q.dims.iter().skip(axis + 1).product();
        let scale = per_row_values(&scale.values, along, name, "scale")?;
        let zero = per_row_values(&zero, along, name, "zero point")?;
        let values = q
            .values
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let j = (i / inner.max(1)) % along.max(1);
                (v - zero[j]) * scale[j]
            })
            .collect();
        Ok(Constant { values, ..q })
    }

    /// Weights `[M, C]` and bias of a 1×1 `Conv` or `QLinearConv`.
    fn conv(&self, node: &NodeProto) -> Result<Linear, HeadError> {
        let group = node
            .attribute
            .iter()
            .find(|a| a.name == "group")
            .map(|a| a.i);
        if group.is_some_and(|g| g != 1)
            || ints(node, "strides").is_some_and(|s| s.iter().any(|&v| v != 1))
        {
            return Err(HeadError::op(node, "is grouped or strided"));
        }
        let input = |i: usize| node.input.get(i).filter(|n| !n.is_empty());
        let missing = || HeadError::op(node, "lacks an input");
        let quantized = node.op_type == "QLinearConv";
        let (w_at, b_at) = if quantized { (3, 8) } else { (1, 2) };
        let mut w = self.constant(input(w_at).ok_or_else(missing)?)?;
        if w.dims.len() != 4 || w.dims[2] != 1 || w.dims[3] != 1 {
            let problem = format!("has weights of shape {:?}, not [M, C, 1, 1]", w.dims);
            return Err(HeadError::op(node, problem));
        }
        let (m, c) = (w.dims[0], w.dims[1]);
        let mut bias_scale = vec![1.0; m];
        if quantized {
            let per_row = |i: usize, rows: usize, what: &str| -> Result<Vec<f32>, HeadError> {
                let name = input(i).ok_or_else(missing)?;
                per_row_values(&self.constant(name)?.values, rows, name, what)
            };
            let w_scale = per_row(4, m, "weight scale")?;
            let w_zero = per_row(5, m, "weight zero point")?;
            let x_scale = per_row(1, 1, "input scale")?[0];
            for (i, v) in w.values.iter_mut().enumerate() {
                *v = (*v - w_zero[i / c]) * w_scale[i / c];
            }
            bias_scale = w_scale.iter().map(|s| s * x_scale).collect();
        }
        let bias = match input(b_at) {
            Some(b) => {
                let b = per_row_values(&self.constant(b)?.values, m, b, "bias")?;
                b.iter().zip(&bias_scale).map(|(b, s)| b * s).collect()
            }
            None => vec![0.0; m],
        };
        let weights = Array2::from_shape_vec((m, c), w.values)
            .map_err(|e| HeadError::op(node, format!("has weights that are no matrix: {e}")))?;
        Ok((weights, bias))
    }

    /// Weights `[M, C]`, bias and output tensor of a `Gemm`, or of a `MatMul` and the
    /// `Add` of a constant after it.
    fn dense(&self, node: &NodeProto) -> Result<(Linear, String), HeadError> {
        let attr = |name: &str| node.attribute.iter().find(|a| a.name == name);
        let b = node
            .input
            .get(1)
            .ok_or_else(|| HeadError::op(node, "lacks weights"))?;
        let b = self.constant(b)?;
        let [rows, cols] = b.dims[..] else {
            let problem = format!("has weights of shape {:?}, not 2-D", b.dims);
            return Err(HeadError::op(node, problem));
        };
        let b_matrix = Array2::from_shape_vec((rows, cols), b.values)
            .map_err(|e| HeadError::op(node, format!("has weights that are no matrix: {e}")))?;
        match node.op_type.as_str() {
            "Gemm" => {
                if attr("transA").is_some_and(|a| a.i != 0) {
                    return Err(HeadError::op(node, "transposes its input"));
                }
                let alpha = attr("alpha").map_or(1.0, |a| a.f);
                let beta = attr("beta").map_or(1.0, |a| a.f);
                let w = if attr("transB").is_some_and(|a| a.i != 0) {
                    b_matrix
                } else {
                    b_matrix.reversed_axes().as_standard_layout().into_owned()
                };
                let m = w.nrows();
                let bias = match node.input.get(2).filter(|n| !n.is_empty()) {
                    Some(c) => per_row_values(&self.constant(c)?.values, m, c, "bias")?,
                    None => vec![0.0; m],
                };
                let bias = bias.iter().map(|v| v * beta).collect();
                Ok(((w.mapv(|v| v * alpha), bias), node.output[0].clone()))
            }
            "MatMul" => {
                let w = b_matrix.reversed_axes().as_standard_layout().into_owned();
                let m = w.nrows();
                let out = node.output[0].clone();
                match self.consumers.get(out.as_str()).map(Vec::as_slice) {
                    Some([add]) if add.op_type == "Add" && !add.output.is_empty() => {
                        let other = add
                            .input
                            .iter()
                            .find(|i| **i != out)
                            .ok_or_else(|| HeadError::op(add, "adds a tensor to itself"))?;
                        let bias = per_row_values(&self.constant(other)?.values, m, other, "bias")?;
                        Ok(((w, bias), add.output[0].clone()))
                    }
                    _ => Ok(((w, vec![0.0; m]), out)),
                }
            }
            _ => Err(HeadError::op(node, "follows the CAM layer's pool")),
        }
    }
}

/// A constant tensor as f32 values and its shape.
pub(super) struct Constant {
    pub(super) dims: Vec<usize>,
    pub(super) values: Vec<f32>,
}

impl Constant {
    /// Float, 8-bit and 32-bit integer tensors, stored raw or in typed fields. Written here
    /// because tract's loader panics on tensor types it does not know, and a hostile model
    /// file must get an error instead.
    pub(super) fn decode(t: &TensorProto) -> Result<Self, HeadError> {
        let name = &t.name;
        let dims = t
            .dims
            .iter()
            .map(|&d| {
                usize::try_from(d)
                    .map_err(|_| HeadError::tensor(name, format!("has dimension {d}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let len = dims
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .ok_or_else(|| HeadError::tensor(name, "is too large"))?;
        let raw = &t.raw_data;
        let words = |f: fn([u8; 4]) -> f32| -> Vec<f32> {
            raw.chunks_exact(4)
                .map(|b| f([b[0], b[1], b[2], b[3]]))
                .collect()
        };
        // ONNX TensorProto.DataType: 1 FLOAT, 2 UINT8, 3 INT8, 6 INT32.
        let values: Vec<f32> = match (t.data_type, raw.is_empty()) {
            (1, false) => words(f32::from_le_bytes),
            (1, true) => t.float_data.clone(),
            (2, false) => raw.iter().map(|&v| v as f32).collect(),
            (3, false) => raw.iter().map(|&v| v as i8 as f32).collect(),
            (6, false) => words(|b| i32::from_le_bytes(b) as f32),
            (2 | 3 | 6, true) => t.int32_data.iter().map(|&v| v as f32).collect(),
            (other, _) => {
                return Err(HeadError::tensor(
                    name,
                    format!("has ONNX data type {other}; the head's weights must be float, int8, uint8 or int32"),
                ))
            }
        };
        if values.len() != len {
            let problem = format!(
                "holds {} values for shape {dims:?} (external data is not read)",
                values.len()
            );
            return Err(HeadError::tensor(name, problem));
        }
        Ok(Constant { dims, values })
    }
}

/// One value per row from a scalar or a per-row vector (the tensor `name`).
fn per_row_values(
    values: &[f32],
    rows: usize,
    name: &str,
    what: &str,
) -> Result<Vec<f32>, HeadError> {
    match values.len() {
        1 => Ok(vec![values[0]; rows]),
        n if n == rows => Ok(values.to_vec()),
        n => Err(HeadError::tensor(
            name,
            format!("is a {what} of {n} values for {rows} rows"),
        )),
    }
}
