//! Activations → masks: per-channel min-max normalisation, channel ranking, and bilinear
//! upsampling with PyTorch's `align_corners=False` convention (written here because the
//! image crates resize images, not float maps, and none documents that exact convention).

use crate::model::ndarray::{Array2, Array3, ArrayView2, ArrayView3, Axis};

/// Bilinear resampling from `in_h×in_w` to `out_h×out_w`, as
/// `torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`.
/// The tap tables are computed once and reused for every channel.
#[derive(Clone, Debug)]
pub struct Upsampler {
    rows: Vec<Tap>,
    cols: Vec<Tap>,
    in_w: usize,
}

#[derive(Clone, Copy, Debug)]
struct Tap {
    i0: usize,
    i1: usize,
    w1: f32,
}

fn taps(input: usize, output: usize) -> Vec<Tap> {
    let scale = input as f32 / output as f32;
    (0..output)
        .map(|o| {
            let src = (scale * (o as f32 + 0.5) - 0.5).max(0.0);
            let i0 = (src as usize).min(input - 1);
            let i1 = if i0 < input - 1 { i0 + 1 } else { i0 };
            Tap {
                i0,
                i1,
                w1: src - i0 as f32,
            }
        })
        .collect()
}

impl Upsampler {
    pub fn new(in_h: usize, in_w: usize, out_h: usize, out_w: usize) -> Self {
        assert!(
            in_h > 0 && in_w > 0 && out_h > 0 && out_w > 0,
            "empty upsampling geometry"
        );
        Upsampler {
            rows: taps(in_h, out_h),
            cols: taps(in_w, out_w),
            in_w,
        }
    }

    pub fn out_dim(&self) -> (usize, usize) {
        (self.rows.len(), self.cols.len())
    }

    /// Resamples `src` into `out` (row-major, `out_h × out_w`).
    pub fn apply_into(&self, src: ArrayView2<f32>, out: &mut [f32]) {
        let (out_h, out_w) = self.out_dim();
        assert_eq!(out.len(), out_h * out_w);
        assert_eq!(src.ncols(), self.in_w);
        let src = src.as_standard_layout();
        let s = src.as_slice().expect("standard layout");
        for (r, tr) in self.rows.iter().enumerate() {
            let row0 = &s[tr.i0 * self.in_w..][..self.in_w];
            let row1 = &s[tr.i1 * self.in_w..][..self.in_w];
            let line = &mut out[r * out_w..][..out_w];
            for (o, tc) in line.iter_mut().zip(&self.cols) {
                let top = row0[tc.i0] * (1.0 - tc.w1) + row0[tc.i1] * tc.w1;
                let bottom = row1[tc.i0] * (1.0 - tc.w1) + row1[tc.i1] * tc.w1;
                *o = top * (1.0 - tr.w1) + bottom * tr.w1;
            }
        }
    }

    pub fn apply(&self, src: ArrayView2<f32>) -> Array2<f32> {
        let (h, w) = self.out_dim();
        let mut out = vec![0.0; h * w];
        self.apply_into(src, &mut out);
        Array2::from_shape_vec((h, w), out).expect("shape matches")
    }
}

/// `(a - min) / (max - min)`, or `None` for a constant channel (it carries no mask).
pub fn normalise(channel: ArrayView2<f32>) -> Option<Array2<f32>> {
    let (min, max) = min_max(channel);
    // Written so that NaN activations count as constant too.
    #[allow(clippy::neg_cmp_op_on_partial_ord)]
    if !(max > min) {
        return None;
    }
    let range = max - min;
    Some(channel.mapv(|a| (a - min) / range))
}

/// Minimum and maximum of a map (NaN-free input assumed).
pub fn min_max(map: ArrayView2<f32>) -> (f32, f32) {
    map.iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}

/// The channels a CAM uses: all non-constant ones, or (for `top_k > 0`) the `top_k`
/// ranked highest by `ranking` (one value per channel), in channel order.
pub fn select_channels(activations: ArrayView3<f32>, top_k: usize, ranking: &[f64]) -> Vec<usize> {
    let mut ranked: Vec<(usize, f64)> = activations
        .axis_iter(Axis(0))
        .zip(ranking)
        .enumerate()
        .filter(|(_, (a, _))| {
            let (lo, hi) = min_max(*a);
            hi > lo
        })
        .map(|(k, (_, &r))| (k, r))
        .collect();
    if top_k > 0 && top_k < ranked.len() {
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        ranked.truncate(top_k);
        ranked.sort_by_key(|r| r.0);
    }
    ranked.into_iter().map(|r| r.0).collect()
}

/// Each channel's population variance over the map: the class-blind ranking.
pub fn variances(activations: ArrayView3<f32>) -> Vec<f64> {
    activations.axis_iter(Axis(0)).map(variance).collect()
}

fn variance(a: ArrayView2<f32>) -> f64 {
    let n = a.len() as f64;
    let mean = a.iter().map(|&v| v as f64).sum::<f64>() / n;
    a.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n
}

/// One plane of a `[C,H,W]` tensor as a float image.
pub type Plane = image::ImageBuffer<image::Luma<f32>, Vec<f32>>;

/// Applies an image operation to each plane of `x` (`[C,H,W]`); the results may have
/// another size, the same for every plane.
pub fn map_planes(x: &Array3<f32>, op: impl Fn(&Plane) -> Plane) -> Array3<f32> {
    let (c, h, w) = x.dim();
    let planes: Vec<Plane> = x
        .axis_iter(Axis(0))
        .map(|plane| {
            op(&Plane::from_fn(w as u32, h as u32, |cx, cy| {
                image::Luma([plane[[cy as usize, cx as usize]]])
            }))
        })
        .collect();
    let (ow, oh) = planes.first().map_or((0, 0), |p| p.dimensions());
    Array3::from_shape_fn((c, oh as usize, ow as usize), |(ch, r, cc)| {
        planes[ch].get_pixel(cc as u32, r as u32).0[0]
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ndarray::{arr2, Array3};

    #[test]
    fn upsampling_matches_pytorch_align_corners_false() {
        // torch.nn.functional.interpolate(torch.tensor([[[[0.,1.],[2.,3.]]]]), size=(4,4),
        // mode="bilinear", align_corners=False)
        let out = Upsampler::new(2, 2, 4, 4).apply(arr2(&[[0.0, 1.0], [2.0, 3.0]]).view());
        let expected = arr2(&[
            [0.0, 0.25, 0.75, 1.0],
            [0.5, 0.75, 1.25, 1.5],
            [1.5, 1.75, 2.25, 2.5],
            [2.0, 2.25, 2.75, 3.0],
        ]);
        assert!(
            out.iter()
                .zip(expected.iter())
                .all(|(a, b)| (a - b).abs() < 1e-6),
            "{out:?}"
        );
    }

    #[test]
    fn upsampling_13_to_227_keeps_range_and_corners() {
        let src = Array2::from_shape_fn((13, 13), |(r, c)| (r * 13 + c) as f32);
        let out = Upsampler::new(13, 13, 227, 227).apply(src.view());
        assert_eq!(out[[0, 0]], 0.0);
        assert_eq!(out[[226, 226]], 168.0);
        assert!(out.iter().all(|&v| (0.0..=168.0).contains(&v)));
    }

    #[test]
    fn constant_channels_are_skipped_and_ranked_by_variance() {
        let mut a = Array3::<f32>::zeros((4, 2, 2));
        a[[1, 0, 0]] = 1.0; // small variance
        a[[2, 0, 0]] = 5.0; // large variance
        a.index_axis_mut(Axis(0), 3).fill(7.0); // constant
        assert!(normalise(a.index_axis(Axis(0), 3)).is_none());
        assert_eq!(normalise(a.index_axis(Axis(0), 2)).unwrap()[[0, 0]], 1.0);
        let by_variance = variances(a.view());
        assert_eq!(select_channels(a.view(), 0, &by_variance), vec![1, 2]);
        assert_eq!(select_channels(a.view(), 1, &by_variance), vec![2]);
        assert_eq!(select_channels(a.view(), 10, &by_variance), vec![1, 2]);
        // Another ranking picks other channels; constant ones stay out whatever it says.
        let other = [9.0, 3.0, 1.0, 100.0];
        assert_eq!(select_channels(a.view(), 1, &other), vec![1]);
    }
}
