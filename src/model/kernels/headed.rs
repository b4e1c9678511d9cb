//! The A packing of iscamd's own int8 kernels: tract's `PackedI8K4` panels, each after a
//! header that the kernel reads once per tile. What the header holds is the kernel's
//! ([`PanelHeader`]); the body is tract's own packer's, so it packs as fast as tract does,
//! at load time for weights and at run time where tract puts activations on the A side.

use std::fmt::Debug;
use std::hash::Hash;
use std::marker::PhantomData;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::tract_linalg::mmm::{
    EagerPackedInput, MMMInputFormat, MMMInputValue, PackedExoticFact, PackedMatrixStorage, Query,
};
use tract_onnx::tract_core::tract_linalg::pack::PackedI8K4;
use tract_onnx::tract_core::tract_linalg::WeightType;

use crate::model::tract::HeadedLayout;

/// Whether a product is what iscamd's int8 kernels take: bytes times bytes into i32, with
/// more than one column (one column is tract's matrix-vector kernel's).
pub fn takes(accumulator: DatumType, query: &Query) -> bool {
    accumulator == DatumType::I32
        && query.weight == WeightType::Plain(DatumType::I8)
        && query.activation.unquantized() == DatumType::I8
        && query.n != Some(1)
}

/// What a kernel keeps before each panel of A.
pub trait PanelHeader: Clone + Debug + Hash + PartialEq + Eq + Send + Sync + 'static {
    /// Rows of A per panel.
    const R: usize;
    /// Bytes of the header.
    const BYTES: usize;
    /// What the header holds, for the format's name.
    const NAME: &'static str;
    /// Writes a panel's header from its packed body (tract's `PackedI8K4` layout).
    fn write(body: &[u8], header: &mut [u8]);
    /// Writes the header of a panel whose product's other operand holds no −128 (constant
    /// weights, checked when the plan is built): as [`Self::write`] unless what the header
    /// says depends on both operands.
    fn write_beside_clean(body: &[u8], header: &mut [u8]) {
        Self::write(body, header)
    }
}

/// Panels of `H::R` rows of bytes in tract's `PackedI8K4` layout, each after its header.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct HeadedI8K4<H>(PhantomData<H>);

impl<H: PanelHeader> HeadedI8K4<H> {
    pub fn new() -> Self {
        HeadedI8K4(PhantomData)
    }

    /// This packing, as iscamd's packing ops write it.
    pub fn layout() -> HeadedLayout {
        HeadedLayout {
            r: H::R,
            bytes: H::BYTES,
            name: H::NAME,
            write: H::write,
            write_beside_clean: H::write_beside_clean,
            format: || Box::new(Self::new()),
        }
    }

    fn panel_bytes(k: usize) -> usize {
        H::BYTES + PackedI8K4::new(H::R).single_panel_len(k)
    }
}

impl<H: PanelHeader> std::fmt::Display for HeadedI8K4<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "I8K4+{}[{}]", H::NAME, H::R)
    }
}

impl<H: PanelHeader> MMMInputFormat for HeadedI8K4<H> {
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
        let tracts = PackedI8K4::new(H::R).pack_view(t, k_axis, mn_axis)?;
        let body = tracts
            .downcast_ref::<EagerPackedInput>()
            .context("tract's I8K4 packer returns an eager input")?;
        let (k, mn) = (t.shape()[k_axis], t.shape()[mn_axis]);
        let panel_bytes = H::BYTES + body.panel_bytes;
        let panels = mn.div_ceil(H::R);
        // SAFETY: a fresh blob, written whole below before it is read.
        let mut blob =
            unsafe { Blob::new_for_size_and_align(panels * panel_bytes, HeadedLayout::ALIGNMENT) };
        let bodies = body.packed.as_bytes().chunks_exact(body.panel_bytes);
        for (panel, body) in blob
            .as_bytes_mut()
            .chunks_exact_mut(panel_bytes)
            .zip(bodies)
        {
            let (header, packed) = panel.split_at_mut(H::BYTES);
            packed.copy_from_slice(body);
            H::write(body, header);
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
        H::R
    }

    fn k_alignment(&self) -> usize {
        4
    }

    fn merge_with<'o, 'a: 'o, 'b: 'o>(
        &'a self,
        other: &'b dyn MMMInputFormat,
    ) -> Option<&'o dyn MMMInputFormat> {
        other.downcast_ref::<Self>().map(|_| self as _)
    }

    fn mem_size(&self, k: TDim, mn: TDim) -> TDim {
        mn.divceil(H::R) * Self::panel_bytes(k.to_usize().unwrap_or(0))
    }

    fn extract_at_mn_f16(&self, _: &EagerPackedInput, _: usize, _: &mut [f16]) -> TractResult<()> {
        bail!("{self} has no f16 extraction")
    }

    fn extract_at_mn_f32(&self, _: &EagerPackedInput, _: usize, _: &mut [f32]) -> TractResult<()> {
        bail!("{self} has no f32 extraction")
    }
}
