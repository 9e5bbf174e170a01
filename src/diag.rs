//! Diagnostics: byte spans, the error list every phase returns, and rendering with
//! codespan-reporting in rustc's style.
//!
//! Library code never prints: it returns [`Diagnostics`]; the driver renders them and picks the
//! exit status.

use codespan_reporting::diagnostic::{Diagnostic, Label, Severity};
use codespan_reporting::files::SimpleFiles;
use codespan_reporting::term;
use codespan_reporting::term::termcolor::{Buffer, WriteColor};

/// A byte range in one source file. `Span::NONE` marks IR built without source text.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    pub const NONE: Span = Span { start: u32::MAX, end: u32::MAX };

    pub fn new(start: usize, end: usize) -> Span {
        Span { start: start as u32, end: end as u32 }
    }

    pub fn is_none(self) -> bool {
        self == Span::NONE
    }

    pub fn range(self) -> std::ops::Range<usize> {
        self.start as usize..self.end as usize
    }

    /// The smallest span covering both.
    pub fn to(self, other: Span) -> Span {
        if self.is_none() {
            return other;
        }
        if other.is_none() {
            return self;
        }
        Span { start: self.start.min(other.start), end: self.end.max(other.end) }
    }
}

/// Identifies a source file among the ones the driver loaded.
pub type FileId = usize;

/// The source files of one run, for rendering.
pub type Files = SimpleFiles<String, String>;

/// One diagnostic being built: a message, labelled spans, notes.
#[derive(Clone, Debug)]
pub struct Diag {
    pub severity: Severity,
    pub message: String,
    pub primary: Option<(Span, String)>,
    pub secondary: Vec<(Span, String)>,
    pub notes: Vec<String>,
}

impl Diag {
    pub fn error(message: impl Into<String>) -> Diag {
        Diag {
            severity: Severity::Error,
            message: message.into(),
            primary: None,
            secondary: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn warning(message: impl Into<String>) -> Diag {
        Diag { severity: Severity::Warning, ..Diag::error(message) }
    }

    /// A remark that is neither an error nor a warning (`--explain-rewrites`).
    pub fn remark(message: impl Into<String>) -> Diag {
        Diag { severity: Severity::Note, ..Diag::error(message) }
    }

    /// Labels the fault; a label on `Span::NONE` is dropped.
    pub fn at(mut self, span: Span, label: impl Into<String>) -> Diag {
        if !span.is_none() {
            self.primary = Some((span, label.into()));
        }
        self
    }

    /// Adds a context label ("defined here").
    pub fn with(mut self, span: Span, label: impl Into<String>) -> Diag {
        if !span.is_none() {
            self.secondary.push((span, label.into()));
        }
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Diag {
        self.notes.push(note.into());
        self
    }

    pub fn help(self, help: impl Into<String>) -> Diag {
        let help = help.into();
        self.note(format!("help: {help}"))
    }

    /// Adds `help: did you mean ...?` when some candidate is close to `word`.
    pub fn suggest<'a>(self, word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Diag {
        match closest(word, candidates) {
            Some(best) => self.help(format!("did you mean `{best}`?")),
            None => self,
        }
    }

    /// The same diagnostic with every span moved `offset` bytes later: for text compiled out of
    /// a larger file (a `--split-input-file` case).
    pub fn shifted(mut self, offset: usize) -> Diag {
        let shift = |span: &mut Span| {
            if !span.is_none() {
                *span = Span::new(span.start as usize + offset, span.end as usize + offset);
            }
        };
        if let Some((span, _)) = &mut self.primary {
            shift(span);
        }
        for (span, _) in &mut self.secondary {
            shift(span);
        }
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity >= Severity::Error
    }

    pub fn to_codespan(&self, file: FileId) -> Diagnostic<FileId> {
        let mut labels = Vec::new();
        if let Some((span, msg)) = &self.primary {
            labels.push(Label::primary(file, span.range()).with_message(escape_controls(msg)));
        }
        for (span, msg) in &self.secondary {
            labels.push(Label::secondary(file, span.range()).with_message(escape_controls(msg)));
        }
        Diagnostic::new(self.severity)
            .with_message(escape_controls(&self.message))
            .with_labels(labels)
            .with_notes(self.notes.iter().map(|n| escape_controls(n)).collect())
    }
}

/// The diagnostics one phase produced; non-empty when returned as an error.
pub type Diagnostics = Vec<Diag>;

/// Renders diagnostics to a (possibly coloured) writer.
pub fn emit(out: &mut dyn WriteColor, files: &Files, file: FileId, diags: &[Diag]) -> std::io::Result<()> {
    let config = term::Config::default();
    for d in diags {
        // The renderer writes a few bytes at a time, and standard error is unbuffered: one
        // write per diagnostic, not one per character of a long source line.
        let mut buffer = if out.supports_color() { Buffer::ansi() } else { Buffer::no_color() };
        term::emit_to_write_style(&mut buffer, &config, files, &d.to_codespan(file)).map_err(std::io::Error::other)?;
        out.write_all(buffer.as_slice())?;
    }
    out.flush()
}

/// Renders diagnostics without colour, as tests snapshot them.
pub fn render(files: &Files, file: FileId, diags: &[Diag]) -> String {
    let mut out = codespan_reporting::term::termcolor::NoColor::new(Vec::new());
    // Writing into a Vec cannot fail; a file-lookup failure would mean a bad span, rendered as
    // the diagnostic text alone.
    if emit(&mut out, files, file, diags).is_err() {
        return diags.iter().map(|d| format!("error: {}\n", d.message)).collect();
    }
    String::from_utf8_lossy(&out.into_inner()).into_owned()
}

/// Edit distance with adjacent transpositions (optimal string alignment), for suggestions:
/// `rleu` is one edit from `relu`.
fn edit_distance(a: &[char], b: &[char]) -> usize {
    // Three rows: two back (for transpositions), one back, current.
    let mut prev2: Vec<usize> = vec![0; b.len() + 1];
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur: Vec<usize> = vec![0; b.len() + 1];
    for i in 1..=a.len() {
        cur[0] = i;
        for j in 1..=b.len() {
            let cost = (a[i - 1] != b[j - 1]) as usize;
            let mut d = (prev[j - 1] + cost).min(prev[j] + 1).min(cur[j - 1] + 1);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d = d.min(prev2[j - 2] + 1);
            }
            cur[j] = d;
        }
        std::mem::swap(&mut prev2, &mut prev);
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// Words longer than this (in characters) get no "did you mean": a typo of a name this long
/// is rare, and comparing it costs length² per candidate.
pub const SUGGEST_MAX_CHARS: usize = 64;

/// How many edit-distance cells one suggestion may compute over all its candidates (about 4M:
/// a few milliseconds). A graph with a million values still answers at once; past the budget
/// the best candidate found so far is kept.
const SUGGEST_BUDGET: usize = 1 << 22;

/// How many candidates one suggestion looks at (the first ones): a file with many errors
/// against a graph of a million values must not scan the graph once per error.
const SUGGEST_MAX_CANDIDATES: usize = 10_000;

/// The candidate closest to `word`, if close enough to be a plausible typo. A candidate that
/// differs only in case always qualifies. Bounded: see [`SUGGEST_MAX_CHARS`],
/// `SUGGEST_MAX_CANDIDATES` and `SUGGEST_BUDGET`.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    // A char is at most 4 bytes: a longer word cannot be within the cap.
    if word.len() > 4 * SUGGEST_MAX_CHARS {
        return None;
    }
    let chars: Vec<char> = word.chars().collect();
    if chars.len() > SUGGEST_MAX_CHARS {
        return None;
    }
    let limit = (chars.len() / 3).max(1);
    let lower = word.to_lowercase();
    let mut budget = SUGGEST_BUDGET;
    let mut best: Option<(usize, &str)> = None;
    let mut candidate_chars = Vec::new();
    for c in candidates.into_iter().take(SUGGEST_MAX_CANDIDATES) {
        // Cheap rejections first: the distance is at least the difference in length.
        if c == word || c.len() > 4 * (chars.len() + limit) {
            continue;
        }
        candidate_chars.clear();
        candidate_chars.extend(c.chars());
        if candidate_chars.len().abs_diff(chars.len()) > limit {
            continue;
        }
        let d = if c.to_lowercase() == lower {
            0
        } else {
            let cells = chars.len() * candidate_chars.len();
            if cells > budget {
                break;
            }
            budget -= cells;
            edit_distance(&chars, &candidate_chars)
        };
        if d <= limit && best.is_none_or(|b| (d, c) < b) {
            best = Some((d, c));
        }
    }
    best.map(|(_, c)| c)
}

/// How many characters of a long name a message shows.
const SHOWN_CHARS: usize = 48;

/// A name or literal as messages quote it: a long one is cut to its first characters with an
/// ellipsis and its length, so that a megabyte-long identifier gives a one-line message.
pub fn shown(text: &str) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(SHOWN_CHARS) {
        Some((cut, _)) => std::borrow::Cow::Owned(format!("{}… ({} bytes)", &text[..cut], text.len())),
        None => std::borrow::Cow::Borrowed(text),
    }
}

/// Message text with control characters escaped (`\u{1b}`), but for line breaks: a raw ESC
/// quoted from the input would drive the terminal.
fn escape_controls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() && c != '\n' {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// The text the renderer shows for a source file: control characters (but tab and line
/// endings) become `?`, byte for byte, so spans still fit and a raw ESC in the input cannot
/// drive the terminal; a carriage return without a line feed becomes a line feed, so the
/// snippet shows the line qc reports (the lexer rejects such line endings).
pub fn printable_source(source: &str) -> std::borrow::Cow<'_, str> {
    let clean = |c: char| !c.is_control() || c == '\t' || c == '\n' || c == '\r';
    if source.chars().all(clean) && !source.contains('\r') {
        return std::borrow::Cow::Borrowed(source);
    }
    let mut out = String::with_capacity(source.len());
    let mut chars = source.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' if chars.peek() != Some(&'\n') => out.push('\n'),
            c if clean(c) => out.push(c),
            c => out.extend(std::iter::repeat_n('?', c.len_utf8())),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// "did you mean `x`?" or, failing that, the list of what is accepted.
pub fn suggest<'a>(word: &str, candidates: impl Iterator<Item = &'a str> + Clone) -> String {
    match closest(word, candidates.clone()) {
        Some(best) => format!("did you mean `{best}`?"),
        None => format!("expected one of: {}", candidates.map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpositions_are_one_edit() {
        let distance = |a: &str, b: &str| edit_distance(&a.chars().collect::<Vec<_>>(), &b.chars().collect::<Vec<_>>());
        assert_eq!(distance("rleu", "relu"), 1);
        assert_eq!(distance("inptu", "input"), 1);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("kitten", "sitting"), 3);
    }

    #[test]
    fn closest_candidate() {
        assert_eq!(closest("rleu", ["relu", "relu6", "gelu"]), Some("relu"));
        assert_eq!(closest("F32", ["f32", "f64"]), Some("f32"));
        assert_eq!(closest("conv", ["linear", "matmul"]), None);
        // The word itself is never suggested.
        assert_eq!(closest("relu", ["relu"]), None);
    }

    #[test]
    fn long_words_get_no_suggestion_and_are_shown_cut() {
        let long = "a".repeat(SUGGEST_MAX_CHARS + 1);
        assert_eq!(closest(&long, [&long[1..]]), None);
        assert_eq!(shown(&long), format!("{}… ({} bytes)", &long[..SHOWN_CHARS], long.len()));
        assert_eq!(escape_controls("re\u{1b}lu\n"), "re\\u{1b}lu\n");
    }

    #[test]
    fn printable_source_keeps_offsets() {
        assert_eq!(printable_source("a\u{0}b\r\nc\rd\u{9b}"), "a?b\r\nc\nd??");
    }
}
