//! The `octconv` command-line tool.

mod cli;

use clap::Parser;
use std::process::ExitCode;

/// Counts heap bytes so that `octconv bench` can report measured activation memory.
#[global_allocator]
static ALLOC: cli::alloc::Counting = cli::alloc::Counting;

fn main() -> ExitCode {
    // Like other command-line tools, end quietly when the reader of our output goes away
    // (`octconv eval … | head`): Rust ignores SIGPIPE, which turns the write into a panic.
    #[cfg(unix)]
    // SAFETY: setting a signal's disposition to the default at the start of `main`, before any
    // thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    octconv_runtime::malloc::tune_for_tensors();
    octconv_runtime::threads::tune_candle_pool();
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
