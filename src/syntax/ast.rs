//! The syntax tree: what the text says, with a span on every node. Names are borrowed from the
//! source; lowering resolves them.

use crate::diag::Span;

/// A node and where it was written.
#[derive(Clone, Debug, PartialEq)]
pub struct Spanned<T> {
    pub node: T,
    pub span: Span,
}

impl<T> Spanned<T> {
    pub fn new(node: T, start: usize, end: usize) -> Self {
        Spanned { node, span: Span::new(start, end) }
    }
}

pub type Name<'s> = Spanned<&'s str>;

#[derive(Clone, Debug)]
pub struct Module<'s> {
    pub name: Option<Name<'s>>,
    pub items: Vec<Item<'s>>,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub enum Item<'s> {
    Weights(Spanned<String>),
    QSpec { name: Name<'s>, dict: Spanned<Dict<'s>> },
    Func(Func<'s>),
}

#[derive(Clone, Debug)]
pub struct Func<'s> {
    pub name: Name<'s>,
    pub params: Vec<(Name<'s>, Type<'s>)>,
    pub results: Vec<Type<'s>>,
    pub results_span: Span,
    pub body: Vec<OpStmt<'s>>,
    /// `return %a, %b`: always the last statement.
    pub ret: Spanned<Vec<Name<'s>>>,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub struct OpStmt<'s> {
    pub results: Vec<Name<'s>>,
    pub op: Name<'s>,
    pub operands: Vec<Name<'s>>,
    pub attrs: Option<Spanned<Dict<'s>>>,
    pub types: Vec<Type<'s>>,
    pub loc: Option<Spanned<String>>,
    pub quant: Option<QuantClause<'s>>,
    pub meta: Option<Spanned<Dict<'s>>>,
    pub span: Span,
}

/// `f32[1,3,?,224]`
#[derive(Clone, Debug)]
pub struct Type<'s> {
    pub dtype: Name<'s>,
    pub dims: Vec<Spanned<Option<i64>>>,
    pub span: Span,
}

pub type Dict<'s> = Vec<(Name<'s>, Spanned<Value<'s>>)>;

/// An attribute value as written.
#[derive(Clone, Debug)]
pub enum Value<'s> {
    Int(i64),
    /// The literal's text (also `nan`, `inf`, `-inf`), parsed at the precision it is used at.
    Float(&'s str),
    NanBits(u64),
    Bool(bool),
    Str(String),
    Ident(&'s str),
    List(Vec<Spanned<Value<'s>>>),
    Dict(Dict<'s>),
}

/// `quant[in0, in1, ...] -> out`
#[derive(Clone, Debug)]
pub struct QuantClause<'s> {
    pub inputs: Vec<Spanned<SpecExpr<'s>>>,
    pub output: Option<Spanned<SpecExpr<'s>>>,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub enum SpecExpr<'s> {
    None,
    Named(Name<'s>),
    Inline(Dict<'s>),
    Shared(EdgeOrValue<'s>),
    Derived(Vec<EdgeOrValue<'s>>, Box<Spanned<SpecExpr<'s>>>),
}

/// `%v` or `%v -> %op`.
#[derive(Clone, Debug)]
pub struct EdgeOrValue<'s> {
    pub value: Name<'s>,
    pub consumer: Option<Name<'s>>,
}
