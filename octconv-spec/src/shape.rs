//! The checker's types: single-frequency tensors, octave pairs and flat vectors — and the one channel
//! split rule every part of octconv uses.

use serde::Serialize;
use std::fmt;

/// Channels, height and width of one feature map (per sample).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Dims {
    /// Channels.
    pub c: usize,
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
}

impl Dims {
    /// `[c, h, w]`.
    pub fn new(c: usize, h: usize, w: usize) -> Self {
        Dims { c, h, w }
    }

    /// Number of elements.
    pub fn numel(&self) -> u64 {
        (self.c as u64)
            .saturating_mul(self.h as u64)
            .saturating_mul(self.w as u64)
    }
}

impl fmt::Display for Dims {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}, {}, {}]", self.c, self.h, self.w)
    }
}

/// The type of a value flowing through a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Shape {
    /// A single-frequency feature map `[C, H, W]`.
    Single(Dims),
    /// An octave pair: high `[Ch, H, W]` and low `[Cl, H/2, W/2]`. `Ch` is 0 at α = 1 (all low).
    Pair {
        /// High-frequency branch.
        high: Dims,
        /// Low-frequency branch, at half the resolution.
        low: Dims,
    },
    /// A flat feature vector `[F]`.
    Flat {
        /// Features.
        features: usize,
    },
}

impl Shape {
    /// Builds an octave pair from a high-branch resolution and a channel split.
    pub fn pair(high_c: usize, low_c: usize, h: usize, w: usize) -> Shape {
        Shape::Pair {
            high: Dims::new(high_c, h, w),
            low: Dims::new(low_c, h / 2, w / 2),
        }
    }

    /// The feature map of `high_c` high and `low_c` low channels at high-branch size `h`×`w`: a
    /// single-frequency map without low channels, else an octave pair.
    pub fn octave(high_c: usize, low_c: usize, h: usize, w: usize) -> Shape {
        if low_c == 0 {
            Shape::Single(Dims::new(high_c, h, w))
        } else {
            Shape::pair(high_c, low_c, h, w)
        }
    }

    /// Number of f32 elements per sample.
    pub fn numel(&self) -> u64 {
        match self {
            Shape::Single(d) => d.numel(),
            Shape::Pair { high, low } => high.numel().saturating_add(low.numel()),
            Shape::Flat { features } => *features as u64,
        }
    }

    /// Total channels (both branches of a pair; features of a flat vector).
    pub fn channels(&self) -> usize {
        match self {
            Shape::Single(d) => d.c,
            Shape::Pair { high, low } => high.c + low.c,
            Shape::Flat { features } => *features,
        }
    }

    /// The high-branch (or only) dims, if this is a feature map.
    pub fn high(&self) -> Option<Dims> {
        match self {
            Shape::Single(d) => Some(*d),
            Shape::Pair { high, .. } => Some(*high),
            Shape::Flat { .. } => None,
        }
    }

    /// The low-branch dims of a pair.
    pub fn low(&self) -> Option<Dims> {
        match self {
            Shape::Pair { low, .. } => Some(*low),
            _ => None,
        }
    }

    /// `(high, low)` channel counts: `(C, 0)` for a single-frequency map.
    pub fn split_channels(&self) -> Option<(usize, usize)> {
        match self {
            Shape::Single(d) => Some((d.c, 0)),
            Shape::Pair { high, low } => Some((high.c, low.c)),
            Shape::Flat { .. } => None,
        }
    }

    /// True for octave pairs.
    pub fn is_pair(&self) -> bool {
        matches!(self, Shape::Pair { .. })
    }

    /// The shape after the 2×2 average pooling that a stride-2 octave convolution starts with:
    /// every map's height and width halved, rounded down (channels unchanged; a flat vector as it is).
    pub fn halved(&self) -> Shape {
        let half = |d: &Dims| Dims::new(d.c, d.h / 2, d.w / 2);
        match self {
            Shape::Single(d) => Shape::Single(half(d)),
            Shape::Pair { high, low } => Shape::Pair {
                high: half(high),
                low: half(low),
            },
            Shape::Flat { .. } => *self,
        }
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Shape::Single(d) => write!(f, "{d}"),
            Shape::Pair { high, low } => write!(f, "an octave pair (high {high}, low {low})"),
            Shape::Flat { features } => write!(f, "a flat vector [{features}]"),
        }
    }
}

/// The channel split for `c` channels at ratio `alpha`: `(high, low)` with `low = floor(alpha · c)`
/// computed in f64 exactly as Python's `int(alpha * c)` (so weights stay compatible with the official
/// implementation) and `high = c − low`.
///
/// This is the only place the rule is written; the checker, cost model, code generator and runtime
/// all call it.
pub fn channel_split(c: usize, alpha: f64) -> (usize, usize) {
    let low = (alpha * c as f64) as usize; // `as` truncates toward zero, like Python's int()
    let low = low.min(c);
    (c - low, low)
}

/// The α a split corresponds to (`low / (high + low)`), for display.
pub fn split_alpha(high: usize, low: usize) -> f64 {
    if high + low == 0 {
        0.0
    } else {
        low as f64 / (high + low) as f64
    }
}

/// Multiplies, returning `None` on u64 overflow.
pub(crate) fn product(xs: &[u64]) -> Option<u64> {
    xs.iter().try_fold(1u64, |acc, &x| acc.checked_mul(x))
}

/// Pixels of a map.
pub(crate) fn hw(d: Dims) -> u64 {
    d.h as u64 * d.w as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_matches_python_int_of_alpha_times_c() {
        // CPython 3.11: int(0.25 * 160) = 40, int(0.1 * 30) = 3, int(0.3 * 10) = 3, int(0.7 * 10) = 7,
        // and int(0.29 * 100) = 28 because 0.29 * 100 = 28.999999999999996 in f64.
        assert_eq!(channel_split(160, 0.25), (120, 40));
        assert_eq!(channel_split(30, 0.1), (27, 3));
        assert_eq!(channel_split(10, 0.3), (7, 3));
        assert_eq!(channel_split(10, 0.7), (3, 7));
        assert_eq!(channel_split(100, 0.29), (72, 28));
        assert_eq!(channel_split(16, 0.0), (16, 0));
        assert_eq!(channel_split(16, 1.0), (0, 16));
    }
}
