//! The allocator the benches run on: mimalloc with freed memory kept mapped, as the `peft` binary runs
//! (peft-cli's `configure_allocator`). Under glibc's malloc every buffer of more than a few hundred kilobytes
//! is a fresh `mmap`, and each bench iteration then spends its time in page faults and the TLB shootdowns of
//! `munmap` (a profile of `frozen_linear/smollm2-down_proj/bf16/forward_backward` had more than half of its
//! samples in the kernel), which the training steps never see.
//!
//! ```
//! peft_benches::allocator::keep_freed_memory_mapped();
//! assert_eq!(peft_benches::allocator::NAME, "mimalloc");
//! ```

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The allocator's name, for reports.
pub const NAME: &str = "mimalloc";

extern "C" {
    // mimalloc's option setter (exported by the library, declared here as peft-cli declares it).
    fn mi_option_set(option: std::os::raw::c_int, value: std::os::raw::c_long);
}

/// Turns off mimalloc's purging of freed pages, unless `MIMALLOC_PURGE_DELAY` is set; call it before the
/// measurements (the bench targets' criterion configuration does).
pub fn keep_freed_memory_mapped() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        const PURGE_DELAY: std::os::raw::c_int = 15; // mi_option_purge_delay in mimalloc.h
                                                     // SAFETY: sets one of mimalloc's options; -1 means never purge. Safe at any time.
        unsafe { mi_option_set(PURGE_DELAY, -1) };
    }
}
