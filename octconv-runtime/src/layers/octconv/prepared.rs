//! Weights prepared once for a frozen layer's CPU kernels ([`crate::layers::OctLayer::freeze`]):
//! the fused Winograd kernel's transformed weights ([`Prepared`]), the direct kernel's packed ones
//! ([`OctavePacked`]) and a one-branch layer's Winograd weights ([`PreparedWinograd`]), per
//! geometry.
//!
//! Why: both kernels otherwise prepare the weights on every pass, a cost that does not shrink with
//! the batch: with the preparation kept (a measurement build that kept it by weight address),
//! `octconv bench 'seed_wrn(n = 2, k = 2)' --batch 32 --alphas 0.5` ran 9.3 → 7.7 ms a pass and
//! WRN-16-4 at α = .75 28.1 → 25.7 ms (Intel Xeon model 167, AVX-512, 2 threads, 3 alternating
//! rounds). ONNX Runtime prepacks its weights once per session the same way.
//!
//! Safe only because a frozen layer's weights cannot change: freezing replaced them with private,
//! detached copies that no `Var` shares, and a frozen layer refuses training.
//!
//! Kept per geometry, the batch size included (it picks the Winograd variant and the weight
//! blocks): a batch of another size prepares its own set (at most [`KEPT`] per layer), as the
//! last, smaller batch of `octconv eval` does once.

use crate::kernels::conv2d::PreparedWinograd;
use crate::kernels::direct::OctavePacked;
use crate::kernels::octave::{OctaveGeometry, Prepared};
use crate::kernels::ConvGeometry;
use std::sync::{Arc, Mutex};

/// How many geometries (batch sizes, map sizes) a layer keeps prepared weights for; the oldest
/// goes first.
const KEPT: usize = 4;

/// A frozen layer's prepared weights, each list keyed by what they were prepared for.
#[derive(Default)]
pub(crate) struct Cache {
    octave: Kept<OctaveGeometry, Prepared<f32>>,
    direct: Kept<OctaveGeometry, OctavePacked>,
    /// A one-branch layer's Winograd weights, with and without a prologue (the two may differ
    /// for the same geometry: the direct stem kernel serves only the latter).
    single: Kept<(bool, ConvGeometry), PreparedWinograd<f32>>,
}

/// Prepared values by key, the newest last.
type Kept<K, V> = Mutex<Vec<(K, Arc<V>)>>;

impl Cache {
    /// The fused kernel's weights for `g`, made by `make` the first time.
    pub(crate) fn octave(
        &self,
        g: &OctaveGeometry,
        make: impl FnOnce() -> Prepared<f32>,
    ) -> Arc<Prepared<f32>> {
        let made = get_or_make(&self.octave, *g, || Some(make()));
        made.expect("made unconditionally")
    }

    /// The direct kernel's packed weights for `g`, made by `make` the first time.
    pub(crate) fn direct(
        &self,
        g: &OctaveGeometry,
        make: impl FnOnce() -> OctavePacked,
    ) -> Arc<OctavePacked> {
        let made = get_or_make(&self.direct, *g, || Some(make()));
        made.expect("made unconditionally")
    }

    /// A one-branch Winograd layer's weights for `g` (`prologue`: for the pass that maps its
    /// input as it reads it), made by `make` the first time; `None` where `make` finds nothing
    /// to prepare (another algorithm runs), asked again next time.
    pub(crate) fn single(
        &self,
        g: &ConvGeometry,
        prologue: bool,
        make: impl FnOnce() -> Option<PreparedWinograd<f32>>,
    ) -> Option<Arc<PreparedWinograd<f32>>> {
        get_or_make(&self.single, (prologue, *g), make)
    }

    /// Bytes of prepared weights held.
    pub(crate) fn bytes(&self) -> usize {
        fn sum<K, V>(list: &Kept<K, V>, bytes: impl Fn(&V) -> usize) -> usize {
            lock(list).iter().map(|(_, v)| bytes(v)).sum()
        }
        sum(&self.octave, Prepared::bytes)
            + sum(&self.direct, OctavePacked::bytes)
            + sum(&self.single, PreparedWinograd::bytes)
    }
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("octave", &lock(&self.octave).len())
            .field("direct", &lock(&self.direct).len())
            .field("single", &lock(&self.single).len())
            .field("bytes", &self.bytes())
            .finish()
    }
}

/// The value kept under `key`, or the one `make` makes (kept, the oldest beyond [`KEPT`]
/// dropped); `None` where `make` makes none. Made outside the lock, so passes on other threads
/// are not held up meanwhile; where one of them kept a value for `key` first, that one wins (no
/// second copy is kept).
fn get_or_make<K: PartialEq, V>(
    list: &Kept<K, V>,
    key: K,
    make: impl FnOnce() -> Option<V>,
) -> Option<Arc<V>> {
    let find = |l: &[(K, Arc<V>)]| l.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone());
    if let Some(v) = find(&lock(list)) {
        return Some(v);
    }
    let v = Arc::new(make()?);
    let mut l = lock(list);
    if let Some(first) = find(&l) {
        return Some(first);
    }
    l.push((key, v.clone()));
    if l.len() > KEPT {
        l.remove(0);
    }
    Some(v)
}

/// The list behind `m` (a panic on another thread while it held the lock left it whole: entries
/// are only pushed and removed).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
