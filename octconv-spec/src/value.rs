//! Values of the spec's expression language and their types.

use crate::source::Span;
use crate::syntax::ast::Ty;
use std::fmt;
use std::rc::Rc;

/// Deepest nesting of list values.
pub const MAX_VALUE_DEPTH: usize = 8;
/// Most scalars one value may hold (lists of lists count all their elements).
pub const MAX_VALUE_SIZE: usize = 4096;

/// A value: `int`, `float`, `bool`, string (only in `require` messages) or a list.
#[derive(Clone, Debug, PartialEq)]
pub enum Val {
    /// 64-bit integer.
    Int(i64),
    /// 64-bit float (always finite).
    Float(f64),
    /// Boolean.
    Bool(bool),
    /// String.
    Str(String),
    /// List (shared: copying a value is cheap).
    List(Rc<Vec<Val>>),
}

impl Val {
    /// A list value, or why it is too large or too deeply nested.
    pub fn list(items: Vec<Val>) -> Result<Val, String> {
        let depth = 1 + items.iter().map(Val::depth).max().unwrap_or(0);
        let size: usize = items.iter().map(Val::size).sum();
        if depth > MAX_VALUE_DEPTH {
            return Err(format!(
                "lists may be nested at most {MAX_VALUE_DEPTH} deep"
            ));
        }
        if size > MAX_VALUE_SIZE {
            return Err(format!(
                "a list value may hold at most {MAX_VALUE_SIZE} numbers, this one holds {size}"
            ));
        }
        Ok(Val::List(Rc::new(items)))
    }

    /// Nesting depth (0 for scalars).
    pub fn depth(&self) -> usize {
        match self {
            Val::List(v) => 1 + v.iter().map(Val::depth).max().unwrap_or(0),
            _ => 0,
        }
    }

    /// Number of scalars.
    pub fn size(&self) -> usize {
        match self {
            Val::List(v) => v.iter().map(Val::size).sum(),
            _ => 1,
        }
    }

    /// The type name for messages.
    pub fn type_name(&self) -> String {
        match self {
            Val::Int(_) => "int".into(),
            Val::Float(_) => "float".into(),
            Val::Bool(_) => "bool".into(),
            Val::Str(_) => "string".into(),
            Val::List(v) => match v.first() {
                Some(x) => format!("[{}; {}]", x.type_name(), v.len()),
                None => "[_; 0]".into(),
            },
        }
    }

    /// The value as an `f64` if it is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Val::Int(i) => Some(*i as f64),
            Val::Float(f) => Some(*f),
            _ => None,
        }
    }

    /// Converts to the declared type `ty` (widening ints to floats), or says why not.
    pub fn coerce(&self, ty: &Ty) -> Result<Val, String> {
        match (ty, self) {
            (Ty::Int, Val::Int(_))
            | (Ty::Float, Val::Float(_))
            | (Ty::Bool, Val::Bool(_))
            | (Ty::Str, Val::Str(_)) => Ok(self.clone()),
            (Ty::Float, Val::Int(i)) => Ok(Val::Float(*i as f64)),
            (Ty::List(elem, n), Val::List(items)) => {
                if items.len() != *n {
                    return Err(format!(
                        "expected a list of {n} elements, found {} elements",
                        items.len()
                    ));
                }
                items
                    .iter()
                    .map(|x| x.coerce(elem))
                    .collect::<Result<Vec<_>, _>>()
                    .map(|v| Val::List(Rc::new(v)))
            }
            (Ty::Int, Val::Float(_)) => Err(format!(
                "expected `int`, found `float` {self}; convert explicitly with `int(…)`"
            )),
            _ => Err(format!("expected `{ty}`, found `{}`", self.type_name())),
        }
    }
}

impl fmt::Display for Val {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Val::Int(i) => write!(f, "{i}"),
            Val::Float(x) => {
                if x.fract() == 0.0 && x.abs() < 1e15 {
                    write!(f, "{x:.1}")
                } else {
                    write!(f, "{x}")
                }
            }
            Val::Bool(b) => write!(f, "{b}"),
            Val::Str(s) => write!(f, "{s:?}"),
            Val::List(v) => {
                write!(f, "[")?;
                for (i, x) in v.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{x}")?;
                }
                write!(f, "]")
            }
        }
    }
}

/// A value with the place it was written (a literal, an argument, a computed expression), so that an
/// out-of-range α can be reported where the user typed it.
#[derive(Clone, Debug, PartialEq)]
pub struct Value {
    /// The value.
    pub val: Val,
    /// Where it comes from.
    pub origin: Span,
    /// For a list written as a literal: where each element comes from.
    pub elem_origins: Vec<Span>,
}

impl Value {
    /// A value written at `origin`.
    pub fn new(val: Val, origin: Span) -> Value {
        Value {
            val,
            origin,
            elem_origins: Vec::new(),
        }
    }

    /// The same provenance with a converted value.
    pub fn with_val(&self, val: Val) -> Value {
        Value {
            val,
            origin: self.origin,
            elem_origins: self.elem_origins.clone(),
        }
    }
}
