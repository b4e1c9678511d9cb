//! Float depthwise convolutions with AVX-512, one output row at a time.
//!
//! [`super::depthwise`]'s general loop copies each plane into a padded scratch, sums into
//! another and copies the sums out through the clamp: in perf on MobileNetV2 its
//! multiply-adds were a fifth of its time. With AVX-512's masked loads the padding needs
//! no copy: lanes outside the input row are simply not loaded (zeros). Each output row's
//! sums stay in registers — up to eight vectors, 128 columns, at a time — across every tap,
//! start from the bias and are clamped and stored straight into the output. The masks
//! depend only on the column, so they are made once per op call. A stride of 2 along the
//! row loads 32 values and keeps the 16 of its columns (one permute).

use std::arch::x86_64::*;

/// Columns of one block of a row: eight registers of sums.
const BLOCK: usize = 8 * 16;

/// The geometry of a depthwise convolution's planes: any stride down the columns, 1 or 2
/// along the rows.
#[derive(Debug, Clone, Copy)]
pub struct Rows {
    pub height: usize,
    pub width: usize,
    pub out_height: usize,
    pub out_width: usize,
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub dilation: (usize, usize),
    /// Padding before the first row and column.
    pub pad: (usize, usize),
}

/// For one block of columns and each tap column: where the block's first lane reads, and
/// which of the values each register loads are in the input row.
pub struct Masks {
    /// Column of the input the block's first lane reads for each tap column (may be < 0).
    starts: Vec<isize>,
    /// `masks[kx · groups + g]`: bit `l` for the `l`-th value register `g` loads (16 of
    /// them per register, 32 with a stride of 2), set where its column is in the row.
    masks: Vec<u32>,
    groups: usize,
}

impl Rows {
    fn masks(&self, from: usize) -> Masks {
        let columns = (self.out_width - from).min(BLOCK);
        let groups = columns.div_ceil(16);
        let (kw, sw, dw) = (self.kernel.1, self.stride.1, self.dilation.1);
        let mut starts = Vec::with_capacity(kw);
        let mut masks = Vec::with_capacity(kw * groups);
        for kx in 0..kw {
            let start = (from * sw + kx * dw) as isize - self.pad.1 as isize;
            starts.push(start);
            for g in 0..groups {
                let first = start + (16 * sw * g) as isize;
                let mask = (0..16 * sw).fold(0u32, |mask, l| {
                    let inside = (0..self.width as isize).contains(&(first + l as isize));
                    mask | (u32::from(inside) << l)
                });
                masks.push(mask);
            }
        }
        Masks {
            starts,
            masks,
            groups,
        }
    }

    /// One plane: `input` (`height × width`), `weights` (`kh × kw`), into `output`
    /// (`out_height × out_width`), from `bias`, clamped to `[lo, hi]`.
    ///
    /// # Safety
    /// The CPU has AVX-512 F; the slices have the sizes above.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn plane(
        &self,
        blocks: &[Masks],
        input: &[f32],
        weights: &[f32],
        bias: f32,
        (lo, hi): (f32, f32),
        output: &mut [f32],
    ) {
        for (b, masks) in blocks.iter().enumerate() {
            let at = (b, masks);
            // SAFETY: as the caller promises.
            unsafe {
                match (self.stride.1, masks.groups) {
                    (1, 1) => self.block::<1, 1>(at, input, weights, bias, (lo, hi), output),
                    (1, 2) => self.block::<1, 2>(at, input, weights, bias, (lo, hi), output),
                    (1, 3) => self.block::<1, 3>(at, input, weights, bias, (lo, hi), output),
                    (1, 4) => self.block::<1, 4>(at, input, weights, bias, (lo, hi), output),
                    (1, 5) => self.block::<1, 5>(at, input, weights, bias, (lo, hi), output),
                    (1, 6) => self.block::<1, 6>(at, input, weights, bias, (lo, hi), output),
                    (1, 7) => self.block::<1, 7>(at, input, weights, bias, (lo, hi), output),
                    (1, _) => self.block::<1, 8>(at, input, weights, bias, (lo, hi), output),
                    (_, 1) => self.block::<2, 1>(at, input, weights, bias, (lo, hi), output),
                    (_, 2) => self.block::<2, 2>(at, input, weights, bias, (lo, hi), output),
                    (_, 3) => self.block::<2, 3>(at, input, weights, bias, (lo, hi), output),
                    (_, 4) => self.block::<2, 4>(at, input, weights, bias, (lo, hi), output),
                    (_, 5) => self.block::<2, 5>(at, input, weights, bias, (lo, hi), output),
                    (_, 6) => self.block::<2, 6>(at, input, weights, bias, (lo, hi), output),
                    (_, 7) => self.block::<2, 7>(at, input, weights, bias, (lo, hi), output),
                    (_, _) => self.block::<2, 8>(at, input, weights, bias, (lo, hi), output),
                }
            }
        }
    }

    /// The masks of each block of columns, for [`Self::plane`].
    pub fn blocks(&self) -> Vec<Masks> {
        (0..self.out_width)
            .step_by(BLOCK)
            .map(|from| self.masks(from))
            .collect()
    }

    /// Block `b`'s `G` registers of columns, every output row, `S` the stride along rows.
    #[target_feature(enable = "avx512f")]
    unsafe fn block<const S: usize, const G: usize>(
        &self,
        (b, masks): (usize, &Masks),
        input: &[f32],
        weights: &[f32],
        bias: f32,
        (lo, hi): (f32, f32),
        output: &mut [f32],
    ) {
        let (kh, kw) = self.kernel;
        let (lo, hi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
        let evens = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let from = b * BLOCK;
        for y in 0..self.out_height {
            let mut sums = [_mm512_set1_ps(bias); G];
            for ky in 0..kh {
                let Some(row) = (y * self.stride.0 + ky * self.dilation.0)
                    .checked_sub(self.pad.0)
                    .filter(|&r| r < self.height)
                else {
                    continue;
                };
                let row = input.as_ptr().add(row * self.width);
                for kx in 0..kw {
                    let w = _mm512_set1_ps(*weights.get_unchecked(ky * kw + kx));
                    // Values a mask leaves out are not read: `wrapping_offset`, for
                    // addresses before or past the row that only those would have.
                    let at = row.wrapping_offset(masks.starts[kx]);
                    for (g, sum) in sums.iter_mut().enumerate() {
                        let mask = masks.masks[kx * masks.groups + g];
                        let at = at.wrapping_add(16 * S * g);
                        let x = if S == 1 {
                            _mm512_maskz_loadu_ps(mask as __mmask16, at)
                        } else {
                            let low = _mm512_maskz_loadu_ps(mask as __mmask16, at);
                            let high = _mm512_maskz_loadu_ps(
                                (mask >> 16) as __mmask16,
                                at.wrapping_add(16),
                            );
                            _mm512_permutex2var_ps(low, evens, high)
                        };
                        *sum = _mm512_fmadd_ps(x, w, *sum);
                    }
                }
            }
            let to = output.as_mut_ptr().add(y * self.out_width + from);
            let columns = (self.out_width - from).min(BLOCK);
            for (g, &sum) in sums.iter().enumerate() {
                let lanes = (columns - 16 * g).min(16);
                let mask = ((1u32 << lanes) - 1) as __mmask16;
                // `max` then `min`: NaN to the lower bound, as the general loop has it.
                let clamped = _mm512_min_ps(_mm512_max_ps(sum, lo), hi);
                _mm512_mask_storeu_ps(to.add(16 * g), mask, clamped);
            }
        }
    }
}
