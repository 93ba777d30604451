//! Per-op code: how the generated struct builds each layer's runtime value. Every layer then runs
//! through the runtime's one interface, `OctLayer::apply(&layer, &[inputs…], train)`, as in the
//! interpreter: the generated code does not dispatch on the op.

use crate::ir::{Downsample, Layer, Op};
use proc_macro2::TokenStream;
use quote::quote;

use super::{fl, us};

/// How one layer's runtime value is made.
pub(crate) enum Built {
    /// A field of the generated struct: its type and its constructor (which may use `vb`).
    Field(TokenStream, TokenStream),
    /// A parameter-free value written inline where the layer runs.
    Inline(TokenStream),
    /// The model input.
    Input,
}

/// The runtime value of `layer` (parameters under `vb.pp(layer.name)`).
pub(crate) fn built(k: &TokenStream, layer: &Layer) -> Built {
    let name = &layer.name;
    let l = quote!(#k::runtime::layers);
    let field = |ty: TokenStream, init: TokenStream| Built::Field(ty, init);
    match layer.op {
        Op::Input => Built::Input,
        Op::Conv(c) => {
            let (in_c, out_c, kernel, stride, padding, groups, bias) = (
                c.in_c, c.out_c, c.kernel, c.stride, c.padding, c.groups, c.bias,
            );
            let spec = quote!(#k::spec::ir::ConvSpec { in_c: #in_c, out_c: #out_c, kernel: #kernel, stride: #stride, padding: #padding, groups: #groups, bias: #bias });
            field(
                quote!(#l::Conv2d),
                quote!(#l::Conv2d::new(#spec, vb.pp(#name))?),
            )
        }
        Op::OctConv(o) | Op::OctConvTranspose(o) => {
            let (in_h, in_l, out_h, out_l, kernel, stride, groups, depthwise, bias) = (
                o.in_h,
                o.in_l,
                o.out_h,
                o.out_l,
                o.kernel,
                o.stride,
                o.groups,
                o.depthwise,
                o.bias,
            );
            let downsample = match o.downsample {
                Downsample::Pool => quote!(#k::spec::ir::Downsample::Pool),
                Downsample::Stride => quote!(#k::spec::ir::Downsample::Stride),
            };
            let spec = quote!(#k::spec::ir::OctConvSpec { in_h: #in_h, in_l: #in_l, out_h: #out_h, out_l: #out_l, kernel: #kernel, stride: #stride, groups: #groups, depthwise: #depthwise, bias: #bias, downsample: #downsample });
            let ty = if matches!(layer.op, Op::OctConv(_)) {
                quote!(#l::OctConv2d)
            } else {
                quote!(#l::OctConvTranspose2d)
            };
            field(ty.clone(), quote!(#ty::new(#spec, vb.pp(#name))?))
        }
        Op::BatchNorm { eps, momentum } => {
            let (eps, momentum) = (fl(eps), fl(momentum));
            let shape = super::shape_tokens(k, &layer.input);
            field(
                quote!(#l::OctBatchNorm),
                quote!(#l::OctBatchNorm::new(&#shape, #eps, #momentum, vb.pp(#name))?),
            )
        }
        Op::Dropout { p } => {
            let p = fl(p);
            field(
                quote!(#l::Dropout),
                quote!(#l::Dropout::new(#p, __dropout_rng.clone())),
            )
        }
        Op::Linear { in_f, out_f, bias } => {
            let (in_f, out_f) = (us(in_f), us(out_f));
            field(
                quote!(#l::Linear),
                quote!(#l::Linear::new(#in_f, #out_f, #bias, vb.pp(#name))?),
            )
        }
        Op::AvgPool(p) | Op::MaxPool(p) => {
            let kind = if matches!(layer.op, Op::AvgPool(_)) {
                quote!(Avg)
            } else {
                quote!(Max)
            };
            let (kernel, stride, padding) = (us(p.kernel), us(p.stride), us(p.padding));
            Built::Inline(
                quote!(#l::Pool { kind: #l::PoolKind::#kind, spec: #k::spec::ir::PoolSpec { kernel: #kernel, stride: #stride, padding: #padding } }),
            )
        }
        Op::Relu => Built::Inline(quote!(#l::Activation::Relu)),
        Op::Sigmoid => Built::Inline(quote!(#l::Activation::Sigmoid)),
        Op::Relu6 => Built::Inline(quote!(#l::Activation::Relu6)),
        Op::HardSwish => Built::Inline(quote!(#l::Activation::HardSwish)),
        Op::Split { low } => {
            let low = us(low);
            Built::Inline(quote!(#l::layer::Split { low: #low }))
        }
        Op::Merge => Built::Inline(quote!(#l::layer::Merge { to_low: false })),
        Op::Pyramid => Built::Inline(quote!(#l::layer::Pyramid)),
        Op::MergeLow => Built::Inline(quote!(#l::layer::Merge { to_low: true })),
        Op::Upsample { scale } => {
            let scale = us(scale);
            Built::Inline(quote!(#l::layer::Upsample { scale: #scale }))
        }
        Op::GlobalAvgPool { per_branch } => {
            Built::Inline(quote!(#l::layer::GlobalAvgPool { per_branch: #per_branch }))
        }
        Op::Flatten => Built::Inline(quote!(#l::layer::Flatten)),
        Op::Add => Built::Inline(quote!(#l::layer::Add)),
        Op::Concat => Built::Inline(quote!(#l::layer::Concat)),
        Op::Scale => Built::Inline(quote!(#l::layer::Scale)),
    }
}
