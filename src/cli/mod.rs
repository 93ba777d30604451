//! Command-line parsing and dispatch; one module per subcommand.

mod check;
mod gen;
mod init;
mod run;
mod spec_args;

use clap::{Parser, Subcommand, ValueEnum};
use std::io::IsTerminal;
use std::process::ExitCode;

/// Octave Convolution networks, checked before they run.
#[derive(Parser, Debug)]
#[command(name = "octconv", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Colour diagnostics.
    #[arg(long, value_enum, default_value_t = Color::Auto, global = true)]
    color: Color,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Color {
    Auto,
    Always,
    Never,
}

impl Color {
    fn enabled(self) -> bool {
        match self {
            Color::Always => true,
            Color::Never => false,
            Color::Auto => {
                std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
            }
        }
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check a spec and print its per-layer shapes, parameters, MACs and activation memory.
    Check(check::CheckArgs),
    /// Write deterministic initial weights of a spec to a safetensors file.
    Init(init::InitArgs),
    /// Run a spec in eval mode on the tensor `input` of a safetensors file.
    Run(run::RunArgs),
    /// Write the Rust code `octnet!` generates for a spec (formatted).
    Gen(gen::GenArgs),
    /// List the builtin models and layers.
    Builtins,
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Check(args) => check::run(&args, cli.color.enabled()),
        Command::Init(args) => init::run(&args, cli.color.enabled()),
        Command::Run(args) => run::run(&args, cli.color.enabled()),
        Command::Gen(args) => gen::run(&args, cli.color.enabled()),
        Command::Builtins => {
            check::builtins();
            Ok(ExitCode::SUCCESS)
        }
    }
}
