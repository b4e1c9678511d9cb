//! Finds an overlay's caption band by what it looks like, not by how it is drawn: a
//! dark band across the bottom, light text in it, and a colour ramp from the overlay's
//! cold colour (blue) to its hot one (red). Tolerant of JPEG's losses.

use image::RgbImage;

/// Where the band is, in rows of the picture.
#[derive(Debug)]
pub struct Band {
    pub top: u32,
    pub ramp_row: u32,
    /// Light (text) pixels in the band, above the ramp.
    pub text_pixels: usize,
}

fn dark(p: [u8; 3]) -> bool {
    p.iter().all(|&c| c < 60)
}

/// The band, if the picture has one.
pub fn find_band(img: &RgbImage) -> Option<Band> {
    let (w, h) = img.dimensions();
    // A band row: its left and right margins are dark (text and ramp are inside them).
    let margin = (w / 100).max(2);
    let band_row = |y: u32| {
        (0..margin)
            .chain(w - margin..w)
            .all(|x| dark(img.get_pixel(x, y).0))
    };
    let top = (0..h).rev().take_while(|&y| band_row(y)).last()?;
    if h - top < 20 {
        return None;
    }
    let ramp_row = (top..h).find(|&y| ramp(img, y))?;
    let text_pixels = (top..ramp_row)
        .flat_map(|y| (0..w).map(move |x| (x, y)))
        .filter(|&(x, y)| img.get_pixel(x, y).0.iter().all(|&c| c > 140))
        .count();
    Some(Band {
        top,
        ramp_row,
        text_pixels,
    })
}

/// Row `y` holds a ramp over at least a third of the width, blue at its cold end and red
/// at its hot end.
fn ramp(img: &RgbImage, y: u32) -> bool {
    let w = img.width();
    let coloured: Vec<u32> = (0..w)
        .filter(|&x| {
            let [r, g, b] = img.get_pixel(x, y).0;
            r.max(g).max(b) - r.min(g).min(b) > 60
        })
        .collect();
    let (Some(&x0), Some(&x1)) = (coloured.first(), coloured.last()) else {
        return false;
    };
    if (x1 - x0) * 3 < w {
        return false;
    }
    let at = |t: f64| img.get_pixel(x0 + ((x1 - x0) as f64 * t) as u32, y).0;
    let (cold, hot) = (at(0.15), at(0.9));
    cold[2] as i32 > cold[0] as i32 + 60 && hot[0] as i32 > hot[2] as i32 + 60
}
