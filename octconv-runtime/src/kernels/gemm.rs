//! The GEMM all convolution kernels run on (the `gemm` crate, which candle itself uses) and how work is
//! shared out: images per task, parallelism inside a GEMM, and deterministic sums over tasks.

use super::scratch::{with_scratch, Scratch};
use super::Element;
use gemm::Parallelism;
use rayon::prelude::*;

/// How many of `n` images share one GEMM: enough for `target` columns (`per_image` each), but never
/// so many that the pool's threads run out of work. Where images are small enough to share GEMMs at
/// all, the count is raised so that the tasks come out as an exact multiple of the threads when such
/// a count exists (fewer, larger GEMMs): 8 images of 14×14 made 3 tasks of 3, 3 and 2 images for 2
/// threads, one thread idle for a third of each 1×1 layer of ResNeXt-50's third stage (79–80 GMAC/s,
/// against 99–103 at 28×28 and 56×56); now 2 tasks of 4.
pub(crate) fn images_per_task(n: usize, per_image: usize, target: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let want = target
        .div_ceil(per_image.max(1))
        .clamp(1, n.div_ceil(threads).max(1));
    let tasks = n.div_ceil(want);
    if want == 1 || tasks <= threads || tasks.is_multiple_of(threads) {
        return want;
    }
    // The largest multiple of the threads below `tasks` that some images-per-task count gives.
    (1..=tasks / threads)
        .rev()
        .map(|k| n.div_ceil(k * threads))
        .find(|&per| n.div_ceil(per).is_multiple_of(threads))
        .unwrap_or(want)
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
    // The first partial sum becomes the total (one buffer of `len` fewer at the peak: the F(2×2)
    // weight gradient of a 256-channel layer is 4 MiB). `0 + p₀` equals `p₀` (up to the sign of a
    // zero), so the sums are those of a zeroed total.
    let mut partials = partials.into_iter();
    let mut total = partials.next().unwrap_or_else(|| vec![T::ZERO; len]);
    for part in partials {
        total.iter_mut().zip(&part).for_each(|(a, b)| *a += *b);
    }
    total
}

/// `y (n × out) = x (n × in) · wᵀ + b` for `w` `[out, in]` (a linear layer's inference).
///
/// A classifier or squeeze-and-excitation layer sees a handful of rows (the batch) against a large
/// weight: as a GEMM with 8 rows the `gemm` crate packs the whole weight on every call and ran the
/// ResNet-50 classifier (8 × 2048 · 2048 × 1000) at 3.7 GMAC/s, 4.4 ms a pass at batch 8. For up to
/// [`DOT_ROWS`] rows each weight row is instead read once and dotted with every input row
/// ([`dots`]: eight rows at a time in AVX-512 where the CPU has it, else 16-lane partial sums; a
/// fixed order either way); more rows run as one GEMM.
pub fn linear<T: Element>(
    x: &[T],
    w: &[T],
    b: Option<&[T]>,
    (n, inp, out): (usize, usize, usize),
) -> Vec<T> {
    assert!(
        x.len() >= n * inp && w.len() >= out * inp && b.is_none_or(|b| b.len() >= out),
        "linear: operand sizes"
    );
    let mut y = vec![T::ZERO; n * out];
    if n == 0 || out == 0 {
        return y;
    }
    if n <= DOT_ROWS {
        // yᵀ row by row (one weight row each), then transposed.
        let mut yt = vec![T::ZERO; out * n];
        yt.par_chunks_mut(n * 64).enumerate().for_each(|(t, rows)| {
            for (k, yo) in rows.chunks_mut(n).enumerate() {
                let o = t * 64 + k;
                let wo = &w[o * inp..][..inp];
                dots(&x[..n * inp], wo, yo);
                if let Some(b) = b {
                    yo.iter_mut().for_each(|v| *v += b[o]);
                }
            }
        });
        for (o, col) in yt.chunks(n).enumerate() {
            for (i, &v) in col.iter().enumerate() {
                y[i * out + o] = v;
            }
        }
        return y;
    }
    if let Some(b) = b {
        for row in y.chunks_mut(out) {
            row.copy_from_slice(&b[..out]);
        }
    }
    let lhs = Mat {
        ptr: x.as_ptr(),
        rs: inp,
        cs: 1,
    };
    let rhs = Mat {
        ptr: w.as_ptr(),
        rs: 1,
        cs: inp,
    };
    let par = Parallelism::Rayon(rayon::current_num_threads());
    // SAFETY: x is n × inp, wᵀ is read as inp × out from w (out × inp), y is n × out (checked above).
    unsafe {
        sgemm(
            (n, out, inp),
            y.as_mut_ptr(),
            out,
            b.is_some(),
            lhs,
            rhs,
            par,
        )
    };
    y
}

/// The most input rows [`linear`] handles by dot products rather than a GEMM.
pub const DOT_ROWS: usize = 16;

/// `y[i] = Σ x[i·len + c]·w[c]` for the `y.len()` rows of `x`, `len = w.len()`: AVX-512 on f32
/// where the CPU has it ([`avx512::dots`]), else [`dot`] per row.
///
/// Why our own: [`dot`] in the baseline build ran SE-ResNet-50's squeeze-excite layers
/// (`[8, 2048] · [2048, 128]ᵀ`) at 7 GMAC/s, 0.2 ms each, 3–4 ms of its pass at batch 8 with the
/// classifier, against 1.7 ms for ONNX Runtime's (Intel Xeon, AVX-512, 2 threads); built for AVX2
/// its 16 partial sums are two dependent vector chains, and it ran slower still.
fn dots<T: Element>(x: &[T], w: &[T], y: &mut [T]) {
    let len = w.len();
    #[cfg(target_arch = "x86_64")]
    if let (Some(x), Some(w), true) = (T::as_f32(x), T::as_f32(w), super::simd::has_avx512f()) {
        let y = T::as_f32_mut(y).expect("f32 inputs, f32 outputs");
        assert!(x.len() >= y.len() * len, "dots: operand sizes");
        // SAFETY: AVX-512F checked; `x` holds `y.len()` rows of `len` values (asserted).
        unsafe { avx512::dots(x, w, y) };
        return;
    }
    for (i, v) in y.iter_mut().enumerate() {
        *v = dot(&x[i * len..][..len], w);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// [`super::dots`] on AVX-512: up to eight rows at a time, each weight vector loaded once and
    /// multiplied into one accumulator per row (eight independent chains); the last `len % 16`
    /// columns by masked loads; each row's 16 lanes then summed.
    ///
    /// # Safety
    /// AVX-512F; `x` holds `y.len()` rows of `w.len()` values.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn dots(x: &[f32], w: &[f32], y: &mut [f32]) {
        let mut i = 0;
        while i < y.len() {
            let r = (y.len() - i).min(8);
            let x = &x[i * w.len()..];
            let y = &mut y[i..i + r];
            match r {
                8 => rows::<8>(x, w, y),
                7 => rows::<7>(x, w, y),
                6 => rows::<6>(x, w, y),
                5 => rows::<5>(x, w, y),
                4 => rows::<4>(x, w, y),
                3 => rows::<3>(x, w, y),
                2 => rows::<2>(x, w, y),
                _ => rows::<1>(x, w, y),
            }
            i += r;
        }
    }

    /// `R` rows of [`dots`].
    #[target_feature(enable = "avx512f")]
    unsafe fn rows<const R: usize>(x: &[f32], w: &[f32], y: &mut [f32]) {
        let len = w.len();
        let (xp, wp) = (x.as_ptr(), w.as_ptr());
        let mut acc = [_mm512_setzero_ps(); R];
        let mut c = 0;
        while c + 16 <= len {
            let wv = _mm512_loadu_ps(wp.add(c));
            for (r, a) in acc.iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(_mm512_loadu_ps(xp.add(r * len + c)), wv, *a);
            }
            c += 16;
        }
        if c < len {
            let m: __mmask16 = (1u16 << (len - c)) - 1;
            let wv = _mm512_maskz_loadu_ps(m, wp.add(c));
            for (r, a) in acc.iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, xp.add(r * len + c)), wv, *a);
            }
        }
        for (v, a) in y.iter_mut().zip(acc) {
            *v = _mm512_reduce_add_ps(a);
        }
    }
}

/// `Σ a[i]·b[i]` in 16 partial sums (so the loop vectorises), added in a fixed order.
fn dot<T: Element>(a: &[T], b: &[T]) -> T {
    const L: usize = 16;
    let mut acc = [T::ZERO; L];
    let (ca, cb) = (a.chunks_exact(L), b.chunks_exact(L));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..L {
            acc[k] += x[k] * y[k];
        }
    }
    let mut tail = T::ZERO;
    for (&x, &y) in ra.iter().zip(rb) {
        tail += x * y;
    }
    let mut width = L;
    while width > 1 {
        width /= 2;
        for k in 0..width {
            let v = acc[k + width];
            acc[k] += v;
        }
    }
    acc[0] + tail
}

#[cfg(test)]
mod tests {
    use super::images_per_task;

    fn on_threads(threads: usize, f: impl FnOnce() -> usize + Send) -> usize {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(f)
    }

    /// Small images share GEMMs in task counts that are a multiple of the threads where one exists;
    /// large images keep one image per task; a task count below the threads is never produced.
    #[test]
    fn images_per_task_balances_small_images_and_keeps_large_ones_apart() {
        // 8 images of 14×14 for 2 threads: 2 tasks of 4 (was 3 tasks: 3, 3, 2).
        assert_eq!(on_threads(2, || images_per_task(8, 196, 512)), 4);
        // Large images: one per task, whatever the count.
        assert_eq!(on_threads(4, || images_per_task(6, 1024, 512)), 1);
        assert_eq!(on_threads(2, || images_per_task(9, 3136, 512)), 1);
        // Already a multiple: unchanged.
        assert_eq!(on_threads(2, || images_per_task(32, 16, 64)), 4);
        for threads in 1..=6 {
            for n in 1..=40 {
                for per_image in [1, 16, 49, 64, 196, 700] {
                    let nb = on_threads(threads, || images_per_task(n, per_image, 512));
                    let tasks = n.div_ceil(nb);
                    // The count before the rounding: enough columns, at most n / threads.
                    let want = 512usize.div_ceil(per_image).clamp(1, n.div_ceil(threads));
                    let before = n.div_ceil(want);
                    let what = format!("n {n}, {per_image} per image, {threads} threads");
                    assert!(nb >= 1 && nb <= n, "{what}: {nb} per task");
                    assert!(tasks >= threads.min(before), "{what}: {tasks} tasks");
                    assert!(
                        tasks == before || tasks.is_multiple_of(threads),
                        "{what}: {tasks} tasks"
                    );
                }
            }
        }
    }
}
