// Row-wise operations. Reductions use a fixed number of partial sums combined in a fixed order,
// so the result depends only on the row's data.
#include "CCausalKernels.h"
#include <math.h>

#include "exp_impl.h"
#if defined(__GLIBC__)
#include <malloc.h>
#endif

void ck_keep_heap(void) {
#if defined(__GLIBC__)
    mallopt(M_MMAP_THRESHOLD, 32 << 20);   // glibc's largest threshold
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
#endif
}

void ck_rmsnorm(const float *x, const float *w, float *y, int64_t n, float eps) {
    double ss = 0.0;
    for (int64_t i = 0; i < n; i++) ss += (double)x[i] * (double)x[i];
    const float inv = (float)(1.0 / sqrt(ss / (double)n + (double)eps));
    for (int64_t i = 0; i < n; i++) y[i] = w[i] * (x[i] * inv);
}

void ck_rope_adjacent(float *v, int64_t n_heads, int64_t head_dim, int64_t rope_dim,
                      const float *cos_t, const float *sin_t) {
    for (int64_t h = 0; h < n_heads; h++) {
        float *p = v + h * head_dim;
        for (int64_t i = 0; i < rope_dim / 2; i++) {
            const float a = p[2 * i], b = p[2 * i + 1];
            p[2 * i] = a * cos_t[i] - b * sin_t[i];
            p[2 * i + 1] = a * sin_t[i] + b * cos_t[i];
        }
    }
}

void ck_rope_half(float *v, int64_t n_heads, int64_t head_dim, int64_t rope_dim,
                  const float *cos_t, const float *sin_t) {
    const int64_t half = rope_dim / 2;
    for (int64_t h = 0; h < n_heads; h++) {
        float *p = v + h * head_dim;
        for (int64_t i = 0; i < half; i++) {
            const float a = p[i], b = p[i + half];
            p[i] = a * cos_t[i] - b * sin_t[i];
            p[i + half] = b * cos_t[i] + a * sin_t[i];
        }
    }
}

// silu(g) * u = g / (1 + exp(-g)) * u with our own exp (ck_exp): the AVX-512 loop (exp_impl.h) gives the same bits.
void ck_silu_mul(float *g, const float *u, int64_t n) {
    int64_t i = 0;
#if defined(__x86_64__) || defined(__i386__)
    if (ck_get_isa() >= CK_ISA_AVX512) i = silu_mul_avx512(g, u, g, n);
#endif
    for (; i < n; i++) {
        const float x = g[i];
        g[i] = x / (1.0f + ck_exp(-x)) * u[i];
    }
}

void ck_add(float *x, const float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) x[i] += y[i];
}

void ck_softmax(float *x, int64_t n) {
    float mx = -INFINITY;
    for (int64_t i = 0; i < n; i++) if (x[i] > mx) mx = x[i];
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) { x[i] = expf(x[i] - mx); sum += x[i]; }
    const float inv = (float)(1.0 / sum);
    for (int64_t i = 0; i < n; i++) x[i] *= inv;
}
