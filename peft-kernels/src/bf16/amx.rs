//! The bf16 products on AMX, the tile units of Intel's Xeons from Sapphire Rapids on: one `tdpbf16ps`
//! multiplies a 16 x 32 bf16 tile by a 32 x 16 one into 16 x 16 f32 accumulators, 8,192 multiply-adds,
//! where an AVX-512 f32 FMA does 16.
//!
//! Eight tile registers of 16 rows x 64 bytes hold a 32 x 32 output block (four accumulator tiles), two
//! tiles of 16 activation rows and two of 16 weight columns; each step of 16 pairs of the reduced dimension
//! loads the four operand tiles and runs four `tdpbf16ps`. The operands are packed as for
//! [`super::avx512`] (activations rounded to bf16 pairs row by row, the weight in panels of
//! [`NR`] = 32 columns of pairs, which is the layout `tdpbf16ps` reads for its second operand), padded with
//! zeros to whole tiles: rows to multiples of 32, pairs to multiples of 16. Output blocks at the edges of
//! `out` are computed in a zero-padded copy, so nothing past `m` rows or `n` columns is read or written.
//!
//! Linux hands the tile registers to a process only when it asks (`arch_prctl(ARCH_REQ_XCOMP_PERM)`, since
//! Linux 5.16): [`available`] asks once, and a CPU or kernel without AMX leaves the other kernels. Every
//! task loads the tile configuration on its own thread (`ldtilecfg`) and releases the tiles after
//! (`tilerelease`), so a thread that has stopped multiplying saves no tile state on a context switch.
//!
//! ```ignore
//! // out[m, n] += x[m, k] W[n, k]^T, W bf16 row-major, on every thread.
//! amx::gemm(&x, Operand::Transposed(&w), &mut out, (m, n, k), Threads::All);
//! ```

use std::arch::asm;
use std::ops::Range;
use std::sync::OnceLock;

use super::avx512::{self, for_each_chunk, for_each_task, prefix, Out};
use super::pack::NR;
use super::Operand;
use crate::cpu::Threads;

/// Rows (and columns) of an output block: two tiles of 16 each way.
const BLOCK: usize = 32;

/// Rows of a tile, and pairs of the reduced dimension per step (a tile row is 64 bytes: 16 f32, or 16
/// pairs of bf16).
const TILE: usize = 16;

/// Pairs of the reduced dimension per block: an activation block (32 rows) and a weight panel block are
/// 64 KB each, in L2 while the output blocks of a task pass.
const KC: usize = 512;

/// Row blocks and column panels of one parallel task at most (256 rows x 256 columns).
const TASK_ROW_BLOCKS: usize = 8;
const TASK_COL_PANELS: usize = 8;

/// The tile configuration `ldtilecfg` loads: palette 1, all eight tiles 16 rows of 64 bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

static CONFIG: TileConfig = {
    let mut c = [0u8; 64];
    c[0] = 1;
    let mut t = 0;
    while t < 8 {
        // Bytes per row (little-endian u16) at 16 + 2t, rows at 48 + t.
        c[16 + 2 * t] = 64;
        c[48 + t] = TILE as u8;
        t += 1;
    }
    TileConfig(c)
};

/// Whether this CPU and OS run the kernels of this file: AMX-TILE and AMX-BF16 with tiles of at least 16
/// rows of 64 bytes, AVX-512 BF16 for the packing and the few-rows product, and the kernel's permission to
/// use the tile registers (asked for once, on the first call).
pub(crate) fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| avx512::available() && cpu_has_amx() && os_grants_tiles())
}

/// CPUID: AMX-TILE and AMX-BF16 (leaf 7, EDX bits 24 and 22), and palette 1's tiles (leaf 0x1d) large
/// enough for [`CONFIG`].
fn cpu_has_amx() -> bool {
    use std::arch::x86_64::__cpuid_count;
    if __cpuid_count(0, 0).eax < 0x1d {
        return false;
    }
    let features = __cpuid_count(7, 0).edx;
    if features & (1 << 24) == 0 || features & (1 << 22) == 0 {
        return false;
    }
    let palette = __cpuid_count(0x1d, 1);
    let (bytes_per_row, names, max_rows) = (
        palette.ebx & 0xffff,
        palette.ebx >> 16,
        palette.ecx & 0xffff,
    );
    bytes_per_row >= 64 && names >= 8 && max_rows >= TILE as u32
}

/// Asks Linux for the tile data state (`ARCH_REQ_XCOMP_PERM`, `XFEATURE_XTILEDATA`); granted to the whole
/// process. A kernel older than 5.16 refuses, and the products use another kernel.
#[cfg(target_os = "linux")]
fn os_grants_tiles() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with these arguments only changes which register state the process may use.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

/// Other systems: not used (Windows grants the tiles without asking, but no kernel here is tested there).
#[cfg(not(target_os = "linux"))]
fn os_grants_tiles() -> bool {
    false
}

/// `c[32, 32] += a[32, 16 steps pairs] . b[16 steps pairs, 32]`: `a` rows `lda` pairs apart, `b` a weight
/// panel (rows of [`NR`] pairs), `c` rows `ldc` values apart.
///
/// # Safety
/// [`available`]; the tile configuration [`CONFIG`] is loaded on this thread; `a` holds 32 rows of
/// `16 * steps` pairs, `b` holds `16 * steps` rows of [`NR`] pairs, and `c` 32 rows of 32 values that
/// nothing else touches during the call.
#[inline(always)]
unsafe fn block(a: *const u32, lda: usize, b: *const u32, c: *mut f32, ldc: usize, steps: usize) {
    let (lda_bytes, ldc_bytes, ldb_bytes) = (lda * 4, ldc * 4, NR * 4);
    let c_low = c.add(TILE * ldc);
    asm!(
        "tileloadd tmm0, [{c} + {ldc}*1]",
        "tileloadd tmm1, [{c} + {ldc}*1 + 64]",
        "tileloadd tmm2, [{c_low} + {ldc}*1]",
        "tileloadd tmm3, [{c_low} + {ldc}*1 + 64]",
        c = in(reg) c,
        c_low = in(reg) c_low,
        ldc = in(reg) ldc_bytes,
        options(nostack, readonly, preserves_flags),
    );
    let a_low = a.add(TILE * lda);
    for s in 0..steps {
        // Step s: pairs 16s .. 16s + 16, 64 bytes along each activation row, 16 panel rows down.
        let (a_high, a_low, b) = (a.add(TILE * s), a_low.add(TILE * s), b.add(TILE * NR * s));
        asm!(
            "tileloadd tmm4, [{a_high} + {lda}*1]",
            "tileloadd tmm5, [{a_low} + {lda}*1]",
            "tileloadd tmm6, [{b} + {ldb}*1]",
            "tileloadd tmm7, [{b} + {ldb}*1 + 64]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            a_high = in(reg) a_high,
            a_low = in(reg) a_low,
            b = in(reg) b,
            lda = in(reg) lda_bytes,
            ldb = in(reg) ldb_bytes,
            options(nostack, readonly, preserves_flags),
        );
    }
    asm!(
        "tilestored [{c} + {ldc}*1], tmm0",
        "tilestored [{c} + {ldc}*1 + 64], tmm1",
        "tilestored [{c_low} + {ldc}*1], tmm2",
        "tilestored [{c_low} + {ldc}*1 + 64], tmm3",
        c = in(reg) c,
        c_low = in(reg) c_low,
        ldc = in(reg) ldc_bytes,
        options(nostack, preserves_flags),
    );
}

/// The packed operands of one product.
struct Packed<'a> {
    /// Rows of `stride` pairs, padded to whole blocks of 32 rows.
    a: &'a [u32],
    /// Panels of `stride` rows of [`NR`] pairs.
    b: &'a [u32],
    /// Pairs per packed row, a multiple of [`TILE`].
    stride: usize,
}

/// Row blocks `rb` and column panels `cp` of the output, in blocks of at most [`KC`] pairs.
///
/// # Safety
/// [`available`]; no other thread touches these blocks of `out` meanwhile.
unsafe fn task(packed: &Packed<'_>, out: Out, rb: Range<usize>, cp: Range<usize>) {
    let stride = packed.stride;
    let steps = stride / TILE;
    let blocks = steps.div_ceil(KC / TILE).max(1);
    let block_steps = steps.div_ceil(blocks);
    // The edge blocks' outputs, padded with zeros to 32 x 32.
    let mut edge = [0f32; BLOCK * BLOCK];
    asm!("ldtilecfg [{}]", in(reg) CONFIG.0.as_ptr(), options(nostack, readonly, preserves_flags));
    for first in (0..steps).step_by(block_steps.max(1)) {
        let len = block_steps.min(steps - first);
        for j in cp.clone() {
            let b = packed.b.as_ptr().add(j * stride * NR + first * TILE * NR);
            let cols = NR.min(out.n - j * NR);
            for i in rb.clone() {
                let a = packed.a.as_ptr().add(i * BLOCK * stride + first * TILE);
                let rows = BLOCK.min(out.m - i * BLOCK);
                let c = out.ptr.add(i * BLOCK * out.n + j * NR);
                if rows == BLOCK && cols == NR {
                    block(a, stride, b, c, out.n, len);
                    continue;
                }
                for r in 0..BLOCK {
                    let dst = &mut edge[r * BLOCK..(r + 1) * BLOCK];
                    if r < rows {
                        let src = std::slice::from_raw_parts(c.add(r * out.n), cols);
                        dst[..cols].copy_from_slice(src);
                        dst[cols..].fill(0.0);
                    } else {
                        dst.fill(0.0);
                    }
                }
                block(a, stride, b, edge.as_mut_ptr(), BLOCK, len);
                for r in 0..rows {
                    let dst = std::slice::from_raw_parts_mut(c.add(r * out.n), cols);
                    dst.copy_from_slice(&edge[r * BLOCK..r * BLOCK + cols]);
                }
            }
        }
    }
    asm!("tilerelease", options(nostack, nomem, preserves_flags));
}

/// `out[m, n] += a[m, k] B[k, n]` with `a` f32 (rounded to bf16) and `B` the bf16 `operand`.
///
/// Panics unless [`available`] and the slices hold the shapes.
pub(crate) fn gemm(
    a: &[f32],
    b: Operand<'_>,
    out: &mut [f32],
    (m, n, k): (usize, usize, usize),
    threads: Threads,
) {
    assert!(available(), "the amx kernel on a CPU or OS without AMX");
    assert!(
        a.len() >= m * k && b.values().len() >= n * k && out.len() >= m * n,
        "bf16 gemm operands too short"
    );
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    let pairs = k.div_ceil(2);
    let stride = pairs.div_ceil(TILE) * TILE;
    let (row_blocks, col_panels) = (m.div_ceil(BLOCK), n.div_ceil(NR));
    let (mut a_buf, mut b_buf) = avx512::BUFFERS.take();
    let a_packed = prefix(&mut a_buf, row_blocks * BLOCK * stride);
    // Every value is written: row r of the block its pairs and zeros to `stride`, rows past `m` zero.
    for_each_chunk(threads, a_packed, BLOCK * stride, |i, dst| {
        for (r, row) in dst.chunks_exact_mut(stride).enumerate() {
            let index = i * BLOCK + r;
            if index < m {
                // SAFETY: `available` (which needs AVX-512 BF16) was checked above.
                unsafe { avx512::round_pairs(&a[index * k..(index + 1) * k], &mut row[..pairs]) };
                row[pairs..].fill(0);
            } else {
                row.fill(0);
            }
        }
    });
    let b_packed = prefix(&mut b_buf, col_panels * stride * NR);
    for_each_chunk(threads, b_packed, stride * NR, |j, dst| {
        let (panel, pad) = dst.split_at_mut(pairs * NR);
        // SAFETY: `available` was checked above (every value is written).
        unsafe { avx512::pack_col_panel(b, n, k, j, panel) };
        pad.fill(0);
    });
    let packed = Packed {
        a: a_packed,
        b: b_packed,
        stride,
    };

    let out = Out {
        ptr: out.as_mut_ptr(),
        m,
        n,
    };
    let limits = (TASK_ROW_BLOCKS, TASK_COL_PANELS);
    for_each_task(threads, (row_blocks, col_panels), limits, |rb, cp| {
        // SAFETY: `available` was checked; tasks cover disjoint row x column blocks of `out`, whose `&mut`
        // borrow `gemm` holds until `for_each_task` returns.
        unsafe { task(&packed, out, rb, cp) }
    });
    avx512::BUFFERS.set((a_buf, b_buf));
}
