//! iscamd's int8 matrix kernel for x86-64 cores with AMX (Intel since Sapphire Rapids).
//!
//! One `tdpbssd` multiplies a 16 × 64 tile of signed bytes by a 64 × 16 one into 16 × 16
//! i32: 16,384 multiply-adds, where a `vpdpbusd` does 64. The kernel keeps a 32 × 32 tile of
//! C in four tile registers, so that each pair of A and B tiles it loads feeds four
//! products. AMX reads A as rows of 64 bytes of K (iscamd's [`AmxRows`], written once, at
//! load, for the weights) and B as tract's `PackedI8K4` with 32 columns.
//!
//! AMX puts the rows of its A tiles in the rows of C's tile: the weights, written as rows
//! once at load, are the kernel's A where tract's convolution lowering makes them A, and
//! its B ([`NAME_T`], computing Cᵀ's tile) where tract's einsum lowering puts the
//! activations on A (a 1×1 convolution over an image larger than its output channels).
//! The activations then stay in tract's `PackedI8K4`, cheap to pack at every pass, and
//! the rows of the tile are the output's channels, contiguous where C's are. (An einsum
//! whose weights are the longer side gets [`NAME_T`] too: its activations are then packed
//! as rows at every pass; the measured choice weighs that.) tract's own
//! AMX kernels are left out of its pool (see `leave_out_amx`): they read past the end of
//! B's last panel.
//!
//! Never in tract's ladder: iscamd measures it against tract's kernels as one more
//! candidate ([`TIER`]), per model, and runs it where it was faster.

use std::arch::asm;
use std::arch::x86_64::*;
use std::sync::LazyLock;

use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::tract_linalg;
use tract_onnx::tract_core::tract_linalg::isa::{Arch, Isa, IsaReq};
use tract_onnx::tract_core::tract_linalg::mmm::{
    DynKernel, EagerPackedInput, FusedKerSpec, MMMInputFormat, MMMInputValue, OutputStoreKer,
    PackedExoticFact, PackedMatrixStorage, RoundingPolicy,
};
use tract_onnx::tract_core::tract_linalg::pack::{PackedI8K4, Packing};
use tract_onnx::tract_core::tract_linalg::WeightType;

use super::generic_steps;
use super::registry::{outside_tracts_ranking, transposed};
use super::vnni_i8::scale_even;

/// The tier iscamd asks for this kernel.
pub const TIER: &str = "iscamd-amx";

/// The kernel's name in tract's registry: the weights are A, rows of 64 bytes.
const NAME: &str = "iscamd_amx_mmm_i32_32x32";

/// The same kernel with the weights as B ([`AmxRows`]) and the activations as A
/// (`PackedI8K4`): it computes Cᵀ's tile, whose rows are C's columns.
const NAME_T: &str = "iscamd_amx_t_mmm_i32_32x32";

/// Rows of A per tile (and per panel of A), columns of B.
const MR: usize = 32;
const NR: usize = 32;

/// Bytes of K per tile row: what one `tdpbssd` sums over.
const KB: usize = 64;

/// Bytes of one block of K in a panel: of A (32 rows of 64 bytes), of B (16 groups of four
/// K for 32 columns).
const BLOCK: usize = MR * KB;

static KERNEL: LazyLock<DynKernel<MR, NR, i32>> =
    LazyLock::new(|| with_packing(NAME, kernel::<false>, AmxRows, PackedI8K4::new(NR)));
static KERNEL_T: LazyLock<DynKernel<MR, NR, i32>> =
    LazyLock::new(|| with_packing(NAME_T, kernel::<true>, PackedI8K4::new(MR), AmxRows));

fn with_packing(
    name: &'static str,
    kernel: unsafe fn(&[FusedKerSpec<i32>]) -> isize,
    a: impl MMMInputFormat,
    b: impl MMMInputFormat,
) -> DynKernel<MR, NR, i32> {
    let kernel = DynKernel::<MR, NR, i32>::new(name, kernel, i32::packing(MR), i32::packing(NR))
        .with_packing(a, b)
        .with_store::<i8>()
        .with_isa(IsaReq::ANY.needing(&[Isa::X86_64Avx512f]));
    outside_tracts_ranking(kernel, Arch::X86_64)
}

/// The index of the byte packings in the kernels' packings (0 is `new`'s i32 pair).
const PACKING: usize = 1;

inventory::submit! {
    tract_linalg::mmm_routines::MmmRoutine { make: || KERNEL.mmm() }
}

inventory::submit! {
    tract_linalg::mmm_routines::MmmRoutine { make: || KERNEL_T.mmm() }
}

inventory::submit! {
    tract_linalg::mmm_tiers::MmmTier {
        arch: Some(Arch::X86_64),
        precedence: 10,
        name: TIER,
        applies: |_| false,
        // tract's convolution lowering asks without a store type, and its weights are A;
        // its einsum lowering names one, and puts the longer side on A: the activations
        // of a 1×1 convolution over a larger image than it has output channels.
        preferred: |_, accumulator, query, _| {
            (super::headed::takes(accumulator, query) && runs_here())
                .then_some(if query.store.is_none() { NAME } else { NAME_T })
        },
    }
}

/// AMX with the kernel's permission to use it: the CPU has AMX-INT8 and AVX-512, and Linux
/// lets this process use the tile registers (`arch_prctl(ARCH_REQ_XCOMP_PERM)`).
pub fn runs_here() -> bool {
    static HERE: LazyLock<bool> = LazyLock::new(|| {
        // CPUID leaf 7: EDX bit 24 AMX-TILE, bit 25 AMX-INT8.
        let edx = __cpuid_count(7, 0).edx;
        let amx = edx & (1 << 24) != 0 && edx & (1 << 25) != 0;
        amx && is_x86_feature_detected!("avx512f") && tile_data_permitted()
    });
    *HERE
}

/// Asks Linux for the tile data state (XFEATURE_XTILEDATA, 18) once for the process.
fn tile_data_permitted() -> bool {
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let rc: i64;
    // SAFETY: the arch_prctl system call (158), which only changes what the process may use.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") 158i64 => rc,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            out("rcx") _,
            out("r11") _,
            options(nostack),
        );
    }
    rc == 0
}

/// The tile configuration: palette 1, all eight tiles 16 rows of 64 bytes.
#[repr(C, align(64))]
#[derive(PartialEq)]
struct TileConfig([u8; 64]);

const CONFIG: TileConfig = {
    let mut c = [0u8; 64];
    c[0] = 1;
    let mut t = 0;
    while t < 8 {
        c[16 + 2 * t] = KB as u8;
        c[48 + t] = 16;
        t += 1;
    }
    TileConfig(c)
};

/// Loads [`CONFIG`] unless the thread has it: another library on the thread (ONNX Runtime
/// uses AMX too) may have configured the tiles otherwise. `sttilecfg` costs a seventh of
/// `ldtilecfg`.
#[inline]
unsafe fn configure_tiles() {
    let mut now = TileConfig([0; 64]);
    // SAFETY: 64 bytes to write, 64 to read; AMX runs here (the tier's condition).
    unsafe {
        asm!("sttilecfg [{}]", in(reg) now.0.as_mut_ptr(), options(nostack));
        if now != CONFIG {
            asm!("ldtilecfg [{}]", in(reg) CONFIG.0.as_ptr(), options(nostack, readonly));
        }
    }
}

/// A tile of C, row-major, as `tilestored` writes it.
#[repr(C, align(64))]
struct Tile([[i32; NR]; MR]);

/// Where row `r` of the tile at `tile` starts.
#[inline]
unsafe fn row(tile: *mut Tile, r: usize) -> *mut i32 {
    // SAFETY: the caller's tile, r < MR; no reference to it is made.
    unsafe { std::ptr::addr_of_mut!((*tile).0[r]).cast() }
}

/// `$tile`'s 16-lane halves of rows, `$v` one of them, `$r` its row, `$h` which half (a
/// loop, not a closure: closures would not inline the AVX-512 intrinsics).
macro_rules! each {
    ($tile:ident, |$v:ident, $r:ident, $h:ident| $f:expr) => {
        for $r in 0..MR {
            for $h in 0..2 {
                let at = row($tile, $r).add(16 * $h).cast::<__m512i>();
                let $v = _mm512_load_si512(at);
                _mm512_store_si512(at, $f);
            }
        }
    };
}

/// Runs a tile's steps, the common ones here; the others on tract's generic kernel
/// ([`generic_steps`]). Returns 0, or tract's error code of the step that failed. With
/// `T`, the tile is Cᵀ's: every step is [`transposed`] first.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn kernel<const T: bool>(specs: &[FusedKerSpec<i32>]) -> isize {
    use FusedKerSpec as S;
    // SAFETY (whole body): tract's steps for one tile, their pointers to MR rows, NR
    // columns, or a tile's stores, as its kernels receive them; the tier is only offered
    // where AMX runs.
    unsafe {
        // Written whole before it is read: by `tilestored`, `LoadTile` or zeroing.
        let mut storage = std::mem::MaybeUninit::<Tile>::uninit();
        let tile = storage.as_mut_ptr();
        let mut zero = true;
        for spec in specs {
            let spec = &if T { transposed(*spec) } else { *spec };
            let reads_tile = !matches!(spec, S::Clear | S::AddMatMul { .. } | S::LoadTile(..));
            if zero && reads_tile {
                tile.write(Tile([[0; NR]; MR]));
                zero = false;
            }
            match *spec {
                S::Done => return 0,
                S::Clear => zero = true,
                // Column-major C is Cᵀ row-major.
                S::LoadTile(col_major, _) => {
                    zero = false;
                    for r in 0..MR {
                        for c in 0..NR {
                            *row(tile, r).add(c) = match T {
                                false => *col_major.add(c * MR + r),
                                true => *col_major.add(r * NR + c),
                            };
                        }
                    }
                }
                S::AddMatMul { k, pa, pb, packing } => {
                    if packing != PACKING {
                        return 1;
                    }
                    match T {
                        false => add_mat_mul(tile, zero, k, pa, pb),
                        true => add_mat_mul(tile, zero, k, pb, pa),
                    }
                    zero = false;
                }
                S::ScalarMin(x) => {
                    each!(tile, |v, _r, _h| _mm512_min_epi32(v, _mm512_set1_epi32(x)))
                }
                S::ScalarMax(x) => {
                    each!(tile, |v, _r, _h| _mm512_max_epi32(v, _mm512_set1_epi32(x)))
                }
                S::ScalarAdd(x) => {
                    each!(tile, |v, _r, _h| _mm512_add_epi32(v, _mm512_set1_epi32(x)))
                }
                S::ScalarMul(x) => {
                    each!(tile, |v, _r, _h| _mm512_mullo_epi32(
                        v,
                        _mm512_set1_epi32(x)
                    ))
                }
                S::ScalarSub(x) => {
                    each!(tile, |v, _r, _h| _mm512_sub_epi32(_mm512_set1_epi32(x), v))
                }
                S::ScalarSubF(x) => {
                    each!(tile, |v, _r, _h| _mm512_sub_epi32(v, _mm512_set1_epi32(x)))
                }
                S::PerRowMin(p) => each!(tile, |v, r, _h| _mm512_min_epi32(v, row_value(p, r))),
                S::PerRowMax(p) => each!(tile, |v, r, _h| _mm512_max_epi32(v, row_value(p, r))),
                S::PerRowAdd(p) => each!(tile, |v, r, _h| _mm512_add_epi32(v, row_value(p, r))),
                S::PerRowMul(p) => each!(tile, |v, r, _h| _mm512_mullo_epi32(v, row_value(p, r))),
                S::PerRowSub(p) => each!(tile, |v, r, _h| _mm512_sub_epi32(row_value(p, r), v)),
                S::PerRowSubF(p) => each!(tile, |v, r, _h| _mm512_sub_epi32(v, row_value(p, r))),
                S::PerColMin(p) => each!(tile, |v, _r, h| _mm512_min_epi32(v, col_values(p, h))),
                S::PerColMax(p) => each!(tile, |v, _r, h| _mm512_max_epi32(v, col_values(p, h))),
                S::PerColAdd(p) => each!(tile, |v, _r, h| _mm512_add_epi32(v, col_values(p, h))),
                S::PerColMul(p) => {
                    each!(tile, |v, _r, h| _mm512_mullo_epi32(v, col_values(p, h)))
                }
                S::PerColSub(p) => each!(tile, |v, _r, h| _mm512_sub_epi32(col_values(p, h), v)),
                S::PerColSubF(p) => {
                    each!(tile, |v, _r, h| _mm512_sub_epi32(v, col_values(p, h)))
                }
                S::AddRowColProducts(rows, cols) => each!(tile, |v, r, h| _mm512_add_epi32(
                    v,
                    _mm512_mullo_epi32(col_values(cols, h), row_value(rows, r))
                )),
                S::QScale(shift, RoundingPolicy::Even, mult) => {
                    each!(tile, |v, _r, _h| scale_even(v, shift, mult))
                }
                S::Store(store) if [1, 4].contains(&store.item_size) => store_tile(tile, store),
                other => {
                    let err = generic_steps::on_generic_kernel(&mut (*tile).0, other);
                    if err != 0 {
                        return err;
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

/// Half `h` of a per-column step's values.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn col_values(p: *const i32, h: usize) -> __m512i {
    // SAFETY: the caller's pointer to NR values.
    unsafe { _mm512_loadu_si512(p.add(16 * h).cast()) }
}

/// `tile += A·B` over `k`: A's panel at `pa` ([`AmxRows`]), B's at `pb` (`PackedI8K4`,
/// ⌈k/4⌉ groups of 4 bytes for each of NR columns).
#[inline]
unsafe fn add_mat_mul(tile: *mut Tile, zero: bool, k: usize, pa: *const u8, pb: *const u8) {
    let groups = k.div_ceil(4);
    let (full, rest) = (groups / 16, groups % 16);
    // B's last block, when short, read from a copy: the tile load reads 16 groups, and past
    // the last panel there may be nothing mapped. A's rows are zero past k, so what the
    // copy holds past B's groups adds nothing.
    #[repr(C, align(64))]
    struct Last([u8; BLOCK]);
    let mut last = std::mem::MaybeUninit::<Last>::uninit();
    // SAFETY (whole body): A's panel holds ⌈k/64⌉ blocks of BLOCK bytes, B's `groups`
    // groups of 4 · NR bytes; `last` a whole block; the tiles are configured before use.
    unsafe {
        let last_b = if rest > 0 {
            let to = last.as_mut_ptr().cast::<u8>();
            std::ptr::copy_nonoverlapping(pb.add(full * BLOCK), to, rest * 4 * NR);
            to.cast_const()
        } else {
            std::ptr::null()
        };
        configure_tiles();
        asm!(
            "mov {s64}, 64",
            "mov {s128}, 128",
            "test {zero}, {zero}",
            "jz 2f",
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            "jmp 3f",
            "2:",
            "tileloadd tmm0, [{c} + {s128}*1]",
            "tileloadd tmm1, [{c} + {s128}*1 + 64]",
            "tileloadd tmm2, [{c} + {s128}*1 + 2048]",
            "tileloadd tmm3, [{c} + {s128}*1 + 2112]",
            "3:",
            "test {full}, {full}",
            "jz 5f",
            "4:",
            "tileloadd tmm4, [{a} + {s64}*1]",
            "tileloadd tmm5, [{a} + {s64}*1 + 1024]",
            "tileloadd tmm6, [{b} + {s128}*1]",
            "tileloadd tmm7, [{b} + {s128}*1 + 64]",
            "tdpbssd tmm0, tmm4, tmm6",
            "tdpbssd tmm1, tmm4, tmm7",
            "tdpbssd tmm2, tmm5, tmm6",
            "tdpbssd tmm3, tmm5, tmm7",
            "add {a}, 2048",
            "add {b}, 2048",
            "dec {full}",
            "jnz 4b",
            "5:",
            "test {last}, {last}",
            "jz 6f",
            "tileloadd tmm4, [{a} + {s64}*1]",
            "tileloadd tmm5, [{a} + {s64}*1 + 1024]",
            "tileloadd tmm6, [{last} + {s128}*1]",
            "tileloadd tmm7, [{last} + {s128}*1 + 64]",
            "tdpbssd tmm0, tmm4, tmm6",
            "tdpbssd tmm1, tmm4, tmm7",
            "tdpbssd tmm2, tmm5, tmm6",
            "tdpbssd tmm3, tmm5, tmm7",
            "6:",
            "tilestored [{c} + {s128}*1], tmm0",
            "tilestored [{c} + {s128}*1 + 64], tmm1",
            "tilestored [{c} + {s128}*1 + 2048], tmm2",
            "tilestored [{c} + {s128}*1 + 2112], tmm3",
            c = in(reg) tile,
            a = inout(reg) pa => _,
            b = inout(reg) pb => _,
            full = inout(reg) full => _,
            last = in(reg) last_b,
            zero = in(reg) zero as u64,
            s64 = out(reg) _,
            s128 = out(reg) _,
            out("tmm0") _, out("tmm1") _, out("tmm2") _, out("tmm3") _,
            out("tmm4") _, out("tmm5") _, out("tmm6") _, out("tmm7") _,
            options(nostack),
        );
    }
}

/// Stores the tile's 32- or 8-bit values (the low byte, as tract's kernels store them)
/// where `store` says: a row at once when its columns are contiguous.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn store_tile(tile: *mut Tile, store: OutputStoreKer) {
    // SAFETY: tract's store of MR × NR items of `item_size` bytes at these strides.
    unsafe {
        let contiguous = store.col_byte_stride == store.item_size as isize;
        for r in 0..MR {
            let (row, at) = (
                row(tile, r),
                store.ptr.offset(store.row_byte_stride * r as isize),
            );
            match (store.item_size, contiguous) {
                (4, true) => {
                    for h in 0..2 {
                        let v = _mm512_load_si512(row.add(16 * h).cast());
                        _mm512_storeu_si512(at.add(64 * h).cast(), v);
                    }
                }
                (1, true) => {
                    for h in 0..2 {
                        let v = _mm512_load_si512(row.add(16 * h).cast());
                        _mm_storeu_si128(at.add(16 * h).cast(), _mm512_cvtepi32_epi8(v));
                    }
                }
                (size, _) => {
                    for c in 0..NR {
                        let v = *row.add(c);
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

/// A's packing for AMX: panels of 32 rows; in each, K in blocks of 64 bytes, a block the
/// panel's 32 rows of 64 bytes of K (zero past K), so that a tile of 16 rows is 1 KiB in
/// one piece.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct AmxRows;

impl AmxRows {
    fn panel_bytes(k: usize) -> usize {
        k.div_ceil(KB) * BLOCK
    }
}

impl std::fmt::Display for AmxRows {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "AmxRows[{MR}]")
    }
}

impl MMMInputFormat for AmxRows {
    fn prepare_tensor(&self, t: &Tensor, k_axis: usize, mn_axis: usize) -> TractResult<Tensor> {
        Ok(
            PackedMatrixStorage::new(self.prepare_one(t, k_axis, mn_axis)?)
                .into_tensor(t.datum_type()),
        )
    }

    fn prepare_one_view(
        &self,
        t: &TensorView,
        k_axis: usize,
        mn_axis: usize,
    ) -> TractResult<Box<dyn MMMInputValue>> {
        ensure!(
            t.datum_type().unquantized() == DatumType::I8,
            "{self} packs bytes"
        );
        let (k, mn) = (t.shape()[k_axis], t.shape()[mn_axis]);
        let (k_stride, mn_stride) = (t.strides()[k_axis], t.strides()[mn_axis]);
        let panel_bytes = Self::panel_bytes(k);
        // SAFETY: a fresh blob, zeroed before it is written.
        let mut blob = unsafe { Blob::new_for_size_and_align(mn.div_ceil(MR) * panel_bytes, 64) };
        let packed = blob.as_bytes_mut();
        packed.fill(0);
        // SAFETY: the view's bytes at its own strides, within its shape.
        let source = unsafe { t.as_ptr_unchecked::<i8>() };
        for row in 0..mn {
            let panel = (row / MR) * panel_bytes + (row % MR) * KB;
            for kk in 0..k {
                let from = row as isize * mn_stride + kk as isize * k_stride;
                // SAFETY: `row` < mn, `kk` < k.
                let byte = unsafe { *source.offset(from) };
                packed[panel + (kk / KB) * BLOCK + kk % KB] = byte as u8;
            }
        }
        Ok(Box::new(EagerPackedInput {
            fact: PackedExoticFact {
                format: Box::new(self.clone()),
                mn: mn.to_dim(),
                k,
            },
            packed: blob.into(),
            panel_bytes,
            mn,
        }))
    }

    fn precursor(&self) -> WeightType {
        WeightType::Plain(DatumType::I8)
    }

    fn r(&self) -> usize {
        MR
    }

    fn k_alignment(&self) -> usize {
        KB
    }

    fn merge_with<'o, 'a: 'o, 'b: 'o>(
        &'a self,
        other: &'b dyn MMMInputFormat,
    ) -> Option<&'o dyn MMMInputFormat> {
        other.downcast_ref::<Self>().map(|_| self as _)
    }

    fn mem_size(&self, k: TDim, mn: TDim) -> TDim {
        mn.divceil(MR) * Self::panel_bytes(k.to_usize().unwrap_or(0))
    }

    fn extract_at_mn_f16(&self, _: &EagerPackedInput, _: usize, _: &mut [f16]) -> TractResult<()> {
        bail!("{self} has no f16 extraction")
    }

    fn extract_at_mn_f32(&self, _: &EagerPackedInput, _: usize, _: &mut [f32]) -> TractResult<()> {
        bail!("{self} has no f32 extraction")
    }
}
