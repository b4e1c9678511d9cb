//! Decoding images into 8-bit RGB within a stated memory budget: a small hostile file (a
//! 48 KB PNG that claims 20000×20000 pixels, a JPEG header of 65535×65535) is refused
//! from its header, before anything large is allocated.

use std::io::Cursor;
use std::path::Path;

use image::{ColorType, DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbImage};
use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;

use crate::error::{Error, Result};
use crate::file::{read_capped, Bytes};

/// What every image input (`classify`, `explain`, `eval`, `bench`, the daemon's image
/// and camera sources) is held to. Documented in docs/commands.md ("Image limits").
pub mod limits {
    /// Largest image file read.
    pub const MAX_FILE_BYTES: u64 = 64 << 20;
    /// Largest side, in pixels.
    pub const MAX_SIDE: u32 = 20_000;
    /// Most pixels: a 48-megapixel photo fits, a 20000×20000 bitmap does not.
    pub const MAX_PIXELS: u64 = 50_000_000;
    /// Most memory the decoded pixels and their conversion to RGB may take together.
    pub const MAX_DECODE_BYTES: u64 = 512 << 20;
}
use limits::*;

/// Decodes an image file of any supported format (detected from its content, not its
/// name) into 8-bit RGB: grayscale is replicated, alpha is dropped, 16-bit is scaled.
/// Only regular files are read. A JPEG cut short is refused rather than decoded with a
/// grey lower part.
pub fn decode_image(path: &Path) -> Result<RgbImage> {
    decode_file_bytes(&read_capped(path, "image", MAX_FILE_BYTES)?, path)
}

/// Decodes the bytes of an image file as [`decode_image`] does; `path` only names the
/// file in errors.
pub fn decode_file_bytes(bytes: &[u8], path: &Path) -> Result<RgbImage> {
    let image = decode(bytes, path)?;
    if is_jpeg(bytes) && !jpeg_scan_is_complete(bytes, &image, path) {
        return Err(Error::input(
            path,
            "cannot decode image: corrupt or truncated JPEG (its data ends before the picture does)",
        ));
    }
    Ok(image)
}

/// Decodes an encoded image held in memory (a camera's MJPEG frame), as [`decode_image`]
/// does a file but for one check: a JPEG cut short must lack its end marker to be caught
/// (the check for a cut with a marker appended costs a second decode, and a camera's
/// frames are not crafted). `path` only names the origin in errors.
pub fn decode_image_bytes(bytes: &[u8], path: &Path) -> Result<RgbImage> {
    decode(bytes, path)
}

fn decode(bytes: &[u8], path: &Path) -> Result<RgbImage> {
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::input(path, format!("cannot read: {e}")))?;
    match reader.format() {
        Some(ImageFormat::Jpeg) => decode_jpeg(bytes, path),
        Some(_) => decode_other(reader, path),
        None => Err(Error::input(
            path,
            "not an image (unrecognised file format)",
        )),
    }
}

/// JPEGs go to zune-jpeg directly, in strict mode: `image` decodes leniently, filling
/// what is missing with grey, so a file cut short with an end-of-image marker appended
/// would pass as a picture.
fn decode_jpeg(bytes: &[u8], path: &Path) -> Result<RgbImage> {
    let options = DecoderOptions::default()
        .set_strict_mode(true)
        .set_max_width(MAX_SIDE as usize)
        .set_max_height(MAX_SIDE as usize)
        .jpeg_set_out_colorspace(ColorSpace::RGB);
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    let cannot = |e: zune_jpeg::errors::DecodeErrors| {
        Error::input(
            path,
            format!("cannot decode image: corrupt or truncated JPEG ({e})"),
        )
    };
    decoder.decode_headers().map_err(cannot)?;
    let (width, height) = decoder
        .dimensions()
        .ok_or_else(|| Error::input(path, "cannot decode image: JPEG without a frame header"))?;
    let (width, height) = (width as u32, height as u32);
    check_size(path, width, height, 3, false)?;
    let pixels = decoder.decode().map_err(cannot)?;
    RgbImage::from_raw(width, height, pixels)
        .ok_or_else(|| Error::input(path, "cannot decode image: JPEG decoder gave a short image"))
}

fn is_jpeg(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0xFF, 0xD8])
}

/// True when decoding never needed data past the last scan. Decoders (zune-jpeg, like
/// libjpeg) read zeros once a scan's data runs into a marker, so a file cut short with an
/// end-of-image marker appended decodes without error. Decoding again with stuffed
/// one-bits inserted before that marker changes the picture only if the decoder read
/// past the real data.
fn jpeg_scan_is_complete(bytes: &[u8], decoded: &RgbImage, path: &Path) -> bool {
    let Some(end) = bytes.windows(2).rposition(|w| w == [0xFF, 0xD9]) else {
        return false;
    };
    let mut padded = Vec::with_capacity(bytes.len() + 128);
    padded.extend_from_slice(&bytes[..end]);
    padded.extend(std::iter::repeat_n([0xFF, 0x00], 64).flatten());
    padded.extend_from_slice(&bytes[end..]);
    decode_jpeg(&padded, path).is_ok_and(|again| again == *decoded)
}

fn decode_other(mut reader: ImageReader<Cursor<&[u8]>>, path: &Path) -> Result<RgbImage> {
    // Sides and pixels are checked below, from the header, with errors that name the
    // limit; the decoder's own limit is on what it allocates. Sides alone do not bound a decoder's memory: a GIF frame may claim 51968×12439
    // pixels inside a 24×16 screen (tests/data/fuzz-image-decode-oom.gif).
    let mut decoder_limits = image::Limits::no_limits();
    decoder_limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(decoder_limits);
    let cannot = |e: image::ImageError| Error::input(path, format!("cannot decode image: {e}"));
    let decoder = reader.into_decoder().map_err(cannot)?;
    let (width, height) = decoder.dimensions();
    let color = decoder.color_type();
    check_size(
        path,
        width,
        height,
        color.bytes_per_pixel(),
        color != ColorType::Rgb8,
    )?;
    let image = DynamicImage::from_decoder(decoder).map_err(cannot)?;
    Ok(image.into_rgb8())
}

/// Refuses, from the header alone, an image beyond the limits: more pixels than
/// [`MAX_PIXELS`], or decoded pixels plus their RGB conversion above [`MAX_DECODE_BYTES`].
fn check_size(
    path: &Path,
    width: u32,
    height: u32,
    bytes_per_pixel: u8,
    converted: bool,
) -> Result<()> {
    let pixels = u64::from(width) * u64::from(height);
    let too_big =
        |reason: String| Error::input(path, format!("image is {width}×{height}: {reason}"));
    if width > MAX_SIDE || height > MAX_SIDE {
        return Err(too_big(format!(
            "a side is above the {MAX_SIDE}-pixel limit"
        )));
    }
    if pixels > MAX_PIXELS {
        let limit = MAX_PIXELS / 1_000_000;
        return Err(too_big(format!("above the {limit}-megapixel limit")));
    }
    let needed = pixels * u64::from(bytes_per_pixel) + if converted { pixels * 3 } else { 0 };
    if needed > MAX_DECODE_BYTES {
        return Err(too_big(format!(
            "decoding needs {} MiB, above the {} limit",
            needed >> 20,
            Bytes(MAX_DECODE_BYTES)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(bytes: &[u8]) -> String {
        decode_image_bytes(bytes, Path::new("x"))
            .unwrap_err()
            .to_string()
    }

    /// Found by `fuzz/run.sh` (target image_decode): 377 bytes that asked the GIF decoder
    /// for a 2.6 GB frame buffer. Refused now, before allocating.
    #[test]
    fn a_gif_frame_larger_than_its_screen_is_refused() {
        let bytes = include_bytes!("../../tests/data/fuzz-image-decode-oom.gif");
        let e = decode_image_bytes(bytes, Path::new("bomb.gif"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("bomb.gif: cannot decode image"), "{e}");
        assert!(e.to_lowercase().contains("limit"), "{e}");
    }

    /// A black PNG; `png` writes the 1-bit kind that `image` cannot.
    pub(crate) fn png(
        width: u32,
        height: u32,
        color: png::ColorType,
        depth: png::BitDepth,
    ) -> Vec<u8> {
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, width, height);
        encoder.set_color(color);
        encoder.set_depth(depth);
        let mut writer = encoder.write_header().unwrap();
        let mut stream = writer.stream_writer().unwrap();
        let row = vec![0u8; (width as usize * color.samples() * depth as usize).div_ceil(8)];
        for _ in 0..height {
            std::io::Write::write_all(&mut stream, &row).unwrap();
        }
        stream.finish().unwrap();
        drop(writer);
        out
    }

    /// The PNG with its header's size changed (and its checksum recomputed): the header
    /// alone must be enough to refuse it.
    fn with_size(mut png: Vec<u8>, width: u32, height: u32) -> Vec<u8> {
        let ihdr = 8 + 4; // signature, then the chunk's length
        png[ihdr + 4..ihdr + 8].copy_from_slice(&width.to_be_bytes());
        png[ihdr + 8..ihdr + 12].copy_from_slice(&height.to_be_bytes());
        let crc = crc32(&png[ihdr..ihdr + 4 + 13]);
        png[ihdr + 17..ihdr + 21].copy_from_slice(&crc.to_be_bytes());
        png
    }

    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
            }
        }
        !crc
    }

    #[test]
    fn sizes_beyond_the_limits_are_refused_from_the_header() {
        use png::{BitDepth, ColorType};
        let e = error(&png(20_001, 1, ColorType::Grayscale, BitDepth::One));
        assert_eq!(
            e,
            "x: image is 20001×1: a side is above the 20000-pixel limit"
        );
        let e = error(&png(10_000, 5_001, ColorType::Grayscale, BitDepth::One));
        assert_eq!(e, "x: image is 10000×5001: above the 50-megapixel limit");
        let e = error(&with_size(
            png(1, 1, ColorType::Rgba, BitDepth::Sixteen),
            7_000,
            7_000,
        ));
        assert_eq!(
            e,
            "x: image is 7000×7000: decoding needs 514 MiB, above the 512 MiB limit"
        );
    }

    #[test]
    fn a_jpeg_header_claiming_65535_squared_is_refused() {
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new(&mut jpeg)
            .encode(&[0u8; 3 * 16 * 16], 16, 16, image::ExtendedColorType::Rgb8)
            .unwrap();
        let sof = jpeg.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        jpeg[sof + 5..sof + 9].copy_from_slice(&[0xFF; 4]);
        let e = error(&jpeg);
        assert!(
            e.starts_with("x: cannot decode image") || e.contains("limit"),
            "{e}"
        );
        assert!(e.contains("65535"), "{e}");
    }
}
