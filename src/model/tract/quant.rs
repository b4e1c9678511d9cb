//! A vectorised `QuantizeLinear` to u8: the f32 input of int8 models, and every float step
//! of a QDQ model that stays float (an EfficientNet's SiLU is three of them).
//!
//! tract 0.23 quantises element by element with a branchy rounding function the compiler does
//! not vectorise: 7 % of an int8 forward pass on this project's x86, for the one 3×227×227
//! input (perf; docs/benchmarks.md, "Speed"). [`QuantizeU8`] computes the same bytes — round half to
//! even, add the zero point, saturate — over whole SIMD registers: the rounding is the
//! classic addition of 1.5·2²³, exact for |x| < 2²², read off the sum's bits; any chunk
//! holding a value outside that (or a NaN) takes tract's own formula instead.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;
use tract_onnx::tract_core::ops::math::round_ties_to_even;
use tract_onnx::tract_core::ops::quant::QuantizeLinearU8;

/// `u8(clamp(round_half_even(x · scale) + zero_point, 0, 255))` of an f32 tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizeU8 {
    /// What tract multiplies by: the reciprocal of the ONNX scale.
    pub scale: f32,
    pub zero_point: u8,
}

impl Eq for QuantizeU8 {}

impl std::hash::Hash for QuantizeU8 {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.scale.to_bits().hash(state);
        self.zero_point.hash(state);
    }
}

/// Replaces every f32 `QuantizeLinearU8` of `model` with [`QuantizeU8`]; says how many it
/// found and replaced.
pub fn install(model: &mut TypedModel) -> TractResult<super::swap::Swapped> {
    super::swap::replace_ops::<ElementWiseOp>(model, |op, input, _| {
        let Some(q) = op.0.downcast_ref::<QuantizeLinearU8>() else {
            return super::swap::Swap::NotMine;
        };
        let to_u8 = op.1.is_none_or(|dt| dt == u8::datum_type());
        let op = QuantizeU8 {
            scale: q.scale,
            zero_point: q.zero_point,
        };
        (input.datum_type == f32::datum_type() && to_u8)
            .then_some(op)
            .into()
    })
}

impl QuantizeU8 {
    /// Quantises `xs` into `ys`: with NEON on aarch64; compiled twice on x86-64, for its
    /// SSE2 baseline and for AVX2, picked at run time.
    fn quantize(&self, xs: &[f32], ys: &mut [u8]) {
        #[cfg(target_arch = "aarch64")]
        let done = self.quantize_neon(xs, ys);
        #[cfg(not(target_arch = "aarch64"))]
        let done = 0;
        let (xs, ys) = (&xs[done..], &mut ys[done..]);
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: this CPU has AVX2, checked just above.
            return unsafe { self.quantize_avx2(xs, ys) };
        }
        self.quantize_any(xs, ys)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn quantize_avx2(&self, xs: &[f32], ys: &mut [u8]) {
        self.quantize_any(xs, ys)
    }

    /// Sixteen values a step with NEON: `fcvtns` rounds half to even and saturates as
    /// tract's cast does (a NaN gives 0, as there), the zero point's addition wraps as
    /// tract's does, and the two saturating narrowings clamp to 0–255. Returns how many
    /// values it wrote, a multiple of sixteen.
    #[cfg(target_arch = "aarch64")]
    fn quantize_neon(&self, xs: &[f32], ys: &mut [u8]) -> usize {
        use std::arch::aarch64::*;
        let n = xs.len().min(ys.len()) / 16 * 16;
        // SAFETY: NEON is aarch64's baseline; every load and store is within the first n
        // values of `xs` and bytes of `ys`.
        unsafe {
            let zero_point = vdupq_n_s32(self.zero_point as i32);
            for at in (0..n).step_by(16) {
                let x = xs.as_ptr().add(at);
                let [a, b, c, d] = [0, 4, 8, 12].map(|i| {
                    let rounded = vcvtnq_s32_f32(vmulq_n_f32(vld1q_f32(x.add(i)), self.scale));
                    vaddq_s32(rounded, zero_point)
                });
                let low = vqmovun_high_s32(vqmovun_s32(a), b);
                let high = vqmovun_high_s32(vqmovun_s32(c), d);
                vst1q_u8(
                    ys.as_mut_ptr().add(at),
                    vqmovn_high_u16(vqmovn_u16(low), high),
                );
            }
        }
        n
    }

    #[inline(always)]
    fn quantize_any(&self, xs: &[f32], ys: &mut [u8]) {
        const CHUNK: usize = 32;
        // 1.5·2²³: adding it to any |v| < 2²² rounds v half to even and leaves the integer
        // in the low bits of the sum, so the rounded value is read off the bits — no
        // float-to-int conversion, whose saturating form compiles to scalar code.
        const ROUND: f32 = 12_582_912.0;
        const EXACT: f32 = 4_194_304.0;
        let zero_point = self.zero_point as i32;
        // tract's `quantize_linear_f32_u8`, but adding the zero point with a wrapping add,
        // which is what its `+` does in release builds (and panics in debug ones, on ±∞).
        let tracts = |x: f32| {
            let rounded = round_ties_to_even(x * self.scale) as i32;
            rounded.wrapping_add(zero_point).clamp(0, 255) as u8
        };
        let mut chunks = xs.chunks_exact(CHUNK).zip(ys.chunks_exact_mut(CHUNK));
        for (x, y) in &mut chunks {
            let x: &[f32; CHUNK] = x.try_into().expect("chunks_exact");
            let y: &mut [u8; CHUNK] = y.try_into().expect("chunks_exact");
            let mut v = [0f32; CHUNK];
            // NaN takes tract's formula too, which maps it to the zero point.
            let mut outside = false;
            for (v, x) in v.iter_mut().zip(x) {
                *v = x * self.scale;
                outside |= v.is_nan() | (v.abs() >= EXACT);
            }
            if outside {
                for (y, &x) in y.iter_mut().zip(x) {
                    *y = tracts(x);
                }
                continue;
            }
            for (y, v) in y.iter_mut().zip(v) {
                let rounded = (v + ROUND).to_bits() as i32 - ROUND.to_bits() as i32;
                *y = (rounded + zero_point).clamp(0, 255) as u8;
            }
        }
        let rest = xs.len() / CHUNK * CHUNK;
        for (y, &x) in ys[rest..].iter_mut().zip(&xs[rest..]) {
            *y = tracts(x);
        }
    }
}

impl Op for QuantizeU8 {
    fn name(&self) -> StaticName {
        "QuantizeU8".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "scale {} zero point {} (iscamd)",
            self.scale, self.zero_point
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for QuantizeU8 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let mut output = Tensor::zero::<u8>(input.shape())?;
        self.quantize(
            input.try_as_plain_ram()?.as_slice::<f32>()?,
            output.try_as_plain_ram_mut()?.as_slice_mut::<u8>()?,
        );
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for QuantizeU8 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(u8::fact(inputs[0].shape.clone())))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantizes_as_tract_does_including_ties_extremes_and_nans() {
        let op = QuantizeU8 {
            scale: 1.0745099,
            zero_point: 114,
        };
        let mut xs: Vec<f32> = (-4000..4000).map(|i| i as f32 * 0.0371).collect();
        // Exact ties at the scale, both signs; then values past the fast path's range.
        xs.extend((-300..300).map(|i| (i as f32 + 0.5) / op.scale));
        // Past the fast path's range, and NaN. (Not +∞ or 1e30: tract's own function
        // overflows on them, a panic in debug builds.)
        xs.extend([f32::NAN, f32::NEG_INFINITY, -1e30, 5e6, -5e6, 1e9, -1e9]);
        xs.extend((0..61).map(|i| i as f32 - 30.0));
        let mut ys = vec![0u8; xs.len()];
        op.quantize(&xs, &mut ys);
        for (x, y) in xs.iter().zip(&ys) {
            assert_eq!(
                *y,
                tract_onnx::tract_core::ops::quant::quantize_linear_f32_u8(
                    *x,
                    op.scale,
                    op.zero_point as i32
                ),
                "{x}"
            );
        }
        assert!(ys.contains(&0) && ys.contains(&255));
        // +∞ and 1e30 quantise as tract's release build does, without a panic.
        let mut y = [7u8; 2];
        op.quantize(&[f32::INFINITY, 1e30], &mut y);
        assert_eq!(y, [0, 0]);
    }

    #[test]
    fn replaces_tracts_op_with_the_same_result() {
        use tract_onnx::tract_core::ops::quant::quantize_linear_u8;
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([2, 3, 7, 9])).unwrap();
        let q = model
            .wire_node("q", quantize_linear_u8(0.93, 114), &[x])
            .unwrap();
        model.select_output_outlets(&q).unwrap();
        let input = tract_ndarray::Array4::from_shape_fn([2, 3, 7, 9], |(n, c, y, x)| {
            (n * 100 + c * 40 + y * 9 + x) as f32 * 1.37 - 150.0
        })
        .into_tensor();
        let run = |m: TypedModel| {
            let out = m
                .into_runnable()
                .unwrap()
                .run(tvec!(input.clone().into_tvalue()));
            out.unwrap().remove(0).into_tensor()
        };
        let expected = run(model.clone());
        assert_eq!(install(&mut model).unwrap().replaced, 1);
        assert!(model.nodes.iter().any(|n| n.op_is::<QuantizeU8>()));
        assert_eq!(run(model), expected);
    }
}
