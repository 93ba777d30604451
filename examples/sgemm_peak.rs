//! This machine's single-precision GEMM peak, as the reference for our kernels' GFLOP/s (a benchmark,
//! not a test): square f32 GEMMs on the `gemm` crate our kernels run on, on all rayon threads.
//!
//! `cargo run --release --example sgemm_peak -- [--size 1024] [--repeats 10]`

use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let mut size = 1024usize;
    let mut repeats = 10usize;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))?;
        match flag.as_str() {
            "--size" => size = value.parse()?,
            "--repeats" => repeats = value.parse()?,
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    let n = size;
    let a: Vec<f32> = (0..n * n).map(|i| ((i % 7) as f32) * 0.1).collect();
    let b: Vec<f32> = (0..n * n).map(|i| ((i % 5) as f32) * 0.1).collect();
    let mut c = vec![0f32; n * n];
    let threads = rayon::current_num_threads();
    let run = |c: &mut [f32]| {
        // SAFETY: a, b and c are n × n row-major matrices that live for the call.
        unsafe {
            gemm::gemm(
                n,
                n,
                n,
                c.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.as_ptr(),
                1,
                n as isize,
                b.as_ptr(),
                1,
                n as isize,
                0.0f32,
                1.0f32,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(threads),
            )
        }
    };
    run(&mut c); // warm-up
    let mut times = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let t = Instant::now();
        run(&mut c);
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let best = times[0];
    let flops = 2.0 * (n as f64).powi(3);
    println!(
        "sgemm {n}×{n}×{n}, {threads} threads: median {:.1} GFLOP/s, best {:.1} GFLOP/s",
        flops / median / 1e9,
        flops / best / 1e9
    );
    Ok(())
}
