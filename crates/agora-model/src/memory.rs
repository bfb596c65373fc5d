//! Handing freed heap memory back to the operating system (glibc only; elsewhere a no-op).
#![allow(unsafe_code)]

/// Returns the C heap's free pages to the kernel. Loading a GGUF model frees several
/// megabytes of small allocations (the metadata's strings, what building the tokenizer
/// needed) just before it reads the weights; scattered between live ones, those pages
/// stay resident, and the weights' large buffers cannot reuse them. On SmolLM2-135M's
/// Q4_1 file this lowered the peak RSS of loading by 2-4 MB (of about 126).
pub(crate) fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers; it only walks glibc's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}
