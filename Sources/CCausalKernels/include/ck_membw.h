// Memory read bandwidth: a streaming read loop, for the DRAM floor of decoding (`causal bench --memory`).
#ifndef CK_MEMBW_H
#define CK_MEMBW_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Reads the `bytes` bytes at p once, front to back, with the widest loads of the instruction-set level in use
/// (ck_get_isa: 64-byte AVX-512 loads, 32-byte AVX2 loads, or 8-byte scalar loads), and returns the wrapping sum
/// of the little-endian 64-bit words (a last partial word zero-extended). The sum is the same on every level and
/// for any split of the buffer at multiples of 8 bytes; it exists so that the loads cannot be optimized away.
uint64_t ck_read_sum(const void *p, size_t bytes);

/// Anonymous memory for the measurement, `bytes` rounded up to 2 MiB, aligned to 2 MiB, not yet touched. With
/// huge_pages != 0 the kernel is asked to back it with transparent huge pages (Linux madvise MADV_HUGEPAGE), else
/// asked not to (MADV_NOHUGEPAGE: 4 KiB pages, as a memory-mapped file's pages usually are); elsewhere the advice
/// is skipped. Returns NULL when the memory cannot be had. Free with ck_membw_free(p, bytes).
void *ck_membw_alloc(size_t bytes, int huge_pages);
void ck_membw_free(void *p, size_t bytes);

#ifdef __cplusplus
}
#endif
#endif
