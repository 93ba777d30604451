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

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
///
/// From outside the pool, the pass also keeps the pool's other workers awake while it runs
/// ([`keep_awake`]).
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        // Already on a pool thread (a nested pass, or a caller's own rayon job): in place.
        return f();
    }
    let _pass = Pass::begin();
    let running = Arc::new(AtomicBool::new(true));
    // `rayon::scope` hands its closure to the global pool and waits for it. The wakers are not
    // the scope's: the pass returns as soon as `f` has (a waker may be inside a job it picked up
    // that is not the pass's — a data loader's batch, another pass — and ends after it).
    rayon::scope(|_| {
        let owner = rayon::current_thread_index();
        if ACTIVE_PASSES.load(Ordering::Acquire) == 1 {
            let started = Instant::now();
            for _ in 1..rayon::current_num_threads() {
                let running = running.clone();
                rayon::spawn(move || keep_awake(&running, owner, started));
            }
        }
        let _stop = Stop(&running);
        f()
    })
}

/// Passes running through [`on_pool`] from outside the pool, now.
static ACTIVE_PASSES: AtomicUsize = AtomicUsize::new(0);

/// One pass counted in [`ACTIVE_PASSES`] while it lives.
struct Pass;

impl Pass {
    fn begin() -> Pass {
        ACTIVE_PASSES.fetch_add(1, Ordering::AcqRel);
        Pass
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        ACTIVE_PASSES.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Clears the pass's running flag when `f` returns or unwinds, so that its wakers end.
struct Stop<'a>(&'a AtomicBool);

impl Drop for Stop<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

thread_local! {
    /// Whether this thread runs a [`keep_awake`] loop (further down its stack).
    static AWAKE_LOOP: Cell<bool> = const { Cell::new(false) };
}

/// How long a waker may find no work before it lets its worker sleep as rayon would.
const IDLE_LIMIT: Duration = Duration::from_millis(2);

/// How late a waker may start and still loop (see below).
const LATE_START: Duration = Duration::from_millis(1);

/// Keeps one pool worker looking for the pass's work ([`rayon::yield_now`]) instead of going to
/// sleep between the pass's parallel loops, until the pass ends or it has found no work for
/// [`IDLE_LIMIT`] (then the worker sleeps as rayon would for the rest of the pass).
///
/// Why: a rayon worker that finds no work for about 32 rounds of `sched_yield` (tens of µs) goes
/// to sleep, and the next parallel loop must wake it (`futex`) and wait for the scheduler to run
/// it. A pass is hundreds of loops, many of them shorter than that wake-up, separated by serial
/// work on the pass's own thread (allocations, an output's copy). `perf stat` of `octconv bench
/// 'seed_wrn(n = 2, k = 2)' --alphas 0.5 --batch 32`: 264 `futex` and 1 800 `sched_yield` calls per
/// pass of 10 ms, 9 % of the CPU time in the kernel. A rayon whose workers poll 64 times longer
/// before sleeping (a patched build, for the measurement only) ran that pass 10 % faster and
/// WRN-16-4's α = .75 pass 7 % faster (Intel Xeon model 167, AVX-512, 2 threads); rayon has no
/// setting for it, so the pass keeps its workers busy itself, as ONNX Runtime's pool spins.
///
/// The loop runs jobs on top of its own frame. It must never sit on top of a frame that the pass
/// waits for: it returns at once on the pass's own thread, on a thread already in such a loop, when
/// it starts late (a worker that took it while waiting inside one of the pass's jobs — the waker
/// jobs are the oldest in the pass thread's queue, so idle workers take them first), and as soon as
/// a second pass runs in the process ([`ACTIVE_PASSES`]: passes from several threads share the
/// workers as before). And it returns after [`IDLE_LIMIT`] without work, so even where it did end
/// up on such a frame the pass is delayed by that much, not stopped.
fn keep_awake(running: &AtomicBool, owner: Option<usize>, started: Instant) {
    if rayon::current_thread_index() == owner || AWAKE_LOOP.get() || started.elapsed() > LATE_START
    {
        return;
    }
    AWAKE_LOOP.set(true);
    let mut idle_since = None;
    while running.load(Ordering::Acquire) && ACTIVE_PASSES.load(Ordering::Acquire) == 1 {
        match rayon::yield_now() {
            Some(rayon::Yield::Executed) => idle_since = None,
            _ => {
                let since = *idle_since.get_or_insert_with(Instant::now);
                if since.elapsed() > IDLE_LIMIT {
                    break;
                }
                std::thread::yield_now();
            }
        }
    }
    AWAKE_LOOP.set(false);
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

    /// Passes with nested parallel loops from several threads at once (each keeping workers
    /// awake while it is the only one) all finish with the right sums, and a panic in a pass
    /// reaches its caller instead of leaving the pass waiting for its wakers.
    #[test]
    fn concurrent_passes_finish_and_a_panicking_pass_reaches_its_caller() {
        use rayon::prelude::*;
        let want: u64 = (0..20_000u64).map(|i| i * i % 7).sum();
        let pass = || {
            on_pool(|| {
                (0..20u64)
                    .into_par_iter()
                    .map(|b| {
                        (b * 1000..(b + 1) * 1000)
                            .into_par_iter()
                            .map(|i| i * i % 7)
                            .sum::<u64>()
                    })
                    .sum::<u64>()
            })
        };
        std::thread::scope(|s| {
            let runs: Vec<_> = (0..4)
                .map(|_| s.spawn(|| (0..50).map(|_| pass()).collect::<Vec<_>>()))
                .collect();
            for r in runs {
                assert!(r.join().unwrap().iter().all(|&v| v == want));
            }
        });
        // Alone again: the pass keeps the other workers awake and still finishes.
        assert_eq!(pass(), want);
        let caught = std::panic::catch_unwind(|| on_pool(|| -> u32 { panic!("in the pass") }));
        assert!(caught.is_err());
        assert_eq!(pass(), want);
    }
}
