//! Hard-sigmoid and hard-swish (MobileNetV3's activations) in one pass each.
//!
//! tract-onnx writes an ONNX `HardSigmoid` as four ops by scalars — × α, + β, min 1,
//! max 0 — and MobileNetV3's hard-swish `x · hardsigmoid(x)` as those and a multiply by
//! `x`. tract chains the four into one pass but leaves the multiply a second pass over the
//! activation, and its chain walks each value through the four ops in turn: together 0.48
//! ms of a 3.1 ms f32 MobileNetV3-Small pass, where ONNX Runtime fuses them into its
//! convolutions (docs/benchmarks.md). [`install`] replaces the four — and the multiply,
//! where it is by the chain's own input — with [`HardSwish`]: one pass, the same f32
//! operations in the same order, so the same values.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::math;

use super::swap::Swapped;

/// `max(min(x · alpha + beta, hi), lo)`, times `x` when `times_input`.
#[derive(Debug, Clone, PartialEq)]
pub struct HardSwish {
    alpha: f32,
    beta: f32,
    /// The `min` by `hi` comes before the `max` by `lo`, as tract-onnx writes them.
    hi: f32,
    lo: f32,
    times_input: bool,
}

impl Eq for HardSwish {}

impl std::hash::Hash for HardSwish {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        [self.alpha, self.beta, self.hi, self.lo]
            .map(f32::to_bits)
            .hash(state);
        self.times_input.hash(state);
    }
}

/// Replaces every f32 chain `× α, + β, min, max` by scalars in `model` (decluttered), and
/// the multiply by the chain's input after it, with [`HardSwish`]; says how many chains it
/// found (a `× α` by a scalar followed by the other three) and replaced.
pub fn install(model: &mut TypedModel) -> TractResult<Swapped> {
    let mut swapped = Swapped::default();
    // Patches append nodes: the ones present now are all that can be candidates.
    for id in 0..model.nodes.len() {
        let Some((op, input, last)) = chain(model, id)? else {
            continue;
        };
        swapped.candidates += 1;
        let mut patch = TypedModelPatch::default();
        let tap = patch.tap_model(model, input)?;
        let name = format!("{}.hard-swish", model.nodes[id].name);
        let wire = patch.wire_node(name, op, &[tap])?;
        patch.shunt_outside(model, OutletId::new(last, 0), wire[0])?;
        patch.apply(model)?;
        swapped.replaced += 1;
    }
    Ok(swapped)
}

/// Whether a binary op is one kind of op.
type Kind = fn(&TypedBinOp) -> bool;

/// The chain's ops after its `× α`, as tract-onnx writes a `HardSigmoid`.
const AFTER_MUL: [Kind; 3] = [
    |op| op.0.is::<math::Add>(),
    |op| op.0.is::<math::Min>(),
    |op| op.0.is::<math::Max>(),
];

/// The op replacing the chain that starts at node `id`, its input and the chain's last
/// node.
fn chain(model: &TypedModel, id: usize) -> TractResult<Option<(HardSwish, OutletId, usize)>> {
    let Some((input, alpha)) = by_scalar(model, id, |op| op.0.is::<math::Mul>())? else {
        return Ok(None);
    };
    if model.outlet_fact(input)?.datum_type != DatumType::F32 {
        return Ok(None);
    }
    let (mut last, mut scalars) = (id, [0f32; 3]);
    for (kind, scalar) in AFTER_MUL.into_iter().zip(&mut scalars) {
        let Some(next) = alone_after(model, last)? else {
            return Ok(None);
        };
        match by_scalar(model, next, kind)? {
            Some((tensor, value)) if tensor == OutletId::new(last, 0) => *scalar = value,
            _ => return Ok(None),
        }
        last = next;
    }
    let [beta, hi, lo] = scalars;
    let times = alone_after(model, last)?.filter(|&mul| {
        let node = &model.nodes[mul];
        let by_input = node.inputs.len() == 2
            && node.inputs.contains(&input)
            && node.inputs.contains(&OutletId::new(last, 0));
        by_input
            && node
                .op_as::<TypedBinOp>()
                .is_some_and(|op| op.0.is::<math::Mul>())
    });
    let op = HardSwish {
        alpha,
        beta,
        hi,
        lo,
        times_input: times.is_some(),
    };
    Ok(Some((op, input, times.unwrap_or(last))))
}

/// When node `id` is a binary op of `kind` between a tensor and a scalar constant, its
/// output shaped like the tensor: the tensor and the scalar.
fn by_scalar(model: &TypedModel, id: usize, kind: Kind) -> TractResult<Option<(OutletId, f32)>> {
    let node = &model.nodes[id];
    let [a, b] = node.inputs[..] else {
        return Ok(None);
    };
    if !node.op_as::<TypedBinOp>().is_some_and(kind) {
        return Ok(None);
    }
    let scalar = |o: OutletId| -> TractResult<Option<f32>> {
        let fact = model.outlet_fact(o)?;
        let uniform = fact.konst.as_ref().and_then(|c| c.as_uniform());
        Ok(uniform.and_then(|c| c.cast_to_scalar::<f32>().ok()))
    };
    let (tensor, value) = match (scalar(a)?, scalar(b)?) {
        (None, Some(v)) => (a, v),
        (Some(v), None) => (b, v),
        _ => return Ok(None),
    };
    let same_shape = model.outlet_fact(tensor)?.shape == model.outlet_fact(id.into())?.shape;
    Ok(same_shape.then_some((tensor, value)))
}

/// The node that alone reads node `id`'s output, when that is not a model output.
fn alone_after(model: &TypedModel, id: usize) -> TractResult<Option<usize>> {
    let outlet = OutletId::new(id, 0);
    let readers = model.outlet_successors(outlet);
    let alone = readers.len() == 1 && !model.outputs.contains(&outlet);
    Ok(alone.then(|| readers[0].node))
}

impl HardSwish {
    /// Every value of `xs`, in place.
    fn apply(&self, xs: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: this CPU has AVX-512 F, checked just above.
            return unsafe { self.apply_avx512(xs) };
        }
        self.apply_any(xs)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    fn apply_avx512(&self, xs: &mut [f32]) {
        self.apply_any(xs)
    }

    /// tract's ops in tract's order: a multiply, then an add (not fused), `min`, `max`.
    #[inline(always)]
    fn apply_any(&self, xs: &mut [f32]) {
        let Self {
            alpha,
            beta,
            hi,
            lo,
            times_input,
        } = *self;
        for x in xs {
            let y = (*x * alpha + beta).min(hi).max(lo);
            *x = if times_input { *x * y } else { y };
        }
    }
}

impl Op for HardSwish {
    fn name(&self) -> StaticName {
        "HardSwish".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let times = if self.times_input { "x · " } else { "" };
        let (alpha, beta, hi, lo) = (self.alpha, self.beta, self.hi, self.lo);
        Ok(vec![format!(
            "{times}max(min(x · {alpha} + {beta}, {hi}), {lo}) (iscamd)"
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for HardSwish {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let mut x = args_1!(inputs).into_tensor();
        ensure!(
            x.datum_type() == DatumType::F32,
            "HardSwish: input of {:?}, expected f32",
            x.datum_type()
        );
        self.apply(x.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?);
        Ok(tvec!(x.into_tvalue()))
    }
}

impl TypedOp for HardSwish {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(inputs[0].without_value()))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `HardSigmoid(x)` as tract-onnx writes it, with `alpha` and β = 1/2.
    fn hard_sigmoid(model: &mut TypedModel, name: &str, x: OutletId, alpha: f32) -> OutletId {
        let mut wire = x;
        let steps: [(&str, TypedBinOp, f32); 4] = [
            ("mul_alpha", math::mul(), alpha),
            ("add_beta", math::add(), 0.5),
            ("sat-one", math::min(), 1.0),
            ("sat-zero", math::max(), 0.0),
        ];
        for (step, op, value) in steps {
            let name = format!("{name}.{step}");
            let c = model
                .add_const(format!("{name}.c"), tensor4(&[[[[value]]]]))
                .unwrap();
            wire = model.wire_node(name, op, &[c, wire]).unwrap()[0];
        }
        wire
    }

    /// A hard-swish of `x` (the multiply by `x`) and a hard-sigmoid of `x` gating `y` (a
    /// squeeze-excitation's): both chains replaced, the gate's multiply left; the outputs
    /// equal tract's to the bit, on values across the ramp and beyond both ends.
    #[test]
    fn computes_what_tracts_ops_compute() {
        let mut model = TypedModel::default();
        let shape = [1, 4, 5, 7];
        let x = model.add_source("x", f32::fact(shape)).unwrap();
        let y = model.add_source("y", f32::fact(shape)).unwrap();
        let swish = hard_sigmoid(&mut model, "swish", x, 1.0 / 6.0);
        let swish = model.wire_node("times", math::mul(), &[x, swish]).unwrap()[0];
        // ONNX's default α: tract would merge two equal chains of `x` into one.
        let gate = hard_sigmoid(&mut model, "gate", x, 0.2);
        let gated = model.wire_node("gated", math::mul(), &[gate, y]).unwrap()[0];
        model.select_output_outlets(&[swish, gated]).unwrap();
        let mut ours = model.clone().into_decluttered().unwrap();
        assert_eq!(
            install(&mut ours).unwrap(),
            Swapped {
                candidates: 2,
                replaced: 2
            }
        );
        let ops: Vec<&HardSwish> = ours.nodes.iter().filter_map(|n| n.op_as()).collect();
        let times: Vec<bool> = ops.iter().map(|op| op.times_input).collect();
        assert_eq!(times.iter().filter(|&&t| t).count(), 1, "{ours}");
        assert_eq!(times.len(), 2, "{ours}");
        let values = |seed: f32| {
            tract_ndarray::Array4::from_shape_fn(shape, |(_, c, h, w)| {
                ((c * 35 + h * 7 + w) as f32 * seed).sin() * 5.0
            })
            .into_tensor()
        };
        let inputs = tvec![values(0.37).into_tvalue(), values(0.11).into_tvalue()];
        let run = |m: TypedModel| {
            let plan = m.into_optimized().unwrap().into_runnable().unwrap();
            plan.run(inputs.clone()).unwrap()
        };
        let (got, expected) = (run(ours), run(model));
        for (got, expected) in got.iter().zip(&expected) {
            let expected = expected.to_plain_array_view::<f32>().unwrap();
            assert!(expected.iter().any(|&v| v == 0.0) && expected.iter().any(|&v| v > 3.0));
            assert_eq!(got.to_plain_array_view::<f32>().unwrap(), expected);
        }
    }
}
