// Row-wise operations. Reductions use a fixed number of partial sums combined in a fixed order,
// so the result depends only on the row's data.
#include "ck_ops.h"
#include <math.h>

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

// Dot product with 16 partial sums, combined pairwise in a fixed order.
static inline float dot16(const float *a, const float *b, int64_t n) {
    float acc[16] = {0};
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; j++) acc[j] += a[i + j] * b[i + j];
    for (int j = 0; i < n; i++, j++) acc[j] += a[i] * b[i];
    for (int w = 8; w >= 1; w /= 2)
        for (int j = 0; j < w; j++) acc[j] += acc[j + w];
    return acc[0];
}

void ck_attention_row(const float *q, const float *K, const float *V, int64_t kv_stride, int64_t n_pos,
                      int64_t n_heads, int64_t n_kv_heads, int64_t head_dim, float scale,
                      float *out, float *scratch, int64_t head_begin, int64_t head_end) {
    const int64_t group = n_heads / n_kv_heads;
    for (int64_t h = head_begin; h < head_end; h++) {
        const int64_t g = h / group;
        const float *qh = q + h * head_dim;
        float mx = -INFINITY;
        for (int64_t j = 0; j < n_pos; j++) {
            const float s = dot16(qh, K + j * kv_stride + g * head_dim, head_dim) * scale;
            scratch[j] = s;
            if (s > mx) mx = s;
        }
        float sum = 0.0f;
        for (int64_t j = 0; j < n_pos; j++) {
            const float e = expf(scratch[j] - mx);
            scratch[j] = e;
            sum += e;
        }
        const float inv = 1.0f / sum;
        float *oh = out + h * head_dim;
        for (int64_t d = 0; d < head_dim; d++) oh[d] = 0.0f;
        for (int64_t j = 0; j < n_pos; j++) {
            const float p = scratch[j] * inv;
            const float *vj = V + j * kv_stride + g * head_dim;
            for (int64_t d = 0; d < head_dim; d++) oh[d] += p * vj[d];
        }
    }
}

void ck_silu_mul(float *g, const float *u, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        const float x = g[i];
        g[i] = x / (1.0f + expf(-x)) * u[i];
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
