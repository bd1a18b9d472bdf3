import Foundation
import CausalKernels
import CCausalKernels

// LLaMA (Touvron et al. 2023, https://arxiv.org/abs/2302.13971), as in Hugging Face's modeling_llama.py:
// pre-norm decoder blocks of RMSNorm → grouped-query attention with RoPE → residual → RMSNorm → SwiGLU MLP → residual.
//
// Dimension legend: n = rows in the step (tokens of all sequences together), C = hidden size, H = query heads,
// Hkv = key/value heads, D = head size, F = MLP size, V = vocabulary.
//
// GGUF note: llama.cpp's converter permutes the rows of attn_q/attn_k so that rotating adjacent pairs (2i, 2i+1)
// equals Hugging Face's rotate-half on its own layout. Q·K products are unchanged by that permutation, so applying
// adjacent-pair RoPE to the GGUF weights gives exactly HF's attention.

public struct LlamaConfig: Sendable, Equatable {
    public var vocabularySize: Int
    public var hiddenSize: Int          // C
    public var intermediateSize: Int    // F
    public var layerCount: Int
    public var headCount: Int           // H
    public var kvHeadCount: Int         // Hkv
    public var headDim: Int             // D
    public var ropeDim: Int
    public var ropeTheta: Double
    public var rmsNormEps: Double
    public var contextLength: Int

    public init(vocabularySize: Int, hiddenSize: Int, intermediateSize: Int, layerCount: Int, headCount: Int,
                kvHeadCount: Int, headDim: Int? = nil, ropeDim: Int? = nil, ropeTheta: Double = 10000,
                rmsNormEps: Double = 1e-5, contextLength: Int = 2048) {
        self.vocabularySize = vocabularySize; self.hiddenSize = hiddenSize; self.intermediateSize = intermediateSize
        self.layerCount = layerCount; self.headCount = headCount; self.kvHeadCount = kvHeadCount
        self.headDim = headDim ?? hiddenSize / headCount
        self.ropeDim = ropeDim ?? self.headDim
        self.ropeTheta = ropeTheta; self.rmsNormEps = rmsNormEps; self.contextLength = contextLength
    }

    /// Reads `{arch}.*` keys from GGUF metadata; errors name the missing key.
    public init(gguf: GGUFFile) throws {
        let arch = try gguf.string("general.architecture")
        guard arch == "llama" else {
            throw CausalError.badFormat(path: gguf.path, field: "general.architecture", reason: "'\(arch)' is not supported (supported: llama)")
        }
        let p = arch + "."
        let heads = try gguf.int(p + "attention.head_count")
        let hidden = try gguf.int(p + "embedding_length")
        var vocab = gguf.has(p + "vocab_size") ? try gguf.int(p + "vocab_size") : 0
        if vocab == 0, let t = gguf.tensorsByName["token_embd.weight"], t.dims.count == 2 { vocab = t.dims[1] }
        self.init(
            vocabularySize: vocab,
            hiddenSize: hidden,
            intermediateSize: try gguf.int(p + "feed_forward_length"),
            layerCount: try gguf.int(p + "block_count"),
            headCount: heads,
            kvHeadCount: gguf.has(p + "attention.head_count_kv") ? try gguf.int(p + "attention.head_count_kv") : heads,
            headDim: gguf.has(p + "attention.key_length") ? try gguf.int(p + "attention.key_length") : nil,
            ropeDim: gguf.has(p + "rope.dimension_count") ? try gguf.int(p + "rope.dimension_count") : nil,
            ropeTheta: gguf.has(p + "rope.freq_base") ? try gguf.float(p + "rope.freq_base") : 10000,
            rmsNormEps: try gguf.float(p + "attention.layer_norm_rms_epsilon"),
            contextLength: gguf.has(p + "context_length") ? try gguf.int(p + "context_length") : 2048)
        try validate(path: gguf.path)
    }

    func validate(path: String) throws {
        func bad(_ k: String, _ why: String) -> CausalError { .badFormat(path: path, field: "llama." + k, reason: why) }
        guard hiddenSize > 0 else { throw bad("embedding_length", "must be positive") }
        guard layerCount > 0 else { throw bad("block_count", "must be positive") }
        guard headCount > 0, kvHeadCount > 0, headCount % kvHeadCount == 0 else {
            throw bad("attention.head_count_kv", "\(headCount) query heads are not a multiple of \(kvHeadCount) key/value heads")
        }
        guard headDim > 0, ropeDim <= headDim, ropeDim % 2 == 0 else { throw bad("rope.dimension_count", "\(ropeDim) must be even and at most the head size \(headDim)") }
        guard vocabularySize > 0 else { throw bad("vocab_size", "must be positive") }
        guard intermediateSize > 0 else { throw bad("feed_forward_length", "must be positive") }
        guard contextLength > 0 else { throw bad("context_length", "must be positive") }
    }
}

/// One decoder block's weights.
struct LlamaLayerWeights {
    let attnNorm: [Float]      // (C)
    let q: WeightMatrix        // (H*D, C)
    let k: WeightMatrix        // (Hkv*D, C)
    let v: WeightMatrix        // (Hkv*D, C)
    let o: WeightMatrix        // (C, H*D)
    let mlpNorm: [Float]       // (C)
    let gate: WeightMatrix     // (F, C)
    let up: WeightMatrix       // (F, C)
    let down: WeightMatrix     // (C, F)
}

public final class LlamaModel: LanguageModel, @unchecked Sendable {
    public let config: LlamaConfig
    public let precision: Precision
    let embedding: WeightMatrix    // (V, C)
    let layers: [LlamaLayerWeights]
    let finalNorm: [Float]         // (C)
    let output: WeightMatrix       // (V, C), the embedding when tied
    public let pool: ThreadPool
    private let storage: AnyObject  // the GGUF file or safetensors checkpoint whose memory map the weights point into
    private var owned: [UnsafeMutableRawPointer] = []

    public var vocabularySize: Int { config.vocabularySize }
    public var contextLength: Int { config.contextLength }

    /// A model over prepared weights (GGUF row layout: Q/K rows ordered for adjacent-pair RoPE). `storage` is kept
    /// alive for the weights that point into its memory map; `owned` buffers are freed with the model.
    init(config: LlamaConfig, precision: Precision, pool: ThreadPool, embedding: WeightMatrix, layers: [LlamaLayerWeights],
         finalNorm: [Float], output: WeightMatrix, storage: AnyObject, owned: [UnsafeMutableRawPointer]) {
        self.config = config; self.precision = precision; self.pool = pool
        self.embedding = embedding; self.layers = layers; self.finalNorm = finalNorm; self.output = output
        self.storage = storage; self.owned = owned
    }

    public convenience init(gguf: GGUFFile, precision: Precision = .fast, pool: ThreadPool = .shared) throws {
        let cfg = try LlamaConfig(gguf: gguf)
        let (C, F, V) = (cfg.hiddenSize, cfg.intermediateSize, cfg.vocabularySize)
        let qDim = cfg.headCount * cfg.headDim, kvDim = cfg.kvHeadCount * cfg.headDim
        var owned: [UnsafeMutableRawPointer] = []

        func matrix(_ name: String, rows: Int, cols: Int) throws -> WeightMatrix {
            let t = try gguf.tensor(name)
            guard t.dims.count == 2, t.dims[0] == cols, t.dims[1] == rows else {
                throw CausalError.badTensor(path: gguf.path, tensor: name, reason: "shape \(t.dims) does not match the expected [\(cols), \(rows)]")
            }
            guard let dt = DType(rawValue: Int32(t.type.id)) else {
                throw CausalError.badTensor(path: gguf.path, tensor: name, reason: "tensor type \(t.type.name) is not supported (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1)")
            }
            let m = WeightMatrix(dtype: dt, data: gguf.data(t), rows: rows, cols: cols)
            guard precision == .reference, dt != .f32 else { return m }
            let buf = UnsafeMutablePointer<Float>.allocate(capacity: rows * cols)
            owned.append(UnsafeMutableRawPointer(buf))
            dequantizeAll(m, into: buf)
            return WeightMatrix(dtype: .f32, data: UnsafeRawPointer(buf), rows: rows, cols: cols)
        }
        func vector(_ name: String, count: Int) throws -> [Float] {
            let t = try gguf.tensor(name)
            guard t.elementCount == count else {
                throw CausalError.badTensor(path: gguf.path, tensor: name, reason: "has \(t.elementCount) elements, expected \(count)")
            }
            guard let dt = DType(rawValue: Int32(t.type.id)), dt == .f32 || dt == .f16 || dt == .bf16 else {
                throw CausalError.badTensor(path: gguf.path, tensor: name, reason: "norm weights must be F32, F16 or BF16, found \(t.type.name)")
            }
            var out = [Float](repeating: 0, count: count)
            out.withUnsafeMutableBufferPointer { dequantize(WeightMatrix(dtype: dt, data: gguf.data(t), rows: 1, cols: count), row: 0, into: $0.baseAddress!) }
            return out
        }

        do {
            let embedding = try matrix("token_embd.weight", rows: V, cols: C)
            let layers = try (0..<cfg.layerCount).map { l in
                let p = "blk.\(l)."
                return LlamaLayerWeights(
                    attnNorm: try vector(p + "attn_norm.weight", count: C),
                    q: try matrix(p + "attn_q.weight", rows: qDim, cols: C),
                    k: try matrix(p + "attn_k.weight", rows: kvDim, cols: C),
                    v: try matrix(p + "attn_v.weight", rows: kvDim, cols: C),
                    o: try matrix(p + "attn_output.weight", rows: C, cols: qDim),
                    mlpNorm: try vector(p + "ffn_norm.weight", count: C),
                    gate: try matrix(p + "ffn_gate.weight", rows: F, cols: C),
                    up: try matrix(p + "ffn_up.weight", rows: F, cols: C),
                    down: try matrix(p + "ffn_down.weight", rows: C, cols: F))
            }
            let finalNorm = try vector("output_norm.weight", count: C)
            let output = gguf.tensorsByName["output.weight"] != nil ? try matrix("output.weight", rows: V, cols: C) : embedding
            self.init(config: cfg, precision: precision, pool: pool, embedding: embedding, layers: layers,
                      finalNorm: finalNorm, output: output, storage: gguf, owned: owned)
        } catch {
            owned.forEach { $0.deallocate() }
            throw error
        }
    }

    deinit { owned.forEach { $0.deallocate() } }

    public func makeCache(capacity: Int? = nil) -> KVCache {
        KVCache(layers: config.layerCount, kvDim: config.kvHeadCount * config.headDim,
                capacity: min(capacity ?? config.contextLength, config.contextLength))
    }

    /// Runs one step over a ragged batch. See `LanguageModel.forward`.
    public func forward(_ chunks: [SequenceChunk]) throws -> [[Float]] {
        let cfg = config
        let (C, F, V) = (cfg.hiddenSize, cfg.intermediateSize, cfg.vocabularySize)
        let (H, Hkv, D) = (cfg.headCount, cfg.kvHeadCount, cfg.headDim)
        let qDim = H * D, kvDim = Hkv * D

        let rows = try RaggedRows(chunks, vocabularySize: V)
        let (rowChunk, rowPos, tokens, n) = (rows.chunk, rows.position, rows.tokens, rows.count)
        guard n > 0 else { return chunks.map { _ in [] } }

        let x = Buffer(n * C), xb = Buffer(n * C)              // (n, C) residual stream, normed copy
        let q = Buffer(n * qDim), k = Buffer(n * kvDim), v = Buffer(n * kvDim)
        let att = Buffer(n * qDim)                              // (n, H*D)
        let g = Buffer(n * F), u = Buffer(n * F)                // (n, F)
        defer { [x, xb, q, k, v, att, g, u].forEach { $0.free() } }

        for r in 0..<n { dequantize(embedding, row: tokens[r], into: x.p + r * C) }

        // RoPE angles per row: (n, ropeDim/2).
        let half = cfg.ropeDim / 2
        let cosT = Buffer(n * half), sinT = Buffer(n * half)
        defer { cosT.free(); sinT.free() }
        for r in 0..<n {
            for i in 0..<half {
                let invFreq = Float(1.0) / powf(Float(cfg.ropeTheta), Float(2 * i) / Float(cfg.ropeDim))
                let angle = Float(rowPos[r]) * invFreq
                cosT.p[r * half + i] = cosf(angle)
                sinT.p[r * half + i] = sinf(angle)
            }
        }

        // Attention work items (row, head) and scratch for their scores.
        var scratchOffset = [Int](repeating: 0, count: n + 1)
        for r in 0..<n { scratchOffset[r + 1] = scratchOffset[r] + rowPos[r] + 1 }
        let scores = Buffer(scratchOffset[n] * H)
        defer { scores.free() }
        let scale = 1 / Float(D).squareRoot()
        let eps = Float(cfg.rmsNormEps)

        for (l, w) in layers.enumerated() {
            // Attention block.
            w.attnNorm.withUnsafeBufferPointer { nw in
                for r in 0..<n { ck_rmsnorm(x.p + r * C, nw.baseAddress!, xb.p + r * C, Int64(C), eps) }
            }
            matmul(w.q, xb.p, rows: n, into: q.p, pool: pool)   // (n, H*D)
            matmul(w.k, xb.p, rows: n, into: k.p, pool: pool)   // (n, Hkv*D)
            matmul(w.v, xb.p, rows: n, into: v.p, pool: pool)   // (n, Hkv*D)
            for r in 0..<n {
                ck_rope_adjacent(q.p + r * qDim, Int64(H), Int64(D), Int64(cfg.ropeDim), cosT.p + r * half, sinT.p + r * half)
                ck_rope_adjacent(k.p + r * kvDim, Int64(Hkv), Int64(D), Int64(cfg.ropeDim), cosT.p + r * half, sinT.p + r * half)
                // The cache is head-major, (Hkv, capacity, D): each head's keys are one contiguous run.
                let cache = chunks[rowChunk[r]].cache
                for g in 0..<Hkv {
                    let at = g * cache.capacity * D + rowPos[r] * D
                    (cache.keys[l] + at).update(from: k.p + r * kvDim + g * D, count: D)
                    (cache.values[l] + at).update(from: v.p + r * kvDim + g * D, count: D)
                }
            }
            // One work item per (row, key/value head), so the query heads of a group share each block of keys and
            // values; per (row, head) when that would leave threads idle (few rows). Same results either way.
            let group = n * Hkv >= 4 * pool.threadCount ? H / Hkv : 1
            let items = H / group
            pool.parallelFor(n * items) { item in
                let r = item / items, h = (item % items) * group
                let cache = chunks[rowChunk[r]].cache
                ck_attention_row(q.p + r * qDim, cache.keys[l], cache.values[l], Int64(D), Int64(cache.capacity * D), Int64(rowPos[r] + 1),
                                 Int64(H), Int64(Hkv), Int64(D), scale, att.p + r * qDim,
                                 scores.p + scratchOffset[r] * H + h * (rowPos[r] + 1), Int64(h), Int64(h + group))
            }
            matmul(w.o, att.p, rows: n, into: xb.p, pool: pool) // (n, C)
            ck_add(x.p, xb.p, Int64(n * C))

            // MLP block: down(silu(gate(x)) * up(x)).
            w.mlpNorm.withUnsafeBufferPointer { nw in
                for r in 0..<n { ck_rmsnorm(x.p + r * C, nw.baseAddress!, xb.p + r * C, Int64(C), eps) }
            }
            matmul(w.gate, xb.p, rows: n, into: g.p, pool: pool) // (n, F)
            matmul(w.up, xb.p, rows: n, into: u.p, pool: pool)   // (n, F)
            if n >= 4 {  // element-wise, so splitting rows across threads changes nothing but the time
                pool.parallelFor(n) { r in ck_silu_mul(g.p + r * F, u.p + r * F, Int64(F)) }
            } else {
                ck_silu_mul(g.p, u.p, Int64(n * F))
            }
            matmul(w.down, g.p, rows: n, into: xb.p, pool: pool) // (n, C)
            ck_add(x.p, xb.p, Int64(n * C))
        }
        for c in chunks { c.cache.count += c.tokens.count }

        // Final norm and the output head, only for the rows whose logits were asked for.
        return finalNorm.withUnsafeBufferPointer { nw in
            LogitRows(chunks).logits(x.p, C: C, head: output, pool: pool) { ck_rmsnorm($0, nw.baseAddress!, $1, Int64(C), eps) }
        }
    }
}

/// A scratch float buffer (uninitialised).
final class Buffer {
    let p: UnsafeMutablePointer<Float>
    init(_ count: Int) { p = .allocate(capacity: max(count, 1)) }
    func free() { p.deallocate() }
}
