//! A faster im2col for tract's int8 convolutions: the patch matrix of an 8-bit NCHW/CHW
//! convolution, written straight into the K=4-interleaved layout (`PackedI8K4`) that tract's
//! VNNI and dot-product kernels read.
//!
//! tract 0.23's `Im2Col` feeds that layout one K row at a time through a writer that stores
//! every byte separately, and whose fast path only applies when a row fits in one 16-wide
//! panel — never, for SqueezeNet's 55- and 27-pixel rows. It was 38 % of an int8 forward pass
//! on this project's x86 (perf; README, "Speed"). [`PackedIm2Col`] builds four K rows at a time
//! (contiguous copies, padding as whole runs) into a small scratch, then interleaves the four
//! rows lane by lane into the panels: every output byte is written once, in cache-line-sized
//! runs. The bytes are the same as tract's: the unit tests compare them with tract's own
//! `Im2Col` on SqueezeNet's geometries and others.
//!
//! Like [`super::maxpool`], one self-contained op swapped in by [`install`] after tract has
//! optimised a plan; the fix belongs upstream in tract's packing writer.

use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::conv::Im2Col;
use tract_onnx::tract_core::ops::cnn::PatchSpec;
use tract_onnx::tract_core::ops::nn::DataFormat;
use tract_onnx::tract_core::tract_linalg::mmm::{
    EagerPackedInput, PackedExoticFact, PackedMatrixStorage,
};
use tract_onnx::tract_core::tract_linalg::pack::PackedI8K4;

/// The K=4-interleaved patch matrix of an 8-bit (i8 or u8) 2-D convolution's input.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PackedIm2Col {
    /// The packing the matrix kernel reads (its panel width `r`).
    format: PackedI8K4,
    /// Whether the input has a leading batch axis (NCHW) rather than none (CHW).
    batched: bool,
    group: usize,
    channels_per_group: usize,
    input_hw: [usize; 2],
    output_hw: [usize; 2],
    stride: [usize; 2],
    /// Where each kernel tap reads, relative to an output pixel's stride-scaled position,
    /// padding included: tract's K order within a channel.
    taps: Vec<[isize; 2]>,
}

/// Replaces every `Im2Col` of `model` that [`PackedIm2Col`] computes identically; returns how
/// many it replaced.
pub fn install(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = 0;
    for id in 0..model.nodes.len() {
        let Some(im2col) = model.nodes[id].op_as::<Im2Col>() else {
            continue;
        };
        let input = model.outlet_fact(model.nodes[id].inputs[0])?.clone();
        let output = model.outlet_fact(OutletId::new(id, 0))?.clone();
        if let Some(op) = PackedIm2Col::replacing(im2col, &input, &output) {
            model.nodes[id].op = Box::new(op);
            replaced += 1;
        }
    }
    Ok(replaced)
}

impl PackedIm2Col {
    /// The op computing what `im2col` does on `input`, if its geometry is one this op has.
    fn replacing(im2col: &Im2Col, input: &TypedFact, output: &TypedFact) -> Option<PackedIm2Col> {
        let spec = &im2col.pool_spec;
        let packed = output.exotic_fact()?.downcast_ref::<PackedExoticFact>()?;
        let format = packed.format.downcast_ref::<PackedI8K4>()?.clone();
        let batched = match spec.data_format {
            DataFormat::NCHW => true,
            DataFormat::CHW => false,
            _ => return None,
        };
        // Plain 8-bit integers only: tract hands its quantized convolutions' inputs over as
        // such, with the zero point as the padding value.
        if ![DatumType::I8, DatumType::U8].contains(&input.datum_type)
            || spec.kernel_shape.len() != 2
        {
            return None;
        }
        let dims = input.shape.to_tvec();
        let chw: TVec<usize> = dims[dims.len() - 3..]
            .iter()
            .map(|d| d.to_usize().ok())
            .collect::<Option<_>>()?;
        let patch = PatchSpec::for_full_shape(DataFormat::CHW, &chw)
            .ok()?
            .with_kernel_shape(spec.kernel_shape.clone())
            .with_padding(spec.padding.clone())
            .with_strides(spec.strides().into_owned().into())
            .with_dilations(spec.dilations().into_owned().into())
            .into_patch();
        let taps: Vec<[isize; 2]> = patch
            .data_field
            .outer_iter()
            .map(|offset| [offset[0], offset[1]])
            .collect();
        let op = PackedIm2Col {
            format,
            batched,
            group: im2col.group,
            channels_per_group: chw[0] / im2col.group,
            input_hw: [chw[1], chw[2]],
            output_hw: [patch.output_shape[0], patch.output_shape[1]],
            stride: [patch.spec.strides[0], patch.spec.strides[1]],
            taps,
        };
        let same_matrix = packed.k == op.k()
            && packed.mn.to_usize().ok()? == op.mn()
            && op.mn() > 0
            && chw[0].is_multiple_of(im2col.group);
        same_matrix.then_some(op)
    }

    /// Rows of the patch matrix: one per input channel of a group and kernel tap.
    fn k(&self) -> usize {
        self.channels_per_group * self.taps.len()
    }

    /// Columns of the patch matrix: one per output pixel.
    fn mn(&self) -> usize {
        self.output_hw[0] * self.output_hw[1]
    }

    /// Writes row `k` of the patch matrix of `image` (one C×H×W image of the group) into `row`.
    fn fill_row(&self, image: &[u8], k: usize, pad: u8, row: &mut [u8]) {
        let [h, w] = self.input_hw.map(|d| d as isize);
        let [sy, sx] = self.stride.map(|s| s as isize);
        let ow = self.output_hw[1];
        let (channel, [dy, dx]) = (k / self.taps.len(), self.taps[k % self.taps.len()]);
        let plane = &image[channel * (h * w) as usize..][..(h * w) as usize];
        // Output columns [x0, x1) read inside the image; the rest are padding.
        let x0 = ceil_div(-dx, sx).clamp(0, ow as isize) as usize;
        let x1 = ceil_div(w - dx, sx).clamp(0, ow as isize) as usize;
        for (oy, out) in row.chunks_exact_mut(ow).enumerate() {
            let y = oy as isize * sy + dy;
            if !(0..h).contains(&y) || x0 >= x1 {
                out.fill(pad);
                continue;
            }
            let source = &plane[(y * w) as usize..][..w as usize];
            out[..x0].fill(pad);
            out[x1..].fill(pad);
            let first = (x0 as isize * sx + dx) as usize;
            if sx == 1 {
                out[x0..x1].copy_from_slice(&source[first..][..x1 - x0]);
            } else {
                for (o, &v) in out[x0..x1]
                    .iter_mut()
                    .zip(source[first..].iter().step_by(sx as usize))
                {
                    *o = v;
                }
            }
        }
    }

    /// The packed patch matrix of one image's group `group`.
    fn pack(&self, image: &[u8], group: usize, pad: u8) -> TractResult<EagerPackedInput> {
        let (k, mn, r) = (self.k(), self.mn(), self.format.r);
        let panels = mn.div_ceil(r);
        let panel_len = self.format.single_panel_len(k);
        let image = &image[group * self.channels_per_group * self.input_hw[0] * self.input_hw[1]..];
        // Four rows of the matrix, each padded with zeros to whole panels: the padding lanes
        // of the last panel, and the rows past K, must read as zero to the kernel.
        let row_len = panels * r;
        let mut rows = vec![0u8; 4 * row_len];
        let mut blob =
            unsafe { Blob::new_for_size_and_align(panels * panel_len, self.format.alignment()) };
        // Every byte of the blob is written below: block b of each panel takes rows 4b..4b+4.
        let packed = blob.as_bytes_mut();
        for block in 0..k.div_ceil(4) {
            for (j, row) in rows.chunks_exact_mut(row_len).enumerate() {
                let kk = 4 * block + j;
                if kk < k {
                    self.fill_row(image, kk, pad, &mut row[..mn]);
                } else {
                    row.fill(0);
                }
            }
            let [r0, r1, r2, r3]: [&[u8]; 4] =
                std::array::from_fn(|j| &rows[j * row_len..][..row_len]);
            for p in 0..panels {
                let lanes = p * r..(p + 1) * r;
                let out = &mut packed[p * panel_len + block * 4 * r..][..4 * r];
                interleave4(
                    [
                        &r0[lanes.clone()],
                        &r1[lanes.clone()],
                        &r2[lanes.clone()],
                        &r3[lanes],
                    ],
                    out,
                );
            }
        }
        Ok(EagerPackedInput {
            fact: PackedExoticFact {
                format: Box::new(self.format.clone()),
                mn: mn.to_dim(),
                k,
            },
            packed: Arc::new(blob),
            panel_bytes: panel_len,
            mn,
        })
    }
}

/// ⌈a / b⌉ for a positive `b` (`isize::div_ceil` is not stable yet).
fn ceil_div(a: isize, b: isize) -> isize {
    -(-a).div_euclid(b)
}

/// `out[4m + j] = rows[j][m]`: four rows of a K block, interleaved lane by lane.
#[inline]
fn interleave4(rows: [&[u8]; 4], out: &mut [u8]) {
    let [a, b, c, d] = rows;
    for ((((o, &a), &b), &c), &d) in out.chunks_exact_mut(4).zip(a).zip(b).zip(c).zip(d) {
        o.copy_from_slice(&[a, b, c, d]);
    }
}

impl Op for PackedIm2Col {
    fn name(&self) -> StaticName {
        "PackedIm2Col".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{} taps, stride {:?}, groups {}, {} (iscamd)",
            self.taps.len(),
            self.stride,
            self.group,
            self.format
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for PackedIm2Col {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = &inputs[0];
        let dt = input.datum_type();
        // The padding value (the zero point) is tract's second input, if any; tract keeps it
        // as i32. Its low byte is the 8-bit value for both signednesses.
        let pad = match inputs.get(1) {
            Some(pad) => pad.cast_to_scalar::<i32>()? as u8,
            None => 0,
        };
        let bytes = input.try_as_plain_ram()?.as_bytes();
        let image_len = self.group * self.channels_per_group * self.input_hw[0] * self.input_hw[1];
        let batch = if self.batched { input.shape()[0] } else { 1 };
        ensure!(
            bytes.len() == batch * image_len,
            "PackedIm2Col: input shape {:?} is not the one the op was built for",
            input.shape()
        );
        let mut values: TVec<Box<dyn tract_onnx::tract_core::tract_linalg::mmm::MMMInputValue>> =
            TVec::with_capacity(batch * self.group);
        for image in bytes.chunks_exact(image_len) {
            for g in 0..self.group {
                values.push(Box::new(self.pack(image, g, pad)?));
            }
        }
        let output = PackedMatrixStorage::new_batched(&[batch, self.group], values).into_tensor(dt);
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for PackedIm2Col {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let batch = if self.batched {
            inputs[0].shape[0].clone()
        } else {
            1.to_dim()
        };
        let packed = PackedExoticFact {
            format: Box::new(self.format.clone()),
            mn: self.mn().to_dim(),
            k: self.k(),
        };
        Ok(tvec!(inputs[0]
            .datum_type
            .fact(&[batch, self.group.to_dim()])
            .with_exotic_fact(packed)))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_core::ops::cnn::{PaddingSpec, PoolSpec};
    use tract_onnx::tract_core::tract_linalg;

    /// Every distinct K=4 packing some kernel of this build reads, with a kernel reading it.
    fn k4_packings() -> Vec<(PackedI8K4, Box<dyn tract_linalg::mmm::MatMatMul>, usize)> {
        let mut found: Vec<(PackedI8K4, Box<dyn tract_linalg::mmm::MatMatMul>, usize)> = vec![];
        for routine in tract_linalg::mmm_routines::declared() {
            let mmm = (routine.make)();
            let index = mmm
                .packings()
                .iter()
                .position(|(_, b)| b.downcast_ref::<PackedI8K4>().is_some());
            if let Some(i) = index {
                let format = mmm.packings()[i]
                    .1
                    .downcast_ref::<PackedI8K4>()
                    .unwrap()
                    .clone();
                if !found.iter().any(|(f, _, _)| *f == format) {
                    found.push((format, mmm, i));
                }
            }
        }
        found
    }

    struct Case {
        shape: TVec<usize>,
        format: DataFormat,
        kernel: usize,
        stride: usize,
        padding: usize,
        group: usize,
    }

    /// A model of tract's own `Im2Col` for `case`, reading its padding value from an input.
    fn tracts(
        case: &Case,
        dt: DatumType,
        mmm: Box<dyn tract_linalg::mmm::MatMatMul>,
        packing: usize,
    ) -> TypedModel {
        let channels = case.shape[case.shape.len() - 3];
        let spec = PoolSpec {
            data_format: case.format,
            kernel_shape: tvec!(case.kernel, case.kernel),
            padding: PaddingSpec::Explicit(tvec!(case.padding; 2), tvec!(case.padding; 2)),
            dilations: None,
            strides: Some(tvec!(case.stride, case.stride)),
            input_channels: channels,
            output_channels: 8,
        };
        let k = channels / case.group * case.kernel * case.kernel;
        let input = dt.fact(&*case.shape);
        let op = Im2Col::new(spec, case.group, k, &input.shape, mmm, packing).unwrap();
        let mut model = TypedModel::default();
        let source = model.add_source("input", input).unwrap();
        let pad = model
            .add_source("pad", i32::datum_type().scalar_fact())
            .unwrap();
        let packed = model.wire_node("im2col", op, &[source, pad]).unwrap();
        model.select_output_outlets(&packed).unwrap();
        model
    }

    /// The packed bytes of every (image, group) matrix `model` makes of `input`.
    fn run(model: TypedModel, input: &Tensor, pad: i32) -> Vec<Vec<u8>> {
        let plan = model.into_runnable().unwrap();
        let inputs = tvec!(input.clone().into_tvalue(), tensor0(pad).into_tvalue());
        let output = plan.run(inputs).unwrap().remove(0).into_tensor();
        let storage = output.try_storage_as::<PackedMatrixStorage>().unwrap();
        storage
            .values()
            .iter()
            .map(|v| {
                let eager = v.downcast_ref::<EagerPackedInput>().unwrap();
                assert_eq!(
                    eager.panel_bytes * eager.mn.div_ceil(eager.fact.format.r()),
                    eager.packed.len()
                );
                eager.packed.as_bytes().to_vec()
            })
            .collect()
    }

    fn random_bytes(shape: &[usize], dt: DatumType, seed: u64) -> Tensor {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let bytes: Vec<u8> = (0..shape.iter().product()).map(|_| rng.random()).collect();
        let unsigned = tract_ndarray::ArrayD::from_shape_vec(shape, bytes).unwrap();
        match dt {
            DatumType::U8 => unsigned.into_tensor(),
            _ => unsigned.mapv(|b| b as i8).into_tensor(),
        }
    }

    #[test]
    fn packs_the_bytes_tracts_im2col_packs() {
        let cases = [
            // SqueezeNet 1.0: conv1, a fire module's 3×3 expand (batched and not), conv10.
            Case {
                shape: tvec!(1, 3, 227, 227),
                format: DataFormat::NCHW,
                kernel: 7,
                stride: 2,
                padding: 0,
                group: 1,
            },
            Case {
                shape: tvec!(16, 55, 55),
                format: DataFormat::CHW,
                kernel: 3,
                stride: 1,
                padding: 1,
                group: 1,
            },
            Case {
                shape: tvec!(2, 32, 27, 27),
                format: DataFormat::NCHW,
                kernel: 3,
                stride: 1,
                padding: 1,
                group: 1,
            },
            Case {
                shape: tvec!(1, 64, 13, 13),
                format: DataFormat::NCHW,
                kernel: 1,
                stride: 1,
                padding: 1,
                group: 1,
            },
            // Odd geometries: K not a multiple of 4, groups, strided with padding, a kernel
            // larger than the padded input's reach on one side.
            Case {
                shape: tvec!(1, 5, 9, 7),
                format: DataFormat::NCHW,
                kernel: 3,
                stride: 2,
                padding: 1,
                group: 1,
            },
            Case {
                shape: tvec!(2, 6, 10, 11),
                format: DataFormat::NCHW,
                kernel: 3,
                stride: 3,
                padding: 2,
                group: 3,
            },
            Case {
                shape: tvec!(1, 2, 4, 4),
                format: DataFormat::NCHW,
                kernel: 5,
                stride: 1,
                padding: 2,
                group: 1,
            },
        ];
        let packings = k4_packings();
        assert!(
            !packings.is_empty(),
            "no int8 kernel of this build reads PackedI8K4"
        );
        for (format, mmm, packing) in packings {
            for (i, case) in cases.iter().enumerate() {
                for (dt, pad) in [(DatumType::I8, -14), (DatumType::U8, 128)] {
                    let input = random_bytes(&case.shape, dt, i as u64);
                    let model = tracts(case, dt, mmm.clone(), packing);
                    let reference = run(model.clone(), &input, pad);
                    let mut ours = model;
                    assert_eq!(install(&mut ours).unwrap(), 1);
                    let what = format!(
                        "{format} {:?} k{} s{} p{} g{} {dt:?}",
                        case.shape, case.kernel, case.stride, case.padding, case.group
                    );
                    assert_eq!(run(ours, &input, pad), reference, "{what}");
                }
            }
        }
    }
}
