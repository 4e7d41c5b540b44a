//! The bf16 values the products multiply: f32 rounded to bf16 exactly as `vcvtne2ps2bf16` rounds, and the
//! weight gathered into the pair-interleaved panels `vdpbf16ps` reads (two adjacent values of the reduced
//! dimension in one 32-bit lane, the even one in the low half).
//!
//! ```ignore
//! // 1.0 + 2^-8 lies halfway between two bf16 values: it rounds to the even one, 1.0.
//! assert_eq!(pack::round(1.0 + 1.0 / 256.0), 0x3f80);
//! // Rows 0 and 1 of a [2, 3] weight become the pairs of panel 0 along its rows.
//! pack::panel_along_rows(&w, 2, 3, 0, &mut panel);
//! ```

use half::bf16;

/// Columns of a weight panel: the microkernel's two 16-lane accumulators per row.
pub(crate) const NR: usize = 32;

/// `x` rounded to bf16 (round to nearest, ties to even), as its bits. Matches `vcvtne2ps2bf16` bit for bit:
/// subnormal inputs become zero of the same sign (the instruction treats them as zero), NaN stays NaN (made
/// quiet), values past the largest bf16 become infinite.
#[inline(always)]
pub(crate) fn round(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    let bits = if bits & 0x7f80_0000 == 0 {
        bits & 0x8000_0000
    } else {
        bits
    };
    // Adding 0x7fff (0x8000 when the kept part is odd) carries into the kept bits exactly when RNE rounds up.
    ((bits + 0x7fff + ((bits >> 16) & 1)) >> 16) as u16
}

/// The f32 value of bf16 bits (exact).
#[inline(always)]
pub(crate) fn widen(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// `x` rounded to bf16 and widened back: the f32 the products multiply.
#[inline(always)]
pub(crate) fn rounded(x: f32) -> f32 {
    widen(round(x))
}

/// The pair `(lo, hi)` as one 32-bit lane of `vdpbf16ps`.
#[inline(always)]
fn pair(lo: u16, hi: u16) -> u32 {
    lo as u32 | (hi as u32) << 16
}

/// `src` rounded to bf16 pairs: `dst[p]` holds `src[2p]` (low) and `src[2p + 1]` (high, zero past the end).
/// The scalar statement of what the vector kernel's packing does, which its test compares against.
#[cfg(test)]
pub(crate) fn round_pairs(src: &[f32], dst: &mut [u32]) {
    debug_assert_eq!(dst.len(), src.len().div_ceil(2));
    let mut chunks = src.chunks_exact(2);
    for (d, c) in dst.iter_mut().zip(&mut chunks) {
        *d = pair(round(c[0]), round(c[1]));
    }
    if let [last] = chunks.remainder() {
        dst[src.len() / 2] = round(*last) as u32;
    }
}

/// Panel `panel` of `w` `[n, k]`, reduced along its rows' `k` values: `dst[p * NR + c]` pairs `w[j, 2p]` and
/// `w[j, 2p + 1]` for `j = panel * NR + c` (the forward product `x W^T`). Lanes past `n` or `k` are zero.
#[inline(always)]
pub(crate) fn panel_along_rows(w: &[bf16], n: usize, k: usize, panel: usize, dst: &mut [u32]) {
    let pairs = k.div_ceil(2);
    debug_assert_eq!(dst.len(), pairs * NR);
    dst.fill(0);
    let first = panel * NR;
    for (c, row) in w[first * k..n * k].chunks_exact(k).take(NR).enumerate() {
        let mut values = row.chunks_exact(2);
        for (p, v) in (&mut values).enumerate() {
            dst[p * NR + c] = pair(v[0].to_bits(), v[1].to_bits());
        }
        if let [last] = values.remainder() {
            dst[(pairs - 1) * NR + c] = last.to_bits() as u32;
        }
    }
}

/// Panel `panel` of `w` `[k, n]` (rows are the reduced dimension), for the input gradient `dy W`:
/// `dst[p * NR + c]` pairs `w[2p, j]` and `w[2p + 1, j]` for `j = panel * NR + c`. Lanes past `n` or `k` are
/// zero.
#[inline(always)]
pub(crate) fn panel_along_columns(w: &[bf16], k: usize, n: usize, panel: usize, dst: &mut [u32]) {
    let pairs = k.div_ceil(2);
    debug_assert_eq!(dst.len(), pairs * NR);
    let first = panel * NR;
    let cols = NR.min(n - first);
    for (p, out) in dst.chunks_exact_mut(NR).enumerate() {
        let even = &w[2 * p * n + first..][..cols];
        if 2 * p + 1 < k {
            let odd = &w[(2 * p + 1) * n + first..][..cols];
            for ((o, e), d) in out.iter_mut().zip(even).zip(odd) {
                *o = pair(e.to_bits(), d.to_bits());
            }
        } else {
            for (o, e) in out.iter_mut().zip(even) {
                *o = e.to_bits() as u32;
            }
        }
        out[cols..].fill(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_to_nearest_even_with_subnormals_flushed() {
        // Exactly halfway: ties go to the even neighbour, one way and the other.
        assert_eq!(round(1.0 + 1.0 / 256.0), 0x3f80);
        assert_eq!(round(1.0 + 3.0 / 256.0), 0x3f82);
        // Just past halfway rounds up; just below rounds down.
        assert_eq!(round(f32::from_bits(0x3f80_8001)), 0x3f81);
        assert_eq!(round(f32::from_bits(0x3f80_7fff)), 0x3f80);
        assert_eq!(round(-1.0), 0xbf80);
        assert_eq!(round(f32::MAX), 0x7f80, "past the largest bf16: infinite");
        assert_eq!(round(f32::INFINITY), 0x7f80);
        assert_eq!(round(f32::NEG_INFINITY), 0xff80);
        assert_eq!(round(f32::from_bits(0x0000_0001)), 0x0000);
        assert_eq!(round(f32::from_bits(0x807f_ffff)), 0x8000);
        assert_eq!(round(f32::MIN_POSITIVE), 0x0080);
        assert!(widen(round(f32::NAN)).is_nan());
        assert!(
            widen(round(f32::from_bits(0x7f80_0001))).is_nan(),
            "signalling NaN"
        );
        // Normal values agree with the `half` crate's rounding.
        for bits in (0x0080_0000u32..0x7f80_0000).step_by(9973) {
            for x in [f32::from_bits(bits), -f32::from_bits(bits)] {
                assert_eq!(round(x), bf16::from_f32(x).to_bits(), "{x:e}");
            }
        }
    }

    #[test]
    fn pairs_pad_an_odd_length_with_zero() {
        let mut dst = [0u32; 3];
        round_pairs(&[1.0, 2.0, 3.0, -1.0, 0.5], &mut dst);
        assert_eq!(dst, [0x4000_3f80, 0xbf80_4040, 0x0000_3f00]);
    }

    #[test]
    fn panels_hold_the_pairs_the_product_reduces() {
        let (n, k) = (NR + 3, 5);
        let w: Vec<bf16> = (0..n * k).map(|i| bf16::from_f32(i as f32)).collect();
        let pairs = k.div_ceil(2);
        let mut panel = vec![7u32; pairs * NR];
        panel_along_rows(&w, n, k, 1, &mut panel);
        for p in 0..pairs {
            for c in 0..NR {
                let j = NR + c;
                let want = if j >= n {
                    0
                } else if 2 * p + 1 < k {
                    pair(w[j * k + 2 * p].to_bits(), w[j * k + 2 * p + 1].to_bits())
                } else {
                    w[j * k + 2 * p].to_bits() as u32
                };
                assert_eq!(panel[p * NR + c], want, "pair {p}, column {c}");
            }
        }
        // The same weight read as [k', n'] = [n, k]: reduced along its rows.
        let (rows, cols) = (n, k);
        let pairs = rows.div_ceil(2);
        let mut panel = vec![7u32; pairs * NR];
        panel_along_columns(&w, rows, cols, 0, &mut panel);
        for p in 0..pairs {
            for c in 0..NR {
                let want = if c >= cols {
                    0
                } else if 2 * p + 1 < rows {
                    pair(
                        w[2 * p * cols + c].to_bits(),
                        w[(2 * p + 1) * cols + c].to_bits(),
                    )
                } else {
                    w[2 * p * cols + c].to_bits() as u32
                };
                assert_eq!(panel[p * NR + c], want, "pair {p}, column {c}");
            }
        }
    }
}
