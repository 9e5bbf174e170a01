//! `--verify-diagnostics`: expected diagnostics written as comments in the input, checked
//! against the ones qc produces, in the style of MLIR's `-verify-diagnostics`.
//!
//! ```text
//! // expected-error@+1 {{unknown op `rleu`}}
//! %y = rleu(%x) : f32[4]
//! ```
//! `@+N`/`@-N` point N lines below/above the comment, no suffix means the comment's own line,
//! `@unknown` matches a diagnostic without a location. The text must occur in the message.

use codespan_reporting::diagnostic::Severity;

use crate::diag::{Diag, Span};

/// One `expected-…` comment.
#[derive(Clone, Debug)]
pub struct Expectation {
    pub severity: Severity,
    /// 0-based line the diagnostic must be on; `None` for `@unknown`.
    pub line: Option<usize>,
    pub text: String,
    /// Where the comment is, to report an unmet expectation.
    pub span: Span,
}

/// Finds every expectation comment in `source`, or a diagnostic for a malformed one.
pub fn parse_expectations(source: &str) -> Result<Vec<Expectation>, Diag> {
    let mut out = Vec::new();
    let mut offset = 0;
    for (line_no, line) in source.split_inclusive('\n').enumerate() {
        let line_start = offset;
        offset += line.len();
        let Some(comment) = line.find("//") else {
            continue;
        };
        let mut rest = &line[comment..];
        while let Some(pos) = rest.find("expected-") {
            let start = line_start + (line.len() - rest.len()) + pos;
            let after = &rest[pos + "expected-".len()..];
            let (severity, after) = if let Some(a) = after.strip_prefix("error") {
                (Severity::Error, a)
            } else if let Some(a) = after.strip_prefix("warning") {
                (Severity::Warning, a)
            } else {
                rest = after;
                continue;
            };
            let bad = |msg: &str| {
                Diag::error(format!("malformed expectation: {msg}"))
                    .at(Span::new(start, line_start + line.trim_end().len()), "here")
            };
            let (target, after) = match after.strip_prefix('@') {
                None => (Some(line_no), after),
                Some(a) => {
                    let end = a.find(|c: char| c.is_whitespace() || c == '{').unwrap_or(a.len());
                    let (spec, a) = a.split_at(end);
                    let target = match spec {
                        "unknown" => None,
                        _ => {
                            let delta: i64 = spec.parse().map_err(|_| bad("expected `@+N`, `@-N` or `@unknown`"))?;
                            let target = line_no as i64 + delta;
                            if target < 0 {
                                return Err(bad("the target line is before the start of the file"));
                            }
                            Some(target as usize)
                        }
                    };
                    (target, a)
                }
            };
            let after = after.trim_start();
            let body = after.strip_prefix("{{").ok_or_else(|| bad("expected `{{message}}`"))?;
            let close = body.find("}}").ok_or_else(|| bad("missing `}}`"))?;
            out.push(Expectation {
                severity,
                line: target,
                text: body[..close].to_string(),
                span: Span::new(start, body.as_ptr() as usize - source.as_ptr() as usize + close + 2),
            });
            rest = &body[close + 2..];
        }
    }
    Ok(out)
}

/// 0-based line of a byte offset.
fn line_of(line_starts: &[usize], offset: usize) -> usize {
    line_starts.partition_point(|&s| s <= offset).saturating_sub(1)
}

/// Matches produced diagnostics against expectations. Returns the diagnostics to report: each
/// unexpected one, plus an error for each expectation nothing met. Empty means success.
pub fn check(source: &str, expectations: Vec<Expectation>, produced: Vec<Diag>) -> Vec<Diag> {
    let line_starts: Vec<usize> = std::iter::once(0).chain(source.match_indices('\n').map(|(i, _)| i + 1)).collect();
    let mut pending: Vec<Option<Expectation>> = expectations.into_iter().map(Some).collect();
    let mut report = Vec::new();
    for diag in produced {
        let line = diag.primary.as_ref().map(|(span, _)| line_of(&line_starts, span.start as usize));
        let hit = pending.iter_mut().find(|e| {
            e.as_ref().is_some_and(|e| e.severity == diag.severity && e.line == line && diag.message.contains(&e.text))
        });
        match hit {
            Some(slot) => *slot = None,
            None => {
                let mut d = diag;
                d.message = format!("unexpected {}: {}", severity_name(d.severity), d.message);
                report.push(d);
            }
        }
    }
    for e in pending.into_iter().flatten() {
        report.push(
            Diag::error(format!("expected {} was not produced: {{{{{}}}}}", severity_name(e.severity), e.text))
                .at(e.span, "this expectation was not met"),
        );
    }
    report
}

fn severity_name(s: Severity) -> &'static str {
    match s {
        Severity::Warning => "warning",
        Severity::Note => "note",
        Severity::Help => "help",
        _ => "error",
    }
}
