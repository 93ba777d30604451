//! Scratch accounting (`kernels::scratch`), which `octconv bench` reports: a task's demand counts
//! each buffer once at its largest request, re-entrant tasks count apart, `release_pools` frees the
//! pools and restarts the count, and a convolution's figure is the same on every run. One test
//! function: the counters are process-wide.

use candle_core::{Device, Tensor};
use octconv_runtime::kernels::scratch::{
    largest_task_bytes, release_pools, scratch_bytes, sized, with_scratch, Scratch,
};
use octconv_runtime::kernels::{conv2d, ConvParams};

fn conv_demand(c: usize) -> usize {
    release_pools();
    assert_eq!(largest_task_bytes(), 0);
    let x = Tensor::ones((4, c, 12, 12), candle_core::DType::F32, &Device::Cpu).unwrap();
    let w = Tensor::ones((c, c, 3, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
    let p = ConvParams {
        stride: 2,
        pad: 1,
        groups: 1,
    };
    conv2d(&x, &w, p).unwrap();
    largest_task_bytes()
}

#[test]
fn scratch_demand_is_per_task_per_buffer_and_repeatable() {
    release_pools();
    assert_eq!(largest_task_bytes(), 0);
    with_scratch(|s: &mut Scratch<f32>| {
        sized(&mut s.col, 10);
        sized(&mut s.col, 25); // the same buffer: its largest request counts
        sized(&mut s.stage, 5);
        with_scratch(|inner: &mut Scratch<f32>| {
            sized(&mut inner.col, 100);
        });
    });
    assert_eq!(
        largest_task_bytes(),
        100 * 4,
        "the inner task alone is the largest"
    );
    with_scratch(|s: &mut Scratch<f32>| {
        sized(&mut s.col, 120);
        sized(&mut s.stage, 30);
    });
    assert_eq!(largest_task_bytes(), 150 * 4);
    assert!(
        scratch_bytes() >= 150 * 4,
        "a set holds at least the largest task"
    );
    release_pools();
    assert_eq!(largest_task_bytes(), 0);

    let small = conv_demand(8);
    assert!(small > 0);
    assert_eq!(
        conv_demand(8),
        small,
        "the same convolution, the same figure"
    );
    // im2col of a 3×3 convolution: at least the column matrix of one image (9·c × 6·6 floats).
    let big = conv_demand(32);
    assert!(big >= 9 * 32 * 36 * 4, "{big}");
    assert!(big > small);
}
