import Foundation
import CausalKernels
import CCausalKernels

// Training of the one decoder (DecoderConfig: LLaMA/SmolLM2, Llama 3.x, Qwen2/2.5, Qwen3, Gemma 3), three ways:
//   full fine-tuning   every parameter trainable, fp32 (`DecoderParameters`)
//   LoRA               a frozen fp32/f16/bf16 base (`DecoderModel`), trainable `LoRAAdapter` factors
//   QLoRA              the same with a quantized base (Q4_K, Q5_0, Q8_0, ...), left in its memory-mapped GGUF form:
//                      its products run through the inference kernels, the gradient to a layer's input flows
//                      through the weight dequantized block by block (never into it).
// One forward and one backward serve all three: a block's linear layers are `TrainLinear` views (a weight matrix of
// any type, its gradient when trainable, its bias, its LoRA slot), its norms `TrainVector`s.
//
// The block is the inference block (Decoder.swift, DecoderConfig's header):
//   xn = norm(x); q, k, v = xn·Wqᵀ (+b) (+lora), ...; [q, k = qkNorm per head]; rope; a = attention (mask, scale)
//   x' = x + [postAttnNorm](a·Woᵀ); mn = norm(x'); out = x' + [postMlpNorm](down(act(gate(mn)) ⊙ up(mn)))
// with the same RoPE frequencies (per layer: Gemma's local/global bases, Llama 3's factors), rotation style, scale
// and soft-cap. Each op has its backward beside it in TrainingOps / ck_train (llm.c's style).
//
// A step runs a ragged batch: every sequence's tokens are rows of one (n, C) matrix, no padding; attention stays
// within each sequence. So packing several short examples into one step is just listing them: each keeps its own
// positions (from 0) and reads only its own keys, and no mask matrix exists. Logits are computed only for rows that
// have a target, in chunks, so the (n, V) matrix never exists. The loss is Hugging Face's: cross-entropy of position
// t against token t+1, labels of -100 ignored, mean over all scored tokens of the batch.
//
// Activation checkpointing (`checkpointActivations`): the forward keeps only each block's input; the backward
// recomputes one block's activations just before its backward (LoRA dropout masks are seeded per step, layer and
// module, so the recomputation draws the same masks).

/// A linear layer as the trainer sees it: y = x·Wᵀ (+ b) (+ s·(drop(x)·Aᵀ)·Bᵀ).
struct TrainLinear {
    let weight: WeightMatrix                        // (out, in), any type
    let dWeight: UnsafeMutablePointer<Float>?       // (out, in) when trainable
    let bias: UnsafePointer<Float>?                 // (out)
    let dBias: UnsafeMutablePointer<Float>?
    let lora: LoRASlot?
    let target: LoRATarget
    /// A frozen fp32 weight's transpose (in, out), when the trainer keeps one: the forward then runs as the same
    /// accumulating product as the input gradient (`TrainingOps.gemm`), 20-35% faster per FLOP in a step than the
    /// inference kernel on these shapes (measured, docs/benchmarks.md).
    var transposed: UnsafePointer<Float>? = nil
    var inDim: Int { weight.cols }
    var outDim: Int { weight.rows }
}

/// A norm weight (or bias) vector and its gradient when trainable.
struct TrainVector {
    let p: UnsafePointer<Float>
    let d: UnsafeMutablePointer<Float>?
}

struct TrainLayer {
    let attnNorm: TrainVector
    let q, k, v, o: TrainLinear
    let qNorm, kNorm: TrainVector?
    let postAttnNorm: TrainVector?
    let mlpNorm: TrainVector
    let gate, up, down: TrainLinear
    let postMlpNorm: TrainVector?
}

/// What a LoRA layer keeps for its backward: t = drop(x)·Aᵀ (n, r) and the dropout mask (0 or 1/(1-p)), if any.
struct LoRASaved {
    let t: FloatBuffer
    let mask: FloatBuffer?
}

/// Saved activations of one decoder block (rows = tokens of the batch).
final class DecoderLayerActivations {
    let input: FloatBuffer                          // (n, C) residual stream entering the block
    let attnRstd: FloatBuffer, attnIn: FloatBuffer  // (n), (n, C)
    let q: FloatBuffer, k: FloatBuffer, v: FloatBuffer   // after QK-norm and RoPE
    var qPre: FloatBuffer?, qRstd: FloatBuffer?, kPre: FloatBuffer?, kRstd: FloatBuffer?   // QK-norm inputs
    let attn: FloatBuffer, lse: FloatBuffer         // (n, H*D), (n, H)
    var oPre: FloatBuffer?, oRstd: FloatBuffer?     // post-attention norm input
    let mid: FloatBuffer                            // (n, C) residual stream after attention
    let mlpRstd: FloatBuffer, mlpIn: FloatBuffer
    let gate: FloatBuffer, up: FloatBuffer, hidden: FloatBuffer   // (n, F)
    var downPre: FloatBuffer?, downRstd: FloatBuffer?
    var lora: [LoRATarget: LoRASaved] = [:]

    init(input: FloatBuffer, n: Int, C: Int, qDim: Int, kvDim: Int, H: Int, F: Int) {
        self.input = input
        // Every buffer is written whole by the forward before it is read (norms, products, attention).
        attnRstd = FloatBuffer(n, zeroed: false); attnIn = FloatBuffer(n * C, zeroed: false)
        q = FloatBuffer(n * qDim, zeroed: false); k = FloatBuffer(n * kvDim, zeroed: false); v = FloatBuffer(n * kvDim, zeroed: false)
        attn = FloatBuffer(n * qDim, zeroed: false); lse = FloatBuffer(n * H, zeroed: false)
        mid = FloatBuffer(n * C, zeroed: false); mlpRstd = FloatBuffer(n, zeroed: false); mlpIn = FloatBuffer(n * C, zeroed: false)
        gate = FloatBuffer(n * F, zeroed: false); up = FloatBuffer(n * F, zeroed: false); hidden = FloatBuffer(n * F, zeroed: false)
    }
}

/// A batch laid out as rows, with its RoPE tables.
struct TrainBatch {
    let n: Int
    let tokens: [Int]
    let targets: [Int]              // per row, -100 where unscored
    let rowSequence: [Int]          // per row, its sequence in the batch
    let sequences: [SequenceSpan]
    /// Per layer: index into `rope`.
    let ropeOfLayer: [Int]
    let rope: [(cos: [Float], sin: [Float], negSin: [Float])]
    /// Seed of this forward's dropout masks (nil: no dropout, as in evaluation).
    let dropoutSeed: UInt64?
}

/// Forward, backward and loss of a decoder over ragged batches of `SFTExample`s: full fine-tuning, LoRA or QLoRA.
public final class DecoderTrainer {
    public let config: DecoderConfig
    /// Full fine-tuning: the trainable parameters.
    public let parameters: DecoderParameters?
    /// LoRA / QLoRA: the frozen base model and the trainable adapter.
    public let base: DecoderModel?
    public let adapter: LoRAAdapter?
    /// Gradients of the trainable values (a `DecoderParameters` or a `LoRAAdapter`), accumulated by
    /// `forwardBackward` until `zeroGradients()`.
    public let gradients: any FlatParameters
    public var attention: AttentionMask
    public let pool: ThreadPool
    /// Scored rows per head/loss chunk (bounds the logits scratch to chunk × V floats). nil: as many as fit 128 MiB
    /// of logits (at least 64, at most 512): each chunk streams the whole output matrix twice (logits and the input
    /// gradient), 113 MB for SmolLM2 and 545 MB for Qwen2.5 in fp32, so fewer chunks read less memory. A row's
    /// logits, loss and input gradient do not depend on the chunk.
    public var headChunk: Int? = nil
    var headRows: Int { headChunk.map { max(1, $0) } ?? min(512, max(64, (128 << 20) / (4 * max(config.vocabularySize, 1)))) }
    /// As torch's `nn.Embedding(padding_idx:)`, which Hugging Face's LLaMA builds with `config.pad_token_id`: the
    /// embedding lookup adds no gradient to this token's row (a tied output head still does). nil: every row learns.
    public var paddingTokenID: Int?
    /// Keep only each block's input in the forward and recompute the block in the backward.
    public var checkpointActivations = false
    /// Seed of the LoRA dropout masks (each forward/backward draws new ones from it).
    public var dropoutSeed: UInt64 = 0

    let layers: [TrainLayer]
    let embedding: WeightMatrix
    let dEmbedding: UnsafeMutablePointer<Float>?
    let finalNorm: TrainVector
    let output: WeightMatrix
    let dOutput: UnsafeMutablePointer<Float>?
    let ropeFactors: [Float]?
    private let frozenVectors: FloatBuffer?   // a frozen base's norms and biases, copied to stable memory
    private var forwardCopies: [FloatBuffer] = []   // the transposed fp32 base weights (TrainLinear.transposed)
    private var passes: UInt64 = 0

    /// Full fine-tuning of `parameters`.
    public init(parameters: DecoderParameters, attention: AttentionMask = .causal, pool: ThreadPool = .shared) {
        _ = TrainingOps.keepHeap
        let P = parameters, G = parameters.zerosLike(), cfg = parameters.config
        self.config = cfg; self.parameters = P; self.base = nil; self.adapter = nil; self.gradients = G
        self.attention = attention; self.pool = pool
        self.ropeFactors = P.ropeFactors
        self.frozenVectors = nil
        func matrix(_ o: Int, _ rows: Int, _ cols: Int) -> WeightMatrix {
            WeightMatrix(dtype: .f32, data: UnsafeRawPointer(P.data + o), rows: rows, cols: cols)
        }
        func vec(_ o: Int) -> TrainVector { TrainVector(p: P.data + o, d: G.data + o) }
        let (C, F, V) = (cfg.hiddenSize, cfg.intermediateSize, cfg.vocabularySize)
        let qDim = cfg.headCount * cfg.headDim, kvDim = cfg.kvHeadCount * cfg.headDim
        func linear(_ o: Int, _ rows: Int, _ cols: Int, _ t: LoRATarget, bias: Int? = nil) -> TrainLinear {
            TrainLinear(weight: matrix(o, rows, cols), dWeight: G.data + o, bias: bias.map { UnsafePointer(P.data + $0) },
                        dBias: bias.map { G.data + $0 }, lora: nil, target: t)
        }
        layers = P.layers.map { o in
            TrainLayer(attnNorm: vec(o.attnNorm),
                       q: linear(o.q, qDim, C, .q, bias: o.qBias), k: linear(o.k, kvDim, C, .k, bias: o.kBias),
                       v: linear(o.v, kvDim, C, .v, bias: o.vBias), o: linear(o.o, C, qDim, .o),
                       qNorm: o.qNorm.map(vec), kNorm: o.kNorm.map(vec), postAttnNorm: o.postAttnNorm.map(vec),
                       mlpNorm: vec(o.mlpNorm),
                       gate: linear(o.gate, F, C, .gate), up: linear(o.up, F, C, .up), down: linear(o.down, C, F, .down),
                       postMlpNorm: o.postMlpNorm.map(vec))
        }
        embedding = matrix(P.embedding, V, C)
        dEmbedding = G.data + P.embedding
        finalNorm = vec(P.finalNorm)
        output = matrix(P.output, V, C)
        dOutput = G.data + P.output
    }

    /// LoRA (QLoRA when `base` is quantized): `base` stays frozen, only `adapter`'s factors train. Without an
    /// adapter, the frozen base alone (for `loss` and `evaluate`; nothing trains).
    /// `forwardCopyLimit`: with an fp32 base whose layer weights take at most this many bytes, the trainer keeps a
    /// transposed copy of each (the same bytes again) and runs the forward through it (`TrainLinear.transposed`);
    /// 0 turns the copies off. Quantized and f16/bf16 bases never get one (QLoRA keeps the file's weights only).
    public init(base: DecoderModel, adapter: LoRAAdapter?, attention: AttentionMask = .causal, pool: ThreadPool? = nil,
                forwardCopyLimit: Int = 2 << 30) throws {
        _ = TrainingOps.keepHeap
        if let adapter, adapter.model != base.config {
            throw CausalError.invalidArgument("the LoRA adapter is shaped for a different model configuration than the base (\(base.config.architecture))")
        }
        let cfg = base.config
        self.config = cfg; self.parameters = nil; self.base = base; self.adapter = adapter
        self.gradients = try adapter?.zerosLike() ?? LoRAAdapter(config: LoRAConfig(rank: 1, targets: [.q], layers: []), model: cfg)
        self.attention = attention; self.pool = pool ?? base.pool
        self.ropeFactors = base.ropeFactors
        // Norm weights and biases of the frozen base, in one stable buffer.
        var vectors: [[Float]] = []
        func keep(_ v: [Float]?) -> Int? {
            guard let v else { return nil }
            vectors.append(v)
            return vectors.count - 1
        }
        struct Idx { let attnNorm, mlpNorm: Int; let qb, kb, vb, qn, kn, pa, pm: Int? }
        let idx = base.layers.map { w in
            Idx(attnNorm: keep(w.attnNorm)!, mlpNorm: keep(w.mlpNorm)!, qb: keep(w.qBias), kb: keep(w.kBias), vb: keep(w.vBias),
                qn: keep(w.qNorm), kn: keep(w.kNorm), pa: keep(w.postAttnNorm), pm: keep(w.postMlpNorm))
        }
        let finalIndex = keep(base.finalNorm)!
        var offsets: [Int] = [], total = 0
        for v in vectors { offsets.append(total); total += v.count }
        let buf = FloatBuffer(total)
        for (i, v) in vectors.enumerated() { (buf.p + offsets[i]).update(from: v, count: v.count) }
        frozenVectors = buf
        func vec(_ i: Int) -> TrainVector { TrainVector(p: buf.p + offsets[i], d: nil) }
        func ptr(_ i: Int?) -> UnsafePointer<Float>? { i.map { UnsafePointer(buf.p + offsets[$0]) } }
        func linear(_ w: WeightMatrix, _ l: Int, _ t: LoRATarget, bias: Int? = nil) -> TrainLinear {
            TrainLinear(weight: w, dWeight: nil, bias: ptr(bias), dBias: nil, lora: adapter?.slot(layer: l, target: t), target: t)
        }
        let all = base.layers.flatMap { [$0.q, $0.k, $0.v, $0.o, $0.gate, $0.up, $0.down] }
        let f32Bytes = all.reduce(0) { $0 + ($1.dtype == .f32 ? $1.rows * $1.cols * 4 : 0) }
        let copies = f32Bytes > 0 && f32Bytes <= forwardCopyLimit && all.allSatisfy { $0.dtype == .f32 }
        var owned: [FloatBuffer] = []
        let workPool = pool ?? base.pool
        func linearT(_ w: WeightMatrix, _ l: Int, _ t: LoRATarget, bias: Int? = nil) -> TrainLinear {
            var L = linear(w, l, t, bias: bias)
            if copies {
                let buf = FloatBuffer(w.rows * w.cols, zeroed: false)
                TrainingOps.transpose(w.data.assumingMemoryBound(to: Float.self), rows: w.rows, cols: w.cols, into: buf.p, pool: workPool)
                owned.append(buf)
                L.transposed = UnsafePointer(buf.p)
            }
            return L
        }
        layers = base.layers.enumerated().map { l, w in
            let i = idx[l]
            return TrainLayer(attnNorm: vec(i.attnNorm),
                              q: linearT(w.q, l, .q, bias: i.qb), k: linearT(w.k, l, .k, bias: i.kb), v: linearT(w.v, l, .v, bias: i.vb),
                              o: linearT(w.o, l, .o), qNorm: i.qn.map(vec), kNorm: i.kn.map(vec), postAttnNorm: i.pa.map(vec),
                              mlpNorm: vec(i.mlpNorm), gate: linearT(w.gate, l, .gate), up: linearT(w.up, l, .up),
                              down: linearT(w.down, l, .down), postMlpNorm: i.pm.map(vec))
        }
        forwardCopies = owned
        embedding = base.embedding; dEmbedding = nil
        finalNorm = vec(finalIndex)
        output = base.output; dOutput = nil
    }

    deinit { BufferCache.purge() }

    /// Dropout masks of optimizer step `step` (its micro-batches count on from there): a run resumed at a step
    /// draws the masks the uninterrupted run drew.
    public func startStep(_ step: Int) { passes = UInt64(step) << 24 }

    /// Gradients of the full fine-tune's parameters (nil for LoRA).
    public var parameterGradients: DecoderParameters? { gradients as? DecoderParameters }
    /// Gradients of the LoRA factors (nil for full fine-tuning).
    public var adapterGradients: LoRAAdapter? { gradients as? LoRAAdapter }

    public func zeroGradients() { gradients.data.update(repeating: 0, count: gradients.count) }

    /// Global L2 norm of the gradients.
    public func gradientNorm() -> Double { gradients.norm() }

    /// The loss of a batch (no gradients, no dropout).
    public func loss(_ batch: [SFTExample]) throws -> BatchLoss {
        let b = try prepare(batch, training: false)
        let (_, final) = forward(b, keepActivations: false)
        return head(b, final.out, lossScale: 0, backward: nil)
    }

    /// Forward and backward over a batch. Gradients are added to `gradients`, as the gradient of
    /// `lossScale × (summed loss)`; the default scale 1/(scored tokens of this batch) makes it the gradient of the
    /// batch's mean loss. For gradient accumulation pass 1/(scored tokens of the whole step) to every micro-batch.
    @discardableResult
    public func forwardBackward(_ batch: [SFTExample], lossScale: Double? = nil) throws -> BatchLoss {
        let b = try prepare(batch, training: true)
        let (acts, final) = forward(b, keepActivations: true)
        let scored = b.targets.reduce(0) { $0 + ($1 == ignoredLabel ? 0 : 1) }
        let scale = lossScale ?? (scored > 0 ? 1 / Double(scored) : 0)
        let dFinal = FloatBuffer(b.n * config.hiddenSize)
        let loss = head(b, final.out, lossScale: Float(scale), backward: dFinal)
        backward(b, acts, final: final, dFinalOut: dFinal)
        return loss
    }

    // MARK: Batch

    func prepare(_ batch: [SFTExample], training: Bool) throws -> TrainBatch {
        let cfg = config, V = cfg.vocabularySize
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
            if let w = cfg.slidingWindow, (0..<cfg.layerCount).contains(where: cfg.isSliding), ex.tokens.count > w {
                throw CausalError.invalidArgument("sequence \(b) has \(ex.tokens.count) tokens, more than the \(w)-token sliding window of this \(cfg.architecture) model; training over windowed attention is limited to sequences within the window (use --max-length \(w))")
            }
            spans.append(SequenceSpan(start: tokens.count, length: ex.tokens.count, prefix: ex.promptLength))
            tokens += ex.tokens; targets += tg
            positions += Array(0..<ex.tokens.count)
            rowSequence += Array(repeating: b, count: ex.tokens.count)
        }
        guard !tokens.isEmpty else { throw CausalError.invalidArgument("empty batch") }
        // RoPE tables per distinct frequency set (Gemma 3: local and global layers), as the inference backend.
        var tables: [[Float]: Int] = [:], rope: [(cos: [Float], sin: [Float], negSin: [Float])] = [], ofLayer: [Int] = []
        for l in 0..<cfg.layerCount {
            let f = cfg.ropeFrequencies(layer: l, factors: ropeFactors)
            if let i = tables[f] { ofLayer.append(i); continue }
            let half = f.count
            var c = [Float](repeating: 0, count: positions.count * half), s = c
            for (r, pos) in positions.enumerated() {
                for i in 0..<half {
                    let angle = Float(pos) * f[i]
                    c[r * half + i] = cosf(angle); s[r * half + i] = sinf(angle)
                }
            }
            tables[f] = rope.count
            ofLayer.append(rope.count)
            rope.append((c, s, s.map { -$0 }))
        }
        var seed: UInt64? = nil
        if training, let a = adapter, a.config.dropout > 0 {
            passes += 1
            seed = dropoutSeed &* 0x9E37_79B9_7F4A_7C15 &+ passes
        }
        return TrainBatch(n: tokens.count, tokens: tokens, targets: targets, rowSequence: rowSequence, sequences: spans,
                          ropeOfLayer: ofLayer, rope: rope, dropoutSeed: seed)
    }

    // MARK: Forward

    struct FinalActivations { let input: FloatBuffer; let rstd: FloatBuffer; let out: FloatBuffer }

    /// The whole forward; returns the blocks' saved activations (only their inputs when checkpointing or when not
    /// `keepActivations`) and the final norm's.
    func forward(_ b: TrainBatch, keepActivations: Bool) -> ([DecoderLayerActivations], FinalActivations) {
        let cfg = config, C = cfg.hiddenSize, n = b.n
        var x = FloatBuffer(n * C)
        for (r, t) in b.tokens.enumerated() { dequantize(embedding, row: t, into: x.p + r * C) }
        if let s = cfg.embeddingScale { ck_train_scale(x.p, Int64(n * C), s) }
        var saved: [DecoderLayerActivations] = []
        for l in 0..<layers.count {
            let (a, out) = layerForward(l, b, input: x)
            if keepActivations {
                if checkpointActivations {
                    let only = DecoderLayerActivations(input: x, n: 0, C: 0, qDim: 0, kvDim: 0, H: 0, F: 0)
                    saved.append(only)
                } else {
                    saved.append(a)
                }
            }
            x = out
        }
        let rstd = FloatBuffer(n), out = FloatBuffer(n * C)
        TrainingOps.rmsnormForward(x: x.p, weight: finalNorm.p, out: out.p, rstd: rstd.p, rows: n, dim: C, eps: Float(cfg.rmsNormEps), pool: pool)
        return (saved, FinalActivations(input: x, rstd: rstd, out: out))
    }

    /// One block: its saved activations and its output.
    func layerForward(_ l: Int, _ b: TrainBatch, input x: FloatBuffer) -> (DecoderLayerActivations, FloatBuffer) {
        let cfg = config, w = layers[l], n = b.n
        let (C, F) = (cfg.hiddenSize, cfg.intermediateSize)
        let (H, Hkv, D) = (cfg.headCount, cfg.kvHeadCount, cfg.headDim)
        let qDim = H * D, kvDim = Hkv * D
        let eps = Float(cfg.rmsNormEps)
        let a = DecoderLayerActivations(input: x, n: n, C: C, qDim: qDim, kvDim: kvDim, H: H, F: F)

        // Attention block.
        TrainingOps.rmsnormForward(x: x.p, weight: w.attnNorm.p, out: a.attnIn.p, rstd: a.attnRstd.p, rows: n, dim: C, eps: eps, pool: pool)
        linearForward(w.q, a.attnIn.p, n, a.q.p, l, b, a)
        linearForward(w.k, a.attnIn.p, n, a.k.p, l, b, a)
        linearForward(w.v, a.attnIn.p, n, a.v.p, l, b, a)
        if let qn = w.qNorm, let kn = w.kNorm {
            let qPre = FloatBuffer(n * qDim), kPre = FloatBuffer(n * kvDim), qr = FloatBuffer(n * H), kr = FloatBuffer(n * Hkv)
            qPre.p.update(from: a.q.p, count: n * qDim); kPre.p.update(from: a.k.p, count: n * kvDim)
            TrainingOps.rmsnormForward(x: qPre.p, weight: qn.p, out: a.q.p, rstd: qr.p, rows: n * H, dim: D, eps: eps, pool: pool)
            TrainingOps.rmsnormForward(x: kPre.p, weight: kn.p, out: a.k.p, rstd: kr.p, rows: n * Hkv, dim: D, eps: eps, pool: pool)
            a.qPre = qPre; a.qRstd = qr; a.kPre = kPre; a.kRstd = kr
        }
        let rt = b.rope[b.ropeOfLayer[l]]
        rope(a.q.p, rows: n, heads: H, cos: rt.cos, sin: rt.sin)
        rope(a.k.p, rows: n, heads: Hkv, cos: rt.cos, sin: rt.sin)
        TrainingOps.attentionForward(q: a.q.p, k: a.k.p, v: a.v.p, sequences: b.sequences, mask: attention, heads: H,
                                     kvHeads: Hkv, headDim: D, scale: attentionScale, out: a.attn.p, lse: a.lse.p, pool: pool)
        linearForward(w.o, a.attn.p, n, a.mid.p, l, b, a)
        if let pn = w.postAttnNorm {
            let pre = FloatBuffer(n * C), r = FloatBuffer(n)
            pre.p.update(from: a.mid.p, count: n * C)
            TrainingOps.rmsnormForward(x: pre.p, weight: pn.p, out: a.mid.p, rstd: r.p, rows: n, dim: C, eps: eps, pool: pool)
            a.oPre = pre; a.oRstd = r
        }
        TrainingOps.add(a.mid.p, x.p, count: n * C, pool: pool)

        // MLP block.
        TrainingOps.rmsnormForward(x: a.mid.p, weight: w.mlpNorm.p, out: a.mlpIn.p, rstd: a.mlpRstd.p, rows: n, dim: C, eps: eps, pool: pool)
        linearForward(w.gate, a.mlpIn.p, n, a.gate.p, l, b, a)
        linearForward(w.up, a.mlpIn.p, n, a.up.p, l, b, a)
        switch cfg.activation {
        case .silu:
            TrainingOps.swigluForward(gate: a.gate.p, up: a.up.p, out: a.hidden.p, count: n * F, pool: pool)
        case .geluTanh:
            a.hidden.p.update(from: a.gate.p, count: n * F)
            ck_gelu_tanh(a.hidden.p, Int64(n * F))
            ck_mul(a.hidden.p, a.up.p, Int64(n * F))
        }
        let out = FloatBuffer(n * C, zeroed: false)
        linearForward(w.down, a.hidden.p, n, out.p, l, b, a)
        if let pn = w.postMlpNorm {
            let pre = FloatBuffer(n * C), r = FloatBuffer(n)
            pre.p.update(from: out.p, count: n * C)
            TrainingOps.rmsnormForward(x: pre.p, weight: pn.p, out: out.p, rstd: r.p, rows: n, dim: C, eps: eps, pool: pool)
            a.downPre = pre; a.downRstd = r
        }
        TrainingOps.add(out.p, a.mid.p, count: n * C, pool: pool)
        return (a, out)
    }

    var attentionScale: Float { config.attentionScale ?? 1 / Float(config.headDim).squareRoot() }

    private func rope(_ x: UnsafeMutablePointer<Float>, rows: Int, heads: Int, cos: [Float], sin: [Float]) {
        let cfg = config, D = cfg.headDim, half = cfg.ropeDim / 2, width = heads * D
        cos.withUnsafeBufferPointer { c in
            sin.withUnsafeBufferPointer { s in
                let cp = c.baseAddress!, sp = s.baseAddress!
                TrainingOps.rowChunks(rows, width, pool) { r0, r1 in
                    for r in r0..<r1 {
                        switch cfg.ropeStyle {
                        case .adjacent: ck_rope_adjacent(x + r * width, Int64(heads), Int64(D), Int64(cfg.ropeDim), cp + r * half, sp + r * half)
                        case .half: ck_rope_half(x + r * width, Int64(heads), Int64(D), Int64(cfg.ropeDim), cp + r * half, sp + r * half)
                        }
                    }
                }
            }
        }
    }

    /// A dropout mask of `count` values (0 or 1/(1-p)), from the batch's seed, the layer and the module.
    private func dropoutMask(_ b: TrainBatch, layer: Int, target: LoRATarget, count: Int, p: Double) -> FloatBuffer? {
        guard let seed = b.dropoutSeed, p > 0 else { return nil }
        var rng = SequenceRNG(seed: seed ^ (UInt64(layer) &* 0x100_0000_01B3 &+ UInt64(LoRATarget.allCases.firstIndex(of: target)!) &* 0xC2B2_AE3D_27D4_EB4F))
        let m = FloatBuffer(count), keep = Float(1 / (1 - p)), threshold = Float(p)
        for i in 0..<count { m.p[i] = Float(rng.nextUnitFloat()) < threshold ? 0 : keep }
        return m
    }

    /// y = x·Wᵀ (+ b) (+ s·(drop(x)·Aᵀ)·Bᵀ), saving what the LoRA backward needs in `a`.
    private func linearForward(_ L: TrainLinear, _ x: UnsafePointer<Float>, _ n: Int, _ y: UnsafeMutablePointer<Float>,
                               _ layer: Int, _ b: TrainBatch, _ a: DecoderLayerActivations) {
        if let wt = L.transposed {
            TrainingOps.gemm(M: n, N: L.outDim, K: L.inDim, A: x, aRow: L.inDim, aCol: 1, B: wt, ldb: L.outDim, C: y,
                             ldc: L.outDim, accumulate: false, pool: pool)
        } else {
            matmul(L.weight, x, rows: n, into: y, pool: pool)
        }
        if let bias = L.bias { ck_add_bias(y, bias, Int64(n), Int64(L.outDim)) }
        guard let s = L.lora, let A = adapter else { return }
        var input = x
        let mask = dropoutMask(b, layer: layer, target: L.target, count: n * s.inDim, p: A.config.dropout)
        let dropped = mask.map { m -> FloatBuffer in
            let d = FloatBuffer(n * s.inDim)
            d.p.update(from: x, count: n * s.inDim)
            ck_mul(d.p, m.p, Int64(n * s.inDim))
            return d
        }
        if let dropped { input = UnsafePointer(dropped.p) }
        // The inference update itself (LoRAAdapter.apply), keeping t = drop(x)·Aᵀ for the backward.
        let t = FloatBuffer(n * s.rank)
        A.apply(s, x: input, rows: n, into: y, pool: pool, keepingT: t.p)
        a.lora[L.target] = LoRASaved(t: t, mask: mask)
    }

    /// A (cols, rows) copy of a row-major (rows, cols) matrix.
    private func transposed(_ m: UnsafePointer<Float>, rows: Int, cols: Int) -> FloatBuffer {
        let t = FloatBuffer(rows * cols)
        for i in 0..<rows { for j in 0..<cols { t.p[j * rows + i] = m[i * cols + j] } }
        return t
    }

    // MARK: Head and loss

    /// Output head and cross-entropy over the scored rows, in chunks. With `backward`, writes the gradient of the
    /// head's input rows there and adds the head's weight gradient (when it trains).
    func head(_ b: TrainBatch, _ finalOut: FloatBuffer, lossScale: Float, backward dOut: FloatBuffer?) -> BatchLoss {
        let cfg = config
        let (C, V) = (cfg.hiddenSize, cfg.vocabularySize)
        var losses = [SequenceLoss](repeating: SequenceLoss(), count: b.sequences.count)
        let scoredRows = (0..<b.n).filter { b.targets[$0] != ignoredLabel }
        guard !scoredRows.isEmpty else { return BatchLoss(sequences: losses) }
        let chunk = headRows, most = min(chunk, scoredRows.count)
        let xs = FloatBuffer(most * C), logits = FloatBuffer(most * V), dxs = FloatBuffer(most * C)
        let softcap = cfg.finalLogitSoftcap.map { Float($0) }
        let tanhs = softcap.map { _ in FloatBuffer(most * V) }
        for lo in stride(from: 0, to: scoredRows.count, by: chunk) {
            let rows = Array(scoredRows[lo..<min(lo + chunk, scoredRows.count)])
            let m = rows.count
            for (i, r) in rows.enumerated() { (xs.p + i * C).update(from: finalOut.p + r * C, count: C) }
            matmul(output, xs.p, rows: m, into: logits.p, pool: pool)
            if let cap = softcap, let th = tanhs {
                for i in 0..<(m * V) { th.p[i] = tanhf(logits.p[i] / cap); logits.p[i] = cap * th.p[i] }
            }
            let l = TrainingOps.crossEntropy(logits: logits.p, rows: m, vocab: V, targets: rows.map { b.targets[$0] },
                                             scale: lossScale, pool: pool)
            for (i, r) in rows.enumerated() {
                losses[b.rowSequence[r]].sumLoss += l[i]
                losses[b.rowSequence[r]].scoredTokens += 1
            }
            guard let dOut else { continue }
            if softcap != nil, let th = tanhs {
                for i in 0..<(m * V) { logits.p[i] *= 1 - th.p[i] * th.p[i] }
            }
            inputGradient(logits.p, output, rows: m, into: dxs.p, accumulate: false)
            if let dW = dOutput {
                TrainingOps.gemm(M: V, N: C, K: m, A: logits.p, aRow: 1, aCol: V, B: xs.p, ldb: C, C: dW, ldc: C,
                                 accumulate: true, pool: pool)
            }
            for (i, r) in rows.enumerated() { (dOut.p + r * C).update(from: dxs.p + i * C, count: C) }
        }
        return BatchLoss(sequences: losses)
    }

    /// dx (rows, w.cols) [+]= dy (rows, w.rows) · W. A quantized (or f16/bf16) W is dequantized in blocks of rows into
    /// scratch, so the gradient flows through the frozen weight without an fp32 copy of the whole matrix.
    func inputGradient(_ dy: UnsafePointer<Float>, _ w: WeightMatrix, rows n: Int, into dx: UnsafeMutablePointer<Float>,
                       accumulate: Bool) {
        let (out, inDim) = (w.rows, w.cols)
        if w.dtype == .f32 {
            TrainingOps.gemm(M: n, N: inDim, K: out, A: dy, aRow: out, aCol: 1, B: w.data.assumingMemoryBound(to: Float.self),
                             ldb: inDim, C: dx, ldc: inDim, accumulate: accumulate, pool: pool)
            return
        }
        let block = max(16, min(out, (4 << 20) / max(inDim, 1)))   // about 16 MB of fp32 rows at a time
        let scratch = UnsafeMutablePointer<Float>.allocate(capacity: block * inDim)
        defer { scratch.deallocate() }
        var o0 = 0
        while o0 < out {
            let m = min(block, out - o0)
            let per = max(1, m / (pool.threadCount * 4))
            pool.parallelFor((m + per - 1) / per) { c in
                for r in (c * per)..<min(m, (c + 1) * per) { dequantize(w, row: o0 + r, into: scratch + r * inDim) }
            }
            TrainingOps.gemm(M: n, N: inDim, K: m, A: dy + o0, aRow: out, aCol: 1, B: scratch, ldb: inDim, C: dx, ldc: inDim,
                             accumulate: accumulate || o0 > 0, pool: pool)
            o0 += m
        }
    }

    // MARK: Backward

    /// Buffers the backward reuses from block to block.
    final class BackwardScratch {
        let dF1, dF2, dF3, dC, dQ, dAtt, dK, dV, dPre, normScratch: FloatBuffer
        var dQPre: FloatBuffer?, dKPre: FloatBuffer?
        init(n: Int, C: Int, F: Int, qDim: Int, kvDim: Int, D: Int, qkNorm: Bool) {
            dF1 = FloatBuffer(n * F); dF2 = FloatBuffer(n * F); dF3 = FloatBuffer(n * F)
            dC = FloatBuffer(n * C); dQ = FloatBuffer(n * qDim); dAtt = FloatBuffer(n * qDim)
            dK = FloatBuffer(n * kvDim); dV = FloatBuffer(n * kvDim); dPre = FloatBuffer(n * C)
            normScratch = FloatBuffer(max(C, D))
            if qkNorm { dQPre = FloatBuffer(n * qDim); dKPre = FloatBuffer(n * kvDim) }
        }
    }

    func backward(_ b: TrainBatch, _ saved: [DecoderLayerActivations], final: FinalActivations, dFinalOut: FloatBuffer) {
        let cfg = config, n = b.n
        let (C, F) = (cfg.hiddenSize, cfg.intermediateSize)
        let (H, Hkv, D) = (cfg.headCount, cfg.kvHeadCount, cfg.headDim)
        let qDim = H * D, kvDim = Hkv * D
        let s = BackwardScratch(n: n, C: C, F: F, qDim: qDim, kvDim: kvDim, D: D, qkNorm: cfg.qkNorm)

        let dx = FloatBuffer(n * C)   // gradient of the residual stream, walking down
        normBackward(dFinalOut.p, x: final.input.p, finalNorm, rstd: final.rstd.p, dx: dx.p, rows: n, dim: C, s)
        for l in (0..<layers.count).reversed() {
            let a = checkpointActivations ? layerForward(l, b, input: saved[l].input).0 : saved[l]
            layerBackward(l, b, a, dx: dx, s)
        }
        if let dTable = dEmbedding {
            if let scale = cfg.embeddingScale { ck_train_scale(dx.p, Int64(n * C), scale) }
            TrainingOps.embeddingBackward(tokens: b.tokens, dOut: dx.p, dim: C, dTable: dTable, paddingID: paddingTokenID)
        }
    }

    /// dx += the RMSNorm's input gradient; its weight gradient when it trains.
    private func normBackward(_ dy: UnsafePointer<Float>, x: UnsafePointer<Float>, _ w: TrainVector, rstd: UnsafePointer<Float>,
                              dx: UnsafeMutablePointer<Float>, rows: Int, dim: Int, _ s: BackwardScratch) {
        if w.d == nil {
            TrainingOps.rmsnormBackwardInput(dOut: dy, x: x, weight: w.p, rstd: rstd, dx: dx, rows: rows, dim: dim, pool: pool)
            return
        }
        TrainingOps.rmsnormBackward(dOut: dy, x: x, weight: w.p, rstd: rstd, dx: dx, dWeight: w.d ?? s.normScratch.p,
                                    rows: rows, dim: dim)
    }

    private func layerBackward(_ l: Int, _ b: TrainBatch, _ a: DecoderLayerActivations, dx: FloatBuffer, _ s: BackwardScratch) {
        let cfg = config, w = layers[l], n = b.n
        let (C, F) = (cfg.hiddenSize, cfg.intermediateSize)
        let (H, Hkv, D) = (cfg.headCount, cfg.kvHeadCount, cfg.headDim)

        // MLP: out = mid + [postMlpNorm](down(act(gate(mn)) ⊙ up(mn))), mn = norm(mid).
        var dBranch = UnsafePointer(dx.p)
        if let pn = w.postMlpNorm, let pre = a.downPre, let r = a.downRstd {
            s.dPre.zero()
            normBackward(dx.p, x: pre.p, pn, rstd: r.p, dx: s.dPre.p, rows: n, dim: C, s)
            dBranch = UnsafePointer(s.dPre.p)
        }
        linearBackward(w.down, x: a.hidden.p, dy: dBranch, rows: n, dx: s.dF1.p, accumulate: false, a)
        switch cfg.activation {
        case .silu:
            TrainingOps.swigluBackward(dOut: s.dF1.p, gate: a.gate.p, up: a.up.p, dGate: s.dF2.p, dUp: s.dF3.p, count: n * F, pool: pool)
        case .geluTanh:
            ck_t5_train_ff_backward(Int32(CK_T5_ACT_GELU_TANH), s.dF1.p, a.gate.p, a.up.p, s.dF2.p, s.dF3.p, Int64(n * F))
        }
        linearBackward(w.gate, x: a.mlpIn.p, dy: s.dF2.p, rows: n, dx: s.dC.p, accumulate: false, a)
        linearBackward(w.up, x: a.mlpIn.p, dy: s.dF3.p, rows: n, dx: s.dC.p, accumulate: true, a)
        normBackward(s.dC.p, x: a.mid.p, w.mlpNorm, rstd: a.mlpRstd.p, dx: dx.p, rows: n, dim: C, s)

        // Attention: mid = input + [postAttnNorm](o(attention(rope(qk(q(xn))), rope(qk(k(xn))), v(xn)))), xn = norm(input).
        dBranch = UnsafePointer(dx.p)
        if let pn = w.postAttnNorm, let pre = a.oPre, let r = a.oRstd {
            s.dPre.zero()
            normBackward(dx.p, x: pre.p, pn, rstd: r.p, dx: s.dPre.p, rows: n, dim: C, s)
            dBranch = UnsafePointer(s.dPre.p)
        }
        linearBackward(w.o, x: a.attn.p, dy: dBranch, rows: n, dx: s.dAtt.p, accumulate: false, a)
        TrainingOps.attentionBackward(q: a.q.p, k: a.k.p, v: a.v.p, out: a.attn.p, lse: a.lse.p, dOut: s.dAtt.p,
                                      sequences: b.sequences, mask: attention, heads: H, kvHeads: Hkv, headDim: D,
                                      scale: attentionScale, dq: s.dQ.p, dk: s.dK.p, dv: s.dV.p, pool: pool)
        let rt = b.rope[b.ropeOfLayer[l]]
        rope(s.dQ.p, rows: n, heads: H, cos: rt.cos, sin: rt.negSin)
        rope(s.dK.p, rows: n, heads: Hkv, cos: rt.cos, sin: rt.negSin)
        var dq = s.dQ.p, dk = s.dK.p
        if let qn = w.qNorm, let kn = w.kNorm, let dQPre = s.dQPre, let dKPre = s.dKPre,
           let qPre = a.qPre, let kPre = a.kPre, let qr = a.qRstd, let kr = a.kRstd {
            dQPre.zero(); dKPre.zero()
            normBackward(s.dQ.p, x: qPre.p, qn, rstd: qr.p, dx: dQPre.p, rows: n * H, dim: D, s)
            normBackward(s.dK.p, x: kPre.p, kn, rstd: kr.p, dx: dKPre.p, rows: n * Hkv, dim: D, s)
            dq = dQPre.p; dk = dKPre.p
        }
        linearBackward(w.q, x: a.attnIn.p, dy: dq, rows: n, dx: s.dC.p, accumulate: false, a)
        linearBackward(w.k, x: a.attnIn.p, dy: dk, rows: n, dx: s.dC.p, accumulate: true, a)
        linearBackward(w.v, x: a.attnIn.p, dy: s.dV.p, rows: n, dx: s.dC.p, accumulate: true, a)
        normBackward(s.dC.p, x: a.input.p, w.attnNorm, rstd: a.attnRstd.p, dx: dx.p, rows: n, dim: C, s)
    }

    /// Backward of y = x·Wᵀ (+ b) (+ s·(drop(x)·Aᵀ)·Bᵀ): dx [+]= dy·W (+ the LoRA path), dW += dyᵀ·x when W trains,
    /// db += Σ rows of dy, dA and dB of the LoRA slot.
    private func linearBackward(_ L: TrainLinear, x: UnsafePointer<Float>, dy: UnsafePointer<Float>, rows n: Int,
                                dx: UnsafeMutablePointer<Float>, accumulate: Bool, _ a: DecoderLayerActivations) {
        let (out, inDim) = (L.outDim, L.inDim)
        if let dW = L.dWeight {
            TrainingOps.gemm(M: out, N: inDim, K: n, A: dy, aRow: 1, aCol: out, B: x, ldb: inDim, C: dW, ldc: inDim,
                             accumulate: true, pool: pool)
        }
        if let db = L.dBias {
            for r in 0..<n { ck_add(db, dy + r * out, Int64(out)) }
        }
        inputGradient(dy, L.weight, rows: n, into: dx, accumulate: accumulate)
        guard let sl = L.lora, let A = adapter, let G = adapterGradients, let sv = a.lora[L.target] else { return }
        let r = sl.rank, scale = A.config.scale
        // Input the adapter saw: drop(x).
        var input = x
        let dropped = sv.mask.map { m -> FloatBuffer in
            let d = FloatBuffer(n * inDim)
            d.p.update(from: x, count: n * inDim)
            ck_mul(d.p, m.p, Int64(n * inDim))
            return d
        }
        if let dropped { input = UnsafePointer(dropped.p) }
        // u = t·Bᵀ, y += s·u:  dB += s·dyᵀ·t;  dt = s·dy·B;  dA += dtᵀ·drop(x);  dx += (dt·A) ⊙ mask.
        // The rank-r products are shaped so that the long dimension (out or in) is the contiguous one: dBᵀ (r, out)
        // = (s·t)ᵀ·dy, dt = dy·(Bᵀ)ᵀ through the matmul kernel (K = out).
        let ts = FloatBuffer(n * r)
        ts.p.update(from: sv.t.p, count: n * r)
        ck_train_scale(ts.p, Int64(n * r), scale)
        let dbt = FloatBuffer(r * out)
        TrainingOps.gemm(M: r, N: out, K: n, A: ts.p, aRow: 1, aCol: r, B: dy, ldb: out, C: dbt.p, ldc: out, accumulate: false, pool: pool)
        let db = G.b(sl)
        for o in 0..<out { for j in 0..<r { db[o * r + j] += dbt.p[j * out + o] } }
        let dt = FloatBuffer(n * r), bt = transposed(A.b(sl), rows: out, cols: r)
        matmul(WeightMatrix(dtype: .f32, data: UnsafeRawPointer(bt.p), rows: r, cols: out), dy, rows: n, into: dt.p, pool: pool)
        ck_train_scale(dt.p, Int64(n * r), scale)
        TrainingOps.gemm(M: r, N: inDim, K: n, A: dt.p, aRow: 1, aCol: r, B: input, ldb: inDim, C: G.a(sl), ldc: inDim,
                         accumulate: true, pool: pool)
        if let m = sv.mask {
            let dxl = FloatBuffer(n * inDim)
            TrainingOps.gemm(M: n, N: inDim, K: r, A: dt.p, aRow: r, aCol: 1, B: A.a(sl), ldb: inDim, C: dxl.p, ldc: inDim,
                             accumulate: false, pool: pool)
            ck_mul(dxl.p, m.p, Int64(n * inDim))
            ck_add(dx, dxl.p, Int64(n * inDim))
        } else {
            TrainingOps.gemm(M: n, N: inDim, K: r, A: dt.p, aRow: r, aCol: 1, B: A.a(sl), ldb: inDim, C: dx, ldc: inDim,
                             accumulate: true, pool: pool)
        }
    }
}

/// The trainer of the LLaMA family is the decoder's trainer.
public typealias LlamaTrainer = DecoderTrainer

extension DecoderTrainer {
    /// The loss over a dataset, forward only, in ragged batches of at most `maxBatchTokens` tokens.
    public func evaluate(_ examples: [SFTExample], maxBatchTokens: Int = 4096) throws -> BatchLoss {
        var out = BatchLoss(sequences: [])
        for b in SFTDataset.pack(examples, maxTokens: maxBatchTokens) { out.sequences += try loss(b).sequences }
        BufferCache.purge()   // evaluation batches have their own shapes: keep none of their buffers for training
        return out
    }

    /// Gradient accumulation: forward/backward over each micro-batch, with every loss scaled by 1/(scored tokens of
    /// all micro-batches), so the accumulated gradient equals that of one batch holding them all (mean over all
    /// scored tokens). Gradients are added to `gradients` (zero them first for a fresh step).
    public func accumulate(_ microBatches: [[SFTExample]]) throws -> BatchLoss {
        let total = microBatches.reduce(0) { $0 + $1.reduce(0) { $0 + $1.scoredTokenCount } }
        let scale = total > 0 ? 1 / Double(total) : 0
        var out = BatchLoss(sequences: [])
        for mb in microBatches where !mb.isEmpty {
            out.sequences += try forwardBackward(mb, lossScale: scale).sequences
        }
        return out
    }
}
