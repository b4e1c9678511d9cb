//! A faster im2col for tract's int8 convolutions: the patch matrix of an 8-bit NCHW/CHW
//! convolution, written straight into the layout tract's int8 kernels read: K=4-interleaved
//! (`PackedI8K4`: VNNI, dot product) or plain (`PackedFormat`: SMLAL, AVX2).
//!
//! tract 0.23's `Im2Col` feeds that layout one K row at a time through a writer that stores
//! every byte separately, and whose fast path only applies when a row fits in one 16-wide
//! panel — never, for SqueezeNet's 55- and 27-pixel rows. It was 38 % of an int8 forward pass
//! on this project's x86 (perf; docs/benchmarks.md, "Speed"). [`PackedIm2Col`] pads the image once (and
//! splits its rows by stride phase, for strided convolutions), so that each output row of a
//! kernel tap is one contiguous copy; it builds four K rows at a time that way and hands them
//! to the panel writer ([`super::packing`]), which interleaves them with SIMD. The bytes are the
//! same as tract's: the unit tests compare them with tract's own `Im2Col` on SqueezeNet's
//! geometries and others.
//!
//! Like [`super::maxpool`], one self-contained op swapped in by [`install`] after tract has
//! optimised a plan; the fix belongs upstream in tract's packing writer.

use super::packing::{Packing, Panels};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::conv::Im2Col;
use tract_onnx::tract_core::ops::cnn::PatchSpec;
use tract_onnx::tract_core::ops::nn::DataFormat;
use tract_onnx::tract_core::tract_linalg::mmm::{
    EagerPackedInput, MMMInputValue, PackedExoticFact, PackedMatrixStorage,
};

/// The K=4-interleaved patch matrix of an 8-bit (i8 or u8) 2-D convolution's input.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PackedIm2Col {
    /// The packing the matrix kernel reads (its panel width `r`).
    format: Packing,
    /// Whether the input has a leading batch axis (NCHW) rather than none (CHW).
    batched: bool,
    group: usize,
    channels_per_group: usize,
    input_hw: [usize; 2],
    /// Padding before and after the image, along height and width.
    pad_before: [usize; 2],
    pad_after: [usize; 2],
    output_hw: [usize; 2],
    stride: [usize; 2],
    /// Where each kernel tap reads in the padded image, relative to an output pixel's
    /// stride-scaled position: tract's K order within a channel.
    taps: Vec<[usize; 2]>,
}

/// Replaces every `Im2Col` of `model` that [`PackedIm2Col`] computes identically; says how
/// many it found and replaced.
pub fn install(model: &mut TypedModel) -> TractResult<super::swap::Swapped> {
    super::swap::replace_ops::<Im2Col>(model, |im2col, input, output| {
        if !super::swap::is_8bit(input) {
            return super::swap::Swap::NotMine;
        }
        PackedIm2Col::replacing(im2col, input, output).into()
    })
}

impl PackedIm2Col {
    /// The op computing what `im2col` does on `input`, if its geometry is one this op has.
    fn replacing(im2col: &Im2Col, input: &TypedFact, output: &TypedFact) -> Option<PackedIm2Col> {
        let spec = &im2col.pool_spec;
        let packed = output.exotic_fact()?.downcast_ref::<PackedExoticFact>()?;
        let format = Packing::of(&*packed.format)?;
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
        let pad_before = [patch.pad_before[0], patch.pad_before[1]];
        let taps: Vec<[usize; 2]> = patch
            .data_field
            .outer_iter()
            .map(|offset| {
                let y = usize::try_from(offset[0] + pad_before[0] as isize).ok()?;
                let x = usize::try_from(offset[1] + pad_before[1] as isize).ok()?;
                Some([y, x])
            })
            .collect::<Option<_>>()?;
        let op = PackedIm2Col {
            format,
            batched,
            group: im2col.group,
            channels_per_group: chw[0] / im2col.group,
            input_hw: [chw[1], chw[2]],
            pad_before,
            pad_after: [patch.pad_after[0], patch.pad_after[1]],
            output_hw: [patch.output_shape[0], patch.output_shape[1]],
            stride: [patch.spec.strides[0], patch.spec.strides[1]],
            taps,
        };
        // Every tap of every output pixel inside the padded image (so no read is out of
        // bounds), and the matrix tract's kernel expects.
        let padded = op.padded_hw();
        let inside = op.mn() > 0
            && (0..2).all(|axis| {
                op.taps.iter().all(|tap| {
                    (op.output_hw[axis] - 1) * op.stride[axis] + tap[axis] < padded[axis]
                })
            });
        let same_matrix = packed.k == op.k()
            && packed.mn.to_usize().ok()? == op.mn()
            && chw[0].is_multiple_of(im2col.group);
        (inside && same_matrix).then_some(op)
    }

    /// Rows of the patch matrix: one per input channel of a group and kernel tap.
    fn k(&self) -> usize {
        self.channels_per_group * self.taps.len()
    }

    /// Columns of the patch matrix: one per output pixel.
    fn mn(&self) -> usize {
        self.output_hw[0] * self.output_hw[1]
    }

    /// Height and width of the padded image.
    fn padded_hw(&self) -> [usize; 2] {
        std::array::from_fn(|a| self.pad_before[a] + self.input_hw[a] + self.pad_after[a])
    }

    /// Width of one stride phase of a padded row: its columns `x ≡ phase (mod stride)`.
    fn phase_width(&self) -> usize {
        self.padded_hw()[1].div_ceil(self.stride[1])
    }

    /// One group's C×H×W image, padded with `pad` and each row split into its stride phases
    /// (`[c][y][phase][x / stride]`): then every output row of every tap is one contiguous
    /// run, copied without a branch.
    fn prepare(&self, image: &[u8], pad: u8) -> Vec<u8> {
        let [h, w] = self.input_hw;
        let [hp, wp] = self.padded_hw();
        let sx = self.stride[1];
        let phase_width = self.phase_width();
        let row_len = sx * phase_width;
        let mut prepared = vec![pad; self.channels_per_group * hp * row_len];
        let mut padded_row = vec![pad; wp];
        for (plane, out) in image
            .chunks_exact(h * w)
            .zip(prepared.chunks_exact_mut(hp * row_len))
        {
            for (row, out) in plane
                .chunks_exact(w)
                .zip(out[self.pad_before[0] * row_len..].chunks_exact_mut(row_len))
            {
                padded_row[self.pad_before[1]..][..w].copy_from_slice(row);
                if sx == 1 {
                    out.copy_from_slice(&padded_row);
                    continue;
                }
                for (phase, out) in out.chunks_exact_mut(phase_width).enumerate() {
                    for (o, &v) in out.iter_mut().zip(padded_row[phase..].iter().step_by(sx)) {
                        *o = v;
                    }
                }
            }
        }
        prepared
    }

    /// Writes row `k` of the patch matrix of `prepared` (from [`Self::prepare`]) into `row`.
    fn fill_row(&self, prepared: &[u8], k: usize, row: &mut [u8]) {
        let [hp, _] = self.padded_hw();
        let [sy, sx] = self.stride;
        let (ow, phase_width) = (self.output_hw[1], self.phase_width());
        let row_len = sx * phase_width;
        let (channel, [dy, dx]) = (k / self.taps.len(), self.taps[k % self.taps.len()]);
        let plane = &prepared[channel * hp * row_len..][..hp * row_len];
        // Output column x reads padded column x·sx + dx: element x + dx div sx of phase
        // dx mod sx.
        let start = (dx % sx) * phase_width + dx / sx;
        for (oy, out) in row.chunks_exact_mut(ow).enumerate() {
            copy_run(out, &plane[(oy * sy + dy) * row_len + start..][..ow]);
        }
    }

    /// The packed patch matrix of one image's group `group`.
    fn pack(&self, image: &[u8], group: usize, pad: u8) -> EagerPackedInput {
        let (k, mn) = (self.k(), self.mn());
        let group_len = self.channels_per_group * self.input_hw[0] * self.input_hw[1];
        let image = self.prepare(&image[group * group_len..][..group_len], pad);
        let mut panels = Panels::new(&self.format, k, mn);
        // Four rows of the matrix at a time; rows past K are zeros.
        let mut rows = vec![0u8; 4 * mn];
        for block in 0..panels.blocks() {
            for (j, row) in rows.chunks_exact_mut(mn).enumerate() {
                match 4 * block + j {
                    kk if kk < k => self.fill_row(&image, kk, row),
                    _ => row.fill(0),
                }
            }
            panels.write_block(block, std::array::from_fn(|j| &rows[j * mn..][..mn]));
        }
        panels.finish()
    }
}

/// `dst.copy_from_slice(src)` for the short runs of an image row (13 to 111 bytes here), in
/// 16- or 8-byte moves, the last one overlapping: a `memcpy` call per run cost more than the
/// copy.
#[inline]
fn copy_run(dst: &mut [u8], src: &[u8]) {
    fn moves<const N: usize>(dst: &mut [u8], src: &[u8]) {
        let n = dst.len();
        for i in (0..n - N).step_by(N) {
            dst[i..i + N].copy_from_slice(&src[i..i + N]);
        }
        dst[n - N..].copy_from_slice(&src[n - N..n]);
    }
    match dst.len() {
        n if n >= 16 => moves::<16>(dst, src),
        n if n >= 8 => moves::<8>(dst, src),
        _ => dst.copy_from_slice(src),
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
        let mut values: TVec<Box<dyn MMMInputValue>> = TVec::with_capacity(batch * self.group);
        for image in bytes.chunks_exact(image_len) {
            for g in 0..self.group {
                values.push(Box::new(self.pack(image, g, pad)));
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
            format: self.format.boxed(),
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

    /// Every distinct 8-bit packing some kernel of this build reads (K=4-interleaved or
    /// plain), with a kernel reading it.
    fn eight_bit_packings() -> Vec<(Packing, Box<dyn tract_linalg::mmm::MatMatMul>, usize)> {
        let mut found: Vec<(Packing, Box<dyn tract_linalg::mmm::MatMatMul>, usize)> = vec![];
        for routine in tract_linalg::mmm_routines::declared() {
            let mmm = (routine.make)();
            let packings = mmm.packings();
            for (i, (_, b)) in packings.iter().enumerate() {
                let Some(format) = Packing::of(&**b) else {
                    continue;
                };
                if !found.iter().any(|(f, _, _)| *f == format) {
                    found.push((format, mmm.clone(), i));
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

    /// The packed bytes of every (image, group) matrix `model` makes of `input`; in the
    /// plain packing, the rows after K (read ahead by the kernels, never used; tract leaves
    /// them uninitialised) as zeros.
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
                let mut bytes = eager.packed.as_bytes().to_vec();
                if let Some(Packing::Plain(f)) = Packing::of(&*eager.fact.format) {
                    for panel in bytes.chunks_exact_mut(eager.panel_bytes) {
                        panel[eager.fact.k * f.r..].fill(0);
                    }
                }
                bytes
            })
            .collect()
    }

    /// Equal matrices, or a panic naming the first byte that differs (not all of them).
    fn assert_same_bytes(ours: &[Vec<u8>], tracts: &[Vec<u8>], what: &str) {
        assert_eq!(ours.len(), tracts.len(), "{what}: matrices");
        for (m, (a, b)) in ours.iter().zip(tracts).enumerate() {
            assert_eq!(a.len(), b.len(), "{what}: bytes of matrix {m}");
            if let Some(i) = a.iter().zip(b).position(|(x, y)| x != y) {
                panic!(
                    "{what}: matrix {m}, byte {i} of {}: {} vs tract's {}",
                    a.len(),
                    a[i],
                    b[i]
                );
            }
        }
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
        let packings = eight_bit_packings();
        let k4 = packings
            .iter()
            .filter(|(f, _, _)| matches!(f, Packing::K4(_)));
        let plain = packings
            .iter()
            .filter(|(f, _, _)| matches!(f, Packing::Plain(_)));
        assert!(
            k4.count() > 0 && plain.count() > 0,
            "the int8 kernels of this build read no K=4 or no plain packing: {packings:?}"
        );
        for (format, mmm, packing) in packings {
            for (i, case) in cases.iter().enumerate() {
                for (dt, pad) in [(DatumType::I8, -14), (DatumType::U8, 128)] {
                    let input = random_bytes(&case.shape, dt, i as u64);
                    let model = tracts(case, dt, mmm.clone(), packing);
                    let reference = run(model.clone(), &input, pad);
                    let mut ours = model;
                    assert_eq!(install(&mut ours).unwrap().replaced, 1);
                    let what = format!(
                        "{format} {:?} k{} s{} p{} g{} {dt:?}",
                        case.shape, case.kernel, case.stride, case.padding, case.group
                    );
                    assert_same_bytes(&run(ours, &input, pad), &reference, &what);
                }
            }
        }
    }
}
