//! ReLU6, `min(max(x, 0), 6)`, in one pass over the map, forward and backward.
//!
//! The generic path ([`crate::layers::Activation`]) computes it as `relu(x) − relu(x − 6)`: four
//! candle ops, each writing a map of the input's size, so several copies of MobileNet's expanded maps
//! were alive at once (the peak memory of `mobilenet_v2`, `docs/memory.md`). The gradient is the
//! same as that formula's: 1 where `0 < x ≤ 6`, else 0.

use super::Element;
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Elements per parallel chunk.
const CHUNK: usize = 1 << 14;

/// ReLU6 (see the module docs).
#[derive(Clone, Copy, Debug)]
pub struct Relu6;

fn slice<'a, T>(v: &'a [T], l: &Layout) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => bail!("relu6: argument must be contiguous"),
    }
}

fn forward<T: Element>(x: &[T]) -> Vec<T> {
    let six = T::from_f64(6.0);
    let mut out = super::scratch::output_vec(x.len());
    // Every element is written.
    out.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(o, x)| {
            // Two selects, not nested branches, so the loop vectorises.
            for (o, &v) in o.iter_mut().zip(x) {
                let v = if v > T::ZERO { v } else { T::ZERO };
                *o = if v < six { v } else { six };
            }
        });
    out
}

fn backward<T: Element>(x: &[T], g: &[T]) -> Vec<T> {
    let six = T::from_f64(6.0);
    let mut out = super::scratch::output_vec(x.len());
    // Every element is written.
    out.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK).zip(g.par_chunks(CHUNK)))
        .for_each(|(o, (x, g))| {
            // A 0/1 factor from both comparisons (`&`, not `&&`): the branch per value this was
            // mispredicted on ReLU6's random mask and took 21 % of a MobileNet v2 training step.
            for ((o, &v), &gv) in o.iter_mut().zip(x).zip(g) {
                let pass = if (v > T::ZERO) & (v <= six) {
                    T::ONE
                } else {
                    T::ZERO
                };
                *o = gv * pass;
            }
        });
    out
}

impl CustomOp1 for Relu6 {
    fn name(&self) -> &'static str {
        "octconv-relu6"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let _t = super::timing::span("relu6 forward");
        let out = match s {
            CpuStorage::F32(v) => CpuStorage::F32(forward(slice(v, l)?)),
            CpuStorage::F64(v) => CpuStorage::F64(forward(slice(v, l)?)),
            _ => bail!("relu6: only f32 and f64 are supported"),
        };
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        arg.contiguous()?
            .apply_op2_no_bwd(&grad.contiguous()?, &Relu6Grad)
            .map(Some)
    }
}

/// The input gradient of [`Relu6`]: arguments `x` and the output gradient.
#[derive(Clone, Copy, Debug)]
struct Relu6Grad;

impl CustomOp2 for Relu6Grad {
    fn name(&self) -> &'static str {
        "octconv-relu6-grad"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _t = super::timing::span("relu6 backward");
        if xl.shape() != gl.shape() {
            bail!(
                "relu6 backward: gradient {:?} for input {:?}",
                gl.shape(),
                xl.shape()
            )
        }
        let out = match (xs, gs) {
            (CpuStorage::F32(x), CpuStorage::F32(g)) => {
                CpuStorage::F32(backward(slice(x, xl)?, slice(g, gl)?))
            }
            (CpuStorage::F64(x), CpuStorage::F64(g)) => {
                CpuStorage::F64(backward(slice(x, xl)?, slice(g, gl)?))
            }
            _ => bail!("relu6 backward: input and gradient must both be f32 or f64"),
        };
        Ok((out, xl.shape().clone()))
    }
}
