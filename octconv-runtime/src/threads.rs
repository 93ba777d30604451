//! candle's CPU worker pool, tuned for a runtime whose heavy kernels run on rayon.
//!
//! candle 0.11 runs its element-wise CPU ops (the residual adds, the gradient sums of the backward
//! pass) on its own pool of `threads − 1` workers, which spin for `CANDLE_BARRIER_POOL_SPIN_LIMIT`
//! (default 25 000) pause instructions after each op before they sleep. Our convolutions, batch
//! norms and resampling run on rayon's threads in between, so on a 2-core machine every candle add
//! left a worker spinning on the core the next kernel needed: `perf` of a WRN-16-4 training step at
//! α = .75 put 19 % of the samples in that spin loop. With a limit of 2 000 the step took 0.85–0.93×
//! the time (3 alternating rounds, `octconv bench 'wrn(n = 2, k = 4)' --train`, AMD EPYC, 2 threads);
//! 200 was no better than 2 000.

/// The spin limit set by [`tune_candle_pool`].
pub const CANDLE_SPIN_LIMIT: u32 = 2_000;

/// The variable candle reads, once, when its pool starts.
const VAR: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";

/// Sets `CANDLE_BARRIER_POOL_SPIN_LIMIT` to [`CANDLE_SPIN_LIMIT`] unless the user has set it. Call it
/// at the start of `main`, before any other thread exists and before candle's first element-wise op
/// (its pool reads the variable when it starts). Returns whether it set the variable.
pub fn tune_candle_pool() -> bool {
    if std::env::var_os(VAR).is_some() {
        return false;
    }
    // Edition 2021: `set_var` is safe to call; callers run it before any other thread starts, so
    // nothing reads the environment concurrently.
    std::env::set_var(VAR, CANDLE_SPIN_LIMIT.to_string());
    true
}
