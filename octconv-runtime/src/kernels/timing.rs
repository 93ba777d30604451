//! Opt-in wall-clock totals per kernel, for `octconv bench --train --profile`: a training step is a
//! candle autograd walk over our custom ops, so per-layer timing (as the inference profile does)
//! cannot see the backward; the ops themselves report here instead. Off (the default) a span costs
//! one relaxed atomic load.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

static ON: AtomicBool = AtomicBool::new(false);
static TOTALS: Mutex<BTreeMap<&'static str, (f64, u64)>> = Mutex::new(BTreeMap::new());

/// Starts (or stops) collecting; starting clears the totals.
pub fn collect(on: bool) {
    if on {
        if let Ok(mut t) = TOTALS.lock() {
            t.clear();
        }
    }
    ON.store(on, Ordering::Relaxed);
}

/// The totals so far: `(kernel, seconds, calls)`, slowest first.
pub fn totals() -> Vec<(&'static str, f64, u64)> {
    let mut v: Vec<_> = TOTALS
        .lock()
        .map(|t| t.iter().map(|(k, (s, c))| (*k, *s, *c)).collect())
        .unwrap_or_default();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v
}

/// A timed region: its time is added to `name`'s total when it drops.
pub struct Span(Option<(&'static str, Instant)>);

/// Times the enclosing scope as `name` while collecting (see [`collect`]).
pub fn span(name: &'static str) -> Span {
    Span(ON.load(Ordering::Relaxed).then(|| (name, Instant::now())))
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Some((name, t)) = self.0 {
            let s = t.elapsed().as_secs_f64();
            if let Ok(mut m) = TOTALS.lock() {
                let e = m.entry(name).or_insert((0.0, 0));
                e.0 += s;
                e.1 += 1;
            }
        }
    }
}
