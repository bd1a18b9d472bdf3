// Row-wise operations for T5: attention with an additive score bias (relative position buckets) and no 1/sqrt(d)
// scaling, and an elementwise product (gated feed-forward). One row at a time, so a row's result never depends on
// its batch.
#ifndef CK_T5_H
#define CK_T5_H
#include <stdint.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Attention of one query row against key/value rows 0..<n_pos of its own sequence, T5's way:
///     score_j = q_h · k_j + bias[h * bias_stride + j]      (bias may be NULL: no bias; no 1/sqrt(d) scaling)
///     out_h   = sum_j softmax(score)_j v_j
/// q: (n_heads, head_dim). K, V: n_pos rows of `kv_stride` floats, head h at offset h*head_dim.
/// out: (n_heads, head_dim). Heads [head_begin, head_end) only. scratch: n_pos floats.
/// Dot products use 16 partial sums combined in a fixed order; softmax subtracts the max, exp in float, the sum in
/// double; the output accumulates p_j * v_j in key order. The result depends only on this row and its sequence.
void ck_t5_attention_row(const float *q, const float *K, const float *V, int64_t kv_stride, int64_t n_pos,
                         int64_t n_heads, int64_t head_dim, const float *bias, int64_t bias_stride,
                         float *out, float *scratch, int64_t head_begin, int64_t head_end);

/// x[i] *= y[i].
void ck_mul(float *x, const float *y, int64_t n);

#ifdef __cplusplus
}
#endif
#endif
