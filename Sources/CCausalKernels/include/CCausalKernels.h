// CCausalKernels: the C side of CausalLM's kernels.
//
// This header is the target's umbrella header: every public header of the target must be included here
// (SwiftPM exports only what the umbrella header reaches).
#ifndef CCAUSALKERNELS_H
#define CCAUSALKERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "ck_ops.h"
#include "ck_encoder.h"
#include "ck_train.h"
#include "ck_t5.h"
#include "ck_t5_train.h"
#include "ck_train_encoder.h"
#include "ck_membw.h"
#include "ck_q8.h"

#ifdef __cplusplus
extern "C" {
#endif

// ---------------------------------------------------------------------------------------------------------------
// Weight types (GGML's numbering) and their block layouts (little-endian, rows stored one after another).
// "half" is IEEE binary16; nibble order: element j of a 32-element group is the low nibble of byte j (j < 16),
// element j + 16 its high nibble.
//   F32  : float.                 F16: IEEE binary16.          BF16: upper 16 bits of a float.
//   Q8_0 : 32 elements, { half d; int8 qs[32]; }   (34 bytes); value = d * qs[i].
//   Q4_0 : 32 elements, { half d; uint8 qs[16]; }  (18 bytes); value = d * (nibble - 8).
//   Q4_1 : 32 elements, { half d; half m; uint8 qs[16]; } (20 bytes); value = d * nibble + m.
//   Q5_0 : 32 elements, { half d; uint8 qh[4]; uint8 qs[16]; } (22 bytes); q = nibble | bit i of qh (u32) << 4;
//          value = d * (q - 16).
//   Q5_1 : 32 elements, { half d; half m; uint8 qh[4]; uint8 qs[16]; } (24 bytes); q as Q5_0; value = d * q + m.
//   IQ4_NL: 32 elements, { half d; uint8 qs[16]; } (18 bytes); value = d * kvalues[nibble], kvalues =
//          {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113}.
// K-quants: 256-element super-blocks (rows need K % 256 == 0) with per-sub-block scales:
//   Q2_K : { uint8 scales[16]; uint8 qs[64]; half d; half dmin; } (84 bytes). Element e = 128 h + 32 j + l
//          (h < 2, j < 4, l < 32): q = (qs[32 h + l] >> 2 j) & 3; s = scales[e / 16];
//          value = (d * (s & 15)) * q - dmin * (s >> 4).
//   Q3_K : { uint8 hmask[32]; uint8 qs[64]; uint8 scales[12]; half d; } (110 bytes). e = 128 h + 32 j + l:
//          q = (qs[32 h + l] >> 2 j) & 3, minus 4 when bit (4 h + j) of hmask[l] is clear; 16 6-bit scales s_i:
//          low 4 bits = scales[i] & 15 (i < 8) or scales[i - 8] >> 4, high 2 bits = (scales[8 + i % 4] >> 2 (i / 4)) & 3;
//          value = (d * (s_{e/16} - 32)) * q.
//   Q4_K : { half d; half dmin; uint8 scales[12]; uint8 qs[128]; } (144 bytes). Sub-block i < 8 (32 elements):
//          6-bit scale sc_i and min m_i: i < 4: sc = scales[i] & 63, m = scales[i + 4] & 63; i >= 4:
//          sc = (scales[i + 4] & 15) | (scales[i - 4] >> 6) << 4, m = (scales[i + 4] >> 4) | (scales[i] >> 6) << 4.
//          Element 32 i + l: q = nibble of qs[32 (i / 2) + l] (low for even i, high for odd);
//          value = (d * sc_i) * q - dmin * m_i.
//   Q5_K : { half d; half dmin; uint8 scales[12]; uint8 qh[32]; uint8 qs[128]; } (176 bytes): as Q4_K with
//          q = nibble | ((qh[l] >> i) & 1) << 4.
//   Q6_K : { uint8 ql[128]; uint8 qh[64]; int8 scales[16]; half d; } (210 bytes). e = 128 h + 32 g + l:
//          q = nibble of ql[64 h + 32 (g & 1) + l] (low for g < 2) | ((qh[32 h + l] >> 2 g) & 3) << 4;
//          value = (d * scales[e / 16]) * (q - 32).
// Every dequantized value is computed the same way by every ISA level, with the operation order of the
// reference dequantizer (gguf-py's numpy float32): the products d * q, d * sc and (d * sc) * q are exact in fp32
// except Q6_K's last product, so a value is one rounding of an exact expression (Q4_1/Q5_1's + m, the K-quants'
// - dmin * m, Q6_K's product) or exact — and dequantization is bitwise identical everywhere.
enum ck_type {
    CK_TYPE_F32 = 0,
    CK_TYPE_F16 = 1,
    CK_TYPE_Q4_0 = 2,
    CK_TYPE_Q4_1 = 3,
    CK_TYPE_Q5_0 = 6,
    CK_TYPE_Q5_1 = 7,
    CK_TYPE_Q8_0 = 8,
    CK_TYPE_Q2_K = 10,
    CK_TYPE_Q3_K = 11,
    CK_TYPE_Q4_K = 12,
    CK_TYPE_Q5_K = 13,
    CK_TYPE_Q6_K = 14,
    CK_TYPE_IQ4_NL = 20,
    CK_TYPE_BF16 = 30,
};

/// Bytes of one row of K elements of `type`; 0 when the type is unknown, K <= 0, or K is not a multiple of
/// the type's block size (32 for Q4_0/Q4_1/Q5_0/Q5_1/Q8_0/IQ4_NL, 256 for the K-quants).
size_t ck_row_bytes(int type, int64_t K);

// ---------------------------------------------------------------------------------------------------------------
// Instruction-set levels. The best level the CPU (and OS) supports is detected once, on first use, with
// __builtin_cpu_supports; tests may force a lower one.
enum ck_isa {
    CK_ISA_SCALAR = 0,  // portable C (fmaf)
    CK_ISA_AVX2 = 1,    // AVX2 + FMA + F16C
    CK_ISA_AVX512 = 2,  // AVX-512 F/BW/VL/DQ + FMA + F16C
};

/// The best level this machine supports.
int ck_cpu_isa(void);
/// Forces the level used from now on by every call (process-wide), clamped to [CK_ISA_SCALAR, ck_cpu_isa()].
/// A negative value restores the detected best level. Returns the level now in use.
int ck_set_isa(int level);
/// The level in use.
int ck_get_isa(void);
/// "scalar", "avx2" or "avx512": the level in use.
const char *ck_isa_name(void);

// ---------------------------------------------------------------------------------------------------------------
// Matrix multiplication with fp32 activations.
//
// W: rows of K elements of `type` (row o starts at W + o * ck_row_bytes(type, K)). For every token t in [0, n)
// and output row o in [row_begin, row_end):
//     y[t * ldy + o] = sum_k W[o][k] * x[t * ldx + k]
// Activations stay fp32 (never quantized); weights are dequantized to fp32 in registers (or a small scratch
// panel) and multiplied with them; fp32 accumulation.
//
// Batch invariance: every (t, o) pair has its own 16-lane accumulator; lane j accumulates, with one fused
// multiply-add per element, the products of elements k = j, j+16, j+32, ... in increasing k (a partial last
// chunk of 16 is padded with zero products); the 16 lanes are then summed in a fixed tree
// (j + j+8, then j + j+4, then j + j+2, then 0 + 1). That sequence is the same for every n, token position,
// row range, tile, thread split and ISA level, so y[t][o] is bitwise reproducible — and, because every level
// performs the very same IEEE operations, identical across the scalar, AVX2 and AVX-512 levels.
// n <= 0 or an empty row range does nothing; an invalid (type, K) pair does nothing.
void ck_matmul(int type, const void *W, int64_t K, int64_t row_begin, int64_t row_end,
               const float *x, int64_t ldx, int64_t n, float *y, int64_t ldy);

/// Output rows that callers splitting [0, rows) across threads should use as the granularity of their chunk
/// boundaries (a multiple of every level's row tile; results do not depend on it, speed does).
int64_t ck_row_tile(void);

/// Dequantizes `count` consecutive elements (a multiple of the type's block size) starting at src.
void ck_dequantize_row(int type, const void *src, float *dst, int64_t count);

/// Reference quantizers (count a multiple of 32), GGML's rounding rules.
void ck_quantize_row_q8_0(const float *src, void *dst, int64_t count);
void ck_quantize_row_q4_0(const float *src, void *dst, int64_t count);
void ck_quantize_row_q4_1(const float *src, void *dst, int64_t count);
/// Quantizes `count` floats (a multiple of the type's block size) into blocks of any quantized type: Q8_0, Q4_0
/// and Q4_1 as above; the other types by plain round-to-nearest against per-group ranges (valid blocks, not
/// GGML's error-minimizing searches; for tests and tiny models). Does nothing for a float type or a bad count.
void ck_quantize_row(int type, const float *src, void *dst, int64_t count);

/// Scalar IEEE conversions (round to nearest even; subnormals, infinities and NaN handled).
float ck_half_to_float(uint16_t h);
uint16_t ck_float_to_half(float f);
float ck_bf16_to_float(uint16_t h);
uint16_t ck_float_to_bf16(float f);

// ---------------------------------------------------------------------------------------------------------------
// Thread pool: `threads - 1` persistent workers plus the calling thread.
typedef struct ck_pool ck_pool;
typedef void (*ck_task_fn)(void *ctx, int64_t index);

/// threads >= 1 (values below are taken as 1). Returns NULL if a worker thread cannot be created.
ck_pool *ck_pool_create(int threads);
void ck_pool_destroy(ck_pool *pool);
int ck_pool_threads(const ck_pool *pool);
/// Runs fn(ctx, i) for every i in [0, count), on the workers and the calling thread, and returns when all are
/// done. Concurrent callers are serialized by a lock. A call made from inside a task (of any pool) runs its
/// items inline on the calling thread, so nesting cannot deadlock.
void ck_pool_run(ck_pool *pool, int64_t count, ck_task_fn fn, void *ctx);

#ifdef __cplusplus
}
#endif
#endif
