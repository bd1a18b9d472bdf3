import Foundation
import CausalKernels
import CCausalKernels

// T5 (Raffel et al. 2019, "Exploring the Limits of Transfer Learning with a Unified Text-to-Text Transformer",
// https://arxiv.org/abs/1910.10683), as in Hugging Face's modeling_t5.py (T5ForConditionalGeneration):
//
//   encoder, per layer (pre-norm):
//     x = x + O · attention(Q n, K n, V n) + bias,   n = RMS(x)     bidirectional; bias from relative position buckets
//     x = x + FF(RMS(x))                                            FF = wo · relu(wi x)  (or gated: act(wi_0 x) * wi_1 x)
//   e = RMS(x)                                                      encoder output
//   decoder, per layer:
//     x = x + O · attention(Q n, K n, V n) + bias                   causal, over the sequence's own cache
//     x = x + O' · attention(Q' RMS(x), K' e, V' e)                 cross-attention, no bias
//     x = x + FF(RMS(x))
//   logits = W_out · (RMS(x) · d_model^-0.5 when the head is the tied embedding)
//
// RMS is T5's LayerNorm: x / sqrt(mean(x²) + eps) · w, no mean, no bias. Scores are q·k without 1/sqrt(d). The
// relative-position bias table lives in the first layer of each stack and is shared by all its layers.
//
// The decoder is a `LanguageModel` over ragged batches: each sequence's `KVCache` holds its self-attention keys and
// values and, in `cross`, the cross-attention keys and values of its own encoder output, computed once
// (`makeCaches(encoderInputs:)`). Every kernel works row by row in a fixed order, so a sequence's logits are bitwise
// the same alone or in any batch; there is no padding anywhere (padded input is unpadded at the edge).
//
// Dimension legend: n = rows in the step (tokens of all sequences together), T = encoder tokens of one sequence,
// C = d_model, H = heads, D = d_kv (head size), F = d_ff, V = vocabulary, B = relative-position buckets.

public struct T5Config: Sendable, Equatable {
    public enum FeedForward: String, Sendable {
        /// wo · relu(wi x)  ("relu")
        case relu
        /// wo · gelu(wi x), exact GELU ("gelu")
        case gelu
        /// wo · (gelu_tanh(wi_0 x) * wi_1 x)  ("gated-gelu", T5 v1.1 / Flan-T5)
        case gatedGelu
        /// wo · (relu(wi_0 x) * wi_1 x)  ("gated-relu")
        case gatedRelu

        var isGated: Bool { self == .gatedGelu || self == .gatedRelu }
    }

    public var vocabularySize: Int            // V
    public var modelDim: Int                  // C (d_model)
    public var headDim: Int                   // D (d_kv)
    public var feedForwardDim: Int            // F (d_ff)
    public var encoderLayerCount: Int         // num_layers
    public var decoderLayerCount: Int         // num_decoder_layers
    public var headCount: Int                 // H
    public var relativeBuckets: Int           // B
    public var relativeMaxDistance: Int
    public var layerNormEps: Double
    public var feedForward: FeedForward
    /// The output head is the shared embedding (`tie_word_embeddings`).
    public var tiedEmbeddings: Bool
    /// Decoder outputs are scaled by d_model^-0.5 before the head (HF does it when the head is tied).
    public var scaleDecoderOutputs: Bool
    public var decoderStartTokenID: Int
    public var eosTokenIDs: [Int]
    public var padTokenID: Int
    /// Decoder positions a sequence's cache holds (T5 has no learned position limit; `n_positions` or 512).
    public var contextLength: Int

    public var innerDim: Int { headCount * headDim }  // H*D

    public init(vocabularySize: Int, modelDim: Int, headDim: Int, feedForwardDim: Int, encoderLayerCount: Int,
                decoderLayerCount: Int? = nil, headCount: Int, relativeBuckets: Int = 32, relativeMaxDistance: Int = 128,
                layerNormEps: Double = 1e-6, feedForward: FeedForward = .relu, tiedEmbeddings: Bool = true,
                scaleDecoderOutputs: Bool? = nil, decoderStartTokenID: Int = 0, eosTokenIDs: [Int] = [1],
                padTokenID: Int = 0, contextLength: Int = 512) {
        self.vocabularySize = vocabularySize; self.modelDim = modelDim; self.headDim = headDim
        self.feedForwardDim = feedForwardDim; self.encoderLayerCount = encoderLayerCount
        self.decoderLayerCount = decoderLayerCount ?? encoderLayerCount; self.headCount = headCount
        self.relativeBuckets = relativeBuckets; self.relativeMaxDistance = relativeMaxDistance
        self.layerNormEps = layerNormEps; self.feedForward = feedForward; self.tiedEmbeddings = tiedEmbeddings
        self.scaleDecoderOutputs = scaleDecoderOutputs ?? tiedEmbeddings
        self.decoderStartTokenID = decoderStartTokenID; self.eosTokenIDs = eosTokenIDs; self.padTokenID = padTokenID
        self.contextLength = contextLength
    }

    /// Reads a Hugging Face `config.json`; errors name the field and the file.
    public init(config c: ConfigJSON) throws {
        if c.has("model_type") {
            let t = try c.string("model_type")
            guard t == "t5" || t == "mt5" else { throw c.invalid("model_type", "'\(t)' is not supported by T5Model (supported: t5, mt5)") }
        }
        let ff = try c.string("feed_forward_proj", default: "relu")
        let feedForward: FeedForward
        switch ff {
        case "relu": feedForward = .relu
        case "gelu": feedForward = .gelu
        case "gated-gelu": feedForward = .gatedGelu
        case "gated-relu": feedForward = .gatedRelu
        default: throw c.invalid("feed_forward_proj", "'\(ff)' is not supported (supported: relu, gelu, gated-gelu, gated-relu)")
        }
        let pad = try c.int("pad_token_id", default: 0)
        var eos: [Int] = [1]
        if let v = c.values["eos_token_id"], !v.isNull {
            if let list = v.arrayValue {
                eos = try list.map { e in
                    guard let i = e.intValue else { throw c.invalid("eos_token_id", "expected an integer or a list of integers, found \(e.typeName) \(e.brief)") }
                    return i
                }
            } else {
                eos = [try c.int("eos_token_id")]
            }
        }
        let layers = try c.int("num_layers")
        let tied = try c.bool("tie_word_embeddings", default: true)
        self.init(vocabularySize: try c.int("vocab_size"),
                  modelDim: try c.int("d_model"),
                  headDim: try c.int("d_kv"),
                  feedForwardDim: try c.int("d_ff"),
                  encoderLayerCount: layers,
                  decoderLayerCount: try c.int("num_decoder_layers", default: layers),
                  headCount: try c.int("num_heads"),
                  relativeBuckets: try c.int("relative_attention_num_buckets", default: 32),
                  relativeMaxDistance: try c.int("relative_attention_max_distance", default: 128),
                  layerNormEps: try c.double("layer_norm_epsilon", default: 1e-6),
                  feedForward: feedForward,
                  tiedEmbeddings: tied,
                  scaleDecoderOutputs: try c.bool("scale_decoder_outputs", default: tied),
                  decoderStartTokenID: try c.int("decoder_start_token_id", default: pad),
                  eosTokenIDs: eos,
                  padTokenID: pad,
                  contextLength: try c.int("n_positions", default: 512))
        func positive(_ key: String, _ v: Int) throws { if v <= 0 { throw c.invalid(key, "must be positive, found \(v)") } }
        try positive("vocab_size", vocabularySize)
        try positive("d_model", modelDim)
        try positive("d_kv", headDim)
        try positive("d_ff", feedForwardDim)
        try positive("num_layers", encoderLayerCount)
        try positive("num_decoder_layers", decoderLayerCount)
        try positive("num_heads", headCount)
        try positive("relative_attention_max_distance", relativeMaxDistance)
        try positive("n_positions", contextLength)
        guard relativeBuckets >= 4 else { throw c.invalid("relative_attention_num_buckets", "must be at least 4, found \(relativeBuckets)") }
        guard layerNormEps > 0, layerNormEps.isFinite else { throw c.invalid("layer_norm_epsilon", "must be a positive number, found \(layerNormEps)") }
        func token(_ key: String, _ v: Int) throws {
            guard v >= 0 && v < vocabularySize else { throw c.invalid(key, "\(v) is outside the vocabulary (0..<\(vocabularySize))") }
        }
        try token("decoder_start_token_id", decoderStartTokenID)
        try token("pad_token_id", padTokenID)
        for e in eosTokenIDs { try token("eos_token_id", e) }
    }

    /// Reads `path` (a `config.json`).
    public init(path: String) throws { try self.init(config: ConfigJSON(path: path)) }

    /// T5's relative-position bucket of `relative` = key position − query position (modeling_t5's
    /// `_relative_position_bucket`): half the buckets per direction when bidirectional (keys after the query in the
    /// upper half), else only the past. Distances below half of a direction's buckets get a bucket each; larger ones
    /// share logarithmically wider buckets up to `relativeMaxDistance`. The logarithm is taken in fp32, as torch does.
    public func relativeBucket(_ relative: Int, bidirectional: Bool) -> Int {
        var buckets = relativeBuckets, bucket = 0, distance: Int
        if bidirectional {
            buckets /= 2
            if relative > 0 { bucket += buckets }
            distance = abs(relative)
        } else {
            distance = -min(relative, 0)
        }
        let maxExact = buckets / 2
        if distance < maxExact { return bucket + distance }
        let scale = Float(log(Double(relativeMaxDistance) / Double(maxExact)))
        let large = logf(Float(distance) / Float(maxExact)) / scale * Float(buckets - maxExact)
        return bucket + min(maxExact + Int(large), buckets - 1)
    }
}

/// One attention's weights. Matrices are (out, in), as nn.Linear stores them.
struct T5AttentionWeights {
    let q, k, v: WeightMatrix       // (H*D, C)
    let o: WeightMatrix             // (C, H*D)
}

/// Feed-forward weights: `wi` alone, or the gated pair (`wi` = wi_0, `wiGate` = wi_1).
struct T5FeedForwardWeights {
    let wi: WeightMatrix            // (F, C)
    let wiLinear: WeightMatrix?     // (F, C), gated only
    let wo: WeightMatrix            // (C, F)
}

struct T5EncoderLayerWeights {
    let attnNorm: [Float]           // (C)
    let attn: T5AttentionWeights
    let ffNorm: [Float]             // (C)
    let ff: T5FeedForwardWeights
}

struct T5DecoderLayerWeights {
    let selfNorm: [Float]           // (C)
    let selfAttn: T5AttentionWeights
    let crossNorm: [Float]          // (C)
    let crossAttn: T5AttentionWeights
    let ffNorm: [Float]             // (C)
    let ff: T5FeedForwardWeights
}

/// A T5 encoder-decoder over safetensors weights. The decoder is the `LanguageModel` that `Generator` steps; requests
/// carry the encoder input (`SequenceRequest(encoderInput:parameters:)`), and results hold only decoder tokens.
public final class T5Model: EncoderDecoderModel, @unchecked Sendable {
    public let config: T5Config
    public let pool: ThreadPool
    let embedding: WeightMatrix               // (V, C) "shared"
    let output: WeightMatrix                  // (V, C), the embedding when tied
    let encoderBias: [Float]                  // (B, H) relative_attention_bias of the encoder's first layer
    let decoderBias: [Float]                  // (B, H) the decoder's
    let encoderLayers: [T5EncoderLayerWeights]
    let encoderFinalNorm: [Float]             // (C)
    let decoderLayers: [T5DecoderLayerWeights]
    let decoderFinalNorm: [Float]             // (C)
    private let checkpoint: SafetensorsCheckpoint  // keeps the memory maps alive

    /// Encoder rows per forward pass: bounds the scratch memory; results do not depend on it.
    public var maxEncoderRowsPerStep = 4096

    public var vocabularySize: Int { config.vocabularySize }
    public var contextLength: Int { config.contextLength }
    public var decoderStartTokenID: Int { config.decoderStartTokenID }
    /// Ids that end a decoder sequence (`eos_token_id`); pass them to `Generator(endTokenIDs:)`.
    public var endTokenIDs: Set<Int> { Set(config.eosTokenIDs) }

    /// Loads `config.json` and `model.safetensors` (or a sharded `model.safetensors.index.json`) from a directory.
    public convenience init(directory: String, pool: ThreadPool = .shared) throws {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDir), isDir.boolValue else {
            throw CausalError.io(path: directory, reason: "no such model directory (expected config.json and model.safetensors in it)")
        }
        let dir = URL(fileURLWithPath: directory)
        let config = try T5Config(path: dir.appendingPathComponent("config.json").path)
        try self.init(config: config, checkpoint: SafetensorsCheckpoint(path: directory), pool: pool)
    }

    /// Weight names are Hugging Face's (`shared.weight`, `encoder.block.N.layer.0.SelfAttention.q.weight`, ...).
    public init(config cfg: T5Config, checkpoint: SafetensorsCheckpoint, pool: ThreadPool = .shared) throws {
        self.config = cfg
        self.checkpoint = checkpoint
        self.pool = pool
        let (C, F, V, I, B, H) = (cfg.modelDim, cfg.feedForwardDim, cfg.vocabularySize, cfg.innerDim, cfg.relativeBuckets, cfg.headCount)

        func matrix(_ name: String, rows: Int, cols: Int) throws -> WeightMatrix {
            try checkpoint.matrix(name, rows: rows, cols: cols)
        }
        func vector(_ name: String) throws -> [Float] { try checkpoint.vector(name, count: C) }
        func table(_ name: String) throws -> [Float] {
            let m = try matrix(name, rows: B, cols: H)
            var t = [Float](repeating: 0, count: B * H)
            t.withUnsafeMutableBufferPointer { dequantizeAll(m, into: $0.baseAddress!) }
            return t
        }
        func attention(_ p: String) throws -> T5AttentionWeights {
            T5AttentionWeights(q: try matrix(p + "q.weight", rows: I, cols: C), k: try matrix(p + "k.weight", rows: I, cols: C),
                               v: try matrix(p + "v.weight", rows: I, cols: C), o: try matrix(p + "o.weight", rows: C, cols: I))
        }
        func feedForward(_ p: String) throws -> T5FeedForwardWeights {
            if cfg.feedForward.isGated {
                return T5FeedForwardWeights(wi: try matrix(p + "wi_0.weight", rows: F, cols: C),
                                            wiLinear: try matrix(p + "wi_1.weight", rows: F, cols: C),
                                            wo: try matrix(p + "wo.weight", rows: C, cols: F))
            }
            return T5FeedForwardWeights(wi: try matrix(p + "wi.weight", rows: F, cols: C), wiLinear: nil,
                                        wo: try matrix(p + "wo.weight", rows: C, cols: F))
        }

        // The shared embedding; some checkpoints store only the encoder's copy.
        let embedName = !checkpoint.has("shared.weight") && checkpoint.has("encoder.embed_tokens.weight") ? "encoder.embed_tokens.weight" : "shared.weight"
        embedding = try matrix(embedName, rows: V, cols: C)
        output = cfg.tiedEmbeddings ? embedding : try matrix("lm_head.weight", rows: V, cols: C)
        encoderBias = try table("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
        decoderBias = try table("decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
        encoderLayers = try (0..<cfg.encoderLayerCount).map { l in
            let p = "encoder.block.\(l).layer."
            return T5EncoderLayerWeights(attnNorm: try vector(p + "0.layer_norm.weight"), attn: try attention(p + "0.SelfAttention."),
                                         ffNorm: try vector(p + "1.layer_norm.weight"), ff: try feedForward(p + "1.DenseReluDense."))
        }
        encoderFinalNorm = try vector("encoder.final_layer_norm.weight")
        decoderLayers = try (0..<cfg.decoderLayerCount).map { l in
            let p = "decoder.block.\(l).layer."
            return T5DecoderLayerWeights(selfNorm: try vector(p + "0.layer_norm.weight"), selfAttn: try attention(p + "0.SelfAttention."),
                                         crossNorm: try vector(p + "1.layer_norm.weight"), crossAttn: try attention(p + "1.EncDecAttention."),
                                         ffNorm: try vector(p + "2.layer_norm.weight"), ff: try feedForward(p + "2.DenseReluDense."))
        }
        decoderFinalNorm = try vector("decoder.final_layer_norm.weight")
    }

    // MARK: Encoder

    /// The encoder's output (after its final norm) for each input: (T, C) row-major per input. Inputs are independent:
    /// a ragged batch gives bitwise the same rows as each input alone.
    public func encode(_ inputs: [[Int]]) throws -> [[Float]] {
        try validate(inputs)
        let C = config.modelDim
        var out = [[Float]](repeating: [], count: inputs.count)
        for group in encoderSteps(inputs) {
            let (x, starts) = encoderForward(group.map { inputs[$0] })
            defer { x.free() }
            for (k, i) in group.enumerated() { out[i] = Array(UnsafeBufferPointer(start: x.p + starts[k] * C, count: inputs[i].count * C)) }
        }
        return out
    }

    /// Runs the encoder over the inputs (together, in steps of at most `maxEncoderRowsPerStep` rows) and returns, per
    /// input, an empty decoder cache (`capacity` positions, default `contextLength`) holding the cross-attention keys
    /// and values of its encoder output.
    public func makeCaches(encoderInputs inputs: [[Int]], capacity: Int? = nil) throws -> [KVCache] {
        try validate(inputs)
        if let i = inputs.firstIndex(where: \.isEmpty) { throw CausalError.invalidArgument("encoder input \(i) has no tokens") }
        let I = config.innerDim
        let crosses = inputs.map { CrossAttentionCache(layers: config.decoderLayerCount, kvDim: I, length: $0.count) }
        for group in encoderSteps(inputs) {
            let (x, starts) = encoderForward(group.map { inputs[$0] })
            let n = group.reduce(0) { $0 + inputs[$1].count }
            let k = Buffer(n * I), v = Buffer(n * I)   // (n, H*D)
            defer { [x, k, v].forEach { $0.free() } }
            for (l, w) in decoderLayers.enumerated() {
                matmul(w.crossAttn.k, x.p, rows: n, into: k.p, pool: pool)   // (n, H*D)
                matmul(w.crossAttn.v, x.p, rows: n, into: v.p, pool: pool)   // (n, H*D)
                for (j, i) in group.enumerated() {
                    let c = crosses[i]
                    c.keys[l].update(from: k.p + starts[j] * I, count: c.length * I)
                    c.values[l].update(from: v.p + starts[j] * I, count: c.length * I)
                }
            }
        }
        let cap = min(capacity ?? config.contextLength, config.contextLength)
        return crosses.map { KVCache(layers: config.decoderLayerCount, kvDim: I, capacity: cap, cross: $0) }
    }

    /// Groups of input indices whose rows together stay within `maxEncoderRowsPerStep` (a longer input runs alone).
    private func encoderSteps(_ inputs: [[Int]]) -> [[Int]] {
        var groups: [[Int]] = [], cur: [Int] = [], rows = 0
        for (i, s) in inputs.enumerated() {
            if !cur.isEmpty && rows + s.count > maxEncoderRowsPerStep { groups.append(cur); cur = []; rows = 0 }
            cur.append(i)
            rows += s.count
        }
        if !cur.isEmpty { groups.append(cur) }
        return groups
    }

    private func validate(_ inputs: [[Int]]) throws {
        let V = config.vocabularySize
        for s in inputs { for t in s where t < 0 || t >= V { throw CausalError.badTokenID(id: t, vocabularySize: V) } }
    }

    /// The encoder stack over a ragged batch; returns the (n, C) output rows and each input's first row.
    private func encoderForward(_ seqs: [[Int]]) -> (Buffer, [Int]) {
        let cfg = config
        let (C, F, H, D, I) = (cfg.modelDim, cfg.feedForwardDim, cfg.headCount, cfg.headDim, cfg.innerDim)
        var rowStart: [Int] = [], rowLength: [Int] = [], rowPos: [Int] = [], starts: [Int] = []
        for s in seqs {
            starts.append(rowStart.count)
            let start = rowStart.count
            for p in 0..<s.count { rowStart.append(start); rowLength.append(s.count); rowPos.append(p) }
        }
        let n = rowStart.count
        let x = Buffer(n * C)
        guard n > 0 else { return (x, starts) }
        let tokens = seqs.flatMap { $0 }
        let eps = Float(cfg.layerNormEps)
        // Position bias, shared by every layer, by relative position: (H, 2L-1), bias[h][rel + L-1] = table[bucket(rel)][h].
        // A query at position i reads keys j = 0..<T at rel = j - i, i.e. the row starting at L-1-i with head stride 2L-1.
        let L = rowLength.max()!, R = 2 * L - 1
        let bias = Buffer(H * R)
        defer { bias.free() }
        for rel in 0..<R {
            let b = cfg.relativeBucket(rel - (L - 1), bidirectional: true)
            for h in 0..<H { bias.p[h * R + rel] = encoderBias[b * H + h] }
        }

        let xb = Buffer(n * C)                                         // (n, C) normed copy
        let q = Buffer(n * I), k = Buffer(n * I), v = Buffer(n * I)    // (n, H*D)
        let att = Buffer(n * I)                                        // (n, H*D)
        let h0 = Buffer(n * F), h1 = Buffer(cfg.feedForward.isGated ? n * F : 1)   // (n, F)
        defer { [xb, q, k, v, att, h0, h1].forEach { $0.free() } }

        for r in 0..<n { dequantize(embedding, row: tokens[r], into: x.p + r * C) }
        for w in encoderLayers {
            // Self-attention block, bidirectional within each sequence: x = x + O · attention(RMS(x)).
            rmsNorm(x.p, w.attnNorm, n, into: xb.p, eps: eps)
            matmul(w.attn.q, xb.p, rows: n, into: q.p, pool: pool)     // (n, H*D)
            matmul(w.attn.k, xb.p, rows: n, into: k.p, pool: pool)     // (n, H*D)
            matmul(w.attn.v, xb.p, rows: n, into: v.p, pool: pool)     // (n, H*D)
            pool.parallelFor(n * H) { item in
                let r = item / H, h = item % H
                let s = rowStart[r], T = rowLength[r]
                withUnsafeTemporaryAllocation(of: Float.self, capacity: T) { scores in
                    ck_t5_attention_row(q.p + r * I, k.p + s * I, v.p + s * I, Int64(I), Int64(T), Int64(H), Int64(D),
                                        bias.p + (L - 1 - rowPos[r]), Int64(R), att.p + r * I, scores.baseAddress!, Int64(h), Int64(h + 1))
                }
            }
            matmul(w.attn.o, att.p, rows: n, into: xb.p, pool: pool)   // (n, C)
            ck_add(x.p, xb.p, Int64(n * C))
            // Feed-forward block: x = x + FF(RMS(x)).
            rmsNorm(x.p, w.ffNorm, n, into: xb.p, eps: eps)
            feedForward(w.ff, xb.p, n, h0: h0.p, h1: h1.p, into: xb.p)
            ck_add(x.p, xb.p, Int64(n * C))
        }
        rmsNorm(x.p, encoderFinalNorm, n, into: x.p, eps: eps)
        return (x, starts)
    }

    // MARK: Decoder

    /// A decoder-only cache without encoder output. T5 sequences need `makeCaches(encoderInputs:)`; `forward` rejects
    /// a cache without cross-attention keys and values.
    public func makeCache(capacity: Int? = nil) -> KVCache {
        KVCache(layers: config.decoderLayerCount, kvDim: config.innerDim,
                capacity: min(capacity ?? config.contextLength, config.contextLength))
    }

    /// Runs one decoder step over a ragged batch. See `LanguageModel.forward`. Every chunk's cache must come from
    /// `makeCaches(encoderInputs:)`.
    public func forward(_ chunks: [SequenceChunk]) throws -> [[Float]] {
        let cfg = config
        let (C, F, V, H, D, I) = (cfg.modelDim, cfg.feedForwardDim, cfg.vocabularySize, cfg.headCount, cfg.headDim, cfg.innerDim)

        // Rows: every token of every chunk, with its sequence and position. No padding anywhere.
        let rows = try RaggedRows(chunks, vocabularySize: V) { ci, c in
            guard let cross = c.cache.cross, cross.layers == cfg.decoderLayerCount, cross.kvDim == I,
                  c.cache.layers == cfg.decoderLayerCount, c.cache.kvDim == I else {
                throw CausalError.invalidArgument("chunk \(ci): a T5 decoder cache must hold its encoder output (make it with makeCaches(encoderInputs:))")
            }
        }
        let (rowChunk, rowPos, tokens, n) = (rows.chunk, rows.position, rows.tokens, rows.count)
        guard n > 0 else { return chunks.map { _ in [] } }
        let eps = Float(cfg.layerNormEps)
        // Position bias, shared by every layer, by relative position: (H, P+1), bias[h][rel + P] = table[bucket(rel)][h]
        // for rel = -P ... 0. A query at position i reads keys j = 0...i at rel = j - i: the row starting at P - i.
        let P = rowPos.max()!, R = P + 1
        let bias = Buffer(H * R)
        defer { bias.free() }
        for rel in 0..<R {
            let b = cfg.relativeBucket(rel - P, bidirectional: false)
            for h in 0..<H { bias.p[h * R + rel] = decoderBias[b * H + h] }
        }

        let x = Buffer(n * C), xb = Buffer(n * C)                      // (n, C) residual stream, normed copy
        let q = Buffer(n * I), k = Buffer(n * I), v = Buffer(n * I)    // (n, H*D)
        let att = Buffer(n * I)                                        // (n, H*D)
        let h0 = Buffer(n * F), h1 = Buffer(cfg.feedForward.isGated ? n * F : 1)   // (n, F)
        defer { [x, xb, q, k, v, att, h0, h1].forEach { $0.free() } }

        for r in 0..<n { dequantize(embedding, row: tokens[r], into: x.p + r * C) }
        for (l, w) in decoderLayers.enumerated() {
            // Causal self-attention over the sequence's cache, with the relative-position bias.
            rmsNorm(x.p, w.selfNorm, n, into: xb.p, eps: eps)
            matmul(w.selfAttn.q, xb.p, rows: n, into: q.p, pool: pool)   // (n, H*D)
            matmul(w.selfAttn.k, xb.p, rows: n, into: k.p, pool: pool)   // (n, H*D)
            matmul(w.selfAttn.v, xb.p, rows: n, into: v.p, pool: pool)   // (n, H*D)
            for r in 0..<n {
                let cache = chunks[rowChunk[r]].cache
                (cache.keys[l] + rowPos[r] * I).update(from: k.p + r * I, count: I)
                (cache.values[l] + rowPos[r] * I).update(from: v.p + r * I, count: I)
            }
            pool.parallelFor(n * H) { item in
                let r = item / H, h = item % H
                let cache = chunks[rowChunk[r]].cache, T = rowPos[r] + 1
                withUnsafeTemporaryAllocation(of: Float.self, capacity: T) { scores in
                    ck_t5_attention_row(q.p + r * I, cache.keys[l], cache.values[l], Int64(I), Int64(T), Int64(H), Int64(D),
                                        bias.p + (P - rowPos[r]), Int64(R), att.p + r * I, scores.baseAddress!, Int64(h), Int64(h + 1))
                }
            }
            matmul(w.selfAttn.o, att.p, rows: n, into: xb.p, pool: pool)     // (n, C)
            ck_add(x.p, xb.p, Int64(n * C))

            // Cross-attention over the sequence's encoder output (no bias, no mask: the input has no padding).
            rmsNorm(x.p, w.crossNorm, n, into: xb.p, eps: eps)
            matmul(w.crossAttn.q, xb.p, rows: n, into: q.p, pool: pool)  // (n, H*D)
            pool.parallelFor(n * H) { item in
                let r = item / H, h = item % H
                let cross = chunks[rowChunk[r]].cache.cross!
                withUnsafeTemporaryAllocation(of: Float.self, capacity: cross.length) { scores in
                    ck_t5_attention_row(q.p + r * I, cross.keys[l], cross.values[l], Int64(I), Int64(cross.length), Int64(H), Int64(D),
                                        nil, 0, att.p + r * I, scores.baseAddress!, Int64(h), Int64(h + 1))
                }
            }
            matmul(w.crossAttn.o, att.p, rows: n, into: xb.p, pool: pool)    // (n, C)
            ck_add(x.p, xb.p, Int64(n * C))

            // Feed-forward block.
            rmsNorm(x.p, w.ffNorm, n, into: xb.p, eps: eps)
            feedForward(w.ff, xb.p, n, h0: h0.p, h1: h1.p, into: xb.p)
            ck_add(x.p, xb.p, Int64(n * C))
        }
        for c in chunks { c.cache.count += c.tokens.count }

        // Final norm, the d_model^-0.5 rescale of a tied head, and the head, only for the rows asked for.
        let s = Float(pow(Double(C), -0.5)), rescale = cfg.scaleDecoderOutputs
        return decoderFinalNorm.withUnsafeBufferPointer { nw in
            LogitRows(chunks).logits(x.p, C: C, head: output, pool: pool) { src, dst in
                ck_rmsnorm(src, nw.baseAddress!, dst, Int64(C), eps)
                if rescale { for i in 0..<C { dst[i] *= s } }
            }
        }
    }

    // MARK: Blocks

    /// y = RMS(x) · w per row (T5's LayerNorm). y may alias x.
    private func rmsNorm(_ x: UnsafePointer<Float>, _ w: [Float], _ n: Int, into y: UnsafeMutablePointer<Float>, eps: Float) {
        let C = config.modelDim
        w.withUnsafeBufferPointer { wp in
            for r in 0..<n { ck_rmsnorm(x + r * C, wp.baseAddress!, y + r * C, Int64(C), eps) }
        }
    }

    /// y = wo · act(wi x), or wo · (act(wi_0 x) * wi_1 x) when gated. `y` may alias `x`.
    private func feedForward(_ w: T5FeedForwardWeights, _ x: UnsafePointer<Float>, _ n: Int,
                             h0: UnsafeMutablePointer<Float>, h1: UnsafeMutablePointer<Float>, into y: UnsafeMutablePointer<Float>) {
        let F = config.feedForwardDim
        matmul(w.wi, x, rows: n, into: h0, pool: pool)                   // (n, F)
        switch config.feedForward {
        case .relu, .gatedRelu: ck_relu(h0, Int64(n * F))
        case .gelu: ck_gelu_erf(h0, Int64(n * F))
        case .gatedGelu: ck_gelu_tanh(h0, Int64(n * F))
        }
        if let lin = w.wiLinear {
            matmul(lin, x, rows: n, into: h1, pool: pool)                // (n, F)
            ck_mul(h0, h1, Int64(n * F))
        }
        matmul(w.wo, h0, rows: n, into: y, pool: pool)                   // (n, C)
    }
}

// MARK: Training pairs

/// One (input, output) pair for an encoder-decoder model: the encoder reads `input`; the decoder is trained to produce
/// `labels` (-100 = not scored), reading them shifted right behind `decoder_start_token_id`.
public struct Seq2SeqExample: Sendable, Equatable {
    public var input: [Int]
    public var labels: [Int]

    public init(input: [Int], labels: [Int]) { self.input = input; self.labels = labels }
}

extension T5Model {
    /// The decoder's input for `labels`: [decoder_start] + labels without the last, -100 replaced by the pad id
    /// (modeling_t5's `_shift_right`).
    public func decoderInput(forLabels labels: [Int]) -> [Int] {
        [config.decoderStartTokenID] + labels.dropLast().map { $0 == -100 ? config.padTokenID : $0 }
    }

    /// Mean cross-entropy over every scored label of every pair (what HF's `T5ForConditionalGeneration(labels:)`
    /// returns for the batch), and the number of scored labels. Pairs run as one ragged batch; none affects another.
    public func loss(_ examples: [Seq2SeqExample]) throws -> (loss: Double, scoredTokens: Int) {
        let V = config.vocabularySize
        for (i, e) in examples.enumerated() {
            guard !e.input.isEmpty else { throw CausalError.invalidArgument("example \(i): the input has no tokens") }
            guard !e.labels.isEmpty else { throw CausalError.invalidArgument("example \(i): there are no labels") }
            if let bad = e.labels.first(where: { $0 != -100 && ($0 < 0 || $0 >= V) }) { throw CausalError.badTokenID(id: bad, vocabularySize: V) }
        }
        let caches = try makeCaches(encoderInputs: examples.map(\.input), capacity: examples.map(\.labels.count).max().map { $0 + 1 })
        let chunks = zip(examples, caches).map { SequenceChunk(cache: $1, tokens: decoderInput(forLabels: $0.labels), logits: .all) }
        let logits = try forward(chunks)
        var total = 0.0, count = 0
        for (e, rows) in zip(examples, logits) {
            for (t, label) in e.labels.enumerated() where label != -100 {
                let row = rows[(t * V)..<((t + 1) * V)]
                let mx = row.max()!
                var sum = 0.0
                for z in row { sum += exp(Double(z - mx)) }
                total += Double(mx) + log(sum) - Double(row[row.startIndex + label])
                count += 1
            }
        }
        guard count > 0 else { throw CausalError.invalidArgument("no label is scored (all are -100)") }
        return (total / Double(count), count)
    }
}
