//! A faster max-pooling for optimised tract plans: NCHW, undilated, any kernel and stride,
//! padded or not (SqueezeNet's pools are not; ResNet's and ShuffleNet's stem pool is).
//!
//! tract 0.23's `OptMaxPool` folds each of the k×k taps into an output row through a
//! strided iterator, which the compiler does not vectorise: on this project's x86 it took
//! 26 % of an f32 forward pass and 20 % of an int8 one (perf; docs/benchmarks.md, "Speed"). [`RowMaxPool`]
//! takes the maximum of the k input rows first — contiguous rows, so SIMD — and only then
//! the k taps of each output pixel along that one row. Same values, same datum type:
//! quantized tensors pool their stored integers, as tract does.
//!
//! Written here rather than upstream for now: it is one self-contained op, swapped in by
//! [`install`] after tract has optimised the plan, and the upstream fix belongs in tract's
//! own `OptMaxPool`.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::{OptMaxPool, PaddingSpec};
use tract_onnx::tract_core::ops::nn::DataFormat;

use crate::model::kernels::PoolIsa;

/// Max-pooling of an NCHW tensor without dilation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RowMaxPool {
    /// Kernel height and width.
    pub kernel: [usize; 2],
    /// Stride along height and width.
    pub stride: [usize; 2],
    /// Padding before and after, along height then width. Padding takes no part in a
    /// window's maximum (ONNX's semantics, and tract's): the type's lowest value stands
    /// there, and every window holds at least one value of the input.
    pub padding: [[usize; 2]; 2],
    /// The compiled form that runs.
    pub isa: PoolIsa,
}

/// The value padding holds: no value of the type is below it.
trait Lowest: Copy {
    const LOWEST: Self;
}

impl Lowest for f32 {
    const LOWEST: f32 = f32::NEG_INFINITY;
}

impl Lowest for u8 {
    const LOWEST: u8 = u8::MIN;
}

impl Lowest for i8 {
    const LOWEST: i8 = i8::MIN;
}

/// Replaces every `OptMaxPool` of `model` that [`RowMaxPool`] computes identically, with
/// the form compiled for `isa`; says how many it found and replaced.
pub fn install(model: &mut TypedModel, isa: PoolIsa) -> TractResult<super::swap::Swapped> {
    super::swap::replace_ops::<OptMaxPool>(model, |pool, input, output| {
        RowMaxPool::replacing(pool, input, output, isa).into()
    })
}

impl RowMaxPool {
    /// The op computing what `pool` does on `input`, if its geometry is one this op has.
    fn replacing(
        pool: &OptMaxPool,
        input: &TypedFact,
        output: &TypedFact,
        isa: PoolIsa,
    ) -> Option<RowMaxPool> {
        let spec = &pool.pool_spec;
        if pool.with_index_outputs.is_some()
            || spec.data_format != DataFormat::NCHW
            || spec.kernel_shape.len() != 2
            || spec.dilations().iter().any(|&d| d != 1)
        {
            return None;
        }
        let kernel = [spec.kernel_shape[0], spec.kernel_shape[1]];
        let padding = match &spec.padding {
            PaddingSpec::Valid => [[0; 2]; 2],
            PaddingSpec::Explicit(before, after)
            | PaddingSpec::ExplicitOnnxPool(before, after, _)
                if before.len() == 2 && after.len() == 2 =>
            {
                [[before[0], after[0]], [before[1], after[1]]]
            }
            _ => return None,
        };
        // A window of padding alone would hold no value of the input.
        if (0..2).any(|axis| padding[axis].iter().any(|&p| p >= kernel[axis])) {
            return None;
        }
        let op = RowMaxPool {
            kernel,
            stride: [spec.strides()[0], spec.strides()[1]],
            padding,
            isa,
        };
        let shape = input.shape.as_concrete()?;
        // Ceil-mode rounding or anything else that changes the output shape: leave it to tract.
        (op.output_shape(shape).ok()?.as_slice() == output.shape.as_concrete()?).then_some(op)
    }

    /// The height and width of a plane of `input` with its padding.
    fn padded(&self, input: &[usize]) -> TractResult<[usize; 2]> {
        let &[_, _, h, w] = input else {
            bail!("RowMaxPool expects an NCHW input, got shape {input:?}");
        };
        let [[top, bottom], [left, right]] = self.padding;
        Ok([top + h + bottom, left + w + right])
    }

    fn output_shape(&self, input: &[usize]) -> TractResult<[usize; 4]> {
        let [h, w] = self.padded(input)?;
        let (n, c) = (input[0], input[1]);
        let [kh, kw] = self.kernel;
        let [sh, sw] = self.stride;
        ensure!(
            h >= kh && w >= kw && sh > 0 && sw > 0,
            "RowMaxPool: input {h}×{w} smaller than kernel {kh}×{kw}"
        );
        Ok([n, c, (h - kh) / sh + 1, (w - kw) / sw + 1])
    }

    /// Pools `input` with the loop compiled for `self.isa` (on x86-64: the SSE2 baseline,
    /// AVX2 or AVX-512 — more lanes per instruction, not always faster: measured per CPU).
    fn eval_t<T: Datum + Lowest + PartialOrd>(&self, input: &Tensor) -> TractResult<Tensor> {
        #[cfg(target_arch = "x86_64")]
        match self.isa {
            // SAFETY (both): the CPU has the instruction set — `PoolIsa::available` checked
            // it when the choice was made, and a choice names only those.
            PoolIsa::Avx2 if PoolIsa::available().contains(&PoolIsa::Avx2) => {
                return unsafe { self.eval_avx2::<T>(input) }
            }
            PoolIsa::Avx512 if PoolIsa::available().contains(&PoolIsa::Avx512) => {
                return unsafe { self.eval_avx512::<T>(input) }
            }
            _ => {}
        }
        self.eval_any::<T>(input)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn eval_avx2<T: Datum + Lowest + PartialOrd>(&self, input: &Tensor) -> TractResult<Tensor> {
        self.eval_any::<T>(input)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw")]
    fn eval_avx512<T: Datum + Lowest + PartialOrd>(&self, input: &Tensor) -> TractResult<Tensor> {
        self.eval_any::<T>(input)
    }

    #[inline(always)]
    fn eval_any<T: Datum + Lowest + PartialOrd>(&self, input: &Tensor) -> TractResult<Tensor> {
        let [n, c, oh, ow] = self.output_shape(input.shape())?;
        let [_, w] = self.padded(input.shape())?;
        let [kh, kw] = self.kernel;
        let [sh, sw] = self.stride;
        let mut output = Tensor::zero_dt(input.datum_type(), &[n, c, oh, ow])?;
        let input_plain = input.try_as_plain_ram()?;
        let planes = Planes {
            input: input_plain.as_slice::<T>()?,
            shape: [input.shape()[2], input.shape()[3]],
            padding: self.padding,
        };
        let mut output_plain = output.try_as_plain_ram_mut()?;
        let out = output_plain.as_slice_mut::<T>()?;
        if let Some(pool_plane) = self.byte_plane_pooling::<T>(w) {
            let signed = T::datum_type().unquantized() == DatumType::I8;
            planes.each(out, oh * ow, |plane, out_plane| {
                // SAFETY: T is one byte (u8 or i8, `eval` checked), every bit pattern a
                // value; the views cover exactly the two planes' elements.
                let (plane, out_plane) = unsafe {
                    (
                        std::slice::from_raw_parts(plane.as_ptr().cast::<u8>(), plane.len()),
                        std::slice::from_raw_parts_mut(
                            out_plane.as_mut_ptr().cast::<u8>(),
                            out_plane.len(),
                        ),
                    )
                };
                pool_plane(signed, plane, w, sh, out_plane, ow);
            });
            return Ok(output);
        }
        if let Some(pool_plane) = self.float_plane_pooling::<T>() {
            planes.each(out, oh * ow, |plane, out_plane| {
                // SAFETY: T is f32 (`float_plane_pooling` checked); the views cover exactly
                // the two planes' elements.
                let (plane, out_plane) = unsafe {
                    (
                        std::slice::from_raw_parts(plane.as_ptr().cast::<f32>(), plane.len()),
                        std::slice::from_raw_parts_mut(
                            out_plane.as_mut_ptr().cast::<f32>(),
                            out_plane.len(),
                        ),
                    )
                };
                pool_plane(plane, w, sh, out_plane, ow);
            });
            return Ok(output);
        }
        // One output row's window folded down its rows, then across its columns: both
        // passes run over contiguous memory, so they vectorise; the stride is taken last.
        let mut rows = vec![T::LOWEST; w];
        let mut windows = vec![T::LOWEST; w - kw + 1];
        planes.each(out, oh * ow, |plane, out_plane| {
            for (oy, out_row) in out_plane.chunks_exact_mut(ow).enumerate() {
                let window = &plane[oy * sh * w..][..kh * w];
                fold(kh, |ky| &window[ky * w..][..w], &mut rows);
                if [kw, sw] == [3, 2] && deinterleaves::<T>() {
                    pool_3_by_2(&rows, out_row);
                    continue;
                }
                fold(kw, |kx| &rows[kx..][..w - kw + 1], &mut windows);
                for (o, &m) in out_row.iter_mut().zip(windows.iter().step_by(sw)) {
                    *o = m;
                }
            }
        });
        Ok(output)
    }
}

/// The planes of an NCHW tensor, each `shape` high and wide, padded as a pool's padding says.
struct Planes<'a, T> {
    input: &'a [T],
    shape: [usize; 2],
    padding: [[usize; 2]; 2],
}

impl<T: Lowest> Planes<'_, T> {
    /// Calls `pool` with each plane, padded, and its `out_len` values of `out`. Padded
    /// planes are copied into one buffer whose border stays the lowest value.
    #[inline(always)]
    fn each(&self, out: &mut [T], out_len: usize, mut pool: impl FnMut(&[T], &mut [T])) {
        let [h, w] = self.shape;
        let [[top, bottom], [left, right]] = self.padding;
        let planes = self
            .input
            .chunks_exact(h * w)
            .zip(out.chunks_exact_mut(out_len));
        if self.padding == [[0; 2]; 2] {
            planes.for_each(|(plane, out_plane)| pool(plane, out_plane));
            return;
        }
        let padded_w = left + w + right;
        let mut padded = vec![T::LOWEST; (top + h + bottom) * padded_w];
        for (plane, out_plane) in planes {
            let rows = padded[top * padded_w..].chunks_exact_mut(padded_w);
            for (to, from) in rows.zip(plane.chunks_exact(w)) {
                to[left..][..w].copy_from_slice(from);
            }
            pool(&padded, out_plane);
        }
    }
}

/// SqueezeNet's 3×3, stride-2 pooling of one plane of bytes: `(signed, plane, w, sh, out,
/// ow)`.
type BytePlanePooling = fn(bool, &[u8], usize, usize, &mut [u8], usize);

/// The same of one plane of f32 values: `(plane, w, sh, out, ow)`.
type FloatPlanePooling = fn(&[f32], usize, usize, &mut [f32], usize);

impl RowMaxPool {
    /// The AVX-512 pooling of whole planes of f32 values for this geometry and CPU, if
    /// there is one.
    fn float_plane_pooling<T: Datum>(&self) -> Option<FloatPlanePooling> {
        if T::datum_type() != DatumType::F32 || self.kernel != [3, 3] || self.stride[1] != 2 {
            return None;
        }
        #[cfg(target_arch = "x86_64")]
        if self.isa == PoolIsa::Avx512 && PoolIsa::available().contains(&PoolIsa::Avx512) {
            return Some(|plane, w, sh, out, ow| {
                // SAFETY: AVX-512 F is there: `PoolIsa::available` checked it.
                unsafe { avx512::pool_3_by_2_float_plane(plane, w, sh, out, ow) }
            });
        }
        None
    }

    /// The SIMD pooling of whole planes of bytes for this geometry, row width and CPU, if
    /// there is one.
    #[cfg_attr(not(target_arch = "aarch64"), allow(unused_variables))]
    fn byte_plane_pooling<T>(&self, w: usize) -> Option<BytePlanePooling> {
        if std::mem::size_of::<T>() != 1 || self.kernel != [3, 3] || self.stride[1] != 2 {
            return None;
        }
        #[cfg(target_arch = "aarch64")]
        if w >= 16 {
            return Some(|signed, plane, w, sh, out, ow| match signed {
                true => neon::pool_3_by_2_plane::<true>(plane, w, sh, out, ow),
                false => neon::pool_3_by_2_plane::<false>(plane, w, sh, out, ow),
            });
        }
        #[cfg(target_arch = "x86_64")]
        if self.isa == PoolIsa::Avx512 && PoolIsa::available().contains(&PoolIsa::Avx512) {
            return Some(|signed, plane, w, sh, out, ow| {
                // SAFETY: AVX-512 F and BW are there: `PoolIsa::available` checked them.
                unsafe {
                    match signed {
                        true => avx512::pool_3_by_2_plane::<true>(plane, w, sh, out, ow),
                        false => avx512::pool_3_by_2_plane::<false>(plane, w, sh, out, ow),
                    }
                }
            });
        }
        None
    }
}

/// SqueezeNet's 3×3, stride-2 pooling of bytes with AVX-512 BW, 32 outputs per block: the
/// three rows' maximum taken in registers at the block's start and two bytes on (a folded
/// row stored and loaded back at those offsets would wait on store forwarding), then, as
/// 16-bit lanes, even bytes low and odd ones high, which `vpmovwb` splits; masked loads and
/// stores instead of scalar tails.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// Pools one `w`-wide plane whose rows `sh` apart start each output row.
    ///
    /// # Safety
    /// The CPU has AVX-512 F and BW.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn pool_3_by_2_plane<const SIGNED: bool>(
        plane: &[u8],
        w: usize,
        sh: usize,
        out: &mut [u8],
        ow: usize,
    ) {
        assert!(w > 2 * ow);
        for (oy, out_row) in out.chunks_exact_mut(ow).enumerate() {
            let window = &plane[oy * sh * w..][..3 * w];
            let rows = [0, w, 2 * w].map(|at| window[at..].as_ptr());
            // SAFETY: the caller's promise; the rows are w > 2·ow long.
            unsafe { pool_rows::<SIGNED>(rows, out_row) };
        }
    }

    /// The lanes below `n` (at most 64).
    fn first(n: usize) -> u64 {
        u64::MAX >> (64 - n)
    }

    #[inline(always)]
    unsafe fn max<const SIGNED: bool>(a: __m512i, b: __m512i) -> __m512i {
        // SAFETY: AVX-512 BW, as every caller's target features say.
        unsafe {
            match SIGNED {
                true => _mm512_max_epi8(a, b),
                false => _mm512_max_epu8(a, b),
            }
        }
    }

    /// `out[x] = max over the three rows of row[2x], row[2x + 1], row[2x + 2]`.
    ///
    /// # Safety
    /// AVX-512 F and BW; each row holds more than `2·out.len()` bytes.
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn pool_rows<const SIGNED: bool>(rows: [*const u8; 3], out: &mut [u8]) {
        let n = out.len();
        for x in (0..n).step_by(32) {
            let count = (n - x).min(32);
            // SAFETY: each row's loads read [2x, 2x + 2·count) and [2x + 2, 2x + 2·count +
            // 1), masked; 2x + 2·count ≤ 2n < the row's length. The store writes out[x ..
            // x + count).
            unsafe {
                let (mut here, mut next) = (_mm512_setzero_si512(), _mm512_setzero_si512());
                for (i, &row) in rows.iter().enumerate() {
                    let at = row.add(2 * x);
                    let h = _mm512_maskz_loadu_epi8(first(2 * count), at.cast());
                    let n = _mm512_maskz_loadu_epi8(first(2 * count - 1), at.add(2).cast());
                    (here, next) = match i {
                        0 => (h, n),
                        _ => (max::<SIGNED>(here, h), max::<SIGNED>(next, n)),
                    };
                }
                let even = _mm512_cvtepi16_epi8(here);
                let odd = _mm512_cvtepi16_epi8(_mm512_srli_epi16::<8>(here));
                let after = _mm512_cvtepi16_epi8(next);
                let pooled = match SIGNED {
                    true => _mm256_max_epi8(_mm256_max_epi8(even, odd), after),
                    false => _mm256_max_epu8(_mm256_max_epu8(even, odd), after),
                };
                _mm512_mask_storeu_epi8(
                    out.as_mut_ptr().add(x).cast(),
                    first(count),
                    _mm512_castsi256_si512(pooled),
                );
            }
        }
    }

    /// [`pool_3_by_2_plane`] for f32, 16 outputs per block: the three rows' maximum at
    /// the block's start and one value on, whose even and odd lanes a permute gathers.
    ///
    /// # Safety
    /// The CPU has AVX-512 F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn pool_3_by_2_float_plane(
        plane: &[f32],
        w: usize,
        sh: usize,
        out: &mut [f32],
        ow: usize,
    ) {
        assert!(w > 2 * ow);
        for (oy, out_row) in out.chunks_exact_mut(ow).enumerate() {
            let window = &plane[oy * sh * w..][..3 * w];
            let rows = [0, w, 2 * w].map(|at| window[at..].as_ptr());
            // SAFETY: the caller's promise; the rows are w > 2·ow long.
            unsafe { pool_float_rows(rows, out_row) };
        }
    }

    /// `out[x] = max over the three rows of row[2x], row[2x + 1], row[2x + 2]`, each
    /// maximum taken as `super::max` takes it (NaNs as tract's pooling keeps them).
    ///
    /// # Safety
    /// AVX-512 F; each row holds more than `2·out.len()` values.
    #[target_feature(enable = "avx512f")]
    unsafe fn pool_float_rows(rows: [*const f32; 3], out: &mut [f32]) {
        // `super::max(a, b)`: b where a < b, else a — `vmaxps` with its operands swapped.
        let max = |a, b| _mm512_max_ps(b, a);
        let evens = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let odds = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        let n = out.len();
        for x in (0..n).step_by(16) {
            let count = (n - x).min(16);
            // The lanes of two loads of sixteen that hold `values` values.
            let split = |values: usize| {
                let masks = [values.min(16), values.saturating_sub(16)];
                masks.map(|m| ((1u32 << m) - 1) as __mmask16)
            };
            // From 2x: values up to 2x + 2·count − 1; from 2x + 2, the even ones up to
            // 2x + 2·count.
            let ([low_here, high_here], [low_next, high_next]) =
                (split(2 * count), split(2 * count - 1));
            // SAFETY: the masked loads read below 2x + 2·count + 1 ≤ 2n + 1 ≤ the row's
            // length; the store writes out[x .. x + count).
            unsafe {
                let mut folded = [_mm512_setzero_ps(); 4];
                for (i, &row) in rows.iter().enumerate() {
                    let at = row.add(2 * x);
                    let loads = [
                        _mm512_maskz_loadu_ps(low_here, at),
                        _mm512_maskz_loadu_ps(high_here, at.wrapping_add(16)),
                        _mm512_maskz_loadu_ps(low_next, at.add(2)),
                        _mm512_maskz_loadu_ps(high_next, at.wrapping_add(18)),
                    ];
                    for (f, l) in folded.iter_mut().zip(loads) {
                        *f = if i == 0 { l } else { max(*f, l) };
                    }
                }
                let [low, high, next_low, next_high] = folded;
                let even = _mm512_permutex2var_ps(low, evens, high);
                let odd = _mm512_permutex2var_ps(low, odds, high);
                let after = _mm512_permutex2var_ps(next_low, evens, next_high);
                let pooled = max(max(even, odd), after);
                _mm512_mask_storeu_ps(out.as_mut_ptr().add(x), first(count) as __mmask16, pooled);
            }
        }
    }
}

/// `out[i] = max over j < k of source(j)[i]`, in as few passes over `out` as the common
/// windows (2 and 3 wide) allow.
#[inline(always)]
fn fold<'s, T: Copy + PartialOrd + 's>(k: usize, source: impl Fn(usize) -> &'s [T], out: &mut [T]) {
    match k {
        1 => out.copy_from_slice(source(0)),
        2 => {
            for ((o, &a), &b) in out.iter_mut().zip(source(0)).zip(source(1)) {
                *o = max(a, b);
            }
        }
        _ => {
            for (((o, &a), &b), &c) in out.iter_mut().zip(source(0)).zip(source(1)).zip(source(2)) {
                *o = max(max(a, b), c);
            }
            for j in 3..k {
                for (o, &v) in out.iter_mut().zip(source(j)) {
                    *o = max(*o, v);
                }
            }
        }
    }
}

/// `out[x] = max(row[2x], row[2x + 1], row[2x + 2])`, as [`fold`] and a stride of 2 make it
/// (SqueezeNet's 3×3 pooling): one pass, only at the positions kept.
#[inline(always)]
fn pool_3_by_2<T: Copy + PartialOrd>(row: &[T], out: &mut [T]) {
    let row = &row[..2 * out.len() + 1];
    for (x, o) in out.iter_mut().enumerate() {
        *o = max(max(row[2 * x], row[2 * x + 1]), row[2 * x + 2]);
    }
}

/// SqueezeNet's 3×3, stride-2 pooling of bytes with NEON, a plane at a time: sixteen
/// lanes per instruction, and a row's last block overlapping the one before it instead of
/// a scalar tail (a maximum taken twice is the same maximum) — SqueezeNet's rows are 27 to
/// 109 bytes, so tails were most of the work.
#[cfg(target_arch = "aarch64")]
mod neon {
    use std::arch::aarch64::*;

    /// How far past a row [`pool_row`] may read (its last `ld2` reaches one byte beyond
    /// `2·out.len() + 1`, into a lane it does not use).
    const READ_AHEAD: usize = 16;

    /// Pools one `w`-wide plane whose rows `sh` apart start each output row.
    pub fn pool_3_by_2_plane<const SIGNED: bool>(
        plane: &[u8],
        w: usize,
        sh: usize,
        out: &mut [u8],
        ow: usize,
    ) {
        let mut rows = vec![0u8; w + READ_AHEAD];
        for (oy, out_row) in out.chunks_exact_mut(ow).enumerate() {
            let window = &plane[oy * sh * w..][..3 * w];
            let (a, rest) = window.split_at(w);
            let (b, c) = rest.split_at(w);
            fold3::<SIGNED>(a, b, c, &mut rows[..w]);
            pool_row::<SIGNED>(&rows, out_row);
        }
    }

    #[inline(always)]
    fn max16<const SIGNED: bool>(a: uint8x16_t, b: uint8x16_t) -> uint8x16_t {
        // SAFETY: NEON is part of aarch64's baseline.
        unsafe {
            match SIGNED {
                true => {
                    vreinterpretq_u8_s8(vmaxq_s8(vreinterpretq_s8_u8(a), vreinterpretq_s8_u8(b)))
                }
                false => vmaxq_u8(a, b),
            }
        }
    }

    #[inline(always)]
    fn max8<const SIGNED: bool>(a: uint8x8_t, b: uint8x8_t) -> uint8x8_t {
        // SAFETY: NEON is part of aarch64's baseline.
        unsafe {
            match SIGNED {
                true => vreinterpret_u8_s8(vmax_s8(vreinterpret_s8_u8(a), vreinterpret_s8_u8(b))),
                false => vmax_u8(a, b),
            }
        }
    }

    /// The block starts covering `0..n` with `width`-wide blocks, the last one ending at `n`.
    fn blocks(n: usize, width: usize) -> impl Iterator<Item = usize> {
        (0..n.div_ceil(width)).map(move |i| (i * width).min(n - width))
    }

    /// `out[x] = max(a[x], b[x], c[x])`; `out` at least sixteen wide.
    fn fold3<const SIGNED: bool>(a: &[u8], b: &[u8], c: &[u8], out: &mut [u8]) {
        let n = out.len();
        assert!(n >= 16 && a.len() >= n && b.len() >= n && c.len() >= n);
        for x in blocks(n, 16) {
            // SAFETY: x + 16 ≤ n ≤ every slice's length, asserted above.
            unsafe {
                let [a, b, c] = [a, b, c].map(|r| vld1q_u8(r.as_ptr().add(x)));
                vst1q_u8(
                    out.as_mut_ptr().add(x),
                    max16::<SIGNED>(max16::<SIGNED>(a, b), c),
                );
            }
        }
    }

    /// `out[x] = max(row[2x], row[2x + 1], row[2x + 2])`: `ld2` splits the row into its even
    /// and odd columns. `row` holds `2·out.len() + 1` values and [`READ_AHEAD`] more bytes.
    fn pool_row<const SIGNED: bool>(row: &[u8], out: &mut [u8]) {
        let n = out.len();
        assert!(row.len() >= 2 * n + 1 + READ_AHEAD);
        if n >= 16 {
            for x in blocks(n, 16) {
                // SAFETY: the loads read row[2x .. 2x + 34) with x ≤ n − 16, inside the
                // asserted length; the store writes out[x .. x + 16) with x + 16 ≤ n.
                unsafe {
                    let here = vld2q_u8(row.as_ptr().add(2 * x));
                    let next = vld2q_u8(row.as_ptr().add(2 * x + 2));
                    let max = max16::<SIGNED>(max16::<SIGNED>(here.0, here.1), next.0);
                    vst1q_u8(out.as_mut_ptr().add(x), max);
                }
            }
        } else if n >= 8 {
            for x in blocks(n, 8) {
                // SAFETY: as above with eight lanes: row[2x .. 2x + 18), out[x .. x + 8).
                unsafe {
                    let here = vld2_u8(row.as_ptr().add(2 * x));
                    let next = vld2_u8(row.as_ptr().add(2 * x + 2));
                    let max = max8::<SIGNED>(max8::<SIGNED>(here.0, here.1), next.0);
                    vst1_u8(out.as_mut_ptr().add(x), max);
                }
            }
        } else {
            for (x, o) in out.iter_mut().enumerate() {
                let flip = if SIGNED { 0x80 } else { 0 };
                let [a, b, c] = [row[2 * x], row[2 * x + 1], row[2 * x + 2]].map(|v| v ^ flip);
                *o = a.max(b).max(c) ^ flip;
            }
        }
    }
}

/// Whether [`pool_3_by_2`] beats folding every window and keeping every other one: for
/// f32 on x86-64 (−25 % of the pooling's time with AVX2: its lanes deinterleave in one
/// shuffle), not for bytes (+15 %) nor on aarch64 (+5 % of the instructions for f32, +21 %
/// for u8: the compiler's deinterleaving costs more than the windows it saves).
fn deinterleaves<T>() -> bool {
    cfg!(target_arch = "x86_64") && std::mem::size_of::<T>() >= 4
}

/// tract's comparison, so that NaNs propagate as they do in its own pooling.
#[inline(always)]
fn max<T: PartialOrd>(a: T, b: T) -> T {
    if a < b {
        b
    } else {
        a
    }
}

impl Op for RowMaxPool {
    fn name(&self) -> StaticName {
        "RowMaxPool".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let padding = match self.padding {
            [[0, 0], [0, 0]] => String::new(),
            p => format!(", padding {p:?}"),
        };
        Ok(vec![format!(
            "kernel {:?}, stride {:?}{padding}, {} (iscamd)",
            self.kernel,
            self.stride,
            self.isa.name()
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for RowMaxPool {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let output = match input.datum_type().unquantized() {
            DatumType::F32 => self.eval_t::<f32>(&input)?,
            DatumType::U8 => self.eval_t::<u8>(&input)?,
            DatumType::I8 => self.eval_t::<i8>(&input)?,
            dt => bail!("RowMaxPool: no kernel for {dt:?}"),
        };
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for RowMaxPool {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let input = inputs[0];
        let shape = input
            .shape
            .as_concrete()
            .context("RowMaxPool needs a concrete input shape")?;
        Ok(tvec!(input.datum_type.fact(self.output_shape(shape)?)))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_core::ops::cnn::{MaxPool, PoolSpec};

    /// tract's own max-pooling of `input`, with the given kernel, stride and padding.
    fn tracts(input: &Tensor, kernel: usize, stride: usize, padding: PaddingSpec) -> TypedModel {
        let mut model = TypedModel::default();
        let source = model
            .add_source("input", input.datum_type().fact(input.shape()))
            .unwrap();
        let spec = PoolSpec {
            data_format: DataFormat::NCHW,
            kernel_shape: tvec!(kernel, kernel),
            padding,
            dilations: None,
            strides: Some(tvec!(stride, stride)),
            input_channels: input.shape()[1],
            output_channels: input.shape()[1],
        };
        let pooled = model
            .wire_node("pool", MaxPool::new(spec, None), &[source])
            .unwrap();
        model.select_output_outlets(&pooled).unwrap();
        model.into_optimized().unwrap()
    }

    use super::super::run_once as run;

    fn random_nchw(shape: [usize; 4], seed: u64) -> Tensor {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let values: Vec<f32> = (0..shape.iter().product())
            .map(|_| rng.random_range(-4.0..4.0))
            .collect();
        tract_ndarray::Array4::from_shape_vec(shape, values)
            .unwrap()
            .into_tensor()
    }

    #[test]
    fn pools_as_tract_does_for_squeezenets_shapes_and_others() {
        // SqueezeNet 1.0's three pools (3×3, stride 2), then odd sizes and other geometries.
        for (shape, kernel, stride) in [
            ([1, 96, 111, 111], 3, 2),
            ([1, 256, 55, 55], 3, 2),
            ([2, 512, 27, 27], 3, 2),
            ([1, 3, 10, 10], 3, 2),
            ([1, 3, 10, 9], 2, 2),
            ([1, 4, 9, 10], 3, 1),
            ([1, 2, 8, 8], 2, 3),
        ] {
            let input = random_nchw(shape, shape[1] as u64);
            let reference = run(tracts(&input, kernel, stride, PaddingSpec::Valid), &input);
            for isa in PoolIsa::available() {
                let mut model = tracts(&input, kernel, stride, PaddingSpec::Valid);
                assert_eq!(install(&mut model, isa).unwrap().replaced, 1, "{shape:?}");
                assert_eq!(
                    run(model, &input),
                    reference,
                    "{shape:?} k{kernel} s{stride} {isa:?}"
                );
            }
        }
    }

    #[test]
    fn pools_quantized_integers_as_tract_does() {
        // Rows with blocks of sixteen outputs and an overlapping last one, of eight, of
        // fewer, and too narrow for NEON (its paths on aarch64); with AVX-512, rows of one
        // block and more and blocks of every length.
        let qp = QParams::ZpScale {
            zero_point: 3,
            scale: 0.05,
        };
        let shapes = [
            [1, 4, 9, 111],
            [1, 8, 13, 55],
            [2, 5, 27, 27],
            [1, 3, 9, 17],
            [1, 2, 5, 16],
            [1, 2, 7, 12],
        ];
        let types = [u8::datum_type().quantize(qp), i8::datum_type().quantize(qp)];
        for (shape, dt) in shapes.into_iter().flat_map(|s| types.map(|t| (s, t))) {
            let input = random_nchw(shape, 7);
            let quantized = input.cast_to_dt(dt).unwrap().into_owned();
            let reference = run(tracts(&quantized, 3, 2, PaddingSpec::Valid), &quantized);
            for isa in PoolIsa::available() {
                let mut model = tracts(&quantized, 3, 2, PaddingSpec::Valid);
                assert_eq!(install(&mut model, isa).unwrap().replaced, 1);
                let ours = run(model, &quantized);
                assert_eq!(ours.datum_type(), dt);
                assert_eq!(ours, reference, "{shape:?} {dt:?} {isa:?}");
            }
        }
    }

    /// ResNet's and ShuffleNet's stem pool (3×3, stride 2, padding 1 all round), uneven
    /// padding, and bytes padded (their lowest value, not the zero point, stands there).
    #[test]
    fn pools_padded_planes_as_tract_does() {
        let qp = QParams::ZpScale {
            zero_point: 3,
            scale: 0.05,
        };
        let padded = |before: [usize; 2], after: [usize; 2]| {
            PaddingSpec::Explicit(before.into_iter().collect(), after.into_iter().collect())
        };
        let cases = [
            (
                [1, 64, 112, 112],
                3,
                2,
                padded([1, 1], [1, 1]),
                f32::datum_type(),
            ),
            (
                [1, 3, 9, 10],
                3,
                2,
                padded([1, 0], [2, 1]),
                f32::datum_type(),
            ),
            (
                [1, 4, 7, 8],
                2,
                1,
                padded([0, 1], [1, 0]),
                f32::datum_type(),
            ),
            (
                [1, 24, 112, 112],
                3,
                2,
                padded([1, 1], [1, 1]),
                u8::datum_type().quantize(qp),
            ),
            (
                [1, 5, 9, 17],
                3,
                2,
                padded([1, 1], [1, 1]),
                i8::datum_type().quantize(qp),
            ),
        ];
        for (shape, kernel, stride, padding, dt) in cases {
            // Values below the zero point where they are bytes: padding with it would show.
            let input = random_nchw(shape, 3).cast_to_dt(dt).unwrap().into_owned();
            let reference = run(tracts(&input, kernel, stride, padding.clone()), &input);
            for isa in PoolIsa::available() {
                let mut model = tracts(&input, kernel, stride, padding.clone());
                assert_eq!(install(&mut model, isa).unwrap().replaced, 1, "{shape:?}");
                let ours = run(model, &input);
                assert_eq!(ours, reference, "{shape:?} {padding:?} {dt:?} {isa:?}");
            }
        }
    }

    #[test]
    fn a_window_of_padding_alone_is_left_to_tract() {
        let input = random_nchw([1, 2, 7, 7], 1);
        let padding = PaddingSpec::Explicit(tvec!(2, 0), tvec!(0, 0));
        let mut model = tracts(&input, 2, 1, padding);
        assert_eq!(install(&mut model, PoolIsa::widest()).unwrap().replaced, 0);
    }
}
