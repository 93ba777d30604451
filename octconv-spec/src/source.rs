//! Source files and byte spans.
//!
//! Every AST node carries a [`Span`]: a file id and a byte range into that file's text. Diagnostics turn
//! spans into `path:line:col` and caret snippets; the `octnet!` proc macro maps the same byte ranges
//! back to token spans.

use std::path::{Path, PathBuf};

/// Index of a file in a [`SourceMap`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default, serde::Serialize)]
pub struct FileId(pub u32);

/// A byte range `start..end` in one source file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default, serde::Serialize)]
pub struct Span {
    /// The file the range is in.
    pub file: FileId,
    /// First byte.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
}

impl Span {
    /// A span from `start` to `end` in `file`.
    pub fn new(file: FileId, start: usize, end: usize) -> Self {
        Span { file, start, end }
    }

    /// The smallest span covering both (same file assumed; `self`'s file wins).
    pub fn to(self, other: Span) -> Span {
        Span {
            file: self.file,
            start: self.start.min(other.start),
            end: self.end.max(other.end),
        }
    }
}

/// Where a source text came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A file on disk (the path as given or resolved).
    File(PathBuf),
    /// A builtin spec compiled into the library (`specs/<name>.oct`).
    Builtin(String),
    /// Text with no file, under a name: a spec given as text, a test string.
    Virtual(String),
    /// The command line's spec text (`octconv check 'model m() { … }'`).
    CommandLine,
    /// The model call of `--model` (or of an `octnet!` declaration).
    ModelFlag,
    /// The `n`-th `--set name=value` (from 1).
    SetFlag(usize),
    /// Text with no file whose `use` paths resolve against a directory (an `octnet!` body: the
    /// directory of the Rust file that contains it).
    Inline {
        /// Name shown in diagnostics.
        name: String,
        /// Directory for relative `use` paths.
        dir: PathBuf,
    },
}

/// One loaded source text.
#[derive(Clone, Debug)]
pub struct SourceFile {
    /// Where the text came from.
    pub origin: Origin,
    /// The full text.
    pub text: String,
    /// The `use "…"` path literal that brought this file in (`None` for a root text).
    pub included_at: Option<Span>,
    line_starts: Vec<usize>,
}

impl SourceFile {
    fn new(origin: Origin, text: String) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        SourceFile {
            origin,
            text,
            included_at: None,
            line_starts,
        }
    }

    /// The name shown in diagnostics (`specs/wrn.oct`, `<builtin>/wrn.oct`, `<command line>`).
    pub fn name(&self) -> String {
        match &self.origin {
            Origin::File(p) => p.display().to_string(),
            Origin::Builtin(n) => format!("<builtin>/{n}.oct"),
            Origin::Virtual(n) | Origin::Inline { name: n, .. } => n.clone(),
            Origin::CommandLine => "<command line>".to_string(),
            Origin::ModelFlag => "<--model>".to_string(),
            Origin::SetFlag(n) => format!("<--set #{n}>"),
        }
    }

    /// 1-based line and column (in characters) of byte offset `pos`.
    pub fn line_col(&self, pos: usize) -> (usize, usize) {
        let pos = pos.min(self.text.len());
        let line = self.line_starts.partition_point(|&s| s <= pos) - 1;
        let start = self.line_starts[line];
        let col = self
            .text
            .get(start..pos)
            .map(|s| s.chars().count())
            .unwrap_or(pos - start);
        (line + 1, col + 1)
    }

    /// Byte offset of the start of 1-based `line`.
    pub fn line_start(&self, line: usize) -> usize {
        self.line_starts[(line - 1).min(self.line_starts.len() - 1)]
    }

    /// Byte offset one past the end of 1-based `line` (excluding the newline).
    pub fn line_end(&self, line: usize) -> usize {
        match self.line_starts.get(line) {
            Some(&next) => next - 1,
            None => self.text.len(),
        }
    }

    /// Directory that `use "…"` paths in this file are relative to.
    pub fn base_dir(&self) -> Option<&Path> {
        match &self.origin {
            Origin::File(p) => p.parent(),
            Origin::Inline { dir, .. } => Some(dir),
            _ => None,
        }
    }
}

/// All source texts of one check: the root, its includes, the builtins and command-line fragments.
#[derive(Clone, Debug, Default)]
pub struct SourceMap {
    files: Vec<SourceFile>,
}

impl SourceMap {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a text and returns its id.
    pub fn add(&mut self, origin: Origin, text: impl Into<String>) -> FileId {
        self.files.push(SourceFile::new(origin, text.into()));
        FileId((self.files.len() - 1) as u32)
    }

    /// The file with id `id`.
    pub fn get(&self, id: FileId) -> &SourceFile {
        &self.files[id.0 as usize]
    }

    /// Records that file `id` was brought in by the `use` path literal at `at`.
    pub fn set_included_at(&mut self, id: FileId, at: Span) {
        self.files[id.0 as usize].included_at = Some(at);
    }

    /// The id of an already loaded file with this origin.
    pub fn find(&self, origin: &Origin) -> Option<FileId> {
        self.files
            .iter()
            .position(|f| &f.origin == origin)
            .map(|i| FileId(i as u32))
    }

    /// Number of files.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// True if no file is loaded.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// All file ids.
    pub fn ids(&self) -> impl Iterator<Item = FileId> {
        (0..self.files.len() as u32).map(FileId)
    }

    /// The text a span covers.
    pub fn snippet(&self, span: Span) -> &str {
        let text = &self.get(span.file).text;
        text.get(span.start..span.end).unwrap_or("")
    }

    /// `name:line:col` of a span's start.
    pub fn location(&self, span: Span) -> String {
        let f = self.get(span.file);
        let (l, c) = f.line_col(span.start);
        format!("{}:{l}:{c}", f.name())
    }
}
