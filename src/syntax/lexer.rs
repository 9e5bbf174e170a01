//! The QIR lexer (logos), adapted to lalrpop's `(start, token, end)` protocol.

use std::borrow::Cow;

use logos::Logos;

use crate::diag::shown;

/// Why a piece of text is not a token.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum LexError {
    #[default]
    UnexpectedChar,
    IntOutOfRange,
    UnterminatedString,
    BadEscape,
    /// An opening bracket deeper than [`MAX_NESTING`].
    TooDeep,
}

/// How deep `[`, `{` and `(` may nest, counting the module's and the function's braces. Real
/// QIR nests a handful deep (a rank-6 tensor literal in an op's attributes is 9); the limit
/// bounds the recursion of lowering, printing and dropping nested values, which must fit the
/// 2 MB stack of a spawned thread in a debug build with room to spare.
pub const MAX_NESTING: usize = 256;

/// A QIR token. Names keep their sigil-less text; literals are decoded.
#[derive(Logos, Clone, Debug, PartialEq)]
#[logos(error = LexError)]
// A carriage return only as part of CRLF: a lone one (old Mac line endings) is an error rather
// than a line break the diagnostics' line numbers would not count.
#[logos(skip r"([ \t\n\f]|\r\n)+")]
#[logos(skip(r"//[^\r\n]*", allow_greedy = true))]
pub enum Token<'s> {
    #[token("module")]
    Module,
    #[token("func")]
    Func,
    #[token("return")]
    Return,
    #[token("weights")]
    Weights,
    #[token("qspec")]
    QSpec,
    #[token("loc")]
    Loc,
    #[token("meta")]
    Meta,
    #[token("quant")]
    Quant,
    #[token("shared")]
    Shared,
    #[token("derived")]
    Derived,
    #[token("none")]
    None,
    #[token("true")]
    True,
    #[token("false")]
    False,
    #[token("nan")]
    Nan,
    #[token("inf")]
    Inf,
    #[token("-inf")]
    NegInf,
    /// `nan(0x7fc00001)`: a NaN with explicit bits.
    #[regex(r"nan\(0x[0-9a-fA-F]+\)", |lex| nan_bits(lex.slice()))]
    NanBits(u64),

    /// `%name`: an SSA value.
    #[regex(r"%[A-Za-z0-9_][A-Za-z0-9_.]*", |lex| &lex.slice()[1..])]
    Value(&'s str),
    /// `@name`: a module, function or spec symbol.
    #[regex(r"@[A-Za-z_][A-Za-z0-9_.]*", |lex| &lex.slice()[1..])]
    Symbol(&'s str),
    /// Op names, attribute keys and dtypes; op overloads use a dot (`add.scalar`).
    #[regex(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")]
    Ident(&'s str),

    #[regex(r"-?[0-9]+", |lex| lex.slice().parse::<i64>().map_err(|_| LexError::IntOutOfRange))]
    Int(i64),
    /// A float literal needs a `.` or an exponent, so `1` stays an integer.
    #[regex(r"-?[0-9]+\.[0-9]+([eE][+-]?[0-9]+)?")]
    #[regex(r"-?[0-9]+[eE][+-]?[0-9]+")]
    Float(&'s str),
    /// Borrowed from the source unless it has escapes.
    #[regex(r#""([^"\\\n]|\\.)*""#, |lex| unescape(lex.slice()))]
    Str(Cow<'s, str>),
    #[regex(r#""([^"\\\n]|\\.)*"#, unterminated)]
    UnterminatedStr,

    #[token("(")]
    LParen,
    #[token(")")]
    RParen,
    #[token("[")]
    LBracket,
    #[token("]")]
    RBracket,
    #[token("{")]
    LBrace,
    #[token("}")]
    RBrace,
    #[token(",")]
    Comma,
    #[token(":")]
    Colon,
    #[token(";")]
    Semi,
    #[token("=")]
    Eq,
    #[token("->")]
    Arrow,
    #[token("?")]
    Question,
}

fn unterminated<'s>(_: &mut logos::Lexer<'s, Token<'s>>) -> Result<(), LexError> {
    Err(LexError::UnterminatedString)
}

fn nan_bits(slice: &str) -> Result<u64, LexError> {
    let hex = &slice["nan(0x".len()..slice.len() - 1];
    u64::from_str_radix(hex, 16).map_err(|_| LexError::IntOutOfRange)
}

/// Decodes `\"`, `\\`, `\n`, `\t` and `\u{XXXX}`; borrows when there is nothing to decode.
fn unescape(slice: &str) -> Result<Cow<'_, str>, LexError> {
    let body = &slice[1..slice.len() - 1];
    if !body.contains('\\') {
        return Ok(Cow::Borrowed(body));
    }
    let mut out = String::with_capacity(body.len());
    let mut chars = body.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('"') => out.push('"'),
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('u') => {
                let rest = chars.as_str();
                let close = rest.find('}').ok_or(LexError::BadEscape)?;
                let hex = rest.strip_prefix('{').ok_or(LexError::BadEscape)?;
                let code = u32::from_str_radix(&hex[..close - 1], 16).map_err(|_| LexError::BadEscape)?;
                out.push(char::from_u32(code).ok_or(LexError::BadEscape)?);
                chars = rest[close + 1..].chars();
            }
            _ => return Err(LexError::BadEscape),
        }
    }
    Ok(Cow::Owned(out))
}

/// A lexing failure with its byte range.
#[derive(Clone, Debug, PartialEq)]
pub struct SpannedLexError {
    pub error: LexError,
    pub start: usize,
    pub end: usize,
}

/// Tokens of `source` as lalrpop expects them. An opening bracket nested deeper than
/// [`MAX_NESTING`] is an error (the parser stops there, before the tree gets deep).
pub fn tokens(source: &str) -> impl Iterator<Item = Result<(usize, Token<'_>, usize), SpannedLexError>> {
    let mut depth = 0usize;
    Token::lexer(source).spanned().map(move |(result, range)| match result {
        Ok(token) => {
            match token {
                Token::LBrace | Token::LBracket | Token::LParen => {
                    depth += 1;
                    if depth > MAX_NESTING {
                        return Err(SpannedLexError { error: LexError::TooDeep, start: range.start, end: range.end });
                    }
                }
                Token::RBrace | Token::RBracket | Token::RParen => depth = depth.saturating_sub(1),
                _ => {}
            }
            Ok((range.start, token, range.end))
        }
        Err(error) => Err(SpannedLexError { error, start: range.start, end: range.end }),
    })
}

impl Token<'_> {
    /// How a token is named in "expected ..." messages.
    pub fn describe(&self) -> String {
        match self {
            Token::Value(v) => format!("value `%{}`", shown(v)),
            Token::Symbol(s) => format!("symbol `@{}`", shown(s)),
            Token::Ident(i) => format!("identifier `{}`", shown(i)),
            Token::Int(i) => format!("integer `{i}`"),
            Token::Float(f) => format!("float `{}`", shown(f)),
            Token::Str(s) => format!("string {:?}", shown(s)),
            other => format!("`{}`", other.spelling()),
        }
    }

    fn spelling(&self) -> &'static str {
        match self {
            Token::Module => "module",
            Token::Func => "func",
            Token::Return => "return",
            Token::Weights => "weights",
            Token::QSpec => "qspec",
            Token::Loc => "loc",
            Token::Meta => "meta",
            Token::Quant => "quant",
            Token::Shared => "shared",
            Token::Derived => "derived",
            Token::None => "none",
            Token::True => "true",
            Token::False => "false",
            Token::Nan => "nan",
            Token::Inf => "inf",
            Token::NegInf => "-inf",
            Token::NanBits(_) => "nan(0x…)",
            Token::LParen => "(",
            Token::RParen => ")",
            Token::LBracket => "[",
            Token::RBracket => "]",
            Token::LBrace => "{",
            Token::RBrace => "}",
            Token::Comma => ",",
            Token::Colon => ":",
            Token::Semi => ";",
            Token::Eq => "=",
            Token::Arrow => "->",
            Token::Question => "?",
            Token::UnterminatedStr => "\"",
            Token::Value(_) | Token::Symbol(_) | Token::Ident(_) | Token::Int(_) | Token::Float(_) | Token::Str(_) => {
                ""
            }
        }
    }
}
