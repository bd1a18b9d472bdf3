// The CUDA backend's kernels, as CUDA C++ source compiled by NVRTC at first use (CUDADriver.swift). No headers:
// bf16 is handled as its bit pattern (the upper half of an fp32), so NVRTC needs nothing but its builtins.
//
// Batch invariance (docs/architecture.md, docs/cuda.md): every value a kernel writes for one row is computed by one
// thread or one block from that row's data alone, and every reduction runs in an order fixed by its length only:
// - matmul: each output is one fp32 accumulator, fmaf over k = 0, 1, ..., K-1 in order, by every kernel (the 64×64
//   tiled kernel and the few-row GEMV give the same bits; which one runs depends on the row count, the result does
//   not). No split-K, no atomics, no tensor-core reductions whose order varies.
// - rmsnorm: one row per block of 256 threads, thread t sums elements t, t+256, ... in double, then a fixed tree.
// - attention: one (row, head) per block of 128 threads; thread t owns keys t, t+128, ... (a split fixed by the
//   key count), fixed trees for the maximum and the sum, then each output element sums over keys in order.
// - everything else is element-wise.
enum CUDAKernels {
    /// Threads per block of `rmsnorm` (the reduction tree is written for exactly this many).
    static let normThreads = 256
    /// Threads per block of `attention`.
    static let attentionThreads = 128
    /// Largest head size `attention` takes (its query lives in shared memory).
    static let maxHeadDim = 256
    /// Rows up to which `gemv_*` runs instead of `matmul_*` (same results; a launch-shape choice only).
    static let gemvMaxRows = 8
    /// Outputs per block of `gemv_*` (= its threads).
    static let gemvOutputs = 64
    /// Output tile of `matmul_*` (rows × outputs; 256 threads, 4 × 4 outputs each).
    static let tileRows = 64, tileCols = 64

    /// Every kernel the backend launches, by name (extern "C", so the names are the symbols).
    static let names = ["embed_f32", "embed_bf16", "matmul_f32", "matmul_bf16", "gemv_f32", "gemv_bf16", "rmsnorm",
                        "rope", "append_kv", "attention", "silu_mul", "gelu_tanh_mul", "add_inplace", "softcap",
                        "gather_rows"]

    static let source = #"""
typedef unsigned short bf16_t;
typedef unsigned long long u64;

__device__ __forceinline__ float load_w(const float* w, size_t i) { return w[i]; }
__device__ __forceinline__ float load_w(const bf16_t* w, size_t i) { return __uint_as_float(((unsigned)w[i]) << 16); }

// ---- embedding: x[r] = table[tokens[r]] * scale (scale 1: the row as stored) ----
template <typename T>
__device__ void embed_body(const T* __restrict__ table, const int* __restrict__ tokens, float* __restrict__ x, int C, float scale) {
    const int r = blockIdx.x;
    const size_t src = (size_t)tokens[r] * C, dst = (size_t)r * C;
    for (int i = threadIdx.x; i < C; i += blockDim.x) {
        const float v = load_w(table, src + i);
        x[dst + i] = scale != 1.0f ? v * scale : v;
    }
}
extern "C" __global__ void embed_f32(const float* table, const int* tokens, float* x, int C, float scale) { embed_body(table, tokens, x, C, scale); }
extern "C" __global__ void embed_bf16(const bf16_t* table, const int* tokens, float* x, int C, float scale) { embed_body(table, tokens, x, C, scale); }

// ---- matmul: y (M, N) = x (M, K) . w (N, K)^T (+ bias (N)); one fp32 accumulator per output, k in order ----
#define MM_BM 64
#define MM_BN 64
#define MM_BK 16
template <typename T>
__device__ void matmul_body(const float* __restrict__ x, const T* __restrict__ w, const float* __restrict__ bias,
                            float* __restrict__ y, int M, int N, int K) {
    __shared__ float As[MM_BK][MM_BM + 4];
    __shared__ float Bs[MM_BK][MM_BN + 4];
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    const int m0 = blockIdx.y * MM_BM, n0 = blockIdx.x * MM_BN;
    float acc[4][4];
    #pragma unroll
    for (int i = 0; i < 4; i++) {
        #pragma unroll
        for (int j = 0; j < 4; j++) acc[i][j] = 0.0f;
    }
    for (int k0 = 0; k0 < K; k0 += MM_BK) {
        for (int e = threadIdx.x; e < MM_BM * MM_BK; e += 256) {
            const int mi = e / MM_BK, ki = e % MM_BK, k = k0 + ki;
            const int m = m0 + mi, n = n0 + mi;
            As[ki][mi] = (m < M && k < K) ? x[(size_t)m * K + k] : 0.0f;
            Bs[ki][mi] = (n < N && k < K) ? load_w(w, (size_t)n * K + k) : 0.0f;
        }
        __syncthreads();
        const int kmax = K - k0 < MM_BK ? K - k0 : MM_BK;   // no padded terms: exactly k = 0 ... K-1
        for (int kk = 0; kk < kmax; kk++) {
            float a[4], b[4];
            #pragma unroll
            for (int i = 0; i < 4; i++) { a[i] = As[kk][ty + 16 * i]; b[i] = Bs[kk][tx + 16 * i]; }
            #pragma unroll
            for (int i = 0; i < 4; i++) {
                #pragma unroll
                for (int j = 0; j < 4; j++) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
            }
        }
        __syncthreads();
    }
    #pragma unroll
    for (int i = 0; i < 4; i++) {
        const int m = m0 + ty + 16 * i;
        if (m >= M) continue;
        #pragma unroll
        for (int j = 0; j < 4; j++) {
            const int n = n0 + tx + 16 * j;
            if (n < N) y[(size_t)m * N + n] = bias ? acc[i][j] + bias[n] : acc[i][j];
        }
    }
}
extern "C" __global__ void __launch_bounds__(256) matmul_f32(const float* x, const float* w, const float* bias, float* y, int M, int N, int K) { matmul_body(x, w, bias, y, M, N, K); }
extern "C" __global__ void __launch_bounds__(256) matmul_bf16(const float* x, const bf16_t* w, const float* bias, float* y, int M, int N, int K) { matmul_body(x, w, bias, y, M, N, K); }

// ---- GEMV for up to GV_M rows: the same accumulation as matmul_body (fmaf over k in order), w read once ----
#define GV_N 64
#define GV_K 64
#define GV_M 8
template <typename T>
__device__ void gemv_body(const float* __restrict__ x, const T* __restrict__ w, const float* __restrict__ bias,
                          float* __restrict__ y, int M, int N, int K) {
    __shared__ float Ws[GV_N][GV_K + 1];
    __shared__ float Xs[GV_M][GV_K];
    const int t = threadIdx.x, n0 = blockIdx.x * GV_N;
    float acc[GV_M];
    #pragma unroll
    for (int m = 0; m < GV_M; m++) acc[m] = 0.0f;
    for (int k0 = 0; k0 < K; k0 += GV_K) {
        for (int e = t; e < GV_N * GV_K; e += GV_N) {
            const int ni = e / GV_K, ki = e % GV_K, n = n0 + ni, k = k0 + ki;
            Ws[ni][ki] = (n < N && k < K) ? load_w(w, (size_t)n * K + k) : 0.0f;
        }
        for (int e = t; e < GV_M * GV_K; e += GV_N) {
            const int mi = e / GV_K, ki = e % GV_K, k = k0 + ki;
            Xs[mi][ki] = (mi < M && k < K) ? x[(size_t)mi * K + k] : 0.0f;
        }
        __syncthreads();
        const int kmax = K - k0 < GV_K ? K - k0 : GV_K;
        for (int kk = 0; kk < kmax; kk++) {
            const float wv = Ws[t][kk];
            #pragma unroll
            for (int m = 0; m < GV_M; m++) acc[m] = fmaf(Xs[m][kk], wv, acc[m]);
        }
        __syncthreads();
    }
    const int n = n0 + t;
    if (n >= N) return;
    #pragma unroll
    for (int m = 0; m < GV_M; m++) {
        if (m < M) y[(size_t)m * N + n] = bias ? acc[m] + bias[n] : acc[m];
    }
}
extern "C" __global__ void __launch_bounds__(GV_N) gemv_f32(const float* x, const float* w, const float* bias, float* y, int M, int N, int K) { gemv_body(x, w, bias, y, M, N, K); }
extern "C" __global__ void __launch_bounds__(GV_N) gemv_bf16(const float* x, const bf16_t* w, const float* bias, float* y, int M, int N, int K) { gemv_body(x, w, bias, y, M, N, K); }

// ---- RMSNorm: one row per block of 256 threads; y may be x ----
extern "C" __global__ void __launch_bounds__(256) rmsnorm(const float* x, const float* __restrict__ w, float* y, int width, float eps) {
    __shared__ double red[256];
    const int t = threadIdx.x;
    const float* xr = x + (size_t)blockIdx.x * width;
    float* yr = y + (size_t)blockIdx.x * width;
    double s = 0.0;
    for (int i = t; i < width; i += 256) { const double v = (double)xr[i]; s = fma(v, v, s); }
    red[t] = s;
    __syncthreads();
    for (int o = 128; o > 0; o >>= 1) {
        if (t < o) red[t] += red[t + o];
        __syncthreads();
    }
    const float inv = (float)(1.0 / sqrt(red[0] / (double)width + (double)eps));
    for (int i = t; i < width; i += 256) yr[i] = w[i] * (xr[i] * inv);
}

// ---- RoPE on the first ropeDim elements of each head: adjacent pairs (2i, 2i+1) or halves (i, i + ropeDim/2) ----
extern "C" __global__ void rope(float* x, const float* __restrict__ cosT, const float* __restrict__ sinT,
                                int rows, int heads, int headDim, int ropeDim, int adjacent) {
    const int half = ropeDim / 2;
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long long)rows * heads * half) return;
    const int i = (int)(idx % half);
    const int h = (int)((idx / half) % heads);
    const long long r = idx / ((long long)half * heads);
    float* p = x + ((size_t)r * heads + h) * headDim;
    const float c = cosT[r * half + i], s = sinT[r * half + i];
    if (adjacent) {
        const float a = p[2 * i], b = p[2 * i + 1];
        p[2 * i] = __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s));
        p[2 * i + 1] = __fadd_rn(__fmul_rn(a, s), __fmul_rn(b, c));
    } else {
        const float a = p[i], b = p[i + half];
        p[i] = __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s));
        p[i + half] = __fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s));
    }
}

// ---- per-sequence device KV caches: base[r] -> [layers][2][cap[r]][kvDim] floats (position-major) ----
extern "C" __global__ void append_kv(const float* __restrict__ k, const float* __restrict__ v, const u64* __restrict__ base,
                                     const int* __restrict__ cap, const int* __restrict__ pos, int layer, int kvDim) {
    const int r = blockIdx.x;
    float* cache = (float*)base[r];
    const size_t c = (size_t)cap[r];
    float* kc = cache + ((size_t)(2 * layer) * c + pos[r]) * kvDim;
    float* vc = cache + ((size_t)(2 * layer + 1) * c + pos[r]) * kvDim;
    for (int i = threadIdx.x; i < kvDim; i += blockDim.x) {
        kc[i] = k[(size_t)r * kvDim + i];
        vc[i] = v[(size_t)r * kvDim + i];
    }
}

// ---- attention of one (row, head) over its own sequence's keys; block (head, row), 128 threads ----
// mode 0: causal (window > 0: the last `window` keys); 1: prefix/bidirectional prompt rows read [0, P);
// 2: mixed: prompt rows of heads >= H/2 read [p, P), the others causal.
extern "C" __global__ void __launch_bounds__(128) attention(const float* __restrict__ q, const u64* __restrict__ base,
        const int* __restrict__ cap, const int* __restrict__ pos, const int* __restrict__ promptLen, int layer, int H,
        int Hkv, int D, float scale, int window, int mode, float* __restrict__ scores, int scoreStride, float* __restrict__ out) {
    __shared__ float qs[256];
    __shared__ float red[128];
    const int h = blockIdx.x, r = blockIdx.y, t = threadIdx.x;
    const int p = pos[r], P = promptLen[r];
    int first, count;
    if (p < P && (mode == 1 || (mode == 2 && h >= H / 2))) {
        if (mode == 1) { first = 0; count = P; } else { first = p; count = P - p; }
    } else {
        const int f = window > 0 ? (p - window + 1 > 0 ? p - window + 1 : 0) : 0;
        first = f; count = p - f + 1;
    }
    const int g = h / (H / Hkv);
    const size_t kvDim = (size_t)Hkv * D, c = (size_t)cap[r];
    const float* K = (const float*)base[r] + (size_t)(2 * layer) * c * kvDim + (size_t)g * D;
    const float* V = (const float*)base[r] + (size_t)(2 * layer + 1) * c * kvDim + (size_t)g * D;
    float* sc = scores + ((size_t)r * H + h) * scoreStride;
    const float* qh = q + ((size_t)r * H + h) * D;
    for (int d = t; d < D; d += 128) qs[d] = qh[d];
    __syncthreads();
    float mx = -__int_as_float(0x7f800000);
    for (int j = t; j < count; j += 128) {
        const float* kj = K + (size_t)(first + j) * kvDim;
        float s = 0.0f;
        for (int d = 0; d < D; d++) s = fmaf(qs[d], kj[d], s);
        s *= scale;
        sc[j] = s;
        mx = fmaxf(mx, s);
    }
    red[t] = mx;
    __syncthreads();
    for (int o = 64; o > 0; o >>= 1) {
        if (t < o) red[t] = fmaxf(red[t], red[t + o]);
        __syncthreads();
    }
    const float m = red[0];
    __syncthreads();
    float sum = 0.0f;
    for (int j = t; j < count; j += 128) {
        const float e = expf(sc[j] - m);
        sc[j] = e;
        sum += e;
    }
    red[t] = sum;
    __syncthreads();
    for (int o = 64; o > 0; o >>= 1) {
        if (t < o) red[t] += red[t + o];
        __syncthreads();
    }
    const float inv = 1.0f / red[0];
    float* o = out + ((size_t)r * H + h) * D;
    for (int d = t; d < D; d += 128) {
        float acc = 0.0f;
        for (int j = 0; j < count; j++) acc = fmaf(sc[j], V[(size_t)(first + j) * kvDim + d], acc);
        o[d] = acc * inv;
    }
}

// ---- element-wise ----
extern "C" __global__ void silu_mul(float* g, const float* __restrict__ u, long long n) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) { const float v = g[i]; g[i] = v / (1.0f + expf(-v)) * u[i]; }
}
extern "C" __global__ void gelu_tanh_mul(float* g, const float* __restrict__ u, long long n) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        const float v = g[i], c = 0.79788456080286535588f;
        g[i] = 0.5f * v * (1.0f + tanhf(c * (v + 0.044715f * v * v * v))) * u[i];
    }
}
extern "C" __global__ void add_inplace(float* x, const float* __restrict__ y, long long n) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += y[i];
}
extern "C" __global__ void softcap(float* x, long long n, float cap) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = tanhf(x[i] / cap) * cap;
}
extern "C" __global__ void gather_rows(const float* __restrict__ x, const int* __restrict__ rows, float* __restrict__ y, int C) {
    const size_t src = (size_t)rows[blockIdx.x] * C, dst = (size_t)blockIdx.x * C;
    for (int i = threadIdx.x; i < C; i += blockDim.x) y[dst + i] = x[src + i];
}
"""#
}
