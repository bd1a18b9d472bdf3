// Row-wise operations for CausalLM: RMSNorm, RoPE, attention over one sequence's KV cache, SwiGLU.
// Every function works on one row (one token) at a time, so a row's result never depends on its batch.
#ifndef CK_OPS_H
#define CK_OPS_H
#include <stdint.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/// y[i] = x[i] / sqrt(mean(x^2) + eps) * w[i], for one row of n elements. y may alias x.
void ck_rmsnorm(const float *x, const float *w, float *y, int64_t n, float eps);

/// Rotates adjacent pairs (2i, 2i+1) of the first `rope_dim` elements of each head of one row
/// (GGUF's row order for LLaMA Q/K), by angles whose cos/sin are given (rope_dim/2 each).
void ck_rope_adjacent(float *v, int64_t n_heads, int64_t head_dim, int64_t rope_dim,
                      const float *cos_t, const float *sin_t);

/// Rotates pairs (i, i + rope_dim/2) of each head (Hugging Face's rotate_half order).
void ck_rope_half(float *v, int64_t n_heads, int64_t head_dim, int64_t rope_dim,
                  const float *cos_t, const float *sin_t);

/// Causal attention of one query row against keys/values 0..<n_pos of its own sequence.
/// q: (n_heads, head_dim). K, V: key/value head g at position j starts at j*kv_stride + g*head_stride: position-major
/// (kv_stride = n_kv_heads*head_dim, head_stride = head_dim) or head-major (kv_stride = head_dim, head_stride =
/// capacity*head_dim; each head's keys are one contiguous run, which streams from memory faster). The layout only
/// changes where values are read from, never the arithmetic.
/// out: (n_heads, head_dim). Heads [head_begin, head_end) only.
/// scratch: (head_end - head_begin) * n_pos floats (head h uses the n_pos floats at (h - head_begin) * n_pos), or
/// NULL: the calling thread's own buffer (grown as needed, freed when the thread exits).
/// Query head h reads KV head h / (n_heads / n_kv_heads); passing all heads of a KV group in one call lets them
/// share each block of keys and values (faster; a head's result does not depend on the range it came in).
void ck_attention_row(const float *q, const float *K, const float *V, int64_t kv_stride, int64_t head_stride, int64_t n_pos,
                      int64_t n_heads, int64_t n_kv_heads, int64_t head_dim, float scale,
                      float *out, float *scratch, int64_t head_begin, int64_t head_end);

/// ck_attention_row over keys and values stored as IEEE binary16 (a half-precision KV cache): each is converted
/// exactly to fp32 as it is read, then the arithmetic is ck_attention_row's, so the result equals ck_attention_row
/// on the converted values, with the same bits on every ISA level. Strides count elements, as above.
void ck_attention_row_f16(const float *q, const uint16_t *K, const uint16_t *V, int64_t kv_stride, int64_t head_stride,
                          int64_t n_pos, int64_t n_heads, int64_t n_kv_heads, int64_t head_dim, float scale,
                          float *out, float *scratch, int64_t head_begin, int64_t head_end);

/// dst[i] = src[i] rounded to IEEE binary16, to nearest, ties to even (ck_float_to_half; the same bits on every ISA
/// level: the AVX-512 path is the hardware conversion with that rounding).
void ck_f32_to_f16(const float *src, uint16_t *dst, int64_t n);

/// dst[i] = src[i] (IEEE binary16) as fp32, exactly (ck_half_to_float).
void ck_f16_to_f32(const uint16_t *src, float *dst, int64_t n);

/// exp(x) with the same bits on every ISA level (relative error ~2e-7); 0 below -87.
float ck_exp(float x);

/// g[i] = silu(g[i]) * u[i].
void ck_silu_mul(float *g, const float *u, int64_t n);

/// x[i] += y[i].
void ck_add(float *x, const float *y, int64_t n);

/// glibc only (else nothing): blocks under 32 MiB come from the heap and freed memory stays there, so that buffers
/// allocated and freed every training step are not mapped, page-faulted and zero-filled anew each time.
void ck_keep_heap(void);

/// In-place softmax over n elements.
void ck_softmax(float *x, int64_t n);

#ifdef __cplusplus
}
#endif
#endif
