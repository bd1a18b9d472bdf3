// Int8-activation matrix multiplication (opt-in beside ck_matmul's fp32 activations). Header: ck_q8.h, which
// defines the quantized activation row and the canonical operation sequence every level performs.
//
// Why it is exact across levels: within a 32-element block every integer sum is exact (|isum| < 2^24, so its
// conversion to fp32 is exact too), and the only rounding steps — dw * da, the activation row's ds = da * sum(a),
// and the fused multiply-adds into lane b % 16 of a 16-lane accumulator — are single IEEE operations on the same
// operands in the same order on every level. How a level forms the integer (vpdpbusd, maddubs + madd, plain C,
// offsets folded in through the activation sums, lane order of the partial sums) cannot change it.
//
// Both SIMD levels work on groups of 16 blocks (512 values) and keep the 16 accumulator lanes of a (row, token)
// pair in "transposed" order: position p = 4 i + q holds lane 4 q + i (the activation layout stores the block
// scales and sums in that order too). The order is undone once per pair, before the lane tree.
//   scalar      row_scalar: the sequence written out block by block, lanes in natural order.
//   AVX-512     (VNNI + VBMI) one zmm of codes per (quad q, half h) of a group: 128-bit lane i holds the 16 codes
//               of half h of block 4 q + i, as the activation layout holds the activations (32-element types: four
//               blocks gathered from two loads by one byte permute; K-quants: nibble planes and 64-bit permutes,
//               high bits by multishift). vpdpbusd of both halves into one int32 vector per quad (block 4 q + i's
//               partial sums in 128-bit lane i), then a two-level in-lane transpose-and-add gives the 16 block sums
//               in transposed order. One function per (type, tokens, quads of the last group), so that every
//               vector index is a constant and nothing spills.
//   AVX-512 GEMM  n >= 3 tokens: rows decoded once per block of rows, their codes transposed to the lane-major
//               order of the activations' second copy (ln), then tiles of 4 rows x GEMM_T tokens where eight
//               vpdpbusd per (row, token, group) give the 16 block sums in place (no reduction shuffles); see tile512.
//   AVX2        the same with ymm halves (blocks 4 q, 4 q + 1 | 4 q + 2, 4 q + 3), maddubs + madd into int32, and a
//               hadd tree to the same transposed order.
// Unsigned x signed products: the weight codes are made unsigned with an offset (Q8_0, IQ4_NL: + 128 on AVX-512;
// Q4_0: 8, Q5_0: 16, Q6_K: 32 are the stored codes) whose contribution, offset x (sum of the activations), is
// subtracted with the block or half-block sums stored beside the activations. AVX2 multiplies Q8_0 / IQ4_NL's
// signed values with the sign trick instead (|w| x sign(a, w)); either way the same integer. maddubs cannot
// saturate: its pairs are at most 2 x 128 x 127 (sign trick) or 2 x 63 x 127 (unsigned codes).
#include "CCausalKernels.h"
#include "scratch_impl.h"
#include "ck_q8.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__)
#define Q8_X86 1
#include <immintrin.h>
#define Q8_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx512vbmi,avx2,fma,f16c,bmi2")))
#define Q8_AVX2 __attribute__((target("avx2,fma,f16c")))
#else
#define Q8_X86 0
#endif

#define Q8_INLINE static inline __attribute__((always_inline))

// Byte p of the result = byte (block at position p) of 16 bytes in block order: transposed order.
#define T_ORDER 0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15

// ---------------------------------------------------------------------------------------------------------------
// Helpers and the activation layout

static inline uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline float f_of_bits(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline uint32_t bits_of_f(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

static const int8_t q8_iq4nl[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

typedef struct { int64_t nb, npb; size_t d, s32, slo, shi, ds, ln, bytes; } q8_layout;

static q8_layout q8_layout_of(int64_t K) {
    q8_layout L;
    L.nb = K / 32;
    L.npb = (L.nb + 15) / 16 * 16;
    L.d = (size_t)L.npb * 32;
    L.s32 = L.d + (size_t)L.npb * 4;
    L.slo = L.s32 + (size_t)L.npb * 4;
    L.shi = L.slo + (size_t)L.npb * 4;
    L.ds = L.shi + (size_t)L.npb * 4;
    L.ln = L.ds + (size_t)L.npb * 4;
    L.bytes = L.ln + (size_t)L.npb * 32;
    return L;
}

// Byte offset of the 16 codes of half h of block b, and the index of block b in the per-block arrays.
static inline size_t code_off(int64_t b, int h) {
    const int64_t r = b & 15;
    return (size_t)(512 * (b >> 4) + 128 * (r >> 2) + 64 * h + 16 * (r & 3));
}
static inline int64_t tpos(int64_t b) {
    const int64_t r = b & 15;
    return 16 * (b >> 4) + 4 * (r & 3) + (r >> 2);
}

size_t ck_q8_row_bytes(int64_t K) {
    if (K <= 0 || K % 32 != 0) return 0;
    return q8_layout_of(K).bytes;
}

int ck_q8_supports(int type) {
    switch (type) {
    case CK_TYPE_Q8_0: case CK_TYPE_Q4_0: case CK_TYPE_Q4_1: case CK_TYPE_Q5_0: case CK_TYPE_Q5_1:
    case CK_TYPE_IQ4_NL: case CK_TYPE_Q4_K: case CK_TYPE_Q5_K: case CK_TYPE_Q6_K:
        return 1;
    default:
        return 0;
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Levels and the process-wide switch

static atomic_int g_vnni = -1;

static int cpu_has_vnni(void) {
    int v = atomic_load_explicit(&g_vnni, memory_order_relaxed);
    if (v >= 0) return v;
    v = 0;
#if Q8_X86
    __builtin_cpu_init();
    v = __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vbmi") && __builtin_cpu_supports("bmi2") ? 1 : 0;
#endif
    atomic_store_explicit(&g_vnni, v, memory_order_relaxed);
    return v;
}

int ck_q8_isa(void) {
    const int isa = ck_get_isa();
    if (isa >= CK_ISA_AVX512 && cpu_has_vnni()) return CK_ISA_AVX512;
    if (isa >= CK_ISA_AVX2) return CK_ISA_AVX2;
    return CK_ISA_SCALAR;
}

const char *ck_q8_isa_name(void) {
    switch (ck_q8_isa()) {
    case CK_ISA_AVX512: return "avx512vnni";
    case CK_ISA_AVX2: return "avx2";
    default: return "scalar";
    }
}

static atomic_int g_precision = -1;

int ck_activation_precision(void) {
    int p = atomic_load_explicit(&g_precision, memory_order_relaxed);
    if (p >= 0) return p;
    const char *e = getenv("CAUSAL_ACTIVATIONS");
    p = e && (strcmp(e, "int8") == 0 || strcmp(e, "INT8") == 0) ? CK_ACTIVATIONS_INT8 : CK_ACTIVATIONS_FP32;
    int expected = -1;
    if (!atomic_compare_exchange_strong(&g_precision, &expected, p)) p = expected;
    return p;
}

void ck_set_activation_precision(int precision) {
    atomic_store(&g_precision, precision == CK_ACTIVATIONS_INT8 ? CK_ACTIVATIONS_INT8 : CK_ACTIVATIONS_FP32);
}

// ---------------------------------------------------------------------------------------------------------------
// Activation quantization

// The block's scale from the bits of its largest magnitude: 0 normal (d, id set), 1 all zero, 2 NaN.
static inline int block_scale(uint32_t amax_bits, float *d, float *id) {
    if (amax_bits >= 0x7F800000u) { *d = f_of_bits(0x7FC00000u); *id = 0.0f; return 2; }
    const float amax = f_of_bits(amax_bits);
    if (amax < 0x1p-100f) { *d = 0.0f; *id = 0.0f; return 1; }
    *d = amax / 127.0f;
    *id = 1.0f / *d;
    return 0;
}

// Round to nearest, ties to even, independent of the rounding mode (|v| < 2^22).
static inline int rne(float v) {
    const float f = floorf(v);
    const float r = v - f;  // exact
    int i = (int)f;
    if (r > 0.5f || (r == 0.5f && (i & 1))) i++;
    return i < -127 ? -127 : i > 127 ? 127 : i;
}

// One block: codes of the two halves to q0 and q1 (16 each), its scale and sums.
static void qblock_scalar(const float *x, int8_t *q0, int8_t *q1, float *d, int32_t *s32, int32_t *sa, int32_t *sb) {
    uint32_t mb = 0;
    for (int i = 0; i < 32; i++) {
        const uint32_t a = bits_of_f(x[i]) & 0x7FFFFFFFu;
        if (a > mb) mb = a;
    }
    float id;
    if (block_scale(mb, d, &id) != 0) {
        memset(q0, 0, 16);
        memset(q1, 0, 16);
        *s32 = *sa = *sb = 0;
        return;
    }
    int32_t h0 = 0, h1 = 0;
    for (int i = 0; i < 32; i++) {
        const int v = rne(x[i] * id);
        if (i < 16) { q0[i] = (int8_t)v; h0 += v; } else { q1[i - 16] = (int8_t)v; h1 += v; }
    }
    *sa = h0;
    *sb = h1;
    *s32 = h0 + h1;
}

#if Q8_X86
Q8_INLINE Q8_AVX2 int32_t hsum8_epi32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
}

// The same bytes as qblock_scalar: the integer max of the magnitudes' bits, the same scalar d and id, one fp32
// product per element rounded to nearest-even by an explicit rounding (not the MXCSR mode), the same clamp.
static Q8_AVX2 void qblock_avx2(const float *x, int8_t *q0, int8_t *q1, float *d, int32_t *s32, int32_t *sa, int32_t *sb) {
    const __m256i am = _mm256_set1_epi32(0x7FFFFFFF);
    __m256i v[4];
    for (int i = 0; i < 4; i++) v[i] = _mm256_castps_si256(_mm256_loadu_ps(x + 8 * i));
    __m256i m = _mm256_max_epu32(_mm256_max_epu32(_mm256_and_si256(v[0], am), _mm256_and_si256(v[1], am)),
                                 _mm256_max_epu32(_mm256_and_si256(v[2], am), _mm256_and_si256(v[3], am)));
    __m128i m4 = _mm_max_epu32(_mm256_castsi256_si128(m), _mm256_extracti128_si256(m, 1));
    m4 = _mm_max_epu32(m4, _mm_shuffle_epi32(m4, 0x4E));
    m4 = _mm_max_epu32(m4, _mm_shuffle_epi32(m4, 0xB1));
    float id;
    if (block_scale((uint32_t)_mm_cvtsi128_si32(m4), d, &id) != 0) {
        memset(q0, 0, 16);
        memset(q1, 0, 16);
        *s32 = *sa = *sb = 0;
        return;
    }
    const __m256 idv = _mm256_set1_ps(id);
    const __m256i lo = _mm256_set1_epi32(-127), hi = _mm256_set1_epi32(127);
    __m256i qi[4];
    for (int i = 0; i < 4; i++) {
        const __m256 r = _mm256_round_ps(_mm256_mul_ps(_mm256_castsi256_ps(v[i]), idv),
                                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        qi[i] = _mm256_min_epi32(_mm256_max_epi32(_mm256_cvtps_epi32(r), lo), hi);
    }
    const __m256i p16a = _mm256_packs_epi32(qi[0], qi[1]), p16b = _mm256_packs_epi32(qi[2], qi[3]);
    const __m256i p8 = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(p16a, p16b), _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm_storeu_si128((__m128i *)q0, _mm256_castsi256_si128(p8));
    _mm_storeu_si128((__m128i *)q1, _mm256_extracti128_si256(p8, 1));
    const int32_t h0 = hsum8_epi32(_mm256_add_epi32(qi[0], qi[1])), h1 = hsum8_epi32(_mm256_add_epi32(qi[2], qi[3]));
    *sa = h0;
    *sb = h1;
    *s32 = h0 + h1;
}
#endif

// The lane-major copy of a group's codes (ck_q8.h): vector k = 4 h + m, dword p = 4 i + q holds codes
// 16 h + 4 m .. 16 h + 4 m + 3 of block 4 q + i, which the quad layout holds at 128 q + 64 h + 16 i + 4 m.
static void lanes_scalar(const uint8_t *quad, uint8_t *lanes) {
    for (int k = 0; k < 8; k++)
        for (int p = 0; p < 16; p++)
            memcpy(lanes + 64 * k + 4 * p, quad + 128 * (p & 3) + 64 * (k >> 2) + 16 * (p >> 2) + 4 * (k & 3), 4);
}

#if Q8_X86
// Four vectors holding, in 128-bit lane i, dwords m = 0..3 (a0 .. a3: q = 0..3) to v[m] holding dword q in lane i:
// a 4 x 4 dword transpose inside each 128-bit lane.
Q8_INLINE Q8_AVX512 void tr4x4_512(__m512i a0, __m512i a1, __m512i a2, __m512i a3, __m512i *v) {
    const __m512i t0 = _mm512_unpacklo_epi32(a0, a1), t1 = _mm512_unpackhi_epi32(a0, a1);
    const __m512i t2 = _mm512_unpacklo_epi32(a2, a3), t3 = _mm512_unpackhi_epi32(a2, a3);
    v[0] = _mm512_unpacklo_epi64(t0, t2);
    v[1] = _mm512_unpackhi_epi64(t0, t2);
    v[2] = _mm512_unpacklo_epi64(t1, t3);
    v[3] = _mm512_unpackhi_epi64(t1, t3);
}

// Quad-layout code vectors c[2 q + h] (half h of blocks 4 q + i in 128-bit lane i) to lane-major v[4 h + m].
Q8_INLINE Q8_AVX512 void lanes512(const __m512i c[8], __m512i v[8]) {
    tr4x4_512(c[0], c[2], c[4], c[6], v);
    tr4x4_512(c[1], c[3], c[5], c[7], v + 4);
}

static Q8_AVX512 void lanes_act512(const uint8_t *quad, uint8_t *lanes) {
    __m512i c[8], v[8];
    for (int j = 0; j < 8; j++) c[j] = _mm512_loadu_si512((const void *)(quad + 64 * j));
    lanes512(c, v);
    for (int k = 0; k < 8; k++) _mm512_storeu_si512((void *)(lanes + 64 * k), v[k]);
}
#endif

#if Q8_X86
// 16 vectors to one: lane b = the max (as unsigned) or the sum of vector b's 16 lanes (both exact, so any order
// gives the same integers). Two dword unpacks, two qword unpacks, then 128-bit lane shuffles.
#define TR16(NAME, OP) \
    Q8_INLINE Q8_AVX512 __m512i NAME(const __m512i v[16]) { \
        __m512i t[8], u[4], w[2]; \
        for (int j = 0; j < 8; j++) t[j] = OP(_mm512_unpacklo_epi32(v[2 * j], v[2 * j + 1]), _mm512_unpackhi_epi32(v[2 * j], v[2 * j + 1])); \
        for (int j = 0; j < 4; j++) u[j] = OP(_mm512_unpacklo_epi64(t[2 * j], t[2 * j + 1]), _mm512_unpackhi_epi64(t[2 * j], t[2 * j + 1])); \
        for (int j = 0; j < 2; j++) \
            w[j] = OP(_mm512_shuffle_i32x4(u[2 * j], u[2 * j + 1], _MM_SHUFFLE(1, 0, 1, 0)), _mm512_shuffle_i32x4(u[2 * j], u[2 * j + 1], _MM_SHUFFLE(3, 2, 3, 2))); \
        return OP(_mm512_shuffle_i32x4(w[0], w[1], _MM_SHUFFLE(2, 0, 2, 0)), _mm512_shuffle_i32x4(w[0], w[1], _MM_SHUFFLE(3, 1, 3, 1))); \
    }
TR16(tr16_max, _mm512_max_epu32)
TR16(tr16_add, _mm512_add_epi32)

// A full group of 16 blocks (x: 512 values) with 16-lane vectors, the same bytes as qblock_scalar block by block:
// the 16 integer maxima of the magnitudes' bits at once, block_scale's d = amax / 127 and id = 1 / d as the same
// fp32 divisions (vector), NaN / zero blocks as block_scale makes them, one fp32 product per element converted with
// round-to-nearest-even embedded in the conversion (not the MXCSR mode), the same clamp (after which the saturating
// narrowing to int8 is exact), exact integer sums, ds = d * (float)s32. o: the row's bytes, G: the group.
static Q8_AVX512 void qgroup512(const float *x, uint8_t *o, const q8_layout *L, int64_t G) {
    const __m512i am = _mm512_set1_epi32(0x7FFFFFFF);
    __m512i m[16];
    for (int b = 0; b < 16; b++)
        m[b] = _mm512_max_epu32(_mm512_and_si512(_mm512_loadu_si512((const void *)(x + 32 * b)), am),
                                _mm512_and_si512(_mm512_loadu_si512((const void *)(x + 32 * b + 16)), am));
    const __m512i A = tr16_max(m);  // lane b: block b's amax bits
    const __mmask16 nan = _mm512_cmpge_epu32_mask(A, _mm512_set1_epi32(0x7F800000));
    const __m512 af = _mm512_castsi512_ps(A);
    const __mmask16 zero = (__mmask16)(_mm512_cmp_ps_mask(af, _mm512_set1_ps(0x1p-100f), _CMP_LT_OQ) & ~nan);
    const __mmask16 norm = (__mmask16)~(nan | zero);
    __m512 d = _mm512_div_ps(af, _mm512_set1_ps(127.0f));
    const __m512 id = _mm512_maskz_mov_ps(norm, _mm512_div_ps(_mm512_set1_ps(1.0f), d));
    d = _mm512_mask_mov_ps(_mm512_maskz_mov_ps(norm, d), nan, _mm512_castsi512_ps(_mm512_set1_epi32(0x7FC00000)));
    float ida[16] __attribute__((aligned(64)));
    _mm512_store_ps(ida, id);
    const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127);
    __m512i h[2][16];
    for (int b = 0; b < 16; b++) {
        const __m512 idb = _mm512_set1_ps(ida[b]);
        const __mmask16 keep = (norm >> b) & 1 ? (__mmask16)0xFFFF : 0;
        for (int k = 0; k < 2; k++) {
            const __m512 v = _mm512_loadu_ps(x + 32 * b + 16 * k);
            const __m512i q = _mm512_maskz_mov_epi32(keep, _mm512_min_epi32(_mm512_max_epi32(
                _mm512_cvt_roundps_epi32(_mm512_mul_ps(v, idb), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), lo), hi));
            _mm_storeu_si128((__m128i *)(o + code_off(16 * G + b, k)), _mm512_cvtsepi32_epi8(q));
            h[k][b] = q;
        }
    }
    const __m512i slo = tr16_add(h[0]), shi = tr16_add(h[1]), s32 = _mm512_add_epi32(slo, shi);
    const __m512 ds = _mm512_mul_ps(d, _mm512_cvtepi32_ps(s32));
    // Natural block order to the transposed order of the per-block arrays (position 4 i + q holds block 4 q + i).
    static const int32_t t_order[16] = {T_ORDER};
    const __m512i tr = _mm512_loadu_si512((const void *)t_order);
    _mm512_storeu_ps((float *)(o + L->d) + 16 * G, _mm512_permutexvar_ps(tr, d));
    _mm512_storeu_si512((void *)((int32_t *)(o + L->s32) + 16 * G), _mm512_permutexvar_epi32(tr, s32));
    _mm512_storeu_si512((void *)((int32_t *)(o + L->slo) + 16 * G), _mm512_permutexvar_epi32(tr, slo));
    _mm512_storeu_si512((void *)((int32_t *)(o + L->shi) + 16 * G), _mm512_permutexvar_epi32(tr, shi));
    _mm512_storeu_ps((float *)(o + L->ds) + 16 * G, _mm512_permutexvar_ps(tr, ds));
}
#endif

// One row; the lane-major copy only if `lanes`.
static void quantize_row(const float *x, int64_t K, void *out, int lanes) {
    const q8_layout L = q8_layout_of(K);
    uint8_t *o = (uint8_t *)out;
    float *d = (float *)(o + L.d);
    int32_t *s32 = (int32_t *)(o + L.s32), *slo = (int32_t *)(o + L.slo), *shi = (int32_t *)(o + L.shi);
    float *ds = (float *)(o + L.ds);
#if Q8_X86
    const int simd = ck_q8_isa() >= CK_ISA_AVX2;
#endif
    int64_t b0 = 0;
#if Q8_X86
    if (ck_q8_isa() == CK_ISA_AVX512)
        for (; b0 + 16 <= L.nb; b0 += 16) qgroup512(x + 32 * b0, o, &L, b0 / 16);
#endif
    for (int64_t b = b0; b < L.npb; b++) {
        int8_t *q0 = (int8_t *)(o + code_off(b, 0)), *q1 = (int8_t *)(o + code_off(b, 1));
        const int64_t p = tpos(b);
        if (b >= L.nb) {
            memset(q0, 0, 16);
            memset(q1, 0, 16);
            d[p] = ds[p] = 0.0f;
            s32[p] = slo[p] = shi[p] = 0;
            continue;
        }
#if Q8_X86
        if (simd) qblock_avx2(x + 32 * b, q0, q1, d + p, s32 + p, slo + p, shi + p);
        else
#endif
        qblock_scalar(x + 32 * b, q0, q1, d + p, s32 + p, slo + p, shi + p);
        ds[p] = d[p] * (float)s32[p];
    }
    if (!lanes) return;
    for (int64_t G = 0; G < L.npb / 16; G++) {
#if Q8_X86
        if (ck_q8_isa() == CK_ISA_AVX512) { lanes_act512(o + 512 * G, o + L.ln + 512 * G); continue; }
#endif
        lanes_scalar(o + 512 * G, o + L.ln + 512 * G);
    }
}

void ck_quantize_activations_q8(const float *x, int64_t K, void *out) {
    if (K <= 0 || K % 32 != 0) return;
    quantize_row(x, K, out, 1);
}

void ck_quantize_activations_q8_rows(const float *x, int64_t ldx, int64_t n, int64_t K, void *out) {
    ck_quantize_activations_q8_rows_for(x, ldx, n, K, out, CK_Q8_LANES_MIN);
}

void ck_quantize_activations_q8_rows_for(const float *x, int64_t ldx, int64_t n, int64_t K, void *out, int64_t tokens) {
    const size_t rb = ck_q8_row_bytes(K);
    if (rb == 0) return;
    for (int64_t t = 0; t < n; t++) quantize_row(x + t * ldx, K, (uint8_t *)out + (size_t)t * rb, tokens >= CK_Q8_LANES_MIN);
}

// ---------------------------------------------------------------------------------------------------------------
// Weight blocks, portable: the integer codes q, the half scales sc0/sc1 and the fp32 factors dw, mw of block b of
// a row (ck_q8.h's table). Returns 1 for types with a min.

static inline float h2f(const uint8_t *p) { return ck_half_to_float(rd16(p)); }

// 6-bit scale and min of sub-block j of a Q4_K / Q5_K super-block (s: its 12 scale bytes).
static inline void k4_sm(const uint8_t *s, int j, int *sc, int *m) {
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 15) | (s[j - 4] >> 6) << 4;
        *m = (s[j + 4] >> 4) | (s[j] >> 6) << 4;
    }
}

static int wblock(int type, const uint8_t *w, int64_t b, int q[32], int sc[2], float *dw, float *mw) {
    sc[0] = sc[1] = 1;
    *mw = 0.0f;
    switch (type) {
    case CK_TYPE_Q8_0: {
        const uint8_t *p = w + 34 * b;
        *dw = h2f(p);
        for (int i = 0; i < 32; i++) q[i] = (int8_t)p[2 + i];
        return 0;
    }
    case CK_TYPE_Q4_0:
    case CK_TYPE_IQ4_NL: {
        const uint8_t *p = w + 18 * b;
        *dw = h2f(p);
        for (int i = 0; i < 32; i++) {
            const int nib = i < 16 ? p[2 + i] & 15 : p[2 + i - 16] >> 4;
            q[i] = type == CK_TYPE_Q4_0 ? nib - 8 : q8_iq4nl[nib];
        }
        return 0;
    }
    case CK_TYPE_Q4_1: {
        const uint8_t *p = w + 20 * b;
        *dw = h2f(p);
        *mw = h2f(p + 2);
        for (int i = 0; i < 32; i++) q[i] = i < 16 ? p[4 + i] & 15 : p[4 + i - 16] >> 4;
        return 1;
    }
    case CK_TYPE_Q5_0:
    case CK_TYPE_Q5_1: {
        const int one = type == CK_TYPE_Q5_1;
        const uint8_t *p = w + (one ? 24 : 22) * b;
        *dw = h2f(p);
        const uint32_t qh = rd32(p + 2 + 2 * one);
        const uint8_t *qs = p + 6 + 2 * one;
        for (int i = 0; i < 32; i++) {
            const int code = (i < 16 ? qs[i] & 15 : qs[i - 16] >> 4) | (int)((qh >> i) & 1u) << 4;
            q[i] = one ? code : code - 16;
        }
        if (one) *mw = h2f(p + 2);
        return one;
    }
    case CK_TYPE_Q4_K:
    case CK_TYPE_Q5_K: {
        const int five = type == CK_TYPE_Q5_K;
        const int j = (int)(b & 7);
        const uint8_t *p = w + (five ? 176 : 144) * (b >> 3);
        int s, m;
        k4_sm(p + 4, j, &s, &m);
        *dw = h2f(p) * (float)s;         // exact
        *mw = -(h2f(p + 2) * (float)m);  // exact
        const uint8_t *qs = p + (five ? 48 : 16) + 32 * (j >> 1);
        for (int l = 0; l < 32; l++) {
            int code = j & 1 ? qs[l] >> 4 : qs[l] & 15;
            if (five) code |= ((p[16 + l] >> j) & 1) << 4;
            q[l] = code;
        }
        return 1;
    }
    case CK_TYPE_Q6_K: {
        const int j = (int)(b & 7), h = j >> 2, g = j & 3;
        const uint8_t *p = w + 210 * (b >> 3);
        *dw = h2f(p + 208);
        sc[0] = (int8_t)p[192 + 2 * j];
        sc[1] = (int8_t)p[192 + 2 * j + 1];
        for (int l = 0; l < 32; l++) {
            const int byte = p[64 * h + 32 * (g & 1) + l];
            const int code = (g < 2 ? byte & 15 : byte >> 4) | ((p[128 + 32 * h + l] >> (2 * g)) & 3) << 4;
            q[l] = code - 32;
        }
        return 0;
    }
    default:
        *dw = 0.0f;
        memset(q, 0, 32 * sizeof(int));
        return 0;
    }
}

// The fixed lane tree of CCausalKernels.h.
static inline float tree16(float acc[16]) {
    for (int j = 0; j < 8; j++) acc[j] = acc[j] + acc[j + 8];
    for (int j = 0; j < 4; j++) acc[j] = acc[j] + acc[j + 4];
    for (int j = 0; j < 2; j++) acc[j] = acc[j] + acc[j + 2];
    return acc[0] + acc[1];
}

// ---------------------------------------------------------------------------------------------------------------
// Scalar level: the canonical sequence, one weight row against n activation rows (blocks decoded once, tokens in
// tiles of 8).

static void row_scalar(int type, const uint8_t *w, int64_t K, const uint8_t *xq, size_t xs, int64_t n, float *y,
                       int64_t ldy) {
    const q8_layout L = q8_layout_of(K);
    for (int64_t t0 = 0; t0 < n; t0 += 8) {
        const int T = n - t0 < 8 ? (int)(n - t0) : 8;
        float acc[8][16];
        memset(acc, 0, sizeof acc);
        for (int64_t b = 0; b < L.nb; b++) {
            int q[32], sc[2];
            float dw, mw;
            const int has_min = wblock(type, w, b, q, sc, &dw, &mw);
            for (int t = 0; t < T; t++) {
                const uint8_t *row = xq + (size_t)(t0 + t) * xs;
                const int8_t *a0 = (const int8_t *)(row + code_off(b, 0)), *a1 = (const int8_t *)(row + code_off(b, 1));
                const float da = ((const float *)(row + L.d))[tpos(b)];
                int32_t lo = 0, hi = 0;
                for (int i = 0; i < 16; i++) { lo += q[i] * a0[i]; hi += q[16 + i] * a1[i]; }
                const int32_t isum = sc[0] * lo + sc[1] * hi;
                float *ac = &acc[t][b & 15];
                *ac = fmaf(dw * da, (float)isum, *ac);
                if (has_min) *ac = fmaf(mw, ((const float *)(row + L.ds))[tpos(b)], *ac);
            }
        }
        for (int t = 0; t < T; t++) y[(t0 + t) * ldy] = tree16(acc[t]);
    }
}

#if Q8_X86
// ---------------------------------------------------------------------------------------------------------------
// Shared x86 pieces

static inline int block_bytes(int type) {
    switch (type) {
    case CK_TYPE_Q8_0: return 34;
    case CK_TYPE_Q4_0: case CK_TYPE_IQ4_NL: return 18;
    case CK_TYPE_Q4_1: return 20;
    case CK_TYPE_Q5_0: return 22;
    case CK_TYPE_Q5_1: return 24;
    case CK_TYPE_Q4_K: return 144;
    case CK_TYPE_Q5_K: return 176;
    case CK_TYPE_Q6_K: return 210;
    default: return 0;
    }
}

static inline int is_kquant(int type) { return type == CK_TYPE_Q4_K || type == CK_TYPE_Q5_K || type == CK_TYPE_Q6_K; }
static inline int has_min_t(int type) {
    return type == CK_TYPE_Q4_1 || type == CK_TYPE_Q5_1 || type == CK_TYPE_Q4_K || type == CK_TYPE_Q5_K;
}
// Offset of the nibbles in a 32-element block (nibble types), of qh (5-bit types).
static inline int qs_off(int type) {
    return type == CK_TYPE_Q4_1 ? 4 : type == CK_TYPE_Q5_0 ? 6 : type == CK_TYPE_Q5_1 ? 8 : 2;
}
static inline int qh_off(int type) { return type == CK_TYPE_Q5_1 ? 4 : 2; }

// The 8 scales and 8 mins of a Q4_K / Q5_K super-block as bytes (sub-block j in byte j).
static inline void k4_scales8(const uint8_t *s, uint64_t *sc, uint64_t *mn) {
    const uint32_t s0 = rd32(s), s1 = rd32(s + 4), s2 = rd32(s + 8);
    const uint32_t sc_lo = s0 & 0x3F3F3F3Fu, m_lo = s1 & 0x3F3F3F3Fu;
    const uint32_t sc_hi = (s2 & 0x0F0F0F0Fu) | ((s0 >> 2) & 0x30303030u);
    const uint32_t m_hi = ((s2 >> 4) & 0x0F0F0F0Fu) | ((s1 >> 2) & 0x30303030u);
    *sc = sc_lo | (uint64_t)sc_hi << 32;
    *mn = m_lo | (uint64_t)m_hi << 32;
}

// Q6_K: the low-half scale index within its super-block's 16 scales for the block at position p (+ 1: high half).
#define Q6_LO_IDX 0, 8, 0, 8, 2, 10, 2, 10, 4, 12, 4, 12, 6, 14, 6, 14
#define Q6_HI_IDX 1, 9, 1, 9, 3, 11, 3, 11, 5, 13, 5, 13, 7, 15, 7, 15
// Positions whose block is in the second super-block of a group (blocks 8-15): p % 4 >= 2.
#define SECOND_SB 0xCCCC

Q8_INLINE Q8_AVX2 float h2f_f16c(const uint8_t *p) {
    return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(rd16(p))));
}

// Q6_K's half scales of a group in transposed order (int8 bytes): sc0 (elements 0-15 of each block), sc1 (16-31).
// pb NULL: the group has one super-block (the scales of the second are 0).
Q8_INLINE Q8_AVX512 void q6_scales(const uint8_t *pa, const uint8_t *pb, __m128i *sc0, __m128i *sc1) {
    const __m128i a = _mm_loadu_si128((const __m128i *)(pa + 192));
    const __m128i b = pb ? _mm_loadu_si128((const __m128i *)(pb + 192)) : _mm_setzero_si128();
    const __m128i lo = _mm_setr_epi8(Q6_LO_IDX), hi = _mm_setr_epi8(Q6_HI_IDX);
    *sc0 = _mm_mask_blend_epi8((__mmask16)SECOND_SB, _mm_shuffle_epi8(a, lo), _mm_shuffle_epi8(b, lo));
    *sc1 = _mm_mask_blend_epi8((__mmask16)SECOND_SB, _mm_shuffle_epi8(a, hi), _mm_shuffle_epi8(b, hi));
}

// ---------------------------------------------------------------------------------------------------------------
// AVX-512 (VNNI) level

// Per-quad int32 partial sums r0..r3 (block 4 q + i's in 128-bit lane i of rq) to the 16 block sums, position
// 4 i + q.
Q8_INLINE Q8_AVX512 __m512i red512(__m512i r0, __m512i r1, __m512i r2, __m512i r3) {
    const __m512i ab = _mm512_add_epi32(_mm512_unpacklo_epi32(r0, r1), _mm512_unpackhi_epi32(r0, r1));
    const __m512i cd = _mm512_add_epi32(_mm512_unpacklo_epi32(r2, r3), _mm512_unpackhi_epi32(r2, r3));
    return _mm512_add_epi32(_mm512_unpacklo_epi64(ab, cd), _mm512_unpackhi_epi64(ab, cd));
}

// The codes of a group: c[2 q + h] holds half h of blocks 4 q + i in 128-bit lane i; unsigned (offset) form.
// Plus the weight factor vectors (transposed order).
typedef struct { __m512i c[8]; __m512 dw, mw; __m512i sc0, sc1; } grp512;

// Per-type permute indices of the 32-element types (made once per call).
typedef struct { __m512i iq, ih, idw, ms6, ms5[2]; } idx512;

Q8_INLINE Q8_AVX512 void make_idx512(const int type, idx512 *X) {
    const int bb = block_bytes(type), qo = type == CK_TYPE_Q8_0 ? 2 : qs_off(type);
    uint8_t ib[64], hb[64] = {0};
    uint16_t wb[32];
    for (int j = 0; j < 64; j++) ib[j] = (uint8_t)(bb * (j >> 4) + qo + (j & 15));       // lane i: block i's 16 bytes
    for (int j = 0; j < 64; j++)  // lane i, both qwords: block i's 4 qh bytes, then 4 zeros (unused)
        hb[j] = (uint8_t)(bb * (j >> 4) + qh_off(type) + (j & 3));
    for (int j = 0; j < 32; j++) wb[j] = (uint16_t)(bb / 2 * ((j & 15) >> 2) + (j >> 4));  // d (m) of block (j & 15) / 4
    // Multishift controls moving bit s_L of each byte of 128-bit lane L to bit 4: byte j of a qword takes the 8 bits
    // from bit 8 j + s_L - 4 (mod 64). Q6_K: s_L = 2 L (bits 2 L, 2 L + 1 to 4, 5); Q5_K: s_L = 4 qq + L.
    // Q5_0 / Q5_1 (qh of the lane's block in each qword): byte l of lane i's half h takes bit 16 h + l.
    uint8_t m6[64], m50[64], m51[64];
    const int five = type == CK_TYPE_Q5_0 || type == CK_TYPE_Q5_1;
    for (int j = 0; j < 64; j++) {
        const int L = j >> 4, k = j & 7, l = j & 15;
        m6[j] = (uint8_t)((8 * k + 2 * L - 4) & 63);
        m50[j] = (uint8_t)((five ? l - 4 : 8 * k + L - 4) & 63);
        m51[j] = (uint8_t)((five ? 16 + l - 4 : 8 * k + 4 + L - 4) & 63);
    }
    X->ms6 = _mm512_loadu_si512((const void *)m6);
    X->ms5[0] = _mm512_loadu_si512((const void *)m50);
    X->ms5[1] = _mm512_loadu_si512((const void *)m51);
    X->iq = _mm512_loadu_si512((const void *)ib);
    X->ih = _mm512_loadu_si512((const void *)hb);
    X->idw = _mm512_loadu_si512((const void *)wb);
}

// Quad q of a group of a 32-element type: blocks 4 q .. 4 q + 3 from P, `need` bytes of them present (4 bb for a
// full quad), through two 64-byte masked loads (bytes past the row's end are never read: missing blocks come out as
// zero bytes) and byte permutes: the 16 nibble bytes (or Q8_0's 16 values of a half) of block i to 128-bit lane i,
// its d (and m) to word 4 i + q (and 16 + 4 i + q) of *dvec, Q5's qh bits to 64-bit masks.
Q8_INLINE Q8_AVX512 void quad512(const int type, const idx512 *X, const uint8_t *P, const int need, const int q,
                                 grp512 *G, __m512i *dvec) {
    const __m512i m4 = _mm512_set1_epi8(15);
    const __m512i L0 = _mm512_maskz_loadu_epi8(_bzhi_u64(~0ULL, (unsigned)(need < 64 ? need : 64)), P);
    const __m512i L1 = _mm512_maskz_loadu_epi8(_bzhi_u64(~0ULL, (unsigned)(need > 64 ? need - 64 : 0)), P + 64);
    *dvec = _mm512_mask_mov_epi16(*dvec, (__mmask32)(0x11111111u << q), _mm512_permutex2var_epi16(L0, X->idw, L1));
    if (type == CK_TYPE_Q8_0) {
        const int need1 = need - 16;
        const __m512i M0 = _mm512_maskz_loadu_epi8(_bzhi_u64(~0ULL, (unsigned)(need1 <= 0 ? 0 : need1 < 64 ? need1 : 64)), P + 16);
        const __m512i M1 = _mm512_maskz_loadu_epi8(_bzhi_u64(~0ULL, (unsigned)(need1 > 64 ? need1 - 64 : 0)), P + 80);
        const __m512i x80 = _mm512_set1_epi8((char)0x80);
        G->c[2 * q] = _mm512_xor_si512(_mm512_permutex2var_epi8(L0, X->iq, L1), x80);
        G->c[2 * q + 1] = _mm512_xor_si512(_mm512_permutex2var_epi8(M0, X->iq, M1), x80);
        return;
    }
    const __m512i z = _mm512_permutex2var_epi8(L0, X->iq, L1);
    __m512i c0 = _mm512_and_si512(z, m4), c1 = _mm512_and_si512(_mm512_srli_epi16(z, 4), m4);
    if (type == CK_TYPE_Q5_0 || type == CK_TYPE_Q5_1) {
        // Both qwords of lane i hold block i's qh in their low 32 bits; multishift moves bit 16 h + l to bit 4.
        const __m512i qh = _mm512_permutex2var_epi8(L0, X->ih, L1), m10 = _mm512_set1_epi8(16);
        c0 = _mm512_ternarylogic_epi32(c0, _mm512_multishift_epi64_epi8(X->ms5[0], qh), m10, 0xF8);
        c1 = _mm512_ternarylogic_epi32(c1, _mm512_multishift_epi64_epi8(X->ms5[1], qh), m10, 0xF8);
    } else if (type == CK_TYPE_IQ4_NL) {
        const __m512i tab = _mm512_broadcast_i32x4(_mm_setr_epi8(1, 24, 45, 63, 79, 93, 106, 118, (char)129, (char)141,
                                                                 (char)153, (char)166, (char)181, (char)197, (char)217, (char)241));
        c0 = _mm512_shuffle_epi8(tab, c0);  // kvalues + 128
        c1 = _mm512_shuffle_epi8(tab, c1);
    }
    G->c[2 * q] = c0;
    G->c[2 * q + 1] = c1;
}

// nq (a constant): the quads present; partial (a constant): the row's last group with nb - 16 g < 16 blocks
// (its last quad may hold 1-3 blocks).
Q8_INLINE Q8_AVX512 void decode512(const int type, const idx512 *X, const uint8_t *w, int64_t g, int64_t nb, const int nq,
                                   const int partial, grp512 *G) {
    const int bb = block_bytes(type);
    const __m512i m4 = _mm512_set1_epi8(15);
    if (!is_kquant(type)) {
        const int64_t b0 = 16 * g;
        const int nbg = nb - b0 < 16 ? (int)(nb - b0) : 16;
        __m512i dvec = _mm512_setzero_si512();
        const uint8_t *base = w + (size_t)b0 * bb;
        if (!partial) {
            for (int q = 0; q < 4; q++) quad512(type, X, base + (size_t)(4 * q) * bb, 4 * bb, q, G, &dvec);
        } else {
            for (int q = 0; q < nq - 1; q++) quad512(type, X, base + (size_t)(4 * q) * bb, 4 * bb, q, G, &dvec);
            quad512(type, X, base + (size_t)(4 * (nq - 1)) * bb, (nbg - 4 * (nq - 1)) * bb, nq - 1, G, &dvec);  // 1-4 blocks
        }
        G->dw = _mm512_cvtph_ps(_mm512_castsi512_si256(dvec));
        if (has_min_t(type)) G->mw = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(dvec, 1));
        return;
    }
    const uint8_t *pa = w + (size_t)(2 * g) * bb, *pb = nq == 4 ? pa + bb : NULL;
    // Nibble bytes of 64 codes-bytes Q: lo = Q & 15, hi = Q >> 4 (16-byte lanes of Q: pieces 0-3). Layout: code
    // vector (quad, half h) holds in lane i the half h of block 4 quad + i.
    const __m512i pick0 = _mm512_setr_epi64(0, 1, 8, 9, 4, 5, 12, 13), pick1 = _mm512_setr_epi64(2, 3, 10, 11, 6, 7, 14, 15);
    for (int s = 0; s < 2; s++) {
        const uint8_t *sp = s ? pb : pa;
        __m512i *c = G->c + 4 * s;
        if (!sp) continue;  // quads 2, 3 absent (group512 skips them)
        for (int qq = 0; qq < 2; qq++) {
            if (type == CK_TYPE_Q6_K) {
                // Blocks 4 qq + g (g = lane): ql bytes 64 qq + 32 (g & 1) + 16 h, nibble g >= 2; qh bytes
                // 128 + 32 qq + 16 h, bits 2 g (moved to bits 4-5 by a multishift: byte j of a qword takes the 8
                // bits from bit 8 j + 2 g - 4, rotating).
                const __m512i Q = _mm512_loadu_si512((const void *)(sp + 64 * qq));
                const __m512i lo = _mm512_and_si512(Q, m4), hi = _mm512_and_si512(_mm512_srli_epi16(Q, 4), m4);
                const __m512i sel0 = _mm512_setr_epi64(0, 1, 4, 5, 8, 9, 12, 13), sel1 = _mm512_setr_epi64(2, 3, 6, 7, 10, 11, 14, 15);
                for (int h = 0; h < 2; h++) {
                    const __m512i nib = _mm512_permutex2var_epi64(lo, h ? sel1 : sel0, hi);
                    const __m512i hb = _mm512_multishift_epi64_epi8(X->ms6, _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(sp + 128 + 32 * qq + 16 * h))));
                    c[2 * qq + h] = _mm512_ternarylogic_epi32(nib, hb, _mm512_set1_epi8(0x30), 0xF8);  // nib | (hb & 0x30)
                }
            } else {
                // Sub-blocks 4 qq + i: qs bytes 32 (2 qq + i / 2) + 16 h, nibble i & 1.
                const uint8_t *qs = sp + (type == CK_TYPE_Q5_K ? 48 : 16) + 64 * qq;
                const __m512i Q = _mm512_loadu_si512((const void *)qs);
                const __m512i lo = _mm512_and_si512(Q, m4), hi = _mm512_and_si512(_mm512_srli_epi16(Q, 4), m4);
                for (int h = 0; h < 2; h++) {
                    __m512i code = _mm512_permutex2var_epi64(lo, h ? pick1 : pick0, hi);
                    if (type == CK_TYPE_Q5_K) {
                        // Bit (4 qq + i) of qh[16 h + l] to bit 4: byte j of a qword takes the 8 bits from bit
                        // 8 j + (4 qq + i) - 4, rotating.
                        const __m512i qh = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(sp + 16 + 16 * h)));
                        code = _mm512_ternarylogic_epi32(code, _mm512_multishift_epi64_epi8(X->ms5[qq], qh), _mm512_set1_epi8(0x10), 0xF8);
                    }
                    c[2 * qq + h] = code;
                }
            }
        }
    }
    // Factors: [dA, mA, dB, mB] (Q6_K: d at 208) as one conversion, spread by lane (positions with p % 4 >= 2: B).
    const int doff = type == CK_TYPE_Q6_K ? 208 : 0;
    const __m128i hv = _mm_setr_epi32((int)rd32(pa + doff), pb ? (int)rd32(pb + doff) : 0, 0, 0);
    const __m512 f4 = _mm512_castps128_ps512(_mm_cvtph_ps(hv));  // dA, mA, dB, mB
    const __m512 dv = _mm512_permutexvar_ps(_mm512_setr_epi32(0, 0, 2, 2, 0, 0, 2, 2, 0, 0, 2, 2, 0, 0, 2, 2), f4);
    if (type == CK_TYPE_Q6_K) {
        __m128i s0, s1;
        q6_scales(pa, pb, &s0, &s1);
        G->dw = dv;
        G->sc0 = _mm512_cvtepi8_epi32(s0);
        G->sc1 = _mm512_cvtepi8_epi32(s1);
    } else {
        const __m512 mv = _mm512_permutexvar_ps(_mm512_setr_epi32(1, 1, 3, 3, 1, 1, 3, 3, 1, 1, 3, 3, 1, 1, 3, 3), f4);
        uint64_t sa, ma, sb = 0, mb = 0;
        k4_scales8(pa + 4, &sa, &ma);
        if (pb) k4_scales8(pb + 4, &sb, &mb);
        const __m128i t = _mm_setr_epi8(T_ORDER);
        const __m128i scb = _mm_shuffle_epi8(_mm_set_epi64x((long long)sb, (long long)sa), t);
        const __m128i mnb = _mm_shuffle_epi8(_mm_set_epi64x((long long)mb, (long long)ma), t);
        G->dw = _mm512_mul_ps(dv, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(scb)));                                      // d * sc, exact
        G->mw = _mm512_xor_ps(_mm512_set1_ps(-0.0f), _mm512_mul_ps(mv, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(mnb))));  // -(dmin * m)
    }
}

// One group of one weight row against one activation row: the block sums, then the two fused multiply-adds.
// nq: the quads present (a constant: 4, or fewer in a row's last group; the others are zero blocks and skipped).
Q8_INLINE Q8_AVX512 __m512 group512(const int type, const grp512 *G, const uint8_t *row, const q8_layout *L, int64_t g,
                                    const int nq, __m512 acc) {
    const uint8_t *a = row + 512 * g;
    __m512i isum;
    if (type == CK_TYPE_Q6_K) {
        __m512i r[8];
        for (int i = 0; i < 8; i++)
            r[i] = i < 2 * nq ? _mm512_dpbusd_epi32(_mm512_setzero_si512(), G->c[i], _mm512_loadu_si512((const void *)(a + 64 * i)))
                              : _mm512_setzero_si512();
        const __m512i lo = _mm512_sub_epi32(red512(r[0], r[2], r[4], r[6]), _mm512_slli_epi32(_mm512_loadu_si512((const void *)(row + L->slo + 64 * g)), 5));
        const __m512i hi = _mm512_sub_epi32(red512(r[1], r[3], r[5], r[7]), _mm512_slli_epi32(_mm512_loadu_si512((const void *)(row + L->shi + 64 * g)), 5));
        isum = _mm512_add_epi32(_mm512_mullo_epi32(lo, G->sc0), _mm512_mullo_epi32(hi, G->sc1));
    } else {
        __m512i r[4];
        for (int q = 0; q < 4; q++)
            r[q] = q < nq ? _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), G->c[2 * q], _mm512_loadu_si512((const void *)(a + 128 * q))),
                                                G->c[2 * q + 1], _mm512_loadu_si512((const void *)(a + 128 * q + 64)))
                          : _mm512_setzero_si512();
        isum = red512(r[0], r[1], r[2], r[3]);
        const int osh = type == CK_TYPE_Q8_0 || type == CK_TYPE_IQ4_NL ? 7 : type == CK_TYPE_Q4_0 ? 3 : type == CK_TYPE_Q5_0 ? 4 : 0;
        if (osh) isum = _mm512_sub_epi32(isum, _mm512_slli_epi32(_mm512_loadu_si512((const void *)(row + L->s32 + 64 * g)), osh));
    }
    const __m512 da = _mm512_loadu_ps((const float *)(row + L->d) + 16 * g);
    acc = _mm512_fmadd_ps(_mm512_mul_ps(G->dw, da), _mm512_cvtepi32_ps(isum), acc);
    if (has_min_t(type)) acc = _mm512_fmadd_ps(G->mw, _mm512_loadu_ps((const float *)(row + L->ds) + 16 * g), acc);
    return acc;
}

// The fixed tree of four accumulators at once, in transposed order (position 4 i + q = lane 4 q + i, so 128-bit
// lane i holds lanes i, i + 4, i + 8, i + 12 in dwords 0-3): the same pairs are added as tree16 adds, so each
// result has the same bits. Lane j + j+8 is dword d + d+2 (two accumulators per step: 64-bit unpacks), j + j+4
// (j < 4) is dword 0 + 1 (four per step: dword shuffles), then 128-bit lanes 0 + 2 and 1 + 3, then 0 + 1.
Q8_INLINE Q8_AVX512 __m128 tree512x4(__m512 a, __m512 b, __m512 c, __m512 d) {
    const __m512 ab = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(a), _mm512_castps_pd(b))),
                                    _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(a), _mm512_castps_pd(b))));
    const __m512 cd = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(c), _mm512_castps_pd(d))),
                                    _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(c), _mm512_castps_pd(d))));
    // ab: [a0+a2, a1+a3, b0+b2, b1+b3] per 128-bit lane; pair dwords 0 + 1 of each.
    const __m512 u = _mm512_add_ps(_mm512_shuffle_ps(ab, cd, _MM_SHUFFLE(2, 0, 2, 0)), _mm512_shuffle_ps(ab, cd, _MM_SHUFFLE(3, 1, 3, 1)));
    const __m512 w = _mm512_add_ps(u, _mm512_shuffle_f32x4(u, u, _MM_SHUFFLE(1, 0, 3, 2)));
    return _mm_add_ps(_mm512_castps512_ps128(w), _mm512_extractf32x4_ps(w, 1));
}

// Rows [0, R) (stride rb) against T <= 4 activation rows.
// TQ (a constant): the quads of the rows' last group when it is partial (K / 32 % 16 blocks), else 0.
Q8_INLINE Q8_AVX512 void rows512(const int type, const int T, const int TQ, const uint8_t *W, size_t rb, int64_t R, int64_t K,
                                 const uint8_t *xq, size_t xs, float *y, int64_t ldy) {
    const q8_layout L = q8_layout_of(K);
    const int64_t ngf = L.nb / 16;
    idx512 X;
    make_idx512(type, &X);
    for (int64_t o0 = 0; o0 < R; o0 += 4) {
        // Four rows, one after the other, then their lane trees together.
        const int rr = R - o0 < 4 ? (int)(R - o0) : 4;
        __m512 acc[4][4];
        for (int r = 0; r < 4; r++)
            for (int t = 0; t < T; t++) acc[r][t] = _mm512_setzero_ps();
        for (int r = 0; r < rr; r++) {
            const uint8_t *w = W + (size_t)(o0 + r) * rb;
            for (int64_t g = 0; g < ngf; g++) {
                grp512 G;
                if (is_kquant(type)) {
                    // The two super-blocks 4 KiB ahead, into L1 (measured on the Qwen2.5 1.5B's Q4_K tensors, 2
                    // threads from DRAM: 12% less time; the 32-element types gain nothing or lose a little).
                    const char *pf = (const char *)(w + (size_t)(2 * g) * block_bytes(type)) + 4096;
                    for (int k = 0; k < 2 * block_bytes(type); k += 64) _mm_prefetch(pf + k, _MM_HINT_T0);
                }
                decode512(type, &X, w, g, L.nb, 4, 0, &G);
                for (int t = 0; t < T; t++) acc[r][t] = group512(type, &G, xq + (size_t)t * xs, &L, g, 4, acc[r][t]);
            }
            if (TQ) {
                grp512 G;
                decode512(type, &X, w, ngf, L.nb, TQ, 1, &G);
                for (int t = 0; t < T; t++) acc[r][t] = group512(type, &G, xq + (size_t)t * xs, &L, ngf, TQ, acc[r][t]);
            }
        }
        for (int t = 0; t < T; t++) {
            const __m128 res = tree512x4(acc[0][t], acc[1][t], acc[2][t], acc[3][t]);
            if (rr == 4) _mm_storeu_ps(y + t * ldy + o0, res);
            else {
                float tmp[4];
                _mm_storeu_ps(tmp, res);
                for (int r = 0; r < rr; r++) y[t * ldy + o0 + r] = tmp[r];
            }
        }
    }
}

typedef void (*rows_fn)(const uint8_t *W, size_t rb, int64_t R, int64_t K, const uint8_t *xq, size_t xs, float *y, int64_t ldy);

// Many tokens: a GEMM micro-kernel on lane-major operands. A block of rows is decoded once into the calling thread's
// scratch with its codes transposed to the lane-major order of the activations' second copy (ck_q8.h): vector
// k = 4 h + m holds in dword p = 4 i + q bytes 16 h + 4 m .. + 3 of the block at position p. Then eight vpdpbusd per
// (row, token, group) leave the 16 exact block sums in the 16 lanes, in transposed order, with no reduction
// shuffles; the offset of unsigned codes is the accumulators' start value, -(sum of activations) << log2(offset).
// Tiles of 4 rows x T tokens keep 4 T integer and 4 T fp32 accumulators in registers; each weight vector is used T
// times, each activation vector 4 times, from L1. The integers are the same exact sums and the fp32 steps the same
// operations on the same operands as group512's, so every (row, token) result has the same bits.
#ifndef GEMM_T
#define GEMM_T 3
#endif
#define GEMM_MIN CK_Q8_LANES_MIN
#ifndef GEMM_SRB
#define GEMM_SRB 8
#endif
#ifndef GEMM_PFB
#define GEMM_PFB 2
#endif
// Q6_K's int32 half scales as fp32 (exact), for tile512.
Q8_INLINE Q8_AVX512 __m512i q6_fscale(__m512i sc) { return _mm512_castps_si512(_mm512_cvtepi32_ps(sc)); }

Q8_INLINE Q8_AVX512 void decode_rows512(const int type, const int TQ, const uint8_t *W, size_t rb, int64_t rr, int64_t K,
                                        grp512 *S) {
    const q8_layout L = q8_layout_of(K);
    const int64_t ngf = L.nb / 16, ng = ngf + (TQ ? 1 : 0);
    idx512 X;
    make_idx512(type, &X);
    for (int64_t r = 0; r < rr; r++) {
        const uint8_t *w = W + (size_t)r * rb;
        grp512 *Sr = S + r * ng;
        for (int64_t g = 0; g < ngf; g++) {
            grp512 G;
            decode512(type, &X, w, g, L.nb, 4, 0, &G);
            lanes512(G.c, Sr[g].c);
            Sr[g].dw = G.dw;
            if (has_min_t(type)) Sr[g].mw = G.mw;
            if (type == CK_TYPE_Q6_K) { Sr[g].sc0 = q6_fscale(G.sc0); Sr[g].sc1 = q6_fscale(G.sc1); }
        }
        if (TQ) {
            grp512 G;
            for (int j = 0; j < 8; j++) G.c[j] = _mm512_setzero_si512();  // quads past the row's end
            decode512(type, &X, w, ngf, L.nb, TQ, 1, &G);
            if (TQ == 1) {  // at most 4 blocks: kept in the quad layout (tile512's short tail)
                Sr[ngf].c[0] = G.c[0];
                Sr[ngf].c[1] = G.c[1];
            } else {
                lanes512(G.c, Sr[ngf].c);
            }
            Sr[ngf].dw = G.dw;
            if (has_min_t(type)) Sr[ngf].mw = G.mw;
            if (type == CK_TYPE_Q6_K) { Sr[ngf].sc0 = q6_fscale(G.sc0); Sr[ngf].sc1 = q6_fscale(G.sc1); }
        }
    }
}

// Rows S[0 .. rr) (each ng decoded groups; rr <= 4, missing rows computed from row 0 and not stored) against T tokens.
// TAIL (a constant): the last group has at most 4 blocks (quad 0 only) and is decoded in the quad layout: two
// vpdpbusd per (row, token) leave block i's four partial sums in 128-bit lane i, and two in-lane folds put its sum
// in dword 0, position 4 i. The other dwords (positions of padding blocks) get copies, which the canonical sequence
// multiplies by dw * da = 0 (padding has da = 0, missing blocks dw = 0): fma(0, finite, acc) leaves acc unchanged
// (acc starts at +0 and an fma from +0 never gives -0), exactly as the canonical isum 0 does.
Q8_INLINE Q8_AVX512 void tile512(const int type, const int T, const int TAIL, const grp512 *S, int64_t ng, int rr, int64_t K,
                                 const uint8_t *xq, size_t xs, float *y, int64_t ldy) {
    const q8_layout L = q8_layout_of(K);
    const grp512 *Sr[4];
    for (int r = 0; r < 4; r++) Sr[r] = S + (r < rr ? r : 0) * ng;
    const int osh = type == CK_TYPE_Q8_0 || type == CK_TYPE_IQ4_NL ? 7 : type == CK_TYPE_Q4_0 ? 3 : type == CK_TYPE_Q5_0 ? 4 : 0;
    __m512 f[4][GEMM_T];
    for (int r = 0; r < 4; r++)
        for (int t = 0; t < T; t++) f[r][t] = _mm512_setzero_ps();
    float fq[4][GEMM_T][16] __attribute__((aligned(64)));
    if (type == CK_TYPE_Q6_K) memset(fq, 0, sizeof fq);
    for (int64_t g = 0; g < ng; g++) {
        const uint8_t *row[GEMM_T], *a[GEMM_T];
        for (int t = 0; t < T; t++) {
            row[t] = xq + (size_t)t * xs;
            a[t] = row[t] + L.ln + 512 * g;
        }
        __m512i isum[4][GEMM_T];
        if (type == CK_TYPE_Q6_K) {
            // isum = sc0 lo + sc1 hi in fp32: |sc| <= 128 and |lo|, |hi| <= 16 x 32 x 127, so both products and
            // their sum are integers below 2^24, exact in fp32: the same value as (float)isum, with two fp32
            // operations instead of two (slow) 32-bit integer multiplies. Twelve fp32 partial sums plus twelve
            // integer accumulators leave no registers for the accumulators f: they stay in memory (fq).
            __m512i acc[4][GEMM_T];
            for (int t = 0; t < T; t++) {
                const __m512i s0 = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32(_mm512_loadu_si512((const void *)(row[t] + L.slo + 64 * g)), 5));
                for (int r = 0; r < 4; r++) acc[r][t] = s0;
            }
            for (int k = 0; k < 4; k++)
                for (int t = 0; t < T; t++) {
                    const __m512i av = _mm512_loadu_si512((const void *)(a[t] + 64 * k));
                    for (int r = 0; r < 4; r++) acc[r][t] = _mm512_dpbusd_epi32(acc[r][t], Sr[r][g].c[k], av);
                }
            __m512 lo[4][GEMM_T];
            for (int r = 0; r < 4; r++)
                for (int t = 0; t < T; t++) lo[r][t] = _mm512_mul_ps(_mm512_castsi512_ps(Sr[r][g].sc0), _mm512_cvtepi32_ps(acc[r][t]));
            for (int t = 0; t < T; t++) {
                const __m512i s1 = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32(_mm512_loadu_si512((const void *)(row[t] + L.shi + 64 * g)), 5));
                for (int r = 0; r < 4; r++) acc[r][t] = s1;
            }
            for (int k = 4; k < 8; k++)
                for (int t = 0; t < T; t++) {
                    const __m512i av = _mm512_loadu_si512((const void *)(a[t] + 64 * k));
                    for (int r = 0; r < 4; r++) acc[r][t] = _mm512_dpbusd_epi32(acc[r][t], Sr[r][g].c[k], av);
                }
            for (int t = 0; t < T; t++) {
                const __m512 da = _mm512_loadu_ps((const float *)(row[t] + L.d) + 16 * g);
                for (int r = 0; r < 4; r++) {
                    const __m512 isf = _mm512_fmadd_ps(_mm512_castsi512_ps(Sr[r][g].sc1), _mm512_cvtepi32_ps(acc[r][t]), lo[r][t]);
                    _mm512_store_ps(fq[r][t], _mm512_fmadd_ps(_mm512_mul_ps(Sr[r][g].dw, da), isf, _mm512_load_ps(fq[r][t])));
                }
            }
            __asm__ volatile("" ::: "memory");  // keep fq in memory
            continue;
        } else {
            for (int t = 0; t < T; t++) {
                const __m512i s = osh ? _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32(_mm512_loadu_si512((const void *)(row[t] + L.s32 + 64 * g)), osh))
                                      : _mm512_setzero_si512();
                for (int r = 0; r < 4; r++) isum[r][t] = s;
            }
            if (TAIL && g == ng - 1) {
                for (int t = 0; t < T; t++) {
                    const __m512i a0 = _mm512_loadu_si512((const void *)(row[t] + 512 * g)), a1 = _mm512_loadu_si512((const void *)(row[t] + 512 * g + 64));
                    for (int r = 0; r < 4; r++) {
                        __m512i v = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(isum[r][t], Sr[r][g].c[0], a0), Sr[r][g].c[1], a1);
                        v = _mm512_add_epi32(v, _mm512_shuffle_epi32(v, (_MM_PERM_ENUM)0x4E));
                        isum[r][t] = _mm512_add_epi32(v, _mm512_shuffle_epi32(v, (_MM_PERM_ENUM)0xB1));
                    }
                }
            } else
            for (int k = 0; k < 8; k++)
                for (int t = 0; t < T; t++) {
                    const __m512i av = _mm512_loadu_si512((const void *)(a[t] + 64 * k));
                    for (int r = 0; r < 4; r++) isum[r][t] = _mm512_dpbusd_epi32(isum[r][t], Sr[r][g].c[k], av);
                }
        }
        for (int t = 0; t < T; t++) {
            const __m512 da = _mm512_loadu_ps((const float *)(row[t] + L.d) + 16 * g);
            for (int r = 0; r < 4; r++) f[r][t] = _mm512_fmadd_ps(_mm512_mul_ps(Sr[r][g].dw, da), _mm512_cvtepi32_ps(isum[r][t]), f[r][t]);
            if (has_min_t(type)) {
                const __m512 ds = _mm512_loadu_ps((const float *)(row[t] + L.ds) + 16 * g);
                for (int r = 0; r < 4; r++) f[r][t] = _mm512_fmadd_ps(Sr[r][g].mw, ds, f[r][t]);
            }
        }
    }
    if (type == CK_TYPE_Q6_K)
        for (int r = 0; r < 4; r++)
            for (int t = 0; t < T; t++) f[r][t] = _mm512_load_ps(fq[r][t]);
    for (int t = 0; t < T; t++) {
        const __m128 res = tree512x4(f[0][t], f[1][t], f[2][t], f[3][t]);
        if (rr == 4) _mm_storeu_ps(y + t * ldy, res);
        else {
            float tmp[4];
            _mm_storeu_ps(tmp, res);
            for (int r = 0; r < rr; r++) y[t * ldy + r] = tmp[r];
        }
    }
}

typedef void (*decode_fn)(const uint8_t *W, size_t rb, int64_t rr, int64_t K, grp512 *S);
typedef void (*tile_fn)(const grp512 *S, int64_t ng, int rr, int64_t K, const uint8_t *xq, size_t xs, float *y, int64_t ldy);
#define DECODE512(TAG, TYPE, TQ) \
    static Q8_AVX512 void dr512_##TAG##_##TQ(const uint8_t *W, size_t rb, int64_t rr, int64_t K, grp512 *S) { \
        decode_rows512(TYPE, TQ, W, rb, rr, K, S); \
    }
#define TILE512(TAG, TYPE, T) \
    static Q8_AVX512 void tl512_##TAG##_##T(const grp512 *S, int64_t ng, int rr, int64_t K, const uint8_t *xq, size_t xs, float *y, int64_t ldy) { \
        tile512(TYPE, T, 0, S, ng, rr, K, xq, xs, y, ldy); \
    } \
    static Q8_AVX512 void tt512_##TAG##_##T(const grp512 *S, int64_t ng, int rr, int64_t K, const uint8_t *xq, size_t xs, float *y, int64_t ldy) { \
        tile512(TYPE, T, 1, S, ng, rr, K, xq, xs, y, ldy); \
    }
#if GEMM_T == 4
#define TILES512(TAG, TYPE) TILE512(TAG, TYPE, 1) TILE512(TAG, TYPE, 2) TILE512(TAG, TYPE, 3) TILE512(TAG, TYPE, 4)
#define TILEFNS(TAG) {tl512_##TAG##_1, tl512_##TAG##_2, tl512_##TAG##_3, tl512_##TAG##_4}, {tt512_##TAG##_1, tt512_##TAG##_2, tt512_##TAG##_3, tt512_##TAG##_4}
#elif GEMM_T == 3
#define TILES512(TAG, TYPE) TILE512(TAG, TYPE, 1) TILE512(TAG, TYPE, 2) TILE512(TAG, TYPE, 3)
#define TILEFNS(TAG) {tl512_##TAG##_1, tl512_##TAG##_2, tl512_##TAG##_3}, {tt512_##TAG##_1, tt512_##TAG##_2, tt512_##TAG##_3}
#else
#define TILES512(TAG, TYPE) TILE512(TAG, TYPE, 1) TILE512(TAG, TYPE, 2)
#define TILEFNS(TAG) {tl512_##TAG##_1, tl512_##TAG##_2}, {tt512_##TAG##_1, tt512_##TAG##_2}
#endif
#define GEMM512_32(TAG, TYPE) DECODE512(TAG, TYPE, 0) DECODE512(TAG, TYPE, 1) DECODE512(TAG, TYPE, 2) DECODE512(TAG, TYPE, 3) \
    DECODE512(TAG, TYPE, 4) TILES512(TAG, TYPE)
#define GEMM512_K(TAG, TYPE) DECODE512(TAG, TYPE, 0) DECODE512(TAG, TYPE, 2) TILES512(TAG, TYPE)
GEMM512_32(q8_0, CK_TYPE_Q8_0)
GEMM512_32(q4_0, CK_TYPE_Q4_0)
GEMM512_32(q4_1, CK_TYPE_Q4_1)
GEMM512_32(q5_0, CK_TYPE_Q5_0)
GEMM512_32(q5_1, CK_TYPE_Q5_1)
GEMM512_32(iq4_nl, CK_TYPE_IQ4_NL)
GEMM512_K(q4_k, CK_TYPE_Q4_K)
GEMM512_K(q5_k, CK_TYPE_Q5_K)
GEMM512_K(q6_k, CK_TYPE_Q6_K)

typedef struct { decode_fn dec[5]; tile_fn tile[GEMM_T], tail[GEMM_T]; } gemm_fns;
#define GFN_32(TAG) {{dr512_##TAG##_0, dr512_##TAG##_1, dr512_##TAG##_2, dr512_##TAG##_3, dr512_##TAG##_4}, TILEFNS(TAG)}
#define GFN_K(TAG) {{dr512_##TAG##_0, NULL, dr512_##TAG##_2, NULL, NULL}, TILEFNS(TAG)}

static const gemm_fns *gemm512(int type) {
    static const gemm_fns q8_0 = GFN_32(q8_0), q4_0 = GFN_32(q4_0), q4_1 = GFN_32(q4_1), q5_0 = GFN_32(q5_0),
                          q5_1 = GFN_32(q5_1), iq4_nl = GFN_32(iq4_nl), q4_k = GFN_K(q4_k), q5_k = GFN_K(q5_k),
                          q6_k = GFN_K(q6_k);
    switch (type) {
    case CK_TYPE_Q8_0: return &q8_0;
    case CK_TYPE_Q4_0: return &q4_0;
    case CK_TYPE_Q4_1: return &q4_1;
    case CK_TYPE_Q5_0: return &q5_0;
    case CK_TYPE_Q5_1: return &q5_1;
    case CK_TYPE_IQ4_NL: return &iq4_nl;
    case CK_TYPE_Q4_K: return &q4_k;
    case CK_TYPE_Q5_K: return &q5_k;
    case CK_TYPE_Q6_K: return &q6_k;
    default: return NULL;
    }
}

// The calling thread's scratch for decoded groups (grown as needed, freed when the thread exits).
static grp512 *grp_scratch(int64_t count) { return (grp512 *)ck_thread_scratch(CK_SCRATCH_GROUPS, (size_t)count * sizeof(grp512)); }

// One function per (type, T, TQ): a frame holds one inlined copy (debug builds keep every copy's locals), and every
// vector index is a constant (runtime-bounded loops over vector arrays put them on the stack).
#define ROWS512(TAG, TYPE, T, TQ) \
    static Q8_AVX512 void r512_##TAG##_##T##_##TQ(const uint8_t *W, size_t rb, int64_t R, int64_t K, const uint8_t *xq, size_t xs, float *y, int64_t ldy) { \
        rows512(TYPE, T, TQ, W, rb, R, K, xq, xs, y, ldy); \
    }
#define ROWS512_TQ(TAG, TYPE, TQ) ROWS512(TAG, TYPE, 1, TQ) ROWS512(TAG, TYPE, 2, TQ) ROWS512(TAG, TYPE, 4, TQ)
#define ROWS512_32(TAG, TYPE) ROWS512_TQ(TAG, TYPE, 0) ROWS512_TQ(TAG, TYPE, 1) ROWS512_TQ(TAG, TYPE, 2) ROWS512_TQ(TAG, TYPE, 3) ROWS512_TQ(TAG, TYPE, 4)
#define ROWS512_K(TAG, TYPE) ROWS512_TQ(TAG, TYPE, 0) ROWS512_TQ(TAG, TYPE, 2)
ROWS512_32(q8_0, CK_TYPE_Q8_0)
ROWS512_32(q4_0, CK_TYPE_Q4_0)
ROWS512_32(q4_1, CK_TYPE_Q4_1)
ROWS512_32(q5_0, CK_TYPE_Q5_0)
ROWS512_32(q5_1, CK_TYPE_Q5_1)
ROWS512_32(iq4_nl, CK_TYPE_IQ4_NL)
ROWS512_K(q4_k, CK_TYPE_Q4_K)
ROWS512_K(q5_k, CK_TYPE_Q5_K)
ROWS512_K(q6_k, CK_TYPE_Q6_K)

#define FNS_T(TAG, P, TQ) {P##_##TAG##_1_##TQ, P##_##TAG##_2_##TQ, NULL, P##_##TAG##_4_##TQ}
#define FNS_32(TAG, P) {FNS_T(TAG, P, 0), FNS_T(TAG, P, 1), FNS_T(TAG, P, 2), FNS_T(TAG, P, 3), FNS_T(TAG, P, 4)}
#define FNS_K(TAG, P) {FNS_T(TAG, P, 0), {NULL}, FNS_T(TAG, P, 2), {NULL}, {NULL}}

// The functions for a type, by [TQ][T - 1].
typedef rows_fn rows_table[5][4];
static const rows_table *fns512(int type) {
    static const rows_table q8_0 = FNS_32(q8_0, r512), q4_0 = FNS_32(q4_0, r512), q4_1 = FNS_32(q4_1, r512),
                            q5_0 = FNS_32(q5_0, r512), q5_1 = FNS_32(q5_1, r512), iq4_nl = FNS_32(iq4_nl, r512),
                            q4_k = FNS_K(q4_k, r512), q5_k = FNS_K(q5_k, r512), q6_k = FNS_K(q6_k, r512);
    switch (type) {
    case CK_TYPE_Q8_0: return &q8_0;
    case CK_TYPE_Q4_0: return &q4_0;
    case CK_TYPE_Q4_1: return &q4_1;
    case CK_TYPE_Q5_0: return &q5_0;
    case CK_TYPE_Q5_1: return &q5_1;
    case CK_TYPE_IQ4_NL: return &iq4_nl;
    case CK_TYPE_Q4_K: return &q4_k;
    case CK_TYPE_Q5_K: return &q5_k;
    case CK_TYPE_Q6_K: return &q6_k;
    default: return NULL;
    }
}

// ---------------------------------------------------------------------------------------------------------------
// AVX2 level: the same groups as ymm pairs. Half h of quad q is two ymm: part 0 (blocks 4 q, 4 q + 1) and part 1
// (4 q + 2, 4 q + 3), one block per 128-bit lane.

// 16 bytes whose byte l is 16 where bit l of m is set.
Q8_INLINE Q8_AVX2 __m128i bits16(uint32_t m) {
    const __m128i sel = _mm_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    const __m128i bit = _mm_set1_epi64x((long long)0x8040201008040201ULL);
    const __m128i v = _mm_and_si128(_mm_shuffle_epi8(_mm_cvtsi32_si128((int)m), sel), bit);
    return _mm_and_si128(_mm_cmpeq_epi8(v, bit), _mm_set1_epi8(16));
}

// The codes of a group: c[4 q + 2 h + part]; unsigned codes, or signed values for Q8_0 / IQ4_NL.
typedef struct { __m256i c[16]; __m256 dw[2], mw[2]; __m256i sc0[2], sc1[2]; } grp256;

// Codes of half h of 32-element block p (NULL: zeros), 16 bytes.
Q8_INLINE Q8_AVX2 __m128i half32_128(const int type, const uint8_t *p, int h) {
    if (!p) return _mm_setzero_si128();
    if (type == CK_TYPE_Q8_0) return _mm_loadu_si128((const __m128i *)(p + 2 + 16 * h));
    const __m128i x = _mm_loadu_si128((const __m128i *)(p + qs_off(type)));
    __m128i c = _mm_and_si128(h ? _mm_srli_epi16(x, 4) : x, _mm_set1_epi8(15));
    if (type == CK_TYPE_Q5_0 || type == CK_TYPE_Q5_1) c = _mm_or_si128(c, bits16(rd32(p + qh_off(type)) >> (16 * h)));
    else if (type == CK_TYPE_IQ4_NL) c = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)q8_iq4nl), c);
    return c;
}

// Codes of half h of K-quant block j of super-block sp, 16 bytes.
Q8_INLINE Q8_AVX2 __m128i halfk_128(const int type, const uint8_t *sp, int j, int h) {
    const __m128i m4 = _mm_set1_epi8(15);
    if (type == CK_TYPE_Q6_K) {
        const int hh = j >> 2, g = j & 3;
        const __m128i ql = _mm_loadu_si128((const __m128i *)(sp + 64 * hh + 32 * (g & 1) + 16 * h));
        const __m128i nib = _mm_and_si128(g >= 2 ? _mm_srli_epi16(ql, 4) : ql, m4);
        const __m128i qh = _mm_loadu_si128((const __m128i *)(sp + 128 + 32 * hh + 16 * h));
        const __m128i hb = g == 0 ? _mm_slli_epi16(qh, 4) : g == 1 ? _mm_slli_epi16(qh, 2) : g == 2 ? qh : _mm_srli_epi16(qh, 2);
        return _mm_or_si128(nib, _mm_and_si128(hb, _mm_set1_epi8(0x30)));
    }
    const __m128i q = _mm_loadu_si128((const __m128i *)(sp + (type == CK_TYPE_Q5_K ? 48 : 16) + 32 * (j >> 1) + 16 * h));
    __m128i c = _mm_and_si128(j & 1 ? _mm_srli_epi16(q, 4) : q, m4);
    if (type == CK_TYPE_Q5_K) {
        const __m128i qh = _mm_loadu_si128((const __m128i *)(sp + 16 + 16 * h));
        const __m128i hb = j <= 4 ? _mm_sll_epi16(qh, _mm_cvtsi32_si128(4 - j)) : _mm_srl_epi16(qh, _mm_cvtsi32_si128(j - 4));
        c = _mm_or_si128(c, _mm_and_si128(hb, _mm_set1_epi8(0x10)));
    }
    return c;
}

Q8_INLINE Q8_AVX2 void decode256(const int type, const uint8_t *w, int64_t g, int64_t nb, grp256 *G) {
    const int bb = block_bytes(type);
    if (!is_kquant(type)) {
        const int64_t b0 = 16 * g;
        const int nbg = nb - b0 < 16 ? (int)(nb - b0) : 16;
        const uint8_t *base = w + (size_t)b0 * bb;
        const uint8_t *p[16];
        for (int j = 0; j < 16; j++) p[j] = j < nbg ? base + (size_t)j * bb : NULL;
        for (int q = 0; q < 4; q++)
            for (int h = 0; h < 2; h++)
                for (int part = 0; part < 2; part++) {
                    const int j = 4 * q + 2 * part;
                    G->c[4 * q + 2 * h + part] = _mm256_set_m128i(half32_128(type, p[j + 1], h), half32_128(type, p[j], h));
                }
        uint16_t dh[16], mh[16];
        for (int pp = 0; pp < 16; pp++) {
            const uint8_t *bp = p[4 * (pp & 3) + (pp >> 2)];
            dh[pp] = bp ? rd16(bp) : 0;
            mh[pp] = bp ? rd16(bp + 2) : 0;
        }
        for (int k = 0; k < 2; k++) {
            G->dw[k] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(dh + 8 * k)));
            if (has_min_t(type)) G->mw[k] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(mh + 8 * k)));
        }
        return;
    }
    const int two = 2 * g + 1 < nb / 8;
    const uint8_t *pa = w + (size_t)(2 * g) * bb, *pb = two ? pa + bb : NULL;
    for (int q = 0; q < 4; q++) {
        const uint8_t *sp = q < 2 ? pa : pb;
        for (int h = 0; h < 2; h++)
            for (int part = 0; part < 2; part++) {
                const int j = 4 * (q & 1) + 2 * part;  // block within the super-block
                G->c[4 * q + 2 * h + part] = sp ? _mm256_set_m128i(halfk_128(type, sp, j + 1, h), halfk_128(type, sp, j, h))
                                                : _mm256_setzero_si256();
            }
    }
    // Factors in transposed order (computed as the AVX-512 level computes them, with 8-lane ops).
    uint64_t sa, ma, sb = 0, mb = 0;
    float dA, dB = 0.0f, mA = 0.0f, mB = 0.0f;
    int8_t s0[16], s1[16];
    uint8_t scb[16], mnb[16];
    static const int8_t lo_idx[16] = {Q6_LO_IDX};
    if (type == CK_TYPE_Q6_K) {
        dA = h2f_f16c(pa + 208);
        if (pb) dB = h2f_f16c(pb + 208);
        for (int pp = 0; pp < 16; pp++) {
            const uint8_t *sp = (pp & 3) >= 2 ? pb : pa;
            s0[pp] = sp ? (int8_t)sp[192 + lo_idx[pp]] : 0;
            s1[pp] = sp ? (int8_t)sp[192 + lo_idx[pp] + 1] : 0;
        }
    } else {
        k4_scales8(pa + 4, &sa, &ma);
        if (pb) k4_scales8(pb + 4, &sb, &mb);
        static const int t_idx[16] = {T_ORDER};
        for (int pp = 0; pp < 16; pp++) {
            const int j = t_idx[pp];
            scb[pp] = (uint8_t)((j < 8 ? sa >> (8 * j) : sb >> (8 * (j - 8))) & 0xFF);
            mnb[pp] = (uint8_t)((j < 8 ? ma >> (8 * j) : mb >> (8 * (j - 8))) & 0xFF);
        }
        dA = h2f_f16c(pa);
        mA = h2f_f16c(pa + 2);
        if (pb) { dB = h2f_f16c(pb); mB = h2f_f16c(pb + 2); }
    }
    for (int k = 0; k < 2; k++) {
        // Positions 8 k .. 8 k + 7; those with p % 4 >= 2 belong to the second super-block.
        const __m256 dv = _mm256_blend_ps(_mm256_set1_ps(dA), _mm256_set1_ps(dB), 0xCC);
        if (type == CK_TYPE_Q6_K) {
            G->dw[k] = dv;
            G->sc0[k] = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(s0 + 8 * k)));
            G->sc1[k] = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(s1 + 8 * k)));
        } else {
            const __m256 mv = _mm256_blend_ps(_mm256_set1_ps(mA), _mm256_set1_ps(mB), 0xCC);
            G->dw[k] = _mm256_mul_ps(dv, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(scb + 8 * k)))));
            G->mw[k] = _mm256_xor_ps(_mm256_set1_ps(-0.0f), _mm256_mul_ps(mv, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(mnb + 8 * k))))));
        }
    }
}

// int32 sums of one ymm of codes (two blocks' halves) with activations: 4 lanes per 128-bit lane.
Q8_INLINE Q8_AVX2 __m256i dot256(const int sign, __m256i c, __m256i a) {
    const __m256i p = sign ? _mm256_maddubs_epi16(_mm256_sign_epi8(c, c), _mm256_sign_epi8(a, c)) : _mm256_maddubs_epi16(c, a);
    return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
}

// Eight vectors v[part][q] (4 int32 lanes per block) to the block sums in transposed order: positions 0-7 from
// part 0 (blocks 4q, 4q + 1), 8-15 from part 1.
Q8_INLINE Q8_AVX2 __m256i red256(__m256i v0, __m256i v1, __m256i v2, __m256i v3) {
    return _mm256_hadd_epi32(_mm256_hadd_epi32(v0, v1), _mm256_hadd_epi32(v2, v3));
}

Q8_INLINE Q8_AVX2 void group256(const int type, const grp256 *G, const uint8_t *row, const q8_layout *L, int64_t g,
                                __m256 acc[2]) {
    const uint8_t *a = row + 512 * g;
    const int sign = type == CK_TYPE_Q8_0 || type == CK_TYPE_IQ4_NL;
    __m256i isum[2];
    if (type == CK_TYPE_Q6_K) {
        for (int part = 0; part < 2; part++) {
            __m256i v[2][4];
            for (int q = 0; q < 4; q++)
                for (int h = 0; h < 2; h++)
                    v[h][q] = dot256(0, G->c[4 * q + 2 * h + part], _mm256_loadu_si256((const __m256i *)(a + 128 * q + 64 * h + 32 * part)));
            const __m256i slo = _mm256_loadu_si256((const __m256i *)(row + L->slo + 64 * g + 32 * part));
            const __m256i shi = _mm256_loadu_si256((const __m256i *)(row + L->shi + 64 * g + 32 * part));
            const __m256i lo = _mm256_sub_epi32(red256(v[0][0], v[0][1], v[0][2], v[0][3]), _mm256_slli_epi32(slo, 5));
            const __m256i hi = _mm256_sub_epi32(red256(v[1][0], v[1][1], v[1][2], v[1][3]), _mm256_slli_epi32(shi, 5));
            isum[part] = _mm256_add_epi32(_mm256_mullo_epi32(lo, G->sc0[part]), _mm256_mullo_epi32(hi, G->sc1[part]));
        }
    } else {
        const int osh = type == CK_TYPE_Q4_0 ? 3 : type == CK_TYPE_Q5_0 ? 4 : 0;
        for (int part = 0; part < 2; part++) {
            __m256i v[4];
            for (int q = 0; q < 4; q++)
                v[q] = _mm256_add_epi32(dot256(sign, G->c[4 * q + part], _mm256_loadu_si256((const __m256i *)(a + 128 * q + 32 * part))),
                                        dot256(sign, G->c[4 * q + 2 + part], _mm256_loadu_si256((const __m256i *)(a + 128 * q + 64 + 32 * part))));
            isum[part] = red256(v[0], v[1], v[2], v[3]);
            if (osh) isum[part] = _mm256_sub_epi32(isum[part], _mm256_slli_epi32(_mm256_loadu_si256((const __m256i *)(row + L->s32 + 64 * g + 32 * part)), osh));
        }
    }
    for (int part = 0; part < 2; part++) {
        const __m256 da = _mm256_loadu_ps((const float *)(row + L->d) + 16 * g + 8 * part);
        acc[part] = _mm256_fmadd_ps(_mm256_mul_ps(G->dw[part], da), _mm256_cvtepi32_ps(isum[part]), acc[part]);
        if (has_min_t(type)) acc[part] = _mm256_fmadd_ps(G->mw[part], _mm256_loadu_ps((const float *)(row + L->ds) + 16 * g + 8 * part), acc[part]);
    }
}

Q8_INLINE Q8_AVX2 void rows256(const int type, const int T, const uint8_t *W, size_t rb, int64_t R, int64_t K,
                               const uint8_t *xq, size_t xs, float *y, int64_t ldy) {
    const q8_layout L = q8_layout_of(K);
    const int64_t ng = L.npb / 16;
    for (int64_t o = 0; o < R; o++) {
        const uint8_t *w = W + (size_t)o * rb;
        __m256 acc[4][2];
        for (int t = 0; t < T; t++) acc[t][0] = acc[t][1] = _mm256_setzero_ps();
        for (int64_t g = 0; g < ng; g++) {
            grp256 G;
            decode256(type, w, g, L.nb, &G);
            for (int t = 0; t < T; t++) group256(type, &G, xq + (size_t)t * xs, &L, g, acc[t]);
        }
        for (int t = 0; t < T; t++) {
            float tl[16], nat[16];
            _mm256_storeu_ps(tl, acc[t][0]);
            _mm256_storeu_ps(tl + 8, acc[t][1]);
            for (int j = 0; j < 16; j++) nat[j] = tl[4 * (j & 3) + (j >> 2)];
            y[t * ldy + o] = tree16(nat);
        }
    }
}

#define ROWS256(NAME, TYPE, T) \
    static Q8_AVX2 void NAME(const uint8_t *W, size_t rb, int64_t R, int64_t K, const uint8_t *xq, size_t xs, float *y, int64_t ldy) { \
        rows256(TYPE, T, W, rb, R, K, xq, xs, y, ldy); \
    }
#define ROWS256_TYPE(TAG, TYPE) ROWS256(r256_##TAG##_1, TYPE, 1) ROWS256(r256_##TAG##_2, TYPE, 2) \
    ROWS256(r256_##TAG##_3, TYPE, 3) ROWS256(r256_##TAG##_4, TYPE, 4)
ROWS256_TYPE(q8_0, CK_TYPE_Q8_0)
ROWS256_TYPE(q4_0, CK_TYPE_Q4_0)
ROWS256_TYPE(q4_1, CK_TYPE_Q4_1)
ROWS256_TYPE(q5_0, CK_TYPE_Q5_0)
ROWS256_TYPE(q5_1, CK_TYPE_Q5_1)
ROWS256_TYPE(iq4_nl, CK_TYPE_IQ4_NL)
ROWS256_TYPE(q4_k, CK_TYPE_Q4_K)
ROWS256_TYPE(q5_k, CK_TYPE_Q5_K)
ROWS256_TYPE(q6_k, CK_TYPE_Q6_K)

// Many tokens (n >= 3): a block of rows is decoded once into the calling thread's scratch (grp256, the same 768
// bytes per group as grp512), then every tile of 4 tokens (the last 1-3 one by one) runs against each decoded row:
// the same group256 arithmetic as rows256, without decoding the row again for every tile.
Q8_INLINE Q8_AVX2 void rowsn256(const int type, const uint8_t *W, size_t rb, int64_t R, int64_t K, const uint8_t *xq,
                                size_t xs, int64_t n, float *y, int64_t ldy, grp256 *S, int64_t RB) {
    const q8_layout L = q8_layout_of(K);
    const int64_t ng = L.npb / 16;
    for (int64_t o0 = 0; o0 < R; o0 += RB) {
        const int64_t rr = R - o0 < RB ? R - o0 : RB;
        for (int64_t r = 0; r < rr; r++)
            for (int64_t g = 0; g < ng; g++) decode256(type, W + (size_t)(o0 + r) * rb, g, L.nb, &S[r * ng + g]);
        for (int64_t t0 = 0; t0 < n;) {
            const int T = n - t0 >= 4 ? 4 : 1;
            for (int64_t r = 0; r < rr; r++) {
                __m256 acc[4][2];
                for (int t = 0; t < 4; t++) acc[t][0] = acc[t][1] = _mm256_setzero_ps();
                if (T == 4) {
                    for (int64_t g = 0; g < ng; g++)
                        for (int t = 0; t < 4; t++) group256(type, &S[r * ng + g], xq + (size_t)(t0 + t) * xs, &L, g, acc[t]);
                } else {
                    for (int64_t g = 0; g < ng; g++) group256(type, &S[r * ng + g], xq + (size_t)t0 * xs, &L, g, acc[0]);
                }
                for (int t = 0; t < T; t++) {
                    float tl[16], nat[16];
                    _mm256_storeu_ps(tl, acc[t][0]);
                    _mm256_storeu_ps(tl + 8, acc[t][1]);
                    for (int j = 0; j < 16; j++) nat[j] = tl[4 * (j & 3) + (j >> 2)];
                    y[(t0 + t) * ldy + o0 + r] = tree16(nat);
                }
            }
            t0 += T;
        }
    }
}

typedef void (*rowsn256_fn)(const uint8_t *W, size_t rb, int64_t R, int64_t K, const uint8_t *xq, size_t xs, int64_t n,
                            float *y, int64_t ldy, grp256 *S, int64_t RB);
#define ROWSN256(TAG, TYPE) \
    static Q8_AVX2 void rn256_##TAG(const uint8_t *W, size_t rb, int64_t R, int64_t K, const uint8_t *xq, size_t xs, int64_t n, \
                                    float *y, int64_t ldy, grp256 *S, int64_t RB) { \
        rowsn256(TYPE, W, rb, R, K, xq, xs, n, y, ldy, S, RB); \
    }
ROWSN256(q8_0, CK_TYPE_Q8_0)
ROWSN256(q4_0, CK_TYPE_Q4_0)
ROWSN256(q4_1, CK_TYPE_Q4_1)
ROWSN256(q5_0, CK_TYPE_Q5_0)
ROWSN256(q5_1, CK_TYPE_Q5_1)
ROWSN256(iq4_nl, CK_TYPE_IQ4_NL)
ROWSN256(q4_k, CK_TYPE_Q4_K)
ROWSN256(q5_k, CK_TYPE_Q5_K)
ROWSN256(q6_k, CK_TYPE_Q6_K)

static rowsn256_fn fnsn256(int type) {
    switch (type) {
    case CK_TYPE_Q8_0: return rn256_q8_0;
    case CK_TYPE_Q4_0: return rn256_q4_0;
    case CK_TYPE_Q4_1: return rn256_q4_1;
    case CK_TYPE_Q5_0: return rn256_q5_0;
    case CK_TYPE_Q5_1: return rn256_q5_1;
    case CK_TYPE_IQ4_NL: return rn256_iq4_nl;
    case CK_TYPE_Q4_K: return rn256_q4_k;
    case CK_TYPE_Q5_K: return rn256_q5_k;
    case CK_TYPE_Q6_K: return rn256_q6_k;
    default: return NULL;
    }
}

#define FNS(TAG, P) {P##_##TAG##_1, P##_##TAG##_2, P##_##TAG##_3, P##_##TAG##_4}

static const rows_fn *fns256(int type) {
    static const rows_fn q8_0[4] = FNS(q8_0, r256), q4_0[4] = FNS(q4_0, r256), q4_1[4] = FNS(q4_1, r256),
                         q5_0[4] = FNS(q5_0, r256), q5_1[4] = FNS(q5_1, r256), iq4_nl[4] = FNS(iq4_nl, r256),
                         q4_k[4] = FNS(q4_k, r256), q5_k[4] = FNS(q5_k, r256), q6_k[4] = FNS(q6_k, r256);
    switch (type) {
    case CK_TYPE_Q8_0: return q8_0;
    case CK_TYPE_Q4_0: return q4_0;
    case CK_TYPE_Q4_1: return q4_1;
    case CK_TYPE_Q5_0: return q5_0;
    case CK_TYPE_Q5_1: return q5_1;
    case CK_TYPE_IQ4_NL: return iq4_nl;
    case CK_TYPE_Q4_K: return q4_k;
    case CK_TYPE_Q5_K: return q5_k;
    case CK_TYPE_Q6_K: return q6_k;
    default: return NULL;
    }
}
#endif  // Q8_X86

// ---------------------------------------------------------------------------------------------------------------
// Driver

int ck_matmul_q8(int type, const void *W, int64_t K, int64_t row_begin, int64_t row_end, const void *xq, int64_t n,
                 float *y, int64_t ldy) {
    const size_t rb = ck_row_bytes(type, K);
    if (!ck_q8_supports(type) || rb == 0 || K % 32 != 0) return -1;
    if (n <= 0 || row_end <= row_begin) return 0;
    const size_t xs = ck_q8_row_bytes(K);
    const uint8_t *Wb = (const uint8_t *)W + (size_t)row_begin * rb, *X = (const uint8_t *)xq;
    const int64_t R = row_end - row_begin;
    y += row_begin;
    const int level = ck_q8_isa();
#if Q8_X86
    if (level != CK_ISA_SCALAR) {
        const int tq = (int)((K / 32 % 16 + 3) / 4);
        if (level == CK_ISA_AVX512 && n >= GEMM_MIN) {
            // Rows in blocks whose decoded groups (768 bytes per 512 weights) take about 192 KiB of the core's L2;
            // with few tokens (their quantized rows within 256 KiB), blocks of 8 rows. While a block's tiles run, the
            // weights of the block GEMM_PFB blocks ahead are prefetched into L2, a slice after each tile, so that
            // decoding does not wait on DRAM (on the Qwen2.5 0.5B's tensors at n = 16, one thread: 15-25% less time).
            const int64_t ng = (K / 32 + 15) / 16;
            int64_t RB = (192 << 10) / (ng * (int64_t)sizeof(grp512)) / 4 * 4;
            RB = RB < 4 ? 4 : RB > 64 ? 64 : RB;
            const int small = (size_t)n * xs <= (256u << 10);
            if (small) RB = GEMM_SRB;
            grp512 *S = grp_scratch(RB * ng);
            if (S) {
                const gemm_fns *F = gemm512(type);
                const tile_fn *tf = tq == 1 ? F->tail : F->tile;
                // Token tiles: GEMM_T tokens each, but never a 1-token tile when n > 1 (two of 2 instead).
                const int64_t tiles_t = n % GEMM_T == 1 && n > GEMM_T ? n / GEMM_T + 1 : (n + GEMM_T - 1) / GEMM_T;
                const size_t pfb = (size_t)RB * rb;  // bytes of a block of rows
                for (int64_t o0 = 0; o0 < R; o0 += RB) {
                    const int64_t rr = R - o0 < RB ? R - o0 : RB;
                    F->dec[tq](Wb + (size_t)o0 * rb, rb, rr, K, S);
                    // Prefetching past the range (or the matrix) is harmless: prefetches never fault.
                    const char *pf = (const char *)(Wb + (size_t)o0 * rb + (small ? GEMM_PFB : 1) * pfb);
                    const int64_t ntile = tiles_t * ((rr + 3) / 4);
                    int64_t done = 0, k = 0;
                    for (int64_t t0 = 0; t0 < n;) {
                        int T = n - t0 < GEMM_T ? (int)(n - t0) : GEMM_T;
                        if (n - t0 == GEMM_T + 1 && GEMM_T == 3) T = 2;
                        for (int64_t r0 = 0; r0 < rr; r0 += 4) {
                            tf[T - 1](S + r0 * ng, ng, rr - r0 < 4 ? (int)(rr - r0) : 4, K, X + (size_t)t0 * xs, xs, y + t0 * ldy + o0 + r0, ldy);
                            const size_t upto = pfb * (size_t)++k / (size_t)ntile;
                            for (; (size_t)done < upto; done += 64) _mm_prefetch(pf + done, _MM_HINT_T1);
                        }
                        t0 += T;
                    }
                }
                return 0;
            }
        }
        if (level == CK_ISA_AVX2 && n >= GEMM_MIN) {
            const int64_t ng = (K / 32 + 15) / 16;
            int64_t RB = (192 << 10) / (ng * (int64_t)sizeof(grp256));
            RB = RB < 1 ? 1 : RB > 64 ? 64 : RB;
            grp256 *S = (grp256 *)grp_scratch((RB * ng * (int64_t)sizeof(grp256) + (int64_t)sizeof(grp512) - 1) / (int64_t)sizeof(grp512));
            if (S) {
                fnsn256(type)(Wb, rb, R, K, X, xs, n, y, ldy, S, RB);
                return 0;
            }
        }
        const rows_fn *f = level == CK_ISA_AVX512 ? (*fns512(type))[tq] : fns256(type);
        // Blocks of 16 rows stay in the core's cache while every tile of up to 4 tokens passes over them.
        const int64_t RB = n <= 4 ? R : 16;
        for (int64_t o0 = 0; o0 < R; o0 += RB) {
            const int64_t rr = R - o0 < RB ? R - o0 : RB;
            for (int64_t t0 = 0; t0 < n;) {
                const int T = n - t0 >= 4 ? 4 : n - t0 >= 2 ? 2 : 1;  // the AVX-512 level has no 3-token kernel
                f[T - 1](Wb + (size_t)o0 * rb, rb, rr, K, X + (size_t)t0 * xs, xs, y + t0 * ldy + o0, ldy);
                t0 += T;
            }
        }
        return 0;
    }
#endif
    (void)level;
    for (int64_t o = 0; o < R; o++) row_scalar(type, Wb + (size_t)o * rb, K, X, xs, n, y + o, ldy);
    return 0;
}
