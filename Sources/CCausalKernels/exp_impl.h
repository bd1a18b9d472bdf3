// Internal: the exp used by softmax and SiLU, as a portable function (ck_exp, in attention.c) and an AVX-512 one
// that gives the same bits lane by lane. Not part of the public headers.
#ifndef CK_EXP_IMPL_H
#define CK_EXP_IMPL_H

#include <stdint.h>

// exp(x) for x <= 88 (softmax arguments are <= 0, SiLU's reach 88): 2^n * p(r), r = x - n ln2 in [-ln2/2, ln2/2], degree-6 minimax-like
// Taylor polynomial (relative error ~2e-7). Below -87 the result is 0.
#define EXP_LOG2E 1.44269504088896341f
#define EXP_LN2_HI 0.693359375f
#define EXP_LN2_LO -2.12194440e-4f
#define EXP_C6 (1.0f / 720.0f)
#define EXP_C5 (1.0f / 120.0f)
#define EXP_C4 (1.0f / 24.0f)
#define EXP_C3 (1.0f / 6.0f)
#define EXP_C2 0.5f

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma"))) static inline __m512 exp_avx512(__m512 x) {
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

float ck_exp(float x);

// s[j] = exp(s[j] - mx) for j < n, 16 lanes at a time and the tail with ck_exp (the same values); returns their sum,
// added in 8 double lanes. Training's cross-entropy and attention softmax run it.
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma"))) static inline double exp_shift_sum_avx512(float *s, int64_t n,
                                                                                                          float mx) {
    const __m512 m = _mm512_set1_ps(mx);
    __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
    int64_t j = 0;
    for (; j + 16 <= n; j += 16) {
        const __m512 e = exp_avx512(_mm512_sub_ps(_mm512_loadu_ps(s + j), m));
        _mm512_storeu_ps(s + j, e);
        s0 = _mm512_add_pd(s0, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
        s1 = _mm512_add_pd(s1, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(e), 1))));
    }
    double sum = _mm512_reduce_add_pd(_mm512_add_pd(s0, s1));
    for (; j < n; j++) {
        s[j] = ck_exp(s[j] - mx);
        sum += s[j];
    }
    return sum;
}

// h[i] = g[i] / (1 + exp(-g[i])) * u[i] over whole 16-lane groups (h may be g); returns how many values it did. The
// same bits as the scalar formula with ck_exp, lane by lane. Inference's SiLU (ck_silu_mul) and training's SwiGLU
// forward both run it.
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma"))) static inline int64_t silu_mul_avx512(const float *g, const float *u,
                                                                                                     float *h, int64_t n) {
    const __m512 one = _mm512_set1_ps(1.0f);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512 x = _mm512_loadu_ps(g + i);
        const __m512 e = exp_avx512(_mm512_sub_ps(_mm512_setzero_ps(), x));
        _mm512_storeu_ps(h + i, _mm512_mul_ps(_mm512_div_ps(x, _mm512_add_ps(one, e)), _mm512_loadu_ps(u + i)));
    }
    return i;
}
#endif

#endif
