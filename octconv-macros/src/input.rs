//! Splitting an `octnet!` body into spec text and struct declarations, with a map from text offsets
//! back to token spans, then checking and generating each declaration.

use crate::errors::{compile_errors, Located};
use crate::spanned::SpannedText;
use octconv_spec::codegen::{generate, GenOptions};
use octconv_spec::source::Origin;
use octconv_spec::{check, CheckRequest, SpecInput};
use proc_macro2::{Delimiter, Ident, Span, TokenStream, TokenTree};
use quote::{quote, quote_spanned};
use std::path::PathBuf;

/// `[attrs] vis struct Name = call;`
struct Decl {
    attrs: Vec<TokenTree>,
    vis: Vec<TokenTree>,
    name: Ident,
    call: SpannedText,
    span: Span,
}

fn is_ident(t: Option<&TokenTree>, s: &str) -> bool {
    matches!(t, Some(TokenTree::Ident(i)) if i == s)
}

fn is_punct(t: Option<&TokenTree>, c: char) -> bool {
    matches!(t, Some(TokenTree::Punct(p)) if p.as_char() == c)
}

fn error(span: Span, msg: &str) -> TokenStream {
    quote_spanned!(span=> ::core::compile_error!(#msg);)
}

const USAGE: &str = "expected `octnet!(model(args))`, `octnet!(<model(args)>)` or `octnet! { [spec items] [pub] struct Name = model(args); … }`";

/// The call tokens of a declaration or the expression form: `model(args)` or `<model(args)>`.
fn call_text(tokens: &[TokenTree]) -> Result<SpannedText, TokenStream> {
    let inner: &[TokenTree] = if is_punct(tokens.first(), '<') && is_punct(tokens.last(), '>') {
        &tokens[1..tokens.len() - 1]
    } else {
        tokens
    };
    match inner {
        [TokenTree::Ident(_)] | [TokenTree::Ident(_), TokenTree::Group(_)] => {
            if let [_, TokenTree::Group(g)] = inner {
                if g.delimiter() != Delimiter::Parenthesis {
                    return Err(error(
                        g.span(),
                        &format!("expected `(…)` after the model name; {USAGE}"),
                    ));
                }
            }
            let mut t = SpannedText::default();
            t.extend(inner);
            Ok(t)
        }
        [] => Err(error(
            Span::call_site(),
            &format!("missing model call; {USAGE}"),
        )),
        [first, ..] => Err(error(
            first.span(),
            &format!("expected a model call such as `wrn(n = 4, k = 10)`; {USAGE}"),
        )),
    }
}

/// Splits the body into spec tokens and declarations.
fn split(tokens: Vec<TokenTree>) -> Result<(Vec<TokenTree>, Vec<Decl>), TokenStream> {
    let mut spec = Vec::new();
    let mut decls = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        // Attributes (and `///` docs) before an item.
        let start = i;
        while is_punct(tokens.get(i), '#')
            && matches!(tokens.get(i + 1), Some(TokenTree::Group(g)) if g.delimiter() == Delimiter::Bracket)
        {
            i += 2;
        }
        let attrs = tokens[start..i].to_vec();
        let is_decl = is_ident(tokens.get(i), "struct")
            || (is_ident(tokens.get(i), "pub")
                && (is_ident(tokens.get(i + 1), "struct")
                    || is_ident(tokens.get(i + 2), "struct")));
        if is_decl {
            let vis_start = i;
            while !is_ident(tokens.get(i), "struct") {
                i += 1;
            }
            let vis = tokens[vis_start..i].to_vec();
            let struct_span = tokens[i].span();
            i += 1;
            let name = match tokens.get(i) {
                Some(TokenTree::Ident(n)) => n.clone(),
                other => {
                    return Err(error(
                        other.map_or(struct_span, |t| t.span()),
                        &format!("expected the struct's name after `struct`; {USAGE}"),
                    ))
                }
            };
            i += 1;
            if !is_punct(tokens.get(i), '=') {
                let span = tokens.get(i).map_or(name.span(), |t| t.span());
                return Err(error(
                    span,
                    &format!("expected `=` and a model call after `struct {name}`; {USAGE}"),
                ));
            }
            i += 1;
            let call_start = i;
            while i < tokens.len() && !is_punct(tokens.get(i), ';') {
                i += 1;
            }
            if i >= tokens.len() {
                return Err(error(name.span(), "missing `;` after the declaration"));
            }
            let call = call_text(&tokens[call_start..i])?;
            i += 1;
            decls.push(Decl {
                attrs,
                vis,
                span: name.span(),
                name,
                call,
            });
            continue;
        }
        // A spec item: up to and including `;` or a brace group.
        spec.extend(attrs);
        while i < tokens.len() {
            let t = tokens[i].clone();
            i += 1;
            let end = is_punct(Some(&t), ';')
                || matches!(&t, TokenTree::Group(g) if g.delimiter() == Delimiter::Brace);
            spec.push(t);
            if end {
                break;
            }
        }
    }
    Ok((spec, decls))
}

/// The directory of the Rust file that invoked the macro (for `use "…"` paths), like `include_str!`.
fn caller_dir() -> PathBuf {
    let file = proc_macro::Span::call_site().local_file();
    let dir = file.as_ref().and_then(|f| f.parent()).map(PathBuf::from);
    match dir {
        Some(d) if d.is_absolute() => d,
        Some(d) => std::env::current_dir().map(|c| c.join(&d)).unwrap_or(d),
        None => std::env::var_os("CARGO_MANIFEST_DIR")
            .map(PathBuf::from)
            .unwrap_or_default(),
    }
}

/// Expands one invocation.
pub fn expand(input: TokenStream) -> TokenStream {
    let tokens: Vec<TokenTree> = input.into_iter().collect();
    if tokens.is_empty() {
        return error(Span::call_site(), &format!("empty `octnet!`; {USAGE}"));
    }
    let has_struct = tokens.iter().any(|t| is_ident(Some(t), "struct"));
    let spec_items = tokens.iter().any(|t| {
        is_ident(Some(t), "model") || is_ident(Some(t), "block") || is_ident(Some(t), "use")
    });
    if !has_struct && !spec_items {
        // Expression form: a builder whose `build(vb)` returns the model.
        let call = match call_text(&tokens) {
            Ok(c) => c,
            Err(e) => return e,
        };
        let name = Ident::new("OctNet", Span::call_site());
        let decl = Decl {
            attrs: Vec::new(),
            vis: Vec::new(),
            span: Span::call_site(),
            name: name.clone(),
            call,
        };
        let body = match expand_decls(&[], &[decl]) {
            Ok(b) => b,
            Err(e) => return e,
        };
        return quote! {{
            #body
            /// Builds the model from a `VarBuilder`.
            struct OctNetBuilder;
            impl OctNetBuilder {
                #[allow(dead_code)]
                fn build(self, vb: ::octconv::candle_nn::VarBuilder) -> ::octconv::candle_core::Result<#name> {
                    #name::new(vb)
                }
            }
            OctNetBuilder
        }};
    }
    let (spec, decls) = match split(tokens) {
        Ok(x) => x,
        Err(e) => return e,
    };
    if decls.is_empty() {
        return error(
            Span::call_site(),
            &format!("no `struct Name = model(…);` declaration: nothing to generate; {USAGE}"),
        );
    }
    expand_decls(&spec, &decls).unwrap_or_else(|e| e)
}

fn expand_decls(spec: &[TokenTree], decls: &[Decl]) -> Result<TokenStream, TokenStream> {
    let mut text = SpannedText::default();
    text.extend(spec);
    let dir = caller_dir();
    let mut out = TokenStream::new();
    let mut errors: Vec<Located> = Vec::new();
    for (i, d) in decls.iter().enumerate() {
        let checked = check(&CheckRequest {
            spec: SpecInput::Inline {
                name: "<octnet!>",
                text: &text.text,
                dir: &dir,
            },
            model: Some(&d.call.text),
            sets: &[],
        });
        if !checked.ok() {
            errors.extend(crate::errors::locate(
                &checked,
                &text,
                crate::errors::Decl {
                    index: i,
                    call: &d.call,
                    span: d.span,
                },
            ));
            continue;
        }
        let model = checked.model.as_ref().expect("ok() implies a model");
        let def_file = model.layers[0].span.file;
        let spec_text = checked.sources.get(def_file).text.clone();
        let attrs: TokenStream = d.attrs.iter().cloned().collect();
        let vis: TokenStream = d.vis.iter().cloned().collect();
        let opts = GenOptions {
            name: d.name.clone(),
            vis,
            attrs,
            krate: quote!(::octconv),
            spec_text,
        };
        out.extend(generate(model, &opts));
        // Rebuild the user's crate when a spec file changes.
        for id in checked.sources.ids() {
            if let Origin::File(p) = &checked.sources.get(id).origin {
                let abs = std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
                let path = abs.to_string_lossy().into_owned();
                out.extend(quote!(
                    const _: &[u8] = ::core::include_bytes!(#path);
                ));
            }
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(compile_errors(errors))
    }
}
