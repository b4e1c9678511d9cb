//! tract's two 8-bit packings, written with SIMD: the K=4-interleaved one (`PackedI8K4`,
//! what its VNNI and dot-product kernels read), four K rows at a time, and the plain one
//! (`PackedFormat`: `r` lanes per K row, what its SMLAL and AVX2 kernels read); and
//! [`PackedRows`], which packs a plain activation tensor so for tract's 1×1 convolutions
//! and matrix products — f32 ones too, at the panel widths above 32 lanes (iscamd's
//! 48-lane AVX-512 kernel, tract's 80-lane one) that tract's packer fills value by value.
//!
//! tract 0.23 writes these layouts one byte at a time, each through a strided store: its
//! `PackedI8K4::pack_view` (behind `OptMatMulPack`) was 8 % of an int8 forward pass on this
//! project's x86 once [`super::im2col`] had removed the other 38 % (perf; docs/benchmarks.md, "Speed").
//! In the K=4 layout a panel of `r` columns holds, for every block of four K rows, `r`
//! groups of four bytes — lane `m`'s values of the block's rows ([`interleave4`], sixteen
//! or eight lanes per step); in the plain one, every K row's `r` lanes in turn, then a
//! padding row the kernels may read ahead into.

use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::matmul::optimized::{MatMulOperand, OptMatMul, ProtoFusedSpec};
use tract_onnx::tract_core::ops::matmul::pack::{DynPackedExoticFact, OptMatMulPack};
use tract_onnx::tract_core::tract_linalg::mmm::{
    EagerPackedInput, MMMInputFormat, MMMInputValue, PackedExoticFact, PackedMatrixStorage,
};
use tract_onnx::tract_core::tract_linalg::pack::{PackedFormat, PackedI8K4};

/// An 8-bit packing that iscamd's packing ops write: tract's two, and iscamd's kernels'.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Packing {
    K4(PackedI8K4),
    Plain(PackedFormat),
    /// `PackedI8K4` panels, each after a header its kernel reads.
    Headed(HeadedLayout),
}

/// The layout of an iscamd kernel's headed packing (`kernels/headed.rs`): `r`-lane
/// `PackedI8K4` panels, each after `bytes` of header that `write` makes from the panel.
/// Layouts are told apart by their name, width and header size.
#[derive(Clone, Debug)]
pub struct HeadedLayout {
    pub r: usize,
    pub bytes: usize,
    pub name: &'static str,
    /// Writes a panel's header from its packed body.
    pub write: fn(&[u8], &mut [u8]),
    /// The same where the product's other operand holds no −128.
    pub write_beside_clean: fn(&[u8], &mut [u8]),
    /// The packing itself, as tract's plans name it.
    pub format: fn() -> Box<dyn MMMInputFormat>,
}

impl PartialEq for HeadedLayout {
    fn eq(&self, other: &Self) -> bool {
        (self.name, self.r, self.bytes) == (other.name, other.r, other.bytes)
    }
}

impl Eq for HeadedLayout {}

impl std::hash::Hash for HeadedLayout {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (self.name, self.r, self.bytes).hash(state);
    }
}

impl HeadedLayout {
    /// The alignment of a headed packing's panels: a cache line.
    pub const ALIGNMENT: usize = 64;

    fn body(&self) -> PackedI8K4 {
        PackedI8K4::new(self.r)
    }
}

impl Packing {
    /// `format` if it is one of them, for 8-bit values.
    pub fn of(format: &dyn MMMInputFormat) -> Option<Packing> {
        if let Some(k4) = format.downcast_ref::<PackedI8K4>() {
            return Some(Packing::K4(k4.clone()));
        }
        if let Some(headed) = crate::model::kernels::own_headed_packing(format) {
            return Some(Packing::Headed(headed));
        }
        let plain = format.downcast_ref::<PackedFormat>()?;
        [DatumType::I8, DatumType::U8]
            .contains(&plain.dt.unquantized())
            .then(|| Packing::Plain(plain.clone()))
    }

    /// Lanes per panel.
    pub fn r(&self) -> usize {
        match self {
            Packing::K4(f) => f.r,
            Packing::Plain(f) => f.r,
            Packing::Headed(h) => h.r,
        }
    }

    /// Bytes of one panel of a matrix with `k` rows.
    pub fn panel_len(&self, k: usize) -> usize {
        match self {
            Packing::K4(f) => f.single_panel_len(k),
            Packing::Plain(f) => f.single_panel_len(k),
            Packing::Headed(h) => h.bytes + h.body().single_panel_len(k),
        }
    }

    /// Where a panel's values start: after its header.
    fn header_len(&self) -> usize {
        match self {
            Packing::Headed(h) => h.bytes,
            Packing::K4(_) | Packing::Plain(_) => 0,
        }
    }

    fn alignment(&self) -> usize {
        match self {
            Packing::K4(f) => f.alignment(),
            Packing::Plain(f) => f.alignment(),
            Packing::Headed(_) => HeadedLayout::ALIGNMENT,
        }
    }

    pub fn boxed(&self) -> Box<dyn MMMInputFormat> {
        match self {
            Packing::K4(f) => Box::new(f.clone()),
            Packing::Plain(f) => Box::new(f.clone()),
            Packing::Headed(h) => (h.format)(),
        }
    }
}

impl std::fmt::Display for Packing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Packing::K4(format) => write!(f, "{format}"),
            Packing::Plain(format) => write!(f, "{format}"),
            Packing::Headed(h) => write!(f, "I8K4+{}[{}]", h.name, h.r),
        }
    }
}

/// One K×MN matrix being packed as `packing`, block of four K rows by block, in order.
/// Its buffer starts uninitialised; [`Panels::finish`] hands it out only once every
/// block has been written, so no uninitialised byte is ever read.
pub struct Panels {
    packing: Packing,
    k: usize,
    mn: usize,
    blob: Blob,
    /// The next block to write: blocks are written in order, each once.
    next_block: usize,
    /// The last, partial panel's lanes, zero-padded (the kernel reads whole panels).
    tail: Vec<u8>,
}

impl Panels {
    pub fn new(packing: &Packing, k: usize, mn: usize) -> Panels {
        let (r, panel_len) = (packing.r(), packing.panel_len(k));
        let len = mn.div_ceil(r) * panel_len;
        // SAFETY: the layout is valid — tract's packing formats have power-of-two
        // alignments, and `len` is far below isize::MAX. The bytes stay uninitialised
        // until written: `write_block` for each of the ceil(k/4) blocks covers every
        // panel's slot for that block (K=4), or every panel's rows of it (plain, whose
        // bytes after row k are zeroed here), and `finish` checks that all were written.
        let mut blob = unsafe { Blob::new_for_size_and_align(len, packing.alignment()) };
        if let Packing::Plain(_) = packing {
            for panel in blob.as_bytes_mut().chunks_exact_mut(panel_len) {
                panel[k * r..].fill(0);
            }
        }
        Panels {
            packing: packing.clone(),
            k,
            mn,
            blob,
            next_block: 0,
            tail: vec![0; 4 * r],
        }
    }

    /// Number of blocks of four K rows, the last one zero-padded.
    pub fn blocks(&self) -> usize {
        self.k.div_ceil(4)
    }

    /// Writes rows `4·block .. 4·block + 4` (each `mn` long; rows past K must be zeros).
    /// Blocks come in order, from 0.
    #[inline]
    pub fn write_block(&mut self, block: usize, rows: [&[u8]; 4]) {
        assert_eq!(block, self.next_block, "K=4 blocks are written in order");
        self.next_block += 1;
        match self.packing {
            Packing::K4(_) | Packing::Headed(_) => self.write_k4_block(block, rows),
            Packing::Plain(_) => {
                for (j, row) in rows.into_iter().enumerate().take(self.k - 4 * block) {
                    self.write_plain_row(4 * block + j, row);
                }
            }
        }
    }

    fn write_k4_block(&mut self, block: usize, rows: [&[u8]; 4]) {
        /// Every full panel's slot for the block, `R` lanes each: a width known at compile
        /// time leaves the per-panel call no loop or check to run.
        fn full_panels<const R: usize>(
            rows: [&[u8]; 4],
            packed: &mut [u8],
            panel_len: usize,
            at: usize,
            full: usize,
        ) {
            for (p, panel) in packed.chunks_exact_mut(panel_len).take(full).enumerate() {
                interleave4(rows, p * R, &mut panel[at..at + 4 * R]);
            }
        }
        let (r, mn) = (self.packing.r(), self.mn);
        let panel_len = self.packing.panel_len(self.k);
        let packed = self.blob.as_bytes_mut();
        let (full, at) = (mn / r, self.packing.header_len() + block * 4 * r);
        match r {
            4 => {
                // Four-lane panels sixteen lanes at a time: one SIMD interleave for four
                // panels' slots, then copied to each.
                let mut p = 0;
                while p + 4 <= full {
                    let mut lanes = [0u8; 64];
                    interleave4(rows, p * 4, &mut lanes);
                    for (i, slot) in lanes.chunks_exact(16).enumerate() {
                        packed[(p + i) * panel_len + at..][..16].copy_from_slice(slot);
                    }
                    p += 4;
                }
                for p in p..full {
                    interleave4(rows, p * 4, &mut packed[p * panel_len + at..][..16]);
                }
            }
            8 => full_panels::<8>(rows, packed, panel_len, at, full),
            16 => full_panels::<16>(rows, packed, panel_len, at, full),
            _ => {
                for p in 0..full {
                    interleave4(rows, p * r, &mut packed[p * panel_len + at..][..4 * r]);
                }
            }
        }
        if full * r < mn {
            let width = mn - full * r;
            for (j, row) in rows.iter().enumerate() {
                self.tail[j * r..][..width].copy_from_slice(&row[full * r..]);
            }
            let tail = &self.tail;
            let out = &mut packed[full * panel_len + at..][..4 * r];
            interleave4(std::array::from_fn(|j| &tail[j * r..][..r]), 0, out);
        }
    }

    /// Row `kk`'s lanes into every panel: `r` bytes at a time, moves of a size known at
    /// compile time for the common widths (a `memcpy` call per 8 bytes cost more).
    fn write_plain_row(&mut self, kk: usize, row: &[u8]) {
        fn scatter<const R: usize>(row: &[u8], packed: &mut [u8], panel_len: usize, at: usize) {
            for (lanes, panel) in row.chunks_exact(R).zip(packed.chunks_exact_mut(panel_len)) {
                panel[at..at + R].copy_from_slice(lanes);
            }
        }
        let (r, mn, panel_len) = (self.packing.r(), self.mn, self.packing.panel_len(self.k));
        let packed = self.blob.as_bytes_mut();
        let at = kk * r;
        match r {
            4 => scatter::<4>(row, packed, panel_len, at),
            8 => scatter::<8>(row, packed, panel_len, at),
            16 => scatter::<16>(row, packed, panel_len, at),
            _ => {
                for (lanes, panel) in row.chunks_exact(r).zip(packed.chunks_exact_mut(panel_len)) {
                    panel[at..at + r].copy_from_slice(lanes);
                }
            }
        }
        let full = mn / r;
        if full * r < mn {
            let out = &mut packed[full * panel_len + at..][..r];
            out[..mn - full * r].copy_from_slice(&row[full * r..]);
            out[mn - full * r..].fill(0);
        }
    }

    /// The packed matrix, as tract's matrix product takes it.
    pub fn finish(self) -> EagerPackedInput {
        self.finish_beside(false)
    }

    /// The packed panels, their headers written knowing whether the product's other
    /// operand holds no −128 (`beside_clean`).
    pub fn finish_beside(self, beside_clean: bool) -> EagerPackedInput {
        assert_eq!(
            self.next_block,
            self.blocks(),
            "every K=4 block is written before the panels are read"
        );
        let panel_bytes = self.packing.panel_len(self.k);
        let mut blob = self.blob;
        if let Packing::Headed(h) = &self.packing {
            for panel in blob.as_bytes_mut().chunks_exact_mut(panel_bytes) {
                let (header, body) = panel.split_at_mut(h.bytes);
                match beside_clean {
                    true => (h.write_beside_clean)(body, header),
                    false => (h.write)(body, header),
                }
            }
        }
        EagerPackedInput {
            fact: PackedExoticFact {
                format: self.packing.boxed(),
                mn: self.mn.to_dim(),
                k: self.k,
            },
            packed: Arc::new(blob),
            panel_bytes,
            mn: self.mn,
        }
    }
}

/// `out[4m + j] = rows[j][from + m]`: lanes of four rows of a K block, interleaved.
///
/// Sixteen lanes at a time, then eight, with SSE2 or NEON (both always present on their
/// architecture): a byte-by-byte loop is where tract's packing spends its time. Eight
/// matters: the panels of aarch64's dot-product kernel are eight lanes wide. Always
/// inlined: with the panel width known at the call its checks and loops fold away (a call
/// per 32-byte panel was most of the packing's instructions on aarch64).
#[inline(always)]
pub fn interleave4(rows: [&[u8]; 4], from: usize, out: &mut [u8]) {
    let lanes = out.len() / 4;
    assert!(out.len() == 4 * lanes && rows.iter().all(|r| from + lanes <= r.len()));
    let mut m = 0;
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        while m + 16 <= lanes {
            // SAFETY: SSE2 is part of x86-64's baseline; from + m + 16 ≤ each row's length
            // and 4m + 64 ≤ out.len(), checked above; unaligned loads and stores.
            unsafe {
                let [a, b, c, d] =
                    [0, 1, 2, 3].map(|j| _mm_loadu_si128(rows[j].as_ptr().add(from + m).cast()));
                let (ab_low, ab_high) = (_mm_unpacklo_epi8(a, b), _mm_unpackhi_epi8(a, b));
                let (cd_low, cd_high) = (_mm_unpacklo_epi8(c, d), _mm_unpackhi_epi8(c, d));
                let o = out.as_mut_ptr().add(4 * m).cast::<__m128i>();
                _mm_storeu_si128(o, _mm_unpacklo_epi16(ab_low, cd_low));
                _mm_storeu_si128(o.add(1), _mm_unpackhi_epi16(ab_low, cd_low));
                _mm_storeu_si128(o.add(2), _mm_unpacklo_epi16(ab_high, cd_high));
                _mm_storeu_si128(o.add(3), _mm_unpackhi_epi16(ab_high, cd_high));
            }
            m += 16;
        }
        if m + 8 <= lanes {
            // SAFETY: as above, for 8 bytes of each row and 32 of `out`.
            unsafe {
                let [a, b, c, d] =
                    [0, 1, 2, 3].map(|j| _mm_loadl_epi64(rows[j].as_ptr().add(from + m).cast()));
                let (ab, cd) = (_mm_unpacklo_epi8(a, b), _mm_unpacklo_epi8(c, d));
                let o = out.as_mut_ptr().add(4 * m).cast::<__m128i>();
                _mm_storeu_si128(o, _mm_unpacklo_epi16(ab, cd));
                _mm_storeu_si128(o.add(1), _mm_unpackhi_epi16(ab, cd));
            }
            m += 8;
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        use std::arch::aarch64::*;
        while m + 16 <= lanes {
            // SAFETY: as above; vst4q stores the four registers interleaved, 64 bytes.
            unsafe {
                let [a, b, c, d] = [0, 1, 2, 3].map(|j| vld1q_u8(rows[j].as_ptr().add(from + m)));
                vst4q_u8(out.as_mut_ptr().add(4 * m), uint8x16x4_t(a, b, c, d));
            }
            m += 16;
        }
        if m + 8 <= lanes {
            // SAFETY: as above, for 8 bytes of each row; vst4 stores 32 bytes.
            unsafe {
                let [a, b, c, d] = [0, 1, 2, 3].map(|j| vld1_u8(rows[j].as_ptr().add(from + m)));
                vst4_u8(out.as_mut_ptr().add(4 * m), uint8x8x4_t(a, b, c, d));
            }
            m += 8;
        }
    }
    for m in m..lanes {
        let i = from + m;
        out[4 * m..][..4].copy_from_slice(&[rows[0][i], rows[1][i], rows[2][i], rows[3][i]]);
    }
}

/// Packs an 8-bit or f32 tensor whose MN axis is its last, for tract's matrix product: one
/// matrix per index of the other axes but K, as `OptMatMulPack` does.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PackedRows {
    format: RowsFormat,
    k_axis: usize,
    /// The product multiplies these rows by constant weights that hold no −128.
    beside_clean: bool,
}

/// What [`PackedRows`] writes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum RowsFormat {
    Bytes(Packing),
    /// tract's plain packing of f32 (`r` values of each K row per panel). tract copies a
    /// panel's rows with moves of a fixed size only up to 32 lanes; iscamd's 48-lane f32
    /// kernel's panels it packs one value at a time.
    F32(PackedFormat),
}

impl RowsFormat {
    fn boxed(&self) -> Box<dyn MMMInputFormat> {
        match self {
            RowsFormat::Bytes(packing) => packing.boxed(),
            RowsFormat::F32(format) => Box::new(format.clone()),
        }
    }
}

impl std::fmt::Display for RowsFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RowsFormat::Bytes(packing) => packing.fmt(f),
            RowsFormat::F32(format) => write!(f, "{format}"),
        }
    }
}

/// Replaces every `OptMatMulPack` of `model` that [`PackedRows`] computes identically; says
/// how many it found and replaced.
pub fn install(model: &mut TypedModel) -> TractResult<super::swap::Swapped> {
    super::swap::replace_nodes::<OptMatMulPack>(model, |model, node, pack, input, output| {
        if !super::swap::is_8bit(input) && input.datum_type != DatumType::F32 {
            return super::swap::Swap::NotMine;
        }
        let op = PackedRows::replacing(pack, input, output);
        op.map(|op| PackedRows {
            beside_clean: beside_clean_weights(model, node),
            ..op
        })
        .into()
    })
}

/// Whether the one product `pack` feeds multiplies it by constant packed weights without a
/// −128 byte (padding included: a −128 there only costs speed).
fn beside_clean_weights(model: &TypedModel, pack: &TypedNode) -> bool {
    let [to] = pack.outputs[0].successors.as_slice() else {
        return false;
    };
    let product = model.node(to.node);
    let Some(op) = product.op_as::<OptMatMul>() else {
        return false;
    };
    let clean = |value: &dyn MMMInputValue| {
        value
            .downcast_ref::<EagerPackedInput>()
            .is_some_and(|e| !e.packed.as_bytes().contains(&(i8::MIN as u8)))
    };
    let input_clean = |slot: usize| {
        let konst = model
            .outlet_fact(product.inputs[slot])
            .ok()
            .and_then(|f| f.konst.clone());
        konst.is_some_and(|t| {
            t.try_storage_as::<PackedMatrixStorage>()
                .is_ok_and(|s| s.values().iter().all(|v| clean(&**v)))
        })
    };
    let operand_clean = |operand: &MatMulOperand| match operand {
        MatMulOperand::Const(value) => clean(&**value),
        MatMulOperand::Input(slot) => input_clean(*slot),
    };
    let from_pack = |operand: &MatMulOperand| matches!(operand, MatMulOperand::Input(slot) if product.inputs[*slot].node == pack.id);
    op.micro_ops.iter().all(|spec| match spec {
        ProtoFusedSpec::AddMatMul { a, b, .. } => match (from_pack(a), from_pack(b)) {
            (true, false) => operand_clean(b),
            (false, true) => operand_clean(a),
            _ => false,
        },
        _ => true,
    })
}

impl PackedRows {
    fn replacing(pack: &OptMatMulPack, input: &TypedFact, output: &TypedFact) -> Option<Self> {
        let packed = output
            .exotic_fact()?
            .downcast_ref::<DynPackedExoticFact>()?;
        let [format] = packed.packers.as_slice() else {
            return None;
        };
        let format = match input.datum_type {
            DatumType::I8 | DatumType::U8 => RowsFormat::Bytes(Packing::of(&**format)?),
            // tract's own packer moves whole panel rows of up to 32 lanes.
            DatumType::F32 => {
                let plain = format.downcast_ref::<PackedFormat>()?;
                (plain.dt == DatumType::F32 && plain.r > 32)
                    .then(|| RowsFormat::F32(plain.clone()))?
            }
            _ => return None,
        };
        let axes = pack.axes_mapping(&[input], &[output]).ok()?;
        let [k_axis] = axes.axis('K').ok()?.inputs[0][..] else {
            return None;
        };
        let [mn_axis] = axes.axis('M').ok()?.inputs[0][..] else {
            return None;
        };
        (mn_axis + 1 == input.rank() && k_axis != mn_axis).then_some(PackedRows {
            format,
            k_axis,
            beside_clean: false,
        })
    }
}

impl Op for PackedRows {
    fn name(&self) -> StaticName {
        "PackedRows".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let beside = match self.beside_clean {
            true => ", weights without −128",
            false => "",
        };
        Ok(vec![format!(
            "k axis {}, {}{beside} (iscamd)",
            self.k_axis, self.format
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for PackedRows {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let shape = input.shape();
        let (k, mn) = (shape[self.k_axis], shape[shape.len() - 1]);
        let k_stride: usize = shape[self.k_axis + 1..].iter().product();
        let plain = input.try_as_plain_ram()?;
        let outer: TVec<usize> = self.output_shape(shape);
        let outer_strides: TVec<usize> = (0..shape.len() - 1)
            .filter(|&a| a != self.k_axis)
            .map(|a| shape[a + 1..].iter().product())
            .collect();
        let mut values: TVec<Box<dyn MMMInputValue>> = tvec!();
        for coords in tract_ndarray::indices(&*outer) {
            use tract_ndarray::Dimension;
            let offset: usize = coords
                .slice()
                .iter()
                .zip(&outer_strides)
                .map(|(c, s)| c * s)
                .sum();
            let packed = match &self.format {
                RowsFormat::Bytes(format) => {
                    let (bytes, zeros) = (plain.as_bytes(), vec![0u8; mn]);
                    let mut panels = Panels::new(format, k, mn);
                    for block in 0..panels.blocks() {
                        let rows = std::array::from_fn(|j| match 4 * block + j {
                            kk if kk < k => &bytes[offset + kk * k_stride..][..mn],
                            _ => &zeros[..],
                        });
                        panels.write_block(block, rows);
                    }
                    panels.finish_beside(self.beside_clean)
                }
                RowsFormat::F32(format) => {
                    let values = &plain.as_slice::<f32>()?[offset..];
                    pack_f32(format, k, mn, values, k_stride)
                }
            };
            values.push(Box::new(packed));
        }
        let output =
            PackedMatrixStorage::new_batched(&outer, values).into_tensor(input.datum_type());
        Ok(tvec!(output.into_tvalue()))
    }
}

/// A K × MN matrix of f32, row `kk` at `values[kk · k_stride..]`, packed as `format`: each
/// panel holds `r` values of every row, zero past MN, then zeros to its end (the kernels'
/// padding record).
fn pack_f32(
    format: &PackedFormat,
    k: usize,
    mn: usize,
    values: &[f32],
    k_stride: usize,
) -> EagerPackedInput {
    let (r, panel_len) = (format.r, format.single_panel_len(k));
    let panels = mn.div_ceil(r);
    let size = size_of::<f32>();
    // SAFETY: a valid layout (tract's power-of-two alignments of at least 4 bytes, a size
    // far below isize::MAX); every value is written below before the blob is read.
    let mut blob =
        unsafe { Blob::new_for_size_and_align(panels * panel_len * size, format.alignment()) };
    // SAFETY: the blob holds `panels · panel_len` f32, aligned for them.
    let packed: &mut [f32] = unsafe {
        std::slice::from_raw_parts_mut(blob.as_bytes_mut().as_mut_ptr().cast(), panels * panel_len)
    };
    let full = mn / r;
    for kk in 0..k {
        let row = &values[kk * k_stride..][..mn];
        match r {
            48 => scatter_f32::<48>(row, packed, panel_len, kk, full),
            80 => scatter_f32::<80>(row, packed, panel_len, kk, full),
            _ => {
                let lanes = row.chunks_exact(r).zip(packed.chunks_exact_mut(panel_len));
                lanes.for_each(|(lanes, panel)| panel[kk * r..][..r].copy_from_slice(lanes));
            }
        }
        if full < panels {
            let width = mn - full * r;
            let out = &mut packed[full * panel_len + kk * r..][..r];
            out[..width].copy_from_slice(&row[full * r..]);
            out[width..].fill(0.0);
        }
    }
    for panel in packed.chunks_exact_mut(panel_len) {
        panel[k * r..].fill(0.0);
    }
    EagerPackedInput {
        fact: PackedExoticFact {
            format: Box::new(format.clone()),
            mn: mn.to_dim(),
            k,
        },
        packed: Arc::new(blob),
        panel_bytes: panel_len * size,
        mn,
    }
}

/// Row `kk`'s `R` values into each of the `full` whole panels: moves of 16 values (a
/// fixed-size copy of a whole row of lanes compiles to a `memcpy` call per panel).
fn scatter_f32<const R: usize>(
    row: &[f32],
    packed: &mut [f32],
    panel_len: usize,
    kk: usize,
    full: usize,
) {
    let panels = packed.chunks_exact_mut(panel_len).take(full);
    for (lanes, panel) in row.chunks_exact(R).zip(panels) {
        let to = &mut panel[kk * R..][..R];
        for (to, from) in to.chunks_exact_mut(16).zip(lanes.chunks_exact(16)) {
            let from: &[f32; 16] = from.try_into().expect("16 lanes");
            to.copy_from_slice(from);
        }
    }
}

impl PackedRows {
    /// The input shape without its K and MN axes.
    fn output_shape<D: Clone>(&self, input: &[D]) -> TVec<D> {
        let last = input.len() - 1;
        (0..last)
            .filter(|&a| a != self.k_axis)
            .map(|a| input[a].clone())
            .collect()
    }
}

impl TypedOp for PackedRows {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let shape = &inputs[0].shape;
        let packed = DynPackedExoticFact {
            k: shape[self.k_axis].clone(),
            mn: shape[shape.len() - 1].clone(),
            packers: vec![self.format.boxed()],
        };
        Ok(tvec!(inputs[0]
            .datum_type
            .fact(self.output_shape(&shape.to_tvec()))
            .with_exotic_fact(packed)))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::prelude::tract_ndarray::{ArrayD, Axis, Dimension, IxDyn};

    /// The activations of a product whose weights hold no −128 are packed knowing it (their
    /// panels may then sum pairs of blocks on aarch64), those beside weights with one not.
    #[test]
    fn rows_beside_weights_without_minus_128_are_marked() {
        use tract_onnx::tract_core::ops::einsum::EinSum;
        crate::model::kernels::leave_out_amx();
        let (m, k, n) = (8, 16, 40);
        for (low, expected) in [(-127i8, true), (i8::MIN, false)] {
            let mut weights = random_bytes(&[m, k], 3).mapv(|v| v.max(-127));
            weights[[5, 7]] = low;
            let mut model = TypedModel::default();
            let x = model.add_source("x", i8::fact([k, n])).unwrap();
            let w = model.add_const("w", weights.into_tensor()).unwrap();
            let op = EinSum::new("mk,kn->mn".parse().unwrap(), i32::datum_type());
            let c = model.wire_node("product", op, &[w, x]).unwrap();
            model.select_output_outlets(&c).unwrap();
            let mut plan = model.into_optimized().unwrap();
            let swapped = install(&mut plan).unwrap();
            assert_eq!(
                swapped.replaced, 1,
                "the activations, on A (n > m), packed by iscamd"
            );
            let marks: Vec<bool> = plan
                .nodes
                .iter()
                .filter_map(|node| node.op_as::<PackedRows>())
                .map(|op| op.beside_clean)
                .collect();
            assert_eq!(marks, [expected], "weights down to {low}");
        }
    }

    #[test]
    fn interleaves_any_number_of_lanes_from_any_column() {
        for (lanes, from) in [
            (0usize, 0usize),
            (3, 0),
            (8, 0),
            (16, 0),
            (24, 3),
            (37, 5),
            (64, 16),
        ] {
            // Row j holds 4m + j at column from + m, and junk before.
            let rows: Vec<Vec<u8>> = (0..4)
                .map(|j| {
                    (0..from + lanes)
                        .map(|i| (i.wrapping_sub(from).wrapping_mul(4) + j) as u8)
                        .collect()
                })
                .collect();
            let mut out = vec![0xAA; 4 * lanes];
            interleave4(std::array::from_fn(|j| &rows[j][..]), from, &mut out);
            let expected: Vec<u8> = (0..4 * lanes).map(|i| i as u8).collect();
            assert_eq!(out, expected, "{lanes} lanes from {from}");
        }
    }

    fn random_bytes(shape: &[usize], seed: u64) -> ArrayD<i8> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        ArrayD::from_shape_fn(IxDyn(shape), |_| rng.random())
    }

    /// `pack` of every K×MN matrix of `input`, as `OptMatMulPack` takes them: the other axes
    /// in row-major order.
    fn tracts<T: Datum + Copy>(
        pack: impl Fn(&Tensor) -> Box<dyn MMMInputValue>,
        input: &ArrayD<T>,
        k_axis: usize,
    ) -> Vec<Vec<u8>> {
        let mn_axis = input.ndim() - 1;
        let outer: Vec<usize> = (0..mn_axis).filter(|&a| a != k_axis).collect();
        let outer_shape: Vec<usize> = outer.iter().map(|&a| input.shape()[a]).collect();
        let matrices = tract_onnx::prelude::tract_ndarray::indices(outer_shape)
            .into_iter()
            .map(|coords| {
                let mut m = input.view();
                for (&axis, &c) in outer.iter().zip(coords.slice()).rev() {
                    m = m.index_axis_move(Axis(axis), c);
                }
                m
            });
        matrices
            .into_iter()
            .map(|m| {
                let packed = pack(&m.to_owned().into_tensor());
                let eager = packed.downcast_ref::<EagerPackedInput>().unwrap();
                eager.packed.as_bytes().to_vec()
            })
            .collect()
    }

    fn tracts_bytes(format: &Packing, input: &ArrayD<i8>, k_axis: usize) -> Vec<Vec<u8>> {
        let pack = |t: &Tensor| match format {
            Packing::K4(f) => f.pack_view(&t.view(), 0, 1).unwrap(),
            Packing::Plain(f) => f.pack_tensor(t, 0, 1).unwrap(),
            Packing::Headed(h) => (h.format)().prepare_one_view(&t.view(), 0, 1).unwrap(),
        };
        tracts(pack, input, k_axis)
    }

    fn ours<T: Datum + Copy>(format: RowsFormat, input: &ArrayD<T>, k_axis: usize) -> Vec<Vec<u8>> {
        let op = PackedRows {
            format,
            k_axis,
            beside_clean: false,
        };
        let tensor = input.clone().into_tensor();
        let mut model = TypedModel::default();
        let source = model.add_source("input", T::fact(input.shape())).unwrap();
        let packed = model.wire_node("pack", op, &[source]).unwrap();
        model.select_output_outlets(&packed).unwrap();
        let output = model
            .into_runnable()
            .unwrap()
            .run(tvec!(tensor.into_tvalue()))
            .unwrap();
        let storage = output[0].try_storage_as::<PackedMatrixStorage>().unwrap();
        storage
            .values()
            .iter()
            .map(|v| {
                let eager = v.downcast_ref::<EagerPackedInput>().unwrap();
                eager.packed.as_bytes().to_vec()
            })
            .collect()
    }

    /// Packed matrices with the plain layout's padding after row K zeroed: tract's packer
    /// leaves it as the allocator gave it (the kernels read it only into products that are
    /// thrown away), iscamd's zeroes it.
    /// `packed` with the bytes of a plain packing's panels past row K zeroed: tract leaves
    /// some of them unwritten.
    fn values_only(format: &Packing, k: usize, packed: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
        match format {
            Packing::Plain(f) => plain_values_only(f, k, packed),
            _ => packed,
        }
    }

    fn plain_values_only(f: &PackedFormat, k: usize, mut packed: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
        let size = f.dt.size_of();
        for matrix in &mut packed {
            for panel in matrix.chunks_exact_mut(f.single_panel_len(k) * size) {
                panel[k * f.r * size..].fill(0);
            }
        }
        packed
    }

    #[test]
    fn packs_the_bytes_tracts_packer_packs() {
        // SqueezeNet's 1×1 convolutions as tract runs them (K = channels, MN = a row), then
        // K not a multiple of 4 and MN not one of the panel width.
        for (shape, k_axis) in [
            (vec![1, 96, 55, 55], 1),
            (vec![16, 55, 55], 0),
            (vec![1, 512, 13, 13], 1),
            (vec![64, 13], 0),
            (vec![5, 3, 37], 0),
            (vec![2, 7, 40], 1),
        ] {
            let input = random_bytes(&shape, shape.len() as u64);
            for r in [4, 8, 16] {
                let formats = [
                    Packing::K4(PackedI8K4::new(r)),
                    Packing::Plain(PackedFormat::new(DatumType::I8, r, 16)),
                    Packing::Plain(PackedFormat::new(DatumType::I8, r, 32)),
                ];
                // iscamd's own kernel's packing, headers and all, at its width.
                let own = crate::model::kernels::own_headed_layout()
                    .filter(|h| h.r == r)
                    .map(Packing::Headed);
                for format in formats.into_iter().chain(own) {
                    let k = shape[k_axis];
                    let expected = values_only(&format, k, tracts_bytes(&format, &input, k_axis));
                    assert!(!expected.is_empty());
                    let ours = ours(RowsFormat::Bytes(format.clone()), &input, k_axis);
                    assert_eq!(
                        values_only(&format, k, ours),
                        expected,
                        "{shape:?} k axis {k_axis}, {format:?}"
                    );
                }
            }
        }
    }

    /// f32 rows at the panel widths tract's packer writes value by value: iscamd's 48-lane
    /// kernel's, tract's 80-lane one's, and another; MN off the width, K odd.
    #[test]
    fn packs_the_floats_tracts_packer_packs() {
        for (shape, k_axis) in [
            (vec![1, 16, 300], 1),
            (vec![7, 97], 0),
            (vec![2, 3, 5, 48], 2),
        ] {
            let input = random_bytes(&shape, 9).mapv(|b| b as f32 * 0.37);
            for r in [48, 80, 40] {
                let format = PackedFormat::new(DatumType::F32, r, 64);
                let k = shape[k_axis];
                let pack = |t: &Tensor| format.pack_tensor(t, 0, 1).unwrap();
                let expected = plain_values_only(&format, k, tracts(pack, &input, k_axis));
                assert!(!expected.is_empty());
                let ours = ours(RowsFormat::F32(format.clone()), &input, k_axis);
                assert_eq!(
                    plain_values_only(&format, k, ours),
                    expected,
                    "{shape:?} k axis {k_axis}, {r} lanes"
                );
            }
        }
    }
}
