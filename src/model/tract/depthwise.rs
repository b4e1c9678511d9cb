//! Depthwise convolutions (one filter per channel: MobileNet, EfficientNet, ShuffleNet),
//! quantized or float, as one direct loop per channel.
//!
//! tract runs an int8 depthwise convolution through im2col and its matrix kernels with one
//! output row per group: a kernel made for 8 or 16 rows computes one, and the im2col copy
//! is as large as the product. perf on an int8 MobileNetV2 put that path over half of a
//! pass (docs/benchmarks.md, "Model zoo"). [`install`] replaces each such convolution,
//! before tract lowers it, with [`QuantDepthwise`], which computes the same bytes: the
//! exact integer sums `bias + Σ (x − x₀)(w − w₀)` (padding is x₀, so it adds nothing), then
//! tract's requantisation — `scale_by` with the factor `w_scale · x_scale / y_scale` tract
//! computes, plus y₀, clamped, cast.
//!
//! A float one tract runs with its own direct op (`DepthWise`), which walks each output
//! pixel's taps with bounds checks and made a third of an f32 MobileNetV2's pass; it
//! becomes [`FloatDepthwise`], the same loop without the integers: each plane padded and
//! split by stride phase once, then every tap one run of vector multiply-adds over the
//! whole plane, starting from the bias. Its sums are in another order than tract's, so
//! equal to them within f32 rounding. Where the CPU has AVX-512 and the stride along rows
//! is 1 or 2, [`super::depthwise_rows`] computes the same sums row by row with masked
//! loads instead, without the copies.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat};
use tract_onnx::tract_core::ops::math;
use tract_onnx::tract_core::ops::nn::DataFormat;

#[cfg(target_arch = "x86_64")]
use super::depthwise_rows::Rows;
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

/// The planes of a depthwise convolution: its channels and its two spatial axes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Planes {
    channels: usize,
    h: Axis,
    w: Axis,
}

/// Scratch for one plane at a time: the padded input split by phases, one input row split
/// by columns, and the sums.
struct Scratch {
    phases: Vec<f32>,
    columns: Vec<f32>,
    acc: Vec<f32>,
}

/// Where a plane's values go: per column phase, where a row of it starts in a phase row
/// and which of the row's split columns it holds; each phase row's start and input row;
/// each tap's start in the phases.
struct Layout {
    runs: Vec<(usize, std::ops::Range<usize>)>,
    rows: Vec<(usize, usize)>,
    taps: Vec<usize>,
}

impl Planes {
    /// The planes of `conv` on an input of `shape`, when its layout is NCHW/CHW with an OIHW
    /// kernel, two spatial axes and one filter per channel, and its output is not empty.
    fn of(conv: &Conv, shape: &[usize]) -> Option<Planes> {
        let depthwise = is_depthwise(conv);
        let layout_ok = [DataFormat::NCHW, DataFormat::CHW].contains(&conv.pool_spec.data_format)
            && conv.kernel_fmt == KernelFormat::OIHW
            && conv.pool_spec.rank() == 2;
        if !depthwise || !layout_ok || shape.len() < 3 {
            return None;
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
        let channels = conv.input_channels();
        (h.output > 0 && w.output > 0).then_some(Planes { channels, h, w })
    }

    fn taps(&self) -> usize {
        self.h.kernel * self.w.kernel
    }

    /// Sums per plane: whole chunks of `LANES`, each output row as wide as a column phase
    /// (the sums past the output width are scratch).
    fn sums_len(&self) -> usize {
        (self.h.output * self.w.phase_len()).next_multiple_of(LANES)
    }

    fn scratch(&self) -> Scratch {
        let (h, w) = (&self.h, &self.w);
        let plane = h.phase_len() * w.phase_len();
        // The last tap's run ends up to a row past its phase, and the last chunk of sums up
        // to LANES − 1 values past the outputs: in the next phase, or here.
        Scratch {
            phases: vec![0f32; (plane * h.stride + w.phase_len()) * w.stride + LANES],
            columns: vec![0f32; w.input.div_ceil(w.stride) * w.stride],
            acc: vec![0f32; self.sums_len()],
        }
    }

    fn output_facts(&self, input: &TypedFact, to: DatumType) -> TVec<TypedFact> {
        let mut shape = input.shape.to_tvec();
        let rank = shape.len();
        shape[rank - 2] = self.h.output.into();
        shape[rank - 1] = self.w.output.into();
        tvec!(TypedFact::dt_shape(to, shape))
    }

    fn info(&self) -> String {
        let (h, w) = (&self.h, &self.w);
        format!(
            "{} channels, {}x{} kernel, stride {}x{}",
            self.channels, h.kernel, w.kernel, h.stride, w.stride
        )
    }

    /// Where a plane's values go in the phases, and where each tap reads them: the same for
    /// every plane.
    fn layout(&self) -> Layout {
        let (h, w) = (&self.h, &self.w);
        let (rows, cols) = (h.phase_len(), w.phase_len());
        let plane = rows * cols;
        let per_group = w.input.div_ceil(w.stride);
        let runs = w
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
        let rows = h
            .phase_starts()
            .enumerate()
            .flat_map(|(row_phase, (first_row, first_y))| {
                let at = (first_row..rows).map(move |r| row_phase * w.stride * plane + r * cols);
                at.zip((first_y..h.input).step_by(h.stride))
            })
            .collect();
        let taps = (0..h.kernel)
            .flat_map(|ky| {
                let (row_phase, dy) = h.tap(ky);
                (0..w.kernel).map(move |kx| {
                    let (col_phase, dx) = w.tap(kx);
                    (row_phase * w.stride + col_phase) * plane + dy * cols + dx
                })
            })
            .collect();
        Layout { runs, rows, taps }
    }

    /// One plane's sums `init + Σ_taps w · value(x)` into `scratch.acc`, zero padding:
    /// `scratch`'s phases hold the padded input split by row and column modulo the strides,
    /// each phase as wide as the sums' rows, so that every tap reads one contiguous run over
    /// all output rows at once. Every plane writes the same places of the phases: the
    /// padding, zero from [`Self::scratch`] on, stays zero.
    #[inline(always)]
    fn sums<X: Copy, const FMA: bool, const WIDE: usize>(
        &self,
        layout: &Layout,
        xs: &[X],
        value: impl Fn(X) -> f32,
        (weights, init): (&[f32], f32),
        scratch: &mut Scratch,
    ) {
        let w = &self.w;
        let Scratch {
            phases,
            columns,
            acc,
        } = scratch;
        for &(row, y) in &layout.rows {
            let line = &xs[y * w.input..][..w.input];
            if let ([(to, from)], 1) = (&layout.runs[..], w.stride) {
                let out = &mut phases[row + to..][..from.len()];
                out.iter_mut()
                    .zip(&line[from.clone()])
                    .for_each(|(o, &v)| *o = value(v));
                continue;
            }
            split_columns(line, &value, w.stride, columns);
            for (to, from) in &layout.runs {
                phases[row + to..][..from.len()].copy_from_slice(&columns[from.clone()]);
            }
        }
        let taps = (&layout.taps[..], weights, init);
        // WIDE sums at a time keep eight registers of independent multiply-adds in flight,
        // then LANES (`acc` is whole chunks: the sums past the outputs are scratch).
        let wide = sum_taps::<WIDE, FMA>(phases, taps, acc, 0);
        sum_taps::<LANES, FMA>(phases, taps, acc, wide);
    }

    /// Every plane of `input`: its sums (channel `c`'s weights from `weights[c · taps..]`,
    /// starting from `start[c]` — from 0 if `start` is empty —, each input value as `value`
    /// gives it), then `finish.plane(c, sums, output plane)`. Compiled
    /// three times on x86-64, for its SSE2 baseline, for AVX2 with FMA and for AVX-512,
    /// picked at run time.
    fn run<X: Datum + Copy, Y: Datum + Copy>(
        &self,
        input: &Tensor,
        to: DatumType,
        (weights, start): (&[f32], &[f32]),
        value: impl Fn(X) -> f32 + Copy,
        finish: &mut impl Finish<Y>,
    ) -> TractResult<Tensor> {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: this CPU has AVX-512 F, checked just above.
                return unsafe { self.run_avx512(input, to, (weights, start), value, finish) };
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: this CPU has AVX2 and FMA, checked just above.
                return unsafe { self.run_avx2(input, to, (weights, start), value, finish) };
            }
        }
        // aarch64's baseline has the fused multiply-add.
        // Eight registers of sums: 4 lanes each on SSE2 and NEON.
        self.run_any::<X, Y, { cfg!(target_arch = "aarch64") }, 32>(
            input,
            to,
            (weights, start),
            value,
            finish,
        )
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma")]
    fn run_avx512<X: Datum + Copy, Y: Datum + Copy>(
        &self,
        input: &Tensor,
        to: DatumType,
        (weights, start): (&[f32], &[f32]),
        value: impl Fn(X) -> f32 + Copy,
        finish: &mut impl Finish<Y>,
    ) -> TractResult<Tensor> {
        self.run_any::<X, Y, true, 128>(input, to, (weights, start), value, finish)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn run_avx2<X: Datum + Copy, Y: Datum + Copy>(
        &self,
        input: &Tensor,
        to: DatumType,
        (weights, start): (&[f32], &[f32]),
        value: impl Fn(X) -> f32 + Copy,
        finish: &mut impl Finish<Y>,
    ) -> TractResult<Tensor> {
        self.run_any::<X, Y, true, 64>(input, to, (weights, start), value, finish)
    }

    #[inline(always)]
    fn run_any<X: Datum + Copy, Y: Datum + Copy, const FMA: bool, const WIDE: usize>(
        &self,
        input: &Tensor,
        to: DatumType,
        (weights, start): (&[f32], &[f32]),
        value: impl Fn(X) -> f32 + Copy,
        finish: &mut impl Finish<Y>,
    ) -> TractResult<Tensor> {
        let mut scratch = self.scratch();
        let layout = self.layout();
        let taps = self.taps();
        self.each_plane(input, to, |c, x: &[X], y: &mut [Y]| {
            let weights = (
                &weights[c * taps..][..taps],
                start.get(c).map_or(0.0, |s| *s),
            );
            self.sums::<X, FMA, WIDE>(&layout, x, value, weights, &mut scratch);
            finish.plane(c, &scratch.acc, y);
        })
    }

    /// The output of type `to` for `input`, each of its planes from `plane(c, input plane,
    /// output plane)`, `c` the plane's channel.
    #[inline(always)]
    fn each_plane<X: Datum, Y: Datum>(
        &self,
        input: &Tensor,
        to: DatumType,
        mut plane: impl FnMut(usize, &[X], &mut [Y]),
    ) -> TractResult<Tensor> {
        let (h, w) = (&self.h, &self.w);
        let mut shape = input.shape().to_vec();
        let rank = shape.len();
        shape[rank - 2..].copy_from_slice(&[h.output, w.output]);
        let mut output = Tensor::zero_dt(to, &shape)?;
        let plain = input.try_as_plain_ram()?;
        let xs = plain.as_slice::<X>()?;
        // The view's borrow of `output` ends with the block.
        {
            let mut out = output.try_as_plain_ram_mut()?;
            let ys = out.as_slice_mut::<Y>()?;
            let planes = xs
                .chunks_exact(h.input * w.input)
                .zip(ys.chunks_exact_mut(h.output * w.output));
            for (i, (x, y)) in planes.enumerate() {
                plane(i % self.channels, x, y);
            }
        }
        Ok(output)
    }
}

/// A depthwise convolution of 8-bit `[N, C, H, W]` or `[C, H, W]` to 8 bits, its constants
/// folded in.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantDepthwise {
    planes: Planes,
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
        (self.planes, &self.bias).hash(state);
        let floats = self.weights.iter().chain(&self.scales);
        floats.for_each(|s| s.to_bits().hash(state));
        (self.x0, self.y0, self.to).hash(state);
    }
}

/// A float depthwise convolution of `[N, C, H, W]` or `[C, H, W]`, its weights and bias
/// folded in.
#[derive(Debug, Clone, PartialEq)]
pub struct FloatDepthwise {
    planes: Planes,
    /// `[C, kh·kw]`.
    weights: Vec<f32>,
    /// One per channel.
    bias: Vec<f32>,
    /// The bounds of the Max and Min after the convolution (MobileNet's ReLU6), folded in:
    /// taken while the sums are copied out, not in passes of their own.
    clamp: (f32, f32),
}

impl Eq for FloatDepthwise {}

impl std::hash::Hash for FloatDepthwise {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.planes.hash(state);
        let (lo, hi) = self.clamp;
        let floats = self.weights.iter().chain(&self.bias).chain([&lo, &hi]);
        floats.for_each(|s| s.to_bits().hash(state));
    }
}

/// One filter per channel, more than one channel.
fn is_depthwise(conv: &Conv) -> bool {
    conv.group > 1 && conv.group == conv.input_channels() && conv.group == conv.output_channels()
}

/// Replaces every depthwise convolution of a decluttered `model` that has constant weights
/// and parameters and a known input shape — 8-bit ones by [`QuantDepthwise`], f32 ones by
/// [`FloatDepthwise`]; says how many depthwise convolutions it found and replaced.
pub fn install(model: &mut TypedModel) -> TractResult<Swapped> {
    let mut swapped = Swapped::default();
    // Patches append nodes: the ones present now are all that can be candidates.
    for id in 0..model.nodes.len() {
        let node = &model.nodes[id];
        let Some(conv) = node.op_as::<Conv>() else {
            continue;
        };
        if !is_depthwise(conv) {
            continue;
        }
        swapped.candidates += 1;
        // The node whose output the op's output replaces: the convolution, or the last
        // activation it folds in.
        let mut last = id;
        let op: Box<dyn TypedOp> = match conv.q_params {
            Some(_) => match QuantDepthwise::of(model, node, conv)? {
                Some(op) => Box::new(op),
                None => continue,
            },
            None => match FloatDepthwise::of(model, node, conv)? {
                Some(op) => Box::new(op.clamped(model, &mut last)?),
                None => continue,
            },
        };
        let mut patch = TypedModelPatch::default();
        let input = patch.tap_model(model, node.inputs[0])?;
        let wire = patch.wire_node(format!("{}.depthwise", node.name), op, &[input])?;
        patch.shunt_outside(model, OutletId::new(last, 0), wire[0])?;
        patch.apply(model)?;
        swapped.replaced += 1;
    }
    Ok(swapped)
}

impl QuantDepthwise {
    /// The op for `conv`, when its planes are ones [`Planes`] has, its input shape known,
    /// its input and output 8-bit and every other input a constant.
    fn of(model: &TypedModel, node: &TypedNode, conv: &Conv) -> TractResult<Option<Self>> {
        let facts = model.node_input_facts(node.id)?;
        let Some(to) = conv
            .q_params
            .filter(|dt| [DatumType::U8, DatumType::I8].contains(dt))
        else {
            return Ok(None);
        };
        let types_ok = facts.len() == 9 && is_8bit(facts[0]) && is_8bit(facts[1]);
        let shape = facts[0].shape.as_concrete().filter(|_| types_ok);
        let Some(planes) = shape.and_then(|shape| Planes::of(conv, shape)) else {
            return Ok(None);
        };
        let consts: Option<Vec<&Tensor>> = facts[1..].iter().map(|f| f.konst.as_deref()).collect();
        let Some(&[kernel, bias, x0, x_scale, w0, w_scale, y0, y_scale]) = consts.as_deref() else {
            return Ok(None);
        };
        let channels = planes.channels;
        let per_channel = |t: &Tensor| t.len() == 1 || t.len() == channels;
        if ![bias, w0, w_scale].into_iter().all(per_channel) {
            return Ok(None);
        }
        let taps = planes.taps();
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
            planes,
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

    /// Every plane of `input`: the exact integer sums, then their requantised bytes.
    fn compute<X: Datum + Copy + Into<i32>, Y: Datum + Copy>(
        &self,
        input: &Tensor,
        cast: impl Fn(i32) -> Y + Copy,
    ) -> TractResult<Tensor> {
        let x0 = self.x0;
        let mut finish = Requantised {
            op: self,
            quantized: vec![cast(0); self.planes.sums_len()],
            cast,
        };
        let value = move |v: X| (v.into() - x0) as f32;
        let filters = (&self.weights[..], &[][..]);
        self.planes.run(input, self.to, filters, value, &mut finish)
    }
}

/// What a depthwise op makes of each plane's sums. A trait, not a closure, so that its
/// always-inlined method is compiled for the instruction set of the loop that calls it
/// (a closure was not inlined there: its rounding became a call per value).
trait Finish<Y> {
    /// Channel `c`'s output plane `ys` from its sums `acc` (rows as wide as a column
    /// phase, [`Planes::sums_len`] of them in all).
    fn plane(&mut self, c: usize, acc: &[f32], ys: &mut [Y]);
}

/// [`QuantDepthwise`]'s sums requantised as tract does.
struct Requantised<'a, Y, C> {
    op: &'a QuantDepthwise,
    /// Scratch: a plane's bytes, rows as wide as the sums'.
    quantized: Vec<Y>,
    cast: C,
}

impl<Y: Copy, C: Fn(i32) -> Y> Finish<Y> for Requantised<'_, Y, C> {
    #[inline(always)]
    fn plane(&mut self, c: usize, acc: &[f32], ys: &mut [Y]) {
        let op = self.op;
        let (cols, width) = (op.planes.w.phase_len(), op.planes.w.output);
        let (lo, hi) = op.range();
        let (y0, lo, hi) = (op.y0 as f32, lo as f32, hi as f32);
        let scale = op.scales[c % op.scales.len()];
        let bias = op.bias[c];
        // All of `acc` at once, scratch columns too: whole registers, where a row of a
        // small plane (7 or 14 outputs) is mostly remainder.
        for (q, &a) in self.quantized.iter_mut().zip(acc.iter()) {
            // tract's `scale_by` (round half to even of |a|·s, the sign put back), then its
            // zero point and clamp, in f32: exact, as the rounded value is an integer and
            // any sum beyond 2²⁴ clamps to the same end.
            // SAFETY: `a` is an integer below 2²⁴ in magnitude (`sums_are_exact_in_f32`).
            let a = unsafe { a.to_int_unchecked::<i32>() }.wrapping_add(bias);
            let f = a as f32;
            let scaled = (f.abs() * scale).round_ties_even() * f.signum();
            let clamped = (scaled + y0).clamp(lo, hi);
            // SAFETY: `clamped` is an integer within the output type's range.
            *q = (self.cast)(unsafe { clamped.to_int_unchecked::<i32>() });
        }
        for (y, q) in ys.chunks_mut(width).zip(self.quantized.chunks(cols)) {
            y.copy_from_slice(&q[..width]);
        }
    }
}

/// [`FloatDepthwise`]'s sums as they are (they start from the bias).
struct Sums {
    cols: usize,
    width: usize,
    clamp: (f32, f32),
}

impl Finish<f32> for Sums {
    #[inline(always)]
    fn plane(&mut self, _: usize, acc: &[f32], ys: &mut [f32]) {
        let (lo, hi) = self.clamp;
        for (y, a) in ys.chunks_mut(self.width).zip(acc.chunks(self.cols)) {
            for (y, &a) in y.iter_mut().zip(&a[..self.width]) {
                // `a.max(lo).min(hi)`, NaN to `lo` as there, in one `max` and one `min`
                // instruction: `f32::max` adds a compare and a blend for NaN.
                let a = if a > lo { a } else { lo };
                *y = if a < hi { a } else { hi };
            }
        }
    }
}

impl FloatDepthwise {
    /// The op for `conv`, when its planes are ones [`Planes`] has, its input shape known,
    /// its input and weights f32 and its weights and bias constants.
    fn of(model: &TypedModel, node: &TypedNode, conv: &Conv) -> TractResult<Option<Self>> {
        let facts = model.node_input_facts(node.id)?;
        let types_ok = facts.len() == 3
            && facts[..2]
                .iter()
                .all(|f| f.datum_type == DatumType::F32 && !f.is_exotic());
        let shape = facts[0].shape.as_concrete().filter(|_| types_ok);
        let Some(planes) = shape.and_then(|shape| Planes::of(conv, shape)) else {
            return Ok(None);
        };
        let (Some(kernel), Some(bias)) = (&facts[1].konst, &facts[2].konst) else {
            return Ok(None);
        };
        let channels = planes.channels;
        let weights = values::<f32>(kernel)?;
        let bias = values::<f32>(bias)?;
        if weights.len() != channels * planes.taps() || ![1, channels].contains(&bias.len()) {
            return Ok(None);
        }
        let bias = (0..channels).map(|c| bias[c % bias.len()]).collect();
        Ok(Some(FloatDepthwise {
            planes,
            weights,
            bias,
            clamp: (f32::NEG_INFINITY, f32::INFINITY),
        }))
    }

    /// The op with the Max and Min by a constant that follow node `last` folded in, `last`
    /// moved to the last one folded. Only the node's one reader, not a model output, and
    /// with the output's shape, is folded: nothing else reads the values it changes.
    fn clamped(mut self, model: &TypedModel, last: &mut usize) -> TractResult<Self> {
        while let Some((next, bound)) = clamp_after(model, *last)? {
            let (lo, hi) = &mut self.clamp;
            match bound {
                Bound::Below(b) => (*lo, *hi) = (lo.max(b), hi.max(b)),
                Bound::Above(b) => (*lo, *hi) = (lo.min(b), hi.min(b)),
            }
            *last = next;
        }
        Ok(self)
    }

    /// Every plane of `input`: the sums, from the channel's bias on.
    fn compute(&self, input: &Tensor) -> TractResult<Tensor> {
        #[cfg(target_arch = "x86_64")]
        if let Some(rows) = self.rows() {
            return self.compute_by_rows(&rows, input);
        }
        let mut finish = Sums {
            cols: self.planes.w.phase_len(),
            width: self.planes.w.output,
            clamp: self.clamp,
        };
        let filters = (&self.weights[..], &self.bias[..]);
        self.planes
            .run(input, DatumType::F32, filters, |v: f32| v, &mut finish)
    }
}

#[cfg(target_arch = "x86_64")]
impl FloatDepthwise {
    /// The planes' geometry for [`super::depthwise_rows`], where the CPU has AVX-512 F and
    /// the stride along rows is 1 or 2.
    fn rows(&self) -> Option<Rows> {
        let (h, w) = (&self.planes.h, &self.planes.w);
        let fits = w.stride <= 2 && std::arch::is_x86_feature_detected!("avx512f");
        fits.then_some(Rows {
            height: h.input,
            width: w.input,
            out_height: h.output,
            out_width: w.output,
            kernel: (h.kernel, w.kernel),
            stride: (h.stride, w.stride),
            dilation: (h.dilation, w.dilation),
            pad: (h.pad_before, w.pad_before),
        })
    }

    fn compute_by_rows(&self, rows: &Rows, input: &Tensor) -> TractResult<Tensor> {
        let taps = self.planes.taps();
        let blocks = rows.blocks();
        self.planes.each_plane(input, DatumType::F32, |c, x, y| {
            let weights = &self.weights[c * taps..][..taps];
            // SAFETY: this CPU has AVX-512 F (`rows`); each plane, its weights and its
            // output have the sizes `rows` gives.
            unsafe { rows.plane(&blocks, x, weights, self.bias[c], self.clamp, y) };
        })
    }
}

/// A Max (a bound below) or a Min (above) by a constant.
enum Bound {
    Below(f32),
    Above(f32),
}

/// The node after `id` when it bounds `id`'s output by a constant, alone reading it.
fn clamp_after(model: &TypedModel, id: usize) -> TractResult<Option<(usize, Bound)>> {
    let outlet = OutletId::new(id, 0);
    let Some(next) = model.single_succ(id)? else {
        return Ok(None);
    };
    let Some(op) = next.op_as::<TypedBinOp>() else {
        return Ok(None);
    };
    let [a, b] = next.inputs[..] else {
        return Ok(None);
    };
    let other = if a == outlet { b } else { a };
    let constant = model.outlet_fact(other)?.konst.as_ref();
    let bound = constant
        .and_then(|c| c.as_uniform())
        .and_then(|c| c.cast_to_scalar::<f32>().ok());
    let same_shape = model.outlet_fact(outlet)?.shape == model.outlet_fact(next.id.into())?.shape;
    let alone = !model.outputs.contains(&outlet) && [a, b].contains(&outlet) && a != b;
    Ok(match bound.filter(|_| same_shape && alone) {
        Some(b) if op.0.is::<math::Max>() => Some((next.id, Bound::Below(b))),
        Some(b) if op.0.is::<math::Min>() => Some((next.id, Bound::Above(b))),
        _ => None,
    })
}

/// Sums computed at once in one register's worth of lanes.
const LANES: usize = 16;

/// `line`'s values as `value` gives them, grouped by column modulo `stride`: group `g`
/// (columns `g`, `g + stride`, …) from `g · ⌈len / stride⌉` on. A stride of 2 reads the line
/// in pairs, which the compiler vectorises, where a strided read is one value at a time.
#[inline(always)]
fn split_columns<X: Copy>(
    line: &[X],
    value: &impl Fn(X) -> f32,
    stride: usize,
    columns: &mut [f32],
) {
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

/// `acc[o] = init + Σ_taps w · phases[at + o]` for the chunks of `LANES` sums from `from`
/// on; returns where the chunks end. The chunk's sums stay in registers across the taps.
#[inline(always)]
fn sum_taps<const LANES: usize, const FMA: bool>(
    phases: &[f32],
    (taps, weights, init): (&[usize], &[f32], f32),
    acc: &mut [f32],
    from: usize,
) -> usize {
    let end = from + (acc.len() - from) / LANES * LANES;
    for (i, chunk) in acc[from..end].chunks_exact_mut(LANES).enumerate() {
        let o = from + i * LANES;
        let mut sums = [init; LANES];
        for (&at, &w) in taps.iter().zip(weights) {
            let xs: &[f32; LANES] = phases[at + o..][..LANES].try_into().expect("LANES");
            for (s, &x) in sums.iter_mut().zip(xs) {
                // The fused form where it is one instruction, not a call (exact either way
                // for the integer sums of 8-bit inputs, below 2²⁴).
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
        Ok(vec![format!(
            "{}, {} factor(s), to {:?} (iscamd)",
            self.planes.info(),
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
            (DatumType::U8, DatumType::U8) => self.compute::<u8, u8>(&input, |v| v as u8),
            (DatumType::U8, _) => self.compute::<u8, i8>(&input, |v| v as i8),
            (DatumType::I8, DatumType::U8) => self.compute::<i8, u8>(&input, |v| v as u8),
            (DatumType::I8, _) => self.compute::<i8, i8>(&input, |v| v as i8),
            (dt, _) => bail!("QuantDepthwise: input of {dt:?}, expected 8-bit integers"),
        }?;
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for QuantDepthwise {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(self.planes.output_facts(inputs[0], self.to))
    }

    as_op!();
}

impl Op for FloatDepthwise {
    fn name(&self) -> StaticName {
        "FloatDepthwise".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let clamp = match self.clamp {
            (f32::NEG_INFINITY, f32::INFINITY) => String::new(),
            (lo, hi) => format!(", clamped to [{lo}, {hi}]"),
        };
        Ok(vec![format!("{}{clamp} (iscamd)", self.planes.info())])
    }

    op_as_typed_op!();
}

impl EvalOp for FloatDepthwise {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        ensure!(
            input.datum_type() == DatumType::F32,
            "FloatDepthwise: input of {:?}, expected f32",
            input.datum_type()
        );
        Ok(tvec!(self.compute(&input)?.into_tvalue()))
    }
}

impl TypedOp for FloatDepthwise {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(self.planes.output_facts(inputs[0], DatumType::F32))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_core::ops::cnn::{PaddingSpec, PoolSpec};

    /// One quantized depthwise convolution of a `[1, C, side]` 8-bit input: `C` channels,
    /// a 3×3 kernel with `stride`, one output zero point and as many weight scales and
    /// zero points as `per_channel` says.
    fn conv_model(
        x_dt: DatumType,
        to: DatumType,
        (stride, per_channel): (usize, bool),
        side: (usize, usize),
    ) -> TypedModel {
        let c = 5;
        let mut model = TypedModel::default();
        let x = model
            .add_source("x", x_dt.fact([1, c, side.0, side.1]))
            .unwrap();
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

    /// The same bytes as tract's own lowering, on planes of 11 × 9 and of 5 × 300 (rows
    /// of several chunks of sums, the last partial).
    #[test]
    fn computes_the_bytes_tracts_lowering_computes() {
        let types = [
            (DatumType::U8, DatumType::U8),
            (DatumType::I8, DatumType::I8),
        ];
        for ((x_dt, to), side) in types
            .into_iter()
            .flat_map(|t| [(t, (11, 9)), (t, (5, 300))])
        {
            let x = tract_ndarray::Array4::from_shape_fn([1, 5, side.0, side.1], |(_, c, y, x)| {
                ((c * 99 + y * 9 + x) * 73 % 256) as u8
            })
            .into_tensor()
            .cast_to_dt(x_dt)
            .unwrap()
            .into_owned();
            for (stride, per_channel) in [(1, false), (1, true), (2, false), (2, true)] {
                let model = conv_model(x_dt, to, (stride, per_channel), side);
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
                let case = format!(
                    "{x_dt:?}→{to:?}, stride {stride}, per channel {per_channel}, {side:?}"
                );
                assert_eq!(got.shape(), expected.shape(), "{case}");
                assert_eq!(got, expected, "{case}");
            }
        }
    }

    /// One float depthwise convolution of a `[1, 6, side]` input with a bias, its kernel
    /// `kernel`², `stride` and `dilation`, padded unevenly.
    fn float_model(
        kernel: usize,
        stride: usize,
        dilation: usize,
        side: (usize, usize),
    ) -> TypedModel {
        let c = 6;
        let mut model = TypedModel::default();
        let x = model
            .add_source("x", f32::fact([1, c, side.0, side.1]))
            .unwrap();
        let w = tract_ndarray::Array4::from_shape_fn([c, 1, kernel, kernel], |(c, _, y, x)| {
            ((c * 31 + y * 7 + x * 3) % 17) as f32 * 0.125 - 1.0
        });
        let bias = tract_ndarray::Array1::from_shape_fn(c, |c| c as f32 * 0.5 - 1.25);
        let w = model.add_const("w", w.into_tensor()).unwrap();
        let bias = model.add_const("bias", bias.into_tensor()).unwrap();
        let pad = kernel / 2;
        let conv = Conv {
            pool_spec: PoolSpec {
                data_format: DataFormat::NCHW,
                kernel_shape: tvec![kernel, kernel],
                padding: PaddingSpec::Explicit(tvec![pad, pad + 1], tvec![pad + 1, 0]),
                dilations: Some(tvec![dilation, dilation]),
                strides: Some(tvec![stride, stride]),
                input_channels: c,
                output_channels: c,
            },
            kernel_fmt: KernelFormat::OIHW,
            group: c,
            q_params: None,
        };
        let y = model.wire_node("conv", conv, &[x, w, bias]).unwrap();
        model.select_output_outlets(&y).unwrap();
        model
    }

    /// Within f32 rounding of tract's own `DepthWise` (another order of the same sums), for
    /// 3×3 and 5×5 kernels, strides 1 and 2, a dilation; on planes of 13 × 10 and of 5 × 300
    /// (with AVX-512, rows of three blocks of registers, the last partial).
    #[test]
    fn computes_what_tracts_float_depthwise_computes() {
        let geometries = [(3, 1, 1), (3, 2, 1), (5, 1, 1), (5, 2, 1), (3, 1, 2)];
        for ((kernel, stride, dilation), side) in geometries
            .into_iter()
            .flat_map(|g| [(g, (13, 10)), (g, (5, 300))])
        {
            let x = tract_ndarray::Array4::from_shape_fn([1, 6, side.0, side.1], |(_, c, y, x)| {
                ((c * 13 + y * 5 + x * 11) % 23) as f32 * 0.25 - 2.5
            })
            .into_tensor();
            let model = float_model(kernel, stride, dilation, side);
            let expected = run(model.clone(), &x);
            let mut ours = model.into_decluttered().unwrap();
            let swapped = install(&mut ours).unwrap();
            let case = format!("{kernel}x{kernel}, stride {stride}, dilation {dilation}, {side:?}");
            assert_eq!(
                swapped,
                Swapped {
                    candidates: 1,
                    replaced: 1
                },
                "{case}"
            );
            let got = run(ours, &x);
            assert_eq!(got.shape(), expected.shape(), "{case}");
            let (got, expected) = (
                got.to_plain_array_view::<f32>().unwrap().to_owned(),
                expected.to_plain_array_view::<f32>().unwrap().to_owned(),
            );
            let largest = expected.iter().fold(0f32, |m, v| m.max(v.abs()));
            let differ = (&got - &expected).iter().fold(0f32, |m, d| m.max(d.abs()));
            assert!(
                largest > 1.0 && differ <= 1e-5 * largest,
                "{case}: {differ}"
            );
        }
    }

    /// A Max and a Min by constants after the convolution (a ReLU6's shape, with bounds
    /// the values cross) fold into the op when nothing else reads what they bound.
    #[test]
    fn folds_the_clamp_after_it_when_it_alone_reads_the_convolution() {
        let x = tract_ndarray::Array4::from_shape_fn([1, 6, 13, 10], |(_, c, y, x)| {
            ((c * 13 + y * 5 + x * 11) % 23) as f32 * 0.25 - 2.5
        })
        .into_tensor();
        for (conv_is_an_output, stride) in [(false, 1), (false, 2), (true, 2)] {
            let mut model = float_model(3, stride, 1, (13, 10));
            let conv = model.outputs[0];
            let bound = |model: &mut TypedModel, name: &str, v: f32| {
                model.add_const(name, tensor4(&[[[[v]]]])).unwrap()
            };
            let lo = bound(&mut model, "lo", -1.0);
            let hi = bound(&mut model, "hi", 1.5);
            let y = model.wire_node("max", math::max(), &[conv, lo]).unwrap();
            let y = model.wire_node("min", math::min(), &[hi, y[0]]).unwrap();
            let outputs = if conv_is_an_output {
                vec![y[0], conv]
            } else {
                y.to_vec()
            };
            model.select_output_outlets(&outputs).unwrap();
            let expected = run(model.clone(), &x);
            let mut ours = model.into_decluttered().unwrap();
            install(&mut ours).unwrap();
            let bin_ops = ours
                .nodes
                .iter()
                .filter(|n| n.op_is::<TypedBinOp>())
                .count();
            let op = ours
                .nodes
                .iter()
                .find_map(|n| n.op_as::<FloatDepthwise>())
                .unwrap();
            match conv_is_an_output {
                false => assert_eq!((bin_ops, op.clamp), (0, (-1.0, 1.5))),
                true => assert_eq!((bin_ops, op.clamp), (2, (f32::NEG_INFINITY, f32::INFINITY))),
            }
            let got = run(ours, &x);
            let (got, expected) = (
                got.to_plain_array_view::<f32>().unwrap().to_owned(),
                expected.to_plain_array_view::<f32>().unwrap().to_owned(),
            );
            assert!(expected.iter().any(|&v| v == -1.0) && expected.iter().any(|&v| v == 1.5));
            let differ = (&got - &expected).iter().fold(0f32, |m, d| m.max(d.abs()));
            assert!(differ <= 1e-5, "{conv_is_an_output}: {differ}");
        }
    }
}
