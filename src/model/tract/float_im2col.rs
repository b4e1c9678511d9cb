//! The patch matrix of a float convolution, packed a panel at a time as its product asks,
//! by runs. tract packs each panel of an f32 convolution's patch matrix on demand
//! (`LazyIm2col`), one value at a time through a table of offsets: 9 % of a SqueezeNet pass
//! (perf; docs/benchmarks.md). Along a panel's pixels those offsets form runs — consecutive
//! values, or every other one for a stride of 2 — broken only where the panel crosses an
//! output row; [`FloatIm2col`] copies each run with vector moves.
//!
//! tract does not export its op, so [`FloatIm2col`] learns the offsets from it: the op runs
//! once, when the plan is built, on an image whose every value is its own index, and its
//! panels say where each value comes from. Only offsets that split into one per K row plus
//! one per pixel — what a convolution's are — are taken, so the panels are the ones tract
//! packs, or tract's op stays.

use std::alloc::Layout;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::tract_linalg::mmm::{
    MMMInputFormat, MMMInputValue, PackedMatrixStorage,
};

use super::swap::{Swap, Swapped};

/// tract's name for the op [`FloatIm2col`] replaces.
const TRACTS: &str = "LazyIm2col";

/// Replaces every `LazyIm2col` of `model` whose patch matrix [`FloatIm2col`] gathers the
/// same way; says how many it found and replaced.
pub fn install(model: &mut TypedModel) -> TractResult<Swapped> {
    // Only where the runs are copied with vector moves: elsewhere, value by value, they
    // cost more than tract's gather (Cortex-A72, emulated: 315.0 → 367.5 M instructions
    // per f32 SqueezeNet pass).
    if !vector_moves() {
        return Ok(Swapped::default());
    }
    super::swap::replace_named(model, TRACTS, |node, input, output| {
        match FloatIm2col::replacing(node, input, output) {
            Ok(Some(op)) => Swap::Replace(Box::new(op)),
            // An op this one cannot read (another type, a grouped convolution): tract's.
            Ok(None) | Err(_) => Swap::Keep,
        }
    })
}

fn vector_moves() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx512f");
    #[cfg(not(target_arch = "x86_64"))]
    return false;
}

/// Where the values of the patch matrix come from, as element offsets into the input.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Gather {
    /// Lanes per panel.
    r: usize,
    /// Pixels: the matrix's columns.
    mn: usize,
    /// Offset of each K row (input channel and kernel tap).
    rows: Vec<usize>,
    /// Each panel's runs: panel `p`'s are `runs[starts[p]..starts[p + 1]]`.
    runs: Vec<Run>,
    starts: Vec<usize>,
    /// Values the input holds.
    input_len: usize,
    /// Each panel's runs as AVX-512 moves: panel `p`'s are `moves[move_starts[p]..]`, up
    /// to the next panel's.
    #[cfg(target_arch = "x86_64")]
    moves: Vec<avx512::Move>,
    #[cfg(target_arch = "x86_64")]
    move_starts: Vec<usize>,
}

/// `len` lanes of a panel's row from `len` input values `step` apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Run {
    lane: usize,
    /// Offset of the first value, before the K row's.
    from: usize,
    len: usize,
    step: usize,
}

impl Gather {
    /// The gather of an index matrix `at(k, pixel)`, if it splits into a K row's offset
    /// plus a pixel's.
    fn of(k: usize, mn: usize, r: usize, at: impl Fn(usize, usize) -> usize) -> Option<Gather> {
        let pixels: Vec<usize> = (0..mn).map(|n| at(0, n)).collect();
        let first = *pixels.first()?;
        let rows: Vec<usize> = (0..k)
            .map(|kk| at(kk, 0).checked_sub(first))
            .collect::<Option<_>>()?;
        let separable = rows
            .iter()
            .enumerate()
            .all(|(kk, row)| (0..mn).all(|n| at(kk, n) == row + pixels[n]));
        if !separable {
            return None;
        }
        let mut runs = Vec::new();
        let mut starts = vec![0];
        for panel in pixels.chunks(r) {
            let mut lane = 0;
            while lane < panel.len() {
                let step = match panel.get(lane + 1) {
                    Some(&next) if next > panel[lane] => next - panel[lane],
                    _ => 1,
                };
                let mut len = 1
                    + (lane + 1..panel.len())
                        .take_while(|&l| panel[l].checked_sub(panel[l - 1]) == Some(step))
                        .count();
                // Two values that end one row and start the next are two runs, not one:
                // the second starts its row's run.
                if len == 2 && lane + 2 < panel.len() {
                    len = 1;
                }
                let step = if len == 1 { 1 } else { step };
                runs.push(Run {
                    lane,
                    from: panel[lane],
                    len,
                    step,
                });
                lane += len;
            }
            starts.push(runs.len());
        }
        #[cfg(target_arch = "x86_64")]
        let (moves, move_starts) = {
            let (mut moves, mut move_starts) = (Vec::new(), vec![0]);
            for (p, span) in starts.windows(2).enumerate() {
                let width = r.min(mn - p * r);
                moves.extend(avx512::moves(&runs[span[0]..span[1]], width, r));
                move_starts.push(moves.len());
            }
            (moves, move_starts)
        };
        Some(Gather {
            r,
            mn,
            rows,
            runs,
            starts,
            input_len: 0,
            #[cfg(target_arch = "x86_64")]
            moves,
            #[cfg(target_arch = "x86_64")]
            move_starts,
        })
    }

    fn panels(&self) -> usize {
        self.starts.len() - 1
    }

    /// Panel `p` of the patch matrix of `input` into `panel`, `k × r` values.
    fn fill(&self, input: &[f32], p: usize, panel: &mut [f32]) {
        let runs = &self.runs[self.starts[p]..self.starts[p + 1]];
        let width = self.r.min(self.mn - p * self.r);
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            let moves = &self.moves[self.move_starts[p]..self.move_starts[p + 1]];
            // SAFETY: the CPU has AVX-512 F; `input` holds `input_len` values (checked in
            // `eval`), which every run's reads stay within (checked when the op was made);
            // `panel` holds `k × r`.
            return unsafe { avx512::fill(input, &self.rows, moves, self.r, panel) };
        }
        for (row, &start) in panel.chunks_exact_mut(self.r).zip(&self.rows) {
            let input = &input[start..];
            for run in runs {
                let from = input[run.from..].iter().step_by(run.step);
                for (lane, &v) in row[run.lane..][..run.len].iter_mut().zip(from) {
                    *lane = v;
                }
            }
            row[width..].fill(0.0);
        }
    }

    /// The largest offset any run reads, plus one.
    fn reach(&self) -> usize {
        let row = self.rows.iter().max().copied().unwrap_or(0);
        let run = self.runs.iter().map(|r| r.from + (r.len - 1) * r.step);
        row + run.max().unwrap_or(0) + 1
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::Run;
    use std::arch::x86_64::*;

    /// Up to sixteen lanes of a panel's row, from the K row's values at `from`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct Move {
        lane: u32,
        from: u32,
        /// The values read from `from` (bit i: value i), up to 32.
        reads: u32,
        /// The lanes written from `lane`.
        writes: u16,
        kind: Kind,
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    enum Kind {
        Consecutive,
        /// Every other value: two loads, then the even lanes of both.
        Alternate,
        /// Values `step` apart, one at a time.
        Strided(u32),
        Zeros,
    }

    fn first(n: usize) -> u32 {
        ((1u64 << n) - 1) as u32
    }

    /// A panel's runs as moves of sixteen lanes or fewer, the lanes from `width` to `r`
    /// zeroed.
    pub fn moves(runs: &[Run], width: usize, r: usize) -> Vec<Move> {
        let mut moves = Vec::new();
        for run in runs {
            for done in (0..run.len).step_by(16) {
                let n = (run.len - done).min(16);
                let (kind, reads) = match run.step {
                    1 => (Kind::Consecutive, first(n)),
                    2 => (Kind::Alternate, first(2 * n - 1)),
                    step => (Kind::Strided(step as u32), 0),
                };
                moves.push(Move {
                    lane: (run.lane + done) as u32,
                    from: (run.from + done * run.step) as u32,
                    reads,
                    writes: first(n) as u16,
                    kind,
                });
            }
        }
        for lane in (width..r).step_by(16) {
            moves.push(Move {
                lane: lane as u32,
                from: 0,
                reads: 0,
                writes: first((r - lane).min(16)) as u16,
                kind: Kind::Zeros,
            });
        }
        moves
    }

    /// [`super::Gather::fill`] with the panel's `moves`: a run of consecutive values in a
    /// masked load and store, one of every other value in two loads and a permute.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn fill(input: &[f32], rows: &[usize], moves: &[Move], r: usize, panel: &mut [f32]) {
        let evens = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        for (k, &start) in rows.iter().enumerate() {
            let src = input.as_ptr().add(start);
            let row = panel.as_mut_ptr().add(k * r);
            for m in moves {
                // Lanes a mask leaves out are not read: `wrapping_add`, for addresses past
                // the input that only such lanes would have.
                let from = src.wrapping_add(m.from as usize);
                let values = match m.kind {
                    Kind::Consecutive => _mm512_maskz_loadu_ps(m.reads as __mmask16, from),
                    Kind::Alternate => {
                        let low = _mm512_maskz_loadu_ps(m.reads as __mmask16, from);
                        let high = _mm512_maskz_loadu_ps(
                            (m.reads >> 16) as __mmask16,
                            from.wrapping_add(16),
                        );
                        _mm512_permutex2var_ps(low, evens, high)
                    }
                    Kind::Strided(step) => {
                        let to = row.add(m.lane as usize);
                        for i in 0..m.writes.count_ones() as usize {
                            *to.add(i) = *from.add(i * step as usize);
                        }
                        continue;
                    }
                    Kind::Zeros => _mm512_setzero_ps(),
                };
                _mm512_mask_storeu_ps(row.add(m.lane as usize), m.writes, values);
            }
        }
    }
}

/// tract's `LazyIm2col` for one f32 convolution, its panels packed by runs.
#[derive(Debug, Clone)]
pub struct FloatIm2col {
    patches: Arc<Patches>,
    output: TypedFact,
}

/// What every panel of one convolution's patch matrix shares.
#[derive(Debug)]
struct Patches {
    gather: Gather,
    /// tract's op's own answers, which its product checks and plans by.
    format: Box<dyn MMMInputFormat>,
    exotic: Box<dyn ExoticFact>,
    layout: Layout,
    k: usize,
}

impl PartialEq for FloatIm2col {
    fn eq(&self, other: &Self) -> bool {
        self.patches.gather == other.patches.gather && self.output == other.output
    }
}

impl Eq for FloatIm2col {}

impl FloatIm2col {
    /// The op gathering what the `LazyIm2col` `node` does, learnt from a pass of it.
    fn replacing(
        node: &TypedNode,
        input: &TypedFact,
        output: &TypedFact,
    ) -> TractResult<Option<FloatIm2col>> {
        let Some(shape) = input.shape.as_concrete() else {
            return Ok(None);
        };
        let input_len: usize = shape.iter().product();
        // Indices as f32 values are exact below 2^24.
        if input.datum_type != f32::datum_type() || input_len >= 1 << 24 {
            return Ok(None);
        }
        let indices: Vec<f32> = (0..input_len).map(|i| i as f32).collect();
        let image = Tensor::from_shape(shape, &indices)?;
        let mut probe = TypedModel::default();
        let source = probe.add_source("image", input.without_value())?;
        let packed = probe.wire_node("probe", node.op.clone(), &[source])?;
        probe.select_output_outlets(&packed)?;
        let outputs = probe.into_runnable()?.run(tvec!(image.into_tvalue()))?;
        let storage = outputs[0].try_storage_as::<PackedMatrixStorage>()?;
        let [value] = storage.values() else {
            return Ok(None);
        };
        let Some(patches) = Patches::learnt(&**value, input_len)? else {
            return Ok(None);
        };
        Ok(Some(FloatIm2col {
            patches: Arc::new(patches),
            output: output.clone(),
        }))
    }
}

impl Patches {
    /// The gather of tract's patch matrix `value` of an image of `input_len` indices.
    fn learnt(value: &dyn MMMInputValue, input_len: usize) -> TractResult<Option<Patches>> {
        let (k, mn, r) = (value.k(), value.mn(), value.format().r());
        let Some(layout) = value.scratch_panel_buffer_layout() else {
            return Ok(None);
        };
        if layout.size() < k * r * 4 || k == 0 || mn == 0 {
            return Ok(None);
        }
        let mut buffer = Tensor::zero_aligned::<f32>(&[k * r], layout.align())?;
        let mut indices = vec![0usize; k * mn];
        for p in 0..mn.div_ceil(r) {
            let panel = value.panel_bytes(p, Some(buffer.as_bytes_mut().as_mut_ptr()))?;
            // SAFETY: tract packs a panel's k × r values at `panel` (in `buffer` or its
            // own), live until the next call.
            let panel = unsafe { std::slice::from_raw_parts(panel.cast::<f32>(), k * r) };
            for (n, lane) in (p * r..mn.min(p * r + r)).zip(0..) {
                for kk in 0..k {
                    let index = panel[kk * r + lane];
                    if !(0.0..input_len as f32).contains(&index) || index.fract() != 0.0 {
                        return Ok(None);
                    }
                    indices[kk * mn + n] = index as usize;
                }
            }
        }
        let Some(mut gather) = Gather::of(k, mn, r, |kk, n| indices[kk * mn + n]) else {
            return Ok(None);
        };
        gather.input_len = input_len;
        if gather.reach() > input_len {
            return Ok(None);
        }
        Ok(Some(Patches {
            gather,
            format: dyn_clone::clone_box(value.format()),
            exotic: dyn_clone::clone_box(value.exotic_fact()),
            layout,
            k,
        }))
    }
}

impl Op for FloatIm2col {
    fn name(&self) -> StaticName {
        "FloatIm2col".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let g = &self.patches.gather;
        Ok(vec![format!(
            "k {}, {} pixels, {} runs over {} panels of {} (iscamd)",
            self.patches.k,
            g.mn,
            g.runs.len(),
            g.panels(),
            g.r
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for FloatIm2col {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        ensure!(
            input.datum_type() == f32::datum_type() && input.len() == self.patches.gather.input_len,
            "FloatIm2col: input {:?} is not the one the op was built for",
            input
        );
        let value = PatchPanels {
            input,
            patches: self.patches.clone(),
        };
        let values: TVec<Box<dyn MMMInputValue>> = tvec!(Box::new(value) as _);
        let output =
            PackedMatrixStorage::new_batched(&[1, 1], values).into_tensor(f32::datum_type());
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for FloatIm2col {
    fn output_facts(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(self.output.clone()))
    }

    as_op!();
}

/// One pass's patch matrix: its input, and how panels are gathered from it.
#[derive(Clone)]
struct PatchPanels {
    input: TValue,
    patches: Arc<Patches>,
}

// SAFETY: as tract's own lazy patch matrix: the input is only read, by the product's
// threads, while the pass that made this value runs.
unsafe impl Send for PatchPanels {}
unsafe impl Sync for PatchPanels {}

impl PatchPanels {
    fn input(&self) -> *const Tensor {
        &*self.input
    }
}

impl PartialEq for PatchPanels {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.patches, &other.patches) && std::ptr::eq(self.input(), other.input())
    }
}

impl Eq for PatchPanels {}

impl Hash for PatchPanels {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (Arc::as_ptr(&self.patches), self.input()).hash(state);
    }
}

impl fmt::Debug for PatchPanels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for PatchPanels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let g = &self.patches.gather;
        write!(
            f,
            "patch matrix k={} mn={} (iscamd, by runs)",
            self.patches.k, g.mn
        )
    }
}

impl MMMInputValue for PatchPanels {
    fn format(&self) -> &dyn MMMInputFormat {
        &*self.patches.format
    }

    fn scratch_panel_buffer_layout(&self) -> Option<Layout> {
        Some(self.patches.layout)
    }

    fn panel_bytes(&self, i: usize, buffer: Option<*mut u8>) -> TractResult<*const u8> {
        let buffer = buffer.context("FloatIm2col: the product gave no panel buffer")?;
        let (k, r) = (self.patches.k, self.patches.gather.r);
        ensure!(
            i < self.patches.gather.panels(),
            "FloatIm2col: no panel {i}"
        );
        let input = self.input.try_as_plain_ram()?.as_slice::<f32>()?;
        // SAFETY: tract hands over a buffer of `layout`, at least k × r values (checked
        // when the op was made), aligned for them.
        let panel = unsafe { std::slice::from_raw_parts_mut(buffer.cast::<f32>(), k * r) };
        self.patches.gather.fill(input, i, panel);
        Ok(buffer)
    }

    fn mn(&self) -> usize {
        self.patches.gather.mn
    }

    fn k(&self) -> usize {
        self.patches.k
    }

    fn exotic_fact(&self) -> &dyn ExoticFact {
        &*self.patches.exotic
    }

    fn extract_at_mn_f16(&self, _mn: usize, _slice: &mut [f16]) -> TractResult<()> {
        bail!("FloatIm2col: a patch matrix is read by panels only")
    }

    fn extract_at_mn_f32(&self, _mn: usize, _slice: &mut [f32]) -> TractResult<()> {
        bail!("FloatIm2col: a patch matrix is read by panels only")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat, PaddingSpec, PoolSpec};
    use tract_onnx::tract_core::ops::nn::DataFormat;

    struct Case {
        channels: usize,
        side: usize,
        kernel: usize,
        stride: usize,
        padding: [usize; 2],
        dilation: usize,
    }

    /// One f32 convolution with a bias, optimised by tract.
    fn conv(case: &Case) -> TypedModel {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let (c, s, k) = (case.channels, case.side, case.kernel);
        let outputs = 24;
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([1, c, s, s])).unwrap();
        let weights: Vec<f32> = (0..outputs * c * k * k)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let w = tract_ndarray::Array4::from_shape_vec([outputs, c, k, k], weights).unwrap();
        let w = model.add_const("w", w.into_tensor()).unwrap();
        let bias = model
            .add_const("bias", tensor1(&vec![0.25f32; outputs]))
            .unwrap();
        let [before, after] = case.padding;
        let conv = Conv {
            pool_spec: PoolSpec {
                data_format: DataFormat::NCHW,
                kernel_shape: tvec![k, k],
                padding: PaddingSpec::Explicit(tvec![before, after], tvec![after, before]),
                dilations: Some(tvec![case.dilation; 2]),
                strides: Some(tvec![case.stride; 2]),
                input_channels: c,
                output_channels: outputs,
            },
            kernel_fmt: KernelFormat::OIHW,
            group: 1,
            q_params: None,
        };
        let y = model.wire_node("conv", conv, &[x, w, bias]).unwrap();
        model.select_output_outlets(&y).unwrap();
        model.into_optimized().unwrap()
    }

    /// The same outputs as tract's, bit for bit (the same panels, the same products), for
    /// SqueezeNet's and ResNet's geometries and others: strides 1 to 3, uneven padding, a
    /// dilation, rows narrower and wider than a panel.
    #[test]
    fn packs_the_panels_tracts_lazy_im2col_packs() {
        let cases = [
            (3, 45, 7, 2, [0, 0], 1),  // SqueezeNet's conv1, smaller
            (16, 27, 3, 1, [1, 1], 1), // a fire module's 3×3 expand
            (3, 40, 7, 2, [3, 3], 1),  // ResNet's stem
            (8, 14, 3, 2, [1, 0], 1),
            (5, 19, 3, 3, [2, 1], 1),
            (4, 66, 3, 1, [2, 2], 2),
            (6, 9, 5, 1, [0, 2], 1),
        ];
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        for (channels, side, kernel, stride, padding, dilation) in cases {
            let case = Case {
                channels,
                side,
                kernel,
                stride,
                padding,
                dilation,
            };
            let what = format!(
                "{channels}×{side}², {kernel}×{kernel}/{stride}, {padding:?}, dilation {dilation}"
            );
            let model = conv(&case);
            let x: Vec<f32> = (0..channels * side * side)
                .map(|_| rng.random_range(-2.0..2.0))
                .collect();
            let x = Tensor::from_shape(&[1, channels, side, side], &x).unwrap();
            let expected = super::super::run_once(model.clone(), &x);
            let mut ours = model;
            let swapped = install(&mut ours).unwrap();
            if !vector_moves() {
                // Not offered: tract's op stays, and nothing is counted as missed.
                assert_eq!(swapped, Swapped::default(), "{what}");
                assert!(!ours.nodes.iter().any(|n| n.op_is::<FloatIm2col>()));
                continue;
            }
            assert_eq!(
                swapped,
                Swapped {
                    candidates: 1,
                    replaced: 1
                },
                "{what}"
            );
            assert!(
                ours.nodes.iter().any(|n| n.op_is::<FloatIm2col>()),
                "{what}"
            );
            assert_eq!(super::super::run_once(ours, &x), expected, "{what}");
        }
    }

    #[test]
    fn splits_offsets_into_runs_broken_at_row_ends() {
        // A 2-row, 5-wide output of a stride-2 convolution on a 12-wide input, panels of 4.
        let pixels: Vec<usize> = (0..10).map(|n| (n / 5) * 24 + (n % 5) * 2).collect();
        let gather = Gather::of(2, 10, 4, |k, n| k * 300 + pixels[n]).unwrap();
        assert_eq!(gather.rows, [0, 300]);
        let spans: Vec<(usize, usize, usize, usize)> = gather
            .runs
            .iter()
            .map(|r| (r.lane, r.from, r.len, r.step))
            .collect();
        assert_eq!(
            spans,
            [(0, 0, 4, 2), (0, 8, 1, 1), (1, 24, 3, 2), (0, 30, 2, 2)]
        );
        assert_eq!(gather.starts, [0, 1, 3, 4]);
        // Not a K row's offset plus a pixel's: not taken.
        assert!(Gather::of(2, 10, 4, |k, n| k * pixels[n] + n).is_none());
    }
}
