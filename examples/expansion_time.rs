//! Time of the work `octnet!` does for WRN-28-10 (parse and check the spec, elaborate the α = 0
//! baseline, generate the tokens): median of 50 runs.
//!
//! `cargo run --release --example expansion_time`

use octconv::spec::codegen::{generate, GenOptions};
use std::time::Instant;

fn main() {
    let call = "wrn(n = 4, k = 10, alpha = 0.25)";
    let mut times = Vec::new();
    let mut size = 0;
    for _ in 0..50 {
        let t = Instant::now();
        let checked = octconv::check_builtin(call);
        let model = checked.model.as_ref().expect("builtin checks");
        let tokens = generate(
            model,
            &GenOptions::new(
                "Wrn28x10",
                &checked.sources.get(model.layers[0].span.file).text,
            ),
        );
        size = tokens.to_string().len();
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "{call}: check + codegen median {:.2} ms (min {:.2}, max {:.2}), {size} bytes of tokens",
        times[25], times[0], times[49]
    );
}
