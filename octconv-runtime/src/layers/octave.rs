//! `split` and `merge`: between single-frequency tensors and octave pairs.

use crate::kernels::{self, resample};
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
            if let Some(merged) = merge_inference(high.as_ref(), low)? {
                return Ok(OctValue::Single(merged));
            }
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

/// [`merge`] in one pass ([`resample::merge_planes`]) where no gradient is recorded (inference) and
/// both branches are f32 CPU maps of matching sizes; `None` elsewhere (candle's ops run).
fn merge_inference(high: Option<&Tensor>, low: &Tensor) -> Result<Option<Tensor>> {
    let Some(high) = high else {
        return Ok(None);
    };
    let ((n, ch, h, w), (nl, cl, lh, lw)) = (high.dims4()?, low.dims4()?);
    let plain = |t: &Tensor| kernels::serves_f32(t) && !t.track_op();
    if !(plain(high) && plain(low)) || n != nl || (h, w) != (2 * lh, 2 * lw) {
        return Ok(None);
    }
    let v = kernels::with_f32_all([high, low], |[hv, lv]| {
        resample::merge_planes(hv, lv, (n, ch, cl), (h, w))
    })?;
    Tensor::from_vec(v, (n, ch + cl, h, w), high.device()).map(Some)
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The one-pass merge of inference writes what candle's upsampling and concatenation write (the
    /// values are copies, so exactly), for odd channel counts and a non-square map.
    #[test]
    fn inference_merge_equals_the_recorded_upsample_and_concat_exactly() {
        let dev = Device::Cpu;
        let (n, ch, cl, h, w) = (2, 3, 5, 6, 10);
        let seq = |len: usize, k: f32| (0..len).map(|i| i as f32 * k - 7.0).collect::<Vec<f32>>();
        let high = Tensor::from_vec(seq(n * ch * h * w, 0.5), (n, ch, h, w), &dev).unwrap();
        let low =
            Tensor::from_vec(seq(n * cl * h * w / 4, 0.25), (n, cl, h / 2, w / 2), &dev).unwrap();
        let fast = merge(&OctValue::Pair {
            high: Some(high.clone()),
            low: low.clone(),
        })
        .unwrap();
        // Variables record their ops: candle's upsampling and concatenation run.
        let (vh, vl) = (
            Var::from_tensor(&high).unwrap(),
            Var::from_tensor(&low).unwrap(),
        );
        let recorded = merge(&OctValue::Pair {
            high: Some(vh.as_tensor().clone()),
            low: vl.as_tensor().clone(),
        })
        .unwrap();
        let (OctValue::Single(a), OctValue::Single(b)) = (fast, recorded) else {
            panic!("merge must give a single tensor");
        };
        assert!(!a.track_op() && b.track_op());
        assert_eq!(a.dims(), &[n, ch + cl, h, w]);
        let (a, b) = (
            a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        assert_eq!(a, b);
    }
}
