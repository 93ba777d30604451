//! A per-channel map applied to a convolution's input as the kernel reads it: `relu(scale·x + shift)`
//! (or without the ReLU), the inference form of a batch norm and the ReLU after it.
//!
//! Every pre-activation block runs BN → ReLU → convolution. In inference the BN is a per-channel
//! affine map, so instead of writing the activated tensor out and reading it back, the Winograd
//! input gather applies the map to each value it loads (padding stays zero: it pads the activated
//! tensor), and the octave kernel pools the activated high input for H→L.

use super::Element;

/// The map of every channel of a convolution's input.
#[derive(Clone, Copy, Debug)]
pub struct Prologue<'a, T> {
    /// Per-channel scale.
    pub scale: &'a [T],
    /// Per-channel shift.
    pub shift: &'a [T],
    /// Whether a ReLU follows the affine map.
    pub relu: bool,
}

impl<T: Element> Prologue<'_, T> {
    /// The map of channel `c`.
    pub fn channel(&self, c: usize) -> Act<T> {
        Act {
            scale: self.scale[c],
            shift: self.shift[c],
            relu: self.relu,
        }
    }

    /// Applies the map to an NCHW buffer of `c` channels of `plane` values each (the reference the
    /// fused path is tested against, and the fallback for kernels that take no prologue).
    pub fn apply(&self, x: &[T], plane: usize) -> Vec<T> {
        let c = self.scale.len();
        x.chunks(plane.max(1))
            .enumerate()
            .flat_map(|(p, vals)| {
                let act = self.channel(p % c.max(1));
                vals.iter().map(move |&v| act.apply(v))
            })
            .collect()
    }
}

/// One channel's map.
#[derive(Clone, Copy, Debug)]
pub struct Act<T> {
    scale: T,
    shift: T,
    relu: bool,
}

impl<T: Element> Act<T> {
    /// `relu(scale·v + shift)` (or without the ReLU).
    #[inline]
    pub fn apply(self, v: T) -> T {
        let y = self.scale * v + self.shift;
        // As `f32::max(y, 0)` in the unfused BN + ReLU: NaN becomes 0.
        match self.relu {
            true if y > T::ZERO => y,
            true => T::ZERO,
            false => y,
        }
    }
}
