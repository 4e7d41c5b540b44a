//! The [`Communicator`] of an MPI job (cargo feature `mpi`): MPI's world, through the `mpi` crate (rsmpi), with
//! any MPI library that provides `mpicc` (Open MPI, MPICH, Intel MPI, Cray MPICH).
//!
//! ```no_run
//! use peft_train::dist::Communicator;
//! let (_universe, comm) = peft_cli::mpi_comm::MpiCommunicator::initialize().unwrap();
//! println!("rank {} of {}", comm.rank(), comm.size());
//! ```

use anyhow::{anyhow, Result};
use mpi::collective::SystemOperation;
use mpi::datatype::PartitionMut;
use mpi::environment::Universe;
use mpi::topology::{Communicator as _, SimpleCommunicator};
use mpi::traits::{CommunicatorCollectives, Equivalence, Root};
use peft_core::PeftError;
use peft_train::dist::Communicator;

/// Elements per MPI call: counts are C `int`s, so larger buffers go in pieces.
const MAX_COUNT: usize = 1 << 28;

/// MPI's world communicator.
pub struct MpiCommunicator {
    world: SimpleCommunicator,
    rank: usize,
    size: usize,
    library: String,
    local_ranks: usize,
}

impl MpiCommunicator {
    /// Initialises MPI (only the main thread calls it: `MPI_THREAD_FUNNELED`) and returns the universe, which
    /// finalises MPI when dropped, with the world communicator.
    pub fn initialize() -> Result<(Universe, Self)> {
        let (universe, _) = mpi::initialize_with_threading(mpi::Threading::Funneled)
            .ok_or_else(|| anyhow!("MPI was already initialised in this process"))?;
        let world = universe.world();
        let library = mpi::environment::library_version()
            .unwrap_or_default()
            .split([',', '\n'])
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        let local_ranks = world.split_shared(world.rank()).size() as usize;
        Ok((
            universe,
            MpiCommunicator {
                rank: world.rank() as usize,
                size: world.size() as usize,
                world,
                library,
                local_ranks,
            },
        ))
    }

    /// How many ranks of the job run on this machine (sharing its memory).
    pub fn local_ranks(&self) -> usize {
        self.local_ranks
    }

    fn all_reduce<T: Equivalence + Copy + Default>(&self, values: &mut [T]) {
        let mut received = vec![T::default(); values.len().min(MAX_COUNT)];
        for part in values.chunks_mut(MAX_COUNT) {
            let out = &mut received[..part.len()];
            self.world
                .all_reduce_into(&*part, out, SystemOperation::sum());
            part.copy_from_slice(out);
        }
    }
}

/// Stops every rank of the job (`MPI_Abort` on the world) with `code`.
pub fn abort(code: i32) -> ! {
    SimpleCommunicator::world().abort(code)
}

impl Communicator for MpiCommunicator {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn all_reduce_sum_f32(&self, values: &mut [f32]) -> peft_core::Result<()> {
        self.all_reduce(values);
        Ok(())
    }

    fn all_reduce_sum_f64(&self, values: &mut [f64]) -> peft_core::Result<()> {
        self.all_reduce(values);
        Ok(())
    }

    fn broadcast_bytes(&self, bytes: &mut Vec<u8>) -> peft_core::Result<()> {
        let root = self.world.process_at_rank(0);
        let mut len = bytes.len() as u64;
        root.broadcast_into(&mut len);
        bytes.resize(len as usize, 0);
        for part in bytes.chunks_mut(MAX_COUNT) {
            root.broadcast_into(part);
        }
        Ok(())
    }

    fn gather_bytes(&self, bytes: &[u8]) -> peft_core::Result<Option<Vec<Vec<u8>>>> {
        if bytes.len() > i32::MAX as usize {
            return Err(PeftError::Communication(format!(
                "{} bytes to gather exceed MPI's count limit",
                bytes.len()
            )));
        }
        let root = self.world.process_at_rank(0);
        let len = bytes.len() as i32;
        if self.rank != 0 {
            root.gather_into(&len);
            root.gather_varcount_into(bytes);
            return Ok(None);
        }
        let mut lens = vec![0i32; self.size];
        root.gather_into_root(&len, &mut lens[..]);
        let displs: Vec<i32> = lens
            .iter()
            .scan(0i32, |at, &n| {
                let start = *at;
                *at += n;
                Some(start)
            })
            .collect();
        let total: usize = lens.iter().map(|&n| n as usize).sum();
        if total > i32::MAX as usize {
            return Err(PeftError::Communication(format!(
                "{total} bytes to gather exceed MPI's count limit"
            )));
        }
        let mut all = vec![0u8; total];
        {
            let mut partition = PartitionMut::new(&mut all[..], &lens[..], &displs[..]);
            root.gather_varcount_into_root(bytes, &mut partition);
        }
        Ok(Some(
            lens.iter()
                .zip(&displs)
                .map(|(&n, &at)| all[at as usize..(at + n) as usize].to_vec())
                .collect(),
        ))
    }

    fn describe(&self) -> String {
        format!("MPI: {}", self.library)
    }
}
