// Row-wise operations for encoder models. Reductions run in a fixed order, so a row's result depends only on its
// own data (never on the batch or the thread that computes it).
#include "ck_encoder.h"
#include <math.h>

void ck_layernorm(const float *x, const float *w, const float *b, float *y, int64_t n, float eps) {
    if (n <= 0) return;
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) sum += (double)x[i];
    const double mean = sum / (double)n;
    double ss = 0.0;
    for (int64_t i = 0; i < n; i++) {
        const double d = (double)x[i] - mean;
        ss += d * d;
    }
    const double inv = 1.0 / sqrt(ss / (double)n + (double)eps);
    for (int64_t i = 0; i < n; i++) y[i] = (float)(((double)x[i] - mean) * inv) * w[i] + b[i];
}

void ck_gelu_erf(float *x, int64_t n) {
    const float r = 0.70710678118654752440f;  // 1/sqrt(2)
    for (int64_t i = 0; i < n; i++) {
        const float v = x[i];
        x[i] = 0.5f * v * (1.0f + erff(v * r));
    }
}

void ck_gelu_tanh(float *x, int64_t n) {
    const float c = 0.79788456080286535588f;  // sqrt(2/pi)
    for (int64_t i = 0; i < n; i++) {
        const float v = x[i];
        x[i] = 0.5f * v * (1.0f + tanhf(c * (v + 0.044715f * v * v * v)));
    }
}

void ck_relu(float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) x[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

void ck_add_bias(float *x, const float *b, int64_t rows, int64_t n) {
    for (int64_t r = 0; r < rows; r++) {
        float *xr = x + r * n;
        for (int64_t i = 0; i < n; i++) xr[i] += b[i];
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

void ck_encoder_attention_row(const float *q, const float *K, const float *V, int64_t kv_stride, int64_t n_pos,
                              int64_t n_heads, int64_t head_dim, float scale, float *out, float *scratch,
                              int64_t head_begin, int64_t head_end) {
    if (head_begin < 0) head_begin = 0;
    if (head_end > n_heads) head_end = n_heads;
    for (int64_t h = head_begin; h < head_end; h++) {
        const float *qh = q + h * head_dim;
        float *oh = out + h * head_dim;
        for (int64_t d = 0; d < head_dim; d++) oh[d] = 0.0f;
        if (n_pos <= 0) continue;
        float mx = -INFINITY;
        for (int64_t j = 0; j < n_pos; j++) {
            const float s = dot16(qh, K + j * kv_stride + h * head_dim, head_dim) * scale;
            scratch[j] = s;
            if (s > mx) mx = s;
        }
        double sum = 0.0;
        for (int64_t j = 0; j < n_pos; j++) {
            const float e = expf(scratch[j] - mx);
            scratch[j] = e;
            sum += (double)e;
        }
        const float inv = (float)(1.0 / sum);
        for (int64_t j = 0; j < n_pos; j++) {
            const float p = scratch[j] * inv;
            const float *vj = V + j * kv_stride + h * head_dim;
            for (int64_t d = 0; d < head_dim; d++) oh[d] += p * vj[d];
        }
    }
}
