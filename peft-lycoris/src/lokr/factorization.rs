//! How LoKr splits a dimension into the two Kronecker factors' sizes: HF PEFT's (and LyCORIS's)
//! `factorization(dimension, factor)`.
//!
//! ```
//! use peft_lycoris::factorization;
//! assert_eq!(factorization(256, -1), (16, 16)); // near the square root
//! assert_eq!(factorization(128, -1), (8, 16));
//! assert_eq!(factorization(127, -1), (1, 127)); // a prime has no other split
//! assert_eq!(factorization(128, 4), (4, 32)); // a factor that divides is taken as it is
//! assert_eq!(factorization(96, 5), (4, 24)); // one that does not bounds the smaller side
//! ```

/// `(m, n)` with `m * n = dimension`. A `factor > 0` that divides `dimension` gives `(factor, dimension /
/// factor)` as it is (so `m` may exceed `n`); otherwise `m` is the largest divisor reached by stepping up
/// through the divisors from 1 while `m < n` and `m <= factor` (`-1`: no bound, so the divisor pair nearest the
/// square root), returned smaller first.
pub fn factorization(dimension: usize, factor: i64) -> (usize, usize) {
    let dim = dimension as i64;
    if factor > 0 && dim % factor == 0 {
        return (factor as usize, (dim / factor) as usize);
    }
    let bound = if factor == -1 { dim } else { factor };
    let (mut m, mut n) = (1i64, dim);
    // HF compares every candidate with the first pair's sum, which a divisor pair never exceeds.
    let first_sum = m + n;
    while m < n {
        let mut next_m = m + 1;
        while dim % next_m != 0 {
            next_m += 1;
        }
        let next_n = dim / next_m;
        if next_m + next_n > first_sum || next_m > bound {
            break;
        }
        (m, n) = (next_m, next_n);
    }
    if m > n {
        (m, n) = (n, m);
    }
    (m as usize, n as usize)
}

#[cfg(test)]
mod tests {
    use super::factorization;

    #[test]
    fn splits_the_tiny_models_dimensions_as_hf_peft() {
        // The values HF PEFT's function gives (checked with it).
        assert_eq!(factorization(32, -1), (4, 8));
        assert_eq!(factorization(16, -1), (4, 4));
        assert_eq!(factorization(64, -1), (8, 8));
        assert_eq!(factorization(96, -1), (8, 12));
        assert_eq!(factorization(32, 2), (2, 16));
        assert_eq!(factorization(16, 32), (4, 4)); // a bound above the dimension: as -1
        assert_eq!(factorization(1, -1), (1, 1));
    }
}
