//! Data-parallel training: what the trainer needs from the processes it runs in. A [`Communicator`] connects
//! the ranks of one job (every rank holds the whole frozen model and a copy of the adapter); the trainer shards
//! each micro-batch over them, sums the trainable gradients once per optimiser step, and lets rank 0 alone
//! evaluate and write. One process is [`SingleProcess`], where every collective is the identity; MPI ranks are
//! the `peft` binary's `mpi` feature; [`threads::ThreadGroup`] runs ranks as threads of one process, which the
//! tests use to check a data-parallel run against a single one without an MPI installation.
//!
//! ```
//! use peft_train::dist::{shard, Communicator, SingleProcess};
//! let one = SingleProcess;
//! let mut grads = [0.5f32, -1.0];
//! one.all_reduce_sum_f32(&mut grads).unwrap();
//! assert_eq!(grads, [0.5, -1.0]);
//! // A micro-batch of 5 examples over 2 ranks: the first rank takes one more.
//! assert_eq!(shard(&[10, 11, 12, 13, 14], 0, 2), &[10, 11, 12]);
//! assert_eq!(shard(&[10, 11, 12, 13, 14], 1, 2), &[13, 14]);
//! ```

pub mod pack;
pub mod threads;

use peft_core::error::Result;

/// Collective operations over the ranks of one job. Every rank must call the same operations in the same
/// order (as with MPI); rank 0 is the root of broadcasts and gathers.
pub trait Communicator {
    /// This process's rank, `0..size`.
    fn rank(&self) -> usize;

    /// Number of ranks in the job.
    fn size(&self) -> usize;

    /// Replaces `values` on every rank with their element-wise sum over all ranks.
    fn all_reduce_sum_f32(&self, values: &mut [f32]) -> Result<()>;

    /// Replaces `values` on every rank with their element-wise sum over all ranks.
    fn all_reduce_sum_f64(&self, values: &mut [f64]) -> Result<()>;

    /// Replaces `bytes` on every rank with rank 0's `bytes` (any length).
    fn broadcast_bytes(&self, bytes: &mut Vec<u8>) -> Result<()>;

    /// Collects every rank's `bytes` on rank 0, in rank order (`Some` there, `None` elsewhere).
    fn gather_bytes(&self, bytes: &[u8]) -> Result<Option<Vec<Vec<u8>>>>;

    /// What connects the ranks, for logs (`one process`, `MPI: Open MPI v4.1.4`).
    fn describe(&self) -> String;

    /// Whether this rank writes the job's outputs (logs, checkpoints, adapters, reports): rank 0.
    fn is_root(&self) -> bool {
        self.rank() == 0
    }
}

/// One process alone: rank 0 of 1, every collective the identity.
#[derive(Debug, Clone, Copy, Default)]
pub struct SingleProcess;

impl Communicator for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn all_reduce_sum_f32(&self, _values: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn all_reduce_sum_f64(&self, _values: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn broadcast_bytes(&self, _bytes: &mut Vec<u8>) -> Result<()> {
        Ok(())
    }
    fn gather_bytes(&self, bytes: &[u8]) -> Result<Option<Vec<Vec<u8>>>> {
        Ok(Some(vec![bytes.to_vec()]))
    }
    fn describe(&self) -> String {
        "one process".into()
    }
}

/// This rank's part of `items` when they are split over `size` ranks in contiguous blocks whose lengths differ
/// by at most one (the first `len % size` ranks take one more), so that the ranks' parts, in rank order, are
/// `items` again.
pub fn shard<T>(items: &[T], rank: usize, size: usize) -> &[T] {
    assert!(rank < size, "rank {rank} of {size}");
    let (base, extra) = (items.len() / size, items.len() % size);
    let start = rank * base + rank.min(extra);
    let len = base + usize::from(rank < extra);
    &items[start..start + len]
}

/// Which ranks run which of `n` independent jobs (grid cells): job `i` goes to rank `i % size`.
pub fn round_robin(n: usize, rank: usize, size: usize) -> Vec<usize> {
    (rank..n).step_by(size.max(1)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_the_items_in_order_for_every_split() {
        let items: Vec<usize> = (0..11).collect();
        for size in 1..=11 {
            let joined: Vec<usize> = (0..size)
                .flat_map(|r| shard(&items, r, size).to_vec())
                .collect();
            assert_eq!(joined, items, "{size} ranks");
            let lens: Vec<usize> = (0..size).map(|r| shard(&items, r, size).len()).collect();
            assert!(lens.iter().max().unwrap() - lens.iter().min().unwrap() <= 1);
        }
    }

    #[test]
    fn round_robin_gives_every_job_to_exactly_one_rank() {
        let mut all: Vec<usize> = (0..3).flat_map(|r| round_robin(7, r, 3)).collect();
        all.sort();
        assert_eq!(all, (0..7).collect::<Vec<_>>());
        assert_eq!(round_robin(7, 1, 3), vec![1, 4]);
    }
}
