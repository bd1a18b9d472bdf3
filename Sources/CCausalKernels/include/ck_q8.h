// Opt-in int8-activation matrix multiplication (matmul_q8.c): activations quantized per 32-element block to int8
// with one fp32 scale, multiplied with quantized weights by exact integer dot products, then scaled and
// accumulated in fp32 in a fixed order. Not the default: ck_matmul (fp32 activations) is.
#ifndef CK_Q8_H
#define CK_Q8_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// ---------------------------------------------------------------------------------------------------------------
// Quantized activations.
//
// A row of K activations (K a multiple of 32) has nb = K / 32 blocks. Block b (elements 32 b .. 32 b + 31) gets
//     amax = max |x_i|                         (the largest magnitude; NaN counts as larger than infinity)
//     amax NaN or infinite:  d = NaN, a_i = 0  (the row's products become NaN)
//     amax < 2^-100:         d = 0,   a_i = 0
//     otherwise:             d = amax / 127 (fp32 division), id = 1 / d (fp32), a_i = rne(x_i * id) in [-127, 127]
// (rne: round to nearest, ties to even, whatever the FPU's rounding mode), and the exact integer sums of the a_i
// over each half (16 elements) and over the block. Every ISA level computes the same bytes.
//
// Layout of one quantized row (ck_q8_row_bytes(K) bytes). The blocks are padded with zero blocks up to a multiple
// of 16 (npb = 16 * ceil(nb / 16); padding has codes, scale and sums 0) and taken in groups of 16: block b is in
// group G = b / 16 as block r = b % 16 = 4 q + i (quad q, index i in the quad), at "transposed" position
// p = 4 i + q of its group.
//     int8    qs [32 * npb]   half h (elements 16 h .. 16 h + 15) of block b at byte 512 G + 128 q + 64 h + 16 i
//                             (so each 64 bytes hold one half of the four blocks of a quad, a block per 16 bytes)
//     float   d  [npb]        block scales, block b at index 16 G + p
//     int32   s32[npb]        block sums (same order)
//     int32   slo[npb]        sums of elements 0-15 (same order)
//     int32   shi[npb]        sums of elements 16-31 (same order)
//     float   ds [npb]        d * (float)s32, one fp32 product (same order)
//     int8    ln [32 * npb]   the codes again, lane-major (for the many-token kernels): in group G, the 64 bytes at
//                             512 G + 64 k (k = 4 h + m) hold in dword p = 4 i + q (bytes 4 p .. 4 p + 3) the codes
//                             16 h + 4 m .. 16 h + 4 m + 3 of block 16 G + 4 q + i, so that eight vpdpbusd leave each
//                             block's sum in its own 32-bit lane
/// Bytes of one quantized activation row (84 per block, padded: a multiple of 64), or 0 if K <= 0 or K % 32 != 0.
size_t ck_q8_row_bytes(int64_t K);

/// Quantizes one row of K activations into `out` (ck_q8_row_bytes(K) bytes). The result depends on this row only.
void ck_quantize_activations_q8(const float *x, int64_t K, void *out);

/// Quantizes n rows (row t at x + t * ldx) into out + t * ck_q8_row_bytes(K).
void ck_quantize_activations_q8_rows(const float *x, int64_t ldx, int64_t n, int64_t K, void *out);

/// Products of this many tokens or more (ck_matmul_q8's n) read the lane-major copy `ln`; products of fewer never do.
#define CK_Q8_LANES_MIN 3

/// As ck_quantize_activations_q8_rows, for rows that only products of `tokens` tokens will read (ck_matmul_q8 with
/// n = tokens, or fewer rows of them): when tokens < CK_Q8_LANES_MIN (batch-1 and batch-2 decode) the lane-major
/// copy `ln` is not written (its bytes are left as they were); every other byte is the same.
void ck_quantize_activations_q8_rows_for(const float *x, int64_t ldx, int64_t n, int64_t K, void *out, int64_t tokens);

// ---------------------------------------------------------------------------------------------------------------
// Products.
//
// For every token t in [0, n) (quantized row t at xq + t * ck_q8_row_bytes(K)) and weight row o in
// [row_begin, row_end):  y[t * ldy + o] ~= sum_k W[o][k] * x[t][k], computed as this canonical sequence:
//
//     acc[16] = +0
//     for b = 0, 1, ..., K/32 - 1:                                   (32-element blocks in increasing k)
//         isum = sc0 * sum_{i<16} q_i a_i + sc1 * sum_{16<=i<32} q_i a_i      exact integer (|isum| < 2^24)
//         acc[b % 16] = fma(dw * da, (float)isum, acc[b % 16])      (dw * da: one fp32 product)
//         types with a min:  acc[b % 16] = fma(mw, ds, acc[b % 16])  (ds = da * sum_i a_i, from the row)
//     y = ((acc[j] + acc[j+8]) then + [j+4], then + [j+2], then lane 0 + lane 1)   (the tree of CCausalKernels.h)
//
// with a_i, da, ds the block's activation codes, scale and scaled sum, and per weight type (block layouts:
// CCausalKernels.h; every dw and mw is exact in fp32):
//     Q8_0   q = qs                     sc0 = sc1 = 1      dw = d
//     Q4_0   q = nibble - 8             sc = 1             dw = d
//     Q5_0   q = code - 16              sc = 1             dw = d
//     IQ4_NL q = kvalues[nibble]        sc = 1             dw = d
//     Q4_1   q = nibble                 sc = 1             dw = d              mw = m
//     Q5_1   q = code                   sc = 1             dw = d              mw = m
//     Q4_K   q = code (sub-block j)     sc = 1             dw = d * sc_j       mw = -(dmin * m_j)
//     Q5_K   as Q4_K with 5-bit codes
//     Q6_K   q = code - 32              sc0, sc1 = the two 16-element scales of the block; dw = d (super-block)
// Each (token, row) pair performs exactly this sequence on every ISA level (scalar; AVX2 with maddubs; AVX-512
// with VNNI: per-row kernels for n <= 2, a GEMM micro-kernel on lane-major operands for n >= 3), whatever n, the row
// range, the tiling or the thread split, so results are bitwise identical across levels and batch- and
// thread-invariant. Types not listed (F32, F16, BF16, Q2_K, Q3_K) are not supported.

/// 1 if ck_matmul_q8 computes with this weight type, else 0.
int ck_q8_supports(int type);

/// See above. Returns 0, or -1 (and does nothing) for an unsupported type or K; n <= 0 or an empty range is a
/// no-op returning 0. With n >= CK_Q8_LANES_MIN the rows' lane-major copies must have been written.
int ck_matmul_q8(int type, const void *W, int64_t K, int64_t row_begin, int64_t row_end, const void *xq, int64_t n,
                 float *y, int64_t ldy);

/// The level ck_matmul_q8 uses now: CK_ISA_AVX512 needs the AVX-512 level in use (ck_get_isa) and AVX512-VNNI,
/// AVX512-VBMI and BMI2 (Ice Lake, Zen 4 and later); otherwise CK_ISA_AVX2 when the AVX2 level is in use; otherwise
/// scalar.
int ck_q8_isa(void);
/// "avx512vnni", "avx2" or "scalar".
const char *ck_q8_isa_name(void);

// ---------------------------------------------------------------------------------------------------------------
// The process-wide activation precision: 0 = fp32 (the default), 1 = int8 (CausalKernels.matmul then uses
// ck_matmul_q8 for the weight types it supports). Read from the environment variable CAUSAL_ACTIVATIONS
// ("int8" or "fp32") on first use, unless set before.
enum ck_activation_precision { CK_ACTIVATIONS_FP32 = 0, CK_ACTIVATIONS_INT8 = 1 };
int ck_activation_precision(void);
void ck_set_activation_precision(int precision);

#ifdef __cplusplus
}
#endif
#endif
