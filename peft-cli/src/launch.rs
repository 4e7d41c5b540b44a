//! How this process was started: alone, or as one rank of an MPI job (`mpirun -np 4 peft train exp.toml`,
//! `srun peft train exp.toml`). `peft train`, `peft compare` and `peft bench` run through a [`Job`]: its
//! communicator connects the ranks (built with the cargo feature `mpi`), an error on any rank stops the whole
//! job with a message naming the rank (instead of leaving the others waiting), and each rank gets its share
//! of the machine's cores.
//!
//! ```
//! let job = peft_cli::launch::Job::alone();
//! assert_eq!(job.comm().size(), 1);
//! assert!(job.comm().is_root());
//! ```

use anyhow::{bail, Result};
use peft_train::dist::{Communicator, SingleProcess};

/// Launcher variables that give the job's size: Open MPI, MPICH / Intel MPI (Hydra's PMI), MVAPICH.
const SIZE_VARIABLES: [&str; 3] = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE"];

/// The job's size as the launcher announced it in the environment, `None` when no MPI launcher started this
/// process. Under Slurm with PMIx (`srun --mpi=pmix`) the size is the task count.
pub fn launched_size() -> Option<usize> {
    let read = |name: &str| std::env::var(name).ok()?.trim().parse::<usize>().ok();
    SIZE_VARIABLES.iter().find_map(|v| read(v)).or_else(|| {
        std::env::var_os("PMIX_RANK")
            .is_some()
            .then(|| read("SLURM_NTASKS").unwrap_or(1))
    })
}

/// The processes this command runs in, and what connects them.
pub struct Job {
    comm: Box<dyn Communicator>,
    // Finalises MPI when dropped, after the communicator.
    #[cfg(feature = "mpi")]
    _mpi: Option<mpi::environment::Universe>,
}

impl Job {
    /// One process on its own.
    pub fn alone() -> Self {
        Job {
            comm: Box::new(SingleProcess),
            #[cfg(feature = "mpi")]
            _mpi: None,
        }
    }

    /// The job this process belongs to: MPI's world when an MPI launcher started it (in a build with the `mpi`
    /// feature), otherwise one process. A build without the feature refuses to run as one of several
    /// processes, which would each train alone and overwrite each other's outputs.
    pub fn start() -> Result<Self> {
        let Some(size) = launched_size() else {
            return Ok(Self::alone());
        };
        #[cfg(feature = "mpi")]
        {
            let _ = size;
            let (universe, comm) = crate::mpi_comm::MpiCommunicator::initialize()?;
            share_cores(comm.local_ranks());
            let comm: Box<dyn Communicator> = Box::new(comm);
            stop_job_on_panic(comm.rank(), comm.size());
            Ok(Job {
                comm,
                _mpi: Some(universe),
            })
        }
        #[cfg(not(feature = "mpi"))]
        {
            if size > 1 {
                bail!(
                    "started as one of {size} processes by an MPI launcher, but this peft was built without \
                     MPI: each process would train alone and overwrite the others' outputs. Build it with \
                     `cargo build --release -p peft-cli --features mpi` (needs an MPI library and \
                     libclang; see README, data-parallel training), or start one process"
                );
            }
            Ok(Self::alone())
        }
    }

    /// The communicator of the job's ranks.
    pub fn comm(&self) -> &dyn Communicator {
        self.comm.as_ref()
    }

    /// Ends the process after `error`: alone, by returning; in a job of several ranks, by printing the error
    /// with this rank's number and stopping every rank (MPI_Abort), since the others would otherwise wait for
    /// this one forever.
    pub fn stop_on_error(&self, error: &anyhow::Error) {
        if self.comm.size() > 1 {
            eprintln!(
                "error on rank {} of {}: {error:#}\nstopping every rank of the job",
                self.comm.rank(),
                self.comm.size()
            );
            #[cfg(feature = "mpi")]
            crate::mpi_comm::abort(1);
        }
    }
}

/// Refuses to run a command that has no data-parallel form as one of several processes.
pub fn refuse_under_mpi(command: &str) -> Result<()> {
    match launched_size() {
        Some(n) if n > 1 => bail!(
            "`peft {command}` runs in one process; start it without mpirun / srun (it was started as one of \
             {n}). Only train, compare and bench run over several processes"
        ),
        _ => Ok(()),
    }
}

/// Gives each of `local_ranks` ranks on this machine its share of the cores for its compute threads, unless
/// `RAYON_NUM_THREADS` already says how many (ranks that share cores slow each other down otherwise).
#[cfg(feature = "mpi")]
fn share_cores(local_ranks: usize) {
    if std::env::var_os("RAYON_NUM_THREADS").is_some() {
        return;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = (cores / local_ranks.max(1)).max(1);
    // Read by candle and rayon when their thread pools start, which has not happened yet.
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
}

/// A panic on one rank stops the whole job (after the usual message), naming the rank.
#[cfg(feature = "mpi")]
fn stop_job_on_panic(rank: usize, size: usize) {
    if size < 2 {
        return;
    }
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        previous(info);
        eprintln!("rank {rank} of {size} panicked: stopping every rank of the job");
        crate::mpi_comm::abort(101);
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_process_is_alone() {
        // The test runner is not started by an MPI launcher.
        if launched_size().is_none() {
            let job = Job::start().unwrap();
            assert_eq!((job.comm().rank(), job.comm().size()), (0, 1));
        }
    }
}
