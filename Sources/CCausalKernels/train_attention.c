// Training attention (ck_train_attention_forward / _backward, declared in ck_train.h): one query head over one
// sequence, as small blocked matrix products.
//
// The per-pair version (a dot product and an axpy of length D for every query/key pair) ran at about 13 GFLOP/s per
// core and took half of a 512-token training step. Here every product is a register tile:
//   scores   S = Q·Kᵀ and dP = dO·Vᵀ   4 query rows x 64 keys, over d, from a transposed copy of K (and V)
//   outputs  O = P·V and dQ = dS·K      4 query rows x 64 of D, over keys
//   keys     dK = dSᵀ·Q, dV = Pᵀ·dO     4 keys x 64 of D, over the query rows of a 64-row tile
// Each output element is one fp32 sum in a fixed order (d increasing; keys increasing; query rows increasing, one
// partial sum per 64-row tile added to dK/dV in tile order), so a result depends only on its sequence and head, never
// on the batch, the thread or which other rows share a tile. Scores of pairs the mask hides are never used: the
// probabilities there are set to exactly 0 before any product reads them.
// A head dimension that is not a multiple of 16, or a failed allocation, takes the per-pair reference loops.
#include "CCausalKernels.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "exp_impl.h"

#define CKA_INLINE static inline __attribute__((always_inline))
#if defined(__x86_64__) || defined(__i386__)
#define CKA_X86 1
#define CKA_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))
#define CKA_AVX2 __attribute__((target("avx2,fma")))
#else
#define CKA_X86 0
#endif

typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4)));
#define LD(p) (*(const v16u *)(p))

static inline int64_t amin(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t amax(int64_t a, int64_t b) { return a > b ? a : b; }

// The keys row i reads: [*lo, *hi). Forward-reading (reverse = 0): 0 ..< max(i + 1, prefix), i.e. causal, with the
// first `prefix` rows bidirectional among themselves. Reverse (reverse = 1): a row inside the prefix reads the rest of
// the prefix from itself on, i ..< prefix (the prompt right to left); a row after it is causal, 0 ..< i + 1.
CKA_INLINE void keys_for(int64_t i, int64_t prefix, int reverse, int64_t *lo, int64_t *hi) {
    if (reverse && i < prefix) { *lo = i; *hi = prefix; return; }
    *lo = 0;
    *hi = (!reverse && prefix > i + 1) ? prefix : i + 1;
}

// ---------------------------------------------------------------------------------------------------------------
// Reference: one pair at a time (head dimensions that are not a multiple of 16, or no memory for the blocked path).

CKA_INLINE float dotf(const float *a, const float *b, int64_t n) {
    float acc[16] = {0};
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; j++) acc[j] += a[i + j] * b[i + j];
    float tail = 0.0f;
    for (; i < n; i++) tail += a[i] * b[i];
    for (int w = 8; w >= 1; w /= 2)
        for (int j = 0; j < w; j++) acc[j] += acc[j + w];
    return acc[0] + tail;
}

static void attn_forward_pairs(const float *q, const float *k, const float *v, int64_t len, int64_t prefix,
                               int reverse, int64_t qs, int64_t kvs, int64_t D, float scale, float *out, float *lse,
                               int64_t lse_stride, float *scores) {
    for (int64_t i = 0; i < len; i++) {
        const float *qi = q + i * qs;
        int64_t lo, nk;
        keys_for(i, prefix, reverse, &lo, &nk);
        float mx = -INFINITY;
        for (int64_t j = lo; j < nk; j++) {
            const float s = dotf(qi, k + j * kvs, D) * scale;
            scores[j] = s;
            if (s > mx) mx = s;
        }
        double sum = 0.0;
        for (int64_t j = lo; j < nk; j++) {
            const float e = expf(scores[j] - mx);
            scores[j] = e;
            sum += e;
        }
        const float inv = (float)(1.0 / sum);
        float *oi = out + i * qs;
        memset(oi, 0, (size_t)D * sizeof(float));
        for (int64_t j = lo; j < nk; j++)
            for (int64_t d = 0; d < D; d++) oi[d] += scores[j] * inv * v[j * kvs + d];
        lse[i * lse_stride] = mx + (float)log(sum);
    }
}

static void attn_backward_pairs(const float *q, const float *k, const float *v, const float *out, const float *dout,
                                const float *lse, int64_t lse_stride, int64_t len, int64_t prefix, int reverse,
                                int64_t qs, int64_t kvs, int64_t D, float scale, float *dq, float *dk, float *dv,
                                float *scratch) {
    float *p = scratch, *ds = scratch + len;
    for (int64_t i = 0; i < len; i++) {
        const float *qi = q + i * qs, *doi = dout + i * qs;
        int64_t lo, nk;
        keys_for(i, prefix, reverse, &lo, &nk);
        const float l = lse[i * lse_stride];
        const float di = dotf(doi, out + i * qs, D);
        for (int64_t j = lo; j < nk; j++) {
            p[j] = expf(dotf(qi, k + j * kvs, D) * scale - l);
            const float dp = dotf(doi, v + j * kvs, D);
            ds[j] = p[j] * (dp - di) * scale;
        }
        float *dqi = dq + i * qs;
        for (int64_t j = lo; j < nk; j++)
            for (int64_t d = 0; d < D; d++) {
                dqi[d] += ds[j] * k[j * kvs + d];
                dk[j * kvs + d] += ds[j] * qi[d];
                dv[j * kvs + d] += p[j] * doi[d];
            }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Blocked kernels. `lp` is the row stride of the transposed copies and of the score tiles: the length rounded up
// to 16 plus 64, so a 64-key register tile that starts inside the sequence never reads past the (zeroed) padding.

static int64_t padded_len(int64_t len) { return (len + 15) / 16 * 16 + 64; }

// kt[d * lp + j] = k[j * ks + d] for j < len, 0 for len <= j < lp.
CKA_INLINE void pack_transposed(const float *k, int64_t ks, int64_t len, int64_t D, int64_t lp, float *kt) {
    for (int64_t d = 0; d < D; d++) memset(kt + d * lp + len, 0, (size_t)(lp - len) * sizeof(float));
    for (int64_t j0 = 0; j0 < len; j0 += 16) {
        const int64_t j1 = amin(len, j0 + 16);
        for (int64_t j = j0; j < j1; j++) {
            const float *src = k + j * ks;
            for (int64_t d = 0; d < D; d++) kt[d * lp + j] = src[d];
        }
    }
}

// S[r * lp + j] = sum_d a_r[d] * bt[d * lp + j] for rows r < nr (row r of A at a + r * as) and keys j in [j0, j1),
// in steps of 64 keys, then 16 (columns up to j1 rounded up to 16 are written; their values are not used).
CKA_INLINE void scores_tile(const float *a, int64_t as, int nr, const float *bt, int64_t lp, int64_t D, int64_t j0,
                            int64_t j1, float *S) {
    const float *ar[4];
    for (int r = 0; r < 4; r++) ar[r] = a + (r < nr ? r : nr - 1) * as;
    const int64_t je = j0 + (j1 - j0 + 15) / 16 * 16;
    int64_t j = j0;
    for (; j + 64 <= je; j += 64) {
        v16 c[4][4];
        for (int r = 0; r < 4; r++)
            for (int t = 0; t < 4; t++) c[r][t] = (v16){0};
        for (int64_t d = 0; d < D; d++) {
            const float *b = bt + d * lp + j;
            const v16 b0 = LD(b), b1 = LD(b + 16), b2 = LD(b + 32), b3 = LD(b + 48);
            for (int r = 0; r < 4; r++) {
                const float x = ar[r][d];
                c[r][0] += x * b0;
                c[r][1] += x * b1;
                c[r][2] += x * b2;
                c[r][3] += x * b3;
            }
        }
        for (int r = 0; r < nr; r++)
            for (int t = 0; t < 4; t++) *(v16u *)(S + r * lp + j + 16 * t) = c[r][t];
    }
    for (; j < je; j += 16) {
        v16 c[4] = {{0}, {0}, {0}, {0}};
        for (int64_t d = 0; d < D; d++) {
            const v16 b0 = LD(bt + d * lp + j);
            for (int r = 0; r < 4; r++) c[r] += ar[r][d] * b0;
        }
        for (int r = 0; r < nr; r++) *(v16u *)(S + r * lp + j) = c[r];
    }
}

// y_r[e] (+)= sum_{x in [x0, x1)} C[r * crs + x * cxs] * src[x * ss + e] for r < nr, e < D (D % 16 == 0): the
// output rows O = P·V and dQ = dS·K (C = a probability tile, x = key) and the key rows dK = dSᵀ·Q, dV = Pᵀ·dO (C =
// the transposed tile, x = query row). Row r of y at y + r * ys; accumulate adds the sum to y, else stores it.
CKA_INLINE void accumulate_tile(const float *C, int64_t crs, int64_t cxs, int nr, const float *src, int64_t ss,
                                int64_t D, int64_t x0, int64_t x1, float *y, int64_t ys, int accumulate) {
    const float *cr[4];
    for (int r = 0; r < 4; r++) cr[r] = C + (r < nr ? r : 0) * crs;
    int64_t e = 0;
    for (; e + 64 <= D; e += 64) {
        v16 c[4][4];
        for (int r = 0; r < 4; r++)
            for (int t = 0; t < 4; t++) c[r][t] = (v16){0};
        for (int64_t x = x0; x < x1; x++) {
            const float *s = src + x * ss + e;
            const v16 s0 = LD(s), s1 = LD(s + 16), s2 = LD(s + 32), s3 = LD(s + 48);
            for (int r = 0; r < 4; r++) {
                const float w = cr[r][x * cxs];
                c[r][0] += w * s0;
                c[r][1] += w * s1;
                c[r][2] += w * s2;
                c[r][3] += w * s3;
            }
        }
        for (int r = 0; r < nr; r++)
            for (int t = 0; t < 4; t++) {
                v16u *o = (v16u *)(y + r * ys + e + 16 * t);
                if (accumulate) *o = *o + c[r][t];
                else *o = c[r][t];
            }
    }
    for (; e < D; e += 16) {
        v16 c[4] = {{0}, {0}, {0}, {0}};
        for (int64_t x = x0; x < x1; x++) {
            const v16 s0 = LD(src + x * ss + e);
            for (int r = 0; r < 4; r++) c[r] += cr[r][x * cxs] * s0;
        }
        for (int r = 0; r < nr; r++) {
            v16u *o = (v16u *)(y + r * ys + e);
            if (accumulate) *o = *o + c[r];
            else *o = c[r];
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The softmax exponentials of the blocked path, in inference's exp (ck_exp; 16 lanes at a time with AVX-512, the
// same values lane by lane).

#if CKA_X86
// p[j] = exp(p[j]·scale − l); ds[j] = p[j]·(ds[j] − di)·scale, for j < n.
CKA_AVX512 static void exp_ds_avx512(float *p, float *ds, int64_t n, float scale, float l, float di) {
    const __m512 sc = _mm512_set1_ps(scale), lv = _mm512_set1_ps(l), dv = _mm512_set1_ps(di);
    int64_t j = 0;
    for (; j + 16 <= n; j += 16) {
        const __m512 e = exp_avx512(_mm512_sub_ps(_mm512_mul_ps(_mm512_loadu_ps(p + j), sc), lv));
        _mm512_storeu_ps(p + j, e);
        _mm512_storeu_ps(ds + j, _mm512_mul_ps(_mm512_mul_ps(e, _mm512_sub_ps(_mm512_loadu_ps(ds + j), dv)), sc));
    }
    for (; j < n; j++) {
        p[j] = ck_exp(p[j] * scale - l);
        ds[j] = p[j] * (ds[j] - di) * scale;
    }
}
#endif

// s[j] = exp(s[j] - mx) for j < n; returns their sum in double.
static double exp_row(float *s, int64_t n, float mx) {
#if CKA_X86
    if (ck_get_isa() >= CK_ISA_AVX512) return exp_shift_sum_avx512(s, n, mx);
#endif
    double sum = 0.0;
    for (int64_t j = 0; j < n; j++) {
        s[j] = ck_exp(s[j] - mx);
        sum += s[j];
    }
    return sum;
}

static void exp_ds(float *p, float *ds, int64_t n, float scale, float l, float di) {
#if CKA_X86
    if (ck_get_isa() >= CK_ISA_AVX512) { exp_ds_avx512(p, ds, n, scale, l, di); return; }
#endif
    for (int64_t j = 0; j < n; j++) {
        p[j] = ck_exp(p[j] * scale - l);
        ds[j] = p[j] * (ds[j] - di) * scale;
    }
}

// Forward: per block of 4 query rows, the scores over the union of their key ranges, a softmax per row (exactly 0
// outside the row's own range), then O = P·V over that union.
CKA_INLINE void attn_forward_blocked(const float *q, const float *k, const float *v, int64_t len, int64_t prefix,
                                     int reverse, int64_t qs, int64_t kvs, int64_t D, float scale, float *out,
                                     float *lse, int64_t lse_stride, float *kt, float *S, int64_t lp) {
    pack_transposed(k, kvs, len, D, lp, kt);
    for (int64_t i0 = 0; i0 < len; i0 += 4) {
        const int nr = (int)amin(4, len - i0);
        int64_t lo[4], hi[4], u0 = len, u1 = 0;
        for (int r = 0; r < nr; r++) {
            keys_for(i0 + r, prefix, reverse, &lo[r], &hi[r]);
            u0 = amin(u0, lo[r]);
            u1 = amax(u1, hi[r]);
        }
        scores_tile(q + i0 * qs, qs, nr, kt, lp, D, u0, u1, S);
        for (int r = 0; r < nr; r++) {
            float *s = S + r * lp;
            float mx = -INFINITY;
            for (int64_t j = lo[r]; j < hi[r]; j++) {
                s[j] *= scale;
                if (s[j] > mx) mx = s[j];
            }
            const double sum = exp_row(s + lo[r], hi[r] - lo[r], mx);
            const float inv = (float)(1.0 / sum);
            for (int64_t j = u0; j < lo[r]; j++) s[j] = 0.0f;
            for (int64_t j = lo[r]; j < hi[r]; j++) s[j] *= inv;
            for (int64_t j = hi[r]; j < u1; j++) s[j] = 0.0f;
            lse[(i0 + r) * lse_stride] = mx + (float)log(sum);
        }
        accumulate_tile(S, lp, 1, nr, v, kvs, D, u0, u1, out + i0 * qs, qs, 0);
    }
}

#define BQ 64

// Backward, in tiles of BQ query rows: P (recomputed from lse) and dS = P ∘ (dP − Dᵢ) · scale for the tile over the
// union of its rows' key ranges, then dQ for the tile's rows and the tile's share of dK and dV.
CKA_INLINE void attn_backward_blocked(const float *q, const float *k, const float *v, const float *out,
                                      const float *dout, const float *lse, int64_t lse_stride, int64_t len,
                                      int64_t prefix, int reverse, int64_t qs, int64_t kvs, int64_t D, float scale,
                                      float *dq, float *dk, float *dv, float *kt, float *vt, float *P, float *dS,
                                      int64_t lp) {
    pack_transposed(k, kvs, len, D, lp, kt);
    pack_transposed(v, kvs, len, D, lp, vt);
    int64_t lo[BQ], hi[BQ];
    for (int64_t i0 = 0; i0 < len; i0 += BQ) {
        const int64_t nt = amin(BQ, len - i0);
        int64_t t0 = len, t1 = 0;
        for (int64_t r = 0; r < nt; r++) {
            keys_for(i0 + r, prefix, reverse, &lo[r], &hi[r]);
            t0 = amin(t0, lo[r]);
            t1 = amax(t1, hi[r]);
        }
        for (int64_t rb = 0; rb < nt; rb += 4) {
            const int nr = (int)amin(4, nt - rb);
            int64_t u0 = len, u1 = 0;
            for (int r = 0; r < nr; r++) {
                u0 = amin(u0, lo[rb + r]);
                u1 = amax(u1, hi[rb + r]);
            }
            scores_tile(q + (i0 + rb) * qs, qs, nr, kt, lp, D, u0, u1, P + rb * lp);
            scores_tile(dout + (i0 + rb) * qs, qs, nr, vt, lp, D, u0, u1, dS + rb * lp);
            for (int r = 0; r < nr; r++) {
                const int64_t i = i0 + rb + r;
                float *p = P + (rb + r) * lp, *ds = dS + (rb + r) * lp;
                const float l = lse[i * lse_stride];
                const float di = dotf(dout + i * qs, out + i * qs, D);
                for (int64_t j = t0; j < lo[rb + r]; j++) p[j] = ds[j] = 0.0f;
                exp_ds(p + lo[rb + r], ds + lo[rb + r], hi[rb + r] - lo[rb + r], scale, l, di);
                for (int64_t j = hi[rb + r]; j < t1; j++) p[j] = ds[j] = 0.0f;
            }
            accumulate_tile(dS + rb * lp, lp, 1, nr, k, kvs, D, u0, u1, dq + (i0 + rb) * qs, qs, 1);
        }
        // Keys j0 .. j0+3: the tile's rows that read any of them.
        for (int64_t j0 = t0; j0 < t1; j0 += 4) {
            const int nk = (int)amin(4, t1 - j0);
            int64_t ra = nt, rz = 0;
            for (int64_t r = 0; r < nt; r++)
                if (lo[r] < j0 + nk && hi[r] > j0) {
                    if (r < ra) ra = r;
                    rz = r + 1;
                }
            if (ra >= rz) continue;
            accumulate_tile(dS + j0, 1, lp, nk, q + i0 * qs, qs, D, ra, rz, dk + j0 * kvs, kvs, 1);
            accumulate_tile(P + j0, 1, lp, nk, dout + i0 * qs, qs, D, ra, rz, dv + j0 * kvs, kvs, 1);
        }
    }
}

#define DEFINE_LEVEL(SUFFIX, ATTR)                                                                                   \
    ATTR static void fwd_##SUFFIX(const float *q, const float *k, const float *v, int64_t len, int64_t prefix,     \
                                  int reverse, int64_t qs, int64_t kvs, int64_t D, float scale, float *out,        \
                                  float *lse, int64_t lse_stride, float *kt, float *S, int64_t lp) {               \
        attn_forward_blocked(q, k, v, len, prefix, reverse, qs, kvs, D, scale, out, lse, lse_stride, kt, S, lp);  \
    }                                                                                                              \
    ATTR static void bwd_##SUFFIX(const float *q, const float *k, const float *v, const float *out,                \
                                  const float *dout, const float *lse, int64_t lse_stride, int64_t len,            \
                                  int64_t prefix, int reverse, int64_t qs, int64_t kvs, int64_t D, float scale,    \
                                  float *dq, float *dk, float *dv, float *kt, float *vt, float *P, float *dS,      \
                                  int64_t lp) {                                                                    \
        attn_backward_blocked(q, k, v, out, dout, lse, lse_stride, len, prefix, reverse, qs, kvs, D, scale, dq,   \
                              dk, dv, kt, vt, P, dS, lp);                                                          \
    }

DEFINE_LEVEL(generic, )
#if CKA_X86
DEFINE_LEVEL(avx2, CKA_AVX2)
DEFINE_LEVEL(avx512, CKA_AVX512)
#endif

void ck_train_attention_forward(const float *q, const float *k, const float *v, int64_t len, int64_t prefix,
                                int reverse, int64_t q_stride, int64_t kv_stride, int64_t head_dim, float scale,
                                float *out, float *lse, int64_t lse_stride, float *scratch) {
    if (len <= 0) return;
    if (prefix > len) prefix = len;
    if (prefix < 0) prefix = 0;
    const int64_t D = head_dim, lp = padded_len(len);
    float *buf = (D % 16 == 0) ? malloc((size_t)(D + 4) * (size_t)lp * sizeof(float)) : NULL;
    if (!buf) {
        attn_forward_pairs(q, k, v, len, prefix, reverse, q_stride, kv_stride, D, scale, out, lse, lse_stride,
                           scratch);
        return;
    }
    float *kt = buf, *S = buf + D * lp;
#if CKA_X86
    const int isa = ck_get_isa();
    if (isa >= CK_ISA_AVX512)
        fwd_avx512(q, k, v, len, prefix, reverse, q_stride, kv_stride, D, scale, out, lse, lse_stride, kt, S, lp);
    else if (isa >= CK_ISA_AVX2)
        fwd_avx2(q, k, v, len, prefix, reverse, q_stride, kv_stride, D, scale, out, lse, lse_stride, kt, S, lp);
    else
#endif
        fwd_generic(q, k, v, len, prefix, reverse, q_stride, kv_stride, D, scale, out, lse, lse_stride, kt, S, lp);
    free(buf);
}

void ck_train_attention_backward(const float *q, const float *k, const float *v, const float *out,
                                 const float *dout, const float *lse, int64_t lse_stride, int64_t len,
                                 int64_t prefix, int reverse, int64_t q_stride, int64_t kv_stride, int64_t head_dim,
                                 float scale, float *dq, float *dk, float *dv, float *scratch) {
    if (len <= 0) return;
    if (prefix > len) prefix = len;
    if (prefix < 0) prefix = 0;
    const int64_t D = head_dim, lp = padded_len(len);
    float *buf = (D % 16 == 0) ? malloc((size_t)(2 * D + 2 * BQ) * (size_t)lp * sizeof(float)) : NULL;
    if (!buf) {
        attn_backward_pairs(q, k, v, out, dout, lse, lse_stride, len, prefix, reverse, q_stride, kv_stride, D, scale,
                            dq, dk, dv, scratch);
        return;
    }
    float *kt = buf, *vt = kt + D * lp, *P = vt + D * lp, *dS = P + BQ * lp;
#if CKA_X86
    const int isa = ck_get_isa();
    if (isa >= CK_ISA_AVX512)
        bwd_avx512(q, k, v, out, dout, lse, lse_stride, len, prefix, reverse, q_stride, kv_stride, D, scale, dq, dk,
                   dv, kt, vt, P, dS, lp);
    else if (isa >= CK_ISA_AVX2)
        bwd_avx2(q, k, v, out, dout, lse, lse_stride, len, prefix, reverse, q_stride, kv_stride, D, scale, dq, dk,
                 dv, kt, vt, P, dS, lp);
    else
#endif
        bwd_generic(q, k, v, out, dout, lse, lse_stride, len, prefix, reverse, q_stride, kv_stride, D, scale, dq,
                    dk, dv, kt, vt, P, dS, lp);
    free(buf);
}
