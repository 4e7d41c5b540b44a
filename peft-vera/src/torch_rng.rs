//! PyTorch's CPU random generator, as far as VeRA needs it: `torch.Generator().manual_seed(key)` is a
//! Mersenne Twister (MT19937) seeded with the key's low 32 bits, and `Tensor.uniform_(from, to)` on a float32
//! CPU tensor takes one 32-bit draw per element, in memory order, keeps its low 24 bits `v` and returns
//! `(v / 2^24) * (to - from) + from` in float32, the multiply-add fused (torch's AVX2 / AVX-512 CPU kernels
//! are compiled with FMA contraction; checked bitwise against torch 2.15's draws, see
//! `tests/hf_parity.rs`). HF PEFT draws VeRA's shared projections this way, so
//! an adapter saved without them (`save_projection = false`) is rebuilt here with the same values.
//!
//! ```
//! use peft_vera::TorchGenerator;
//! // torch.Generator().manual_seed(0); torch.empty(3).uniform_(-1, 1, generator=g)
//! let mut g = TorchGenerator::new(0);
//! let v = g.uniform_f32(3, -1.0, 1.0);
//! assert_eq!(v.len(), 3);
//! assert!(v.iter().all(|x| (-1.0..1.0).contains(x)));
//! // The same seed draws the same values.
//! assert_eq!(TorchGenerator::new(0).uniform_f32(3, -1.0, 1.0), v);
//! ```

/// MT19937 state size.
const N: usize = 624;
/// MT19937 middle word offset.
const M: usize = 397;
const MATRIX_A: u32 = 0x9908_b0df;
const UPPER_MASK: u32 = 0x8000_0000;
const LOWER_MASK: u32 = 0x7fff_ffff;

/// A CPU generator that draws what `torch.Generator(device="cpu").manual_seed(seed)` draws.
#[derive(Clone)]
pub struct TorchGenerator {
    state: [u32; N],
    /// Index of the next word of `state` to temper; `N` once the block is used up.
    next: usize,
}

impl std::fmt::Debug for TorchGenerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TorchGenerator")
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

impl TorchGenerator {
    /// The generator after `manual_seed(seed)`: torch keeps the seed's low 32 bits for MT19937.
    pub fn new(seed: u64) -> Self {
        let mut state = [0u32; N];
        state[0] = seed as u32;
        for j in 1..N {
            let prev = state[j - 1];
            state[j] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(j as u32);
        }
        TorchGenerator { state, next: N }
    }

    /// Regenerates the block of `N` words (the MT19937 twist).
    fn twist(&mut self) {
        let s = &mut self.state;
        for i in 0..N {
            let y = (s[i] & UPPER_MASK) | (s[(i + 1) % N] & LOWER_MASK);
            let mag = if y & 1 == 1 { MATRIX_A } else { 0 };
            s[i] = s[(i + M) % N] ^ (y >> 1) ^ mag;
        }
        self.next = 0;
    }

    /// The next 32-bit draw (torch's `CPUGeneratorImpl::random`).
    pub fn next_u32(&mut self) -> u32 {
        if self.next >= N {
            self.twist();
        }
        let mut y = self.state[self.next];
        self.next += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^= y >> 18;
        y
    }

    /// `torch.empty(n).uniform_(from, to, generator=self)` for float32: one draw per element, its low 24 bits
    /// scaled to `[0, 1)` and mapped to `[from, to)` by one fused float32 multiply-add, as torch's CPU kernel
    /// does on x86-64 with AVX2 (a build without FMA would differ in the last bit of some values).
    pub fn uniform_f32(&mut self, n: usize, from: f32, to: f32) -> Vec<f32> {
        const MASK: u32 = (1 << f32::MANTISSA_DIGITS) - 1;
        let divisor = 1.0f32 / (1u32 << f32::MANTISSA_DIGITS) as f32;
        let range = to - from;
        (0..n)
            .map(|_| {
                let unit = (self.next_u32() & MASK) as f32 * divisor;
                unit.mul_add(range, from)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_reference_mt19937_stream() {
        // std::mt19937 seeded with 5489 (the C++ default): its 10000th output is 4123659995.
        let mut g = TorchGenerator::new(5489);
        let first = g.next_u32();
        assert_eq!(first, 3_499_211_612);
        let mut last = first;
        for _ in 1..10_000 {
            last = g.next_u32();
        }
        assert_eq!(last, 4_123_659_995);
    }

    #[test]
    fn uniform_stays_in_range_and_uses_24_bits() {
        let mut g = TorchGenerator::new(3);
        let v = g.uniform_f32(10_000, -0.5, 0.5);
        assert!(v.iter().all(|x| (-0.5..0.5).contains(x)));
        let mean = v.iter().sum::<f32>() / v.len() as f32;
        assert!(mean.abs() < 0.02, "mean {mean}");
    }
}
