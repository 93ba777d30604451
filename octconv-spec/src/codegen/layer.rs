//! Per-op code: the field a layer needs (type and constructor) and its forward step.

use crate::ir::{Layer, Op};
use proc_macro2::{Ident, TokenStream};
use quote::quote;

use super::{fl, us};

type Forward = Box<dyn Fn(&[&Ident]) -> TokenStream>;

/// What one layer contributes to the generated code.
pub(crate) struct Parts {
    /// `(type, constructor)` of its field, for layers with parameters or state.
    pub field: Option<(TokenStream, TokenStream)>,
    /// Builds the expression computing its output from its inputs' variables.
    pub forward: Forward,
}

fn stateless(forward: impl Fn(&[&Ident]) -> TokenStream + 'static) -> Parts {
    Parts {
        field: None,
        forward: Box::new(forward),
    }
}

/// The field and forward step of `layer`, whose field is named `field`.
pub(crate) fn parts(k: &TokenStream, layer: &Layer, field: &Ident) -> Parts {
    let name = &layer.name;
    let l = quote!(#k::runtime::layers);
    match layer.op {
        Op::Input => stateless({
            let k = k.clone();
            move |_| quote!(#k::OctValue::Single(xs.clone()))
        }),
        Op::Conv(c) => {
            let (in_c, out_c, kernel, stride, padding, groups, bias) = (
                c.in_c, c.out_c, c.kernel, c.stride, c.padding, c.groups, c.bias,
            );
            let spec = quote!(#k::spec::ir::ConvSpec { in_c: #in_c, out_c: #out_c, kernel: #kernel, stride: #stride, padding: #padding, groups: #groups, bias: #bias });
            method(
                quote!(#l::Conv2d),
                quote!(#l::Conv2d::new(#spec, vb.pp(#name))?),
                field,
                quote!(forward),
                false,
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
            let spec = quote!(#k::spec::ir::OctConvSpec { in_h: #in_h, in_l: #in_l, out_h: #out_h, out_l: #out_l, kernel: #kernel, stride: #stride, groups: #groups, depthwise: #depthwise, bias: #bias });
            let ty = if matches!(layer.op, Op::OctConv(_)) {
                quote!(#l::OctConv2d)
            } else {
                quote!(#l::OctConvTranspose2d)
            };
            method(
                ty.clone(),
                quote!(#ty::new(#spec, vb.pp(#name))?),
                field,
                quote!(forward),
                false,
            )
        }
        Op::BatchNorm { eps, momentum } => {
            let (eps, momentum) = (fl(eps), fl(momentum));
            let shape = super::shape_tokens(k, &layer.input);
            method(
                quote!(#l::OctBatchNorm),
                quote!(#l::OctBatchNorm::new(&#shape, #eps, #momentum, vb.pp(#name))?),
                field,
                quote!(forward_t),
                true,
            )
        }
        Op::Dropout { p } => {
            let p = fl(p);
            method(
                quote!(#l::Dropout),
                quote!(#l::Dropout::new(#p, __dropout_rng.clone())),
                field,
                quote!(forward_t),
                true,
            )
        }
        Op::Linear { in_f, out_f, bias } => {
            let (in_f, out_f) = (us(in_f), us(out_f));
            method(
                quote!(#l::Linear),
                quote!(#l::Linear::new(#in_f, #out_f, #bias, vb.pp(#name))?),
                field,
                quote!(forward),
                false,
            )
        }
        Op::Relu => stateless(|x| {
            let x = x[0];
            quote!(#x.map(|t| t.relu())?)
        }),
        Op::AvgPool(p) | Op::MaxPool(p) => {
            let kind = if matches!(layer.op, Op::AvgPool(_)) {
                quote!(Avg)
            } else {
                quote!(Max)
            };
            let (kernel, stride, padding) = (us(p.kernel), us(p.stride), us(p.padding));
            let pool = quote!(#l::Pool { kind: #l::PoolKind::#kind, spec: #k::spec::ir::PoolSpec { kernel: #kernel, stride: #stride, padding: #padding } });
            stateless(move |x| {
                let x = x[0];
                quote!(#pool.forward(&#x)?)
            })
        }
        Op::Split { low } => {
            let l = l.clone();
            let low = us(low);
            stateless(move |x| {
                let x = x[0];
                quote!(#l::split(&#x, #low)?)
            })
        }
        Op::Merge => {
            let l = l.clone();
            stateless(move |x| {
                let x = x[0];
                quote!(#l::merge(&#x)?)
            })
        }
        Op::GlobalAvgPool { per_branch } => {
            let l = l.clone();
            stateless(move |x| {
                let x = x[0];
                quote!(#l::global_avg_pool(&#x, #per_branch)?)
            })
        }
        Op::Flatten => {
            let l = l.clone();
            stateless(move |x| {
                let x = x[0];
                quote!(#l::flatten(&#x)?)
            })
        }
        Op::Add | Op::Concat => {
            let l = l.clone();
            let f = if matches!(layer.op, Op::Add) {
                quote!(add)
            } else {
                quote!(concat)
            };
            stateless(move |x| quote!(#l::#f(&[#(&#x),*])?))
        }
        Op::Scale => {
            let l = l.clone();
            stateless(move |x| {
                let (v, g) = (x[0], x[1]);
                quote!(#l::scale(&#v, &#g)?)
            })
        }
        Op::Upsample { scale } => {
            let l = l.clone();
            let scale = us(scale);
            stateless(move |x| {
                let x = x[0];
                quote!(#l::upsample(&#x, #scale)?)
            })
        }
        Op::Sigmoid | Op::Relu6 | Op::HardSwish => {
            let l = l.clone();
            let a = match layer.op {
                Op::Sigmoid => quote!(Sigmoid),
                Op::Relu6 => quote!(Relu6),
                _ => quote!(HardSwish),
            };
            stateless(move |x| {
                let x = x[0];
                quote!(#l::Activation::#a.forward(&#x)?)
            })
        }
        Op::MergeLow => {
            let l = l.clone();
            stateless(move |x| {
                let x = x[0];
                quote!(#l::merge_low(&#x)?)
            })
        }
    }
}

/// A layer with a field whose method (`forward(&x)` or `forward_t(&x, train)`) computes the output.
fn method(
    ty: TokenStream,
    init: TokenStream,
    field: &Ident,
    call: TokenStream,
    train: bool,
) -> Parts {
    let f = field.clone();
    Parts {
        field: Some((ty, init)),
        forward: Box::new(move |x| {
            let x = x[0];
            if train {
                quote!(self.#f.#call(&#x, train)?)
            } else {
                quote!(self.#f.#call(&#x)?)
            }
        }),
    }
}
