import Foundation
import CausalKernels
import CCausalKernels

// Masked-LM training of a BERT encoder (transformers' BertForMaskedLM), fp32, through the one training loop
// (TrainingLoop: plan, accumulation, clipping, AdamW schedule, eval, checkpoints, resume).
//
// Forward over a ragged batch (rows = every token of every sequence, no padding), Hugging Face's BertForMaskedLM:
//   x = LN_e(word[id] + type[0] + position[p])
//   per layer (post-LN):  x1 = LN_1(x + O·attn(Q x, K x, V x) + bO);  x = LN_2(x1 + W2·act(W1 x1 + b1) + b2)
//   head (scored rows only):  u = LN_h(act(D x + bD));  logits = u · Eᵀ + bias      (E: the word embeddings, tied)
//   loss = mean cross-entropy over the scored (masked) positions of the batch.
// Attention of one head over its own sequence, under `BertAttention`: bidirectional; or mixed, where a "forward" head
// reads keys j <= i (lower-triangular) and a "backward" head keys j >= i (upper-triangular), split by head (the first
// H/2 heads of every layer forward, the rest backward) or by layer (even layers forward, odd layers backward). The
// attention kernels are ck_train_attention_forward/backward (prefix = the sequence's length; reverse for backward
// heads). The arithmetic of the embeddings, LayerNorm (ck_train_layernorm_forward = ck_layernorm), linear layers
// (ck_matmul) and GELU is BertModel's, so a bidirectional forward gives the inference model's hidden states.
//
// Backward beside each forward, layers in reverse; bias gradients by column sums (ck_train_bias_backward), LayerNorm
// backward (ck_train_layernorm_backward), GELU backward (ck_t5_train_ff_backward's activation derivatives). The word
// embeddings get the lookups' gradient and, tied, the decoder's; the padding token's row gets none (padding_idx).
//
// Dimension legend: n = rows of the batch, m = scored rows, C = hidden, H = heads, D = head size, F = intermediate,
// V = vocabulary.

/// How a BERT's heads attend during masked-LM training.
public enum BertAttention: Sendable, Equatable {
    /// Every token sees its whole sequence (BERT).
    case bidirectional
    /// Half forward (lower-triangular: j <= i), half backward (upper-triangular: j >= i): by head within every
    /// layer, or by layer.
    case mixed(byLayer: Bool)

    /// Whether head `head` of `heads` in layer `layer` reads backward (keys j >= i); nil for bidirectional.
    public func readsBackward(layer: Int, head: Int, heads: Int) -> Bool? {
        switch self {
        case .bidirectional: return nil
        case let .mixed(byLayer): return byLayer ? layer % 2 == 1 : head >= heads / 2
        }
    }

    /// The name recorded in trainer_state.json: bidirectional, mixed (by head) or mixed-by-layer.
    public var name: String {
        switch self {
        case .bidirectional: return "bidirectional"
        case let .mixed(byLayer): return byLayer ? "mixed-by-layer" : "mixed"
        }
    }
}

/// One encoder layer's saved activations.
struct BertLayerActivations {
    let input: FloatBuffer      // (n, C) x entering the layer
    let q, k, v: FloatBuffer    // (n, C)
    let attn: FloatBuffer       // (n, C) attention output, input of O
    let lse: FloatBuffer        // (n, H)
    let r1: FloatBuffer         // (n, C) x + O·attn + bO: input of LN_1
    let mean1, rstd1: FloatBuffer
    let x1: FloatBuffer         // (n, C) LN_1 output
    let h: FloatBuffer          // (n, F) W1 x1 + b1, before the activation
    let g: FloatBuffer          // (n, F) act(h)
    let r2: FloatBuffer         // (n, C) input of LN_2
    let mean2, rstd2: FloatBuffer
}

struct BertActivations {
    let rows: Int
    let tokens: [Int]
    let positions: [Int]
    let targets: [Int]             // per row: label, -100 unscored
    let rowSequence: [Int]
    let spans: [SequenceSpan]
    let embedSum: FloatBuffer      // (n, C) word + type + position: input of LN_e
    let embedMean, embedRstd: FloatBuffer
    let layers: [BertLayerActivations]
    let output: FloatBuffer        // (n, C) last hidden states
}

/// Forward, backward and loss of a BERT masked-LM over ragged batches.
public final class BertMLMTrainer: StepTrainer {
    public typealias Example = MLMExample
    public let parameters: BertParameters
    /// Gradients, accumulated by `forwardBackward` until `zeroGradients()`.
    public let gradients: BertParameters
    public let attention: BertAttention
    /// Masks examples that carry no labels (seeded; see MLMData.swift).
    public var masker: MLMMasker?
    public let pool: ThreadPool
    /// Scored rows per head/loss chunk (bounds the logits scratch to chunk × V floats).
    public var headChunk = 64
    /// The optimizer step being run (what the masks of `accumulate` are drawn for).
    public private(set) var step = 0

    deinit { BufferCache.purge() }   // the recycled training buffers (TrainingOps.swift)

    public init(parameters: BertParameters, attention: BertAttention = .bidirectional, masker: MLMMasker? = nil,
                pool: ThreadPool = .shared) {
        self.parameters = parameters; self.gradients = parameters.zerosLike(); self.attention = attention
        self.masker = masker; self.pool = pool
    }

    public var config: BertConfig { parameters.config }
    public var flatGradients: any FlatParameters { gradients }
    public func zeroGradients() { gradients.zero() }
    public func startStep(_ step: Int) { self.step = step }

    /// The examples as the model reads them at `step` (-1: evaluation).
    public func masked(_ examples: [MLMExample], step: Int) throws -> [MaskedSequence] {
        try examples.map { ex in
            if var m = masker {
                // The evaluation masks (step -1) are seed 0's whatever the run's seed, as `causal eval` draws them:
                // runs of different seeds are scored on the same masked tokens.
                if step == -1 { m.seed = 0 }
                return m.mask(ex, step: step)
            }
            guard let labels = ex.labels else {
                throw CausalError.invalidArgument("example \(ex.index) has no labels and the trainer has no masker")
            }
            return MaskedSequence(input: ex.ids, labels: labels)
        }
    }

    /// Forward and backward over micro-batches: every micro-batch's loss scaled by 1/(scored tokens of all of them).
    public func accumulate(_ microBatches: [[MLMExample]]) throws -> BatchLoss {
        let batches = try microBatches.map { try masked($0, step: step) }
        let total = batches.reduce(0) { $0 + $1.reduce(0) { $0 + $1.scoredCount } }
        let scale = total > 0 ? 1 / Double(total) : 0
        var out = BatchLoss(sequences: [])
        for b in batches where !b.isEmpty { out.sequences += try forwardBackward(b, lossScale: scale).sequences }
        return out
    }

    /// The loss over examples, forward only, with the evaluation masks (step -1, seed 0), in batches of `maxBatchTokens`.
    public func evaluate(_ examples: [MLMExample], maxBatchTokens: Int) throws -> BatchLoss {
        var out = BatchLoss(sequences: [])
        for b in MLMDataset.pack(examples, maxTokens: maxBatchTokens) {
            out.sequences += try loss(try masked(b, step: -1)).sequences
        }
        return out
    }

    /// The loss of a batch (no gradients).
    public func loss(_ batch: [MaskedSequence]) throws -> BatchLoss {
        let a = try forward(batch, requireScored: false)
        return head(a, lossScale: 0, dOut: nil)
    }

    /// Forward and backward of a batch; gradients of `lossScale × summed loss` are added (default: 1/scored, the
    /// gradient of the batch's mean loss).
    @discardableResult
    public func forwardBackward(_ batch: [MaskedSequence], lossScale: Double? = nil) throws -> BatchLoss {
        let a = try forward(batch, requireScored: true)
        let scored = a.targets.reduce(0) { $0 + ($1 == ignoredLabel ? 0 : 1) }
        let scale = lossScale ?? (scored > 0 ? 1 / Double(scored) : 0)
        let dOut = FloatBuffer(a.rows * config.hiddenSize)
        let l = head(a, lossScale: Float(scale), dOut: dOut)
        backward(a, dOutput: dOut)
        return l
    }

    /// The logits of every position of every sequence ((T, V) row-major per sequence).
    public func logits(_ batch: [MaskedSequence]) throws -> [[Float]] {
        let a = try forward(batch, requireScored: false)
        let V = config.vocabularySize
        return a.spans.map { s in
            var out = [Float](repeating: 0, count: s.length * V)
            out.withUnsafeMutableBufferPointer { o in
                headForward(a.output.p, rows: Array(s.start..<(s.start + s.length)), logits: o.baseAddress!, saved: nil)
            }
            return out
        }
    }

    /// The last hidden states of every sequence ((T, C) per sequence).
    public func hiddenStates(_ batch: [MaskedSequence]) throws -> [[Float]] {
        let a = try forward(batch, requireScored: false)
        let C = config.hiddenSize
        return a.spans.map { Array(UnsafeBufferPointer(start: a.output.p + $0.start * C, count: $0.length * C)) }
    }

    // MARK: Forward

    func forward(_ batch: [MaskedSequence], requireScored: Bool) throws -> BertActivations {
        let cfg = config, P = parameters, w = parameters.data
        let (C, F, H, V) = (cfg.hiddenSize, cfg.intermediateSize, cfg.headCount, cfg.vocabularySize)
        guard !batch.isEmpty else { throw CausalError.invalidArgument("empty batch") }
        var tokens: [Int] = [], positions: [Int] = [], targets: [Int] = [], rowSeq: [Int] = [], spans: [SequenceSpan] = []
        for (b, s) in batch.enumerated() {
            guard !s.input.isEmpty else { throw CausalError.invalidArgument("sequence \(b) of the batch has no tokens") }
            guard s.input.count == s.labels.count else {
                throw CausalError.invalidArgument("sequence \(b) of the batch: \(s.labels.count) labels for \(s.input.count) tokens")
            }
            guard s.input.count <= cfg.maxPositions else {
                throw CausalError.invalidArgument("sequence \(b) of the batch has \(s.input.count) tokens; the model reads at most \(cfg.maxPositions) (max_position_embeddings)")
            }
            for t in s.input where t < 0 || t >= V { throw CausalError.badTokenID(id: t, vocabularySize: V) }
            for t in s.labels where t != ignoredLabel && (t < 0 || t >= V) { throw CausalError.badTokenID(id: t, vocabularySize: V) }
            spans.append(SequenceSpan(start: tokens.count, length: s.input.count, prefix: s.input.count))
            tokens += s.input
            positions += Array(0..<s.input.count)
            targets += s.labels
            rowSeq += Array(repeating: b, count: s.input.count)
        }
        if requireScored && !targets.contains(where: { $0 != ignoredLabel }) {
            throw CausalError.invalidArgument("no position of the batch is scored (every label is -100)")
        }
        let n = tokens.count
        let eps = Float(cfg.layerNormEps)

        // Embeddings: (word + type 0) + position, then LayerNorm (BertModel's order of additions).
        let sum = FloatBuffer(n * C), eMean = FloatBuffer(n), eRstd = FloatBuffer(n)
        var x = FloatBuffer(n * C)
        for r in 0..<n {
            let xr = sum.p + r * C
            xr.update(from: w + P.wordEmbeddings + tokens[r] * C, count: C)
            ck_add(xr, w + P.typeEmbeddings, Int64(C))
            ck_add(xr, w + P.positionEmbeddings + positions[r] * C, Int64(C))
        }
        ck_train_layernorm_forward(sum.p, w + P.embedNorm.weight, w + P.embedNorm.bias, x.p, eMean.p, eRstd.p, Int64(n), Int64(C), eps)

        var layers: [BertLayerActivations] = []
        for (l, o) in P.layers.enumerated() {
            let a = BertLayerActivations(input: x, q: FloatBuffer(n * C), k: FloatBuffer(n * C), v: FloatBuffer(n * C),
                                         attn: FloatBuffer(n * C), lse: FloatBuffer(n * H), r1: FloatBuffer(n * C),
                                         mean1: FloatBuffer(n), rstd1: FloatBuffer(n), x1: FloatBuffer(n * C),
                                         h: FloatBuffer(n * F), g: FloatBuffer(n * F), r2: FloatBuffer(n * C),
                                         mean2: FloatBuffer(n), rstd2: FloatBuffer(n))
            linear(x.p, o.q, rows: n, inDim: C, outDim: C, out: a.q.p)
            linear(x.p, o.k, rows: n, inDim: C, outDim: C, out: a.k.p)
            linear(x.p, o.v, rows: n, inDim: C, outDim: C, out: a.v.p)
            attentionForward(a, layer: l, spans: spans)
            linear(a.attn.p, o.attnOut, rows: n, inDim: C, outDim: C, out: a.r1.p)
            ck_add(a.r1.p, x.p, Int64(n * C))
            ck_train_layernorm_forward(a.r1.p, w + o.attnNorm.weight, w + o.attnNorm.bias, a.x1.p, a.mean1.p, a.rstd1.p,
                                       Int64(n), Int64(C), eps)
            linear(a.x1.p, o.up, rows: n, inDim: C, outDim: F, out: a.h.p)
            a.g.p.update(from: a.h.p, count: n * F)
            activate(a.g.p, n * F)
            linear(a.g.p, o.down, rows: n, inDim: F, outDim: C, out: a.r2.p)
            ck_add(a.r2.p, a.x1.p, Int64(n * C))
            let next = FloatBuffer(n * C)
            ck_train_layernorm_forward(a.r2.p, w + o.mlpNorm.weight, w + o.mlpNorm.bias, next.p, a.mean2.p, a.rstd2.p,
                                       Int64(n), Int64(C), eps)
            layers.append(a)
            x = next
        }
        return BertActivations(rows: n, tokens: tokens, positions: positions, targets: targets, rowSequence: rowSeq,
                               spans: spans, embedSum: sum, embedMean: eMean, embedRstd: eRstd, layers: layers, output: x)
    }

    /// y = x · Wᵀ + b (BertModel's matmul and bias kernels).
    func linear(_ x: UnsafePointer<Float>, _ o: BertParameters.Linear, rows: Int, inDim: Int, outDim: Int,
                out: UnsafeMutablePointer<Float>) {
        let w = parameters.data
        TrainingOps.linearForward(x: x, weight: w + o.weight, rows: rows, inDim: inDim, outDim: outDim, out: out, pool: pool)
        ck_add_bias(out, w + o.bias, Int64(rows), Int64(outDim))
    }

    func activate(_ x: UnsafeMutablePointer<Float>, _ count: Int) {
        let act = config.activation
        chunked(count) { lo, m in
            switch act {
            case .gelu: ck_gelu_erf(x + lo, Int64(m))
            case .geluTanh: ck_gelu_tanh(x + lo, Int64(m))
            case .relu: ck_relu(x + lo, Int64(m))
            }
        }
    }

    /// dPre = dOut · act'(pre) (overwritten).
    func activationBackward(dOut: UnsafePointer<Float>, pre: UnsafePointer<Float>, dPre: UnsafeMutablePointer<Float>, _ count: Int) {
        let kernel: Int32
        switch config.activation {
        case .gelu: kernel = Int32(CK_T5_ACT_GELU_ERF)
        case .geluTanh: kernel = Int32(CK_T5_ACT_GELU_TANH)
        case .relu: kernel = Int32(CK_T5_ACT_RELU)
        }
        chunked(count) { lo, m in ck_t5_train_ff_backward(kernel, dOut + lo, pre + lo, nil, dPre + lo, nil, Int64(m)) }
    }

    /// The kernel's (prefix, reverse) for a head: bidirectional = (len, false); forward = (0, false), causal;
    /// backward = (len, true): row i reads keys i..<len.
    func rule(layer: Int, head: Int, span: SequenceSpan) -> (prefix: Int, reverse: Bool) {
        switch attention.readsBackward(layer: layer, head: head, heads: config.headCount) {
        case nil: return (span.length, false)
        case false?: return (0, false)
        case true?: return (span.length, true)
        }
    }

    func attentionForward(_ a: BertLayerActivations, layer: Int, spans: [SequenceSpan]) {
        let (H, D, C) = (config.headCount, config.headDim, config.hiddenSize)
        let scale = 1 / Float(D).squareRoot()
        let (q, k, v, out, lse) = (a.q.p, a.k.p, a.v.p, a.attn.p, a.lse.p)
        pool.parallelFor(spans.count * H) { item in
            let s = spans[item / H], h = item % H
            let r = self.rule(layer: layer, head: h, span: s)
            withUnsafeTemporaryAllocation(of: Float.self, capacity: max(s.length, 1)) { scratch in
                let o = s.start * C + h * D
                ck_train_attention_forward(q + o, k + o, v + o, Int64(s.length), Int64(r.prefix), r.reverse ? 1 : 0,
                                           Int64(C), Int64(C), Int64(D), scale, out + o, lse + s.start * H + h, Int64(H),
                                           scratch.baseAddress!)
            }
        }
    }

    /// Overwrites dq, dk, dv.
    func attentionBackward(_ a: BertLayerActivations, layer: Int, spans: [SequenceSpan], dOut: UnsafePointer<Float>,
                           dq: UnsafeMutablePointer<Float>, dk: UnsafeMutablePointer<Float>, dv: UnsafeMutablePointer<Float>, rows n: Int) {
        let (H, D, C) = (config.headCount, config.headDim, config.hiddenSize)
        let scale = 1 / Float(D).squareRoot()
        dq.update(repeating: 0, count: n * C); dk.update(repeating: 0, count: n * C); dv.update(repeating: 0, count: n * C)
        let (q, k, v, out, lse) = (a.q.p, a.k.p, a.v.p, a.attn.p, a.lse.p)
        pool.parallelFor(spans.count * H) { item in
            let s = spans[item / H], h = item % H
            let r = self.rule(layer: layer, head: h, span: s)
            withUnsafeTemporaryAllocation(of: Float.self, capacity: max(2 * s.length, 1)) { scratch in
                let o = s.start * C + h * D
                ck_train_attention_backward(q + o, k + o, v + o, out + o, dOut + o, lse + s.start * H + h, Int64(H),
                                            Int64(s.length), Int64(r.prefix), r.reverse ? 1 : 0, Int64(C), Int64(C), Int64(D),
                                            scale, dq + o, dk + o, dv + o, scratch.baseAddress!)
            }
        }
    }

    // MARK: Head and loss

    /// Head activations of `rows`: t = D x + bD (pre-activation), ta = act(t), mean/rstd of LN_h, u = LN_h(ta).
    struct HeadSaved {
        let xs, t, ta, u: FloatBuffer
        let mean, rstd: FloatBuffer
    }

    /// logits (rows.count, V) of the given rows of `hidden`; saves the head's activations when `saved` is given.
    func headForward(_ hidden: UnsafePointer<Float>, rows: [Int], logits: UnsafeMutablePointer<Float>, saved: HeadSaved?) {
        let cfg = config, P = parameters, w = parameters.data
        let (C, V) = (cfg.hiddenSize, cfg.vocabularySize)
        let m = rows.count
        let s = saved ?? HeadSaved(xs: FloatBuffer(m * C), t: FloatBuffer(m * C), ta: FloatBuffer(m * C), u: FloatBuffer(m * C),
                                   mean: FloatBuffer(m), rstd: FloatBuffer(m))
        for (i, r) in rows.enumerated() { (s.xs.p + i * C).update(from: hidden + r * C, count: C) }
        linear(s.xs.p, P.headDense, rows: m, inDim: C, outDim: C, out: s.t.p)
        s.ta.p.update(from: s.t.p, count: m * C)
        activate(s.ta.p, m * C)
        ck_train_layernorm_forward(s.ta.p, w + P.headNorm.weight, w + P.headNorm.bias, s.u.p, s.mean.p, s.rstd.p,
                                   Int64(m), Int64(C), Float(cfg.layerNormEps))
        TrainingOps.linearForward(x: s.u.p, weight: w + P.decoder, rows: m, inDim: C, outDim: V, out: logits, pool: pool)
        ck_add_bias(logits, w + P.headBias, Int64(m), Int64(V))
    }

    /// Head and cross-entropy over the scored rows, in chunks; with `dOut`, writes the gradient of the last hidden
    /// states there (zero for unscored rows) and adds the head's gradients.
    func head(_ a: BertActivations, lossScale: Float, dOut: FloatBuffer?) -> BatchLoss {
        let cfg = config, P = parameters, w = parameters.data, g = gradients.data
        let (C, V) = (cfg.hiddenSize, cfg.vocabularySize)
        var losses = [SequenceLoss](repeating: SequenceLoss(), count: a.spans.count)
        let scored = (0..<a.rows).filter { a.targets[$0] != ignoredLabel }
        guard !scored.isEmpty else { return BatchLoss(sequences: losses) }
        let chunk = max(1, headChunk), m0 = min(chunk, scored.count)
        let logits = FloatBuffer(m0 * V)
        let saved = HeadSaved(xs: FloatBuffer(m0 * C), t: FloatBuffer(m0 * C), ta: FloatBuffer(m0 * C), u: FloatBuffer(m0 * C),
                              mean: FloatBuffer(m0), rstd: FloatBuffer(m0))
        let dU = FloatBuffer(m0 * C), dTa = FloatBuffer(m0 * C), dT = FloatBuffer(m0 * C), dXs = FloatBuffer(m0 * C)
        for lo in stride(from: 0, to: scored.count, by: chunk) {
            let rows = Array(scored[lo..<min(lo + chunk, scored.count)])
            let m = rows.count
            headForward(a.output.p, rows: rows, logits: logits.p, saved: saved)
            let l = TrainingOps.crossEntropy(logits: logits.p, rows: m, vocab: V, targets: rows.map { a.targets[$0] },
                                             scale: lossScale, pool: pool)
            for (i, r) in rows.enumerated() {
                losses[a.rowSequence[r]].sumLoss += l[i]
                losses[a.rowSequence[r]].scoredTokens += 1
            }
            guard let dOut else { continue }
            // logits = u·Eᵀ + bias
            ck_train_bias_backward(logits.p, g + P.headBias, Int64(m), Int64(V))
            TrainingOps.linearBackward(dOut: logits.p, x: saved.u.p, weight: w + P.decoder, rows: m, inDim: C, outDim: V,
                                       dx: dU.p, dWeight: g + P.decoder, pool: pool)
            ck_train_layernorm_backward(dU.p, saved.ta.p, w + P.headNorm.weight, saved.mean.p, saved.rstd.p, dTa.p,
                                        g + P.headNorm.weight, g + P.headNorm.bias, Int64(m), Int64(C), 0)
            activationBackward(dOut: dTa.p, pre: saved.t.p, dPre: dT.p, m * C)
            ck_train_bias_backward(dT.p, g + P.headDense.bias, Int64(m), Int64(C))
            TrainingOps.linearBackward(dOut: dT.p, x: saved.xs.p, weight: w + P.headDense.weight, rows: m, inDim: C, outDim: C,
                                       dx: dXs.p, dWeight: g + P.headDense.weight, pool: pool)
            for (i, r) in rows.enumerated() { (dOut.p + r * C).update(from: dXs.p + i * C, count: C) }
        }
        return BatchLoss(sequences: losses)
    }

    // MARK: Backward

    func backward(_ a: BertActivations, dOutput: FloatBuffer) {
        let cfg = config, P = parameters, w = parameters.data, g = gradients.data
        let (C, F) = (cfg.hiddenSize, cfg.intermediateSize)
        let n = a.rows
        let dx = dOutput                    // gradient of the current layer's output, walking down
        let dR = FloatBuffer(n * C), dX1 = FloatBuffer(n * C), dG = FloatBuffer(n * F), dH = FloatBuffer(n * F)
        let dAtt = FloatBuffer(n * C), dQ = FloatBuffer(n * C), dK = FloatBuffer(n * C), dV = FloatBuffer(n * C)
        for (l, o) in P.layers.enumerated().reversed() {
            let s = a.layers[l]
            // x_out = LN_2(r2), r2 = x1 + W2 g + b2
            ck_train_layernorm_backward(dx.p, s.r2.p, w + o.mlpNorm.weight, s.mean2.p, s.rstd2.p, dR.p,
                                        g + o.mlpNorm.weight, g + o.mlpNorm.bias, Int64(n), Int64(C), 0)
            ck_train_bias_backward(dR.p, g + o.down.bias, Int64(n), Int64(C))
            TrainingOps.linearBackward(dOut: dR.p, x: s.g.p, weight: w + o.down.weight, rows: n, inDim: F, outDim: C,
                                       dx: dG.p, dWeight: g + o.down.weight, pool: pool)
            activationBackward(dOut: dG.p, pre: s.h.p, dPre: dH.p, n * F)
            ck_train_bias_backward(dH.p, g + o.up.bias, Int64(n), Int64(F))
            dX1.p.update(from: dR.p, count: n * C)   // residual
            TrainingOps.linearBackward(dOut: dH.p, x: s.x1.p, weight: w + o.up.weight, rows: n, inDim: C, outDim: F,
                                       dx: dX1.p, accumulateDX: true, dWeight: g + o.up.weight, pool: pool)
            // x1 = LN_1(r1), r1 = x + O attn + bO
            ck_train_layernorm_backward(dX1.p, s.r1.p, w + o.attnNorm.weight, s.mean1.p, s.rstd1.p, dR.p,
                                        g + o.attnNorm.weight, g + o.attnNorm.bias, Int64(n), Int64(C), 0)
            ck_train_bias_backward(dR.p, g + o.attnOut.bias, Int64(n), Int64(C))
            TrainingOps.linearBackward(dOut: dR.p, x: s.attn.p, weight: w + o.attnOut.weight, rows: n, inDim: C, outDim: C,
                                       dx: dAtt.p, dWeight: g + o.attnOut.weight, pool: pool)
            attentionBackward(s, layer: l, spans: a.spans, dOut: dAtt.p, dq: dQ.p, dk: dK.p, dv: dV.p, rows: n)
            // dx (layer input) = dR (residual) + dQ Wq + dK Wk + dV Wv
            dx.p.update(from: dR.p, count: n * C)
            for (d, lin) in [(dQ, o.q), (dK, o.k), (dV, o.v)] {
                ck_train_bias_backward(d.p, g + lin.bias, Int64(n), Int64(C))
                TrainingOps.linearBackward(dOut: d.p, x: s.input.p, weight: w + lin.weight, rows: n, inDim: C, outDim: C,
                                           dx: dx.p, accumulateDX: true, dWeight: g + lin.weight, pool: pool)
            }
        }
        // Embeddings: LN_e, then the three lookups.
        ck_train_layernorm_backward(dx.p, a.embedSum.p, w + P.embedNorm.weight, a.embedMean.p, a.embedRstd.p, dR.p,
                                    g + P.embedNorm.weight, g + P.embedNorm.bias, Int64(n), Int64(C), 0)
        TrainingOps.embeddingBackward(tokens: a.tokens, dOut: dR.p, dim: C, dTable: g + P.wordEmbeddings,
                                      paddingID: parameters.architecture.padTokenID)
        TrainingOps.embeddingBackward(tokens: a.positions, dOut: dR.p, dim: C, dTable: g + P.positionEmbeddings)
        ck_train_bias_backward(dR.p, g + P.typeEmbeddings, Int64(n), Int64(C))   // every row reads type 0
    }

    private func chunked(_ count: Int, _ body: (Int, Int) -> Void) {
        let chunk = 1 << 16
        let k = (count + chunk - 1) / chunk
        if k <= 1 { body(0, count); return }
        pool.parallelFor(k) { c in body(c * chunk, min(chunk, count - c * chunk)) }
    }
}
