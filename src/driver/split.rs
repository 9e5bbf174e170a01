//! `--split-input-file`: the cases of one file, separated by `// -----` lines.
//!
//! A case is a slice of the file with its byte offset and first line, not a copy padded with
//! the lines before it: splitting costs the size of the file, however many cases it has, and
//! diagnostics on a case are moved to the whole file's coordinates with [`Case::place`].

use crate::diag::{Diag, Diagnostics, Span};

use super::SPLIT_MARKER;

/// One case of the input (the whole input when it is not split).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Case<'s> {
    /// The case's text. After the first case it starts with its `// -----` line (a comment).
    pub text: &'s str,
    /// Byte offset of `text` in the whole file.
    pub start: usize,
    /// 0-based line of the whole file `text` starts on.
    pub first_line: usize,
    /// Where the separators around it are, relative to `text`, for "empty case" errors.
    before: Option<Span>,
    after: Option<Span>,
}

impl<'s> Case<'s> {
    /// The whole file as one case.
    pub fn whole(source: &'s str) -> Case<'s> {
        Case { text: source, start: 0, first_line: 0, before: None, after: None }
    }

    /// Whether this is the whole input (not split).
    pub fn is_whole(&self) -> bool {
        self.before.is_none() && self.after.is_none()
    }

    /// Moves diagnostics on `text` to the whole file's coordinates.
    pub fn place(&self, diags: Diagnostics) -> Diagnostics {
        diags.into_iter().map(|d| d.shifted(self.start)).collect()
    }

    /// An error (relative to `text`) when a split case holds no QIR at all: a separator at the
    /// start or end of the file, or two in a row.
    pub fn empty_case_error(&self) -> Option<Diagnostics> {
        let d = match (self.before, self.after) {
            (Some(before), Some(after)) => Diag::error("two `// -----` separators with no case between them")
                .at(after, "second separator")
                .with(before, "first separator")
                .help("remove one of them"),
            (Some(before), None) => Diag::error("the file ends with a `// -----` separator")
                .at(before, "no case after this separator")
                .help("a separator goes between two cases: remove this one"),
            (None, Some(after)) => Diag::error("the file starts with a `// -----` separator")
                .at(after, "no case before this separator")
                .help("a separator goes between two cases: remove this one"),
            // Not split: the parser explains an empty file.
            (None, None) => return None,
        };
        crate::syntax::lexer::tokens(self.text).next().is_none().then(|| vec![d])
    }
}

/// Splits at `// -----` lines. Each case after the first starts with its separator line, so
/// that a case's text and its place in the file are one slice.
pub fn split_cases(source: &str) -> Vec<Case<'_>> {
    let mut cases = Vec::new();
    let mut case_start = 0;
    let mut case_line = 0;
    let mut after_separator = false;
    let mut offset = 0;
    for (line_no, line) in source.split_inclusive('\n').enumerate() {
        let line_start = offset;
        offset += line.len();
        if line.trim_end() != SPLIT_MARKER {
            continue;
        }
        let separator = |case_start: usize| {
            let at = line_start - case_start;
            Span::new(at, at + SPLIT_MARKER.len())
        };
        cases.push(Case {
            text: &source[case_start..line_start],
            start: case_start,
            first_line: case_line,
            before: after_separator.then(|| Span::new(0, SPLIT_MARKER.len())),
            after: Some(separator(case_start)),
        });
        after_separator = true;
        case_start = line_start;
        case_line = line_no;
    }
    cases.push(Case {
        text: &source[case_start..],
        start: case_start,
        first_line: case_line,
        before: after_separator.then(|| Span::new(0, SPLIT_MARKER.len())),
        after: None,
    });
    cases
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cases_are_slices_with_their_place() {
        let source = "a\n// -----\nb\nc\n// -----\nd";
        let cases = split_cases(source);
        let texts: Vec<&str> = cases.iter().map(|c| c.text).collect();
        assert_eq!(texts, ["a\n", "// -----\nb\nc\n", "// -----\nd"]);
        assert_eq!(cases.iter().map(|c| (c.start, c.first_line)).collect::<Vec<_>>(), [(0, 0), (2, 1), (15, 4)]);
    }

    #[test]
    fn a_trailing_separator_is_an_empty_case() {
        let cases = split_cases("module\n// -----\n");
        let error = cases[1].empty_case_error().expect("empty case");
        assert_eq!(error[0].message, "the file ends with a `// -----` separator");
        assert!(cases[0].empty_case_error().is_none());
        assert!(Case::whole("").empty_case_error().is_none());
    }
}
