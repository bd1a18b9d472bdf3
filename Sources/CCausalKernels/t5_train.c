// T5 training kernels (see ck_t5_train.h): attention with a relative-position bias over a query block and a key
// block, its backward, and the feed-forward activations' backward. Plain fp32 loops in a fixed order, compiled
// like t5.c (no per-function target attributes), so the forward gives ck_t5_attention_row's bits.
#include "ck_t5_train.h"
#include <math.h>
#include <string.h>

// The dot product of t5.c (16 partial sums, the tail folded into the first lanes, combined pairwise in a fixed
// order). It must stay identical to t5.c's: the training forward's scores are the inference forward's.
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

static inline int64_t keys_of(int64_t i, int64_t n_k, int causal) { return causal ? (i + 1 < n_k ? i + 1 : n_k) : n_k; }

void ck_t5_train_attention_forward(const float *q, const float *k, const float *v, int64_t n_q, int64_t n_k,
                                   int causal, int64_t q_stride, int64_t kv_stride, int64_t head_dim,
                                   const float *bias, float *out, float *stats, int64_t stats_stride,
                                   float *scratch) {
    for (int64_t i = 0; i < n_q; i++) {
        const float *qi = q + i * q_stride;
        float *oi = out + i * q_stride;
        float *st = stats + i * stats_stride;
        for (int64_t d = 0; d < head_dim; d++) oi[d] = 0.0f;
        const int64_t nk = keys_of(i, n_k, causal);
        if (nk <= 0) { st[0] = 0.0f; st[1] = 0.0f; continue; }
        float mx = -INFINITY;
        for (int64_t j = 0; j < nk; j++) {
            float s = dot16(qi, k + j * kv_stride, head_dim);
            if (bias) s += bias[j - i];
            scratch[j] = s;
            if (s > mx) mx = s;
        }
        double sum = 0.0;
        for (int64_t j = 0; j < nk; j++) {
            const float e = expf(scratch[j] - mx);
            scratch[j] = e;
            sum += (double)e;
        }
        const float inv = (float)(1.0 / sum);
        for (int64_t j = 0; j < nk; j++) {
            const float p = scratch[j] * inv;
            const float *vj = v + j * kv_stride;
            for (int64_t d = 0; d < head_dim; d++) oi[d] += p * vj[d];
        }
        st[0] = mx;
        st[1] = inv;
    }
}

void ck_t5_train_attention_backward(const float *q, const float *k, const float *v, const float *out,
                                    const float *dout, const float *stats, int64_t stats_stride, int64_t n_q,
                                    int64_t n_k, int causal, int64_t q_stride, int64_t kv_stride, int64_t head_dim,
                                    const float *bias, float *dq, float *dk, float *dv, float *dbias,
                                    float *scratch) {
    float *p = scratch, *ds = scratch + n_k;
    for (int64_t i = 0; i < n_q; i++) {
        const float *qi = q + i * q_stride, *doi = dout + i * q_stride;
        const int64_t nk = keys_of(i, n_k, causal);
        if (nk <= 0) continue;
        const float mx = stats[i * stats_stride], inv = stats[i * stats_stride + 1];
        // D_i = dout_i · out_i = sum_j p_ij (dout_i · v_j)
        const float di = dot16(doi, out + i * q_stride, head_dim);
        for (int64_t j = 0; j < nk; j++) {
            float s = dot16(qi, k + j * kv_stride, head_dim);
            if (bias) s += bias[j - i];
            p[j] = expf(s - mx) * inv;   // the forward's probability, bit for bit
            const float dp = dot16(doi, v + j * kv_stride, head_dim);
            ds[j] = p[j] * (dp - di);
        }
        float *dqi = dq + i * q_stride;
        for (int64_t j = 0; j < nk; j++) {
            const float *kj = k + j * kv_stride;
            float *dkj = dk + j * kv_stride, *dvj = dv + j * kv_stride;
            const float g = ds[j], pj = p[j];
            for (int64_t d = 0; d < head_dim; d++) {
                dqi[d] += g * kj[d];
                dkj[d] += g * qi[d];
                dvj[d] += pj * doi[d];
            }
            if (dbias) dbias[j - i] += g;
        }
    }
}

void ck_t5_train_ff_backward(int act, const float *dh, const float *a0, const float *a1, float *da0, float *da1,
                             int64_t n) {
    const float r = 0.70710678118654752440f;   // 1/sqrt(2), as ck_gelu_erf
    const float rpi = 0.39894228040143267794f; // 1/sqrt(2 pi)
    const float c = 0.79788456080286535588f;   // sqrt(2/pi), as ck_gelu_tanh
    for (int64_t i = 0; i < n; i++) {
        const float x = a0[i];
        float f, df;   // act(x) (as the forward computes it) and act'(x)
        switch (act) {
        case CK_T5_ACT_GELU_ERF: {
            const float cdf = 0.5f * (1.0f + erff(x * r));
            f = 0.5f * x * (1.0f + erff(x * r));
            df = cdf + x * (rpi * expf(-0.5f * x * x));
            break;
        }
        case CK_T5_ACT_GELU_TANH: {
            const float t = tanhf(c * (x + 0.044715f * x * x * x));
            f = 0.5f * x * (1.0f + t);
            df = 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * c * (1.0f + 3.0f * 0.044715f * x * x);
            break;
        }
        default:
            f = x > 0.0f ? x : 0.0f;
            df = x > 0.0f ? 1.0f : 0.0f;
        }
        if (a1 && da1) {
            da0[i] = dh[i] * a1[i] * df;
            da1[i] = dh[i] * f;
        } else {
            da0[i] = dh[i] * df;
        }
    }
}
