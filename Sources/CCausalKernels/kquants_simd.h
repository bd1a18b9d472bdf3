// Internal to matmul.c (included once, inside its x86 section, after the AVX-512 and AVX2 helpers): the K-quant
// super-block kernels (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K; 256 elements per super-block).
//
// A super-block is decoded in two steps:
//   1. its scales, once: the per-group coefficients cf (a = the group's scale, b = minus the group's min, as
//      exact fp32 products of the fp16 super-block scales and the small integer sub-scales);
//   2. each 32-element chunk c (elements 32c .. 32c+31), in registers: the chunk's codes (bytes), then one fp32
//      value per code, with the very operation of the scalar dequantizer (kquants_impl.h):
//        Q2_K / Q4_K / Q5_K  fma(a, q, b)            Q3_K  a * (q - 4)            Q6_K  a * (q - 32)
//      (AVX-512 looks the value up in a table of the 16 or 32 possible values of the group, built with that same
//      operation; AVX2 computes it per element).
// Groups: Q4_K / Q5_K have 8 sub-blocks of 32 (cf[0..7] = a, cf[8..15] = b); Q2_K, Q3_K and Q6_K 16 groups of
// 16 (cf[0..15] = a, cf[16..31] = b for Q2_K).
// The fused kernels feed chunk after chunk, in increasing k, into the same 16-lane accumulators as the other
// types, so every (token, row) pair performs the canonical operation sequence of CCausalKernels.h.

// ---------------------------------------------------------------------------------------------------------------
// Shared by both levels

// Step 1, portable: the coefficients of one super-block (same values as kcoef512).
static void kcoef_scalar(const int type, const uint8_t *blk, float *cf) {
    switch (type) {
    case CK_TYPE_Q2_K: {
        const float d = ck_half_to_float(load_u16(blk + 80)), dmin = ck_half_to_float(load_u16(blk + 82));
        for (int g = 0; g < 16; g++) {
            cf[g] = d * (float)(blk[g] & 15);
            cf[16 + g] = -(dmin * (float)(blk[g] >> 4));
        }
        break;
    }
    case CK_TYPE_Q3_K: {
        const float d = ck_half_to_float(load_u16(blk + 108));
        for (int g = 0; g < 16; g++) cf[g] = d * (float)k3_scale(blk + 96, g);
        break;
    }
    case CK_TYPE_Q4_K:
    case CK_TYPE_Q5_K: {
        const float d = ck_half_to_float(load_u16(blk)), dmin = ck_half_to_float(load_u16(blk + 2));
        for (int i = 0; i < 8; i++) {
            int sc, m;
            k4_scale_min(blk + 4, i, &sc, &m);
            cf[i] = d * (float)sc;
            cf[8 + i] = -(dmin * (float)m);
        }
        break;
    }
    case CK_TYPE_Q6_K: {
        const float d = ck_half_to_float(load_u16(blk + 208));
        for (int g = 0; g < 16; g++) cf[g] = d * (float)(int8_t)blk[192 + g];
        break;
    }
    default:
        break;
    }
}

// Step 2, the codes: byte i = code of element 32c + i (Q2_K 0..3, Q3_K 0..7 standing for q + 4, Q4_K 0..15,
// Q5_K 0..31, Q6_K 0..63). Byte-wise shifts are 16-bit shifts followed by a mask that drops the bits that
// crossed from the neighbouring byte.
CK_INLINE CK_AVX2 __m256i kcodes32(const int type, const uint8_t *blk, const int c) {
    const __m256i m4 = _mm256_set1_epi8(15);
#define LD(p) _mm256_loadu_si256((const __m256i *)(p))
#define SRL(v, n) _mm256_srl_epi16((v), _mm_cvtsi32_si128(n))
    switch (type) {
    case CK_TYPE_Q2_K: {
        const __m256i q = LD(blk + 16 + 32 * (c >> 2));
        return _mm256_and_si256(SRL(q, 2 * (c & 3)), _mm256_set1_epi8(3));
    }
    case CK_TYPE_Q3_K: {
        const __m256i q = LD(blk + 32 + 32 * (c >> 2));
        const __m256i lo = _mm256_and_si256(SRL(q, 2 * (c & 3)), _mm256_set1_epi8(3));
        const __m256i hb = _mm256_and_si256(SRL(LD(blk), 4 * (c >> 2) + (c & 3)), _mm256_set1_epi8(1));
        return _mm256_or_si256(lo, _mm256_slli_epi16(hb, 2));
    }
    case CK_TYPE_Q4_K: {
        const __m256i q = LD(blk + 16 + 32 * (c >> 1));
        return (c & 1) ? _mm256_and_si256(_mm256_srli_epi16(q, 4), m4) : _mm256_and_si256(q, m4);
    }
    case CK_TYPE_Q5_K: {
        const __m256i q = LD(blk + 48 + 32 * (c >> 1));
        const __m256i nib = (c & 1) ? _mm256_and_si256(_mm256_srli_epi16(q, 4), m4) : _mm256_and_si256(q, m4);
        const __m256i hb = _mm256_and_si256(SRL(LD(blk + 16), c), _mm256_set1_epi8(1));
        return _mm256_or_si256(nib, _mm256_slli_epi16(hb, 4));
    }
    case CK_TYPE_Q6_K: {
        const int h = c >> 2, g = c & 3;
        const __m256i q = LD(blk + 64 * h + 32 * (g & 1));
        const __m256i nib = g >= 2 ? _mm256_and_si256(_mm256_srli_epi16(q, 4), m4) : _mm256_and_si256(q, m4);
        const __m256i hb = _mm256_and_si256(SRL(LD(blk + 128 + 32 * h), 2 * g), _mm256_set1_epi8(3));
        return _mm256_or_si256(nib, _mm256_slli_epi16(hb, 4));
    }
    default:
        return _mm256_setzero_si256();
    }
#undef LD
#undef SRL
}

// ---------------------------------------------------------------------------------------------------------------
// AVX-512

// Step 1 with SIMD conversions and products (the same exact products as kcoef_scalar).
CK_INLINE CK_AVX512 void kcoef512(const int type, const uint8_t *blk, float *cf) {
    switch (type) {
    case CK_TYPE_Q2_K: {
        const __m128i s = _mm_loadu_si128((const __m128i *)blk), m4 = _mm_set1_epi8(15);
        const __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(s, m4)));
        const __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(s, 4), m4)));
        _mm512_storeu_ps(cf, _mm512_mul_ps(_mm512_set1_ps(h2f_f16c(blk + 80)), lo));
        _mm512_storeu_ps(cf + 16, _mm512_mul_ps(_mm512_set1_ps(-h2f_f16c(blk + 82)), hi));
        break;
    }
    case CK_TYPE_Q3_K: {
        // The 16 6-bit scales as bytes: low nibbles from bytes 0-7 (groups 0-7) and their high nibbles
        // (groups 8-15), bits 4-5 from bytes 8-11 (2 bits per group, group g at bits 2 (g / 4) of byte 8 + g % 4).
        const uint32_t s0 = load_u32(blk + 96), s1 = load_u32(blk + 100), s2 = load_u32(blk + 104);
        const uint32_t lo4 = 0x0F0F0F0Fu, lo2 = 0x03030303u;
        const __m128i v = _mm_setr_epi32((int)((s0 & lo4) | (s2 & lo2) << 4), (int)((s1 & lo4) | ((s2 >> 2) & lo2) << 4),
                                         (int)(((s0 >> 4) & lo4) | ((s2 >> 4) & lo2) << 4),
                                         (int)(((s1 >> 4) & lo4) | ((s2 >> 6) & lo2) << 4));
        const __m512 sc = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_cvtepu8_epi32(v), _mm512_set1_epi32(32)));
        _mm512_storeu_ps(cf, _mm512_mul_ps(_mm512_set1_ps(h2f_f16c(blk + 108)), sc));
        break;
    }
    case CK_TYPE_Q4_K:
    case CK_TYPE_Q5_K: {
        // Scales of sub-blocks 0-3 are bits 0-5 of bytes 0-3 of `scales`, mins bits 0-5 of bytes 4-7; sub-blocks
        // 4-7 take their low 4 bits from bytes 8-11 (scale: low nibble, min: high nibble) and bits 4-5 from bits
        // 6-7 of bytes 0-3 (scales) / 4-7 (mins). With the block's first 16 bytes v = {d, dmin, scales[12]} in
        // one register, as dwords: x = {scales 0-3, 8-11, 4-7, 8-11}, y = {0, scales 0-3, 0, scales 4-7}:
        //   bytes = ((x >> {0, 0, 0, 4}) & {3F.., 0F.., 3F.., 0F..}) | ((y >> 6) & 03..) << 4
        // = {sc 0-3, sc 4-7, m 0-3, m 4-7}, one byte each.
        const __m128i v = _mm_loadu_si128((const __m128i *)blk);
        const __m128i x = _mm_shuffle_epi8(v, _mm_setr_epi8(4, 5, 6, 7, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13, 14, 15));
        const __m128i y = _mm_shuffle_epi8(v, _mm_setr_epi8(-1, -1, -1, -1, 4, 5, 6, 7, -1, -1, -1, -1, 8, 9, 10, 11));
        const __m128i lo = _mm_and_si128(_mm_srlv_epi32(x, _mm_setr_epi32(0, 0, 0, 4)),
                                         _mm_setr_epi32(0x3F3F3F3F, 0x0F0F0F0F, 0x3F3F3F3F, 0x0F0F0F0F));
        const __m128i hi = _mm_slli_epi32(_mm_and_si128(_mm_srli_epi32(y, 6), _mm_set1_epi32(0x03030303)), 4);
        // {d, -dmin} from the first two halves, spread to 8 lanes each.
        const __m128 dm = _mm_xor_ps(_mm_cvtph_ps(v), _mm_setr_ps(0.0f, -0.0f, 0.0f, 0.0f));
        const __m512 dd = _mm512_permutexvar_ps(_mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0),
                                                _mm512_castps128_ps512(dm));
        _mm512_storeu_ps(cf, _mm512_mul_ps(dd, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_or_si128(lo, hi)))));
        break;
    }
    case CK_TYPE_Q6_K: {
        const __m512 sc = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(blk + 192))));
        _mm512_storeu_ps(cf, _mm512_mul_ps(_mm512_set1_ps(h2f_f16c(blk + 208)), sc));
        break;
    }
    default:
        break;
    }
}

// Step 2: chunk c of the super-block at blk -> w0 (elements 32c .. 32c+15), w1 (32c+16 .. 32c+31).
CK_INLINE CK_AVX512 void kchunk512(const int type, const uint8_t *blk, const int c, const float *cf, __m512 *w0,
                                  __m512 *w1) {
    const __m512 iota = _mm512_set_ps(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    if (type == CK_TYPE_Q4_K) {
        // Codes straight from memory: a permute reads only the low 4 bits of each index.
        const uint8_t *q = blk + 16 + 32 * (c >> 1);
        __m512i i0 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)q));
        __m512i i1 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(q + 16)));
        if (c & 1) {
            i0 = _mm512_srli_epi32(i0, 4);
            i1 = _mm512_srli_epi32(i1, 4);
        }
        const __m512 t = _mm512_fmadd_ps(_mm512_set1_ps(cf[c]), iota, _mm512_set1_ps(cf[8 + c]));
        *w0 = _mm512_permutexvar_ps(i0, t);
        *w1 = _mm512_permutexvar_ps(i1, t);
        return;
    }
    const __m256i codes = kcodes32(type, blk, c);
    if (type == CK_TYPE_Q6_K) {
        const __m256i s = _mm256_sub_epi8(codes, _mm256_set1_epi8(32));  // q - 32, as int8
        const __m512 f0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(s)));
        const __m512 f1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(s, 1)));
        *w0 = _mm512_mul_ps(_mm512_set1_ps(cf[2 * c]), f0);
        *w1 = _mm512_mul_ps(_mm512_set1_ps(cf[2 * c + 1]), f1);
        return;
    }
    const __m512i i0 = _mm512_cvtepu8_epi32(_mm256_castsi256_si128(codes));
    const __m512i i1 = _mm512_cvtepu8_epi32(_mm256_extracti128_si256(codes, 1));
    switch (type) {
    case CK_TYPE_Q5_K: {
        const __m512 a = _mm512_set1_ps(cf[c]), b = _mm512_set1_ps(cf[8 + c]);
        const __m512 t0 = _mm512_fmadd_ps(a, iota, b);
        const __m512 t1 = _mm512_fmadd_ps(a, _mm512_add_ps(iota, _mm512_set1_ps(16.0f)), b);
        *w0 = _mm512_permutex2var_ps(t0, i0, t1);
        *w1 = _mm512_permutex2var_ps(t0, i1, t1);
        break;
    }
    case CK_TYPE_Q2_K: {
        const __m512 t0 = _mm512_fmadd_ps(_mm512_set1_ps(cf[2 * c]), iota, _mm512_set1_ps(cf[16 + 2 * c]));
        const __m512 t1 = _mm512_fmadd_ps(_mm512_set1_ps(cf[2 * c + 1]), iota, _mm512_set1_ps(cf[17 + 2 * c]));
        *w0 = _mm512_permutexvar_ps(i0, t0);
        *w1 = _mm512_permutexvar_ps(i1, t1);
        break;
    }
    case CK_TYPE_Q3_K: {
        const __m512 im4 = _mm512_sub_ps(iota, _mm512_set1_ps(4.0f));  // q - 4, exact
        *w0 = _mm512_permutexvar_ps(i0, _mm512_mul_ps(_mm512_set1_ps(cf[2 * c]), im4));
        *w1 = _mm512_permutexvar_ps(i1, _mm512_mul_ps(_mm512_set1_ps(cf[2 * c + 1]), im4));
        break;
    }
    default:
        *w0 = *w1 = _mm512_setzero_ps();
        break;
    }
}

// Chunks 2p and 2p+1 (elements 64p .. 64p+63) -> w[0..3]. Q4_K decodes both from the same 32 bytes: the low
// nibbles as they are (a permute reads only the low 4 bits of each index), the high ones shifted down.
CK_INLINE CK_AVX512 void kpair512(const int type, const uint8_t *blk, const int p, const float *cf, __m512 w[4]) {
    if (type == CK_TYPE_Q4_K) {
        const __m512 iota = _mm512_set_ps(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
        const uint8_t *q = blk + 16 + 32 * p;
        const __m512i i0 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)q));
        const __m512i i1 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(q + 16)));
        const __m512 t0 = _mm512_fmadd_ps(_mm512_set1_ps(cf[2 * p]), iota, _mm512_set1_ps(cf[8 + 2 * p]));
        const __m512 t1 = _mm512_fmadd_ps(_mm512_set1_ps(cf[2 * p + 1]), iota, _mm512_set1_ps(cf[9 + 2 * p]));
        w[0] = _mm512_permutexvar_ps(i0, t0);
        w[1] = _mm512_permutexvar_ps(i1, t0);
        w[2] = _mm512_permutexvar_ps(_mm512_srli_epi32(i0, 4), t1);
        w[3] = _mm512_permutexvar_ps(_mm512_srli_epi32(i1, 4), t1);
        return;
    }
    kchunk512(type, blk, 2 * p, cf, &w[0], &w[1]);
    kchunk512(type, blk, 2 * p + 1, cf, &w[2], &w[3]);
}

CK_INLINE CK_AVX512 void dqk512_type(const int type, const int bbytes, const uint8_t *src, float *dst, int64_t count) {
    float cf[32] __attribute__((aligned(64)));
    for (int64_t s = 0; s < count / 256; s++, src += bbytes, dst += 256) {
        kcoef512(type, src, cf);
        for (int p = 0; p < 4; p++) {
            __m512 w[4];
            kpair512(type, src, p, cf, w);
            for (int i = 0; i < 4; i++) _mm512_storeu_ps(dst + 64 * p + 16 * i, w[i]);
        }
    }
}

static CK_AVX512 void dqk_avx512(int type, const uint8_t *src, float *dst, int64_t count) {
    switch (type) {
    case CK_TYPE_Q2_K: dqk512_type(CK_TYPE_Q2_K, 84, src, dst, count); break;
    case CK_TYPE_Q3_K: dqk512_type(CK_TYPE_Q3_K, 110, src, dst, count); break;
    case CK_TYPE_Q4_K: dqk512_type(CK_TYPE_Q4_K, 144, src, dst, count); break;
    case CK_TYPE_Q5_K: dqk512_type(CK_TYPE_Q5_K, 176, src, dst, count); break;
    case CK_TYPE_Q6_K: dqk512_type(CK_TYPE_Q6_K, 210, src, dst, count); break;
    default: dq_scalar(type, src, dst, count); break;
    }
}

// Fused kernel: R rows x T tokens, super-block by super-block; with `panel` set it also writes the decoded rows.
CK_INLINE CK_AVX512 void fkk512_rt(const int type, const int bbytes, const int R, const int T, const uint8_t *W,
                                  size_t rb, const float *x, int64_t ldx, int64_t K, float *y, int64_t ldy,
                                  float *panel, int64_t ldp) {
    __m512 acc[FK512_TR][FK512_TT];
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) acc[r][t] = _mm512_setzero_ps();
    float cf[FK512_TR][32] __attribute__((aligned(64)));
    for (int64_t s = 0; s < K / 256; s++) {
        for (int r = 0; r < R; r++) {
            const uint8_t *blk = W + (size_t)r * rb + (size_t)s * bbytes;
            // The same super-block of the matching row of the next tile, into L2 (see fk512_rt).
            for (int off = 0; off < bbytes; off += 64) _mm_prefetch((const char *)(blk + (size_t)R * rb + off), _MM_HINT_T1);
            kcoef512(type, blk, cf[r]);
        }
        for (int p = 0; p < 4; p++) {
            const int64_t k = 256 * s + 64 * p;
            // (Unrolled so that the accumulators stay in registers.)
#pragma clang loop unroll(full)
            for (int r = 0; r < R; r++) {
                __m512 w[4];
                kpair512(type, W + (size_t)r * rb + (size_t)s * bbytes, p, cf[r], w);
                if (panel)
                    for (int i = 0; i < 4; i++) _mm512_storeu_ps(panel + r * ldp + k + 16 * i, w[i]);
#pragma clang loop unroll(full)
                for (int i = 0; i < 4; i++)
#pragma clang loop unroll(full)
                    for (int t = 0; t < T; t++) acc[r][t] = _mm512_fmadd_ps(w[i], _mm512_loadu_ps(x + t * ldx + k + 16 * i), acc[r][t]);
            }
        }
    }
    if (R == 4 && T == 4) {
        store_sums4x4(acc[0][0], acc[1][0], acc[2][0], acc[3][0], acc[0][1], acc[1][1], acc[2][1], acc[3][1],
                      acc[0][2], acc[1][2], acc[2][2], acc[3][2], acc[0][3], acc[1][3], acc[2][3], acc[3][3], y, ldy);
        return;
    }
    for (int t = 0; t < T; t++)
        for (int r = 0; r < R; r++) y[t * ldy + r] = hsum512(acc[r][t]);
}

#define FKK512_CASE(TYPE, BYTES, R, T) \
    case (R) * 8 + (T): fkk512_rt(TYPE, BYTES, R, T, W, rb, x, ldx, K, y, ldy, panel, ldp); break;
// One function per type (small stack frames even unoptimized), each with every tile shape.
#define FKK512_FN(NAME, TYPE, BYTES)                                                                        \
    static CK_AVX512 __attribute__((noinline)) void NAME(int R, int T, const uint8_t *W, size_t rb,         \
                                                         const float *x, int64_t ldx, int64_t K, float *y,  \
                                                         int64_t ldy, float *panel, int64_t ldp) {           \
        switch (R * 8 + T) {                                                                                \
        FKK512_CASE(TYPE, BYTES, 1, 1) FKK512_CASE(TYPE, BYTES, 1, 2) FKK512_CASE(TYPE, BYTES, 1, 3)        \
        FKK512_CASE(TYPE, BYTES, 1, 4) FKK512_CASE(TYPE, BYTES, 2, 1) FKK512_CASE(TYPE, BYTES, 2, 2)        \
        FKK512_CASE(TYPE, BYTES, 2, 3) FKK512_CASE(TYPE, BYTES, 2, 4) FKK512_CASE(TYPE, BYTES, 3, 1)        \
        FKK512_CASE(TYPE, BYTES, 3, 2) FKK512_CASE(TYPE, BYTES, 4, 1) FKK512_CASE(TYPE, BYTES, 4, 2)        \
        default: break;                                                                                     \
        }                                                                                                   \
    }
FKK512_FN(fkk512_q2k, CK_TYPE_Q2_K, 84)
FKK512_FN(fkk512_q3k, CK_TYPE_Q3_K, 110)
FKK512_FN(fkk512_q4k, CK_TYPE_Q4_K, 144)
FKK512_FN(fkk512_q5k, CK_TYPE_Q5_K, 176)
FKK512_FN(fkk512_q6k, CK_TYPE_Q6_K, 210)

typedef void (*fkk512_fn)(int R, int T, const uint8_t *W, size_t rb, const float *x, int64_t ldx, int64_t K,
                          float *y, int64_t ldy, float *panel, int64_t ldp);

static CK_AVX512 void fkk_avx512(int type, int R, int T, const uint8_t *W, size_t rb, const float *x, int64_t ldx,
                                 int64_t K, float *y, int64_t ldy, float *panel, int64_t ldp) {
    fkk512_fn f;
    switch (type) {
    case CK_TYPE_Q2_K: f = fkk512_q2k; break;
    case CK_TYPE_Q3_K: f = fkk512_q3k; break;
    case CK_TYPE_Q4_K: f = fkk512_q4k; break;
    case CK_TYPE_Q5_K: f = fkk512_q5k; break;
    case CK_TYPE_Q6_K: f = fkk512_q6k; break;
    default: return;
    }
    if (T >= 3 && R > 2) {
        // 3-4 tokens: tiles of <= 2 rows (4 x 4 accumulators and the tokens' activations do not fit the registers
        // together; the split changes no pair's arithmetic).
        f(2, T, W, rb, x, ldx, K, y, ldy, panel, ldp);
        f(R - 2, T, W + 2 * rb, rb, x, ldx, K, y + 2, ldy, panel ? panel + 2 * ldp : NULL, ldp);
        return;
    }
    f(R, T, W, rb, x, ldx, K, y, ldy, panel, ldp);
}

// ---------------------------------------------------------------------------------------------------------------
// AVX2: per element arithmetic, 8 lanes

// Chunk c -> w[0..3] (elements 32c + 8i .. 32c + 8i + 7).
CK_INLINE CK_AVX2 void kchunk256(const int type, const uint8_t *blk, const int c, const float *cf, __m256 w[4]) {
    const __m256i codes = kcodes32(type, blk, c);
    const __m128i lo = _mm256_castsi256_si128(codes), hi = _mm256_extracti128_si256(codes, 1);
    const __m128i part[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
    for (int i = 0; i < 4; i++) {
        const __m256 q = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(part[i]));
        switch (type) {
        case CK_TYPE_Q4_K:
        case CK_TYPE_Q5_K:
            w[i] = _mm256_fmadd_ps(_mm256_set1_ps(cf[c]), q, _mm256_set1_ps(cf[8 + c]));
            break;
        case CK_TYPE_Q2_K:
            w[i] = _mm256_fmadd_ps(_mm256_set1_ps(cf[2 * c + i / 2]), q, _mm256_set1_ps(cf[16 + 2 * c + i / 2]));
            break;
        case CK_TYPE_Q3_K:  // float(q) - 4 and - 32 are exact
            w[i] = _mm256_mul_ps(_mm256_set1_ps(cf[2 * c + i / 2]), _mm256_sub_ps(q, _mm256_set1_ps(4.0f)));
            break;
        case CK_TYPE_Q6_K:
            w[i] = _mm256_mul_ps(_mm256_set1_ps(cf[2 * c + i / 2]), _mm256_sub_ps(q, _mm256_set1_ps(32.0f)));
            break;
        default:
            w[i] = _mm256_setzero_ps();
            break;
        }
    }
}

CK_INLINE CK_AVX2 void dqk256_type(const int type, const int bbytes, const uint8_t *src, float *dst, int64_t count) {
    float cf[32];
    for (int64_t s = 0; s < count / 256; s++, src += bbytes, dst += 256) {
        kcoef_scalar(type, src, cf);
        for (int c = 0; c < 8; c++) {
            __m256 w[4];
            kchunk256(type, src, c, cf, w);
            for (int i = 0; i < 4; i++) _mm256_storeu_ps(dst + 32 * c + 8 * i, w[i]);
        }
    }
}

static CK_AVX2 void dqk_avx2(int type, const uint8_t *src, float *dst, int64_t count) {
    switch (type) {
    case CK_TYPE_Q2_K: dqk256_type(CK_TYPE_Q2_K, 84, src, dst, count); break;
    case CK_TYPE_Q3_K: dqk256_type(CK_TYPE_Q3_K, 110, src, dst, count); break;
    case CK_TYPE_Q4_K: dqk256_type(CK_TYPE_Q4_K, 144, src, dst, count); break;
    case CK_TYPE_Q5_K: dqk256_type(CK_TYPE_Q5_K, 176, src, dst, count); break;
    case CK_TYPE_Q6_K: dqk256_type(CK_TYPE_Q6_K, 210, src, dst, count); break;
    default: dq_scalar(type, src, dst, count); break;
    }
}

CK_INLINE CK_AVX2 void fkk256_rt(const int type, const int bbytes, const int R, const int T, const uint8_t *W,
                                size_t rb, const float *x, int64_t ldx, int64_t K, float *y, int64_t ldy) {
    __m256 lo[FK256_TR][FK256_TT], hi[FK256_TR][FK256_TT];
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) lo[r][t] = hi[r][t] = _mm256_setzero_ps();
    float cf[FK256_TR][32];
    for (int64_t s = 0; s < K / 256; s++) {
        for (int r = 0; r < R; r++) {
            const uint8_t *blk = W + (size_t)r * rb + (size_t)s * bbytes;
            for (int off = 0; off < bbytes; off += 64) _mm_prefetch((const char *)(blk + (size_t)R * rb + off), _MM_HINT_T1);
            kcoef_scalar(type, blk, cf[r]);
        }
        for (int c = 0; c < 8; c++) {
            for (int r = 0; r < R; r++) {
                __m256 w[4];
                kchunk256(type, W + (size_t)r * rb + (size_t)s * bbytes, c, cf[r], w);
                for (int t = 0; t < T; t++) {
                    const float *xp = x + t * ldx + 256 * s + 32 * c;
                    lo[r][t] = _mm256_fmadd_ps(w[0], _mm256_loadu_ps(xp), lo[r][t]);
                    hi[r][t] = _mm256_fmadd_ps(w[1], _mm256_loadu_ps(xp + 8), hi[r][t]);
                    lo[r][t] = _mm256_fmadd_ps(w[2], _mm256_loadu_ps(xp + 16), lo[r][t]);
                    hi[r][t] = _mm256_fmadd_ps(w[3], _mm256_loadu_ps(xp + 24), hi[r][t]);
                }
            }
        }
    }
    for (int t = 0; t < T; t++)
        for (int r = 0; r < R; r++) y[t * ldy + r] = hsum256x2(lo[r][t], hi[r][t]);
}

#define FKK256_CASE(TYPE, BYTES, R, T) \
    case (R) * 8 + (T): fkk256_rt(TYPE, BYTES, R, T, W, rb, x, ldx, K, y, ldy); break;
#define FKK256_TYPE(TYPE, BYTES)                                                                     \
    case TYPE:                                                                                       \
        switch (R * 8 + T) {                                                                         \
        FKK256_CASE(TYPE, BYTES, 1, 1) FKK256_CASE(TYPE, BYTES, 1, 2) FKK256_CASE(TYPE, BYTES, 1, 3) \
        FKK256_CASE(TYPE, BYTES, 2, 1) FKK256_CASE(TYPE, BYTES, 2, 2) FKK256_CASE(TYPE, BYTES, 2, 3) \
        default: break;                                                                              \
        }                                                                                            \
        break;

static CK_AVX2 void fkk_avx2(int type, int R, int T, const uint8_t *W, size_t rb, const float *x, int64_t ldx,
                             int64_t K, float *y, int64_t ldy) {
    switch (type) {
    FKK256_TYPE(CK_TYPE_Q2_K, 84)
    FKK256_TYPE(CK_TYPE_Q3_K, 110)
    FKK256_TYPE(CK_TYPE_Q4_K, 144)
    FKK256_TYPE(CK_TYPE_Q5_K, 176)
    FKK256_TYPE(CK_TYPE_Q6_K, 210)
    default: break;
    }
}
