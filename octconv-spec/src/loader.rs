//! Loading a program: a root text, its `use "…"` includes (relative to the including file; cycles and
//! missing files are errors), duplicate definitions, and block recursion found statically.

use crate::builtins;
use crate::diag::{DiagKind, Diagnostic, Diagnostics};
use crate::source::{FileId, Origin, SourceMap, Span};
use crate::syntax::ast::{Def, DefKind, Item, Stmt};
use crate::syntax::parse_file;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// All definitions reachable from the loaded texts, with their sources and load diagnostics.
#[derive(Clone, Debug, Default)]
pub struct Program {
    /// Every text loaded.
    pub sources: SourceMap,
    /// Models and blocks in load order.
    pub defs: Vec<Def>,
    /// Problems found while loading (syntax, includes, duplicates, recursion).
    pub diags: Diagnostics,
}

impl Program {
    /// An empty program.
    pub fn new() -> Self {
        Self::default()
    }

    /// Loads a `.oct` file and everything it includes.
    pub fn load_file(&mut self, path: &Path) -> Option<FileId> {
        match std::fs::read_to_string(path) {
            Ok(text) => Some(self.load_text(Origin::File(path.to_path_buf()), text)),
            Err(e) => {
                self.diags.push(
                    Diagnostic::error(
                        DiagKind::Include,
                        None,
                        format!("cannot read spec file `{}`: {e}", path.display()),
                    )
                    .with_help("pass a path to a `.oct` file or a builtin call such as `wrn(n = 4, k = 10, alpha = 0.25)`"),
                );
                None
            }
        }
    }

    /// Loads a text (a file's contents, an inline spec) and everything it includes.
    pub fn load_text(&mut self, origin: Origin, text: impl Into<String>) -> FileId {
        let mut text = text.into();
        if text.starts_with('\u{feff}') {
            text.drain(..3); // a UTF-8 byte-order mark is not part of the spec
        }
        let id = self.sources.add(origin, text);
        let mut stack = vec![id];
        self.load_id(id, &mut stack);
        self.check_recursion();
        id
    }

    /// Loads every builtin spec (`specs/*.oct`).
    pub fn load_builtins(&mut self) {
        for (name, _) in builtins::BUILTIN_FILES {
            self.load_builtin(name, None);
        }
    }

    fn load_builtin(&mut self, name: &str, stack: Option<&mut Vec<FileId>>) -> Option<FileId> {
        let origin = Origin::Builtin(name.trim_end_matches(".oct").to_string());
        if let Some(id) = self.sources.find(&origin) {
            return Some(id);
        }
        let text = builtins::builtin_source(name)?;
        let id = self.sources.add(origin, text);
        let mut own = vec![id];
        let stack = match stack {
            Some(s) => {
                s.push(id);
                s
            }
            None => &mut own,
        };
        self.load_id(id, stack);
        stack.pop();
        self.check_recursion();
        Some(id)
    }

    fn load_id(&mut self, id: FileId, stack: &mut Vec<FileId>) {
        let text = self.sources.get(id).text.clone();
        let file = match parse_file(id, &text) {
            Ok(f) => f,
            Err(d) => {
                self.diags.push(d);
                return;
            }
        };
        for item in file.items {
            match item {
                Item::Use(u) => self.include(id, &u.path, u.path_span, stack),
                Item::Def(d) => self.add_def(d),
            }
        }
    }

    fn include(&mut self, from: FileId, path: &str, span: Span, stack: &mut Vec<FileId>) {
        if let Some(name) = path.strip_prefix("builtin:") {
            if builtins::builtin_source(name).is_none() {
                let names: Vec<_> = builtins::BUILTIN_FILES.iter().map(|(n, _)| *n).collect();
                self.diags.push(
                    Diagnostic::error(DiagKind::Include, span, format!("no builtin spec `{name}`"))
                        .with_label("unknown builtin")
                        .with_note(format!("builtins: {}", names.join(", "))),
                );
                return;
            }
            let origin = Origin::Builtin(name.trim_end_matches(".oct").to_string());
            if let Some(existing) = self.sources.find(&origin) {
                if stack.contains(&existing) {
                    self.cycle(existing, span, stack);
                }
                return;
            }
            self.load_builtin(name, Some(stack));
            if let Some(id) = self.sources.find(&origin) {
                self.sources.set_included_at(id, span);
            }
            return;
        }
        let base = self
            .sources
            .get(from)
            .base_dir()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let full: PathBuf = base.join(path);
        let canonical = std::fs::canonicalize(&full);
        let key = canonical.as_ref().cloned().unwrap_or_else(|_| full.clone());
        // Already loaded: a cycle if it is on the include stack, a harmless diamond otherwise.
        let existing = self
            .sources
            .ids()
            .find(|&f| match &self.sources.get(f).origin {
                Origin::File(p) => std::fs::canonicalize(p).map_or(*p == key, |c| c == key),
                _ => false,
            });
        if let Some(existing) = existing {
            if stack.contains(&existing) {
                self.cycle(existing, span, stack);
            }
            return;
        }
        match std::fs::read_to_string(&full) {
            Ok(mut text) => {
                if text.starts_with('\u{feff}') {
                    text.drain(..3);
                }
                let id = self.sources.add(Origin::File(full), text);
                self.sources.set_included_at(id, span);
                stack.push(id);
                self.load_id(id, stack);
                stack.pop();
            }
            Err(e) => {
                self.diags.push(
                    Diagnostic::error(
                        DiagKind::Include,
                        span,
                        format!(
                            "cannot include `{path}`: {e} (looked for `{}`)",
                            full.display()
                        ),
                    )
                    .with_label("included here")
                    .with_help("`use` paths are relative to the file that contains them"),
                );
            }
        }
    }

    fn cycle(&mut self, target: FileId, span: Span, stack: &[FileId]) {
        let start = stack.iter().position(|&f| f == target).unwrap_or(0);
        let mut chain: Vec<String> = stack[start..]
            .iter()
            .map(|&f| self.sources.get(f).name())
            .collect();
        chain.push(self.sources.get(target).name());
        self.diags.push(
            Diagnostic::error(
                DiagKind::Include,
                span,
                format!("include cycle: {}", chain.join(" → ")),
            )
            .with_label("this `use` closes the cycle")
            .with_help("move the shared blocks into a file that both include"),
        );
    }

    fn add_def(&mut self, d: Def) {
        let mut seen: HashMap<&str, Span> = HashMap::new();
        for p in &d.params {
            if let Some(first) = seen.insert(&p.name.name, p.name.span) {
                self.diags.push(
                    Diagnostic::error(
                        DiagKind::Duplicate,
                        p.name.span,
                        format!(
                            "parameter `{}` of `{}` is declared twice",
                            p.name.name, d.name.name
                        ),
                    )
                    .with_secondary(first, "first declared here"),
                );
            }
        }
        if crate::layers::layer(&d.name.name).is_some() {
            self.diags.push(
                Diagnostic::error(
                    DiagKind::Duplicate,
                    d.name.span,
                    format!(
                        "`{}` is a builtin layer and cannot be redefined",
                        d.name.name
                    ),
                )
                .with_label("builtin name")
                .with_help("rename the block"),
            );
            return;
        }
        if let Some(prev) = self.defs.iter().find(|x| x.name.name == d.name.name) {
            self.diags.push(
                Diagnostic::error(
                    DiagKind::Duplicate,
                    d.name.span,
                    format!(
                        "duplicate definition: {} `{}` is already defined",
                        prev.kind.as_str(),
                        d.name.name
                    ),
                )
                .with_label("defined again here")
                .with_secondary(prev.name.span, "first defined here")
                .with_help("rename one of them"),
            );
            return;
        }
        self.defs.push(d);
    }

    /// The definition called `name`.
    pub fn def(&self, name: &str) -> Option<&Def> {
        self.defs.iter().find(|d| d.name.name == name)
    }

    /// Names of all models, in load order.
    pub fn model_names(&self) -> Vec<&str> {
        self.defs
            .iter()
            .filter(|d| d.kind == DefKind::Model)
            .map(|d| d.name.name.as_str())
            .collect()
    }

    /// Reports blocks that call themselves, directly or through other blocks.
    fn check_recursion(&mut self) {
        let calls: HashMap<&str, Vec<(&str, Span)>> = self
            .defs
            .iter()
            .map(|d| {
                let mut out = Vec::new();
                collect_calls(&d.body, &mut out);
                (d.name.name.as_str(), out)
            })
            .collect();
        let mut found = Vec::new();
        for d in self.defs.iter().filter(|d| d.kind == DefKind::Block) {
            // Depth-first search from each block for a path back to itself.
            let start = d.name.name.as_str();
            let mut stack: Vec<(&str, Vec<&str>)> = vec![(start, vec![start])];
            let mut visited = std::collections::HashSet::new();
            while let Some((cur, path)) = stack.pop() {
                for &(callee, span) in calls.get(cur).map(Vec::as_slice).unwrap_or(&[]) {
                    // Report each cycle once: from its alphabetically first block.
                    if callee == start && path.iter().all(|b| *b >= start) {
                        let mut chain = path.clone();
                        chain.push(callee);
                        found.push((span, chain.join(" → ")));
                    } else if calls.contains_key(callee) && visited.insert(callee) {
                        let mut p = path.clone();
                        p.push(callee);
                        stack.push((callee, p));
                    }
                }
            }
        }
        for (span, chain) in found {
            self.diags.push(
                Diagnostic::error(
                    DiagKind::Recursion,
                    span,
                    format!("recursive block: {chain}"),
                )
                .with_label("this call recurses")
                .with_help("blocks cannot call themselves; use `repeat` for repetition"),
            );
        }
    }
}

fn collect_calls<'a>(body: &'a [Stmt], out: &mut Vec<(&'a str, Span)>) {
    for s in body {
        match s {
            Stmt::Call(c) => out.push((&c.name.name, c.name.span)),
            Stmt::Repeat { body, .. } => collect_calls(body, out),
            Stmt::Residual { body, shortcut, .. } => {
                collect_calls(body, out);
                if let Some(sc) = shortcut {
                    collect_calls(sc, out);
                }
            }
            Stmt::Branches { bodies, .. } => bodies.iter().for_each(|b| collect_calls(b, out)),
            _ => {}
        }
    }
}
