// Per-thread scratch buffers of the kernels, one per slot: 64-byte aligned, grown as needed, kept between calls and
// freed when the thread exits. Internal to CCausalKernels.
#ifndef CK_SCRATCH_IMPL_H
#define CK_SCRATCH_IMPL_H
#include <stddef.h>

enum {
    CK_SCRATCH_PANELS,   // matmul.c: dequantized weight panels
    CK_SCRATCH_GROUPS,   // matmul_q8.c: decoded groups of a block of weight rows
    CK_SCRATCH_SCORES,   // attention.c: one row's scores
    CK_SCRATCH_TRAIN,    // train.c: the packed B panel of the training GEMM
    CK_SCRATCH_SLOTS
};

// At least `bytes` bytes of the calling thread's buffer for `slot` (contents undefined; NULL if it cannot be had).
void *ck_thread_scratch(int slot, size_t bytes);

#endif
