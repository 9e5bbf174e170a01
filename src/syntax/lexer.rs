//! The QIR lexer (logos), adapted to lalrpop's `(start, token, end)` protocol.

use std::borrow::Cow;

use logos::Logos;

/// Why a piece of text is not a token.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum LexError {
    #[default]
    UnexpectedChar,
    IntOutOfRange,
    UnterminatedString,
    BadEscape,
}

/// A QIR token. Names keep their sigil-less text; literals are decoded.
#[derive(Logos, Clone, Debug, PartialEq)]
#[logos(error = LexError)]
#[logos(skip r"[ \t\r\n\f]+")]
#[logos(skip(r"//[^\n]*", allow_greedy = true))]
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

/// Tokens of `source` as lalrpop expects them.
pub fn tokens(source: &str) -> impl Iterator<Item = Result<(usize, Token<'_>, usize), SpannedLexError>> {
    Token::lexer(source).spanned().map(|(result, range)| match result {
        Ok(token) => Ok((range.start, token, range.end)),
        Err(error) => Err(SpannedLexError { error, start: range.start, end: range.end }),
    })
}

impl Token<'_> {
    /// How a token is named in "expected ..." messages.
    pub fn describe(&self) -> String {
        match self {
            Token::Value(v) => format!("value `%{v}`"),
            Token::Symbol(s) => format!("symbol `@{s}`"),
            Token::Ident(i) => format!("identifier `{i}`"),
            Token::Int(i) => format!("integer `{i}`"),
            Token::Float(f) => format!("float `{f}`"),
            Token::Str(s) => format!("string {s:?}"),
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
