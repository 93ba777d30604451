//! Threads: a whole inference pass on rayon's pool ([`on_pool`]), and candle's CPU worker pool,
//! tuned for a runtime whose heavy kernels run on rayon.
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

/// Runs `f` on one of the threads of rayon's global pool and returns its result; the calling
/// thread waits. On a thread of any rayon pool already (the global one or a custom one), `f` runs
/// in place, and the kernels then share their work out on that pool as before.
///
/// A whole pass is then one rayon job, and a worker waiting for one of its loops may take up
/// another job handed in meanwhile: a second pass started by another thread runs nested on its
/// stack. Passes of one model from several threads at once are fine; such passes racing a write to
/// the same weights (a training step, an optimizer update, `Var::set`) are not supported: the
/// nested writer would wait for a read lock that the pass under it holds. Run the passes one after
/// another, as `octconv train`, `eval` and `bench` do.
///
/// Why: every kernel shares its work out with rayon. Called from a thread outside the pool (a
/// program's main thread), each parallel loop is a cross-thread hand-off: the job is injected, a
/// worker woken, and the caller put to sleep until the last task's latch wakes it — two or three
/// `futex` calls per loop, about 375 per pass of the seed WRN at α = .5 (`perf stat -e
/// syscalls:sys_enter_futex`), while the caller does nothing. Run on a worker, the pass's own thread
/// takes part in every loop, and the other workers find the next loop's tasks while they still spin
/// instead of being woken. Measured (Intel Xeon model 167, AVX-512, 2 threads, `octconv bench`,
/// 2–3 alternating rounds, ms per pass): `seed_wrn(n = 2, k = 2)` α = .5 10.41–10.93 → 9.98–10.06,
/// α = 0 12.77–13.00 → 12.09–12.77; WRN-16-4 α = .75 28.3–29.9 → 27.2–28.4; MobileNet v2 α = 0
/// 33.1–33.4 → 30.9–31.0; DenseNet-121 α = 0 183.8–189.9 → 170.1–177.1. A program that runs large
/// passes should call [`crate::malloc::tune_for_tensors`] first: on a worker thread the maps come
/// from glibc's per-thread arenas, whose heaps it otherwise deletes and maps again every pass.
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    // `rayon::scope` runs its closure in place on a thread of any rayon pool, and otherwise hands
    // it to the global pool and waits.
    rayon::scope(|_| f())
}

/// [`on_pool`] for work on `device`'s tensors: on the CPU, where our kernels share their work out
/// with rayon; on other devices `f` runs on the calling thread.
pub fn on_pool_for<R: Send>(device: &candle_core::Device, f: impl FnOnce() -> R + Send) -> R {
    match device.is_cpu() {
        true => on_pool(f),
        false => f(),
    }
}

#[cfg(test)]
mod tests {
    use super::on_pool;

    #[test]
    fn on_pool_runs_a_closure_from_outside_on_a_pool_thread_and_one_from_inside_in_place() {
        // A test's own thread is not one of rayon's.
        assert_eq!(rayon::current_thread_index(), None);
        assert!(on_pool(rayon::current_thread_index).is_some());
        let (outer, inner) = on_pool(|| {
            let outer = std::thread::current().id();
            (outer, on_pool(|| std::thread::current().id()))
        });
        assert_eq!(outer, inner);
        // The result comes back to the caller.
        assert_eq!(on_pool(|| 6 * 7), 42);
    }
}
