// Training kernels for T5 (encoder-decoder): attention with an additive relative-position bias and no 1/sqrt(d)
// scaling, over a query block and a key block of possibly different lengths (cross-attention), with its backward;
// and the backward of T5's feed-forward activations. Single-threaded, fp32, row-major; the Swift layer
// (CausalLM/Training/T5Training.swift) splits the work by (sequence, head).
#ifndef CK_T5_TRAIN_H
#define CK_T5_TRAIN_H
#include <stdint.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Attention of one head: n_q query rows against n_k key/value rows of the same example.
///     s_ij = q_i · k_j + bias[j - i]        (bias points at relative position 0; NULL: no bias)
///     out_i = sum_j softmax_j(s_i)_j v_j    over j < n_k, or j <= i when `causal`
/// q, out: row i at + i * q_stride; k, v: row j at + j * kv_stride (head_dim floats each).
/// stats: row i at stats + i * stats_stride, two floats: the row's max score and 1/sum(exp(s - max)), kept for the
/// backward. scratch: n_k floats.
/// The arithmetic is ck_t5_attention_row's (t5.c) operation for operation, so the training forward computes the
/// inference forward's bits.
void ck_t5_train_attention_forward(const float *q, const float *k, const float *v, int64_t n_q, int64_t n_k,
                                   int causal, int64_t q_stride, int64_t kv_stride, int64_t head_dim,
                                   const float *bias, float *out, float *stats, int64_t stats_stride,
                                   float *scratch);

/// Backward of ck_t5_train_attention_forward for one head. Recomputes each probability exactly as the forward did
/// (from stats) and ADDS to dq (rows like q), dk, dv (rows like k) and, when dbias is not NULL, dbias[j - i]
/// (the gradient of the bias by relative position; dbias points at relative position 0). dout, out: rows like q.
/// scratch: 2 * n_k floats.
void ck_t5_train_attention_backward(const float *q, const float *k, const float *v, const float *out,
                                    const float *dout, const float *stats, int64_t stats_stride, int64_t n_q,
                                    int64_t n_k, int causal, int64_t q_stride, int64_t kv_stride, int64_t head_dim,
                                    const float *bias, float *dq, float *dk, float *dv, float *dbias,
                                    float *scratch);

/// Feed-forward activations (T5Config.FeedForward): 0 relu, 1 exact GELU (erf), 2 GELU tanh approximation
/// ("gelu_new", HF's NewGELUActivation). The forward is T5Model's: h = act(a0) (ck_relu / ck_gelu_erf /
/// ck_gelu_tanh), times a1 when gated (ck_mul).
enum { CK_T5_ACT_RELU = 0, CK_T5_ACT_GELU_ERF = 1, CK_T5_ACT_GELU_TANH = 2 };

/// Backward of that forward given dh, n elements: overwrites da0 = dh * act'(a0) [* a1] and, when gated (a1 and
/// da1 not NULL), da1 = dh * act(a0), act(a0) computed as the forward's kernel computes it.
void ck_t5_train_ff_backward(int act, const float *dh, const float *a0, const float *a1, float *da0, float *da1,
                             int64_t n);

#ifdef __cplusplus
}
#endif
#endif
