//! Statements: a body, and one builder per statement kind (`require`, `input`, `expect`, `let`,
//! `repeat`, a layer or block call), with the shapes, `as` labels and call arguments they read. The
//! graph statements `residual` and `branches` are in `graph`.

use super::{Builder, Res};
use crate::source::Span;
use crate::syntax::ast::{Arg, Call, ExpectShape, Expr, Label, Stmt};
use crate::syntax::Rule;
use pest::iterators::{Pair, Pairs};

impl Builder {
    /// The statements of a `{ … }` body.
    pub(super) fn body(&self, p: Pair<Rule>) -> Res<Vec<Stmt>> {
        p.into_inner()
            .filter(|s| s.as_rule() == Rule::stmt)
            .map(|s| self.stmt(s))
            .collect()
    }

    /// One statement (its doc comments are dropped): dispatches on the statement's kind.
    fn stmt(&self, p: Pair<Rule>) -> Res<Stmt> {
        let mut inner = p.into_inner();
        let _docs = inner.next();
        let s = inner.next().expect("stmt has a body");
        let span = self.span(&s);
        let rule = s.as_rule();
        let it = s.into_inner();
        match rule {
            Rule::require_stmt => self.require_stmt(span, it),
            Rule::input_stmt => self.input_stmt(span, it),
            Rule::expect_stmt => self.expect_stmt(span, it),
            Rule::let_stmt => self.let_stmt(it),
            Rule::repeat_stmt => self.repeat_stmt(span, it),
            Rule::residual_stmt => self.residual_stmt(span, it),
            Rule::branches_stmt => self.branches_stmt(it),
            _ => self.call(it).map(Stmt::Call),
        }
    }

    /// `require cond, "message";`
    fn require_stmt(&self, span: Span, mut it: Pairs<Rule>) -> Res<Stmt> {
        let cond = self.expr(it.next().expect("require cond"))?;
        let message = it.next().map(|m| self.string(m));
        Ok(Stmt::Require {
            cond,
            message,
            span,
        })
    }

    /// `input [C, H, W];`
    fn input_stmt(&self, span: Span, mut it: Pairs<Rule>) -> Res<Stmt> {
        Ok(Stmt::Input {
            dims: self.shape(it.next().expect("input shape"))?,
            span,
        })
    }

    /// `expect [C, H, W];` or `expect high = [..], low = [..];`
    fn expect_stmt(&self, span: Span, mut it: Pairs<Rule>) -> Res<Stmt> {
        let x = it.next().expect("expect shape");
        let shape = if x.as_rule() == Rule::expect_pair {
            let mut xs = x.into_inner();
            let h = self.shape(xs.next().expect("high"))?;
            let l = self.shape(xs.next().expect("low"))?;
            ExpectShape::Pair(h, l)
        } else {
            ExpectShape::Plain(self.shape(x)?)
        };
        Ok(Stmt::Expect { shape, span })
    }

    /// `let name = value;`
    fn let_stmt(&self, mut it: Pairs<Rule>) -> Res<Stmt> {
        Ok(Stmt::Let {
            name: self.ident(it.next().expect("let name")),
            value: self.expr(it.next().expect("let value"))?,
        })
    }

    /// `repeat i in from..to { … }` or `repeat count { … }`; the span covers the head.
    fn repeat_stmt(&self, span: Span, mut it: Pairs<Rule>) -> Res<Stmt> {
        let head = it.next().expect("repeat head");
        let head_span = Span::new(self.file, span.start, self.span(&head).end);
        let body = self.body(it.next().expect("repeat body"))?;
        let range = head.as_rule() == Rule::repeat_range;
        let mut h = head.into_inner();
        let (var, from, to) = if range {
            let var = self.ident(h.next().expect("var"));
            let from = self.expr(h.next().expect("from"))?;
            (Some(var), Some(from), self.expr(h.next().expect("to"))?)
        } else {
            (None, None, self.expr(h.next().expect("count"))?)
        };
        Ok(Stmt::Repeat {
            var,
            from,
            to,
            body,
            span: head_span,
        })
    }

    /// A layer or block call. Its span runs from its name to its closing parenthesis (no label, no
    /// `;`).
    fn call(&self, mut it: Pairs<Rule>) -> Res<Call> {
        let name = self.ident(it.next().expect("call name"));
        let mut span = name.span;
        let args = match it.peek().map(|p| p.as_rule()) {
            Some(Rule::args) => {
                let a = it.next().expect("args");
                span = span.to(self.span(&a));
                self.args(a)?
            }
            _ => Vec::new(),
        };
        let label = it.next().map(|l| self.label(l)).transpose()?;
        Ok(Call {
            name,
            args,
            label,
            span,
        })
    }

    /// `[e, …]` of `input` and `expect`.
    fn shape(&self, p: Pair<Rule>) -> Res<Vec<Expr>> {
        p.into_inner().map(|e| self.expr(e)).collect()
    }

    /// `as name` or `as name[i]`; the span starts at the name.
    pub(super) fn label(&self, p: Pair<Rule>) -> Res<Label> {
        let span = self.span(&p);
        let mut it = p.into_inner();
        let name = self.ident(it.next().expect("label name"));
        let index = it.next().map(|e| self.expr(e)).transpose()?;
        let span = Span::new(self.file, name.span.start, span.end);
        Ok(Label { name, index, span })
    }

    /// `(a, name = b, …)`: positional and named arguments.
    pub(super) fn args(&self, p: Pair<Rule>) -> Res<Vec<Arg>> {
        p.into_inner().map(|a| self.arg(a)).collect()
    }

    fn arg(&self, a: Pair<Rule>) -> Res<Arg> {
        let span = self.span(&a);
        let x = a.into_inner().next().expect("arg has one child");
        if x.as_rule() == Rule::named_arg {
            self.named_arg(span, x.into_inner())
        } else {
            Ok(Arg {
                name: None,
                value: self.expr(x)?,
                span,
            })
        }
    }

    /// `name = value` (an argument, or a `--set` override) spanning `span`.
    pub(super) fn named_arg(&self, span: Span, mut it: Pairs<Rule>) -> Res<Arg> {
        let name = self.ident(it.next().expect("arg name"));
        let value = self.expr(it.next().expect("arg value"))?;
        Ok(Arg {
            name: Some(name),
            value,
            span,
        })
    }
}
