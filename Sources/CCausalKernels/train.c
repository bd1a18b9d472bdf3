// Training kernels (see ck_train.h). Plain fp32 loops; the hot ones (the matrix product, attention) are compiled
// once per instruction-set level from one always-inline body and picked at run time by ck_get_isa().
#include "CCausalKernels.h"
#include "scratch_impl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "exp_impl.h"

#define CKT_INLINE static inline __attribute__((always_inline))

#if defined(__x86_64__) || defined(__i386__)
#define CKT_X86 1
#define CKT_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))
#define CKT_AVX2 __attribute__((target("avx2,fma")))
#else
#define CKT_X86 0
#endif

static inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }

// ---------------------------------------------------------------------------------------------------------------
// Matrix product C = [C +] A · B.
//
// Blocked over K (KBLK) and N (NBLK) so that a block of B stays in cache while every tile of 4 rows of C passes
// over it; a tile is 4 rows x (VW * TV) columns held in vector registers across the K block. Each K block is summed
// in fresh accumulators and added to C once: a long K (the head's backward sums over the 49152-token vocabulary)
// then rounds like a blocked sum rather than one running fp32 sum, whose error made the gradients 4x less accurate
// than PyTorch's and moved the loss after one AdamW step by 2e-4.

typedef float v16f __attribute__((vector_size(64)));
typedef float v16fu __attribute__((vector_size(64), aligned(4)));
typedef float v8f __attribute__((vector_size(32)));
typedef float v8fu __attribute__((vector_size(32), aligned(4)));
typedef float v4f __attribute__((vector_size(16)));
typedef float v4fu __attribute__((vector_size(16), aligned(4)));

#define KBLK 256
#define NBLK 256

// Rows [i0, i1) x columns [j0, j1) over k in [k0, k1), plain loops (tails). Like the tiles, each call sums its K
// block in fresh accumulators and adds the block's sum to C once (j1 - j0 <= NBLK).
CKT_INLINE void gemm_plain(int64_t i0, int64_t i1, int64_t j0, int64_t j1, int64_t k0, int64_t k1,
                           const float *A, int64_t ar, int64_t ac, const float *B, int64_t ldb, float *C,
                           int64_t ldc, int store) {
    float acc[NBLK];
    const int64_t nj = j1 - j0;
    for (int64_t i = i0; i < i1; i++) {
        memset(acc, 0, (size_t)nj * sizeof(float));
        for (int64_t k = k0; k < k1; k++) {
            const float a = A[i * ar + k * ac];
            const float *b = B + k * ldb + j0;
            for (int64_t j = 0; j < nj; j++) acc[j] += a * b[j];
        }
        float *c = C + i * ldc + j0;
        if (store)
            memcpy(c, acc, (size_t)nj * sizeof(float));
        else
            for (int64_t j = 0; j < nj; j++) c[j] += acc[j];
    }
}

// The per-thread packing panel: KBLK x NBLK floats, 64-byte aligned, allocated on a thread's first product and
// freed when the thread exits.
static float *panel(void) {
    float *p = (float *)ck_thread_scratch(CK_SCRATCH_TRAIN, (size_t)KBLK * NBLK * sizeof(float));
    if (!p) abort();
    return p;
}

// Blocks are visited column block by column block (j0 outer, k0 inner), so the C rows of one column block stay in
// L2 while their K blocks are added. Each (k0, j0) block's full-width column strips are first copied into a
// contiguous per-thread panel (row k of strip s at P + s*TW*kb + k*TW), which every row tile then reads
// sequentially. While one block is multiplied, the next one (below it, or the top of the next column block) is asked
// for, a few of its rows per row tile, so that its packing does not wait on memory: in a training step every weight
// matrix arrives cold. The order of the sums is unchanged: each element adds its K blocks to C in increasing k0,
// each block summed over increasing k in fresh accumulators.
#define GEMM_DEFINE(NAME, ATTR, VT, VTU, VW, TV)                                                                  \
    ATTR static void NAME(int64_t M, int64_t N, int64_t K, const float *A, int64_t ar, int64_t ac,              \
                          const float *B, int64_t ldb, float *C, int64_t ldc, int accumulate) {                 \
        const int64_t TW = (VW) * (TV);                                                                          \
        const int64_t tiles = (M + 3) / 4;                                                                       \
        float *P = panel();                                                                                      \
        for (int64_t j0 = 0; j0 < N; j0 += NBLK) {                                                               \
            const int64_t j1 = imin(N, j0 + NBLK);                                                               \
            const int64_t jt = j0 + (j1 - j0) / TW * TW;                                                         \
            for (int64_t k0 = 0; k0 < K; k0 += KBLK) {                                                           \
                const int64_t k1 = imin(K, k0 + KBLK), kb = k1 - k0;                                             \
                const int store = !accumulate && k0 == 0;                                                        \
                const int64_t nk0 = k0 + KBLK < K ? k0 + KBLK : 0, nj0 = k0 + KBLK < K ? j0 : j0 + NBLK;         \
                const int64_t nk1 = imin(K, nk0 + KBLK), nbytes = nj0 < N ? (imin(N, nj0 + NBLK) - nj0) * 4 : 0; \
                const int64_t prow = (nk1 - nk0 + tiles - 1) / tiles;                                            \
                for (int64_t j = j0; j < jt; j += TW) {                                                          \
                    float *ps = P + (j - j0) * kb;                                                               \
                    for (int64_t k = 0; k < kb; k++)                                                             \
                        for (int t = 0; t < (TV); t++)                                                           \
                            *(VTU *)(ps + k * TW + t * (VW)) = *(const VTU *)(B + (k0 + k) * ldb + j + t * (VW)); \
                }                                                                                                \
                int64_t i = 0;                                                                                   \
                for (; i + 4 <= M; i += 4) {                                                                     \
                    for (int64_t pk = nk0 + (i / 4) * prow; pk < imin(nk1, nk0 + (i / 4 + 1) * prow); pk++)    \
                        for (int64_t off = 0; off < nbytes; off += 64)                                          \
                            __builtin_prefetch((const char *)(B + pk * ldb + nj0) + off, 0, 2);                  \
                    for (int64_t j = j0; j < jt; j += TW) {                                                      \
                        const float *ps = P + (j - j0) * kb;                                                     \
                        VT c[4][TV];                                                                             \
                        for (int r = 0; r < 4; r++)                                                              \
                            for (int t = 0; t < (TV); t++) c[r][t] = (VT){0};                                    \
                        for (int64_t k = 0; k < kb; k++) {                                                       \
                            VT bv[TV];                                                                           \
                            for (int t = 0; t < (TV); t++) bv[t] = *(const VT *)(ps + k * TW + t * (VW));        \
                            for (int r = 0; r < 4; r++) {                                                        \
                                const float a = A[(i + r) * ar + (k0 + k) * ac];                                 \
                                for (int t = 0; t < (TV); t++) c[r][t] += a * bv[t];                             \
                            }                                                                                    \
                        }                                                                                        \
                        for (int r = 0; r < 4; r++)                                                              \
                            for (int t = 0; t < (TV); t++) {                                                     \
                                VTU *o = (VTU *)(C + (i + r) * ldc + j + t * (VW));                              \
                                *o = store ? c[r][t] : *o + c[r][t];                                             \
                            }                                                                                    \
                    }                                                                                            \
                    if (jt < j1) gemm_plain(i, i + 4, jt, j1, k0, k1, A, ar, ac, B, ldb, C, ldc, store);         \
                }                                                                                                \
                if (i < M) gemm_plain(i, M, j0, j1, k0, k1, A, ar, ac, B, ldb, C, ldc, store);                   \
            }                                                                                                    \
        }                                                                                                        \
    }

GEMM_DEFINE(gemm_generic, , v4f, v4fu, 4, 4)
#if CKT_X86
GEMM_DEFINE(gemm_avx2, CKT_AVX2, v8f, v8fu, 8, 2)
GEMM_DEFINE(gemm_avx512, CKT_AVX512, v16f, v16fu, 16, 4)
#endif

void ck_train_gemm(int64_t M, int64_t N, int64_t K, const float *A, int64_t a_row, int64_t a_col,
                   const float *B, int64_t ldb, float *C, int64_t ldc, int accumulate) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {
        if (!accumulate)
            for (int64_t i = 0; i < M; i++) memset(C + i * ldc, 0, (size_t)N * sizeof(float));
        return;
    }
    // Without accumulate, the first K block stores its sums instead of adding them to a zeroed C (the same values,
    // except that a sum of -0 stays -0).
#if CKT_X86
    const int isa = ck_get_isa();
    if (isa >= CK_ISA_AVX512) { gemm_avx512(M, N, K, A, a_row, a_col, B, ldb, C, ldc, accumulate); return; }
    if (isa >= CK_ISA_AVX2) { gemm_avx2(M, N, K, A, a_row, a_col, B, ldb, C, ldc, accumulate); return; }
#endif
    gemm_generic(M, N, K, A, a_row, a_col, B, ldb, C, ldc, accumulate);
}

// ---------------------------------------------------------------------------------------------------------------
// RMSNorm

void ck_train_rmsnorm_forward(const float *x, const float *w, float *y, float *rstd, int64_t rows, int64_t n,
                              float eps) {
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * n;
        float *yr = y + r * n;
        double ss = 0.0;
        for (int64_t i = 0; i < n; i++) ss += (double)xr[i] * (double)xr[i];
        const float inv = (float)(1.0 / sqrt(ss / (double)n + (double)eps));
        rstd[r] = inv;
        for (int64_t i = 0; i < n; i++) yr[i] = w[i] * (xr[i] * inv);
    }
}

void ck_train_rmsnorm_backward(const float *dy, const float *x, const float *w, const float *rstd, float *dx,
                               float *dw, int64_t rows, int64_t n) {
    for (int64_t r = 0; r < rows; r++) {
        const float *dyr = dy + r * n, *xr = x + r * n;
        float *dxr = dx + r * n;
        const float s = rstd[r];
        double dot = 0.0;   // sum_i dy_i w_i x_i
        for (int64_t i = 0; i < n; i++) dot += (double)dyr[i] * (double)w[i] * (double)xr[i];
        const float c = (float)(dot / (double)n) * s * s;
        for (int64_t i = 0; i < n; i++) {
            dxr[i] += s * (dyr[i] * w[i] - xr[i] * c);
            dw[i] += dyr[i] * (xr[i] * s);
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// SwiGLU

// The exp is the inference path's (ck_exp, exp_impl.h), so that a training forward computes SiLU as generation does;
// the AVX-512 loops give the same bits lane by lane as the scalar ones (the same operations, no fused multiply-adds).
#if CKT_X86
CKT_AVX512 static int64_t swiglu_backward_avx512(const float *dh, const float *g, const float *u, float *dg, float *du,
                                                 int64_t n) {
    const __m512 one = _mm512_set1_ps(1.0f);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512 x = _mm512_loadu_ps(g + i), d = _mm512_loadu_ps(dh + i);
        const __m512 sig = _mm512_div_ps(one, _mm512_add_ps(one, exp_avx512(_mm512_sub_ps(_mm512_setzero_ps(), x))));
        _mm512_storeu_ps(du + i, _mm512_mul_ps(d, _mm512_mul_ps(x, sig)));
        const __m512 slope = _mm512_mul_ps(sig, _mm512_add_ps(one, _mm512_mul_ps(x, _mm512_sub_ps(one, sig))));
        _mm512_storeu_ps(dg + i, _mm512_mul_ps(_mm512_mul_ps(d, _mm512_loadu_ps(u + i)), slope));
    }
    return i;
}
#endif

void ck_train_swiglu_forward(const float *g, const float *u, float *h, int64_t n) {
    int64_t i = 0;
#if CKT_X86
    if (ck_get_isa() >= CK_ISA_AVX512) i = silu_mul_avx512(g, u, h, n);
#endif
    for (; i < n; i++) {
        const float x = g[i];
        h[i] = x / (1.0f + ck_exp(-x)) * u[i];
    }
}

void ck_train_swiglu_backward(const float *dh, const float *g, const float *u, float *dg, float *du, int64_t n) {
    int64_t i = 0;
#if CKT_X86
    if (ck_get_isa() >= CK_ISA_AVX512) i = swiglu_backward_avx512(dh, g, u, dg, du, n);
#endif
    for (; i < n; i++) {
        const float x = g[i];
        const float sig = 1.0f / (1.0f + ck_exp(-x));
        const float silu = x * sig;
        du[i] = dh[i] * silu;
        dg[i] = dh[i] * u[i] * (sig * (1.0f + x * (1.0f - sig)));
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Loss, optimizer, reductions

// One exp per logit: e = exp(l - max), kept for the gradient exp(l - lse) = e / sum; the sum in double. With AVX-512
// the exp is the inference path's polynomial (exp_avx512, relative error ~2e-7) 16 lanes at a time and the sum runs
// in 8 double lanes; otherwise libm's double exp per logit.
#if CKT_X86
CKT_AVX512 static double cross_entropy_avx512(float *logits, int64_t n, int64_t target, float scale) {
    int64_t i = 0;
    __m512 vmx = _mm512_set1_ps(-INFINITY);
    for (; i + 16 <= n; i += 16) vmx = _mm512_max_ps(vmx, _mm512_loadu_ps(logits + i));
    float mx = _mm512_reduce_max_ps(vmx);
    for (; i < n; i++) if (logits[i] > mx) mx = logits[i];
    const float lt = logits[target];
    const double sum = exp_shift_sum_avx512(logits, n, mx);
    const double loss = (double)mx + log(sum) - (double)lt;
    const float fs = (float)(1.0 / sum) * scale;
    const __m512 f = _mm512_set1_ps(fs);
    for (i = 0; i + 16 <= n; i += 16) _mm512_storeu_ps(logits + i, _mm512_mul_ps(_mm512_loadu_ps(logits + i), f));
    for (; i < n; i++) logits[i] *= fs;
    logits[target] -= scale;
    return loss;
}
#endif

double ck_train_cross_entropy(float *logits, int64_t n, int64_t target, float scale) {
#if CKT_X86
    if (ck_get_isa() >= CK_ISA_AVX512) return cross_entropy_avx512(logits, n, target, scale);
#endif
    float mx = -INFINITY;
    for (int64_t i = 0; i < n; i++) if (logits[i] > mx) mx = logits[i];
    const float lt = logits[target];
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) {
        const double e = exp((double)logits[i] - (double)mx);
        sum += e;
        logits[i] = (float)e;
    }
    const double lse = (double)mx + log(sum);
    const double loss = lse - (double)lt;
    const double inv = 1.0 / sum;
    for (int64_t i = 0; i < n; i++) logits[i] = (float)((double)logits[i] * inv) * scale;
    logits[target] -= scale;
    return loss;
}

void ck_train_adamw(float *p, const float *g, float *m, float *v, int64_t n, float decay, float omb1, float beta2,
                    float omb2, float step_size, float bc2_sqrt, float eps) {
    for (int64_t i = 0; i < n; i++) {
        const float gi = g[i];
        if (decay != 1.0f) p[i] *= decay;
        m[i] += omb1 * (gi - m[i]);
        v[i] = v[i] * beta2 + omb2 * (gi * gi);
        const float denom = sqrtf(v[i]) / bc2_sqrt + eps;
        p[i] += -step_size * (m[i] / denom);
    }
}

double ck_train_sum_squares(const float *x, int64_t n) {
    double s = 0.0;
    for (int64_t i = 0; i < n; i++) s += (double)x[i] * (double)x[i];
    return s;
}

void ck_train_scale(float *x, int64_t n, float s) {
    for (int64_t i = 0; i < n; i++) x[i] *= s;
}
