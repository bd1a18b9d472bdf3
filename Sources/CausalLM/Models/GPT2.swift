import Foundation
import CausalKernels
import CCausalKernels

// GPT-2 (Radford et al. 2019, "Language Models are Unsupervised Multitask Learners"), as in Hugging Face's
// modeling_gpt2.py (GPT2LMHeadModel):
//
//   x = wte[id] + wpe[position]                                   learned absolute positions
//   per layer (pre-LayerNorm, every projection with a bias):
//     x = x + c_proj · attention(split(c_attn · LN_1(x)))          causal, over the sequence's own cache
//     x = x + mlp.c_proj · gelu_new(c_fc · LN_2(x))                 gelu_new = GELU's tanh approximation
//   logits = wte · LN_f(x)                                         the head is tied to the token embedding
//
// HF stores the projections as Conv1D weights of shape (in, out) (y = x W + b); they are transposed at load into the
// (out rows, in cols) layout `matmul` reads, so the forward has the same shape as LlamaModel's: a ragged batch of
// rows from many sequences, no padding, each row's reductions in a fixed order whatever its neighbours.
//
// Dimension legend: n = rows in the step (tokens of all sequences together), C = hidden size (n_embd), H = heads,
// D = head size (C / H), F = MLP size (n_inner, default 4C), V = vocabulary, P = positions (n_positions).

public struct GPT2Config: Sendable, Equatable {
    public enum Activation: String, Sendable {
        /// GELU's tanh approximation ("gelu_new", "gelu_pytorch_tanh", "gelu_fast").
        case geluTanh
        /// Exact GELU ("gelu").
        case gelu
        case relu
    }

    public var vocabularySize: Int      // V
    public var hiddenSize: Int          // C
    public var layerCount: Int
    public var headCount: Int           // H
    public var intermediateSize: Int    // F
    public var maxPositions: Int        // P
    public var layerNormEps: Double
    public var activation: Activation
    /// Divide attention scores by √D (`scale_attn_weights`).
    public var scaleAttentionWeights: Bool
    /// Also divide layer l's scores by l + 1 (`scale_attn_by_inverse_layer_idx`).
    public var scaleAttentionByInverseLayerIndex: Bool
    public var tiedEmbeddings: Bool
    public var headDim: Int { hiddenSize / headCount }  // D

    public init(vocabularySize: Int, hiddenSize: Int, layerCount: Int, headCount: Int, intermediateSize: Int? = nil,
                maxPositions: Int = 1024, layerNormEps: Double = 1e-5, activation: Activation = .geluTanh,
                scaleAttentionWeights: Bool = true, scaleAttentionByInverseLayerIndex: Bool = false,
                tiedEmbeddings: Bool = true) {
        self.vocabularySize = vocabularySize; self.hiddenSize = hiddenSize; self.layerCount = layerCount
        self.headCount = headCount; self.intermediateSize = intermediateSize ?? 4 * hiddenSize
        self.maxPositions = maxPositions; self.layerNormEps = layerNormEps; self.activation = activation
        self.scaleAttentionWeights = scaleAttentionWeights
        self.scaleAttentionByInverseLayerIndex = scaleAttentionByInverseLayerIndex
        self.tiedEmbeddings = tiedEmbeddings
    }

    /// Reads a Hugging Face `config.json` (GPT2LMHeadModel); errors name the field and the file.
    public init(config c: ConfigJSON) throws {
        if c.has("model_type") {
            let t = try c.string("model_type")
            guard t == "gpt2" else { throw c.invalid("model_type", "'\(t)' is not supported by GPT2Model (supported: gpt2)") }
        }
        if try c.bool("add_cross_attention", default: false) {
            throw c.invalid("add_cross_attention", "cross-attention layers are not supported")
        }
        let act = try c.string("activation_function", default: "gelu_new")
        let activation: Activation
        switch act {
        case "gelu_new", "gelu_pytorch_tanh", "gelu_fast": activation = .geluTanh
        case "gelu": activation = .gelu
        case "relu": activation = .relu
        default: throw c.invalid("activation_function", "'\(act)' is not supported (supported: gelu_new, gelu_pytorch_tanh, gelu_fast, gelu, relu)")
        }
        func positive(_ key: String, _ v: Int) throws -> Int {
            guard v > 0 else { throw c.invalid(key, "must be positive, found \(v)") }
            return v
        }
        let hidden = try positive("n_embd", try c.int("n_embd"))
        let heads = try positive("n_head", try c.int("n_head"))
        guard hidden % heads == 0 else { throw c.invalid("n_head", "n_embd \(hidden) is not a multiple of \(heads) heads") }
        let inner = c.has("n_inner") ? try positive("n_inner", try c.int("n_inner")) : 4 * hidden
        let eps = try c.double("layer_norm_epsilon", default: 1e-5)
        guard eps > 0, eps.isFinite else { throw c.invalid("layer_norm_epsilon", "must be a positive number, found \(eps)") }
        self.init(vocabularySize: try positive("vocab_size", try c.int("vocab_size")),
                  hiddenSize: hidden,
                  layerCount: try positive("n_layer", try c.int("n_layer")),
                  headCount: heads,
                  intermediateSize: inner,
                  maxPositions: try positive("n_positions", try c.int("n_positions", default: 1024)),
                  layerNormEps: eps,
                  activation: activation,
                  scaleAttentionWeights: try c.bool("scale_attn_weights", default: true),
                  scaleAttentionByInverseLayerIndex: try c.bool("scale_attn_by_inverse_layer_idx", default: false),
                  tiedEmbeddings: try c.bool("tie_word_embeddings", default: true))
    }
}

/// One block's weights, every matrix (out, in).
struct GPT2LayerWeights {
    let ln1Weight, ln1Bias: [Float]        // (C)
    let q, k, v: WeightMatrix              // (C, C) each: c_attn's three column blocks, transposed
    let qBias, kBias, vBias: [Float]       // (C)
    let attnProj: WeightMatrix             // (C, C)  attn.c_proj
    let attnProjBias: [Float]              // (C)
    let ln2Weight, ln2Bias: [Float]        // (C)
    let fc: WeightMatrix                   // (F, C)  mlp.c_fc
    let fcBias: [Float]                    // (F)
    let mlpProj: WeightMatrix              // (C, F)  mlp.c_proj
    let mlpProjBias: [Float]               // (C)
}

public final class GPT2Model: LanguageModel, @unchecked Sendable {
    public let config: GPT2Config
    public let precision: Precision
    public let pool: ThreadPool
    let tokenEmbedding: WeightMatrix       // (V, C) wte
    let positionEmbedding: WeightMatrix    // (P, C) wpe
    let layers: [GPT2LayerWeights]
    let lnFWeight, lnFBias: [Float]        // (C)
    let output: WeightMatrix               // (V, C): wte when tied, else lm_head
    private let checkpoint: SafetensorsCheckpoint  // keeps the memory maps alive
    private var owned: [UnsafeMutableRawPointer] = []

    public var vocabularySize: Int { config.vocabularySize }
    public var contextLength: Int { config.maxPositions }

    /// Loads a Hugging Face GPT-2 directory: `config.json` and `model.safetensors` (or `model.safetensors.index.json`).
    public convenience init(directory: String, precision: Precision = .fast, pool: ThreadPool = .shared) throws {
        let config = try ConfigJSON(path: URL(fileURLWithPath: directory).appendingPathComponent("config.json").path)
        try self.init(config: config, checkpoint: SafetensorsCheckpoint(path: directory), precision: precision, pool: pool)
    }

    /// Weight names are Hugging Face's (`transformer.wte.weight`, `transformer.h.N.attn.c_attn.weight`, ...), with or
    /// without the `transformer.` prefix (the original OpenAI conversion has none). F32, F16 or BF16: `fast` keeps
    /// the type (transposed copies of the Conv1D weights, the embeddings in place), `reference` converts to fp32.
    public init(config c: ConfigJSON, checkpoint: SafetensorsCheckpoint, precision: Precision = .fast,
                pool: ThreadPool = .shared) throws {
        let cfg = try GPT2Config(config: c)
        let (C, F, V, P) = (cfg.hiddenSize, cfg.intermediateSize, cfg.vocabularySize, cfg.maxPositions)
        let root = checkpoint.has("wte.weight") && !checkpoint.has("transformer.wte.weight") ? "" : "transformer."
        var owned: [UnsafeMutableRawPointer] = []

        func allocate(_ bytes: Int) -> UnsafeMutableRawPointer {
            let p = UnsafeMutableRawPointer.allocate(byteCount: max(bytes, 1), alignment: 64)
            owned.append(p)
            return p
        }
        /// An (rows, cols) nn.Linear / embedding matrix, used in place (fp32 copy in reference precision).
        func matrix(_ name: String, rows: Int, cols: Int) throws -> WeightMatrix {
            let m = try checkpoint.matrix(name, rows: rows, cols: cols)
            guard precision == .reference, m.dtype != .f32 else { return m }
            let f = allocate(rows * cols * 4).assumingMemoryBound(to: Float.self)
            dequantizeAll(m, into: f)
            return WeightMatrix(dtype: .f32, data: UnsafeRawPointer(f), rows: rows, cols: cols)
        }
        /// Columns [first, first + count) of a Conv1D weight stored (inputs, outputs), transposed to (count, inputs).
        func conv1D(_ name: String, inputs: Int, outputs: Int, first: Int = 0, count: Int? = nil) throws -> WeightMatrix {
            let count = count ?? outputs
            let m = try checkpoint.matrix(name, rows: inputs, cols: outputs)   // (in, out), row-major
            if precision == .reference || m.dtype == .f32 {
                let src = UnsafeMutablePointer<Float>.allocate(capacity: inputs * outputs)
                defer { src.deallocate() }
                dequantizeAll(m, into: src)
                let dst = allocate(count * inputs * 4).assumingMemoryBound(to: Float.self)
                for o in 0..<count { for i in 0..<inputs { dst[o * inputs + i] = src[i * outputs + first + o] } }
                return WeightMatrix(dtype: .f32, data: UnsafeRawPointer(dst), rows: count, cols: inputs)
            }
            // F16 / BF16 kept as they are: a transpose of 16-bit elements.
            let src = m.data.assumingMemoryBound(to: UInt16.self)
            let dst = allocate(count * inputs * 2).assumingMemoryBound(to: UInt16.self)
            for o in 0..<count { for i in 0..<inputs { dst[o * inputs + i] = src[i * outputs + first + o] } }
            return WeightMatrix(dtype: m.dtype, data: UnsafeRawPointer(dst), rows: count, cols: inputs)
        }
        func vector(_ name: String, _ n: Int, first: Int = 0, count: Int? = nil) throws -> [Float] {
            let all = try checkpoint.vector(name, count: n)
            return Array(all[first..<(first + (count ?? n))])
        }

        do {
            let tokenEmbedding = try matrix(root + "wte.weight", rows: V, cols: C)
            let positionEmbedding = try matrix(root + "wpe.weight", rows: P, cols: C)
            let layers = try (0..<cfg.layerCount).map { l in
                let p = root + "h.\(l)."
                return GPT2LayerWeights(
                    ln1Weight: try vector(p + "ln_1.weight", C), ln1Bias: try vector(p + "ln_1.bias", C),
                    q: try conv1D(p + "attn.c_attn.weight", inputs: C, outputs: 3 * C, first: 0, count: C),
                    k: try conv1D(p + "attn.c_attn.weight", inputs: C, outputs: 3 * C, first: C, count: C),
                    v: try conv1D(p + "attn.c_attn.weight", inputs: C, outputs: 3 * C, first: 2 * C, count: C),
                    qBias: try vector(p + "attn.c_attn.bias", 3 * C, first: 0, count: C),
                    kBias: try vector(p + "attn.c_attn.bias", 3 * C, first: C, count: C),
                    vBias: try vector(p + "attn.c_attn.bias", 3 * C, first: 2 * C, count: C),
                    attnProj: try conv1D(p + "attn.c_proj.weight", inputs: C, outputs: C),
                    attnProjBias: try vector(p + "attn.c_proj.bias", C),
                    ln2Weight: try vector(p + "ln_2.weight", C), ln2Bias: try vector(p + "ln_2.bias", C),
                    fc: try conv1D(p + "mlp.c_fc.weight", inputs: C, outputs: F),
                    fcBias: try vector(p + "mlp.c_fc.bias", F),
                    mlpProj: try conv1D(p + "mlp.c_proj.weight", inputs: F, outputs: C),
                    mlpProjBias: try vector(p + "mlp.c_proj.bias", C))
            }
            let lnFWeight = try vector(root + "ln_f.weight", C)
            let lnFBias = try vector(root + "ln_f.bias", C)
            // GPT2LMHeadModel ties lm_head to wte; an untied checkpoint names it lm_head.weight.
            let output = cfg.tiedEmbeddings ? tokenEmbedding : try matrix("lm_head.weight", rows: V, cols: C)
            config = cfg; self.precision = precision; self.pool = pool; self.checkpoint = checkpoint
            self.tokenEmbedding = tokenEmbedding; self.positionEmbedding = positionEmbedding; self.layers = layers
            self.lnFWeight = lnFWeight; self.lnFBias = lnFBias; self.output = output; self.owned = owned
        } catch {
            owned.forEach { $0.deallocate() }
            throw error
        }
    }

    deinit { owned.forEach { $0.deallocate() } }

    public func makeCache(capacity: Int? = nil) -> KVCache {
        KVCache(layers: config.layerCount, kvDim: config.hiddenSize,
                capacity: min(capacity ?? config.maxPositions, config.maxPositions))
    }

    /// Runs one step over a ragged batch. See `LanguageModel.forward`.
    public func forward(_ chunks: [SequenceChunk]) throws -> [[Float]] {
        let cfg = config
        let (C, F, V, H, D) = (cfg.hiddenSize, cfg.intermediateSize, cfg.vocabularySize, cfg.headCount, cfg.headDim)

        // Learned positions: a sequence cannot outgrow the position table, whatever its cache holds.
        let rows = try RaggedRows(chunks, vocabularySize: V, context: { min($0.capacity, cfg.maxPositions) })
        let (rowChunk, rowPos, tokens, n) = (rows.chunk, rows.position, rows.tokens, rows.count)
        guard n > 0 else { return chunks.map { _ in [] } }
        let eps = Float(cfg.layerNormEps)

        let x = Buffer(n * C), xb = Buffer(n * C), pe = Buffer(C)  // (n, C) residual stream, normed copy; (C) a position row
        let q = Buffer(n * C), k = Buffer(n * C), v = Buffer(n * C) // (n, H*D)
        let att = Buffer(n * C)                                    // (n, H*D)
        let h = Buffer(n * F)                                      // (n, F)
        defer { [x, xb, pe, q, k, v, att, h].forEach { $0.free() } }

        // Embeddings: wte[id] + wpe[position].
        for r in 0..<n {
            dequantize(tokenEmbedding, row: tokens[r], into: x.p + r * C)
            dequantize(positionEmbedding, row: rowPos[r], into: pe.p)
            ck_add(x.p + r * C, pe.p, Int64(C))
        }


        for (l, w) in layers.enumerated() {
            // Attention block.
            layerNorm(x, into: xb, rows: n, weight: w.ln1Weight, bias: w.ln1Bias, eps: eps)
            linear(w.q, w.qBias, xb, rows: n, into: q)               // (n, C)
            linear(w.k, w.kBias, xb, rows: n, into: k)               // (n, C)
            linear(w.v, w.vBias, xb, rows: n, into: v)               // (n, C)
            for r in 0..<n {
                let cache = chunks[rowChunk[r]].cache
                (cache.keys[l] + rowPos[r] * C).update(from: k.p + r * C, count: C)
                (cache.values[l] + rowPos[r] * C).update(from: v.p + r * C, count: C)
            }
            var scale: Float = cfg.scaleAttentionWeights ? 1 / Float(D).squareRoot() : 1
            if cfg.scaleAttentionByInverseLayerIndex { scale /= Float(l + 1) }
            pool.parallelFor(n * H) { item in
                let r = item / H, head = item % H
                let cache = chunks[rowChunk[r]].cache
                ck_attention_row(q.p + r * C, cache.keys[l], cache.values[l], Int64(C), Int64(D), Int64(rowPos[r] + 1),
                                 Int64(H), Int64(H), Int64(D), scale, att.p + r * C,
                                 nil, Int64(head), Int64(head + 1))  // scores: the thread's own scratch
            }
            linear(w.attnProj, w.attnProjBias, att, rows: n, into: xb) // (n, C)
            ck_add(x.p, xb.p, Int64(n * C))

            // MLP block: c_proj(act(c_fc(x))).
            layerNorm(x, into: xb, rows: n, weight: w.ln2Weight, bias: w.ln2Bias, eps: eps)
            linear(w.fc, w.fcBias, xb, rows: n, into: h)             // (n, F)
            switch cfg.activation {
            case .geluTanh: ck_gelu_tanh(h.p, Int64(n * F))
            case .gelu: ck_gelu_erf(h.p, Int64(n * F))
            case .relu: ck_relu(h.p, Int64(n * F))
            }
            linear(w.mlpProj, w.mlpProjBias, h, rows: n, into: xb)    // (n, C)
            ck_add(x.p, xb.p, Int64(n * C))
        }
        for c in chunks { c.cache.count += c.tokens.count }

        // Final LayerNorm and the head, only for the rows whose logits were asked for.
        return lnFWeight.withUnsafeBufferPointer { wp in
            lnFBias.withUnsafeBufferPointer { bp in
                LogitRows(chunks).logits(x.p, C: C, head: output, pool: pool) {
                    ck_layernorm($0, wp.baseAddress!, bp.baseAddress!, $1, Int64(C), eps)
                }
            }
        }
    }

    /// LayerNorm of each of `rows` rows of C.
    private func layerNorm(_ x: Buffer, into y: Buffer, rows n: Int, weight: [Float], bias: [Float], eps: Float) {
        let C = config.hiddenSize
        weight.withUnsafeBufferPointer { wp in
            bias.withUnsafeBufferPointer { bp in
                for r in 0..<n { ck_layernorm(x.p + r * C, wp.baseAddress!, bp.baseAddress!, y.p + r * C, Int64(C), eps) }
            }
        }
    }

    /// y = W x + b for each of `rows` rows (W: (out, in)).
    private func linear(_ w: WeightMatrix, _ b: [Float], _ x: Buffer, rows n: Int, into y: Buffer) {
        matmul(w, x.p, rows: n, into: y.p, pool: pool)
        b.withUnsafeBufferPointer { ck_add_bias(y.p, $0.baseAddress!, Int64(n), Int64(w.rows)) }
    }
}
