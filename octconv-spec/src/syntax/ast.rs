//! The syntax tree of a `.oct` file. Every node carries the [`Span`] it was parsed from.

use crate::source::Span;

/// A name with its location.
#[derive(Clone, Debug, PartialEq)]
pub struct Ident {
    /// The name.
    pub name: String,
    /// Where it is written.
    pub span: Span,
}

/// One parsed file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct File {
    /// Items in order.
    pub items: Vec<Item>,
}

/// A top-level item.
#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    /// `use "path";`
    Use(UseItem),
    /// `model …` or `block …`
    Def(Def),
}

/// `use "path";`
#[derive(Clone, Debug, PartialEq)]
pub struct UseItem {
    /// The path as written (relative to the including file).
    pub path: String,
    /// Span of the string literal.
    pub path_span: Span,
    /// Span of the whole item.
    pub span: Span,
}

/// Whether a definition is a model (has an `input`, can be checked on its own) or a reusable block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DefKind {
    /// `model name(…) { … }`
    Model,
    /// `block name(…) { … }`
    Block,
}

impl DefKind {
    /// `"model"` or `"block"`.
    pub fn as_str(self) -> &'static str {
        match self {
            DefKind::Model => "model",
            DefKind::Block => "block",
        }
    }
}

/// A `model` or `block` definition.
#[derive(Clone, Debug, PartialEq)]
pub struct Def {
    /// Model or block.
    pub kind: DefKind,
    /// Its name.
    pub name: Ident,
    /// Typed parameters with optional defaults.
    pub params: Vec<Param>,
    /// Statements.
    pub body: Vec<Stmt>,
    /// `///` lines, without the slashes.
    pub docs: Vec<String>,
    /// Span of the whole definition.
    pub span: Span,
    /// Span of the closing brace (where "model ends on an octave pair" points).
    pub end_span: Span,
}

/// `name: type = default`
#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    /// Parameter name.
    pub name: Ident,
    /// Declared type.
    pub ty: Ty,
    /// Default value, evaluated with the earlier parameters in scope.
    pub default: Option<Expr>,
    /// `///` lines.
    pub docs: Vec<String>,
    /// Span of the whole parameter.
    pub span: Span,
}

/// A parameter type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ty {
    /// `int` (i64)
    Int,
    /// `float` (f64); ints are accepted and widened.
    Float,
    /// `bool`
    Bool,
    /// A string; only builtin layers' options have it (`upsample(mode = nearest)`).
    Str,
    /// `[T; N]`, a fixed-size list.
    List(Box<Ty>, usize),
}

impl std::fmt::Display for Ty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ty::Int => write!(f, "int"),
            Ty::Float => write!(f, "float"),
            Ty::Bool => write!(f, "bool"),
            Ty::Str => write!(f, "string"),
            Ty::List(t, n) => write!(f, "[{t}; {n}]"),
        }
    }
}

/// A statement in a model or block body.
#[derive(Clone, Debug, PartialEq)]
pub enum Stmt {
    /// `require cond, "message";`
    Require {
        /// Must evaluate to `true`.
        cond: Expr,
        /// Shown when it does not.
        message: Option<String>,
        /// Whole statement.
        span: Span,
    },
    /// `input [C, H, W];`
    Input {
        /// The dimensions.
        dims: Vec<Expr>,
        /// Whole statement.
        span: Span,
    },
    /// `expect [C, H, W];`, `expect [F];` or `expect high = [..], low = [..];`
    Expect {
        /// The expected shape.
        shape: ExpectShape,
        /// Whole statement.
        span: Span,
    },
    /// `let name = value;`
    Let {
        /// Bound name.
        name: Ident,
        /// Its value.
        value: Expr,
    },
    /// `repeat N { … }` or `repeat i in a..b { … }`
    Repeat {
        /// Loop variable of the range form.
        var: Option<Ident>,
        /// Start of the range (0 for the count form).
        from: Option<Expr>,
        /// Count, or end of the range (exclusive).
        to: Expr,
        /// Repeated statements.
        body: Vec<Stmt>,
        /// Span of the `repeat` header.
        span: Span,
    },
    /// `residual { … } shortcut { … }`
    Residual {
        /// Main branch.
        body: Vec<Stmt>,
        /// Explicit shortcut branch; `None` means identity or automatic projection.
        shortcut: Option<Vec<Stmt>>,
        /// `as name`: names the residual's scope and binds its output.
        label: Option<Label>,
        /// Span of the `residual` keyword (where mismatches point).
        span: Span,
    },
    /// `branches concat { { … }, { … } } as name;`: parallel bodies from one input, joined.
    Branches {
        /// `concat` or `add`, as written.
        join: Ident,
        /// One body per branch.
        bodies: Vec<Vec<Stmt>>,
        /// `as name`: names the construct's scope and binds its output.
        label: Option<Label>,
        /// From `branches` to the join's name.
        span: Span,
    },
    /// A layer or block call: `octconv(64, kernel = 3) as conv1;`
    Call(Call),
}

/// The shape in an `expect` statement.
#[derive(Clone, Debug, PartialEq)]
pub enum ExpectShape {
    /// `[C, H, W]` or `[F]`
    Plain(Vec<Expr>),
    /// `high = [C, H, W], low = [C, H, W]`
    Pair(Vec<Expr>, Vec<Expr>),
}

/// A call of a builtin layer or a user block.
#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    /// Layer or block name.
    pub name: Ident,
    /// Arguments in order.
    pub args: Vec<Arg>,
    /// `as label`: overrides the automatic layer name.
    pub label: Option<Label>,
    /// Whole call.
    pub span: Span,
}

/// One argument: positional (`64`) or named (`kernel = 3`).
/// `as name` or `as name[index]` after a call, `residual` or `branches`.
#[derive(Clone, Debug, PartialEq)]
pub struct Label {
    /// The name.
    pub name: Ident,
    /// The index expression of `name[index]`.
    pub index: Option<Expr>,
    /// From `name` to the closing `]`.
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Arg {
    /// The name of a named argument.
    pub name: Option<Ident>,
    /// The value.
    pub value: Expr,
    /// Whole argument.
    pub span: Span,
}

/// An expression.
#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    /// What it is.
    pub kind: ExprKind,
    /// Where.
    pub span: Span,
}

/// Expression forms.
#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    /// `42`
    Int(i64),
    /// `0.25`
    Float(f64),
    /// `true` / `false`
    Bool(bool),
    /// `"text"`
    Str(String),
    /// `[a, b, c]`
    List(Vec<Expr>),
    /// A variable.
    Var(String),
    /// `-x`, `!x`
    Unary(UnOp, Box<Expr>),
    /// `a + b` etc.
    Binary(BinOp, Box<Expr>, Box<Expr>),
    /// `list[i]`
    Index(Box<Expr>, Box<Expr>),
    /// `int(x)`, `min(a, b)` …
    Call(Ident, Vec<Expr>),
    /// `if c { a } else { b }`
    If(Box<Expr>, Box<Expr>, Box<Expr>),
}

/// Unary operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnOp {
    /// `-`
    Neg,
    /// `!`
    Not,
}

/// Binary operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    /// `||`
    Or,
    /// `&&`
    And,
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
    /// `%`
    Rem,
}

impl BinOp {
    /// The operator as written.
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Or => "||",
            BinOp::And => "&&",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Rem => "%",
        }
    }
}
