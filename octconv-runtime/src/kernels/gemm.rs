//! The GEMM all convolution kernels run on (the `gemm` crate, which candle itself uses) and how work is
//! shared out: images per task, parallelism inside a GEMM, and deterministic sums over tasks.

use super::scratch::{with_scratch, Scratch};
use super::Element;
use gemm::Parallelism;
use rayon::prelude::*;

/// How many of `n` images share one GEMM: enough for `target` columns (`per_image` each), but never
/// so many that the pool's threads run out of work.
pub(crate) fn images_per_task(n: usize, per_image: usize, target: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    target
        .div_ceil(per_image.max(1))
        .clamp(1, n.div_ceil(threads).max(1))
}

/// Parallelism inside each GEMM: none when the images already keep every thread busy.
pub(crate) fn gemm_parallelism(tasks: usize) -> Parallelism {
    let threads = rayon::current_num_threads().max(1);
    if tasks >= threads {
        Parallelism::None
    } else {
        Parallelism::Rayon(threads)
    }
}

/// A row-major matrix view: base pointer, row stride and column stride (in elements).
#[derive(Clone, Copy)]
pub(crate) struct Mat<T> {
    pub(crate) ptr: *const T,
    pub(crate) rs: usize,
    pub(crate) cs: usize,
}

/// `dst (m × n, row stride dst_rs) = [dst +] lhs (m × k) · rhs (k × n)`.
///
/// # Safety
/// Every index the three views reach for the given sizes must be in bounds of live, non-aliased
/// buffers (`dst` writable).
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn sgemm<T: Element>(
    (m, n, k): (usize, usize, usize),
    dst: *mut T,
    dst_rs: usize,
    accumulate: bool,
    lhs: Mat<T>,
    rhs: Mat<T>,
    par: Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                std::slice::from_raw_parts_mut(dst.add(i * dst_rs), n).fill(T::ZERO);
            }
        }
        return;
    }
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs as isize,
        accumulate,
        lhs.ptr,
        lhs.cs as isize,
        lhs.rs as isize,
        rhs.ptr,
        rhs.cs as isize,
        rhs.rs as isize,
        T::ONE,
        T::ONE,
        false,
        false,
        false,
        par,
    )
}

/// Sums per-task contributions deterministically for a given thread count: each worker adds a fixed,
/// contiguous range of tasks into its own buffer (with its own scratch), and the buffers are added in
/// worker order. Exact resume of training depends on this.
pub(crate) fn sum_tasks<T: Element>(
    tasks: usize,
    len: usize,
    task: impl Fn(usize, &mut Scratch<T>, &mut [T]) + Sync,
) -> Vec<T> {
    let workers = rayon::current_num_threads().clamp(1, tasks.max(1));
    let partials: Vec<Vec<T>> = (0..workers)
        .into_par_iter()
        .map(|j| {
            let mut acc = vec![T::ZERO; len];
            with_scratch(|scratch| {
                for t in (j * tasks / workers)..((j + 1) * tasks / workers) {
                    task(t, scratch, &mut acc);
                }
            });
            acc
        })
        .collect();
    let mut total = vec![T::ZERO; len];
    for part in &partials {
        total.iter_mut().zip(part).for_each(|(a, b)| *a += *b);
    }
    total
}
