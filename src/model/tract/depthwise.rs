//! Quantized depthwise convolutions (one filter per channel: MobileNet, EfficientNet,
//! ShuffleNet) as one direct loop per channel.
//!
//! tract runs a float depthwise convolution with its own direct op, but an int8 one through
//! im2col and its matrix kernels with one output row per group: a kernel made for 8 or 16
//! rows computes one, and the im2col copy is as large as the product. perf on an int8
//! MobileNetV2 put that path over half of a pass (docs/benchmarks.md, "Model zoo").
//! [`install`] replaces each such convolution, before tract lowers it, with
//! [`QuantDepthwise`], which computes the same bytes: the exact integer sums
//! `bias + Σ (x − x₀)(w − w₀)` (padding is x₀, so it adds nothing), then tract's
//! requantisation — `scale_by` with the factor `w_scale · x_scale / y_scale` tract
//! computes, plus y₀, clamped, cast.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat};
use tract_onnx::tract_core::ops::nn::DataFormat;

use super::swap::{is_8bit, Swapped};

/// A constant's values as `T`.
fn values<T: Datum + Copy>(t: &Tensor) -> TractResult<Vec<T>> {
    let t = t.cast_to::<T>()?;
    Ok(t.try_as_plain_ram()?.as_slice::<T>()?.to_vec())
}

/// Sizes along one spatial axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Axis {
    input: usize,
    output: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
    pad_before: usize,
}

impl Axis {
    /// Positions of one phase (padded positions `j·stride + phase`) that any tap reads:
    /// the outputs, plus the farthest tap's offset within its phase.
    fn phase_len(&self) -> usize {
        self.output + (self.kernel - 1) * self.dilation / self.stride
    }

    /// The phase and the offset in it of tap `k`.
    fn tap(&self, k: usize) -> (usize, usize) {
        let at = k * self.dilation;
        (at % self.stride, at / self.stride)
    }

    /// For each phase: the first of its positions that holds an input value, and that
    /// input's index.
    fn phase_starts(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        (0..self.stride).map(|phase| {
            // Padded position `j·stride + phase` is input `j·stride + phase − pad_before`.
            let first = self.pad_before.saturating_sub(phase).div_ceil(self.stride);
            (first, first * self.stride + phase - self.pad_before)
        })
    }
}

/// A depthwise convolution of 8-bit `[N, C, H, W]` or `[C, H, W]` to 8 bits, its constants
/// folded in.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantDepthwise {
    channels: usize,
    h: Axis,
    w: Axis,
    /// `w − w₀`, `[C, kh·kw]`, exact in f32.
    weights: Vec<f32>,
    bias: Vec<i32>,
    x0: i32,
    /// One factor per channel, or one for all.
    scales: Vec<f32>,
    y0: i32,
    to: DatumType,
}

impl Eq for QuantDepthwise {}

impl std::hash::Hash for QuantDepthwise {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (self.channels, self.h, self.w, &self.bias).hash(state);
        let floats = self.weights.iter().chain(&self.scales);
        floats.for_each(|s| s.to_bits().hash(state));
        (self.x0, self.y0, self.to).hash(state);
    }
}

/// Replaces every quantized depthwise convolution of a decluttered `model` that has
/// constant weights and parameters and a known input shape; says how many quantized
/// depthwise convolutions it found and replaced.
pub fn install(model: &mut TypedModel) -> TractResult<Swapped> {
    let mut swapped = Swapped::default();
    // Patches append nodes: the ones present now are all that can be candidates.
    for id in 0..model.nodes.len() {
        let node = &model.nodes[id];
        let Some(conv) = node.op_as::<Conv>() else {
            continue;
        };
        let depthwise = conv.group > 1
            && conv.group == conv.input_channels()
            && conv.group == conv.output_channels();
        if conv.q_params.is_none() || !depthwise {
            continue;
        }
        swapped.candidates += 1;
        let Some(op) = QuantDepthwise::of(model, node, conv)? else {
            continue;
        };
        let mut patch = TypedModelPatch::default();
        let input = patch.tap_model(model, node.inputs[0])?;
        let wire = patch.wire_node(format!("{}.depthwise", node.name), op, &[input])?;
        patch.shunt_outside(model, OutletId::new(id, 0), wire[0])?;
        patch.apply(model)?;
        swapped.replaced += 1;
    }
    Ok(swapped)
}

impl QuantDepthwise {
    /// The op for `conv`, when its layout is NCHW/OIHW with two spatial axes, its input
    /// shape known, its input and output 8-bit and every other input a constant.
    fn of(model: &TypedModel, node: &TypedNode, conv: &Conv) -> TractResult<Option<Self>> {
        let facts = model.node_input_facts(node.id)?;
        let Some(to) = conv
            .q_params
            .filter(|dt| [DatumType::U8, DatumType::I8].contains(dt))
        else {
            return Ok(None);
        };
        let layout_ok = [DataFormat::NCHW, DataFormat::CHW].contains(&conv.pool_spec.data_format)
            && conv.kernel_fmt == KernelFormat::OIHW
            && conv.pool_spec.rank() == 2
            && facts.len() == 9
            && is_8bit(facts[0])
            && is_8bit(facts[1]);
        let Some(shape) = facts[0].shape.as_concrete().filter(|_| layout_ok) else {
            return Ok(None);
        };
        let consts: Option<Vec<&Tensor>> = facts[1..].iter().map(|f| f.konst.as_deref()).collect();
        let Some(&[kernel, bias, x0, x_scale, w0, w_scale, y0, y_scale]) = consts.as_deref() else {
            return Ok(None);
        };
        let channels = conv.input_channels();
        let per_channel = |t: &Tensor| t.len() == 1 || t.len() == channels;
        if ![bias, w0, w_scale].into_iter().all(per_channel) {
            return Ok(None);
        }
        let spatial = &shape[shape.len() - 2..];
        let padding = conv.pool_spec.computed_padding(spatial);
        let axis = |i: usize| Axis {
            input: spatial[i],
            output: padding[i].convoluted,
            kernel: conv.pool_spec.kernel_shape[i],
            stride: conv.pool_spec.stride(i),
            dilation: conv.pool_spec.dilation(i),
            pad_before: padding[i].pad_before,
        };
        let (h, w) = (axis(0), axis(1));
        if h.output == 0 || w.output == 0 {
            return Ok(None);
        }
        let taps = h.kernel * w.kernel;
        let kernel = values::<i32>(kernel)?;
        if kernel.len() != channels * taps {
            return Ok(None);
        }
        let w0 = values::<i32>(w0)?;
        let weights: Vec<i32> = (0..channels * taps)
            .map(|i| kernel[i] - w0[(i / taps) % w0.len()])
            .collect();
        let x0 = x0.cast_to_scalar::<i32>()?;
        if !sums_are_exact_in_f32(facts[0].datum_type, x0, &weights, taps) {
            return Ok(None);
        }
        let weights = weights.iter().map(|&w| w as f32).collect();
        let bias = values::<i32>(bias)?;
        let bias = (0..channels).map(|c| bias[c % bias.len()]).collect();
        // tract's `combine_scales`: (w_scale · x_scale) / y_scale, in f32, in that order.
        let x_scale = x_scale.cast_to_scalar::<f32>()?;
        let y_scale = y_scale.cast_to_scalar::<f32>()?;
        let scales = values::<f32>(w_scale)?;
        let scales = scales.iter().map(|s| s * x_scale / y_scale).collect();
        Ok(Some(QuantDepthwise {
            channels,
            h,
            w,
            weights,
            bias,
            x0,
            scales,
            y0: y0.cast_to_scalar::<i32>()?,
            to,
        }))
    }

    /// The `(lo, hi)` range of the output type.
    fn range(&self) -> (i32, i32) {
        if self.to == DatumType::U8 {
            (0, 255)
        } else {
            (-128, 127)
        }
    }

    /// One channel's plane: `acc` gets the integer sums, then `ys` their requantised bytes.
    /// `phases` is scratch for the padded input, split by row and column modulo the
    /// strides, each phase as wide as `acc`'s rows: every tap then reads one contiguous run
    /// over all output rows at once (`acc`'s columns past the output width are scratch).
    #[inline(always)]
    fn channel<X: Copy + Into<i32>, Y: Copy, const FMA: bool, const WIDE: usize>(
        &self,
        c: usize,
        xs: &[X],
        (phases, columns, acc): (&mut [f32], &mut [f32], &mut [f32]),
        quantized: &mut [Y],
        ys: &mut [Y],
        cast: impl Fn(i32) -> Y,
    ) {
        let (h, w) = (&self.h, &self.w);
        let (rows, cols) = (h.phase_len(), w.phase_len());
        let plane = rows * cols;
        phases.fill(0.0);
        // Per column phase: where in a row its inputs go, and where they are in `columns`.
        let per_group = w.input.div_ceil(w.stride);
        let runs: Vec<(usize, std::ops::Range<usize>)> = w
            .phase_starts()
            .enumerate()
            .filter(|&(_, (_, first_x))| first_x < w.input)
            .map(|(col_phase, (first_col, first_x))| {
                let group = first_x % w.stride;
                let group_len = (w.input - group).div_ceil(w.stride);
                let from = group * per_group + first_x / w.stride..group * per_group + group_len;
                let to = col_phase * plane + first_col.min(cols);
                let n = from.len().min(cols - first_col.min(cols));
                (to, from.start..from.start + n)
            })
            .collect();
        for (row_phase, (first_row, first_y)) in h.phase_starts().enumerate() {
            let ys_in = (first_y..h.input).step_by(h.stride);
            for (r, y) in (first_row..rows).zip(ys_in) {
                let line = &xs[y * w.input..][..w.input];
                split_columns(line, self.x0, w.stride, columns);
                let row = row_phase * w.stride * plane + r * cols;
                for (to, from) in &runs {
                    phases[row + to..][..from.len()].copy_from_slice(&columns[from.clone()]);
                }
            }
        }
        let taps = h.kernel * w.kernel;
        let weights = &self.weights[c * taps..][..taps];
        let starts = (0..h.kernel).flat_map(|ky| {
            let (row_phase, dy) = h.tap(ky);
            (0..w.kernel).map(move |kx| {
                let (col_phase, dx) = w.tap(kx);
                (row_phase * w.stride + col_phase) * plane + dy * cols + dx
            })
        });
        let taps: Vec<(usize, f32)> = starts.zip(weights.iter().copied()).collect();
        // WIDE sums at a time keep eight registers of independent multiply-adds in flight,
        // then LANES (`acc` is whole chunks: the sums past the outputs are scratch).
        let wide = sum_taps::<WIDE, FMA>(phases, &taps, acc, 0);
        sum_taps::<LANES, FMA>(phases, &taps, acc, wide);
        let scale = self.scales[c % self.scales.len()];
        let (lo, hi) = self.range();
        let (y0, lo, hi) = (self.y0 as f32, lo as f32, hi as f32);
        let bias = self.bias[c];
        // All of `acc` at once, scratch columns too: whole registers, where a row of a
        // small plane (7 or 14 outputs) is mostly remainder.
        for (q, &a) in quantized.iter_mut().zip(acc.iter()) {
            // tract's `scale_by` (round half to even of |a|·s, the sign put back), then its
            // zero point and clamp, in f32: exact, as the rounded value is an integer and any
            // sum beyond 2²⁴ clamps to the same end.
            // SAFETY: `a` is an integer below 2²⁴ in magnitude (`sums_are_exact_in_f32`).
            let a = unsafe { a.to_int_unchecked::<i32>() }.wrapping_add(bias);
            let f = a as f32;
            let scaled = (f.abs() * scale).round_ties_even() * f.signum();
            let clamped = (scaled + y0).clamp(lo, hi);
            // SAFETY: `clamped` is an integer within the output type's range.
            *q = cast(unsafe { clamped.to_int_unchecked::<i32>() });
        }
        for (y, q) in ys.chunks_mut(w.output).zip(quantized.chunks(cols)) {
            y.copy_from_slice(&q[..w.output]);
        }
    }

    /// Every plane of `input`: compiled three times on x86-64, for its SSE2 baseline, for
    /// AVX2 with FMA and for AVX-512, picked at run time.
    fn planes<X: Datum + Copy + Into<i32>, Y: Datum + Copy>(
        &self,
        input: &Tensor,
        cast: impl Fn(i32) -> Y + Copy,
    ) -> TractResult<Tensor> {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: this CPU has AVX-512 F, checked just above.
                return unsafe { self.planes_avx512::<X, Y>(input, cast) };
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: this CPU has AVX2 and FMA, checked just above.
                return unsafe { self.planes_avx2::<X, Y>(input, cast) };
            }
        }
        // aarch64's baseline has the fused multiply-add.
        // Eight registers of sums: 4 lanes each on SSE2 and NEON.
        self.planes_any::<X, Y, { cfg!(target_arch = "aarch64") }, 32>(input, cast)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma")]
    fn planes_avx512<X: Datum + Copy + Into<i32>, Y: Datum + Copy>(
        &self,
        input: &Tensor,
        cast: impl Fn(i32) -> Y + Copy,
    ) -> TractResult<Tensor> {
        self.planes_any::<X, Y, true, 128>(input, cast)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn planes_avx2<X: Datum + Copy + Into<i32>, Y: Datum + Copy>(
        &self,
        input: &Tensor,
        cast: impl Fn(i32) -> Y + Copy,
    ) -> TractResult<Tensor> {
        self.planes_any::<X, Y, true, 64>(input, cast)
    }

    #[inline(always)]
    fn planes_any<
        X: Datum + Copy + Into<i32>,
        Y: Datum + Copy,
        const FMA: bool,
        const WIDE: usize,
    >(
        &self,
        input: &Tensor,
        cast: impl Fn(i32) -> Y + Copy,
    ) -> TractResult<Tensor> {
        let (h, w) = (&self.h, &self.w);
        let mut shape = input.shape().to_vec();
        let rank = shape.len();
        shape[rank - 2..].copy_from_slice(&[h.output, w.output]);
        let mut output = Tensor::zero_dt(self.to, &shape)?;
        let plain = input.try_as_plain_ram()?;
        let xs = plain.as_slice::<X>()?;
        let plane = h.phase_len() * w.phase_len();
        // The last tap's run ends up to a row past its phase, and the last chunk of sums up
        // to LANES − 1 values past the outputs: in the next phase, or here.
        let mut phases = vec![0f32; (plane * h.stride + w.phase_len()) * w.stride + LANES];
        let mut columns = vec![0f32; w.input.div_ceil(w.stride) * w.stride];
        let mut acc = vec![0f32; (h.output * w.phase_len()).next_multiple_of(LANES)];
        let mut quantized = vec![cast(0); acc.len()];
        let out_plane = h.output * w.output;
        // The view's borrow of `output` ends with the block.
        {
            let mut out = output.try_as_plain_ram_mut()?;
            let ys = out.as_slice_mut::<Y>()?;
            let planes = xs.chunks(h.input * w.input).zip(ys.chunks_mut(out_plane));
            for (i, (x, y)) in planes.enumerate() {
                let c = i % self.channels;
                let scratch = (&mut phases[..], &mut columns[..], &mut acc[..]);
                self.channel::<X, Y, FMA, WIDE>(c, x, scratch, &mut quantized, y, cast);
            }
        }
        Ok(output)
    }
}

/// Sums computed at once in one register's worth of lanes.
const LANES: usize = 16;

/// `line`'s values less `x0`, in f32, grouped by column modulo `stride`: group `g` (columns
/// `g`, `g + stride`, …) from `g · ⌈len / stride⌉` on. A stride of 2 reads the line in pairs,
/// which the compiler vectorises, where a strided read is one value at a time.
#[inline(always)]
fn split_columns<X: Copy + Into<i32>>(line: &[X], x0: i32, stride: usize, columns: &mut [f32]) {
    let value = |v: X| (v.into() - x0) as f32;
    let per_group = line.len().div_ceil(stride);
    match stride {
        1 => columns
            .iter_mut()
            .zip(line)
            .for_each(|(c, &v)| *c = value(v)),
        2 => {
            let (even, odd) = columns.split_at_mut(per_group);
            let pairs = even
                .iter_mut()
                .zip(odd.iter_mut())
                .zip(line.chunks_exact(2));
            for ((e, o), pair) in pairs {
                (*e, *o) = (value(pair[0]), value(pair[1]));
            }
            if let [.., last] = line {
                if line.len() % 2 == 1 {
                    even[per_group - 1] = value(*last);
                }
            }
        }
        _ => {
            for (x, &v) in line.iter().enumerate() {
                columns[(x % stride) * per_group + x / stride] = value(v);
            }
        }
    }
}

/// Whether every sum `Σ (x − x₀)(w − w₀)` of a channel stays below 2²⁴ in magnitude, so
/// that f32 multiply-adds compute it exactly — at twice the rate of i32 multiplies on x86
/// (`vpmulld` is two µops) and with no widening of the bytes.
fn sums_are_exact_in_f32(x: DatumType, x0: i32, weights: &[i32], taps: usize) -> bool {
    let (lo, hi) = if x == DatumType::U8 {
        (0, 255)
    } else {
        (-128, 127)
    };
    let most_x = (x0 - lo).abs().max((hi - x0).abs()) as i64;
    weights.chunks(taps.max(1)).all(|channel| {
        let most = channel.iter().map(|w| w.unsigned_abs() as i64).sum::<i64>() * most_x;
        most < 1 << 24
    })
}

/// `acc[o] = Σ_taps w · phases[at + o]` for the chunks of `LANES` sums from `from` on;
/// returns where the chunks end. The chunk's sums stay in registers across the taps.
#[inline(always)]
fn sum_taps<const LANES: usize, const FMA: bool>(
    phases: &[f32],
    taps: &[(usize, f32)],
    acc: &mut [f32],
    from: usize,
) -> usize {
    let end = from + (acc.len() - from) / LANES * LANES;
    for (i, chunk) in acc[from..end].chunks_exact_mut(LANES).enumerate() {
        let o = from + i * LANES;
        let mut sums = [0f32; LANES];
        for &(at, w) in taps {
            let xs: &[f32; LANES] = phases[at + o..][..LANES].try_into().expect("LANES");
            for (s, &x) in sums.iter_mut().zip(xs) {
                // Exact either way (integers below 2²⁴): the fused form where it is one
                // instruction, not a call.
                *s = if FMA { x.mul_add(w, *s) } else { *s + x * w };
            }
        }
        chunk.copy_from_slice(&sums);
    }
    end
}

impl Op for QuantDepthwise {
    fn name(&self) -> StaticName {
        "QuantDepthwise".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let (h, w) = (&self.h, &self.w);
        Ok(vec![format!(
            "{} channels, {}x{} kernel, stride {}x{}, {} factor(s), to {:?} (iscamd)",
            self.channels,
            h.kernel,
            w.kernel,
            h.stride,
            w.stride,
            self.scales.len(),
            self.to
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for QuantDepthwise {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        // `as`: what tract's Cast does; the value is already clamped to the type's range.
        let output = match (input.datum_type(), self.to) {
            (DatumType::U8, DatumType::U8) => self.planes::<u8, u8>(&input, |v| v as u8),
            (DatumType::U8, _) => self.planes::<u8, i8>(&input, |v| v as i8),
            (DatumType::I8, DatumType::U8) => self.planes::<i8, u8>(&input, |v| v as u8),
            (DatumType::I8, _) => self.planes::<i8, i8>(&input, |v| v as i8),
            (dt, _) => bail!("QuantDepthwise: input of {dt:?}, expected 8-bit integers"),
        }?;
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for QuantDepthwise {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let mut shape = inputs[0].shape.to_tvec();
        let rank = shape.len();
        shape[rank - 2] = self.h.output.into();
        shape[rank - 1] = self.w.output.into();
        Ok(tvec!(TypedFact::dt_shape(self.to, shape)))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_core::ops::cnn::{PaddingSpec, PoolSpec};

    /// One quantized depthwise convolution of a `[1, C, 11, 9]` 8-bit input: `C` channels,
    /// a 3×3 kernel with `stride`, one output zero point and as many weight scales and
    /// zero points as `per_channel` says.
    fn conv_model(x_dt: DatumType, to: DatumType, stride: usize, per_channel: bool) -> TypedModel {
        let c = 5;
        let mut model = TypedModel::default();
        let x = model.add_source("x", x_dt.fact([1, c, 11, 9])).unwrap();
        let kernel: Vec<i8> = (0..c * 9).map(|i| (i as i8).wrapping_mul(37)).collect();
        let kernel = tract_ndarray::Array4::from_shape_vec([c, 1, 3, 3], kernel).unwrap();
        let channels = |f: &dyn Fn(usize) -> f32| -> Tensor {
            match per_channel {
                true => tract_ndarray::Array1::from_shape_fn(c, f).into_tensor(),
                false => tensor0(f(0)),
            }
        };
        let w0 = channels(&|c| c as f32 - 2.0)
            .cast_to::<i32>()
            .unwrap()
            .into_owned();
        let consts = [
            kernel.into_tensor(),
            tract_ndarray::Array1::from_shape_fn(c, |c| c as i32 * 301 - 600).into_tensor(),
            tensor0(if x_dt == DatumType::U8 { 128i32 } else { -3 }),
            tensor0(0.5f32),
            w0,
            // Channel 0's factor is 1/128: sums ≡ 64 mod 128 are exact ties.
            channels(&|c| 1.0 + c as f32 * 0.375),
            tensor0(if to == DatumType::U8 { 7i32 } else { -5 }),
            tensor0(64f32),
        ];
        let mut inputs = tvec![x];
        for (i, t) in consts.into_iter().enumerate() {
            inputs.push(model.add_const(format!("c{i}"), t).unwrap());
        }
        let conv = Conv {
            pool_spec: PoolSpec {
                data_format: DataFormat::NCHW,
                kernel_shape: tvec![3, 3],
                padding: PaddingSpec::Explicit(tvec![1, 0], tvec![1, 2]),
                dilations: None,
                strides: Some(tvec![stride, stride]),
                input_channels: c,
                output_channels: c,
            },
            kernel_fmt: KernelFormat::OIHW,
            group: c,
            q_params: Some(to),
        };
        let y = model.wire_node("conv", conv, &inputs).unwrap();
        model.select_output_outlets(&y).unwrap();
        model
    }

    use super::super::run_optimized as run;

    #[test]
    fn computes_the_bytes_tracts_lowering_computes() {
        for (x_dt, to) in [
            (DatumType::U8, DatumType::U8),
            (DatumType::I8, DatumType::I8),
        ] {
            let x = tract_ndarray::Array4::from_shape_fn([1, 5, 11, 9], |(_, c, y, x)| {
                ((c * 99 + y * 9 + x) * 73 % 256) as u8
            })
            .into_tensor()
            .cast_to_dt(x_dt)
            .unwrap()
            .into_owned();
            for (stride, per_channel) in [(1, false), (1, true), (2, false), (2, true)] {
                let model = conv_model(x_dt, to, stride, per_channel);
                let expected = run(model.clone(), &x);
                let mut ours = model.into_decluttered().unwrap();
                let swapped = install(&mut ours).unwrap();
                assert_eq!(
                    swapped,
                    Swapped {
                        candidates: 1,
                        replaced: 1
                    }
                );
                let got = run(ours, &x);
                let case = format!("{x_dt:?}→{to:?}, stride {stride}, per channel {per_channel}");
                assert_eq!(got.shape(), expected.shape(), "{case}");
                assert_eq!(got, expected, "{case}");
            }
        }
    }
}
