import Foundation
import CausalKernels
import CCausalKernels

// The op seam: the decoder forward (`DecoderModel.forward`) calls only these operations, on buffers the backend
// allocates, so a second device (CUDA) can implement the same protocol without touching model code. The CPU
// backend runs the C kernels of CCausalKernels on host memory.
//
// Contract every backend keeps (batch invariance, docs/architecture.md): an operation's result for one row (token)
// depends only on that row's data, its own sequence's cache and the weights — never on how many rows share the
// call, on their order, on the thread or block that runs it, or on the row's neighbours. Reductions run in an order
// fixed by the row's length alone.

/// Activations owned by a backend: `count` floats (rows × width, row-major). The CPU backend's live in host memory.
public class BackendBuffer {
    public let count: Int
    init(count: Int) { self.count = count }
}

/// A host-memory buffer of the CPU backend.
final class HostBuffer: BackendBuffer {
    let p: UnsafeMutablePointer<Float>
    override init(count: Int) {
        p = .allocate(capacity: max(count, 1))
        super.init(count: count)
    }
    deinit { p.deallocate() }
}

/// Rotary embedding angles for the rows of one step: (rows, ropeDim/2) cosines and sines.
struct RopeAngles {
    let cos: BackendBuffer
    let sin: BackendBuffer
}

protocol DecoderBackend: AnyObject {
    var name: String { get }
    /// A new buffer of `count` floats (contents undefined).
    func buffer(_ count: Int) -> BackendBuffer
    /// x[r] = table[tokens[r]] · scale (scale 1: the row as dequantized).
    func embed(_ table: WeightMatrix, tokens: [Int], scale: Float, into x: BackendBuffer)
    /// y (n, w.rows) = x (n, w.cols) · wᵀ, plus `bias` (w.rows) when given.
    func matmul(_ w: WeightMatrix, _ x: BackendBuffer, rows n: Int, bias: [Float]?, into y: BackendBuffer)
    /// ys[i] (n, ws[i].rows) = x (n, C) · ws[i]ᵀ + biases[i] for several matrices of one input (Q, K and V; gate
    /// and up): each output as `matmul` would give it; a backend may share the work around the input.
    func matmul(_ ws: [WeightMatrix], _ x: BackendBuffer, rows n: Int, biases: [[Float]?], into ys: [BackendBuffer])
    /// RMSNorm of each of `rows` rows of `width` floats with `weight` (width); y may be x.
    func rmsNorm(_ x: BackendBuffer, weight: [Float], rows: Int, width: Int, eps: Float, into y: BackendBuffer)
    /// Cosines and sines of position · frequency for each row (frequencies: ropeDim/2 values).
    func ropeAngles(positions: [Int], frequencies: [Float]) -> RopeAngles
    /// Rotates the first ropeDim elements of each of `heads` heads (of `headDim`) of every row.
    func rope(_ x: BackendBuffer, rows: Int, heads: Int, headDim: Int, ropeDim: Int, angles: RopeAngles,
              style: DecoderConfig.RopeStyle)
    /// Writes each row's keys and values (kvHeads × headDim) into its sequence's cache of layer `layer`.
    func appendKV(_ k: BackendBuffer, _ v: BackendBuffer, rows: RaggedRows, chunks: [SequenceChunk], layer: Int,
                  kvHeads: Int, headDim: Int)
    /// out[r] = attention of q[r] over its own sequence's keys in layer `layer`: [position - window + 1, position]
    /// (causal, optionally windowed); for a prompt position of a prefix-LM sequence (`promptAttention` prefix or
    /// mixed, the sequence's cache.promptLength P), the keys its training mask allowed (prefix: [0, P); mixed: heads
    /// below H/2 causal, the others [position, P)).
    func attention(_ q: BackendBuffer, rows: RaggedRows, chunks: [SequenceChunk], layer: Int, heads: Int, kvHeads: Int,
                   headDim: Int, scale: Float, window: Int?, promptAttention: AttentionMask, into out: BackendBuffer)
    /// g = act(g) · u, element-wise over `count` floats (SwiGLU: silu; GeGLU: tanh-GELU).
    func gatedActivation(_ g: BackendBuffer, _ u: BackendBuffer, count: Int, rows: Int, activation: DecoderConfig.Activation)
    /// x += y over `count` floats.
    func add(_ x: BackendBuffer, _ y: BackendBuffer, count: Int)
    /// Normalizes the wanted rows, applies the head and returns each chunk's logits (soft-capped when `softcap`).
    func logits(_ x: BackendBuffer, width: Int, wanted: LogitRows, head: WeightMatrix, normWeight: [Float], eps: Float,
                softcap: Float?) -> [[Float]]
}

extension DecoderBackend {
    func matmul(_ ws: [WeightMatrix], _ x: BackendBuffer, rows n: Int, biases: [[Float]?], into ys: [BackendBuffer]) {
        for i in ws.indices { matmul(ws[i], x, rows: n, bias: biases[i], into: ys[i]) }
    }
}

/// The CPU backend: CCausalKernels on host memory, row products split across a thread pool.
final class CPUBackend: DecoderBackend {
    public let pool: ThreadPool
    public var name: String { "cpu (\(String(cString: ck_isa_name())), \(pool.threadCount) threads)" }

    public init(pool: ThreadPool) { self.pool = pool }

    @inline(__always) private func host(_ b: BackendBuffer) -> UnsafeMutablePointer<Float> { unsafeDowncast(b, to: HostBuffer.self).p }

    public func buffer(_ count: Int) -> BackendBuffer { HostBuffer(count: count) }

    public func embed(_ table: WeightMatrix, tokens: [Int], scale: Float, into x: BackendBuffer) {
        let p = host(x), C = table.cols
        for (r, t) in tokens.enumerated() {
            dequantize(table, row: t, into: p + r * C)
            if scale != 1 { for i in 0..<C { p[r * C + i] *= scale } }
        }
    }

    public func matmul(_ w: WeightMatrix, _ x: BackendBuffer, rows n: Int, bias: [Float]?, into y: BackendBuffer) {
        let yp = host(y)
        CausalKernels.matmul(w, host(x), rows: n, into: yp, pool: pool)
        if let bias {
            bias.withUnsafeBufferPointer { ck_add_bias(yp, $0.baseAddress!, Int64(n), Int64(w.rows)) }
        }
    }

    /// One fork-join for all the products, and on the int8 path one quantization of x (CausalKernels.matmul).
    public func matmul(_ ws: [WeightMatrix], _ x: BackendBuffer, rows n: Int, biases: [[Float]?], into ys: [BackendBuffer]) {
        let yps = ys.map(host)
        CausalKernels.matmul(ws, host(x), rows: n, into: yps, pool: pool)
        for (i, bias) in biases.enumerated() {
            guard let bias else { continue }
            bias.withUnsafeBufferPointer { ck_add_bias(yps[i], $0.baseAddress!, Int64(n), Int64(ws[i].rows)) }
        }
    }
    public func rmsNorm(_ x: BackendBuffer, weight: [Float], rows: Int, width: Int, eps: Float, into y: BackendBuffer) {
        let xp = host(x), yp = host(y)
        weight.withUnsafeBufferPointer { w in
            for r in 0..<rows { ck_rmsnorm(xp + r * width, w.baseAddress!, yp + r * width, Int64(width), eps) }
        }
    }

    public func ropeAngles(positions: [Int], frequencies: [Float]) -> RopeAngles {
        let half = frequencies.count
        let c = HostBuffer(count: positions.count * half), s = HostBuffer(count: positions.count * half)
        for (r, pos) in positions.enumerated() {
            for i in 0..<half {
                let angle = Float(pos) * frequencies[i]
                c.p[r * half + i] = cosf(angle)
                s.p[r * half + i] = sinf(angle)
            }
        }
        return RopeAngles(cos: c, sin: s)
    }

    public func rope(_ x: BackendBuffer, rows: Int, heads: Int, headDim: Int, ropeDim: Int, angles: RopeAngles,
                     style: DecoderConfig.RopeStyle) {
        let p = host(x), c = host(angles.cos), s = host(angles.sin), half = ropeDim / 2, width = heads * headDim
        for r in 0..<rows {
            switch style {
            case .adjacent: ck_rope_adjacent(p + r * width, Int64(heads), Int64(headDim), Int64(ropeDim), c + r * half, s + r * half)
            case .half: ck_rope_half(p + r * width, Int64(heads), Int64(headDim), Int64(ropeDim), c + r * half, s + r * half)
            }
        }
    }

    public func appendKV(_ k: BackendBuffer, _ v: BackendBuffer, rows: RaggedRows, chunks: [SequenceChunk], layer l: Int,
                         kvHeads: Int, headDim D: Int) {
        let kp = host(k), vp = host(v), kvDim = kvHeads * D
        for r in 0..<rows.count {
            // The cache is head-major, (Hkv, capacity, D): each head's keys are one contiguous run.
            let cache = chunks[rows.chunk[r]].cache
            for g in 0..<kvHeads {
                let at = g * cache.capacity * D + rows.position[r] * D
                switch cache.precision {
                case .fp32:
                    (cache.keys[l] + at).update(from: kp + r * kvDim + g * D, count: D)
                    (cache.values[l] + at).update(from: vp + r * kvDim + g * D, count: D)
                case .fp16:
                    ck_f32_to_f16(kp + r * kvDim + g * D, cache.halfKeys[l] + at, Int64(D))
                    ck_f32_to_f16(vp + r * kvDim + g * D, cache.halfValues[l] + at, Int64(D))
                }
            }
        }
    }

    public func attention(_ q: BackendBuffer, rows: RaggedRows, chunks: [SequenceChunk], layer l: Int, heads H: Int,
                          kvHeads Hkv: Int, headDim D: Int, scale: Float, window: Int?, promptAttention: AttentionMask,
                          into out: BackendBuffer) {
        let n = rows.count, qDim = H * D
        let qp = host(q), op = host(out)
        // Keys a (row, head) reads: [first, first + count). Causal: up to the row's own position, the last `window`
        // of them on a sliding-window layer. A prefix-LM prompt row reads as its training mask allowed.
        func keys(_ r: Int, _ h: Int) -> (first: Int, count: Int) {
            let p = rows.position[r], P = chunks[rows.chunk[r]].cache.promptLength
            if p < P {
                switch promptAttention {
                case .prefix, .bidirectional: return (0, P)
                case .mixed where h >= H / 2: return (p, P - p)
                default: break
                }
            }
            let f = window.map { max(0, p - $0 + 1) } ?? 0
            return (f, p - f + 1)
        }
        let perHead = promptAttention == .mixed
        // One work item per (row, key/value head), so the query heads of a group share each block of keys and
        // values; per (row, head) when that would leave threads idle (few rows) or when heads read different keys
        // (mixed). Same results either way. Scores go to each thread's own scratch (L1-sized for a short context),
        // not to a buffer of the whole step's.
        let group = !perHead && n * Hkv >= 4 * pool.threadCount ? H / Hkv : 1
        let items = H / group
        // Where each chunk's keys and values are read: its cache, or, for an fp16 cache read by 8 or more rows of this
        // step (a prompt chunk), a staging copy of the positions they read converted once to fp32 (the same layout),
        // instead of each row converting every key and value again. The conversion is exact: the fp16 kernel's bits.
        var staging: [HostBuffer] = []
        let sources = chunks.indices.map { ci -> (k: UnsafeRawPointer, v: UnsafeRawPointer, headStride: Int, half: Bool) in
            let cache = chunks[ci].cache
            guard cache.precision == .fp16 else {
                return (UnsafeRawPointer(cache.keys[l]), UnsafeRawPointer(cache.values[l]), cache.capacity * D, false)
            }
            let own = (0..<n).filter { rows.chunk[$0] == ci }
            guard own.count >= 8 else {
                return (UnsafeRawPointer(cache.halfKeys[l]), UnsafeRawPointer(cache.halfValues[l]), cache.capacity * D, true)
            }
            // Heads past H / 2 read other keys in a mixed prefix-LM prompt; the others all read what head 0 reads.
            let span = own.map { r in [0, H - 1].map { h in keys(r, h) }.map { $0.first + $0.count }.max()! }.max()!
            let k = HostBuffer(count: Hkv * span * D), v = HostBuffer(count: Hkv * span * D)
            staging += [k, v]
            pool.parallelFor(2 * Hkv) { i in
                let g = i / 2, src = i % 2 == 0 ? cache.halfKeys[l] : cache.halfValues[l], dst = i % 2 == 0 ? k.p : v.p
                ck_f16_to_f32(src + g * cache.capacity * D, dst + g * span * D, Int64(span * D))
            }
            return (UnsafeRawPointer(k.p), UnsafeRawPointer(v.p), span * D, false)
        }
        pool.parallelFor(n * items) { item in
            let r = item / items, h = (item % items) * group
            let s = sources[rows.chunk[r]]
            let (f, len) = keys(r, h)
            if s.half {
                ck_attention_row_f16(qp + r * qDim, s.k.assumingMemoryBound(to: UInt16.self) + f * D,
                                     s.v.assumingMemoryBound(to: UInt16.self) + f * D, Int64(D), Int64(s.headStride), Int64(len),
                                     Int64(H), Int64(Hkv), Int64(D), scale, op + r * qDim, nil, Int64(h), Int64(h + group))
            } else {
                ck_attention_row(qp + r * qDim, s.k.assumingMemoryBound(to: Float.self) + f * D,
                                 s.v.assumingMemoryBound(to: Float.self) + f * D, Int64(D), Int64(s.headStride), Int64(len),
                                 Int64(H), Int64(Hkv), Int64(D), scale, op + r * qDim, nil, Int64(h), Int64(h + group))
            }
        }
        withExtendedLifetime(staging) {}
    }

    public func gatedActivation(_ g: BackendBuffer, _ u: BackendBuffer, count: Int, rows: Int, activation: DecoderConfig.Activation) {
        let gp = host(g), up = host(u)
        let width = count / max(rows, 1)
        func run(_ a: UnsafeMutablePointer<Float>, _ b: UnsafeMutablePointer<Float>, _ m: Int) {
            switch activation {
            case .silu: ck_silu_mul(a, b, Int64(m))
            case .geluTanh: ck_gelu_tanh(a, Int64(m)); ck_mul(a, b, Int64(m))
            }
        }
        if rows >= 4 {  // element-wise, so splitting rows across threads changes nothing but the time
            pool.parallelFor(rows) { r in run(gp + r * width, up + r * width, width) }
        } else {
            run(gp, up, count)
        }
    }

    public func add(_ x: BackendBuffer, _ y: BackendBuffer, count: Int) { ck_add(host(x), host(y), Int64(count)) }

    public func logits(_ x: BackendBuffer, width C: Int, wanted: LogitRows, head: WeightMatrix, normWeight: [Float], eps: Float,
                       softcap: Float?) -> [[Float]] {
        var out = normWeight.withUnsafeBufferPointer { nw in
            wanted.logits(host(x), C: C, head: head, pool: pool) { ck_rmsnorm($0, nw.baseAddress!, $1, Int64(C), eps) }
        }
        if let cap = softcap {
            for i in out.indices { for j in out[i].indices { out[i][j] = tanhf(out[i][j] / cap) * cap } }
        }
        return out
    }
}
