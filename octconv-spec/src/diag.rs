//! Diagnostics: what is wrong, where, and how to fix it — collected, never first-only.
//!
//! A [`Diagnostic`] holds byte spans, not rendered text, so the CLI renders it rustc-style with
//! `annotate-snippets` and the `octnet!` proc macro turns the same spans into compile errors.

use crate::source::{SourceMap, Span};
use annotate_snippets::{Level, Renderer, Snippet};
use std::fmt;

/// The class of a diagnostic: stable, for tests and tools that react to kinds of errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DiagKind {
    /// The text does not parse.
    Syntax,
    /// A layer, block, model, variable or function that does not exist.
    UnknownName,
    /// An argument that is unknown, missing, repeated or of the wrong type.
    Argument,
    /// A value of the wrong type in an expression, or an arithmetic error.
    Type,
    /// Two blocks or models with the same name, or two `input` statements.
    Duplicate,
    /// A block that (indirectly) calls itself.
    Recursion,
    /// `use "…"`: missing or unreadable file, or an include cycle.
    Include,
    /// α outside [0, 1].
    AlphaRange,
    /// An α that leaves a branch with no channels.
    EmptyBranch,
    /// An explicit `alpha_in` that does not match the incoming value's split.
    AlphaMismatch,
    /// A stride or pooling that does not divide the feature map (odd sizes).
    Divisibility,
    /// A kernel larger than the (padded) feature map it slides over.
    KernelTooLarge,
    /// The two sides of a residual connection disagree.
    ResidualMismatch,
    /// The values joined by `concat`, `add`, `scale` or `branches` do not fit together (kinds,
    /// spatial sizes, shapes or channel counts).
    JoinMismatch,
    /// A value name (`as enc1`) that exists but is not visible where it is used: bound inside a
    /// block, a `residual` or another branch.
    NotVisible,
    /// An `expect` statement that does not hold.
    Expect,
    /// A `require` statement that does not hold.
    Require,
    /// Pooling, flattening or a linear layer applied to an octave pair, or a model ending on one.
    InvalidHead,
    /// A layer given a value of the wrong kind (e.g. `linear` on a feature map, `conv` on a pair).
    LayerInput,
    /// A structural error in a model or block (no `input`, `input` in a block, bad argument value).
    Structure,
    /// A size limit of the checker (nesting depth, layer count, numbers too large).
    Limit,
}

/// Severity of a diagnostic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// The spec is invalid.
    Error,
    /// The spec is valid but probably not what was meant.
    Warning,
}

/// A secondary location with a message (e.g. "value comes from here", "block called here").
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Label {
    /// Where.
    pub span: Span,
    /// What about it.
    pub message: String,
}

/// One error or warning.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// The class of problem.
    pub kind: DiagKind,
    /// One line saying what is wrong.
    pub message: String,
    /// The offending source range, if there is one.
    pub span: Option<Span>,
    /// Text under the primary caret.
    pub label: Option<String>,
    /// Other places involved.
    pub secondary: Vec<Label>,
    /// How to fix it (`= help: …`).
    pub help: Vec<String>,
    /// Extra facts (`= note: …`).
    pub notes: Vec<String>,
}

impl Diagnostic {
    /// A new error of `kind` at `span`.
    pub fn error(
        kind: DiagKind,
        span: impl Into<Option<Span>>,
        message: impl Into<String>,
    ) -> Self {
        Diagnostic {
            severity: Severity::Error,
            kind,
            message: message.into(),
            span: span.into(),
            label: None,
            secondary: Vec::new(),
            help: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// A new warning of `kind` at `span`.
    pub fn warning(
        kind: DiagKind,
        span: impl Into<Option<Span>>,
        message: impl Into<String>,
    ) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(kind, span, message)
        }
    }

    /// Sets the text under the primary caret.
    pub fn with_label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }

    /// Adds a `help:` line.
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help.push(help.into());
        self
    }

    /// Adds a `note:` line.
    pub fn with_note(mut self, note: impl Into<String>) -> Self {
        self.notes.push(note.into());
        self
    }

    /// Adds a secondary labelled location.
    pub fn with_secondary(mut self, span: Span, message: impl Into<String>) -> Self {
        self.secondary.push(Label {
            span,
            message: message.into(),
        });
        self
    }

    /// True for errors.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// `path:line:col` of the primary span, if any.
    pub fn location(&self, sources: &SourceMap) -> Option<String> {
        self.span.map(|s| sources.location(s))
    }

    /// 1-based (line, column) of the primary span, if any.
    pub fn line_col(&self, sources: &SourceMap) -> Option<(usize, usize)> {
        self.span.map(|s| sources.get(s.file).line_col(s.start))
    }

    /// Renders rustc-style: message, `--> path:line:col`, caret snippets, help and notes.
    pub fn render(&self, sources: &SourceMap, color: bool) -> String {
        let level = match self.severity {
            Severity::Error => Level::Error,
            Severity::Warning => Level::Warning,
        };
        let mut annotated: Vec<(Span, Level, String)> = Vec::new();
        if let Some(span) = self.span {
            annotated.push((span, level, self.label.clone().unwrap_or_default()));
        }
        for l in &self.secondary {
            annotated.push((l.span, Level::Note, l.message.clone()));
        }
        // One snippet per file, primary file first; each covers the annotated lines only.
        let mut files: Vec<_> = annotated.iter().map(|(s, _, _)| s.file).collect();
        files.dedup();
        let mut seen = Vec::new();
        files.retain(|f| {
            let new = !seen.contains(f);
            seen.push(*f);
            new
        });
        struct Part {
            name: String,
            text: String,
            first_line: usize,
            spans: Vec<(std::ops::Range<usize>, Level, String)>,
        }
        let parts: Vec<Part> = files
            .iter()
            .map(|&file| {
                let src = sources.get(file);
                let mine: Vec<_> = annotated
                    .iter()
                    .filter(|(s, _, _)| s.file == file)
                    .collect();
                let first = mine
                    .iter()
                    .map(|(s, _, _)| src.line_col(s.start).0)
                    .min()
                    .unwrap_or(1);
                let last = mine
                    .iter()
                    .map(|(s, _, _)| src.line_col(s.end.max(s.start)).0)
                    .max()
                    .unwrap_or(first);
                let lo = src.line_start(first);
                let hi = src.line_end(last).max(lo);
                let text = src.text[lo..hi].to_string();
                let spans = mine
                    .iter()
                    .map(|(s, lvl, msg)| {
                        let a = s.start.clamp(lo, hi) - lo;
                        let b = s.end.clamp(lo, hi) - lo;
                        // An empty span (end of input) still gets one caret.
                        let b = if b == a {
                            a + text[a..].chars().next().map_or(0, char::len_utf8)
                        } else {
                            b
                        };
                        (a..b, *lvl, msg.clone())
                    })
                    .collect();
                Part {
                    name: src.name(),
                    text,
                    first_line: first,
                    spans,
                }
            })
            .collect();
        let mut msg = level.title(&self.message);
        for p in &parts {
            let mut snip = Snippet::source(&p.text)
                .line_start(p.first_line)
                .origin(&p.name)
                .fold(true);
            for (range, lvl, label) in &p.spans {
                snip = snip.annotation(lvl.span(range.clone()).label(label));
            }
            msg = msg.snippet(snip);
        }
        for h in &self.help {
            msg = msg.footer(Level::Help.title(h));
        }
        for n in &self.notes {
            msg = msg.footer(Level::Note.title(n));
        }
        let renderer = if color {
            Renderer::styled()
        } else {
            Renderer::plain()
        };
        let out = renderer.render(msg).to_string();
        out
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.message)
    }
}

/// Diagnostics collected during one check, de-duplicated (a block instantiated many times reports a
/// problem in its body once).
#[derive(Clone, Debug, Default)]
pub struct Diagnostics {
    items: Vec<Diagnostic>,
    seen: std::collections::HashSet<(Option<Span>, String)>,
    /// Errors not kept because [`MAX_DIAGNOSTICS`] were already reported.
    pub suppressed: usize,
}

/// Most diagnostics kept for one check; later ones are only counted.
pub const MAX_DIAGNOSTICS: usize = 100;

impl Diagnostics {
    /// Adds a diagnostic unless the same message at the same place is already there.
    pub fn push(&mut self, d: Diagnostic) {
        if !self.seen.insert((d.span, d.message.clone())) {
            return;
        }
        if self.items.len() >= MAX_DIAGNOSTICS {
            self.suppressed += 1;
        } else {
            self.items.push(d);
        }
    }

    /// Number of errors (warnings excluded).
    pub fn error_count(&self) -> usize {
        self.items.iter().filter(|d| d.is_error()).count() + self.suppressed
    }

    /// True if any error was reported.
    pub fn has_errors(&self) -> bool {
        self.error_count() > 0
    }

    /// All diagnostics in report order.
    pub fn items(&self) -> &[Diagnostic] {
        &self.items
    }

    /// Takes the diagnostics out.
    pub fn into_vec(self) -> Vec<Diagnostic> {
        self.items
    }

    /// Appends all of `other`, keeping its count of suppressed diagnostics.
    pub fn absorb(&mut self, other: Diagnostics) {
        self.suppressed += other.suppressed;
        self.extend(other.items);
    }

    /// Appends all of `other`.
    pub fn extend(&mut self, other: impl IntoIterator<Item = Diagnostic>) {
        for d in other {
            self.push(d);
        }
    }
}

/// Renders all diagnostics, then `note: N more error(s) not shown` when some were not kept, then
/// `error: spec is invalid: N error(s)` counting every error (kept or not).
pub fn render_all(
    diags: &[Diagnostic],
    suppressed: usize,
    sources: &SourceMap,
    color: bool,
) -> String {
    let mut out = String::new();
    for d in diags {
        out.push_str(&d.render(sources, color));
        out.push_str("\n\n");
    }
    if suppressed > 0 {
        out.push_str(&format!("note: {suppressed} more error(s) not shown\n"));
    }
    let n = diags.iter().filter(|d| d.is_error()).count() + suppressed;
    if n > 0 {
        let plural = if n == 1 { "" } else { "s" };
        out.push_str(&format!("error: spec is invalid: {n} error{plural}\n"));
    }
    out
}
