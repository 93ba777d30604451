//! `Dropout` with masks from our own seeded RNG (candle's CPU RNG cannot be seeded).

use crate::tape::{Backward, ParamGrads, PassOn, Recorded};
use crate::value::OctValue;
use candle_core::{Result, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::sync::{Arc, Mutex};

/// Inverted dropout: in train mode each element is zeroed with probability `p` and the rest scaled by
/// `1 / (1 − p)`; identity in eval mode. The masks come from a shared, seeded ChaCha8 stream so a run
/// is reproducible.
#[derive(Clone, Debug)]
pub struct Dropout {
    p: f64,
    rng: DropoutRng,
}

/// The seeded random stream that dropout layers draw their masks from; clones share the stream, so a
/// model's dropout layers draw in execution order from one seed.
#[derive(Clone, Debug)]
pub struct DropoutRng(Arc<Mutex<ChaCha8Rng>>);

impl DropoutRng {
    /// A stream seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        DropoutRng(Arc::new(Mutex::new(ChaCha8Rng::seed_from_u64(seed))))
    }

    /// Restarts the stream from `seed`.
    pub fn reseed(&self, seed: u64) {
        if let Ok(mut rng) = self.0.lock() {
            *rng = ChaCha8Rng::seed_from_u64(seed);
        }
    }
}

impl Dropout {
    /// Dropout with probability `p`, drawing masks from `rng`.
    pub fn new(p: f64, rng: DropoutRng) -> Self {
        Dropout { p, rng }
    }

    /// Dropout with its own stream seeded with `seed`.
    pub fn seeded(p: f64, seed: u64) -> Self {
        Self::new(p, DropoutRng::new(seed))
    }

    fn mask(&self, t: &Tensor) -> Result<Tensor> {
        let n = t.elem_count();
        let keep = 1.0 - self.p;
        let mut rng = self
            .rng
            .0
            .lock()
            .map_err(|_| candle_core::Error::Msg("dropout RNG lock poisoned".into()))?;
        let m: Vec<f32> = (0..n)
            .map(|_| {
                if rng.random::<f64>() < keep {
                    (1.0 / keep) as f32
                } else {
                    0.0
                }
            })
            .collect();
        Tensor::from_vec(m, t.shape(), t.device())?.to_dtype(t.dtype())
    }

    /// Applies dropout in train mode, the identity otherwise.
    pub fn forward_t(&self, x: &OctValue, train: bool) -> Result<OctValue> {
        if !train || self.p == 0.0 {
            return Ok(x.clone());
        }
        x.map(|t| t * self.mask(t)?)
    }

    /// The training forward of the planned step ([`crate::tape`]): the same masks, drawn in the
    /// same order as [`Dropout::forward_t`]; the backward multiplies the gradient by them. With
    /// `p = 0` the value and its gradient pass through.
    pub fn train_record(&self, x: &OctValue) -> Result<Recorded> {
        if self.p == 0.0 {
            return Ok((x.clone(), Box::new(PassOn)));
        }
        let masks: Vec<Tensor> = match x {
            OctValue::Pair { high, low } => high
                .iter()
                .chain(std::iter::once(low))
                .map(|t| self.mask(t))
                .collect::<Result<_>>()?,
            OctValue::Single(t) | OctValue::Flat(t) => vec![self.mask(t)?],
        };
        let mut it = masks.iter();
        let y = x.map(|t| match it.next() {
            Some(m) => t * m,
            None => candle_core::bail!("dropout: a mask is missing"),
        })?;
        Ok((y, Box::new(Masks(masks))))
    }
}

/// The masks of one training-mode dropout, in branch order (high, then low).
struct Masks(Vec<Tensor>);

impl Backward for Masks {
    fn backward(
        self: Box<Self>,
        grad: &OctValue,
        _params: &mut ParamGrads,
    ) -> Result<Vec<Option<OctValue>>> {
        let mut it = self.0.iter();
        let dx = grad.map(|g| match it.next() {
            Some(m) => g * m,
            None => candle_core::bail!("dropout backward: a mask is missing"),
        })?;
        Ok(vec![Some(dx)])
    }
}
