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

/// A frozen layer's prepared weights.
#[derive(Default)]
pub(crate) struct Cache {
    octave: Mutex<Vec<Arc<Prepared<f32>>>>,
    direct: Mutex<Vec<(OctaveGeometry, Arc<OctavePacked>)>>,
    /// A one-branch layer's Winograd weights, with and without a prologue (the two may differ
    /// for the same geometry: the direct stem kernel serves only the latter).
    single: Mutex<Vec<(bool, Arc<PreparedWinograd<f32>>)>>,
}

impl Cache {
    /// The fused kernel's weights for `g`, made by `make` the first time.
    pub(crate) fn octave(
        &self,
        g: &OctaveGeometry,
        make: impl FnOnce() -> Prepared<f32>,
    ) -> Arc<Prepared<f32>> {
        if let Some(p) = lock(&self.octave).iter().find(|p| p.geometry() == g) {
            return p.clone();
        }
        // Made outside the lock: passes on other threads are not held up meanwhile. One that made
        // the same weights first wins (no second copy is kept).
        let p = Arc::new(make());
        let mut list = lock(&self.octave);
        if let Some(q) = list.iter().find(|q| q.geometry() == g) {
            return q.clone();
        }
        keep(&mut list, p.clone());
        p
    }

    /// The direct kernel's packed weights for `g`, made by `make` the first time.
    pub(crate) fn direct(
        &self,
        g: &OctaveGeometry,
        make: impl FnOnce() -> OctavePacked,
    ) -> Arc<OctavePacked> {
        if let Some((_, p)) = lock(&self.direct).iter().find(|(k, _)| k == g) {
            return p.clone();
        }
        let p = Arc::new(make());
        let mut list = lock(&self.direct);
        if let Some((_, q)) = list.iter().find(|(k, _)| k == g) {
            return q.clone();
        }
        keep(&mut list, (*g, p.clone()));
        p
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
        let found = lock(&self.single)
            .iter()
            .find(|(pro, p)| *pro == prologue && p.geometry() == g)
            .map(|(_, p)| p.clone());
        if found.is_some() {
            return found;
        }
        let p = Arc::new(make()?);
        let mut list = lock(&self.single);
        if let Some((_, q)) = list
            .iter()
            .find(|(pro, q)| *pro == prologue && q.geometry() == g)
        {
            return Some(q.clone());
        }
        keep(&mut list, (prologue, p.clone()));
        Some(p)
    }

    /// Bytes of prepared weights held.
    pub(crate) fn bytes(&self) -> usize {
        let octave: usize = lock(&self.octave).iter().map(|p| p.bytes()).sum();
        let direct: usize = lock(&self.direct).iter().map(|(_, p)| p.bytes()).sum();
        let single: usize = lock(&self.single).iter().map(|(_, p)| p.bytes()).sum();
        octave + direct + single
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

/// The list behind `m` (a panic on another thread while it held the lock left it whole: entries
/// are only pushed and removed).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Adds `v`, dropping the oldest entries beyond [`KEPT`].
fn keep<T>(list: &mut Vec<T>, v: T) {
    list.push(v);
    if list.len() > KEPT {
        list.remove(0);
    }
}
