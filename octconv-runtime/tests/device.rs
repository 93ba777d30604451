//! Device selection and the dispatch between our CPU kernels and candle's ops (the path every
//! non-CPU device takes), checked on the CPU with dtypes our kernels do not serve.

use candle_core::{DType, Device, Tensor};
use octconv_runtime::device::parse_device;
use octconv_runtime::kernels::{conv2d, ConvParams};
use octconv_runtime::layers::BatchNorm2d;

#[test]
fn cpu_device_parses_in_any_case() {
    assert!(matches!(parse_device("cpu").unwrap(), Device::Cpu));
    assert!(matches!(parse_device(" CPU ").unwrap(), Device::Cpu));
}

#[test]
fn bad_device_names_are_explained() {
    let e = parse_device("tpu").unwrap_err().to_string();
    assert!(
        e.contains("unknown device `tpu`") && e.contains("cuda:N"),
        "{e}"
    );
    let e = parse_device("cuda:x").unwrap_err().to_string();
    assert!(e.contains("non-negative integer"), "{e}");
}

#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_without_the_feature_says_how_to_build_it() {
    for spec in ["cuda", "cuda:1", "gpu"] {
        let e = parse_device(spec).unwrap_err().to_string();
        assert!(
            e.contains("--features cuda") && e.contains("scripts/cuda-build.sh"),
            "{e}"
        );
    }
}

fn ramp(shape: &[usize], dtype: DType) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

/// f16 is not served by our kernels: `conv2d` must hand it to candle's convolution unchanged.
#[test]
fn conv2d_falls_back_to_candle_for_other_dtypes() {
    let x = ramp(&[2, 4, 6, 6], DType::F16);
    let w = ramp(&[3, 2, 3, 3], DType::F16);
    let p = ConvParams {
        stride: 1,
        pad: 1,
        groups: 2,
    };
    let ours = conv2d(&x, &w, p).unwrap();
    let candle = x.conv2d(&w, 1, 1, 1, 2).unwrap();
    assert_eq!(ours.dtype(), DType::F16);
    let d = (ours.to_dtype(DType::F32).unwrap() - candle.to_dtype(DType::F32).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(d, 0.0, "the fallback is candle's own op");
}

/// f64 batch norm goes through candle-nn's BatchNorm; it must agree with our f32 kernel.
#[test]
fn batch_norm_fallback_agrees_with_the_kernel() {
    let run = |dtype: DType| -> Vec<f32> {
        let vm = candle_nn::VarMap::new();
        let vb = candle_nn::VarBuilder::from_varmap(&vm, dtype, &Device::Cpu);
        let bn = BatchNorm2d::new(3, 1e-5, 0.1, vb).unwrap();
        let y = bn.forward_t(&ramp(&[4, 3, 5, 5], dtype), true).unwrap();
        y.to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let (a, b) = (run(DType::F32), run(DType::F64));
    assert_eq!((a.len(), b.len()), (4 * 3 * 5 * 5, 4 * 3 * 5 * 5));
    let d = a
        .iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(d < 1e-5, "max difference {d}");
}
