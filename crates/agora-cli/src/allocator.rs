//! glibc's allocator, told to keep freed memory for reuse.
//!
//! Training and batched inference allocate and free tensors of a few megabytes hundreds
//! of times per step. By default glibc returns such memory to the kernel (an `mmap` per
//! block above its threshold, a trim of the heap top when more than twice that is free),
//! and the next step faults every page back in: about a tenth of a GPT-2 training step
//! went to page faults. With blocks up to 32 MiB served from the heap and the heap kept
//! once grown, the peak resident memory stays the same (measured: 1,685 vs 1,695 MB on
//! `agora bench train`) and the step runs about 13% faster.
//!
//! Two more settings finish the job. Blocks above 32 MiB (the output layer's softmax,
//! the embedding's gradient) were still mapped and unmapped each step, and work running
//! on rayon's workers ([`agora_model::engine::on_pool`]) allocated from per-thread arenas
//! of 64 MiB heaps that glibc shrinks as soon as their top is free: 150,000 page faults
//! (600 MB) per GPT-2 training step. With one arena and no `mmap` at all, a run of six
//! steps took 0.33 M page faults instead of 1.08 M (the rest is loading), the same peak
//! (1,216 vs 1,209 MB) and 8% fewer CPU-seconds per step (1 thread).
#![allow(unsafe_code)]

/// Sets glibc's `M_MMAP_THRESHOLD` (32 MiB, its largest), `M_TRIM_THRESHOLD` (1 GiB),
/// `M_TOP_PAD` (64 MiB), `M_MMAP_MAX` (0: every block from the heap) and `M_ARENA_MAX`
/// (1: one heap for all threads). Elsewhere (musl, macOS, Windows) it does nothing.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const MMAP_THRESHOLD: libc::c_int = 32 << 20;
        const TRIM_THRESHOLD: libc::c_int = 1 << 30;
        const TOP_PAD: libc::c_int = 64 << 20;
        // SAFETY: mallopt only changes allocator parameters; it is called once at the start
        // of `main`, before any other thread exists, with values glibc documents as valid
        // (a rejected value returns 0 and leaves the default in place).
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
            libc::mallopt(libc::M_TOP_PAD, TOP_PAD);
            libc::mallopt(libc::M_MMAP_MAX, 0);
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}
