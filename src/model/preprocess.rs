//! Image → input tensor, as the model was trained: resize, centre crop, channel order,
//! mean and scale. The recipe comes from the model's `metadata_props` (see
//! `../shared/models/MODELS.md`); every field can be overridden.

use image::{imageops, RgbImage};
use tract_onnx::prelude::tract_ndarray::{Array3, ArrayViewMut3};

use crate::error::{Error, Result};

/// Order of the colour planes in the input tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ChannelOrder {
    Rgb,
    Bgr,
}

impl std::str::FromStr for ChannelOrder {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_uppercase().as_str() {
            "RGB" => Ok(ChannelOrder::Rgb),
            "BGR" => Ok(ChannelOrder::Bgr),
            _ => Err(Error::invalid(
                "channel order",
                format!("{s:?} (expected RGB or BGR)"),
            )),
        }
    }
}

/// How a frame becomes the model's input: resize to `resize`×`resize` (bilinear with
/// antialiasing, aspect not kept, like PIL's `resize((r, r), BILINEAR)`), centre-crop
/// `input_size`×`input_size`, reorder channels, then `(pixel * scale - mean) / std`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Preprocess {
    pub input_size: u32,
    /// Side of the square resize before the crop; equal to `input_size` for no crop.
    pub resize: u32,
    pub channel_order: ChannelOrder,
    /// Per channel, in the order of `channel_order`, in the units of `pixel_range`.
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// 255 for pixel values 0..255, 1 for 0..1.
    pub pixel_max: f32,
}

/// Values given on the command line or in config that replace the model's metadata.
#[derive(Clone, Debug, Default)]
pub struct PreprocessOverrides {
    pub input_size: Option<u32>,
    pub resize: Option<u32>,
    pub channel_order: Option<ChannelOrder>,
    pub mean: Option<[f32; 3]>,
    pub std: Option<[f32; 3]>,
    pub pixel_max: Option<f32>,
}

/// The recipe's pieces as read from `metadata_props` (absent keys are `None`).
#[derive(Clone, Debug, Default)]
pub struct PreprocessMetadata {
    pub input_size: Option<String>,
    pub resize: Option<String>,
    pub channel_order: Option<String>,
    pub mean: Option<String>,
    pub std: Option<String>,
    pub pixel_range: Option<String>,
}

impl Preprocess {
    /// Combines metadata, overrides and, for anything still missing, the input size the
    /// graph declares and ImageNet's usual RGB recipe (what most exported models expect).
    pub fn resolve(
        meta: &PreprocessMetadata,
        overrides: &PreprocessOverrides,
        graph_size: Option<u32>,
    ) -> Result<Self> {
        let input_size = match overrides.input_size {
            Some(s) => s,
            None => match &meta.input_size {
                Some(s) => parse_u32("input_size", s)?,
                None => graph_size.unwrap_or(224),
            },
        };
        let resize = match overrides.resize {
            Some(s) => s,
            None => match &meta.resize {
                Some(s) => parse_u32("resize", s)?,
                None => input_size,
            },
        };
        let channel_order = match overrides.channel_order {
            Some(c) => c,
            None => meta
                .channel_order
                .as_deref()
                .map(str::parse)
                .transpose()?
                .unwrap_or(ChannelOrder::Rgb),
        };
        let pixel_max = match overrides.pixel_max {
            Some(p) => p,
            None => match meta.pixel_range.as_deref() {
                None | Some("0-255") => 255.0,
                Some("0-1") => 1.0,
                Some(other) => {
                    return Err(Error::invalid(
                        "metadata pixel_range",
                        format!("{other:?} (expected 0-255 or 0-1)"),
                    ))
                }
            },
        };
        let imagenet = |rgb: [f32; 3]| {
            let v = rgb.map(|c| c * pixel_max);
            match channel_order {
                ChannelOrder::Rgb => v,
                ChannelOrder::Bgr => [v[2], v[1], v[0]],
            }
        };
        let mean = match overrides.mean {
            Some(m) => m,
            None => match &meta.mean {
                Some(s) => parse_triplet("mean", s)?,
                None => imagenet([0.485, 0.456, 0.406]),
            },
        };
        let std = match overrides.std {
            Some(s) => s,
            None => match &meta.std {
                Some(s) => parse_triplet("std", s)?,
                None => imagenet([0.229, 0.224, 0.225]),
            },
        };
        let p = Preprocess {
            input_size,
            resize,
            channel_order,
            mean,
            std,
            pixel_max,
        };
        p.validate()?;
        Ok(p)
    }

    fn validate(&self) -> Result<()> {
        if self.input_size == 0 || self.input_size > 4096 {
            return Err(Error::invalid(
                "input size",
                format!("{} (expected 1..=4096)", self.input_size),
            ));
        }
        if self.resize < self.input_size || self.resize > 8192 {
            return Err(Error::invalid(
                "resize",
                format!(
                    "{} (must be at least the input size {} and at most 8192)",
                    self.resize, self.input_size
                ),
            ));
        }
        if self.std.iter().any(|s| !s.is_finite() || *s == 0.0)
            || self.mean.iter().any(|m| !m.is_finite())
        {
            return Err(Error::invalid(
                "mean/std",
                format!(
                    "mean {:?}, std {:?} (std must be non-zero)",
                    self.mean, self.std
                ),
            ));
        }
        Ok(())
    }

    /// Offset of the centre crop inside the resized square: 14 for 227 of 256, as
    /// torchvision's `CenterCrop` computes it (Python rounds 14.5 to even).
    pub fn crop_offset(&self) -> u32 {
        let d = self.resize - self.input_size;
        let half = d / 2;
        if d % 2 == 1 && half % 2 == 1 {
            half + 1
        } else {
            half
        }
    }

    /// The part of the frame the model sees, as fractions `(x0, y0, x1, y1)` of its width
    /// and height: heatmaps are drawn there.
    pub fn crop_region(&self) -> (f32, f32, f32, f32) {
        let r = self.resize as f32;
        let o = self.crop_offset() as f32;
        let s = self.input_size as f32;
        (o / r, o / r, (o + s) / r, (o + s) / r)
    }

    /// Resizes and crops a frame to what the model sees, still as RGB pixels.
    pub fn model_view(&self, frame: &RgbImage) -> RgbImage {
        let resized = if frame.dimensions() == (self.resize, self.resize) {
            frame.clone()
        } else {
            imageops::resize(
                frame,
                self.resize,
                self.resize,
                imageops::FilterType::Triangle,
            )
        };
        let o = self.crop_offset();
        if o == 0 && self.resize == self.input_size {
            return resized;
        }
        imageops::crop_imm(&resized, o, o, self.input_size, self.input_size).to_image()
    }

    /// The normalised CHW tensor of a frame.
    pub fn tensor(&self, frame: &RgbImage) -> Array3<f32> {
        let s = self.input_size as usize;
        let mut out = Array3::<f32>::zeros((3, s, s));
        self.write_tensor(&self.model_view(frame), out.view_mut());
        out
    }

    /// Writes the normalised CHW tensor of an already resized and cropped view into `out`.
    pub fn write_tensor(&self, view: &RgbImage, mut out: ArrayViewMut3<f32>) {
        let scale = self.pixel_max / 255.0;
        let planes: [usize; 3] = match self.channel_order {
            ChannelOrder::Rgb => [0, 1, 2],
            ChannelOrder::Bgr => [2, 1, 0],
        };
        for (x, y, px) in view.enumerate_pixels() {
            for (plane, &src) in planes.iter().enumerate() {
                out[[plane, y as usize, x as usize]] =
                    (f32::from(px.0[src]) * scale - self.mean[plane]) / self.std[plane];
            }
        }
    }
}

fn parse_u32(key: &'static str, s: &str) -> Result<u32> {
    s.trim()
        .parse()
        .map_err(|_| Error::invalid(key, format!("{s:?} is not a whole number")))
}

fn parse_triplet(key: &'static str, s: &str) -> Result<[f32; 3]> {
    let parts: Vec<f32> = s
        .split(',')
        .map(|p| p.trim().parse::<f32>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| Error::invalid(key, format!("{s:?} is not three comma-separated numbers")))?;
    <[f32; 3]>::try_from(parts)
        .map_err(|_| Error::invalid(key, format!("{s:?} is not three comma-separated numbers")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn squeezenet_meta() -> PreprocessMetadata {
        PreprocessMetadata {
            input_size: Some("227".into()),
            resize: Some("256".into()),
            channel_order: Some("BGR".into()),
            mean: Some("104,117,123".into()),
            std: Some("1,1,1".into()),
            pixel_range: Some("0-255".into()),
        }
    }

    #[test]
    fn metadata_recipe_is_read_and_overridable() {
        let p =
            Preprocess::resolve(&squeezenet_meta(), &PreprocessOverrides::default(), None).unwrap();
        assert_eq!((p.input_size, p.resize, p.crop_offset()), (227, 256, 14));
        assert_eq!(p.channel_order, ChannelOrder::Bgr);
        assert_eq!(p.mean, [104.0, 117.0, 123.0]);
        let o = PreprocessOverrides {
            channel_order: Some(ChannelOrder::Rgb),
            resize: Some(227),
            ..Default::default()
        };
        let p = Preprocess::resolve(&squeezenet_meta(), &o, None).unwrap();
        assert_eq!(
            (p.channel_order, p.resize, p.crop_offset()),
            (ChannelOrder::Rgb, 227, 0)
        );
    }

    #[test]
    fn bad_metadata_is_named() {
        let mut m = squeezenet_meta();
        m.mean = Some("1,2".into());
        let e = Preprocess::resolve(&m, &PreprocessOverrides::default(), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("mean") && e.contains("three"), "{e}");
        let o = PreprocessOverrides {
            resize: Some(100),
            ..Default::default()
        };
        let e = Preprocess::resolve(&squeezenet_meta(), &o, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("resize"), "{e}");
    }

    #[test]
    fn tensor_is_bgr_minus_mean() {
        let p =
            Preprocess::resolve(&squeezenet_meta(), &PreprocessOverrides::default(), None).unwrap();
        let frame = RgbImage::from_pixel(300, 200, image::Rgb([200, 100, 50]));
        let t = p.tensor(&frame);
        assert_eq!(t.shape(), &[3, 227, 227]);
        assert_eq!(t[[0, 10, 10]], 50.0 - 104.0);
        assert_eq!(t[[1, 10, 10]], 100.0 - 117.0);
        assert_eq!(t[[2, 10, 10]], 200.0 - 123.0);
    }
}
