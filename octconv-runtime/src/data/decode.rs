//! Image files: where their bytes are, a cheap probe that names bad files before a run starts, and
//! decoding to interleaved 8-bit RGB or grey.
//!
//! JPEGs are decoded by `zune-jpeg` directly (strict mode, so a truncated file is an error, and the
//! decoder converts greyscale, CMYK and YCCK to RGB itself); PNGs by `image`. `octconv data-bench
//! --decoder image` measures `image`'s own JPEG path against it.

use anyhow::{bail, Context, Result};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where an image's encoded bytes are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A file, read when the image is needed.
    Path(PathBuf),
    /// Bytes held in memory (the members of a `.tar.gz`, which cannot be read out of order).
    Bytes(Arc<[u8]>),
}

/// One encoded image of a dataset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageFile {
    /// The name errors use: the path for a file, `archive.tar.gz: member` for an archive member.
    pub name: String,
    /// Its bytes.
    pub source: Source,
}

/// Which JPEG decoder to use (PNGs always go through `image`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Decoder {
    /// `zune-jpeg` called directly, strict mode (the default).
    #[default]
    Zune,
    /// `image::load_from_memory` (which wraps `zune-jpeg` in lenient mode), for comparison.
    Image,
}

impl std::str::FromStr for Decoder {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "zune" => Ok(Decoder::Zune),
            "image" => Ok(Decoder::Image),
            other => bail!("unknown decoder `{other}`: use `zune` or `image`"),
        }
    }
}

/// A decoded image: interleaved pixels, `channels` per pixel (1 or 3), row after row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decoded {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// 1 (grey) or 3 (RGB).
    pub channels: usize,
    /// `height × width × channels` bytes.
    pub pixels: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Jpeg,
    Png,
}

fn format_of(head: &[u8]) -> Option<Format> {
    if head.starts_with(&[0xff, 0xd8, 0xff]) {
        Some(Format::Jpeg)
    } else if head.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(Format::Png)
    } else {
        None
    }
}

/// The last bytes of a complete file of `format`: JPEG's end-of-image marker must be among the last
/// KiB (some writers pad after it; inside entropy-coded data `FF D9` cannot occur), PNG ends with
/// its `IEND` chunk.
fn is_complete(format: Format, tail: &[u8]) -> bool {
    match format {
        Format::Jpeg => tail.windows(2).any(|w| w == [0xff, 0xd9]),
        Format::Png => tail.ends_with(&[0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82]),
    }
}

const TAIL: usize = 1024;

/// Checks an image file without decoding it: not empty, a JPEG or PNG by its first bytes, and not
/// cut short (its end marker is there). Reads the head and the last KiB only, so a million files
/// are probed in seconds. Errors name the file and say what is wrong.
pub fn probe(file: &ImageFile) -> Result<()> {
    let (len, head, tail) = match &file.source {
        Source::Bytes(b) => (
            b.len(),
            b[..b.len().min(8)].to_vec(),
            b[b.len().saturating_sub(TAIL)..].to_vec(),
        ),
        Source::Path(p) => read_ends(p).with_context(|| format!("cannot read `{}`", file.name))?,
    };
    if len == 0 {
        bail!(
            "`{}` is empty (0 bytes); delete it or replace it with the image",
            file.name
        );
    }
    let Some(format) = format_of(&head) else {
        bail!(
            "`{}` is not an image: it starts with {:02x?}, neither JPEG nor PNG; delete or convert it",
            file.name,
            &head[..head.len().min(4)]
        );
    };
    // Some writers append data after the end marker (motion photos, vendor trailers): a file whose
    // tail lacks the marker is refused only if it does not decode either.
    if !is_complete(format, &tail) && file.decode(3, Decoder::Zune).is_err() {
        bail!(
            "`{}` is truncated: its {} end marker is missing ({len} bytes); re-copy or delete it",
            file.name,
            if format == Format::Jpeg {
                "JPEG"
            } else {
                "PNG"
            }
        );
    }
    Ok(())
}

/// The length, first 8 bytes and last KiB of a file.
fn read_ends(path: &Path) -> std::io::Result<(usize, Vec<u8>, Vec<u8>)> {
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len() as usize;
    let mut head = vec![0u8; len.min(8)];
    f.read_exact(&mut head)?;
    let start = len.saturating_sub(TAIL);
    f.seek(SeekFrom::Start(start as u64))?;
    let mut tail = Vec::with_capacity(len - start);
    f.read_to_end(&mut tail)?;
    Ok((len, head, tail))
}

impl ImageFile {
    /// The encoded bytes.
    pub fn bytes(&self) -> Result<std::borrow::Cow<'_, [u8]>> {
        Ok(match &self.source {
            Source::Bytes(b) => std::borrow::Cow::Borrowed(b),
            Source::Path(p) => std::borrow::Cow::Owned(
                std::fs::read(p).with_context(|| format!("cannot read `{}`", self.name))?,
            ),
        })
    }

    /// Decodes to `channels` (1: grey, 3: RGB) interleaved channels.
    pub fn decode(&self, channels: usize, decoder: Decoder) -> Result<Decoded> {
        let bytes = self.bytes()?;
        decode(&bytes, channels, decoder).with_context(|| format!("`{}`", self.name))
    }
}

/// Decodes JPEG or PNG `bytes` to `channels` (1 or 3) interleaved channels.
pub fn decode(bytes: &[u8], channels: usize, decoder: Decoder) -> Result<Decoded> {
    if channels != 1 && channels != 3 {
        bail!("images can be read with 1 (grey) or 3 (RGB) channels, not {channels}");
    }
    match format_of(&bytes[..bytes.len().min(8)]) {
        Some(Format::Jpeg) if decoder == Decoder::Zune => decode_jpeg(bytes, channels),
        Some(_) => decode_with_image(bytes, channels),
        None => bail!("not a JPEG or PNG image"),
    }
}

fn decode_jpeg(bytes: &[u8], channels: usize) -> Result<Decoded> {
    use zune_jpeg::zune_core::{
        bytestream::ZCursor, colorspace::ColorSpace, options::DecoderOptions,
    };
    // Always to RGB: zune-jpeg converts grey, YCbCr, CMYK and YCCK to it (it has no CMYK → grey).
    let options = DecoderOptions::default()
        .set_strict_mode(true)
        .jpeg_set_out_colorspace(ColorSpace::RGB)
        .set_max_width(1 << 15)
        .set_max_height(1 << 15);
    let mut d = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    let rgb = d
        .decode()
        .map_err(|e| anyhow::anyhow!("corrupt or truncated JPEG: {e:?}"))?;
    let info = d
        .info()
        .context("corrupt JPEG: no image information after decoding")?;
    let (width, height) = (info.width as usize, info.height as usize);
    if rgb.len() != width * height * 3 {
        bail!(
            "corrupt JPEG: {} bytes decoded for {width}×{height}×3",
            rgb.len()
        );
    }
    let pixels = if channels == 1 { luma(&rgb) } else { rgb };
    Ok(Decoded {
        width,
        height,
        channels,
        pixels,
    })
}

/// ITU-R 601 luma of interleaved RGB, rounded (Pillow's `convert("L")` weights; `image` would use
/// Rec. 709's and truncate): the one grey conversion of every decoder and format.
fn luma(rgb: &[u8]) -> Vec<u8> {
    rgb.chunks_exact(3)
        .map(|p| ((p[0] as u32 * 299 + p[1] as u32 * 587 + p[2] as u32 * 114 + 500) / 1000) as u8)
        .collect()
}

fn decode_with_image(bytes: &[u8], channels: usize) -> Result<Decoded> {
    let img = image::load_from_memory(bytes).context("corrupt or truncated image")?;
    let (width, height) = (img.width() as usize, img.height() as usize);
    // RGB first, then our one grey conversion: the same picture gives the same grey as PNG or JPEG.
    let rgb = img.into_rgb8().into_raw();
    let pixels = if channels == 1 { luma(&rgb) } else { rgb };
    Ok(Decoded {
        width,
        height,
        channels,
        pixels,
    })
}
