//! The caption band under an overlay: what the picture shows (class, score, method,
//! passes, frame time, device) and a colour scale from "no influence" to "most", so that
//! the picture explains itself where it is shown alone (a Home Assistant image card, a
//! chat message, a report).
//!
//! Text is drawn with the X11 fixed bitmap fonts of `embedded-graphics` (Latin-1): they
//! are compiled in, need no font file on the board and stay sharp in a JPEG.

use std::convert::Infallible;
use std::time::SystemTime;

use embedded_graphics::mono_font::{iso_8859_1, MonoFont, MonoTextStyle};
use embedded_graphics::pixelcolor::Rgb888;
use embedded_graphics::prelude::{DrawTarget, OriginDimensions, Point, RgbColor, Size};
use embedded_graphics::text::{Alignment, Baseline, Text, TextStyleBuilder};
use embedded_graphics::{Drawable, Pixel};
use image::{imageops, Rgb, RgbImage};

/// Background of the band: dark, so that the band never reads as part of the frame.
pub const BAND: Rgb<u8> = Rgb([24, 24, 24]);
const INK: Rgb888 = Rgb888::new(240, 240, 240);
const MUTED: Rgb888 = Rgb888::new(170, 170, 170);

/// What the band says.
#[derive(Clone, Debug)]
pub struct Caption {
    /// The class explained, as its label.
    pub class: String,
    /// Its probability, 0..=1.
    pub score: f64,
    /// The method's name (`iscam`, `score-cam`, `cam`, …).
    pub method: String,
    /// Masked passes the map cost (0 for `cam` and live maps).
    pub passes: usize,
    /// A live map: the last full map's weights on this frame's activations.
    pub live: bool,
    /// When the frame was captured; `None` for a still image.
    pub time: Option<SystemTime>,
    /// Where the frame came from: the device's name, or the image file's.
    pub source: String,
}

impl Caption {
    fn lines(&self) -> [(String, String); 2] {
        let passes = match (self.live, self.passes) {
            (true, _) => "live map".to_string(),
            (false, 1) => "1 pass".to_string(),
            (false, n) => format!("{n} passes"),
        };
        let time = self.time.map_or_else(
            || "still image".to_string(),
            |t| {
                humantime::format_rfc3339_seconds(t)
                    .to_string()
                    .replace('T', " ")
                    .replace('Z', " UTC")
            },
        );
        [
            (
                format!("{} {:.1}%", self.class, self.score * 100.0),
                format!("{}, {passes}", self.method),
            ),
            (time, self.source.clone()),
        ]
    }
}

/// The band's geometry for an image `width` pixels wide.
struct Layout {
    font: &'static MonoFont<'static>,
    /// Each font pixel is drawn as `scale × scale` image pixels.
    scale: u32,
    /// Margin and line gap, in font pixels.
    pad: u32,
}

impl Layout {
    fn for_width(width: u32) -> Layout {
        let (font, pad) = match width {
            0..300 => (&iso_8859_1::FONT_6X10, 4),
            300..600 => (&iso_8859_1::FONT_8X13, 5),
            _ => (&iso_8859_1::FONT_10X20, 6),
        };
        Layout {
            font,
            scale: (width / 1000).max(1),
            pad,
        }
    }

    fn line_height(&self) -> u32 {
        self.font.character_size.height
    }

    /// Top of text line `i` (0, 1) and of the scale (2), in font pixels.
    fn row(&self, i: u32) -> u32 {
        self.pad + i * (self.line_height() + self.pad)
    }

    /// The band's height in image pixels.
    fn height(&self) -> u32 {
        (self.row(3) + self.pad / 2) * self.scale
    }

    /// Characters that fit across `width` font pixels.
    fn chars(&self, width: u32) -> usize {
        (width / (self.font.character_size.width + self.font.character_spacing)) as usize
    }
}

/// The band's height under a picture `width` pixels wide.
pub fn band_height(width: u32) -> u32 {
    Layout::for_width(width).height()
}

/// `overlay` with the caption band under it (the frame is not covered).
pub fn captioned(overlay: &RgbImage, caption: &Caption) -> RgbImage {
    let (w, h) = overlay.dimensions();
    let layout = Layout::for_width(w);
    let mut out = RgbImage::from_pixel(w, h + layout.height(), BAND);
    imageops::replace(&mut out, overlay, 0, 0);
    let mut canvas = Canvas {
        image: &mut out,
        top: h,
        scale: layout.scale,
    };
    let inner = canvas.size().width.saturating_sub(2 * layout.pad);
    for (i, (left, right)) in caption.lines().into_iter().enumerate() {
        let ink = if i == 0 { INK } else { MUTED };
        let (left, right) = fit(&left, &right, layout.chars(inner));
        let y = layout.row(i as u32) as i32;
        text(
            &mut canvas,
            &layout,
            &left,
            layout.pad as i32,
            y,
            ink,
            Alignment::Left,
        );
        let x = (layout.pad + inner) as i32;
        text(&mut canvas, &layout, &right, x, y, ink, Alignment::Right);
    }
    scale_bar(&mut canvas, &layout, inner);
    out
}

/// The colour scale: "no influence", the colour ramp the overlay uses, "most".
fn scale_bar(canvas: &mut Canvas, layout: &Layout, inner: u32) {
    let char_w = (layout.font.character_size.width + layout.font.character_spacing) as i32;
    let (pad, inner) = (layout.pad as i32, inner as i32);
    let room = |label: &str| match label.len() {
        0 => 0,
        n => (n as i32 + 1) * char_w,
    };
    // The longest labels that leave the ramp at least half the width (narrow pictures).
    let (low, high) = [("no influence", "most"), ("none", "most")]
        .into_iter()
        .find(|(low, high)| 2 * (room(low) + room(high)) <= inner)
        .unwrap_or(("", ""));
    let y = layout.row(2) as i32;
    text(canvas, layout, low, pad, y, MUTED, Alignment::Left);
    text(
        canvas,
        layout,
        high,
        pad + inner,
        y,
        MUTED,
        Alignment::Right,
    );
    let (x0, x1) = (pad + room(low), pad + inner - room(high));
    let (bar_top, bar_h) = (
        y + layout.line_height() as i32 / 4,
        layout.line_height() as i32 / 2,
    );
    if x1 <= x0 {
        return;
    }
    let pixels = (x0..x1).flat_map(|x| {
        let t = (x - x0) as f64 / (x1 - x0 - 1).max(1) as f64;
        let c = colorous::TURBO.eval_continuous(t);
        let colour = Rgb888::new(c.r, c.g, c.b);
        (bar_top..bar_top + bar_h).map(move |y| Pixel(Point::new(x, y), colour))
    });
    let Ok(()) = canvas.draw_iter(pixels);
}

fn text(
    canvas: &mut Canvas,
    layout: &Layout,
    s: &str,
    x: i32,
    y: i32,
    ink: Rgb888,
    align: Alignment,
) {
    let style = MonoTextStyle::new(layout.font, ink);
    let placement = TextStyleBuilder::new()
        .alignment(align)
        .baseline(Baseline::Top)
        .build();
    // Characters the font lacks are drawn as '?' by embedded-graphics.
    let _ = Text::with_text_style(s, Point::new(x, y), style, placement).draw(canvas);
}

/// Both sides of a line within `room` characters (with one space between them): the left
/// side (the class and score, the time) is kept whole when it can be, the right one
/// shortened with "..." or left out.
fn fit(left: &str, right: &str, room: usize) -> (String, String) {
    let left = shorten(left, room);
    let right_room = room.saturating_sub(left.chars().count() + 1);
    let right = if right_room >= 4 {
        shorten(right, right_room)
    } else {
        String::new()
    };
    (left, right)
}

fn shorten(s: &str, room: usize) -> String {
    if s.chars().count() <= room {
        return s.to_string();
    }
    if room <= 3 {
        return ".".repeat(room);
    }
    s.chars().take(room - 3).chain("...".chars()).collect()
}

/// The band as a drawing surface for `embedded-graphics`: coordinates in font pixels
/// from the band's top left corner.
struct Canvas<'a> {
    image: &'a mut RgbImage,
    top: u32,
    scale: u32,
}

impl OriginDimensions for Canvas<'_> {
    fn size(&self) -> Size {
        let (w, h) = self.image.dimensions();
        Size::new(w / self.scale, (h - self.top) / self.scale)
    }
}

impl DrawTarget for Canvas<'_> {
    type Color = Rgb888;
    type Error = Infallible;

    fn draw_iter<I>(&mut self, pixels: I) -> Result<(), Infallible>
    where
        I: IntoIterator<Item = Pixel<Rgb888>>,
    {
        let (w, h) = self.image.dimensions();
        let s = self.scale;
        for Pixel(p, c) in pixels {
            let (Ok(x), Ok(y)) = (u32::try_from(p.x), u32::try_from(p.y)) else {
                continue;
            };
            let (x0, y0) = (x * s, self.top + y * s);
            for (dx, dy) in (0..s).flat_map(|dx| (0..s).map(move |dy| (dx, dy))) {
                if x0 + dx < w && y0 + dy < h {
                    self.image
                        .put_pixel(x0 + dx, y0 + dy, Rgb([c.r(), c.g(), c.b()]));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caption() -> Caption {
        Caption {
            class: "forklift".into(),
            score: 0.873,
            method: "iscam".into(),
            passes: 64,
            live: false,
            time: Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_764_945_067)),
            source: "camera-7".into(),
        }
    }

    #[test]
    fn the_band_is_added_below_and_the_frame_is_kept() {
        for width in [160, 640, 1024, 2048] {
            let overlay = RgbImage::from_pixel(width, width / 2, Rgb([200, 100, 50]));
            let out = captioned(&overlay, &caption());
            let band = Layout::for_width(width).height();
            assert_eq!(out.dimensions(), (width, width / 2 + band));
            assert!(band >= 30 && band < width / 2, "{width}: band {band}");
            assert!(overlay
                .enumerate_pixels()
                .all(|(x, y, p)| out.get_pixel(x, y) == p));
            let inked = (width / 2..out.height())
                .flat_map(|y| (0..width).map(move |x| (x, y)))
                .filter(|&(x, y)| out.get_pixel(x, y).0[0] > 200)
                .count();
            assert!(
                inked > 100,
                "{width}: text and scale drawn ({inked} light pixels)"
            );
        }
    }

    #[test]
    fn the_scale_runs_from_cold_to_hot() {
        let out = captioned(&RgbImage::new(640, 320), &caption());
        let layout = Layout::for_width(640);
        let y = 320 + (layout.row(2) + layout.line_height() / 2) * layout.scale;
        let ramp: Vec<u32> = (0..640)
            .filter(|&x| {
                let p = out.get_pixel(x, y).0;
                p.iter().any(|&c| c.abs_diff(p[0]) > 8)
            })
            .collect();
        let (x0, x1) = (ramp[0], ramp[ramp.len() - 1]);
        assert!(
            x1 - x0 > 300,
            "the ramp spans most of the width: {x0}..{x1}"
        );
        let at = |t: f64| out.get_pixel(x0 + ((x1 - x0) as f64 * t) as u32, y).0;
        let (cold, hot) = (at(0.15), at(0.9));
        assert!(
            cold[2] > cold[0] + 100,
            "the overlay's cold colour, blue: {cold:?}"
        );
        assert!(hot[0] > hot[2] + 100, "its hot colour, red: {hot:?}");
    }

    #[test]
    fn narrow_pictures_keep_a_ramp_of_half_their_width() {
        for width in [120, 150, 200, 300] {
            let out = captioned(&RgbImage::new(width, 100), &caption());
            let layout = Layout::for_width(width);
            let y = 100 + (layout.row(2) + layout.line_height() / 2) * layout.scale;
            let coloured = (0..width)
                .filter(|&x| {
                    let p = out.get_pixel(x, y).0;
                    p.iter().any(|&c| c.abs_diff(p[0]) > 8)
                })
                .count() as u32;
            assert!(
                2 * coloured >= width - 2 * layout.pad,
                "{width}: ramp of {coloured} px"
            );
        }
    }

    #[test]
    fn long_lines_are_shortened_to_fit() {
        assert_eq!(fit("abc", "de", 10), ("abc".into(), "de".into()));
        let (l, r) = fit("forklift 87.0%", &"y".repeat(60), 30);
        assert_eq!(l, "forklift 87.0%");
        assert_eq!(r.chars().count(), 15);
        assert!(r.ends_with("..."));
        let (l, r) = fit(&"x".repeat(50), "iscam, 64 passes", 30);
        assert_eq!((l.chars().count(), r.as_str()), (30, ""));
        assert!(l.ends_with("..."));
        assert_eq!(shorten("abcdef", 2), "..");
    }

    #[test]
    fn lines_say_what_the_map_is() {
        let [(class, method), (time, source)] = caption().lines();
        assert_eq!(class, "forklift 87.3%");
        assert_eq!(method, "iscam, 64 passes");
        assert_eq!(time, "2025-12-05 14:31:07 UTC");
        assert_eq!(source, "camera-7");
        let live = Caption {
            live: true,
            time: None,
            ..caption()
        };
        assert_eq!(live.lines()[0].1, "iscam, live map");
        assert_eq!(live.lines()[1].0, "still image");
    }
}
