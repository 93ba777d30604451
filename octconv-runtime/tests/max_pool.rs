//! Max pooling through our kernel (`kernels::max_pool`) against a hand-computed case and against
//! the generic path of shifted copies (our kernels switched off), forward and backward, in f64 on
//! odd and even sizes, with and without padding. One test function: the switch is process-wide.

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
