//! The grouped 3×3 octave kernel (`kernels::grouped_octave`) against the direct-loop reference in f64
//! (`common/reference.rs`, the paper's definition): one to
//! five channels per group in each path (one input channel per group runs the depthwise kernel,
//! more the grouped kernels), stride 1 and 2, batches of one and several images, the smallest maps
//! each stride takes (2×2 and 4×4), with and without the per-channel output maps; and f32 against
//! f64 on ResNeXt-sized groups (the grouped kernels' SIMD paths).

use octconv_runtime::kernels::grouped_octave::{forward, GroupedOctave};
use octconv_runtime::kernels::octave::{OctaveGeometry, OctaveWeights};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use reference::{octconv, Arr, RefOctConv};

#[path = "common/reference.rs"]
mod reference;

fn random(rng: &mut ChaCha8Rng, len: usize) -> Vec<f64> {
    (0..len).map(|_| rng.random::<f64>() * 2.0 - 1.0).collect()
}

/// The map the checks apply to channel `c` of a branch (`high`): an affine map that differs per
/// channel and per branch, so a plane mapped with the wrong channel or twice or not at all shows.
fn plane_map(high: bool, c: usize, v: f64) -> f64 {
    let k = if high { 1.0 } else { -0.5 };
    v * (1.0 + 0.25 * c as f64) * k + 0.125 * c as f64
}

/// The layer by the direct-loop reference (`common/reference.rs`, the paper's definition, stride 2
/// by pooling first): `(high, low)` for all images.
fn expected(g: &GroupedOctave, xh: &[f64], xl: &[f64], w: &[Vec<f64>; 4]) -> (Vec<f64>, Vec<f64>) {
    let o = g.octave;
    let arr = |c: usize, (h, w): (usize, usize), data: &[f64]| Arr {
        n: o.n,
        c,
        h,
        w,
        data: data.to_vec(),
    };
    let r = RefOctConv {
        in_h: o.in_h,
        in_l: o.in_l,
        out_h: o.out_h,
        out_l: o.out_l,
        k: 3,
        stride: g.stride,
        groups: g.groups,
        depthwise: false,
        w: w.clone(),
    };
    let (xh, xl) = (
        arr(o.in_h, (o.h, o.w), xh),
        arr(o.in_l, (o.h / 2, o.w / 2), xl),
    );
    let (Some(yh), Some(yl)) = octconv(&r, Some(&xh), Some(&xl)) else {
        panic!("the reference gives both outputs of a four-path layer")
    };
    (yh.data, yl.data)
}

/// The layer's random inputs and weights for `g`: `(xh, xl, [hh, hl, lh, ll])`.
fn data(g: &GroupedOctave, seed: u64) -> (Vec<f64>, Vec<f64>, [Vec<f64>; 4]) {
    let o = g.octave;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let xh = random(&mut rng, o.n * o.in_h * o.h * o.w);
    let xl = random(&mut rng, o.n * o.in_l * o.h * o.w / 4);
    let gr = g.groups;
    let w = [
        random(&mut rng, o.out_h * o.in_h / gr * 9),
        random(&mut rng, o.out_l * o.in_h / gr * 9),
        random(&mut rng, o.out_h * o.in_l / gr * 9),
        random(&mut rng, o.out_l * o.in_l / gr * 9),
    ];
    (xh, xl, w)
}

fn geometry(
    n: usize,
    per_group: [usize; 4],
    groups: usize,
    hw: usize,
    stride: usize,
) -> GroupedOctave {
    let [in_h, in_l, out_h, out_l] = per_group.map(|c| c * groups);
    GroupedOctave {
        octave: OctaveGeometry {
            n,
            in_h,
            in_l,
            out_h,
            out_l,
            h: hw,
            w: hw,
        },
        groups,
        stride,
    }
}

fn close(got: &[f64], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= 1e-12 * (1.0 + b.abs()),
            "{what}: element {i}: {a} vs {b}"
        );
    }
}

#[test]
fn grouped_octave_kernel_matches_the_direct_loop_reference_for_every_stride_channel_split_and_smallest_map(
) {
    // (images, [in_h, in_l, out_h, out_l] per group, groups, side, stride): one input channel per
    // group in a path (depthwise kernel), odd counts, unequal splits, 2×2 and 4×4 maps.
    let cases = [
        (2, [3, 1, 3, 1], 4, 8, 1),
        (1, [1, 3, 1, 3], 2, 6, 1),
        (3, [2, 2, 5, 1], 3, 2, 1),
        (1, [5, 3, 2, 4], 2, 10, 1),
        (2, [3, 1, 3, 1], 4, 8, 2),
        (1, [1, 3, 1, 3], 2, 4, 2),
        (2, [2, 3, 4, 1], 3, 12, 2),
    ];
    for (k, &(n, per_group, groups, hw, stride)) in cases.iter().enumerate() {
        let g = geometry(n, per_group, groups, hw, stride);
        assert!(g.applies(), "{g:?}");
        let (xh, xl, w) = data(&g, k as u64);
        let wt = OctaveWeights {
            hh: &w[0],
            hl: &w[1],
            lh: &w[2],
            ll: &w[3],
        };
        let (want_h, want_l) = expected(&g, &xh, &xl, &w);
        let (yh, yl) = forward(&g, &xh, &xl, wt, [None, None]);
        close(&yh, &want_h, &format!("{g:?} high"));
        close(&yl, &want_l, &format!("{g:?} low"));
        // With the output maps: each plane mapped once, by its own channel's map.
        let (mh, ml) = (
            |c: usize, p: &mut [f64]| p.iter_mut().for_each(|v| *v = plane_map(true, c, *v)),
            |c: usize, p: &mut [f64]| p.iter_mut().for_each(|v| *v = plane_map(false, c, *v)),
        );
        let (yh, yl) = forward(&g, &xh, &xl, wt, [Some(&mh), Some(&ml)]);
        let [(oh, ow), (lh, lw)] = g.out_hw();
        let mapped = |want: &[f64], c: usize, plane: usize, high: bool| -> Vec<f64> {
            want.iter()
                .enumerate()
                .map(|(i, &v)| plane_map(high, (i / plane) % c, v))
                .collect()
        };
        let o = g.octave;
        close(
            &yh,
            &mapped(&want_h, o.out_h, oh * ow, true),
            &format!("{g:?} high, mapped"),
        );
        close(
            &yl,
            &mapped(&want_l, o.out_l, lh * lw, false),
            &format!("{g:?} low, mapped"),
        );
    }
}

#[test]
fn grouped_octave_kernel_in_f32_agrees_with_f64_on_resnext_sized_groups() {
    // ResNeXt-50 32×4d's grouped layers at α = .25 and .5 (3 + 1 and 2 + 2 channels per group;
    // 12 + 4 at 14×14, where the grouped kernels run their wide register blocks), stride 1 and 2.
    let cases = [
        (2, [3, 1, 3, 1], 32, 16, 1),
        (2, [2, 2, 2, 2], 32, 16, 2),
        (1, [12, 4, 12, 4], 32, 8, 1),
        (1, [16, 16, 16, 16], 8, 4, 1),
    ];
    for (k, &(n, per_group, groups, hw, stride)) in cases.iter().enumerate() {
        let g = geometry(n, per_group, groups, hw, stride);
        let (xh, xl, w) = data(&g, 100 + k as u64);
        let f32s = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
        let (xh32, xl32, w32) = (f32s(&xh), f32s(&xl), w.each_ref().map(|v| f32s(v)));
        let (want_h, want_l) = expected(&g, &xh, &xl, &w);
        let wt = OctaveWeights {
            hh: &w32[0],
            hl: &w32[1],
            lh: &w32[2],
            ll: &w32[3],
        };
        let (yh, yl) = forward(&g, &xh32, &xl32, wt, [None, None]);
        for (got, want, what) in [(&yh, &want_h, "high"), (&yl, &want_l, "low")] {
            assert_eq!(got.len(), want.len());
            for (i, (&a, &b)) in got.iter().zip(want).enumerate() {
                assert!(
                    (a as f64 - b).abs() <= 1e-4 * (1.0 + b.abs()),
                    "{g:?} {what}: element {i}: {a} vs {b}"
                );
            }
        }
    }
}

#[test]
fn grouped_octave_geometry_rejects_what_the_kernel_cannot_run() {
    // One group (the dense kernels' case), a channel count that the groups do not divide, odd maps
    // and a stride-2 map that does not halve twice.
    assert!(!geometry(1, [2, 2, 2, 2], 1, 8, 1).applies());
    let mut g = geometry(1, [2, 2, 2, 2], 2, 8, 1);
    g.octave.in_l = 3;
    assert!(!g.applies());
    assert!(!geometry(1, [2, 2, 2, 2], 2, 7, 1).applies());
    assert!(!geometry(1, [2, 2, 2, 2], 2, 6, 2).applies());
    assert!(geometry(1, [2, 2, 2, 2], 2, 8, 2).applies());
}

/// The grouped kernel reading the joint low-output input `[pool(X_H); X_L]` from its parts
/// (`grouped::Input::Joint`) equals it on the joint input built first (each group's high channels
/// pooled, then its low channels), bit for bit: the position kernel (few channels per group) and
/// the kernel along output channels (8 outputs per group), odd low maps, one image and several,
/// with the plane map.
#[test]
fn the_joint_input_read_from_its_parts_equals_the_joint_input_built_first() {
    use octconv_runtime::kernels::geometry::ConvGeometry;
    use octconv_runtime::kernels::grouped::{forward_planes, forward_planes_from, Input};
    let mut rng = ChaCha8Rng::seed_from_u64(47);
    // (batch, groups, high and low channels per group, outputs per group, low map)
    for (n, groups, high, low, out, (h, w)) in [
        (1, 4, 3, 1, 1, (7, 5)),
        (3, 4, 2, 2, 3, (6, 6)),
        (2, 2, 6, 2, 8, (5, 9)),
        (2, 3, 12, 4, 8, (4, 4)),
    ] {
        let f32s = |rng: &mut ChaCha8Rng, len: usize| -> Vec<f32> {
            (0..len).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect()
        };
        let (c_h, c_l) = (groups * high, groups * low);
        let xh = f32s(&mut rng, n * c_h * 4 * h * w);
        let xl = f32s(&mut rng, n * c_l * h * w);
        let cin_g = high + low;
        let wts = f32s(&mut rng, groups * out * cin_g * 9);
        let input = (n, groups * cin_g, h, w);
        let g = ConvGeometry::new(input, (groups * out, cin_g, 3, 3), 1, 1, groups).unwrap();
        let mut joint = Vec::new();
        for img in 0..n {
            for grp in 0..groups {
                for k in 0..high {
                    let p = &xh[((img * c_h + grp * high + k) * 4 * h * w)..][..4 * h * w];
                    for y in 0..h {
                        for x in 0..w {
                            let at = |r: usize, c: usize| p[r * 2 * w + c];
                            let (r, c) = (2 * y, 2 * x);
                            let s = at(r, c) + at(r, c + 1) + at(r + 1, c) + at(r + 1, c + 1);
                            joint.push(0.25 * s);
                        }
                    }
                }
                let from = (img * c_l + grp * low) * h * w;
                joint.extend_from_slice(&xl[from..][..low * h * w]);
            }
        }
        let post = |img: usize, c: usize, plane: &mut [f32]| {
            plane
                .iter_mut()
                .for_each(|v| *v = *v * (1.0 + c as f32) - img as f32);
        };
        let want = forward_planes(&g, &joint, &wts, Some(&post));
        let parts = Input::Joint {
            xh: &xh,
            xl: &xl,
            high,
            low,
        };
        let got = forward_planes_from(&g, parts, &wts, Some(&post));
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(&got),
            bits(&want),
            "{n} images, {groups} groups of {high} + {low} → {out}"
        );
    }
}
