//! Max pooling through our kernel (`kernels::max_pool`) against a hand-computed case and against
//! the generic path of shifted copies (our kernels switched off), forward and backward, in f64 on
//! odd and even sizes, with and without padding (one test function: the switch is process-wide);
//! and the stems' 3×3 / 2 pool in f32, whose rows run in AVX-512 vectors where the CPU has it,
//! against each window's first maximum bit for bit.

use candle_core::{DType, Device, Tensor, Var};
use octconv_runtime::kernels;
use octconv_runtime::ops::max_pool;

fn values(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Output and input gradient of `sum(max_pool(x) · r)`.
fn run(x: &Tensor, (k, s, p): (usize, usize, usize)) -> (Vec<f64>, Vec<usize>, Vec<f64>) {
    let v = Var::from_tensor(x).unwrap();
    let y = max_pool(v.as_tensor(), k, s, p).unwrap();
    let n = y.elem_count();
    let r = Tensor::from_vec(
        (0..n).map(|i| 1.0 + (i % 5) as f64).collect::<Vec<_>>(),
        y.shape(),
        &Device::Cpu,
    )
    .unwrap();
    let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    (
        values(&y),
        y.dims().to_vec(),
        values(g.get(v.as_tensor()).unwrap()),
    )
}

#[test]
fn max_pool_kernel_matches_hand_values_and_the_generic_path() {
    // 1 × 1 × 3 × 3, window 2, stride 1, no padding: outputs are the maxima of the four 2×2 blocks.
    let x = Tensor::from_vec(
        vec![1.0f64, 5.0, 2.0, 4.0, 3.0, 9.0, 0.0, 8.0, 7.0],
        (1, 1, 3, 3),
        &Device::Cpu,
    )
    .unwrap();
    let (y, dims, dx) = run(&x, (2, 1, 0));
    assert_eq!(dims, [1, 1, 2, 2]);
    assert_eq!(y, [5.0, 9.0, 8.0, 9.0]);
    // r = 1, 2, 3, 4: the 5 gets 1, the 9 gets 2 + 4, the 8 gets 3.
    assert_eq!(dx, [0.0, 1.0, 0.0, 0.0, 0.0, 6.0, 0.0, 3.0, 0.0]);

    for (i, (n, c, h, w, k, s, p)) in [
        (2, 3, 11, 11, 3, 2, 1), // the ResNet stem's pool, odd size
        (2, 3, 12, 10, 3, 2, 1),
        // The stems' 3×3 / 2 pool has its own loop: the smallest maps, odd and even sides.
        (1, 2, 2, 2, 3, 2, 1),
        (1, 1, 2, 3, 3, 2, 1),
        (1, 1, 3, 2, 3, 2, 1),
        (2, 1, 5, 7, 3, 2, 1),
        (1, 1, 14, 13, 3, 2, 1),
        (1, 2, 8, 8, 2, 2, 0),
        (1, 2, 7, 9, 3, 1, 1),
        (2, 1, 9, 9, 5, 3, 2),
        (1, 1, 3, 3, 3, 3, 0),
    ]
    .into_iter()
    .enumerate()
    {
        let count = n * c * h * w;
        // Distinct values (no ties), in a scrambled order.
        let v: Vec<f64> = (0..count)
            .map(|j| ((j * 7919 + i * 13) % (count * 3)) as f64 / 7.0 - 20.0)
            .collect();
        let x = Tensor::from_vec(v, (n, c, h, w), &Device::Cpu).unwrap();
        let ours = run(&x, (k, s, p));
        kernels::set_enabled(false);
        let generic = run(&x, (k, s, p));
        kernels::set_enabled(true);
        assert_eq!(ours.1, generic.1, "case {i}: shapes");
        assert_eq!(ours.0, generic.0, "case {i}: outputs");
        assert_eq!(ours.2, generic.2, "case {i}: input gradients");
    }

    // Ties: the gradient goes to the first maximum of the window in row-major order (PyTorch's rule).
    let x = Tensor::from_vec(vec![2.0f64, 7.0, 7.0, 7.0], (1, 1, 2, 2), &Device::Cpu).unwrap();
    let (y, _, dx) = run(&x, (2, 1, 0));
    assert_eq!(y, [7.0]);
    assert_eq!(dx.iter().filter(|&&v| v != 0.0).count(), 1, "{dx:?}");
    assert_ne!(dx[1], 0.0, "{dx:?}");

    let x = Tensor::zeros((1, 1, 2, 2), DType::F32, &Device::Cpu).unwrap();
    let e = max_pool(&x, 5, 1, 1).unwrap_err().to_string();
    assert!(e.contains("does not fit"), "{e}");
}

/// The first maximum of each 3×3 window (stride 2, padding 1) in row-major order: `v` replaces the
/// running value only if `v > m`, so the first of equal values (+0 before −0) stays and a NaN never
/// replaces a value.
fn first_window_max(x: &[f32], (h, w): (usize, usize)) -> Vec<f32> {
    let (oh, ow) = ((h - 1) / 2 + 1, (w - 1) / 2 + 1);
    let mut y = Vec::with_capacity(oh * ow);
    for oy in 0..oh {
        for ox in 0..ow {
            let mut m: Option<f32> = None;
            for iy in (2 * oy).saturating_sub(1)..(2 * oy + 2).min(h) {
                for ix in (2 * ox).saturating_sub(1)..(2 * ox + 2).min(w) {
                    let v = x[iy * w + ix];
                    m = Some(match m {
                        Some(m) if v > m => v,
                        Some(m) => m,
                        None => v,
                    });
                }
            }
            y.push(m.unwrap());
        }
    }
    y
}

#[test]
fn stem_pool_in_f32_keeps_each_windows_first_maximum_bit_for_bit_on_wide_rows() {
    // Output rows of 17 to 57 values: none, one, two and three whole vectors of 16 from column 1,
    // with and without a tail; few distinct values, so windows tie, with ±0 and NaN among them.
    for (i, (h, w)) in [
        (5, 33),
        (4, 34),
        (3, 35),
        (6, 66),
        (7, 67),
        (3, 98),
        (5, 113),
    ]
    .into_iter()
    .enumerate()
    {
        let x: Vec<f32> = (0..h * w)
            .map(|j| match (j * 7 + i * 3) % 11 {
                0 => 0.0,
                1 => -0.0,
                2 => f32::NAN,
                k => (k as f32 - 6.0) / 2.0,
            })
            .collect();
        let t = Tensor::from_vec(x.clone(), (1, 1, h, w), &Device::Cpu).unwrap();
        let got: Vec<f32> = max_pool(&t, 3, 2, 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let want = first_window_max(&x, (h, w));
        let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got), bits(&want), "{h}×{w}");
    }
}
