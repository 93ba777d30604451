//! The convolution backward of the device path (`device_conv`: input gradient as a convolution with
//! the flipped kernel, weight gradient as one GEMM over unfolded columns) against our CPU kernels,
//! which `kernels.rs` checks against naive loops and finite differences: forward, dx and dw in f64
//! on strides 1 and 2, paddings 0 to 3, groups, 1×1 to 7×7, and sizes where `h + 2·pad − k` is not a
//! multiple of the stride (where candle 0.11's own backward fails).

use candle_core::{DType, Device, Tensor, Var};
use octconv_runtime::device_conv;
use octconv_runtime::kernels::{conv2d, ConvParams};

fn ramp(shape: &[usize], a: usize) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n)
        .map(|i| ((i * a % 97) as f64 - 48.0) / 48.0)
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn max_rel(a: &Tensor, b: &Tensor) -> f64 {
    let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
    let s = b.abs().unwrap().max_all().unwrap();
    d.to_scalar::<f64>().unwrap() / s.to_scalar::<f64>().unwrap().max(1e-300)
}

/// y, dx and dw of `sum(conv(x, w) · r)`.
fn run(f: impl Fn(&Tensor, &Tensor) -> Tensor, x: &Tensor, w: &Tensor) -> (Tensor, Tensor, Tensor) {
    let (xv, wv) = (Var::from_tensor(x).unwrap(), Var::from_tensor(w).unwrap());
    let y = f(xv.as_tensor(), wv.as_tensor());
    let r = ramp(y.dims(), 13);
    let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    (
        y,
        g.get(xv.as_tensor()).unwrap().clone(),
        g.get(wv.as_tensor()).unwrap().clone(),
    )
}

#[test]
fn device_conv_gradients_equal_our_kernels_on_strides_paddings_groups_and_odd_sizes() {
    // (n, c_in, c_out, h, w, k, stride, pad, groups)
    let cases = [
        (2, 3, 4, 9, 9, 3, 1, 1, 1),
        (2, 3, 4, 9, 7, 3, 2, 1, 1),
        (2, 3, 4, 8, 8, 3, 2, 1, 1), // 8 + 2 − 3 = 7: not a multiple of 2
        (1, 4, 6, 8, 8, 1, 2, 0, 1), // 1×1 stride 2 of an even map
        (2, 3, 5, 15, 13, 7, 2, 3, 1), // a ResNet stem
        (2, 8, 8, 8, 8, 3, 1, 1, 4),
        (2, 6, 6, 9, 9, 3, 2, 1, 6), // depthwise, stride 2
        (1, 2, 3, 7, 7, 3, 1, 0, 1),
        (2, 3, 2, 11, 10, 5, 2, 2, 1),
        (1, 2, 2, 6, 6, 3, 3, 1, 1),
    ];
    for (i, &(n, ci, co, h, wd, k, stride, pad, groups)) in cases.iter().enumerate() {
        let x = ramp(&[n, ci, h, wd], 7 + i);
        let w = ramp(&[co, ci / groups, k, k], 11 + i);
        let p = ConvParams {
            stride,
            pad,
            groups,
        };
        let (y1, dx1, dw1) = run(
            |x, w| device_conv::conv2d(x, w, pad, stride, groups).unwrap(),
            &x,
            &w,
        );
        let (y2, dx2, dw2) = run(|x, w| conv2d(x, w, p).unwrap(), &x, &w);
        for (what, a, b) in [("y", &y1, &y2), ("dx", &dx1, &dx2), ("dw", &dw1, &dw2)] {
            assert_eq!(a.dims(), b.dims(), "case {i}: {what} shape");
            let e = max_rel(a, b);
            assert!(
                e < 1e-12,
                "case {i} {:?}: {what} differs by {e:e}",
                cases[i]
            );
        }
    }
}

/// Without a gradient to track, the device convolution is candle's own op, bit for bit.
#[test]
fn device_conv_without_gradients_is_candles_forward() {
    let x = ramp(&[2, 4, 9, 9], 5).to_dtype(DType::F32).unwrap();
    let w = ramp(&[3, 2, 3, 3], 3).to_dtype(DType::F32).unwrap();
    let a = device_conv::conv2d(&x, &w, 1, 2, 2).unwrap();
    let b = x.conv2d(&w, 1, 2, 1, 2).unwrap();
    assert_eq!(
        max_rel(
            &a.to_dtype(DType::F64).unwrap(),
            &b.to_dtype(DType::F64).unwrap()
        ),
        0.0
    );
}
