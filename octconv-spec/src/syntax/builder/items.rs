//! Items: a file's `use` lines and its `model` and `block` definitions, with their doc comments,
//! parameters and parameter types.

use super::{Builder, Res};
use crate::diag::{DiagKind, Diagnostic};
use crate::source::Span;
use crate::syntax::ast::{Def, DefKind, File, Item, Param, Ty, UseItem};
use crate::syntax::Rule;
use pest::iterators::Pair;

impl Builder {
    pub(in crate::syntax) fn file(&self, p: Pair<Rule>) -> Res<File> {
        let mut items = Vec::new();
        for item in p.into_inner() {
            if item.as_rule() != Rule::item {
                continue;
            }
            let mut inner = item.into_inner();
            let docs = self.docs(inner.next().expect("item has docs"));
            let it = inner.next().expect("item has a body");
            items.push(match it.as_rule() {
                Rule::use_item => Item::Use(self.use_item(it)),
                _ => Item::Def(self.def(it, docs)?),
            });
        }
        Ok(File { items })
    }

    /// `///` lines and `#[doc = "…"]` attributes, one string each.
    fn docs(&self, p: Pair<Rule>) -> Vec<String> {
        p.into_inner()
            .map(|d| match d.as_rule() {
                Rule::doc_line => {
                    let t = &d.as_str()[3..];
                    t.strip_prefix(' ').unwrap_or(t).trim_end().to_string()
                }
                _ => {
                    let s = self.string(d.into_inner().next().expect("doc_attr has a string"));
                    s.strip_prefix(' ').unwrap_or(&s).to_string()
                }
            })
            .collect()
    }

    fn use_item(&self, p: Pair<Rule>) -> UseItem {
        let span = self.span(&p);
        let lit = p.into_inner().next().expect("use has a path");
        UseItem {
            path_span: self.span(&lit),
            path: self.string(lit),
            span,
        }
    }

    fn def(&self, p: Pair<Rule>, docs: Vec<String>) -> Res<Def> {
        let span = self.span(&p);
        let mut inner = p.into_inner();
        let kind = match inner.next().expect("def kind").as_str() {
            "model" => DefKind::Model,
            _ => DefKind::Block,
        };
        let name = self.ident(inner.next().expect("def name"));
        let params = inner
            .next()
            .expect("def params")
            .into_inner()
            .map(|p| self.param(p))
            .collect::<Res<Vec<_>>>()?;
        let body_pair = inner.next().expect("def body");
        let end_span = Span::new(self.file, span.end.saturating_sub(1), span.end);
        let body = self.body(body_pair)?;
        Ok(Def {
            kind,
            name,
            params,
            body,
            docs,
            span,
            end_span,
        })
    }

    fn param(&self, p: Pair<Rule>) -> Res<Param> {
        let span = self.span(&p);
        let mut inner = p.into_inner();
        let docs = self.docs(inner.next().expect("param docs"));
        let name = self.ident(inner.next().expect("param name"));
        let ty = self.ty(inner.next().expect("param type"))?;
        let default = inner.next().map(|e| self.expr(e)).transpose()?;
        Ok(Param {
            name,
            ty,
            default,
            docs,
            span,
        })
    }

    fn ty(&self, p: Pair<Rule>) -> Res<Ty> {
        let inner = p.into_inner().next().expect("ty has one child");
        match inner.as_rule() {
            Rule::ty_name => Ok(match inner.as_str() {
                "int" => Ty::Int,
                "float" => Ty::Float,
                _ => Ty::Bool,
            }),
            _ => {
                let mut it = inner.into_inner();
                let elem = self.ty(it.next().expect("list elem type"))?;
                let n_pair = it.next().expect("list length");
                let n = self.int(&n_pair)?;
                if n > 4096 {
                    return Err(Diagnostic::error(
                        DiagKind::Limit,
                        self.span(&n_pair),
                        format!("list type length {n} is larger than 4096"),
                    ));
                }
                Ok(Ty::List(Box::new(elem), n as usize))
            }
        }
    }
}
