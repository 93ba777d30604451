//! Graph statements, where values fork and meet: `residual { … } shortcut { … } as name;` and
//! `branches concat|add|scale { { … }, … } as name;`.

use super::{Builder, Res};
use crate::source::Span;
use crate::syntax::ast::Stmt;
use crate::syntax::Rule;
use pest::iterators::Pairs;

impl Builder {
    /// `residual { … } [shortcut { … }] [as name];` The span is the `residual` keyword.
    pub(super) fn residual_stmt(&self, span: Span, mut it: Pairs<Rule>) -> Res<Stmt> {
        let kw = Span::new(self.file, span.start, span.start + "residual".len());
        let body = self.body(it.next().expect("residual body"))?;
        let mut shortcut = None;
        let mut label = None;
        for p in it {
            match p.as_rule() {
                Rule::shortcut => {
                    shortcut = Some(self.body(p.into_inner().next().expect("shortcut body"))?)
                }
                _ => label = Some(self.label(p)?),
            }
        }
        Ok(Stmt::Residual {
            body,
            shortcut,
            label,
            span: kw,
        })
    }

    /// `branches join { { … }, … } [as name];` The span runs from the keyword to the join's name.
    pub(super) fn branches_stmt(&self, mut it: Pairs<Rule>) -> Res<Stmt> {
        let kw = it.next().expect("branches keyword");
        let join = self.ident(it.next().expect("join"));
        let span = self.span(&kw).to(join.span);
        let mut bodies = Vec::new();
        let mut label = None;
        for p in it {
            match p.as_rule() {
                Rule::body => bodies.push(self.body(p)?),
                _ => label = Some(self.label(p)?),
            }
        }
        Ok(Stmt::Branches {
            join,
            bodies,
            label,
            span,
        })
    }
}
