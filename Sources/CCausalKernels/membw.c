// Streaming read loop for measuring memory bandwidth. Each level keeps several independent accumulators so that
// the loop is bound by the loads, not by the adds; the hardware prefetchers see one sequential stream per thread.
#include "CCausalKernels.h"

#include <string.h>
#if defined(__unix__) || defined(__APPLE__)
#include <sys/mman.h>
#endif
#include <stdlib.h>

#if defined(__x86_64__) || defined(__i386__)
#define CK_MB_X86 1
#include <immintrin.h>
#define CK_MB_AVX512 __attribute__((target("avx512f")))
#define CK_MB_AVX2 __attribute__((target("avx2")))
#else
#define CK_MB_X86 0
#endif

static uint64_t load_u64_le(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

// Bytes [0, bytes) in 8-byte words; a last partial word is zero-extended.
static uint64_t read_scalar(const uint8_t *p, size_t bytes) {
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    size_t i = 0;
    for (; i + 32 <= bytes; i += 32) {
        uint64_t w[4];
        memcpy(w, p + i, 32);
#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
        for (int j = 0; j < 4; j++) w[j] = load_u64_le(p + i + 8 * j);
#endif
        s0 += w[0]; s1 += w[1]; s2 += w[2]; s3 += w[3];
    }
    for (; i + 8 <= bytes; i += 8) s0 += load_u64_le(p + i);
    if (i < bytes) {
        uint8_t last[8] = {0};
        memcpy(last, p + i, bytes - i);
        s1 += load_u64_le(last);
    }
    return s0 + s1 + s2 + s3;
}

#if CK_MB_X86
CK_MB_AVX512 static uint64_t read_avx512(const uint8_t *p, size_t bytes, size_t *done) {
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    size_t i = 0;
    for (; i + 512 <= bytes; i += 512) {
        a0 = _mm512_add_epi64(a0, _mm512_loadu_si512((const void *)(p + i)));
        a1 = _mm512_add_epi64(a1, _mm512_loadu_si512((const void *)(p + i + 64)));
        a2 = _mm512_add_epi64(a2, _mm512_loadu_si512((const void *)(p + i + 128)));
        a3 = _mm512_add_epi64(a3, _mm512_loadu_si512((const void *)(p + i + 192)));
        a4 = _mm512_add_epi64(a4, _mm512_loadu_si512((const void *)(p + i + 256)));
        a5 = _mm512_add_epi64(a5, _mm512_loadu_si512((const void *)(p + i + 320)));
        a6 = _mm512_add_epi64(a6, _mm512_loadu_si512((const void *)(p + i + 384)));
        a7 = _mm512_add_epi64(a7, _mm512_loadu_si512((const void *)(p + i + 448)));
    }
    for (; i + 64 <= bytes; i += 64) a0 = _mm512_add_epi64(a0, _mm512_loadu_si512((const void *)(p + i)));
    a0 = _mm512_add_epi64(_mm512_add_epi64(_mm512_add_epi64(a0, a1), _mm512_add_epi64(a2, a3)),
                          _mm512_add_epi64(_mm512_add_epi64(a4, a5), _mm512_add_epi64(a6, a7)));
    *done = i;
    return (uint64_t)_mm512_reduce_add_epi64(a0);
}

CK_MB_AVX2 static uint64_t read_avx2(const uint8_t *p, size_t bytes, size_t *done) {
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    size_t i = 0;
    for (; i + 256 <= bytes; i += 256) {
        a0 = _mm256_add_epi64(a0, _mm256_loadu_si256((const __m256i *)(p + i)));
        a1 = _mm256_add_epi64(a1, _mm256_loadu_si256((const __m256i *)(p + i + 32)));
        a2 = _mm256_add_epi64(a2, _mm256_loadu_si256((const __m256i *)(p + i + 64)));
        a3 = _mm256_add_epi64(a3, _mm256_loadu_si256((const __m256i *)(p + i + 96)));
        a4 = _mm256_add_epi64(a4, _mm256_loadu_si256((const __m256i *)(p + i + 128)));
        a5 = _mm256_add_epi64(a5, _mm256_loadu_si256((const __m256i *)(p + i + 160)));
        a6 = _mm256_add_epi64(a6, _mm256_loadu_si256((const __m256i *)(p + i + 192)));
        a7 = _mm256_add_epi64(a7, _mm256_loadu_si256((const __m256i *)(p + i + 224)));
    }
    for (; i + 32 <= bytes; i += 32) a0 = _mm256_add_epi64(a0, _mm256_loadu_si256((const __m256i *)(p + i)));
    a0 = _mm256_add_epi64(_mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3)),
                          _mm256_add_epi64(_mm256_add_epi64(a4, a5), _mm256_add_epi64(a6, a7)));
    uint64_t lanes[4];
    _mm256_storeu_si256((__m256i *)lanes, a0);
    *done = i;
    return lanes[0] + lanes[1] + lanes[2] + lanes[3];
}
#endif

uint64_t ck_read_sum(const void *ptr, size_t bytes) {
    const uint8_t *p = (const uint8_t *)ptr;
    if (p == NULL || bytes == 0) return 0;
    size_t done = 0;
    uint64_t s = 0;
#if CK_MB_X86
    const int isa = ck_get_isa();
    if (isa >= CK_ISA_AVX512) s = read_avx512(p, bytes, &done);
    else if (isa >= CK_ISA_AVX2) s = read_avx2(p, bytes, &done);
#endif
    // `done` is a multiple of 8, so the rest starts on a word boundary of the whole buffer.
    return s + read_scalar(p + done, bytes - done);
}

static size_t round_2mib(size_t bytes) { return (bytes + ((size_t)2 << 20) - 1) & ~(((size_t)2 << 20) - 1); }

void *ck_membw_alloc(size_t bytes, int huge_pages) {
    if (bytes == 0) return NULL;
    const size_t n = round_2mib(bytes), align = (size_t)2 << 20;
#if defined(__unix__) || defined(__APPLE__)
    // Map 2 MiB more than needed and trim both ends so that the start is 2 MiB aligned.
    uint8_t *raw = mmap(NULL, n + align, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) return NULL;
    uint8_t *p = (uint8_t *)(((uintptr_t)raw + align - 1) & ~(uintptr_t)(align - 1));
    if (p > raw) munmap(raw, (size_t)(p - raw));
    const size_t tail = (size_t)(raw + n + align - (p + n));
    if (tail > 0) munmap(p + n, tail);
#if defined(MADV_HUGEPAGE) && defined(MADV_NOHUGEPAGE)
    madvise(p, n, huge_pages ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
#else
    (void)huge_pages;
#endif
    return p;
#else
    (void)huge_pages;
    return aligned_alloc(align, n);
#endif
}

void ck_membw_free(void *p, size_t bytes) {
    if (p == NULL) return;
#if defined(__unix__) || defined(__APPLE__)
    munmap(p, round_2mib(bytes));
#else
    (void)bytes;
    free(p);
#endif
}
