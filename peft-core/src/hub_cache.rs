//! The conventions of the Hugging Face hub that models and datasets share: where the local cache is (as
//! `huggingface_hub` lays it out, so a cache filled by Python tools is found here and one filled here serves
//! them), which endpoint to ask, whether to ask at all, and how long to wait for the hub's first answer
//! before calling it unreachable.
//!
//! ```
//! use std::time::Duration;
//! use peft_core::hub_cache::{fetch_with_probe, FetchError};
//! // The work says when the hub has answered; after that it runs to the end.
//! let got = fetch_with_probe(Duration::from_secs(5), |answered| {
//!     answered();
//!     Ok(42)
//! });
//! assert_eq!(got.unwrap(), 42);
//! // Work that fails before any answer means the hub is unreachable.
//! let refused = fetch_with_probe::<(), _>(Duration::from_secs(5), |_| Err("connection refused".into()));
//! assert!(matches!(refused, Err(FetchError::Unreachable(why)) if why == "connection refused"));
//! ```

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

/// How long to wait for the hub's first answer when `PEFT_HUB_TIMEOUT_SECS` does not say.
pub const DEFAULT_PROBE_SECS: u64 = 20;

fn var(key: &str) -> Option<PathBuf> {
    std::env::var_os(key)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The local Hugging Face hub cache: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = var("HF_HUB_CACHE") {
        return dir;
    }
    if let Some(home) = var("HF_HOME") {
        return home.join("hub");
    }
    let user_home = var("HOME")
        .or_else(|| var("USERPROFILE"))
        .unwrap_or_else(|| PathBuf::from("."));
    user_home.join(".cache").join("huggingface").join("hub")
}

/// The hub to ask: `$HF_ENDPOINT` where set (a mirror, or a test server), else none (the public hub).
pub fn endpoint() -> Option<String> {
    std::env::var("HF_ENDPOINT").ok().filter(|e| !e.is_empty())
}

/// Whether the user asked for no network at all (`HF_HUB_OFFLINE=1`, as `huggingface_hub` reads it).
pub fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        })
        .unwrap_or(false)
}

/// How long to wait for the hub's first answer: `PEFT_HUB_TIMEOUT_SECS`, else [`DEFAULT_PROBE_SECS`].
pub fn probe_timeout() -> Duration {
    std::env::var("PEFT_HUB_TIMEOUT_SECS")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .map_or(Duration::from_secs(DEFAULT_PROBE_SECS), Duration::from_secs)
}

/// Why a fetch from the hub gave nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// The hub did not answer: refused, unresolved, or silent for the whole probe timeout.
    Unreachable(String),
    /// The hub answered, then the fetch failed (a missing file, a broken download).
    Failed(String),
}

/// Runs `work` (a download) on a thread of its own and waits up to `timeout` for it to call `answered` (the
/// hub's first answer) or finish, so that a hub that never answers costs the timeout, not a hang; once it
/// has answered, the download runs to the end.
pub fn fetch_with_probe<T, F>(timeout: Duration, work: F) -> Result<T, FetchError>
where
    T: Send + 'static,
    F: FnOnce(&dyn Fn()) -> Result<T, String> + Send + 'static,
{
    // `None` says the hub answered; `Some` is the end of the work.
    let (tx, rx) = mpsc::channel::<Option<Result<T, String>>>();
    std::thread::spawn(move || {
        let reach = tx.clone();
        let answered = move || {
            let _ = reach.send(None);
        };
        let _ = tx.send(Some(work(&answered)));
    });
    match rx.recv_timeout(timeout) {
        Ok(None) => {}
        Ok(Some(Ok(value))) => return Ok(value),
        Ok(Some(Err(why))) => return Err(FetchError::Unreachable(why)),
        Err(mpsc::RecvTimeoutError::Timeout) => {
            return Err(FetchError::Unreachable(format!(
                "no answer within {timeout:?}"
            )))
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            return Err(FetchError::Unreachable("the download thread failed".into()))
        }
    }
    loop {
        match rx.recv() {
            Ok(None) => continue,
            Ok(Some(result)) => return result.map_err(FetchError::Failed),
            Err(_) => return Err(FetchError::Failed("the download thread failed".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silent_work_costs_the_timeout_and_answered_work_runs_to_the_end() {
        let start = std::time::Instant::now();
        let silent = fetch_with_probe::<(), _>(Duration::from_millis(200), |_| {
            std::thread::sleep(Duration::from_secs(30));
            Ok(())
        });
        assert!(
            matches!(&silent, Err(FetchError::Unreachable(why)) if why.contains("no answer within")),
            "{silent:?}"
        );
        assert!(start.elapsed() < Duration::from_secs(10));
        // Past the probe, a slow download is waited for, and its failure is not "unreachable".
        let slow = fetch_with_probe::<u8, _>(Duration::from_millis(100), |answered| {
            answered();
            answered();
            std::thread::sleep(Duration::from_millis(400));
            Err("404 for sst2/train/0000.parquet".into())
        });
        assert_eq!(
            slow,
            Err(FetchError::Failed("404 for sst2/train/0000.parquet".into()))
        );
    }
}
