// Row-wise operations for encoder models (BERT): LayerNorm, GELU, bias add, bidirectional attention.
// Every function works on one row (one token) at a time, so a row's result never depends on its batch.
#ifndef CK_ENCODER_H
#define CK_ENCODER_H
#include <stdint.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/// y[i] = (x[i] - mean(x)) / sqrt(var(x) + eps) * w[i] + b[i] for one row of n elements (biased variance, as
/// torch.nn.LayerNorm). Mean and variance are accumulated in double, in index order. y may alias x.
void ck_layernorm(const float *x, const float *w, const float *b, float *y, int64_t n, float eps);

/// x[i] = 0.5 x (1 + erf(x / sqrt 2)): GELU in its exact (erf) form, torch's default.
void ck_gelu_erf(float *x, int64_t n);

/// x[i] = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))): GELU's tanh approximation ("gelu_new").
void ck_gelu_tanh(float *x, int64_t n);

/// x[i] = max(x[i], 0).
void ck_relu(float *x, int64_t n);

/// x[r * n + i] += b[i] for every row r of `rows`.
void ck_add_bias(float *x, const float *b, int64_t rows, int64_t n);

/// Bidirectional attention of one query row against every key/value row 0..<n_pos of its own sequence.
/// q: (n_heads, head_dim). K, V: n_pos rows of `kv_stride` floats, head h at offset h*head_dim.
/// out: (n_heads, head_dim). Heads [head_begin, head_end) only. scratch: n_pos floats.
/// Scores are dot products of 16 partial sums combined in a fixed order, scaled, then a max-subtracted softmax
/// (exp in float, the sum in double); the output accumulates p_j * v_j in key order. The result depends only on
/// this row's query and its sequence's keys and values.
void ck_encoder_attention_row(const float *q, const float *K, const float *V, int64_t kv_stride, int64_t n_pos,
                              int64_t n_heads, int64_t head_dim, float scale, float *out, float *scratch,
                              int64_t head_begin, int64_t head_end);

#ifdef __cplusplus
}
#endif
#endif
