//! What a run measures about itself: the median of repeated timings and the process's peak resident memory.
//!
//! ```
//! use peft_cli::measure::median;
//! assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
//! assert_eq!(median(&[]), None);
//! assert!(peft_cli::measure::peak_rss_bytes() > 0);
//! ```

/// The median of `xs`; `None` when empty.
pub fn median(xs: &[f64]) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// This process's peak resident memory in bytes.
pub fn peak_rss_bytes() -> u64 {
    // SAFETY: getrusage writes into the zeroed struct we own.
    unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return 0;
        }
        // Linux reports kilobytes.
        usage.ru_maxrss as u64 * 1024
    }
}

/// Minor page faults this process has taken so far: each is a page the allocator handed back to the kernel
/// and touched again, which is what an allocator setting changes.
pub fn minor_page_faults() -> u64 {
    // SAFETY: getrusage writes into the zeroed struct we own.
    unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return 0;
        }
        usage.ru_minflt as u64
    }
}
