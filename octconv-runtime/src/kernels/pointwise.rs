//! The 1×1 octave convolution with all four paths as one inference kernel: per image (and at stride
//! 1 per band of rows, so the band stays in cache), the GEMMs on the NCHW planes as they are, the
//! H→L input pooled into scratch as it is needed, the L→H product upsampled into the high output as
//! it is added, the two low-output paths accumulated into one output, and each output row mapped by
//! the layer's epilogue. A layer into the octave pair (no low input) or out of it (no low output)
//! runs the same way without its absent paths.
//!
//! Why: 1×1 convolutions carry 65–85 % of the MACs of ResNeXt, SE-ResNet, MobileNet v2 and DenseNet.
//! Op by op, an octave 1×1 convolution is five ops besides its GEMMs (pool, two concatenations, one
//! of them of the weights, an add of the upsampled L→H output that writes a new high tensor), each a
//! full pass with a fresh allocation, and those costs do not shrink with α: at α = .25 ResNeXt-50 was
//! slower than at α = 0 (`octconv bench --profile`: octave 1×1 layers at 65 GMAC/s against 96 for
//! the plain ones).
//!
//! | stride | high output | low output |
//! |---|---|---|
//! | 1 | `W_HH·X_H + up(W_LH·X_L)` | `W_HL·pool(X_H) + W_LL·X_L` |
//! | 2 | `W_HH·pool(X_H) + W_LH·X_L` | `W_HL·pool²(X_H) + W_LL·pool(X_L)` |

use super::epilogue::RowMap;
use super::gemm::{gemm_parallelism, sgemm, Mat};
use super::octave::OctaveGeometry;
use super::prologue::{map_into, Prologue};
use super::resample::{add_upsampled_planes, pool_plane, pool_planes};
use super::scratch::{output_vec, sized, with_scratch, Scratch};
use super::Element;
use rayon::prelude::*;

/// Sizes of one 1×1 octave convolution: the layer's channels and high input map, and its stride.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PointwiseOctave {
    /// Batch, channels per branch and the high input's height and width.
    pub octave: OctaveGeometry,
    /// 1, or 2 (every path pools its input first).
    pub stride: usize,
}

impl PointwiseOctave {
    /// Whether the kernel handles these sizes: stride 1 or 2, a high input and a high output, a low
    /// input or a low output or both (a layer into or out of the octave pair, whose absent paths
    /// are skipped) — or, at stride 2, neither (a one-branch layer that pools first: its input is
    /// pooled into scratch image by image instead of by a pooling pass into a pooled map; ResNeXt-50's
    /// three stride-2 shortcuts at α = 0 27.0 → 21.5 ms, `octconv bench --profile`, Intel Xeon, 2
    /// threads) — and maps that halve exactly as often as the paths pool them (so no path drops a
    /// trailing row or column).
    pub fn applies(&self) -> bool {
        let halvings = if self.stride == 2 { 4 } else { 2 };
        let o = &self.octave;
        matches!(self.stride, 1 | 2)
            && o.in_h > 0
            && o.out_h > 0
            && (o.in_l > 0 || o.out_l > 0 || self.stride == 2)
            && o.h.is_multiple_of(halvings)
            && o.w.is_multiple_of(halvings)
            && o.h > 0
            && o.w > 0
    }

    /// The high output's height and width.
    pub fn out_high_hw(&self) -> (usize, usize) {
        (self.octave.h / self.stride, self.octave.w / self.stride)
    }

    /// The low output's height and width.
    pub fn out_low_hw(&self) -> (usize, usize) {
        (
            self.octave.h / (2 * self.stride),
            self.octave.w / (2 * self.stride),
        )
    }
}

/// The weights of the four paths, each `[c_out, c_in]` row-major (a `[c_out, c_in, 1, 1]` tensor).
#[derive(Clone, Copy, Debug)]
pub struct PathWeights<'a, T> {
    /// H→H.
    pub hh: &'a [T],
    /// H→L.
    pub hl: &'a [T],
    /// L→H.
    pub lh: &'a [T],
    /// L→L.
    pub ll: &'a [T],
}

/// The four-path 1×1 octave convolution of `xh` (`[n, in_h, h, w]`) and `xl` (`[n, in_l, h/2, w/2]`):
/// the high and low outputs, NCHW, without bias. `g` must [apply](PointwiseOctave::applies).
pub fn forward<T: Element>(
    g: &PointwiseOctave,
    xh: &[T],
    xl: &[T],
    wt: PathWeights<'_, T>,
) -> (Vec<T>, Vec<T>) {
    forward_post(g, xh, xl, wt, [None, None])
}

/// [`forward`], applying `post[0]` to every plane of the high output and `post[1]` to every plane of
/// the low one (`post(channel, plane)`) as soon as the image's outputs are complete.
pub fn forward_post<T: Element>(
    g: &PointwiseOctave,
    xh: &[T],
    xl: &[T],
    wt: PathWeights<'_, T>,
    post: [Option<RowMap<'_, T>>; 2],
) -> (Vec<T>, Vec<T>) {
    let (mut yh, mut yl) = outputs(g);
    forward_post_into(g, (xh, xl), wt, post, (&mut yh, &mut yl));
    (yh, yl)
}

/// [`forward_post`] into `yh` and `yl` (`n` images of the high and low output, every value
/// written). `post` is handed rows of `yh` and `yl` themselves, never of a scratch buffer
/// ([`super::epilogue::ResidualJoin`] relies on it).
pub fn forward_post_into<T: Element>(
    g: &PointwiseOctave,
    (xh, xl): (&[T], &[T]),
    wt: PathWeights<'_, T>,
    post: [Option<RowMap<'_, T>>; 2],
    y: (&mut [T], &mut [T]),
) {
    let (hw, lhw) = (g.octave.h * g.octave.w, g.octave.h * g.octave.w / 4);
    let images = (g.octave.in_h * hw, g.octave.in_l * lhw);
    run(g, (xh, xl), images, wt, None, post, y)
}

/// The high and low outputs of `g`, unwritten ([`output_vec`]: the kernels write every value).
fn outputs<T: Element>(g: &PointwiseOctave) -> (Vec<T>, Vec<T>) {
    let o = &g.octave;
    let ((oh, ow), (ol, owl)) = (g.out_high_hw(), g.out_low_hw());
    (
        output_vec(o.n * o.out_h * oh * ow),
        output_vec(o.n * o.out_l * ol * owl),
    )
}

/// [`forward_post`] at stride 1 with both outputs then 2×2-average-pooled
/// ([`super::resample::pool_plane`]), for a reader that pools first: each band of rows is made in
/// scratch and pooled from there, so neither the batch's nor an image's unpooled outputs are held
/// (MobileNet v2's expanded pairs before its stride-2 depthwise layers: 3.9 MB an image at 112 ×
/// 112, α = .25). Every pooled map must be at least 1 × 1.
pub fn forward_post_halved<T: Element>(
    g: &PointwiseOctave,
    (xh, xl): (&[T], &[T]),
    wt: PathWeights<'_, T>,
    post: [Option<RowMap<'_, T>>; 2],
) -> (Vec<T>, Vec<T>) {
    let o = &g.octave;
    let ((oh, ow), (ol, owl)) = (g.out_high_hw(), g.out_low_hw());
    let per = (
        o.out_h * (oh / 2) * (ow / 2),
        o.out_l * (ol / 2) * (owl / 2),
    );
    assert!(
        g.stride == 1 && per.0 > 0 && (o.out_l == 0 || per.1 > 0),
        "pointwise: a stride-1 layer with outputs large enough to pool, not {g:?}"
    );
    check_weights(g, wt);
    let par = gemm_parallelism(o.n);
    let rows = band_rows(o.out_h + o.out_l, (o.h, o.w), Banding::Halved);
    let (band, band_low) = (rows * o.w, (rows / 2) * (o.w / 2));
    // Every pooled value is written by a band's pooling (the bands cover every row pair).
    for_each_image(g, (xh, xl), per, |x, (yh, yl), s| {
        // One band's outputs (taken out of the scratch set, which the kernel uses too).
        let (mut bh, mut bl) = (std::mem::take(&mut s.stage), std::mem::take(&mut s.col));
        let y = Outputs {
            yh: sized(&mut bh, o.out_h * band),
            yl: sized(&mut bl, o.out_l * band_low),
            post,
            band: Some((band, band_low)),
        };
        let mut pool = |(r0, r1): (usize, usize), y: &Outputs<'_, '_, T>| {
            let (pw, pwl) = (ow / 2, owl / 2);
            let (h2, l2) = ((r1 - r0) / 2, (r1 - r0) / 4);
            for c in 0..o.out_h {
                let dst = &mut yh[c * (oh / 2) * pw + (r0 / 2) * pw..][..h2 * pw];
                pool_plane(&y.yh[c * band..], dst, (r1 - r0, ow), T::from_f64(0.25));
            }
            for c in 0..o.out_l {
                let dst = &mut yl[c * (ol / 2) * pwl + (r0 / 4) * pwl..][..l2 * pwl];
                let lr = (r1 - r0) / 2;
                pool_plane(&y.yl[c * band_low..], dst, (lr, owl), T::from_f64(0.25));
            }
        };
        image_stride1(g, x, wt, None, y, s, par, Some(&mut pool));
        (s.stage, s.col) = (bh, bl);
    })
}

/// [`forward_post`] image by image into scratch, `then((high, low), (out_high, out_low), scratch)`
/// turning each image's outputs (its NCHW planes) into the caller's: `per.0` and `per.1` values of
/// each output per image (a layer with no low output has `per.1 = 0`). The batch's outputs of this
/// layer are never held.
pub fn forward_images_then<T: Element>(
    g: &PointwiseOctave,
    (xh, xl): (&[T], &[T]),
    wt: PathWeights<'_, T>,
    post: [Option<RowMap<'_, T>>; 2],
    per: (usize, usize),
    then: impl Fn((&[T], &[T]), (&mut [T], &mut [T]), &mut Scratch<T>) + Sync,
) -> (Vec<T>, Vec<T>) {
    let o = &g.octave;
    let ((oh, ow), (ol, owl)) = (g.out_high_hw(), g.out_low_hw());
    let (image_yh, image_yl) = (o.out_h * oh * ow, o.out_l * ol * owl);
    check_weights(g, wt);
    if image_yh == 0 {
        return (output_vec(o.n * per.0), output_vec(o.n * per.1));
    }
    let par = gemm_parallelism(o.n);
    // Every output value is written by `then`.
    for_each_image(g, (xh, xl), per, |x, y, s| {
        // The image's outputs in scratch (taken out of the set, which the image's kernel and
        // `then` use too).
        let (mut full_h, mut full_l) = (std::mem::take(&mut s.stage), std::mem::take(&mut s.col));
        let fh = sized(&mut full_h, image_yh);
        let fl = sized(&mut full_l, image_yl);
        let outputs = Outputs {
            yh: &mut *fh,
            yl: &mut *fl,
            post,
            band: None,
        };
        image(g, x, wt, None, outputs, s, par);
        then((fh, fl), y, s);
        (s.stage, s.col) = (full_h, full_l);
    })
}

/// Runs `f(inputs, outputs, scratch)` on every image of `g` in parallel, with the image's high and
/// low inputs (contiguous images of `xh` and `xl`) and its `per.0` and `per.1` values of the two
/// outputs this returns (a layer with no low output has `per.1 = 0`), which `f` must write whole.
fn for_each_image<T: Element>(
    g: &PointwiseOctave,
    (xh, xl): (&[T], &[T]),
    per: (usize, usize),
    f: impl Fn((&[T], &[T]), (&mut [T], &mut [T]), &mut Scratch<T>) + Sync,
) -> (Vec<T>, Vec<T>) {
    let o = &g.octave;
    let (in_hw, in_lhw) = (o.h * o.w, hw_low(o.h, o.w));
    // Every value is written by `f` (the caller's contract).
    let mut yh = output_vec(o.n * per.0);
    let mut yl = output_vec(o.n * per.1);
    if o.n == 0 || per.0 == 0 {
        return (yh, yl);
    }
    let mut lows: Vec<&mut [T]> = match per.1 {
        0 => (0..o.n).map(|_| &mut [][..]).collect(),
        l => yl.chunks_mut(l).collect(),
    };
    yh.par_chunks_mut(per.0)
        .zip(lows.par_iter_mut())
        .enumerate()
        .for_each(|(i, (yh, yl))| {
            let xh = &xh[i * o.in_h * in_hw..][..o.in_h * in_hw];
            let xl = match o.in_l {
                0 => &[][..],
                _ => &xl[i * o.in_l * in_lhw..][..o.in_l * in_lhw],
            };
            with_scratch(|s: &mut Scratch<T>| f((xh, xl), (yh, yl), s));
        });
    (yh, yl)
}

/// [`forward`] of `map(x)` at stride 1, where `map` is `pro` (high, low: the batch norm and ReLU
/// before the convolution), each image's branches mapped into scratch once and read from there by
/// its GEMMs and the H→L pooling; the images of `xh` and `xl` lie `images.0` and `images.1` values
/// apart (each image contiguous: a tensor, or the first channels of a concatenation buffer).
pub fn forward_mapped_pair<T: Element>(
    g: &PointwiseOctave,
    (xh, xl): (&[T], &[T]),
    images: (usize, usize),
    wt: PathWeights<'_, T>,
    pro: [Prologue<'_, T>; 2],
) -> (Vec<T>, Vec<T>) {
    let (mut yh, mut yl) = outputs(g);
    run(
        g,
        (xh, xl),
        images,
        wt,
        Some(pro),
        [None, None],
        (&mut yh, &mut yl),
    );
    (yh, yl)
}

/// Panics unless the path weights hold `c_out × c_in` values each.
fn check_weights<T>(g: &PointwiseOctave, wt: PathWeights<'_, T>) {
    let o = &g.octave;
    assert!(
        wt.hh.len() >= o.out_h * o.in_h
            && wt.hl.len() >= o.out_l * o.in_h
            && wt.lh.len() >= o.out_h * o.in_l
            && wt.ll.len() >= o.out_l * o.in_l,
        "pointwise: path weights too short for {o:?}"
    );
}

/// The kernel behind [`forward_post_into`] and [`forward_mapped_pair`] (`pre` at stride 1 only),
/// writing every value of `yh` and `yl` (each output element by a GEMM without accumulation, then
/// accumulated into) and mapping their rows in place.
fn run<T: Element>(
    g: &PointwiseOctave,
    (xh, xl): (&[T], &[T]),
    (image_h, image_l): (usize, usize),
    wt: PathWeights<'_, T>,
    pre: Option<[Prologue<'_, T>; 2]>,
    post: [Option<RowMap<'_, T>>; 2],
    (yh, yl): (&mut [T], &mut [T]),
) {
    let o = &g.octave;
    check_weights(g, wt);
    assert!(
        pre.is_none() || g.stride == 1,
        "pointwise: input maps at stride 1 only"
    );
    let (oh, ow) = g.out_high_hw();
    let (ol, owl) = g.out_low_hw();
    let (image_yh, image_yl) = (o.out_h * oh * ow, o.out_l * ol * owl);
    assert!(
        yh.len() == o.n * image_yh && yl.len() == o.n * image_yl,
        "pointwise: output sizes"
    );
    if o.n == 0 || image_yh == 0 {
        return;
    }
    let par = gemm_parallelism(o.n);
    // One low-output slice per image, empty where the layer has no low output (octave → one branch).
    let mut lows: Vec<&mut [T]> = if image_yl == 0 {
        (0..o.n).map(|_| &mut [][..]).collect()
    } else {
        yl.chunks_mut(image_yl).collect()
    };
    let (in_hw, in_lhw) = (o.h * o.w, hw_low(o.h, o.w));
    yh.par_chunks_mut(image_yh)
        .zip(lows.par_iter_mut())
        .enumerate()
        .for_each(|(i, (yh, yl))| {
            let xh = &xh[i * image_h..][..o.in_h * in_hw];
            let xl = if o.in_l == 0 {
                &[][..]
            } else {
                &xl[i * image_l..][..o.in_l * in_lhw]
            };
            with_scratch(|s: &mut Scratch<T>| {
                let y = Outputs {
                    yh,
                    yl,
                    post,
                    band: None,
                };
                image(g, (xh, xl), wt, pre, y, s, par);
            });
        });
}

/// One image's outputs by [`image_stride1`] or [`image_stride2`].
fn image<T: Element>(
    g: &PointwiseOctave,
    x: (&[T], &[T]),
    wt: PathWeights<'_, T>,
    pre: Option<[Prologue<'_, T>; 2]>,
    y: Outputs<'_, '_, T>,
    s: &mut Scratch<T>,
    par: gemm::Parallelism,
) {
    if g.stride == 1 {
        image_stride1(g, x, wt, pre, y, s, par, None);
    } else {
        image_stride2(g, x, wt, y, s, par);
    }
}

/// One image's outputs (the low one empty without a low output) and their row maps.
struct Outputs<'a, 'p, T> {
    yh: &'a mut [T],
    yl: &'a mut [T],
    post: [Option<RowMap<'p, T>>; 2],
    /// `Some((high, low))`: the buffers hold one band of [`image_stride1`] at a time, planes of
    /// `high` and `low` values (a band's columns from 0), for a hook to take after each band.
    band: Option<(usize, usize)>,
}

/// What [`image_stride1`] hands each finished band's rows `r0 … r1` to (with [`Outputs::band`]).
type BandHook<'h, 'a, 'p, T> = &'h mut dyn FnMut((usize, usize), &Outputs<'a, 'p, T>);

impl<T> Outputs<'_, '_, T> {
    /// Applies the row maps to columns `c0 … c0 + len` of every plane of the high (`high`) or low
    /// output, planes `plane` values apart.
    fn map_columns(&mut self, high: bool, plane: usize, c0: usize, len: usize) {
        let (post, y) = if high {
            (self.post[0], &mut *self.yh)
        } else {
            (self.post[1], &mut *self.yl)
        };
        // `plane` is a map's size, never 0 (`PointwiseOctave::applies`).
        if let Some(post) = post {
            for (c, p) in y.chunks_mut(plane).enumerate() {
                post(c, &mut p[c0..][..len]);
            }
        }
    }
}

/// Output values per row band of [`image_stride1`]: about 512 KiB of f32 output, so the band is
/// still in cache when the L→H product is added to it and its rows are mapped. Whole images made
/// three passes over an output that does not fit the cache (the GEMM's, the L→H add's, the row
/// maps'): MobileNet v2's 16 → 96 expansion at 112 × 112 (3.6 MB of high output per image) ran at
/// α = .25 in 5.1–5.6 ms per batch of 8 against 4.0 ms for the one GEMM at α = 0; in bands 3.4–4.3
/// ms. Measured (Intel Xeon, AVX-512, 2 threads, `octconv bench --profile`, 3 alternations), bands
/// of 64 Ki / 128 Ki / 256 Ki values: that layer 4.0–4.1 / 3.4–4.3 / 3.8–4.3 ms, the whole 1×1
/// octave class of MobileNet v2 at α = .25 20.7–30.3 / 20.7–29.9 / 20.8–22.8 against 23.0–29.0
/// whole.
const BAND_VALUES: usize = 128 << 10;

/// The fewest columns a band's GEMM gets (narrower GEMMs run below the crate's peak).
const BAND_MIN_COLUMNS: usize = 256;

/// Output values of one image up to which [`image_stride1`] runs it as one band when it maps no
/// input (2 MiB of f32, one core's L2 cache on the Intel machine): each band is a separate call of
/// every GEMM, and at these sizes the calls cost more than the passes they keep in cache.
/// Measured (Intel Xeon, AVX-512, 2 threads, 3 alternations of `octconv bench --profile`),
/// SE-ResNet-50 at α = .5, 1×1 octave class: always in bands 63.9 ms, whole images up to 512 Ki
/// values 61.6, up to 1 Mi 61.9 (before bands 64.0); MobileNet v2 at α = .25 unchanged (its
/// 112 × 112 expansion, 1.2 Mi values an image, keeps its bands). With an input map the bands also
/// spare the whole mapped image in scratch, and DenseNet-121 at α = .25 ran its 1×1 octave class
/// in 83.9 ms always in bands against 88.0 with this bound applied to it too.
const WHOLE_IMAGE_VALUES: usize = 512 << 10;

/// High rows per band of a stride-1 image of `h × w` with `out` output channels per position
/// (counting the mapped input channels where the image's inputs are mapped): an even count (so
/// low rows align; a multiple of 4 for [`Banding::Halved`], so pooled low rows align too), spread
/// evenly over the bands; the whole image where one band would hold it, or, for
/// [`Banding::Plain`], where it has at most [`WHOLE_IMAGE_VALUES`] output values.
fn band_rows(out: usize, (h, w): (usize, usize), banding: Banding) -> usize {
    if banding == Banding::Plain && out * h * w <= WHOLE_IMAGE_VALUES {
        return h;
    }
    let columns = (BAND_VALUES / out.max(1)).max(BAND_MIN_COLUMNS);
    let rows = ((columns / w.max(1)) & !1).max(2);
    if rows >= h {
        return h;
    }
    // The rows spread over the bands (18 + 18 rather than 24 + 12); evenness can still leave a
    // shorter last band (112 = 9 × 12 + 4). Pooled bands take a multiple of 4 rows, so that each
    // band's low rows pool in pairs too.
    let bands = h.div_ceil(rows);
    match banding {
        Banding::Halved => h.div_ceil(bands).next_multiple_of(4),
        _ => (h.div_ceil(bands) + 1) & !1,
    }
}

/// How [`band_rows`] may split an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Banding {
    /// Nothing mapped: small images whole.
    Plain,
    /// Inputs mapped into scratch: always in bands (the mapped band sits next to its outputs).
    Mapped,
    /// Outputs pooled band by band ([`forward_post_halved`]): always in bands of 4k rows.
    Halved,
}

/// One image at stride 1, in bands of high rows ([`band_rows`]): per band the H→H GEMM, the L→H
/// GEMM of the band's low rows added upsampled, the high rows mapped; then the band's H→L input
/// pooled, the low GEMMs and the low rows mapped; then `hook`, if any, on the band (whose
/// outputs then hold one band at a time, [`Outputs::band`]). Absent paths (no low input or no low
/// output) are skipped.
#[allow(clippy::too_many_arguments)]
fn image_stride1<'a, 'p, T: Element>(
    g: &PointwiseOctave,
    (xh, xl): (&[T], &[T]),
    wt: PathWeights<'_, T>,
    pre: Option<[Prologue<'_, T>; 2]>,
    mut y: Outputs<'a, 'p, T>,
    s: &mut Scratch<T>,
    par: gemm::Parallelism,
    mut hook: Option<BandHook<'_, 'a, 'p, T>>,
) {
    let o = &g.octave;
    let (h, w) = (o.h, o.w);
    let (hw, lhw, lw) = (h * w, hw_low(h, w), w / 2);
    let mapped = |c: usize| if pre.is_some() { c } else { 0 };
    // With an input map, the band's mapped inputs sit in cache next to its outputs.
    let out = o.out_h + o.out_l + mapped(o.in_h + o.in_l);
    let banding = match (&hook, pre) {
        (Some(_), _) => Banding::Halved,
        (None, Some(_)) => Banding::Mapped,
        (None, None) => Banding::Plain,
    };
    let rows = band_rows(out, (h, w), banding);
    let (band, band_low) = (rows * w, (rows / 2) * lw);
    let [t, p, mh, ml] = s.many([
        if o.in_l > 0 { o.out_h * band_low } else { 0 },
        if o.out_l > 0 { o.in_h * band_low } else { 0 },
        mapped(o.in_h * band),
        mapped(o.in_l * band_low),
    ]);
    for r0 in (0..h).step_by(rows) {
        let r1 = (r0 + rows).min(h);
        let (c0, bw) = (r0 * w, (r1 - r0) * w);
        let (l0, lbw) = ((r0 / 2) * lw, ((r1 - r0) / 2) * lw);
        // Where the outputs are written: planes `hs` / `ls` values apart, the band from column
        // `yc0` / `yl0` (the image's planes, or one band's with a hook).
        let (hs, ls, yc0, yl0) = match y.band {
            Some((hs, ls)) => (hs, ls, 0, 0),
            None => (hw, lhw, c0, l0),
        };
        // The band's high input as `(values, first column, row stride)` and its low input as a
        // GEMM operand: the input planes themselves, or with an input map the band's columns
        // mapped into scratch (one row per channel). A layer into the pair has no low input (`xl`
        // is empty and no GEMM reads it).
        let (bh, xl_band) = match pre {
            Some([ph, pl]) => {
                map_band(xh, ph, (hw, c0, bw), &mut mh[..o.in_h * bw]);
                map_band(xl, pl, (lhw, l0, lbw), &mut ml[..o.in_l * lbw]);
                ((&*mh, 0, bw), view(ml, lbw))
            }
            None => ((xh, c0, hw), view(xl.get(l0..).unwrap_or(&[]), lhw)),
        };
        // SAFETY (every GEMM below): the weights are the path's `c_out × c_in`; the inputs are
        // the band's columns of `c_in` rows (`bh`, `xl_band`) or the pooled band in scratch
        // (`c_in × lbw`), the outputs the same columns of `c_out` planes of this image, or `t`
        // (`out_h × lbw`).
        unsafe {
            let dst = y.yh[yc0..].as_mut_ptr();
            let rhs = view(&bh.0[bh.1..], bh.2);
            sgemm(
                (o.out_h, bw, o.in_h),
                dst,
                hs,
                false,
                view(wt.hh, o.in_h),
                rhs,
                par,
            );
        }
        if o.in_l > 0 {
            let t = &mut t[..o.out_h * lbw];
            unsafe {
                let lhs = view(wt.lh, o.in_l);
                sgemm(
                    (o.out_h, lbw, o.in_l),
                    t.as_mut_ptr(),
                    lbw,
                    false,
                    lhs,
                    xl_band,
                    par,
                );
            }
            for (c, tc) in t.chunks_exact(lbw.max(1)).enumerate() {
                let band = &mut y.yh[c * hs + yc0..][..bw];
                add_upsampled_planes(band, tc, 1, (r1 - r0, w));
            }
        }
        y.map_columns(true, hs, yc0, bw);
        if o.out_l > 0 {
            let p = &mut p[..o.in_h * lbw];
            for (c, pc) in p.chunks_exact_mut(lbw.max(1)).enumerate() {
                pool_plane(
                    &bh.0[c * bh.2 + bh.1..][..bw],
                    pc,
                    (r1 - r0, w),
                    T::from_f64(0.25),
                );
            }
            unsafe {
                let paths = [(wt.hl, o.in_h, view(p, lbw)), (wt.ll, o.in_l, xl_band)];
                sum_paths(y.yl[yl0..].as_mut_ptr(), (o.out_l, lbw, ls), paths, par);
            }
            y.map_columns(false, ls, yl0, lbw);
        }
        if let Some(hook) = hook.as_mut() {
            hook((r0, r1), &y);
        }
    }
}

/// `dst = W_a · X_a + W_b · X_b`: the two paths into one output of `m` channels × `cols`
/// positions (row stride `ld`), each path as its weights (`m × k`, row-major), its input channels
/// `k` and its input (`k` rows of `cols` values); a path without input channels (a layer into the
/// pair has no L→H or L→L) adds nothing.
///
/// # Safety
/// `dst` must hold `m` rows of `cols` values `ld` apart, and each input view `k` rows of `cols`.
unsafe fn sum_paths<T: Element>(
    dst: *mut T,
    (m, cols, ld): (usize, usize, usize),
    paths: [(&[T], usize, Mat<T>); 2],
    par: gemm::Parallelism,
) {
    for (i, (w, k, x)) in paths.into_iter().enumerate() {
        if i > 0 && k == 0 {
            continue;
        }
        sgemm((m, cols, k), dst, ld, i > 0, view(w, k), x, par);
    }
}

/// `m` read as a row-major GEMM operand with rows `rs` values apart.
fn view<T>(m: &[T], rs: usize) -> Mat<T> {
    Mat {
        ptr: m.as_ptr(),
        rs,
        cs: 1,
    }
}

/// `h/2 × w/2`.
fn hw_low(h: usize, w: usize) -> usize {
    (h / 2) * (w / 2)
}

/// One image at stride 2: every path pools its input first (the high input twice for H→L), then
/// the GEMMs; absent paths are skipped.
fn image_stride2<T: Element>(
    g: &PointwiseOctave,
    (xh, xl): (&[T], &[T]),
    wt: PathWeights<'_, T>,
    mut y: Outputs<'_, '_, T>,
    s: &mut Scratch<T>,
    par: gemm::Parallelism,
) {
    let o = &g.octave;
    let (h, w) = (o.h, o.w);
    let (lhw, qhw) = (hw_low(h, w), hw_low(h / 2, w / 2));
    let [p, p2, pl] = s.many([
        o.in_h * lhw,
        if o.out_l > 0 { o.in_h * qhw } else { 0 },
        if o.out_l > 0 { o.in_l * qhw } else { 0 },
    ]);
    pool_planes(xh, o.in_h, (h, w), p);
    // SAFETY (both sums): the weights are the paths' `c_out × c_in`, the inputs `c_in` planes of
    // the size multiplied, the outputs `c_out` planes of it.
    unsafe {
        let paths = [
            (wt.hh, o.in_h, view(p, lhw)),
            (wt.lh, o.in_l, view(xl, lhw)),
        ];
        sum_paths(y.yh.as_mut_ptr(), (o.out_h, lhw, lhw), paths, par);
    }
    y.map_columns(true, lhw, 0, lhw);
    if o.out_l == 0 {
        return;
    }
    pool_planes(p, o.in_h, (h / 2, w / 2), p2);
    pool_planes(xl, o.in_l, (h / 2, w / 2), pl);
    unsafe {
        let paths = [
            (wt.hl, o.in_h, view(p2, qhw)),
            (wt.ll, o.in_l, view(pl, qhw)),
        ];
        sum_paths(y.yl.as_mut_ptr(), (o.out_l, qhw, qhw), paths, par);
    }
    y.map_columns(false, qhw, 0, qhw);
}

/// `dst = map(src)` for columns `c0 … c0 + len` of every plane of `src` (planes `plane` values
/// apart), one row of `len` values per channel in `dst`.
fn map_band<T: Element>(
    src: &[T],
    pro: Prologue<'_, T>,
    (plane, c0, len): (usize, usize, usize),
    dst: &mut [T],
) {
    for (c, d) in dst.chunks_exact_mut(len.max(1)).enumerate() {
        map_into(pro.channel(c), &src[c * plane + c0..][..len], d);
    }
}

/// `y = conv2d(map(x), w)` for a one-group 1×1, stride-1 convolution of `n` images of `cin × hw`
/// values lying `image` values apart in `x` (each image contiguous: a tensor, or the first channels
/// of a concatenation chain's buffer), where `map` is `pro` (inference: the batch norm and ReLU
/// before the convolution). Per image, each column block is mapped into scratch while it is copied
/// (about 256 KiB, so it is still in cache for the GEMM that reads it): the normalised input is never
/// written out and read back, as a separate batch norm pass would (DenseNet's 121 batch norms before
/// its 1×1 convolutions were 8 % of its pass).
pub fn forward_mapped<T: Element>(
    (n, cin, hw, cout): (usize, usize, usize, usize),
    x: &[T],
    image: usize,
    w: &[T],
    pro: Prologue<'_, T>,
) -> Vec<T> {
    assert!(
        w.len() >= cout * cin && (n == 0 || x.len() >= (n - 1) * image + cin * hw),
        "pointwise::forward_mapped: {} weights, {} inputs for {n} images of {cin} × {hw} \
         ({image} apart) into {cout} channels",
        w.len(),
        x.len()
    );
    // Every output value is written by a GEMM without accumulation.
    let mut out = output_vec(n * cout * hw);
    if out.is_empty() {
        return out;
    }
    let block = ((64 << 10) / cin.max(1))
        .next_multiple_of(16)
        .clamp(16, hw.next_multiple_of(16));
    let par = gemm_parallelism(n);
    out.par_chunks_mut(cout * hw)
        .enumerate()
        .for_each(|(i, o)| {
            let xi = &x[i * image..][..cin * hw];
            with_scratch(|s: &mut Scratch<T>| {
                for c0 in (0..hw).step_by(block) {
                    let bw = block.min(hw - c0);
                    let col = sized(&mut s.col, cin * bw);
                    for (ci, dst) in col.chunks_exact_mut(bw).enumerate() {
                        map_into(pro.channel(ci), &xi[ci * hw + c0..][..bw], dst);
                    }
                    let lhs = Mat {
                        ptr: w.as_ptr(),
                        rs: cin,
                        cs: 1,
                    };
                    let rhs = Mat {
                        ptr: col.as_ptr(),
                        rs: bw,
                        cs: 1,
                    };
                    // SAFETY: w is cout × cin, col is cin × bw, and the destination is columns
                    // c0 … c0 + bw of this image's cout × hw output (row stride hw).
                    unsafe {
                        sgemm(
                            (cout, bw, cin),
                            o[c0..].as_mut_ptr(),
                            hw,
                            false,
                            lhs,
                            rhs,
                            par,
                        )
                    };
                }
            })
        });
    out
}

#[cfg(test)]
mod tests {
    use super::{band_rows, Banding, BAND_MIN_COLUMNS, BAND_VALUES, WHOLE_IMAGE_VALUES};

    /// Bands are even (low rows align), within the budget (or two rows where two exceed it), the
    /// whole image where it fits one band; the heights are spread over the bands (18 + 18 rather
    /// than 24 + 12). Pooled bands take a multiple of 4 rows and never the whole-image shortcut.
    #[test]
    fn band_rows_are_even_and_bounded() {
        use Banding::{Halved, Mapped, Plain};
        // Mapped inputs: bands whatever the size.
        assert_eq!(band_rows(320, (36, 16), Mapped), 18);
        assert_eq!(band_rows(320, (50, 16), Mapped), 18);
        assert_eq!(band_rows(320, (46, 20), Mapped), 16);
        assert_eq!(band_rows(320, (64, 8), Mapped), 32);
        // Nothing mapped: whole images up to WHOLE_IMAGE_VALUES outputs.
        assert_eq!(band_rows(320, (36, 16), Plain), 36);
        assert_eq!(band_rows(128, (56, 56), Plain), 56);
        assert_eq!(band_rows(256, (56, 56), Plain), 8);
        // MobileNet v2's expansion at 112 × 112 (72 + 24 outputs): bands of 12 rows, pooled too.
        assert_eq!(band_rows(96, (112, 112), Plain), 12);
        assert_eq!(band_rows(96, (112, 112), Halved), 12);
        assert_eq!(band_rows(320, (36, 16), Halved), 20);
        // The integration test's banded cases (`tests/pointwise.rs`).
        assert_eq!(band_rows(320, (64, 32), Plain), 12);
        assert_eq!(band_rows(320, (90, 24), Plain), 16);
        // Small outputs: one band.
        assert_eq!(band_rows(24, (56, 56), Mapped), 56);
        assert_eq!(band_rows(576, (14, 14), Mapped), 14);
        for banding in [Plain, Mapped, Halved] {
            for out in [1, 7, 96, 320, 2048] {
                for (h, w) in [(2, 2), (8, 4), (56, 56), (112, 112), (50, 16), (224, 6)] {
                    let rows = band_rows(out, (h, w), banding);
                    let what = format!("{out} outputs, {h} × {w}, {banding:?}: {rows} rows");
                    assert!(rows.is_multiple_of(2) && rows >= 2 && rows <= h, "{what}");
                    let budget = BAND_VALUES.max(out * BAND_MIN_COLUMNS);
                    if rows < h {
                        let slack = if banding == Halved { 3 } else { 0 };
                        assert!(rows <= 4 || out * (rows - slack) * w <= budget, "{what}");
                        assert!(banding != Halved || rows.is_multiple_of(4), "{what}");
                        let small = out * h * w <= WHOLE_IMAGE_VALUES;
                        assert!(banding != Plain || !small, "{what}");
                    } else {
                        let whole = out * (h - 2) * w <= budget || h <= 4;
                        assert!(
                            whole || (banding == Plain && out * h * w <= WHOLE_IMAGE_VALUES),
                            "{what}"
                        );
                    }
                }
            }
        }
    }
}
