// Causal attention of one query row over its own sequence's keys and values, and a vectorisable exp.
//
// Every level (scalar, AVX-512) performs the same operations in the same order, so the bits agree across levels:
//   score_j = tree_sum_16( fma chain over chunks of 16 of q*k_j ) * scale
//   e_j     = ck_exp(score_j - max)          (our own exp: the same polynomial with fma everywhere)
//   sum     = tree_sum_16( lane l = e_l + e_{l+16} + e_{l+32} + ... in order )
//   out[d]  = (a_0[d] + a_1[d]) + (a_2[d] + a_3[d]),  a_s[d] = fma chain over j = s, s+4, s+8, ... of (e_j * inv) * v_j[d]
// The tree sum adds lanes j+8, j+4, j+2, j+1. Head sizes that are not a multiple of 16 use zero-padded chunks.
// The sum and the weighted sum of values are split into independent chains (16 and 4) so that a decode step is
// not bound by one long chain of dependent adds; the split is fixed by position, never by the batch.
#include "CCausalKernels.h"
#include "scratch_impl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "exp_impl.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CK_ATT_X86 1
#define CK_ATT_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))
#else
#define CK_ATT_X86 0
#endif

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

// Element i of a key/value buffer of fp32 (half = 0) or IEEE binary16 (half = 1, converted exactly).
static inline float kv_at(const void *p, int64_t i, int half) {
    return half ? ck_half_to_float(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

static void attention_scalar(const float *q, const void *K, const void *V, int half, int64_t kv_stride, int64_t head_stride,
                             int64_t n_pos, int64_t n_heads, int64_t n_kv_heads, int64_t D, float scale, float *out,
                             float *scratch_all, int64_t h0, int64_t h1) {
    const int64_t group = n_heads / n_kv_heads;
    for (int64_t h = h0; h < h1; h++) {
        const int64_t g = h / group;
        const float *qh = q + h * D;
        float *scratch = scratch_all + (h - h0) * n_pos;
        float mx = -INFINITY;
        for (int64_t j = 0; j < n_pos; j++) {
            const int64_t kj = j * kv_stride + g * head_stride;
            float acc[16] = {0};
            for (int64_t c = 0; c < D; c += 16)
                for (int l = 0; l < 16; l++) {
                    const int64_t d = c + l;
                    if (d < D) acc[l] = fmaf(qh[d], kv_at(K, kj + d, half), acc[l]);
                }
            const float s = tree16(acc) * scale;
            scratch[j] = s;
            if (s > mx) mx = s;
        }
        float lanes[16] = {0};
        for (int64_t j = 0; j < n_pos; j++) {
            const float e = ck_exp(scratch[j] - mx);
            scratch[j] = e;
            lanes[j % 16] += e;
        }
        const float inv = 1.0f / tree16(lanes);
        float *oh = out + h * D;
        for (int64_t d = 0; d < D; d++) {
            float a[4] = {0.0f, 0.0f, 0.0f, 0.0f};
            for (int64_t j = 0; j < n_pos; j++) a[j % 4] = fmaf(scratch[j] * inv, kv_at(V, j * kv_stride + g * head_stride + d, half), a[j % 4]);
            oh[d] = (a[0] + a[1]) + (a[2] + a[3]);
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

// The tree sums of 16 vectors at once (lane p of the result = tree16_avx512(v[p])): the same pairs are added
// (lanes j+8, then j+4, j+2, j+1), with the lanes of several vectors packed side by side by shuffles.
CK_ATT_AVX512 static inline __m512 tree16x16_avx512(const __m512 v[16]) {
    __m512 r[8], s[4], t[2];
    for (int i = 0; i < 8; i++)  // [v0 lanes j + j+8 (8), v1 (8)]
        r[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x44), _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xEE));
    for (int i = 0; i < 4; i++)  // quarter q: vector 4i+q, lanes j + j+4 (4)
        s[i] = _mm512_add_ps(_mm512_shuffle_f32x4(r[2 * i], r[2 * i + 1], 0x88), _mm512_shuffle_f32x4(r[2 * i], r[2 * i + 1], 0xDD));
    for (int i = 0; i < 2; i++)  // quarter q: vector 8i+q (2 lanes j + j+2), vector 8i+4+q (2)
        t[i] = _mm512_add_ps(_mm512_shuffle_ps(s[2 * i], s[2 * i + 1], 0x44), _mm512_shuffle_ps(s[2 * i], s[2 * i + 1], 0xEE));
    // quarter q: vectors q, 4+q, 8+q, 12+q (lane 0 + lane 1)
    const __m512 u = _mm512_add_ps(_mm512_shuffle_ps(t[0], t[1], 0x88), _mm512_shuffle_ps(t[0], t[1], 0xDD));
    const __m512i idx = _mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0);
    return _mm512_permutexvar_ps(idx, u);
}


// Heads that share a key/value head are processed together, block of positions by block of positions, so each
// block of keys and values is read from memory once for the group and then from L1 (grouped-query attention
// shares one K/V head among n_heads / n_kv_heads query heads). Per head the arithmetic is exactly the above.
#define ATT_BLOCK 16
#define ATT_GROUP 8  // heads processed together at most
#define ATT_PF_BLOCKS 2  // blocks of keys/values prefetched ahead

// A key or value row of D elements of es bytes.
static inline void att_prefetch_row(const char *p, int64_t D, int64_t es) {
    for (int64_t i = 0; i < D * es; i += 64) __builtin_prefetch(p + i, 0, 3);
}

// 16 elements of a key/value row as fp32: loaded, or (HALF) loaded as binary16 and converted exactly.
#define KV16(HALF, p, i) ((HALF) ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)(p) + (i)))) \
                                 : _mm512_loadu_ps((const float *)(p) + (i)))

// One block of positions [b0, b1) of one head's weighted values, for cn (a constant: 1-4) chunks of 16 dimensions
// from vb: the 4 chains (j mod 4) per chunk continue from part.
CK_ATT_AVX512 static inline __attribute__((always_inline)) void pv_block(const int HALF, const int cn, const float *ph, const void *vb,
                                                                       int64_t kv_stride, int64_t b0, int64_t b1, __m512 part[4][4]) {
    __m512 a[4][4];
    for (int s = 0; s < 4; s++)
        for (int c = 0; c < cn; c++) a[s][c] = part[s][c];
    int64_t j = b0;
    for (; j + 4 <= b1; j += 4)
        for (int s = 0; s < 4; s++) {
            const __m512 p = _mm512_set1_ps(ph[j + s]);
            const int64_t vj = (j + s) * kv_stride;
            for (int c = 0; c < cn; c++) a[s][c] = _mm512_fmadd_ps(p, KV16(HALF, vb, vj + 16 * c), a[s][c]);
        }
    for (int s = 0; j < b1; j++, s++) {  // only in the last block (ATT_BLOCK is a multiple of 4)
        const __m512 p = _mm512_set1_ps(ph[j]);
        const int64_t vj = j * kv_stride;
        for (int c = 0; c < cn; c++) a[s][c] = _mm512_fmadd_ps(p, KV16(HALF, vb, vj + 16 * c), a[s][c]);
    }
    for (int s = 0; s < 4; s++)
        for (int c = 0; c < cn; c++) part[s][c] = a[s][c];
}

// pv_block for heads [0, heads) of a group: head i's probabilities at ph0 + i * n_pos, its chains in part[i].
CK_ATT_AVX512 static inline __attribute__((always_inline)) void pv_heads(const int HALF, int64_t cn, const float *ph0, int64_t n_pos,
                                                                       int64_t heads, const void *vb, int64_t kv_stride, int64_t b0,
                                                                       int64_t b1, __m512 part[][4][4]) {
    for (int64_t i = 0; i < heads; i++) {
        const float *ph = ph0 + i * n_pos;
        // cn as a constant, so that the 4 x cn accumulators live in registers.
        switch (cn) {
        case 4: pv_block(HALF, 4, ph, vb, kv_stride, b0, b1, part[i]); break;
        case 3: pv_block(HALF, 3, ph, vb, kv_stride, b0, b1, part[i]); break;
        case 2: pv_block(HALF, 2, ph, vb, kv_stride, b0, b1, part[i]); break;
        default: pv_block(HALF, 1, ph, vb, kv_stride, b0, b1, part[i]); break;
        }
    }
}

// One head's scores against the 16 keys at kb (rows kst elements apart): the fma chains over chunks of 16 dimensions,
// their tree sums, times scale.
CK_ATT_AVX512 static inline __attribute__((always_inline)) __m512 score16(const int HALF, const float *qh, const void *kb, int64_t kst,
                                                                        int64_t chunks, float scale) {
    __m512 acc[16];
    for (int p = 0; p < 16; p++) acc[p] = _mm512_setzero_ps();
    for (int64_t c = 0; c < chunks; c++) {
        const __m512 qv = _mm512_loadu_ps(qh + 16 * c);
        for (int p = 0; p < 16; p++) acc[p] = _mm512_fmadd_ps(qv, KV16(HALF, kb, p * kst + 16 * c), acc[p]);
    }
    return _mm512_mul_ps(tree16x16_avx512(acc), _mm512_set1_ps(scale));
}

// HALF (a constant): keys and values are binary16, converted exactly to fp32 as they are read, so the arithmetic is
// the fp32 path's on the converted values. When several heads share the block, it is converted once into an fp32
// buffer (kbuf, vbuf) that they all read, instead of once per head.
CK_ATT_AVX512 static inline __attribute__((always_inline)) void attention_avx512_t(
    const int HALF, const float *q, const void *K, const void *V, int64_t kv_stride, int64_t head_stride, int64_t n_pos,
    int64_t n_heads, int64_t n_kv_heads, int64_t D, float scale, float *out, float *scratch, int64_t h0, int64_t h1) {
    const int64_t group = n_heads / n_kv_heads;
    const int64_t chunks = D / 16;
    const int64_t es = HALF ? 2 : 4;
    for (int64_t ha = h0; ha < h1;) {
        const int64_t g = ha / group;
        int64_t hb = (g + 1) * group < h1 ? (g + 1) * group : h1;  // heads [ha, hb) share K/V head g
        if (hb - ha > ATT_GROUP) hb = ha + ATT_GROUP;
        const char *Kg = (const char *)K + g * head_stride * es, *Vg = (const char *)V + g * head_stride * es;
        const int64_t rs = kv_stride * es;  // bytes from one position's row to the next
        const int share = HALF && hb - ha > 1;
        float kbuf[HALF ? 16 * 256 : 1] __attribute__((aligned(64)));
        float vbuf[HALF ? ATT_BLOCK * 64 : 1] __attribute__((aligned(64)));
        float mx[ATT_GROUP];
        __m512 mxv[ATT_GROUP];
        for (int64_t h = ha; h < hb; h++) { mx[h - ha] = -INFINITY; mxv[h - ha] = _mm512_set1_ps(-INFINITY); }
        // In a decode step every key and value is read once, cold from memory, in runs too short for the hardware
        // prefetchers to get ahead: ask for them ATT_PF_BLOCKS blocks ahead. Measured per core on a 16-sequence step
        // (192 positions, 30 layers, cold): 13-14 ms, 9.5 ms with this and the head-major cache layout.
        for (int64_t j = 0; j < n_pos && j < ATT_PF_BLOCKS * ATT_BLOCK; j++) att_prefetch_row(Kg + j * rs, D, es);
        // Scores.
        int64_t j0 = 0;
        for (; j0 + 16 <= n_pos; j0 += 16) {
            for (int64_t j = j0 + ATT_PF_BLOCKS * ATT_BLOCK, je = j + 16; j < je; j++)
                if (j < n_pos) att_prefetch_row(Kg + j * rs, D, es);
                else if (j - n_pos < n_pos) att_prefetch_row(Vg + (j - n_pos) * rs, D, es);  // the values' start
            if (share)
                for (int p = 0; p < 16; p++)
                    for (int64_t c = 0; c < chunks; c++)
                        _mm512_store_ps(kbuf + p * D + 16 * c, KV16(HALF, Kg, (j0 + p) * kv_stride + 16 * c));
            for (int64_t h = ha; h < hb; h++) {
                const float *qh = q + h * D;
                float *sh = scratch + (h - h0) * n_pos;
                const __m512 sv = share ? score16(0, qh, kbuf, D, chunks, scale) : score16(HALF, qh, Kg + j0 * rs, kv_stride, chunks, scale);
                _mm512_storeu_ps(sh + j0, sv);
                mxv[h - ha] = _mm512_max_ps(mxv[h - ha], sv);
            }
        }
        for (int64_t h = ha; h < hb; h++) {
            const float *qh = q + h * D;
            float *sh = scratch + (h - h0) * n_pos;
            float m = j0 > 0 ? _mm512_reduce_max_ps(mxv[h - ha]) : -INFINITY;
            for (int64_t j = j0; j < n_pos; j++) {
                __m512 acc = _mm512_setzero_ps();
                for (int64_t c = 0; c < chunks; c++) acc = _mm512_fmadd_ps(_mm512_loadu_ps(qh + 16 * c), KV16(HALF, Kg, j * kv_stride + 16 * c), acc);
                const float sc = tree16_avx512(acc) * scale;
                sh[j] = sc;
                if (sc > m) m = sc;
            }
            mx[h - ha] = m;
        }
        // exp in vectors of 16, the sum in 16 lanes, then the probabilities (e_j * inv) in place.
        for (int64_t h = ha; h < hb; h++) {
            float *sh = scratch + (h - h0) * n_pos;
            const __m512 mv = _mm512_set1_ps(mx[h - ha]);
            int64_t j = 0;
            for (; j + 16 <= n_pos; j += 16) _mm512_storeu_ps(sh + j, exp_avx512(_mm512_sub_ps(_mm512_loadu_ps(sh + j), mv)));
            for (; j < n_pos; j++) sh[j] = ck_exp(sh[j] - mx[h - ha]);
            __m512 lanes = _mm512_setzero_ps();
            for (j = 0; j + 16 <= n_pos; j += 16) lanes = _mm512_add_ps(lanes, _mm512_loadu_ps(sh + j));
            if (j < n_pos)  // adding +0 to the lanes past the end changes nothing (e >= 0)
                lanes = _mm512_add_ps(lanes, _mm512_maskz_loadu_ps((__mmask16)((1u << (n_pos - j)) - 1u), sh + j));
            const __m512 inv = _mm512_set1_ps(1.0f / tree16_avx512(lanes));
            for (j = 0; j + 16 <= n_pos; j += 16) _mm512_storeu_ps(sh + j, _mm512_mul_ps(_mm512_loadu_ps(sh + j), inv));
            for (; j < n_pos; j++) sh[j] = sh[j] * _mm512_cvtss_f32(inv);
        }
        // Weighted values: per head 4 chains (j mod 4) per chunk of 16 dims, kept in memory between blocks.
        for (int64_t c0 = 0; c0 < chunks; c0 += 4) {
            const int64_t cn = chunks - c0 < 4 ? chunks - c0 : 4;
            __m512 part[ATT_GROUP][4][4];
            for (int64_t h = ha; h < hb; h++)
                for (int s = 0; s < 4; s++)
                    for (int64_t c = 0; c < cn; c++) part[h - ha][s][c] = _mm512_setzero_ps();
            for (int64_t b0 = 0; b0 < n_pos; b0 += ATT_BLOCK) {
                const int64_t b1 = b0 + ATT_BLOCK < n_pos ? b0 + ATT_BLOCK : n_pos;
                if (c0 == 0)
                    for (int64_t j = b0 + ATT_PF_BLOCKS * ATT_BLOCK, je = j + ATT_BLOCK; j < je && j < n_pos; j++)
                        att_prefetch_row(Vg + j * rs, D, es);
                const float *ph0 = scratch + (ha - h0) * n_pos;
                if (share) {
                    for (int64_t j = b0; j < b1; j++)
                        for (int64_t c = 0; c < cn; c++)
                            _mm512_store_ps(vbuf + (j - b0) * 64 + 16 * c, KV16(HALF, Vg, j * kv_stride + 16 * (c0 + c)));
                    // The buffer's rows are positions b0..b1 as 0.. (b0 % 4 == 0: the same chains).
                    pv_heads(0, cn, ph0 + b0, n_pos, hb - ha, vbuf, 64, 0, b1 - b0, part);
                } else {
                    pv_heads(HALF, cn, ph0, n_pos, hb - ha, Vg + 16 * c0 * es, kv_stride, b0, b1, part);
                }
            }
            for (int64_t h = ha; h < hb; h++)
                for (int64_t c = 0; c < cn; c++)
                    _mm512_storeu_ps(out + h * D + 16 * (c0 + c),
                                     _mm512_add_ps(_mm512_add_ps(part[h - ha][0][c], part[h - ha][1][c]),
                                                   _mm512_add_ps(part[h - ha][2][c], part[h - ha][3][c])));
        }
        ha = hb;
    }
}

CK_ATT_AVX512 static void attention_avx512(const float *q, const float *K, const float *V, int64_t kv_stride, int64_t head_stride,
                                           int64_t n_pos, int64_t n_heads, int64_t n_kv_heads, int64_t D, float scale,
                                           float *out, float *scratch, int64_t h0, int64_t h1) {
    attention_avx512_t(0, q, K, V, kv_stride, head_stride, n_pos, n_heads, n_kv_heads, D, scale, out, scratch, h0, h1);
}

CK_ATT_AVX512 static void attention_avx512_f16(const float *q, const uint16_t *K, const uint16_t *V, int64_t kv_stride,
                                               int64_t head_stride, int64_t n_pos, int64_t n_heads, int64_t n_kv_heads,
                                               int64_t D, float scale, float *out, float *scratch, int64_t h0, int64_t h1) {
    attention_avx512_t(1, q, K, V, kv_stride, head_stride, n_pos, n_heads, n_kv_heads, D, scale, out, scratch, h0, h1);
}
#endif

// Rounded up to a whole 4 KiB so that a growing context does not reallocate every step.
static float *score_scratch(float *scratch, int64_t heads, int64_t n_pos) {
    if (scratch) return scratch;
    scratch = (float *)ck_thread_scratch(CK_SCRATCH_SCORES, (size_t)(heads * n_pos + 1023) / 1024 * 4096);
    if (!scratch) abort();
    return scratch;
}

// half: K and V are binary16 (ck_attention_row_f16), else fp32.
static void attention_rows(int half, const float *q, const void *K, const void *V, int64_t kv_stride, int64_t head_stride,
                           int64_t n_pos, int64_t n_heads, int64_t n_kv_heads, int64_t head_dim, float scale, float *out,
                           float *scratch, int64_t head_begin, int64_t head_end) {
    scratch = score_scratch(scratch, head_end - head_begin, n_pos);
#if CK_ATT_X86
    if (ck_get_isa() >= CK_ISA_AVX512 && head_dim % 16 == 0 && head_dim <= 256) {
        if (half)
            attention_avx512_f16(q, (const uint16_t *)K, (const uint16_t *)V, kv_stride, head_stride, n_pos, n_heads, n_kv_heads, head_dim, scale, out, scratch, head_begin, head_end);
        else
            attention_avx512(q, (const float *)K, (const float *)V, kv_stride, head_stride, n_pos, n_heads, n_kv_heads, head_dim, scale, out, scratch, head_begin, head_end);
        return;
    }
#endif
    attention_scalar(q, K, V, half, kv_stride, head_stride, n_pos, n_heads, n_kv_heads, head_dim, scale, out, scratch, head_begin, head_end);
}

void ck_attention_row(const float *q, const float *K, const float *V, int64_t kv_stride, int64_t head_stride, int64_t n_pos,
                      int64_t n_heads, int64_t n_kv_heads, int64_t head_dim, float scale,
                      float *out, float *scratch, int64_t head_begin, int64_t head_end) {
    attention_rows(0, q, K, V, kv_stride, head_stride, n_pos, n_heads, n_kv_heads, head_dim, scale, out, scratch, head_begin, head_end);
}

void ck_attention_row_f16(const float *q, const uint16_t *K, const uint16_t *V, int64_t kv_stride, int64_t head_stride,
                          int64_t n_pos, int64_t n_heads, int64_t n_kv_heads, int64_t head_dim, float scale,
                          float *out, float *scratch, int64_t head_begin, int64_t head_end) {
    attention_rows(1, q, K, V, kv_stride, head_stride, n_pos, n_heads, n_kv_heads, head_dim, scale, out, scratch, head_begin, head_end);
}

#if CK_ATT_X86
__attribute__((target("avx512f,avx512bw,avx512vl,f16c"))) static void f32_to_f16_avx512(const float *src, uint16_t *dst, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((__m256i *)(dst + i), _mm512_cvtps_ph(_mm512_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    for (; i < n; i++) dst[i] = ck_float_to_half(src[i]);
}
#endif

#if CK_ATT_X86
__attribute__((target("avx512f,avx512bw,avx512vl,f16c"))) static void f16_to_f32_avx512(const uint16_t *src, float *dst, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(src + i))));
    for (; i < n; i++) dst[i] = ck_half_to_float(src[i]);
}
#endif

void ck_f16_to_f32(const uint16_t *src, float *dst, int64_t n) {
#if CK_ATT_X86
    if (ck_get_isa() >= CK_ISA_AVX512) { f16_to_f32_avx512(src, dst, n); return; }
#endif
    for (int64_t i = 0; i < n; i++) dst[i] = ck_half_to_float(src[i]);
}

void ck_f32_to_f16(const float *src, uint16_t *dst, int64_t n) {
#if CK_ATT_X86
    if (ck_get_isa() >= CK_ISA_AVX512) { f32_to_f16_avx512(src, dst, n); return; }
#endif
    for (int64_t i = 0; i < n; i++) dst[i] = ck_float_to_half(src[i]);
}
