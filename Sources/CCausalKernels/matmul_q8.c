// Int8-activation matrix multiplication (opt-in beside ck_matmul's fp32 activations). Header: ck_q8.h, which
// defines the quantized activation row and the canonical operation sequence every level performs.
//
// Why it is exact across levels: within a 32-element block every integer sum is exact (|isum| < 2^24, so its
// conversion to fp32 is exact too), and the only rounding steps — S = dw * da, M = mw * da and the two fused
// multiply-adds into lane b % 16 of a 16-lane accumulator — are single IEEE operations on the same operands in the
// same order on every level. How a level forms the integer (vpdpbusd, maddubs + madd, plain C, offsets folded in
// through the activation sums, lane order of the partial sums) cannot change it.
//
//   scalar      row_scalar: the sequence written out block by block.
//   AVX2        a chunk of 8 blocks at a time: one ymm of codes per block, maddubs + madd into 8 int32 lanes per
//               block, a hadd tree to 8 block sums, then 8 lanes of the accumulator (lanes 0-7 for even chunks,
//               8-15 for odd ones).
//   AVX-512     a group of 16 blocks at a time (VNNI): one zmm per pair of blocks (j, j + 4) of a chunk (the
//               activation layout stores those pairs side by side), vpdpbusd into 16 int32 lanes, an in-lane
//               transpose-and-add tree to the 16 block sums in block order, then all 16 accumulator lanes.
// Unsigned x signed products: the weight codes are made unsigned with an offset (Q8_0, IQ4_NL: + 128; Q4_0: 8,
// Q5_0: 16, Q6_K: 32 are the stored codes) whose contribution, offset x (sum of the activations), is subtracted
// with the block (or half-block) sums stored beside the activations. AVX2 multiplies Q8_0 / IQ4_NL's signed values
// with the sign trick instead (|w| x sign(a, w)); either way the same integer. maddubs cannot saturate: its pairs
// are at most 2 x 128 x 127 (signed types, sign trick) or 2 x 63 x 127 (unsigned codes).
#include "CCausalKernels.h"
#include "ck_q8.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__)
#define Q8_X86 1
#include <immintrin.h>
#define Q8_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")))
#define Q8_AVX2 __attribute__((target("avx2,fma,f16c")))
#else
#define Q8_X86 0
#endif

#define Q8_INLINE static inline __attribute__((always_inline))

// ---------------------------------------------------------------------------------------------------------------
// Helpers

static inline uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline float f_of_bits(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline uint32_t bits_of_f(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

static const int8_t q8_iq4nl[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

// Slot of block j (0..7) within its chunk of the activation codes: pairs (j, j + 4) side by side.
static const int q8_slot[8] = {0, 2, 4, 6, 1, 3, 5, 7};

// Position of 16-element group g (0..15) of a chunk in its 16 half sums (see ck_q8.h).
static inline int s16_pos(int g) { return g < 8 ? 4 * (g & 1) + (g >> 1) : 4 * (2 + (g & 1)) + ((g - 8) >> 1); }

typedef struct { int64_t nb, npb; size_t d, s32, s16, bytes; } q8_layout;

static q8_layout q8_layout_of(int64_t K) {
    q8_layout L;
    L.nb = K / 32;
    L.npb = (L.nb + 15) / 16 * 16;
    L.d = (size_t)L.npb * 32;
    L.s32 = L.d + (size_t)L.npb * 4;
    L.s16 = L.s32 + (size_t)L.npb * 4;
    L.bytes = L.s16 + (size_t)L.npb * 8;
    return L;
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
    v = __builtin_cpu_supports("avx512vnni") ? 1 : 0;
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

static void qblock_scalar(const float *x, int8_t *q, float *d, int32_t *s32, int32_t *sa, int32_t *sb) {
    uint32_t mb = 0;
    for (int i = 0; i < 32; i++) {
        const uint32_t a = bits_of_f(x[i]) & 0x7FFFFFFFu;
        if (a > mb) mb = a;
    }
    float id;
    if (block_scale(mb, d, &id) != 0) {
        memset(q, 0, 32);
        *s32 = *sa = *sb = 0;
        return;
    }
    int32_t h0 = 0, h1 = 0;
    for (int i = 0; i < 32; i++) {
        const int v = rne(x[i] * id);
        q[i] = (int8_t)v;
        if (i < 16) h0 += v; else h1 += v;
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
static Q8_AVX2 void qblock_avx2(const float *x, int8_t *q, float *d, int32_t *s32, int32_t *sa, int32_t *sb) {
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
        memset(q, 0, 32);
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
    _mm256_storeu_si256((__m256i *)q, p8);
    const int32_t h0 = hsum8_epi32(_mm256_add_epi32(qi[0], qi[1])), h1 = hsum8_epi32(_mm256_add_epi32(qi[2], qi[3]));
    *sa = h0;
    *sb = h1;
    *s32 = h0 + h1;
}
#endif

void ck_quantize_activations_q8(const float *x, int64_t K, void *out) {
    if (K <= 0 || K % 32 != 0) return;
    const q8_layout L = q8_layout_of(K);
    uint8_t *o = (uint8_t *)out;
    int8_t *qs = (int8_t *)o;
    float *d = (float *)(o + L.d);
    int32_t *s32 = (int32_t *)(o + L.s32), *s16 = (int32_t *)(o + L.s16);
#if Q8_X86
    const int simd = ck_q8_isa() >= CK_ISA_AVX2;
#endif
    for (int64_t b = 0; b < L.npb; b++) {
        const int64_t c = b >> 3;
        const int j = (int)(b & 7);
        int8_t *q = qs + 32 * (8 * c + q8_slot[j]);
        int32_t *sa = s16 + 16 * c + s16_pos(2 * j), *sb = s16 + 16 * c + s16_pos(2 * j + 1);
        if (b >= L.nb) {
            memset(q, 0, 32);
            d[b] = 0.0f;
            s32[b] = *sa = *sb = 0;
            continue;
        }
#if Q8_X86
        if (simd) { qblock_avx2(x + 32 * b, q, d + b, s32 + b, sa, sb); continue; }
#endif
        qblock_scalar(x + 32 * b, q, d + b, s32 + b, sa, sb);
    }
}

void ck_quantize_activations_q8_rows(const float *x, int64_t ldx, int64_t n, int64_t K, void *out) {
    const size_t rb = ck_q8_row_bytes(K);
    if (rb == 0) return;
    for (int64_t t = 0; t < n; t++) ck_quantize_activations_q8(x + t * ldx, K, (uint8_t *)out + (size_t)t * rb);
}

// ---------------------------------------------------------------------------------------------------------------
// Weight blocks, portable: the integer codes q (offsets applied), the half scales sc0/sc1, the min coefficient
// mc and the fp32 factors dw, mw of block b of a row (ck_q8.h's table). Returns 1 for types with a min.

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

static int wblock(int type, const uint8_t *w, int64_t b, int q[32], int sc[2], int *mc, float *dw, float *mw) {
    sc[0] = sc[1] = 1;
    *mc = 0;
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
        *mc = 1;
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
        if (one) { *mw = h2f(p + 2); *mc = 1; }
        return one;
    }
    case CK_TYPE_Q4_K:
    case CK_TYPE_Q5_K: {
        const int five = type == CK_TYPE_Q5_K;
        const int j = (int)(b & 7);
        const uint8_t *p = w + (five ? 176 : 144) * (b >> 3);
        *dw = h2f(p);
        *mw = -h2f(p + 2);
        int s, m;
        k4_sm(p + 4, j, &s, &m);
        sc[0] = sc[1] = s;
        *mc = m;
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
            int q[32], sc[2], mc;
            float dw, mw;
            const int has_min = wblock(type, w, b, q, sc, &mc, &dw, &mw);
            const int64_t slot = 8 * (b >> 3) + q8_slot[b & 7];
            for (int t = 0; t < T; t++) {
                const uint8_t *row = xq + (size_t)(t0 + t) * xs;
                const int8_t *a = (const int8_t *)row + 32 * slot;
                const float da = ((const float *)(row + L.d))[b];
                int32_t lo = 0, hi = 0, as = 0;
                for (int i = 0; i < 16; i++) lo += q[i] * a[i];
                for (int i = 16; i < 32; i++) hi += q[i] * a[i];
                for (int i = 0; i < 32; i++) as += a[i];
                const int32_t isum = sc[0] * lo + sc[1] * hi;
                float *ac = &acc[t][b & 15];
                *ac = fmaf(dw * da, (float)isum, *ac);
                if (has_min) *ac = fmaf(mw * da, (float)(mc * as), *ac);
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

// log2 of the offset subtracted through the block sums on the AVX-512 level (0: none).
static inline int offset_shift512(int type) {
    switch (type) {
    case CK_TYPE_Q8_0: case CK_TYPE_IQ4_NL: return 7;
    case CK_TYPE_Q4_0: return 3;
    case CK_TYPE_Q5_0: return 4;
    default: return 0;
    }
}

// The 8 scales and 8 mins of a Q4_K / Q5_K super-block as bytes (sub-block j in byte j).
static inline void k4_scales8(const uint8_t *s, uint64_t *sc, uint64_t *mn) {
    const uint32_t s0 = rd32(s), s1 = rd32(s + 4), s2 = rd32(s + 8);
    const uint32_t sc_lo = s0 & 0x3F3F3F3Fu, m_lo = s1 & 0x3F3F3F3Fu;
    const uint32_t sc_hi = (s2 & 0x0F0F0F0Fu) | ((s0 >> 2) & 0x30303030u);
    const uint32_t m_hi = ((s2 >> 4) & 0x0F0F0F0Fu) | ((s1 >> 2) & 0x30303030u);
    *sc = sc_lo | (uint64_t)sc_hi << 32;
    *mn = m_lo | (uint64_t)m_hi << 32;
}

Q8_INLINE Q8_AVX2 float h2f_f16c(const uint8_t *p) {
    return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(rd16(p))));
}

// ---------------------------------------------------------------------------------------------------------------
// AVX-512 (VNNI) level

// Q6_K's 16 scales in the order of the half sums (ck_q8.h's s16 order).
#define Q6_ORDER 0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15

Q8_INLINE Q8_AVX512 __m512i pair512(__m256i lo, __m256i hi) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}
Q8_INLINE Q8_AVX512 __m256i ld256(const uint8_t *p) { return _mm256_loadu_si256((const __m256i *)p); }

// Four vectors of 16 int32 partial sums (vector e: blocks e and e + 4 of a chunk, 8 lanes each) to one vector
// whose lane 4 L + e is the sum of vector e's 128-bit lane L (16 elements: L = 0, 1 block e, L = 2, 3 block e + 4).
Q8_INLINE Q8_AVX512 __m512i red4(__m512i a, __m512i b, __m512i c, __m512i d) {
    const __m512i ab = _mm512_add_epi32(_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b));
    const __m512i cd = _mm512_add_epi32(_mm512_unpacklo_epi32(c, d), _mm512_unpackhi_epi32(c, d));
    return _mm512_add_epi32(_mm512_unpacklo_epi64(ab, cd), _mm512_unpackhi_epi64(ab, cd));
}
// Two red4 results (chunks 0 and 1 of a group) to the 16 block sums in block order.
Q8_INLINE Q8_AVX512 __m512i red_final(__m512i t0, __m512i t1) {
    return _mm512_add_epi32(_mm512_shuffle_i32x4(t0, t1, _MM_SHUFFLE(2, 0, 2, 0)),
                            _mm512_shuffle_i32x4(t0, t1, _MM_SHUFFLE(3, 1, 3, 1)));
}

Q8_INLINE Q8_AVX512 float tree512(__m512 v) {
    const __m256 a = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    const __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    const __m128 c = _mm_add_ps(b, _mm_movehl_ps(b, b));
    return _mm_cvtss_f32(_mm_add_ss(c, _mm_movehdup_ps(c)));
}

// Codes of a pair of 32-element blocks (pa: lower 256 bits; pb: upper, or NULL for zeros), unsigned, offset form.
Q8_INLINE Q8_AVX512 __m512i codes32_512(const int type, const uint8_t *pa, const uint8_t *pb) {
    if (type == CK_TYPE_Q8_0) {
        const __m512i z = pair512(ld256(pa + 2), pb ? ld256(pb + 2) : _mm256_setzero_si256());
        return _mm512_xor_si512(z, _mm512_set1_epi8((char)0x80));
    }
    const int qo = type == CK_TYPE_Q4_1 ? 4 : type == CK_TYPE_Q5_0 ? 6 : type == CK_TYPE_Q5_1 ? 8 : 2;
    const __m256i a = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(pa + qo)));
    const __m256i b = pb ? _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(pb + qo))) : _mm256_setzero_si256();
    // 16-bit shift counts per 128-bit lane: 0 (elements 0-15, low nibbles), 4 (elements 16-31), 0, 4.
    const int S = 0x00040004;
    const __m512i sh = _mm512_setr_epi32(0, 0, 0, 0, S, S, S, S, 0, 0, 0, 0, S, S, S, S);
    __m512i c = _mm512_and_si512(_mm512_srlv_epi16(pair512(a, b), sh), _mm512_set1_epi8(15));
    if (type == CK_TYPE_Q5_0 || type == CK_TYPE_Q5_1) {
        const int ho = type == CK_TYPE_Q5_1 ? 4 : 2;
        const uint64_t k = (uint64_t)rd32(pa + ho) | (pb ? (uint64_t)rd32(pb + ho) << 32 : 0);
        c = _mm512_mask_add_epi8(c, _cvtu64_mask64(k), c, _mm512_set1_epi8(16));
    } else if (type == CK_TYPE_IQ4_NL) {
        const __m512i tab = _mm512_broadcast_i32x4(_mm_setr_epi8(1, 24, 45, 63, 79, 93, 106, 118, (char)129, (char)141,
                                                                 (char)153, (char)166, (char)181, (char)197, (char)217, (char)241));
        c = _mm512_shuffle_epi8(tab, c);  // kvalues + 128
    }
    return c;
}

// One weight row against T <= 4 activation rows.
Q8_INLINE Q8_AVX512 void row512(const int type, const int T, const uint8_t *w, int64_t K, const uint8_t *xq,
                                size_t xs, float *y, int64_t ldy) {
    const q8_layout L = q8_layout_of(K);
    const int64_t nb = L.nb, ng = L.npb / 16;
    const int bb = block_bytes(type);
    const int kq = is_kquant(type);
    const int has_min = type == CK_TYPE_Q4_1 || type == CK_TYPE_Q5_1 || type == CK_TYPE_Q4_K || type == CK_TYPE_Q5_K;
    const int osh = offset_shift512(type);
    const __m512i m4 = _mm512_set1_epi8(15);
    __m512 acc[4];
    for (int t = 0; t < T; t++) acc[t] = _mm512_setzero_ps();

    for (int64_t g = 0; g < ng; g++) {
        __m512i c[8];
        __m512 dv, mv = _mm512_setzero_ps();
        __m512i scv = _mm512_setzero_si512(), mcv = _mm512_setzero_si512(), scA = scv, scB = scv;
        const int64_t b0 = 16 * g;
        if (!kq) {
            const int nbg = nb - b0 < 16 ? (int)(nb - b0) : 16;
            const uint8_t *base = w + (size_t)b0 * bb;
            for (int h = 0; h < 2; h++)
                for (int p = 0; p < 4; p++) {
                    const int ja = 8 * h + p, jb = ja + 4;
                    c[4 * h + p] = ja < nbg ? codes32_512(type, base + (size_t)ja * bb, jb < nbg ? base + (size_t)jb * bb : NULL)
                                            : _mm512_setzero_si512();
                }
            const __m512i idx = _mm512_mullo_epi32(_mm512_set1_epi32(bb), _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
            const __mmask16 km = nbg == 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << nbg) - 1u);
            const __m512i hv = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), km, idx, base, 1);
            dv = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(hv));
            if (has_min) mv = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(hv, 16)));
        } else {
            const int two = 2 * g + 1 < nb / 8;  // second super-block present
            const uint8_t *pa = w + (size_t)(2 * g) * bb, *pb = two ? pa + bb : NULL;
            float dA = 0.0f, dB = 0.0f, mA = 0.0f, mB = 0.0f;
            for (int h = 0; h < 2; h++) {
                const uint8_t *p = h ? pb : pa;
                __m512i *cc = c + 4 * h;
                if (!p) { cc[0] = cc[1] = cc[2] = cc[3] = _mm512_setzero_si512(); continue; }
                if (type == CK_TYPE_Q6_K) {
                    const __m512i za = pair512(ld256(p), ld256(p + 64)), zb = pair512(ld256(p + 32), ld256(p + 96));
                    const __m512i zh = pair512(ld256(p + 128), ld256(p + 160)), m30 = _mm512_set1_epi8(0x30);
                    cc[0] = _mm512_or_si512(_mm512_and_si512(za, m4), _mm512_and_si512(_mm512_slli_epi16(zh, 4), m30));
                    cc[1] = _mm512_or_si512(_mm512_and_si512(zb, m4), _mm512_and_si512(_mm512_slli_epi16(zh, 2), m30));
                    cc[2] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(za, 4), m4), _mm512_and_si512(zh, m30));
                    cc[3] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(zb, 4), m4),
                                            _mm512_and_si512(_mm512_srli_epi16(zh, 2), m30));
                    const __m512i s = _mm512_cvtepi8_epi32(_mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 192)),
                                                                            _mm_setr_epi8(Q6_ORDER)));
                    if (h) { scB = s; dB = h2f_f16c(p + 208); } else { scA = s; dA = h2f_f16c(p + 208); }
                } else {
                    const int qo = type == CK_TYPE_Q5_K ? 48 : 16;
                    const __m512i za = pair512(ld256(p + qo), ld256(p + qo + 64)), zb = pair512(ld256(p + qo + 32), ld256(p + qo + 96));
                    cc[0] = _mm512_and_si512(za, m4);
                    cc[1] = _mm512_and_si512(_mm512_srli_epi16(za, 4), m4);
                    cc[2] = _mm512_and_si512(zb, m4);
                    cc[3] = _mm512_and_si512(_mm512_srli_epi16(zb, 4), m4);
                    if (type == CK_TYPE_Q5_K) {
                        const __m256i qh = ld256(p + 16);
                        const __m512i zq = pair512(qh, _mm256_srli_epi16(qh, 4)), m10 = _mm512_set1_epi8(0x10);
                        cc[0] = _mm512_or_si512(cc[0], _mm512_and_si512(_mm512_slli_epi16(zq, 4), m10));
                        cc[1] = _mm512_or_si512(cc[1], _mm512_and_si512(_mm512_slli_epi16(zq, 3), m10));
                        cc[2] = _mm512_or_si512(cc[2], _mm512_and_si512(_mm512_slli_epi16(zq, 2), m10));
                        cc[3] = _mm512_or_si512(cc[3], _mm512_and_si512(_mm512_slli_epi16(zq, 1), m10));
                    }
                    if (h) { dB = h2f_f16c(p); mB = -h2f_f16c(p + 2); } else { dA = h2f_f16c(p); mA = -h2f_f16c(p + 2); }
                }
            }
            dv = _mm512_mask_blend_ps((__mmask16)0xFF00, _mm512_set1_ps(dA), _mm512_set1_ps(dB));
            if (type != CK_TYPE_Q6_K) {
                mv = _mm512_mask_blend_ps((__mmask16)0xFF00, _mm512_set1_ps(mA), _mm512_set1_ps(mB));
                uint64_t sa, ma, sb = 0, mb = 0;
                k4_scales8(pa + 4, &sa, &ma);
                if (pb) k4_scales8(pb + 4, &sb, &mb);
                scv = _mm512_cvtepu8_epi32(_mm_set_epi64x((long long)sb, (long long)sa));
                mcv = _mm512_cvtepu8_epi32(_mm_set_epi64x((long long)mb, (long long)ma));
            }
        }

        for (int t = 0; t < T; t++) {
            const uint8_t *row = xq + (size_t)t * xs;
            const uint8_t *a = row + 512 * g;
            __m512i r[8];
            for (int i = 0; i < 8; i++)
                r[i] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), c[i], _mm512_loadu_si512((const void *)(a + 64 * i)));
            const __m512i s32 = _mm512_loadu_si512((const void *)(row + L.s32 + 64 * g));
            __m512i isum;
            if (type == CK_TYPE_Q6_K) {
                const __m512i s16a = _mm512_loadu_si512((const void *)(row + L.s16 + 128 * g));
                const __m512i s16b = _mm512_loadu_si512((const void *)(row + L.s16 + 128 * g + 64));
                const __m512i tA = _mm512_mullo_epi32(_mm512_sub_epi32(red4(r[0], r[1], r[2], r[3]), _mm512_slli_epi32(s16a, 5)), scA);
                const __m512i tB = _mm512_mullo_epi32(_mm512_sub_epi32(red4(r[4], r[5], r[6], r[7]), _mm512_slli_epi32(s16b, 5)), scB);
                isum = red_final(tA, tB);
            } else {
                isum = red_final(red4(r[0], r[1], r[2], r[3]), red4(r[4], r[5], r[6], r[7]));
                if (osh) isum = _mm512_sub_epi32(isum, _mm512_sll_epi32(s32, _mm_cvtsi32_si128(osh)));
                if (kq) isum = _mm512_mullo_epi32(isum, scv);
            }
            const __m512 da = _mm512_loadu_ps((const float *)(row + L.d) + 16 * g);
            acc[t] = _mm512_fmadd_ps(_mm512_mul_ps(dv, da), _mm512_cvtepi32_ps(isum), acc[t]);
            if (has_min) {
                const __m512i msum = kq ? _mm512_mullo_epi32(mcv, s32) : s32;
                acc[t] = _mm512_fmadd_ps(_mm512_mul_ps(mv, da), _mm512_cvtepi32_ps(msum), acc[t]);
            }
        }
    }
    for (int t = 0; t < T; t++) y[t * ldy] = tree512(acc[t]);
}

typedef void (*row_fn)(const uint8_t *w, int64_t K, const uint8_t *xq, size_t xs, float *y, int64_t ldy);

// One function per (type, T): a frame holds one inlined copy (debug builds keep every copy's locals).
#define ROW512(NAME, TYPE, T) \
    static Q8_AVX512 void NAME(const uint8_t *w, int64_t K, const uint8_t *xq, size_t xs, float *y, int64_t ldy) { \
        row512(TYPE, T, w, K, xq, xs, y, ldy); \
    }
#define ROW512_TYPE(TAG, TYPE) ROW512(r512_##TAG##_1, TYPE, 1) ROW512(r512_##TAG##_2, TYPE, 2) \
    ROW512(r512_##TAG##_3, TYPE, 3) ROW512(r512_##TAG##_4, TYPE, 4)
ROW512_TYPE(q8_0, CK_TYPE_Q8_0)
ROW512_TYPE(q4_0, CK_TYPE_Q4_0)
ROW512_TYPE(q4_1, CK_TYPE_Q4_1)
ROW512_TYPE(q5_0, CK_TYPE_Q5_0)
ROW512_TYPE(q5_1, CK_TYPE_Q5_1)
ROW512_TYPE(iq4_nl, CK_TYPE_IQ4_NL)
ROW512_TYPE(q4_k, CK_TYPE_Q4_K)
ROW512_TYPE(q5_k, CK_TYPE_Q5_K)
ROW512_TYPE(q6_k, CK_TYPE_Q6_K)

#define FNS(TAG, P) {P##_##TAG##_1, P##_##TAG##_2, P##_##TAG##_3, P##_##TAG##_4}

static const row_fn *fns512(int type) {
    static const row_fn q8_0[4] = FNS(q8_0, r512), q4_0[4] = FNS(q4_0, r512), q4_1[4] = FNS(q4_1, r512),
                        q5_0[4] = FNS(q5_0, r512), q5_1[4] = FNS(q5_1, r512), iq4_nl[4] = FNS(iq4_nl, r512),
                        q4_k[4] = FNS(q4_k, r512), q5_k[4] = FNS(q5_k, r512), q6_k[4] = FNS(q6_k, r512);
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

// ---------------------------------------------------------------------------------------------------------------
// AVX2 level: chunks of 8 blocks, one ymm of codes per block.

Q8_INLINE Q8_AVX2 __m256i ld256b(const uint8_t *p) { return _mm256_loadu_si256((const __m256i *)p); }

// Codes of 32-element block p: unsigned codes (offset types keep the stored code), or, for Q8_0 / IQ4_NL, the
// signed values (multiplied with the sign trick).
Q8_INLINE Q8_AVX2 __m256i codes32_256(const int type, const uint8_t *p) {
    if (type == CK_TYPE_Q8_0) return ld256b(p + 2);
    const int qo = type == CK_TYPE_Q4_1 ? 4 : type == CK_TYPE_Q5_0 ? 6 : type == CK_TYPE_Q5_1 ? 8 : 2;
    const __m128i x = _mm_loadu_si128((const __m128i *)(p + qo));
    __m256i c = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(x, 4), x), _mm256_set1_epi8(15));
    if (type == CK_TYPE_Q5_0 || type == CK_TYPE_Q5_1) {
        const uint32_t qh = rd32(p + (type == CK_TYPE_Q5_1 ? 4 : 2));
        const __m256i sel = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                             2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
        const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
        const __m256i hb = _mm256_cmpeq_epi8(_mm256_and_si256(_mm256_shuffle_epi8(_mm256_set1_epi32((int)qh), sel), bit), bit);
        c = _mm256_or_si256(c, _mm256_and_si256(hb, _mm256_set1_epi8(16)));
    } else if (type == CK_TYPE_IQ4_NL) {
        const __m256i tab = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)q8_iq4nl));
        c = _mm256_shuffle_epi8(tab, c);
    }
    return c;
}

// One weight row against T <= 4 activation rows.
Q8_INLINE Q8_AVX2 void row256(const int type, const int T, const uint8_t *w, int64_t K, const uint8_t *xq,
                              size_t xs, float *y, int64_t ldy) {
    const q8_layout L = q8_layout_of(K);
    const int64_t nb = L.nb, nc = (nb + 7) / 8;
    const int bb = block_bytes(type);
    const int kq = is_kquant(type);
    const int sign = type == CK_TYPE_Q8_0 || type == CK_TYPE_IQ4_NL;
    const int has_min = type == CK_TYPE_Q4_1 || type == CK_TYPE_Q5_1 || type == CK_TYPE_Q4_K || type == CK_TYPE_Q5_K;
    const int osh = type == CK_TYPE_Q4_0 ? 3 : type == CK_TYPE_Q5_0 ? 4 : 0;
    const __m256i m4 = _mm256_set1_epi8(15), ones = _mm256_set1_epi16(1);
    __m256 acc[4][2];
    for (int t = 0; t < T; t++) acc[t][0] = acc[t][1] = _mm256_setzero_ps();

    for (int64_t ci = 0; ci < nc; ci++) {
        __m256i c[8];
        __m256 dv, mv = _mm256_setzero_ps();
        __m256i scv = _mm256_setzero_si256(), mcv = scv, sclo = scv, schi = scv;
        const int64_t b0 = 8 * ci;
        if (!kq) {
            const int nbc = nb - b0 < 8 ? (int)(nb - b0) : 8;
            const uint8_t *base = w + (size_t)b0 * bb;
            uint16_t dh[8] = {0}, mh[8] = {0};
            for (int j = 0; j < 8; j++) {
                if (j >= nbc) { c[j] = _mm256_setzero_si256(); continue; }
                const uint8_t *p = base + (size_t)j * bb;
                c[j] = codes32_256(type, p);
                dh[j] = rd16(p);
                mh[j] = rd16(p + 2);
            }
            dv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)dh));
            if (has_min) mv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)mh));
        } else {
            const uint8_t *p = w + (size_t)ci * bb;
            if (type == CK_TYPE_Q6_K) {
                for (int j = 0; j < 8; j++) {
                    const int h = j >> 2, g = j & 3;
                    const __m256i ql = ld256b(p + 64 * h + 32 * (g & 1));
                    const __m256i nib = g < 2 ? _mm256_and_si256(ql, m4) : _mm256_and_si256(_mm256_srli_epi16(ql, 4), m4);
                    const __m256i qh = ld256b(p + 128 + 32 * h);
                    const __m256i hb = g == 0 ? _mm256_slli_epi16(qh, 4) : g == 1 ? _mm256_slli_epi16(qh, 2)
                                     : g == 2 ? qh : _mm256_srli_epi16(qh, 2);
                    c[j] = _mm256_or_si256(nib, _mm256_and_si256(hb, _mm256_set1_epi8(0x30)));
                }
                const __m128i s = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 192)), _mm_setr_epi8(Q6_ORDER));
                sclo = _mm256_cvtepi8_epi32(s);
                schi = _mm256_cvtepi8_epi32(_mm_srli_si128(s, 8));
                dv = _mm256_set1_ps(h2f_f16c(p + 208));
            } else {
                const int five = type == CK_TYPE_Q5_K;
                const uint8_t *qs = p + (five ? 48 : 16);
                for (int i = 0; i < 4; i++) {
                    const __m256i q = ld256b(qs + 32 * i);
                    c[2 * i] = _mm256_and_si256(q, m4);
                    c[2 * i + 1] = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
                }
                if (five) {
                    const __m256i qh = ld256b(p + 16), m10 = _mm256_set1_epi8(0x10);
                    c[0] = _mm256_or_si256(c[0], _mm256_and_si256(_mm256_slli_epi16(qh, 4), m10));
                    c[1] = _mm256_or_si256(c[1], _mm256_and_si256(_mm256_slli_epi16(qh, 3), m10));
                    c[2] = _mm256_or_si256(c[2], _mm256_and_si256(_mm256_slli_epi16(qh, 2), m10));
                    c[3] = _mm256_or_si256(c[3], _mm256_and_si256(_mm256_slli_epi16(qh, 1), m10));
                    c[4] = _mm256_or_si256(c[4], _mm256_and_si256(qh, m10));
                    c[5] = _mm256_or_si256(c[5], _mm256_and_si256(_mm256_srli_epi16(qh, 1), m10));
                    c[6] = _mm256_or_si256(c[6], _mm256_and_si256(_mm256_srli_epi16(qh, 2), m10));
                    c[7] = _mm256_or_si256(c[7], _mm256_and_si256(_mm256_srli_epi16(qh, 3), m10));
                }
                uint64_t sa, ma;
                k4_scales8(p + 4, &sa, &ma);
                scv = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)sa));
                mcv = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)ma));
                dv = _mm256_set1_ps(h2f_f16c(p));
                mv = _mm256_set1_ps(-h2f_f16c(p + 2));
            }
        }

        for (int t = 0; t < T; t++) {
            const uint8_t *row = xq + (size_t)t * xs;
            const uint8_t *a = row + 256 * ci;
            __m256i v[8];
            for (int j = 0; j < 8; j++) {
                const __m256i aj = ld256b(a + 32 * q8_slot[j]);
                const __m256i p16 = sign ? _mm256_maddubs_epi16(_mm256_sign_epi8(c[j], c[j]), _mm256_sign_epi8(aj, c[j]))
                                         : _mm256_maddubs_epi16(c[j], aj);
                v[j] = _mm256_madd_epi16(p16, ones);
            }
            __m256i h0 = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
            __m256i h1 = _mm256_hadd_epi32(_mm256_hadd_epi32(v[4], v[5]), _mm256_hadd_epi32(v[6], v[7]));
            const __m256i s32 = _mm256_loadu_si256((const __m256i *)(row + L.s32 + 32 * ci));
            if (type == CK_TYPE_Q6_K) {
                const __m256i s16a = _mm256_loadu_si256((const __m256i *)(row + L.s16 + 64 * ci));
                const __m256i s16b = _mm256_loadu_si256((const __m256i *)(row + L.s16 + 64 * ci + 32));
                h0 = _mm256_mullo_epi32(_mm256_sub_epi32(h0, _mm256_slli_epi32(s16a, 5)), sclo);
                h1 = _mm256_mullo_epi32(_mm256_sub_epi32(h1, _mm256_slli_epi32(s16b, 5)), schi);
            }
            __m256i isum = _mm256_add_epi32(_mm256_permute2x128_si256(h0, h1, 0x20), _mm256_permute2x128_si256(h0, h1, 0x31));
            if (osh) isum = _mm256_sub_epi32(isum, _mm256_sll_epi32(s32, _mm_cvtsi32_si128(osh)));
            if (kq && type != CK_TYPE_Q6_K) isum = _mm256_mullo_epi32(isum, scv);
            const __m256 da = _mm256_loadu_ps((const float *)(row + L.d) + 8 * ci);
            __m256 *ac = &acc[t][ci & 1];
            *ac = _mm256_fmadd_ps(_mm256_mul_ps(dv, da), _mm256_cvtepi32_ps(isum), *ac);
            if (has_min) {
                const __m256i msum = kq ? _mm256_mullo_epi32(mcv, s32) : s32;
                *ac = _mm256_fmadd_ps(_mm256_mul_ps(mv, da), _mm256_cvtepi32_ps(msum), *ac);
            }
        }
    }
    for (int t = 0; t < T; t++) {
        const __m256 a = _mm256_add_ps(acc[t][0], acc[t][1]);  // j + j+8
        const __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        const __m128 c = _mm_add_ps(b, _mm_movehl_ps(b, b));
        y[t * ldy] = _mm_cvtss_f32(_mm_add_ss(c, _mm_movehdup_ps(c)));
    }
}

#define ROW256(NAME, TYPE, T) \
    static Q8_AVX2 void NAME(const uint8_t *w, int64_t K, const uint8_t *xq, size_t xs, float *y, int64_t ldy) { \
        row256(TYPE, T, w, K, xq, xs, y, ldy); \
    }
#define ROW256_TYPE(TAG, TYPE) ROW256(r256_##TAG##_1, TYPE, 1) ROW256(r256_##TAG##_2, TYPE, 2) \
    ROW256(r256_##TAG##_3, TYPE, 3) ROW256(r256_##TAG##_4, TYPE, 4)
ROW256_TYPE(q8_0, CK_TYPE_Q8_0)
ROW256_TYPE(q4_0, CK_TYPE_Q4_0)
ROW256_TYPE(q4_1, CK_TYPE_Q4_1)
ROW256_TYPE(q5_0, CK_TYPE_Q5_0)
ROW256_TYPE(q5_1, CK_TYPE_Q5_1)
ROW256_TYPE(iq4_nl, CK_TYPE_IQ4_NL)
ROW256_TYPE(q4_k, CK_TYPE_Q4_K)
ROW256_TYPE(q5_k, CK_TYPE_Q5_K)
ROW256_TYPE(q6_k, CK_TYPE_Q6_K)

static const row_fn *fns256(int type) {
    static const row_fn q8_0[4] = FNS(q8_0, r256), q4_0[4] = FNS(q4_0, r256), q4_1[4] = FNS(q4_1, r256),
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
    const uint8_t *Wb = (const uint8_t *)W, *X = (const uint8_t *)xq;
    const int level = ck_q8_isa();
#if Q8_X86
    if (level != CK_ISA_SCALAR) {
        const row_fn *f = level == CK_ISA_AVX512 ? fns512(type) : fns256(type);
        for (int64_t o = row_begin; o < row_end; o++)
            for (int64_t t0 = 0; t0 < n; t0 += 4) {
                const int T = n - t0 < 4 ? (int)(n - t0) : 4;
                f[T - 1](Wb + (size_t)o * rb, K, X + (size_t)t0 * xs, xs, y + t0 * ldy + o, ldy);
            }
        return 0;
    }
#endif
    (void)level;
    for (int64_t o = row_begin; o < row_end; o++) row_scalar(type, Wb + (size_t)o * rb, K, X, xs, n, y + o, ldy);
    return 0;
}
