//! `split` and `merge`: between single-frequency tensors and octave pairs.

use crate::ops::{avg_pool2x2, upsample_nearest2x};
use crate::value::OctValue;
use candle_core::{Result, Tensor};

/// `[N, C, H, W]` → pair: the first `C − low` channels are the high branch, the last `low` channels,
/// average-pooled 2×2, the low branch. `low = 0` is the identity.
pub fn split(x: &OctValue, low: usize) -> Result<OctValue> {
    let OctValue::Single(t) = x else {
        candle_core::bail!("split needs a single-frequency tensor");
    };
    if low == 0 {
        return Ok(x.clone());
    }
    let c = t.dim(1)?;
    let high = (c > low).then(|| t.narrow(1, 0, c - low)).transpose()?;
    let low = avg_pool2x2(&t.narrow(1, c - low, low)?)?;
    Ok(OctValue::Pair { high, low })
}

/// Pair → `concat([high, upsample_nearest_x2(low)])` along channels, high first; identity on a
/// single-frequency tensor.
pub fn merge(x: &OctValue) -> Result<OctValue> {
    match x {
        OctValue::Pair { high, low } => {
            let up = upsample_nearest2x(low)?;
            Ok(OctValue::Single(match high {
                Some(h) => Tensor::cat(&[h, &up], 1)?,
                None => up,
            }))
        }
        OctValue::Single(_) => Ok(x.clone()),
        OctValue::Flat(_) => candle_core::bail!("merge needs an octave pair"),
    }
}

/// `[N, C, H, W]` → pair with high = x and low = x average-pooled 2×2 (every channel in both).
pub fn pyramid(x: &OctValue) -> Result<OctValue> {
    let OctValue::Single(t) = x else {
        candle_core::bail!("pyramid needs a single-frequency tensor");
    };
    Ok(OctValue::Pair {
        high: Some(t.clone()),
        low: avg_pool2x2(t)?,
    })
}

/// Pair → `concat([avg_pool_2x2(high), low])` at the low resolution, high first.
pub fn merge_low(x: &OctValue) -> Result<OctValue> {
    match x {
        OctValue::Pair { high, low } => Ok(OctValue::Single(match high {
            Some(h) => Tensor::cat(&[&avg_pool2x2(h)?, low], 1)?,
            None => low.clone(),
        })),
        OctValue::Single(_) => Ok(x.clone()),
        OctValue::Flat(_) => candle_core::bail!("merge needs an octave pair"),
    }
}

/// Nearest-neighbour upsampling of every branch by `scale` per side.
pub fn upsample(x: &OctValue, scale: usize) -> Result<OctValue> {
    match x {
        OctValue::Flat(_) => candle_core::bail!("upsample needs a feature map"),
        _ => x.map(|t| crate::ops::upsample_nearest(t, scale)),
    }
}
