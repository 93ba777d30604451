//! Kernel working memory that outlives a single call: per-thread scratch buffers that only ever grow,
//! and output buffers that are not zero-filled when the kernel writes every element.
//!
//! Before this, each parallel task of a convolution allocated and zero-filled its own column and
//! staging matrices (several MiB each, up to sixteen times per call): 11 % of an OctConv layer's
//! forward pass was `memset` (`perf record` of `examples/layer_bench`, α = .25).

use super::Element;
use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::LocalKey;

/// Bytes held by scratch buffers on every thread, in use or idle in a pool ([`scratch_bytes`]).
static SCRATCH_BYTES: AtomicUsize = AtomicUsize::new(0);

/// Bytes held by scratch buffers on every thread, in use or idle in a pool: the kernels' working
/// memory that outlives a call (what `octconv bench` reports apart from activations).
pub fn scratch_bytes() -> usize {
    SCRATCH_BYTES.load(Ordering::Relaxed)
}

/// The most scratch a single kernel task has asked for since the last [`release_pools`]: the sum,
/// over the buffers of its set, of the largest length it asked each for. Unlike the bytes the pools
/// hold, this does not depend on which thread ran which task, so `octconv bench` reports scratch as
/// this times the number of threads (each thread holding one set sized for the largest task).
pub fn largest_task_bytes() -> usize {
    LARGEST_TASK.load(Ordering::Relaxed)
}

static LARGEST_TASK: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// The running task's demand: (buffer address, largest length in bytes asked of it).
    static DEMAND: RefCell<Vec<(usize, usize)>> = const { RefCell::new(Vec::new()) };
    /// Whether a task of [`with_scratch`] is running on this thread (its demand is recorded).
    static IN_TASK: Cell<bool> = const { Cell::new(false) };
}

/// Frees the idle scratch sets of this thread and of every thread of rayon's global pool, so that
/// the next pass grows, and is charged for, the scratch it needs itself (`octconv bench` measures
/// each α from empty pools, whatever ran before), and restarts [`largest_task_bytes`]. Sets in use
/// are kept.
pub fn release_pools() {
    LARGEST_TASK.store(0, Ordering::Relaxed);
    fn here() {
        release::<f32>();
        release::<f64>();
    }
    here();
    rayon::broadcast(|_| here());
}

fn release<T: Element>() {
    let sets = T::pool().with(|p| std::mem::take(&mut *p.borrow_mut()));
    let bytes: usize = sets.iter().map(Scratch::bytes).sum();
    SCRATCH_BYTES.fetch_sub(bytes, Ordering::Relaxed);
}

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
    /// Bytes held by the set's buffers.
    fn bytes(&self) -> usize {
        let elems = self.col.capacity()
            + self.stage.capacity()
            + self.extra.iter().map(Vec::capacity).sum::<usize>();
        elems * std::mem::size_of::<T>()
    }

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
    // A re-entrant task keeps its own demand; the outer one's is restored after it.
    let outer = DEMAND.with(|d| std::mem::take(&mut *d.borrow_mut()));
    let was_in_task = IN_TASK.with(|t| t.replace(true));
    let mut s = T::pool().with(|p| p.borrow_mut().pop()).unwrap_or_default();
    let r = f(&mut s);
    T::pool().with(|p| p.borrow_mut().push(s));
    IN_TASK.with(|t| t.set(was_in_task));
    let demand: usize = DEMAND
        .with(|d| std::mem::replace(&mut *d.borrow_mut(), outer))
        .iter()
        .map(|&(_, bytes)| bytes)
        .sum();
    LARGEST_TASK.fetch_max(demand, Ordering::Relaxed);
    r
}

/// Records that the running task asked for `bytes` of the buffer at `addr`.
fn record_demand(addr: usize, bytes: usize) {
    if !IN_TASK.with(Cell::get) {
        return;
    }
    DEMAND.with(|d| {
        let mut d = d.borrow_mut();
        match d.iter_mut().find(|(a, _)| *a == addr) {
            Some((_, b)) => *b = (*b).max(bytes),
            None => d.push((addr, bytes)),
        }
    });
}

/// `v[..len]`, growing `v` (zero-filled, once) when it is shorter. Contents are whatever the last
/// user left: callers overwrite what they read. `v` must be a buffer of a [`Scratch`] set: its growth
/// is counted in [`scratch_bytes`].
pub fn sized<T: Element>(v: &mut Vec<T>, len: usize) -> &mut [T] {
    record_demand(v as *const Vec<T> as usize, len * std::mem::size_of::<T>());
    if v.len() < len {
        let before = v.capacity();
        v.resize(len, T::ZERO);
        let grown = (v.capacity() - before) * std::mem::size_of::<T>();
        SCRATCH_BYTES.fetch_add(grown, Ordering::Relaxed);
    }
    &mut v[..len]
}

/// A vector of `len` elements whose contents are unspecified, for outputs that the caller overwrites
/// completely before anything reads them (no `memset` of memory that is written next).
#[allow(clippy::uninit_vec)]
pub fn output_vec<T: Element>(len: usize) -> Vec<T> {
    let mut v = Vec::with_capacity(len);
    // SAFETY: `T` is f32 or f64 (the only `Element`s), for which every bit pattern is a valid value,
    // and the capacity is `len`. Every caller writes each element before reading it (each use says
    // why): kernel outputs are written whole; a concatenation chain's buffer (`exec::alloc`) is
    // written channel by channel, and a link's view (the first channels of each image) spans
    // unwritten channels between images that no reader reads.
    unsafe { v.set_len(len) };
    v
}
