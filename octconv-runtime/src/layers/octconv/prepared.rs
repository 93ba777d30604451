//! Weights prepared once for a frozen layer's CPU kernels ([`crate::layers::OctLayer::freeze`]):
//! the fused Winograd kernel's transformed weights ([`octave::Prepared`]) and the direct kernel's
//! packed ones ([`direct::OctavePacked`]), per geometry.
//!
//! Why: both kernels otherwise prepare the weights on every pass, a cost that does not shrink with
//! the batch: with the preparation kept (a measurement build that kept it by weight address),
//! `octconv bench 'seed_wrn(n = 2, k = 2)' --batch 32 --alphas 0.5` ran 9.3 → 7.7 ms a pass and
//! WRN-16-4 at α = .75 28.1 → 25.7 ms (Intel Xeon model 167, AVX-512, 2 threads, 3 alternating
//! rounds). ONNX Runtime prepacks its weights once per session the same way.
//!
//! Safe only because a frozen layer's weights cannot change: freezing replaced them with private
//! copies that no `Var` shares, and a frozen layer refuses training.

use crate::kernels::direct::OctavePacked;
use crate::kernels::octave::{OctaveGeometry, Prepared};
use std::sync::{Arc, Mutex};

/// How many geometries (batch sizes, map sizes) a layer keeps prepared weights for; the oldest
/// goes first.
const KEPT: usize = 4;

/// A frozen layer's prepared weights.
#[derive(Default)]
pub(crate) struct Cache {
    octave: Mutex<Vec<Arc<Prepared<f32>>>>,
    direct: Mutex<Vec<(OctaveGeometry, Arc<OctavePacked>)>>,
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
        // Made outside the lock: passes on other threads are not held up meanwhile.
        let p = Arc::new(make());
        keep(&mut lock(&self.octave), p.clone());
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
        keep(&mut lock(&self.direct), (*g, p.clone()));
        p
    }

    /// Bytes of prepared weights held.
    pub(crate) fn bytes(&self) -> usize {
        let octave: usize = lock(&self.octave).iter().map(|p| p.bytes()).sum();
        let direct: usize = lock(&self.direct).iter().map(|(_, p)| p.bytes()).sum();
        octave + direct
    }
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("octave", &lock(&self.octave).len())
            .field("direct", &lock(&self.direct).len())
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
