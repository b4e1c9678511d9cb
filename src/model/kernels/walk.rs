//! The order in which iscamd's f32 kernel computes a product's tiles.
//!
//! tract walks the tiles of C = A·B one panel of A at a time, every panel of B for each,
//! unless one operand is packed lazily. Where A holds the activations of a 1×1
//! convolution (the kernel's Cᵀ form), C's contiguous lines run along A's panels: each
//! tile stores 48 values into each of 8 output channels, then the walk moves to the next
//! 8 channels, so a product with 96 output channels writes to 96 lines 50 KB apart at
//! once. MobileNetV2's first expansion (12,544 pixels × 96 channels, K = 16) ran at
//! 14 GMAC/s that way and at 32 with its tiles walked down C's columns
//! (docs/benchmarks.md). [`Walked`] runs a kernel with the tiles walked along C's
//! contiguous lines, in blocks of A's panels small enough to stay in L2 while every panel
//! of B passes over them. (The int8 kernels' products, walked so, were no faster.)

use std::borrow::Cow;
use std::cell::Cell;

use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::tract_linalg::isa::{Arch, IsaReq, IsaSet};
use tract_onnx::tract_core::tract_linalg::mmm::{
    DynKernel, FusedKerSpec, FusedSpec, MMMInputFormat, MatMatMul, OutputStoreSpec, ScratchSpace,
    ScratchSpaceImpl,
};
use tract_onnx::tract_core::tract_linalg::multithread::{current_tract_executor, Executor};
use tract_onnx::tract_core::tract_linalg::LADatum;

/// Bytes of A's panels one block of the walk keeps in L2: half of the smallest L2 of the
/// x86-64 and aarch64 cores iscamd runs on (512 KiB), the rest for B's panel and C's lines.
const BLOCK_BYTES: usize = 256 * 1024;

/// `kernel`, its tiles walked along C's contiguous lines.
#[derive(Clone)]
pub struct Walked<const MR: usize, const NR: usize, TI: LADatum> {
    kernel: DynKernel<MR, NR, TI>,
    /// `kernel` with a body that only records the strides of C it is given.
    probe: DynKernel<MR, NR, TI>,
}

impl<const MR: usize, const NR: usize, TI: LADatum> std::fmt::Debug for Walked<MR, NR, TI> {
    /// The kernel's name, as plans and profiles print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.kernel.fmt(f)
    }
}

thread_local! {
    /// C's row and column strides in bytes, as the last probed tile saw them.
    static STRIDES: Cell<Option<(isize, isize)>> = const { Cell::new(None) };
}

/// A kernel body that computes nothing and records where its tile would be stored.
unsafe fn record_strides<TI: LADatum>(specs: &[FusedKerSpec<TI>]) -> isize {
    let strides = specs.iter().find_map(|spec| match spec {
        FusedKerSpec::Store(store) => Some((store.row_byte_stride, store.col_byte_stride)),
        _ => None,
    });
    STRIDES.set(strides);
    0
}

impl<const MR: usize, const NR: usize, TI: LADatum> Walked<MR, NR, TI> {
    pub fn new(kernel: DynKernel<MR, NR, TI>) -> Self {
        let probe = DynKernel {
            kernel: record_strides::<TI>,
            ..kernel.clone()
        };
        Walked { kernel, probe }
    }

    /// Whether C's columns are its contiguous lines (rows one item apart), read off the
    /// first tile's store: `None` where that tile is not a whole one (its store goes to
    /// scratch).
    ///
    /// # Safety
    /// `scratch` prepared for `specs`, as [`ScratchSpaceImpl::run`] needs.
    unsafe fn columns_contiguous(
        &self,
        scratch: &ScratchSpaceImpl<TI>,
        (m, n): (usize, usize),
        specs: &[FusedSpec],
    ) -> TractResult<Option<bool>> {
        if m < MR || n < NR {
            return Ok(None);
        }
        STRIDES.set(None);
        // SAFETY: as the caller promises; tile (0, 0) is a whole tile of C.
        unsafe { scratch.run(&self.probe, specs, 0, 0)? };
        Ok(STRIDES
            .take()
            .map(|(row, col)| row.unsigned_abs() < col.unsigned_abs()))
    }

    /// Every tile, A's panels in blocks of [`BLOCK_BYTES`], B's panels across each block
    /// and the block's panels innermost: each tile's columns continue the lines the tile
    /// before it stored.
    ///
    /// # Safety
    /// `scratch` prepared for `specs`, as [`ScratchSpaceImpl::run`] needs.
    unsafe fn along_columns(
        &self,
        scratch: &ScratchSpaceImpl<TI>,
        (m, n): (usize, usize),
        specs: &[FusedSpec],
    ) -> TractResult<()> {
        let k = specs.iter().find_map(|spec| match spec {
            FusedSpec::AddMatMul { a, .. } => Some(a.k()),
            _ => None,
        });
        let panel_bytes = (MR * k.unwrap_or(0) * TI::datum_type().size_of()).max(1);
        let block = (BLOCK_BYTES / panel_bytes).max(1);
        let (m_panels, n_panels) = (m.div_ceil(MR), n.div_ceil(NR));
        for from in (0..m_panels).step_by(block) {
            for right in 0..n_panels {
                for down in from..(from + block).min(m_panels) {
                    // SAFETY: as the caller promises; the tile is within C.
                    unsafe { scratch.run(&self.kernel, specs, down, right)? };
                }
            }
        }
        Ok(())
    }
}

impl<const MR: usize, const NR: usize, TI: LADatum> MatMatMul for Walked<MR, NR, TI> {
    fn name(&self) -> &str {
        MatMatMul::name(&self.kernel)
    }
    fn mr(&self) -> usize {
        MR
    }
    fn nr(&self) -> usize {
        NR
    }
    fn arch(&self) -> Option<Arch> {
        MatMatMul::arch(&self.kernel)
    }
    fn emulated(&self) -> bool {
        MatMatMul::emulated(&self.kernel)
    }
    fn boost(&self) -> isize {
        MatMatMul::boost(&self.kernel)
    }
    fn preference(&self) -> isize {
        MatMatMul::preference(&self.kernel)
    }
    fn runnable_on(&self, isa: &IsaSet) -> bool {
        MatMatMul::runnable_on(&self.kernel, isa)
    }
    fn runnable(&self) -> bool {
        MatMatMul::runnable(&self.kernel)
    }
    fn built(&self) -> bool {
        MatMatMul::built(&self.kernel)
    }
    fn isa(&self) -> IsaReq {
        MatMatMul::isa(&self.kernel)
    }
    fn packings(&self) -> &[(Box<dyn MMMInputFormat>, Box<dyn MMMInputFormat>)] {
        MatMatMul::packings(&self.kernel)
    }
    fn internal_type(&self) -> DatumType {
        TI::datum_type()
    }
    unsafe fn c_view(&self, m_axis: Option<usize>, n_axis: Option<usize>) -> OutputStoreSpec {
        // SAFETY: forwarded as given.
        unsafe { MatMatMul::c_view(&self.kernel, m_axis, n_axis) }
    }
    unsafe fn c_from_data_and_strides(
        &self,
        item_size: usize,
        row_stride: isize,
        col_stride: isize,
    ) -> OutputStoreSpec {
        // SAFETY: forwarded as given.
        unsafe {
            MatMatMul::c_from_data_and_strides(&self.kernel, item_size, row_stride, col_stride)
        }
    }
    fn can_fuse(&self, spec: &FusedSpec) -> bool {
        MatMatMul::can_fuse(&self.kernel, spec)
    }
    fn stores(&self) -> Cow<'_, [DatumType]> {
        MatMatMul::stores(&self.kernel)
    }
    unsafe fn allocate_scratch_space(&self) -> Box<dyn ScratchSpace> {
        // SAFETY: forwarded as given.
        unsafe { MatMatMul::allocate_scratch_space(&self.kernel) }
    }
    unsafe fn can_use_scratch_space(&self, scratch: &dyn ScratchSpace) -> bool {
        // SAFETY: forwarded as given.
        unsafe { MatMatMul::can_use_scratch_space(&self.kernel, scratch) }
    }

    /// tract's walk where it has a reason of its own (an operand packed lazily, panel by
    /// panel as the walk reaches it) or runs the tiles on several threads; else along C's
    /// columns where they are its contiguous lines.
    unsafe fn run_with_scratch_space(
        &self,
        m: usize,
        n: usize,
        scratch: &mut dyn ScratchSpace,
        specs: &[FusedSpec],
    ) -> TractResult<()> {
        let lazy = specs.iter().any(|spec| spec.prefer_col_outer().is_some());
        let single = matches!(current_tract_executor(), Executor::SingleThread);
        if single && !lazy {
            let ours = scratch
                .downcast_mut::<ScratchSpaceImpl<TI>>()
                .context("scratch space of another kernel")?;
            // SAFETY: tract's contract for this call, which `run_with_scratch_space` keeps
            // in turn: `specs` point at live operands and a C of m × n.
            unsafe {
                ours.prepare(&self.kernel, m, n, specs)?;
                if self.columns_contiguous(ours, (m, n), specs)? == Some(true) {
                    return self.along_columns(ours, (m, n), specs);
                }
            }
        }
        // SAFETY: forwarded as given.
        unsafe { MatMatMul::run_with_scratch_space(&self.kernel, m, n, scratch, specs) }
    }
}
