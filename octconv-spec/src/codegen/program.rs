//! The tokens of a planned inference ([`Program`]): the generated struct builds it in `new` and its
//! `infer` hands it to the runtime's executor, as the interpreter does with the same program.

use super::{shape_tokens, us};
use crate::plan::{ConcatPlace, OutputMap, Program, Step};
use proc_macro2::TokenStream;
use quote::quote;

/// An expression of type `Program` equal to `program`.
pub(crate) fn tokens(krate: &TokenStream, program: &Program) -> TokenStream {
    let p = quote!(#krate::spec::plan);
    let layers = program.layers.iter().map(|l| {
        let name = &l.name;
        let inputs = l.inputs.iter().copied().map(us);
        let output = shape_tokens(&quote!(#krate::spec::), &l.output);
        let step = step_tokens(&p, &l.step);
        let frees = l.frees.iter().copied().map(us);
        quote!(#p::PlannedLayer {
            name: ::std::string::String::from(#name),
            inputs: ::std::vec![#(#inputs),*],
            output: #output,
            step: #step,
            frees: ::std::vec![#(#frees),*],
        })
    });
    quote!(#p::Program { layers: ::std::vec![#(#layers),*] })
}

fn step_tokens(p: &TokenStream, step: &Step) -> TokenStream {
    let map = |m: &Option<OutputMap>| match m {
        Some(OutputMap {
            bn,
            act,
            pool,
            pool_for,
            add,
            mean,
        }) => {
            let opt = |v: &Option<usize>| match v {
                Some(i) => {
                    let i = us(*i);
                    quote!(::std::option::Option::Some(#i))
                }
                None => quote!(::std::option::Option::None),
            };
            let (bn, act, pool, pool_for) = (opt(bn), opt(act), opt(pool), opt(pool_for));
            let (add, mean) = (opt(add), opt(mean));
            quote!(::std::option::Option::Some(#p::OutputMap {
                bn: #bn, act: #act, pool: #pool, pool_for: #pool_for, add: #add, mean: #mean
            }))
        }
        None => quote!(::std::option::Option::None),
    };
    match *step {
        Step::Input => quote!(#p::Step::Input),
        Step::PassOn => quote!(#p::Step::PassOn),
        Step::AfterBnRelu { bn, map: m } => {
            let (bn, m) = (us(bn), map(&m));
            quote!(#p::Step::AfterBnRelu { bn: #bn, map: #m })
        }
        Step::BnAct { act } => {
            let act = us(act);
            quote!(#p::Step::BnAct { act: #act })
        }
        Step::Concat(ConcatPlace::Start { end }) => {
            let end = us(end);
            quote!(#p::Step::Concat(#p::ConcatPlace::Start { end: #end }))
        }
        Step::Concat(ConcatPlace::Extend { start, end }) => {
            let (start, end) = (us(start), us(end));
            quote!(#p::Step::Concat(#p::ConcatPlace::Extend { start: #start, end: #end }))
        }
        Step::Run { map: m } => {
            let m = map(&m);
            quote!(#p::Step::Run { map: #m })
        }
        Step::Expanded => quote!(#p::Step::Expanded),
        Step::ExpandDepthwise {
            expand,
            expand_map,
            map: m,
        } => {
            let (expand, em, m) = (us(expand), map(&Some(expand_map)), map(&m));
            // `map` gives `Option<OutputMap>` tokens; the field is an `OutputMap`.
            quote!(#p::Step::ExpandDepthwise {
                expand: #expand,
                expand_map: #em.unwrap(),
                map: #m,
            })
        }
        Step::OnPooled { map: m } => {
            let m = map(&m);
            quote!(#p::Step::OnPooled { map: #m })
        }
        Step::ScaleAdd { scale, map: m } => {
            let (scale, m) = (us(scale), map(&m));
            quote!(#p::Step::ScaleAdd { scale: #scale, map: #m })
        }
        Step::SumOf { at } => {
            let at = us(at);
            quote!(#p::Step::SumOf { at: #at })
        }
        Step::Meaned => quote!(#p::Step::Meaned),
        Step::Reference => quote!(#p::Step::Reference),
    }
}
