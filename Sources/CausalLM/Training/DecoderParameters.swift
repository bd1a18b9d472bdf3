import Foundation
import CausalKernels
import CCausalKernels

// The trainable parameters of a decoder for full fine-tuning, and the loss types every trainer returns.
//
// Parameters live in one flat fp32 buffer (`DecoderParameters`), in the engine's row layout: for a model whose RoPE
// rotates adjacent pairs (LLaMA GGUF files) Q/K rows are in llama.cpp's permuted order, exactly as `DecoderModel`
// runs (checkpoints undo the permutation when they write HF tensors). Gradients use a second buffer of the same
// layout, so the optimizer and the norm are flat loops. The forward and backward that use them are
// `DecoderTrainer` (DecoderTraining.swift), which also trains LoRA adapters over a frozen base.

/// fp32 parameters (or gradients) of a decoder in one flat buffer: every tensor its configuration has (q/k/v biases,
/// QK-norm and post-norm weights where the family has them).
public typealias LlamaParameters = DecoderParameters

/// fp32 parameters (or gradients) of a decoder in one flat buffer.
public final class DecoderParameters: @unchecked Sendable {
    /// One tensor of the buffer.
    public struct Tensor: Sendable, Equatable {
        /// Hugging Face name (`model.layers.0.self_attn.q_proj.weight`).
        public let name: String
        /// GGUF name (`blk.0.attn_q.weight`).
        public let ggufName: String
        /// Row-major shape, PyTorch order: [rows, cols] for matrices, [n] for norms.
        public let shape: [Int]
        public let offset: Int
        public var count: Int { shape.reduce(1, *) }
        /// Matrices get weight decay; norm weights and biases do not.
        public var decays: Bool { shape.count == 2 }
        /// Q or K projection (rows permuted in GGUF's layout relative to HF's); the head count of that permutation.
        public let permutedHeads: Int?
    }

    struct LayerOffsets {
        let attnNorm, q, k, v, o, mlpNorm, gate, up, down: Int
        var qBias: Int? = nil, kBias: Int? = nil, vBias: Int? = nil, qNorm: Int? = nil, kNorm: Int? = nil
        var postAttnNorm: Int? = nil, postMlpNorm: Int? = nil
    }

    public let config: LlamaConfig
    /// The output head shares the embedding matrix.
    public let tiedEmbeddings: Bool
    public let tensors: [Tensor]
    public let count: Int
    /// GGUF `rope_freqs.weight` of the model these came from (Llama 3's RoPE scaling), if any.
    public var ropeFactors: [Float]?
    public let data: UnsafeMutablePointer<Float>
    let embedding: Int, layers: [LayerOffsets], finalNorm: Int, output: Int

    /// Zero-filled parameters for `config`.
    public init(config: LlamaConfig, tiedEmbeddings: Bool) {
        self.config = config
        self.tiedEmbeddings = tiedEmbeddings
        let (C, F, V) = (config.hiddenSize, config.intermediateSize, config.vocabularySize)
        let qDim = config.headCount * config.headDim, kvDim = config.kvHeadCount * config.headDim
        var tensors: [Tensor] = []
        var offset = 0
        let permutes = config.ropeStyle == .adjacent
        func add(_ name: String, _ gguf: String, _ shape: [Int], permuted: Int? = nil) -> Int {
            tensors.append(Tensor(name: name, ggufName: gguf, shape: shape, offset: offset, permutedHeads: permuted))
            defer { offset += shape.reduce(1, *) }
            return offset
        }
        embedding = add("model.embed_tokens.weight", "token_embd.weight", [V, C])
        let post = config.postNorms   // Gemma's names: pre/post_feedforward_layernorm, post_attention_layernorm
        layers = (0..<config.layerCount).map { l in
            let p = "model.layers.\(l).", g = "blk.\(l)."
            var o = LayerOffsets(
                attnNorm: add(p + "input_layernorm.weight", g + "attn_norm.weight", [C]),
                q: add(p + "self_attn.q_proj.weight", g + "attn_q.weight", [qDim, C], permuted: permutes ? config.headCount : nil),
                k: add(p + "self_attn.k_proj.weight", g + "attn_k.weight", [kvDim, C], permuted: permutes ? config.kvHeadCount : nil),
                v: add(p + "self_attn.v_proj.weight", g + "attn_v.weight", [kvDim, C]),
                o: add(p + "self_attn.o_proj.weight", g + "attn_output.weight", [C, qDim]),
                mlpNorm: add(p + (post ? "pre_feedforward_layernorm.weight" : "post_attention_layernorm.weight"), g + "ffn_norm.weight", [C]),
                gate: add(p + "mlp.gate_proj.weight", g + "ffn_gate.weight", [F, C]),
                up: add(p + "mlp.up_proj.weight", g + "ffn_up.weight", [F, C]),
                down: add(p + "mlp.down_proj.weight", g + "ffn_down.weight", [C, F]))
            if config.attentionBias {
                o.qBias = add(p + "self_attn.q_proj.bias", g + "attn_q.bias", [qDim])
                o.kBias = add(p + "self_attn.k_proj.bias", g + "attn_k.bias", [kvDim])
                o.vBias = add(p + "self_attn.v_proj.bias", g + "attn_v.bias", [kvDim])
            }
            if config.qkNorm {
                o.qNorm = add(p + "self_attn.q_norm.weight", g + "attn_q_norm.weight", [config.headDim])
                o.kNorm = add(p + "self_attn.k_norm.weight", g + "attn_k_norm.weight", [config.headDim])
            }
            if post {
                o.postAttnNorm = add(p + "post_attention_layernorm.weight", g + "post_attention_norm.weight", [C])
                o.postMlpNorm = add(p + "post_feedforward_layernorm.weight", g + "post_ffw_norm.weight", [C])
            }
            return o
        }
        finalNorm = add("model.norm.weight", "output_norm.weight", [C])
        output = tiedEmbeddings ? embedding : add("lm_head.weight", "output.weight", [V, C])
        self.tensors = tensors
        count = offset
        data = .allocate(capacity: max(offset, 1))
        data.initialize(repeating: 0, count: max(offset, 1))
    }

    /// The model's weights dequantized to fp32 (the engine's row layout kept).
    public convenience init(model: DecoderModel) {
        let tied = model.output.data == model.embedding.data
        self.init(config: model.config, tiedEmbeddings: tied)
        ropeFactors = model.ropeFactors
        dequantizeAll(model.embedding, into: data + embedding)
        func copy(_ v: [Float]?, _ o: Int?) { if let v, let o { (data + o).update(from: v, count: v.count) } }
        for (l, w) in model.layers.enumerated() {
            let o = layers[l]
            copy(w.attnNorm, o.attnNorm); copy(w.mlpNorm, o.mlpNorm)
            copy(w.qBias, o.qBias); copy(w.kBias, o.kBias); copy(w.vBias, o.vBias)
            copy(w.qNorm, o.qNorm); copy(w.kNorm, o.kNorm); copy(w.postAttnNorm, o.postAttnNorm); copy(w.postMlpNorm, o.postMlpNorm)
            dequantizeAll(w.q, into: data + o.q); dequantizeAll(w.k, into: data + o.k); dequantizeAll(w.v, into: data + o.v)
            dequantizeAll(w.o, into: data + o.o); dequantizeAll(w.gate, into: data + o.gate)
            dequantizeAll(w.up, into: data + o.up); dequantizeAll(w.down, into: data + o.down)
        }
        (data + finalNorm).update(from: model.finalNorm, count: model.finalNorm.count)
        if !tied { dequantizeAll(model.output, into: data + output) }
    }

    deinit { data.deallocate() }

    /// Zeros of the same layout (a gradient or optimizer-moment buffer).
    public func zerosLike() -> LlamaParameters {
        let z = LlamaParameters(config: config, tiedEmbeddings: tiedEmbeddings)
        z.ropeFactors = ropeFactors
        return z
    }

    /// A copy of the values.
    public func clone() -> LlamaParameters {
        let c = zerosLike()
        c.data.update(from: data, count: count)
        return c
    }

    public func zero() { data.update(repeating: 0, count: count) }

    /// A copy whose output head is its own matrix, initialised from the (shared) embedding.
    public func untied() -> LlamaParameters {
        guard tiedEmbeddings else { return clone() }
        let c = LlamaParameters(config: config, tiedEmbeddings: false)
        c.ropeFactors = ropeFactors
        c.data.update(from: data, count: count)
        (c.data + c.output).update(from: data + embedding, count: config.vocabularySize * config.hiddenSize)
        return c
    }

    public var buffer: UnsafeMutableBufferPointer<Float> { UnsafeMutableBufferPointer(start: data, count: count) }

    /// The tensor named `name` (Hugging Face or GGUF name).
    public func tensor(_ name: String) -> Tensor? { tensors.first { $0.name == name || $0.ggufName == name } }

    /// The values of a tensor.
    public func values(_ t: Tensor) -> UnsafeMutableBufferPointer<Float> {
        UnsafeMutableBufferPointer(start: data + t.offset, count: t.count)
    }

    /// Global L2 norm.
    public func norm() -> Double { ck_train_sum_squares(data, Int64(count)).squareRoot() }

    /// Largest |a - b| over all elements.
    public func maxAbsDifference(_ other: LlamaParameters) -> Float {
        precondition(other.count == count)
        var m: Float = 0
        for i in 0..<count { m = max(m, abs(data[i] - other.data[i])) }
        return m
    }
}

/// How tokens attend within a sequence (P = the prompt's length, i = the query's position, j = a key's).
public enum AttentionMask: String, Sendable, CaseIterable {
    /// Each token sees itself and earlier tokens (j <= i).
    case causal
    /// Prefix-LM: the prompt's tokens see the whole prompt (bidirectional, j < P); response tokens are causal.
    case prefix
    /// Half the heads read forward, half backward. Query heads h < H/2 are causal (j <= i). Heads h >= H/2 read the
    /// prompt right to left: a prompt token sees the prompt from itself on (i <= j < P), a response token is causal.
    /// No token ever sees a key after max(i, P - 1), so no scored (response) token sees what follows it.
    case mixed
    /// Every token sees the whole sequence. Not for language-model training: each token would see its target.
    case bidirectional

    /// Whether a token at or after the prompt's last position sees only itself and earlier tokens, so that the
    /// next-token loss over the response cannot read its targets (false only for `.bidirectional`).
    public var isCausalOverResponse: Bool { self != .bidirectional }

    /// Whether prompt tokens see later prompt tokens (so that scoring the prompt would leak its targets).
    public var readsPromptAhead: Bool { self != .causal }
}

/// Summed loss and scored-token count of one sequence.
public struct SequenceLoss: Sendable, Equatable {
    public var sumLoss: Double
    public var scoredTokens: Int
    public init(sumLoss: Double = 0, scoredTokens: Int = 0) { self.sumLoss = sumLoss; self.scoredTokens = scoredTokens }
}

/// The loss of a batch: per sequence, and the mean over all scored tokens (Hugging Face's convention).
public struct BatchLoss: Sendable, Equatable {
    public var sequences: [SequenceLoss]
    public var sumLoss: Double { sequences.reduce(0) { $0 + $1.sumLoss } }
    public var scoredTokens: Int { sequences.reduce(0) { $0 + $1.scoredTokens } }
    public var meanLoss: Double { scoredTokens > 0 ? sumLoss / Double(scoredTokens) : 0 }
}


extension DecoderModel {
    /// A model that runs `parameters` (fp32, in place: the model keeps them alive and sees later changes to their
    /// matrices; norm weights and biases are copied now).
    public convenience init(parameters P: DecoderParameters, pool: ThreadPool = .shared) {
        let cfg = P.config
        let (C, F, V) = (cfg.hiddenSize, cfg.intermediateSize, cfg.vocabularySize)
        let qDim = cfg.headCount * cfg.headDim, kvDim = cfg.kvHeadCount * cfg.headDim
        func m(_ o: Int, _ rows: Int, _ cols: Int) -> WeightMatrix {
            WeightMatrix(dtype: .f32, data: UnsafeRawPointer(P.data + o), rows: rows, cols: cols)
        }
        func v(_ o: Int, _ count: Int) -> [Float] { Array(UnsafeBufferPointer(start: P.data + o, count: count)) }
        func ov(_ o: Int?, _ count: Int) -> [Float]? { o.map { v($0, count) } }
        let layers = P.layers.map { o in
            DecoderLayerWeights(attnNorm: v(o.attnNorm, C), q: m(o.q, qDim, C), k: m(o.k, kvDim, C), v: m(o.v, kvDim, C),
                                o: m(o.o, C, qDim), mlpNorm: v(o.mlpNorm, C), gate: m(o.gate, F, C), up: m(o.up, F, C),
                                down: m(o.down, C, F), qBias: ov(o.qBias, qDim), kBias: ov(o.kBias, kvDim), vBias: ov(o.vBias, kvDim),
                                qNorm: ov(o.qNorm, cfg.headDim), kNorm: ov(o.kNorm, cfg.headDim),
                                postAttnNorm: ov(o.postAttnNorm, C), postMlpNorm: ov(o.postMlpNorm, C))
        }
        self.init(config: cfg, precision: .reference, pool: pool, embedding: m(P.embedding, V, C), layers: layers,
                  finalNorm: v(P.finalNorm, C), output: m(P.output, V, C), ropeFactors: P.ropeFactors, storage: P, owned: [])
    }
}
