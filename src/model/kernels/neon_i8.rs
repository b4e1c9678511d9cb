//! iscamd's int8 matrix kernel for aarch64 cores without the dot-product instructions
//! (Cortex-A72 of a Raspberry Pi 4, A53, A55 without them).
//!
//! tract's kernel for them (`arm64simd_mmm_i32_8x8`) widens every byte to 16 bits and
//! multiplies one of A by four of B per `smlal`: 3.2 multiply-adds per instruction in its
//! inner loop, which made an int8 SqueezeNet pass take more instructions than the f32 one on
//! an emulated A72 (docs/benchmarks.md, "ARM"). This one multiplies eight bytes by eight per
//! instruction (`smull`, `smlal2`), adds the products of two K-blocks in 16 bits and only
//! then widens them into the 32-bit sums (`sadalp`) — the scheme of gemmlowp's and ONNX
//! Runtime's NEON kernels: about 4.5 multiply-adds per instruction.
//!
//! Both operands keep tract's K=4-interleaved layout (`PackedI8K4`): B's four columns of a
//! block are rotated (`ext`) so that one `smull` meets every row with every column. Two
//! products of −128 × −128 overflow a 16-bit sum, so blocks are summed in pairs only over
//! panels of A without a −128 — weights from symmetric quantizers have none — which A's
//! packer records in each panel's header ([`Pairs`]); other panels take one block at a
//! time. The steps tract fuses after a convolution's product (bias, zero-point terms, its
//! per-tensor rescaling, the clamp, the store) run with the tile in registers, computed as
//! tract computes them, to the bit; rarer steps run tract's own generic kernel.
//!
//! Never in tract's ladder: iscamd measures it against tract's kernels as one more candidate
//! ([`TIER`]), per model, and runs it where it was faster.

use std::arch::aarch64::*;
use std::sync::LazyLock;

use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::tract_linalg;
use tract_onnx::tract_core::tract_linalg::mmm::{
    DynKernel, FusedKerSpec, OutputStoreKer, RoundingPolicy,
};
use tract_onnx::tract_core::tract_linalg::pack::{PackedI8K4, Packing};

use super::generic_steps;
use super::headed::{self, HeadedI8K4, PanelHeader};
use super::registry::outside_tracts_ranking;

/// The tier iscamd asks for this kernel.
pub const TIER: &str = "iscamd-neon-i8";

/// The kernel's name in tract's registry.
const NAME: &str = "iscamd_neon_mmm_i32_8x4";

/// Rows of A per tile (and per panel of A), columns of B.
const MR: usize = 8;
const NR: usize = 4;

/// Bytes before each panel of A: the first says whether the panel may sum block pairs.
const HEADER: usize = 16;

static KERNEL: LazyLock<DynKernel<MR, NR, i32>> = LazyLock::new(|| {
    let kernel = DynKernel::<MR, NR, i32>::new(NAME, kernel, i32::packing(MR), i32::packing(NR))
        .with_packing(HeadedI8K4::<Pairs>::new(), PackedI8K4::new(NR))
        .with_store::<i8>();
    outside_tracts_ranking(kernel, tract_linalg::isa::Arch::Aarch64)
});

/// The index of (A's `HeadedI8K4<Pairs>`, `PackedI8K4`) in the kernel's packings (0 is
/// `new`'s i32 pair).
const PACKING: usize = 1;

inventory::submit! {
    tract_linalg::mmm_routines::MmmRoutine { make: || KERNEL.mmm() }
}

inventory::submit! {
    tract_linalg::mmm_tiers::MmmTier {
        arch: Some(tract_linalg::isa::Arch::Aarch64),
        // Unused by tract's aarch64 tiers (1–8); never in its ladder anyway (`applies`).
        precedence: 9,
        name: TIER,
        applies: |_| false,
        preferred: |_, accumulator, query, _| headed::takes(accumulator, query).then_some(NAME),
    }
}

/// A tile of C: row r's four columns in `[r]`.
type Tile = [int32x4_t; MR];

/// Runs a tile's steps, the common ones here with NEON; the others (leaky ReLU, shifts,
/// adding another matrix, rescaling with a rounding other than tract's ONNX one) on
/// tract's generic kernel. Returns 0, or tract's error code of the step that failed.
unsafe fn kernel(specs: &[FusedKerSpec<i32>]) -> isize {
    use FusedKerSpec as S;
    // SAFETY (whole body): tract's steps for one tile, their pointers to MR rows, NR
    // columns, or a tile's stores, as its kernels receive them; NEON is aarch64's baseline.
    unsafe {
        if common_tile(specs) {
            return 0;
        }
        let mut tile: Tile = [vdupq_n_s32(0); MR];
        for spec in specs {
            match *spec {
                S::Done => return 0,
                S::Clear => tile = [vdupq_n_s32(0); MR],
                S::LoadTile(col_major, _) => each(&mut tile, |_, r| {
                    let row: [i32; NR] = std::array::from_fn(|c| *col_major.add(c * MR + r));
                    vld1q_s32(row.as_ptr())
                }),
                S::AddMatMul { k, pa, pb, packing } => {
                    if packing != PACKING {
                        return 1;
                    }
                    add_mat_mul(&mut tile, k, pa, pb);
                }
                S::ScalarMin(x) => each(&mut tile, |v, _| vminq_s32(v, vdupq_n_s32(x))),
                S::ScalarMax(x) => each(&mut tile, |v, _| vmaxq_s32(v, vdupq_n_s32(x))),
                S::ScalarAdd(x) => each(&mut tile, |v, _| vaddq_s32(v, vdupq_n_s32(x))),
                S::ScalarMul(x) => each(&mut tile, |v, _| vmulq_s32(v, vdupq_n_s32(x))),
                S::ScalarSub(x) => each(&mut tile, |v, _| vsubq_s32(vdupq_n_s32(x), v)),
                S::ScalarSubF(x) => each(&mut tile, |v, _| vsubq_s32(v, vdupq_n_s32(x))),
                S::PerRowMin(p) => each(&mut tile, |v, r| vminq_s32(v, vdupq_n_s32(*p.add(r)))),
                S::PerRowMax(p) => each(&mut tile, |v, r| vmaxq_s32(v, vdupq_n_s32(*p.add(r)))),
                S::PerRowAdd(p) => each(&mut tile, |v, r| vaddq_s32(v, vdupq_n_s32(*p.add(r)))),
                S::PerRowMul(p) => each(&mut tile, |v, r| vmulq_n_s32(v, *p.add(r))),
                S::PerRowSub(p) => each(&mut tile, |v, r| vsubq_s32(vdupq_n_s32(*p.add(r)), v)),
                S::PerRowSubF(p) => each(&mut tile, |v, r| vsubq_s32(v, vdupq_n_s32(*p.add(r)))),
                S::PerColMin(p) => per_col(&mut tile, p, |v, c| vminq_s32(v, c)),
                S::PerColMax(p) => per_col(&mut tile, p, |v, c| vmaxq_s32(v, c)),
                S::PerColAdd(p) => per_col(&mut tile, p, |v, c| vaddq_s32(v, c)),
                S::PerColMul(p) => per_col(&mut tile, p, |v, c| vmulq_s32(v, c)),
                S::PerColSub(p) => per_col(&mut tile, p, |v, c| vsubq_s32(c, v)),
                S::PerColSubF(p) => per_col(&mut tile, p, |v, c| vsubq_s32(v, c)),
                S::AddRowColProducts(rows, cols) => {
                    let c = vld1q_s32(cols);
                    each(&mut tile, |v, r| vmlaq_n_s32(v, c, *rows.add(r)))
                }
                S::QScale(shift, RoundingPolicy::Even, mult) if scales_exactly(shift) => {
                    each(&mut tile, |v, _| scale_even(v, shift, mult))
                }
                S::Store(store) if [1, 4].contains(&store.item_size) => store_tile(&tile, store),
                other => {
                    let err = on_generic_kernel(&mut tile, other);
                    if err != 0 {
                        return err;
                    }
                }
            }
        }
        0
    }
}

/// The tile of nearly every product, run start to end with the tile in registers, where
/// the loop over steps keeps it in memory: the product, a constant per row or column added
/// (the bias), stored; or that, a constant subtracted (the zero points' term), tract's
/// per-tensor rescaling and the clamp (a per-tensor int8 convolution). False, and nothing
/// done, for any other list of steps.
#[inline(always)]
unsafe fn common_tile(specs: &[FusedKerSpec<i32>]) -> bool {
    use FusedKerSpec as S;
    let [S::Clear, S::AddMatMul {
        k,
        pa,
        pb,
        packing: PACKING,
    }, ref rest @ ..] = *specs
    else {
        return false;
    };
    let (added, store) = match *rest {
        [S::Store(store), S::Done] => (PerLine::Nothing, store),
        [S::PerRowAdd(p), S::Store(store), S::Done] => (PerLine::Row(p), store),
        [S::PerColAdd(p), S::Store(store), S::Done] => (PerLine::Col(p), store),
        _ => {
            let Some((after, store)) = After::of(rest) else {
                return false;
            };
            // SAFETY: tract's panels, constants and store for this tile.
            unsafe { requantised_tile(k, pa, pb, after, store) };
            return true;
        }
    };
    if ![1, 4].contains(&store.item_size) {
        return false;
    }
    // SAFETY: as above.
    unsafe { one_tile(k, pa, pb, added, store) };
    true
}

/// [`common_tile`]'s product with a constant per row or column added, in a function small
/// enough to keep the tile in registers.
#[inline(never)]
unsafe fn one_tile(k: usize, pa: *const u8, pb: *const u8, added: PerLine, store: OutputStoreKer) {
    // SAFETY: as `common_tile`'s.
    unsafe {
        let mut tile = products(k, pa, pb);
        added.apply(&mut tile, |v, c| vaddq_s32(v, c));
        store_tile(&tile, store);
    }
}

/// A constant per row or per column of the tile.
#[derive(Clone, Copy)]
enum PerLine {
    Nothing,
    Row(*const i32),
    Col(*const i32),
}

impl PerLine {
    /// `row = f(row, constants)` for every row of the tile.
    #[inline(always)]
    unsafe fn apply(self, tile: &mut Tile, f: impl Fn(int32x4_t, int32x4_t) -> int32x4_t) {
        // SAFETY: tract's pointer to MR (row) or NR (column) values.
        unsafe {
            match self {
                PerLine::Nothing => {}
                PerLine::Row(p) => each(tile, |v, r| f(v, vdupq_n_s32(*p.add(r)))),
                PerLine::Col(p) => per_col(tile, p, f),
            }
        }
    }
}

/// The steps [`common_tile`] runs after the product, in this order.
#[derive(Clone, Copy)]
struct After {
    add: PerLine,
    subtract: PerLine,
    /// tract's `QScale` (shift, multiplier), round half to even.
    scale: Option<(isize, i32)>,
    low: i32,
    high: i32,
}

impl After {
    /// The steps after the product and the store, when they are the common ones: tract's
    /// lowering of a convolution and of its per-tensor requantisation.
    fn of(mut rest: &[FusedKerSpec<i32>]) -> Option<(After, OutputStoreKer)> {
        use FusedKerSpec as S;
        let mut after = After {
            add: PerLine::Nothing,
            subtract: PerLine::Nothing,
            scale: None,
            low: i32::MIN,
            high: i32::MAX,
        };
        match *rest {
            [S::PerRowAdd(p), ref tail @ ..] => (after.add, rest) = (PerLine::Row(p), tail),
            [S::PerColAdd(p), ref tail @ ..] => (after.add, rest) = (PerLine::Col(p), tail),
            _ => {}
        }
        match *rest {
            [S::PerRowSubF(p), ref tail @ ..] => (after.subtract, rest) = (PerLine::Row(p), tail),
            [S::PerColSubF(p), ref tail @ ..] => (after.subtract, rest) = (PerLine::Col(p), tail),
            _ => {}
        }
        if let [S::QScale(shift, RoundingPolicy::Even, mult), ref tail @ ..] = *rest {
            if !scales_exactly(shift) {
                return None;
            }
            (after.scale, rest) = (Some((shift, mult)), tail);
        }
        // A clamp: min then max, or max then min, the same while low ≤ high.
        for _ in 0..2 {
            match *rest {
                [S::ScalarMin(x), ref tail @ ..] if after.high == i32::MAX => {
                    (after.high, rest) = (x, tail)
                }
                [S::ScalarMax(x), ref tail @ ..] if after.low == i32::MIN => {
                    (after.low, rest) = (x, tail)
                }
                _ => {}
            }
        }
        match *rest {
            [S::Store(store), S::Done] if [1, 4].contains(&store.item_size) => {
                (after.low <= after.high).then_some((after, store))
            }
            _ => None,
        }
    }
}

/// [`common_tile`]'s requantised product, apart from [`one_tile`] so that neither's
/// registers crowd the other's.
#[inline(never)]
unsafe fn requantised_tile(
    k: usize,
    pa: *const u8,
    pb: *const u8,
    after: After,
    store: OutputStoreKer,
) {
    // SAFETY: as `common_tile`'s.
    unsafe {
        let mut tile = products(k, pa, pb);
        after.add.apply(&mut tile, |v, c| vaddq_s32(v, c));
        after.subtract.apply(&mut tile, |v, c| vsubq_s32(v, c));
        if let Some((shift, mult)) = after.scale {
            each(&mut tile, |v, _| scale_even(v, shift, mult));
        }
        if after.low != i32::MIN {
            each(&mut tile, |v, _| vmaxq_s32(v, vdupq_n_s32(after.low)));
        }
        if after.high != i32::MAX {
            each(&mut tile, |v, _| vminq_s32(v, vdupq_n_s32(after.high)));
        }
        store_tile(&tile, store);
    }
}

/// `row = f(row, columns)` for every row of the tile, `columns` the NR values at `p`.
#[inline(always)]
unsafe fn per_col(tile: &mut Tile, p: *const i32, f: impl Fn(int32x4_t, int32x4_t) -> int32x4_t) {
    // SAFETY: the caller's pointer to NR values; NEON is part of aarch64's baseline.
    let columns = unsafe { vld1q_s32(p) };
    each(tile, |v, _| f(v, columns));
}

/// `row = f(row, r)` for every row `r` of the tile.
#[inline(always)]
fn each(tile: &mut Tile, f: impl Fn(int32x4_t, usize) -> int32x4_t) {
    for (r, row) in tile.iter_mut().enumerate() {
        *row = f(*row, r);
    }
}

/// Whether [`scale_even`] computes tract's `QScale` with this shift: 64-bit products
/// shifted right by at most 62 bits, as any scale of an int8 model has them.
fn scales_exactly(shift: isize) -> bool {
    shift + 31 <= 62
}

/// tract's `QScale` with round-half-to-even (its rounding for ONNX models): `v · mult ·
/// 2^-(31 + shift)`, exact as its generic kernel computes it in 64 bits — a rounding shift
/// (ties upwards), less one where a tie was rounded to an odd value. The shifts of int8
/// models (1–30) take four lanes at once in 32 bits.
#[inline(always)]
unsafe fn scale_even(v: int32x4_t, shift: isize, mult: i32) -> int32x4_t {
    // SAFETY: NEON is part of aarch64's baseline.
    unsafe {
        if (1..=30).contains(&shift) && mult > 0 {
            // v · mult = high · 2^31 + low, low in [0, 2^31): the doubling high half
            // (truncated; no saturation with a positive multiplier) and the low bits.
            let m = vdupq_n_s32(mult);
            let high = vqdmulhq_s32(v, m);
            let low = vandq_s32(vmulq_s32(v, m), vdupq_n_s32(i32::MAX));
            let up = vrshlq_s32(high, vdupq_n_s32(-(shift as i32)));
            // Rounded up from half way by `high`'s bits: a tie only if `low` is zero.
            let fraction = vandq_s32(high, vdupq_n_s32((1 << shift) - 1));
            let half_way = vceqq_s32(fraction, vdupq_n_s32(1 << (shift - 1)));
            let tie = vreinterpretq_s32_u32(vandq_u32(half_way, vceqzq_s32(low)));
            return vsubq_s32(up, vandq_s32(tie, vandq_s32(up, vdupq_n_s32(1))));
        }
        let (low, high) = (
            vmull_s32(vget_low_s32(v), vdup_n_s32(mult)),
            vmull_high_s32(v, vdupq_n_s32(mult)),
        );
        let s = (shift + 31) as i64;
        let round = |p: int64x2_t| -> int32x2_t {
            if s <= 0 {
                return vmovn_s64(vshlq_s64(p, vdupq_n_s64(-s)));
            }
            let up = vrshlq_s64(p, vdupq_n_s64(-s));
            let fraction = vandq_s64(p, vdupq_n_s64((1 << s) - 1));
            let tie = vreinterpretq_s64_u64(vceqq_s64(fraction, vdupq_n_s64(1 << (s - 1))));
            let odd_tie = vandq_s64(tie, vandq_s64(up, vdupq_n_s64(1)));
            vmovn_s64(vsubq_s64(up, odd_tie))
        };
        vcombine_s32(round(low), round(high))
    }
}

/// Stores the tile's 32- or 8-bit values (the low byte, as tract's kernels store them)
/// where `store` says: a row's four at once when they are contiguous, a column's eight
/// when those are (the 1×1 convolutions whose activations are A write their output so).
#[inline(always)]
unsafe fn store_tile(tile: &Tile, store: OutputStoreKer) {
    // SAFETY: tract's store of MR × NR items of `item_size` bytes at these strides.
    unsafe {
        let contiguous = store.col_byte_stride == store.item_size as isize;
        if !contiguous && store.row_byte_stride == store.item_size as isize {
            return store_columns(tile, store);
        }
        for (r, &row) in tile.iter().enumerate() {
            let at = store.ptr.offset(store.row_byte_stride * r as isize);
            match (store.item_size, contiguous) {
                (4, true) => vst1q_s32(at.cast(), row),
                (1, true) => {
                    let bytes = vmovn_s16(vcombine_s16(vmovn_s32(row), vdup_n_s16(0)));
                    vst1_lane_s32::<0>(at.cast(), vreinterpret_s32_s8(bytes));
                }
                (size, _) => {
                    let mut values = [0i32; NR];
                    vst1q_s32(values.as_mut_ptr(), row);
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

/// [`store_tile`] where each column's MR values are contiguous: the tile transposed, four
/// rows at a time.
#[inline(always)]
unsafe fn store_columns(tile: &Tile, store: OutputStoreKer) {
    // SAFETY: as `store_tile`'s, rows `item_size` bytes apart.
    unsafe {
        let transposed = |r: &[int32x4_t]| -> [int32x4_t; NR] {
            let (t0, t1) = (vtrn1q_s32(r[0], r[1]), vtrn2q_s32(r[0], r[1]));
            let (t2, t3) = (vtrn1q_s32(r[2], r[3]), vtrn2q_s32(r[2], r[3]));
            let pairs = |x: int32x4_t, y: int32x4_t, high: bool| {
                let (x, y) = (vreinterpretq_s64_s32(x), vreinterpretq_s64_s32(y));
                vreinterpretq_s32_s64(if high {
                    vtrn2q_s64(x, y)
                } else {
                    vtrn1q_s64(x, y)
                })
            };
            [
                pairs(t0, t2, false),
                pairs(t1, t3, false),
                pairs(t0, t2, true),
                pairs(t1, t3, true),
            ]
        };
        let (top, bottom) = (transposed(&tile[..4]), transposed(&tile[4..]));
        for c in 0..NR {
            let at = store.ptr.offset(store.col_byte_stride * c as isize);
            if store.item_size == 4 {
                vst1q_s32(at.cast(), top[c]);
                vst1q_s32(at.add(16).cast(), bottom[c]);
            } else {
                let halves = vcombine_s16(vmovn_s32(top[c]), vmovn_s32(bottom[c]));
                vst1_s8(at.cast(), vmovn_s16(halves));
            }
        }
    }
}

/// Runs `step` on `tile` with tract's generic kernel ([`generic_steps`]).
unsafe fn on_generic_kernel(tile: &mut Tile, step: FusedKerSpec<i32>) -> isize {
    let mut values = [[0i32; NR]; MR];
    // SAFETY (block): NEON stores and loads of the tile's rows of NR i32; the step is
    // tract's for this tile.
    unsafe {
        for (row, values) in tile.iter().zip(&mut values) {
            vst1q_s32(values.as_mut_ptr(), *row);
        }
        let err = generic_steps::on_generic_kernel(&mut values, step);
        for (row, values) in tile.iter_mut().zip(&values) {
            *row = vld1q_s32(values.as_ptr());
        }
        err
    }
}

/// `tile += A·B`, in a function of its own for the loop over a tile's steps (returning the
/// products instead cost that loop more: 356 M instructions against 341 M per pass of a
/// per-tensor SqueezeNet on an emulated A72).
#[inline(never)]
unsafe fn add_mat_mul(tile: &mut Tile, k: usize, pa: *const u8, pb: *const u8) {
    // SAFETY: the caller's.
    let products = unsafe { products(k, pa, pb) };
    each(tile, |v, r| vaddq_s32(v, products[r]));
}

/// A·B over `k`, A's panel at `pa` (header first), B's at `pb`.
#[inline(always)]
unsafe fn products(k: usize, pa: *const u8, pb: *const u8) -> Tile {
    // acc[4s + 2h + j]: rotation s of B, rows 4h..4h+4 of A; j = 0 rows 4h, 4h+1, j = 1
    // rows 4h+2, 4h+3, two 32-bit partial sums per (row, column).
    let mut acc = [vdupq_n_s32(0); 16];
    let mut tile: Tile = [vdupq_n_s32(0); MR];
    let mut blocks = k.div_ceil(4);
    // SAFETY (whole body): the panels hold `blocks` blocks of 32 (A) and 16 (B) bytes.
    unsafe {
        let pairs = *pa == 1;
        let mut a = pa.add(HEADER).cast::<i8>();
        let mut b = pb.cast::<i8>();
        if pairs && blocks >= 2 {
            let n = blocks / 2;
            block_pairs(&mut acc, a, b, n);
            a = a.add(n * 2 * 4 * MR);
            b = b.add(n * 2 * 4 * NR);
            blocks -= 2 * n;
        }
        while blocks > 0 {
            let a2 = vld1q_s8_x2(a);
            let b1 = vld1q_s8(b);
            let a0 = [a2.0, a2.1];
            single::<0>(&mut acc[0..4], a0, b1);
            single::<4>(&mut acc[4..8], a0, b1);
            single::<8>(&mut acc[8..12], a0, b1);
            single::<12>(&mut acc[12..16], a0, b1);
            a = a.add(4 * MR);
            b = b.add(4 * NR);
            blocks -= 1;
        }
        for h in 0..2 {
            // Diagonal s: lane i is row 4h + i, column (i + s) mod 4.
            let [d0, d1, d2, d3] =
                [0, 1, 2, 3].map(|s| vpaddq_s32(acc[4 * s + 2 * h], acc[4 * s + 2 * h + 1]));
            // Transposed, row i holds its columns i, i + 1, … (mod 4): rotated into place.
            let (t01, t23) = (vtrnq_s32(d0, d1), vtrnq_s32(d2, d3));
            let rows = [
                vcombine_s32(vget_low_s32(t01.0), vget_low_s32(t23.0)),
                vcombine_s32(vget_low_s32(t01.1), vget_low_s32(t23.1)),
                vcombine_s32(vget_high_s32(t01.0), vget_high_s32(t23.0)),
                vcombine_s32(vget_high_s32(t01.1), vget_high_s32(t23.1)),
            ];
            let rows = [
                rows[0],
                vextq_s32::<3>(rows[1], rows[1]),
                vextq_s32::<2>(rows[2], rows[2]),
                vextq_s32::<1>(rows[3], rows[3]),
            ];
            tile[4 * h..4 * h + 4].copy_from_slice(&rows);
        }
        tile
    }
}

/// `n` ≥ 1 pairs of K-blocks from `a` and `b`, each product of a pair's first block summed
/// with the second's in 16 bits: per pair, two loads, six rotations of B, 32 multiplies and
/// 16 widening adds (`acc` as in [`products`]). Written out because the compiler's own
/// schedule of the same intrinsics spilled two accumulators and rotated A as well as B: 66
/// instructions per pair instead of these 56 and the loop's two.
#[inline(always)]
unsafe fn block_pairs(acc: &mut [int32x4_t; 16], a: *const i8, b: *const i8, n: usize) {
    // SAFETY: the caller's panels hold `n` pairs of blocks of 32 (A) and 16 (B) bytes at
    // `a` and `b`; v8–v11 are declared clobbered, so the compiler saves what it keeps there.
    unsafe {
        std::arch::asm!(
            "2:",
            // v0, v1: A's first block (rows 0–3, 4–7), v2, v3 its second; v4, v5: B's.
            "ld1 {{v0.16b, v1.16b, v2.16b, v3.16b}}, [{a}], #64",
            "ld1 {{v4.16b, v5.16b}}, [{b}], #32",
            "smull  v8.8h,  v0.8b,  v4.8b",
            "smull2 v9.8h,  v0.16b, v4.16b",
            "smull  v10.8h, v1.8b,  v4.8b",
            "smull2 v11.8h, v1.16b, v4.16b",
            "ext    v6.16b, v4.16b, v4.16b, #4",
            "ext    v7.16b, v5.16b, v5.16b, #4",
            "smlal  v8.8h,  v2.8b,  v5.8b",
            "smlal2 v9.8h,  v2.16b, v5.16b",
            "smlal  v10.8h, v3.8b,  v5.8b",
            "smlal2 v11.8h, v3.16b, v5.16b",
            "sadalp v16.4s, v8.8h",
            "sadalp v17.4s, v9.8h",
            "sadalp v18.4s, v10.8h",
            "sadalp v19.4s, v11.8h",
            "smull  v8.8h,  v0.8b,  v6.8b",
            "smull2 v9.8h,  v0.16b, v6.16b",
            "smull  v10.8h, v1.8b,  v6.8b",
            "smull2 v11.8h, v1.16b, v6.16b",
            "ext    v6.16b, v4.16b, v4.16b, #8",
            "smlal  v8.8h,  v2.8b,  v7.8b",
            "smlal2 v9.8h,  v2.16b, v7.16b",
            "smlal  v10.8h, v3.8b,  v7.8b",
            "smlal2 v11.8h, v3.16b, v7.16b",
            "ext    v7.16b, v5.16b, v5.16b, #8",
            "sadalp v20.4s, v8.8h",
            "sadalp v21.4s, v9.8h",
            "sadalp v22.4s, v10.8h",
            "sadalp v23.4s, v11.8h",
            "smull  v8.8h,  v0.8b,  v6.8b",
            "smull2 v9.8h,  v0.16b, v6.16b",
            "smull  v10.8h, v1.8b,  v6.8b",
            "smull2 v11.8h, v1.16b, v6.16b",
            "ext    v6.16b, v4.16b, v4.16b, #12",
            "smlal  v8.8h,  v2.8b,  v7.8b",
            "smlal2 v9.8h,  v2.16b, v7.16b",
            "smlal  v10.8h, v3.8b,  v7.8b",
            "smlal2 v11.8h, v3.16b, v7.16b",
            "ext    v7.16b, v5.16b, v5.16b, #12",
            "sadalp v24.4s, v8.8h",
            "sadalp v25.4s, v9.8h",
            "sadalp v26.4s, v10.8h",
            "sadalp v27.4s, v11.8h",
            "smull  v8.8h,  v0.8b,  v6.8b",
            "smull2 v9.8h,  v0.16b, v6.16b",
            "smull  v10.8h, v1.8b,  v6.8b",
            "smull2 v11.8h, v1.16b, v6.16b",
            "smlal  v8.8h,  v2.8b,  v7.8b",
            "smlal2 v9.8h,  v2.16b, v7.16b",
            "smlal  v10.8h, v3.8b,  v7.8b",
            "smlal2 v11.8h, v3.16b, v7.16b",
            "subs   {n}, {n}, #1",
            "sadalp v28.4s, v8.8h",
            "sadalp v29.4s, v9.8h",
            "sadalp v30.4s, v10.8h",
            "sadalp v31.4s, v11.8h",
            "b.ne   2b",
            a = inout(reg) a => _,
            b = inout(reg) b => _,
            n = inout(reg) n => _,
            inout("v16") acc[0],
            inout("v17") acc[1],
            inout("v18") acc[2],
            inout("v19") acc[3],
            inout("v20") acc[4],
            inout("v21") acc[5],
            inout("v22") acc[6],
            inout("v23") acc[7],
            inout("v24") acc[8],
            inout("v25") acc[9],
            inout("v26") acc[10],
            inout("v27") acc[11],
            inout("v28") acc[12],
            inout("v29") acc[13],
            inout("v30") acc[14],
            inout("v31") acc[15],
            out("v0") _,
            out("v1") _,
            out("v2") _,
            out("v3") _,
            out("v4") _,
            out("v5") _,
            out("v6") _,
            out("v7") _,
            out("v8") _,
            out("v9") _,
            out("v10") _,
            out("v11") _,
            options(nostack, readonly),
        );
    }
}

/// One K-block with B rotated by `SHIFT` bytes.
#[inline(always)]
unsafe fn single<const SHIFT: i32>(acc: &mut [int32x4_t], a: [int8x16_t; 2], b: int8x16_t) {
    // SAFETY: NEON is part of aarch64's baseline.
    unsafe {
        let b = vextq_s8::<SHIFT>(b, b);
        for h in 0..2 {
            let low = vmull_s8(vget_low_s8(a[h]), vget_low_s8(b));
            let high = vmull_high_s8(a[h], b);
            acc[2 * h] = vpadalq_s16(acc[2 * h], low);
            acc[2 * h + 1] = vpadalq_s16(acc[2 * h + 1], high);
        }
    }
}

/// A's panel header: its first byte is 1 when the panel may sum block pairs — it holds no
/// −128, or the weights it is multiplied by hold none (−128 × −128 is the only product two
/// of which overflow 16 bits).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Pairs;

impl PanelHeader for Pairs {
    const R: usize = MR;
    const BYTES: usize = HEADER;
    const NAME: &'static str = "pairs";

    fn write(body: &[u8], header: &mut [u8]) {
        header.fill(0);
        header[0] = !body.contains(&(i8::MIN as u8)) as u8;
    }

    fn write_beside_clean(_: &[u8], header: &mut [u8]) {
        header.fill(0);
        header[0] = 1;
    }
}

#[cfg(test)]
mod tests {
    use super::{scale_even, scales_exactly, NAME, TIER};
    use crate::model::kernels::own_kernel_tests as own;
    use std::arch::aarch64::{vld1q_s32, vst1q_s32};

    #[test]
    fn rescaling_rounds_as_tracts_scaler() {
        let extremes = [
            i32::MIN + 1,
            i32::MAX,
            1 << 24,
            -(1 << 24),
            123_456_789,
            -987_654_321,
        ];
        // Shifts 1 to 30 take the 32-bit path; −31, 0 and 31 the 64-bit one.
        own::rescaling_equals_tracts::<4>(&extremes, |four, shift, mult| {
            let mut ours = [0i32; 4];
            assert!(scales_exactly(shift));
            // SAFETY: NEON loads and stores of four i32.
            unsafe {
                vst1q_s32(
                    ours.as_mut_ptr(),
                    scale_even(vld1q_s32(four.as_ptr()), shift, mult),
                )
            };
            ours
        });
    }

    #[test]
    fn products_and_fused_steps_equal_tracts() {
        own::products_and_fused_steps_equal_tracts(TIER, NAME);
    }

    #[test]
    fn pairs_of_the_largest_products_do_not_overflow() {
        // −127 × −128 twice is 32 512, the largest sum of two products a paired panel can
        // hold in 16 bits.
        own::the_largest_products_do_not_overflow(TIER, NAME);
    }
}
