//! A per-channel int8 convolution's product and its requantisation, a block of pixels at a
//! time.
//!
//! tract's matrix kernels fold a per-tensor rescale into each tile, not a per-channel one:
//! a per-channel convolution stores its whole i32 product (conv1 of SqueezeNet: 4.7 MB,
//! past a core's L2), and [`Requantize`] reads it back from memory — on x86 the
//! requantisation was a sixth of a pass, most of it that traffic (docs/benchmarks.md).
//! [`RequantizedProduct`] runs the same product with the same kernel, but for one block of
//! pixels at a time into a buffer that stays in cache, and requantises each block before
//! the next: the same bytes, one pass over memory fewer. ONNX Runtime's int8 products do
//! the same (MLAS requantises each block of its output as it is computed).

use std::fmt;
use std::hash::{Hash, Hasher};

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::change_axes::IntoShape;
use tract_onnx::tract_core::ops::matmul::optimized::{OptMatMul, ProtoFusedSpec};
use tract_onnx::tract_core::tract_linalg::mmm::{
    AsInputValue, FusedSpec, MMMInputFormat, MMMInputValue, MatMatMul,
};

use super::requant::Requantize;
use super::swap::Swapped;

/// Bytes of i32 products per block: well inside a core's L2 (1–2 MiB on the CPUs measured),
/// with room for the packed operands the block reads.
const BLOCK_BYTES: usize = 256 * 1024;

/// Which of the product's axes holds the output channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Channels {
    /// The rows of C (A holds the weights, B the pixels).
    Rows,
    /// The columns of C (A holds the pixels, B the weights).
    Cols,
}

/// `requantize(product)`, the product computed and requantised a block of pixels at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequantizedProduct {
    product: OptMatMul,
    requantize: Requantize,
    channels: Channels,
    output: TypedFact,
}

/// Fuses every `OptMatMul → Requantize` of `model` whose product can run by blocks of
/// pixels; says how many [`Requantize`]s it found and fused.
pub fn install(model: &mut TypedModel) -> TractResult<Swapped> {
    let mut swapped = Swapped::default();
    for id in 0..model.nodes.len() {
        let Some(requantize) = model.nodes[id].op_as::<Requantize>() else {
            continue;
        };
        swapped.candidates += 1;
        let Some((op, product)) = RequantizedProduct::fusing(model, id, requantize)? else {
            continue;
        };
        let mut patch = TypedModelPatch::default();
        let inputs = model.nodes[product]
            .inputs
            .iter()
            .map(|&i| patch.tap_model(model, i))
            .collect::<TractResult<TVec<_>>>()?;
        let name = format!("{}.by-blocks", model.nodes[id].name);
        let wire = patch.wire_node(name, op, &inputs)?;
        patch.shunt_outside(model, OutletId::new(id, 0), wire[0])?;
        patch.apply(model)?;
        swapped.replaced += 1;
    }
    Ok(swapped)
}

impl RequantizedProduct {
    /// The fused op for the `Requantize` node `id` and the node of its product, when its
    /// input is an `OptMatMul` (maybe reshaped) used by it alone, whose output is
    /// `[channels, pixels]` in memory (every other axis 1) and whose other steps are per
    /// channel.
    fn fusing(
        model: &TypedModel,
        id: usize,
        requantize: &Requantize,
    ) -> TractResult<Option<(RequantizedProduct, usize)>> {
        let used_once = |outlet: OutletId| {
            model.nodes[outlet.node].outputs[outlet.slot]
                .successors
                .len()
                == 1
                && !model.outputs.contains(&outlet)
        };
        let mut from = model.nodes[id].inputs[0];
        // A reshape keeps the order of the elements: the product's are the requantised ones.
        if model.nodes[from.node].op_is::<IntoShape>() && used_once(from) {
            from = model.nodes[from.node].inputs[0];
        }
        let node = &model.nodes[from.node];
        let Some(product) = node.op_as::<OptMatMul>() else {
            return Ok(None);
        };
        let (Some(m_axis), Some(n_axis)) = (product.c_m_axis, product.c_n_axis) else {
            return Ok(None);
        };
        let Some(shape) = product.c_fact.shape.as_concrete() else {
            return Ok(None);
        };
        let others_are_one = (0..shape.len())
            .filter(|&a| a != m_axis && a != n_axis)
            .all(|a| shape[a] == 1);
        let channels = match (m_axis < n_axis, requantize.inner()) {
            (true, inner) if inner == shape[n_axis] => Channels::Rows,
            (false, inner) if inner == shape[m_axis] => Channels::Cols,
            _ => return Ok(None),
        };
        let per_channel = product.micro_ops.iter().all(|op| match (op, channels) {
            // Panels read whole: a panel extractor would hand the kernel a copy.
            (ProtoFusedSpec::AddMatMul { packings, .. }, _) => {
                packings.iter().all(|(_, extractor)| extractor.is_none())
            }
            (ProtoFusedSpec::BinPerRow(..), Channels::Rows)
            | (ProtoFusedSpec::BinPerCol(..), Channels::Cols)
            | (ProtoFusedSpec::BinScalar(..) | ProtoFusedSpec::Scaler(_), _) => true,
            (ProtoFusedSpec::Store(stores), _) => stores.len() == product.mmm.len(),
            _ => false,
        });
        let fits = used_once(from)
            && others_are_one
            && per_channel
            && product.c_fact.datum_type == i32::datum_type();
        let output = model.outlet_fact(OutletId::new(id, 0))?.clone();
        let op = RequantizedProduct {
            product: product.clone(),
            requantize: requantize.clone(),
            channels,
            output,
        };
        Ok(fits.then_some((op, from.node)))
    }

    /// Output channels and pixels of the product.
    fn extents(&self, shape: &[usize]) -> (usize, usize) {
        let (m, n) = (
            shape[self.product.c_m_axis.unwrap_or(0)],
            shape[self.product.c_n_axis.unwrap_or(0)],
        );
        match self.channels {
            Channels::Rows => (m, n),
            Channels::Cols => (n, m),
        }
    }

    /// The pixels' axis of C, the pixels in a panel of their operand, and how many a block
    /// has: whole panels, as many as [`BLOCK_BYTES`] of products hold.
    fn blocks(&self, mmm: &dyn MatMatMul, channels: usize) -> TractResult<(usize, usize, usize)> {
        let (axis, panel) = match self.channels {
            Channels::Rows => (self.product.c_n_axis, mmm.nr()),
            Channels::Cols => (self.product.c_m_axis, mmm.mr()),
        };
        let block = (BLOCK_BYTES / 4 / channels.max(1) / panel).max(1) * panel;
        Ok((
            axis.context("the product has a pixels' axis")?,
            panel,
            block,
        ))
    }

    fn eval_blocks(&self, inputs: &[TValue]) -> TractResult<Tensor> {
        let c_shape = self
            .product
            .c_fact
            .shape
            .as_concrete()
            .context("concrete")?;
        let (channels, pixels) = self.extents(c_shape);
        let n = c_shape[self.product.c_n_axis.unwrap_or(0)];
        let mode = self.product.mode_picker.pick(n)?;
        let mmm = &*self.product.mmm[mode];
        let (pixel_axis, panel, block) = self.blocks(mmm, channels)?;
        let mut block_shape: TVec<usize> = c_shape.into();
        block_shape[pixel_axis] = block.min(pixels);
        // SAFETY (both): every element is written before it is read — each block's products
        // by the kernel, every output byte by the block that holds it.
        let products = unsafe { Tensor::uninitialized::<i32>(&block_shape)? };
        let mut output = unsafe { Tensor::uninitialized_dt(self.output.datum_type, c_shape)? };
        // SAFETY: the kernel's own scratch space, and a store of the buffer's shape.
        let (mut scratch, store) = unsafe {
            let store = mmm.c_view(self.product.c_m_axis, self.product.c_n_axis);
            (mmm.allocate_scratch_space(), store.wrap(&products.view()))
        };
        let origin = vec![0; c_shape.len()];
        for first in (0..pixels).step_by(block) {
            let width = block.min(pixels - first);
            let mut specs: Vec<FusedSpec> = (self.product.micro_ops.iter())
                .map(|op| match op {
                    ProtoFusedSpec::Store(_) => FusedSpec::Store(store),
                    op => op.resolve(inputs, &origin, &products, mmm, mode),
                })
                .collect();
            let windows: Vec<PanelWindow> = specs
                .iter_mut()
                .filter_map(|spec| self.pixels_operand(spec))
                .map(|pixels| PanelWindow::new(&**pixels, first / panel, width))
                .collect();
            for (spec, window) in specs
                .iter_mut()
                .filter_map(|s| self.pixels_operand(s))
                .zip(&windows)
            {
                *spec = AsInputValue::Borrowed(window);
            }
            let (m, n) = match self.channels {
                Channels::Rows => (channels, width),
                Channels::Cols => (width, channels),
            };
            // SAFETY: the specs are the plan's own for these operands, the pixels' panels
            // narrowed to the block, the store to a buffer of the block's shape.
            unsafe { mmm.run_with_scratch_space(m, n, &mut *scratch, &specs)? };
            let products = products.try_as_plain_ram()?;
            let block_products = products.as_slice::<i32>()?;
            let columns = first..first + width;
            self.requantize.block(
                block_products,
                block.min(pixels),
                &mut output,
                columns,
                pixels,
            )?;
        }
        output.set_shape(self.output.shape.as_concrete().context("concrete")?)?;
        Ok(output)
    }

    /// The operand of a product step that holds the pixels.
    fn pixels_operand<'s, 't>(
        &self,
        spec: &'s mut FusedSpec<'t>,
    ) -> Option<&'s mut AsInputValue<'t>> {
        match (spec, self.channels) {
            (FusedSpec::AddMatMul { b, .. }, Channels::Rows) => Some(b),
            (FusedSpec::AddMatMul { a, .. }, Channels::Cols) => Some(a),
            _ => None,
        }
    }
}

impl Op for RequantizedProduct {
    fn name(&self) -> StaticName {
        "RequantizedProduct".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let mut info = self.product.info()?;
        info.extend(self.requantize.info()?);
        Ok(info)
    }

    op_as_typed_op!();
}

impl EvalOp for RequantizedProduct {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        Ok(tvec!(self.eval_blocks(&inputs)?.into_tvalue()))
    }
}

impl TypedOp for RequantizedProduct {
    fn output_facts(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(self.output.clone()))
    }

    as_op!();
}

/// Panels `first..` of a packed operand, `mn` rows or columns of it: a block of the pixels
/// one product reads.
#[derive(Clone)]
struct PanelWindow {
    /// The operand, alive while the product that reads this window runs.
    whole: *const dyn MMMInputValue,
    first: usize,
    mn: usize,
}

// SAFETY: a window only lives inside one `eval`, on its thread, while `whole` does; tract
// may hand it to its worker threads for that product, as it does the operand itself.
unsafe impl Send for PanelWindow {}
unsafe impl Sync for PanelWindow {}

impl PanelWindow {
    fn new(whole: &dyn MMMInputValue, first: usize, mn: usize) -> PanelWindow {
        // The lifetime goes: tract's trait objects must be 'static, and a window only
        // lives as long as the operand it narrows (above).
        let whole: *const (dyn MMMInputValue + '_) = whole;
        PanelWindow {
            // SAFETY: only the lifetime changes, see above.
            whole: unsafe {
                std::mem::transmute::<
                    *const (dyn MMMInputValue + '_),
                    *const (dyn MMMInputValue + 'static),
                >(whole)
            },
            first,
            mn,
        }
    }

    fn whole(&self) -> &dyn MMMInputValue {
        // SAFETY: the operand outlives the window (above).
        unsafe { &*self.whole }
    }
}

impl PartialEq for PanelWindow {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::addr_eq(self.whole, other.whole)
            && (self.first, self.mn) == (other.first, other.mn)
    }
}

impl Eq for PanelWindow {}

impl Hash for PanelWindow {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (self.whole.cast::<()>() as usize, self.first, self.mn).hash(state);
    }
}

impl fmt::Debug for PanelWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self)
    }
}

impl fmt::Display for PanelWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} panels from {} of {}",
            self.mn,
            self.first,
            self.whole()
        )
    }
}

impl MMMInputValue for PanelWindow {
    fn format(&self) -> &dyn MMMInputFormat {
        self.whole().format()
    }

    fn scratch_panel_buffer_layout(&self) -> Option<std::alloc::Layout> {
        self.whole().scratch_panel_buffer_layout()
    }

    fn panel_bytes(&self, i: usize, buffer: Option<*mut u8>) -> TractResult<*const u8> {
        self.whole().panel_bytes(self.first + i, buffer)
    }

    fn mn(&self) -> usize {
        self.mn
    }

    fn k(&self) -> usize {
        self.whole().k()
    }

    fn exotic_fact(&self) -> &dyn ExoticFact {
        self.whole().exotic_fact()
    }

    fn extract_at_mn_f16(&self, mn: usize, slice: &mut [f16]) -> TractResult<()> {
        let r = self.format().r();
        self.whole().extract_at_mn_f16(self.first * r + mn, slice)
    }

    fn extract_at_mn_f32(&self, mn: usize, slice: &mut [f32]) -> TractResult<()> {
        let r = self.format().r();
        self.whole().extract_at_mn_f32(self.first * r + mn, slice)
    }
}
