//! Average and max pooling, applied to each branch of an octave pair.

use crate::ops::{avg_pool, max_pool};
use crate::value::OctValue;
use candle_core::Result;
use octconv_spec::ir::PoolSpec;

/// Which pooling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolKind {
    /// Average (padding counts as zeros).
    Avg,
    /// Maximum.
    Max,
}

/// Pooling with a square window, applied per branch.
#[derive(Clone, Copy, Debug)]
pub struct Pool {
    /// Average or max.
    pub kind: PoolKind,
    /// Window, stride, padding.
    pub spec: PoolSpec,
}

impl Pool {
    /// Pools every feature map of `x`.
    pub fn forward(&self, x: &OctValue) -> Result<OctValue> {
        let s = self.spec;
        x.map(|t| match self.kind {
            PoolKind::Avg => avg_pool(t, s.kernel, s.stride, s.padding),
            PoolKind::Max => max_pool(t, s.kernel, s.stride, s.padding),
        })
    }
}
