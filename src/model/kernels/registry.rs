//! What iscamd's own matrix kernels share in tract's registry: their place outside
//! tract's own ranking, and, for those that compute Cᵀ's tile, the steps turned to it.

use tract_onnx::tract_core::tract_linalg::isa::Arch;
use tract_onnx::tract_core::tract_linalg::mmm::DynKernel;
#[cfg(target_arch = "x86_64")]
use tract_onnx::tract_core::tract_linalg::mmm::{FusedKerSpec, OutputStoreKer};
use tract_onnx::tract_core::tract_linalg::LADatum;

/// `kernel` for `arch`, below tract's own kernels wherever tract ranks the suitable ones
/// itself: only iscamd's measured choice names it.
pub fn outside_tracts_ranking<const MR: usize, const NR: usize, TI: LADatum>(
    mut kernel: DynKernel<MR, NR, TI>,
    arch: Arch,
) -> DynKernel<MR, NR, TI> {
    kernel.arch = Some(arch);
    kernel.boost = || -1000;
    kernel
}

/// `spec` for the tile of Cᵀ: rows for columns, stores with their strides swapped.
#[cfg(target_arch = "x86_64")]
pub fn transposed<TI: Copy>(spec: FusedKerSpec<TI>) -> FusedKerSpec<TI> {
    use FusedKerSpec as S;
    let swap = |s: OutputStoreKer| OutputStoreKer {
        row_byte_stride: s.col_byte_stride,
        col_byte_stride: s.row_byte_stride,
        ..s
    };
    match spec {
        S::PerRowMin(p) => S::PerColMin(p),
        S::PerRowMax(p) => S::PerColMax(p),
        S::PerRowAdd(p) => S::PerColAdd(p),
        S::PerRowMul(p) => S::PerColMul(p),
        S::PerRowSub(p) => S::PerColSub(p),
        S::PerRowSubF(p) => S::PerColSubF(p),
        S::PerColMin(p) => S::PerRowMin(p),
        S::PerColMax(p) => S::PerRowMax(p),
        S::PerColAdd(p) => S::PerRowAdd(p),
        S::PerColMul(p) => S::PerRowMul(p),
        S::PerColSub(p) => S::PerRowSub(p),
        S::PerColSubF(p) => S::PerRowSubF(p),
        S::AddRowColProducts(rows, cols) => S::AddRowColProducts(cols, rows),
        S::AddUnicast(store) => S::AddUnicast(swap(store)),
        S::Store(store) => S::Store(swap(store)),
        other => other,
    }
}
