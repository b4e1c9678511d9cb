//! iscamd's int8 matrix kernel for x86-64 cores with AVX-512 VNNI (Intel since Cascade
//! Lake, AMD since Zen 4).
//!
//! `vpdpbusd` multiplies unsigned bytes by signed ones, four pairs to a 32-bit lane. tract's
//! VNNI kernels make A's bytes unsigned (+128) after broadcasting each row's four, so every
//! `vpdpbusd` of their inner loop comes with a broadcast and a byte add on the same vector
//! ports. This one makes B's bytes unsigned instead — one `vpxor` per block of sixteen
//! columns — and broadcasts A's rows straight from memory into `vpdpbusd` itself: 16
//! `vpdpbusd`, a load and a `vpxor` per 1,024 multiply-adds. The +128 on B adds
//! 128 · Σₖ A[m, k] to row m, which A's packer writes into each panel's header
//! ([`RowSums`]), so the kernel takes it off once per tile.
//!
//! Never in tract's ladder: iscamd measures it against tract's kernels as one more candidate
//! ([`TIER`]), per model, and runs it where it was faster.

use std::arch::x86_64::*;
use std::sync::LazyLock;

use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::tract_linalg;
use tract_onnx::tract_core::tract_linalg::isa::{Arch, Isa, IsaReq};
use tract_onnx::tract_core::tract_linalg::mmm::{
    DynKernel, FusedKerSpec, OutputStoreKer, RoundingPolicy,
};
use tract_onnx::tract_core::tract_linalg::pack::{PackedI8K4, Packing};

use super::generic_steps;
use super::headed::{self, HeadedI8K4, PanelHeader};
use super::registry::outside_tracts_ranking;

/// The tier iscamd asks for this kernel.
pub const TIER: &str = "iscamd-avx512-vnni";

/// The kernel's name in tract's registry.
const NAME: &str = "iscamd_avx512vnni_mmm_i32_16x16";

/// Rows of A per tile (and per panel of A), columns of B.
const MR: usize = 16;
const NR: usize = 16;

/// Bytes before each panel of A: its rows' 128 · Σₖ A[m, k], as i32.
const HEADER: usize = 4 * MR;

static KERNEL: LazyLock<DynKernel<MR, NR, i32>> = LazyLock::new(|| {
    let kernel = DynKernel::<MR, NR, i32>::new(NAME, kernel, i32::packing(MR), i32::packing(NR))
        .with_packing(HeadedI8K4::<RowSums>::new(), PackedI8K4::new(NR))
        .with_store::<i8>()
        .with_isa(IsaReq::ANY.needing(&[Isa::X86_64Avx512f, Isa::X86_64Avx512Vnni]));
    outside_tracts_ranking(kernel, Arch::X86_64)
});

/// The index of (A's `HeadedI8K4<RowSums>`, `PackedI8K4`) in the kernel's packings (0 is
/// `new`'s i32 pair).
const PACKING: usize = 1;

inventory::submit! {
    tract_linalg::mmm_routines::MmmRoutine { make: || KERNEL.mmm() }
}

inventory::submit! {
    tract_linalg::mmm_tiers::MmmTier {
        arch: Some(Arch::X86_64),
        // Unused by tract's x86-64 tiers (1–8); never in its ladder anyway (`applies`).
        precedence: 9,
        name: TIER,
        applies: |_| false,
        preferred: |_, accumulator, query, _| {
            (headed::takes(accumulator, query) && runs_here()).then_some(NAME)
        },
    }
}

fn runs_here() -> bool {
    is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vnni")
}

/// A tile of C: row r's sixteen columns in `[r]`.
type Tile = [__m512i; MR];

/// `tile[r] = $f` for every row `r`, `$v` the row (unrolled, not a closure: closures would
/// not inline the AVX-512 intrinsics).
macro_rules! each {
    ($tile:ident, |$v:ident, $r:ident| $f:expr) => {
        unrolled!($r in [0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15] {
            let $v = $tile[$r];
            $tile[$r] = $f;
        })
    };
}
const _: () = assert!(MR == 16, "`each!` lists the tile's rows");

/// Runs a tile's steps, the common ones here with AVX-512; the others on tract's generic
/// kernel ([`generic_steps`]). Returns 0, or tract's error code of the step that failed.
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn kernel(specs: &[FusedKerSpec<i32>]) -> isize {
    use FusedKerSpec as S;
    // SAFETY (whole body): tract's steps for one tile, their pointers to MR rows, NR
    // columns, or a tile's stores, as its kernels receive them; the tier is only offered
    // where AVX-512 VNNI runs.
    unsafe {
        let mut tile: Tile = [_mm512_setzero_si512(); MR];
        for spec in specs {
            match *spec {
                S::Done => return 0,
                S::Clear => tile = [_mm512_setzero_si512(); MR],
                S::LoadTile(col_major, _) => each!(tile, |_v, r| {
                    let row: [i32; NR] = std::array::from_fn(|c| *col_major.add(c * MR + r));
                    _mm512_loadu_si512(row.as_ptr().cast())
                }),
                S::AddMatMul { k, pa, pb, packing } => {
                    if packing != PACKING {
                        return 1;
                    }
                    tile = add_mat_mul(tile, k, pa, pb);
                }
                S::ScalarMin(x) => each!(tile, |v, _r| _mm512_min_epi32(v, _mm512_set1_epi32(x))),
                S::ScalarMax(x) => each!(tile, |v, _r| _mm512_max_epi32(v, _mm512_set1_epi32(x))),
                S::ScalarAdd(x) => each!(tile, |v, _r| _mm512_add_epi32(v, _mm512_set1_epi32(x))),
                S::ScalarMul(x) => {
                    each!(tile, |v, _r| _mm512_mullo_epi32(v, _mm512_set1_epi32(x)))
                }
                S::ScalarSub(x) => each!(tile, |v, _r| _mm512_sub_epi32(_mm512_set1_epi32(x), v)),
                S::ScalarSubF(x) => {
                    each!(tile, |v, _r| _mm512_sub_epi32(v, _mm512_set1_epi32(x)))
                }
                S::PerRowMin(p) => each!(tile, |v, r| _mm512_min_epi32(v, row_value(p, r))),
                S::PerRowMax(p) => each!(tile, |v, r| _mm512_max_epi32(v, row_value(p, r))),
                S::PerRowAdd(p) => each!(tile, |v, r| _mm512_add_epi32(v, row_value(p, r))),
                S::PerRowMul(p) => each!(tile, |v, r| _mm512_mullo_epi32(v, row_value(p, r))),
                S::PerRowSub(p) => each!(tile, |v, r| _mm512_sub_epi32(row_value(p, r), v)),
                S::PerRowSubF(p) => each!(tile, |v, r| _mm512_sub_epi32(v, row_value(p, r))),
                S::PerColMin(p) => {
                    let c = _mm512_loadu_si512(p.cast());
                    each!(tile, |v, _r| _mm512_min_epi32(v, c))
                }
                S::PerColMax(p) => {
                    let c = _mm512_loadu_si512(p.cast());
                    each!(tile, |v, _r| _mm512_max_epi32(v, c))
                }
                S::PerColAdd(p) => {
                    let c = _mm512_loadu_si512(p.cast());
                    each!(tile, |v, _r| _mm512_add_epi32(v, c))
                }
                S::PerColMul(p) => {
                    let c = _mm512_loadu_si512(p.cast());
                    each!(tile, |v, _r| _mm512_mullo_epi32(v, c))
                }
                S::PerColSub(p) => {
                    let c = _mm512_loadu_si512(p.cast());
                    each!(tile, |v, _r| _mm512_sub_epi32(c, v))
                }
                S::PerColSubF(p) => {
                    let c = _mm512_loadu_si512(p.cast());
                    each!(tile, |v, _r| _mm512_sub_epi32(v, c))
                }
                S::AddRowColProducts(rows, cols) => {
                    let c = _mm512_loadu_si512(cols.cast());
                    each!(tile, |v, r| _mm512_add_epi32(
                        v,
                        _mm512_mullo_epi32(c, row_value(rows, r))
                    ))
                }
                S::QScale(shift, RoundingPolicy::Even, mult) => {
                    each!(tile, |v, _r| scale_even(v, shift, mult))
                }
                S::Store(store) if [1, 4].contains(&store.item_size) => store_tile(&tile, store),
                other => {
                    let mut values = [[0i32; NR]; MR];
                    for (row, values) in tile.iter().zip(&mut values) {
                        _mm512_storeu_si512(values.as_mut_ptr().cast(), *row);
                    }
                    let err = generic_steps::on_generic_kernel(&mut values, other);
                    if err != 0 {
                        return err;
                    }
                    for (row, values) in tile.iter_mut().zip(&values) {
                        *row = _mm512_loadu_si512(values.as_ptr().cast());
                    }
                }
            }
        }
        0
    }
}

/// Row `r`'s value of a per-row step, in every lane.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn row_value(p: *const i32, r: usize) -> __m512i {
    // SAFETY: the caller's pointer to MR values.
    _mm512_set1_epi32(unsafe { *p.add(r) })
}

/// `tile + A·B` over `k`, A's panel at `pa` (header first), B's at `pb`. The tile comes
/// and goes by value: a copy of it local to the loop stays in registers even where this
/// function is not inlined.
/// How many blocks of K ahead the loop asks for its panels' next cache lines: about 500
/// cycles of `vpdpbusd` at two per cycle, more than a load from memory takes (as the f32
/// kernel's).
const PREFETCH_STEPS: usize = 64;

#[inline]
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn add_mat_mul(mut tile: Tile, k: usize, pa: *const u8, pb: *const u8) -> Tile {
    let flip = _mm512_set1_epi8(i8::MIN);
    // SAFETY (whole body): the panels hold ⌈k/4⌉ blocks of 64 bytes each, A's after its
    // header of MR i32.
    unsafe {
        let mut a = pa.add(HEADER);
        let mut b = pb;
        for _ in 0..k.div_ceil(4) {
            // Each step reads one cache line of each panel. A prefetch past a panel's end
            // is a hint, never a fault: `wrapping_add`.
            _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(4 * NR * PREFETCH_STEPS).cast());
            _mm_prefetch::<_MM_HINT_T0>(a.wrapping_add(4 * MR * PREFETCH_STEPS).cast());
            let unsigned_b = _mm512_xor_si512(_mm512_loadu_si512(b.cast()), flip);
            each!(tile, |row, m| {
                let a_row = _mm512_set1_epi32(a.add(4 * m).cast::<i32>().read_unaligned());
                _mm512_dpbusd_epi32(row, unsigned_b, a_row)
            });
            a = a.add(4 * MR);
            b = b.add(4 * NR);
        }
        let bias = pa.cast::<i32>();
        each!(tile, |v, r| _mm512_sub_epi32(
            v,
            _mm512_set1_epi32(bias.add(r).read_unaligned())
        ));
        tile
    }
}

/// The largest `|v|` whose product with a 32-bit multiplier an f64 holds exactly
/// (`2^22 · 2^31 = 2^53`).
const EXACT_IN_F64: i32 = 1 << 22;

/// tract's `QScale` with round-half-to-even (its rounding for ONNX models): `v · mult ·
/// 2^-(31 + shift)`, exactly. Where every lane is within [`EXACT_IN_F64`] (an int8
/// product's sums over a K below about 128 always are) and the scale shrinks, in f64:
/// the product and its power-of-two scale are exact there, and rounding to nearest even
/// is tract's rounding — two conversions and a multiply per eight lanes, where the 64-bit
/// integer path takes a dozen steps (MobileNetV2's K = 16 products spent most of their
/// time there). Else in 64-bit integers, as tract's generic kernel does.
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn scale_even(v: __m512i, shift: isize, mult: i32) -> __m512i {
    let s = shift + 31;
    let large = _mm512_cmpgt_epu32_mask(_mm512_abs_epi32(v), _mm512_set1_epi32(EXACT_IN_F64));
    if large == 0 && (1..=1000).contains(&s) {
        // Exact: a 31-bit integer times a power of two within f64's exponents.
        let scale = _mm512_set1_pd(f64::from(mult) * 2f64.powi(-(s as i32)));
        const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
        let half = |h: __m256i| {
            _mm512_cvt_roundpd_epi32::<NEAREST>(_mm512_mul_pd(_mm512_cvtepi32_pd(h), scale))
        };
        let (low, high) = (
            half(_mm512_castsi512_si256(v)),
            half(_mm512_extracti64x4_epi64::<1>(v)),
        );
        return _mm512_inserti64x4::<1>(_mm512_castsi256_si512(low), high);
    }
    let m = _mm512_set1_epi64(mult as i64);
    // Even lanes, then odd ones, each widened to 64 bits.
    let even = _mm512_mul_epi32(v, m);
    let odd = _mm512_mul_epi32(_mm512_srli_epi64::<32>(v), m);
    let (even, odd) = (round_even(even, s), round_even(odd, s));
    _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64::<32>(odd))
}

/// `p · 2^-s` rounded half to even (a left shift for `s ≤ 0`).
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn round_even(p: __m512i, s: isize) -> __m512i {
    if s <= 0 {
        return _mm512_sllv_epi64(p, _mm512_set1_epi64(-s as i64));
    }
    // |p| + half − 1 + (bit s of |p|), shifted: ties go to the even neighbour.
    let right = _mm512_set1_epi64(s as i64);
    let a = _mm512_abs_epi64(p);
    let odd = _mm512_and_si512(_mm512_srlv_epi64(a, right), _mm512_set1_epi64(1));
    let half = _mm512_set1_epi64((1i64 << (s - 1)) - 1);
    let r = _mm512_srlv_epi64(_mm512_add_epi64(_mm512_add_epi64(a, half), odd), right);
    let negative = _mm512_cmplt_epi64_mask(p, _mm512_setzero_si512());
    _mm512_mask_sub_epi64(r, negative, _mm512_setzero_si512(), r)
}

/// Stores the tile's 32- or 8-bit values (the low byte, as tract's kernels store them)
/// where `store` says: a row at once when its columns are contiguous.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn store_tile(tile: &Tile, store: OutputStoreKer) {
    // SAFETY: tract's store of MR × NR items of `item_size` bytes at these strides.
    unsafe {
        let contiguous = store.col_byte_stride == store.item_size as isize;
        for (r, &row) in tile.iter().enumerate() {
            let at = store.ptr.offset(store.row_byte_stride * r as isize);
            match (store.item_size, contiguous) {
                (4, true) => _mm512_storeu_si512(at.cast(), row),
                (1, true) => _mm_storeu_si128(at.cast(), _mm512_cvtepi32_epi8(row)),
                (size, _) => {
                    let mut values = [0i32; NR];
                    _mm512_storeu_si512(values.as_mut_ptr().cast(), row);
                    for (c, v) in values.into_iter().enumerate() {
                        let to = at.offset(store.col_byte_stride * c as isize);
                        match size {
                            4 => to.cast::<i32>().write_unaligned(v),
                            _ => *to = v as u8,
                        }
                    }
                }
            }
        }
    }
}

/// A's panel header: its rows' 128 · Σₖ A[m, k], as i32.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct RowSums;

impl PanelHeader for RowSums {
    const R: usize = MR;
    const BYTES: usize = HEADER;
    const NAME: &'static str = "row-sums";

    fn write(body: &[u8], header: &mut [u8]) {
        let mut sums = [0i32; MR];
        for block in body.chunks_exact(4 * MR) {
            for (sum, row) in sums.iter_mut().zip(block.chunks_exact(4)) {
                *sum += row.iter().map(|&b| b as i8 as i32).sum::<i32>();
            }
        }
        for (at, sum) in header.chunks_exact_mut(4).zip(sums) {
            at.copy_from_slice(&(128 * sum).to_ne_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{runs_here, scale_even, EXACT_IN_F64, NAME, TIER};
    use crate::model::kernels::own_kernel_tests as own;
    use std::arch::x86_64::{_mm512_loadu_si512, _mm512_storeu_si512};

    #[test]
    fn rescaling_rounds_as_tracts_scaler() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            eprintln!("this CPU has no AVX-512 F: the rescaling never runs here");
            return;
        }
        // Both ends of the f64 path and past them, sixteen at once (a vector with one past
        // them takes the 64-bit path).
        let ends = [
            EXACT_IN_F64,
            -EXACT_IN_F64,
            EXACT_IN_F64 + 1,
            -EXACT_IN_F64 - 1,
        ];
        let mut extremes: Vec<i32> = ends.iter().flat_map(|&e| [e; 16]).collect();
        extremes.extend([i32::MIN, i32::MIN + 1, i32::MAX, 123_456_789, -987_654_321]);
        own::rescaling_equals_tracts::<16>(&extremes, |sixteen, shift, mult| {
            let mut ours = [0i32; 16];
            // SAFETY: AVX-512 F, checked above; loads and stores of sixteen i32.
            unsafe {
                let v = _mm512_loadu_si512(sixteen.as_ptr().cast());
                _mm512_storeu_si512(ours.as_mut_ptr().cast(), scale_even(v, shift, mult));
            }
            ours
        });
    }

    /// Where the machine has no AVX-512 VNNI the kernel cannot run: said, not skipped
    /// silently, and the other tests of the kernel choice still cover the machine.
    fn here() -> bool {
        if !runs_here() {
            eprintln!("{NAME}: this CPU has no AVX-512 VNNI; the kernel is never offered here");
        }
        runs_here()
    }

    #[test]
    fn products_and_fused_steps_equal_tracts() {
        if here() {
            own::products_and_fused_steps_equal_tracts(TIER, NAME);
        }
    }

    #[test]
    fn the_largest_products_do_not_overflow() {
        if here() {
            own::the_largest_products_do_not_overflow(TIER, NAME);
        }
    }
}
