// T5 attention (additive position bias, unscaled scores) and an elementwise product. Reductions run in a fixed
// order, so a row's result depends only on its own data (never on the batch or the thread that computes it).
#include "ck_t5.h"
#include <math.h>

// Dot product with 16 partial sums, combined pairwise in a fixed order (lanes j + j+8, + j+4, + j+2, + j+1).
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

void ck_t5_attention_row(const float *q, const float *K, const float *V, int64_t kv_stride, int64_t n_pos,
                         int64_t n_heads, int64_t head_dim, const float *bias, int64_t bias_stride,
                         float *out, float *scratch, int64_t head_begin, int64_t head_end) {
    if (head_begin < 0) head_begin = 0;
    if (head_end > n_heads) head_end = n_heads;
    for (int64_t h = head_begin; h < head_end; h++) {
        const float *qh = q + h * head_dim;
        const float *bh = bias ? bias + h * bias_stride : NULL;
        float *oh = out + h * head_dim;
        for (int64_t d = 0; d < head_dim; d++) oh[d] = 0.0f;
        if (n_pos <= 0) continue;
        float mx = -INFINITY;
        for (int64_t j = 0; j < n_pos; j++) {
            float s = dot16(qh, K + j * kv_stride + h * head_dim, head_dim);
            if (bh) s += bh[j];
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

void ck_mul(float *x, const float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) x[i] *= y[i];
}
