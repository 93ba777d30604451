//! Kernel working memory that outlives a single call: per-thread scratch buffers that only ever grow,
//! and output buffers that are not zero-filled when the kernel writes every element.
//!
//! Before this, each parallel task of a convolution allocated and zero-filled its own column and
//! staging matrices (several MiB each, up to sixteen times per call): 11 % of an OctConv layer's
//! forward pass was `memset` (`perf record` of `examples/layer_bench`, α = .25).

use super::Element;
use std::cell::RefCell;
use std::thread::LocalKey;

/// Per-task scratch: the column (or Winograd input-transform) matrix and a staging matrix.
pub struct Scratch<T> {
    /// Column matrix, Winograd `V`.
    pub col: Vec<T>,
    /// Staged outputs, Winograd `M`.
    pub stage: Vec<T>,
    /// More buffers for fused kernels ([`Scratch::many`]).
    pub extra: Vec<Vec<T>>,
}

impl<T> Default for Scratch<T> {
    fn default() -> Self {
        Scratch {
            col: Vec::new(),
            stage: Vec::new(),
            extra: Vec::new(),
        }
    }
}

impl<T: Element> Scratch<T> {
    /// `K` disjoint buffers of the given lengths from [`Scratch::extra`] (grown as needed; contents
    /// unspecified).
    pub fn many<const K: usize>(&mut self, lens: [usize; K]) -> [&mut [T]; K] {
        if self.extra.len() < K {
            self.extra.resize_with(K, Vec::new);
        }
        let mut bufs = self.extra.iter_mut();
        lens.map(|len| sized(bufs.next().expect("K buffers were made above"), len))
    }
}

/// The element types that have a per-thread scratch pool.
pub trait ScratchPool: Sized + 'static {
    /// This thread's pool of idle scratch sets.
    fn pool() -> &'static LocalKey<RefCell<Vec<Scratch<Self>>>>;
}

thread_local! {
    static POOL_F32: RefCell<Vec<Scratch<f32>>> = const { RefCell::new(Vec::new()) };
    static POOL_F64: RefCell<Vec<Scratch<f64>>> = const { RefCell::new(Vec::new()) };
}

impl ScratchPool for f32 {
    fn pool() -> &'static LocalKey<RefCell<Vec<Scratch<f32>>>> {
        &POOL_F32
    }
}

impl ScratchPool for f64 {
    fn pool() -> &'static LocalKey<RefCell<Vec<Scratch<f64>>>> {
        &POOL_F64
    }
}

/// Runs `f` with a scratch set borrowed from this thread's pool and returns the set afterwards.
///
/// The set is taken out of the pool for the duration of `f`, so a re-entrant call on the same thread
/// (rayon may run another task while a GEMM waits) gets its own set instead of a borrow error.
pub fn with_scratch<T: Element, R>(f: impl FnOnce(&mut Scratch<T>) -> R) -> R {
    let mut s = T::pool().with(|p| p.borrow_mut().pop()).unwrap_or_default();
    let r = f(&mut s);
    T::pool().with(|p| p.borrow_mut().push(s));
    r
}

/// `v[..len]`, growing `v` (zero-filled, once) when it is shorter. Contents are whatever the last
/// user left: callers overwrite what they read.
pub fn sized<T: Element>(v: &mut Vec<T>, len: usize) -> &mut [T] {
    if v.len() < len {
        v.resize(len, T::ZERO);
    }
    &mut v[..len]
}

/// A vector of `len` elements whose contents are unspecified, for outputs that the caller overwrites
/// completely before anything reads them (no `memset` of memory that is written next).
#[allow(clippy::uninit_vec)]
pub fn output_vec<T: Element>(len: usize) -> Vec<T> {
    let mut v = Vec::with_capacity(len);
    // SAFETY: `T` is f32 or f64 (the only `Element`s), for which every bit pattern is a valid value,
    // and the capacity is `len`. Every caller writes all `len` elements before reading any (each use
    // says why).
    unsafe { v.set_len(len) };
    v
}
