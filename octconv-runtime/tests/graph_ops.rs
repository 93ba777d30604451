//! The graph layers against independent references: gradients of concat, add, scale, upsample,
//! merge to low, pyramid, sigmoid / relu6 / hardswish / silu and the transposed octave convolution against central
//! finite differences (f64), and the transposed convolution's forward pass against a plain
//! scatter loop written from PyTorch's definition.

mod common;

use candle_core::{Device, Tensor};
use common::{check_grad, rand_tensor};
use octconv_runtime::layers::transpose::conv_transpose_x2;
use octconv_runtime::layers::{self, Activation, OctConvTranspose2d};
use octconv_runtime::OctValue;
use octconv_spec::ir::OctConvSpec;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// `Σ y ⊙ r` over every tensor of a value (flat batches included).
fn probe(y: &OctValue) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let ts: Vec<&Tensor> = match y {
        OctValue::Single(t) | OctValue::Flat(t) => vec![t],
        OctValue::Pair { high, low } => high.iter().chain([low]).collect(),
    };
    let mut total = Tensor::new(0f64, &Device::Cpu).unwrap();
    for t in ts {
        let r = rand_tensor(&mut rng, t.dims());
        total = (total + (t * r).unwrap().sum_all().unwrap()).unwrap();
    }
    total
}

fn pair(t: &[Tensor]) -> OctValue {
    OctValue::Pair {
        high: Some(t[0].clone()),
        low: t[1].clone(),
    }
}

#[test]
fn concat_add_and_scale_gradients_match_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let shapes: [&[usize]; 6] = [
        &[2, 3, 4, 4],
        &[2, 1, 2, 2],
        &[2, 2, 4, 4],
        &[2, 3, 2, 2],
        &[2, 4],
        &[2, 3, 4, 4],
    ];
    let xs: Vec<Tensor> = shapes.iter().map(|s| rand_tensor(&mut rng, s)).collect();
    // concat of two pairs: high 3 + 2, low 1 + 3.
    let e = check_grad(&xs[..4], 40, |t| {
        let y = layers::concat(&[&pair(&t[0..2]), &pair(&t[2..4])]).unwrap();
        assert_eq!(y.shape().split_channels(), Some((5, 4)));
        probe(&y)
    });
    assert!(e < 1e-6, "concat: {e}");
    // add of three single tensors.
    let e = check_grad(&[xs[0].clone(), xs[5].clone(), xs[5].clone()], 30, |t| {
        probe(
            &layers::add(&[
                &OctValue::Single(t[0].clone()),
                &OctValue::Single(t[1].clone()),
                &OctValue::Single(t[2].clone()),
            ])
            .unwrap(),
        )
    });
    assert!(e < 1e-6, "add: {e}");
    // scale of a pair (high 3, low 1) by 4 gates.
    let e = check_grad(&[xs[0].clone(), xs[1].clone(), xs[4].clone()], 40, |t| {
        probe(&layers::scale(&pair(&t[0..2]), &OctValue::Flat(t[2].clone())).unwrap())
    });
    assert!(e < 1e-6, "scale: {e}");
}

#[test]
fn scale_multiplies_each_branch_by_its_own_gates() {
    let dev = Device::Cpu;
    let high = Tensor::ones((1, 2, 2, 2), candle_core::DType::F64, &dev).unwrap();
    let low = Tensor::ones((1, 1, 1, 1), candle_core::DType::F64, &dev).unwrap();
    let gates = Tensor::new(&[[2.0f64, 3.0, 5.0]], &dev).unwrap();
    let y = layers::scale(
        &OctValue::Pair {
            high: Some(high),
            low,
        },
        &OctValue::Flat(gates),
    )
    .unwrap();
    let (h, l) = y.branches();
    let h = h.unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    assert_eq!(h, [2.0, 2.0, 2.0, 2.0, 3.0, 3.0, 3.0, 3.0]);
    assert_eq!(
        l.unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap(),
        [5.0]
    );
}

#[test]
fn upsample_merge_low_and_activation_gradients_match_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let xs = [
        (rand_tensor(&mut rng, &[2, 2, 4, 4]) * 4.0).unwrap(),
        (rand_tensor(&mut rng, &[2, 3, 2, 2]) * 4.0).unwrap(),
    ];
    for s in [2, 3] {
        let e = check_grad(&xs, 30, |t| probe(&layers::upsample(&pair(t), s).unwrap()));
        assert!(e < 1e-6, "upsample ×{s}: {e}");
    }
    let e = check_grad(&xs, 30, |t| probe(&layers::merge_low(&pair(t)).unwrap()));
    assert!(e < 1e-6, "merge to low: {e}");
    let e = check_grad(&xs[..1], 30, |t| {
        let y = layers::pyramid(&OctValue::Single(t[0].clone())).unwrap();
        assert_eq!(
            y.shape(),
            octconv_spec::Shape::Pair {
                high: octconv_spec::Dims::new(2, 4, 4),
                low: octconv_spec::Dims::new(2, 2, 2)
            }
        );
        probe(&y)
    });
    assert!(e < 1e-6, "pyramid: {e}");
    // Values in (−4, 4) around the kinks at −3, 0 and 3 (hardswish) and 0 (relu6); values in (6, 8)
    // for relu6's upper kink.
    let above = (rand_tensor(&mut rng, &[2, 2, 4, 4]) + 7.0).unwrap();
    for a in [
        Activation::Sigmoid,
        Activation::Relu6,
        Activation::HardSwish,
        Activation::Silu,
    ] {
        let e = check_grad(&xs, 40, |t| probe(&a.forward(&pair(t)).unwrap()));
        assert!(e < 1e-6, "{a:?}: {e}");
        let e = check_grad(std::slice::from_ref(&above), 20, |t| {
            probe(&a.forward(&OctValue::Single(t[0].clone())).unwrap())
        });
        assert!(e < 1e-6, "{a:?} above 6: {e}");
    }
}

#[test]
fn activations_equal_their_definitions() {
    let x = Tensor::new(
        &[-7.0f64, -3.0, -1.5, 0.0, 2.0, 3.0, 6.0, 9.0],
        &Device::Cpu,
    )
    .unwrap();
    let xs = x.to_vec1::<f64>().unwrap();
    let v = |a: Activation| {
        let y = a.tensor(&x).unwrap().to_vec1::<f64>().unwrap();
        assert_eq!(y.len(), xs.len(), "{a:?} keeps every element");
        y
    };
    let relu6 = |x: f64| x.clamp(0.0, 6.0);
    for (got, x) in v(Activation::Relu6).iter().zip(&xs) {
        assert_eq!(*got, relu6(*x));
    }
    for (got, x) in v(Activation::HardSwish).iter().zip(&xs) {
        assert!((got - x * relu6(x + 3.0) / 6.0).abs() < 1e-12);
    }
    for (got, x) in v(Activation::Sigmoid).iter().zip(&xs) {
        assert!((got - 1.0 / (1.0 + (-x).exp())).abs() < 1e-12);
    }
    for (got, x) in v(Activation::Silu).iter().zip(&xs) {
        assert!((got - x / (1.0 + (-x).exp())).abs() < 1e-12);
    }
}

/// PyTorch's `ConvTranspose2d` (stride 2, padding p, output padding op) as a scatter loop:
/// `y[o, 2i − p + a, 2j − p + b] += x[c, i, j] · w[c, o, a, b]`.
fn naive_transpose(
    x: &[f64],
    w: &[f64],
    (n, ci, h, wd): (usize, usize, usize, usize),
    co: usize,
    k: usize,
) -> Vec<f64> {
    let (p, op) = if k == 2 { (0, 0) } else { (1, 1) };
    let (oh, ow) = ((h - 1) * 2 - 2 * p + k + op, (wd - 1) * 2 - 2 * p + k + op);
    let mut y = vec![0.0; n * co * oh * ow];
    for b in 0..n {
        for c in 0..ci {
            for i in 0..h {
                for j in 0..wd {
                    let xv = x[((b * ci + c) * h + i) * wd + j];
                    for o in 0..co {
                        for u in 0..k {
                            for v in 0..k {
                                let (r, s) = (
                                    (2 * i + u) as isize - p as isize,
                                    (2 * j + v) as isize - p as isize,
                                );
                                if r >= 0 && s >= 0 && (r as usize) < oh && (s as usize) < ow {
                                    y[((b * co + o) * oh + r as usize) * ow + s as usize] +=
                                        xv * w[((c * co + o) * k + u) * k + v];
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    y
}

#[test]
fn conv_transpose_equals_the_scatter_definition_for_kernels_2_and_3() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for k in [2, 3] {
        let dims = (2, 3, 3, 5);
        let x = rand_tensor(&mut rng, &[2, 3, 3, 5]);
        let w = rand_tensor(&mut rng, &[3, 4, k, k]);
        let y = conv_transpose_x2(&x, &w).unwrap();
        assert_eq!(y.dims(), [2, 4, 6, 10]);
        let want = naive_transpose(
            &x.flatten_all().unwrap().to_vec1().unwrap(),
            &w.flatten_all().unwrap().to_vec1().unwrap(),
            dims,
            4,
            k,
        );
        let got = y.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let err = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(err < 1e-12, "kernel {k}: {err}");
    }
}

#[test]
fn transposed_octconv_gradients_of_all_four_paths_match_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    for k in [2, 3] {
        let spec = OctConvSpec {
            in_h: 3,
            in_l: 2,
            out_h: 2,
            out_l: 3,
            kernel: k,
            stride: 2,
            groups: 1,
            depthwise: false,
            bias: true,
            downsample: Default::default(),
        };
        let inputs = vec![
            rand_tensor(&mut rng, &[2, 3, 4, 4]),
            rand_tensor(&mut rng, &[2, 2, 2, 2]),
            rand_tensor(&mut rng, &[3, 2, k, k]),
            rand_tensor(&mut rng, &[3, 3, k, k]),
            rand_tensor(&mut rng, &[2, 2, k, k]),
            rand_tensor(&mut rng, &[2, 3, k, k]),
            rand_tensor(&mut rng, &[2]),
            rand_tensor(&mut rng, &[3]),
        ];
        let e = check_grad(&inputs, 25, |t| {
            let layer = OctConvTranspose2d::from_weights(
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
            let y = layer.forward(&pair(&t[0..2])).unwrap();
            assert_eq!(y.shape(), octconv_spec::Shape::pair(2, 3, 8, 8));
            probe(&y)
        });
        assert!(e < 1e-6, "kernel {k}: {e}");
    }
}

/// The inference kernels of `add` (with and without the ReLU after it) and `scale` give exactly
/// the values of the ops: three singles, pairs, and gates over a pair.
#[test]
fn add_and_scale_inference_kernels_equal_the_ops_bit_for_bit() {
    use octconv_runtime::layers::layer::{Add, Scale};
    use octconv_runtime::layers::{OctLayer, OutputStage};
    let mut rng = ChaCha8Rng::seed_from_u64(31);
    // f32: the kernels serve f32 CPU tensors (f64 falls back to the ops themselves).
    let mut r = |shape: &[usize]| {
        rand_tensor(&mut rng, shape)
            .to_dtype(candle_core::DType::F32)
            .unwrap()
    };
    let bits = |v: &OctValue| -> Vec<u32> {
        let (h, l) = v.branches();
        h.into_iter()
            .chain(l)
            .flat_map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
            .map(f32::to_bits)
            .collect()
    };
    let singles: Vec<OctValue> = (0..3).map(|_| OctValue::Single(r(&[2, 5, 7, 9]))).collect();
    let pairs: Vec<OctValue> = (0..2)
        .map(|_| pair(&[r(&[2, 3, 8, 8]), r(&[2, 5, 4, 4])]))
        .collect();
    for xs in [&singles[..], &singles[..2], &pairs[..]] {
        let xs: Vec<&OctValue> = xs.iter().collect();
        let want = layers::add(&xs).unwrap();
        assert!(!bits(&want).is_empty());
        assert_eq!(bits(&Add.infer(&xs).unwrap()), bits(&want));
        let relu = OutputStage {
            bn: None,
            act: Some(Activation::Relu),
            pool: None,
            halve: false,
            add: None,
            means: None,
        };
        let want = Activation::Relu.forward(&want).unwrap();
        assert_eq!(bits(&Add.infer_then(&xs, &relu).unwrap()), bits(&want));
    }
    let gates = OctValue::Flat(r(&[2, 8]));
    let x = &pairs[0];
    let want = layers::scale(x, &gates).unwrap();
    assert_eq!(bits(&Scale.infer(&[x, &gates]).unwrap()), bits(&want));
    let x = OctValue::Single(r(&[2, 8, 3, 3]));
    let want = layers::scale(&x, &gates).unwrap();
    assert_eq!(bits(&Scale.infer(&[&x, &gates]).unwrap()), bits(&want));
}

/// The inference copy of `concat` gives exactly the op's values and shapes: singles of different
/// channel counts, pairs (one with an empty high branch), one part alone, and flat batches (the
/// op's own path).
#[test]
fn concat_inference_equals_the_op_bit_for_bit() {
    use octconv_runtime::layers::layer::Concat;
    use octconv_runtime::layers::OctLayer;
    let mut rng = ChaCha8Rng::seed_from_u64(37);
    let mut r = |shape: &[usize]| {
        rand_tensor(&mut rng, shape)
            .to_dtype(candle_core::DType::F32)
            .unwrap()
    };
    let parts = |v: &OctValue| -> Vec<(Vec<usize>, Vec<u32>)> {
        let ts: Vec<&Tensor> = match v {
            OctValue::Flat(t) => vec![t],
            _ => {
                let (h, l) = v.branches();
                h.into_iter().chain(l).collect()
            }
        };
        ts.into_iter()
            .map(|t| {
                let bits = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                (
                    t.dims().to_vec(),
                    bits.into_iter().map(f32::to_bits).collect(),
                )
            })
            .collect()
    };
    let singles = [
        OctValue::Single(r(&[3, 2, 5, 7])),
        OctValue::Single(r(&[3, 5, 5, 7])),
        OctValue::Single(r(&[3, 1, 5, 7])),
    ];
    let pairs = [
        pair(&[r(&[2, 3, 8, 6]), r(&[2, 5, 4, 3])]),
        OctValue::Pair {
            high: None,
            low: r(&[2, 2, 4, 3]),
        },
        pair(&[r(&[2, 4, 8, 6]), r(&[2, 1, 4, 3])]),
    ];
    let flats = [OctValue::Flat(r(&[3, 4])), OctValue::Flat(r(&[3, 6]))];
    for xs in [
        &singles[..],
        &singles[1..2],
        &pairs[..],
        &pairs[..1],
        &flats[..],
    ] {
        let xs: Vec<&OctValue> = xs.iter().collect();
        let want = parts(&layers::concat(&xs).unwrap());
        assert!(!want.is_empty());
        assert_eq!(parts(&Concat.infer(&xs).unwrap()), want);
    }
}
