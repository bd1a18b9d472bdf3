// Training kernels: the innermost loops of the backward pass and the optimizer (fp32, row-major).
// The Swift layer (CausalLM/Training) splits the work across threads; every function here is single-threaded.
#ifndef CK_TRAIN_H
#define CK_TRAIN_H
#include <stdint.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/// C (M x N) = [C +] A · B, all fp32.
/// A[i][k] is at A[i * a_row + k * a_col] (so a transposed A is a_row = 1, a_col = its row length);
/// B[k][j] at B[k * ldb + j] (contiguous in j); C[i][j] at C[i * ldc + j].
/// accumulate = 0 overwrites C, otherwise adds to it.
void ck_train_gemm(int64_t M, int64_t N, int64_t K, const float *A, int64_t a_row, int64_t a_col,
                   const float *B, int64_t ldb, float *C, int64_t ldc, int accumulate);

/// RMSNorm of `rows` rows of n: y = x * rstd * w, rstd = 1/sqrt(mean(x^2) + eps) (saved per row).
void ck_train_rmsnorm_forward(const float *x, const float *w, float *y, float *rstd, int64_t rows, int64_t n,
                              float eps);

/// Backward of RMSNorm: dx += rstd * (dy*w - x * rstd^2 * mean(dy*w*x)); dw += sum over rows of dy * x * rstd.
void ck_train_rmsnorm_backward(const float *dy, const float *x, const float *w, const float *rstd, float *dx,
                               float *dw, int64_t rows, int64_t n);

/// h = silu(g) * u, elementwise over n.
void ck_train_swiglu_forward(const float *g, const float *u, float *h, int64_t n);

/// Backward of h = silu(g) * u: dg = dh * u * silu'(g), du = dh * silu(g) (overwritten).
void ck_train_swiglu_backward(const float *dh, const float *g, const float *u, float *dg, float *du, int64_t n);

/// Attention of one query head over one sequence of `len` rows. With reverse = 0, row i attends to keys
/// 0..<max(i + 1, prefix) (prefix <= 1: causal; larger: bidirectional within the first `prefix` rows, the prefix-LM
/// mask; prefix = len: fully bidirectional). With reverse = 1, a row i < prefix attends to keys i..<prefix (it reads
/// the prefix right to left) and a row i >= prefix to 0...i (causal); no row ever reads a key after max(i, prefix - 1).
/// q, out: row i at q + i * q_stride; k, v: row j at k + j * kv_stride (head_dim floats each).
/// lse: row i at lse[i * lse_stride] (log-sum-exp of the scaled scores, kept for the backward).
/// scratch: len floats (used only by the per-pair path: a head_dim that is not a multiple of 16, or no memory for
/// the blocked one, which allocates its own tiles; train_attention.c).
void ck_train_attention_forward(const float *q, const float *k, const float *v, int64_t len, int64_t prefix,
                                int reverse, int64_t q_stride, int64_t kv_stride, int64_t head_dim, float scale,
                                float *out, float *lse, int64_t lse_stride, float *scratch);

/// Backward of `ck_train_attention_forward` for one query head (same prefix and reverse): recomputes the
/// probabilities from lse and adds to dq (rows like q), dk and dv (rows like k). dout, out: rows like q.
/// scratch: 2 * len floats (as for the forward).
void ck_train_attention_backward(const float *q, const float *k, const float *v, const float *out,
                                 const float *dout, const float *lse, int64_t lse_stride, int64_t len,
                                 int64_t prefix, int reverse, int64_t q_stride, int64_t kv_stride, int64_t head_dim,
                                 float scale, float *dq, float *dk, float *dv, float *scratch);

/// Cross-entropy of one row of logits (n classes) against `target`; overwrites the row with its gradient
/// scale * (softmax - onehot(target)) and returns the loss (log-sum-exp - logit[target]), in double.
double ck_train_cross_entropy(float *logits, int64_t n, int64_t target, float scale);

/// One AdamW step over n elements, as torch.optim.AdamW (single-tensor path) computes it in fp32:
///   p *= decay (= 1 - lr * weight_decay); m += omb1 * (g - m)  (omb1 = 1 - beta1); v = v * beta2 + omb2 * g * g;
///   p -= step_size * m / (sqrt(v) / bc2_sqrt + eps), step_size = lr / (1 - beta1^t), bc2_sqrt = sqrt(1 - beta2^t).
/// The scalars are computed in double by the caller and rounded once to float, as torch does.
void ck_train_adamw(float *p, const float *g, float *m, float *v, int64_t n, float decay, float omb1, float beta2,
                    float omb2, float step_size, float bc2_sqrt, float eps);

/// Sum of squares (double accumulation).
double ck_train_sum_squares(const float *x, int64_t n);

/// x *= s.
void ck_train_scale(float *x, int64_t n, float s);

#ifdef __cplusplus
}
#endif
#endif
