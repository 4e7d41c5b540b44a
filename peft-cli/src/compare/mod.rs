//! `peft compare <grid.toml>`: runs models x tasks x methods x seeds under one training budget, each cell in a
//! process of its own, and writes a results folder: `runs/<cell>/` (the trainer's JSONL log, the adapter,
//! `result.json`), `runs.csv`, `report.md` and plots. A grid that is stopped (even by `kill -9`) and started
//! again reuses every finished cell whose settings are unchanged and reruns the rest from their start. Under
//! `mpirun -np N` the ranks share out the cells and rank 0 writes the report.
//!
//! ```
//! use peft_cli::compare::grid::line_at;
//! assert_eq!(line_at("a = 1\nb = 2\n", 6), 2);
//! ```

pub mod cell;
pub mod grid;
pub mod hf_experiment;
pub mod leaderboard;
pub mod plan;
pub mod report;
pub mod stats;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use peft_core::atomic::write_atomic;
use peft_train::dist::{round_robin, Communicator};

use cell::{CellResult, CellSpec};
use grid::Grid;

/// Arguments of `peft compare`.
#[derive(Args)]
pub struct CompareArgs {
    /// The grid file.
    grid: PathBuf,
    /// Override `[compare] output_dir`.
    #[arg(long)]
    output_dir: Option<PathBuf>,
    /// Check the grid (models, data, methods, budgets) and print the cells, without running them.
    #[arg(long)]
    dry_run: bool,
    /// Rerun every cell, even finished ones.
    #[arg(long)]
    fresh: bool,
    /// Cells to run at a time, each with the cores shared out among them (`RAYON_NUM_THREADS`, unless it is
    /// set already): on few cores, small models get more done as two one-thread cells than as one cell on
    /// two threads. The report says how the cells ran.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    jobs: u16,
}

/// Arguments of the hidden `peft compare-cell` (one cell, run by `peft compare` in a child process).
#[derive(Args)]
pub struct CellArgs {
    /// The cell's `cell.json`.
    spec: PathBuf,
}

/// Runs one cell (the child side).
pub fn run_cell(args: CellArgs) -> Result<()> {
    cell::run_cell_file(&args.spec)
}

/// Runs `peft compare`. Under `mpirun -np N` the cells left to run are dealt out over the ranks (cell `i` of
/// them to rank `i % N`), each rank runs its cells one at a time as a single process would, and rank 0
/// gathers the results and writes the same report.
pub fn run(args: CompareArgs, comm: &dyn Communicator) -> Result<()> {
    let root = comm.is_root();
    let mut grid = Grid::load(&args.grid)?;
    if let Some(d) = args.output_dir {
        grid.output_dir = d;
    }
    if root {
        // What an HF experiment folder's row does not apply, or applies differently, before any work.
        for row in &grid.methods {
            for note in &row.notes {
                eprintln!("note: method `{}` (line {}): {note}", row.name, row.line);
            }
        }
        eprintln!("checking the grid: models, data, methods and budgets");
    }
    let cells = plan::plan(&grid)?;
    if root {
        for c in &cells {
            let size = c
                .sized
                .as_ref()
                .map(|(k, v)| format!(", {k} = {v} for the budget"))
                .unwrap_or_default();
            eprintln!(
                "  {}: {} trainable parameters{size}",
                c.id, c.planned_trainable
            );
        }
    }
    if args.dry_run {
        return Ok(());
    }
    let out = &grid.output_dir;
    // One `peft compare` per results folder: two would run the same cells into the same run folders. Rank 0
    // holds it for the job.
    let _lock = if root {
        Some(peft_core::lock::DirLock::acquire(
            out,
            "the results folder",
        )?)
    } else {
        None
    };
    std::fs::create_dir_all(out.join("runs"))
        .with_context(|| format!("creating {}", out.display()))?;
    if root {
        write_atomic(
            &out.join("grid.toml"),
            std::fs::read(&grid.path)?.as_slice(),
        )?;
        write_atomic(
            &out.join("plan.json"),
            serde_json::to_string_pretty(&cells)?.as_bytes(),
        )?;
    }
    let exe = std::env::current_exe().context("finding the peft executable")?;
    let started = Instant::now();
    // Rank 0 decides which cells are finished: its results folder is the one the report is written from.
    let mut done: Vec<(usize, CellOutcome)> = Vec::new();
    let mut todo: Vec<usize> = Vec::new();
    if root {
        for (i, spec) in cells.iter().enumerate() {
            match finished(&out.join("runs").join(&spec.id), spec).filter(|_| !args.fresh) {
                Some(result) => {
                    eprintln!(
                        "[{}/{}] {}: finished earlier, reused",
                        i + 1,
                        cells.len(),
                        spec.id
                    );
                    done.push((i, Ok(result)));
                }
                None => todo.push(i),
            }
        }
    }
    let mut todo_bytes = serde_json::to_vec(&todo)?;
    comm.broadcast_bytes(&mut todo_bytes)?;
    let todo: Vec<usize> = serde_json::from_slice(&todo_bytes)?;
    let prefix = if comm.size() > 1 {
        format!("rank {}: ", comm.rank())
    } else {
        String::new()
    };
    let mine: Vec<usize> = round_robin(todo.len(), comm.rank(), comm.size())
        .into_iter()
        .map(|k| todo[k])
        .collect();
    let ran = run_cells(&exe, out, &cells, &mine, usize::from(args.jobs), &prefix);
    let Some(gathered) = comm.gather_bytes(&serde_json::to_vec(&ran)?)? else {
        return Ok(());
    };
    for bytes in gathered {
        let theirs: Vec<(usize, CellOutcome)> =
            serde_json::from_slice(&bytes).context("a rank's cell results")?;
        for (i, outcome) in theirs {
            // Keep every result in rank 0's folder too, so that a rerun from here reuses it.
            if let Ok(result) = &outcome {
                let path = out.join("runs").join(&cells[i].id).join("result.json");
                if !path.is_file() {
                    std::fs::create_dir_all(path.parent().expect("a run folder"))?;
                    write_atomic(&path, serde_json::to_string_pretty(result)?.as_bytes())?;
                }
            }
            done.push((i, outcome));
        }
    }
    done.sort_by_key(|(i, _)| *i);
    let mut results = Vec::new();
    let mut failed = Vec::new();
    for (i, outcome) in done {
        match outcome {
            Ok(result) => results.push((cells[i].clone(), result)),
            Err(message) => failed.push((cells[i].id.clone(), message)),
        }
    }
    let command = format!(
        "peft compare {}",
        std::env::args().skip(2).collect::<Vec<_>>().join(" ")
    );
    let written = report::write_all(&grid, &results, &failed, &command)?;
    let processes = if comm.size() > 1 {
        format!(" over {} processes", comm.size())
    } else {
        String::new()
    };
    println!(
        "{} of {} cells done in {:.0}s{processes}; report: {}",
        results.len(),
        cells.len(),
        started.elapsed().as_secs_f64(),
        written.display()
    );
    if !failed.is_empty() {
        bail!(
            "{} cell(s) failed (their output is in {}/runs/<cell>/stderr.log): {}",
            failed.len(),
            out.display(),
            failed
                .iter()
                .map(|(id, _)| id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

/// A cell's result, or why it failed.
type CellOutcome = std::result::Result<CellResult, String>;

/// The result of a cell finished by an earlier run with the same settings.
fn finished(dir: &Path, spec: &CellSpec) -> Option<CellResult> {
    let text = std::fs::read_to_string(dir.join("result.json")).ok()?;
    let result: CellResult = serde_json::from_str(&text).ok()?;
    (result.digest == spec.digest).then_some(result)
}

/// Runs the cells `indices` of `cells`, `jobs` child processes at a time, each told how many run at once and,
/// where more than one does and `RAYON_NUM_THREADS` is not set, given its share of the cores. Results come
/// back in the order the cells finish.
fn run_cells(
    exe: &Path,
    out: &Path,
    cells: &[CellSpec],
    indices: &[usize],
    jobs: usize,
    prefix: &str,
) -> Vec<(usize, CellOutcome)> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = (jobs > 1 && std::env::var_os("RAYON_NUM_THREADS").is_none())
        .then(|| (cores / jobs).max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let ran = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..jobs.min(indices.len()) {
            scope.spawn(|| loop {
                let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(&i) = indices.get(k) else { break };
                let spec = &cells[i];
                let dir = out.join("runs").join(&spec.id);
                let label = format!("{prefix}[{}/{}] {}", i + 1, cells.len(), spec.id);
                let outcome = match run_child(exe, &dir, spec, jobs, threads) {
                    Ok(result) => {
                        eprintln!(
                            "{label}: {} [{:.0}s]",
                            report::show_metrics(&result.metrics),
                            result.train_seconds + result.eval_seconds
                        );
                        Ok(result)
                    }
                    Err(e) => {
                        eprintln!("{label}: FAILED: {e:#}");
                        Err(format!("{e:#}"))
                    }
                };
                ran.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((i, outcome));
            });
        }
    });
    ran.into_inner().unwrap_or_else(|p| p.into_inner())
}

/// Runs a cell in a child process (a fresh folder, so nothing of an interrupted attempt remains), telling it
/// how many cells run at once and, where given, how many threads it has.
fn run_child(
    exe: &Path,
    dir: &Path,
    spec: &CellSpec,
    at_once: usize,
    threads: Option<usize>,
) -> Result<CellResult> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir)?;
    let spec_path = dir.join("cell.json");
    write_atomic(&spec_path, serde_json::to_string_pretty(spec)?.as_bytes())?;
    let log = std::fs::File::create(dir.join("stderr.log"))?;
    let mut command = Command::new(exe);
    command
        .arg("compare-cell")
        .arg(&spec_path)
        .env(cell::CELLS_AT_ONCE_ENV, at_once.to_string());
    if let Some(n) = threads {
        command.env("RAYON_NUM_THREADS", n.to_string());
    }
    let status = command
        .stdout(log.try_clone()?)
        .stderr(log)
        .status()
        .with_context(|| format!("starting {}", exe.display()))?;
    if !status.success() {
        let log = std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(3).collect();
        bail!(
            "exit {status}: {}",
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        );
    }
    finished(dir, spec).context("the cell exited without a result.json")
}
