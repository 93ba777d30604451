//! Expressions and literals. Trees deeper than [`MAX_EXPR_DEPTH`] are refused while they are built:
//! every builder here returns an expression with its depth.

use super::{Builder, Res};
use crate::diag::{DiagKind, Diagnostic};
use crate::source::Span;
use crate::syntax::ast::{BinOp, Expr, ExprKind, UnOp};
use crate::syntax::{Rule, MAX_EXPR_DEPTH};
use pest::iterators::{Pair, Pairs};
use pest::pratt_parser::{Assoc, Op, PrattParser};
use std::sync::OnceLock;

/// An expression and the depth of its tree.
type Deep = (Expr, usize);

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

/// The binary operator of an infix rule.
fn bin_op(rule: Rule) -> BinOp {
    match rule {
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
    }
}

impl Builder {
    /// Builds an expression, refusing trees deeper than [`MAX_EXPR_DEPTH`].
    pub(super) fn expr(&self, p: Pair<Rule>) -> Res<Expr> {
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

    fn expr_depth(&self, p: Pair<Rule>) -> Res<Deep> {
        let whole = self.span(&p);
        self.check_prefix_runs(&p, whole)?;
        pratt()
            .map_primary(|x| self.postfix(x))
            .map_prefix(move |op, rhs| self.unary(op, rhs?, whole))
            .map_infix(move |lhs, op, rhs| self.binary(lhs?, op, rhs?, whole))
            .parse(p.into_inner())
    }

    /// pest's Pratt parser recurses once per prefix operator: refuse long runs before it runs.
    fn check_prefix_runs(&self, p: &Pair<Rule>, whole: Span) -> Res<()> {
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
        Ok(())
    }

    /// `-rhs` or `!rhs`; `whole` is the expression it stands in (where "too deep" points).
    fn unary(&self, op: Pair<Rule>, (rhs, d): Deep, whole: Span) -> Res<Deep> {
        if d + 1 > MAX_EXPR_DEPTH {
            return Err(self.too_deep(whole));
        }
        let span = self.span(&op).to(rhs.span);
        let op = if op.as_rule() == Rule::neg {
            UnOp::Neg
        } else {
            UnOp::Not
        };
        let kind = ExprKind::Unary(op, Box::new(rhs));
        Ok((Expr { kind, span }, d + 1))
    }

    /// `lhs op rhs`; `whole` is the expression it stands in (where "too deep" points).
    fn binary(&self, (lhs, dl): Deep, op: Pair<Rule>, (rhs, dr): Deep, whole: Span) -> Res<Deep> {
        let d = dl.max(dr) + 1;
        if d > MAX_EXPR_DEPTH {
            return Err(self.too_deep(whole));
        }
        let span = lhs.span.to(rhs.span);
        let kind = ExprKind::Binary(bin_op(op.as_rule()), Box::new(lhs), Box::new(rhs));
        Ok((Expr { kind, span }, d))
    }

    /// A primary with its `[i]` indexes.
    fn postfix(&self, p: Pair<Rule>) -> Res<Deep> {
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

    fn primary(&self, p: Pair<Rule>) -> Res<Deep> {
        let span = self.span(&p);
        let leaf = |kind| Ok((Expr { kind, span }, 1));
        match p.as_rule() {
            Rule::int_lit => leaf(ExprKind::Int(self.int(&p)?)),
            Rule::float_lit => leaf(ExprKind::Float(self.float(&p)?)),
            Rule::kw_true => leaf(ExprKind::Bool(true)),
            Rule::kw_false => leaf(ExprKind::Bool(false)),
            Rule::string => leaf(ExprKind::Str(self.string(p))),
            Rule::ident => leaf(ExprKind::Var(p.as_str().to_string())),
            Rule::paren => self.expr_depth(p.into_inner().next().expect("paren expr")),
            Rule::list => {
                let (items, d) = self.exprs(p.into_inner())?;
                let kind = ExprKind::List(items);
                Ok((Expr { kind, span }, d + 1))
            }
            Rule::fn_call => {
                let mut it = p.into_inner();
                let name = self.ident(it.next().expect("fn name"));
                let (args, d) = self.exprs(it)?;
                let kind = ExprKind::Call(name, args);
                Ok((Expr { kind, span }, d + 1))
            }
            _ => self.if_expr(span, p),
        }
    }

    /// The items of a list or the arguments of a function call, and the deepest of them (0 if none).
    fn exprs(&self, pairs: Pairs<Rule>) -> Res<(Vec<Expr>, usize)> {
        let mut d = 0;
        let mut items = Vec::new();
        for x in pairs {
            let (e, de) = self.expr_depth(x)?;
            d = d.max(de);
            items.push(e);
        }
        Ok((items, d))
    }

    /// `if cond { then } else { else }`: cond, then, else (an else-if chain nests another if_expr).
    fn if_expr(&self, span: Span, p: Pair<Rule>) -> Res<Deep> {
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
        let kind = ExprKind::If(Box::new(c), Box::new(t), Box::new(e));
        Ok((Expr { kind, span }, d))
    }

    /// An integer literal (`_` separators allowed) that fits in 64 bits.
    pub(super) fn int(&self, p: &Pair<Rule>) -> Res<i64> {
        p.as_str().replace('_', "").parse::<i64>().map_err(|_| {
            Diagnostic::error(
                DiagKind::Limit,
                self.span(p),
                format!("integer literal `{}` does not fit in 64 bits", p.as_str()),
            )
        })
    }

    /// A float literal that is finite as a 64-bit float.
    fn float(&self, p: &Pair<Rule>) -> Res<f64> {
        match p.as_str().parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(v),
            _ => Err(Diagnostic::error(
                DiagKind::Limit,
                self.span(p),
                format!("number `{}` is not a finite 64-bit float", p.as_str()),
            )),
        }
    }
}
