//! A per-channel map applied to a convolution's input as the kernel reads it: `relu(scale·x + shift)`
//! (or without the ReLU), the inference form of a batch norm and the ReLU after it.
//!
//! Every pre-activation block runs BN → ReLU → convolution. In inference the BN is a per-channel
//! affine map, so instead of writing the activated tensor out and reading it back, the Winograd
//! input gather applies the map to each value it loads (padding stays zero: it pads the activated
//! tensor), and the octave kernel pools the activated high input for H→L.

use super::simd::wide_fn;
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
    /// `relu(scale·v + shift)` (or without the ReLU). Always inlined, so that the AVX2 builds of
    /// the loops that call it ([`map_into`]) vectorise it.
    #[inline(always)]
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

wide_fn! {
    /// `dst[i] = act(src[i])` over the shorter of the two. Compiled for AVX2 too ([`wide_fn!`]):
    /// the portable build ran 4 lanes at a time, and mapping the inputs of DenseNet-121's 1×1
    /// layers that way took 8 % of its inference at batch 8 (`perf record`, Intel Xeon, 2 threads).
    /// Both builds compute `scale·v + shift` with a separate multiply and add, so they agree bit
    /// for bit.
    pub fn map_into<T: Element>(act: Act<T>, src: &[T], dst: &mut [T]) {
        for (d, &v) in dst.iter_mut().zip(src) {
            *d = act.apply(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wide build of [`map_into`] (the one that runs on an AVX2 machine) gives the portable
    /// per-value map bit for bit, with and without the ReLU, for every length up to 40 (whole
    /// vectors and tails), negative values, zeros of both signs and values the ReLU cuts.
    #[test]
    fn map_into_equals_the_per_value_map_bit_for_bit() {
        for relu in [false, true] {
            let act = Act {
                scale: 0.37f32,
                shift: -0.11,
                relu,
            };
            for len in 0..=40 {
                let src: Vec<f32> = (0..len)
                    .map(|i| match i % 7 {
                        0 => -0.0,
                        1 => 0.0,
                        _ => ((i * 37 % 23) as f32 - 11.0) / 3.0,
                    })
                    .collect();
                let mut got = vec![f32::NAN; len];
                map_into(act, &src, &mut got);
                let want: Vec<u32> = src.iter().map(|&v| act.apply(v).to_bits()).collect();
                let got: Vec<u32> = got.iter().map(|v| v.to_bits()).collect();
                assert_eq!(got, want, "relu {relu}, {len} values");
            }
        }
    }
}
