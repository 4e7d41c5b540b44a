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

/// This process's resident memory now, in bytes (`/proc/self/statm`); 0 where it cannot be read.
pub fn current_rss_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    // SAFETY: sysconf only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * page.max(0) as u64
}

/// The `q`-th percentile (0 to 100) of `xs` by linear interpolation between the closest ranks, as numpy's
/// `percentile` computes it by default; `None` when empty.
pub fn percentile(xs: &[f64], q: f64) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = (q / 100.0).clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    Some(v[lo] + (v[hi] - v[lo]) * (rank - lo as f64))
}

/// Samples this process's resident memory on a thread of its own every `interval` until stopped, as HF
/// PEFT's method comparison logs memory during training (it reports the peak and the 99th percentile).
pub struct RssSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<u64>>,
}

impl RssSampler {
    /// Starts sampling.
    pub fn start(interval: std::time::Duration) -> RssSampler {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut samples = vec![current_rss_bytes()];
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(interval);
                samples.push(current_rss_bytes());
            }
            samples
        });
        RssSampler { stop, thread }
    }

    /// Stops and returns the samples, in bytes (at least one: the one taken at the start).
    pub fn stop(self) -> Vec<u64> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::{percentile, RssSampler};

    #[test]
    fn percentiles_interpolate_as_numpy_does() {
        // numpy.percentile([1, 2, 3, 4], 99) = 3.97; [10, 20] at 50 = 15.
        let p = percentile(&[4.0, 1.0, 3.0, 2.0], 99.0).unwrap();
        assert!((p - 3.97).abs() < 1e-12, "{p}");
        assert_eq!(percentile(&[10.0, 20.0], 50.0), Some(15.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn the_sampler_sees_memory_taken_while_it_runs() {
        let sampler = RssSampler::start(std::time::Duration::from_millis(2));
        let before = super::current_rss_bytes();
        // 64 MB touched page by page, held until the sampler has seen it.
        let block = vec![1u8; 64 << 20];
        std::thread::sleep(std::time::Duration::from_millis(30));
        let samples = sampler.stop();
        assert!(block.iter().step_by(4096).all(|&b| b == 1));
        let peak = *samples.iter().max().unwrap();
        assert!(
            peak >= before + (60 << 20),
            "peak {peak} against {before} before"
        );
    }
}
