//! The tract backend: optimised plans per input side, run one image at a time by default
//! (or one plan per batch size, or one with a symbolic batch, for comparison).

use crate::error::with_causes;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tract_onnx::prelude::tract_ndarray::{Array4, ArrayD};
use tract_onnx::prelude::*;

use super::{
    kernels, qdq, qdq_concat, qdq_moves, qdq_weights, zero_points, Backend, BatchPlan, TractOptions,
};
use crate::error::{Error, Result};

// iscamd's own ops, swapped into tract's optimised plans under `kernels::Policy::Tuned`.
mod constant_chains;
mod depthwise;
#[cfg(target_arch = "x86_64")]
mod depthwise_rows;
mod float_im2col;
mod hard_swish;
mod im2col;
mod lut;
mod maxpool;
mod measure;
mod packing;
mod profile;
mod quant;
mod relu;
mod requant;
mod requantized_product;
mod row_terms;
mod spatial;
mod swap;

#[cfg(test)]
pub(crate) use packing::install as install_row_packing;
pub use packing::HeadedLayout;
pub use swap::{Swapped, Swaps};

type Plan = Arc<TypedRunnableModel>;

pub struct TractBackend {
    path: PathBuf,
    /// Parsed graph with outputs selected, input fact not yet fixed.
    graph: InferenceModel,
    input_size: usize,
    batch_plan: BatchPlan,
    kernels: kernels::Policy,
    /// The matrix kernels every plan of this model runs, and how they were chosen.
    chosen: kernels::Chosen,
    in_flight: kernels::InFlight,
    /// Where measured choices are kept (`None`: not kept).
    cache: Option<PathBuf>,
    /// How maps share their threads, per thread count asked so far.
    splits: Mutex<Vec<kernels::ChosenSplit>>,
    /// By (batch, side).
    plans: Mutex<HashMap<(usize, usize), Plan>>,
    symbolic: Option<Plan>,
    /// What iscamd's ops replaced in the plan for one image at the model's input size.
    swaps: Mutex<Option<Swaps>>,
    /// What iscamd rewrote in the ONNX graph before tract read it (tuned kernels only).
    rewrites: Rewrites,
}

/// The rewrites of an ONNX graph that let tract run it faster, each counted.
#[derive(Clone, Copy, Debug, Default)]
struct Rewrites {
    /// QDQ convolutions folded into `QLinearConv`.
    folded: qdq::Folded,
    /// Concatenations between DequantizeLinear and QuantizeLinear made 8-bit.
    int8_concats: usize,
    /// Reshapes, transposes, slices… between DequantizeLinear and QuantizeLinear made 8-bit.
    int8_moves: usize,
    /// DequantizeLinear nodes of constants made float constants.
    float_weights: usize,
    /// Per-channel weight zero points made one scalar.
    scalar_zero_points: usize,
}

impl Rewrites {
    fn of(graph: &mut tract_onnx::pb::GraphProto, outputs: &[String]) -> Self {
        Rewrites {
            folded: qdq::fold(graph, outputs),
            int8_concats: qdq_concat::fold(graph, outputs),
            int8_moves: qdq_moves::fold(graph, outputs),
            float_weights: qdq_weights::dequantize_constants(graph, outputs),
            scalar_zero_points: zero_points::make_uniform_scalar(graph),
        }
    }
}

impl std::fmt::Display for Rewrites {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.folded != qdq::Folded::default() {
            write!(f, "{}; ", self.folded)?;
        }
        if self.int8_concats > 0 {
            write!(f, "QDQ Concat → int8 {}; ", self.int8_concats)?;
        }
        if self.int8_moves > 0 {
            write!(f, "QDQ moves → int8 {}; ", self.int8_moves)?;
        }
        if self.float_weights > 0 {
            write!(f, "QDQ weights → float constants {}; ", self.float_weights)?;
        }
        if self.scalar_zero_points > 0 {
            let n = self.scalar_zero_points;
            write!(f, "per-channel zero points → scalar {n}; ")?;
        }
        Ok(())
    }
}

impl TractBackend {
    /// Builds tract's graph of `proto` with `outputs` (any tensors) as its outputs.
    pub fn new(
        path: PathBuf,
        proto: &tract_onnx::pb::ModelProto,
        outputs: &[String],
        input_size: usize,
        options: &TractOptions,
    ) -> Result<Self> {
        kernels::leave_out_amx();
        let outputs = match &proto.graph {
            Some(graph) => qdq::outputs_as_read(graph, outputs),
            None => outputs.to_vec(),
        };
        let mut proto = std::borrow::Cow::Borrowed(proto);
        let rewrites = match (options.kernels, proto.graph.is_some()) {
            (kernels::Policy::Tuned, true) => {
                Rewrites::of(proto.to_mut().graph.as_mut().expect("checked"), &outputs)
            }
            _ => Rewrites::default(),
        };
        let graph = parse(&path, &proto, &outputs)?;
        let mut backend = TractBackend {
            path,
            graph,
            input_size,
            batch_plan: options.batch_plan,
            kernels: options.kernels,
            chosen: kernels::Chosen::Stock,
            in_flight: options.in_flight,
            cache: match &options.matmul {
                kernels::Matmul::Measured { cache, .. } => cache.clone(),
                kernels::Matmul::Forced(_) => None,
            },
            splits: Mutex::new(Vec::new()),
            plans: Mutex::new(HashMap::new()),
            symbolic: None,
            swaps: Mutex::new(None),
            rewrites,
        };
        backend.chosen = match (options.kernels, &options.matmul) {
            (kernels::Policy::Stock, _) => kernels::Chosen::Stock,
            (_, kernels::Matmul::Forced(choice)) => kernels::Chosen::Forced(*choice),
            (_, kernels::Matmul::Measured { cache, only }) => {
                measure::choose(&backend, cache.as_deref(), only.as_deref())?
            }
        };
        if options.batch_plan == BatchPlan::Symbolic {
            backend.symbolic = Some(backend.build_plan(None, input_size)?);
        }
        Ok(backend)
    }

    /// The optimised plan for `batch` inputs of `side`×`side` pixels, built on first use.
    fn plan(&self, batch: usize, side: usize) -> Result<Plan> {
        if let (Some(p), true) = (&self.symbolic, side == self.input_size) {
            return Ok(p.clone());
        }
        let key = (batch, side);
        if let Some(p) = self.plans.lock().expect("plan cache poisoned").get(&key) {
            return Ok(p.clone());
        }
        let plan = self.build_plan(Some(batch), side)?;
        self.plans
            .lock()
            .expect("plan cache poisoned")
            .insert(key, plan.clone());
        Ok(plan)
    }

    fn build_plan(&self, batch: Option<usize>, s: usize) -> Result<Plan> {
        let (plan, swaps, _) = self.build_plan_with(self.chosen.choice(), batch, s)?;
        if s == self.input_size && batch.is_none_or(|b| b == 1) {
            self.record(swaps);
        }
        Ok(plan)
    }

    /// A plan whose matrix products run `choice`'s kernels, what iscamd's ops replaced in
    /// it, and the accumulators of its matrix products.
    fn build_plan_with(
        &self,
        choice: kernels::Choice,
        batch: Option<usize>,
        s: usize,
    ) -> Result<(Plan, Option<Swaps>, kernels::Accumulators)> {
        let n: TDim = match batch {
            Some(b) => b.into(),
            None => self.graph.symbols.sym("N").into(),
        };
        let fact =
            InferenceFact::dt_shape(f32::datum_type(), tvec![n, 3.into(), s.into(), s.into()]);
        let tuned = self.kernels == kernels::Policy::Tuned;
        let (optimised, asked) = kernels::optimising_with(self.kernels, choice, || {
            let mut typed = self
                .graph
                .clone()
                .with_input_fact(0, fact)?
                .into_typed()?
                .into_decluttered()?;
            let before = match tuned {
                true => install_ops(&mut typed, choice.ops, &BEFORE_LOWERING)?,
                false => Swaps::default(),
            };
            // Decluttered once, as tract's own `into_optimized` does: lowering is left.
            typed.optimize()?;
            Ok((typed, before))
        });
        let prepared = optimised.and_then(|(mut m, Swaps(mut swaps))| {
            let swaps = match tuned {
                true => {
                    swaps.extend(install_ops(&mut m, choice.ops, &INSTALLS)?.0);
                    Some(Swaps(swaps))
                }
                false => None,
            };
            Ok((m.into_runnable()?, swaps))
        });
        let (plan, swaps) = prepared.map_err(|e: TractError| {
            Error::model(
                &self.path,
                format!(
                    "cannot be prepared for input [N,3,{s},{s}]: {}",
                    with_causes(e.as_ref())
                ),
            )
        })?;
        Ok((plan, swaps, asked))
    }

    fn model_error(&self, e: TractError) -> Error {
        Error::model(&self.path, with_causes(e.as_ref()))
    }

    /// Keeps what the swaps did in the model's main plan, and warns about any that found
    /// the op it is for and replaced none of it.
    fn record(&self, swaps: Option<Swaps>) {
        let mut recorded = self.swaps.lock().expect("swap record poisoned");
        if recorded.is_some() {
            return;
        }
        for (name, swapped) in swaps.iter().flat_map(|s| s.0.iter()) {
            if swapped.missed() {
                tracing::warn!(
                    "{}: iscamd's {name} op matched none of the {} candidates in the plan; \
                     tract's own op runs there (same results, slower)",
                    self.path.display(),
                    swapped.candidates
                );
            }
        }
        *recorded = swaps;
    }

    /// What iscamd's ops replaced in the model's main plan (`None` under the stock policy).
    pub fn swaps(&self) -> Option<Swaps> {
        self.swaps.lock().expect("swap record poisoned").clone()
    }

    fn run_plan(&self, input: Tensor, batch: usize) -> Result<(ArrayD<f32>, Option<ArrayD<f32>>)> {
        let side = input.shape().get(2).copied().unwrap_or(self.input_size);
        let outputs = self
            .plan(batch, side)?
            .run(tvec!(input.into()))
            .map_err(|e| Error::Inference(with_causes(e.as_ref())))?;
        let mut arrays = outputs.into_iter().map(|v| {
            v.into_tensor()
                .into_plain_array::<f32>()
                .map_err(|e| Error::Inference(with_causes(e.as_ref())))
        });
        let logits = arrays.next().expect("a plan has an output")?;
        let activations = arrays.next().transpose()?;
        Ok((logits, activations))
    }

    /// Runs each image of the batch through the batch-1 plan and stacks the outputs.
    fn run_split(&self, input: Array4<f32>) -> Result<(ArrayD<f32>, Option<ArrayD<f32>>)> {
        let batch = input.dim().0;
        let mut logits = Vec::with_capacity(batch);
        let mut activations = Vec::with_capacity(batch);
        for one in input.axis_chunks_iter(tract_ndarray::Axis(0), 1) {
            let (l, a) = self.run_plan(one.to_owned().into(), 1)?;
            logits.push(l);
            activations.extend(a);
        }
        let stack = |parts: &[ArrayD<f32>]| {
            let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
            tract_ndarray::concatenate(tract_ndarray::Axis(0), &views)
                .map_err(|e| Error::Inference(e.to_string()))
        };
        let activations = if activations.is_empty() {
            None
        } else {
            Some(stack(&activations)?)
        };
        Ok((stack(&logits)?, activations))
    }
}

/// tract's graph of the model, value info ignored (some exporters write wrong shapes
/// there), with `outputs` selected.
fn parse(
    path: &Path,
    proto: &tract_onnx::pb::ModelProto,
    outputs: &[String],
) -> Result<InferenceModel> {
    let bad = |e: TractError| {
        Error::model(
            path,
            format!("not a model tract can load: {}", with_causes(e.as_ref())),
        )
    };
    let dir = path.parent().and_then(Path::to_str);
    let parsed = tract_onnx::onnx()
        .with_ignore_value_info(true)
        .parse(proto, dir)
        .map_err(bad)?;
    if !parsed.unresolved_inputs.is_empty() {
        let why = format!("inputs nothing computes: {:?}", parsed.unresolved_inputs);
        return Err(Error::model(
            path,
            format!("not a model tract can load: {why}"),
        ));
    }
    let mut graph = parsed.model;
    graph.select_outputs_by_name(outputs).map_err(bad)?;
    Ok(graph)
}

/// iscamd's ops, in the order they are swapped in, by their names in [`kernels::OWN_OPS`]:
/// those that replace an op before tract lowers it to its kernels, then those that
/// replace steps of the lowered plan.
type Install = fn(&mut TypedModel, &kernels::OwnOps) -> TractResult<Swapped>;
const BEFORE_LOWERING: [(&str, Install); 4] = [
    ("depthwise", |m, _| depthwise::install(m)),
    ("lookup-table", |m, _| lut::install(m)),
    ("spatial-merge", |m, _| spatial::install(m)),
    // After the lookup tables, which take a chain between 8-bit tensors whole.
    ("hard-swish", |m, _| hard_swish::install(m)),
];
const INSTALLS: [(&str, Install); 10] = [
    ("constant-chains", |m, _| constant_chains::install(m)),
    ("row-terms", |m, _| row_terms::install(m)),
    ("max-pool", |m, ops| maxpool::install(m, ops.pool())),
    ("im2col", |m, _| im2col::install(m)),
    ("float-im2col", |m, _| float_im2col::install(m)),
    ("row-packing", |m, _| packing::install(m)),
    ("relu-fold", |m, _| relu::install(m)),
    ("quantize", |m, _| quant::install(m)),
    ("requantize", |m, _| requant::install(m)),
    ("requantized-product", |m, _| {
        requantized_product::install(m)
    }),
];

/// Swaps the ops of `installs` that `ops` runs into `model`, each through tract's patch
/// API, then drops the nodes the patches left unreachable. An op left out is not in the
/// list.
fn install_ops(
    model: &mut TypedModel,
    ops: kernels::OwnOps,
    installs: &[(&'static str, Install)],
) -> TractResult<Swaps> {
    let mut swaps = Vec::new();
    for (name, install) in installs.iter().filter(|(n, _)| ops.runs(n)) {
        swaps.push((*name, install(model, &ops)?));
    }
    model.compact()?;
    Ok(Swaps(swaps))
}

impl Backend for TractBackend {
    fn describe(&self) -> String {
        let folded = self.rewrites;
        match self.swaps() {
            Some(swaps) => format!(
                "tract ({folded}iscamd's ops, replaced/found: {swaps}; {})",
                self.chosen
            ),
            None => format!("tract ({folded}{})", self.chosen),
        }
    }

    fn op_swaps(&self) -> Option<Swaps> {
        self.swaps()
    }

    fn matrix_kernels(&self) -> Option<kernels::Chosen> {
        Some(self.chosen.clone())
    }

    fn split(&self, threads: usize) -> kernels::ChosenSplit {
        use kernels::{ChosenSplit, InFlight, Split};
        let threads = threads.max(1);
        let unmeasured = |split, how: &str| ChosenSplit::unmeasured(threads, split, how);
        match (self.kernels, self.in_flight) {
            (kernels::Policy::Stock, _) => {
                return unmeasured(Split::passes(threads), "one pass per thread (stock)")
            }
            (_, InFlight::Forced(n)) => {
                let how = format!("forced by {}", kernels::IN_FLIGHT_VAR);
                return unmeasured(Split::with_in_flight(threads, n), &how);
            }
            _ if threads == 1 => return unmeasured(Split::passes(1), "one thread"),
            _ => {}
        }
        // Held while measuring: two maps starting at once measure once, undisturbed.
        let mut splits = self.splits.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(known) = splits.iter().find(|s| s.threads == threads) {
            return known.clone();
        }
        let chosen = measure::split(self, threads).unwrap_or_else(|e| {
            tracing::warn!(
                "{}: cannot measure how passes share {threads} threads: {e}",
                self.path.display()
            );
            unmeasured(Split::passes(threads), "one pass per thread (not measured)")
        });
        splits.push(chosen.clone());
        chosen
    }

    fn profile(&self, input: Array4<f32>, passes: usize) -> Result<Option<Vec<super::OpTime>>> {
        let side = input.dim().2;
        let plan = self.plan(1, side)?;
        let ops = profile::profile(&plan, &input.into(), passes)
            .map_err(|e| Error::Inference(with_causes(e.as_ref())))?;
        Ok(Some(ops))
    }

    fn run(&self, input: Array4<f32>) -> Result<(ArrayD<f32>, Option<ArrayD<f32>>)> {
        let batch = input.dim().0;
        if batch > 1 && self.batch_plan == BatchPlan::Split {
            return self.run_split(input);
        }
        self.run_plan(input.into(), batch)
    }
}

/// Runs `model` as it is on one input; its first output (the own ops' tests).
#[cfg(test)]
fn run_once(model: TypedModel, x: &Tensor) -> Tensor {
    let plan = model.into_runnable().unwrap();
    plan.run(tvec!(x.clone().into_tvalue()))
        .unwrap()
        .remove(0)
        .into_tensor()
}

/// tract's own optimised plan of `model` on `x`: what the own ops must compute again.
#[cfg(test)]
fn run_optimized(model: TypedModel, x: &Tensor) -> Tensor {
    run_once(model.into_optimized().unwrap(), x)
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_own_op_has_an_install() {
        let installs = super::BEFORE_LOWERING.iter().chain(&super::INSTALLS);
        let mut names: Vec<&str> = installs.map(|(n, _)| *n).collect();
        let mut own = super::kernels::OWN_OPS;
        names.sort();
        own.sort();
        assert_eq!(names, own);
    }
}
