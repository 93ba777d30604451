//! Command-line parsing and dispatch; one module per subcommand.

pub mod alloc;
mod bench;
mod bench_memory;
mod bench_profile;
mod check;
mod data_bench;
mod eval;
mod export;
mod gen;
mod import;
mod init;
mod parity;
mod plot;
mod run;
mod spec_args;
mod sweep;
mod sweep_plot;
mod sweep_report;
mod train;

use clap::{Parser, Subcommand, ValueEnum};
use std::io::IsTerminal;
use std::process::ExitCode;

/// Octave Convolution networks, checked before they run.
#[derive(Parser, Debug)]
#[command(name = "octconv", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// CPU threads for the computation (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
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
    /// Train a spec on a dataset with SGD, checkpoints and metrics.
    Train(train::TrainArgs),
    /// Evaluate weights on a dataset's test split: accuracy, per-class accuracy, confusion matrix.
    Eval(eval::EvalArgs),
    /// Time the image pipeline on a dataset: decoded and augmented images per second.
    DataBench(data_bench::DataBenchArgs),
    /// Time inference or training steps at several α: the seed's table with FLOPs and memory theory.
    Bench(bench::BenchArgs),
    /// Train one model per α (same seed, data order and schedule) and report accuracy, cost and time.
    Sweep(sweep::SweepArgs),
    /// Compare a device's output with the CPU's on the same seeded weights and input.
    Parity(parity::ParityArgs),
    /// Plot learning curves of one or more run directories (PNG or SVG).
    Plot(plot::PlotArgs),
    /// Write the Rust code `octnet!` generates for a spec (formatted).
    Gen(gen::GenArgs),
    /// Write a spec and its weights as an ONNX model of standard operators.
    Export(export::ExportArgs),
    /// Rename a PyTorch state dict (torchvision, octconv.pytorch) onto a builtin's parameters.
    Import(import::ImportArgs),
    /// List the builtin models and layers.
    Builtins,
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Some(n) = cli.threads {
        if n == 0 {
            anyhow::bail!("--threads must be at least 1");
        }
        // candle's CPU kernels use rayon's global pool, sized from this variable on first use.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    match cli.command {
        Command::Check(args) => check::run(&args, cli.color.enabled()),
        Command::Init(args) => init::run(&args, cli.color.enabled()),
        Command::Run(args) => run::run(&args, cli.color.enabled()),
        Command::Gen(args) => gen::run(&args, cli.color.enabled()),
        Command::Export(args) => export::run(&args, cli.color.enabled()),
        Command::Import(args) => import::run(&args, cli.color.enabled()),
        Command::Train(args) => train::run(&args, cli.color.enabled()),
        Command::Eval(args) => eval::run(&args, cli.color.enabled()),
        Command::DataBench(args) => data_bench::run(&args),
        Command::Plot(args) => plot::run(&args),
        Command::Bench(args) => bench::run(&args, cli.color.enabled()),
        Command::Sweep(args) => sweep::run(&args, cli.color.enabled()),
        Command::Parity(args) => parity::run(&args, cli.color.enabled()),
        Command::Builtins => {
            check::builtins();
            Ok(ExitCode::SUCCESS)
        }
    }
}
