// Training kernels for encoder-only (BERT-style) models: LayerNorm forward/backward and bias gradients.
// Single-threaded, fp32, row-major; the Swift layer (CausalLM/Training/BertMLMTraining.swift) calls them.
#ifndef CK_TRAIN_ENCODER_H
#define CK_TRAIN_ENCODER_H
#include <stdint.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/// LayerNorm of `rows` rows of n: y = (x - mean) * rstd * w + b, rstd = 1/sqrt(var + eps) (biased variance), with
/// ck_layernorm's arithmetic (double sums), so a row's y equals ck_layernorm's bit for bit. Saves mean and rstd per row
/// (as float) for the backward. y may alias x.
void ck_train_layernorm_forward(const float *x, const float *w, const float *b, float *y, float *mean, float *rstd,
                                int64_t rows, int64_t n, float eps);

/// Backward of LayerNorm given dy: xhat = (x - mean) * rstd, g = dy * w;
/// dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) (overwritten, or added when accumulate != 0);
/// dw += sum over rows of dy * xhat; db += sum over rows of dy. Row means in double. dx must not alias dy or x.
void ck_train_layernorm_backward(const float *dy, const float *x, const float *w, const float *mean,
                                 const float *rstd, float *dx, float *dw, float *db, int64_t rows, int64_t n,
                                 int accumulate);

/// db[j] += sum over rows r of dy[r * n + j] (a bias's gradient), summed in row order in double.
void ck_train_bias_backward(const float *dy, float *db, int64_t rows, int64_t n);

#ifdef __cplusplus
}
#endif
#endif
