//! Builds the [`ast`](super::ast) from pest's parse tree.

use super::ast::*;
use super::{errors, precheck, OctParser, Rule, MAX_EXPR_DEPTH};
use crate::diag::{DiagKind, Diagnostic};
use crate::source::{FileId, Span};
use pest::iterators::Pair;
use pest::pratt_parser::{Assoc, Op, PrattParser};
use pest::Parser;
use std::sync::OnceLock;

type Res<T> = Result<T, Diagnostic>;

fn pratt() -> &'static PrattParser<Rule> {
    static P: OnceLock<PrattParser<Rule>> = OnceLock::new();
    P.get_or_init(|| {
        PrattParser::new()
            .op(Op::infix(Rule::or, Assoc::Left))
            .op(Op::infix(Rule::and, Assoc::Left))
            .op(Op::infix(Rule::eq, Assoc::Left)
                | Op::infix(Rule::ne, Assoc::Left)
                | Op::infix(Rule::lt, Assoc::Left)
                | Op::infix(Rule::le, Assoc::Left)
                | Op::infix(Rule::gt, Assoc::Left)
                | Op::infix(Rule::ge, Assoc::Left))
            .op(Op::infix(Rule::add, Assoc::Left) | Op::infix(Rule::sub, Assoc::Left))
            .op(Op::infix(Rule::mul, Assoc::Left)
                | Op::infix(Rule::div, Assoc::Left)
                | Op::infix(Rule::rem, Assoc::Left))
            .op(Op::prefix(Rule::neg) | Op::prefix(Rule::not))
    })
}

pub(super) struct Builder {
    pub(super) file: FileId,
}

fn unescape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(other) => out.push(other),
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl Builder {
    fn span(&self, p: &Pair<Rule>) -> Span {
        let s = p.as_span();
        Span::new(self.file, s.start(), s.end())
    }

    fn ident(&self, p: Pair<Rule>) -> Ident {
        Ident {
            name: p.as_str().to_string(),
            span: self.span(&p),
        }
    }

    fn string(&self, p: Pair<Rule>) -> String {
        let s = p.as_str();
        unescape(&s[1..s.len() - 1])
    }

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

    pub(super) fn file(&self, p: Pair<Rule>) -> Res<File> {
        let mut items = Vec::new();
        for item in p.into_inner() {
            if item.as_rule() != Rule::item {
                continue;
            }
            let mut inner = item.into_inner();
            let docs = self.docs(inner.next().expect("item has docs"));
            let it = inner.next().expect("item has a body");
            match it.as_rule() {
                Rule::use_item => {
                    let span = self.span(&it);
                    let lit = it.into_inner().next().expect("use has a path");
                    items.push(Item::Use(UseItem {
                        path_span: self.span(&lit),
                        path: self.string(lit),
                        span,
                    }));
                }
                _ => items.push(Item::Def(self.def(it, docs)?)),
            }
        }
        Ok(File { items })
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

    fn int(&self, p: &Pair<Rule>) -> Res<i64> {
        p.as_str().replace('_', "").parse::<i64>().map_err(|_| {
            Diagnostic::error(
                DiagKind::Limit,
                self.span(p),
                format!("integer literal `{}` does not fit in 64 bits", p.as_str()),
            )
        })
    }

    fn body(&self, p: Pair<Rule>) -> Res<Vec<Stmt>> {
        p.into_inner()
            .filter(|s| s.as_rule() == Rule::stmt)
            .map(|s| self.stmt(s))
            .collect()
    }

    fn shape(&self, p: Pair<Rule>) -> Res<Vec<Expr>> {
        p.into_inner().map(|e| self.expr(e)).collect()
    }

    fn stmt(&self, p: Pair<Rule>) -> Res<Stmt> {
        let mut inner = p.into_inner();
        let _docs = inner.next();
        let s = inner.next().expect("stmt has a body");
        let span = self.span(&s);
        let rule = s.as_rule();
        let mut it = s.into_inner();
        Ok(match rule {
            Rule::require_stmt => {
                let cond = self.expr(it.next().expect("require cond"))?;
                let message = it.next().map(|m| self.string(m));
                Stmt::Require {
                    cond,
                    message,
                    span,
                }
            }
            Rule::input_stmt => Stmt::Input {
                dims: self.shape(it.next().expect("input shape"))?,
                span,
            },
            Rule::expect_stmt => {
                let x = it.next().expect("expect shape");
                let shape = if x.as_rule() == Rule::expect_pair {
                    let mut xs = x.into_inner();
                    let h = self.shape(xs.next().expect("high"))?;
                    let l = self.shape(xs.next().expect("low"))?;
                    ExpectShape::Pair(h, l)
                } else {
                    ExpectShape::Plain(self.shape(x)?)
                };
                Stmt::Expect { shape, span }
            }
            Rule::let_stmt => Stmt::Let {
                name: self.ident(it.next().expect("let name")),
                value: self.expr(it.next().expect("let value"))?,
            },
            Rule::repeat_stmt => {
                let head = it.next().expect("repeat head");
                let head_span = Span::new(self.file, span.start, self.span(&head).end);
                let body = self.body(it.next().expect("repeat body"))?;
                let mut h = head.clone().into_inner();
                if head.as_rule() == Rule::repeat_range {
                    let var = self.ident(h.next().expect("var"));
                    let from = self.expr(h.next().expect("from"))?;
                    let to = self.expr(h.next().expect("to"))?;
                    Stmt::Repeat {
                        var: Some(var),
                        from: Some(from),
                        to,
                        body,
                        span: head_span,
                    }
                } else {
                    Stmt::Repeat {
                        var: None,
                        from: None,
                        to: self.expr(h.next().expect("count"))?,
                        body,
                        span: head_span,
                    }
                }
            }
            Rule::residual_stmt => {
                let kw = Span::new(self.file, span.start, span.start + "residual".len());
                let body = self.body(it.next().expect("residual body"))?;
                let mut shortcut = None;
                let mut label = None;
                for p in it {
                    match p.as_rule() {
                        Rule::shortcut => {
                            shortcut =
                                Some(self.body(p.into_inner().next().expect("shortcut body"))?)
                        }
                        _ => label = Some(self.label(p)?),
                    }
                }
                Stmt::Residual {
                    body,
                    shortcut,
                    label,
                    span: kw,
                }
            }
            Rule::branches_stmt => {
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
                Stmt::Branches {
                    join,
                    bodies,
                    label,
                    span,
                }
            }
            _ => Stmt::Call(self.call(span, it)?),
        })
    }

    /// A call's span runs from its name to its closing parenthesis (no label, no `;`).
    fn call(&self, _stmt: Span, mut it: pest::iterators::Pairs<Rule>) -> Res<Call> {
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

    fn label(&self, p: Pair<Rule>) -> Res<Label> {
        let span = self.span(&p);
        let mut it = p.into_inner();
        let name = self.ident(it.next().expect("label name"));
        let index = it.next().map(|e| self.expr(e)).transpose()?;
        let span = Span::new(self.file, name.span.start, span.end);
        Ok(Label { name, index, span })
    }

    fn args(&self, p: Pair<Rule>) -> Res<Vec<Arg>> {
        p.into_inner()
            .map(|a| {
                let span = self.span(&a);
                let x = a.into_inner().next().expect("arg has one child");
                if x.as_rule() == Rule::named_arg {
                    let mut xi = x.into_inner();
                    let name = self.ident(xi.next().expect("arg name"));
                    let value = self.expr(xi.next().expect("arg value"))?;
                    Ok(Arg {
                        name: Some(name),
                        value,
                        span,
                    })
                } else {
                    Ok(Arg {
                        name: None,
                        value: self.expr(x)?,
                        span,
                    })
                }
            })
            .collect()
    }

    /// Builds an expression, refusing trees deeper than [`MAX_EXPR_DEPTH`].
    fn expr(&self, p: Pair<Rule>) -> Res<Expr> {
        self.expr_depth(p).map(|(e, _)| e)
    }

    fn too_deep(&self, span: Span) -> Diagnostic {
        Diagnostic::error(
            DiagKind::Limit,
            span,
            format!("expression is nested deeper than {MAX_EXPR_DEPTH} levels"),
        )
        .with_help("split it with `let` bindings")
    }

    fn expr_depth(&self, p: Pair<Rule>) -> Res<(Expr, usize)> {
        let whole = self.span(&p);
        // pest's Pratt parser recurses once per prefix operator: refuse long runs before it runs.
        let mut run = 0usize;
        for x in p.clone().into_inner() {
            run = if matches!(x.as_rule(), Rule::neg | Rule::not) {
                run + 1
            } else {
                0
            };
            if run > MAX_EXPR_DEPTH {
                return Err(self.too_deep(whole));
            }
        }
        let whole = &whole;
        let result = pratt()
            .map_primary(|x| self.postfix(x))
            .map_prefix(|op, rhs| {
                let (rhs, d) = rhs?;
                if d + 1 > MAX_EXPR_DEPTH {
                    return Err(self.too_deep(*whole));
                }
                let span = self.span(&op).to(rhs.span);
                let op = if op.as_rule() == Rule::neg {
                    UnOp::Neg
                } else {
                    UnOp::Not
                };
                Ok((
                    Expr {
                        kind: ExprKind::Unary(op, Box::new(rhs)),
                        span,
                    },
                    d + 1,
                ))
            })
            .map_infix(|lhs, op, rhs| {
                let (lhs, dl) = lhs?;
                let (rhs, dr) = rhs?;
                let d = dl.max(dr) + 1;
                if d > MAX_EXPR_DEPTH {
                    return Err(self.too_deep(*whole));
                }
                let op = match op.as_rule() {
                    Rule::or => BinOp::Or,
                    Rule::and => BinOp::And,
                    Rule::eq => BinOp::Eq,
                    Rule::ne => BinOp::Ne,
                    Rule::lt => BinOp::Lt,
                    Rule::le => BinOp::Le,
                    Rule::gt => BinOp::Gt,
                    Rule::ge => BinOp::Ge,
                    Rule::add => BinOp::Add,
                    Rule::sub => BinOp::Sub,
                    Rule::mul => BinOp::Mul,
                    Rule::div => BinOp::Div,
                    _ => BinOp::Rem,
                };
                let span = lhs.span.to(rhs.span);
                Ok((
                    Expr {
                        kind: ExprKind::Binary(op, Box::new(lhs), Box::new(rhs)),
                        span,
                    },
                    d,
                ))
            })
            .parse(p.into_inner());
        result
    }

    fn postfix(&self, p: Pair<Rule>) -> Res<(Expr, usize)> {
        let mut it = p.into_inner();
        let (mut e, mut d) = self.primary(it.next().expect("postfix has a primary"))?;
        for ix in it {
            let span = self.span(&ix);
            let (i, di) = self.expr_depth(ix.into_inner().next().expect("index expr"))?;
            d = d.max(di) + 1;
            if d > MAX_EXPR_DEPTH {
                return Err(self.too_deep(span));
            }
            let span = e.span.to(span);
            e = Expr {
                kind: ExprKind::Index(Box::new(e), Box::new(i)),
                span,
            };
        }
        Ok((e, d))
    }

    fn primary(&self, p: Pair<Rule>) -> Res<(Expr, usize)> {
        let span = self.span(&p);
        let leaf = |kind| Ok((Expr { kind, span }, 1));
        match p.as_rule() {
            Rule::int_lit => leaf(ExprKind::Int(self.int(&p)?)),
            Rule::float_lit => match p.as_str().parse::<f64>() {
                Ok(v) if v.is_finite() => leaf(ExprKind::Float(v)),
                _ => Err(Diagnostic::error(
                    DiagKind::Limit,
                    span,
                    format!("number `{}` is not a finite 64-bit float", p.as_str()),
                )),
            },
            Rule::kw_true => leaf(ExprKind::Bool(true)),
            Rule::kw_false => leaf(ExprKind::Bool(false)),
            Rule::string => leaf(ExprKind::Str(self.string(p))),
            Rule::ident => leaf(ExprKind::Var(p.as_str().to_string())),
            Rule::paren => self.expr_depth(p.into_inner().next().expect("paren expr")),
            Rule::list => {
                let mut d = 0;
                let mut items = Vec::new();
                for x in p.into_inner() {
                    let (e, de) = self.expr_depth(x)?;
                    d = d.max(de);
                    items.push(e);
                }
                Ok((
                    Expr {
                        kind: ExprKind::List(items),
                        span,
                    },
                    d + 1,
                ))
            }
            Rule::fn_call => {
                let mut it = p.into_inner();
                let name = self.ident(it.next().expect("fn name"));
                let mut d = 0;
                let mut args = Vec::new();
                for x in it {
                    let (e, de) = self.expr_depth(x)?;
                    d = d.max(de);
                    args.push(e);
                }
                Ok((
                    Expr {
                        kind: ExprKind::Call(name, args),
                        span,
                    },
                    d + 1,
                ))
            }
            _ => {
                // if_expr: cond, then, else (an else-if chain nests another if_expr).
                let mut it = p.into_inner();
                let (c, d1) = self.expr_depth(it.next().expect("if cond"))?;
                let (t, d2) = self.expr_depth(it.next().expect("if then"))?;
                let e_pair = it.next().expect("if else");
                let (e, d3) = if e_pair.as_rule() == Rule::if_expr {
                    self.primary(e_pair)?
                } else {
                    self.expr_depth(e_pair)?
                };
                let d = d1.max(d2).max(d3) + 1;
                if d > MAX_EXPR_DEPTH {
                    return Err(self.too_deep(span));
                }
                Ok((
                    Expr {
                        kind: ExprKind::If(Box::new(c), Box::new(t), Box::new(e)),
                        span,
                    },
                    d,
                ))
            }
        }
    }
}

/// A parsed model invocation: `wrn(n = 4, k = 10, alpha = 0.25)`.
#[derive(Clone, Debug, PartialEq)]
pub struct CallSpec {
    /// Model name.
    pub name: Ident,
    /// Arguments (positional or named).
    pub args: Vec<Arg>,
    /// Whole invocation.
    pub span: Span,
}

/// Parses a model invocation such as `wrn(n = 4, k = 10)` (the parentheses are optional).
pub fn parse_call_spec(file: FileId, text: &str) -> Result<CallSpec, Diagnostic> {
    precheck(file, text)?;
    pest::set_error_detail(true);
    let top = OctParser::parse(Rule::call_spec, text)
        .map_err(|e| errors::syntax_error(file, text, e))?
        .next()
        .expect("call_spec yields one pair");
    let b = Builder { file };
    let span = b.span(&top);
    let mut it = top.into_inner();
    let name = b.ident(it.next().expect("call name"));
    let args = match it.next() {
        Some(a) if a.as_rule() == Rule::args => b.args(a)?,
        _ => Vec::new(),
    };
    Ok(CallSpec { name, args, span })
}

/// Parses one `name=value` override as given to `--set`.
pub fn parse_set_spec(file: FileId, text: &str) -> Result<Arg, Diagnostic> {
    precheck(file, text)?;
    pest::set_error_detail(true);
    let top = OctParser::parse(Rule::set_spec, text)
        .map_err(|e| errors::syntax_error(file, text, e))?
        .next()
        .expect("set_spec yields one pair");
    let b = Builder { file };
    let span = b.span(&top);
    let mut it = top.into_inner();
    let name = b.ident(it.next().expect("set name"));
    let value = b.expr(it.next().expect("set value"))?;
    Ok(Arg {
        name: Some(name),
        value,
        span,
    })
}
