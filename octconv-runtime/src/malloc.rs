//! Allocator tuning for CPU training and inference.
//!
//! Every candle op allocates its output afresh. glibc serves blocks above its mmap threshold (128 KiB
//! to start with) by `mmap` and returns them with `munmap`, so each feature map of a network costs
//! a round of page faults and zeroing by the kernel — measured at about 40 % of a WRN-16-4 forward
//! pass on this project's 2-core machines. Raising the threshold to its maximum (32 MiB on 64-bit)
//! and never trimming the heap keeps freed blocks for reuse instead. Blocks above 32 MiB (MobileNet
//! v2's expanded maps at batch 8 are 38.5 MB) would still be mapped afresh each time, so mmap is
//! switched off altogether (`M_MMAP_MAX = 0`; glibc still maps when the heap cannot grow): MobileNet
//! v2 inference at batch 8 went from 78.8 to 57.9 ms (`octconv bench`, AMD EPYC, 2 threads).
//!
//! Threads other than the main one allocate from their own arenas, heaps of at most 64 MiB that
//! glibc (2.36) deletes as soon as one is empty unless the top pad covers it — whatever the trim
//! threshold. Since an inference pass runs on a rayon worker ([`crate::threads::on_pool`]), a pass
//! whose live maps outgrow one heap (ResNeXt-50 at batch 8, about 124 MiB at α = 0) mapped and
//! deleted heaps every pass: 562 000 page faults against 59 000 on the main thread (`perf stat -e
//! page-faults`, `octconv bench 'resnext(depth = 50, groups = 32, width = 4)' --batch 8 --samples 24
//! --repeats 5 --alphas 0`). A top pad of 64 MiB keeps the heaps (68 000); it only reserves
//! address space, which the main arena's untouched pad pages do not occupy either.

/// Tunes glibc's `malloc` for tensor workloads (see the module docs). Call it once at the start of
/// a program; it changes process-wide settings and does nothing on other platforms. Returns whether
/// the settings were applied.
pub fn tune_for_tensors() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator parameters; it is safe to call at any time.
        unsafe {
            let mmap = libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            let trim = libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
            let no_mmap = libc::mallopt(libc::M_MMAP_MAX, 0);
            let pad = libc::mallopt(libc::M_TOP_PAD, 64 << 20);
            mmap == 1 && trim == 1 && no_mmap == 1 && pad == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
