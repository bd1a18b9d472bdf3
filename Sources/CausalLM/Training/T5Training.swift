import Foundation
import CausalKernels
import CCausalKernels

// Full fine-tuning of a T5 encoder-decoder (T5Model) on (input, output) pairs, in fp32.
//
// Parameters live in one flat fp32 buffer (`T5Parameters`) whose tensors carry Hugging Face's names and shapes
// (`shared.weight`, `encoder.block.0.layer.0.SelfAttention.q.weight`, ...); gradients and AdamW's moments use a
// second buffer of the same layout.
//
// A step runs a ragged batch of `Seq2SeqExample`s. The encoder rows of all examples form one (ne, C) matrix and the
// decoder rows one (nd, C) matrix, no padding anywhere: encoder self-attention stays inside each example's input,
// decoder self-attention is causal inside each example's decoder rows, and a decoder row's cross-attention reads only
// its own example's encoder output. The decoder reads the labels shifted right behind `decoder_start_token_id`
// (HF's `_shift_right`, -100 read as the pad id); the loss is cross-entropy of each decoder row against its label,
// labels of -100 ignored, mean over all scored labels of the batch (T5ForConditionalGeneration(labels:)).
//
// The forward computes exactly T5Model's numbers (the same matmul, RMS norm, activation kernels, and attention with
// ck_t5_attention_row's arithmetic), so a training loss is the inference loss and trained weights behave the same
// after a reload. It saves activations per layer in named structs (`T5EncoderLayerActivations`,
// `T5DecoderLayerActivations`); the backward walks the decoder, then the encoder, in reverse with a backward function
// beside each forward (llm.c style):
//
//   decoder layer:  x1 = x0 + O·attn(Q n0, K n0, V n0; causal, relative bias)     n0 = RMS(x0)
//                   x2 = x1 + O'·attn(Q' n1, K' e, V' e)                           n1 = RMS(x1), e = encoder output
//                   x3 = x2 + FF(RMS(x2))
//   encoder layer:  x1 = x0 + O·attn(Q n0, K n0, V n0; bidirectional, relative bias)
//                   x2 = x1 + FF(RMS(x1))
//   head:           logits = W_out · (RMS(x) · d_model^-0.5 when the head is tied)
//
// The relative-position bias table of each stack (its first layer's `relative_attention_bias`, shared by all its
// layers) gets the gradient of every layer's scores, summed by relative position and then by bucket. The shared
// embedding gets the encoder's and the decoder's lookups and, when tied, the output head's gradient.
//
// Dimension legend: ne / nd = encoder / decoder rows of the batch, C = d_model, H = heads, D = d_kv, I = H*D,
// F = d_ff, V = vocabulary, B = relative buckets.

/// fp32 parameters (or gradients, or optimizer moments) of a T5 model in one flat buffer, tensors in Hugging Face's
/// names and layout.
public final class T5Parameters: FlatParameters, @unchecked Sendable {
    /// One tensor of the buffer.
    public struct Tensor: Sendable, Equatable {
        /// Hugging Face name (`encoder.block.0.layer.0.SelfAttention.q.weight`).
        public let name: String
        /// Row-major shape, PyTorch order: [out, in] for linear weights, [V, C] for the embedding, [B, H] for a
        /// relative-position table, [C] for a norm.
        public let shape: [Int]
        public let offset: Int
        /// AdamW's weight decay applies (matrices and the embedding; not norms, not the relative-position tables,
        /// as transformers' Trainer leaves out "bias" and LayerNorm parameters).
        public let decays: Bool
        public var count: Int { shape.reduce(1, *) }
    }

    struct Attention { let q, k, v, o: Int }
    struct FeedForward { let wi: Int; let wiLinear: Int?; let wo: Int }
    struct EncoderLayer { let attnNorm: Int; let attn: Attention; let ffNorm: Int; let ff: FeedForward }
    struct DecoderLayer {
        let selfNorm: Int; let selfAttn: Attention
        let crossNorm: Int; let crossAttn: Attention
        let ffNorm: Int; let ff: FeedForward
    }

    public let config: T5Config
    public let tensors: [Tensor]
    public let count: Int
    public let data: UnsafeMutablePointer<Float>
    let embedding: Int                 // (V, C) shared
    let encoderBias: Int               // (B, H)
    let encoderLayers: [EncoderLayer]
    let encoderFinalNorm: Int          // (C)
    let decoderBias: Int               // (B, H)
    let decoderLayers: [DecoderLayer]
    let decoderFinalNorm: Int          // (C)
    let output: Int                    // (V, C): the embedding when tied, else lm_head

    /// Zero-filled parameters for `config`.
    public init(config: T5Config) {
        self.config = config
        let (C, F, V, I, B, H) = (config.modelDim, config.feedForwardDim, config.vocabularySize, config.innerDim,
                                  config.relativeBuckets, config.headCount)
        var tensors: [Tensor] = []
        var offset = 0
        func add(_ name: String, _ shape: [Int], decays: Bool? = nil) -> Int {
            tensors.append(Tensor(name: name, shape: shape, offset: offset, decays: decays ?? (shape.count == 2)))
            defer { offset += shape.reduce(1, *) }
            return offset
        }
        func attention(_ p: String) -> Attention {
            Attention(q: add(p + "q.weight", [I, C]), k: add(p + "k.weight", [I, C]), v: add(p + "v.weight", [I, C]),
                      o: add(p + "o.weight", [C, I]))
        }
        func feedForward(_ p: String) -> FeedForward {
            if config.feedForward.isGated {
                return FeedForward(wi: add(p + "wi_0.weight", [F, C]), wiLinear: add(p + "wi_1.weight", [F, C]),
                                   wo: add(p + "wo.weight", [C, F]))
            }
            return FeedForward(wi: add(p + "wi.weight", [F, C]), wiLinear: nil, wo: add(p + "wo.weight", [C, F]))
        }
        embedding = add("shared.weight", [V, C])
        var encBias = 0, decBias = 0
        encoderLayers = (0..<config.encoderLayerCount).map { l in
            let p = "encoder.block.\(l).layer."
            let norm = add(p + "0.layer_norm.weight", [C])
            let attn = attention(p + "0.SelfAttention.")
            if l == 0 { encBias = add(p + "0.SelfAttention.relative_attention_bias.weight", [B, H], decays: false) }
            return EncoderLayer(attnNorm: norm, attn: attn, ffNorm: add(p + "1.layer_norm.weight", [C]),
                                ff: feedForward(p + "1.DenseReluDense."))
        }
        encoderFinalNorm = add("encoder.final_layer_norm.weight", [C])
        decoderLayers = (0..<config.decoderLayerCount).map { l in
            let p = "decoder.block.\(l).layer."
            let norm = add(p + "0.layer_norm.weight", [C])
            let attn = attention(p + "0.SelfAttention.")
            if l == 0 { decBias = add(p + "0.SelfAttention.relative_attention_bias.weight", [B, H], decays: false) }
            let crossNorm = add(p + "1.layer_norm.weight", [C])
            let cross = attention(p + "1.EncDecAttention.")
            return DecoderLayer(selfNorm: norm, selfAttn: attn, crossNorm: crossNorm, crossAttn: cross,
                                ffNorm: add(p + "2.layer_norm.weight", [C]), ff: feedForward(p + "2.DenseReluDense."))
        }
        decoderFinalNorm = add("decoder.final_layer_norm.weight", [C])
        output = config.tiedEmbeddings ? embedding : add("lm_head.weight", [V, C])
        encoderBias = encBias
        decoderBias = decBias
        self.tensors = tensors
        count = offset
        data = .allocate(capacity: max(offset, 1))
        data.initialize(repeating: 0, count: max(offset, 1))
    }

    /// The weights of a loaded model, as fp32.
    public convenience init(model: T5Model) {
        self.init(config: model.config)
        let d = data
        func put(_ v: [Float], _ at: Int) { (d + at).update(from: v, count: v.count) }
        func attention(_ w: T5AttentionWeights, _ o: Attention) {
            dequantizeAll(w.q, into: d + o.q); dequantizeAll(w.k, into: d + o.k)
            dequantizeAll(w.v, into: d + o.v); dequantizeAll(w.o, into: d + o.o)
        }
        func feedForward(_ w: T5FeedForwardWeights, _ o: FeedForward) {
            dequantizeAll(w.wi, into: d + o.wi)
            if let lin = w.wiLinear, let at = o.wiLinear { dequantizeAll(lin, into: d + at) }
            dequantizeAll(w.wo, into: d + o.wo)
        }
        dequantizeAll(model.embedding, into: d + embedding)
        put(model.encoderBias, encoderBias)
        for (w, o) in zip(model.encoderLayers, encoderLayers) {
            put(w.attnNorm, o.attnNorm); attention(w.attn, o.attn)
            put(w.ffNorm, o.ffNorm); feedForward(w.ff, o.ff)
        }
        put(model.encoderFinalNorm, encoderFinalNorm)
        put(model.decoderBias, decoderBias)
        for (w, o) in zip(model.decoderLayers, decoderLayers) {
            put(w.selfNorm, o.selfNorm); attention(w.selfAttn, o.selfAttn)
            put(w.crossNorm, o.crossNorm); attention(w.crossAttn, o.crossAttn)
            put(w.ffNorm, o.ffNorm); feedForward(w.ff, o.ff)
        }
        put(model.decoderFinalNorm, decoderFinalNorm)
        if !config.tiedEmbeddings { dequantizeAll(model.output, into: d + output) }
    }

    /// Reads a Hugging Face T5 directory (`config.json` + `model.safetensors`, F32/F16/BF16) into fp32 parameters.
    public convenience init(directory: String) throws {
        self.init(model: try T5Model(directory: directory, pool: ThreadPool(threads: 1)))
    }

    deinit { data.deallocate() }

    /// Zeros of the same layout (a gradient or optimizer-moment buffer).
    public func zerosLike() -> T5Parameters { T5Parameters(config: config) }

    public func zeroBuffer() -> any FlatParameters { zerosLike() }

    public var decaySegments: [(offset: Int, count: Int, decays: Bool)] { tensors.map { ($0.offset, $0.count, $0.decays) } }

    /// A copy of the values.
    public func clone() -> T5Parameters {
        let c = zerosLike()
        c.data.update(from: data, count: count)
        return c
    }

    public func zero() { data.update(repeating: 0, count: count) }

    public var buffer: UnsafeMutableBufferPointer<Float> { UnsafeMutableBufferPointer(start: data, count: count) }

    /// The tensor with this Hugging Face name.
    public func tensor(_ name: String) -> Tensor? { tensors.first { $0.name == name } }

    /// The values of a tensor.
    public func values(_ t: Tensor) -> UnsafeMutableBufferPointer<Float> {
        UnsafeMutableBufferPointer(start: data + t.offset, count: t.count)
    }
}

extension T5Config {
    /// The decoder's input for `labels`: [decoder_start] + labels without the last, -100 read as the pad id
    /// (modeling_t5's `_shift_right`).
    public func decoderInput(forLabels labels: [Int]) -> [Int] {
        [decoderStartTokenID] + labels.dropLast().map { $0 == ignoredLabel ? padTokenID : $0 }
    }

    /// The activation kernel id of ck_t5_train_ff_backward.
    var activationKernel: Int32 {
        switch feedForward {
        case .relu, .gatedRelu: return Int32(CK_T5_ACT_RELU)
        case .gelu: return Int32(CK_T5_ACT_GELU_ERF)
        case .gatedGelu: return Int32(CK_T5_ACT_GELU_TANH)
        }
    }
}

// MARK: - Saved activations

/// The relative-position bias of one stack for a batch, by relative position: head h, relative position
/// rel = key − query at `values[h * width + center + rel]`, for rel in −center ..< width − center.
struct T5RelativeBias {
    let values: FloatBuffer   // (H, width)
    let width: Int
    let center: Int
    /// The bucket of each relative position (index rel + center).
    let buckets: [Int]

    /// Bidirectional (encoder): rel in −(L−1) ... L−1; causal (decoder): rel in −(L−1) ... 0. L = longest sequence.
    init(table: UnsafePointer<Float>, config: T5Config, longest L: Int, bidirectional: Bool) {
        let H = config.headCount
        width = bidirectional ? 2 * L - 1 : L
        center = L - 1
        buckets = (0..<width).map { config.relativeBucket($0 - (L - 1), bidirectional: bidirectional) }
        values = FloatBuffer(H * width)
        for r in 0..<width { for h in 0..<H { values.p[h * width + r] = table[buckets[r] * H + h] } }
    }

    /// Head h's bias at relative position 0.
    func head(_ h: Int) -> UnsafeMutablePointer<Float> { values.p + h * width + center }
}

/// One attention block: x_out = x + O · attention(Q RMS(x), K kv, V kv).
struct T5AttentionActivations {
    let input: FloatBuffer     // (rows, C) residual stream entering the block (input of the norm)
    let rstd: FloatBuffer      // (rows)
    let normed: FloatBuffer    // (rows, C) RMS(x): input of Q (and of K, V for self-attention)
    let q: FloatBuffer         // (rows, I)
    let k: FloatBuffer         // (kv rows, I): the block's own rows, or the encoder's for cross-attention
    let v: FloatBuffer         // (kv rows, I)
    let attn: FloatBuffer      // (rows, I) attention output, input of O
    let stats: FloatBuffer     // (rows, H, 2) per (row, head): max score, 1 / sum of exp
}

/// One feed-forward block: x_out = x + wo · act(wi RMS(x)) [* wi_1 RMS(x)].
struct T5FeedForwardActivations {
    let input: FloatBuffer     // (rows, C) residual stream entering the block
    let rstd: FloatBuffer      // (rows)
    let normed: FloatBuffer    // (rows, C) input of wi (wi_0, wi_1)
    let a0: FloatBuffer        // (rows, F) wi (wi_0) x, before the activation
    let a1: FloatBuffer?       // (rows, F) wi_1 x, gated only
    let hidden: FloatBuffer    // (rows, F) act(a0) [* a1], input of wo
}

struct T5EncoderLayerActivations {
    let attn: T5AttentionActivations
    let ff: T5FeedForwardActivations
}

struct T5DecoderLayerActivations {
    let selfAttn: T5AttentionActivations
    let crossAttn: T5AttentionActivations
    let ff: T5FeedForwardActivations
}

/// Everything the backward needs from a forward over one batch.
struct T5Activations {
    let encoderRows: Int, decoderRows: Int
    let encoderTokens: [Int], decoderTokens: [Int]
    let targets: [Int]                   // per decoder row: its label, -100 where unscored
    let rowExample: [Int]                // per decoder row: its example
    let encoderSpans: [SequenceSpan]     // per example: its encoder rows
    let decoderSpans: [SequenceSpan]     // per example: its decoder rows
    let encoderBias: T5RelativeBias
    let decoderBias: T5RelativeBias
    let encoderLayers: [T5EncoderLayerActivations]
    let encoderFinalInput: FloatBuffer   // (ne, C)
    let encoderFinalRstd: FloatBuffer    // (ne)
    let encoderOutput: FloatBuffer       // (ne, C) e = RMS(x): cross-attention's keys and values come from it
    let decoderLayers: [T5DecoderLayerActivations]
    let decoderFinalInput: FloatBuffer   // (nd, C)
    let decoderFinalRstd: FloatBuffer    // (nd)
    let decoderOutput: FloatBuffer       // (nd, C) RMS(x) [· d_model^-0.5]: input of the head
}

// MARK: - Trainer

/// Forward, backward and loss of a T5 model over ragged batches of (input, labels) pairs.
public final class T5Trainer {
    public let parameters: T5Parameters
    /// Gradients, accumulated by `forwardBackward` until `zeroGradients()`.
    public let gradients: T5Parameters
    public let pool: ThreadPool
    /// Scored rows per head/loss chunk (bounds the logits scratch to chunk × V floats).
    public var headChunk = 64

    deinit { BufferCache.purge() }   // the recycled training buffers (TrainingOps.swift)

    public init(parameters: T5Parameters, pool: ThreadPool = .shared) {
        self.parameters = parameters
        self.gradients = parameters.zerosLike()
        self.pool = pool
    }

    public var config: T5Config { parameters.config }

    public func zeroGradients() { gradients.zero() }

    /// Global L2 norm of the gradients.
    public func gradientNorm() -> Double { gradients.norm() }

    /// The loss of a batch (no gradients): per example, and the mean over all scored labels.
    public func loss(_ batch: [Seq2SeqExample]) throws -> BatchLoss {
        let acts = try forward(batch)
        return head(acts, lossScale: 0, backward: nil)
    }

    /// Forward and backward over a batch. Gradients are added to `gradients`, as the gradient of
    /// `lossScale × (summed loss)`; the default 1/(scored labels of this batch) makes it the gradient of the batch's
    /// mean loss. For gradient accumulation pass 1/(scored labels of the whole step) to every micro-batch.
    @discardableResult
    public func forwardBackward(_ batch: [Seq2SeqExample], lossScale: Double? = nil) throws -> BatchLoss {
        let acts = try forward(batch)
        let scored = acts.targets.reduce(0) { $0 + ($1 == ignoredLabel ? 0 : 1) }
        let scale = lossScale ?? (scored > 0 ? 1 / Double(scored) : 0)
        let dOut = FloatBuffer(acts.decoderRows * config.modelDim)
        let loss = head(acts, lossScale: Float(scale), backward: dOut)
        backward(acts, dDecoderOutput: dOut)
        return loss
    }

    /// Gradient accumulation: every micro-batch's loss scaled by 1/(scored labels of all of them), so the gradient
    /// equals that of one batch holding them all.
    public func accumulate(_ microBatches: [[Seq2SeqExample]]) throws -> BatchLoss {
        let total = microBatches.reduce(0) { $0 + $1.reduce(0) { $0 + $1.scoredLabelCount } }
        let scale = total > 0 ? 1 / Double(total) : 0
        var out = BatchLoss(sequences: [])
        for mb in microBatches where !mb.isEmpty { out.sequences += try forwardBackward(mb, lossScale: scale).sequences }
        return out
    }

    /// The loss over a dataset, forward only, in ragged batches of at most `maxBatchTokens` tokens.
    public func evaluate(_ examples: [Seq2SeqExample], maxBatchTokens: Int = 4096) throws -> BatchLoss {
        var out = BatchLoss(sequences: [])
        for b in Seq2SeqDataset.pack(examples, maxTokens: maxBatchTokens) { out.sequences += try loss(b).sequences }
        return out
    }

    /// The logits of every decoder row of every example ((labels.count, V) row-major per example), from the
    /// training forward: bit for bit what `T5Model.forward` gives for the same decoder input.
    public func logits(_ batch: [Seq2SeqExample]) throws -> [[Float]] {
        let a = try forward(batch, requireScored: false)
        let (C, V) = (config.modelDim, config.vocabularySize)
        let W = parameters.data + parameters.output
        return a.decoderSpans.map { s in
            var out = [Float](repeating: 0, count: s.length * V)
            out.withUnsafeMutableBufferPointer { o in
                TrainingOps.linearForward(x: a.decoderOutput.p + s.start * C, weight: W, rows: s.length, inDim: C, outDim: V,
                                          out: o.baseAddress!, pool: pool)
            }
            return out
        }
    }

    // MARK: Forward

    func forward(_ batch: [Seq2SeqExample], requireScored: Bool = true) throws -> T5Activations {
        let cfg = config, P = parameters, w = parameters.data
        let (C, V) = (cfg.modelDim, cfg.vocabularySize)
        guard !batch.isEmpty else { throw CausalError.invalidArgument("empty batch") }
        var encTokens: [Int] = [], decTokens: [Int] = [], targets: [Int] = [], rowExample: [Int] = []
        var encSpans: [SequenceSpan] = [], decSpans: [SequenceSpan] = []
        for (b, ex) in batch.enumerated() {
            guard !ex.input.isEmpty else { throw CausalError.invalidArgument("example \(b) of the batch: the input has no tokens") }
            guard !ex.labels.isEmpty else { throw CausalError.invalidArgument("example \(b) of the batch: there are no labels") }
            for t in ex.input where t < 0 || t >= V { throw CausalError.badTokenID(id: t, vocabularySize: V) }
            for t in ex.labels where t != ignoredLabel && (t < 0 || t >= V) { throw CausalError.badTokenID(id: t, vocabularySize: V) }
            encSpans.append(SequenceSpan(start: encTokens.count, length: ex.input.count))
            decSpans.append(SequenceSpan(start: decTokens.count, length: ex.labels.count))
            encTokens += ex.input
            decTokens += cfg.decoderInput(forLabels: ex.labels)
            targets += ex.labels
            rowExample += Array(repeating: b, count: ex.labels.count)
        }
        if requireScored && !targets.contains(where: { $0 != ignoredLabel }) {
            throw CausalError.invalidArgument("no label of the batch is scored (all are -100)")
        }
        let ne = encTokens.count, nd = decTokens.count
        let eps = Float(cfg.layerNormEps)
        let encBias = T5RelativeBias(table: w + P.encoderBias, config: cfg, longest: encSpans.map(\.length).max()!, bidirectional: true)
        let decBias = T5RelativeBias(table: w + P.decoderBias, config: cfg, longest: decSpans.map(\.length).max()!, bidirectional: false)

        // Encoder.
        var x = FloatBuffer(ne * C)
        TrainingOps.embeddingForward(tokens: encTokens, table: w + P.embedding, dim: C, out: x.p)
        var encLayers: [T5EncoderLayerActivations] = []
        for o in P.encoderLayers {
            let (attn, mid) = attentionForward(x, rows: ne, norm: w + o.attnNorm, o.attn, keyValues: nil,
                                               spans: encSpans, keySpans: encSpans, causal: false, bias: encBias)
            let (ff, next) = feedForwardForward(mid, rows: ne, norm: w + o.ffNorm, o.ff)
            encLayers.append(T5EncoderLayerActivations(attn: attn, ff: ff))
            x = next
        }
        let encRstd = FloatBuffer(ne), enc = FloatBuffer(ne * C)
        TrainingOps.rmsnormForward(x: x.p, weight: w + P.encoderFinalNorm, out: enc.p, rstd: encRstd.p, rows: ne, dim: C, eps: eps)
        let encFinalInput = x

        // Decoder.
        x = FloatBuffer(nd * C)
        TrainingOps.embeddingForward(tokens: decTokens, table: w + P.embedding, dim: C, out: x.p)
        var decLayers: [T5DecoderLayerActivations] = []
        for o in P.decoderLayers {
            let (sa, mid1) = attentionForward(x, rows: nd, norm: w + o.selfNorm, o.selfAttn, keyValues: nil,
                                              spans: decSpans, keySpans: decSpans, causal: true, bias: decBias)
            let (ca, mid2) = attentionForward(mid1, rows: nd, norm: w + o.crossNorm, o.crossAttn, keyValues: (enc, ne),
                                              spans: decSpans, keySpans: encSpans, causal: false, bias: nil)
            let (ff, next) = feedForwardForward(mid2, rows: nd, norm: w + o.ffNorm, o.ff)
            decLayers.append(T5DecoderLayerActivations(selfAttn: sa, crossAttn: ca, ff: ff))
            x = next
        }
        let decRstd = FloatBuffer(nd), dec = FloatBuffer(nd * C)
        TrainingOps.rmsnormForward(x: x.p, weight: w + P.decoderFinalNorm, out: dec.p, rstd: decRstd.p, rows: nd, dim: C, eps: eps)
        if cfg.scaleDecoderOutputs { ck_train_scale(dec.p, Int64(nd * C), outputScale) }
        return T5Activations(encoderRows: ne, decoderRows: nd, encoderTokens: encTokens, decoderTokens: decTokens,
                             targets: targets, rowExample: rowExample, encoderSpans: encSpans, decoderSpans: decSpans,
                             encoderBias: encBias, decoderBias: decBias, encoderLayers: encLayers,
                             encoderFinalInput: encFinalInput, encoderFinalRstd: encRstd, encoderOutput: enc,
                             decoderLayers: decLayers, decoderFinalInput: x, decoderFinalRstd: decRstd, decoderOutput: dec)
    }

    /// d_model^-0.5, T5Model's rescale of a tied head's input.
    var outputScale: Float { Float(pow(Double(config.modelDim), -0.5)) }

    /// Attention block forward: returns its activations and x + O · attention(...). Keys and values come from the
    /// block's own normed rows (self-attention) or from `keyValues` (the encoder output, cross-attention).
    func attentionForward(_ x: FloatBuffer, rows n: Int, norm: UnsafePointer<Float>, _ o: T5Parameters.Attention,
                          keyValues: (rows: FloatBuffer, count: Int)?, spans: [SequenceSpan], keySpans: [SequenceSpan],
                          causal: Bool, bias: T5RelativeBias?) -> (T5AttentionActivations, FloatBuffer) {
        let cfg = config, w = parameters.data
        let (C, I) = (cfg.modelDim, cfg.innerDim)
        let nk = keyValues?.count ?? n
        let a = T5AttentionActivations(input: x, rstd: FloatBuffer(n), normed: FloatBuffer(n * C), q: FloatBuffer(n * I),
                                       k: FloatBuffer(nk * I), v: FloatBuffer(nk * I), attn: FloatBuffer(n * I),
                                       stats: FloatBuffer(n * cfg.headCount * 2))
        TrainingOps.rmsnormForward(x: x.p, weight: norm, out: a.normed.p, rstd: a.rstd.p, rows: n, dim: C, eps: Float(cfg.layerNormEps))
        let kvIn = keyValues?.rows.p ?? a.normed.p
        TrainingOps.linearForward(x: a.normed.p, weight: w + o.q, rows: n, inDim: C, outDim: I, out: a.q.p, pool: pool)
        TrainingOps.linearForward(x: kvIn, weight: w + o.k, rows: nk, inDim: C, outDim: I, out: a.k.p, pool: pool)
        TrainingOps.linearForward(x: kvIn, weight: w + o.v, rows: nk, inDim: C, outDim: I, out: a.v.p, pool: pool)
        Self.attentionCoreForward(q: a.q.p, k: a.k.p, v: a.v.p, spans: spans, keySpans: keySpans, causal: causal, bias: bias,
                                  heads: cfg.headCount, headDim: cfg.headDim, out: a.attn.p, stats: a.stats.p, pool: pool)
        let out = FloatBuffer(n * C)
        TrainingOps.linearForward(x: a.attn.p, weight: w + o.o, rows: n, inDim: I, outDim: C, out: out.p, pool: pool)
        ck_add(out.p, x.p, Int64(n * C))
        return (a, out)
    }

    /// Feed-forward block forward: returns its activations and x + FF(RMS(x)), with T5Model's kernels.
    func feedForwardForward(_ x: FloatBuffer, rows n: Int, norm: UnsafePointer<Float>,
                            _ o: T5Parameters.FeedForward) -> (T5FeedForwardActivations, FloatBuffer) {
        let cfg = config, w = parameters.data
        let (C, F) = (cfg.modelDim, cfg.feedForwardDim)
        let a = T5FeedForwardActivations(input: x, rstd: FloatBuffer(n), normed: FloatBuffer(n * C), a0: FloatBuffer(n * F),
                                         a1: o.wiLinear != nil ? FloatBuffer(n * F) : nil, hidden: FloatBuffer(n * F))
        TrainingOps.rmsnormForward(x: x.p, weight: norm, out: a.normed.p, rstd: a.rstd.p, rows: n, dim: C, eps: Float(cfg.layerNormEps))
        TrainingOps.linearForward(x: a.normed.p, weight: w + o.wi, rows: n, inDim: C, outDim: F, out: a.a0.p, pool: pool)
        a.hidden.p.update(from: a.a0.p, count: n * F)
        switch cfg.feedForward {
        case .relu, .gatedRelu: ck_relu(a.hidden.p, Int64(n * F))
        case .gelu: ck_gelu_erf(a.hidden.p, Int64(n * F))
        case .gatedGelu: ck_gelu_tanh(a.hidden.p, Int64(n * F))
        }
        if let lin = o.wiLinear, let a1 = a.a1 {
            TrainingOps.linearForward(x: a.normed.p, weight: w + lin, rows: n, inDim: C, outDim: F, out: a1.p, pool: pool)
            ck_mul(a.hidden.p, a1.p, Int64(n * F))
        }
        let out = FloatBuffer(n * C)
        TrainingOps.linearForward(x: a.hidden.p, weight: w + o.wo, rows: n, inDim: F, outDim: C, out: out.p, pool: pool)
        ck_add(out.p, x.p, Int64(n * C))
        return (a, out)
    }

    /// Attention of every example's query rows (`spans`) over its own key rows (`keySpans`), one task per
    /// (example, head). Saves each (row, head)'s max score and 1/sum in `stats` (rows, H, 2).
    static func attentionCoreForward(q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                                     spans: [SequenceSpan], keySpans: [SequenceSpan], causal: Bool, bias: T5RelativeBias?,
                                     heads H: Int, headDim D: Int, out: UnsafeMutablePointer<Float>,
                                     stats: UnsafeMutablePointer<Float>, pool: ThreadPool) {
        let I = H * D
        pool.parallelFor(spans.count * H) { item in
            let s = spans[item / H], ks = keySpans[item / H], h = item % H
            withUnsafeTemporaryAllocation(of: Float.self, capacity: max(ks.length, 1)) { scratch in
                ck_t5_train_attention_forward(q + s.start * I + h * D, k + ks.start * I + h * D, v + ks.start * I + h * D,
                                              Int64(s.length), Int64(ks.length), causal ? 1 : 0, Int64(I), Int64(I), Int64(D),
                                              bias.map { UnsafePointer($0.head(h)) }, out + s.start * I + h * D,
                                              stats + (s.start * H + h) * 2, Int64(H * 2), scratch.baseAddress!)
            }
        }
    }

    /// Backward of `attentionCoreForward`: overwrites dq (query rows) and dk, dv (key rows); with `bias`, adds the
    /// gradient of the bias by relative position to `dBias` ((H, bias.width), like `bias.values`). Each
    /// (example, head) writes its own rows and its own slot of relative positions; the slots are added in example
    /// order, so the result does not depend on threads.
    static func attentionCoreBackward(q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                                      out: UnsafePointer<Float>, stats: UnsafePointer<Float>, dOut: UnsafePointer<Float>,
                                      spans: [SequenceSpan], keySpans: [SequenceSpan], queryRows: Int, keyRows: Int,
                                      causal: Bool, bias: T5RelativeBias?, heads H: Int, headDim D: Int,
                                      dq: UnsafeMutablePointer<Float>, dk: UnsafeMutablePointer<Float>,
                                      dv: UnsafeMutablePointer<Float>, dBias: UnsafeMutablePointer<Float>?, pool: ThreadPool) {
        let I = H * D
        dq.update(repeating: 0, count: queryRows * I)
        dk.update(repeating: 0, count: keyRows * I)
        dv.update(repeating: 0, count: keyRows * I)
        let width = bias?.width ?? 0
        let slots = FloatBuffer(bias != nil ? spans.count * H * width : 0)
        pool.parallelFor(spans.count * H) { item in
            let s = spans[item / H], ks = keySpans[item / H], h = item % H
            withUnsafeTemporaryAllocation(of: Float.self, capacity: max(2 * ks.length, 1)) { scratch in
                let qo = s.start * I + h * D, ko = ks.start * I + h * D
                ck_t5_train_attention_backward(q + qo, k + ko, v + ko, out + qo, dOut + qo, stats + (s.start * H + h) * 2,
                                               Int64(H * 2), Int64(s.length), Int64(ks.length), causal ? 1 : 0, Int64(I),
                                               Int64(I), Int64(D), bias.map { UnsafePointer($0.head(h)) }, dq + qo, dk + ko,
                                               dv + ko, bias.map { slots.p + item * width + $0.center }, scratch.baseAddress!)
            }
        }
        if let dBias {
            for item in 0..<(spans.count * H) {
                ck_add(dBias + (item % H) * width, slots.p + item * width, Int64(width))
            }
        }
    }

    /// Output head and cross-entropy over the scored decoder rows, in chunks. With `backward`, writes the gradient of
    /// the head's input rows there (zero for unscored rows) and adds the head's weight gradient.
    func head(_ a: T5Activations, lossScale: Float, backward dOut: FloatBuffer?) -> BatchLoss {
        let cfg = config, P = parameters
        let (C, V) = (cfg.modelDim, cfg.vocabularySize)
        var losses = [SequenceLoss](repeating: SequenceLoss(), count: a.decoderSpans.count)
        let scoredRows = (0..<a.decoderRows).filter { a.targets[$0] != ignoredLabel }
        guard !scoredRows.isEmpty else { return BatchLoss(sequences: losses) }
        let chunk = max(1, headChunk), m0 = min(chunk, scoredRows.count)
        let xs = FloatBuffer(m0 * C), logits = FloatBuffer(m0 * V), dxs = FloatBuffer(m0 * C)
        let W = P.data + P.output
        for lo in stride(from: 0, to: scoredRows.count, by: chunk) {
            let rows = Array(scoredRows[lo..<min(lo + chunk, scoredRows.count)])
            let m = rows.count
            for (i, r) in rows.enumerated() { (xs.p + i * C).update(from: a.decoderOutput.p + r * C, count: C) }
            TrainingOps.linearForward(x: xs.p, weight: W, rows: m, inDim: C, outDim: V, out: logits.p, pool: pool)
            let l = TrainingOps.crossEntropy(logits: logits.p, rows: m, vocab: V, targets: rows.map { a.targets[$0] },
                                             scale: lossScale, pool: pool)
            for (i, r) in rows.enumerated() {
                losses[a.rowExample[r]].sumLoss += l[i]
                losses[a.rowExample[r]].scoredTokens += 1
            }
            guard let dOut else { continue }
            TrainingOps.linearBackward(dOut: logits.p, x: xs.p, weight: W, rows: m, inDim: C, outDim: V, dx: dxs.p,
                                       dWeight: gradients.data + P.output, pool: pool)
            for (i, r) in rows.enumerated() { (dOut.p + r * C).update(from: dxs.p + i * C, count: C) }
        }
        return BatchLoss(sequences: losses)
    }

    // MARK: Backward

    func backward(_ a: T5Activations, dDecoderOutput: FloatBuffer) {
        let cfg = config, P = parameters, w = P.data, g = gradients.data
        let C = cfg.modelDim
        let (ne, nd) = (a.encoderRows, a.decoderRows)

        // Decoder: the head's rescale, the final norm, then the layers in reverse.
        if cfg.scaleDecoderOutputs { ck_train_scale(dDecoderOutput.p, Int64(nd * C), outputScale) }
        let dx = FloatBuffer(nd * C)     // gradient of the decoder's residual stream, walking down
        TrainingOps.rmsnormBackward(dOut: dDecoderOutput.p, x: a.decoderFinalInput.p, weight: w + P.decoderFinalNorm,
                                    rstd: a.decoderFinalRstd.p, dx: dx.p, dWeight: g + P.decoderFinalNorm, rows: nd, dim: C)
        let dEnc = FloatBuffer(ne * C)   // gradient of the encoder output, from every decoder layer's cross-attention
        let dDecBias = FloatBuffer(cfg.headCount * a.decoderBias.width)
        for (l, o) in P.decoderLayers.enumerated().reversed() {
            let s = a.decoderLayers[l]
            feedForwardBackward(s.ff, dx, rows: nd, norm: o.ffNorm, o.ff)
            attentionBackward(s.crossAttn, dx, rows: nd, norm: o.crossNorm, o.crossAttn,
                              keyValues: (a.encoderOutput, ne, dEnc), spans: a.decoderSpans, keySpans: a.encoderSpans,
                              causal: false, bias: nil, dBias: nil)
            attentionBackward(s.selfAttn, dx, rows: nd, norm: o.selfNorm, o.selfAttn, keyValues: nil,
                              spans: a.decoderSpans, keySpans: a.decoderSpans, causal: true, bias: a.decoderBias,
                              dBias: dDecBias.p)
        }
        TrainingOps.embeddingBackward(tokens: a.decoderTokens, dOut: dx.p, dim: C, dTable: g + P.embedding)
        relativeBiasBackward(a.decoderBias, dBias: dDecBias, table: g + P.decoderBias)

        // Encoder: the final norm (its output fed every cross-attention), then the layers in reverse.
        let dxe = FloatBuffer(ne * C)
        TrainingOps.rmsnormBackward(dOut: dEnc.p, x: a.encoderFinalInput.p, weight: w + P.encoderFinalNorm,
                                    rstd: a.encoderFinalRstd.p, dx: dxe.p, dWeight: g + P.encoderFinalNorm, rows: ne, dim: C)
        let dEncBias = FloatBuffer(cfg.headCount * a.encoderBias.width)
        for (l, o) in P.encoderLayers.enumerated().reversed() {
            let s = a.encoderLayers[l]
            feedForwardBackward(s.ff, dxe, rows: ne, norm: o.ffNorm, o.ff)
            attentionBackward(s.attn, dxe, rows: ne, norm: o.attnNorm, o.attn, keyValues: nil,
                              spans: a.encoderSpans, keySpans: a.encoderSpans, causal: false, bias: a.encoderBias,
                              dBias: dEncBias.p)
        }
        TrainingOps.embeddingBackward(tokens: a.encoderTokens, dOut: dxe.p, dim: C, dTable: g + P.embedding)
        relativeBiasBackward(a.encoderBias, dBias: dEncBias, table: g + P.encoderBias)
    }

    /// Backward of `feedForwardForward`: dx holds the gradient of the block's output and receives that of its input
    /// (the residual path plus the path through the norm); weight gradients are added.
    func feedForwardBackward(_ s: T5FeedForwardActivations, _ dx: FloatBuffer, rows n: Int, norm: Int, _ o: T5Parameters.FeedForward) {
        let cfg = config, w = parameters.data, g = gradients.data
        let (C, F) = (cfg.modelDim, cfg.feedForwardDim)
        let dH = FloatBuffer(n * F), dA0 = FloatBuffer(n * F), dA1 = FloatBuffer(s.a1 != nil ? n * F : 0)
        let dNormed = FloatBuffer(n * C)
        TrainingOps.linearBackward(dOut: dx.p, x: s.hidden.p, weight: w + o.wo, rows: n, inDim: F, outDim: C,
                                   dx: dH.p, dWeight: g + o.wo, pool: pool)
        let act = cfg.activationKernel
        let a1 = s.a1.map { UnsafePointer($0.p) }, da1 = s.a1 != nil ? dA1.p : nil
        Self.chunked(n * F, pool) { lo, m in
            ck_t5_train_ff_backward(act, dH.p + lo, s.a0.p + lo, a1.map { $0 + lo }, dA0.p + lo, da1.map { $0 + lo }, Int64(m))
        }
        TrainingOps.linearBackward(dOut: dA0.p, x: s.normed.p, weight: w + o.wi, rows: n, inDim: C, outDim: F,
                                   dx: dNormed.p, dWeight: g + o.wi, pool: pool)
        if let lin = o.wiLinear {
            TrainingOps.linearBackward(dOut: dA1.p, x: s.normed.p, weight: w + lin, rows: n, inDim: C, outDim: F,
                                       dx: dNormed.p, accumulateDX: true, dWeight: g + lin, pool: pool)
        }
        TrainingOps.rmsnormBackward(dOut: dNormed.p, x: s.input.p, weight: w + norm, rstd: s.rstd.p, dx: dx.p,
                                    dWeight: g + norm, rows: n, dim: C)
    }

    /// Backward of `attentionForward`: dx holds the gradient of the block's output and receives that of its input.
    /// For cross-attention the gradient of the key/value source (the encoder output) is added to `keyValues.grad`.
    func attentionBackward(_ s: T5AttentionActivations, _ dx: FloatBuffer, rows n: Int, norm: Int, _ o: T5Parameters.Attention,
                           keyValues: (rows: FloatBuffer, count: Int, grad: FloatBuffer)?, spans: [SequenceSpan],
                           keySpans: [SequenceSpan], causal: Bool, bias: T5RelativeBias?, dBias: UnsafeMutablePointer<Float>?) {
        let cfg = config, w = parameters.data, g = gradients.data
        let (C, I) = (cfg.modelDim, cfg.innerDim)
        let nk = keyValues?.count ?? n
        let dAtt = FloatBuffer(n * I), dQ = FloatBuffer(n * I), dK = FloatBuffer(nk * I), dV = FloatBuffer(nk * I)
        let dNormed = FloatBuffer(n * C)
        TrainingOps.linearBackward(dOut: dx.p, x: s.attn.p, weight: w + o.o, rows: n, inDim: I, outDim: C,
                                   dx: dAtt.p, dWeight: g + o.o, pool: pool)
        Self.attentionCoreBackward(q: s.q.p, k: s.k.p, v: s.v.p, out: s.attn.p, stats: s.stats.p, dOut: dAtt.p, spans: spans,
                                   keySpans: keySpans, queryRows: n, keyRows: nk, causal: causal, bias: bias,
                                   heads: cfg.headCount, headDim: cfg.headDim, dq: dQ.p, dk: dK.p, dv: dV.p, dBias: dBias, pool: pool)
        TrainingOps.linearBackward(dOut: dQ.p, x: s.normed.p, weight: w + o.q, rows: n, inDim: C, outDim: I,
                                   dx: dNormed.p, dWeight: g + o.q, pool: pool)
        if let kv = keyValues {
            TrainingOps.linearBackward(dOut: dK.p, x: kv.rows.p, weight: w + o.k, rows: nk, inDim: C, outDim: I,
                                       dx: kv.grad.p, accumulateDX: true, dWeight: g + o.k, pool: pool)
            TrainingOps.linearBackward(dOut: dV.p, x: kv.rows.p, weight: w + o.v, rows: nk, inDim: C, outDim: I,
                                       dx: kv.grad.p, accumulateDX: true, dWeight: g + o.v, pool: pool)
        } else {
            TrainingOps.linearBackward(dOut: dK.p, x: s.normed.p, weight: w + o.k, rows: n, inDim: C, outDim: I,
                                       dx: dNormed.p, accumulateDX: true, dWeight: g + o.k, pool: pool)
            TrainingOps.linearBackward(dOut: dV.p, x: s.normed.p, weight: w + o.v, rows: n, inDim: C, outDim: I,
                                       dx: dNormed.p, accumulateDX: true, dWeight: g + o.v, pool: pool)
        }
        TrainingOps.rmsnormBackward(dOut: dNormed.p, x: s.input.p, weight: w + norm, rstd: s.rstd.p, dx: dx.p,
                                    dWeight: g + norm, rows: n, dim: C)
    }

    /// The gradient of a stack's bias table: each relative position's gradient (summed over layers) goes to its
    /// bucket, (B, H) like the table.
    func relativeBiasBackward(_ bias: T5RelativeBias, dBias: FloatBuffer, table: UnsafeMutablePointer<Float>) {
        let H = config.headCount
        for h in 0..<H {
            for r in 0..<bias.width { table[bias.buckets[r] * H + h] += dBias.p[h * bias.width + r] }
        }
    }

    private static func chunked(_ count: Int, _ pool: ThreadPool, _ body: (Int, Int) -> Void) {
        let chunk = 1 << 16
        let n = (count + chunk - 1) / chunk
        if n <= 1 { body(0, count); return }
        pool.parallelFor(n) { c in body(c * chunk, min(chunk, count - c * chunk)) }
    }
}

// MARK: - Data

extension Seq2SeqExample {
    /// Labels that count in the loss (not -100).
    public var scoredLabelCount: Int { labels.reduce(0) { $0 + ($1 == ignoredLabel ? 0 : 1) } }
    /// Rows the example takes in a step: encoder input plus decoder rows.
    public var tokenCount: Int { input.count + labels.count }
}
