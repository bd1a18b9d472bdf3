import Foundation
import CausalKernels
import CCausalKernels

// The layers of a LLaMA training step, each forward beside its backward (in the style of llm.c). Everything is
// fp32 row-major on raw pointers; a "row" is one token. Backward functions take the gradient of the layer's output
// and produce the gradients of its inputs and weights; weight gradients are always accumulated (+=), input
// gradients are overwritten unless the function says otherwise. The innermost loops are C (ck_train.h); the big
// products are split across the thread pool here.

/// A scratch fp32 buffer, zero-filled, freed with the object (large ones go back to `BufferCache`).
final class FloatBuffer {
    let p: UnsafeMutablePointer<Float>
    let count: Int
    private let capacity: Int
    /// `zeroed: false` leaves the values undefined, for a buffer its first user overwrites entirely (the saved
    /// activations: a norm's, a product's or attention's output), which spares a pass over memory per buffer.
    init(_ count: Int, zeroed: Bool = true) {
        self.count = count
        (p, capacity) = BufferCache.take(max(count, 1))
        if zeroed { p.initialize(repeating: 0, count: max(count, 1)) }
    }
    func zero() { p.update(repeating: 0, count: count) }
    deinit { BufferCache.give(p, capacity: capacity) }
}

/// Freed training buffers of 1 MiB and more, kept for reuse. A training step allocates the same buffers every time
/// (activations of megabytes each, the head's logits chunk of up to 128 MiB), and glibc gives large blocks back to
/// the kernel when they are freed (those above its 32 MiB mmap limit, and whole heaps of a thread's arena), so that
/// each step page-faulted and zero-filled them again: 60,000 faults (235 MB) per SmolLM2 LoRA step. Capacities
/// are rounded up to 1/8 steps of a power of two, so that batches of nearby lengths share buffers; at most
/// `limitBytes` are kept, and `purge()` frees them all (the trainers call it when they are released).
enum BufferCache {
    static let minimumFloats = 1 << 18
    static let limitBytes = 4 << 30
    private static let lock = NSLock()
    nonisolated(unsafe) private static var free: [Int: [UnsafeMutablePointer<Float>]] = [:]
    nonisolated(unsafe) private static var bytes = 0

    /// The capacity a request of `count` floats gets.
    static func sizeClass(_ count: Int) -> Int {
        guard count >= minimumFloats else { return count }
        let top = Int.bitWidth - 1 - count.leadingZeroBitCount   // 2^top <= count < 2^(top+1)
        let step = 1 << (top - 3)
        return (count + step - 1) / step * step
    }

    static func take(_ count: Int) -> (UnsafeMutablePointer<Float>, Int) {
        let c = sizeClass(count)
        if c >= minimumFloats {
            lock.lock()
            if let q = free[c]?.popLast() {
                bytes -= c * 4
                lock.unlock()
                return (q, c)
            }
            lock.unlock()
        }
        return (.allocate(capacity: c), c)
    }

    static func give(_ q: UnsafeMutablePointer<Float>, capacity c: Int) {
        if c >= minimumFloats {
            lock.lock()
            if bytes + c * 4 <= limitBytes {
                free[c, default: []].append(q)
                bytes += c * 4
                lock.unlock()
                return
            }
            lock.unlock()
        }
        q.deallocate()
    }

    /// Frees every kept buffer.
    static func purge() {
        lock.lock()
        let all = free.values.flatMap { $0 }
        free = [:]; bytes = 0
        lock.unlock()
        for q in all { q.deallocate() }
    }
}

/// One sequence of a ragged batch: its rows `start..<start+length`, the first `prefix` of them its prompt. How the
/// prompt is attended to is the `AttentionMask` given to the attention functions (`.causal` ignores it).
public struct SequenceSpan: Sendable, Equatable {
    public var start: Int
    public var length: Int
    public var prefix: Int
    public init(start: Int, length: Int, prefix: Int = 0) { self.start = start; self.length = length; self.prefix = prefix }
}

extension AttentionMask {
    /// The keys query head `head` of `heads` reads in `span`, as the kernel's (prefix, reverse) pair: reverse false
    /// reads keys 0..<max(i + 1, prefix); reverse true reads i..<prefix inside the prefix and 0...i after it.
    func kernelRule(head: Int, heads: Int, span: SequenceSpan) -> (prefix: Int, reverse: Bool) {
        switch self {
        case .causal: return (0, false)
        case .prefix: return (span.prefix, false)
        case .mixed: return head < heads / 2 ? (0, false) : (span.prefix, true)
        case .bidirectional: return (span.length, false)
        }
    }
}

public enum TrainingOps {
    /// Keeps freed training buffers in the process's heap (glibc only): a step allocates and frees the same
    /// activation buffers (megabytes each) every time, and glibc otherwise maps each anew and gives it back, so that
    /// every step page-faults and zero-fills them again (about 2% of a LoRA step, on the main thread). Process-wide;
    /// called once by the trainers. It does not reach blocks above 32 MiB or the heaps of a thread's arena:
    /// `BufferCache` keeps the buffers of 1 MiB and more.
    static let keepHeap: Void = ck_keep_heap()

    // MARK: Matrix products

    /// C (M×N) = [C +] A·B, A[i][k] at A[i*aRow + k*aCol], B row-major with row length ldb, C with ldc; split across
    /// the pool by rows of C (or by columns when there are few rows).
    public static func gemm(M: Int, N: Int, K: Int, A: UnsafePointer<Float>, aRow: Int, aCol: Int,
                            B: UnsafePointer<Float>, ldb: Int, C: UnsafeMutablePointer<Float>, ldc: Int,
                            accumulate: Bool, pool: ThreadPool) {
        guard M > 0, N > 0 else { return }
        let threads = pool.threadCount
        let acc: Int32 = accumulate ? 1 : 0
        if threads == 1 || M * N * max(K, 1) < 1 << 18 {
            ck_train_gemm(Int64(M), Int64(N), Int64(K), A, Int64(aRow), Int64(aCol), B, Int64(ldb), C, Int64(ldc), acc)
            return
        }
        // Splitting rows makes every thread stream all of B; splitting columns, only its share. Rows, unless B is
        // too big to stay in cache (over 1 MiB) while the chunks are short (under 64 rows): the output head's input
        // gradient (M = 64 scored rows per head chunk, B = the 49152- or 151936-row embedding) read B 8 times from
        // memory per call with row chunks, 3x slower per FLOP than the layers' products.
        let bigB = K * N * MemoryLayout<Float>.size > 1 << 20
        if M >= 16 * threads && (!bigB || M >= 64 * threads * 4 || N < 64 * threads) {
            // Rows: one chunk per thread, a multiple of 4 rows (the kernel's tile height). Every chunk streams and
            // packs all of B, so fewer chunks read it fewer times: one per thread made a Qwen2.5-0.5B LoRA step 7%
            // faster than four per thread (alternating runs under chrt; docs/benchmarks.md).
            let chunks = min(threads, M / 4)
            let per = ((M + chunks - 1) / chunks + 3) / 4 * 4
            let count = (M + per - 1) / per
            pool.parallelFor(count) { c in
                let i0 = c * per, i1 = min(M, i0 + per)
                ck_train_gemm(Int64(i1 - i0), Int64(N), Int64(K), A + i0 * aRow, Int64(aRow), Int64(aCol), B, Int64(ldb),
                              C + i0 * ldc, Int64(ldc), acc)
            }
        } else {
            // Columns in chunks of a multiple of 64.
            let chunks = max(1, min(threads * 2, N / 64))
            let per = ((N + chunks - 1) / chunks + 63) / 64 * 64
            let count = (N + per - 1) / per
            pool.parallelFor(count) { c in
                let j0 = c * per, j1 = min(N, j0 + per)
                ck_train_gemm(Int64(M), Int64(j1 - j0), Int64(K), A, Int64(aRow), Int64(aCol), B + j0, Int64(ldb),
                              C + j0, Int64(ldc), acc)
            }
        }
    }

    /// out (cols, rows) = the transpose of m (rows, cols), in 64 x 64 tiles split across the pool.
    public static func transpose(_ m: UnsafePointer<Float>, rows: Int, cols: Int, into out: UnsafeMutablePointer<Float>,
                                 pool: ThreadPool) {
        let bands = (rows + 63) / 64
        pool.parallelFor(bands) { b in
            let i0 = b * 64, i1 = min(rows, i0 + 64)
            var j0 = 0
            while j0 < cols {
                let j1 = min(cols, j0 + 64)
                for i in i0..<i1 { for j in j0..<j1 { out[j * rows + i] = m[i * cols + j] } }
                j0 = j1
            }
        }
    }

    // MARK: Linear layer  y = x · Wᵀ

    /// y (rows, outDim) = x (rows, inDim) · Wᵀ, W (outDim, inDim).
    public static func linearForward(x: UnsafePointer<Float>, weight: UnsafePointer<Float>, rows: Int, inDim: Int,
                                     outDim: Int, out: UnsafeMutablePointer<Float>, pool: ThreadPool) {
        matmul(WeightMatrix(dtype: .f32, data: UnsafeRawPointer(weight), rows: outDim, cols: inDim), x, rows: rows,
               into: out, pool: pool)
    }

    /// dx (rows, inDim) [+]= dy · W; dW (outDim, inDim) += dyᵀ · x. Either output may be nil.
    public static func linearBackward(dOut: UnsafePointer<Float>, x: UnsafePointer<Float>, weight: UnsafePointer<Float>,
                                      rows: Int, inDim: Int, outDim: Int, dx: UnsafeMutablePointer<Float>?,
                                      accumulateDX: Bool = false, dWeight: UnsafeMutablePointer<Float>?, pool: ThreadPool) {
        if let dx {
            gemm(M: rows, N: inDim, K: outDim, A: dOut, aRow: outDim, aCol: 1, B: weight, ldb: inDim, C: dx, ldc: inDim,
                 accumulate: accumulateDX, pool: pool)
        }
        if let dWeight {
            gemm(M: outDim, N: inDim, K: rows, A: dOut, aRow: 1, aCol: outDim, B: x, ldb: inDim, C: dWeight, ldc: inDim,
                 accumulate: true, pool: pool)
        }
    }

    // MARK: Embedding

    /// out[t] = table[tokens[t]] (rows of `dim`).
    public static func embeddingForward(tokens: [Int], table: UnsafePointer<Float>, dim: Int, out: UnsafeMutablePointer<Float>) {
        for (t, id) in tokens.enumerated() { (out + t * dim).update(from: table + id * dim, count: dim) }
    }

    /// dTable[tokens[t]] += dOut[t], except for the row of `paddingID` (torch's padding_idx), which gets nothing.
    public static func embeddingBackward(tokens: [Int], dOut: UnsafePointer<Float>, dim: Int, dTable: UnsafeMutablePointer<Float>,
                                         paddingID: Int? = nil) {
        for (t, id) in tokens.enumerated() where id != paddingID { ck_add(dTable + id * dim, dOut + t * dim, Int64(dim)) }
    }

    // MARK: RMSNorm

    /// out = x / sqrt(mean(x²) + eps) * weight per row; saves the reciprocal root per row in `rstd`. With a pool,
    /// rows are split across it (each row's arithmetic is the same either way).
    public static func rmsnormForward(x: UnsafePointer<Float>, weight: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>,
                                      rstd: UnsafeMutablePointer<Float>, rows: Int, dim: Int, eps: Float, pool: ThreadPool? = nil) {
        guard let pool else {
            ck_train_rmsnorm_forward(x, weight, out, rstd, Int64(rows), Int64(dim), eps)
            return
        }
        rowChunks(rows, dim, pool) { r0, r1 in
            ck_train_rmsnorm_forward(x + r0 * dim, weight, out + r0 * dim, rstd + r0, Int64(r1 - r0), Int64(dim), eps)
        }
    }

    /// The rows of an elementwise or row-wise operation over (rows, dim), split across the pool in contiguous chunks
    /// when there is enough work to wake it (about 64 Ki values per chunk); `body(r0, r1)` handles rows r0..<r1.
    static func rowChunks(_ rows: Int, _ dim: Int, _ pool: ThreadPool, _ body: (Int, Int) -> Void) {
        let (per, count) = rowSplit(rows, dim, pool)
        if count <= 1 { body(0, rows); return }
        pool.parallelFor(count) { c in body(c * per, min(rows, (c + 1) * per)) }
    }

    /// Rows per chunk and the number of chunks for `rowChunks` (at most two per thread, about 64 Ki values each).
    static func rowSplit(_ rows: Int, _ dim: Int, _ pool: ThreadPool) -> (per: Int, count: Int) {
        let chunks = max(1, min(rows, pool.threadCount * 2, rows * dim / (1 << 16)))
        let per = max(1, (rows + chunks - 1) / chunks)
        return (per, (rows + per - 1) / per)
    }

    /// y += x over `count` values, split across the pool (the same bits as one pass).
    public static func add(_ y: UnsafeMutablePointer<Float>, _ x: UnsafePointer<Float>, count: Int, pool: ThreadPool) {
        chunked(count, pool) { lo, n in ck_add(y + lo, x + lo, Int64(n)) }
    }

    /// dx += ∂/∂x, dWeight += ∂/∂weight.
    public static func rmsnormBackward(dOut: UnsafePointer<Float>, x: UnsafePointer<Float>, weight: UnsafePointer<Float>,
                                       rstd: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>,
                                       dWeight: UnsafeMutablePointer<Float>, rows: Int, dim: Int) {
        ck_train_rmsnorm_backward(dOut, x, weight, rstd, dx, dWeight, Int64(rows), Int64(dim))
    }

    /// dx += ∂/∂x of a norm whose weight does not train, rows split across the pool (each row's arithmetic is that
    /// of `rmsnormBackward`; the weight gradient goes to per-chunk scratch and is dropped).
    public static func rmsnormBackwardInput(dOut: UnsafePointer<Float>, x: UnsafePointer<Float>, weight: UnsafePointer<Float>,
                                            rstd: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>, rows: Int, dim: Int,
                                            pool: ThreadPool) {
        let (per, count) = rowSplit(rows, dim, pool)
        let scratch = UnsafeMutablePointer<Float>.allocate(capacity: count * dim)
        defer { scratch.deallocate() }
        scratch.initialize(repeating: 0, count: count * dim)
        pool.parallelFor(count) { c in
            let r0 = c * per, r1 = min(rows, r0 + per)
            ck_train_rmsnorm_backward(dOut + r0 * dim, x + r0 * dim, weight, rstd + r0, dx + r0 * dim, scratch + c * dim,
                                      Int64(r1 - r0), Int64(dim))
        }
    }

    // MARK: RoPE (GGUF's adjacent pairs)

    /// cos/sin of position · θ^(-2i/ropeDim) per row, (rows, ropeDim/2) each, computed as the inference path does.
    public static func ropeTables(positions: [Int], ropeDim: Int, theta: Double) -> (cos: [Float], sin: [Float]) {
        let half = ropeDim / 2
        var c = [Float](repeating: 0, count: positions.count * half), s = c
        for (r, pos) in positions.enumerated() {
            for i in 0..<half {
                let invFreq = Float(1.0) / powf(Float(theta), Float(2 * i) / Float(ropeDim))
                let angle = Float(pos) * invFreq
                c[r * half + i] = cosf(angle)
                s[r * half + i] = sinf(angle)
            }
        }
        return (c, s)
    }

    /// Rotates the adjacent pairs of every head of every row in place.
    public static func ropeForward(_ x: UnsafeMutablePointer<Float>, rows: Int, heads: Int, headDim: Int, ropeDim: Int,
                                   cos: UnsafePointer<Float>, sin: UnsafePointer<Float>) {
        let half = ropeDim / 2
        for r in 0..<rows {
            ck_rope_adjacent(x + r * heads * headDim, Int64(heads), Int64(headDim), Int64(ropeDim), cos + r * half, sin + r * half)
        }
    }

    /// The backward of a rotation is the rotation by the opposite angle: pass the negated sines (`negSin`).
    public static func ropeBackward(_ dx: UnsafeMutablePointer<Float>, rows: Int, heads: Int, headDim: Int, ropeDim: Int,
                                    cos: UnsafePointer<Float>, negSin: UnsafePointer<Float>) {
        ropeForward(dx, rows: rows, heads: heads, headDim: headDim, ropeDim: ropeDim, cos: cos, sin: negSin)
    }

    // MARK: Grouped-query attention

    /// out (rows, heads*D) from q (rows, heads*D), k and v (rows, kvHeads*D), within each sequence, under `mask`
    /// (scores scaled by `scale`, default 1/√D)
    /// (per query head for `.mixed`); query head h reads key/value head h / (heads/kvHeads). Saves the log-sum-exp of
    /// each (row, head) in lse (rows, heads).
    public static func attentionForward(q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                                        sequences: [SequenceSpan], mask: AttentionMask, heads: Int, kvHeads: Int,
                                        headDim D: Int, scale: Float? = nil, out: UnsafeMutablePointer<Float>,
                                        lse: UnsafeMutablePointer<Float>, pool: ThreadPool) {
        let qDim = heads * D, kvDim = kvHeads * D, group = heads / kvHeads
        let scale = scale ?? 1 / Float(D).squareRoot()
        pool.parallelFor(sequences.count * heads) { item in
            let s = sequences[item / heads], h = item % heads, g = h / group
            let rule = mask.kernelRule(head: h, heads: heads, span: s)
            withUnsafeTemporaryAllocation(of: Float.self, capacity: max(s.length, 1)) { scratch in
                ck_train_attention_forward(q + s.start * qDim + h * D, k + s.start * kvDim + g * D, v + s.start * kvDim + g * D,
                                           Int64(s.length), Int64(rule.prefix), rule.reverse ? 1 : 0, Int64(qDim),
                                           Int64(kvDim), Int64(D), scale,
                                           out + s.start * qDim + h * D, lse + s.start * heads + h, Int64(heads),
                                           scratch.baseAddress!)
            }
        }
    }

    /// Overwrites dq, dk, dv with the gradients of q, k, v given dOut (rows like out), under the forward's mask.
    public static func attentionBackward(q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                                         out: UnsafePointer<Float>, lse: UnsafePointer<Float>, dOut: UnsafePointer<Float>,
                                         sequences: [SequenceSpan], mask: AttentionMask, heads: Int, kvHeads: Int,
                                         headDim D: Int, scale: Float? = nil, dq: UnsafeMutablePointer<Float>,
                                         dk: UnsafeMutablePointer<Float>, dv: UnsafeMutablePointer<Float>, pool: ThreadPool) {
        let qDim = heads * D, kvDim = kvHeads * D, group = heads / kvHeads
        let scale = scale ?? 1 / Float(D).squareRoot()
        let rows = sequences.map { $0.start + $0.length }.max() ?? 0
        dq.update(repeating: 0, count: rows * qDim)
        dk.update(repeating: 0, count: rows * kvDim)
        dv.update(repeating: 0, count: rows * kvDim)
        // One task per (sequence, key/value head): it alone writes that head's dk/dv rows and its query heads' dq rows.
        pool.parallelFor(sequences.count * kvHeads) { item in
            let s = sequences[item / kvHeads], g = item % kvHeads
            withUnsafeTemporaryAllocation(of: Float.self, capacity: max(2 * s.length, 1)) { scratch in
                for h in (g * group)..<((g + 1) * group) {
                    let qo = s.start * qDim + h * D, ko = s.start * kvDim + g * D
                    let rule = mask.kernelRule(head: h, heads: heads, span: s)
                    ck_train_attention_backward(q + qo, k + ko, v + ko, out + qo, dOut + qo, lse + s.start * heads + h,
                                                Int64(heads), Int64(s.length), Int64(rule.prefix), rule.reverse ? 1 : 0,
                                                Int64(qDim), Int64(kvDim), Int64(D), scale, dq + qo, dk + ko, dv + ko,
                                                scratch.baseAddress!)
                }
            }
        }
    }

    // MARK: SwiGLU  h = silu(gate) * up

    public static func swigluForward(gate: UnsafePointer<Float>, up: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>,
                                     count: Int, pool: ThreadPool) {
        chunked(count, pool) { lo, n in ck_train_swiglu_forward(gate + lo, up + lo, out + lo, Int64(n)) }
    }

    /// Overwrites dGate and dUp.
    public static func swigluBackward(dOut: UnsafePointer<Float>, gate: UnsafePointer<Float>, up: UnsafePointer<Float>,
                                      dGate: UnsafeMutablePointer<Float>, dUp: UnsafeMutablePointer<Float>, count: Int,
                                      pool: ThreadPool) {
        chunked(count, pool) { lo, n in ck_train_swiglu_backward(dOut + lo, gate + lo, up + lo, dGate + lo, dUp + lo, Int64(n)) }
    }

    // MARK: Cross-entropy

    /// Per row of logits (rows, vocab): the loss against targets[r] (returned), and the row overwritten with
    /// scale · (softmax − onehot), the gradient of scale · loss.
    public static func crossEntropy(logits: UnsafeMutablePointer<Float>, rows: Int, vocab: Int, targets: [Int], scale: Float,
                                    pool: ThreadPool) -> [Double] {
        var losses = [Double](repeating: 0, count: rows)
        losses.withUnsafeMutableBufferPointer { l in
            let lp = l.baseAddress!
            pool.parallelFor(rows) { r in
                lp[r] = ck_train_cross_entropy(logits + r * vocab, Int64(vocab), Int64(targets[r]), scale)
            }
        }
        return losses
    }

    static func chunked(_ count: Int, _ pool: ThreadPool, _ body: (Int, Int) -> Void) {
        let chunk = 1 << 16
        let n = (count + chunk - 1) / chunk
        if n <= 1 { body(0, count); return }
        pool.parallelFor(n) { c in body(c * chunk, min(chunk, count - c * chunk)) }
    }
}
