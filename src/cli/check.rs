//! `octconv check SPEC [--model NAME] [--set name=value]… [--json]`

use super::spec_args::SpecArgs;
use std::process::ExitCode;

/// Arguments of `octconv check`.
#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    #[command(flatten)]
    spec: SpecArgs,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

/// Runs `check`: exit 0 and the report on stdout, or exit 1 and diagnostics on stderr.
pub fn run(args: &CheckArgs, color: bool) -> anyhow::Result<ExitCode> {
    let checked = args.spec.check(color);
    let Some(report) = checked.report().filter(|_| checked.ok()) else {
        return Ok(ExitCode::from(1));
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints the builtin models (with their parameters) and layers.
pub fn builtins() {
    println!("builtin models (use as SPEC, e.g. 'wrn(n = 4, k = 10, alpha = 0.25)'):");
    let mut program = octconv_spec::loader::Program::new();
    program.load_builtins();
    for def in program
        .defs
        .iter()
        .filter(|d| d.kind == octconv_spec::ast::DefKind::Model)
    {
        let params: Vec<String> = def
            .params
            .iter()
            .map(|p| {
                let default = p
                    .default
                    .as_ref()
                    .map(|d| format!(" = {}", program.sources.snippet(d.span)))
                    .unwrap_or_default();
                format!("{}: {}{default}", p.name.name, p.ty)
            })
            .collect();
        println!("  {}({})", def.name.name, params.join(", "));
        if let Some(doc) = def.docs.first() {
            println!("      {doc}");
        }
    }
    println!("\nlayers:");
    for l in octconv_spec::layers::LAYERS {
        println!("  {}", l.signature());
        println!("      {}", l.summary);
    }
}
