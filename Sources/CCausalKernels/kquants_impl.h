// Internal to matmul.c (included once, after the scalar conversions): the portable dequantizers of Q5_0, Q5_1,
// IQ4_NL and the K-quants (Q2_K .. Q6_K), written element by element from the block layouts documented in
// CCausalKernels.h, and simple quantizers producing valid blocks of every type (for tests and tiny models).
//
// The dequantized value of every element is the operation sequence of the reference dequantizer (gguf-py's
// numpy float32 code), so that the bits agree with it:
//   Q5_0  d * (q - 16)                     exact (11 x 5 significant bits)
//   Q5_1  d * q + m                        d * q exact; one rounding (fmaf)
//   IQ4_NL d * kvalues[q]                  exact (11 x 8 bits)
//   Q2_K  (d * sc) * q - dmin * m          the three products exact (<= 17 bits); one rounding (fmaf)
//   Q3_K  (d * (sc - 32)) * q              exact (11 x 6 x 3 bits)
//   Q4_K  (d * sc) * q - dmin * m          products exact (11 x 6 x 4 bits); one rounding (fmaf)
//   Q5_K  as Q4_K with 5-bit q             products exact (22 bits); one rounding (fmaf)
//   Q6_K  (d * sc) * (q - 32)              d * sc exact (19 bits); the last product rounds (once)
// Signed zeros follow the reference too: Q3_K/Q6_K multiply by an exact (q - off) that may be +0, Q2_K/Q4_K/Q5_K
// compute x - y as fma(d1, q, -y) (x - y and x + (-y) are the same IEEE operation).
#ifndef CK_KQUANTS_IMPL_H
#define CK_KQUANTS_IMPL_H

static const int8_t k_iq4nl_values[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

static inline uint32_t load_u32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

// The 6-bit scale and min of sub-block i (< 8) of a Q4_K / Q5_K super-block; s points at its 12 scale bytes.
static inline void k4_scale_min(const uint8_t *s, int i, int *sc, int *m) {
    if (i < 4) {
        *sc = s[i] & 63;
        *m = s[i + 4] & 63;
    } else {
        *sc = (s[i + 4] & 15) | (s[i - 4] >> 6) << 4;
        *m = (s[i + 4] >> 4) | (s[i] >> 6) << 4;
    }
}

// The signed scale (6-bit value - 32) of 16-element group i of a Q3_K super-block; s points at its 12 scale bytes.
static inline int k3_scale(const uint8_t *s, int i) {
    const int lo = i < 8 ? s[i] & 15 : s[i - 8] >> 4;
    const int hi = (s[8 + i % 4] >> (2 * (i / 4))) & 3;
    return (lo | hi << 4) - 32;
}

// Dequantizes `count` elements (a multiple of the block size) of the types above; element by element.
static void dq_scalar_ext(int type, const uint8_t *src, float *dst, int64_t count) {
    switch (type) {
    case CK_TYPE_Q5_0:
        for (int64_t b = 0; b < count / 32; b++, src += 22, dst += 32) {
            const float d = ck_half_to_float(load_u16(src));
            const uint32_t qh = load_u32(src + 2);
            for (int i = 0; i < 32; i++) {
                const int nib = i < 16 ? src[6 + i] & 15 : src[6 + i - 16] >> 4;
                const int q = nib | (int)((qh >> i) & 1u) << 4;
                dst[i] = d * (float)(q - 16);
            }
        }
        break;
    case CK_TYPE_Q5_1:
        for (int64_t b = 0; b < count / 32; b++, src += 24, dst += 32) {
            const float d = ck_half_to_float(load_u16(src)), m = ck_half_to_float(load_u16(src + 2));
            const uint32_t qh = load_u32(src + 4);
            for (int i = 0; i < 32; i++) {
                const int nib = i < 16 ? src[8 + i] & 15 : src[8 + i - 16] >> 4;
                const int q = nib | (int)((qh >> i) & 1u) << 4;
                dst[i] = fmaf(d, (float)q, m);
            }
        }
        break;
    case CK_TYPE_IQ4_NL:
        for (int64_t b = 0; b < count / 32; b++, src += 18, dst += 32) {
            const float d = ck_half_to_float(load_u16(src));
            for (int i = 0; i < 32; i++) {
                const int nib = i < 16 ? src[2 + i] & 15 : src[2 + i - 16] >> 4;
                dst[i] = d * (float)k_iq4nl_values[nib];
            }
        }
        break;
    case CK_TYPE_Q2_K:
        for (int64_t b = 0; b < count / 256; b++, src += 84, dst += 256) {
            const float d = ck_half_to_float(load_u16(src + 80)), dmin = ck_half_to_float(load_u16(src + 82));
            for (int e = 0; e < 256; e++) {
                const int h = e >> 7, j = (e >> 5) & 3, l = e & 31;
                const int q = (src[16 + 32 * h + l] >> (2 * j)) & 3;
                const int s = src[e >> 4];
                const float d1 = d * (float)(s & 15), m1 = dmin * (float)(s >> 4);
                dst[e] = fmaf(d1, (float)q, -m1);
            }
        }
        break;
    case CK_TYPE_Q3_K:
        for (int64_t b = 0; b < count / 256; b++, src += 110, dst += 256) {
            const float d = ck_half_to_float(load_u16(src + 108));
            for (int e = 0; e < 256; e++) {
                const int h = e >> 7, j = (e >> 5) & 3, l = e & 31;
                int q = (src[32 + 32 * h + l] >> (2 * j)) & 3;
                if (!((src[l] >> (4 * h + j)) & 1)) q -= 4;
                const float d1 = d * (float)k3_scale(src + 96, e >> 4);
                dst[e] = d1 * (float)q;
            }
        }
        break;
    case CK_TYPE_Q4_K:
    case CK_TYPE_Q5_K: {
        const int five = type == CK_TYPE_Q5_K;
        const int bytes = five ? 176 : 144, qs = five ? 48 : 16;
        for (int64_t b = 0; b < count / 256; b++, src += bytes, dst += 256) {
            const float d = ck_half_to_float(load_u16(src)), dmin = ck_half_to_float(load_u16(src + 2));
            for (int e = 0; e < 256; e++) {
                const int i = e >> 5, l = e & 31;
                const int byte = src[qs + 32 * (i >> 1) + l];
                int q = i & 1 ? byte >> 4 : byte & 15;
                if (five) q |= ((src[16 + l] >> i) & 1) << 4;
                int sc, m;
                k4_scale_min(src + 4, i, &sc, &m);
                const float d1 = d * (float)sc, m1 = dmin * (float)m;
                dst[e] = fmaf(d1, (float)q, -m1);
            }
        }
        break;
    }
    case CK_TYPE_Q6_K:
        for (int64_t b = 0; b < count / 256; b++, src += 210, dst += 256) {
            const float d = ck_half_to_float(load_u16(src + 208));
            for (int e = 0; e < 256; e++) {
                const int h = e >> 7, g = (e >> 5) & 3, l = e & 31;
                const int byte = src[64 * h + 32 * (g & 1) + l];
                const int q = (g < 2 ? byte & 15 : byte >> 4) | ((src[128 + 32 * h + l] >> (2 * g)) & 3) << 4;
                const float d1 = d * (float)(int8_t)src[192 + (e >> 4)];
                dst[e] = d1 * (float)(q - 32);
            }
        }
        break;
    default:
        break;
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Simple quantizers (round to nearest against per-group ranges; not GGML's error-minimizing searches). They exist
// so that tests and tiny models can make valid blocks of every type from floats.

static inline int clampi(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }
static inline int rnd(float v) { return (int)lrintf(v); }

// The element of largest magnitude (with its sign) of n values.
static float signed_absmax(const float *x, int n) {
    float amax = 0.0f, mx = 0.0f;
    for (int i = 0; i < n; i++)
        if (fabsf(x[i]) > amax) { amax = fabsf(x[i]); mx = x[i]; }
    return mx;
}

// 32 elements with codes 0..(levels-1): the nibbles to qs[16] and, for 5-bit codes, bit 4 to a u32 at qh.
static void pack32(const int *q, uint8_t *qs, uint8_t *qh) {
    uint32_t h = 0;
    for (int j = 0; j < 16; j++) qs[j] = (uint8_t)((q[j] & 15) | (q[j + 16] & 15) << 4);
    for (int i = 0; i < 32; i++) h |= (uint32_t)((q[i] >> 4) & 1) << i;
    if (qh) { qh[0] = (uint8_t)h; qh[1] = (uint8_t)(h >> 8); qh[2] = (uint8_t)(h >> 16); qh[3] = (uint8_t)(h >> 24); }
}

// Per-group positive scales (and non-negative mins) quantized to `bits` against a super-block scale
// (d = max / (2^bits - 1)), as the K-quants store them.
static void quant_scales(const float *v, int n, int bits, float *d_out, int *q_out) {
    float mx = 0.0f;
    for (int i = 0; i < n; i++) mx = fmaxf(mx, v[i]);
    const float d = ck_half_to_float(ck_float_to_half(mx / (float)((1 << bits) - 1)));
    for (int i = 0; i < n; i++) q_out[i] = d > 0.0f ? clampi(rnd(v[i] / d), 0, (1 << bits) - 1) : 0;
    *d_out = d;
}

static void quantize_ext(int type, const float *src, uint8_t *out, int64_t count) {
    int q[256];
    switch (type) {
    case CK_TYPE_Q5_0:
    case CK_TYPE_IQ4_NL:
        for (int64_t b = 0; b < count / 32; b++, src += 32) {
            const int nl = type == CK_TYPE_IQ4_NL;
            const float mx = signed_absmax(src, 32);
            const float d = ck_half_to_float(ck_float_to_half(nl ? mx / -127.0f : mx / -16.0f));
            store_u16(out, ck_float_to_half(d));
            for (int i = 0; i < 32; i++) {
                if (!nl) { q[i] = d != 0.0f ? clampi(rnd(src[i] / d) + 16, 0, 31) : 16; continue; }
                int best = 0;
                for (int k = 1; k < 16; k++)
                    if (fabsf(d * (float)k_iq4nl_values[k] - src[i]) < fabsf(d * (float)k_iq4nl_values[best] - src[i])) best = k;
                q[i] = best;
            }
            if (nl) { pack32(q, out + 2, NULL); out += 18; }
            else { pack32(q, out + 6, out + 2); out += 22; }
        }
        break;
    case CK_TYPE_Q5_1:
        for (int64_t b = 0; b < count / 32; b++, src += 32, out += 24) {
            float mn = src[0], mx = src[0];
            for (int i = 1; i < 32; i++) { mn = fminf(mn, src[i]); mx = fmaxf(mx, src[i]); }
            const float d = ck_half_to_float(ck_float_to_half((mx - mn) / 31.0f));
            const float m = ck_half_to_float(ck_float_to_half(mn));
            store_u16(out, ck_float_to_half(d));
            store_u16(out + 2, ck_float_to_half(m));
            for (int i = 0; i < 32; i++) q[i] = d > 0.0f ? clampi(rnd((src[i] - m) / d), 0, 31) : 0;
            pack32(q, out + 8, out + 4);
        }
        break;
    case CK_TYPE_Q2_K:
    case CK_TYPE_Q4_K:
    case CK_TYPE_Q5_K:
        for (int64_t b = 0; b < count / 256; b++, src += 256) {
            // Groups of 16 (Q2_K) or 32 elements: x ~ d1 * q - m1 with m1 = -min(0, group min).
            const int gs = type == CK_TYPE_Q2_K ? 16 : 32, ng = 256 / gs;
            const int levels = type == CK_TYPE_Q2_K ? 3 : type == CK_TYPE_Q4_K ? 15 : 31;
            const int sbits = type == CK_TYPE_Q2_K ? 4 : 6;
            float scl[16], mins[16], d, dmin;
            int qsc[16], qmn[16];
            for (int g = 0; g < ng; g++) {
                float lo = 0.0f, hi = 0.0f;
                for (int i = 0; i < gs; i++) { lo = fminf(lo, src[g * gs + i]); hi = fmaxf(hi, src[g * gs + i]); }
                scl[g] = (hi - lo) / (float)levels;
                mins[g] = -lo;
            }
            quant_scales(scl, ng, sbits, &d, qsc);
            quant_scales(mins, ng, sbits, &dmin, qmn);
            for (int e = 0; e < 256; e++) {
                const int g = e / gs;
                const float d1 = d * (float)qsc[g], m1 = dmin * (float)qmn[g];
                q[e] = d1 > 0.0f ? clampi(rnd((src[e] + m1) / d1), 0, levels) : 0;
            }
            if (type == CK_TYPE_Q2_K) {
                for (int g = 0; g < 16; g++) out[g] = (uint8_t)(qsc[g] | qmn[g] << 4);
                memset(out + 16, 0, 64);
                for (int e = 0; e < 256; e++) out[16 + 32 * (e >> 7) + (e & 31)] |= (uint8_t)(q[e] << (2 * ((e >> 5) & 3)));
                store_u16(out + 80, ck_float_to_half(d));
                store_u16(out + 82, ck_float_to_half(dmin));
                out += 84;
                continue;
            }
            store_u16(out, ck_float_to_half(d));
            store_u16(out + 2, ck_float_to_half(dmin));
            uint8_t *s = out + 4;
            for (int i = 0; i < 4; i++) {
                s[i] = (uint8_t)((qsc[i] & 63) | (qsc[i + 4] >> 4) << 6);
                s[i + 4] = (uint8_t)((qmn[i] & 63) | (qmn[i + 4] >> 4) << 6);
                s[i + 8] = (uint8_t)((qsc[i + 4] & 15) | (qmn[i + 4] & 15) << 4);
            }
            const int five = type == CK_TYPE_Q5_K, qs = five ? 48 : 16;
            memset(out + 16, 0, five ? 160 : 128);
            for (int e = 0; e < 256; e++) {
                const int i = e >> 5, l = e & 31;
                out[qs + 32 * (i >> 1) + l] |= (uint8_t)((q[e] & 15) << (4 * (i & 1)));
                if (five) out[16 + l] |= (uint8_t)(((q[e] >> 4) & 1) << i);
            }
            out += five ? 176 : 144;
        }
        break;
    case CK_TYPE_Q3_K:
    case CK_TYPE_Q6_K:
        for (int64_t b = 0; b < count / 256; b++, src += 256) {
            // Groups of 16 with a signed scale: x ~ d1 * q, q in [-4, 3] (Q3_K) or [-32, 31] (Q6_K).
            const int six = type == CK_TYPE_Q6_K, qmax = six ? 32 : 4, smax = six ? 127 : 31;
            float sg[16], amax = 0.0f;
            for (int g = 0; g < 16; g++) {
                sg[g] = signed_absmax(src + 16 * g, 16) / (float)-qmax;
                if (fabsf(sg[g]) > fabsf(amax)) amax = sg[g];
            }
            const float d = ck_half_to_float(ck_float_to_half(amax / (float)-(smax + 1)));
            int sc[16];
            for (int g = 0; g < 16; g++) sc[g] = d != 0.0f ? clampi(rnd(sg[g] / d), -smax - 1, smax) : 0;
            for (int e = 0; e < 256; e++) {
                const float d1 = d * (float)sc[e >> 4];
                q[e] = (d1 != 0.0f ? clampi(rnd(src[e] / d1), -qmax, qmax - 1) : 0) + qmax;  // stored code
            }
            if (six) {
                memset(out, 0, 192);
                for (int e = 0; e < 256; e++) {
                    const int h = e >> 7, g = (e >> 5) & 3, l = e & 31;
                    out[64 * h + 32 * (g & 1) + l] |= (uint8_t)((q[e] & 15) << (g < 2 ? 0 : 4));
                    out[128 + 32 * h + l] |= (uint8_t)((q[e] >> 4) << (2 * g));
                }
                for (int g = 0; g < 16; g++) out[192 + g] = (uint8_t)(int8_t)sc[g];
                store_u16(out + 208, ck_float_to_half(d));
                out += 210;
            } else {
                memset(out, 0, 108);
                for (int e = 0; e < 256; e++) {
                    const int h = e >> 7, j = (e >> 5) & 3, l = e & 31;
                    out[32 + 32 * h + l] |= (uint8_t)((q[e] & 3) << (2 * j));
                    out[l] |= (uint8_t)((q[e] >> 2) << (4 * h + j));  // bit set: no -4
                }
                for (int g = 0; g < 16; g++) {
                    const int v = sc[g] + 32;
                    out[96 + (g & 7)] |= (uint8_t)((v & 15) << (g < 8 ? 0 : 4));
                    out[96 + 8 + (g & 3)] |= (uint8_t)((v >> 4) << (2 * (g >> 2)));
                }
                store_u16(out + 108, ck_float_to_half(d));
                out += 110;
            }
        }
        break;
    default:
        break;
    }
}

#endif
