//! `OctConv2d`: the octave convolution (Chen et al. 2019), four paths with empty ones skipped.

use crate::kernels::direct;
use crate::kernels::epilogue::{BiasedEpilogue, ChannelEpilogue, RowMap};
use crate::kernels::expand_depthwise;
use crate::kernels::grouped_octave::{self, GroupedOctave};
use crate::kernels::octave::{self, octave_conv, OctaveGeometry, OctaveWeights};
use crate::kernels::pointwise::{self, PathWeights, PointwiseOctave};
use crate::kernels::prologue::Prologue;
use crate::kernels::{conv2d, ConvParams};
use crate::kernels::{resample, winograd, ConvGeometry};
use crate::kernels::{with_f32, with_f32_all, with_images_f32};
use crate::layers::batch_norm::{InputMap, OctBatchNorm};
use crate::layers::output_stage::halve;
use crate::layers::OutputStage;

use crate::ops::{add_upsampled, avg_pool2x2, upsample_nearest2x};
use crate::value::OctValue;
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use octconv_spec::ir::{OctConvSpec, Path};

mod joined;
mod meaned;
mod paths;
mod prepared;
mod row_mapped;
mod staged;
mod train;

/// Whether new layers may use the fused kernel: yes unless `OCTCONV_FUSED=0` (read once), which runs
/// the per-path ops instead, for A/B timings of whole commands.
pub(crate) fn fused_by_default() -> bool {
    static FUSED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FUSED.get_or_init(|| std::env::var("OCTCONV_FUSED").as_deref() != Ok("0"))
}

/// An octave convolution with explicit channel counts per branch.
///
/// Forward, as in the paper's code: with stride 2 the high input is average-pooled before H→H (and once
/// more for H→L) and the low input before L→L; L→H is then not upsampled. With stride 1, H→L pools the
/// high input once and L→H is upsampled ×2 (nearest). Padding is `kernel / 2`. Depthwise convolutions
/// drop the cross-frequency paths. Each output branch gets its bias once.
///
/// With [`Downsample::Stride`](octconv_spec::ir::Downsample) (single-branch layers only) stride 2
/// convolves with stride 2 directly, as `torch.nn.Conv2d(stride = 2, padding = k // 2)`; none of the
/// pooling fast paths below is taken for it (the one-path im2col / depthwise kernels run it).
#[derive(Clone, Debug)]
pub struct OctConv2d {
    spec: OctConvSpec,
    /// Weights of H→H, H→L, L→H, L→L (`None` for absent paths).
    weights: [Option<Tensor>; 4],
    bias_h: Option<Tensor>,
    bias_l: Option<Tensor>,
    /// Whether the CPU may run the fused kernel ([`crate::kernels::octave`]); off runs the per-path
    /// ops, the reference the fused kernel is tested against.
    fused: bool,
    /// Once frozen ([`OctConv2d::freeze`]): the weights its CPU kernels prepared, kept across
    /// passes. `None` while the weights may change.
    prepared: Option<std::sync::Arc<prepared::Cache>>,
}

impl OctConv2d {
    /// Loads the weights `hh.weight` … `ll.weight`, `h.bias`, `l.bias` from `vb`.
    pub fn new(spec: OctConvSpec, vb: VarBuilder) -> Result<Self> {
        let k = spec.kernel;
        let per = |cin: usize| if spec.depthwise { 1 } else { cin / spec.groups };
        let (weights, bias_h, bias_l) =
            load_octave(&spec, &vb, |cin, cout| (cout, per(cin), k, k))?;
        Ok(OctConv2d {
            bias_h,
            bias_l,
            spec,
            weights,
            fused: fused_by_default(),
            prepared: None,
        })
    }

    /// Builds the layer from weight tensors in `Path::ALL` order and optional biases.
    pub fn from_weights(
        spec: OctConvSpec,
        weights: [Option<Tensor>; 4],
        bias_h: Option<Tensor>,
        bias_l: Option<Tensor>,
    ) -> Self {
        OctConv2d {
            spec,
            weights,
            bias_h,
            bias_l,
            fused: fused_by_default(),
            prepared: None,
        }
    }

    /// Allows (the default) or forbids the fused CPU kernel; forbidding it runs the per-path ops.
    pub fn set_fused(&mut self, fused: bool) {
        self.fused = fused;
    }

    /// Freezes the layer for inference: its weights and biases become private copies without an
    /// autograd link ([`snapshot`]: later writes to the variables it was loaded from do not reach
    /// it, and no gradient reaches them from it), and its CPU kernels then prepare their weights
    /// once and keep them ([`prepared`]) instead of on every pass. A frozen layer refuses training
    /// (its training would not change the variables). Freezing twice is a no-op.
    pub fn freeze(&mut self) -> Result<()> {
        if self.prepared.is_some() {
            return Ok(());
        }
        for w in self.weights.iter_mut().flatten() {
            *w = snapshot(w)?;
        }
        for b in [&mut self.bias_h, &mut self.bias_l].into_iter().flatten() {
            *b = snapshot(b)?;
        }
        self.prepared = Some(Default::default());
        Ok(())
    }

    /// Whether the layer is frozen ([`OctConv2d::freeze`]).
    pub fn is_frozen(&self) -> bool {
        self.prepared.is_some()
    }

    /// Bytes of weights the frozen layer's kernels keep prepared (0 unless frozen).
    pub fn prepared_bytes(&self) -> usize {
        self.prepared.as_ref().map_or(0, |c| c.bytes())
    }

    /// An error for a training call on a frozen layer.
    pub(crate) fn refuse_frozen(&self) -> Result<()> {
        match self.prepared {
            Some(_) => candle_core::bail!(
                "octave convolution: the layer is frozen for inference (its weights are a snapshot), so it cannot be trained; build the model again from its variables to train it"
            ),
            None => Ok(()),
        }
    }

    /// The fused Winograd kernel's weights for `g`: kept across passes once frozen, else made now.
    fn prepared_octave(
        &self,
        g: &OctaveGeometry,
        w: OctaveWeights<'_, f32>,
    ) -> std::sync::Arc<octave::Prepared<f32>> {
        match &self.prepared {
            Some(cache) => cache.octave(g, || octave::prepare(g, w)),
            None => std::sync::Arc::new(octave::prepare(g, w)),
        }
    }

    /// Whether the layer has the shape the fused kernel handles: all four paths, 3×3, stride 1, one
    /// group (it then runs fused on f32 or f64 CPU inputs with an even-sized high branch).
    pub fn fusable(&self) -> bool {
        let s = &self.spec;
        s.kernel == 3
            && s.stride == 1
            && s.groups == 1
            && !s.depthwise
            && self.weights.iter().all(Option::is_some)
    }

    /// Whether the layer's kernels can apply an input map as they read ([`OctConv2d::forward_prologue`]
    /// on f32 CPU inputs): the fused octave convolution, or a lone H→H 3×3, stride 1, one group.
    pub fn takes_prologue(&self) -> bool {
        octconv_spec::plan::takes_input_map(&self.spec)
    }

    /// Whether [`OctConv2d::forward`] runs the fused CPU kernel on `x`.
    pub fn runs_fused(&self, x: &OctValue) -> bool {
        matches!(x.branches(), (Some(h), Some(l)) if self.fused_geometry(h, l).is_some())
    }

    /// The fused kernel's geometry, when it handles this layer on these inputs: all four paths, 3×3,
    /// stride 1, one group, f32 or f64 on the CPU, the low branch exactly half the high one.
    fn fused_geometry(&self, xh: &Tensor, xl: &Tensor) -> Option<OctaveGeometry> {
        use candle_core::DType::{F32, F64};
        let s = &self.spec;
        if !self.fused
            || !self.fusable()
            || !crate::kernels::serves(xh.device())
            || !matches!(xh.dtype(), F32 | F64)
            || xl.dtype() != xh.dtype()
            || self
                .weights
                .iter()
                .flatten()
                .any(|w| w.dtype() != xh.dtype())
        {
            return None;
        }
        let (n, in_h, h, w) = xh.dims4().ok()?;
        let (nl, in_l, hl, wl) = xl.dims4().ok()?;
        let g = OctaveGeometry {
            n,
            in_h,
            in_l,
            out_h: s.out_h,
            out_l: s.out_l,
            h,
            w,
        };
        let matches = nl == n && (in_h, in_l) == (s.in_h, s.in_l) && (2 * hl, 2 * wl) == (h, w);
        (matches && g.applies()).then_some(g)
    }

    /// The layer's geometry.
    pub fn spec(&self) -> &OctConvSpec {
        &self.spec
    }

    /// Every path convolves with stride 1 (stride 2 pools first) and "same" padding; with
    /// `downsample = stride` the one path convolves with the layer's stride.
    fn conv_params(&self, groups: usize) -> ConvParams {
        ConvParams {
            stride: if self.spec.strided_conv() { 2 } else { 1 },
            pad: self.spec.kernel / 2,
            groups,
        }
    }

    /// The groups of path `p`'s convolution: its input channels for a depthwise layer.
    fn path_groups(&self, p: Path) -> usize {
        if self.spec.depthwise {
            self.spec.path_channels(p).map_or(1, |(c, _)| c)
        } else {
            self.spec.groups
        }
    }

    fn conv(&self, x: &Tensor, p: Path) -> Result<Option<Tensor>> {
        let Some(w) = &self.weights[p as usize] else {
            return Ok(None);
        };
        conv2d(x, w, self.conv_params(self.path_groups(p))).map(Some)
    }

    /// Applies the octave convolution: the fused CPU kernel where it applies, else the per-path ops.
    pub fn forward(&self, x: &OctValue) -> Result<OctValue> {
        if let (Some(xh), Some(xl)) = x.branches() {
            if let Some(g) = self.fused_geometry(xh, xl) {
                let w: Vec<&Tensor> = self.weights.iter().flatten().collect();
                let (yh, yl) = octave_conv(g, xh, xl, [w[0], w[1], w[2], w[3]])?;
                return Ok(OctValue::Pair {
                    high: Some(add_bias(yh, &self.bias_h)?),
                    low: add_bias(yl, &self.bias_l)?,
                });
            }
        }
        self.forward_unfused(x)
    }

    /// Inference (no gradient): the four-path 1×1 kernel ([`crate::kernels::pointwise`]) or the
    /// grouped octave kernel ([`grouped_octave`]) where one applies, the direct, per-path or fused
    /// 3×3 kernels where they serve, else [`OctConv2d::forward`].
    pub fn infer(&self, x: &OctValue) -> Result<OctValue> {
        if self.biases_in_place(x) {
            return self.add_biases_in_place(self.unbiased().infer(x)?);
        }
        if let Some(g) = self.pointwise_geometry(x)? {
            return self.infer_pointwise(x, g, [None, None], false);
        }
        if let Some(g) = self.grouped_geometry(x)? {
            return self.infer_grouped(x, &g, [None, None]);
        }
        if let (Some(xh), Some(xl)) = x.branches() {
            if let Some(g) = self.fused_geometry(xh, xl) {
                if let Some(y) = self.infer_direct(&g, x, [None, None])? {
                    return Ok(y);
                }
                if g.prefers_per_path() {
                    return self.infer_per_path(xh, xl);
                }
                if let Some(y) = self.infer_fused(&g, x, [None, None])? {
                    return Ok(y);
                }
            }
        }
        if let Some(y) = self.infer_single_prepared(x)? {
            return Ok(y);
        }
        self.forward(x)
    }

    /// A frozen one-branch 3×3 stride-1 layer that runs by Winograd, on the weights it prepared
    /// once for this geometry ([`prepared`]); `Ok(None)` elsewhere. The values are those of
    /// [`OctConv2d::forward`], bit for bit.
    fn infer_single_prepared(&self, x: &OctValue) -> Result<Option<OctValue>> {
        let (Some(cache), OctValue::Single(x1), [Some(w), None, None, None]) =
            (&self.prepared, x, &self.weights)
        else {
            return Ok(None);
        };
        let s = &self.spec;
        if !self.fused || s.stride != 1 || s.groups != 1 || s.depthwise {
            return Ok(None);
        }
        if !(crate::kernels::serves_f32(x1) && crate::kernels::serves_f32(w)) {
            return Ok(None);
        }
        let (n, c, h, wd) = x1.dims4()?;
        let Ok(g) = ConvGeometry::new((n, c, h, wd), w.dims4()?, 1, s.kernel / 2, 1) else {
            return Ok(None);
        };
        if !winograd::applies(&g) {
            return Ok(None);
        }
        let y = with_f32_all([x1, w], |[x, w]| {
            let p = cache.single(&g, false, || conv2d::prepare_winograd(&g, w, false))?;
            Some(conv2d::forward_winograd_prepared(&g, x, &p, None))
        })?;
        let Some(y) = y else { return Ok(None) };
        let y = Tensor::from_vec(y, (n, g.c_out, h, wd), x1.device())?;
        Ok(Some(OctValue::Single(add_bias(y, &self.bias_h)?)))
    }

    /// A four-path 3×3 layer path by path for inference (small maps of a small batch, where
    /// im2col per path beats the fused kernels: [`OctaveGeometry::prefers_per_path`]): each path
    /// convolves with its own weight, L→H is added upsampled and the two low paths are added.
    /// [`OctConv2d::forward_unfused`] joins the two low paths into one convolution over
    /// concatenated inputs and weights, which copies both weights on every call (4.7 MB for
    /// U-Net's 256 + 256-channel layers at 8×8), more than the one GEMM saves there.
    fn infer_per_path(&self, xh: &Tensor, xl: &Tensor) -> Result<OctValue> {
        let (Some(hh), Some(lh), Some(hl), Some(ll)) = (
            self.conv(xh, Path::HH)?,
            self.conv(xl, Path::LH)?,
            self.conv(&avg_pool2x2(xh)?, Path::HL)?,
            self.conv(xl, Path::LL)?,
        ) else {
            candle_core::bail!("internal error: a four-path layer without four weights")
        };
        Ok(OctValue::Pair {
            high: Some(add_bias(add_upsampled(&hh, &lh)?, &self.bias_h)?),
            low: add_bias((hl + ll)?, &self.bias_l)?,
        })
    }

    /// The fused four-path 3×3 kernel on the four weights as they are, each input mapped by its
    /// prologue as it is read, without the autograd op of [`OctConv2d::forward`], which
    /// concatenates the weights into two tensors on every call (7 MB at U-Net's 512-channel decoder
    /// layer, where inference peaks; a third of WRN-16-4's `memmove` at α = .75); `Ok(None)` where
    /// the inputs are not f32 on the CPU or the fused kernels are off. No gradient.
    fn infer_fused(
        &self,
        g: &OctaveGeometry,
        x: &OctValue,
        pros: [Option<Prologue<'_, f32>>; 2],
    ) -> Result<Option<OctValue>> {
        let ((Some(xh), Some(xl)), [Some(hh), Some(hl), Some(lh), Some(ll)]) =
            (x.branches(), &self.weights)
        else {
            return Ok(None);
        };
        if !self.fused || !self.fusable_inputs_f32(x) {
            return Ok(None);
        }
        let (yh, yl) = with_f32_all([xh, xl, hh, hl, lh, ll], |[h, l, hh, hl, lh, ll]| {
            let w = self.prepared_octave(g, octave::OctaveWeights { hh, hl, lh, ll });
            octave::forward_on(g, (h, l), &w, pros)
        })?;
        self.octave_output(g, yh, yl, xh.device()).map(Some)
    }

    /// The four-path 3×3 octave convolution by the direct kernel ([`direct::octave_forward`]), each
    /// input mapped by its prologue as it is read, where that kernel serves the layer (few channels
    /// per path, f32 on the CPU: [`direct::prefers`]); `Ok(None)` elsewhere. No gradient.
    fn infer_direct(
        &self,
        g: &OctaveGeometry,
        x: &OctValue,
        pros: [Option<Prologue<'_, f32>>; 2],
    ) -> Result<Option<OctValue>> {
        let ((Some(xh), Some(xl)), [Some(hh), Some(hl), Some(lh), Some(ll)]) =
            (x.branches(), &self.weights)
        else {
            return Ok(None);
        };
        if !self.fused || !self.fusable_inputs_f32(x) || !direct::prefers(g) {
            return Ok(None);
        }
        let packed = with_f32_all([hh, hl, lh, ll], |[hh, hl, lh, ll]| {
            let make = || direct::OctavePacked::new(g, OctaveWeights { hh, hl, lh, ll });
            match &self.prepared {
                Some(cache) => cache.direct(g, make),
                None => std::sync::Arc::new(make()),
            }
        })?;
        let (yh, yl) = with_f32_all([xh, xl], |[h, l]| {
            direct::octave_forward(g, h, l, &packed, pros)
        })?;
        self.octave_output(g, yh, yl, xh.device()).map(Some)
    }

    /// The pair of a four-path 3×3 kernel's raw outputs (`[n, out_h, h, w]`, `[n, out_l, h/2, w/2]`),
    /// biases added.
    fn octave_output(
        &self,
        g: &OctaveGeometry,
        yh: Vec<f32>,
        yl: Vec<f32>,
        dev: &candle_core::Device,
    ) -> Result<OctValue> {
        let (lh, lw) = g.low_hw();
        let yh = Tensor::from_vec(yh, (g.n, g.out_h, g.h, g.w), dev)?;
        let yl = Tensor::from_vec(yl, (g.n, g.out_l, lh, lw), dev)?;
        Ok(OctValue::Pair {
            high: Some(add_bias(yh, &self.bias_h)?),
            low: add_bias(yl, &self.bias_l)?,
        })
    }

    /// [`OctConv2d::infer`] followed by `stage`, which the kernels apply to each output row while it
    /// is in cache where they can (the four-path 1×1 kernel, the grouped octave kernel, a one-path
    /// convolution by im2col or the depthwise kernel, and a depthwise pair branch by branch, without
    /// bias); else in one pass afterwards.
    pub fn infer_then(&self, x: &OctValue, stage: &OutputStage<'_>) -> Result<OctValue> {
        if let Some(out) = stage.means {
            return self.infer_then_meaned(x, stage, out);
        }
        if let Some(residual) = stage.add {
            return self.infer_then_joined(x, stage, residual);
        }
        if stage.halve {
            return self.infer_then_halved(x, stage);
        }
        // The epilogues are built (the batch norm's parameters read back) only where a kernel that
        // maps rows will run.
        let no_bias = self.bias_h.is_none() && self.bias_l.is_none();
        if no_bias && self.fused && self.fusable_inputs_f32(x) {
            let s = &self.spec;
            let epi = |high: bool| stage.epilogue(high, if high { s.out_h } else { s.out_l });
            if let Some(g) = self.pointwise_geometry(x)? {
                // `Some(None)`: a layer out of the pair, with no low output to map.
                let low = match s.out_l {
                    0 => Some(None),
                    _ => epi(false)?.map(Some),
                };
                if let (Some(h), Some(l)) = (epi(true)?, low) {
                    return self.infer_pointwise(x, g, [Some(&h), l.as_ref()], false);
                }
            } else if let Some(g) = self.grouped_geometry(x)? {
                if let (Some(h), Some(l)) = (epi(true)?, epi(false)?) {
                    return self.infer_grouped(x, &g, [Some(&h), Some(&l)]);
                }
            } else if let (Some(xs), None, [Some(w), None, None, None]) =
                (x.branches().0, x.branches().1, &self.weights)
            {
                // Stride 2 pools first, then convolves with stride 1 (or, with `downsample =
                // stride`, convolves with stride 2).
                let groups = if s.depthwise { s.in_h } else { s.groups };
                let p = self.conv_params(groups);
                let (n, c, h, wd) = xs.dims4()?;
                let pool_first = s.stride == 2 && !s.strided_conv();
                let read = if pool_first {
                    (n, c, h / 2, wd / 2)
                } else {
                    (n, c, h, wd)
                };
                let maps = ConvGeometry::new(read, w.dims4()?, p.stride, p.pad, p.groups)
                    .is_ok_and(|g| conv2d::maps_rows(&g));
                if let (true, Some(e)) = (maps, epi(true)?) {
                    let y = if pool_first {
                        infer_post_pooling_first(xs, w, p, &e)?
                    } else {
                        conv2d::infer_post(xs, w, p, &e)?
                    };
                    if let Some(y) = y {
                        return Ok(OctValue::Single(y));
                    }
                }
            } else if let ((Some(xh), Some(xl)), [Some(wh), None, None, Some(wl)], true) = (
                x.branches(),
                &self.weights,
                s.depthwise && !s.strided_conv(),
            ) {
                // A depthwise pair (H→H and L→L only): each branch by the depthwise kernel with
                // its output stage on each row (and at stride 2 its input pooled as it is read),
                // instead of the per-path ops, a pooling pass per branch and a stage pass.
                if let (Some(eh), Some(el)) = (epi(true)?, epi(false)?) {
                    if let (Some(yh), Some(yl)) = (
                        self.infer_depthwise_branch(xh, wh, &eh)?,
                        self.infer_depthwise_branch(xl, wl, &el)?,
                    ) {
                        return Ok(OctValue::Pair {
                            high: Some(yh),
                            low: yl,
                        });
                    }
                }
            }
        }
        if let Some(y) = self.infer_octave_staged(x, [None, None], stage)? {
            return Ok(y);
        }
        if let Some(y) = self.infer_then_biased(x, stage)? {
            return Ok(y);
        }
        stage.apply(self.infer(x)?)
    }

    /// The layer without its biases (the same weights).
    fn unbiased(&self) -> OctConv2d {
        OctConv2d {
            bias_h: None,
            bias_l: None,
            ..self.clone()
        }
    }

    /// Whether inference adds this layer's biases in place to its fresh output
    /// ([`OctConv2d::add_biases_in_place`]): f32 CPU inputs and biases, the fused kernels on.
    fn biases_in_place(&self, x: &OctValue) -> bool {
        let biases = [&self.bias_h, &self.bias_l];
        biases.iter().any(|b| b.is_some())
            && self.fused
            && self.fusable_inputs_f32(x)
            && biases
                .iter()
                .all(|b| b.as_ref().is_none_or(crate::kernels::serves_f32))
    }

    /// `y`, a fresh output of this layer without its biases (nothing else holds it), with the
    /// biases added in place on all threads ([`BiasedEpilogue`] with the identity map: `1·(y + c) +
    /// (−0)`, the broadcast sum's values bit for bit); candle's broadcast sum wrote a fresh tensor
    /// on one thread per call (5–8 % of the cycles of the seed's plain network, whose every
    /// convolution has a bias). Branches that are not contiguous take the broadcast sum.
    fn add_biases_in_place(&self, y: OctValue) -> Result<OctValue> {
        let add = |t: Tensor, bias: &Option<Tensor>| -> Result<Tensor> {
            let Some(b) = bias else { return Ok(t) };
            let c = b.elem_count();
            if !t.is_contiguous() || t.rank() < 2 || t.dim(1)? != c {
                return add_bias(t, bias);
            }
            let identity = ChannelEpilogue {
                scale: vec![1.0; c],
                shift: vec![-0.0; c],
                clamp: crate::kernels::epilogue::Clamp::Identity,
            };
            let bias = b.flatten_all()?.to_vec1::<f32>()?;
            t.inplace_op1(&BiasedEpilogue {
                bias,
                epi: identity,
            })?;
            Ok(t)
        };
        Ok(match y {
            OctValue::Single(t) => OctValue::Single(add(t, &self.bias_h)?),
            OctValue::Pair { high, low } => OctValue::Pair {
                high: high.map(|h| add(h, &self.bias_h)).transpose()?,
                low: add(low, &self.bias_l)?,
            },
            flat => flat,
        })
    }

    /// [`OctConv2d::infer_then`] of a layer with a bias whose stage maps without pooling, on f32
    /// CPU inputs: the layer without its bias, then the bias and the stage in one pass in place
    /// ([`BiasedEpilogue`]; the same values as the bias's own op and the stage). `Ok(None)`
    /// elsewhere.
    fn infer_then_biased(&self, x: &OctValue, stage: &OutputStage<'_>) -> Result<Option<OctValue>> {
        let s = &self.spec;
        let has_bias = self.bias_h.is_some() || self.bias_l.is_some();
        if !has_bias || stage.pools() || !self.fused || !self.fusable_inputs_f32(x) {
            return Ok(None);
        }
        let biased = |bias: &Option<Tensor>,
                      high: bool,
                      c: usize|
         -> Result<Option<BiasedEpilogue>> {
            let Some(epi) = stage.epilogue(high, c)? else {
                return Ok(None);
            };
            let bias = match bias {
                Some(b) if crate::kernels::serves_f32(b) => b.flatten_all()?.to_vec1::<f32>()?,
                Some(_) => return Ok(None),
                // −0 added leaves every value as it is (a +0 would turn −0 into +0).
                None => vec![-0.0; c],
            };
            Ok((bias.len() == c).then_some(BiasedEpilogue { bias, epi }))
        };
        let Some(eh) = biased(&self.bias_h, true, s.out_h)? else {
            return Ok(None);
        };
        let el = match s.out_l {
            0 => None,
            c => match biased(&self.bias_l, false, c)? {
                Some(e) => Some(e),
                None => return Ok(None),
            },
        };
        // A fresh output nothing else holds: mapped in place.
        let y = self.unbiased().infer(x)?;
        match (&y, el) {
            (OctValue::Single(t), None) if t.is_contiguous() => t.inplace_op1(&eh)?,
            (OctValue::Pair { high: Some(h), low }, Some(el))
                if h.is_contiguous() && low.is_contiguous() =>
            {
                h.inplace_op1(&eh)?;
                low.inplace_op1(&el)?;
            }
            // Not the shapes the stage expects: the biases, then the stage, as two passes.
            _ => return stage.apply(self.add_biases_in_place(y)?).map(Some),
        }
        Ok(Some(y))
    }

    /// [`OctConv2d::infer_then`] of a stage that halves its output ([`OutputStage::halve`]): a 1×1
    /// layer at stride 1 on the four-path kernel pools each band of output rows from scratch
    /// ([`pointwise::forward_post_halved`]), a one-branch 1×1 layer maps and pools each band in
    /// cache ([`conv2d::infer_post_halved`]); any other layer (or a stage that also max-pools)
    /// maps its output as usual, then pools it.
    fn infer_then_halved(&self, x: &OctValue, stage: &OutputStage<'_>) -> Result<OctValue> {
        let (s, inner) = (&self.spec, stage.unhalved());
        if stage.pool.is_some() {
            return halve(&self.infer_then(x, &inner)?);
        }
        let one_branch_1x1 = s.kernel == 1 && s.stride == 1 && s.groups == 1 && !s.depthwise;
        let no_bias = self.bias_h.is_none() && self.bias_l.is_none();
        let fusable = no_bias && self.fused && self.fusable_inputs_f32(x);
        if let (true, Some(g)) = (fusable, self.pointwise_geometry(x)?) {
            // The four-path 1×1 kernel, each image's outputs pooled from scratch.
            let ((oh, ow), (lh, lw)) = (g.out_high_hw(), g.out_low_hw());
            let poolable = g.stride == 1 && oh.min(ow) >= 2 && (s.out_l == 0 || lh.min(lw) >= 2);
            let low = match s.out_l {
                0 => Some(None),
                _ => inner.epilogue(false, s.out_l)?.map(Some),
            };
            if let (true, Some(h), Some(l)) = (poolable, inner.epilogue(true, s.out_h)?, low) {
                return self.infer_pointwise(x, g, [Some(&h), l.as_ref()], true);
            }
        }
        if let (true, (Some(xs), None), [Some(w), None, None, None]) =
            (one_branch_1x1 && fusable, x.branches(), &self.weights)
        {
            if let Some(e) = inner.epilogue(true, s.out_h)? {
                if let Some(y) = conv2d::infer_post_halved(xs, w, self.conv_params(1), &e)? {
                    return Ok(OctValue::Single(y));
                }
            }
        }
        halve(&self.infer_then(x, &inner)?)
    }

    /// Inference of this depthwise layer on the output of `expand`, a 1×1 convolution that only it
    /// reads, of `x` (`expand_stage` on it), then `stage` ([`octconv_spec::plan::Step::ExpandDepthwise`]):
    /// image by image with the expanded image in scratch ([`expand_depthwise`]) where both are f32
    /// CPU layers without bias that the fused kernels may run (one branch, or the four-path 1×1
    /// kernel and a depthwise pair) and both stages map rows; else the two layers one after the
    /// other.
    pub fn infer_expanded(
        &self,
        expand: &OctConv2d,
        x: &OctValue,
        (expand_stage, stage): (&OutputStage<'_>, Option<&OutputStage<'_>>),
    ) -> Result<OctValue> {
        if let Some(y) = self.expanded_in_scratch(expand, x, (expand_stage, stage))? {
            return Ok(OctValue::Single(y));
        }
        if let Some(y) = self.expanded_pair_in_scratch(expand, x, (expand_stage, stage))? {
            return Ok(y);
        }
        let e = expand.infer_then(x, expand_stage)?;
        match stage {
            Some(stage) => self.infer_then(&e, stage),
            None => self.infer(&e),
        }
    }

    /// The fused path of [`OctConv2d::infer_expanded`] for an octave pair: the four-path 1×1
    /// expansion at stride 1 and a depthwise pair ([`expand_depthwise::forward_pair`]), or `None`
    /// where it does not serve.
    fn expanded_pair_in_scratch(
        &self,
        expand: &OctConv2d,
        x: &OctValue,
        (expand_stage, stage): (&OutputStage<'_>, Option<&OutputStage<'_>>),
    ) -> Result<Option<OctValue>> {
        let (se, sd) = (&expand.spec, &self.spec);
        let (Some(g), [Some(wh), None, None, Some(wl)]) =
            (expand.pointwise_geometry(x)?, &self.weights)
        else {
            return Ok(None);
        };
        let shapes = g.stride == 1
            && sd.depthwise
            && sd.stride == 1
            && !sd.strided_conv()
            && se.out_l > 0
            && (sd.in_h, sd.in_l) == (se.out_h, se.out_l)
            && !expand_stage.pools()
            && stage.is_none_or(|s| !s.pools());
        let f32s = [wh, wl]
            .iter()
            .all(|t| t.dtype() == candle_core::DType::F32);
        if !(shapes && f32s && expand.fused_without_bias() && self.fused_without_bias()) {
            return Ok(None);
        }
        let (n, k) = (g.octave.n, sd.kernel);
        let ((oh, ow), (ol, owl)) = (g.out_high_hw(), g.out_low_hw());
        let (eh, el) = (se.out_h, se.out_l);
        if wh.dims4()? != (eh, 1, k, k) || wl.dims4()? != (el, 1, k, k) {
            return Ok(None);
        }
        let (Ok(gh), Ok(gl)) = (
            ConvGeometry::new((n, eh, oh, ow), wh.dims4()?, 1, k / 2, eh),
            ConvGeometry::new((n, el, ol, owl), wl.dims4()?, 1, k / 2, el),
        ) else {
            return Ok(None);
        };
        let (Some(eph), Some(epl)) = (
            expand_stage.epilogue(true, eh)?,
            expand_stage.epilogue(false, el)?,
        ) else {
            return Ok(None);
        };
        let epd = match stage {
            Some(s) => match (s.epilogue(true, eh)?, s.epilogue(false, el)?) {
                (Some(h), Some(l)) => Some((h, l)),
                _ => return Ok(None),
            },
            None => None,
        };
        let (peh, pel) = (row_map(&eph), row_map(&epl));
        let pd = epd.as_ref().map(|(h, l)| (row_map(h), row_map(l)));
        let post_d: [Option<RowMap<'_, f32>>; 2] = match &pd {
            Some((h, l)) => [Some(h), Some(l)],
            None => [None, None],
        };
        let (Some(xh), Some(xl)) = x.branches() else {
            return Ok(None);
        };
        let (yh, yl) = expand.with_pointwise_weights(|wt| {
            with_f32_all([xh, xl, wh, wl], |[xh, xl, wh, wl]| {
                expand_depthwise::forward_pair(
                    &g,
                    (xh, xl),
                    wt,
                    [Some(&peh), Some(&pel)],
                    (&gh, &gl),
                    (wh, wl),
                    post_d,
                )
            })
        })?;
        let dev = xh.device();
        Ok(Some(OctValue::Pair {
            high: Some(Tensor::from_vec(yh, (n, eh, gh.oh(), gh.ow()), dev)?),
            low: Tensor::from_vec(yl, (n, el, gl.oh(), gl.ow()), dev)?,
        }))
    }

    /// Whether the fused kernels may run this layer and it adds no bias.
    fn fused_without_bias(&self) -> bool {
        self.fused && self.bias_h.is_none() && self.bias_l.is_none()
    }

    /// The fused path of [`OctConv2d::infer_expanded`], or `None` where it does not serve.
    fn expanded_in_scratch(
        &self,
        expand: &OctConv2d,
        x: &OctValue,
        (expand_stage, stage): (&OutputStage<'_>, Option<&OutputStage<'_>>),
    ) -> Result<Option<Tensor>> {
        let (se, sd) = (&expand.spec, &self.spec);
        let (OctValue::Single(xs), [Some(we), None, None, None], [Some(wd), None, None, None]) =
            (x, &expand.weights, &self.weights)
        else {
            return Ok(None);
        };
        let shapes = se.kernel == 1
            && se.stride == 1
            && se.groups == 1
            && !se.depthwise
            && sd.depthwise
            && !sd.strided_conv()
            && sd.stride == 1
            && sd.in_h == se.out_h
            && !expand_stage.pools()
            && stage.is_none_or(|s| !s.pools());
        if !(shapes
            && expand.fused_without_bias()
            && self.fused_without_bias()
            && crate::kernels::serves(xs.device()))
        {
            return Ok(None);
        }
        if [xs, we, wd]
            .iter()
            .any(|t| t.dtype() != candle_core::DType::F32)
        {
            return Ok(None);
        }
        let (n, c, h, w) = xs.dims4()?;
        let e = se.out_h;
        let k = sd.kernel;
        let (Ok(ge), Ok(gd)) = (
            ConvGeometry::new((n, c, h, w), we.dims4()?, 1, 0, 1),
            ConvGeometry::new((n, e, h, w), wd.dims4()?, 1, k / 2, e),
        ) else {
            return Ok(None);
        };
        if we.dims4()? != (e, c, 1, 1) || wd.dims4()? != (e, 1, k, k) {
            return Ok(None);
        }
        let Some(epi_e) = expand_stage.epilogue(true, e)? else {
            return Ok(None);
        };
        let epi_d = match stage {
            Some(s) => match s.epilogue(true, e)? {
                Some(epi) => Some(epi),
                None => return Ok(None),
            },
            None => None,
        };
        let post_e = row_map(&epi_e);
        let post_d = |ch: usize, row: &mut [f32]| {
            if let Some(epi) = &epi_d {
                epi.apply_row(ch, row)
            }
        };
        let y = with_f32_all([xs, we, wd], |[x, we, wd]| {
            expand_depthwise::forward((&ge, &gd), x, (we, wd), (Some(&post_e), Some(&post_d)))
        })?;
        Ok(Some(Tensor::from_vec(
            y,
            (n, e, gd.oh(), gd.ow()),
            xs.device(),
        )?))
    }

    /// Inference of this stride-2 layer that pools first on `x`, an input its producer already
    /// pooled ([`octconv_spec::plan::Step::OnPooled`]): the same layer at stride 1 on it, then
    /// `stage` where given.
    pub fn infer_on_pooled(
        &self,
        x: &OctValue,
        stage: Option<&OutputStage<'_>>,
    ) -> Result<OctValue> {
        if !self.spec.runs_on_pooled_input() {
            candle_core::bail!(
                "octconv: only a stride-2 layer that pools first and has no L→H path reads a \
                 pooled input (this one: stride {}, downsample = {:?}, {} low input and {} high \
                 output channels)",
                self.spec.stride,
                self.spec.downsample,
                self.spec.in_l,
                self.spec.out_h
            )
        }
        let twin = OctConv2d {
            spec: OctConvSpec {
                stride: 1,
                ..self.spec
            },
            weights: self.weights.clone(),
            bias_h: self.bias_h.clone(),
            bias_l: self.bias_l.clone(),
            fused: self.fused,
            // The same weights: what the twin's kernels prepare serves this layer too.
            prepared: self.prepared.clone(),
        };
        match stage {
            Some(stage) => twin.infer_then(x, stage),
            None => twin.infer(x),
        }
    }

    /// The geometry of the grouped octave kernel ([`grouped_octave`]) for this layer and input, if
    /// it runs them: 3×3 with all four paths, more than one group (not depthwise), pooling first
    /// at stride 2, no bias, f32 CPU inputs, the fused kernels allowed, sizes it
    /// [applies](GroupedOctave::applies) to.
    fn grouped_geometry(&self, x: &OctValue) -> Result<Option<GroupedOctave>> {
        let s = &self.spec;
        let (Some(xh), Some(xl)) = x.branches() else {
            return Ok(None);
        };
        if !self.fused
            || s.kernel != 3
            || s.groups < 2
            || s.depthwise
            || s.strided_conv()
            || self.bias_h.is_some()
            || self.bias_l.is_some()
            || !self.fusable_inputs_f32(x)
        {
            return Ok(None);
        }
        let (n, in_h, h, w) = xh.dims4()?;
        let (nl, in_l, hl, wl) = xl.dims4()?;
        if (nl, in_h, in_l) != (n, s.in_h, s.in_l) || (2 * hl, 2 * wl) != (h, w) {
            return Ok(None);
        }
        // All four paths, each weight `[c_out, c_in / groups, 3, 3]` (a layer built from other
        // weights takes the per-op path, whose convolutions report the mismatch).
        let shapes = [
            (s.out_h, s.in_h),
            (s.out_l, s.in_h),
            (s.out_h, s.in_l),
            (s.out_l, s.in_l),
        ];
        let weights_fit = self.weights.iter().zip(shapes).all(|(w, (o, i))| {
            w.as_ref()
                .is_some_and(|w| w.dims4().ok() == Some((o, i / s.groups.max(1), 3, 3)))
        });
        if !weights_fit {
            return Ok(None);
        }
        let g = GroupedOctave {
            octave: OctaveGeometry {
                n,
                in_h,
                in_l,
                out_h: s.out_h,
                out_l: s.out_l,
                h,
                w,
            },
            groups: s.groups,
            stride: s.stride,
        };
        Ok(g.applies().then_some(g))
    }

    /// The layer by the grouped octave kernel, each output branch mapped by its epilogue (if any)
    /// as its planes are made.
    fn infer_grouped(
        &self,
        x: &OctValue,
        g: &GroupedOctave,
        epis: [Option<&ChannelEpilogue>; 2],
    ) -> Result<OctValue> {
        let (Some(xh), Some(xl)) = x.branches() else {
            candle_core::bail!("internal error: a grouped octave layer without both inputs")
        };
        let [Some(hh), Some(hl), Some(lh), Some(ll)] = &self.weights else {
            candle_core::bail!("internal error: a grouped octave layer without four weights")
        };
        let maps = epis.map(|e| e.map(|e| move |c: usize, row: &mut [f32]| e.apply_row(c, row)));
        let posts: [Option<RowMap<'_, f32>>; 2] = [
            maps[0].as_ref().map(|m| m as RowMap<'_, f32>),
            maps[1].as_ref().map(|m| m as RowMap<'_, f32>),
        ];
        let (yh, yl) = with_f32_all([xh, xl, hh, hl, lh, ll], |[h, l, hh, hl, lh, ll]| {
            grouped_octave::forward(g, h, l, OctaveWeights { hh, hl, lh, ll }, posts)
        })?;
        let [(oh, ow), (lh_, lw)] = g.out_hw();
        let o = &g.octave;
        let dev = xh.device();
        Ok(OctValue::Pair {
            high: Some(Tensor::from_vec(yh, (o.n, o.out_h, oh, ow), dev)?),
            low: Tensor::from_vec(yl, (o.n, o.out_l, lh_, lw), dev)?,
        })
    }

    /// One branch of a depthwise pair ([`OctConv2d::infer_then`]): `epi(conv(x))`, at stride 2 of
    /// the 2×2-pooled `x`, by the depthwise kernel; `Ok(None)` where it does not serve the branch.
    fn infer_depthwise_branch(
        &self,
        x: &Tensor,
        w: &Tensor,
        epi: &crate::kernels::epilogue::ChannelEpilogue,
    ) -> Result<Option<Tensor>> {
        let p = self.conv_params(x.dim(1)?);
        if self.spec.stride != 2 {
            return conv2d::infer_post(x, w, p, epi);
        }
        infer_post_pooling_first(x, w, p, epi)
    }

    /// The geometry of the 1×1 octave kernel ([`crate::kernels::pointwise`]) for this layer and
    /// input, if it runs them: 1×1, one group, the paths of an octave layer (all four, or those of a
    /// layer into the pair without a low input or out of it without a low output), f32 CPU inputs,
    /// the fused kernels allowed, maps it [applies](PointwiseOctave::applies) to.
    fn pointwise_geometry(&self, x: &OctValue) -> Result<Option<PointwiseOctave>> {
        let s = &self.spec;
        let (Some(xh), xl) = x.branches() else {
            return Ok(None);
        };
        if !self.fused
            || s.kernel != 1
            || s.groups != 1
            || s.depthwise
            || s.strided_conv()
            || xl.is_some() != (s.in_l > 0)
            || self.pointwise_weights().is_none()
            || !self.fusable_inputs_f32(x)
        {
            return Ok(None);
        }
        let (n, in_h, h, w) = xh.dims4()?;
        let g = PointwiseOctave {
            octave: OctaveGeometry {
                n,
                in_h,
                in_l: s.in_l,
                out_h: s.out_h,
                out_l: s.out_l,
                h,
                w,
            },
            stride: s.stride,
        };
        let low_fits = match xl {
            Some(xl) => xl.dims4()? == (n, s.in_l, h / 2, w / 2),
            None => true,
        };
        Ok((g.applies() && in_h == s.in_h && low_fits).then_some(g))
    }

    /// The path weights the 1×1 octave kernel reads: H→H always; L→H with a low input, H→L with a
    /// low output, L→L with both; `None` where the layer's paths are not those.
    fn pointwise_weights(&self) -> Option<[Option<&Tensor>; 4]> {
        let s = &self.spec;
        let want = [true, s.out_l > 0, s.in_l > 0, s.in_l > 0 && s.out_l > 0];
        let have = self.weights.iter().map(Option::is_some);
        have.eq(want)
            .then(|| [0, 1, 2, 3].map(|p| self.weights[p].as_ref()))
    }

    /// The 1×1 kernel's weights as f32 slices (absent paths empty) for `f`.
    fn with_pointwise_weights<R>(
        &self,
        f: impl FnOnce(PathWeights<'_, f32>) -> Result<R>,
    ) -> Result<R> {
        let Some(ws) = self.pointwise_weights() else {
            candle_core::bail!("internal error: the 1×1 octave kernel on a layer of other paths")
        };
        // Absent paths read as empty weights (the kernel skips them).
        let empty = Tensor::zeros(0, candle_core::DType::F32, &candle_core::Device::Cpu)?;
        let [hh, hl, lh, ll] = ws.map(|w| w.unwrap_or(&empty));
        with_f32_all([hh, hl, lh, ll], |[hh, hl, lh, ll]| {
            f(PathWeights { hh, hl, lh, ll })
        })?
    }

    /// The four-path 1×1 octave convolution of `x` by [`crate::kernels::pointwise`] with the
    /// geometry [`OctConv2d::pointwise_geometry`] found, each output branch mapped by its epilogue
    /// if given.
    fn infer_pointwise(
        &self,
        x: &OctValue,
        g: PointwiseOctave,
        epilogues: [Option<&ChannelEpilogue>; 2],
        halve: bool,
    ) -> Result<OctValue> {
        let (Some(xh), xl) = x.branches() else {
            candle_core::bail!("internal error: the 1×1 octave kernel without a high input")
        };
        let posts =
            epilogues.map(|e| e.map(|e| move |c: usize, row: &mut [f32]| e.apply_row(c, row)));
        let [ph, pl] = &posts;
        let post = [
            ph.as_ref().map(|f| f as RowMap<'_, f32>),
            pl.as_ref().map(|f| f as RowMap<'_, f32>),
        ];
        let (yh, yl) = self.with_pointwise_weights(|wt| {
            let kernel = |xh: &[f32], xl: &[f32]| match halve {
                true => pointwise::forward_post_halved(&g, (xh, xl), wt, post),
                false => pointwise::forward_post(&g, xh, xl, wt, post),
            };
            with_f32(xh, |xh| match xl {
                Some(xl) => with_f32(xl, |xl| kernel(xh, xl)),
                None => Ok(kernel(xh, &[])),
            })?
        })?;
        self.pointwise_output(&g, (yh, yl), halve, xh.device())
    }

    /// The 1×1 octave kernel's outputs (NCHW data of geometry `g`, each map halved where `halved`)
    /// with their biases: a pair, or one branch for a layer out of the pair.
    fn pointwise_output(
        &self,
        g: &PointwiseOctave,
        (yh, yl): (Vec<f32>, Vec<f32>),
        halved: bool,
        dev: &candle_core::Device,
    ) -> Result<OctValue> {
        let (s, n) = (&self.spec, g.octave.n);
        let f = if halved { 2 } else { 1 };
        let ((oh, ow), (lh, lw)) = (g.out_high_hw(), g.out_low_hw());
        let ((oh, ow), (lh, lw)) = ((oh / f, ow / f), (lh / f, lw / f));
        let yh = add_bias(
            Tensor::from_vec(yh, (n, s.out_h, oh, ow), dev)?,
            &self.bias_h,
        )?;
        if s.out_l == 0 {
            return Ok(OctValue::Single(yh));
        }
        let yl = Tensor::from_vec(yl, (n, s.out_l, lh, lw), dev)?;
        Ok(OctValue::Pair {
            high: Some(yh),
            low: add_bias(yl, &self.bias_l)?,
        })
    }

    /// Inference of `self(map(x))`, where `map` is the batch norm (and ReLU) before this layer,
    /// applied by the kernel as it reads `x` ([`crate::kernels::prologue`]): the fused octave kernel,
    /// a one-path 3×3 convolution (α = 0), a one-path or four-path 1×1 convolution at stride 1, or
    /// any of these at stride 2 (the map applied as the inputs are pooled). `Ok(None)` when this
    /// layer and input take no prologue
    /// (other shapes, not f32 on the CPU, fused kernels switched off); the caller then applies the
    /// map itself. The result carries no gradient.
    pub fn forward_prologue(&self, x: &OctValue, map: &InputMap) -> Result<Option<OctValue>> {
        // A stride-2 convolution maps no value as it reads (no pooling, no Winograd gather).
        if !self.fused || !self.fusable_inputs_f32(x) || self.spec.strided_conv() {
            return Ok(None);
        }
        if self.spec.stride == 2 {
            return self.forward_prologue_strided(x, map);
        }
        if self.spec.kernel == 1 && (self.spec.in_l > 0 || self.spec.out_l > 0) {
            return self.pointwise_prologue(x, map);
        }
        match x.branches() {
            (Some(xh), Some(xl)) => {
                let Some(g) = self.fused_geometry(xh, xl) else {
                    return Ok(None);
                };
                let pros = [map.prologue(true), map.prologue(false)];
                if let (Some(_), Some(_)) = (pros[0], pros[1]) {
                    if let Some(y) = self.infer_direct(&g, x, pros)? {
                        return Ok(Some(y));
                    }
                }
                if g.prefers_per_path() {
                    return Ok(None);
                }
                self.infer_fused(&g, x, pros)
            }
            (Some(x1), None) => {
                let s = &self.spec;
                let [Some(w), None, None, None] = &self.weights else {
                    return Ok(None);
                };
                let (n, c, h, wd) = x1.dims4()?;
                if s.kernel == 1 && s.stride == 1 && s.groups == 1 && !s.depthwise {
                    let (Some(pro), (cout, cin, 1, 1)) = (map.prologue(true), w.dims4()?) else {
                        return Ok(None);
                    };
                    if cin != c {
                        return Ok(None);
                    }
                    let y = with_f32(w, |w| {
                        with_images_f32(x1, |x, image| {
                            pointwise::forward_mapped((n, c, h * wd, cout), x, image, w, pro)
                        })
                    })??;
                    let y = Tensor::from_vec(y, (n, cout, h, wd), x1.device())?;
                    return Ok(Some(OctValue::Single(add_bias(y, &self.bias_h)?)));
                }
                let Ok(g) = ConvGeometry::new((n, c, h, wd), w.dims4()?, 1, s.kernel / 2, 1) else {
                    return Ok(None);
                };
                if s.stride != 1 || s.groups != 1 || s.depthwise || !winograd::applies(&g) {
                    return Ok(None);
                }
                let Some(pro) = map.prologue(true) else {
                    return Ok(None);
                };
                let y = with_f32_all([x1, w], |[x, w]| {
                    // Frozen: the Winograd weights prepared once for this geometry.
                    let kept = self.prepared.as_ref().and_then(|cache| {
                        cache.single(&g, true, || conv2d::prepare_winograd(&g, w, true))
                    });
                    match kept {
                        Some(p) => conv2d::forward_winograd_prepared(&g, x, &p, Some(pro)),
                        None => conv2d::dispatch_forward_prologue(&g, x, w, pro),
                    }
                })?;
                let y = Tensor::from_vec(y, (n, g.c_out, h, wd), x1.device())?;
                Ok(Some(OctValue::Single(add_bias(y, &self.bias_h)?)))
            }
            _ => Ok(None),
        }
    }

    /// [`OctConv2d::forward_prologue`] of a 1×1 octave convolution at stride 1
    /// ([`pointwise::forward_mapped_pair`]); `Ok(None)` where that kernel does not apply.
    fn pointwise_prologue(&self, x: &OctValue, map: &InputMap) -> Result<Option<OctValue>> {
        let Some(g) = self.pointwise_geometry(x)?.filter(|g| g.stride == 1) else {
            return Ok(None);
        };
        let (Some(xh), xl) = x.branches() else {
            return Ok(None);
        };
        let Some(ph) = map.prologue(true) else {
            return Ok(None);
        };
        // Without a low input the low map reads nothing: the high one stands in for it.
        let pl = match xl {
            Some(_) => match map.prologue(false) {
                Some(pl) => pl,
                None => return Ok(None),
            },
            None => ph,
        };
        let (yh, yl) = self.with_pointwise_weights(|wt| {
            with_images_f32(xh, |xh, image_h| match xl {
                Some(xl) => with_images_f32(xl, |xl, image_l| {
                    pointwise::forward_mapped_pair(&g, (xh, xl), (image_h, image_l), wt, [ph, pl])
                }),
                None => Ok(pointwise::forward_mapped_pair(
                    &g,
                    (xh, &[]),
                    (image_h, 0),
                    wt,
                    [ph, pl],
                )),
            })?
        })?;
        self.pointwise_output(&g, (yh, yl), false, xh.device())
            .map(Some)
    }

    /// Inference of `self(relu(bn(x)))` (eval-mode batch norm), with the batch norm and ReLU applied
    /// inside this layer's kernels where they take an input map ([`OctConv2d::forward_prologue`]),
    /// else op by op. The interpreter's `infer` and the generated `infer` of `octnet!` both run it.
    pub fn infer_after_bn_relu(&self, bn: &OctBatchNorm, x: &OctValue) -> Result<OctValue> {
        if self.biases_in_place(x) {
            return self.add_biases_in_place(self.unbiased().infer_after_bn_relu(bn, x)?);
        }
        // The map is read back from the batch norm's parameters: only worth it (and, on a GPU, only
        // a needless device-to-host copy otherwise) where our kernels can apply it.
        let map = if self.fused && self.fusable_inputs_f32(x) {
            bn.input_map(true)?
        } else {
            None
        };
        let done = match map {
            Some(map) => self.forward_prologue(x, &map)?,
            None => None,
        };
        match done {
            Some(y) => Ok(y),
            None => {
                self.infer(&bn.forward_act_t(x, false, Some(crate::layers::Activation::Relu))?)
            }
        }
    }

    /// [`OctConv2d::forward_prologue`] at stride 2, where every path reads pooled inputs: the map
    /// is applied as the high input (and, for the low-output paths, the low input) is pooled, and
    /// L→H reads the mapped low input.
    fn forward_prologue_strided(&self, x: &OctValue, map: &InputMap) -> Result<Option<OctValue>> {
        let s = &self.spec;
        if s.groups != 1 || s.depthwise {
            return Ok(None);
        }
        // pool(map(t)) of one branch.
        let pooled = |t: &Tensor, high: bool| -> Result<Option<Tensor>> {
            let Some(pro) = map.prologue(high) else {
                return Ok(None);
            };
            let (n, c, h, w) = t.dims4()?;
            let v = with_f32(t, |d| resample::pool_mapped(d, n * c, (h, w), pro))?;
            Ok(Some(Tensor::from_vec(v, (n, c, h / 2, w / 2), t.device())?))
        };
        match (x.branches(), &self.weights) {
            ((Some(xh), Some(xl)), [Some(_), Some(_), Some(_), Some(_)]) => {
                let (Some(pro_h), Some(pro_l)) = (map.prologue(true), map.prologue(false)) else {
                    return Ok(None);
                };
                let (n, c_h, h, w) = xh.dims4()?;
                let (nl, c_l, lh, lw) = xl.dims4()?;
                if (nl, lh, lw) != (n, h / 2, w / 2) {
                    return Ok(None);
                }
                let joint = with_f32_all([xh, xl], |[dh, dl]| {
                    resample::pool_mapped_joined((dh, dl), (n, c_h, c_l), (h, w), (pro_h, pro_l))
                })?;
                let joint = Tensor::from_vec(joint, (n, c_h + c_l, h / 2, w / 2), xh.device())?;
                self.strided_from_joint(joint).map(Some)
            }
            ((Some(x1), None), [Some(w), None, None, None]) => {
                let Some(half) = pooled(x1, true)? else {
                    return Ok(None);
                };
                let y = conv2d(&half, w, self.conv_params(1))?;
                Ok(Some(OctValue::Single(add_bias(y, &self.bias_h)?)))
            }
            _ => Ok(None),
        }
    }

    /// Stride 2 (pooling first) with all four paths, one group: [`OctConv2d::forward_strided`]
    /// applies.
    fn strided_pair(&self) -> bool {
        let s = &self.spec;
        s.stride == 2
            && !s.strided_conv()
            && s.groups == 1
            && !s.depthwise
            && self.weights.iter().all(Option::is_some)
    }

    /// A stride-2 octave convolution as two convolutions. With stride 2 both high-output paths
    /// read half-resolution inputs (`pool(X_H)` and `X_L`, which L→H does not upsample), and both
    /// low-output paths quarter-resolution ones, so each output is one convolution over the
    /// concatenated inputs with the weights concatenated along the input channels: no H→H and
    /// L→H outputs held side by side and then added (3 high-branch-sized tensors at once, the peak
    /// of a WRN-28-10 inference pass at α = .25).
    fn forward_strided(&self, xh: &Tensor, xl: &Tensor) -> Result<OctValue> {
        // Bound first: a temporary `pool(X_H)` in the call would live until the call returns,
        // through both convolutions.
        let joint = Tensor::cat(&[&avg_pool2x2(xh)?, xl], 1)?;
        self.strided_from_joint(joint)
    }

    /// [`OctConv2d::forward_strided`] from the high output's input `high_in = [pool(X_H); X_L]`;
    /// the low output's input `[pool²(X_H); pool(X_L)]` is `high_in` pooled (pooling is per plane).
    fn strided_from_joint(&self, high_in: Tensor) -> Result<OctValue> {
        let [Some(w_hh), Some(w_hl), Some(w_lh), Some(w_ll)] = &self.weights else {
            candle_core::bail!("internal error: a strided octconv without all four paths")
        };
        let low_in = avg_pool2x2(&high_in)?;
        let high = conv2d(
            &high_in,
            &Tensor::cat(&[w_hh, w_lh], 1)?,
            self.conv_params(1),
        )?;
        drop(high_in);
        let low = conv2d(
            &low_in,
            &Tensor::cat(&[w_hl, w_ll], 1)?,
            self.conv_params(1),
        )?;
        Ok(OctValue::Pair {
            high: Some(add_bias(high, &self.bias_h)?),
            low: add_bias(low, &self.bias_l)?,
        })
    }

    /// Whether every input branch and weight is an f32 CPU tensor.
    fn fusable_inputs_f32(&self, x: &OctValue) -> bool {
        let (h, l) = x.branches();
        let f32_cpu = crate::kernels::serves_f32;
        h.into_iter().chain(l).all(f32_cpu) && self.weights.iter().flatten().all(f32_cpu)
    }

    /// The per-path forward: each path through its own convolution op, then the resampling ops.
    /// With `downsample = stride` the one path (H→H) convolves with stride 2.
    pub fn forward_unfused(&self, x: &OctValue) -> Result<OctValue> {
        if let (Some(xh), Some(xl), true) = (x.branches().0, x.branches().1, self.strided_pair()) {
            return self.forward_strided(xh, xl);
        }
        let s = &self.spec;
        if s.strided_conv() && (s.in_l > 0 || s.out_l > 0) {
            candle_core::bail!(
                "octconv: downsample = stride needs a single-branch layer, but this one has high {} / low {} inputs and high {} / low {} outputs",
                s.in_h,
                s.in_l,
                s.out_h,
                s.out_l
            )
        }
        let (xh, xl) = x.branches();
        let s2 = self.spec.stride == 2;
        let xh = match xh {
            Some(h) if s2 && !s.strided_conv() => Some(avg_pool2x2(h)?),
            Some(h) => Some(h.clone()),
            None => None,
        };
        let mut high: Option<Tensor> = None;
        let mut low: Option<Tensor> = None;
        let acc = |slot: &mut Option<Tensor>, t: Option<Tensor>| -> Result<()> {
            if let Some(t) = t {
                *slot = Some(match slot.take() {
                    Some(s) => (s + t)?,
                    None => t,
                });
            }
            Ok(())
        };
        // The low output's two paths share one convolution over concat(pool(X_H), X_L) with the
        // weights concatenated along the input channels: one deeper GEMM, no separate add. With
        // groups, the inputs are concatenated group by group (group `g` of the joint input is
        // group `g` of pool(X_H), then group `g` of X_L), which the weights concatenated along
        // their input channels match: ResNeXt's grouped octave layers run one grouped
        // convolution with twice the channels per group instead of two and an add.
        let fuse_low = !self.spec.depthwise
            && self.weights[Path::HL as usize].is_some()
            && self.weights[Path::LL as usize].is_some();
        let pooled_h = match (&xh, self.weights[Path::HL as usize].is_some()) {
            (Some(h), true) => Some(avg_pool2x2(h)?),
            _ => None,
        };
        let low_in = match xl {
            Some(l) if self.weights[Path::LL as usize].is_some() => {
                Some(if s2 { avg_pool2x2(l)? } else { l.clone() })
            }
            _ => None,
        };
        if let Some(h) = &xh {
            acc(&mut high, self.conv(h, Path::HH)?)?;
        }
        if let Some(lh) = xl.map(|l| self.conv(l, Path::LH)).transpose()?.flatten() {
            high = Some(match (high.take(), s2) {
                (Some(hh), false) => add_upsampled(&hh, &lh)?,
                (None, false) => upsample_nearest2x(&lh)?,
                (Some(hh), true) => (hh + lh)?,
                (None, true) => lh,
            });
        }
        if let (true, Some(ph), Some(li)) = (fuse_low, &pooled_h, &low_in) {
            let (Some(w_hl), Some(w_ll)) = (
                &self.weights[Path::HL as usize],
                &self.weights[Path::LL as usize],
            ) else {
                unreachable!("fuse_low checked both weights")
            };
            let groups = self.spec.groups;
            let x = concat_groups(&[ph, li], groups)?;
            let w = Tensor::cat(&[w_hl, w_ll], 1)?;
            low = Some(conv2d(&x, &w, self.conv_params(groups))?);
        } else {
            if let Some(ph) = &pooled_h {
                acc(&mut low, self.conv(ph, Path::HL)?)?;
            }
            if let Some(li) = &low_in {
                acc(&mut low, self.conv(li, Path::LL)?)?;
            }
        }
        let high = high.map(|t| add_bias(t, &self.bias_h)).transpose()?;
        let low = low.map(|t| add_bias(t, &self.bias_l)).transpose()?;
        match (high, low) {
            (Some(h), None) if self.spec.out_l == 0 => Ok(OctValue::Single(h)),
            (high, Some(low)) => Ok(OctValue::Pair { high, low }),
            _ => candle_core::bail!(
                "octconv: input does not match the layer (expected high {} / low {} channels)",
                self.spec.in_h,
                self.spec.in_l
            ),
        }
    }
}

/// The tensors `parts` (`[n, c_k, h, w]` each) joined along the channels group by group: for each
/// of the `groups` groups, its `c_k / groups` channels of each part in turn (one group:
/// `cat(parts, 1)`). A grouped convolution over the result with the parts' weights concatenated
/// along their input channels sums the parts' grouped convolutions.
pub(crate) fn concat_groups(parts: &[&Tensor], groups: usize) -> Result<Tensor> {
    if groups <= 1 {
        return Tensor::cat(parts, 1);
    }
    let (n, _, h, w) = parts
        .first()
        .ok_or_else(|| candle_core::Error::Msg("octconv: nothing to concatenate".into()))?
        .dims4()?;
    let mut total = 0;
    let split = parts
        .iter()
        .map(|t| {
            let (tn, c, th, tw) = t.dims4()?;
            if (tn, th, tw) != (n, h, w) {
                candle_core::bail!(
                    "octconv: cannot join [{tn}, {c}, {th}, {tw}] to [{n}, _, {h}, {w}] along the channels"
                )
            }
            if c % groups != 0 {
                candle_core::bail!("octconv: {c} channels do not split into {groups} groups")
            }
            total += c;
            t.reshape((n, groups, c / groups, h * w))
        })
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&split, 2)?.reshape((n, total, h, w))
}

/// The part of `t` (laid out as [`concat_groups`] joins) that comes from one source: per group,
/// `per_group` channels from channel `start` of the group.
pub(crate) fn group_part(
    t: &Tensor,
    groups: usize,
    start: usize,
    per_group: usize,
) -> Result<Tensor> {
    if groups <= 1 {
        return t.narrow(1, start, per_group);
    }
    let (n, c, h, w) = t.dims4()?;
    t.reshape((n, groups, c / groups, h * w))?
        .narrow(2, start, per_group)?
        .reshape((n, groups * per_group, h, w))
}

/// The weights and biases of an octave layer, in `Path::ALL` order and high, low.
pub(crate) type OctaveParams = ([Option<Tensor>; 4], Option<Tensor>, Option<Tensor>);

/// Loads `hh.weight` … `ll.weight` (of shape `shape(in, out)`) for the paths `spec` has, and `h.bias`,
/// `l.bias` if it has biases: the parameters of octave convolutions and their transposes.
pub(crate) fn load_octave(
    spec: &OctConvSpec,
    vb: &VarBuilder,
    shape: impl Fn(usize, usize) -> (usize, usize, usize, usize),
) -> Result<OctaveParams> {
    let mut weights: [Option<Tensor>; 4] = Default::default();
    for (i, p) in Path::ALL.into_iter().enumerate() {
        if let Some((cin, cout)) = spec.path_channels(p) {
            weights[i] = Some(vb.pp(p.as_str()).get(shape(cin, cout), "weight")?);
        }
    }
    let bias = |c: usize, name: &str| -> Result<Option<Tensor>> {
        (spec.bias && c > 0)
            .then(|| vb.pp(name).get(c, "bias"))
            .transpose()
    };
    Ok((weights, bias(spec.out_h, "h")?, bias(spec.out_l, "l")?))
}

/// `t` plus a per-channel bias, if there is one.
pub(crate) fn add_bias(t: Tensor, b: &Option<Tensor>) -> Result<Tensor> {
    match b {
        Some(b) => t.broadcast_add(&b.reshape((1, (), 1, 1))?),
        None => Ok(t),
    }
}

/// `epi` as a kernel's row map.
fn row_map(epi: &ChannelEpilogue) -> impl Fn(usize, &mut [f32]) + Sync + '_ {
    move |c, row| epi.apply_row(c, row)
}

/// `epi(conv(pool(x)))` for a stride-2 layer that pools first: the kernel pools as it reads where
/// it can ([`conv2d::infer_post_pooled`]), else a pooling pass and then [`conv2d::infer_post`];
/// `Ok(None)` where neither serves the layer.
fn infer_post_pooling_first(
    x: &Tensor,
    w: &Tensor,
    p: ConvParams,
    epi: &crate::kernels::epilogue::ChannelEpilogue,
) -> Result<Option<Tensor>> {
    match conv2d::infer_post_pooled(x, w, p, epi)? {
        Some(y) => Ok(Some(y)),
        None => conv2d::infer_post(&avg_pool2x2(x)?, w, p, epi),
    }
}

/// A private copy of a parameter for a frozen layer ([`crate::layers::OctLayer::freeze`]): new
/// storage that no variable shares, detached (candle's `copy` of a variable records the variable
/// as its source, which would keep it alive and pass gradients to it).
pub(crate) fn snapshot(t: &Tensor) -> Result<Tensor> {
    Ok(t.copy()?.detach())
}
