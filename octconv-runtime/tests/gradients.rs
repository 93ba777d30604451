//! Gradients against central finite differences (f64): every OctConv path at stride 1 and 2, split,
//! merge, and the ×2 upsampling (including the case candle's own upsample gets wrong).

mod common;

use candle_core::{DType, Device, Tensor, Var};
use common::{check_grad, rand_tensor};
use octconv_runtime::layers::{merge, split, OctConv2d};
use octconv_runtime::ops::upsample_nearest2x;
use octconv_runtime::OctValue;
use octconv_spec::ir::OctConvSpec;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// `Σ y ⊙ r` over both branches of a value: a loss whose gradient reaches every output element.
fn probe(y: &OctValue, seed: u64) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut total = Tensor::new(0f64, &Device::Cpu).unwrap();
    let (h, l) = y.branches();
    for t in [h, l].into_iter().flatten() {
        let r = rand_tensor(&mut rng, t.dims());
        total = (total + (t * r).unwrap().sum_all().unwrap()).unwrap();
    }
    total
}

#[test]
fn octconv_gradients_of_all_four_paths_match_finite_differences() {
    for stride in [1, 2] {
        let spec = OctConvSpec {
            in_h: 3,
            in_l: 3,
            out_h: 4,
            out_l: 2,
            kernel: 3,
            stride,
            groups: 1,
            depthwise: false,
            bias: true,
            downsample: Default::default(),
        };
        let mut rng = ChaCha8Rng::seed_from_u64(stride as u64);
        let inputs = vec![
            rand_tensor(&mut rng, &[2, 3, 8, 8]), // x_h
            rand_tensor(&mut rng, &[2, 3, 4, 4]), // x_l
            rand_tensor(&mut rng, &[4, 3, 3, 3]), // w_hh
            rand_tensor(&mut rng, &[2, 3, 3, 3]), // w_hl
            rand_tensor(&mut rng, &[4, 3, 3, 3]), // w_lh
            rand_tensor(&mut rng, &[2, 3, 3, 3]), // w_ll
            rand_tensor(&mut rng, &[4]),          // b_h
            rand_tensor(&mut rng, &[2]),          // b_l
        ];
        let err = check_grad(&inputs, 12, |t| {
            let layer = OctConv2d::from_weights(
                spec,
                [
                    Some(t[2].clone()),
                    Some(t[3].clone()),
                    Some(t[4].clone()),
                    Some(t[5].clone()),
                ],
                Some(t[6].clone()),
                Some(t[7].clone()),
            );
            let y = layer
                .forward(&OctValue::Pair {
                    high: Some(t[0].clone()),
                    low: t[1].clone(),
                })
                .unwrap();
            probe(&y, 5)
        });
        assert!(err < 1e-6, "stride {stride}: relative error {err}");
    }
}

/// A single-branch stride-2 octave convolution with `downsample = stride` (the stride-2 convolution
/// and its backward, odd and even sizes, grouped and depthwise, with a bias).
#[test]
fn strided_downsample_gradients_match_finite_differences() {
    for (k, size, c_in, c_out, groups, depthwise) in [
        (3, 8, 3, 4, 1, false),
        (3, 7, 4, 6, 2, false),
        (1, 9, 3, 5, 1, false),
        (3, 9, 4, 4, 1, true),
    ] {
        let spec = OctConvSpec {
            in_h: c_in,
            in_l: 0,
            out_h: c_out,
            out_l: 0,
            kernel: k,
            stride: 2,
            groups,
            depthwise,
            bias: true,
            downsample: octconv_spec::ir::Downsample::Stride,
        };
        let per = if depthwise { 1 } else { c_in / groups };
        let mut rng = ChaCha8Rng::seed_from_u64(size as u64 * 10 + k as u64);
        let inputs = vec![
            rand_tensor(&mut rng, &[2, c_in, size, size]),
            rand_tensor(&mut rng, &[c_out, per, k, k]),
            rand_tensor(&mut rng, &[c_out]),
        ];
        let err = check_grad(&inputs, 12, |t| {
            let layer = OctConv2d::from_weights(
                spec,
                [Some(t[1].clone()), None, None, None],
                Some(t[2].clone()),
                None,
            );
            let y = layer.forward(&OctValue::Single(t[0].clone())).unwrap();
            assert_eq!(y.branches().0.unwrap().dims()[2], (size - 1) / 2 + 1);
            probe(&y, 6)
        });
        assert!(
            err < 1e-6,
            "k {k}, size {size}, groups {groups}, depthwise {depthwise}: relative error {err}"
        );
    }
}

#[test]
fn split_and_merge_gradients_match_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let x = rand_tensor(&mut rng, &[2, 8, 6, 6]);
    let err = check_grad(&[x], 40, |t| {
        probe(&split(&OctValue::Single(t[0].clone()), 3).unwrap(), 1)
    });
    assert!(err < 1e-6, "split: {err}");
    let h = rand_tensor(&mut rng, &[2, 5, 6, 6]);
    let l = rand_tensor(&mut rng, &[2, 3, 3, 3]);
    let err = check_grad(&[h, l], 40, |t| {
        probe(
            &merge(&OctValue::Pair {
                high: Some(t[0].clone()),
                low: t[1].clone(),
            })
            .unwrap(),
            2,
        )
    });
    assert!(err < 1e-6, "merge: {err}");
}

#[test]
fn upsample_gradient_adds_to_other_uses_of_its_input() {
    // d/dz [Σ up(z) + Σ z] = 4 + 1 = 5 for every element (candle's upsample_nearest2d gives 4).
    let z =
        Var::from_tensor(&Tensor::ones((1, 2, 3, 3), DType::F64, &Device::Cpu).unwrap()).unwrap();
    let zt = z.as_tensor();
    let loss =
        (upsample_nearest2x(zt).unwrap().sum_all().unwrap() + zt.sum_all().unwrap()).unwrap();
    let g = loss.backward().unwrap();
    let g: Vec<f64> = g.get(zt).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    assert!(g.iter().all(|&v| v == 5.0), "{g:?}");
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let x = rand_tensor(&mut rng, &[2, 3, 4, 5]);
    let err = check_grad(&[x], 40, |t| {
        probe(&OctValue::Single(upsample_nearest2x(&t[0]).unwrap()), 3)
    });
    assert!(err < 1e-6, "upsample: {err}");
}

#[test]
fn upsample_is_exact_nearest_neighbour() {
    let x = Tensor::new(&[[[[1f64, 2.0], [3.0, 4.0]]]], &Device::Cpu).unwrap();
    let y: Vec<f64> = upsample_nearest2x(&x)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(
        y,
        [1.0, 1.0, 2.0, 2.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 4.0, 4.0, 3.0, 3.0, 4.0, 4.0]
    );
}

#[test]
fn overlapping_pools_match_candle_forward_and_have_correct_gradients() {
    use octconv_runtime::ops::{avg_pool, max_pool};
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let x = rand_tensor(&mut rng, &[2, 3, 9, 8]);
    for (k, s) in [(3, 2), (3, 1), (2, 1), (5, 3)] {
        // Forward against candle's own pooling (which has no backward for kernel ≠ stride).
        let ours = max_pool(&x, k, s, 0).unwrap();
        let theirs = x.max_pool2d_with_stride(k, s).unwrap();
        assert_eq!(ours.dims(), theirs.dims());
        let d: f64 = (ours - theirs)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert_eq!(d, 0.0, "max k{k} s{s}");
        let ours = avg_pool(&x, k, s, 0).unwrap();
        let theirs = x.avg_pool2d_with_stride(k, s).unwrap();
        let d: f64 = (ours - theirs)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(d < 1e-12, "avg k{k} s{s}: {d}");
    }
    // Gradients, including the ResNet stem's padded 3×3 / 2 max pool.
    let err = check_grad(std::slice::from_ref(&x), 40, |t| {
        probe(&OctValue::Single(max_pool(&t[0], 3, 2, 1).unwrap()), 6)
    });
    assert!(err < 1e-6, "max pool: {err}");
    // And the 2×2 / 2 one (the U-Net's), where candle 0.11's own backward passes back a quarter of
    // each gradient (the generic path of other devices is checked against this one in max_pool.rs).
    let err = check_grad(std::slice::from_ref(&x), 40, |t| {
        probe(&OctValue::Single(max_pool(&t[0], 2, 2, 0).unwrap()), 8)
    });
    assert!(err < 1e-6, "2×2 max pool: {err}");
    let err = check_grad(&[x], 40, |t| {
        probe(&OctValue::Single(avg_pool(&t[0], 3, 2, 1).unwrap()), 7)
    });
    assert!(err < 1e-6, "avg pool: {err}");
}
