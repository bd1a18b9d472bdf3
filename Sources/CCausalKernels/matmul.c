// Batch-invariant matrix multiplication of quantized / low-precision weights with fp32 activations.
//
// Two paths, the same arithmetic:
//   panel path (any n):
//     for each panel of P output rows:
//         dequantize the panel into a thread-local fp32 scratch buffer (F32 weights are used in place)
//         for each tile of TT tokens:
//             for each tile of TR rows of the panel: microkernel(R <= TR rows, T <= TT tokens)
//   fused path (quantized weights, n <= a few tokens, SIMD levels): for each tile of rows, decode each 32-element
//     block (or K-quant chunk) in registers and feed it straight to the accumulators (no scratch round trip;
//     decode-bound n = 1).
// Both give every (token, row) pair its own 16-lane accumulator and perform, for that pair, exactly the operation
// sequence described in CCausalKernels.h: dequantized weights are fp32 values computed the same way everywhere
// (the reference dequantizer's operations: exact products, at most one rounding; kquants_impl.h), lane j takes one
// fused multiply-add per chunk of 16 in increasing k, and the lanes are summed in a fixed tree. The K-quants'
// 256-element super-blocks have their own kernels (kquants_simd.h): scales decoded once per super-block, then
// 32-element chunks in registers, fed to the same accumulators. Tile shapes and paths only decide how many pairs run side by side, so no result depends on n, the
// batch, the row range, the tiling, the path or the thread split — nor on the ISA level.
#include "CCausalKernels.h"
#include "scratch_impl.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#define CK_X86 1
#include <immintrin.h>
#define CK_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")))
#define CK_AVX2 __attribute__((target("avx2,fma,f16c")))
#else
#define CK_X86 0
#endif

#define CK_INLINE static inline __attribute__((always_inline))

// ---------------------------------------------------------------------------------------------------------------
// Types

static int type_block_size(int type) {
    switch (type) {
    case CK_TYPE_F32: case CK_TYPE_F16: case CK_TYPE_BF16: return 1;
    case CK_TYPE_Q4_0: case CK_TYPE_Q4_1: case CK_TYPE_Q5_0: case CK_TYPE_Q5_1: case CK_TYPE_Q8_0:
    case CK_TYPE_IQ4_NL: return 32;
    case CK_TYPE_Q2_K: case CK_TYPE_Q3_K: case CK_TYPE_Q4_K: case CK_TYPE_Q5_K: case CK_TYPE_Q6_K: return 256;
    default: return 0;
    }
}

static size_t type_block_bytes(int type) {
    switch (type) {
    case CK_TYPE_F32: return 4;
    case CK_TYPE_F16: case CK_TYPE_BF16: return 2;
    case CK_TYPE_Q4_0: return 18;
    case CK_TYPE_Q4_1: return 20;
    case CK_TYPE_Q5_0: return 22;
    case CK_TYPE_Q5_1: return 24;
    case CK_TYPE_Q8_0: return 34;
    case CK_TYPE_IQ4_NL: return 18;
    case CK_TYPE_Q2_K: return 84;
    case CK_TYPE_Q3_K: return 110;
    case CK_TYPE_Q4_K: return 144;
    case CK_TYPE_Q5_K: return 176;
    case CK_TYPE_Q6_K: return 210;
    default: return 0;
    }
}

size_t ck_row_bytes(int type, int64_t K) {
    const int bs = type_block_size(type);
    if (bs == 0 || K <= 0 || K % bs != 0) return 0;
    return (size_t)(K / bs) * type_block_bytes(type);
}

int64_t ck_row_tile(void) { return 16; }

// ---------------------------------------------------------------------------------------------------------------
// Scalar conversions

static inline float bits_to_float(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline uint32_t float_to_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline uint16_t load_u16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline void store_u16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }

float ck_half_to_float(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1Fu, mant = h & 0x3FFu;
    if (exp == 0) {
        // Zero or subnormal: mant * 2^-24, exact in fp32.
        const float v = (float)mant * 0x1p-24f;
        return sign ? -v : v;
    }
    if (exp == 31) return bits_to_float(sign | 0x7F800000u | (mant << 13));  // inf / nan (payload kept)
    return bits_to_float(sign | ((exp + 112u) << 23) | (mant << 13));
}

uint16_t ck_float_to_half(float f) {
    const uint32_t x = float_to_bits(f);
    const uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    const uint32_t ax = x & 0x7FFFFFFFu;
    if (ax > 0x7F800000u) return sign | 0x7E00u | (uint16_t)((ax >> 13) & 0x3FFu);  // nan stays (quiet) nan
    if (ax >= 0x477FF000u) return sign | 0x7C00u;  // >= 65520 rounds to inf (inf included)
    if (ax < 0x38800000u) {
        // Below 2^-14: subnormal half (or zero). v = |f| * 2^24 is exact; round it to an integer, ties to even.
        const float v = bits_to_float(ax) * 0x1p24f;
        uint32_t i = (uint32_t)v;
        const float fr = v - (float)i;
        if (fr > 0.5f || (fr == 0.5f && (i & 1u))) i++;
        return sign | (uint16_t)i;  // i == 1024 is the smallest normal, as it should be
    }
    uint32_t h = ((((ax >> 23) - 112u) << 10) | ((ax & 0x7FFFFFu) >> 13));
    const uint32_t rem = ax & 0x1FFFu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++;  // a carry into the exponent is correct rounding
    return sign | (uint16_t)h;
}

float ck_bf16_to_float(uint16_t h) { return bits_to_float((uint32_t)h << 16); }

uint16_t ck_float_to_bf16(float f) {
    const uint32_t x = float_to_bits(f);
    if ((x & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((x >> 16) | 0x40u);  // quiet nan
    return (uint16_t)((x + 0x7FFFu + ((x >> 16) & 1u)) >> 16);
}

// ---------------------------------------------------------------------------------------------------------------
// Reference quantizers

void ck_quantize_row_q8_0(const float *src, void *dst, int64_t count) {
    uint8_t *out = (uint8_t *)dst;
    for (int64_t b = 0; b < count / 32; b++, src += 32, out += 34) {
        float amax = 0.0f;
        for (int i = 0; i < 32; i++) amax = fmaxf(amax, fabsf(src[i]));
        const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        store_u16(out, ck_float_to_half(d));
        for (int i = 0; i < 32; i++) out[2 + i] = (uint8_t)(int8_t)roundf(src[i] * id);
    }
}

void ck_quantize_row_q4_0(const float *src, void *dst, int64_t count) {
    uint8_t *out = (uint8_t *)dst;
    for (int64_t b = 0; b < count / 32; b++, src += 32, out += 18) {
        float amax = 0.0f, mx = 0.0f;  // mx: the element of largest magnitude, with its sign
        for (int i = 0; i < 32; i++)
            if (fabsf(src[i]) > amax) { amax = fabsf(src[i]); mx = src[i]; }
        const float d = mx / -8.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        store_u16(out, ck_float_to_half(d));
        for (int j = 0; j < 16; j++) {
            int q0 = (int)floorf(src[j] * id + 8.5f), q1 = (int)floorf(src[j + 16] * id + 8.5f);
            q0 = q0 < 0 ? 0 : q0 > 15 ? 15 : q0;
            q1 = q1 < 0 ? 0 : q1 > 15 ? 15 : q1;
            out[2 + j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

void ck_quantize_row_q4_1(const float *src, void *dst, int64_t count) {
    uint8_t *out = (uint8_t *)dst;
    for (int64_t b = 0; b < count / 32; b++, src += 32, out += 20) {
        float mn = src[0], mx = src[0];
        for (int i = 1; i < 32; i++) { mn = fminf(mn, src[i]); mx = fmaxf(mx, src[i]); }
        const float d = (mx - mn) / 15.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        store_u16(out, ck_float_to_half(d));
        store_u16(out + 2, ck_float_to_half(mn));
        for (int j = 0; j < 16; j++) {
            int q0 = (int)floorf((src[j] - mn) * id + 0.5f), q1 = (int)floorf((src[j + 16] - mn) * id + 0.5f);
            q0 = q0 < 0 ? 0 : q0 > 15 ? 15 : q0;
            q1 = q1 < 0 ? 0 : q1 > 15 ? 15 : q1;
            out[4 + j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

#include "kquants_impl.h"

void ck_quantize_row(int type, const float *src, void *dst, int64_t count) {
    if (count <= 0 || ck_row_bytes(type, count) == 0) return;
    switch (type) {
    case CK_TYPE_Q8_0: ck_quantize_row_q8_0(src, dst, count); break;
    case CK_TYPE_Q4_0: ck_quantize_row_q4_0(src, dst, count); break;
    case CK_TYPE_Q4_1: ck_quantize_row_q4_1(src, dst, count); break;
    default: quantize_ext(type, src, (uint8_t *)dst, count); break;
    }
}

// ---------------------------------------------------------------------------------------------------------------
// ISA selection

static atomic_int g_isa = -1;   // level in use; -1 until first use
static atomic_int g_cpu = -1;   // detected level

int ck_cpu_isa(void) {
    int c = atomic_load_explicit(&g_cpu, memory_order_relaxed);
    if (c >= 0) return c;
    c = CK_ISA_SCALAR;
#if CK_X86
    __builtin_cpu_init();
    const int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    if (avx2) c = CK_ISA_AVX2;
    if (avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
        c = CK_ISA_AVX512;
#endif
    atomic_store_explicit(&g_cpu, c, memory_order_relaxed);
    return c;
}

int ck_get_isa(void) {
    int l = atomic_load_explicit(&g_isa, memory_order_relaxed);
    if (l < 0) {
        l = ck_cpu_isa();
        int expected = -1;
        if (!atomic_compare_exchange_strong(&g_isa, &expected, l)) l = expected;
    }
    return l;
}

int ck_set_isa(int level) {
    const int best = ck_cpu_isa();
    const int l = level < 0 || level > best ? best : level;
    atomic_store(&g_isa, l);
    return l;
}

const char *ck_isa_name(void) {
    switch (ck_get_isa()) {
    case CK_ISA_AVX512: return "avx512";
    case CK_ISA_AVX2: return "avx2";
    default: return "scalar";
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Thread-local scratch for dequantized panels

static float *scratch(size_t floats) { return (float *)ck_thread_scratch(CK_SCRATCH_PANELS, floats * sizeof(float)); }

// ---------------------------------------------------------------------------------------------------------------
// Scalar level

static void dq_scalar(int type, const uint8_t *src, float *dst, int64_t count) {
    switch (type) {
    case CK_TYPE_F32:
        memcpy(dst, src, (size_t)count * 4);
        break;
    case CK_TYPE_F16:
        for (int64_t i = 0; i < count; i++) dst[i] = ck_half_to_float(load_u16(src + 2 * i));
        break;
    case CK_TYPE_BF16:
        for (int64_t i = 0; i < count; i++) dst[i] = ck_bf16_to_float(load_u16(src + 2 * i));
        break;
    case CK_TYPE_Q8_0:
        for (int64_t b = 0; b < count / 32; b++, src += 34, dst += 32) {
            const float d = ck_half_to_float(load_u16(src));
            for (int i = 0; i < 32; i++) dst[i] = d * (float)(int8_t)src[2 + i];
        }
        break;
    case CK_TYPE_Q4_0:
        for (int64_t b = 0; b < count / 32; b++, src += 18, dst += 32) {
            const float d = ck_half_to_float(load_u16(src));
            for (int j = 0; j < 16; j++) {
                dst[j] = d * (float)((int)(src[2 + j] & 15) - 8);
                dst[j + 16] = d * (float)((int)(src[2 + j] >> 4) - 8);
            }
        }
        break;
    case CK_TYPE_Q4_1:
        for (int64_t b = 0; b < count / 32; b++, src += 20, dst += 32) {
            const float d = ck_half_to_float(load_u16(src)), m = ck_half_to_float(load_u16(src + 2));
            // d * nibble is exact in fp32 (11 x 4 significant bits), so this fma equals d * q + m rounded once.
            for (int j = 0; j < 16; j++) {
                dst[j] = fmaf(d, (float)(src[4 + j] & 15), m);
                dst[j + 16] = fmaf(d, (float)(src[4 + j] >> 4), m);
            }
        }
        break;
    default:
        dq_scalar_ext(type, src, dst, count);
        break;
    }
}

// One (row, token) pair: the canonical operation sequence, written out lane by lane.
static float dot_scalar(const float *w, const float *x, int64_t K) {
    float acc[16];
    for (int j = 0; j < 16; j++) acc[j] = 0.0f;
    int64_t k = 0;
    for (; k + 16 <= K; k += 16)
        for (int j = 0; j < 16; j++) acc[j] = fmaf(w[k + j], x[k + j], acc[j]);
    if (k < K)
        for (int j = 0; j < 16; j++) {
            const int in = k + j < K;
            acc[j] = fmaf(in ? w[k + j] : 0.0f, in ? x[k + j] : 0.0f, acc[j]);
        }
    for (int j = 0; j < 8; j++) acc[j] = acc[j] + acc[j + 8];
    for (int j = 0; j < 4; j++) acc[j] = acc[j] + acc[j + 4];
    for (int j = 0; j < 2; j++) acc[j] = acc[j] + acc[j + 2];
    return acc[0] + acc[1];
}

static void mk_scalar(int R, int T, const float *w, int64_t ldw, const float *x, int64_t ldx, int64_t K,
                      float *y, int64_t ldy) {
    for (int t = 0; t < T; t++)
        for (int r = 0; r < R; r++) y[t * ldy + r] = dot_scalar(w + r * ldw, x + t * ldx, K);
}

// ---------------------------------------------------------------------------------------------------------------
// AVX-512 level

#if CK_X86

// The K-quant kernels (kquants_simd.h, included at the end of this section).
static void dqk_avx512(int type, const uint8_t *src, float *dst, int64_t count);
static void fkk_avx512(int type, int R, int T, const uint8_t *W, size_t rb, const float *x, int64_t ldx,
                       int64_t K, float *y, int64_t ldy, float *panel, int64_t ldp);
static void dqk_avx2(int type, const uint8_t *src, float *dst, int64_t count);
static void fkk_avx2(int type, int R, int T, const uint8_t *W, size_t rb, const float *x, int64_t ldx,
                     int64_t K, float *y, int64_t ldy);

// One half -> float with F16C (exact, like ck_half_to_float).
CK_INLINE CK_AVX2 float h2f_f16c(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h)));
}

CK_INLINE CK_AVX512 float hsum512(__m512 v) {
    const __m256 a = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));  // j + j+8
    const __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));     // j + j+4
    const __m128 c = _mm_add_ps(b, _mm_movehl_ps(b, b));                                     // j + j+2
    return _mm_cvtss_f32(_mm_add_ss(c, _mm_movehdup_ps(c)));                                // 0 + 1
}

// The lane sums of 16 vectors at once: lane p of the result is hsum512(v[p]), bit for bit (the same pairs of
// lanes are added: j + j+8, then j + j+4, j + j+2, j + j+1), with the lanes of several vectors packed side by
// side by shuffles instead of reducing each vector on its own.
CK_INLINE CK_AVX512 __m512 hsum512x16(const __m512 v[16]) {
    __m512 r[8], s[4], t[2];
    for (int i = 0; i < 8; i++)  // [v(2i) lanes j + j+8 (8), v(2i+1) (8)]
        r[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x44), _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xEE));
    for (int i = 0; i < 4; i++)  // quarter q: v(4i+q), lanes j + j+4 (4)
        s[i] = _mm512_add_ps(_mm512_shuffle_f32x4(r[2 * i], r[2 * i + 1], 0x88), _mm512_shuffle_f32x4(r[2 * i], r[2 * i + 1], 0xDD));
    for (int i = 0; i < 2; i++)  // quarter q: v(8i+q) lanes j + j+2 (2), v(8i+4+q) (2)
        t[i] = _mm512_add_ps(_mm512_shuffle_ps(s[2 * i], s[2 * i + 1], 0x44), _mm512_shuffle_ps(s[2 * i], s[2 * i + 1], 0xEE));
    // quarter q: v(q), v(4+q), v(8+q), v(12+q), lane 0 + lane 1
    const __m512 u = _mm512_add_ps(_mm512_shuffle_ps(t[0], t[1], 0x88), _mm512_shuffle_ps(t[0], t[1], 0xDD));
    return _mm512_permutexvar_ps(_mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0), u);
}

// Writes the lane sums of a 4 x 4 block of (row r, token t) accumulators, given token by token (a_rt), to
// y[t * ldy + r]: lane 4t + r of hsum512x16 is pair (r, t), so each token's 4 rows are one 128-bit store.
CK_INLINE CK_AVX512 void store_sums4x4(__m512 a00, __m512 a10, __m512 a20, __m512 a30, __m512 a01, __m512 a11,
                                       __m512 a21, __m512 a31, __m512 a02, __m512 a12, __m512 a22, __m512 a32,
                                       __m512 a03, __m512 a13, __m512 a23, __m512 a33, float *y, int64_t ldy) {
    const __m512 v[16] = {a00, a10, a20, a30, a01, a11, a21, a31, a02, a12, a22, a32, a03, a13, a23, a33};
    const __m512 res = hsum512x16(v);
    _mm_storeu_ps(y, _mm512_castps512_ps128(res));
    _mm_storeu_ps(y + ldy, _mm512_extractf32x4_ps(res, 1));
    _mm_storeu_ps(y + 2 * ldy, _mm512_extractf32x4_ps(res, 2));
    _mm_storeu_ps(y + 3 * ldy, _mm512_extractf32x4_ps(res, 3));
}

// Block decoders. A block's scale (and min) is broadcast from its half and converted (vpbroadcastw + vcvtph2ps:
// measured faster than gathering the scales of 16 blocks at once, 3.1 against 3.5 cycles per 16 Q8_0 weights at
// n = 1). The values are exactly those of dq_scalar.
CK_INLINE CK_AVX512 __m512 half512(const uint8_t *p) { return _mm512_cvtph_ps(_mm256_set1_epi16((short)load_u16(p))); }

CK_INLINE CK_AVX512 void blk512(const int type, const uint8_t *b, __m512 *w0, __m512 *w1) {
    const __m512 d = half512(b);
    if (type == CK_TYPE_Q8_0) {
        *w0 = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(b + 2)))));
        *w1 = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(b + 18)))));
    } else if (type == CK_TYPE_Q5_0 || type == CK_TYPE_Q5_1) {
        // 5-bit codes: the 32 possible values (Q5_0: d * (q - 16); Q5_1: fma(d, q, m)) in two tables, looked up
        // by code with a two-table permute; bit 4 of the code comes from qh, one mask bit per element.
        const int one = type == CK_TYPE_Q5_1;
        const uint32_t qh = load_u32(b + 2 + 2 * one);
        const __m512 iota = _mm512_set_ps(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
        const __m512 sixteen = _mm512_set1_ps(16.0f);
        __m512 t0, t1;
        if (one) {
            const __m512 m = half512(b + 2);
            t0 = _mm512_fmadd_ps(d, iota, m);
            t1 = _mm512_fmadd_ps(d, _mm512_add_ps(iota, sixteen), m);
        } else {
            t0 = _mm512_mul_ps(d, _mm512_sub_ps(iota, sixteen));
            t1 = _mm512_mul_ps(d, iota);
        }
        const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(b + 6 + 2 * one)));
        const __m512i lo = _mm512_and_si512(v, _mm512_set1_epi32(15)), hi = _mm512_srli_epi32(v, 4);
        const __m512i s16 = _mm512_set1_epi32(16);
        const __m512i i0 = _mm512_mask_or_epi32(lo, (__mmask16)qh, lo, s16);
        const __m512i i1 = _mm512_mask_or_epi32(hi, (__mmask16)(qh >> 16), hi, s16);
        *w0 = _mm512_permutex2var_ps(t0, i0, t1);
        *w1 = _mm512_permutex2var_ps(t0, i1, t1);
    } else {
        // 4-bit types: the 16 possible values of the block, computed once exactly as dq_scalar computes each
        // element (Q4_0: d * (q - 8); Q4_1: fma(d, q, m)), then looked up by nibble.
        const __m512 iota = _mm512_set_ps(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
        __m512 table;
        const uint8_t *qs;
        if (type == CK_TYPE_Q4_0) {
            table = _mm512_mul_ps(d, _mm512_sub_ps(iota, _mm512_set1_ps(8.0f)));  // iota - 8 is exact
            qs = b + 2;
        } else if (type == CK_TYPE_IQ4_NL) {
            const __m512 kv = _mm512_set_ps(113, 89, 69, 53, 38, 25, 13, 1, -10, -22, -35, -49, -65, -83, -104, -127);
            table = _mm512_mul_ps(d, kv);
            qs = b + 2;
        } else {
            table = _mm512_fmadd_ps(d, iota, half512(b + 2));
            qs = b + 4;
        }
        const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)qs));
        *w0 = _mm512_permutexvar_ps(_mm512_and_si512(v, _mm512_set1_epi32(15)), table);
        *w1 = _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), table);
    }
}

CK_INLINE CK_AVX512 void dq512_quant(const int type, const int bbytes, const uint8_t *src, float *dst, int64_t count) {
    for (int64_t b = 0; b < count / 32; b++) {
        __m512 w0, w1;
        blk512(type, src + b * bbytes, &w0, &w1);
        _mm512_storeu_ps(dst + 32 * b, w0);
        _mm512_storeu_ps(dst + 32 * b + 16, w1);
    }
}

static CK_AVX512 void dq_avx512(int type, const uint8_t *src, float *dst, int64_t count) {
    switch (type) {
    case CK_TYPE_F16: {
        int64_t i = 0;
        for (; i + 16 <= count; i += 16)
            _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(src + 2 * i))));
        for (; i < count; i++) dst[i] = ck_half_to_float(load_u16(src + 2 * i));
        break;
    }
    case CK_TYPE_BF16: {
        int64_t i = 0;
        for (; i + 16 <= count; i += 16) {
            const __m512i v = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(src + 2 * i)));
            _mm512_storeu_ps(dst + i, _mm512_castsi512_ps(_mm512_slli_epi32(v, 16)));
        }
        for (; i < count; i++) dst[i] = ck_bf16_to_float(load_u16(src + 2 * i));
        break;
    }
    case CK_TYPE_Q8_0: dq512_quant(CK_TYPE_Q8_0, 34, src, dst, count); break;
    case CK_TYPE_Q4_0: dq512_quant(CK_TYPE_Q4_0, 18, src, dst, count); break;
    case CK_TYPE_Q4_1: dq512_quant(CK_TYPE_Q4_1, 20, src, dst, count); break;
    case CK_TYPE_Q5_0: dq512_quant(CK_TYPE_Q5_0, 22, src, dst, count); break;
    case CK_TYPE_Q5_1: dq512_quant(CK_TYPE_Q5_1, 24, src, dst, count); break;
    case CK_TYPE_IQ4_NL: dq512_quant(CK_TYPE_IQ4_NL, 18, src, dst, count); break;
    default:
        dqk_avx512(type, src, dst, count);  // K-quants; anything else goes to dq_scalar
        break;
    }
}

// Fused kernel for few tokens: decodes each block of R rows in registers and feeds it straight to the
// accumulators of T tokens, chunk by chunk in increasing k — the same per-pair sequence as the panel path.
#define FK512_TR 4
#define FK512_TT 4

// With `panel` set it also writes the decoded rows there (row r at panel + r * ldp), for the panel path's
// remaining token tiles: decoding then overlaps the first tile's multiply-adds instead of running as its own pass.
CK_INLINE CK_AVX512 void fk512_rt(const int type, const int bbytes, const int R, const int T, const uint8_t *W,
                                 size_t rb, const float *x, int64_t ldx, int64_t K, float *y, int64_t ldy,
                                 float *panel, int64_t ldp) {
    __m512 acc[FK512_TR][FK512_TT];
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) acc[r][t] = _mm512_setzero_ps();
    for (int64_t b = 0; b < K / 32; b++) {
        __m512 x0[FK512_TT], x1[FK512_TT];
        for (int t = 0; t < T; t++) {
            x0[t] = _mm512_loadu_ps(x + t * ldx + 32 * b);
            x1[t] = _mm512_loadu_ps(x + t * ldx + 32 * b + 16);
        }
        for (int r = 0; r < R; r++) {
            __m512 w0, w1;
            // The same block of the matching row of the next tile, into L2: the tiles of a thread's rows are one
            // contiguous stream, so this runs one tile (R rows) ahead of the reads. Measured on the Qwen2.5 0.5B
            // Q8_0 output matrix, one thread, n = 1: 9.2 GB/s with 2 KiB ahead in the same row, 16 GB/s this way.
            _mm_prefetch((const char *)(W + (size_t)(r + R) * rb + (size_t)b * bbytes), _MM_HINT_T1);
            blk512(type, W + (size_t)r * rb + (size_t)b * bbytes, &w0, &w1);
            if (panel) {
                _mm512_storeu_ps(panel + r * ldp + 32 * b, w0);
                _mm512_storeu_ps(panel + r * ldp + 32 * b + 16, w1);
            }
            for (int t = 0; t < T; t++) acc[r][t] = _mm512_fmadd_ps(w0, x0[t], acc[r][t]);
            for (int t = 0; t < T; t++) acc[r][t] = _mm512_fmadd_ps(w1, x1[t], acc[r][t]);
        }
    }
    if (R == 4 && T == 4) {
        store_sums4x4(acc[0][0], acc[1][0], acc[2][0], acc[3][0], acc[0][1], acc[1][1], acc[2][1], acc[3][1],
                      acc[0][2], acc[1][2], acc[2][2], acc[3][2], acc[0][3], acc[1][3], acc[2][3], acc[3][3], y, ldy);
        return;
    }
    for (int t = 0; t < T; t++)
        for (int r = 0; r < R; r++) y[t * ldy + r] = hsum512(acc[r][t]);
}

#define FK512_CASE(TYPE, BYTES, R, T, P, L) \
    case (R) * 8 + (T): fk512_rt(TYPE, BYTES, R, T, W, rb, x, ldx, K, y, ldy, P, L); break;
// One function per type and panel mode, each with every tile shape (separate functions keep the stack frames of
// the unoptimized debug build small).
#define FK512_FN(NAME, TYPE, BYTES, P, L)                                                                     \
    static CK_AVX512 __attribute__((noinline)) void NAME(int R, int T, const uint8_t *W, size_t rb,           \
                                                         const float *x, int64_t ldx, int64_t K, float *y,    \
                                                         int64_t ldy, float *panel, int64_t ldp) {             \
        (void)panel;                                                                                          \
        (void)ldp;                                                                                            \
        switch (R * 8 + T) {                                                                                  \
        FK512_CASE(TYPE, BYTES, 1, 1, P, L) FK512_CASE(TYPE, BYTES, 1, 2, P, L)                             \
        FK512_CASE(TYPE, BYTES, 1, 3, P, L) FK512_CASE(TYPE, BYTES, 1, 4, P, L)                             \
        FK512_CASE(TYPE, BYTES, 2, 1, P, L) FK512_CASE(TYPE, BYTES, 2, 2, P, L)                             \
        FK512_CASE(TYPE, BYTES, 2, 3, P, L) FK512_CASE(TYPE, BYTES, 2, 4, P, L)                             \
        FK512_CASE(TYPE, BYTES, 3, 1, P, L) FK512_CASE(TYPE, BYTES, 3, 2, P, L)                             \
        FK512_CASE(TYPE, BYTES, 3, 3, P, L) FK512_CASE(TYPE, BYTES, 3, 4, P, L)                             \
        FK512_CASE(TYPE, BYTES, 4, 1, P, L) FK512_CASE(TYPE, BYTES, 4, 2, P, L)                             \
        FK512_CASE(TYPE, BYTES, 4, 3, P, L) FK512_CASE(TYPE, BYTES, 4, 4, P, L)                             \
        default: break;                                                                                       \
        }                                                                                                     \
    }
#define FK512_FNS(SUFFIX, TYPE, BYTES)                  \
    FK512_FN(fk512_##SUFFIX, TYPE, BYTES, NULL, 0)      \
    FK512_FN(fks512_##SUFFIX, TYPE, BYTES, panel, ldp)
FK512_FNS(q8_0, CK_TYPE_Q8_0, 34)
FK512_FNS(q4_0, CK_TYPE_Q4_0, 18)
FK512_FNS(q4_1, CK_TYPE_Q4_1, 20)
FK512_FNS(q5_0, CK_TYPE_Q5_0, 22)
FK512_FNS(q5_1, CK_TYPE_Q5_1, 24)
FK512_FNS(iq4_nl, CK_TYPE_IQ4_NL, 18)

// Fused kernel over R rows x T tokens, writing the decoded rows to `panel` too when it is set.
static CK_AVX512 void fk512_any(int type, int R, int T, const uint8_t *W, size_t rb, const float *x, int64_t ldx,
                                int64_t K, float *y, int64_t ldy, float *panel, int64_t ldp) {
#define FK512_DISPATCH(SUFFIX) \
    (panel ? fks512_##SUFFIX : fk512_##SUFFIX)(R, T, W, rb, x, ldx, K, y, ldy, panel, ldp)
    switch (type) {
    case CK_TYPE_Q8_0: FK512_DISPATCH(q8_0); break;
    case CK_TYPE_Q4_0: FK512_DISPATCH(q4_0); break;
    case CK_TYPE_Q4_1: FK512_DISPATCH(q4_1); break;
    case CK_TYPE_Q5_0: FK512_DISPATCH(q5_0); break;
    case CK_TYPE_Q5_1: FK512_DISPATCH(q5_1); break;
    case CK_TYPE_IQ4_NL: FK512_DISPATCH(iq4_nl); break;
    default: fkk_avx512(type, R, T, W, rb, x, ldx, K, y, ldy, panel, ldp); break;  // K-quants
    }
#undef FK512_DISPATCH
}

static CK_AVX512 void fk_avx512(int type, int R, int T, const uint8_t *W, size_t rb, const float *x, int64_t ldx,
                                int64_t K, float *y, int64_t ldy) {
    fk512_any(type, R, T, W, rb, x, ldx, K, y, ldy, NULL, 0);
}

// The same, also writing the decoded rows to a panel.
static CK_AVX512 void fks_avx512(int type, int R, int T, const uint8_t *W, size_t rb, const float *x, int64_t ldx,
                                 int64_t K, float *y, int64_t ldy, float *panel, int64_t ldp) {
    fk512_any(type, R, T, W, rb, x, ldx, K, y, ldy, panel, ldp);
}

#define MK512_TR 4
#ifndef MK512_TT
#define MK512_TT 6
#endif

// R x T pairs side by side; R, T are compile-time constants at every call site.
CK_INLINE CK_AVX512 void mk512_rt(const int R, const int T, const float *w, int64_t ldw, const float *x,
                                 int64_t ldx, int64_t K, float *y, int64_t ldy) {
    __m512 acc[MK512_TR][MK512_TT];
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) acc[r][t] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
        __m512 xv[MK512_TT];
        for (int t = 0; t < T; t++) xv[t] = _mm512_loadu_ps(x + t * ldx + k);
        for (int r = 0; r < R; r++) {
            const __m512 wv = _mm512_loadu_ps(w + r * ldw + k);
            for (int t = 0; t < T; t++) acc[r][t] = _mm512_fmadd_ps(wv, xv[t], acc[r][t]);
        }
    }
    if (k < K) {
        const __mmask16 m = (__mmask16)((1u << (K - k)) - 1u);
        __m512 xv[MK512_TT];
        for (int t = 0; t < T; t++) xv[t] = _mm512_maskz_loadu_ps(m, x + t * ldx + k);
        for (int r = 0; r < R; r++) {
            const __m512 wv = _mm512_maskz_loadu_ps(m, w + r * ldw + k);
            for (int t = 0; t < T; t++) acc[r][t] = _mm512_fmadd_ps(wv, xv[t], acc[r][t]);
        }
    }
    if (R == 4 && T >= 4) {
        // Tokens 0-3 of the 4 rows: the 16 lane trees side by side.
        store_sums4x4(acc[0][0], acc[1][0], acc[2][0], acc[3][0], acc[0][1], acc[1][1], acc[2][1], acc[3][1],
                      acc[0][2], acc[1][2], acc[2][2], acc[3][2], acc[0][3], acc[1][3], acc[2][3], acc[3][3], y, ldy);
        for (int t = 4; t < T; t++)
            for (int r = 0; r < R; r++) y[t * ldy + r] = hsum512(acc[r][t]);
        return;
    }
    for (int t = 0; t < T; t++)
        for (int r = 0; r < R; r++) y[t * ldy + r] = hsum512(acc[r][t]);
}

#define MK512_CASE(R, T) case (R) * 8 + (T): mk512_rt(R, T, w, ldw, x, ldx, K, y, ldy); break;
#define MK512_ROW(R) MK512_CASE(R, 1) MK512_CASE(R, 2) MK512_CASE(R, 3) MK512_CASE(R, 4) MK512_CASE(R, 5) MK512_CASE(R, 6)

static CK_AVX512 void mk_avx512(int R, int T, const float *w, int64_t ldw, const float *x, int64_t ldx, int64_t K,
                                float *y, int64_t ldy) {
    switch (R * 8 + T) {
    MK512_ROW(1) MK512_ROW(2) MK512_ROW(3) MK512_ROW(4)
    default: break;
    }
}

// ---------------------------------------------------------------------------------------------------------------
// AVX2 level: a 16-lane accumulator is a pair of 8-lane registers (lanes 0-7, 8-15).

CK_INLINE CK_AVX2 float hsum256x2(__m256 lo, __m256 hi) {
    const __m256 a = _mm256_add_ps(lo, hi);                                                  // j + j+8
    const __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));     // j + j+4
    const __m128 c = _mm_add_ps(b, _mm_movehl_ps(b, b));                                     // j + j+2
    return _mm_cvtss_f32(_mm_add_ss(c, _mm_movehdup_ps(c)));                                // 0 + 1
}

// One 32-element block -> four 8-lane vectors (elements 0-7, 8-15, 16-23, 24-31), exactly dq_scalar's values.
CK_INLINE CK_AVX2 void blk256(const int type, const uint8_t *b, __m256 w[4]) {
    const __m256 d = _mm256_set1_ps(h2f_f16c(b));
    if (type == CK_TYPE_Q8_0) {
        for (int i = 0; i < 4; i++) {
            const __m128i q = _mm_loadl_epi64((const __m128i *)(b + 2 + 8 * i));
            w[i] = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)));
        }
        return;
    }
    const int five = type == CK_TYPE_Q5_0 || type == CK_TYPE_Q5_1;
    const uint8_t *qs = b + (type == CK_TYPE_Q4_1 ? 4 : type == CK_TYPE_Q5_0 ? 6 : type == CK_TYPE_Q5_1 ? 8 : 2);
    const __m256i a = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)qs));        // bytes 0-7
    const __m256i c = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(qs + 8)));  // bytes 8-15
    const __m256i f = _mm256_set1_epi32(15);
    __m256i q[4] = {_mm256_and_si256(a, f), _mm256_and_si256(c, f), _mm256_srli_epi32(a, 4), _mm256_srli_epi32(c, 4)};
    if (five) {
        // Bit 4 of element i's code is bit i of qh.
        const int one = type == CK_TYPE_Q5_1;
        const uint32_t qh = load_u32(b + 2 + 2 * one);
        const __m256i sh = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), bit = _mm256_set1_epi32(1);
        for (int i = 0; i < 4; i++) {
            const __m256i hb = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int)(qh >> (8 * i))), sh), bit);
            q[i] = _mm256_or_si256(q[i], _mm256_slli_epi32(hb, 4));
        }
        if (one) {
            const __m256 m = _mm256_set1_ps(h2f_f16c(b + 2));
            for (int i = 0; i < 4; i++) w[i] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(q[i]), m);
        } else {
            const __m256 sixteen = _mm256_set1_ps(16.0f);  // float(q) - 16 is exact
            for (int i = 0; i < 4; i++) w[i] = _mm256_mul_ps(d, _mm256_sub_ps(_mm256_cvtepi32_ps(q[i]), sixteen));
        }
        return;
    }
    if (type == CK_TYPE_IQ4_NL) {
        // d * kvalues[q]: the 16 products in two 8-entry tables, picked by bit 3 of q.
        const __m256 klo = _mm256_mul_ps(d, _mm256_setr_ps(-127, -104, -83, -65, -49, -35, -22, -10));
        const __m256 khi = _mm256_mul_ps(d, _mm256_setr_ps(1, 13, 25, 38, 53, 69, 89, 113));
        for (int i = 0; i < 4; i++) {
            const __m256 sel = _mm256_castsi256_ps(_mm256_slli_epi32(q[i], 28));  // bit 3 -> sign bit
            w[i] = _mm256_blendv_ps(_mm256_permutevar8x32_ps(klo, q[i]), _mm256_permutevar8x32_ps(khi, q[i]), sel);
        }
        return;
    }
    if (type == CK_TYPE_Q4_0) {
        const __m256i eight = _mm256_set1_epi32(8);
        for (int i = 0; i < 4; i++) w[i] = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_sub_epi32(q[i], eight)));
    } else {
        const __m256 m = _mm256_set1_ps(h2f_f16c(b + 2));
        for (int i = 0; i < 4; i++) w[i] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(q[i]), m);
    }
}

CK_INLINE CK_AVX2 void dq256_quant(const int type, const int bbytes, const uint8_t *src, float *dst, int64_t count) {
    for (int64_t b = 0; b < count / 32; b++, src += bbytes, dst += 32) {
        __m256 w[4];
        blk256(type, src, w);
        for (int i = 0; i < 4; i++) _mm256_storeu_ps(dst + 8 * i, w[i]);
    }
}

// Fused kernel for few tokens (see fk512_rt).
#define FK256_TR 2
#define FK256_TT 3

CK_INLINE CK_AVX2 void fk256_rt(const int type, const int bbytes, const int R, const int T, const uint8_t *W,
                               size_t rb, const float *x, int64_t ldx, int64_t K, float *y, int64_t ldy) {
    __m256 lo[FK256_TR][FK256_TT], hi[FK256_TR][FK256_TT];
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) lo[r][t] = hi[r][t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < K / 32; b++) {
        for (int r = 0; r < R; r++) {
            __m256 w[4];
            _mm_prefetch((const char *)(W + (size_t)(r + R) * rb + (size_t)b * bbytes), _MM_HINT_T1);  // next tile
            blk256(type, W + (size_t)r * rb + (size_t)b * bbytes, w);
            for (int t = 0; t < T; t++) {
                const float *xp = x + t * ldx + 32 * b;
                lo[r][t] = _mm256_fmadd_ps(w[0], _mm256_loadu_ps(xp), lo[r][t]);
                hi[r][t] = _mm256_fmadd_ps(w[1], _mm256_loadu_ps(xp + 8), hi[r][t]);
                lo[r][t] = _mm256_fmadd_ps(w[2], _mm256_loadu_ps(xp + 16), lo[r][t]);
                hi[r][t] = _mm256_fmadd_ps(w[3], _mm256_loadu_ps(xp + 24), hi[r][t]);
            }
        }
    }
    for (int t = 0; t < T; t++)
        for (int r = 0; r < R; r++) y[t * ldy + r] = hsum256x2(lo[r][t], hi[r][t]);
}

#define FK256_CASE(TYPE, BYTES, R, T) \
    case (R) * 8 + (T): fk256_rt(TYPE, BYTES, R, T, W, rb, x, ldx, K, y, ldy); break;
#define FK256_TYPE(TYPE, BYTES)                                                                   \
    case TYPE:                                                                                    \
        switch (R * 8 + T) {                                                                      \
        FK256_CASE(TYPE, BYTES, 1, 1) FK256_CASE(TYPE, BYTES, 1, 2) FK256_CASE(TYPE, BYTES, 1, 3) \
        FK256_CASE(TYPE, BYTES, 2, 1) FK256_CASE(TYPE, BYTES, 2, 2) FK256_CASE(TYPE, BYTES, 2, 3) \
        default: break;                                                                           \
        }                                                                                         \
        break;

static CK_AVX2 void fk_avx2(int type, int R, int T, const uint8_t *W, size_t rb, const float *x, int64_t ldx,
                            int64_t K, float *y, int64_t ldy) {
    switch (type) {
    FK256_TYPE(CK_TYPE_Q8_0, 34)
    FK256_TYPE(CK_TYPE_Q4_0, 18)
    FK256_TYPE(CK_TYPE_Q4_1, 20)
    FK256_TYPE(CK_TYPE_Q5_0, 22)
    FK256_TYPE(CK_TYPE_Q5_1, 24)
    FK256_TYPE(CK_TYPE_IQ4_NL, 18)
    default: fkk_avx2(type, R, T, W, rb, x, ldx, K, y, ldy); break;
    }
}

static CK_AVX2 void dq_avx2(int type, const uint8_t *src, float *dst, int64_t count) {
    switch (type) {
    case CK_TYPE_F16: {
        int64_t i = 0;
        for (; i + 8 <= count; i += 8)
            _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + 2 * i))));
        for (; i < count; i++) dst[i] = ck_half_to_float(load_u16(src + 2 * i));
        break;
    }
    case CK_TYPE_BF16: {
        int64_t i = 0;
        for (; i + 8 <= count; i += 8) {
            const __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(src + 2 * i)));
            _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)));
        }
        for (; i < count; i++) dst[i] = ck_bf16_to_float(load_u16(src + 2 * i));
        break;
    }
    case CK_TYPE_Q8_0: dq256_quant(CK_TYPE_Q8_0, 34, src, dst, count); break;
    case CK_TYPE_Q4_0: dq256_quant(CK_TYPE_Q4_0, 18, src, dst, count); break;
    case CK_TYPE_Q4_1: dq256_quant(CK_TYPE_Q4_1, 20, src, dst, count); break;
    case CK_TYPE_Q5_0: dq256_quant(CK_TYPE_Q5_0, 22, src, dst, count); break;
    case CK_TYPE_Q5_1: dq256_quant(CK_TYPE_Q5_1, 24, src, dst, count); break;
    case CK_TYPE_IQ4_NL: dq256_quant(CK_TYPE_IQ4_NL, 18, src, dst, count); break;
    default:
        dqk_avx2(type, src, dst, count);  // K-quants; anything else goes to dq_scalar
        break;
    }
}

#define MK256_TR 2
#define MK256_TT 3

CK_INLINE CK_AVX2 void mk256_rt(const int R, const int T, const float *w, int64_t ldw, const float *x, int64_t ldx,
                               int64_t K, float *y, int64_t ldy) {
    __m256 lo[MK256_TR][MK256_TT], hi[MK256_TR][MK256_TT];
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) lo[r][t] = hi[r][t] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
        for (int r = 0; r < R; r++) {
            const __m256 w0 = _mm256_loadu_ps(w + r * ldw + k), w1 = _mm256_loadu_ps(w + r * ldw + k + 8);
            for (int t = 0; t < T; t++) {
                lo[r][t] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + t * ldx + k), lo[r][t]);
                hi[r][t] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + t * ldx + k + 8), hi[r][t]);
            }
        }
    }
    if (k < K) {
        static const int32_t ones[32] = {-1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                         0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
        const int rem = (int)(K - k);
        const __m256i m0 = _mm256_loadu_si256((const __m256i *)(ones + 16 - rem));
        const __m256i m1 = _mm256_loadu_si256((const __m256i *)(ones + 24 - rem));
        for (int r = 0; r < R; r++) {
            const __m256 w0 = _mm256_maskload_ps(w + r * ldw + k, m0), w1 = _mm256_maskload_ps(w + r * ldw + k + 8, m1);
            for (int t = 0; t < T; t++) {
                lo[r][t] = _mm256_fmadd_ps(w0, _mm256_maskload_ps(x + t * ldx + k, m0), lo[r][t]);
                hi[r][t] = _mm256_fmadd_ps(w1, _mm256_maskload_ps(x + t * ldx + k + 8, m1), hi[r][t]);
            }
        }
    }
    for (int t = 0; t < T; t++)
        for (int r = 0; r < R; r++) y[t * ldy + r] = hsum256x2(lo[r][t], hi[r][t]);
}

#define MK256_CASE(R, T) case (R) * 8 + (T): mk256_rt(R, T, w, ldw, x, ldx, K, y, ldy); break;

static CK_AVX2 void mk_avx2(int R, int T, const float *w, int64_t ldw, const float *x, int64_t ldx, int64_t K,
                            float *y, int64_t ldy) {
    switch (R * 8 + T) {
    MK256_CASE(1, 1) MK256_CASE(1, 2) MK256_CASE(1, 3)
    MK256_CASE(2, 1) MK256_CASE(2, 2) MK256_CASE(2, 3)
    default: break;
    }
}

#include "kquants_simd.h"

#endif  // CK_X86

// ---------------------------------------------------------------------------------------------------------------
// Driver

typedef void (*dq_fn)(int type, const uint8_t *src, float *dst, int64_t count);
typedef void (*mk_fn)(int R, int T, const float *w, int64_t ldw, const float *x, int64_t ldx, int64_t K,
                      float *y, int64_t ldy);

// Fused kernel (quantized types only): R rows starting at W (row stride rb bytes) x T tokens.
typedef void (*fk_fn)(int type, int R, int T, const uint8_t *W, size_t rb, const float *x, int64_t ldx,
                      int64_t K, float *y, int64_t ldy);

// Fused kernel that also writes the decoded rows into a panel (row r at panel + r * ldp).
typedef void (*fks_fn)(int type, int R, int T, const uint8_t *W, size_t rb, const float *x, int64_t ldx,
                       int64_t K, float *y, int64_t ldy, float *panel, int64_t ldp);

typedef struct {
    dq_fn dq;
    mk_fn mk;
    int tr, tt;       // largest panel tile: rows, tokens
    fk_fn fk;         // NULL if the level has no fused kernel
    int ftr, ftt;     // largest fused tile; the fused path is used when n <= ftt
    fks_fn fks;       // fused kernel that also fills the panel (NULL if none); tile ftr x ftt
} isa_impl;

static const isa_impl *impl_for(int isa) {
    static const isa_impl scalar = {dq_scalar, mk_scalar, 4, 4, NULL, 0, 0, NULL};
#if CK_X86
    static const isa_impl avx2 = {dq_avx2, mk_avx2, MK256_TR, MK256_TT, fk_avx2, FK256_TR, FK256_TT, NULL};
    static const isa_impl avx512 = {dq_avx512, mk_avx512, MK512_TR, MK512_TT, fk_avx512, FK512_TR, FK512_TT,
                                          fks_avx512};
    if (isa == CK_ISA_AVX512) return &avx512;
    if (isa == CK_ISA_AVX2) return &avx2;
#else
    (void)isa;
#endif
    return &scalar;
}

void ck_dequantize_row(int type, const void *src, float *dst, int64_t count) {
    if (count <= 0 || ck_row_bytes(type, count) == 0) return;
    impl_for(ck_get_isa())->dq(type, (const uint8_t *)src, dst, count);
}

void ck_matmul(int type, const void *W, int64_t K, int64_t row_begin, int64_t row_end,
               const float *x, int64_t ldx, int64_t n, float *y, int64_t ldy) {
    const size_t rb = ck_row_bytes(type, K);
    if (n <= 0 || row_end <= row_begin || rb == 0) return;
    const isa_impl *im = impl_for(ck_get_isa());
    const int TR = im->tr, TT = im->tt;
    const uint8_t *Wb = (const uint8_t *)W;

    // Few tokens, quantized weights: decode in registers (no scratch round trip). Same bits as the panel path.
    if (im->fk && n <= im->ftt && type_block_size(type) >= 32) {
        const int T = (int)n;
        for (int64_t o = row_begin; o < row_end; o += im->ftr) {
            const int R = row_end - o < im->ftr ? (int)(row_end - o) : im->ftr;
            im->fk(type, R, T, Wb + (size_t)o * rb, rb, x, ldx, K, y + o, ldy);
        }
        return;
    }

    // Panel: as many whole row tiles as fit in ~32 KiB of fp32 (at least one tile).
    const int64_t kpad = (K + 15) & ~(int64_t)15;
    int64_t P = (32768 / (kpad * 4)) / TR * TR;
    if (P < TR) P = TR;
    if (P > 64) P = 64;

    float *buf = NULL;
    if (type != CK_TYPE_F32) {
        buf = scratch((size_t)(P * kpad));
        if (!buf) abort();
    }

    for (int64_t p0 = row_begin; p0 < row_end; p0 += P) {
        const int64_t pr = row_end - p0 < P ? row_end - p0 : P;
        // The next panel's weight bytes, asked for while this panel computes, so that decoding it does not wait
        // on memory (measured on a 16-token decode step: -15% time; the panel path is otherwise read-latency bound).
        // Spread over this panel's row tiles: a burst of prefetches would stall on full miss buffers.
        const int64_t nr = p0 + P < row_end ? (row_end - (p0 + P) < P ? row_end - (p0 + P) : P) : 0;
        const char *np = (const char *)(Wb + (size_t)(p0 + P) * rb);
        const float *panel;
        int64_t ldw;
        int64_t t_first = 0;  // tokens already done while the panel was decoded
        if (type == CK_TYPE_F32) {
            panel = (const float *)W + p0 * K;
            ldw = K;
        } else if (im->fks && type_block_size(type) >= 32) {
            // The first ftt tokens run fused, decoding the panel as they go; the rest use the panel.
            for (int64_t i = 0; i < pr; i += im->ftr) {
                const int R = pr - i < im->ftr ? (int)(pr - i) : im->ftr;
                if (i < nr) {
                    const int64_t pe = (i + R < nr ? i + R : nr) * (int64_t)rb;
                    for (int64_t off = i * (int64_t)rb; off < pe; off += 64) __builtin_prefetch(np + off, 0, 2);
                }
                im->fks(type, R, im->ftt, Wb + (size_t)(p0 + i) * rb, rb, x, ldx, K, y + p0 + i, ldy, buf + i * kpad, kpad);
            }
            panel = buf;
            ldw = kpad;
            t_first = im->ftt;
        } else {
            if (type != CK_TYPE_F32)
                for (size_t off = 0; off < (size_t)nr * rb; off += 64) __builtin_prefetch(np + off, 0, 2);
            for (int64_t i = 0; i < pr; i++) im->dq(type, Wb + (size_t)(p0 + i) * rb, buf + i * kpad, K);
            panel = buf;
            ldw = kpad;
        }
        for (int64_t t0 = t_first; t0 < n; t0 += TT) {
            const int T = n - t0 < TT ? (int)(n - t0) : TT;
            for (int64_t i = 0; i < pr; i += TR) {
                const int R = pr - i < TR ? (int)(pr - i) : TR;
                im->mk(R, T, panel + i * ldw, ldw, x + t0 * ldx, ldx, K, y + t0 * ldy + p0 + i, ldy);
            }
        }
    }
}
