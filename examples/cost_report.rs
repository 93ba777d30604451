//! Checks a spec through the library and prints its cost table.
//!
//! `cargo run --release --example cost_report -- examples/custom.oct`
//! `cargo run --release --example cost_report -- 'resnet(depth = 26, alpha = 0.5)'`

use octconv::{check, CheckRequest, SpecInput};
use std::process::ExitCode;

fn main() -> ExitCode {
    let spec = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "examples/custom.oct".to_string());
    let checked = check(&CheckRequest {
        spec: SpecInput::from_arg(&spec),
        model: None,
        sets: &[],
    });
    if !checked.ok() {
        eprint!("{}", checked.render_diagnostics(false));
        return ExitCode::FAILURE;
    }
    let report = checked.report().expect("a checked model has a report");
    print!("{}", report.table());
    ExitCode::SUCCESS
}
