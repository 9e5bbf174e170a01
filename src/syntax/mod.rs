//! The front end: text → tokens (logos) → syntax tree (lalrpop) → IR ([`lower`]).

pub mod ast;
pub mod lexer;
mod lower;

use lalrpop_util::{lalrpop_mod, ParseError};

use crate::diag::{Diag, Diagnostics, Span};
use crate::ir::graph::Module;
use lexer::{LexError, SpannedLexError, Token};

lalrpop_mod!(
    #[allow(clippy::all, clippy::pedantic, unused_parens)]
    grammar,
    "/qir.rs"
);

pub use lower::lower_module;

/// Parses QIR text into a syntax tree.
pub fn parse(source: &str) -> Result<ast::Module<'_>, Diagnostics> {
    grammar::ModuleParser::new().parse(lexer::tokens(source)).map_err(|e| vec![parse_error(source, e)])
}

/// Parses, lowers and verifies QIR text: the whole front end.
pub fn parse_module(source: &str, weights_dir: Option<&std::path::Path>) -> Result<Module, Diagnostics> {
    let ast = parse(source)?;
    let module = lower_module(&ast, weights_dir)?;
    let errors = crate::ir::verifier::verify(&module);
    if errors.iter().any(Diag::is_error) {
        return Err(errors);
    }
    Ok(module)
}

fn parse_error(source: &str, error: ParseError<usize, Token<'_>, SpannedLexError>) -> Diag {
    match error {
        ParseError::InvalidToken { location } => {
            Diag::error("invalid token").at(Span::new(location, location + 1), "not valid here")
        }
        ParseError::UnrecognizedEof { location, expected } => {
            // Point at the last character so the label lands on a visible line.
            let at = location.saturating_sub(1).min(source.len().saturating_sub(1));
            Diag::error("unexpected end of input")
                .at(Span::new(at, at + 1), "the text ends here")
                .note(expected_note(&expected))
        }
        ParseError::UnrecognizedToken { token: (l, token, r), expected } => {
            let mut d = Diag::error(format!("unexpected {}", token.describe())).at(Span::new(l, r), "unexpected here");
            d = d.note(expected_note(&expected));
            hint_for(d, &token, &expected)
        }
        ParseError::ExtraToken { token: (l, token, r) } => {
            Diag::error(format!("unexpected {} after the module", token.describe()))
                .at(Span::new(l, r), "the module has already ended")
                .help("a file holds one `module { ... }`")
        }
        ParseError::User { error } => lex_error(error),
    }
}

fn lex_error(e: SpannedLexError) -> Diag {
    let span = Span::new(e.start, e.end);
    match e.error {
        LexError::UnexpectedChar => Diag::error("unexpected character").at(span, "not part of any QIR token"),
        LexError::IntOutOfRange => Diag::error("integer literal out of range").at(span, "does not fit in 64 bits"),
        LexError::UnterminatedString => Diag::error("unterminated string")
            .at(span, "this string has no closing quote")
            .help("strings end on the same line with `\"`"),
        LexError::BadEscape => Diag::error("invalid escape in string")
            .at(span, "in this string")
            .help("the escapes are \\\", \\\\, \\n, \\t and \\u{XXXX}"),
    }
}

fn expected_note(expected: &[String]) -> String {
    let names: Vec<String> =
        expected.iter().map(|e| e.trim_matches('"').replace("\\\"", "\"")).map(|e| format!("`{e}`")).collect();
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
        Token::Ident(name) if expects("%value") => d.help(format!("values are written with a `%` sigil: `%{name}`")),
        Token::Int(_) | Token::Float(_) if expects("%value") => {
            d.help("constants are ops: `%c = const {value = 2.0} : f32[]`")
        }
        Token::Ident(_) if expects("=") && expects(",") => {
            d.help("an op statement starts with its results: `%y = relu(%x) : f32[4]`")
        }
        _ => d,
    }
}
