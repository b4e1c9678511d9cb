//! Element-wise float steps between DequantizeLinears and a QuantizeLinear as one 8-bit
//! lookup table.
//!
//! tract turns `DQ → (unary element-wise op)* → Q` into a 256-entry table, but stops at an
//! op with a second input: a Clip is a `Max` and a `Min` with constants, so an int8
//! MobileNet's ReLU6 after every convolution (`DQ → Clip → Q` in the files quantizers
//! write) runs as three float passes over the activations — a quarter of its int8 pass
//! was the quantisation alone (perf, docs/benchmarks.md "Model zoo"); and a QDQ SiLU reads
//! its bytes twice (`DQ(x) · DQ(Q(σ(DQ(x))))`), five float passes. [`install`] finds every
//! QuantizeLinear whose input is such a function of one byte tensor, runs the function on
//! the 256 possible bytes, and puts tract's table op in its place: the same bytes, as the
//! table is the function's own output. Every table op, tract's own too, looks up sixteen
//! bytes per step on aarch64 ([`NeonTable`]) and sixty-four on x86-64 with AVX-512 VBMI
//! (`VbmiTable`), where tract's lookup takes one.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;
use tract_onnx::tract_core::ops::quant::{
    lookup_table, DequantizeLinearF32, LookupTable, QuantizeLinearI8, QuantizeLinearU8,
};
use tract_onnx::tract_core::tract_linalg::lut::Lut;

use std::collections::HashMap;

use super::swap::Swapped;

/// Replaces every QuantizeLinear of a decluttered `model` whose float input is computed
/// element by element from one byte tensor — through DequantizeLinears, unary ops and binary
/// ones whose other input is that tensor too or a scalar constant — and through at least
/// one binary op; says how many it found and replaced. An int8 SiLU (`x · σ(x)` with a
/// quantize between σ and the product) is one, as a ReLU6 (`min(max(x, 0), 6)`) is; a
/// chain of unary ops alone tract folds itself.
pub fn install(model: &mut TypedModel) -> TractResult<Swapped> {
    let mut swapped = retable(model)?;
    // Patches append nodes: the ones present now are all that can be candidates.
    for q in 0..model.nodes.len() {
        if quantizes_to(&model.nodes[q]).is_none() {
            continue;
        }
        let Some(function) = ByteFunction::of(model, q)? else {
            continue;
        };
        swapped.candidates += 1;
        let Some(table) = function.table(model, q)? else {
            continue;
        };
        let mut patch = TypedModelPatch::default();
        let input = patch.tap_model(model, function.bytes)?;
        let name = format!("{}.lookup", model.nodes[q].name);
        let wire = patch.wire_node(name, table, &[input])?;
        patch.shunt_outside(model, OutletId::new(q, 0), wire[0])?;
        patch.apply(model)?;
        swapped.replaced += 1;
    }
    Ok(swapped)
}

/// The 8-bit type a node quantizes to, if it is a QuantizeLinear.
fn quantizes_to(node: &TypedNode) -> Option<DatumType> {
    let op = node.op_as::<ElementWiseOp>()?;
    if op.0.downcast_ref::<QuantizeLinearU8>().is_some() {
        Some(DatumType::U8)
    } else {
        op.0.downcast_ref::<QuantizeLinearI8>()
            .map(|_| DatumType::I8)
    }
}

/// The nodes that compute a QuantizeLinear's input from the bytes of one tensor, element
/// by element.
struct ByteFunction {
    /// The byte tensor every DequantizeLinear of the function reads.
    bytes: OutletId,
    /// The function's nodes, each after its inputs.
    nodes: Vec<usize>,
}

impl ByteFunction {
    /// More nodes than any activation quantizers write (SiLU is five).
    const MOST_NODES: usize = 16;

    /// The function feeding the QuantizeLinear `q`, when there is one with a binary op.
    fn of(model: &TypedModel, q: usize) -> TractResult<Option<ByteFunction>> {
        let mut walk = Walk {
            model,
            bytes: None,
            nodes: Vec::new(),
            binary: false,
        };
        let found = walk.visit(model.nodes[q].inputs[0].node)?;
        Ok(match (found, walk.bytes) {
            (true, Some(bytes)) if walk.binary => Some(ByteFunction {
                bytes,
                nodes: walk.nodes,
            }),
            _ => None,
        })
    }

    /// tract's table op for the function and `q`: the nodes themselves, run on the 256
    /// bytes.
    fn table(&self, model: &TypedModel, q: usize) -> TractResult<Option<ElementWiseOp>> {
        let dt = model.outlet_fact(self.bytes)?.datum_type;
        if quantizes_to(&model.nodes[q]) != Some(dt) {
            return Ok(None);
        }
        let mut adhoc = TypedModel::default();
        let source = adhoc.add_source("bytes", dt.fact([256]))?;
        let mut wires: HashMap<OutletId, OutletId> = HashMap::new();
        for &id in self.nodes.iter().chain([&q]) {
            let node = &model.nodes[id];
            let mut inputs = TVec::new();
            for (i, outlet) in node.inputs.iter().enumerate() {
                let wire = match (wires.get(outlet), &model.outlet_fact(*outlet)?.konst) {
                    (Some(wire), _) => *wire,
                    (None, Some(k)) => {
                        let scalar = k.clone().into_tensor().into_shape(&[1])?;
                        adhoc.add_const(format!("{}.{i}", node.name), scalar)?
                    }
                    // A DequantizeLinear's input: the bytes.
                    (None, None) => source,
                };
                inputs.push(wire);
            }
            let output = adhoc.wire_node(&*node.name, node.op.clone(), &inputs)?[0];
            wires.insert(OutletId::new(id, 0), output);
        }
        adhoc.select_output_outlets(&[wires[&OutletId::new(q, 0)]])?;
        let bytes: Vec<u8> = (0..=255).collect();
        let input = match dt {
            DatumType::U8 => tensor1(&bytes),
            _ => tensor1(&bytes.iter().map(|&b| b as i8).collect::<Vec<_>>()),
        };
        let output = SimplePlan::new(adhoc)?
            .run(tvec!(input.into_tvalue()))?
            .remove(0);
        let output = output.into_tensor();
        let table: Vec<u8> = match dt {
            DatumType::U8 => output.try_as_plain_ram()?.as_slice::<u8>()?.to_vec(),
            _ => {
                let plain = output.try_as_plain_ram()?;
                plain.as_slice::<i8>()?.iter().map(|&v| v as u8).collect()
            }
        };
        Ok(Some(lookup_table(byte_table(&table)?)))
    }
}

/// A depth-first walk up from a QuantizeLinear's input.
struct Walk<'a> {
    model: &'a TypedModel,
    bytes: Option<OutletId>,
    /// Visited nodes, each after its inputs.
    nodes: Vec<usize>,
    binary: bool,
}

impl Walk<'_> {
    /// Adds `id` and what it reads; false where that is not a function of the bytes.
    fn visit(&mut self, id: usize) -> TractResult<bool> {
        if self.nodes.contains(&id) {
            return Ok(true);
        }
        if self.nodes.len() == ByteFunction::MOST_NODES {
            return Ok(false);
        }
        let node = &self.model.nodes[id];
        let (inputs, outputs) = self.model.node_facts(id)?;
        if node.op_is::<DequantizeLinearF32>() {
            // Bytes the function quantized itself (σ's, in a SiLU) are read through; the
            // others are its input.
            let mark = (self.nodes.len(), self.bytes, self.binary);
            if !self.visit(node.inputs[0].node)? {
                (self.bytes, self.binary) = (mark.1, mark.2);
                self.nodes.truncate(mark.0);
                let bytes = node.inputs[0];
                if *self.bytes.get_or_insert(bytes) != bytes {
                    return Ok(false);
                }
            }
            self.nodes.push(id);
            return Ok(true);
        }
        if outputs.len() != 1 {
            return Ok(false);
        }
        let unary = node.inputs.len() == 1
            && node
                .op
                .axes_mapping(&inputs, &outputs)
                .is_ok_and(|m| m.is_element_wise_unary());
        let binary = node.op_is::<TypedBinOp>() && node.inputs.len() == 2;
        if !unary && !binary {
            return Ok(false);
        }
        self.binary |= binary;
        // Each tensor read has the output's shape (no broadcast: one value per byte).
        for (outlet, fact) in node.inputs.iter().zip(&inputs) {
            let scalar = fact.konst.as_ref().is_some_and(|k| k.len() == 1);
            if !scalar && (fact.shape != outputs[0].shape || !self.visit(outlet.node)?) {
                return Ok(false);
            }
        }
        self.nodes.push(id);
        Ok(true)
    }
}

/// The 256-byte table `table` as a lookup the table op runs: iscamd's where it has one for
/// this CPU ([`own_lookup`]), tract's byte-at-a-time one elsewhere.
fn byte_table(table: &[u8]) -> TractResult<Box<dyn Lut>> {
    let bytes: [u8; 256] = table.try_into().context("a byte table has 256 entries")?;
    match own_lookup(bytes) {
        Some(lut) => Ok(lut),
        None => tract_linalg::routines::lut_u8(table),
    }
}

/// iscamd's lookup of `table`: sixteen bytes a step with NEON on aarch64, sixty-four with
/// AVX-512 VBMI on x86-64 CPUs that have it.
fn own_lookup(table: [u8; 256]) -> Option<Box<dyn Lut>> {
    #[cfg(target_arch = "aarch64")]
    return Some(Box::new(NeonTable(table)));
    #[cfg(target_arch = "x86_64")]
    return VbmiTable::runs_here().then(|| Box::new(VbmiTable(table)) as Box<dyn Lut>);
    #[allow(unreachable_code)]
    None
}

/// Puts iscamd's lookup in every table op tract made itself (its own folding of
/// `DQ → unary ops → Q`) where iscamd has one for this CPU; says how many it found and
/// replaced.
fn retable(model: &mut TypedModel) -> TractResult<Swapped> {
    let mut swapped = Swapped::default();
    for id in 0..model.nodes.len() {
        let Some(op) = model.nodes[id].op_as::<ElementWiseOp>() else {
            continue;
        };
        let Some(lut) = op.0.downcast_ref::<LookupTable>() else {
            continue;
        };
        swapped.candidates += 1;
        let op = lookup_table(byte_table(lut.table.table())?);
        let patch = TypedModelPatch::replace_single_op(
            model,
            &model.nodes[id],
            &model.nodes[id].inputs,
            op,
        )?;
        patch.apply(model)?;
        swapped.replaced += 1;
    }
    Ok(swapped)
}

/// A 256-byte table looked up sixteen bytes at a time: `tbl` over its first 64 entries,
/// `tbx` over the next three quarters with the index moved down (an index out of a
/// quarter's range leaves the byte as it was). tract's aarch64 lookup is byte by byte.
#[cfg(target_arch = "aarch64")]
#[derive(Debug, Clone)]
struct NeonTable([u8; 256]);

#[cfg(target_arch = "aarch64")]
impl Lut for NeonTable {
    fn table(&self) -> &[u8] {
        &self.0
    }

    fn run(&self, buf: &mut [u8]) {
        use std::arch::aarch64::*;
        let mut blocks = buf.chunks_exact_mut(16);
        // SAFETY: NEON is part of aarch64's baseline; the table loads read its 256 bytes,
        // each block's load and store its 16.
        unsafe {
            let t = self.0.as_ptr();
            let quarters = [0, 64, 128, 192].map(|at| vld1q_u8_x4(t.add(at)));
            let [q64, q128, q192] = [64, 128, 192].map(|v| vdupq_n_u8(v));
            for block in &mut blocks {
                let x = vld1q_u8(block.as_ptr());
                let mut y = vqtbl4q_u8(quarters[0], x);
                y = vqtbx4q_u8(y, quarters[1], vsubq_u8(x, q64));
                y = vqtbx4q_u8(y, quarters[2], vsubq_u8(x, q128));
                y = vqtbx4q_u8(y, quarters[3], vsubq_u8(x, q192));
                vst1q_u8(block.as_mut_ptr(), y);
            }
        }
        for b in blocks.into_remainder() {
            *b = self.0[*b as usize];
        }
    }
}

/// A 256-byte table looked up sixty-four bytes at a time: `vpermi2b` over each half of the
/// table (it reads an index's low seven bits), the index's top bit picking the half.
#[cfg(target_arch = "x86_64")]
#[derive(Debug, Clone)]
struct VbmiTable([u8; 256]);

#[cfg(target_arch = "x86_64")]
impl VbmiTable {
    fn runs_here() -> bool {
        std::arch::is_x86_feature_detected!("avx512vbmi")
            && std::arch::is_x86_feature_detected!("avx512bw")
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    fn look_up(&self, buf: &mut [u8]) {
        use std::arch::x86_64::*;
        let mut blocks = buf.chunks_exact_mut(64);
        // SAFETY: the table loads read its 256 bytes, each block's load and store its 64.
        unsafe {
            let t = self.0.as_ptr();
            let t0 = _mm512_loadu_si512(t.cast());
            let t1 = _mm512_loadu_si512(t.add(64).cast());
            let t2 = _mm512_loadu_si512(t.add(128).cast());
            let t3 = _mm512_loadu_si512(t.add(192).cast());
            for block in &mut blocks {
                let x = _mm512_loadu_si512(block.as_ptr().cast());
                let low = _mm512_permutex2var_epi8(t0, x, t1);
                let high = _mm512_permutex2var_epi8(t2, x, t3);
                let y = _mm512_mask_blend_epi8(_mm512_movepi8_mask(x), low, high);
                _mm512_storeu_si512(block.as_mut_ptr().cast(), y);
            }
        }
        for b in blocks.into_remainder() {
            *b = self.0[*b as usize];
        }
    }
}

#[cfg(target_arch = "x86_64")]
impl Lut for VbmiTable {
    fn table(&self) -> &[u8] {
        &self.0
    }

    fn run(&self, buf: &mut [u8]) {
        // SAFETY: made only where the CPU has AVX-512 VBMI and BW (`own_lookup`).
        unsafe { self.look_up(buf) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_core::ops::math::{max, min, mul};
    use tract_onnx::tract_core::ops::nn::sigmoid;
    use tract_onnx::tract_core::ops::quant::{quantize_linear_i8, quantize_linear_u8};

    /// `Q(min(max(DQ(x), 0), 6))` of `[2, 256]` bytes (every value, twice): an int8
    /// ReLU6 as quantizers write it, the constants of the rank tract gives them.
    fn relu6(dt: DatumType) -> TypedModel {
        let mut model = TypedModel::default();
        let x = model.add_source("x", dt.fact([2, 256])).unwrap();
        let zero_point = if dt == DatumType::U8 { 3 } else { -7 };
        let dq = DequantizeLinearF32::new(0.037, zero_point);
        let y = model.wire_node("dq", dq, &[x]).unwrap();
        let lo = model.add_const("lo", tensor2(&[[0f32]])).unwrap();
        let y = model.wire_node("max", max(), &[y[0], lo]).unwrap();
        let hi = model.add_const("hi", tensor2(&[[6f32]])).unwrap();
        let y = model.wire_node("min", min(), &[hi, y[0]]).unwrap();
        let q = match dt {
            DatumType::U8 => quantize_linear_u8(0.0239, 2),
            _ => quantize_linear_i8(0.0239, -128),
        };
        let y = model.wire_node("q", q, &y).unwrap();
        model.select_output_outlets(&y).unwrap();
        model
    }

    /// `Q(DQ(x) · DQ(Q(σ(DQ(x)))))` of `[2, 256]` bytes: an int8 SiLU as a QDQ file has
    /// it, the dequantized `x` read twice.
    fn silu(dt: DatumType) -> TypedModel {
        let mut model = TypedModel::default();
        let x = model.add_source("x", dt.fact([2, 256])).unwrap();
        let (zero_point, q_zero_point) = if dt == DatumType::U8 {
            (131, 0)
        } else {
            (3, -128)
        };
        let dq = DequantizeLinearF32::new(0.061, zero_point);
        let x = model.wire_node("dq", dq, &[x]).unwrap()[0];
        let sigmoid = model.wire_node("sigmoid", sigmoid(), &[x]).unwrap();
        let (q, q_sigmoid) = match dt {
            DatumType::U8 => (
                quantize_linear_u8(0.0417, 2),
                quantize_linear_u8(1.0 / 255.0, 0),
            ),
            _ => (
                quantize_linear_i8(0.0417, -126),
                quantize_linear_i8(1.0 / 255.0, -128),
            ),
        };
        let s = model.wire_node("q.sigmoid", q_sigmoid, &sigmoid).unwrap();
        let dq_sigmoid = DequantizeLinearF32::new(1.0 / 255.0, q_zero_point);
        let s = model.wire_node("dq.sigmoid", dq_sigmoid, &s).unwrap()[0];
        let y = model.wire_node("mul", mul(), &[x, s]).unwrap();
        let y = model.wire_node("q", q, &y).unwrap();
        model.select_output_outlets(&y).unwrap();
        model
    }

    use super::super::run_optimized as run;

    /// iscamd's lookup where this CPU has one (NEON; AVX-512 VBMI), else tract's.
    #[test]
    fn the_lookup_reads_every_byte_as_the_table_says() {
        let table: Vec<u8> = (0..=255u8)
            .map(|b| b.wrapping_mul(167).wrapping_add(13))
            .collect();
        let lut = byte_table(&table).unwrap();
        for len in [0, 5, 16, 256 + 16 + 7, 1000] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 7 % 256) as u8).collect();
            let mut looked_up = bytes.clone();
            lut.run(&mut looked_up);
            let expected: Vec<u8> = bytes.iter().map(|&b| table[b as usize]).collect();
            assert_eq!(looked_up, expected, "{len} bytes");
        }
    }

    /// `model` of each 8-bit type, run on every byte, equals the one table it becomes.
    fn becomes_one_table_of_the_same_bytes(model: fn(DatumType) -> TypedModel) {
        for dt in [DatumType::U8, DatumType::I8] {
            let bytes: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
            let x = tract_ndarray::Array2::from_shape_vec([2, 256], bytes)
                .unwrap()
                .into_tensor();
            let x = x.cast_to_dt(dt).unwrap().into_owned();
            let model = model(dt).into_decluttered().unwrap();
            let expected = run(model.clone(), &x);
            let mut ours = model;
            let swapped = install(&mut ours).unwrap();
            ours.compact().unwrap();
            let one = Swapped {
                candidates: 1,
                replaced: 1,
            };
            assert_eq!(swapped, one, "{dt:?}");
            // The source and the table.
            assert_eq!(ours.nodes.len(), 2, "{dt:?}: {ours}");
            assert_eq!(run(ours, &x), expected, "{dt:?}");
        }
    }

    #[test]
    fn a_chain_with_constants_becomes_a_table_of_the_same_bytes() {
        becomes_one_table_of_the_same_bytes(relu6);
    }

    #[test]
    fn a_silu_reading_the_bytes_twice_becomes_one_table_of_the_same_bytes() {
        becomes_one_table_of_the_same_bytes(silu);
    }
}
