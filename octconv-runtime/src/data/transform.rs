//! The per-image geometry of the pipeline, as torchvision defines it so that recipes carry over:
//! `RandomResizedCrop` and the eval `Resize` + `CenterCrop` choose a box of the source image, which
//! one antialiased bilinear resize (`fast_image_resize`, like PIL's) turns into the output size.

use super::decode::Decoded;
use anyhow::{Context, Result};
use fast_image_resize::{
    images::{Image, ImageRef},
    FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer,
};
use rand::Rng;

/// A box of the source image, in source pixels (fractional for the eval crop).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CropBox {
    /// Left edge.
    pub left: f64,
    /// Top edge.
    pub top: f64,
    /// Width.
    pub width: f64,
    /// Height.
    pub height: f64,
}

impl CropBox {
    /// The box moved and shrunk into a `w × h` image: the float arithmetic of a box that just fits
    /// can overshoot the edge by an ulp, which the resizer refuses.
    pub fn inside(self, w: usize, h: usize) -> Self {
        let (w, h) = (w as f64, h as f64);
        let left = self.left.clamp(0.0, w);
        let top = self.top.clamp(0.0, h);
        CropBox {
            left,
            top,
            width: self.width.min(w - left),
            height: self.height.min(h - top),
        }
    }

    /// The whole `w × h` image.
    pub fn full(w: usize, h: usize) -> Self {
        CropBox {
            left: 0.0,
            top: 0.0,
            width: w as f64,
            height: h as f64,
        }
    }
}

/// The random draws of [`random_resized_crop`], in torchvision's order: an area fraction and an
/// aspect ratio per try, then the top and left offsets of the box that fits.
pub trait CropDraws {
    /// A uniform area fraction in `[lo, hi]`.
    fn area_fraction(&mut self, lo: f64, hi: f64) -> f64;
    /// An aspect ratio whose logarithm is uniform in `[ln lo, ln hi]`.
    fn aspect(&mut self, lo: f64, hi: f64) -> f64;
    /// A uniform offset in `0..=n`.
    fn offset(&mut self, n: usize) -> usize;
}

/// [`CropDraws`] from a random generator (what training uses; tests replay torchvision's draws).
pub struct RngDraws<'a, R: Rng>(pub &'a mut R);

impl<R: Rng> CropDraws for RngDraws<'_, R> {
    fn area_fraction(&mut self, lo: f64, hi: f64) -> f64 {
        self.0.random_range(lo..=hi)
    }

    fn aspect(&mut self, lo: f64, hi: f64) -> f64 {
        self.0.random_range(lo.ln()..=hi.ln()).exp()
    }

    fn offset(&mut self, n: usize) -> usize {
        self.0.random_range(0..=n)
    }
}

/// torchvision's `RandomResizedCrop.get_params`: ten tries at a box of `scale` × the area and an
/// aspect ratio log-uniform in `ratio`, else the central crop clamped to `ratio`. Python rounds
/// halves to even, and so does this function, so that the same draws give torchvision's box (test
/// `random_resized_crop_replays_torchvisions_boxes`).
pub fn random_resized_crop(
    w: usize,
    h: usize,
    scale: (f64, f64),
    ratio: (f64, f64),
    draws: &mut impl CropDraws,
) -> CropBox {
    let area = (w * h) as f64;
    for _ in 0..10 {
        let target = area * draws.area_fraction(scale.0, scale.1);
        let aspect = draws.aspect(ratio.0, ratio.1);
        let cw = (target * aspect).sqrt().round_ties_even() as usize;
        let ch = (target / aspect).sqrt().round_ties_even() as usize;
        if 0 < cw && cw <= w && 0 < ch && ch <= h {
            let top = draws.offset(h - ch);
            let left = draws.offset(w - cw);
            return CropBox {
                left: left as f64,
                top: top as f64,
                width: cw as f64,
                height: ch as f64,
            };
        }
    }
    let in_ratio = w as f64 / h as f64;
    let (cw, ch) = if in_ratio < ratio.0 {
        (
            w,
            ((w as f64 / ratio.0).round_ties_even() as usize).clamp(1, h),
        )
    } else if in_ratio > ratio.1 {
        (
            ((h as f64 * ratio.1).round_ties_even() as usize).clamp(1, w),
            h,
        )
    } else {
        (w, h)
    };
    CropBox {
        left: ((w - cw) / 2) as f64,
        top: ((h - ch) / 2) as f64,
        width: cw as f64,
        height: ch as f64,
    }
}

/// The joint crop of segmentation: the image scaled so that it just covers `out_w × out_h`, then by
/// a factor drawn from `scale` (≥ 1), and an `out_w × out_h` crop at a random place, as a box of
/// the source (which therefore always lies inside the image).
pub fn scale_crop(
    w: usize,
    h: usize,
    out_w: usize,
    out_h: usize,
    scale: (f64, f64),
    rng: &mut impl Rng,
) -> CropBox {
    let cover = (out_w as f64 / w as f64).max(out_h as f64 / h as f64);
    let s = cover * rng.random_range(scale.0.max(1.0)..=scale.1.max(1.0));
    let (bw, bh) = (
        (out_w as f64 / s).min(w as f64),
        (out_h as f64 / s).min(h as f64),
    );
    CropBox {
        left: rng.random_range(0.0..=w as f64 - bw),
        top: rng.random_range(0.0..=h as f64 - bh),
        width: bw,
        height: bh,
    }
    .inside(w, h)
}

/// torchvision's `Resize(short)` then `CenterCrop(out_h, out_w)`, as the box of the source that the
/// crop covers: the short side is scaled to `short` (the long side to `int(short · long / short)`),
/// and the crop's top-left corner is `round((resized − out) / 2)`.
pub fn resize_center_crop(w: usize, h: usize, short: usize, out_w: usize, out_h: usize) -> CropBox {
    let (rw, rh) = if w <= h {
        (short, (short as f64 * h as f64 / w as f64) as usize)
    } else {
        ((short as f64 * w as f64 / h as f64) as usize, short)
    };
    let (sx, sy) = (rw as f64 / w as f64, rh as f64 / h as f64);
    let left = ((rw as f64 - out_w as f64) / 2.0).round_ties_even();
    let top = ((rh as f64 - out_h as f64) / 2.0).round_ties_even();
    CropBox {
        left: left / sx,
        top: top / sy,
        width: out_w as f64 / sx,
        height: out_h as f64 / sy,
    }
    .inside(w, h)
}

/// The class indices of `crop` of a `w × h` mask resized to `out_w × out_h` by nearest neighbour,
/// so that indices are never blended: every output value is a value of the input.
pub fn crop_resize_nearest(
    indices: &[u8],
    w: usize,
    h: usize,
    crop: CropBox,
    out_w: usize,
    out_h: usize,
    resizer: &mut Resizer,
) -> Result<Vec<u8>> {
    if crop == CropBox::full(out_w, out_h) && (w, h) == (out_w, out_h) {
        return Ok(indices.to_vec());
    }
    let src = ImageRef::new(w as u32, h as u32, indices, PixelType::U8)
        .context("mask buffer does not match its size")?;
    let mut dst = Image::new(out_w as u32, out_h as u32, PixelType::U8);
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Nearest).crop(
        crop.left,
        crop.top,
        crop.width,
        crop.height,
    );
    resizer
        .resize(&src, &mut dst, &options)
        .context("resizing the mask failed")?;
    Ok(dst.into_vec())
}

/// The pixels of `crop` of `img` resized to `out_w × out_h` (interleaved, like `img`); the image
/// itself when the crop is the whole image at the output size.
pub fn crop_resize(
    img: &Decoded,
    crop: CropBox,
    out_w: usize,
    out_h: usize,
    resizer: &mut Resizer,
) -> Result<Vec<u8>> {
    if crop == CropBox::full(out_w, out_h) && (img.width, img.height) == (out_w, out_h) {
        return Ok(img.pixels.clone());
    }
    let kind = if img.channels == 1 {
        PixelType::U8
    } else {
        PixelType::U8x3
    };
    let src = ImageRef::new(img.width as u32, img.height as u32, &img.pixels, kind)
        .context("image buffer does not match its size")?;
    let mut dst = Image::new(out_w as u32, out_h as u32, kind);
    let options = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(FilterType::Bilinear))
        .crop(crop.left, crop.top, crop.width, crop.height);
    resizer
        .resize(&src, &mut dst, &options)
        .context("resizing failed")?;
    Ok(dst.into_vec())
}
