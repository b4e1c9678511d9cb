//! Faithfulness of a saliency map (docs/maps.md): Average Drop / Increase and the
//! deletion / insertion curves of RISE, for one image, one class and one map.

use crate::model::ndarray::{Array2, Array3, Axis};

use crate::cam::masks::map_planes;
use crate::error::Result;

/// The scores of one map.
#[derive(Clone, Debug, PartialEq)]
pub struct Faithfulness {
    /// `p_c(x)`.
    pub y: f64,
    /// `p_c(x ⊙ L↑)`.
    pub o: f64,
    /// `p_c(x ⊙ S↑)` for the control map `S` (the same values in other places).
    pub o_control: f64,
    /// Mean of `L↑`: how much of the image the map keeps in Average Drop.
    pub coverage: f64,
    /// Deletion curve: `p_c` with the top `i/steps` of pixels removed, i = 0..=steps.
    pub deletion: Vec<f64>,
    /// Insertion curve: `p_c` with the top `i/steps` of pixels revealed on the blurred image.
    pub insertion: Vec<f64>,
}

impl Faithfulness {
    /// `max(0, Y − O) / Y`, in percent.
    pub fn drop_percent(&self) -> f64 {
        drop_percent(self.y, self.o)
    }

    /// Average Drop's term for the control map.
    pub fn control_drop_percent(&self) -> f64 {
        drop_percent(self.y, self.o_control)
    }

    /// Whether the masked image scores higher than the original.
    pub fn increased(&self) -> bool {
        self.o > self.y
    }

    pub fn deletion_auc(&self) -> f64 {
        auc(&self.deletion)
    }

    pub fn insertion_auc(&self) -> f64 {
        auc(&self.insertion)
    }
}

fn drop_percent(y: f64, o: f64) -> f64 {
    if y > 0.0 {
        100.0 * (y - o).max(0.0) / y
    } else {
        0.0
    }
}

/// Area under a curve sampled at `n` evenly spaced points of [0, 1] (trapezoid rule).
pub fn auc(curve: &[f64]) -> f64 {
    match curve {
        [] => 0.0,
        [only] => *only,
        _ => {
            let n = (curve.len() - 1) as f64;
            curve.windows(2).map(|w| (w[0] + w[1]) / 2.0).sum::<f64>() / n
        }
    }
}

pub use crate::cam::display::ranking;

/// Scores a map. `saliency` is the display map `L↑` (`S×S`, in [0, 1]) over the input `x`
/// (`[3,S,S]`, preprocessed); `control` another map scored like it for Average Drop;
/// `blurred` is the insertion baseline; deletion replaces pixels with 0 (the mean colour
/// in preprocessed space). `score` returns `p_c` for each input it is given (all inputs
/// of one map come in one call, to be batched).
pub fn faithfulness(
    x: &Array3<f32>,
    blurred: &Array3<f32>,
    saliency: &Array2<f32>,
    control: &Array2<f32>,
    steps: usize,
    score: impl FnOnce(Vec<Array3<f32>>) -> Result<Vec<f64>>,
) -> Result<Faithfulness> {
    let (_, h, w) = x.dim();
    assert_eq!(saliency.dim(), (h, w), "saliency must match the input");
    let pixels = h * w;
    let order = ranking(saliency);
    let mut inputs = Vec::with_capacity(3 + 2 * (steps + 1));
    inputs.push(x.clone());
    for map in [saliency, control] {
        let mut masked = x.clone();
        for mut plane in masked.axis_iter_mut(Axis(0)) {
            plane.zip_mut_with(map, |v, &s| *v *= s);
        }
        inputs.push(masked);
    }
    let count = |i: usize| (i * pixels + steps / 2) / steps.max(1);
    for (start, fill) in [(x, None), (blurred, Some(x))] {
        for i in 0..=steps {
            let mut img = start.clone();
            for &p in &order[..count(i)] {
                let (r, c) = (p / w, p % w);
                for ch in 0..img.dim().0 {
                    img[[ch, r, c]] = fill.map_or(0.0, |f| f[[ch, r, c]]);
                }
            }
            inputs.push(img);
        }
    }
    let scores = score(inputs)?;
    let n = steps + 1;
    Ok(Faithfulness {
        y: scores[0],
        o: scores[1],
        o_control: scores[2],
        coverage: saliency.mean().unwrap_or(0.0) as f64,
        deletion: scores[3..3 + n].to_vec(),
        insertion: scores[3 + n..3 + 2 * n].to_vec(),
    })
}

pub use crate::cam::pearson;

/// A Gaussian blur of each plane (σ in pixels): RISE's insertion baseline.
pub fn blur(x: &Array3<f32>, sigma: f32) -> Array3<f32> {
    map_planes(x, |plane| image::imageops::blur(plane, sigma))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pearson_of_lines_and_constants() {
        assert!((pearson(&[1.0, 2.0, 3.0], &[2.0, 4.0, 6.5]) - 0.997949).abs() < 1e-6);
        assert!((pearson(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        assert!(pearson(&[1.0, 1.0], &[1.0, 2.0]).is_nan());
        assert!(pearson(&[], &[]).is_nan());
    }

    #[test]
    fn trapezoid_area() {
        assert_eq!(auc(&[1.0, 1.0, 1.0]), 1.0);
        assert_eq!(auc(&[0.0, 1.0]), 0.5);
        assert!((auc(&[1.0, 0.5, 0.0]) - 0.5).abs() < 1e-12);
    }

    /// A "model" that scores the fraction of the input's value left in the top-left
    /// quarter: the map that marks exactly that quarter is the perfect explanation.
    fn quarter_model(inputs: Vec<Array3<f32>>) -> Result<Vec<f64>> {
        Ok(inputs
            .iter()
            .map(|x| x.slice(crate::model::ndarray::s![.., 0..2, 0..2]).sum() as f64 / 12.0)
            .collect())
    }

    #[test]
    fn a_map_on_exactly_the_pixels_that_matter() {
        let x = Array3::<f32>::ones((3, 4, 4));
        let blurred = Array3::<f32>::zeros((3, 4, 4));
        let mut map = Array2::<f32>::zeros((4, 4));
        map.slice_mut(crate::model::ndarray::s![0..2, 0..2])
            .fill(1.0);
        let control = map.slice(crate::model::ndarray::s![.., ..;-1]).to_owned();
        let f = faithfulness(&x, &blurred, &map, &control, 4, quarter_model).unwrap();
        assert_eq!((f.y, f.o, f.coverage), (1.0, 1.0, 0.25));
        assert_eq!(
            f.control_drop_percent(),
            100.0,
            "the mirrored map misses the quarter"
        );
        assert_eq!(f.drop_percent(), 0.0);
        assert!(!f.increased());
        // Removing the 4 important pixels first: 1, 0, 0, 0, 0.
        assert_eq!(f.deletion, vec![1.0, 0.0, 0.0, 0.0, 0.0]);
        assert_eq!(f.insertion, vec![0.0, 1.0, 1.0, 1.0, 1.0]);
        assert_eq!((f.deletion_auc(), f.insertion_auc()), (0.125, 0.875));
    }

    #[test]
    fn an_all_zero_map_and_a_constant_model() {
        let x = Array3::<f32>::ones((3, 4, 4));
        let blurred = Array3::<f32>::zeros((3, 4, 4));
        let zero = Array2::<f32>::zeros((4, 4));
        let f = faithfulness(&x, &blurred, &zero, &zero, 4, quarter_model).unwrap();
        assert_eq!(f.o, 0.0, "an all-zero map masks everything");
        assert_eq!(f.drop_percent(), 100.0);
        let constant = |inputs: Vec<Array3<f32>>| Ok(vec![0.3; inputs.len()]);
        let f = faithfulness(&x, &blurred, &zero, &zero, 4, constant).unwrap();
        assert_eq!((f.drop_percent(), f.increased()), (0.0, false));
        assert!((f.deletion_auc() - 0.3).abs() < 1e-12 && (f.insertion_auc() - 0.3).abs() < 1e-12);
    }

    #[test]
    fn blur_keeps_a_constant_plane() {
        let x = Array3::<f32>::from_elem((3, 9, 9), 5.0);
        assert!(blur(&x, 2.0).iter().all(|v| (v - 5.0).abs() < 1e-4));
    }
}
