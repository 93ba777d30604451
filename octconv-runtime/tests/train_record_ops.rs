//! Each layer's planned-step backward ([`OctLayer::train_record`]: the hand-written adjoints of
//! `layers/adjoint.rs`, the octave convolution of every shape in `layers/octconv/`) against candle's
//! autograd of the same layer's forward (itself checked against finite differences in
//! `tests/gradients.rs`, `tests/graph_ops.rs`, `tests/fused.rs`): for a random output gradient `g`,
//! the input and parameter gradients equal those of `Σ y · g` to 1e-5, and the outputs are
//! bit-identical.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use octconv_runtime::layers::layer::{
    Concat, Flatten, GlobalAvgPool, Merge, Pyramid, Scale, Split, Upsample,
};
use octconv_runtime::layers::{Activation, Linear, OctConv2d, OctLayer, Pool, PoolKind};
use octconv_runtime::tape::ParamGrads;
use octconv_runtime::OctValue;
use octconv_spec::ir::{Downsample, OctConvSpec, Path, PoolSpec};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn random(rng: &mut ChaCha8Rng, dims: &[usize]) -> Tensor {
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect();
    Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
}

fn pair(rng: &mut ChaCha8Rng, n: usize, ch: usize, cl: usize, hw: usize) -> OctValue {
    OctValue::Pair {
        high: Some(random(rng, &[n, ch, hw, hw])),
        low: random(rng, &[n, cl, hw / 2, hw / 2]),
    }
}

fn tensors(v: &OctValue) -> Vec<Tensor> {
    let (h, l) = v.branches();
    match v {
        OctValue::Single(t) | OctValue::Flat(t) => vec![t.clone()],
        OctValue::Pair { .. } => h.into_iter().chain(l).cloned().collect(),
    }
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

fn assert_close(a: &Tensor, b: &Tensor, what: &str) {
    assert_eq!(a.dims(), b.dims(), "{what}: shapes");
    let (a, b) = (values(a), values(b));
    let scale = b.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!(
            (x - y).abs() <= 1e-5 * scale,
            "{what}[{i}]: {x} against {y}"
        );
    }
}

/// Runs `layer` on `xs` both ways and compares outputs, input gradients and the gradients of
/// `params`.
fn check(layer: &dyn OctLayer, xs: &[OctValue], params: &[Tensor], what: &str) {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let refs: Vec<&OctValue> = xs.iter().collect();
    let needs = vec![true; xs.len()];
    let (y, back) = layer
        .train_record(&refs, &needs)
        .unwrap()
        .unwrap_or_else(|| panic!("{what}: no planned backward"));
    let g = y.map(|t| Ok(random(&mut rng, t.dims()))).unwrap();
    let mut grads = ParamGrads::default();
    let dxs = back.backward(&g, &mut grads).unwrap();

    // Autograd of Σ y · g on variable copies of the inputs.
    let vars: Vec<OctValue> = xs
        .iter()
        .map(|x| {
            x.map(|t| Ok(Var::from_tensor(t)?.as_tensor().clone()))
                .unwrap()
        })
        .collect();
    let var_refs: Vec<&OctValue> = vars.iter().collect();
    let y_ref = layer.apply(&var_refs, true).unwrap();
    for (a, b) in tensors(&y).iter().zip(tensors(&y_ref)) {
        assert_eq!(values(a), values(&b), "{what}: outputs differ");
    }
    let mut loss = Tensor::zeros((), DType::F32, &Device::Cpu).unwrap();
    for (o, gt) in tensors(&y_ref).iter().zip(tensors(&g)) {
        loss = (loss + (o * gt).unwrap().sum_all().unwrap()).unwrap();
    }
    let store = loss.backward().unwrap();
    assert_eq!(dxs.len(), xs.len(), "{what}: one gradient per input");
    for (k, (v, dx)) in vars.iter().zip(&dxs).enumerate() {
        let dx = dx
            .as_ref()
            .unwrap_or_else(|| panic!("{what}: input {k} got no gradient"));
        for (t, d) in tensors(v).iter().zip(tensors(dx)) {
            let want = store
                .get(t)
                .unwrap_or_else(|| panic!("{what}: autograd skipped input {k}"));
            assert_close(&d, want, &format!("{what}: input {k}"));
        }
    }
    for p in params {
        let got = grads
            .get(p)
            .unwrap_or_else(|| panic!("{what}: no parameter gradient"));
        assert_close(got, store.get(p).unwrap(), &format!("{what}: parameter"));
    }
}

/// [`check`] of a one-input layer without parameters.
fn check1(layer: &dyn OctLayer, x: &OctValue, what: &str) {
    check(layer, std::slice::from_ref(x), &[], what);
}

fn pool(kind: PoolKind, kernel: usize, stride: usize, padding: usize) -> Pool {
    let spec = PoolSpec {
        kernel,
        stride,
        padding,
    };
    Pool { kind, spec }
}

#[test]
fn planned_backwards_of_moving_layers_equal_autograd() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let p = pair(&mut rng, 2, 3, 5, 8);
    let low_only = OctValue::Pair {
        high: None,
        low: random(&mut rng, &[2, 4, 4, 4]),
    };
    let single = OctValue::Single(random(&mut rng, &[2, 6, 8, 8]));
    check1(&Merge { to_low: false }, &p, "merge");
    check1(&Merge { to_low: true }, &p, "merge(to = low)");
    check1(&Merge { to_low: false }, &low_only, "merge of a low branch");
    check1(&Split { low: 4 }, &single, "split");
    check1(&Split { low: 6 }, &single, "split, all low");
    check1(&Pyramid, &single, "pyramid");
    check1(&Upsample { scale: 2 }, &p, "upsample 2");
    check1(&Upsample { scale: 3 }, &single, "upsample 3");
    check1(&Flatten, &single, "flatten");
    check1(
        &GlobalAvgPool { per_branch: false },
        &single,
        "global_avg_pool",
    );
    check1(
        &GlobalAvgPool { per_branch: true },
        &p,
        "global_avg_pool per branch",
    );
    let q = pair(&mut rng, 2, 2, 4, 8);
    check(&Concat, &[p.clone(), q], &[], "concat of pairs");
    let s2 = OctValue::Single(random(&mut rng, &[2, 2, 8, 8]));
    check(&Concat, &[single.clone(), s2], &[], "concat of tensors");
    check1(&pool(PoolKind::Avg, 2, 2, 0), &p, "2×2 average pool");
    check1(&pool(PoolKind::Max, 3, 2, 1), &p, "3×3 max pool, stride 2");
    check1(&pool(PoolKind::Max, 2, 2, 0), &single, "2×2 max pool");
    // A pair without a high branch, flat values.
    let low_only_big = OctValue::Pair {
        high: None,
        low: random(&mut rng, &[2, 3, 8, 8]),
    };
    check1(
        &pool(PoolKind::Avg, 2, 2, 0),
        &low_only_big,
        "pool of a low branch",
    );
    check1(
        &GlobalAvgPool { per_branch: true },
        &low_only_big,
        "per-branch GAP, low only",
    );
    let (f1, f2) = (random(&mut rng, &[2, 3]), random(&mut rng, &[2, 4]));
    let flats = [OctValue::Flat(f1), OctValue::Flat(f2)];
    check(&Concat, &flats, &[], "concat of flat values");
    // Odd sides: pooling drops the last row and column, whose gradient is zero.
    let odd = OctValue::Single(random(&mut rng, &[2, 6, 7, 7]));
    check1(&Split { low: 2 }, &odd, "split of 7×7");
    check1(
        &pool(PoolKind::Avg, 2, 2, 0),
        &odd,
        "2×2 average pool of 7×7",
    );
    let odd_pair = OctValue::Pair {
        high: Some(random(&mut rng, &[2, 3, 7, 7])),
        low: random(&mut rng, &[2, 5, 3, 3]),
    };
    check1(
        &Merge { to_low: true },
        &odd_pair,
        "merge(to = low) of 7×7 / 3×3",
    );
}

#[test]
fn planned_backwards_of_activations_scale_and_linear_equal_autograd() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    // ×4 spreads the values past ReLU6's cap of 6.
    let p = pair(&mut rng, 2, 3, 5, 8).map(|t| t * 4.0).unwrap();
    for act in [Activation::Relu, Activation::Relu6, Activation::Sigmoid] {
        check1(&act, &p, &format!("{act:?}"));
    }
    let gates = OctValue::Flat(random(&mut rng, &[2, 8]));
    check(&Scale, &[p.clone(), gates], &[], "scale of a pair");
    let single = OctValue::Single(random(&mut rng, &[2, 6, 5, 5]));
    let gates = OctValue::Single(random(&mut rng, &[2, 6, 1, 1]));
    check(
        &Scale,
        &[single, gates],
        &[],
        "scale of a tensor by [N, C, 1, 1] gates",
    );
    let x = OctValue::Flat(random(&mut rng, &[4, 6]));
    let varmap = VarMap::new();
    let (w, b) = (random(&mut rng, &[3, 6]), random(&mut rng, &[3]));
    let params: Vec<Tensor> = [("weight", w), ("bias", b)]
        .into_iter()
        .map(|(name, t)| {
            let v = Var::from_tensor(&t).unwrap();
            varmap.data().lock().unwrap().insert(name.into(), v.clone());
            v.as_tensor().clone()
        })
        .collect();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let linear = Linear::new(6, 3, true, vb).unwrap();
    check(&linear, &[x], &params, "linear");
}

/// An octave convolution with seeded weights for the paths `spec` has, and those weights.
fn octconv(spec: OctConvSpec, rng: &mut ChaCha8Rng) -> (OctConv2d, Vec<Tensor>) {
    let mut weights: [Option<Tensor>; 4] = Default::default();
    let mut params = Vec::new();
    for (i, p) in Path::ALL.into_iter().enumerate() {
        if let Some((ci, co)) = spec.path_channels(p) {
            let per_group = if spec.depthwise { 1 } else { ci / spec.groups };
            let k = spec.kernel;
            let w = (random(rng, &[co, per_group, k, k]) * 0.3).unwrap();
            let v = Var::from_tensor(&w).unwrap();
            params.push(v.as_tensor().clone());
            weights[i] = Some(v.as_tensor().clone());
        }
    }
    let mut bias = |c: usize| {
        (spec.bias && c > 0).then(|| {
            let v = Var::from_tensor(&random(rng, &[c])).unwrap();
            params.push(v.as_tensor().clone());
            v.as_tensor().clone()
        })
    };
    let (bias_h, bias_l) = (bias(spec.out_h), bias(spec.out_l));
    (
        OctConv2d::from_weights(spec, weights, bias_h, bias_l),
        params,
    )
}

#[test]
fn planned_backwards_of_every_octave_convolution_shape_equal_autograd() {
    let base = OctConvSpec {
        in_h: 4,
        in_l: 4,
        out_h: 4,
        out_l: 4,
        kernel: 3,
        stride: 1,
        groups: 1,
        depthwise: false,
        bias: false,
        downsample: Downsample::Pool,
    };
    let cases = [
        ("3×3, four paths (the fused kernel)", base),
        ("1×1, four paths", OctConvSpec { kernel: 1, ..base }),
        (
            "3×3, stride 2, four paths",
            OctConvSpec {
                stride: 2,
                out_h: 6,
                out_l: 2,
                ..base
            },
        ),
        (
            "one branch in, two out",
            OctConvSpec {
                in_h: 6,
                in_l: 0,
                ..base
            },
        ),
        (
            "two branches in, one out",
            OctConvSpec {
                out_h: 6,
                out_l: 0,
                ..base
            },
        ),
        (
            "one branch, stride 2 pooled first",
            OctConvSpec {
                in_h: 6,
                in_l: 0,
                out_h: 8,
                out_l: 0,
                stride: 2,
                ..base
            },
        ),
        (
            "one branch, downsample = stride",
            OctConvSpec {
                in_h: 6,
                in_l: 0,
                out_h: 8,
                out_l: 0,
                stride: 2,
                downsample: Downsample::Stride,
                ..base
            },
        ),
        ("grouped, four paths", OctConvSpec { groups: 2, ..base }),
        (
            "3×3 with biases (the fused kernel)",
            OctConvSpec { bias: true, ..base },
        ),
        (
            "1×1 with biases, one branch out",
            OctConvSpec {
                kernel: 1,
                out_h: 5,
                out_l: 0,
                bias: true,
                ..base
            },
        ),
        (
            "3×3, stride 2, four paths, 7×7",
            OctConvSpec { stride: 2, ..base },
        ),
        (
            "depthwise",
            OctConvSpec {
                depthwise: true,
                ..base
            },
        ),
    ];
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for (what, spec) in cases {
        let (layer, params) = octconv(spec, &mut rng);
        let side = if what.ends_with("7×7") { 7 } else { 8 };
        let x = match spec.in_l {
            0 => OctValue::Single(random(&mut rng, &[2, spec.in_h, side, side])),
            _ => OctValue::Pair {
                high: Some(random(&mut rng, &[2, spec.in_h, side, side])),
                low: random(&mut rng, &[2, spec.in_l, side / 2, side / 2]),
            },
        };
        check(&layer, &[x], &params, what);
    }
}

/// Hand-computed: a 2×2 average pool of a 3×3 plane reads the top-left 2×2 block; the gradient of
/// its sum is ¼ there and 0 on the dropped row and column, by autograd (candle 0.11's own average
/// pool put ¼ on all nine: it upsamples the gradient to 3×3) and by the planned backward.
#[test]
fn average_pool_gradient_of_an_odd_side_is_zero_on_the_dropped_row_and_column() {
    let want = [0.25, 0.25, 0.0, 0.25, 0.25, 0.0, 0.0, 0.0, 0.0];
    let x = Var::from_tensor(
        &Tensor::arange(0f32, 9.0, &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 3, 3))
            .unwrap(),
    )
    .unwrap();
    let layer = pool(PoolKind::Avg, 2, 2, 0);
    let y = layer
        .apply(&[&OctValue::Single(x.as_tensor().clone())], true)
        .unwrap();
    let store = y
        .into_tensor()
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert_eq!(values(store.get(x.as_tensor()).unwrap()), want);
    let (y, back) = layer
        .train_record(&[&OctValue::Single(x.as_tensor().detach())], &[true])
        .unwrap()
        .unwrap();
    let ones = y.map(|t| t.ones_like()).unwrap();
    let dx = back.backward(&ones, &mut ParamGrads::default()).unwrap();
    let dx = dx[0].clone().unwrap().into_tensor().unwrap();
    assert_eq!(values(&dx), want);
}
