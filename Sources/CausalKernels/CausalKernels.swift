// CausalKernels: math on raw buffers (matmul and quantized dot products, norms, RoPE, attention, activations)
// and the thread pool. The innermost SIMD loops live in the C target CCausalKernels, chosen at run time from
// CPUID; this module splits the work, threads it and keeps each row's reduction order fixed.
@_exported import CCausalKernels
