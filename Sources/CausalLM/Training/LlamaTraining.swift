import Foundation
import CausalKernels
import CCausalKernels

// Full fine-tuning of a LLaMA model in fp32.
//
// Parameters live in one flat fp32 buffer (`LlamaParameters`), in GGUF's row layout: Q/K rows are in llama.cpp's
// permuted order, so RoPE rotates adjacent pairs, exactly as `LlamaModel` runs (scores, losses and gradient norms
// equal Hugging Face's; checkpoints undo the permutation when they write HF tensors). Gradients use a second buffer
// of the same layout, so the optimizer and the norm are flat loops.
//
// A step runs a ragged batch: every sequence's tokens are rows of one (n, C) matrix, no padding; attention stays
// within each sequence. The forward saves its activations per layer (`LlamaLayerActivations`), the backward walks
// the layers in reverse with the per-layer backward functions of `TrainingOps`. Logits are computed only for rows
// that have a target (in chunks), so the (n, V) matrix never exists. The loss is Hugging Face's: cross-entropy of
// position t against token t+1, labels of -100 ignored, mean over all scored tokens of the batch.

/// fp32 parameters (or gradients) of a LLaMA model in one flat buffer.
public final class LlamaParameters: @unchecked Sendable {
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
        /// Matrices get weight decay; norm weights do not.
        public var decays: Bool { shape.count == 2 }
        /// Q or K projection (rows permuted in GGUF's layout relative to HF's); the head count of that permutation.
        public let permutedHeads: Int?
    }

    struct LayerOffsets { let attnNorm, q, k, v, o, mlpNorm, gate, up, down: Int }

    public let config: LlamaConfig
    /// The output head shares the embedding matrix.
    public let tiedEmbeddings: Bool
    public let tensors: [Tensor]
    public let count: Int
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
        func add(_ name: String, _ gguf: String, _ shape: [Int], permuted: Int? = nil) -> Int {
            tensors.append(Tensor(name: name, ggufName: gguf, shape: shape, offset: offset, permutedHeads: permuted))
            defer { offset += shape.reduce(1, *) }
            return offset
        }
        embedding = add("model.embed_tokens.weight", "token_embd.weight", [V, C])
        layers = (0..<config.layerCount).map { l in
            let p = "model.layers.\(l).", g = "blk.\(l)."
            return LayerOffsets(
                attnNorm: add(p + "input_layernorm.weight", g + "attn_norm.weight", [C]),
                q: add(p + "self_attn.q_proj.weight", g + "attn_q.weight", [qDim, C], permuted: config.headCount),
                k: add(p + "self_attn.k_proj.weight", g + "attn_k.weight", [kvDim, C], permuted: config.kvHeadCount),
                v: add(p + "self_attn.v_proj.weight", g + "attn_v.weight", [kvDim, C]),
                o: add(p + "self_attn.o_proj.weight", g + "attn_output.weight", [C, qDim]),
                mlpNorm: add(p + "post_attention_layernorm.weight", g + "ffn_norm.weight", [C]),
                gate: add(p + "mlp.gate_proj.weight", g + "ffn_gate.weight", [F, C]),
                up: add(p + "mlp.up_proj.weight", g + "ffn_up.weight", [F, C]),
                down: add(p + "mlp.down_proj.weight", g + "ffn_down.weight", [C, F]))
        }
        finalNorm = add("model.norm.weight", "output_norm.weight", [C])
        output = tiedEmbeddings ? embedding : add("lm_head.weight", "output.weight", [V, C])
        self.tensors = tensors
        count = offset
        data = .allocate(capacity: max(offset, 1))
        data.initialize(repeating: 0, count: max(offset, 1))
    }

    /// The model's weights dequantized to fp32 (GGUF layout kept).
    public convenience init(model: LlamaModel) {
        let tied = model.output.data == model.embedding.data
        self.init(config: model.config, tiedEmbeddings: tied)
        dequantizeAll(model.embedding, into: data + embedding)
        for (l, w) in model.layers.enumerated() {
            let o = layers[l]
            (data + o.attnNorm).update(from: w.attnNorm, count: w.attnNorm.count)
            (data + o.mlpNorm).update(from: w.mlpNorm, count: w.mlpNorm.count)
            dequantizeAll(w.q, into: data + o.q); dequantizeAll(w.k, into: data + o.k); dequantizeAll(w.v, into: data + o.v)
            dequantizeAll(w.o, into: data + o.o); dequantizeAll(w.gate, into: data + o.gate)
            dequantizeAll(w.up, into: data + o.up); dequantizeAll(w.down, into: data + o.down)
        }
        (data + finalNorm).update(from: model.finalNorm, count: model.finalNorm.count)
        if !tied { dequantizeAll(model.output, into: data + output) }
    }

    deinit { data.deallocate() }

    /// Zeros of the same layout (a gradient or optimizer-moment buffer).
    public func zerosLike() -> LlamaParameters { LlamaParameters(config: config, tiedEmbeddings: tiedEmbeddings) }

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

/// Saved activations of one decoder block (rows = tokens of the batch).
struct LlamaLayerActivations {
    let input: FloatBuffer       // (n, C) residual stream entering the block
    let attnRstd: FloatBuffer    // (n)
    let attnIn: FloatBuffer      // (n, C) RMSNorm output, input of Q/K/V
    let q: FloatBuffer           // (n, H*D) after RoPE
    let k: FloatBuffer           // (n, Hkv*D) after RoPE
    let v: FloatBuffer           // (n, Hkv*D)
    let attn: FloatBuffer        // (n, H*D) attention output, input of O
    let lse: FloatBuffer         // (n, H) log-sum-exp of each row's scores
    let mid: FloatBuffer         // (n, C) residual stream after attention
    let mlpRstd: FloatBuffer     // (n)
    let mlpIn: FloatBuffer       // (n, C) RMSNorm output, input of gate/up
    let gate: FloatBuffer        // (n, F) before SiLU
    let up: FloatBuffer          // (n, F)
    let hidden: FloatBuffer      // (n, F) silu(gate) * up, input of down
}

/// Everything the backward needs from a forward over one batch.
struct LlamaActivations {
    let n: Int
    let tokens: [Int]
    let targets: [Int]              // per row, -100 where unscored
    let rowSequence: [Int]          // per row, its sequence in the batch
    let sequences: [SequenceSpan]
    let mask: AttentionMask
    let cos: [Float], sin: [Float], negSin: [Float]
    let layers: [LlamaLayerActivations]
    let finalInput: FloatBuffer     // (n, C)
    let finalRstd: FloatBuffer      // (n)
    let finalOut: FloatBuffer       // (n, C) input of the head
}

/// Forward, backward and loss of a LLaMA model over ragged batches of `SFTExample`s.
public final class LlamaTrainer {
    public let parameters: LlamaParameters
    /// Gradients, accumulated by `forwardBackward` until `zeroGradients()`.
    public let gradients: LlamaParameters
    public var attention: AttentionMask
    public let pool: ThreadPool
    /// Scored rows per head/loss chunk (bounds the logits scratch to chunk × V floats).
    public var headChunk = 64
    /// As torch's `nn.Embedding(padding_idx:)`, which Hugging Face's LLaMA builds with `config.pad_token_id`: the
    /// embedding lookup adds no gradient to this token's row (a tied output head still does). nil: every row learns.
    public var paddingTokenID: Int?

    public init(parameters: LlamaParameters, attention: AttentionMask = .causal, pool: ThreadPool = .shared) {
        self.parameters = parameters
        self.gradients = parameters.zerosLike()
        self.attention = attention
        self.pool = pool
    }

    public var config: LlamaConfig { parameters.config }

    public func zeroGradients() { gradients.zero() }

    /// Global L2 norm of the gradients.
    public func gradientNorm() -> Double { gradients.norm() }

    /// The loss of a batch (no gradients).
    public func loss(_ batch: [SFTExample]) throws -> BatchLoss {
        let acts = try forward(batch)
        return head(acts, lossScale: 0, backward: nil)
    }

    /// Forward and backward over a batch. Gradients are added to `gradients`, as the gradient of
    /// `lossScale × (summed loss)`; the default scale 1/(scored tokens of this batch) makes it the gradient of the
    /// batch's mean loss. For gradient accumulation pass 1/(scored tokens of the whole step) to every micro-batch.
    @discardableResult
    public func forwardBackward(_ batch: [SFTExample], lossScale: Double? = nil) throws -> BatchLoss {
        let acts = try forward(batch)
        let scored = acts.targets.reduce(0) { $0 + ($1 == ignoredLabel ? 0 : 1) }
        let scale = lossScale ?? (scored > 0 ? 1 / Double(scored) : 0)
        let dFinal = FloatBuffer(acts.n * config.hiddenSize)
        let loss = head(acts, lossScale: Float(scale), backward: dFinal)
        backward(acts, dFinalOut: dFinal)
        return loss
    }

    // MARK: Forward

    func forward(_ batch: [SFTExample]) throws -> LlamaActivations {
        let cfg = config, P = parameters
        let (C, F, V) = (cfg.hiddenSize, cfg.intermediateSize, cfg.vocabularySize)
        let (H, Hkv, D) = (cfg.headCount, cfg.kvHeadCount, cfg.headDim)
        let qDim = H * D, kvDim = Hkv * D
        let eps = Float(cfg.rmsNormEps)

        guard attention.isCausalOverResponse else {
            throw CausalError.invalidArgument("attention '\(attention.rawValue)' lets every token see the token it is trained to predict; it cannot train or score a causal language model (use causal, prefix or mixed)")
        }
        var tokens: [Int] = [], targets: [Int] = [], positions: [Int] = [], rowSequence: [Int] = []
        var spans: [SequenceSpan] = []
        for (b, ex) in batch.enumerated() {
            guard !ex.tokens.isEmpty else { throw CausalError.invalidArgument("sequence \(b) of the batch is empty") }
            for t in ex.tokens where t < 0 || t >= V { throw CausalError.badTokenID(id: t, vocabularySize: V) }
            let tg = ex.targets
            for t in tg where t != ignoredLabel && (t < 0 || t >= V) { throw CausalError.badTokenID(id: t, vocabularySize: V) }
            spans.append(SequenceSpan(start: tokens.count, length: ex.tokens.count, prefix: ex.promptLength))
            tokens += ex.tokens; targets += tg
            positions += Array(0..<ex.tokens.count)
            rowSequence += Array(repeating: b, count: ex.tokens.count)
        }
        let n = tokens.count
        guard n > 0 else { throw CausalError.invalidArgument("empty batch") }
        let rope = TrainingOps.ropeTables(positions: positions, ropeDim: cfg.ropeDim, theta: cfg.ropeTheta)
        let negSin = rope.sin.map { -$0 }

        let x0 = FloatBuffer(n * C)
        TrainingOps.embeddingForward(tokens: tokens, table: P.data + P.embedding, dim: C, out: x0.p)
        var x = x0
        var layerActs: [LlamaLayerActivations] = []
        for o in P.layers {
            let a = LlamaLayerActivations(
                input: x, attnRstd: FloatBuffer(n), attnIn: FloatBuffer(n * C), q: FloatBuffer(n * qDim),
                k: FloatBuffer(n * kvDim), v: FloatBuffer(n * kvDim), attn: FloatBuffer(n * qDim), lse: FloatBuffer(n * H),
                mid: FloatBuffer(n * C), mlpRstd: FloatBuffer(n), mlpIn: FloatBuffer(n * C), gate: FloatBuffer(n * F),
                up: FloatBuffer(n * F), hidden: FloatBuffer(n * F))
            let w = P.data
            // Attention block.
            TrainingOps.rmsnormForward(x: x.p, weight: w + o.attnNorm, out: a.attnIn.p, rstd: a.attnRstd.p, rows: n, dim: C, eps: eps)
            TrainingOps.linearForward(x: a.attnIn.p, weight: w + o.q, rows: n, inDim: C, outDim: qDim, out: a.q.p, pool: pool)
            TrainingOps.linearForward(x: a.attnIn.p, weight: w + o.k, rows: n, inDim: C, outDim: kvDim, out: a.k.p, pool: pool)
            TrainingOps.linearForward(x: a.attnIn.p, weight: w + o.v, rows: n, inDim: C, outDim: kvDim, out: a.v.p, pool: pool)
            rope.cos.withUnsafeBufferPointer { cp in
                rope.sin.withUnsafeBufferPointer { sp in
                    TrainingOps.ropeForward(a.q.p, rows: n, heads: H, headDim: D, ropeDim: cfg.ropeDim, cos: cp.baseAddress!, sin: sp.baseAddress!)
                    TrainingOps.ropeForward(a.k.p, rows: n, heads: Hkv, headDim: D, ropeDim: cfg.ropeDim, cos: cp.baseAddress!, sin: sp.baseAddress!)
                }
            }
            TrainingOps.attentionForward(q: a.q.p, k: a.k.p, v: a.v.p, sequences: spans, mask: attention, heads: H, kvHeads: Hkv, headDim: D,
                                         out: a.attn.p, lse: a.lse.p, pool: pool)
            TrainingOps.linearForward(x: a.attn.p, weight: w + o.o, rows: n, inDim: qDim, outDim: C, out: a.mid.p, pool: pool)
            ck_add(a.mid.p, x.p, Int64(n * C))
            // MLP block.
            TrainingOps.rmsnormForward(x: a.mid.p, weight: w + o.mlpNorm, out: a.mlpIn.p, rstd: a.mlpRstd.p, rows: n, dim: C, eps: eps)
            TrainingOps.linearForward(x: a.mlpIn.p, weight: w + o.gate, rows: n, inDim: C, outDim: F, out: a.gate.p, pool: pool)
            TrainingOps.linearForward(x: a.mlpIn.p, weight: w + o.up, rows: n, inDim: C, outDim: F, out: a.up.p, pool: pool)
            TrainingOps.swigluForward(gate: a.gate.p, up: a.up.p, out: a.hidden.p, count: n * F, pool: pool)
            let next = FloatBuffer(n * C)
            TrainingOps.linearForward(x: a.hidden.p, weight: w + o.down, rows: n, inDim: F, outDim: C, out: next.p, pool: pool)
            ck_add(next.p, a.mid.p, Int64(n * C))
            layerActs.append(a)
            x = next
        }
        let finalRstd = FloatBuffer(n), finalOut = FloatBuffer(n * C)
        TrainingOps.rmsnormForward(x: x.p, weight: P.data + P.finalNorm, out: finalOut.p, rstd: finalRstd.p, rows: n, dim: C, eps: eps)
        return LlamaActivations(n: n, tokens: tokens, targets: targets, rowSequence: rowSequence, sequences: spans,
                                mask: attention, cos: rope.cos, sin: rope.sin, negSin: negSin, layers: layerActs, finalInput: x,
                                finalRstd: finalRstd, finalOut: finalOut)
    }

    /// Output head and cross-entropy over the scored rows, in chunks. With `backward`, writes the gradient of the
    /// head's input rows there and adds the head's weight gradient.
    func head(_ a: LlamaActivations, lossScale: Float, backward dOut: FloatBuffer?) -> BatchLoss {
        let cfg = config, P = parameters
        let (C, V) = (cfg.hiddenSize, cfg.vocabularySize)
        var losses = [SequenceLoss](repeating: SequenceLoss(), count: a.sequences.count)
        let scoredRows = (0..<a.n).filter { a.targets[$0] != ignoredLabel }
        guard !scoredRows.isEmpty else { return BatchLoss(sequences: losses) }
        let chunk = max(1, headChunk)
        let xs = FloatBuffer(min(chunk, scoredRows.count) * C)
        let logits = FloatBuffer(min(chunk, scoredRows.count) * V)
        let dxs = FloatBuffer(min(chunk, scoredRows.count) * C)
        let W = P.data + P.output
        for lo in stride(from: 0, to: scoredRows.count, by: chunk) {
            let rows = Array(scoredRows[lo..<min(lo + chunk, scoredRows.count)])
            let m = rows.count
            for (i, r) in rows.enumerated() { (xs.p + i * C).update(from: a.finalOut.p + r * C, count: C) }
            TrainingOps.linearForward(x: xs.p, weight: W, rows: m, inDim: C, outDim: V, out: logits.p, pool: pool)
            let l = TrainingOps.crossEntropy(logits: logits.p, rows: m, vocab: V, targets: rows.map { a.targets[$0] },
                                             scale: lossScale, pool: pool)
            for (i, r) in rows.enumerated() {
                losses[a.rowSequence[r]].sumLoss += l[i]
                losses[a.rowSequence[r]].scoredTokens += 1
            }
            guard let dOut else { continue }
            TrainingOps.linearBackward(dOut: logits.p, x: xs.p, weight: W, rows: m, inDim: C, outDim: V, dx: dxs.p,
                                       dWeight: gradients.data + P.output, pool: pool)
            for (i, r) in rows.enumerated() { (dOut.p + r * C).update(from: dxs.p + i * C, count: C) }
        }
        return BatchLoss(sequences: losses)
    }

    // MARK: Backward

    func backward(_ a: LlamaActivations, dFinalOut: FloatBuffer) {
        let cfg = config, P = parameters, G = gradients
        let (C, F) = (cfg.hiddenSize, cfg.intermediateSize)
        let (H, Hkv, D) = (cfg.headCount, cfg.kvHeadCount, cfg.headDim)
        let qDim = H * D, kvDim = Hkv * D
        let n = a.n
        let w = P.data, g = G.data

        let dx = FloatBuffer(n * C)   // gradient of the residual stream, walking down
        TrainingOps.rmsnormBackward(dOut: dFinalOut.p, x: a.finalInput.p, weight: w + P.finalNorm, rstd: a.finalRstd.p,
                                    dx: dx.p, dWeight: g + P.finalNorm, rows: n, dim: C)
        let dF1 = FloatBuffer(n * F), dF2 = FloatBuffer(n * F), dF3 = FloatBuffer(n * F)
        let dC = FloatBuffer(n * C), dQ = FloatBuffer(n * qDim), dAtt = FloatBuffer(n * qDim)
        let dK = FloatBuffer(n * kvDim), dV = FloatBuffer(n * kvDim)
        for (l, o) in P.layers.enumerated().reversed() {
            let s = a.layers[l]
            // MLP: out = mid + down(silu(gate(xn)) * up(xn)), xn = rmsnorm(mid).
            TrainingOps.linearBackward(dOut: dx.p, x: s.hidden.p, weight: w + o.down, rows: n, inDim: F, outDim: C,
                                       dx: dF1.p, dWeight: g + o.down, pool: pool)
            TrainingOps.swigluBackward(dOut: dF1.p, gate: s.gate.p, up: s.up.p, dGate: dF2.p, dUp: dF3.p, count: n * F, pool: pool)
            TrainingOps.linearBackward(dOut: dF2.p, x: s.mlpIn.p, weight: w + o.gate, rows: n, inDim: C, outDim: F,
                                       dx: dC.p, dWeight: g + o.gate, pool: pool)
            TrainingOps.linearBackward(dOut: dF3.p, x: s.mlpIn.p, weight: w + o.up, rows: n, inDim: C, outDim: F,
                                       dx: dC.p, accumulateDX: true, dWeight: g + o.up, pool: pool)
            TrainingOps.rmsnormBackward(dOut: dC.p, x: s.mid.p, weight: w + o.mlpNorm, rstd: s.mlpRstd.p, dx: dx.p,
                                        dWeight: g + o.mlpNorm, rows: n, dim: C)
            // Attention: mid = input + o(attention(rope(q(xn)), rope(k(xn)), v(xn))), xn = rmsnorm(input).
            TrainingOps.linearBackward(dOut: dx.p, x: s.attn.p, weight: w + o.o, rows: n, inDim: qDim, outDim: C,
                                       dx: dAtt.p, dWeight: g + o.o, pool: pool)
            TrainingOps.attentionBackward(q: s.q.p, k: s.k.p, v: s.v.p, out: s.attn.p, lse: s.lse.p, dOut: dAtt.p,
                                          sequences: a.sequences, mask: a.mask, heads: H, kvHeads: Hkv, headDim: D,
                                          dq: dQ.p, dk: dK.p, dv: dV.p, pool: pool)
            a.cos.withUnsafeBufferPointer { cp in
                a.negSin.withUnsafeBufferPointer { sp in
                    TrainingOps.ropeBackward(dQ.p, rows: n, heads: H, headDim: D, ropeDim: cfg.ropeDim, cos: cp.baseAddress!, negSin: sp.baseAddress!)
                    TrainingOps.ropeBackward(dK.p, rows: n, heads: Hkv, headDim: D, ropeDim: cfg.ropeDim, cos: cp.baseAddress!, negSin: sp.baseAddress!)
                }
            }
            TrainingOps.linearBackward(dOut: dQ.p, x: s.attnIn.p, weight: w + o.q, rows: n, inDim: C, outDim: qDim,
                                       dx: dC.p, dWeight: g + o.q, pool: pool)
            TrainingOps.linearBackward(dOut: dK.p, x: s.attnIn.p, weight: w + o.k, rows: n, inDim: C, outDim: kvDim,
                                       dx: dC.p, accumulateDX: true, dWeight: g + o.k, pool: pool)
            TrainingOps.linearBackward(dOut: dV.p, x: s.attnIn.p, weight: w + o.v, rows: n, inDim: C, outDim: kvDim,
                                       dx: dC.p, accumulateDX: true, dWeight: g + o.v, pool: pool)
            TrainingOps.rmsnormBackward(dOut: dC.p, x: s.input.p, weight: w + o.attnNorm, rstd: s.attnRstd.p, dx: dx.p,
                                        dWeight: g + o.attnNorm, rows: n, dim: C)
        }
        TrainingOps.embeddingBackward(tokens: a.tokens, dOut: dx.p, dim: C, dTable: g + P.embedding, paddingID: paddingTokenID)
    }
}

extension LlamaTrainer {
    /// The loss over a dataset, forward only, in ragged batches of at most `maxBatchTokens` tokens.
    public func evaluate(_ examples: [SFTExample], maxBatchTokens: Int = 4096) throws -> BatchLoss {
        var out = BatchLoss(sequences: [])
        for b in SFTDataset.pack(examples, maxTokens: maxBatchTokens) { out.sequences += try loss(b).sequences }
        return out
    }
}
