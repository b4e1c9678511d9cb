//! What a camera can deliver, which of it we take, and turning its bytes into RGB.
//!
//! Decoding is ours, not nokhwa's: MJPEG goes through the same `image` (zune-jpeg) decoder
//! as files — nokhwa's mozjpeg path breaks aarch64 cross builds — and YUYV is a few lines
//! of integer arithmetic.

use std::borrow::Cow;
use std::fmt;
use std::path::Path;

use image::RgbImage;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::source::decode_image_bytes;

/// Pixel formats we decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PixelFormat {
    Mjpeg,
    Yuyv,
}

impl fmt::Display for PixelFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            PixelFormat::Mjpeg => "mjpeg",
            PixelFormat::Yuyv => "yuyv",
        })
    }
}

/// `[source] format`: one pixel format, or the best the camera offers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FormatChoice {
    #[default]
    Auto,
    Mjpeg,
    Yuyv,
}

/// One way a camera can stream: format, size, frame rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Mode {
    pub format: PixelFormat,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}x{} @ {} fps",
            self.format, self.width, self.height, self.fps
        )
    }
}

/// What the config asks of the camera.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Request {
    pub format: FormatChoice,
    pub width: u32,
    pub height: u32,
    pub fps: f64,
}

/// Picks the mode closest to `request` among `modes`:
/// 1. the requested pixel format only (with `auto`: any we decode);
/// 2. the size nearest the requested one (by area, then aspect ratio), preferring larger;
/// 3. the lowest frame rate at or above the requested one, else the highest there is;
/// 4. with `auto`, on a tie, MJPEG (far less USB bandwidth for the same frame).
pub fn negotiate(modes: &[Mode], request: &Request) -> Result<Mode> {
    let allowed = |m: &&Mode| match request.format {
        FormatChoice::Auto => true,
        FormatChoice::Mjpeg => m.format == PixelFormat::Mjpeg,
        FormatChoice::Yuyv => m.format == PixelFormat::Yuyv,
    };
    let candidates: Vec<&Mode> = modes.iter().filter(allowed).collect();
    if candidates.is_empty() {
        let offered: Vec<String> = modes.iter().map(Mode::to_string).collect();
        return Err(Error::invalid(
            "camera format",
            if modes.is_empty() {
                "the camera offers no MJPEG or YUYV mode iscamd can decode".to_string()
            } else {
                format!(
                    "the camera has no {:?} mode; it offers {}",
                    request.format,
                    offered.join(", ")
                )
            },
        ));
    }
    let want_area = f64::from(request.width) * f64::from(request.height);
    let want_aspect = f64::from(request.width) / f64::from(request.height.max(1));
    let size_cost = |m: &Mode| {
        let area = f64::from(m.width) * f64::from(m.height);
        let aspect = f64::from(m.width) / f64::from(m.height.max(1));
        // log-distance so that half and double the area are equally far; smaller sizes
        // lose ties (a downscale is cheap, detail lost to a small sensor mode is not).
        let area_cost = (area / want_area).ln().abs() + if area < want_area { 1e-6 } else { 0.0 };
        (area_cost, (aspect / want_aspect).ln().abs())
    };
    let fps_cost = |m: &Mode| {
        let fps = f64::from(m.fps);
        if fps >= request.fps {
            (0, fps)
        } else {
            (1, -fps)
        }
    };
    let format_cost = |m: &Mode| u8::from(m.format != PixelFormat::Mjpeg);
    let best = candidates
        .into_iter()
        .min_by(|a, b| {
            let (sa, sb) = (size_cost(a), size_cost(b));
            sa.0.total_cmp(&sb.0)
                .then(sa.1.total_cmp(&sb.1))
                .then_with(|| {
                    let (fa, fb) = (fps_cost(a), fps_cost(b));
                    fa.0.cmp(&fb.0).then(fa.1.total_cmp(&fb.1))
                })
                .then(format_cost(a).cmp(&format_cost(b)))
        })
        .expect("candidates is not empty");
    Ok(*best)
}

/// Decodes one raw frame of `mode`.
pub fn decode(raw: &[u8], mode: &Mode) -> Result<RgbImage> {
    let image = match mode.format {
        PixelFormat::Mjpeg => {
            decode_image_bytes(&with_huffman_tables(raw), Path::new("camera frame"))?
        }
        PixelFormat::Yuyv => yuyv_to_rgb(raw, mode.width, mode.height)?,
    };
    Ok(image)
}

/// The standard Huffman tables of JPEG (ITU T.81 Annex K.3), as one DHT segment.
///
/// Many UVC cameras send MJPEG frames without a DHT segment: the USB Video Class says the
/// decoder must then use these. Neither `image` nor zune-jpeg does, so we insert them.
const STANDARD_DHT: &[u8] = &[
    0xFF, 0xC4, 0x01, 0xA2, // DHT, length 418
    0x00, // DC luminance
    0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11,
    0x01, // DC chrominance
    0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11,
    0x10, // AC luminance
    0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 0x7D, 0x01, 0x02, 0x03, 0x00, 0x04, 0x11, 0x05,
    0x12, 0x21, 0x31, 0x41, 0x06, 0x13, 0x51, 0x61, 0x07, 0x22, 0x71, 0x14, 0x32, 0x81, 0x91, 0xA1,
    0x08, 0x23, 0x42, 0xB1, 0xC1, 0x15, 0x52, 0xD1, 0xF0, 0x24, 0x33, 0x62, 0x72, 0x82, 0x09, 0x0A,
    0x16, 0x17, 0x18, 0x19, 0x1A, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2A, 0x34, 0x35, 0x36, 0x37, 0x38,
    0x39, 0x3A, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49, 0x4A, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58,
    0x59, 0x5A, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6A, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78,
    0x79, 0x7A, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97,
    0x98, 0x99, 0x9A, 0xA2, 0xA3, 0xA4, 0xA5, 0xA6, 0xA7, 0xA8, 0xA9, 0xAA, 0xB2, 0xB3, 0xB4, 0xB5,
    0xB6, 0xB7, 0xB8, 0xB9, 0xBA, 0xC2, 0xC3, 0xC4, 0xC5, 0xC6, 0xC7, 0xC8, 0xC9, 0xCA, 0xD2, 0xD3,
    0xD4, 0xD5, 0xD6, 0xD7, 0xD8, 0xD9, 0xDA, 0xE1, 0xE2, 0xE3, 0xE4, 0xE5, 0xE6, 0xE7, 0xE8, 0xE9,
    0xEA, 0xF1, 0xF2, 0xF3, 0xF4, 0xF5, 0xF6, 0xF7, 0xF8, 0xF9, 0xFA, 0x11, // AC chrominance
    0, 2, 1, 2, 4, 4, 3, 4, 7, 5, 4, 4, 0, 1, 2, 0x77, 0x00, 0x01, 0x02, 0x03, 0x11, 0x04, 0x05,
    0x21, 0x31, 0x06, 0x12, 0x41, 0x51, 0x07, 0x61, 0x71, 0x13, 0x22, 0x32, 0x81, 0x08, 0x14, 0x42,
    0x91, 0xA1, 0xB1, 0xC1, 0x09, 0x23, 0x33, 0x52, 0xF0, 0x15, 0x62, 0x72, 0xD1, 0x0A, 0x16, 0x24,
    0x34, 0xE1, 0x25, 0xF1, 0x17, 0x18, 0x19, 0x1A, 0x26, 0x27, 0x28, 0x29, 0x2A, 0x35, 0x36, 0x37,
    0x38, 0x39, 0x3A, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49, 0x4A, 0x53, 0x54, 0x55, 0x56, 0x57,
    0x58, 0x59, 0x5A, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6A, 0x73, 0x74, 0x75, 0x76, 0x77,
    0x78, 0x79, 0x7A, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x92, 0x93, 0x94, 0x95,
    0x96, 0x97, 0x98, 0x99, 0x9A, 0xA2, 0xA3, 0xA4, 0xA5, 0xA6, 0xA7, 0xA8, 0xA9, 0xAA, 0xB2, 0xB3,
    0xB4, 0xB5, 0xB6, 0xB7, 0xB8, 0xB9, 0xBA, 0xC2, 0xC3, 0xC4, 0xC5, 0xC6, 0xC7, 0xC8, 0xC9, 0xCA,
    0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8, 0xD9, 0xDA, 0xE2, 0xE3, 0xE4, 0xE5, 0xE6, 0xE7, 0xE8,
    0xE9, 0xEA, 0xF2, 0xF3, 0xF4, 0xF5, 0xF6, 0xF7, 0xF8, 0xF9, 0xFA,
];

/// The frame with [`STANDARD_DHT`] inserted before its scan when it has no DHT of its own;
/// anything that does not parse as JPEG markers is left for the decoder to reject.
fn with_huffman_tables(jpeg: &[u8]) -> Cow<'_, [u8]> {
    if !jpeg.starts_with(&[0xFF, 0xD8]) {
        return Cow::Borrowed(jpeg);
    }
    let mut i = 2;
    while i + 4 <= jpeg.len() && jpeg[i] == 0xFF {
        match jpeg[i + 1] {
            0xC4 => return Cow::Borrowed(jpeg),
            0xDA => {
                let mut out = Vec::with_capacity(jpeg.len() + STANDARD_DHT.len());
                out.extend_from_slice(&jpeg[..i]);
                out.extend_from_slice(STANDARD_DHT);
                out.extend_from_slice(&jpeg[i..]);
                return Cow::Owned(out);
            }
            0xFF => i += 1, // fill byte
            _ => i += 2 + usize::from(u16::from_be_bytes([jpeg[i + 2], jpeg[i + 3]])),
        }
    }
    Cow::Borrowed(jpeg)
}

/// YUYV 4:2:2 (Y0 U Y1 V per two pixels, BT.601 limited range) to RGB.
pub fn yuyv_to_rgb(raw: &[u8], width: u32, height: u32) -> Result<RgbImage> {
    let expected = width as usize * height as usize * 2;
    if !width.is_multiple_of(2) || raw.len() < expected {
        return Err(Error::Frame(format!(
            "{} bytes of YUYV for {width}x{height} (expected {expected})",
            raw.len()
        )));
    }
    let mut rgb = Vec::with_capacity(width as usize * height as usize * 3);
    for quad in raw[..expected].chunks_exact(4) {
        let (u, v) = (i32::from(quad[1]) - 128, i32::from(quad[3]) - 128);
        for y in [quad[0], quad[2]] {
            let c = 298 * (i32::from(y) - 16);
            let clamp = |x: i32| ((x + 128) >> 8).clamp(0, 255) as u8;
            rgb.push(clamp(c + 409 * v));
            rgb.push(clamp(c - 100 * u - 208 * v));
            rgb.push(clamp(c + 516 * u));
        }
    }
    Ok(RgbImage::from_raw(width, height, rgb).expect("buffer has width*height*3 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(format: PixelFormat, width: u32, height: u32, fps: u32) -> Mode {
        Mode {
            format,
            width,
            height,
            fps,
        }
    }

    fn request(format: FormatChoice, width: u32, height: u32, fps: f64) -> Request {
        Request {
            format,
            width,
            height,
            fps,
        }
    }

    /// A typical UVC webcam: YUYV up to 30 fps only at small sizes, MJPEG 30 fps everywhere.
    fn webcam() -> Vec<Mode> {
        use PixelFormat::*;
        vec![
            mode(Yuyv, 640, 480, 30),
            mode(Yuyv, 640, 480, 15),
            mode(Yuyv, 1280, 720, 10),
            mode(Yuyv, 1920, 1080, 5),
            mode(Mjpeg, 640, 480, 30),
            mode(Mjpeg, 1280, 720, 30),
            mode(Mjpeg, 1280, 720, 60),
            mode(Mjpeg, 1920, 1080, 30),
            mode(Mjpeg, 320, 240, 30),
        ]
    }

    #[test]
    fn exact_matches_win() {
        let m = negotiate(&webcam(), &request(FormatChoice::Yuyv, 640, 480, 15.0)).unwrap();
        assert_eq!(m, mode(PixelFormat::Yuyv, 640, 480, 15));
        let m = negotiate(&webcam(), &request(FormatChoice::Mjpeg, 1280, 720, 30.0)).unwrap();
        assert_eq!(m, mode(PixelFormat::Mjpeg, 1280, 720, 30));
    }

    #[test]
    fn auto_prefers_mjpeg_on_a_tie_and_the_lowest_sufficient_rate() {
        let m = negotiate(&webcam(), &request(FormatChoice::Auto, 640, 480, 5.0)).unwrap();
        // YUYV 640x480 has 15 fps, MJPEG 30: both suffice, the lower rate wins (less work).
        assert_eq!(m, mode(PixelFormat::Yuyv, 640, 480, 15));
        let m = negotiate(&webcam(), &request(FormatChoice::Auto, 1280, 720, 20.0)).unwrap();
        assert_eq!(m, mode(PixelFormat::Mjpeg, 1280, 720, 30));
        let m = negotiate(&webcam(), &request(FormatChoice::Auto, 640, 480, 30.0)).unwrap();
        assert_eq!(m, mode(PixelFormat::Mjpeg, 640, 480, 30));
    }

    #[test]
    fn nearest_size_then_fastest_available_rate() {
        // 800x600 is nearest 640x480 by area... and YUYV 1920x1080 only has 5 fps.
        let m = negotiate(&webcam(), &request(FormatChoice::Yuyv, 800, 600, 30.0)).unwrap();
        assert_eq!((m.width, m.height), (640, 480));
        let m = negotiate(&webcam(), &request(FormatChoice::Yuyv, 1920, 1080, 30.0)).unwrap();
        assert_eq!(m, mode(PixelFormat::Yuyv, 1920, 1080, 5));
    }

    #[test]
    fn a_missing_format_names_what_is_offered() {
        let only_yuyv = vec![mode(PixelFormat::Yuyv, 640, 480, 30)];
        let e = negotiate(&only_yuyv, &request(FormatChoice::Mjpeg, 640, 480, 5.0))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("Mjpeg") && e.contains("yuyv 640x480 @ 30 fps"),
            "{e}"
        );
        let e = negotiate(&[], &request(FormatChoice::Auto, 640, 480, 5.0)).unwrap_err();
        assert!(e.to_string().contains("no MJPEG or YUYV"), "{e}");
    }

    /// YUYV of known colours: black, white, and the BT.601 primaries.
    #[test]
    fn yuyv_decodes_known_colours() {
        // (Y, U, V) → RGB, limited range.
        let cases: [([u8; 3], [u8; 3]); 4] = [
            ([16, 128, 128], [0, 0, 0]),
            ([235, 128, 128], [255, 255, 255]),
            ([82, 90, 240], [255, 0, 0]),
            ([41, 240, 110], [0, 0, 255]),
        ];
        for ([y, u, v], rgb) in cases {
            let img = yuyv_to_rgb(&[y, u, y, v], 2, 1).unwrap();
            for px in img.pixels() {
                for (got, want) in px.0.iter().zip(rgb) {
                    assert!(
                        got.abs_diff(want) <= 2,
                        "YUV {y},{u},{v}: {:?} vs {rgb:?}",
                        px.0
                    );
                }
            }
        }
    }

    #[test]
    fn short_yuyv_frames_are_errors() {
        let e = yuyv_to_rgb(&[0; 10], 4, 2).unwrap_err().to_string();
        assert!(e.contains("10 bytes") && e.contains("expected 16"), "{e}");
        assert!(yuyv_to_rgb(&[0; 12], 3, 2).is_err(), "odd width");
    }

    /// MJPEG frames through the file decoder, including the many UVC cameras that send
    /// JPEGs without Huffman tables (DHT), relying on the standard ones.
    #[test]
    fn mjpeg_decodes_with_and_without_huffman_tables() {
        let mut src = RgbImage::new(64, 48);
        for (x, y, p) in src.enumerate_pixels_mut() {
            *p = image::Rgb([(x * 4) as u8, (y * 5) as u8, 128]);
        }
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90)
            .encode_image(&src)
            .unwrap();
        let m = mode(PixelFormat::Mjpeg, 64, 48, 30);
        let decoded = decode(&jpeg, &m).unwrap();
        assert_eq!(decoded.dimensions(), (64, 48));
        let close = |a: &RgbImage| {
            a.pixels()
                .zip(src.pixels())
                .all(|(p, q)| p.0.iter().zip(q.0).all(|(x, y)| x.abs_diff(y) <= 12))
        };
        assert!(close(&decoded));

        // image's encoder uses the standard tables too: without its DHT segments, the
        // frame must decode to exactly the same pixels.
        let without_dht = strip_segments(&jpeg, 0xC4);
        assert!(
            without_dht.len() < jpeg.len(),
            "the encoder wrote DHT segments"
        );
        assert_eq!(STANDARD_DHT.len(), 2 + 418);
        let restored = decode(&without_dht, &m).expect("MJPEG without DHT decodes");
        assert_eq!(restored, decoded, "standard tables give the same picture");

        let e = decode(&jpeg[..jpeg.len() / 2], &m).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
    }

    /// The JPEG without its marker segments of type `marker` (before the scan data).
    fn strip_segments(jpeg: &[u8], marker: u8) -> Vec<u8> {
        let mut out = jpeg[..2].to_vec();
        let mut i = 2;
        while i + 4 <= jpeg.len() && jpeg[i] == 0xFF {
            let kind = jpeg[i + 1];
            let len = usize::from(u16::from_be_bytes([jpeg[i + 2], jpeg[i + 3]]));
            if kind == 0xDA {
                break;
            }
            if kind != marker {
                out.extend_from_slice(&jpeg[i..i + 2 + len]);
            }
            i += 2 + len;
        }
        out.extend_from_slice(&jpeg[i..]);
        out
    }
}
