//! Diagnostics: byte spans, the error list every phase returns, and rendering with
//! codespan-reporting in rustc's style.
//!
//! Library code never prints: it returns [`Diagnostics`]; the driver renders them and picks the
//! exit status.

use codespan_reporting::diagnostic::{Diagnostic, Label, Severity};
use codespan_reporting::files::SimpleFiles;
use codespan_reporting::term::{self, termcolor::WriteColor};

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

    pub fn is_error(&self) -> bool {
        self.severity >= Severity::Error
    }

    pub fn to_codespan(&self, file: FileId) -> Diagnostic<FileId> {
        let mut labels = Vec::new();
        if let Some((span, msg)) = &self.primary {
            labels.push(Label::primary(file, span.range()).with_message(msg));
        }
        for (span, msg) in &self.secondary {
            labels.push(Label::secondary(file, span.range()).with_message(msg));
        }
        Diagnostic::new(self.severity).with_message(&self.message).with_labels(labels).with_notes(self.notes.clone())
    }
}

/// The diagnostics one phase produced; non-empty when returned as an error.
pub type Diagnostics = Vec<Diag>;

/// Renders diagnostics to a (possibly coloured) writer.
pub fn emit(out: &mut dyn WriteColor, files: &Files, file: FileId, diags: &[Diag]) -> std::io::Result<()> {
    let config = term::Config::default();
    for d in diags {
        term::emit_to_write_style(out, &config, files, &d.to_codespan(file)).map_err(std::io::Error::other)?;
    }
    Ok(())
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
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
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

/// The candidate closest to `word`, if close enough to be a plausible typo. A candidate that
/// differs only in case always qualifies.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(1);
    let lower = word.to_lowercase();
    candidates
        .into_iter()
        .filter(|c| *c != word)
        .map(|c| (if c.to_lowercase() == lower { 0 } else { edit_distance(word, c) }, c))
        .filter(|(d, _)| *d <= limit)
        .min()
        .map(|(_, c)| c)
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
        assert_eq!(edit_distance("rleu", "relu"), 1);
        assert_eq!(edit_distance("inptu", "input"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn closest_candidate() {
        assert_eq!(closest("rleu", ["relu", "relu6", "gelu"]), Some("relu"));
        assert_eq!(closest("F32", ["f32", "f64"]), Some("f32"));
        assert_eq!(closest("conv", ["linear", "matmul"]), None);
        // The word itself is never suggested.
        assert_eq!(closest("relu", ["relu"]), None);
    }
}
