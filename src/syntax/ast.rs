//! The syntax tree: what the text says, with a span on every node. Names are borrowed from the
//! source; lowering resolves them.
//!
//! The parser keeps partial nodes on its stack in an enum as large as the largest node, and
//! moves that enum on every token, so the large, once-per-statement nodes (`OpStmt`, `Func`,
//! `QuantClause`) are boxed: it keeps the stack entries small. A statement's results, operands
//! and types are stored inline, so that most statements are one or two allocations.

use std::borrow::Cow;

use smallvec::SmallVec;

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

/// A list that usually has one element, stored inline.
pub type List1<T> = SmallVec<[T; 1]>;
/// A list that usually has up to three elements, stored inline.
pub type List3<T> = SmallVec<[T; 3]>;

#[derive(Clone, Debug)]
pub struct Module<'s> {
    pub name: Option<Name<'s>>,
    pub items: Vec<Item<'s>>,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub enum Item<'s> {
    /// `weights "path"`, with the `{bytes = …, xxh3 = "…"}` check qc writes beside its own files.
    Weights {
        path: Spanned<String>,
        check: Option<Spanned<Dict<'s>>>,
    },
    QSpec {
        name: Name<'s>,
        dict: Spanned<Dict<'s>>,
    },
    Func(Box<Func<'s>>),
}

#[derive(Clone, Debug)]
pub struct Func<'s> {
    pub head: FuncHead<'s>,
    /// Empty when the parser lowered the statements as it read them (see `lower::Sink`).
    pub body: Body<'s>,
    /// `return %a, %b`: always the last statement.
    pub ret: Spanned<Vec<Name<'s>>>,
    pub span: Span,
}

/// A function's statements, each boxed to keep the parser's stack entries small.
pub type Body<'s> = Vec<Box<OpStmt<'s>>>;

/// `func @name(%x: f32[4]) -> f32[4]`: what the body's statements are lowered against, so it is
/// its own node, complete before the first statement is read.
#[derive(Clone, Debug)]
pub struct FuncHead<'s> {
    pub name: Name<'s>,
    pub params: Vec<(Name<'s>, Type<'s>)>,
    pub results: Vec<Type<'s>>,
    pub results_span: Span,
}

#[derive(Clone, Debug)]
pub struct OpStmt<'s> {
    pub results: List1<Name<'s>>,
    pub op: Name<'s>,
    pub operands: List3<Name<'s>>,
    pub attrs: Option<Spanned<Dict<'s>>>,
    pub types: List1<Type<'s>>,
    /// Borrowed from the source unless the string has escapes.
    pub loc: Option<Spanned<Cow<'s, str>>>,
    pub quant: Option<Box<QuantClause<'s>>>,
    pub meta: Option<Box<Spanned<Dict<'s>>>>,
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
