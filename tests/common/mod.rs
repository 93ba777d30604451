//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::process::{Command, Output};

/// Runs the `octconv` binary with `args` (no colours).
pub fn octconv(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_octconv"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("run octconv")
}

/// Standard output as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Standard error as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// All values of a tensor, flattened.
pub fn values(t: &octconv::candle_core::Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}
