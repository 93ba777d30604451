//! `octnet!` on graph specs: an Oct-U-Net (named skips, transposed octave convolutions), a DenseNet
//! block (`branches concat`) and squeeze-and-excitation (`branches scale`) compute bit for bit what
//! the interpreter computes, in eval and train mode and in `infer`.

mod common;

use common::values;
use octconv::candle_core::{DType, Device, ModuleT, Tensor};
use octconv::candle_nn::VarBuilder;

octconv::octnet! {
    use "../examples/oct_unet.oct";
    struct OctUnet = oct_unet(base = 4, alpha = 0.25);
}

octconv::octnet! {
    block dense_layer(growth: int, alpha: float) {
        branches concat {
            { },
            { bn(); relu(); octconv(4 * growth, kernel = 1, alpha = alpha);
              bn(); relu(); octconv(growth, kernel = 3, alpha = alpha); },
        }
    }
    block se(c: int) {
        branches scale {
            { },
            { global_avg_pool(per_branch = true); linear(c / 4); relu(); linear(c); sigmoid(); },
        }
    }
    model dense(alpha: float = 0.5) {
        input [3, 16, 16];
        octconv(8, kernel = 3, alpha = alpha);
        repeat 3 { dense_layer(4, alpha = alpha); }
        bn() as y;
        se(20);
        add(y);
        upsample(scale = 2);
        merge(to = low);
        hardswish();
        silu();
        global_avg_pool();
        linear(10);
    }
    struct DenseBlock = dense();
}

fn input(c: usize, h: usize, w: usize) -> Tensor {
    let v: Vec<f32> = (0..2 * c * h * w)
        .map(|i| ((i * 7919 % 257) as f32 / 128.0) - 1.0)
        .collect();
    Tensor::from_vec(v, (2, c, h, w), &Device::Cpu).unwrap()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// The generated struct and the interpreter, from the same weights: outputs equal bit for bit.
fn assert_same<M: ModuleT>(
    build: impl Fn(VarBuilder) -> octconv::candle_core::Result<M>,
    infer: impl Fn(&M, &Tensor) -> octconv::candle_core::Result<Tensor>,
    checked: octconv::Checked,
) {
    assert!(checked.ok(), "{}", checked.render_diagnostics(false));
    let ir = checked.model.unwrap();
    let w = octconv::runtime::init::init_params(&ir, 9, DType::F32, &Device::Cpu).unwrap();
    let d = ir.input;
    let x = input(d.c, d.h, d.w);
    let ours = build(VarBuilder::from_tensors(
        w.clone(),
        DType::F32,
        &Device::Cpu,
    ))
    .unwrap();
    let interp =
        octconv::OctModel::new(ir, VarBuilder::from_tensors(w, DType::F32, &Device::Cpu)).unwrap();
    for train in [false, true] {
        let a = values(&ours.forward_t(&x, train).unwrap());
        let b = values(&interp.forward_t(&x, train).unwrap());
        assert!(!a.is_empty());
        assert_eq!(bits(&a), bits(&b), "train = {train}");
    }
    let a = values(&infer(&ours, &x).unwrap());
    let b = values(&interp.infer(&x).unwrap());
    assert_eq!(bits(&a), bits(&b), "infer");
}

#[test]
fn oct_unet_macro_equals_the_interpreter_bit_for_bit() {
    assert_eq!(OctUnet::OUTPUT, &[2, 64, 64]);
    let checked = octconv::check(&octconv::CheckRequest {
        spec: octconv::SpecInput::File(std::path::Path::new("examples/oct_unet.oct")),
        model: Some("oct_unet(base = 4, alpha = 0.25)"),
        sets: &[],
    });
    assert_eq!(OctUnet::PARAMS, checked.model.as_ref().unwrap().params());
    assert_same(OctUnet::new, OctUnet::infer, checked);
}

#[test]
fn densenet_block_with_se_macro_equals_the_interpreter_bit_for_bit() {
    let checked = octconv::check_text("dense.oct", DenseBlock::SPEC, Some("dense()"));
    assert_same(DenseBlock::new, DenseBlock::infer, checked);
}
