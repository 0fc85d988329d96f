//! Diagnostics about a runbook file: what is wrong, where (<file:line:col>), and how to fix it.
//!
//! Every phase before execution reports problems as [`Diagnostic`]s; they are collected, not
//! thrown, so an author sees all of them at once. They are rendered once, at the edge, by miette.

use std::fmt;
use std::sync::Arc;

use miette::{GraphicalReportHandler, GraphicalTheme, LabeledSpan, NamedSource, SourceSpan};

use crate::model::Span;

/// A runbook's text and the name it is shown under.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// Path as given by the user.
    pub name: String,
    /// Full text.
    pub text: Arc<str>,
}

impl SourceFile {
    /// A file already read.
    pub fn new(name: impl Into<String>, text: impl Into<Arc<str>>) -> Self {
        Self {
            name: name.into(),
            text: text.into(),
        }
    }

    /// Byte offset of a 1-based line and column (characters).
    pub fn offset_of(&self, line: u64, column: u64) -> Option<usize> {
        if line == 0 {
            return None;
        }
        let mut offset = 0usize;
        for (i, l) in self.text.split_inclusive('\n').enumerate() {
            if i as u64 + 1 == line {
                let col = usize::try_from(column.saturating_sub(1)).ok()?;
                let within = l.char_indices().nth(col).map_or(l.len(), |(b, _)| b);
                return Some(offset + within);
            }
            offset += l.len();
        }
        Some(self.text.len())
    }

    /// 1-based line and column (characters) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (u64, u64) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() as u64 + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let col = before[line_start..].chars().count() as u64 + 1;
        (line, col)
    }

    /// The byte span of a spanned node: from its first character to the end of its token on
    /// that line (a scalar, or a key), so labels underline what was written.
    pub fn source_span(&self, span: Span) -> Option<SourceSpan> {
        let start = match span.offset {
            Some(o) => o,
            None => self.offset_of(span.line, span.column)?,
        };
        let rest = &self.text[start.min(self.text.len())..];
        let line_end = rest.find('\n').unwrap_or(rest.len());
        // Indentation (e.g. a stray tab): underline just the whitespace.
        let blank = rest[..line_end].len() - rest[..line_end].trim_start_matches([' ', '\t']).len();
        if blank > 0 {
            return Some(SourceSpan::new(start.into(), blank));
        }
        let token = rest[..line_end].trim_end();
        let token = token.split(" #").next().unwrap_or(token).trim_end();
        // A key (`timout: 5m`): underline the key. Plain scalars cannot contain `: `.
        let token = token
            .split(": ")
            .next()
            .unwrap_or(token)
            .trim_end_matches(':');
        // Inside a flow collection (`[a, b]`, `{k: v}`) a plain scalar ends at `,`, `]` or `}`.
        let token = if token.starts_with(|c: char| c.is_alphanumeric() || c == '_') {
            token
                .split([',', ']', '}'])
                .next()
                .unwrap_or(token)
                .trim_end()
        } else {
            token
        };
        Some(SourceSpan::new(start.into(), token.len().max(1)))
    }
}

/// One problem found in a runbook.
#[derive(Debug, Clone)]
pub struct Diagnostic {
    /// A stable identifier of the kind of problem, e.g. `unknown-step`.
    pub code: &'static str,
    /// What is wrong.
    pub message: String,
    /// Where; `None` for problems with no single place (e.g. a missing CLI param).
    pub span: Option<Span>,
    /// Text under the primary label.
    pub label: Option<String>,
    /// How to fix it.
    pub help: Option<String>,
    /// Other places involved (e.g. the rest of a cycle), each with a note.
    pub related: Vec<(Span, String)>,
}

impl Diagnostic {
    /// A problem at a place.
    pub fn new(code: &'static str, message: impl Into<String>, span: Span) -> Self {
        Self {
            code,
            message: message.into(),
            span: Some(span),
            label: None,
            help: None,
            related: Vec::new(),
        }
    }

    /// A problem with no place in the file.
    pub fn global(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            span: None,
            label: None,
            help: None,
            related: Vec::new(),
        }
    }

    /// Set the primary label.
    #[must_use]
    pub fn with_label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }

    /// Set the help text.
    #[must_use]
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Add a secondary place.
    #[must_use]
    pub fn with_related(mut self, span: Span, note: impl Into<String>) -> Self {
        self.related.push((span, note.into()));
        self
    }

    /// `file:line:col: message` — one line, for logs, editors and tests. A problem without a
    /// position of its own (a bad `-p` value) is placed at its first related place (the param's
    /// declaration), so editors and scripts can jump to it; only a problem of the file as a whole
    /// (unreadable, empty) has none.
    pub fn short(&self, file: &SourceFile) -> String {
        match self
            .span
            .into_iter()
            .chain(self.related.iter().map(|(s, _)| *s))
            .find(|s| s.line > 0)
        {
            Some(s) => format!("{}:{}:{}: {}", file.name, s.line, s.column, self.message),
            None => format!("{}: {}", file.name, self.message),
        }
    }
}

/// A diagnostic bound to its file, as miette renders it.
#[derive(Debug)]
struct Bound<'a> {
    diag: &'a Diagnostic,
    source: NamedSource<Arc<str>>,
    labels: Vec<LabeledSpan>,
}

impl fmt::Display for Bound<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.diag.message)
    }
}

impl std::error::Error for Bound<'_> {}

impl miette::Diagnostic for Bound<'_> {
    fn code<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        Some(Box::new(format!("runbook::{}", self.diag.code)))
    }
    fn help<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        self.diag
            .help
            .as_ref()
            .map(|h| Box::new(h.clone()) as Box<dyn fmt::Display>)
    }
    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        if self.labels.is_empty() {
            None
        } else {
            Some(&self.source)
        }
    }
    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        if self.labels.is_empty() {
            None
        } else {
            Some(Box::new(self.labels.iter().cloned()))
        }
    }
}

/// Render diagnostics rustc-style (source snippet, labels, help). `color` for terminals.
pub fn render(file: &SourceFile, diags: &[Diagnostic], color: bool) -> String {
    let theme = if color {
        GraphicalTheme::unicode()
    } else {
        GraphicalTheme::unicode_nocolor()
    };
    let handler = GraphicalReportHandler::new_themed(theme)
        .with_width(100)
        .with_links(false)
        .with_context_lines(1);
    // miette pads underlines with `{:width$}`, which panics past 65,535 columns: a position
    // that far right gets no snippet, and its line and column are written out instead.
    let drawable = |s: &Span| s.column < 4096;
    let mut out = String::new();
    for d in diags {
        let mut labels = Vec::new();
        if let Some(span) = d.span.filter(drawable).and_then(|s| file.source_span(s)) {
            labels.push(LabeledSpan::new_primary_with_span(d.label.clone(), span));
        }
        if let Some(s) = d.span.filter(|s| !drawable(s)) {
            use std::fmt::Write as _;
            let _ = writeln!(out, "{}:{}:{}:", file.name, s.line, s.column);
        }
        for (s, note) in d.related.iter().filter(|(s, _)| drawable(s)) {
            if let Some(span) = file.source_span(*s) {
                labels.push(LabeledSpan::new_with_span(Some(note.clone()), span));
            }
        }
        let bound = Bound {
            diag: d,
            source: NamedSource::new(file.name.clone(), file.text.clone()).with_language("yaml"),
            labels,
        };
        let _ = handler.render_report(&mut out, &bound);
        out.push('\n');
    }
    out
}

/// The closest candidate to `word`, if close enough to be a plausible typo, else the only
/// candidate `word` abbreviates (`svc` for `service`: same first letter, every letter in order).
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let candidates: Vec<&'a str> = candidates.into_iter().collect();
    candidates
        .iter()
        .map(|c| (typo_distance(word, c), *c))
        .filter(|(d, c)| *d <= (word.len().max(c.len()) / 3).max(1) && *d < word.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
        .or_else(|| {
            let mut abbreviated = candidates.iter().filter(|c| abbreviates(word, c));
            // Two candidates it could shorten: naming one would be a guess.
            match (abbreviated.next(), abbreviated.next()) {
                (Some(c), None) => Some(*c),
                _ => None,
            }
        })
}

/// Whether `word` (three letters or more) is `full` with letters left out, first letter kept.
fn abbreviates(word: &str, full: &str) -> bool {
    if word.chars().count() < 3
        || word.len() >= full.len()
        || word.chars().next() != full.chars().next()
    {
        return false;
    }
    let mut rest = full.chars();
    word.chars().all(|w| rest.any(|f| f == w))
}

/// Edit distance counting a swap of two neighbouring characters as one edit (optimal string
/// alignment), so `dealy` is one typo away from `delay`.
pub fn typo_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // d[i][j]: distance between a[..i] and b[..j].
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j - 1] + cost)
                .min(d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// Edit distance between two strings (characters).
pub fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// An error and its sources, one clause each (a source already quoted by its parent is not
/// repeated): how the command line prints an error it cannot point into a file.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        let t = x.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = x.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_words_only() {
        assert_eq!(
            did_you_mean("neds", ["needs", "name", "run"]),
            Some("needs")
        );
        assert_eq!(
            did_you_mean("timout", ["timeout", "retry"]),
            Some("timeout")
        );
        assert_eq!(did_you_mean("zzzzzz", ["needs", "name"]), None);
        assert_eq!(
            did_you_mean("svc", ["service", "namespace"]),
            Some("service")
        );
        // Ambiguous, too short, or another first letter: no guess.
        assert_eq!(did_you_mean("svc", ["service", "servic_count"]), None);
        assert_eq!(did_you_mean("sv", ["service"]), None);
        assert_eq!(did_you_mean("vc", ["service"]), None);
        assert_eq!(
            did_you_mean("dealy", ["attempts", "delay", "backoff"]),
            Some("delay")
        );
        assert_eq!(typo_distance("frist", "first"), 1);
        assert_eq!(typo_distance("abc", "abc"), 0);
        assert_eq!(typo_distance("", "ab"), 2);
    }

    #[test]
    fn offsets_and_positions_agree() {
        let f = SourceFile::new("x.yaml", "a: 1\nbé: 2\n");
        let off = f.offset_of(2, 5).unwrap();
        assert_eq!(&f.text[off..=off], "2");
        assert_eq!(f.line_col(off), (2, 5));
    }
}
