//! Ranks as threads of one process: a [`Communicator`] without MPI, with the same semantics (every rank calls
//! the same collectives in the same order; sums are taken in rank order, so results are repeatable). The
//! tests use it to check that a data-parallel run equals a single one; a rank that returns early (an error)
//! makes the others' next collective fail instead of waiting forever.
//!
//! ```
//! use peft_train::dist::{threads::ThreadGroup, Communicator};
//! let sums = ThreadGroup::run(3, |comm| {
//!     let mut x = [comm.rank() as f64];
//!     comm.all_reduce_sum_f64(&mut x)?;
//!     Ok(x[0])
//! });
//! assert!(sums.iter().all(|s| *s.as_ref().unwrap() == 3.0));
//! ```

use std::sync::{Arc, Condvar, Mutex};

use super::Communicator;
use peft_core::error::{PeftError, Result};

/// What the ranks share: one slot per rank and a reusable rendezvous.
struct Shared {
    size: usize,
    slots: Vec<Mutex<Vec<u8>>>,
    state: Mutex<Rendezvous>,
    turned: Condvar,
}

struct Rendezvous {
    arrived: usize,
    generation: u64,
    left: Option<usize>,
}

/// One rank of a [`ThreadGroup`].
pub struct ThreadRank {
    rank: usize,
    shared: Arc<Shared>,
}

/// Constructors of thread ranks.
pub struct ThreadGroup;

impl ThreadGroup {
    /// `size` connected ranks; give each to its own thread.
    pub fn ranks(size: usize) -> Vec<ThreadRank> {
        assert!(size >= 1, "a group needs at least one rank");
        let shared = Arc::new(Shared {
            size,
            slots: (0..size).map(|_| Mutex::new(Vec::new())).collect(),
            state: Mutex::new(Rendezvous {
                arrived: 0,
                generation: 0,
                left: None,
            }),
            turned: Condvar::new(),
        });
        (0..size)
            .map(|rank| ThreadRank {
                rank,
                shared: shared.clone(),
            })
            .collect()
    }

    /// Runs `work` on `size` ranks, each in its own thread; returns each rank's result in rank order.
    pub fn run<T: Send>(
        size: usize,
        work: impl Fn(&ThreadRank) -> Result<T> + Sync,
    ) -> Vec<Result<T>> {
        let ranks = Self::ranks(size);
        std::thread::scope(|s| {
            let handles: Vec<_> = ranks
                .into_iter()
                .map(|rank| {
                    let work = &work;
                    s.spawn(move || work(&rank))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a rank's thread panicked"))
                .collect()
        })
    }
}

impl ThreadRank {
    /// Waits until every rank has arrived; fails if a rank left the group first.
    fn rendezvous(&self) -> Result<()> {
        let sh = &self.shared;
        let mut st = sh.state.lock().unwrap_or_else(|e| e.into_inner());
        let generation = st.generation;
        st.arrived += 1;
        if st.arrived == sh.size {
            st.arrived = 0;
            st.generation += 1;
            sh.turned.notify_all();
            return Ok(());
        }
        loop {
            if st.generation != generation {
                return Ok(());
            }
            if let Some(gone) = st.left {
                return Err(PeftError::Communication(format!(
                    "rank {gone} left the group while rank {} waited for it",
                    self.rank
                )));
            }
            st = sh.turned.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Puts `bytes` in this rank's slot, waits for every rank, and returns what `read` makes of all slots.
    fn exchange<T>(&self, bytes: Vec<u8>, read: impl FnOnce(&[Vec<u8>]) -> T) -> Result<T> {
        *self.shared.slots[self.rank]
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = bytes;
        self.rendezvous()?;
        let all: Vec<Vec<u8>> = self
            .shared
            .slots
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .collect();
        // No rank writes its slot again before every rank has read them all.
        self.rendezvous()?;
        Ok(read(&all))
    }
}

/// A number that travels between thread ranks as little-endian bytes.
trait Summed: Copy + Default + std::ops::AddAssign {
    const SIZE: usize;
    fn put(self, out: &mut Vec<u8>);
    fn take(bytes: &[u8]) -> Self;
}

impl Summed for f32 {
    const SIZE: usize = 4;
    fn put(self, out: &mut Vec<u8>) {
        out.extend(self.to_le_bytes());
    }
    fn take(bytes: &[u8]) -> Self {
        f32::from_le_bytes(bytes.try_into().expect("4 bytes"))
    }
}

impl Summed for f64 {
    const SIZE: usize = 8;
    fn put(self, out: &mut Vec<u8>) {
        out.extend(self.to_le_bytes());
    }
    fn take(bytes: &[u8]) -> Self {
        f64::from_le_bytes(bytes.try_into().expect("8 bytes"))
    }
}

impl ThreadRank {
    /// Replaces `values` with their element-wise sum over the ranks, taken in rank order.
    fn sum<T: Summed>(&self, values: &mut [T]) -> Result<()> {
        let mut mine = Vec::with_capacity(values.len() * T::SIZE);
        for &v in values.iter() {
            v.put(&mut mine);
        }
        let n = values.len();
        let sums = self.exchange(mine, |all| {
            let mut sums = vec![T::default(); n];
            for slot in all {
                for (s, v) in sums.iter_mut().zip(slot.chunks_exact(T::SIZE)) {
                    *s += T::take(v);
                }
            }
            sums
        })?;
        values.copy_from_slice(&sums);
        Ok(())
    }
}

impl Communicator for ThreadRank {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.shared.size
    }

    fn all_reduce_sum_f32(&self, values: &mut [f32]) -> Result<()> {
        self.sum(values)
    }

    fn all_reduce_sum_f64(&self, values: &mut [f64]) -> Result<()> {
        self.sum(values)
    }

    fn broadcast_bytes(&self, bytes: &mut Vec<u8>) -> Result<()> {
        let mine = if self.is_root() {
            bytes.clone()
        } else {
            Vec::new()
        };
        *bytes = self.exchange(mine, |all| all[0].clone())?;
        Ok(())
    }

    fn gather_bytes(&self, bytes: &[u8]) -> Result<Option<Vec<Vec<u8>>>> {
        let root = self.is_root();
        self.exchange(bytes.to_vec(), |all| root.then(|| all.to_vec()))
    }

    fn describe(&self) -> String {
        format!("{} threads", self.shared.size)
    }
}

impl Drop for ThreadRank {
    fn drop(&mut self) {
        let mut st = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        st.left.get_or_insert(self.rank);
        self.shared.turned.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collectives_agree_on_every_rank() {
        let results = ThreadGroup::run(3, |comm| {
            let mut x = [comm.rank() as f32, 1.0];
            comm.all_reduce_sum_f32(&mut x)?;
            let mut b = if comm.is_root() {
                b"hi".to_vec()
            } else {
                vec![9]
            };
            comm.broadcast_bytes(&mut b)?;
            let gathered = comm.gather_bytes(&[comm.rank() as u8; 2])?;
            Ok((x, b, gathered))
        });
        for (r, out) in results.into_iter().enumerate() {
            let (x, b, gathered) = out.unwrap();
            assert_eq!(x, [3.0, 3.0]);
            assert_eq!(b, b"hi");
            assert_eq!(
                gathered,
                (r == 0).then(|| vec![vec![0, 0], vec![1, 1], vec![2, 2]])
            );
        }
    }

    #[test]
    fn a_rank_that_leaves_fails_the_others_instead_of_hanging() {
        let results = ThreadGroup::run(2, |comm| {
            if comm.rank() == 1 {
                return Err(PeftError::Unsupported("rank 1 stops".into()));
            }
            let mut x = [1f64];
            comm.all_reduce_sum_f64(&mut x)
        });
        let err = results[0].as_ref().unwrap_err().to_string();
        assert!(err.contains("rank 1 left"), "{err}");
    }
}
