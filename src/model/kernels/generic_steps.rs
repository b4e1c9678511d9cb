//! The rare steps tract fuses into a tile (leaky ReLU, shifts, adding another matrix,
//! rescaling with a rounding other than tract's ONNX one), run for iscamd's own kernels on
//! tract's generic 4×4 kernel, a 4×4 block of the tile at a time: those steps are then
//! tract's to the bit.

use tract_onnx::tract_core::tract_linalg;
use tract_onnx::tract_core::tract_linalg::mmm::{FusedKerSpec, OutputStoreKer};

/// Runs `step` on a tile of `MR` rows and `NR` columns (multiples of 4). Returns 0, or
/// tract's error code of the step.
///
/// # Safety
/// `step` is one of tract's steps for this tile: its pointers reach `MR` rows or `NR`
/// columns, its stores a whole tile.
pub unsafe fn on_generic_kernel<const MR: usize, const NR: usize>(
    tile: &mut [[i32; NR]; MR],
    step: FusedKerSpec<i32>,
) -> isize {
    let generic = &*tract_linalg::generic::mmm::generic_i32_4x4;
    for first_row in (0..MR).step_by(4) {
        for first_col in (0..NR).step_by(4) {
            let mut block = [0i32; 16];
            for (i, v) in block.iter_mut().enumerate() {
                *v = tile[first_row + i % 4][first_col + i / 4];
            }
            let at = block.as_mut_ptr();
            let block_store = OutputStoreKer {
                ptr: at.cast(),
                row_byte_stride: 4,
                col_byte_stride: 16,
                item_size: 4,
            };
            let list = [
                FusedKerSpec::LoadTile(at, std::ptr::null()),
                for_block(step, first_row, first_col),
                FusedKerSpec::Store(block_store),
                FusedKerSpec::Done,
            ];
            // SAFETY: the generic kernel's own tile (column-major 4×4 at `at`) and a step
            // whose pointers moved inside the caller's tile.
            let err = unsafe { (generic.kernel)(&list) };
            if err != 0 {
                return err;
            }
            for (i, v) in block.into_iter().enumerate() {
                tile[first_row + i % 4][first_col + i / 4] = v;
            }
        }
    }
    0
}

/// `step` for the 4×4 block of the tile at (`first_row`, `first_col`).
fn for_block(step: FusedKerSpec<i32>, first_row: usize, first_col: usize) -> FusedKerSpec<i32> {
    use FusedKerSpec as S;
    let (r, c) = (first_row, first_col);
    let moved = |store: OutputStoreKer| OutputStoreKer {
        ptr: store.ptr.wrapping_offset(
            store.row_byte_stride * r as isize + store.col_byte_stride * c as isize,
        ),
        ..store
    };
    match step {
        S::PerRowMin(p) => S::PerRowMin(p.wrapping_add(r)),
        S::PerRowMax(p) => S::PerRowMax(p.wrapping_add(r)),
        S::PerRowAdd(p) => S::PerRowAdd(p.wrapping_add(r)),
        S::PerRowMul(p) => S::PerRowMul(p.wrapping_add(r)),
        S::PerRowSub(p) => S::PerRowSub(p.wrapping_add(r)),
        S::PerRowSubF(p) => S::PerRowSubF(p.wrapping_add(r)),
        S::PerColMin(p) => S::PerColMin(p.wrapping_add(c)),
        S::PerColMax(p) => S::PerColMax(p.wrapping_add(c)),
        S::PerColAdd(p) => S::PerColAdd(p.wrapping_add(c)),
        S::PerColMul(p) => S::PerColMul(p.wrapping_add(c)),
        S::PerColSub(p) => S::PerColSub(p.wrapping_add(c)),
        S::PerColSubF(p) => S::PerColSubF(p.wrapping_add(c)),
        S::AddRowColProducts(rows, cols) => {
            S::AddRowColProducts(rows.wrapping_add(r), cols.wrapping_add(c))
        }
        S::AddUnicast(store) => S::AddUnicast(moved(store)),
        S::Store(store) => S::Store(moved(store)),
        other => other,
    }
}
