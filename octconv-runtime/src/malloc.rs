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
            mmap == 1 && trim == 1 && no_mmap == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
