//! Code generation: the Rust source of a typed candle module for a checked model. The `octnet!` macro
//! expands to it and `octconv gen` writes it (formatted). The generated code uses the runtime's layer
//! types, so the macro model and the interpreted model compute the same thing with the same parameter
//! names.
//!
//! The generator writes no per-op code: each layer's field is built by the runtime's one constructor
//! (`octconv_runtime::layers::build_json`, the interpreter's `build_op`) from the op as JSON
//! ([`crate::ir::Op::to_json`]) and its input shape, and every layer runs through `OctLayer::apply`
//! (training) or the planned program (inference). A new op therefore needs nothing here. This module
//! assembles the struct, its constants, `new`, `infer` and the `ModuleT` impl.

mod program;

use crate::ir::Model;
use crate::shape::Shape;
use proc_macro2::{Ident, Literal, Span, TokenStream};
use quote::{format_ident, quote};

/// How to name and decorate the generated struct.
#[derive(Clone, Debug)]
pub struct GenOptions {
    /// Struct name.
    pub name: Ident,
    /// Visibility tokens (`pub`, `pub(crate)`, or empty).
    pub vis: TokenStream,
    /// Attributes and doc comments for the struct.
    pub attrs: TokenStream,
    /// Path of the facade crate in the generated code (`::octconv`).
    pub krate: TokenStream,
    /// The spec source recorded in `SPEC`.
    pub spec_text: String,
}

impl GenOptions {
    /// Options for a struct `name`, public, using `::octconv`.
    pub fn new(name: &str, spec_text: &str) -> Self {
        GenOptions {
            name: Ident::new(name, Span::call_site()),
            vis: quote!(pub),
            attrs: TokenStream::new(),
            krate: quote!(::octconv),
            spec_text: spec_text.to_string(),
        }
    }
}

/// An unsuffixed integer literal (`3`, not `3usize`).
pub(crate) fn u(n: impl Into<u64>) -> Literal {
    Literal::u64_unsuffixed(n.into())
}

/// An unsuffixed usize literal.
pub(crate) fn us(n: usize) -> Literal {
    Literal::u64_unsuffixed(n as u64)
}

/// A raw string literal `r#"…"#` of `text` (JSON reads better without escaped quotes).
fn raw_string(text: &str) -> Literal {
    let mut hashes = String::from("#");
    while text.contains(&format!("\"{hashes}")) {
        hashes.push('#');
    }
    format!("r{hashes}\"{text}\"{hashes}")
        .parse()
        .expect("a raw string literal parses")
}

/// The tokens of a `Shape` value, its types named `#spec Shape` and `#spec Dims` (`spec` is a path
/// prefix such as `::octconv::spec::`, or empty where `Shape` and `Dims` are in scope).
pub(crate) fn shape_tokens(spec: &TokenStream, s: &Shape) -> TokenStream {
    let dims = |d: crate::shape::Dims| {
        let (c, h, w) = (us(d.c), us(d.h), us(d.w));
        quote!(#spec Dims { c: #c, h: #h, w: #w })
    };
    match *s {
        Shape::Single(d) => {
            let d = dims(d);
            quote!(#spec Shape::Single(#d))
        }
        Shape::Pair { high, low } => {
            let (h, l) = (dims(high), dims(low));
            quote!(#spec Shape::Pair { high: #h, low: #l })
        }
        Shape::Flat { features } => {
            let f = us(features);
            quote!(#spec Shape::Flat { features: #f })
        }
    }
}

const RUST_KEYWORDS: &[&str] = &[
    "as", "async", "await", "break", "const", "continue", "crate", "dyn", "else", "enum", "extern",
    "false", "fn", "for", "if", "impl", "in", "let", "loop", "match", "mod", "move", "mut", "pub",
    "ref", "return", "self", "Self", "static", "struct", "super", "trait", "true", "type",
    "unsafe", "use", "where", "while", "abstract", "become", "box", "do", "final", "macro",
    "override", "priv", "typeof", "unsized", "virtual", "yield", "try", "gen",
];

/// A field name for a layer: dots become `_`, keywords get a trailing `_`, collisions an index.
fn field_names(model: &Model) -> Vec<Ident> {
    let mut seen = std::collections::HashSet::new();
    model
        .layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let mut n = l.name.replace('.', "_");
            if RUST_KEYWORDS.contains(&n.as_str()) || n.starts_with(|c: char| c.is_ascii_digit()) {
                n.push('_');
            }
            if !seen.insert(n.clone()) {
                n = format!("{n}_{i}");
                seen.insert(n.clone());
            }
            format_ident!("{}", n)
        })
        .collect()
}

/// The generated struct, its inherent impl and its `ModuleT` impl.
pub fn generate(model: &Model, o: &GenOptions) -> TokenStream {
    let GenOptions {
        name,
        vis,
        attrs,
        krate,
        spec_text,
    } = o;
    let fields = field_names(model);
    let values: Vec<Ident> = (0..model.layers.len())
        .map(|i| format_ident!("x{}", i))
        .collect();
    let last_use = crate::plan::last_use(model);
    let mut decls = Vec::new();
    let mut inits = Vec::new();
    let mut steps = Vec::new();
    let uses_rng = model
        .layers
        .iter()
        .any(|l| matches!(l.op, crate::ir::Op::Dropout { .. }));
    // `infer`: the planned program (crate::plan::Program), run by the runtime's executor over
    // the struct's layers, as the interpreter runs it.
    let program = program::tokens(krate, &crate::plan::Program::lower(model));
    let rt = quote!(#krate::runtime::layers);
    let spec = quote!(#krate::spec::);
    let mut infer_layers = Vec::new();
    let mut freezes = Vec::new();
    for (j, l) in model.layers.iter().enumerate() {
        let f = &fields[j];
        let ins: Vec<&Ident> = l.inputs.iter().map(|&i| &values[i]).collect();
        let out = &values[j];
        let expr = if matches!(l.op, crate::ir::Op::Input) {
            infer_layers.push(quote!(::std::option::Option::None));
            quote!(#krate::OctValue::Single(xs.clone()))
        } else {
            let (name, input) = (&l.name, shape_tokens(&quote!(), &l.input));
            let op = raw_string(&l.op.to_json());
            decls.push(quote!(#f: ::std::boxed::Box<dyn #rt::OctLayer>));
            inits.push(quote!(#f: layer(#op, #input, #name)?));
            infer_layers.push(quote!(::std::option::Option::Some(&*self.#f)));
            freezes.push(quote!(#rt::OctLayer::freeze(&mut *self.#f)?;));
            quote!(#rt::OctLayer::apply(&*self.#f, &[#(&#ins),*], train)?)
        };
        let layer_name = &l.name;
        let shape = shape_tokens(&spec, &l.output);
        let check = quote! {
            #[cfg(debug_assertions)]
            #krate::runtime::debug_assert_shape(&#out, #layer_name, #shape);
        };
        steps.push(quote! {
            let #out = #expr;
            #check
        });
        for &i in &l.inputs {
            if last_use[i] == j && i != j {
                let v = &values[i];
                steps.push(quote!(drop(#v);));
            }
        }
    }
    let last = values.last().expect("a model has an input layer");
    let n_layers = us(model.layers.len());
    let d = model.input;
    let (c, h, w) = (us(d.c), us(d.h), us(d.w));
    let output: Vec<usize> = match model.output {
        Shape::Single(d) => vec![d.c, d.h, d.w],
        Shape::Flat { features } => vec![features],
        Shape::Pair { high, low } => vec![high.c + low.c, high.h, high.w],
    };
    let output: Vec<Literal> = output.into_iter().map(us).collect();
    let params = u(model.params());
    let macs = u(model.macs());
    let model_name = &model.name;
    let call = model.call_string();
    let doc_consts = format!(" Generated from `{call}`.");
    // Every layer is built by the runtime's one constructor from its op (JSON) and input shape.
    let layer_init = quote! {
        #[allow(unused_imports)]
        use #krate::spec::{Dims, Shape};
        let __dropout_rng = #rt::DropoutRng::new(0);
        #[allow(unused_variables)]
        let layer = |op: &str, input: Shape, name: &str| {
            #rt::build_json(op, &input, vb.pp(name), &__dropout_rng)
        };
    };
    let (rng_decl, rng_field, rng_fn) = if uses_rng {
        (
            quote!(__dropout_rng: #rt::DropoutRng,),
            quote!(__dropout_rng,),
            quote! {
                /// Restarts the stream every dropout layer draws its masks from.
                pub fn set_dropout_seed(&self, seed: u64) {
                    self.__dropout_rng.reseed(seed);
                }
            },
        )
    } else {
        (quote!(), quote!(), quote!())
    };
    let input_check = quote! {
        let dims = xs.dims();
        if dims.len() != 4 || dims[1..] != Self::INPUT {
            #krate::candle_core::bail!(
                "input of shape {:?} does not match model `{}`: expected [N, {}, {}, {}]",
                dims, #model_name, #c, #h, #w
            );
        }
    };
    quote! {
        #attrs
        #[doc = #doc_consts]
        #[derive(Clone, Debug)]
        #[allow(non_snake_case)]
        #vis struct #name {
            #(#decls,)*
            #rng_decl
            __program: #krate::spec::plan::Program,
            __frozen: bool,
        }

        impl #name {
            /// Input `[C, H, W]` per sample.
            pub const INPUT: [usize; 3] = [#c, #h, #w];
            /// Output per sample: `[F]`, or `[C, H, W]` for a model without a head.
            pub const OUTPUT: &'static [usize] = &[#(#output),*];
            /// Trainable parameters.
            pub const PARAMS: u64 = #params;
            /// Multiply-accumulates per sample.
            pub const MACS: u64 = #macs;
            /// The spec this struct was generated from.
            pub const SPEC: &'static str = #spec_text;

            /// Loads every parameter from `vb` (names as in `octconv_spec::params`).
            pub fn new(vb: #krate::candle_nn::VarBuilder) -> #krate::candle_core::Result<Self> {
                #layer_init
                Ok(Self {
                    #(#inits,)*
                    #rng_field
                    __program: #program,
                    __frozen: false,
                })
            }

            #rng_fn

            /// Freezes the model for inference, as the interpreter's `OctModel::freeze` does: every
            /// layer's parameters become private copies (a snapshot that later writes to the
            /// `VarMap` do not reach), and the octave convolutions' CPU kernels then keep the
            /// weights they prepare instead of preparing them on every pass. The values are the
            /// same. A frozen model cannot be trained (`forward_t` in training mode returns an
            /// error): build it again from its `VarMap` for that. Freezing twice is a no-op.
            pub fn freeze(&mut self) -> #krate::candle_core::Result<()> {
                if self.__frozen {
                    return Ok(());
                }
                self.__frozen = true;
                #(#freezes)*
                Ok(())
            }

            /// Inference without an autograd graph, as the interpreter's `OctModel::infer` runs it:
            /// the same planned program (`octconv_spec::plan::Program`) by the same executor
            /// (`octconv_runtime::exec`): eval-mode batch norm, each output detached and freed after
            /// its last reader, the batch norms and activations the plan puts inside the
            /// convolutions next to them. The values equal `forward_t(xs, false)` to rounding.
            pub fn infer(
                &self,
                xs: &#krate::candle_core::Tensor,
            ) -> #krate::candle_core::Result<#krate::candle_core::Tensor> {
                #input_check
                let layers: [::std::option::Option<&dyn #rt::OctLayer>; #n_layers] = [
                    #(#infer_layers),*
                ];
                #krate::runtime::exec::infer(&self.__program, &layers, xs)?.into_tensor()
            }
        }

        impl #krate::candle_core::ModuleT for #name {
            fn forward_t(
                &self,
                xs: &#krate::candle_core::Tensor,
                train: bool,
            ) -> #krate::candle_core::Result<#krate::candle_core::Tensor> {
                if train && self.__frozen {
                    #krate::candle_core::bail!(
                        "model `{}` is frozen for inference (freeze: its parameters are a snapshot), so it cannot be trained; build it again from its VarMap to train it",
                        #model_name
                    );
                }
                #input_check
                #(#steps)*
                #last.into_tensor()
            }
        }
    }
}
