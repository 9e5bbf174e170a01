//! The front end: text → tokens (logos) → syntax tree (lalrpop) → IR ([`lower`]).

pub mod ast;
pub mod lexer;
mod lower;

use lalrpop_util::{lalrpop_mod, ParseError};

use crate::diag::{Diag, Diagnostics, Span};
use crate::ir::graph::Module;
use crate::ops::OpKind;
use crate::quant::OP_CHECKS;
use lexer::{LexError, SpannedLexError, Token};

lalrpop_mod!(
    #[allow(clippy::all, clippy::pedantic, unused_parens)]
    grammar,
    "/qir.rs"
);

use lower::Sink;
pub use lower::{lower_module, lower_module_with_spans};

/// Parses QIR text into a syntax tree.
pub fn parse(source: &str) -> Result<ast::Module<'_>, Diagnostics> {
    let mut sink = Sink::collect();
    parse_into(source, &mut sink)
}

fn parse_into<'s>(source: &'s str, sink: &mut Sink<'s>) -> Result<ast::Module<'s>, Diagnostics> {
    grammar::ModuleParser::new().parse(sink, lexer::tokens(source)).map_err(|e| vec![parse_error(source, e)])
}

/// Parses, lowers and verifies QIR text: the whole front end.
pub fn parse_module(source: &str, weights_dir: Option<&std::path::Path>) -> Result<Module, Diagnostics> {
    // Lower while parsing; valid input ends here.
    let mut sink = Sink::lower(source, weights_dir);
    if let Ok(ast) = parse_into(source, &mut sink) {
        if let Some(module) = sink.finish(&ast) {
            if !crate::ir::verifier::verify(&module, OP_CHECKS).iter().any(Diag::is_error) {
                return Ok(module);
            }
        }
    }
    // Something is wrong: parse the whole tree, so that lowering sees every declaration and
    // definition and the diagnostics can point at all of them.
    let ast = parse(source)?;
    let module = lower_module(&ast, weights_dir)?;
    if crate::ir::verifier::verify(&module, OP_CHECKS).iter().any(Diag::is_error) {
        // Lower again recording where each op's parts were written, so that the errors point
        // at the exact operand, attribute or type.
        let (module, spans) = lower_module_with_spans(&ast, weights_dir)?;
        return Err(crate::ir::verifier::verify_with_spans(&module, &spans, OP_CHECKS));
    }
    Ok(module)
}

fn parse_error(source: &str, error: ParseError<usize, Token<'_>, SpannedLexError>) -> Diag {
    match error {
        ParseError::InvalidToken { location } => {
            Diag::error("invalid token").at(Span::new(location, location + 1), "not valid here")
        }
        ParseError::UnrecognizedEof { location, expected } => {
            let unclosed = unclosed_delimiters(source);
            let Some(last) = last_token_end(source) else {
                return Diag::error("expected a module, but the file has none")
                    .at(Span::new(0, source.len().min(source.find('\n').unwrap_or(source.len()))), "no QIR text here")
                    .help("a QIR file holds one `module @name { ... }`");
            };
            // Point at the last token so the label lands on a visible line.
            let at = location.min(last).saturating_sub(1);
            let mut d = Diag::error("unexpected end of input").at(Span::new(at, at + 1), "the text ends here");
            // Innermost first: the one most likely left open by mistake.
            for (span, open) in unclosed.iter().rev().take(3) {
                d = d.with(*span, format!("this `{open}` is not closed"));
            }
            d.note(expected_note(&expected))
        }
        ParseError::UnrecognizedToken { token: (l, token, r), expected } if expected.is_empty() => {
            after_module(source, l, r, &token)
        }
        ParseError::UnrecognizedToken { token: (l, token, r), expected } => {
            let label = match expected.len() {
                1..=3 => format!("expected {}", expected_list(&expected, "or")),
                _ => "unexpected here".to_string(),
            };
            let mut d = Diag::error(format!("unexpected {}", token.describe())).at(Span::new(l, r), label);
            d = d.note(expected_note(&expected));
            hint_for(d, &token, &expected)
        }
        ParseError::ExtraToken { token: (l, token, r) } => after_module(source, l, r, &token),
        ParseError::User { error } => lex_error(source, error),
    }
}

/// A token after the module's closing brace.
fn after_module(source: &str, l: usize, r: usize, token: &Token<'_>) -> Diag {
    let mut d = Diag::error(format!("unexpected {} after the module", token.describe()))
        .at(Span::new(l, r), "the module has already ended");
    if let Some(close) = module_end(source, l) {
        d = d.with(close, "the module ends here");
    }
    match token {
        Token::Module => d
            .help("a file holds one `module { ... }`")
            .note("to keep several cases in one file, separate them with `// -----` and pass --split-input-file"),
        Token::RBrace => d.help("this `}` has no matching `{`; remove it"),
        _ => d.help("a file holds one `module { ... }`"),
    }
}

/// The span of the last `}` before `before` that closes the outermost brace.
fn module_end(source: &str, before: usize) -> Option<Span> {
    let mut depth = 0usize;
    let mut end = None;
    for (l, token, r) in lexer::tokens(source).flatten() {
        if l >= before {
            break;
        }
        match token {
            Token::LBrace => depth += 1,
            Token::RBrace => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    end = Some(Span::new(l, r));
                }
            }
            _ => {}
        }
    }
    end
}

/// The end offset of the last token, or `None` when there is none.
fn last_token_end(source: &str) -> Option<usize> {
    lexer::tokens(source).flatten().last().map(|(_, _, r)| r)
}

/// Opening delimiters without a closing one, outermost first.
fn unclosed_delimiters(source: &str) -> Vec<(Span, char)> {
    let mut stack: Vec<(Span, char)> = Vec::new();
    for (l, token, r) in lexer::tokens(source).flatten() {
        let (open, close) = match token {
            Token::LBrace => (Some('{'), None),
            Token::LBracket => (Some('['), None),
            Token::LParen => (Some('('), None),
            Token::RBrace => (None, Some('{')),
            Token::RBracket => (None, Some('[')),
            Token::RParen => (None, Some('(')),
            _ => (None, None),
        };
        if let Some(c) = open {
            stack.push((Span::new(l, r), c));
        }
        if let Some(c) = close {
            if let Some(pos) = stack.iter().rposition(|(_, o)| *o == c) {
                stack.truncate(pos);
            }
        }
    }
    stack
}

fn lex_error(source: &str, e: SpannedLexError) -> Diag {
    let span = Span::new(e.start, e.end);
    let text = source.get(e.start..e.end).unwrap_or_default();
    match e.error {
        LexError::UnexpectedChar if text == "\u{feff}" && e.start == 0 => Diag::error("unexpected byte order mark")
            .at(span, "U+FEFF at the start of the file")
            .help("save the file as UTF-8 without a byte order mark"),
        LexError::UnexpectedChar if text == "\u{feff}" => Diag::error("unexpected byte order mark")
            .at(span, "U+FEFF (invisible) in the middle of the text")
            .help("remove it; it often comes from joining files that were saved with a byte order mark"),
        // Labelled as an empty span: the snippet shows the carriage return as a line break.
        LexError::UnexpectedChar if text == "\r" => Diag::error("carriage return without a line feed")
            .at(Span::new(e.start, e.start), "this line ends with a lone carriage return")
            .help("save the file with LF (Unix) or CRLF (Windows) line endings"),
        LexError::UnexpectedChar => {
            let shown = if text.chars().any(char::is_control) { text.escape_debug().to_string() } else { text.into() };
            let d = Diag::error(format!("unexpected character `{shown}`")).at(span, "not part of any QIR token");
            match text {
                "'" => d.help("strings are written with double quotes: \"...\""),
                "#" => d.help("comments start with `//`"),
                "%" => d.help("a value name follows `%` directly: `%x`, `%conv1`"),
                "@" => d.help("a symbol name follows `@` directly: `@main`"),
                _ => d,
            }
        }
        LexError::IntOutOfRange if text.starts_with("nan(") => Diag::error("NaN payload out of range")
            .at(span, "does not fit in 64 bits")
            .help("`nan(0x...)` holds the raw bits of the element type: at most 16 hex digits"),
        LexError::IntOutOfRange => Diag::error("integer literal out of range")
            .at(span, "does not fit in 64 bits")
            .note(format!("integers are signed 64-bit: {} to {}", i64::MIN, i64::MAX)),
        LexError::TooDeep => Diag::error("too deeply nested")
            .at(span, format!("more than {} brackets deep here", lexer::MAX_NESTING))
            .note(format!(
                "`[`, `{{` and `(` nest at most {} deep, counting the module's and the function's braces",
                lexer::MAX_NESTING
            )),
        LexError::UnterminatedString => Diag::error("unterminated string")
            .at(span, "this string has no closing quote")
            .help("strings end on the same line with `\"`"),
        LexError::BadEscape => {
            let (escape, label) = bad_escape(text)
                .map(|(at, len, label)| (Span::new(e.start + at, e.start + at + len), label))
                .unwrap_or((span, "in this string".to_string()));
            Diag::error("invalid escape in string")
                .at(escape, label)
                .with(span, "in this string")
                .help("the escapes are \\\", \\\\, \\n, \\t and \\u{XXXX}")
        }
    }
}

/// The first invalid escape in a string token (quotes included): its offset, length and what
/// is wrong with it.
fn bad_escape(text: &str) -> Option<(usize, usize, String)> {
    let body_end = text.len().saturating_sub(1);
    let mut chars = text.char_indices().skip(1).peekable();
    while let Some((i, c)) = chars.next() {
        if c != '\\' || i >= body_end {
            continue;
        }
        let Some((j, e)) = chars.next() else {
            return Some((i, 1, "a `\\` at the end of the string".into()));
        };
        match e {
            '"' | '\\' | 'n' | 't' => {}
            'u' => {
                let rest = &text[j + 1..body_end];
                let Some(close) = rest.strip_prefix('{').and_then(|r| r.find('}')) else {
                    return Some((i, 2, "`\\u` needs braces: `\\u{XXXX}`".into()));
                };
                let hex = &rest[1..1 + close];
                let len = 2 + close + 2;
                if hex.is_empty() {
                    return Some((i, len, "`\\u{}` needs a code point: `\\u{00e9}`".into()));
                }
                return match u32::from_str_radix(hex, 16) {
                    Err(_) => Some((i, len, format!("`{hex}` is not a hexadecimal number"))),
                    Ok(code) if char::from_u32(code).is_none() => {
                        Some((i, len, format!("U+{code:X} is not a Unicode scalar value")))
                    }
                    // Valid: keep scanning after it.
                    Ok(_) => {
                        for _ in 0..close + 2 {
                            chars.next();
                        }
                        continue;
                    }
                };
            }
            other => return Some((i, 1 + other.len_utf8(), format!("unknown escape `\\{other}`"))),
        }
    }
    None
}

fn expected_names(expected: &[String]) -> Vec<String> {
    expected.iter().map(|e| e.trim_matches('"').replace("\\\"", "\"")).map(|e| format!("`{e}`")).collect()
}

/// `` `a`, `b` or `c` ``
fn expected_list(expected: &[String], conjunction: &str) -> String {
    let names = expected_names(expected);
    match names.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} {conjunction} {last}", rest.join(", ")),
    }
}

fn expected_note(expected: &[String]) -> String {
    let names = expected_names(expected);
    match names.as_slice() {
        [] => "nothing more was expected".to_string(),
        [one] => format!("expected {one}"),
        _ => format!("expected one of: {}", names.join(", ")),
    }
}

/// Targeted hints for the mistakes people make most.
fn hint_for(d: Diag, token: &Token<'_>, expected: &[String]) -> Diag {
    let expects = |t: &str| expected.iter().any(|e| e.trim_matches('"') == t);
    match token {
        Token::Ident(name) if expects("return") && crate::diag::closest(name, ["return"]).is_some() => {
            d.help("did you mean `return`?")
        }
        Token::Ident(name) if expects("%value") && expects("return") && OpKind::from_name(name).is_some() => {
            d.help(format!("an op statement names its results first: `%y = {name}(...) : f32[4]`"))
        }
        Token::Ident(name) if expects("%value") => {
            d.help(format!("values are written with a `%` sigil: `%{}`", crate::diag::shown(name)))
        }
        Token::Int(_) | Token::Float(_) if expects("%value") => {
            d.help("constants are ops: `%c = const {value = 2.0} : f32[]`")
        }
        Token::Ident(_) if expects("=") && expects(",") => {
            d.help("an op statement starts with its results: `%y = relu(%x) : f32[4]`")
        }
        Token::RBrace if expects("return") => d.help("a function body ends with `return %value`"),
        Token::Value(_) if expects(",") => d.help("separate the items with `,`"),
        _ if expects("[") && expected.len() == 1 => {
            d.help("a tensor type lists its dimensions: `f32[1,3,224,224]`, or `f32[]` for a scalar")
        }
        _ => d,
    }
}
