//! iscamd's f32 matrix kernel for x86-64 cores with AVX-512, for convolutions.
//!
//! tract lowers a convolution to C = W·X with the weights as A, each row of C an output
//! channel whose pixels are contiguous in memory. tract's AVX-512 f32 kernels hold a tile
//! of C as columns (`avx512_mmm_f32_16x12`: a register holds 16 rows of one column), so
//! every tile is stored one value at a time (`vextractps`), and each step of K loads one
//! vector and broadcasts twelve values for twelve multiply-adds. This kernel holds the tile
//! as rows — 8 rows of 48 columns, three registers each — and broadcasts the weights: per
//! step of K, three loads of X's panel and eight broadcasts for 24 `vfmadd231ps`, and a
//! tile stored as 24 whole vectors.
//!
//! tract's convolution lowering (which asks for a kernel without a store type) makes the
//! weights A. Its einsum lowering (1×1 convolutions) puts the longer side on A — the
//! activations of a 1×1 convolution over an image larger than its output channels, whose
//! pixels then run down C's columns: there the same kernel computes Cᵀ's tile ([`NAME_T`],
//! 48 × 8, the activations' 48 rows in the registers, the weights broadcast), stored as
//! whole columns. Never in tract's ladder: iscamd measures it against tract's kernels as
//! one more candidate ([`TIER`]), per model, and runs it where it was faster.

use std::arch::x86_64::*;
use std::sync::LazyLock;

use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::tract_linalg;
use tract_onnx::tract_core::tract_linalg::isa::{Arch, Isa, IsaReq};
use tract_onnx::tract_core::tract_linalg::mmm::{DynKernel, FusedKerSpec, OutputStoreKer};
use tract_onnx::tract_core::tract_linalg::pack::Packing;
use tract_onnx::tract_core::tract_linalg::WeightType;

use super::registry::{outside_tracts_ranking, transposed};
use super::walk::Walked;

/// The tier iscamd asks for this kernel.
pub const TIER: &str = "iscamd-avx512-f32";

/// The kernel's name in tract's registry.
const NAME: &str = "iscamd_avx512_mmm_f32_8x48";

/// The same kernel computing Cᵀ's tile: 48 rows of A (the activations), 8 columns of B.
const NAME_T: &str = "iscamd_avx512_t_mmm_f32_48x8";

/// Rows of A per tile (and per panel of A), columns of B.
const MR: usize = 8;
const NR: usize = 48;

/// How many steps of K ahead the loop asks for its panels' next cache lines: about 770
/// cycles of multiply-adds at two per cycle, more than a load from memory takes. Panels of a
/// large K (ResNet's 4,608) stream from L3 or memory faster than the hardware's
/// prefetchers fetch them (docs/benchmarks.md).
const PREFETCH_STEPS: usize = 64;

/// Registers per row of the tile.
const V: usize = NR / 16;

static KERNEL: LazyLock<DynKernel<MR, NR, f32>> = LazyLock::new(|| {
    registered(DynKernel::new(
        NAME,
        kernel::<false>,
        f32::packing(MR),
        f32::packing(NR),
    ))
});
static KERNEL_T: LazyLock<DynKernel<NR, MR, f32>> = LazyLock::new(|| {
    registered(DynKernel::new(
        NAME_T,
        kernel::<true>,
        f32::packing(NR),
        f32::packing(MR),
    ))
});

fn registered<const R: usize, const C: usize>(
    kernel: DynKernel<R, C, f32>,
) -> DynKernel<R, C, f32> {
    let kernel = kernel.with_isa(IsaReq::ANY.needing(&[Isa::X86_64Avx512f]));
    outside_tracts_ranking(kernel, Arch::X86_64)
}

inventory::submit! {
    tract_linalg::mmm_routines::MmmRoutine { make: || Box::new(Walked::new(KERNEL.clone())) }
}

inventory::submit! {
    tract_linalg::mmm_routines::MmmRoutine { make: || Box::new(Walked::new(KERNEL_T.clone())) }
}

inventory::submit! {
    tract_linalg::mmm_tiers::MmmTier {
        arch: Some(Arch::X86_64),
        // Unused by tract's x86-64 tiers (1–8) and iscamd's others; never in its ladder.
        precedence: 11,
        name: TIER,
        applies: |_| false,
        preferred: |_, accumulator, query, _| {
            let plain = query.weight == WeightType::Plain(DatumType::F32)
                && query.activation == DatumType::F32;
            let here = accumulator == DatumType::F32 && plain && query.n != Some(1) && runs_here();
            here.then_some(if query.store.is_none() { NAME } else { NAME_T })
        },
    }
}

fn runs_here() -> bool {
    is_x86_feature_detected!("avx512f")
}

/// A tile of C (of Cᵀ for [`NAME_T`]): row r's columns in `[r][0..V]`.
type Tile = [[__m512; V]; MR];

/// `tile[r][v] = $f` for every register, `$x` its value, `$r` its row, `$v` its index in
/// the row (unrolled, not a closure: closures would not inline the AVX-512 intrinsics).
macro_rules! each {
    ($tile:ident, |$x:ident, $r:ident, $v:ident| $f:expr) => {
        unrolled!($r in [0 1 2 3 4 5 6 7] {
            unrolled!($v in [0 1 2] {
                let $x = $tile[$r][$v];
                $tile[$r][$v] = $f;
            })
        })
    };
}
const _: () = assert!(
    MR == 8 && V == 3,
    "`each!` lists the tile's rows and registers"
);

/// Runs a tile's steps — of Cᵀ's tile with `T`, each step turned to it by [`transposed`].
/// Returns 0, or 1 for a step an f32 kernel is never given.
#[target_feature(enable = "avx512f")]
unsafe fn kernel<const T: bool>(specs: &[FusedKerSpec<f32>]) -> isize {
    use FusedKerSpec as S;
    // SAFETY (whole body): tract's steps for one tile, their pointers to its rows,
    // columns, or a tile's stores, as its kernels receive them; the tier is only offered
    // where AVX-512 runs.
    unsafe {
        let zero = _mm512_setzero_ps();
        let mut tile: Tile = [[zero; V]; MR];
        for &spec in specs {
            match if T { transposed(spec) } else { spec } {
                S::Done => return 0,
                S::Clear => tile = [[zero; V]; MR],
                // Column-major C is row-major Cᵀ.
                S::LoadTile(col_major, _) if T => each!(tile, |_x, r, v| {
                    _mm512_loadu_ps(col_major.add(r * NR + 16 * v))
                }),
                S::LoadTile(col_major, _) => each!(tile, |_x, r, v| {
                    let row: [f32; 16] =
                        std::array::from_fn(|c| *col_major.add((16 * v + c) * MR + r));
                    _mm512_loadu_ps(row.as_ptr())
                }),
                S::AddMatMul { packing, .. } if packing != 0 => return 1,
                // Cᵀ = Bᵀ·Aᵀ: B's panel holds the broadcast values, A's the vectors.
                S::AddMatMul { k, pa, pb, .. } if T => {
                    tile = add_mat_mul(tile, k, pb.cast(), pa.cast())
                }
                S::AddMatMul { k, pa, pb, .. } => tile = add_mat_mul(tile, k, pa.cast(), pb.cast()),
                S::ScalarMin(s) => each!(tile, |x, _r, _v| _mm512_min_ps(x, _mm512_set1_ps(s))),
                S::ScalarMax(s) => each!(tile, |x, _r, _v| _mm512_max_ps(x, _mm512_set1_ps(s))),
                S::ScalarAdd(s) => each!(tile, |x, _r, _v| _mm512_add_ps(x, _mm512_set1_ps(s))),
                S::ScalarMul(s) => each!(tile, |x, _r, _v| _mm512_mul_ps(x, _mm512_set1_ps(s))),
                S::ScalarSub(s) => each!(tile, |x, _r, _v| _mm512_sub_ps(_mm512_set1_ps(s), x)),
                S::ScalarSubF(s) => each!(tile, |x, _r, _v| _mm512_sub_ps(x, _mm512_set1_ps(s))),
                S::LeakyRelu(alpha) => each!(tile, |x, _r, _v| {
                    let negative = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, zero);
                    _mm512_mask_mul_ps(x, negative, x, _mm512_set1_ps(alpha))
                }),
                S::PerRowMin(p) => each!(tile, |x, r, _v| _mm512_min_ps(x, row(p, r))),
                S::PerRowMax(p) => each!(tile, |x, r, _v| _mm512_max_ps(x, row(p, r))),
                S::PerRowAdd(p) => each!(tile, |x, r, _v| _mm512_add_ps(x, row(p, r))),
                S::PerRowMul(p) => each!(tile, |x, r, _v| _mm512_mul_ps(x, row(p, r))),
                S::PerRowSub(p) => each!(tile, |x, r, _v| _mm512_sub_ps(row(p, r), x)),
                S::PerRowSubF(p) => each!(tile, |x, r, _v| _mm512_sub_ps(x, row(p, r))),
                S::PerColMin(p) => each!(tile, |x, _r, v| _mm512_min_ps(x, col(p, v))),
                S::PerColMax(p) => each!(tile, |x, _r, v| _mm512_max_ps(x, col(p, v))),
                S::PerColAdd(p) => each!(tile, |x, _r, v| _mm512_add_ps(x, col(p, v))),
                S::PerColMul(p) => each!(tile, |x, _r, v| _mm512_mul_ps(x, col(p, v))),
                S::PerColSub(p) => each!(tile, |x, _r, v| _mm512_sub_ps(col(p, v), x)),
                S::PerColSubF(p) => each!(tile, |x, _r, v| _mm512_sub_ps(x, col(p, v))),
                S::AddRowColProducts(rows, cols) => each!(tile, |x, r, v| {
                    _mm512_fmadd_ps(row(rows, r), col(cols, v), x)
                }),
                S::AddUnicast(other) if other.item_size == 4 => {
                    each!(tile, |x, r, v| _mm512_add_ps(x, load(other, r, v)))
                }
                S::Store(store) if store.item_size == 4 => store_tile(tile, store),
                _ => return 1,
            }
        }
        0
    }
}

/// Row `r`'s value of a per-row step, in every lane.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn row(p: *const f32, r: usize) -> __m512 {
    // SAFETY: the caller's pointer to MR values.
    _mm512_set1_ps(unsafe { *p.add(r) })
}

/// Columns `16v..16v + 16` of a per-column step.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn col(p: *const f32, v: usize) -> __m512 {
    // SAFETY: the caller's pointer to NR values.
    unsafe { _mm512_loadu_ps(p.add(16 * v)) }
}

/// Columns `16v..16v + 16` of row `r` of a matrix at `at`'s strides.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn load(at: OutputStoreKer, r: usize, v: usize) -> __m512 {
    // SAFETY: tract's matrix of MR × NR f32 at these strides.
    unsafe {
        let row = at.ptr.offset(at.row_byte_stride * r as isize);
        let value = |c: usize| {
            *row.offset(at.col_byte_stride * (16 * v + c) as isize)
                .cast::<f32>()
        };
        match at.col_byte_stride == 4 {
            true => _mm512_loadu_ps(row.cast::<f32>().add(16 * v)),
            false => _mm512_loadu_ps(std::array::from_fn::<f32, 16, _>(value).as_ptr()),
        }
    }
}

/// `tile + A·B` over `k`: A's panel at `pa` (MR values per step of K), B's at `pb` (NR).
/// The tile comes and goes by value: a copy of it local to the loop stays in registers
/// even where this function is not inlined.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn add_mat_mul(mut tile: Tile, k: usize, pa: *const f32, pb: *const f32) -> Tile {
    // SAFETY: the panels hold k steps of MR and NR values.
    unsafe {
        let (mut a, mut b) = (pa, pb);
        for _ in 0..k {
            // B's step is three cache lines, A's half of one. A prefetch past a panel's
            // end is a hint, never a fault: `wrapping_add`.
            let (b_ahead, a_ahead) = (
                b.wrapping_add(NR * PREFETCH_STEPS),
                a.wrapping_add(MR * PREFETCH_STEPS),
            );
            unrolled!(v in [0 1 2] { _mm_prefetch::<_MM_HINT_T0>(b_ahead.wrapping_add(16 * v).cast()) });
            _mm_prefetch::<_MM_HINT_T0>(a_ahead.cast());
            let mut bs = [_mm512_setzero_ps(); V];
            unrolled!(v in [0 1 2] { bs[v] = _mm512_loadu_ps(b.add(16 * v)) });
            each!(tile, |x, r, v| _mm512_fmadd_ps(
                _mm512_set1_ps(*a.add(r)),
                bs[v],
                x
            ));
            a = a.add(MR);
            b = b.add(NR);
        }
        tile
    }
}

/// Stores the tile where `store` says: a row's registers whole when its columns are
/// contiguous (a convolution's output), else value by value.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn store_tile(tile: Tile, store: OutputStoreKer) {
    // SAFETY: tract's store of MR × NR f32 at these strides.
    unsafe {
        unrolled!(r in [0 1 2 3 4 5 6 7] {
            let at = store.ptr.offset(store.row_byte_stride * r as isize);
            unrolled!(v in [0 1 2] {
                if store.col_byte_stride == 4 {
                    _mm512_storeu_ps(at.cast::<f32>().add(16 * v), tile[r][v]);
                } else {
                    let mut values = [0f32; 16];
                    _mm512_storeu_ps(values.as_mut_ptr(), tile[r][v]);
                    for (c, value) in values.into_iter().enumerate() {
                        let to = at.offset(store.col_byte_stride * (16 * v + c) as isize);
                        to.cast::<f32>().write_unaligned(value);
                    }
                }
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kernels::{optimising_with, Candidate, Choice, Policy};
    use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat, PaddingSpec, PoolSpec};
    use tract_onnx::tract_core::ops::math;
    use tract_onnx::tract_core::ops::matmul::optimized::OptMatMul;
    use tract_onnx::tract_core::ops::nn::DataFormat;

    fn random(shape: &[usize], seed: u64) -> Tensor {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let values: Vec<f32> = (0..shape.iter().product())
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        tract_ndarray::ArrayD::from_shape_vec(shape, values)
            .unwrap()
            .into_tensor()
    }

    /// A `kernel`×`kernel` convolution with a bias, then a ReLU: what tract fuses into the
    /// tile.
    fn convolution(channels: usize, outputs: usize, side: usize, kernel: usize) -> TypedModel {
        let mut model = TypedModel::default();
        let x = model
            .add_source("x", f32::fact([1, channels, side, side]))
            .unwrap();
        let w = random(&[outputs, channels, kernel, kernel], 1);
        let w = model.add_const("w", w).unwrap();
        let bias = model.add_const("bias", random(&[outputs], 2)).unwrap();
        let spec = PoolSpec {
            data_format: DataFormat::NCHW,
            kernel_shape: tvec!(kernel, kernel),
            padding: PaddingSpec::Explicit(
                tvec!(kernel / 2, kernel / 2),
                tvec!(kernel / 2, kernel / 2),
            ),
            dilations: None,
            strides: None,
            input_channels: channels,
            output_channels: outputs,
        };
        let conv = Conv {
            pool_spec: spec,
            kernel_fmt: KernelFormat::OIHW,
            group: 1,
            q_params: None,
        };
        let y = model.wire_node("conv", conv, &[x, w, bias]).unwrap()[0];
        let zero = model.add_const("zero", tensor4(&[[[[0f32]]]])).unwrap();
        let y = model.wire_node("relu", math::max(), &[y, zero]).unwrap();
        model.select_output_outlets(&y).unwrap();
        model
    }

    /// Shapes off the tile: output channels not a multiple of 8, pixels not of 48; 3×3
    /// convolutions (the weights A: [`NAME`]), 1×1 ones over more pixels than output
    /// channels (the activations A: [`NAME_T`], stored by columns, its tiles walked down
    /// C's columns — over 5,776 pixels, in three blocks of A's panels) and over fewer (the
    /// weights A: [`NAME_T`] again, stored value by value).
    #[test]
    fn convolutions_equal_tracts() {
        if !runs_here() {
            eprintln!("{NAME}: this CPU has no AVX-512; the kernel is never offered here");
            return;
        }
        let shapes = [
            (5, 13, 9, 3, NAME),
            (16, 24, 14, 3, NAME),
            (3, 8, 7, 3, NAME),
            (24, 8, 9, 1, NAME_T),
            (24, 16, 76, 1, NAME_T),
            (24, 40, 3, 1, NAME_T),
        ];
        for (channels, outputs, side, kernel, name) in shapes {
            let model = convolution(channels, outputs, side, kernel);
            let ours = Candidate {
                tier: TIER,
                widest: false,
            };
            let choice = Choice::default().with(DatumType::F32, Some(ours));
            let (optimised, _) =
                optimising_with(Policy::Tuned, choice, || model.clone().into_optimized());
            let optimised = optimised.unwrap();
            let runs_ours = optimised.nodes.iter().any(|node| {
                node.op_as::<OptMatMul>()
                    .is_some_and(|op| op.mmm.iter().any(|k| k.name() == name))
            });
            assert!(runs_ours, "the plan does not run {name}:\n{optimised}");
            let x = random(&[1, channels, side, side], 3);
            let run = |plan: TypedModel| {
                let plan = plan.into_runnable().unwrap();
                plan.run(tvec!(x.clone().into_tvalue())).unwrap().remove(0)
            };
            let (ours, tracts) = (run(optimised), run(model.into_optimized().unwrap()));
            let (ours, tracts) = (
                ours.to_plain_array_view::<f32>().unwrap().to_owned(),
                tracts.to_plain_array_view::<f32>().unwrap().to_owned(),
            );
            let largest = tracts.iter().fold(0f32, |m, v| m.max(v.abs()));
            let differ = (&ours - &tracts).iter().fold(0f32, |m, d| m.max(d.abs()));
            assert!(
                largest > 0.0 && differ <= 1e-6 * largest,
                "{channels}→{outputs}: {differ}"
            );
        }
    }
}
