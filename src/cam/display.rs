//! Maps for people: normalised, upsampled, colour-mapped and laid over the frame.

use crate::model::ndarray::Array2;
use image::{imageops, Rgb, RgbImage};

use super::masks::{min_max, Upsampler};

/// Min-max normalises a map to [0, 1]; an all-zero (or constant) map becomes all zero,
/// never NaN.
pub fn normalised(map: &Array2<f32>) -> Array2<f32> {
    let (lo, hi) = min_max(map.view());
    if hi > lo {
        map.mapv(|v| (v - lo) / (hi - lo))
    } else {
        Array2::zeros(map.dim())
    }
}

/// The display map: `map` upsampled bilinearly to `height × width`, then normalised.
pub fn display_map(map: &Array2<f32>, height: usize, width: usize) -> Array2<f32> {
    let (h, w) = map.dim();
    normalised(&Upsampler::new(h, w, height, width).apply(map.view()))
}

/// The map as bytes 0..=255, row-major, at its own resolution (compact for transport).
pub fn map_u8(map: &Array2<f32>) -> Vec<u8> {
    normalised(map)
        .iter()
        .map(|v| (v * 255.0).round() as u8)
        .collect()
}

/// The frame (scaled down to at most `max_side` pixels on its longer side) with the map
/// colour-mapped (turbo) over the region the model sees (`crop`, as fractions of the
/// frame, see [`crate::model::Preprocess::crop_region`]); outside it the frame is dimmed.
pub fn overlay(
    frame: &RgbImage,
    map: &Array2<f32>,
    crop: (f32, f32, f32, f32),
    max_side: u32,
) -> RgbImage {
    let (fw, fh) = frame.dimensions();
    let scale = (max_side as f32 / fw.max(fh) as f32).min(1.0);
    let (w, h) = (
        ((fw as f32 * scale).round() as u32).max(1),
        ((fh as f32 * scale).round() as u32).max(1),
    );
    let mut out = if (w, h) == (fw, fh) {
        frame.clone()
    } else {
        imageops::resize(frame, w, h, imageops::FilterType::Triangle)
    };
    let x0 = ((crop.0 * w as f32).round() as u32).min(w - 1);
    let y0 = ((crop.1 * h as f32).round() as u32).min(h - 1);
    let x1 = ((crop.2 * w as f32).round() as u32).clamp(x0 + 1, w);
    let y1 = ((crop.3 * h as f32).round() as u32).clamp(y0 + 1, h);
    let heat = display_map(map, (y1 - y0) as usize, (x1 - x0) as usize);
    for (x, y, px) in out.enumerate_pixels_mut() {
        let inside = (x0..x1).contains(&x) && (y0..y1).contains(&y);
        *px = if inside {
            // Cold regions stay readable, hot ones are clearly coloured.
            let v = heat[[(y - y0) as usize, (x - x0) as usize]];
            let c = colorous::TURBO.eval_continuous(v as f64);
            blend(*px, Rgb([c.r, c.g, c.b]), 0.25 + 0.45 * v)
        } else {
            blend(*px, Rgb([0, 0, 0]), 0.5)
        };
    }
    out
}

fn blend(a: Rgb<u8>, b: Rgb<u8>, t: f32) -> Rgb<u8> {
    Rgb(std::array::from_fn(|i| {
        (a.0[i] as f32 * (1.0 - t) + b.0[i] as f32 * t).round() as u8
    }))
}

/// Pixel indices (row-major) from the most to the least salient; ties keep pixel order.
pub fn ranking(saliency: &Array2<f32>) -> Vec<usize> {
    let values: Vec<f32> = saliency.iter().copied().collect();
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    order
}

/// The map with its cells in a random order (seeded): the same values, so the same
/// coverage, in the wrong places — the control a map's placement is measured against.
pub fn shuffled(map: &Array2<f32>, seed: u64) -> Array2<f32> {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut values: Vec<f32> = map.iter().copied().collect();
    values.shuffle(&mut rng);
    Array2::from_shape_vec(map.dim(), values).expect("same shape")
}

/// How alike two maps are: the Pearson correlation of two equally long series (NaN when either is constant or empty).
pub fn pearson(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len().min(b.len()) as f64;
    if n == 0.0 {
        return f64::NAN;
    }
    let mean = |v: &[f32]| v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let (ma, mb) = (mean(a), mean(b));
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let (dx, dy) = (x as f64 - ma, y as f64 - mb);
        sab += dx * dy;
        saa += dx * dx;
        sbb += dy * dy;
    }
    sab / (saa * sbb).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_map_stays_zero() {
        let z = display_map(&Array2::zeros((13, 13)), 50, 40);
        assert_eq!(z.dim(), (50, 40));
        assert!(z.iter().all(|&v| v == 0.0));
        assert!(map_u8(&Array2::zeros((2, 2))).iter().all(|&v| v == 0));
    }

    #[test]
    fn overlay_keeps_geometry_and_marks_the_hot_spot() {
        let frame = RgbImage::from_pixel(2000, 1000, Rgb([128, 128, 128]));
        let mut map = Array2::zeros((13, 13));
        map[[6, 6]] = 1.0;
        let img = overlay(&frame, &map, (0.0, 0.0, 1.0, 1.0), 1000);
        assert_eq!(img.dimensions(), (1000, 500));
        let hot = img.get_pixel(500, 250);
        let cold = img.get_pixel(10, 10);
        assert_ne!(hot, cold);
        assert!(
            hot.0[0] > cold.0[0],
            "turbo's hot end is red: {hot:?} vs {cold:?}"
        );
    }
}
