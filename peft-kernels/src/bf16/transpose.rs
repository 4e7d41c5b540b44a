//! The forward product's weight panels (`x W^T`: [`super::pack::panel_along_rows`]) gathered with AVX-512
//! shuffles: for an even `k` each row of `W` `[n, k]` is `k / 2` bf16 pairs, so a panel is the transpose of a
//! 32-row block of that pair matrix, done 16 x 16 pairs at a time in registers (four rounds of
//! unpack / lane shuffles) instead of one scattered 4-byte store per pair. Both vector kernels pack every
//! weight on every call, so this is on the step's path; an odd `k` (pairs straddling rows) keeps the scalar
//! packing.
//!
//! ```ignore
//! // The same panel as pack::panel_along_rows, for an even k.
//! transpose::panel_along_rows(&w, n, k, panel, &mut dst);
//! ```

use std::arch::x86_64::*;

use half::bf16;

use super::pack::NR;

/// Lanes of a vector of pairs, and rows / pairs of one transposed square.
const SQUARE: usize = 16;

/// `rows` transposed in place: `rows[j]` becomes lane `j` of every input row (`rows[j][i] = old rows[i][j]`).
///
/// # Safety
/// The CPU has AVX-512 F.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn transpose16(rows: &mut [__m512i; SQUARE]) {
    // Round 1: pairs of rows interleaved 32 bits at a time, within each 128-bit lane.
    let mut a = [_mm512_setzero_si512(); SQUARE];
    for i in 0..SQUARE / 2 {
        a[2 * i] = _mm512_unpacklo_epi32(rows[2 * i], rows[2 * i + 1]);
        a[2 * i + 1] = _mm512_unpackhi_epi32(rows[2 * i], rows[2 * i + 1]);
    }
    // Round 2: 64 bits at a time. Lane L of b[4g + c] holds rows 4g..4g+4 of column 4L + c.
    let mut b = [_mm512_setzero_si512(); SQUARE];
    for g in 0..SQUARE / 4 {
        let (lo, hi) = (a[4 * g], a[4 * g + 2]);
        let (lo2, hi2) = (a[4 * g + 1], a[4 * g + 3]);
        b[4 * g] = _mm512_unpacklo_epi64(lo, hi);
        b[4 * g + 1] = _mm512_unpackhi_epi64(lo, hi);
        b[4 * g + 2] = _mm512_unpacklo_epi64(lo2, hi2);
        b[4 * g + 3] = _mm512_unpackhi_epi64(lo2, hi2);
    }
    // Rounds 3 and 4: the 128-bit lanes of the four row groups gathered into whole columns. For column
    // 4L + c, lane L of b[c], b[4 + c], b[8 + c] and b[12 + c].
    for c in 0..4 {
        let even_lanes_low = _mm512_shuffle_i32x4::<0x88>(b[c], b[4 + c]);
        let odd_lanes_low = _mm512_shuffle_i32x4::<0xdd>(b[c], b[4 + c]);
        let even_lanes_high = _mm512_shuffle_i32x4::<0x88>(b[8 + c], b[12 + c]);
        let odd_lanes_high = _mm512_shuffle_i32x4::<0xdd>(b[8 + c], b[12 + c]);
        rows[c] = _mm512_shuffle_i32x4::<0x88>(even_lanes_low, even_lanes_high);
        rows[8 + c] = _mm512_shuffle_i32x4::<0xdd>(even_lanes_low, even_lanes_high);
        rows[4 + c] = _mm512_shuffle_i32x4::<0x88>(odd_lanes_low, odd_lanes_high);
        rows[12 + c] = _mm512_shuffle_i32x4::<0xdd>(odd_lanes_low, odd_lanes_high);
    }
}

/// Panel `panel` of `w` `[n, k]` for the forward product, `k` even: `dst[p * NR + c]` pairs `w[j, 2p]` and
/// `w[j, 2p + 1]` for `j = panel * NR + c`, zero past `n`. Equals [`super::pack::panel_along_rows`].
///
/// # Safety
/// The CPU has AVX-512 F; `k` is even, `w` holds `n * k` values, `dst` `k / 2 * NR`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn panel_along_rows(
    w: &[bf16],
    n: usize,
    k: usize,
    panel: usize,
    dst: &mut [u32],
) {
    debug_assert!(k.is_multiple_of(2) && w.len() >= n * k && dst.len() == k / 2 * NR);
    let pairs = k / 2;
    let first = panel * NR;
    // The rows as pairs: row r's pair p is the 32-bit value at r * pairs + p.
    let w32 = w.as_ptr().cast::<u32>();
    for half in 0..NR / SQUARE {
        let row0 = first + half * SQUARE;
        let rows = n.saturating_sub(row0).min(SQUARE);
        for p0 in (0..pairs).step_by(SQUARE) {
            let count = SQUARE.min(pairs - p0);
            let mask = ((1u32 << count) - 1) as __mmask16;
            let mut square = [_mm512_setzero_si512(); SQUARE];
            for (r, v) in square.iter_mut().enumerate().take(rows) {
                *v = _mm512_maskz_loadu_epi32(mask, w32.add((row0 + r) * pairs + p0).cast());
            }
            transpose16(&mut square);
            for (i, v) in square.iter().enumerate().take(count) {
                let out = dst.as_mut_ptr().add((p0 + i) * NR + half * SQUARE);
                _mm512_storeu_si512(out.cast(), *v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bf16::pack;

    #[test]
    fn the_shuffled_panels_equal_the_scalar_packing() {
        if !is_x86_feature_detected!("avx512f") {
            eprintln!("skipped: this CPU has no avx512f");
            return;
        }
        // Whole and partial squares both ways, a last panel of fewer than 16 and of 16-32 rows.
        for (n, k) in [
            (1usize, 2usize),
            (5, 34),
            (32, 32),
            (33, 64),
            (70, 576),
            (45, 100),
            (576, 1536),
        ] {
            let w: Vec<bf16> = (0..n * k)
                .map(|i| bf16::from_bits((i as u16).wrapping_mul(7919)))
                .collect();
            for panel in 0..n.div_ceil(NR) {
                let mut want = vec![7u32; k / 2 * NR];
                pack::panel_along_rows(&w, n, k, panel, &mut want);
                let mut got = vec![7u32; k / 2 * NR];
                // SAFETY: avx512f was checked; k is even and the lengths are as required.
                unsafe { panel_along_rows(&w, n, k, panel, &mut got) };
                assert_eq!(got, want, "[{n}, {k}] panel {panel}");
            }
        }
    }
}
