//! The data order: a seeded permutation per epoch, and micro-batches as a pure function of the step, so that
//! a resumed run sees exactly the examples an uninterrupted one would.
//!
//! ```
//! use peft_train::train::order::{epoch_order, micro_batch};
//! assert_eq!(epoch_order(5, 7, 0), epoch_order(5, 7, 0));
//! assert_ne!(epoch_order(50, 7, 0), epoch_order(50, 7, 1));
//! let b = micro_batch(10, 3, 7, 4); // examples 12..15 of the stream: crosses into epoch 1
//! assert_eq!(b.len(), 3);
//! ```

use rand::seq::SliceRandom;
use rand::SeedableRng;

/// The shuffled order of `n` examples in `epoch` for `seed`.
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    // Mix the epoch into the seed; StdRng is portable within one rand version, which Cargo.lock pins.
    let mut rng = rand::rngs::StdRng::seed_from_u64(
        seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
    );
    order.shuffle(&mut rng);
    order
}

/// Example indices of micro-batch `k` (0-based over the whole run) of `batch_size` over `n` examples.
pub fn micro_batch(n: usize, batch_size: usize, seed: u64, k: usize) -> Vec<usize> {
    let start = k * batch_size;
    let mut out = Vec::with_capacity(batch_size);
    let mut cached: Option<(usize, Vec<usize>)> = None;
    for p in start..start + batch_size {
        let epoch = p / n;
        if cached.as_ref().map(|c| c.0) != Some(epoch) {
            cached = Some((epoch, epoch_order(n, seed, epoch)));
        }
        out.push(cached.as_ref().expect("set above").1[p % n]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_example_once_per_epoch() {
        let n = 10;
        let mut seen: Vec<usize> = (0..5).flat_map(|k| micro_batch(n, 2, 3, k)).collect();
        seen.sort();
        assert_eq!(seen, (0..n).collect::<Vec<_>>());
    }
}
