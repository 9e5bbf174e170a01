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

use crate::diag::{closest, shown, Diag, Span};

use super::split::Case;

/// One `expected-…` comment.
#[derive(Clone, Debug)]
pub struct Expectation {
    pub severity: Severity,
    /// 0-based line the diagnostic must be on; `None` for `@unknown`.
    pub line: Option<usize>,
    pub text: String,
    /// Where the comment is, to report an unmet expectation.
    pub span: Span,
    /// 0-based line of the comment itself, to suggest the right `@+N`.
    pub comment_line: usize,
}

/// Finds every expectation comment in `case`, or a diagnostic for a malformed one. Spans and
/// lines are the whole file's.
pub fn parse_expectations(case: &Case<'_>) -> Result<Vec<Expectation>, Diag> {
    let mut out = Vec::new();
    let mut offset = case.start;
    let lines = case.text.matches('\n').count() + 1;
    for (line_no, line) in case.text.split_inclusive('\n').enumerate() {
        let line_no = case.first_line + line_no;
        let line_start = offset;
        offset += line.len();
        let Some(comment) = line.find("//") else {
            continue;
        };
        // Byte offset in the file of a suffix of `line`.
        let at = |rest: &str| line_start + (line.len() - rest.len());
        let line_end = line_start + line.trim_end().len();
        let mut rest = &line[comment..];
        while let Some(pos) = rest.find("expected-") {
            let start = at(rest) + pos;
            let after = &rest[pos + "expected-".len()..];
            let kind_len = after.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(after.len());
            let (kind, after) = after.split_at(kind_len);
            let severity = match kind {
                "error" => Severity::Error,
                "warning" => Severity::Warning,
                // Prose that happens to contain "expected-".
                _ if !(after.starts_with('@') || after.trim_start().starts_with("{{")) => {
                    rest = after;
                    continue;
                }
                _ => {
                    let d = Diag::error(format!("unknown expectation `expected-{}`", shown(kind)))
                        .at(Span::new(start, at(after)), "not checked by qc")
                        .note("qc checks `expected-error` and `expected-warning`; it reports no notes or remarks");
                    return Err(match closest(kind, ["error", "warning"]) {
                        Some(best) => d.help(format!("did you mean `expected-{best}`?")),
                        None => d,
                    });
                }
            };
            let whole = Span::new(start, line_end);
            let bad = |span: Span, label: &str, msg: &str| {
                Diag::error(format!("malformed expectation: {msg}")).at(span, label).with(whole, "in this expectation")
            };
            let (target, after) = match after.strip_prefix('@') {
                None => (Some(line_no), after),
                Some(a) => {
                    let end = a.find(|c: char| c.is_whitespace() || c == '{').unwrap_or(a.len());
                    let (spec, a) = a.split_at(end);
                    let spec_span = Span::new(at(a) - spec.len() - 1, at(a));
                    let target = match spec {
                        "unknown" => None,
                        _ => {
                            let delta: i64 = spec.parse().map_err(|_| {
                                bad(spec_span, "not a line offset", "expected `@+N`, `@-N` or `@unknown`")
                            })?;
                            // Within this case: a diagnostic is never reported on another one.
                            let first = case.first_line as i64;
                            let last = first + lines as i64 - 1;
                            let (before, after_end) = if case.is_whole() {
                                (
                                    "the target line is before the start of the file",
                                    "the target line is after the end of the file",
                                )
                            } else {
                                (
                                    "the target line is before the start of this case",
                                    "the target line is after the end of this case",
                                )
                            };
                            match (line_no as i64).checked_add(delta) {
                                Some(target) if target < first => {
                                    return Err(bad(spec_span, "before the first line", before))
                                }
                                Some(target) if target <= last => Some(target as usize),
                                _ => return Err(bad(spec_span, "after the last line", after_end)),
                            }
                        }
                    };
                    (target, a)
                }
            };
            let after = after.trim_start();
            let Some(body) = after.strip_prefix("{{") else {
                let next = Span::new(at(after), (at(after) + 1).min(line_end).max(at(after)));
                return Err(bad(next, "expected `{{` here", "expected `{{message}}`"));
            };
            let Some(close) = body.find("}}") else {
                return Err(bad(Span::new(at(after), at(after) + 2), "this `{{` has no closing `}}`", "missing `}}`"));
            };
            if body[..close].trim().is_empty() {
                return Err(bad(
                    Span::new(at(after), at(body) + close + 2),
                    "an empty message would match anything",
                    "the expected message is empty",
                ));
            }
            out.push(Expectation {
                severity,
                line: target,
                text: body[..close].to_string(),
                span: Span::new(start, at(body) + close + 2),
                comment_line: line_no,
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

/// Matches produced diagnostics against expectations, all in the whole file's coordinates.
/// Returns the diagnostics to report: each unexpected one, plus an error for each expectation
/// nothing met. Empty means success.
pub fn check(case: &Case<'_>, expectations: Vec<Expectation>, produced: Vec<Diag>) -> Vec<Diag> {
    // Line starts in the whole file, counted over this case only.
    let line_starts: Vec<usize> =
        std::iter::once(case.start).chain(case.text.match_indices('\n').map(|(i, _)| case.start + i + 1)).collect();
    let file_line = |offset: usize| case.first_line + line_of(&line_starts, offset);
    let mut pending: Vec<Option<Expectation>> = expectations.into_iter().map(Some).collect();
    // Unmatched diagnostics with the line they are on.
    let mut unexpected: Vec<(Option<usize>, Diag)> = Vec::new();
    for diag in produced {
        let line = diag.primary.as_ref().map(|(span, _)| file_line(span.start as usize));
        let hit = pending.iter_mut().find(|e| {
            e.as_ref().is_some_and(|e| e.severity == diag.severity && e.line == line && diag.message.contains(&e.text))
        });
        match hit {
            Some(slot) => *slot = None,
            None => unexpected.push((line, diag)),
        }
    }
    let mut report = Vec::new();
    for (_, diag) in &unexpected {
        let mut d = diag.clone();
        d.message = format!("unexpected {}: {}", severity_name(d.severity), d.message);
        report.push(d);
    }
    for e in pending.into_iter().flatten() {
        let mut d = Diag::error(format!("expected {} was not produced: {{{{{}}}}}", severity_name(e.severity), e.text))
            .at(e.span, "this expectation was not met");
        // Say what came closest: the same message elsewhere, or another message on the line.
        let same_text = unexpected.iter().find(|(_, u)| u.severity == e.severity && u.message.contains(&e.text));
        if let Some((line, _)) = same_text {
            d = match line {
                Some(line) => {
                    let delta = *line as i64 - e.comment_line as i64;
                    let target = match delta {
                        0 => String::new(),
                        d if d > 0 => format!("@+{d}"),
                        d => format!("@{d}"),
                    };
                    d.note(format!("this message was reported on line {}", line + 1))
                        .help(format!("write `expected-{}{target}`", severity_name(e.severity)))
                }
                None => d
                    .note("this message was reported without a location")
                    .help(format!("write `expected-{}@unknown`", severity_name(e.severity))),
            };
        } else if let Some((_, other)) = unexpected.iter().find(|(line, _)| *line == e.line && e.line.is_some()) {
            d = d.note(format!(
                "line {} has {}: {}",
                e.line.unwrap_or(0) + 1,
                severity_name(other.severity),
                other.message
            ));
        } else if let Some(line) = e.line {
            d = d.note(format!("nothing was reported on line {}", line + 1));
        }
        report.push(d);
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
