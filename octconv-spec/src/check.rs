//! The front door: load a spec (file, inline text or builtin call), pick the model, bind arguments and
//! `--set` overrides, elaborate, and elaborate again with every α = 0 for the cost comparison.

use crate::diag::{render_all, DiagKind, Diagnostic};
use crate::elab::{elaborate, ModelRequest, Options};
use crate::ir::Model;
use crate::loader::Program;
use crate::report::Report;
use crate::source::{Origin, SourceMap};
use crate::syntax::{parse_call_spec, parse_set_spec, CallSpec};
use std::path::Path;

/// Where the spec comes from.
#[derive(Clone, Copy, Debug)]
pub enum SpecInput<'a> {
    /// A `.oct` file.
    File(&'a Path),
    /// A builtin model call: `wrn(n = 4, k = 10, alpha = 0.25)`.
    Builtin(&'a str),
    /// Spec text that is not a file (an inline macro body, a test). `name` is shown in diagnostics;
    /// `use` paths resolve against the current directory.
    Text {
        /// Name for diagnostics.
        name: &'a str,
        /// The spec.
        text: &'a str,
    },
}

impl<'a> SpecInput<'a> {
    /// Interprets a command-line SPEC: a path if it names an existing file or ends in `.oct`, a builtin
    /// call otherwise.
    pub fn from_arg(arg: &'a str) -> SpecInput<'a> {
        let p = Path::new(arg);
        if arg.ends_with(".oct") || p.is_file() {
            SpecInput::File(p)
        } else {
            SpecInput::Builtin(arg)
        }
    }
}

/// What to check.
#[derive(Clone, Copy, Debug)]
pub struct CheckRequest<'a> {
    /// The spec.
    pub spec: SpecInput<'a>,
    /// For files: the model to check, as a name or a call (`tiny(c = 16)`); needed when the file has
    /// several models.
    pub model: Option<&'a str>,
    /// `name=value` overrides of model parameters.
    pub sets: &'a [String],
}

/// The outcome of a check.
#[derive(Clone, Debug)]
pub struct Checked {
    /// All texts involved (for rendering diagnostics).
    pub sources: SourceMap,
    /// The checked model, if there were no errors.
    pub model: Option<Model>,
    /// The same model with every α = 0, if that also checks.
    pub baseline: Option<Model>,
    /// Errors and warnings.
    pub diagnostics: Vec<Diagnostic>,
}

impl Checked {
    /// True if the spec checked without errors.
    pub fn ok(&self) -> bool {
        self.model.is_some() && !self.diagnostics.iter().any(Diagnostic::is_error)
    }

    /// All diagnostics rendered rustc-style.
    pub fn render_diagnostics(&self, color: bool) -> String {
        render_all(&self.diagnostics, &self.sources, color)
    }

    /// The cost report of the checked model.
    pub fn report(&self) -> Option<Report> {
        self.model
            .as_ref()
            .map(|m| Report::new(m, self.baseline.as_ref()))
    }

    /// Errors of a given kind (for tests and tools).
    pub fn errors_of(&self, kind: DiagKind) -> Vec<&Diagnostic> {
        self.diagnostics
            .iter()
            .filter(|d| d.is_error() && d.kind == kind)
            .collect()
    }
}

/// Checks a spec: never panics, reports every problem it can find.
pub fn check(req: &CheckRequest) -> Checked {
    let mut program = Program::new();
    let mut call: Option<CallSpec> = None;
    let mut early = Vec::new();
    let mut root = None;
    match req.spec {
        SpecInput::File(p) => {
            root = program.load_file(p);
        }
        SpecInput::Text { name, text } => {
            root = Some(program.load_text(Origin::Virtual(name.to_string()), text));
        }
        SpecInput::Builtin(text) => {
            program.load_builtins();
            let id = program
                .sources
                .add(Origin::Virtual("<command line>".into()), text);
            match parse_call_spec(id, text) {
                Ok(c) => call = Some(c),
                Err(d) => early.push(d.with_help(
                    "SPEC is a `.oct` file or a builtin call such as `wrn(n = 4, k = 10, alpha = 0.25)`",
                )),
            }
        }
    }
    if let (Some(m), None) = (req.model, &call) {
        let id = program.sources.add(Origin::Virtual("<--model>".into()), m);
        match parse_call_spec(id, m) {
            Ok(c) => call = Some(c),
            Err(d) => early.push(d),
        }
    }
    let mut overrides = Vec::new();
    for (i, s) in req.sets.iter().enumerate() {
        let id = program
            .sources
            .add(Origin::Virtual(format!("<--set #{}>", i + 1)), s.as_str());
        match parse_set_spec(id, s) {
            Ok(a) => overrides.push(a),
            Err(d) => early.push(d.with_help("write `--set name=value`, e.g. `--set alpha=0.5`")),
        }
    }
    let mut diagnostics: Vec<Diagnostic> = program.diags.items().to_vec();
    diagnostics.extend(early);
    let done = |program: Program, diagnostics| Checked {
        sources: program.sources,
        model: None,
        baseline: None,
        diagnostics,
    };
    if diagnostics.iter().any(Diagnostic::is_error) {
        return done(program, diagnostics);
    }
    let (name, name_span, args) = match &call {
        Some(c) => (c.name.name.clone(), Some(c.name.span), c.args.clone()),
        None => {
            // Models written in the root file win over models its includes bring in.
            let own: Vec<&str> = program
                .defs
                .iter()
                .filter(|d| d.kind == crate::ast::DefKind::Model && Some(d.name.span.file) == root)
                .map(|d| d.name.name.as_str())
                .collect();
            let models = if own.is_empty() {
                program.model_names()
            } else {
                own
            };
            match models.as_slice() {
                [one] => (one.to_string(), None, Vec::new()),
                [] => {
                    diagnostics.push(
                        Diagnostic::error(DiagKind::Structure, None, "the spec defines no model")
                            .with_help("add `model name(…) { input [C, H, W]; … }`"),
                    );
                    return done(program, diagnostics);
                }
                many => {
                    diagnostics.push(
                        Diagnostic::error(
                            DiagKind::Structure,
                            None,
                            format!("the spec defines several models: {}", many.join(", ")),
                        )
                        .with_help("choose one with `--model NAME`"),
                    );
                    return done(program, diagnostics);
                }
            }
        }
    };
    let request = ModelRequest {
        name: &name,
        name_span,
        args: &args,
        overrides: &overrides,
    };
    let (model, diags) = elaborate(&program, &request, Options::default());
    diagnostics.extend(diags.into_vec());
    let baseline = model
        .as_ref()
        .and_then(|_| elaborate(&program, &request, Options { alpha_zero: true }).0);
    Checked {
        sources: program.sources,
        model,
        baseline,
        diagnostics,
    }
}

/// Checks inline spec text (tests, the macro): `model` picks the model (name or call).
pub fn check_text(name: &str, text: &str, model: Option<&str>) -> Checked {
    check(&CheckRequest {
        spec: SpecInput::Text { name, text },
        model,
        sets: &[],
    })
}

/// Checks a builtin call such as `wrn(n = 4, k = 10, alpha = 0.25)`.
pub fn check_builtin(call: &str) -> Checked {
    check(&CheckRequest {
        spec: SpecInput::Builtin(call),
        model: None,
        sets: &[],
    })
}
