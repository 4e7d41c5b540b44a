//! A bounded fuzz harness that runs inside `cargo test` on stable Rust: a few thousand seeded mutations of the
//! files a user hands the `peft` command (adapter folders, model `config.json`s, GGUF headers, experiment
//! files), each fed to the loader the command uses, in this process. It asserts, for every case:
//!
//! - **no panic**: each case runs under `catch_unwind`; a panic is counted with its message and location;
//! - **no hang**: each case runs on a worker thread and must answer within [`CASE_TIMEOUT`];
//! - **no allocation beyond [`BOUND`] (1 GiB)**: the global allocator below refuses, while a case runs, any
//!   request that would take the live heap past the bound (the inputs are a few hundred kilobytes, so a
//!   loader that asks for a gigabyte sized something from an unchecked field). A refused request makes Rust
//!   abort (`handle_alloc_error`); a SIGABRT handler first prints the name of the case that was running, so
//!   an abort's log names its culprit. The peak live heap of each family is reported and checked too.
//!
//! With `RUST_BACKTRACE` set, candle's errors capture backtraces and the first one resolved keeps about
//! 100 MB of debug information for the rest of the process: the peak column then shows it (the per-case
//! column does not).
//!
//! A clean error (`Err`) is the expected answer to most mutations; an `Ok` is fine too (many edits are
//! harmless). Run it with its summary table:
//!
//! ```text
//! cargo test -p peft-cli --test fuzz_inputs -- --nocapture
//! PEFT_FUZZ_CASES=5000 PEFT_FUZZ_SEED=7 cargo test -p peft-cli --test fuzz_inputs -- --nocapture  # longer
//! PEFT_FUZZ_VERBOSE=1 ...  # every case's name and answer on stderr
//! PEFT_FUZZ_REPORT=1 ...   # list panics and hangs instead of failing on them (exploration only)
//! PEFT_FUZZ_SKIP=a,b ...   # skip cases whose name contains `a` or `b` (to get past a known abort)
//! ```
//!
//! This binary does not link `peft_cli`: the library sets mimalloc as the global allocator, and a process
//! has one. The families call the loaders the CLI calls (`peft_core::adapter_io::load_adapter`,
//! `peft_models::folder::load_folder`, `peft_models::gguf::load_gguf`), and the experiment parser is compiled
//! here from the CLI's own source file.

use std::alloc::{GlobalAlloc, Layout, System};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

#[path = "fuzz_inputs/adapters.rs"]
mod adapters;
#[path = "fuzz_inputs/configs.rs"]
mod configs;
#[path = "../src/experiment.rs"]
#[allow(dead_code)]
mod experiment;
#[path = "fuzz_inputs/experiments.rs"]
mod experiments;
#[path = "fuzz_inputs/gguf.rs"]
mod gguf;
#[path = "../src/input_file.rs"]
#[allow(dead_code)]
mod input_file;
#[path = "fuzz_inputs/mutate.rs"]
mod mutate;
#[path = "fuzz_inputs/safetensors.rs"]
mod safetensors;

/// The most live heap a case may hold: far above what inputs of a few hundred kilobytes justify.
pub const BOUND: usize = 1 << 30;
/// How long one case may run before it counts as a hang.
pub const CASE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one family may run in all, when `PEFT_FUZZ_CASES` is not set (so that the default run stays well
/// under a minute on a slow machine); the cases left when it is spent are skipped and counted as such.
const FAMILY_BUDGET: Duration = Duration::from_secs(12);
/// Cases per family unless `PEFT_FUZZ_CASES` says otherwise.
const DEFAULT_CASES: usize = 2000;

/// The system allocator, counting live bytes and refusing (while armed) what would pass [`BOUND`].
struct BoundedAllocator;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
/// The peak live heap since the running case began.
static CASE_PEAK: AtomicUsize = AtomicUsize::new(0);
static ARMED: AtomicBool = AtomicBool::new(false);
static REFUSED: AtomicUsize = AtomicUsize::new(0);

impl BoundedAllocator {
    /// Whether `extra` more bytes may be taken now.
    fn admits(extra: usize) -> bool {
        if ARMED.load(Ordering::Relaxed)
            && LIVE.load(Ordering::Relaxed).saturating_add(extra) > BOUND
        {
            REFUSED.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    fn taken(n: usize) {
        let live = LIVE.fetch_add(n, Ordering::Relaxed) + n;
        PEAK.fetch_max(live, Ordering::Relaxed);
        CASE_PEAK.fetch_max(live, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded to `System` unchanged, or answered with null, which the trait allows.
unsafe impl GlobalAlloc for BoundedAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !Self::admits(layout.size()) {
            return std::ptr::null_mut();
        }
        let p = System.alloc(layout);
        if !p.is_null() {
            Self::taken(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !Self::admits(layout.size()) {
            return std::ptr::null_mut();
        }
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            Self::taken(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() && !Self::admits(new_size - layout.size()) {
            return std::ptr::null_mut();
        }
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            Self::taken(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: BoundedAllocator = BoundedAllocator;

/// The name of the running case, readable from a signal handler (no locks, no allocation).
static CASE_NAME: Note = Note::new();
/// The last panic's message and place, readable from a signal handler (a panic that cannot unwind aborts).
static PANIC_NOTE: Note = Note::new();

/// A short text kept in atomics, so that a signal handler may read it without locks or allocation.
struct Note {
    bytes: [AtomicU8; 400],
    len: AtomicUsize,
}

impl Note {
    const fn new() -> Self {
        Note {
            bytes: [const { AtomicU8::new(0) }; 400],
            len: AtomicUsize::new(0),
        }
    }

    fn set(&self, text: &str) {
        let bytes = &text.as_bytes()[..text.len().min(self.bytes.len())];
        self.len.store(0, Ordering::SeqCst);
        for (slot, b) in self.bytes.iter().zip(bytes) {
            slot.store(*b, Ordering::Relaxed);
        }
        self.len.store(bytes.len(), Ordering::SeqCst);
    }

    /// Writes `head`, the text and a newline to stderr with write(2) alone.
    fn write_to_stderr(&self, head: &[u8]) {
        let mut buf = [0u8; 512];
        let head = &head[..head.len().min(100)];
        buf[..head.len()].copy_from_slice(head);
        let n = self.len.load(Ordering::SeqCst);
        for i in 0..n {
            buf[head.len() + i] = self.bytes[i].load(Ordering::Relaxed);
        }
        buf[head.len() + n] = b'\n';
        // SAFETY: write(2) is async-signal-safe; the buffer outlives the call.
        unsafe { libc::write(2, buf.as_ptr().cast(), head.len() + n + 1) };
    }
}

/// On SIGABRT (a refused allocation, a panic that cannot unwind, a stack overflow): names the running case
/// and the last panic, then lets the abort go on.
extern "C" fn name_the_aborting_case(_: libc::c_int) {
    CASE_NAME.write_to_stderr(b"\nfuzz_inputs: the process aborted while running case: ");
    PANIC_NOTE.write_to_stderr(b"fuzz_inputs: the last panic was: ");
    // SAFETY: signal(2) is async-signal-safe.
    unsafe { libc::signal(libc::SIGABRT, libc::SIG_DFL) };
}

/// The work of a case: writes its input and hands it to the loader; `Err` is a clean refusal.
pub type Job<C> = Box<dyn FnOnce(&C) -> Result<(), String> + Send>;

/// One input to try: its name (what was mutated, and how) and the work, run on the family's context.
pub struct Case<C> {
    /// What the input is: the fixture and the mutation.
    pub name: String,
    /// The work.
    pub run: Job<C>,
}

/// How a case ended.
enum Outcome {
    Ok,
    CleanError(String),
    Panic(String),
}

/// How a case ended, and how much heap it took above what was live when it began.
struct Answer {
    outcome: Outcome,
    heap: usize,
}

/// The counts of one family, for the summary table.
#[derive(Default)]
struct Tally {
    family: &'static str,
    cases: usize,
    ok: usize,
    errors: usize,
    panics: Vec<(String, String)>,
    hangs: Vec<String>,
    refused: usize,
    peak: usize,
    largest: (usize, String),
    skipped: usize,
}

/// The message and place of the last panic, as the hook saw them.
static LAST_PANIC: Mutex<Option<String>> = Mutex::new(None);

/// Runs `cases` one by one on a worker thread holding the context `setup` builds, each under
/// `catch_unwind` and a timeout, with the allocator armed.
fn run_family<C: 'static>(
    family: &'static str,
    setup: fn() -> C,
    cases: impl Iterator<Item = Case<C>>,
) -> Tally {
    let verbose = std::env::var_os("PEFT_FUZZ_VERBOSE").is_some();
    let skip: Vec<String> = std::env::var("PEFT_FUZZ_SKIP")
        .map(|s| s.split(',').map(str::to_string).collect())
        .unwrap_or_default();
    let mut tally = Tally {
        family,
        ..Default::default()
    };
    let budget = match std::env::var_os("PEFT_FUZZ_CASES") {
        Some(_) => Duration::MAX,
        None => FAMILY_BUDGET,
    };
    let start = Instant::now();
    PEAK.store(LIVE.load(Ordering::Relaxed), Ordering::Relaxed);
    let refused_before = REFUSED.load(Ordering::Relaxed);
    let mut worker = Worker::start(setup);
    for case in cases {
        if start.elapsed() > budget {
            tally.skipped += 1;
            continue;
        }
        if skip.iter().any(|s| !s.is_empty() && case.name.contains(s)) {
            tally.skipped += 1;
            continue;
        }
        tally.cases += 1;
        let name = case.name.clone();
        if verbose {
            eprintln!("fuzz {family}: {name}");
        }
        let answer = worker.run(case);
        if let Some(a) = &answer {
            if a.heap > tally.largest.0 {
                tally.largest = (a.heap, name.clone());
            }
        }
        match answer.map(|a| a.outcome) {
            Some(Outcome::Ok) => tally.ok += 1,
            Some(Outcome::CleanError(e)) => {
                if verbose {
                    eprintln!("  -> error: {}", mutate::truncate(&e, 300));
                }
                tally.errors += 1
            }
            Some(Outcome::Panic(p)) => tally.panics.push((name, p)),
            None => {
                tally.hangs.push(name);
                // The stuck thread is left behind; later cases get a fresh worker.
                worker = Worker::start(setup);
            }
        }
    }
    ARMED.store(false, Ordering::SeqCst);
    tally.refused = REFUSED.load(Ordering::Relaxed) - refused_before;
    tally.peak = PEAK.load(Ordering::Relaxed);
    tally
}

/// A thread that owns a family's context and runs its cases.
struct Worker<C> {
    jobs: mpsc::Sender<Case<C>>,
    answers: mpsc::Receiver<Answer>,
}

impl<C: 'static> Worker<C> {
    fn start(setup: fn() -> C) -> Self {
        let (jobs, job_rx) = mpsc::channel::<Case<C>>();
        let (answer_tx, answers) = mpsc::channel();
        std::thread::spawn(move || {
            let ctx = setup();
            for case in job_rx {
                CASE_NAME.set(&case.name);
                PANIC_NOTE.set("(none)");
                let live = LIVE.load(Ordering::SeqCst);
                CASE_PEAK.store(live, Ordering::SeqCst);
                ARMED.store(true, Ordering::SeqCst);
                let result = std::panic::catch_unwind(AssertUnwindSafe(|| (case.run)(&ctx)));
                ARMED.store(false, Ordering::SeqCst);
                let outcome = match result {
                    Ok(Ok(())) => Outcome::Ok,
                    Ok(Err(e)) => Outcome::CleanError(e),
                    Err(_) => Outcome::Panic(
                        LAST_PANIC
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .take()
                            .unwrap_or_default(),
                    ),
                };
                let heap = CASE_PEAK.load(Ordering::SeqCst).saturating_sub(live);
                if answer_tx.send(Answer { outcome, heap }).is_err() {
                    break;
                }
            }
        });
        Worker { jobs, answers }
    }

    /// The case's answer, or `None` when it did not answer in time.
    fn run(&self, case: Case<C>) -> Option<Answer> {
        self.jobs.send(case).ok()?;
        self.answers.recv_timeout(CASE_TIMEOUT).ok()
    }
}

/// Cases per family: `PEFT_FUZZ_CASES`, else [`DEFAULT_CASES`].
fn cases_per_family() -> usize {
    std::env::var("PEFT_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

/// The seed: `PEFT_FUZZ_SEED`, else a fixed one, so that every run tries the same inputs.
fn seed() -> u64 {
    std::env::var("PEFT_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_f022)
}

#[test]
fn hostile_inputs_end_in_a_result_without_panic_hang_or_outsized_allocation() {
    // SAFETY: installs a handler that only calls async-signal-safe functions.
    unsafe {
        libc::signal(
            libc::SIGABRT,
            name_the_aborting_case as extern "C" fn(libc::c_int) as libc::sighandler_t,
        )
    };
    // The bound is live: a request past it is refused (here through `try_reserve`, which reports it).
    ARMED.store(true, Ordering::SeqCst);
    let too_much = Vec::<u8>::new().try_reserve_exact(BOUND + 1);
    ARMED.store(false, Ordering::SeqCst);
    assert!(
        too_much.is_err() && REFUSED.swap(0, Ordering::SeqCst) >= 1,
        "the allocator must refuse a request past the bound while armed"
    );

    let n = cases_per_family();
    let seed = seed();
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|info| {
        let place = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let note = format!("{msg}{place}");
        PANIC_NOTE.set(&note);
        *LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()) = Some(note);
    }));
    let started = Instant::now();
    let tallies = [
        run_family("adapters", adapters::setup, adapters::cases(seed ^ 1, n)),
        run_family("config.json", configs::setup, configs::cases(seed ^ 2, n)),
        run_family("gguf", gguf::setup, gguf::cases(seed ^ 3, n)),
        run_family(
            "experiments",
            experiments::setup,
            experiments::cases(seed ^ 4, n),
        ),
    ];
    std::panic::set_hook(default_hook);

    println!(
        "\nfuzz_inputs: seed {seed:#x}, {n} cases a family, bound {} MiB, {:.1} s",
        BOUND >> 20,
        started.elapsed().as_secs_f64()
    );
    println!(
        "{:<12} {:>6} {:>6} {:>13} {:>7} {:>6} {:>8} {:>8} {:>14} {:>8}",
        "family",
        "cases",
        "ok",
        "clean errors",
        "panics",
        "hangs",
        "refused",
        "peak MB",
        "top case MB",
        "skipped"
    );
    for t in &tallies {
        println!(
            "{:<12} {:>6} {:>6} {:>13} {:>7} {:>6} {:>8} {:>8.1} {:>14.1} {:>8}",
            t.family,
            t.cases,
            t.ok,
            t.errors,
            t.panics.len(),
            t.hangs.len(),
            t.refused,
            t.peak as f64 / 1e6,
            t.largest.0 as f64 / 1e6,
            t.skipped
        );
    }
    for t in &tallies {
        println!(
            "  {}: the case taking most heap: {}",
            t.family,
            mutate::truncate(&t.largest.1, 150)
        );
    }
    let mut failures = Vec::new();
    for t in &tallies {
        // Distinct panics by message and place, with the first case that raised each.
        let mut seen = std::collections::BTreeMap::new();
        for (case, msg) in &t.panics {
            seen.entry(msg.clone()).or_insert(case.clone());
        }
        for (msg, case) in seen {
            failures.push(format!("{}: panic `{msg}` in case: {case}", t.family));
        }
        for case in &t.hangs {
            failures.push(format!(
                "{}: no answer within {CASE_TIMEOUT:?} in case: {case}",
                t.family
            ));
        }
        if t.refused > 0 {
            failures.push(format!(
                "{}: {} allocation(s) refused for passing {} MiB",
                t.family,
                t.refused,
                BOUND >> 20
            ));
        }
        if t.peak > BOUND {
            failures.push(format!(
                "{}: peak heap {} B over the bound",
                t.family, t.peak
            ));
        }
        if t.cases == 0 && n > 0 {
            failures.push(format!("{}: no case ran", t.family));
        }
    }
    for f in &failures {
        println!("FOUND {f}");
    }
    if std::env::var_os("PEFT_FUZZ_REPORT").is_none() {
        assert!(
            failures.is_empty(),
            "{} finding(s):\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
}
