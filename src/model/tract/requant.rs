//! Requantises the i32 products of per-channel int8 convolutions in one vectorised pass.
//!
//! A per-tensor output scale is folded into tract's matrix kernel; a scale per output
//! channel is not (its kernels have no per-row rescale). Such a convolution then ends in
//! four generic element-wise passes over its products — `Scale` by the channel's factor,
//! `Min`, `Max` (the clamp), `Cast` to 8 bits — ndarray loops with broadcasting that the
//! compiler does not vectorise: over half of a per-channel SqueezeNet pass (perf;
//! docs/benchmarks.md). [`install`] replaces each such chain with [`Requantize`], which
//! computes the same bytes: tract's `scale_by` (round half to even of x·s), then the
//! chain's integer steps in their order, then the cast.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::cast::Cast;
use tract_onnx::tract_core::ops::math::{Add, Max, Min};
use tract_onnx::tract_core::ops::quant::Scale;

use super::swap::Swapped;

/// An integer step after the scaling, with its scalar operand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Step {
    Add(i32),
    Min(i32),
    Max(i32),
}

/// Steps that are `min(max(x + add, low), high)` or, `min_first`, `max(min(…, high), low)`.
struct Clamp {
    add: i32,
    low: i32,
    high: i32,
    min_first: bool,
}

/// `cast(steps(scale_by(x, scale[c])))` of an i32 tensor whose channel `c` runs along one
/// axis.
#[derive(Debug, Clone, PartialEq)]
pub struct Requantize {
    /// One factor per channel (or one for all).
    scales: Vec<f32>,
    /// Elements per channel run: the product of the dimensions after the channel axis.
    inner: usize,
    steps: Vec<Step>,
    to: DatumType,
}

impl Eq for Requantize {}

impl std::hash::Hash for Requantize {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.scales.iter().for_each(|s| s.to_bits().hash(state));
        (self.inner, &self.steps, self.to).hash(state);
    }
}

/// Replaces every `Scale → (Add | Min | Max)* → Cast to 8 bits` chain of `model` whose
/// factors are a constant per channel; says how many `Scale`s of i32 it found and replaced.
pub fn install(model: &mut TypedModel) -> TractResult<Swapped> {
    let mut swapped = Swapped::default();
    // Patches append nodes: the ones present now are all that can be candidates.
    for scale in 0..model.nodes.len() {
        let node = &model.nodes[scale];
        let is_scale = node
            .op_as::<TypedBinOp>()
            .is_some_and(|op| op.0.is::<Scale>());
        if !is_scale || model.outlet_fact(node.inputs[1])?.datum_type != i32::datum_type() {
            continue;
        }
        swapped.candidates += 1;
        let Some((op, last)) = chain(model, scale)? else {
            continue;
        };
        let mut patch = TypedModelPatch::default();
        let input = patch.tap_model(model, model.nodes[scale].inputs[1])?;
        let name = format!("{}.requantize", model.nodes[scale].name);
        let wire = patch.wire_node(name, op, &[input])?;
        patch.shunt_outside(model, OutletId::new(last, 0), wire[0])?;
        patch.apply(model)?;
        swapped.replaced += 1;
    }
    Ok(swapped)
}

/// The op for the chain that starts at the `Scale` node `scale`, and the chain's last
/// node, when the factors are constant along at most one axis and every link is used once.
fn chain(model: &TypedModel, scale: usize) -> TractResult<Option<(Requantize, usize)>> {
    let node = &model.nodes[scale];
    let factors = model.outlet_fact(node.inputs[0])?;
    let input = model.outlet_fact(node.inputs[1])?;
    let (Some(factors), Some(shape)) = (factors.konst.as_ref(), input.shape.as_concrete()) else {
        return Ok(None);
    };
    let empty = factors.shape().contains(&0);
    if factors.datum_type() != f32::datum_type() || factors.rank() != shape.len() || empty {
        return Ok(None);
    }
    let varying: Vec<usize> = (0..shape.len())
        .filter(|&a| factors.shape()[a] > 1)
        .collect();
    let inner = match varying[..] {
        [] => shape.iter().product(),
        [axis] if factors.shape()[axis] == shape[axis] => shape[axis + 1..].iter().product(),
        _ => return Ok(None),
    };
    let scales = factors.try_as_plain_ram()?.as_slice::<f32>()?.to_vec();
    if !scales.iter().all(|s| s.is_finite()) {
        return Ok(None);
    }
    let mut steps = Vec::new();
    let mut at = scale;
    loop {
        let outlet = OutletId::new(at, 0);
        let successors = &model.nodes[at].outputs[0].successors;
        if successors.len() != 1 || model.outputs.contains(&outlet) {
            return Ok(None);
        }
        let next = &model.nodes[successors[0].node];
        if let Some(cast) = next.op_as::<Cast>() {
            let to = cast.to;
            let fits = [u8::datum_type(), i8::datum_type()].contains(&to);
            let op = Requantize {
                scales,
                inner,
                steps,
                to,
            };
            return Ok(fits.then_some((op, next.id)));
        }
        let Some(step) = integer_step(model, next, outlet)? else {
            return Ok(None);
        };
        steps.push(step);
        at = next.id;
    }
}

/// `next` as a step: an `Add`, `Min` or `Max` of `from` (its first input) and a scalar
/// i32 constant.
fn integer_step(model: &TypedModel, next: &TypedNode, from: OutletId) -> TractResult<Option<Step>> {
    let Some(op) = next.op_as::<TypedBinOp>() else {
        return Ok(None);
    };
    if next.inputs.first() != Some(&from) || next.outputs[0].fact.datum_type != i32::datum_type() {
        return Ok(None);
    }
    let operand = model.outlet_fact(next.inputs[1])?;
    let Some(value) = operand.konst.as_ref().and_then(|k| k.as_uniform()) else {
        return Ok(None);
    };
    if value.datum_type() != i32::datum_type() {
        return Ok(None);
    }
    let v = value.cast_to_scalar::<i32>()?;
    let step = if op.0.is::<Add>() {
        Step::Add(v)
    } else if op.0.is::<Min>() {
        Step::Min(v)
    } else if op.0.is::<Max>() {
        Step::Max(v)
    } else {
        return Ok(None);
    };
    Ok(Some(step))
}

impl Requantize {
    /// One run of a channel: compiled twice on x86-64, for its SSE2 baseline and for AVX2
    /// (whose rounding instruction the loop needs to vectorise), picked at run time.
    fn run<T: Copy + Default>(
        &self,
        xs: &[i32],
        scale: f32,
        ys: &mut [T],
        cast: impl Fn(i32) -> T,
    ) {
        #[cfg(target_arch = "aarch64")]
        if let Some(clamp) = self.clamp_within(self.to).filter(|_| size_of::<T>() == 1) {
            // SAFETY: T is one byte — u8 or i8, the only types `chain` casts to — and every
            // bit pattern is one of its values.
            let bytes = unsafe { std::slice::from_raw_parts_mut(ys.as_mut_ptr().cast(), ys.len()) };
            let done = requantize_neon(xs, scale, &clamp, bytes);
            return self.run_any(&xs[done..], scale, &mut ys[done..], cast);
        }
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: this CPU has AVX2, checked just above.
            return unsafe { self.run_avx2(xs, scale, ys, cast) };
        }
        self.run_any(xs, scale, ys, cast)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn run_avx2<T: Copy + Default>(
        &self,
        xs: &[i32],
        scale: f32,
        ys: &mut [T],
        cast: impl Fn(i32) -> T,
    ) {
        self.run_any(xs, scale, ys, cast)
    }

    /// One pass when the steps are tract's usual `Add`, `Min`, `Max` (in either order of
    /// the last two, each optional: a clamp of monotone steps the compiler keeps in
    /// registers), else by chunks, each step over a whole chunk: loops it vectorises.
    #[inline(always)]
    fn run_any<T: Copy + Default>(
        &self,
        xs: &[i32],
        scale: f32,
        ys: &mut [T],
        cast: impl Fn(i32) -> T,
    ) {
        // A requantisation factor is the input's and weights' scales over the output's:
        // mostly far below 1, and then |x|·s < 2³¹ for every i32 x, so the conversion back
        // needs no saturation and vectorises better. A channel of tiny weights can have a
        // factor above 1 (SqueezeNet's fire7): tract's `as` saturates there, and so do we.
        let saturate = scale.abs() >= 1.0;
        let scaled = |x: i32| {
            // tract's `scale_by`, rne(|x|·s)·sign(x), is rne(x·s): IEEE products and
            // round-half-to-even are both symmetric in sign (and x = 0 gives 0).
            let r = (x as f32 * scale).round_ties_even();
            match saturate {
                true => r as i32,
                // SAFETY: |r| ≤ 2³¹·|scale| rounded, below 2³¹ as |scale| < 1 and finite
                // (`chain` checked), so `as i32` would not saturate.
                false => unsafe { r.to_int_unchecked::<i32>() },
            }
        };
        if let Some(Clamp {
            add,
            low,
            high,
            min_first,
        }) = self.clamp()
        {
            let step = |v: i32| match min_first {
                true => v.wrapping_add(add).min(high).max(low),
                false => v.wrapping_add(add).max(low).min(high),
            };
            for (y, &x) in ys.iter_mut().zip(xs) {
                *y = cast(step(scaled(x)));
            }
            return;
        }
        const CHUNK: usize = 64;
        for (x, y) in xs.chunks(CHUNK).zip(ys.chunks_mut(CHUNK)) {
            let mut v = [0i32; CHUNK];
            let v = &mut v[..x.len()];
            for (v, &x) in v.iter_mut().zip(x) {
                *v = scaled(x);
            }
            for step in &self.steps {
                match *step {
                    Step::Add(c) => v.iter_mut().for_each(|v| *v = v.wrapping_add(c)),
                    Step::Min(c) => v.iter_mut().for_each(|v| *v = (*v).min(c)),
                    Step::Max(c) => v.iter_mut().for_each(|v| *v = (*v).max(c)),
                }
            }
            for (y, &v) in y.iter_mut().zip(v.iter()) {
                *y = cast(v);
            }
        }
    }

    /// The steps as a [`Clamp`] when they are an optional `Add`, then an optional `Min`
    /// and an optional `Max` in either order (absent ones neutral).
    fn clamp(&self) -> Option<Clamp> {
        let (add, rest) = match self.steps.as_slice() {
            [Step::Add(a), rest @ ..] => (*a, rest),
            rest => (0, rest),
        };
        let (low, high, min_first) = match rest {
            [] => (i32::MIN, i32::MAX, true),
            [Step::Min(h)] => (i32::MIN, *h, true),
            [Step::Max(l)] => (*l, i32::MAX, true),
            [Step::Min(h), Step::Max(l)] => (*l, *h, true),
            [Step::Max(l), Step::Min(h)] => (*l, *h, false),
            _ => return None,
        };
        Some(Clamp {
            add,
            low,
            high,
            min_first,
        })
    }

    /// The steps as a [`Clamp`] whose bounds are ordered and within `to`'s values, so that
    /// saturating to 16 bits on the way keeps the result.
    #[cfg(target_arch = "aarch64")]
    fn clamp_within(&self, to: DatumType) -> Option<Clamp> {
        let (min, max) = match to {
            DatumType::U8 => (0, 255),
            _ => (-128, 127),
        };
        self.clamp()
            .filter(|c| min <= c.low && c.low <= c.high && c.high <= max)
    }

    /// Elements per channel run.
    pub fn inner(&self) -> usize {
        self.inner
    }

    /// Requantises the columns `pixels` of `output`, `[channels, row]` in memory, from
    /// `products`, `[channels, stride]`: a block of a product, its first column that of
    /// `pixels`.
    pub fn block(
        &self,
        products: &[i32],
        stride: usize,
        output: &mut Tensor,
        pixels: std::ops::Range<usize>,
        row: usize,
    ) -> TractResult<()> {
        let mut out = output.try_as_plain_ram_mut()?;
        if self.to == u8::datum_type() {
            self.block_as(
                products,
                stride,
                out.as_slice_mut::<u8>()?,
                pixels,
                row,
                |v| v as u8,
            )
        } else {
            self.block_as(
                products,
                stride,
                out.as_slice_mut::<i8>()?,
                pixels,
                row,
                |v| v as i8,
            )
        }
        Ok(())
    }

    fn block_as<T: Copy + Default>(
        &self,
        products: &[i32],
        stride: usize,
        ys: &mut [T],
        pixels: std::ops::Range<usize>,
        row: usize,
        cast: impl Fn(i32) -> T + Copy,
    ) {
        let rows = products.chunks(stride).zip(ys.chunks_mut(row));
        for (c, (xs, ys)) in rows.enumerate() {
            let xs = &xs[..pixels.len()];
            let scale = self.scales[c % self.scales.len()];
            self.run(xs, scale, &mut ys[pixels.clone()], cast);
        }
    }

    fn eval_as<T: Datum + Copy + Default>(
        &self,
        input: &Tensor,
        cast: impl Fn(i32) -> T + Copy,
    ) -> TractResult<Tensor> {
        let plain = input.try_as_plain_ram()?;
        let xs = plain.as_slice::<i32>()?;
        let mut output = Tensor::zero_dt(self.to, input.shape())?;
        {
            let mut out = output.try_as_plain_ram_mut()?;
            let ys = out.as_slice_mut::<T>()?;
            let run = self.inner.max(1);
            for (i, (x, y)) in xs.chunks(run).zip(ys.chunks_mut(run)).enumerate() {
                self.run(x, self.scales[i % self.scales.len()], y, cast);
            }
        }
        Ok(output)
    }
}

/// `clamp(rne(x · scale) + add)` of sixteen values a step into bytes, as
/// [`Requantize::run_any`] computes them: `fcvtns` rounds half to even and saturates as
/// tract's cast does, the addition wraps as tract's does, and the 16-bit saturation on the
/// way to bytes keeps every value the clamp keeps (its bounds are within a byte's). Returns
/// how many values it wrote, a multiple of sixteen.
#[cfg(target_arch = "aarch64")]
fn requantize_neon(xs: &[i32], scale: f32, clamp: &Clamp, out: &mut [u8]) -> usize {
    use std::arch::aarch64::*;
    let n = xs.len().min(out.len()) / 16 * 16;
    // SAFETY: NEON is aarch64's baseline; every load and store is within the first n
    // values of `xs` and bytes of `out`; the bounds fit i16 (`clamp_within`).
    unsafe {
        let add = vdupq_n_s32(clamp.add);
        let (low, high) = (
            vdupq_n_s16(clamp.low as i16),
            vdupq_n_s16(clamp.high as i16),
        );
        for at in (0..n).step_by(16) {
            let x = xs.as_ptr().add(at);
            let [a, b, c, d] = [0, 4, 8, 12].map(|i| {
                let scaled = vmulq_n_f32(vcvtq_f32_s32(vld1q_s32(x.add(i))), scale);
                vaddq_s32(vcvtnq_s32_f32(scaled), add)
            });
            let halves = [
                vqmovn_high_s32(vqmovn_s32(a), b),
                vqmovn_high_s32(vqmovn_s32(c), d),
            ];
            let [first, second] = halves.map(|h| vminq_s16(vmaxq_s16(h, low), high));
            let bytes = vmovn_high_s16(vmovn_s16(first), second);
            vst1q_u8(out.as_mut_ptr().add(at), vreinterpretq_u8_s8(bytes));
        }
    }
    n
}

impl Op for Requantize {
    fn name(&self) -> StaticName {
        "Requantize".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{} factor(s), runs of {}, then {:?} to {:?} (iscamd)",
            self.scales.len(),
            self.inner,
            self.steps,
            self.to
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for Requantize {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        // `as`: what tract's Cast does with a value outside the type.
        let output = if self.to == u8::datum_type() {
            self.eval_as::<u8>(&input, |v| v as u8)?
        } else {
            self.eval_as::<i8>(&input, |v| v as i8)?
        };
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for Requantize {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(TypedFact::dt_shape(self.to, inputs[0].shape.clone())))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_core::ops::cast::cast;
    use tract_onnx::tract_core::ops::math::{add, max, min};
    use tract_onnx::tract_core::ops::quant::scale;

    /// `cast(max(min(add(scale(x, f), zp), hi), lo))` with one factor per channel of
    /// `[2, C, 5, 7]`, as tract wires a per-channel QLinearConv's output.
    fn per_channel_chain(factors: &[f32], zero_point: i32, to: DatumType) -> TypedModel {
        let c = factors.len();
        let mut model = TypedModel::default();
        let x = model.add_source("x", i32::fact([2, c, 5, 7])).unwrap();
        let f = tract_ndarray::Array4::from_shape_vec([1, c, 1, 1], factors.to_vec()).unwrap();
        let f = model.add_const("f", f.into_tensor()).unwrap();
        let scalar = |m: &mut TypedModel, name: &str, v: i32| {
            m.add_const(name, tensor4(&[[[[v]]]])).unwrap()
        };
        let y = model.wire_node("scale", scale(), &[f, x]).unwrap();
        let zp = scalar(&mut model, "zp", zero_point);
        let y = model.wire_node("add_zp", add(), &[y[0], zp]).unwrap();
        let hi = scalar(&mut model, "hi", 255);
        let y = model.wire_node("min", min(), &[y[0], hi]).unwrap();
        let lo = scalar(&mut model, "lo", 0);
        let y = model.wire_node("max", max(), &[y[0], lo]).unwrap();
        let y = model.wire_node("cast", cast(to), &y).unwrap();
        model.select_output_outlets(&y).unwrap();
        model
    }

    use super::super::run_once as run;

    #[test]
    fn requantizes_per_channel_as_tracts_chain_does() {
        // Values with exact ties at some factors (0.5 · 2k+1), both signs, and large ones;
        // factors of 1 and more, up to one that overflows i32 (tract's cast saturates).
        // The zero point is 0 with those: tract's i32 Add would overflow past i32::MAX.
        let cases = [
            (vec![0.5f32, 0.0012203007, 0.25, 3.0e-5, 0.875], 3),
            (vec![0.5, 2.0194237, 1.0, 60_000.0, 0.875], 0),
        ];
        for (factors, zero_point) in cases {
            requantizes_as_tracts_chain_does(&factors, zero_point);
        }
    }

    fn requantizes_as_tracts_chain_does(factors: &[f32], zero_point: i32) {
        let x = tract_ndarray::Array4::from_shape_fn([2, 5, 5, 7], |(n, c, y, x)| {
            let i = (n * 175 + c * 35 + y * 7 + x) as i32;
            (i - 175) * if i % 9 == 0 { 40_000 } else { 3 } + i % 2
        })
        .into_tensor();
        for to in [u8::datum_type(), i8::datum_type()] {
            let mut model = per_channel_chain(factors, zero_point, to);
            let expected = run(model.clone(), &x);
            assert_eq!(
                install(&mut model).unwrap(),
                Swapped {
                    candidates: 1,
                    replaced: 1
                }
            );
            assert!(model.nodes.iter().any(|n| n.op_is::<Requantize>()));
            assert!(
                !model.nodes.iter().any(|n| n.op_is::<Cast>()),
                "{to:?}: the chain stays"
            );
            assert_eq!(run(model, &x), expected, "{to:?} {factors:?}");
        }
    }

    #[test]
    fn steps_in_another_order_run_one_by_one_as_tract_does() {
        // Max, Add, Min: not a clamp after an add, so not the fused pass.
        let factors = [0.5f32, 0.0012203007, 2.5];
        let mut model = TypedModel::default();
        let x = model.add_source("x", i32::fact([1, 3, 4, 5])).unwrap();
        let f = tract_ndarray::Array4::from_shape_vec([1, 3, 1, 1], factors.to_vec()).unwrap();
        let f = model.add_const("f", f.into_tensor()).unwrap();
        let mut y = model.wire_node("scale", scale(), &[f, x]).unwrap();
        for (name, op, v) in [("max", max(), -20), ("add", add(), 7), ("min", min(), 90)] {
            let c = model
                .add_const(name.to_string() + "_c", tensor4(&[[[[v]]]]))
                .unwrap();
            y = model.wire_node(name, op, &[y[0], c]).unwrap();
        }
        let y = model.wire_node("cast", cast(i8::datum_type()), &y).unwrap();
        model.select_output_outlets(&y).unwrap();
        let x = tract_ndarray::Array4::from_shape_fn([1, 3, 4, 5], |(_, c, h, w)| {
            (c as i32 - 1) * 97 * (h * 5 + w) as i32 + (w as i32 - 2) * 11
        })
        .into_tensor();
        let expected = run(model.clone(), &x);
        assert_eq!(install(&mut model).unwrap().replaced, 1);
        let op = model
            .nodes
            .iter()
            .find_map(|n| n.op_as::<Requantize>())
            .unwrap();
        assert!(op.clamp().is_none(), "{:?}", op.steps);
        assert_eq!(run(model, &x), expected);
    }

    #[test]
    fn a_chain_without_a_cast_or_with_a_factor_not_finite_is_kept() {
        let mut model = TypedModel::default();
        let x = model.add_source("x", i32::fact([1, 4, 3, 3])).unwrap();
        let f = tensor4(&[[[[0.5f32]], [[1.0]], [[2.0]], [[0.25]]]]);
        let f = model.add_const("f", f).unwrap();
        let y = model.wire_node("scale", scale(), &[f, x]).unwrap();
        model.select_output_outlets(&y).unwrap();
        assert_eq!(
            install(&mut model).unwrap(),
            Swapped {
                candidates: 1,
                replaced: 0
            }
        );
        let mut model = per_channel_chain(&[0.5, f32::INFINITY], 3, u8::datum_type());
        assert_eq!(
            install(&mut model).unwrap(),
            Swapped {
                candidates: 1,
                replaced: 0
            }
        );
    }
}
