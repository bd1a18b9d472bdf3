// Causal attention of one query row over its own sequence's keys and values, and a vectorisable exp.
//
// Every level (scalar, AVX-512) performs the same operations in the same order, so the bits agree across levels:
//   score_j = tree_sum_16( fma chain over chunks of 16 of q*k_j ) * scale
//   e_j     = ck_exp(score_j - max)          (our own exp: the same polynomial with fma everywhere)
//   sum     = e_0 + e_1 + ... in order
//   out[d]  = fma chain over j of (e_j * inv) * v_j[d], in order of j
// The tree sum adds lanes j+8, j+4, j+2, j+1. Head sizes that are not a multiple of 16 use zero-padded chunks.
#include "CCausalKernels.h"

#include <math.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CK_ATT_X86 1
#define CK_ATT_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))
#else
#define CK_ATT_X86 0
#endif

// exp(x) for x <= 0 (softmax arguments): 2^n * p(r), r = x - n ln2 in [-ln2/2, ln2/2], degree-6 minimax-like
// Taylor polynomial (relative error ~2e-7). Below -87 the result is 0.
#define EXP_LOG2E 1.44269504088896341f
#define EXP_LN2_HI 0.693359375f
#define EXP_LN2_LO -2.12194440e-4f
#define EXP_C6 (1.0f / 720.0f)
#define EXP_C5 (1.0f / 120.0f)
#define EXP_C4 (1.0f / 24.0f)
#define EXP_C3 (1.0f / 6.0f)
#define EXP_C2 0.5f

float ck_exp(float x) {
    if (x < -87.0f) return 0.0f;
    if (x > 88.0f) x = 88.0f;
    const float n = nearbyintf(x * EXP_LOG2E);
    float r = fmaf(-n, EXP_LN2_HI, x);
    r = fmaf(-n, EXP_LN2_LO, r);
    float p = fmaf(EXP_C6, r, EXP_C5);
    p = fmaf(p, r, EXP_C4);
    p = fmaf(p, r, EXP_C3);
    p = fmaf(p, r, EXP_C2);
    p = fmaf(p, r, 1.0f);
    p = fmaf(p, r, 1.0f);
    const int32_t e = (int32_t)n + 127;
    uint32_t bits = (uint32_t)e << 23;
    float scale;
    memcpy(&scale, &bits, 4);
    return p * scale;
}

static inline float tree16(float acc[16]) {
    for (int w = 8; w >= 1; w /= 2)
        for (int j = 0; j < w; j++) acc[j] += acc[j + w];
    return acc[0];
}

static void attention_scalar(const float *q, const float *K, const float *V, int64_t kv_stride, int64_t n_pos,
                             int64_t n_heads, int64_t n_kv_heads, int64_t D, float scale, float *out,
                             float *scratch, int64_t h0, int64_t h1) {
    const int64_t group = n_heads / n_kv_heads;
    for (int64_t h = h0; h < h1; h++) {
        const int64_t g = h / group;
        const float *qh = q + h * D;
        float mx = -INFINITY;
        for (int64_t j = 0; j < n_pos; j++) {
            const float *kj = K + j * kv_stride + g * D;
            float acc[16] = {0};
            for (int64_t c = 0; c < D; c += 16)
                for (int l = 0; l < 16; l++) {
                    const int64_t d = c + l;
                    if (d < D) acc[l] = fmaf(qh[d], kj[d], acc[l]);
                }
            const float s = tree16(acc) * scale;
            scratch[j] = s;
            if (s > mx) mx = s;
        }
        float sum = 0.0f;
        for (int64_t j = 0; j < n_pos; j++) {
            const float e = ck_exp(scratch[j] - mx);
            scratch[j] = e;
            sum += e;
        }
        const float inv = 1.0f / sum;
        float *oh = out + h * D;
        for (int64_t d = 0; d < D; d++) oh[d] = 0.0f;
        for (int64_t j = 0; j < n_pos; j++) {
            const float p = scratch[j] * inv;
            const float *vj = V + j * kv_stride + g * D;
            for (int64_t d = 0; d < D; d++) oh[d] = fmaf(p, vj[d], oh[d]);
        }
    }
}

#if CK_ATT_X86
CK_ATT_AVX512 static inline float tree16_avx512(__m512 v) {
    // lanes j + (j+8), then j + (j+4), then j + (j+2), then j + (j+1): the scalar tree16 order.
    __m256 a = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    __m128 c = _mm_add_ps(b, _mm_movehl_ps(b, b));
    __m128 d = _mm_add_ss(c, _mm_shuffle_ps(c, c, 1));
    return _mm_cvtss_f32(d);
}

CK_ATT_AVX512 static inline __m512 exp_avx512(__m512 x) {
    const __mmask16 tiny = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.0f), _CMP_LT_OQ);
    x = _mm512_min_ps(x, _mm512_set1_ps(88.0f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(EXP_LOG2E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fmadd_ps(_mm512_sub_ps(_mm512_setzero_ps(), n), _mm512_set1_ps(EXP_LN2_HI), x);
    r = _mm512_fmadd_ps(_mm512_sub_ps(_mm512_setzero_ps(), n), _mm512_set1_ps(EXP_LN2_LO), r);
    __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(EXP_C6), r, _mm512_set1_ps(EXP_C5));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_C4));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_C3));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_C2));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    const __m512 res = _mm512_mul_ps(p, _mm512_castsi512_ps(e));
    return _mm512_maskz_mov_ps((__mmask16)~tiny, res);
}

CK_ATT_AVX512 static void attention_avx512(const float *q, const float *K, const float *V, int64_t kv_stride, int64_t n_pos,
                                           int64_t n_heads, int64_t n_kv_heads, int64_t D, float scale, float *out,
                                           float *scratch, int64_t h0, int64_t h1) {
    const int64_t group = n_heads / n_kv_heads;
    const int64_t chunks = D / 16;
    for (int64_t h = h0; h < h1; h++) {
        const int64_t g = h / group;
        const float *qh = q + h * D;
        __m512 qv[16];
        for (int64_t c = 0; c < chunks; c++) qv[c] = _mm512_loadu_ps(qh + 16 * c);
        float mx = -INFINITY;
        for (int64_t j = 0; j < n_pos; j++) {
            const float *kj = K + j * kv_stride + g * D;
            __m512 acc = _mm512_setzero_ps();
            for (int64_t c = 0; c < chunks; c++) acc = _mm512_fmadd_ps(qv[c], _mm512_loadu_ps(kj + 16 * c), acc);
            const float s = tree16_avx512(acc) * scale;
            scratch[j] = s;
            if (s > mx) mx = s;
        }
        // exp in vectors of 16; the sum stays sequential in j (the scalar order).
        const __m512 mv = _mm512_set1_ps(mx);
        int64_t j = 0;
        for (; j + 16 <= n_pos; j += 16)
            _mm512_storeu_ps(scratch + j, exp_avx512(_mm512_sub_ps(_mm512_loadu_ps(scratch + j), mv)));
        for (; j < n_pos; j++) scratch[j] = ck_exp(scratch[j] - mx);
        float sum = 0.0f;
        for (j = 0; j < n_pos; j++) sum += scratch[j];
        const float inv = 1.0f / sum;
        __m512 ov[16];
        for (int64_t c = 0; c < chunks; c++) ov[c] = _mm512_setzero_ps();
        for (j = 0; j < n_pos; j++) {
            const __m512 p = _mm512_set1_ps(scratch[j] * inv);
            const float *vj = V + j * kv_stride + g * D;
            for (int64_t c = 0; c < chunks; c++) ov[c] = _mm512_fmadd_ps(p, _mm512_loadu_ps(vj + 16 * c), ov[c]);
        }
        for (int64_t c = 0; c < chunks; c++) _mm512_storeu_ps(out + h * D + 16 * c, ov[c]);
    }
}
#endif

void ck_attention_row(const float *q, const float *K, const float *V, int64_t kv_stride, int64_t n_pos,
                      int64_t n_heads, int64_t n_kv_heads, int64_t head_dim, float scale,
                      float *out, float *scratch, int64_t head_begin, int64_t head_end) {
#if CK_ATT_X86
    if (ck_get_isa() >= CK_ISA_AVX512 && head_dim % 16 == 0 && head_dim <= 256) {
        attention_avx512(q, K, V, kv_stride, n_pos, n_heads, n_kv_heads, head_dim, scale, out, scratch, head_begin, head_end);
        return;
    }
#endif
    attention_scalar(q, K, V, kv_stride, n_pos, n_heads, n_kv_heads, head_dim, scale, out, scratch, head_begin, head_end);
}
