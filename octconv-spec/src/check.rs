//! The front door: load a spec (file, inline text or builtin call), pick the model, bind arguments and
//! `--set` overrides, elaborate, and elaborate again with every α = 0 for the cost comparison.

use crate::diag::{render_all, DiagKind, Diagnostic, Diagnostics};
use crate::elab::{elaborate, ModelRequest, Options};
use crate::ir::Model;
use crate::loader::Program;
use crate::report::Report;
use crate::source::{FileId, Origin, SourceMap, Span};
use crate::syntax::ast::Arg;
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
    /// Spec text whose `use` paths resolve against `dir` (an `octnet!` body).
    Inline {
        /// Name for diagnostics.
        name: &'a str,
        /// The spec (may be empty when only builtins are used).
        text: &'a str,
        /// Directory for relative `use` paths.
        dir: &'a Path,
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
    /// Why the α = 0 baseline did not check (its first error), if it did not.
    pub baseline_error: Option<String>,
    /// Errors and warnings (at most [`MAX_DIAGNOSTICS`](crate::diag::MAX_DIAGNOSTICS)).
    pub diagnostics: Vec<Diagnostic>,
    /// Further errors that were counted but not kept.
    pub suppressed: usize,
}

impl Checked {
    /// True if the spec checked without errors.
    pub fn ok(&self) -> bool {
        self.model.is_some() && !self.diagnostics.iter().any(Diagnostic::is_error)
    }

    /// All diagnostics rendered rustc-style.
    pub fn render_diagnostics(&self, color: bool) -> String {
        render_all(&self.diagnostics, self.suppressed, &self.sources, color)
    }

    /// The cost report of the checked model.
    pub fn report(&self) -> Option<Report> {
        self.model.as_ref().map(|m| {
            let mut r = Report::new(m, self.baseline.as_ref());
            r.baseline_error = self.baseline_error.clone();
            r
        })
    }

    /// Errors of a given kind (for tests and tools).
    pub fn errors_of(&self, kind: DiagKind) -> Vec<&Diagnostic> {
        self.diagnostics
            .iter()
            .filter(|d| d.is_error() && d.kind == kind)
            .collect()
    }
}

/// Stack for the checker's thread: parsing and elaboration recurse (bounded by the nesting limits),
/// and callers such as test threads or proc macros may run on small stacks.
const CHECK_STACK: usize = 256 << 20;

/// Checks a spec: reports every problem it can find and never panics. The work runs on a thread with a
/// large stack; if it panicked anyway (a bug), the panic becomes an internal-error diagnostic.
pub fn check(req: &CheckRequest) -> Checked {
    let outcome = std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("octconv-check".into())
            .stack_size(CHECK_STACK)
            .spawn_scoped(scope, || check_here(req))
            .map(|h| h.join())
    });
    match outcome {
        Ok(Ok(checked)) => checked,
        Ok(Err(panic)) => {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            internal_error(format!(
                "internal error: the checker panicked ({why}); please report this spec"
            ))
        }
        // No thread could be started: check on this one.
        Err(_) => check_here(req),
    }
}

fn internal_error(message: String) -> Checked {
    Checked {
        sources: SourceMap::new(),
        model: None,
        baseline: None,
        baseline_error: None,
        diagnostics: vec![Diagnostic::error(DiagKind::Structure, None, message)],
        suppressed: 0,
    }
}

/// The phases of one check, in order: load the spec (and parse a builtin or `--model` call), parse
/// the `--set` overrides, pick the model, elaborate it and its α = 0 baseline.
fn check_here(req: &CheckRequest) -> Checked {
    let mut program = Program::new();
    let mut diags = Diagnostics::default();
    let (root, call) = load(req, &mut program, &mut diags);
    let overrides = parse_sets(req.sets, &mut program, &mut diags);
    let mut all = program.diags.clone();
    all.absorb(diags);
    let picked = if all.has_errors() {
        None
    } else {
        match pick_model(&program, root, call.as_ref()) {
            Ok(p) => Some(p),
            Err(d) => {
                all.push(d);
                None
            }
        }
    };
    let Some((name, name_span, args)) = picked else {
        return Checked {
            sources: program.sources,
            model: None,
            baseline: None,
            baseline_error: None,
            suppressed: all.suppressed,
            diagnostics: all.into_vec(),
        };
    };
    let request = ModelRequest {
        name: &name,
        name_span,
        args: &args,
        overrides: &overrides,
    };
    let (model, elab_diags) = elaborate(&program, &request, Options::default());
    all.absorb(elab_diags);
    let (baseline, baseline_error) = match &model {
        Some(_) => baseline(&program, &request),
        None => (None, None),
    };
    Checked {
        sources: program.sources,
        model,
        baseline,
        baseline_error,
        suppressed: all.suppressed,
        diagnostics: all.into_vec(),
    }
}

/// Loads the spec into `program`: a file, a text or a builtin call (with the builtins). Returns the
/// root file (none for a builtin call) and the model call (a builtin call or `--model`), if any.
fn load(
    req: &CheckRequest,
    program: &mut Program,
    diags: &mut Diagnostics,
) -> (Option<FileId>, Option<CallSpec>) {
    let builtin_call = matches!(req.spec, SpecInput::Builtin(_));
    let mut call = None;
    let root = match req.spec {
        SpecInput::File(p) => program.load_file(p),
        SpecInput::Text { name, text } => {
            Some(program.load_text(Origin::Virtual(name.to_string()), text))
        }
        SpecInput::Inline { name, text, dir } => {
            let origin = Origin::Inline {
                name: name.to_string(),
                dir: dir.to_path_buf(),
            };
            Some(program.load_text(origin, text))
        }
        SpecInput::Builtin(text) => {
            program.load_builtins();
            let id = program.sources.add(Origin::CommandLine, text);
            match parse_call_spec(id, text) {
                Ok(c) => call = Some(c),
                Err(d) => diags.push(d.with_help(
                    "SPEC is a `.oct` file or a builtin call such as `wrn(n = 4, k = 10, alpha = 0.25)`",
                )),
            }
            if req.model.is_some() {
                diags.push(
                    Diagnostic::error(
                        DiagKind::Argument,
                        None,
                        "`--model` applies to `.oct` files; a builtin call names its model itself",
                    )
                    .with_help(
                        "remove `--model`, or write the call as SPEC, e.g. `resnet(depth = 26)`",
                    ),
                );
            }
            None
        }
    };
    if let (Some(m), false) = (req.model, builtin_call) {
        let id = program.sources.add(Origin::ModelFlag, m);
        match parse_call_spec(id, m) {
            Ok(c) => call = Some(c),
            Err(d) => diags.push(d),
        }
    }
    // A call of a model the spec does not define may name a builtin.
    if let Some(c) = &call {
        if program.def(&c.name.name).is_none() && !builtin_call {
            program.load_builtins();
        }
    }
    (root, call)
}

/// Parses every `--set name=value`, each as its own source.
fn parse_sets(sets: &[String], program: &mut Program, diags: &mut Diagnostics) -> Vec<Arg> {
    let mut overrides = Vec::new();
    for (i, s) in sets.iter().enumerate() {
        let id = program.sources.add(Origin::SetFlag(i + 1), s.as_str());
        match parse_set_spec(id, s) {
            Ok(a) => overrides.push(a),
            Err(d) => diags.push(d.with_help("write `--set name=value`, e.g. `--set alpha=0.5`")),
        }
    }
    overrides
}

/// The model to elaborate: the call's, or the only model of the root file (else of all files).
fn pick_model(
    program: &Program,
    root: Option<FileId>,
    call: Option<&CallSpec>,
) -> Result<(String, Option<Span>, Vec<Arg>), Diagnostic> {
    if let Some(c) = call {
        return Ok((c.name.name.clone(), Some(c.name.span), c.args.clone()));
    }
    // Models written in the root file win over models its includes bring in.
    let own: Vec<&str> = program
        .defs
        .iter()
        .filter(|d| d.kind == crate::syntax::ast::DefKind::Model && Some(d.name.span.file) == root)
        .map(|d| d.name.name.as_str())
        .collect();
    let models = if own.is_empty() {
        program.model_names()
    } else {
        own
    };
    match models.as_slice() {
        [one] => Ok((one.to_string(), None, Vec::new())),
        [] => Err(
            Diagnostic::error(DiagKind::Structure, None, "the spec defines no model")
                .with_help("add `model name(…) { input [C, H, W]; … }`"),
        ),
        many => Err(Diagnostic::error(
            DiagKind::Structure,
            None,
            format!("the spec defines several models: {}", many.join(", ")),
        )
        .with_help("choose one with `--model NAME`")),
    }
}

/// The same network with every α forced to 0 (the cost ratios' reference), or why it does not
/// elaborate.
fn baseline(program: &Program, request: &ModelRequest) -> (Option<Model>, Option<String>) {
    let (b, d) = elaborate(program, request, Options { alpha_zero: true });
    let why = d
        .items()
        .iter()
        .find(|d| d.is_error())
        .map(|d| match d.location(&program.sources) {
            Some(loc) => format!("{} ({loc})", d.message),
            None => d.message.clone(),
        });
    (b, why)
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
