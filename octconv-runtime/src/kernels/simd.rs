//! Run-time choice of the AVX2 + FMA build of a loop. The crate is compiled for the portable x86-64
//! baseline (SSE2), where a loop that converts f32 to f64 or selects by a mask stays scalar; machines
//! of the same kind differ (AVX-512 on some, AVX2 + FMA on others), so the wider build is chosen at
//! run time and the portable one serves every other CPU. Both builds run the same operations in the
//! same order (Rust never contracts `a * b + c` into an FMA by itself), so their values agree bit for
//! bit.

/// Whether this CPU has AVX2 and FMA (detected once).
#[cfg(target_arch = "x86_64")]
pub fn has_avx2_fma() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

/// Whether this CPU has AVX-512F (detected once): the GEMM library then runs 16-lane kernels, which
/// moves where a direct kernel beats a GEMM-based one.
#[cfg(target_arch = "x86_64")]
pub fn has_avx512f() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("avx512f"))
}

/// Whether this CPU runs 512-bit FMAs at full width: AVX-512F on an Intel core (detected once).
/// AMD's Zen 4 splits each 512-bit operation into two 256-bit halves, so there a kernel written for
/// 512-bit registers does the work of its AVX2 twin per cycle, while on an Intel Xeon it does twice
/// as much — which moves where a direct kernel beats a GEMM-based one ([`super::direct::prefers`]).
/// The vendor is the proxy: no CPUID bit says how wide the FMA units are.
#[cfg(target_arch = "x86_64")]
pub fn full_width_avx512() -> bool {
    static FULL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FULL.get_or_init(|| {
        // CPUID leaf 0 (the vendor string) exists on every x86-64 CPU.
        let id = std::arch::x86_64::__cpuid(0);
        let vendor = [id.ebx, id.edx, id.ecx].map(u32::to_le_bytes).concat();
        has_avx512f() && vendor == b"GenuineIntel"
    })
}

/// On other architectures: no AVX-512.
#[cfg(not(target_arch = "x86_64"))]
pub fn full_width_avx512() -> bool {
    false
}

/// On other architectures: no AVX-512.
#[cfg(not(target_arch = "x86_64"))]
pub fn has_avx512f() -> bool {
    false
}

/// Defines a function (with at most one type parameter) whose body is compiled twice, for the portable baseline and for AVX2 + FMA,
/// and which runs the AVX2 build where the CPU has it ([`has_avx2_fma`]). Helpers the body calls are
/// compiled for AVX2 only where they are inlined: mark them `#[inline(always)]`. (A generic
/// `wide(|| …)` wrapper does not do: LLVM did not inline the closure into the AVX2 function.)
macro_rules! wide_fn {
    ($(#[$m:meta])* $vis:vis fn $name:ident $(<$g:ident: $bound:path>)?
        ($($a:ident: $t:ty),* $(,)?) $(-> $r:ty)? $body:block) => {
        $(#[$m])*
        $vis fn $name $(<$g: $bound>)? ($($a: $t),*) $(-> $r)? {
            #[inline(always)]
            fn body $(<$g: $bound>)? ($($a: $t),*) $(-> $r)? $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2 $(<$g: $bound>)? ($($a: $t),*) $(-> $r)? {
                body($($a),*)
            }
            #[cfg(target_arch = "x86_64")]
            if $crate::kernels::simd::has_avx2_fma() {
                // SAFETY: the CPU has AVX2 and FMA (checked at run time).
                return unsafe { avx2($($a),*) };
            }
            body($($a),*)
        }
    };
}
pub(crate) use wide_fn;
