import Foundation
import CausalKernels
import CCausalKernels

// The one decoder: LLaMA (Touvron et al. 2023, https://arxiv.org/abs/2302.13971) and the families that are
// configurations of its block (DecoderConfig): SmolLM2, Llama 3.x, Qwen2/2.5, Qwen3, Gemma 3 (text). Pre-norm
// blocks of RMSNorm → grouped-query attention with RoPE → residual → RMSNorm → gated MLP → residual, as in Hugging
// Face's modeling_llama.py / modeling_qwen2.py / modeling_qwen3.py / modeling_gemma3.py. Every operation goes through
// the backend seam (Backend.swift); the forward below reads like the block.
//
// Dimension legend: n = rows in the step (tokens of all sequences together), C = hidden size, H = query heads,
// Hkv = key/value heads, D = head size, F = MLP size, V = vocabulary.
//
// GGUF note: llama.cpp's converter permutes the rows of LLaMA's attn_q/attn_k so that rotating adjacent pairs
// (2i, 2i+1) equals Hugging Face's rotate-half on its own layout (RopeStyle.adjacent). Qwen and Gemma files keep
// HF's rows (RopeStyle.half).

/// One decoder block's weights.
struct DecoderLayerWeights {
    let attnNorm: [Float]      // (C)
    let q: WeightMatrix        // (H*D, C)
    let k: WeightMatrix        // (Hkv*D, C)
    let v: WeightMatrix        // (Hkv*D, C)
    let o: WeightMatrix        // (C, H*D)
    let mlpNorm: [Float]       // (C)
    let gate: WeightMatrix     // (F, C)
    let up: WeightMatrix       // (F, C)
    let down: WeightMatrix     // (C, F)
    var qBias: [Float]? = nil, kBias: [Float]? = nil, vBias: [Float]? = nil   // (H*D), (Hkv*D), (Hkv*D)
    var qNorm: [Float]? = nil, kNorm: [Float]? = nil                         // (D) each
    var postAttnNorm: [Float]? = nil, postMlpNorm: [Float]? = nil            // (C) each
}

typealias LlamaLayerWeights = DecoderLayerWeights

public final class DecoderModel: LanguageModel, @unchecked Sendable {
    public let config: DecoderConfig
    public let precision: Precision
    let embedding: WeightMatrix    // (V, C)
    let layers: [DecoderLayerWeights]
    let finalNorm: [Float]         // (C)
    let output: WeightMatrix       // (V, C), the embedding when tied
    /// GGUF `rope_freqs.weight` (ropeDim/2 divisors of the RoPE frequencies: Llama 3's scaling), if any.
    let ropeFactors: [Float]?
    public let pool: ThreadPool
    /// The ops' implementation. A variable so that a wrapper can observe the forward's operations without changing
    /// them (AttentionAnalysis records each layer's attention inputs and outputs); the forward reads it once per step.
    var backend: any DecoderBackend
    /// How a sequence's prompt attends within itself: causal (every pretrained model), or as a prefix-LM trained with
    /// `causal train --attention prefix|mixed` (read from its checkpoint's trainer_state.json). Generation then runs
    /// each prompt in one chunk and its response tokens causally, as in training.
    public var promptAttention: AttentionMask = .causal
    private let storage: AnyObject  // the GGUF file or safetensors checkpoint whose memory map the weights point into
    private var owned: [UnsafeMutableRawPointer] = []
    /// RoPE frequencies per layer (computed once).
    private let frequencies: [[Float]]

    public var vocabularySize: Int { config.vocabularySize }
    public var contextLength: Int { config.contextLength }

    /// A model over prepared weights (Q/K rows in the layout of `config.ropeStyle`). `storage` is kept alive for the
    /// weights that point into its memory map; `owned` buffers are freed with the model.
    init(config: DecoderConfig, precision: Precision, pool: ThreadPool, embedding: WeightMatrix, layers: [DecoderLayerWeights],
         finalNorm: [Float], output: WeightMatrix, ropeFactors: [Float]? = nil, storage: AnyObject, owned: [UnsafeMutableRawPointer]) {
        self.config = config; self.precision = precision; self.pool = pool
        self.backend = CPUBackend(pool: pool)
        self.embedding = embedding; self.layers = layers; self.finalNorm = finalNorm; self.output = output
        self.ropeFactors = ropeFactors
        self.storage = storage; self.owned = owned
        self.frequencies = (0..<config.layerCount).map { config.ropeFrequencies(layer: $0, factors: ropeFactors) }
    }

    /// Loads a GGUF file whose architecture is one of `DecoderConfig.ggufArchitectures`, through llama.cpp's tensor
    /// names. Every tensor the configuration needs must be present; a tensor that would change the math and that the
    /// configuration does not use is an error.
    public convenience init(gguf: GGUFFile, precision: Precision = .fast, pool: ThreadPool = .shared) throws {
        let cfg = try DecoderConfig(gguf: gguf)
        let (C, F, V, D) = (cfg.hiddenSize, cfg.intermediateSize, cfg.vocabularySize, cfg.headDim)
        let qDim = cfg.headCount * D, kvDim = cfg.kvHeadCount * D
        var owned: [UnsafeMutableRawPointer] = []

        func matrix(_ name: String, rows: Int, cols: Int) throws -> WeightMatrix {
            let t = try gguf.tensor(name)
            guard t.dims.count == 2, t.dims[0] == cols, t.dims[1] == rows else {
                throw CausalError.badTensor(path: gguf.path, tensor: name, reason: "shape \(t.dims) does not match the expected [\(cols), \(rows)]")
            }
            guard let dt = DType(rawValue: Int32(t.type.id)) else {
                throw CausalError.badTensor(path: gguf.path, tensor: name, reason: "tensor type \(t.type.name) is not supported (supported: \(DType.allCases.map(\.name).joined(separator: ", ")))")
            }
            guard dt.rowBytes(cols) != nil else {
                throw CausalError.badTensor(path: gguf.path, tensor: name, reason: "rows of \(cols) elements are not a whole number of \(dt.name) blocks of \(dt.blockSize)")
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
                throw CausalError.badTensor(path: gguf.path, tensor: name, reason: "norm weights and biases must be F32, F16 or BF16, found \(t.type.name)")
            }
            var out = [Float](repeating: 0, count: count)
            out.withUnsafeMutableBufferPointer { dequantize(WeightMatrix(dtype: dt, data: gguf.data(t), rows: 1, cols: count), row: 0, into: $0.baseAddress!) }
            return out
        }
        func optionalVector(_ name: String, count: Int, used: Bool) throws -> [Float]? {
            if used { return try vector(name, count: count) }
            if gguf.tensorsByName[name] != nil {
                throw CausalError.badTensor(path: gguf.path, tensor: name, reason: "is not used by a \(cfg.architecture) model (the engine would ignore it)")
            }
            return nil
        }

        do {
            let embedding = try matrix("token_embd.weight", rows: V, cols: C)
            let layers = try (0..<cfg.layerCount).map { l in
                let p = "blk.\(l)."
                return DecoderLayerWeights(
                    attnNorm: try vector(p + "attn_norm.weight", count: C),
                    q: try matrix(p + "attn_q.weight", rows: qDim, cols: C),
                    k: try matrix(p + "attn_k.weight", rows: kvDim, cols: C),
                    v: try matrix(p + "attn_v.weight", rows: kvDim, cols: C),
                    o: try matrix(p + "attn_output.weight", rows: C, cols: qDim),
                    mlpNorm: try vector(p + "ffn_norm.weight", count: C),
                    gate: try matrix(p + "ffn_gate.weight", rows: F, cols: C),
                    up: try matrix(p + "ffn_up.weight", rows: F, cols: C),
                    down: try matrix(p + "ffn_down.weight", rows: C, cols: F),
                    qBias: try optionalVector(p + "attn_q.bias", count: qDim, used: cfg.attentionBias),
                    kBias: try optionalVector(p + "attn_k.bias", count: kvDim, used: cfg.attentionBias),
                    vBias: try optionalVector(p + "attn_v.bias", count: kvDim, used: cfg.attentionBias),
                    qNorm: try optionalVector(p + "attn_q_norm.weight", count: D, used: cfg.qkNorm),
                    kNorm: try optionalVector(p + "attn_k_norm.weight", count: D, used: cfg.qkNorm),
                    postAttnNorm: try optionalVector(p + "post_attention_norm.weight", count: C, used: cfg.postNorms),
                    postMlpNorm: try optionalVector(p + "post_ffw_norm.weight", count: C, used: cfg.postNorms))
            }
            if gguf.tensorsByName["blk.0.attn_output.bias"] != nil {
                throw CausalError.badTensor(path: gguf.path, tensor: "blk.0.attn_output.bias", reason: "output-projection biases are not supported")
            }
            let finalNorm = try vector("output_norm.weight", count: C)
            let output = gguf.tensorsByName["output.weight"] != nil ? try matrix("output.weight", rows: V, cols: C) : embedding
            let factors = gguf.tensorsByName["rope_freqs.weight"] != nil ? try vector("rope_freqs.weight", count: cfg.ropeDim / 2) : nil
            self.init(config: cfg, precision: precision, pool: pool, embedding: embedding, layers: layers,
                      finalNorm: finalNorm, output: output, ropeFactors: factors, storage: gguf, owned: owned)
        } catch {
            owned.forEach { $0.deallocate() }
            throw error
        }
    }

    deinit { owned.forEach { $0.deallocate() } }

    /// A cache at `KVPrecision.current` on the CPU backend; fp32 on others (the CUDA backend keeps an fp32 host copy).
    public func makeCache(capacity: Int? = nil) -> KVCache {
        KVCache(layers: config.layerCount, kvDim: config.kvHeadCount * config.headDim,
                capacity: min(capacity ?? config.contextLength, config.contextLength),
                precision: backend is CPUBackend ? KVPrecision.current : .fp32)
    }

    /// Runs one step over a ragged batch. See `LanguageModel.forward`.
    public func forward(_ chunks: [SequenceChunk]) throws -> [[Float]] {
        let cfg = config, be = backend
        let (C, F) = (cfg.hiddenSize, cfg.intermediateSize)
        let (H, Hkv, D) = (cfg.headCount, cfg.kvHeadCount, cfg.headDim)
        let qDim = H * D, kvDim = Hkv * D

        let mask = promptAttention
        let rows = try RaggedRows(chunks, vocabularySize: cfg.vocabularySize) { ci, c in
            // A prefix-LM's prompt is the first chunk on an empty cache; its later chunks continue causally.
            if mask != .causal, c.cache.count == 0 { c.cache.promptLength = c.tokens.count }
            if c.cache.precision != .fp32, !(be.buffer(1) is HostBuffer) {
                throw CausalError.invalidArgument("chunk \(ci): its key/value cache is \(c.cache.precision.rawValue), which the CPU backend alone computes with, not \(be.name) (make caches at KVPrecision fp32, --kv-cache fp32)")
            }
            if c.adapter != nil, !(be.buffer(1) is HostBuffer) {   // AdapterRuns works on host memory
                throw CausalError.invalidArgument("chunk \(ci): LoRA adapters run on the CPU backend only, not on \(be.name)")
            }
            if let a = c.adapter, !a.fits(cfg) {
                throw CausalError.invalidArgument("chunk \(ci): its LoRA adapter is shaped for another model (\(a.model.layerCount) layers, hidden size \(a.model.hiddenSize)) than this \(cfg.architecture) model (\(cfg.layerCount) layers, hidden size \(C))")
            }
        }
        let n = rows.count
        guard n > 0 else { return chunks.map { _ in [] } }
        let lora = AdapterRuns(chunks, pool: pool)   // LoRA updates, added to each adapted layer's output (with its bias)

        let x = be.buffer(n * C), xb = be.buffer(n * C)                 // (n, C) residual stream, normed copy
        let q = be.buffer(n * qDim), k = be.buffer(n * kvDim), v = be.buffer(n * kvDim)
        let att = be.buffer(n * qDim)                                   // (n, H*D)
        let g = be.buffer(n * F), u = be.buffer(n * F)                  // (n, F)

        be.embed(embedding, tokens: rows.tokens, scale: cfg.embeddingScale ?? 1, into: x)

        // RoPE angles per row, one table per distinct frequency set (Gemma 3: local and global layers).
        var angleTables: [[Float]: RopeAngles] = [:]
        for f in Set(frequencies) { angleTables[f] = be.ropeAngles(positions: rows.position, frequencies: f) }
        let scale = cfg.attentionScale ?? 1 / Float(D).squareRoot()
        let eps = Float(cfg.rmsNormEps)

        for (l, w) in layers.enumerated() {
            // Attention block.
            be.rmsNorm(x, weight: w.attnNorm, rows: n, width: C, eps: eps, into: xb)
            be.matmul([w.q, w.k, w.v], xb, rows: n, biases: [w.qBias, w.kBias, w.vBias], into: [q, k, v])  // (n, H*D), (n, Hkv*D) x 2
            lora.apply(l, .q, xb, q); lora.apply(l, .k, xb, k); lora.apply(l, .v, xb, v)
            if let qn = w.qNorm, let kn = w.kNorm {                 // per head: (n*H, D), (n*Hkv, D)
                be.rmsNorm(q, weight: qn, rows: n * H, width: D, eps: eps, into: q)
                be.rmsNorm(k, weight: kn, rows: n * Hkv, width: D, eps: eps, into: k)
            }
            let angles = angleTables[frequencies[l]]!
            be.rope(q, rows: n, heads: H, headDim: D, ropeDim: cfg.ropeDim, angles: angles, style: cfg.ropeStyle)
            be.rope(k, rows: n, heads: Hkv, headDim: D, ropeDim: cfg.ropeDim, angles: angles, style: cfg.ropeStyle)
            be.appendKV(k, v, rows: rows, chunks: chunks, layer: l, kvHeads: Hkv, headDim: D)
            be.attention(q, rows: rows, chunks: chunks, layer: l, heads: H, kvHeads: Hkv, headDim: D, scale: scale,
                         window: cfg.isSliding(l) ? cfg.slidingWindow : nil, promptAttention: mask, into: att)
            be.matmul(w.o, att, rows: n, bias: nil, into: xb)      // (n, C)
            lora.apply(l, .o, att, xb)
            if let pn = w.postAttnNorm { be.rmsNorm(xb, weight: pn, rows: n, width: C, eps: eps, into: xb) }
            be.add(x, xb, count: n * C)

            // MLP block: down(act(gate(x)) * up(x)).
            be.rmsNorm(x, weight: w.mlpNorm, rows: n, width: C, eps: eps, into: xb)
            be.matmul([w.gate, w.up], xb, rows: n, biases: [nil, nil], into: [g, u])  // (n, F) each
            lora.apply(l, .gate, xb, g); lora.apply(l, .up, xb, u)
            be.gatedActivation(g, u, count: n * F, rows: n, activation: cfg.activation)
            be.matmul(w.down, g, rows: n, bias: nil, into: xb)     // (n, C)
            lora.apply(l, .down, g, xb)
            if let pn = w.postMlpNorm { be.rmsNorm(xb, weight: pn, rows: n, width: C, eps: eps, into: xb) }
            be.add(x, xb, count: n * C)
        }
        for c in chunks { c.cache.count += c.tokens.count }

        // Final norm and the output head, only for the rows whose logits were asked for.
        return be.logits(x, width: C, wanted: LogitRows(chunks), head: output, normWeight: finalNorm, eps: eps,
                         softcap: cfg.finalLogitSoftcap.map { Float($0) })
    }
}

/// The rows of a step that carry a LoRA adapter, as runs of consecutive rows sharing one (a chunk, or neighbouring
/// chunks of the same adapter). `apply` adds s·(x·Aᵀ)·Bᵀ to those rows of a linear layer's output, as PEFT adds it to
/// the base layer's output (bias included); each row's update depends only on that row, so batch invariance holds.
/// Host memory only (the CPU backend's buffers); a device backend would run the same two small products per run.
struct AdapterRuns {
    private var runs: [(adapter: LoRAAdapter, start: Int, count: Int)] = []
    private let pool: ThreadPool

    init(_ chunks: [SequenceChunk], pool: ThreadPool) {
        self.pool = pool
        var start = 0
        for c in chunks {
            defer { start += c.tokens.count }
            guard let a = c.adapter, !c.tokens.isEmpty else { continue }
            if let last = runs.last, last.adapter === a, last.start + last.count == start {
                runs[runs.count - 1].count += c.tokens.count
            } else {
                runs.append((a, start, c.tokens.count))
            }
        }
    }

    /// y (rows, out) += each run's update of `target` in `layer` for x (rows, in).
    func apply(_ layer: Int, _ target: LoRATarget, _ x: BackendBuffer, _ y: BackendBuffer) {
        guard !runs.isEmpty else { return }
        let xp = (x as! HostBuffer).p, yp = (y as! HostBuffer).p
        for r in runs {
            guard let s = r.adapter.slot(layer: layer, target: target) else { continue }
            r.adapter.apply(s, x: xp + r.start * s.inDim, rows: r.count, into: yp + r.start * s.outDim, pool: pool)
        }
    }
}

/// The LLaMA model is the decoder with a plain LLaMA configuration.
public typealias LlamaModel = DecoderModel

/// A scratch float buffer (uninitialised).
final class Buffer {
    let p: UnsafeMutablePointer<Float>
    init(_ count: Int) { p = .allocate(capacity: max(count, 1)) }
    func free() { p.deallocate() }
}
