//! A direct-loop reference of the OctConv forward pass, written from the paper's definition with no
//! candle code: the independent check of `OctConv2d`.
#![allow(dead_code)]

/// A dense `[N, C, H, W]` array of f64.
#[derive(Clone, Debug, PartialEq)]
pub struct Arr {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub data: Vec<f64>,
}

impl Arr {
    pub fn zeros(n: usize, c: usize, h: usize, w: usize) -> Arr {
        Arr {
            n,
            c,
            h,
            w,
            data: vec![0.0; n * c * h * w],
        }
    }
    pub fn at(&self, n: usize, c: usize, y: usize, x: usize) -> f64 {
        self.data[((n * self.c + c) * self.h + y) * self.w + x]
    }
    pub fn at_mut(&mut self, n: usize, c: usize, y: usize, x: usize) -> &mut f64 {
        &mut self.data[((n * self.c + c) * self.h + y) * self.w + x]
    }
    pub fn add(&self, o: &Arr) -> Arr {
        assert_eq!((self.n, self.c, self.h, self.w), (o.n, o.c, o.h, o.w));
        Arr {
            data: self.data.iter().zip(&o.data).map(|(a, b)| a + b).collect(),
            ..self.clone()
        }
    }
}

/// Convolution with `weight` `[O, C/g, k, k]`, zero padding `k/2`, stride 1, `g` groups.
pub fn conv(x: &Arr, weight: &[f64], out_c: usize, k: usize, groups: usize) -> Arr {
    let p = k / 2;
    let cin_g = x.c / groups;
    let cout_g = out_c / groups;
    let mut y = Arr::zeros(x.n, out_c, x.h, x.w);
    for n in 0..x.n {
        for o in 0..out_c {
            let g = o / cout_g;
            for yy in 0..x.h {
                for xx in 0..x.w {
                    let mut s = 0.0;
                    for ci in 0..cin_g {
                        let c = g * cin_g + ci;
                        for ky in 0..k {
                            for kx in 0..k {
                                let (iy, ix) = (yy + ky, xx + kx);
                                if iy < p || ix < p || iy - p >= x.h || ix - p >= x.w {
                                    continue;
                                }
                                s += x.at(n, c, iy - p, ix - p)
                                    * weight[((o * cin_g + ci) * k + ky) * k + kx];
                            }
                        }
                    }
                    *y.at_mut(n, o, yy, xx) = s;
                }
            }
        }
    }
    y
}

/// 2×2 average pooling, stride 2.
pub fn pool(x: &Arr) -> Arr {
    let mut y = Arr::zeros(x.n, x.c, x.h / 2, x.w / 2);
    for n in 0..x.n {
        for c in 0..x.c {
            for yy in 0..x.h / 2 {
                for xx in 0..x.w / 2 {
                    let s = x.at(n, c, 2 * yy, 2 * xx)
                        + x.at(n, c, 2 * yy + 1, 2 * xx)
                        + x.at(n, c, 2 * yy, 2 * xx + 1)
                        + x.at(n, c, 2 * yy + 1, 2 * xx + 1);
                    *y.at_mut(n, c, yy, xx) = s / 4.0;
                }
            }
        }
    }
    y
}

/// Nearest ×2 upsampling.
pub fn upsample(x: &Arr) -> Arr {
    let mut y = Arr::zeros(x.n, x.c, x.h * 2, x.w * 2);
    for n in 0..x.n {
        for c in 0..x.c {
            for yy in 0..2 * x.h {
                for xx in 0..2 * x.w {
                    *y.at_mut(n, c, yy, xx) = x.at(n, c, yy / 2, xx / 2);
                }
            }
        }
    }
    y
}

/// Weights and geometry of one OctConv for the reference.
pub struct RefOctConv {
    pub in_h: usize,
    pub in_l: usize,
    pub out_h: usize,
    pub out_l: usize,
    pub k: usize,
    pub stride: usize,
    pub groups: usize,
    pub depthwise: bool,
    /// hh, hl, lh, ll weights (empty when the path is absent).
    pub w: [Vec<f64>; 4],
}

/// The paper's OctConv: Y_H = f(X_H; W_HH) + upsample(f(X_L; W_LH)), Y_L = f(X_L; W_LL) + f(pool(X_H); W_HL),
/// with stride 2 realised by pooling the inputs first (and no upsample on L→H).
pub fn octconv(r: &RefOctConv, xh: Option<&Arr>, xl: Option<&Arr>) -> (Option<Arr>, Option<Arr>) {
    let g = |cin: usize| if r.depthwise { cin } else { r.groups };
    let xh = xh.map(|x| if r.stride == 2 { pool(x) } else { x.clone() });
    let mut yh: Option<Arr> = None;
    let mut yl: Option<Arr> = None;
    let add = |slot: &mut Option<Arr>, t: Arr| {
        *slot = Some(match slot.take() {
            Some(s) => s.add(&t),
            None => t,
        })
    };
    if let Some(x) = &xh {
        if r.out_h > 0 && !r.w[0].is_empty() {
            add(&mut yh, conv(x, &r.w[0], r.out_h, r.k, g(r.in_h)));
        }
        if r.out_l > 0 && !r.w[1].is_empty() {
            add(&mut yl, conv(&pool(x), &r.w[1], r.out_l, r.k, g(r.in_h)));
        }
    }
    if let Some(x) = xl {
        if r.out_h > 0 && !r.w[2].is_empty() {
            let t = conv(x, &r.w[2], r.out_h, r.k, g(r.in_l));
            add(&mut yh, if r.stride == 2 { t } else { upsample(&t) });
        }
        if r.out_l > 0 && !r.w[3].is_empty() {
            let x = if r.stride == 2 { pool(x) } else { x.clone() };
            add(&mut yl, conv(&x, &r.w[3], r.out_l, r.k, g(r.in_l)));
        }
    }
    (yh, yl)
}
