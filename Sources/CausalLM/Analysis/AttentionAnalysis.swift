import Foundation
import CausalKernels
import CCausalKernels

// Attention analysis (issue 17): for a model and a text, every layer's and head's softmax attention matrix as the
// forward used it, with its numerical rank, singular values, row entropy and diagonal mass.
//
// Where the matrices come from:
// - Decoders (DecoderModel: SmolLM2, Llama, Qwen, Gemma 3): the text runs through the inference forward once, with
//   the model's backend wrapped in `AttentionRecorder`, which passes every operation through unchanged and copies
//   each layer's attention inputs (q after RoPE/QK-norm, the cache's keys and values) and output. The recorder adds
//   no arithmetic to the forward: its logits are bit-identical to a run without it (AttentionAnalysisTests).
// - BERT encoders: the masked-LM trainer's forward (BertMLMTrainer.forward, whose bidirectional hidden states are
//   BertModel's), which keeps q, k, v, the attention output and each row's log-sum-exp for every layer and can also
//   run mixed heads (forward: keys j <= i, backward: j >= i).
// From those, P = softmax(q·kᵀ·scale) over the keys the forward's mask allowed for that row and head is recomputed in
// Double (masked entries exactly 0). Each head records how well P·V reproduces the forward's attention output
// (`outputError`), and for BERT how well log Σ exp reproduces the kernel's log-sum-exp (`lseError`), so the
// matrices are shown to be the ones the forward used, not a re-derivation that could drift from it.
//
// Per head:
//   singular values: one-sided Jacobi in Double (JacobiSVD), largest first
//   rank: singular values > tolerance; default tolerance numpy.linalg.matrix_rank's rule σ_max · T · ε with
//         ε = float32's machine epsilon 2^-23 (the precision the forward computes P in), or an absolute --threshold
//   entropy: mean over rows of −Σ_j P_ij ln P_ij (nats)
//   diagonal mass: mean over rows of P_ii

/// How singular values are counted into a numerical rank.
public enum RankThreshold: Sendable, Equatable, CustomStringConvertible {
    /// numpy.linalg.matrix_rank's default rule, σ_max · max(M, N) · ε.
    case relative(epsilon: Double)
    /// A fixed threshold on the singular values.
    case absolute(Double)

    /// numpy's rule with float32's ε (2^-23 ≈ 1.19e-7): the default.
    public static let float32 = RankThreshold.relative(epsilon: Double(Float.ulpOfOne))
    /// numpy's rule with float64's ε (2^-52 ≈ 2.22e-16): what matrix_rank gives for a float64 array.
    public static let float64 = RankThreshold.relative(epsilon: Double.ulpOfOne)

    public func tolerance(singularValues s: [Double], size: Int) -> Double {
        switch self {
        case let .relative(eps): return (s.first ?? 0) * Double(size) * eps
        case let .absolute(t): return t
        }
    }

    public var description: String {
        switch self {
        case let .relative(eps): return "sigma_max * T * \(eps)"
        case let .absolute(t): return "\(t)"
        }
    }
}

/// One head's attention matrix on the analysed text and what it shows.
public struct HeadAttention: Sendable {
    public let layer: Int
    public let head: Int
    /// T, the tokens of the text.
    public let size: Int
    /// Which keys each row may read: "causal", "causal, window W", "bidirectional" (prefix over the whole text),
    /// "forward" (j <= i), "backward" (j >= i).
    public let mask: String
    /// P, T × T row-major: row i is query position i's distribution over key positions (exactly 0 where masked).
    public let probabilities: [Double]
    /// Whether row i may read key j.
    public let allowed: [Bool]
    /// Singular values of P, largest first.
    public let singularValues: [Double]
    /// The threshold the rank was counted against.
    public let tolerance: Double
    /// Singular values above `tolerance`.
    public let rank: Int
    /// Singular values above numpy's float64 rule, σ_max · T · 2^-52 (matrix_rank of the float64 matrix).
    public let rankFloat64: Int
    /// Mean over rows of the row's entropy, in nats.
    public let entropy: Double
    /// Mean over rows of P[i][i].
    public let diagonalMass: Double
    /// max |P·V − the forward's attention output| over this head's rows and dimensions.
    public let outputError: Double
    /// max |V| over the values this head reads (the scale `outputError` is relative to).
    public let valueScale: Double
    /// BERT: max |ln Σ_j exp(s_ij) − the kernel's saved log-sum-exp| over rows; nil for decoders.
    public let lseError: Double?

    public func p(_ i: Int, _ j: Int) -> Double { probabilities[i * size + j] }
}

/// Every head's attention on one text.
public struct AttentionReport: Sendable {
    /// The model as given (path or name).
    public let model: String
    /// "llama", "qwen2", ..., or "bert".
    public let architecture: String
    /// The attention the forward ran: causal, prefix, mixed (decoders); bidirectional, mixed, mixed-by-layer (BERT).
    public let attention: String
    public let tokenIDs: [Int]
    /// Each token as text (decoders: its decoded bytes; BERT: its WordPiece entry).
    public let tokens: [String]
    public let layerCount: Int
    public let headCount: Int
    public let threshold: RankThreshold
    /// Layer-major: `heads[layer * headCount + head]`.
    public let heads: [HeadAttention]

    public func head(layer: Int, head h: Int) -> HeadAttention { heads[layer * headCount + h] }
}

/// The attention choices `AttentionAnalysis` understands (`causal analyze attention --attention`).
public enum AttentionChoice: String, Sendable, CaseIterable {
    case causal, prefix, mixed, bidirectional
    case mixedByLayer = "mixed-by-layer"
}

public enum AttentionAnalysis {
    /// Analyses `text` with the model at `model` (a GGUF file or Hugging Face decoder directory, a BERT directory, a
    /// known model name, "all-MiniLM-L6-v2", or nil for the default model). `attention` overrides how the heads attend
    /// (decoders: causal, prefix, mixed; BERT: bidirectional, mixed, mixed-by-layer); nil runs the model's own.
    public static func analyze(model: String?, text: String, attention: AttentionChoice? = nil,
                               threshold: RankThreshold = .float32, precision: Precision = .fast,
                               threads: Int? = nil) throws -> AttentionReport {
        guard !text.isEmpty else { throw CausalError.invalidArgument("the text is empty: give the text to analyse") }
        let path = try resolve(model)
        if isBertDirectory(path) {
            let params = try BertParameters(directory: path)
            let tokenizer = try WordPieceTokenizer(path: URL(fileURLWithPath: path).appendingPathComponent("tokenizer.json").path)
            let ids = tokenizer.encode(text, addSpecialTokens: true)
            let bertAttention: BertAttention
            switch attention ?? .bidirectional {
            case .bidirectional: bertAttention = .bidirectional
            case .mixed: bertAttention = .mixed(byLayer: false)
            case .mixedByLayer: bertAttention = .mixed(byLayer: true)
            case let other: throw CausalError.invalidArgument("--attention \(other.rawValue) is not available for a BERT encoder (choose bidirectional, mixed or mixed-by-layer)")
            }
            let pool = threads.map { ThreadPool(threads: $0) } ?? ThreadPool.shared
            return try bert(params, ids: ids, tokens: ids.map { tokenizer.tokenString($0) ?? "#\($0)" },
                            attention: bertAttention, threshold: threshold, model: model ?? path, pool: pool)
        }
        let bundle = try ModelBundle(path: path, precision: precision, threads: threads)
        guard let decoder = bundle.model as? DecoderModel else {
            throw CausalError.invalidArgument("\(path): attention analysis reads decoder-only models (LLaMA, Qwen, Gemma ...) and BERT encoders, not \(type(of: bundle.model))")
        }
        let tokenizer = try bundle.tokenizer
        let ids = try tokenizer.encode(text)
        let mask: AttentionMask?
        switch attention {
        case nil: mask = nil
        case .causal?: mask = .causal
        case .prefix?, .bidirectional?: mask = .prefix
        case .mixed?: mask = .mixed
        case .mixedByLayer?: throw CausalError.invalidArgument("--attention mixed-by-layer is for BERT encoders; a decoder's mixed prompt attention splits heads (use mixed)")
        }
        let tokens = try ids.map { try tokenizer.decode([$0], skipSpecial: false) }
        return try self.decoder(decoder, ids: ids, tokens: tokens, mask: mask, threshold: threshold, model: model ?? path)
    }

    /// A model argument as a path: "all-MiniLM-L6-v2" (when no such file exists) is the packaged sentence-transformers
    /// directory; other names go through ModelRegistry; nil is the default model.
    static func resolve(_ model: String?) throws -> String {
        guard let m = model else { return try ModelFetcher.ensure() }
        if !FileManager.default.fileExists(atPath: m), m == PackagedDirectory.allMiniLML6v2.directoryName {
            return try ModelFetcher.ensure(PackagedDirectory.allMiniLML6v2)
        }
        return try ModelRegistry.resolve(m)
    }

    static func isBertDirectory(_ path: String) -> Bool {
        let cfg = URL(fileURLWithPath: path).appendingPathComponent("config.json").path
        guard let c = try? ConfigJSON(path: cfg), let t = try? c.string("model_type") else { return false }
        return t == "bert"
    }

    // MARK: Decoders

    /// Runs `ids` through the decoder's inference forward (one chunk on an empty cache) with `mask` as its prompt
    /// attention (nil: the model's own; the text is the whole prompt) and analyses every head.
    public static func decoder(_ m: DecoderModel, ids: [Int], tokens: [String], mask: AttentionMask? = nil,
                               threshold: RankThreshold = .float32, model: String = "") throws -> AttentionReport {
        let cfg = m.config
        guard !ids.isEmpty else { throw CausalError.invalidArgument("the text has no tokens") }
        guard ids.count <= cfg.contextLength else {
            throw CausalError.invalidArgument("the text is \(ids.count) tokens long; the model's context holds \(cfg.contextLength)")
        }
        let recorder = try record(m, ids: ids, mask: mask).recorder
        let (H, Hkv, D, T) = (cfg.headCount, cfg.kvHeadCount, cfg.headDim, ids.count)
        let used = mask ?? m.promptAttention
        var jobs: [() -> HeadAttention] = []
        for l in 0..<cfg.layerCount {
            let c = recorder.layers[l]!
            for h in 0..<H {
                jobs.append {
                    let g = h / (H / Hkv)
                    var allowed = [Bool](repeating: false, count: T * T)
                    for i in 0..<T {
                        let (f, n) = c.keys(i, h)
                        for j in f..<(f + n) { allowed[i * T + j] = true }
                    }
                    return analyseHead(layer: l, head: h, T: T, D: D, mask: c.maskName(h, mode: used), allowed: allowed,
                                       scale: Double(c.scale), threshold: threshold, lse: nil,
                                       q: { i, d in c.q[i * H * D + h * D + d] },
                                       k: { j, d in c.keys[g * T * D + j * D + d] },
                                       v: { j, d in c.values[g * T * D + j * D + d] },
                                       out: { i, d in c.out[i * H * D + h * D + d] })
                }
            }
        }
        return AttentionReport(model: model, architecture: cfg.architecture, attention: used.rawValue, tokenIDs: ids,
                               tokens: tokens, layerCount: cfg.layerCount, headCount: H, threshold: threshold,
                               heads: run(jobs, pool: m.pool))
    }

    /// Every position's logits ((T, V) row-major) from the decoder's forward on `ids`, with the analysis's recorder
    /// in place (`recording`) or without it: the two are equal bit for bit (AttentionAnalysisTests).
    public static func logits(_ m: DecoderModel, ids: [Int], recording: Bool) throws -> [Float] {
        if recording { return try record(m, ids: ids, mask: nil, logits: .all).logits }
        return try m.forward([SequenceChunk(cache: m.makeCache(capacity: ids.count), tokens: ids, logits: .all)])[0]
    }

    /// The forward with the recorder in place of the model's backend (restored afterwards).
    static func record(_ m: DecoderModel, ids: [Int], mask: AttentionMask?,
                       logits: LogitsRequest = .none) throws -> (recorder: AttentionRecorder, logits: [Float]) {
        let saved = (m.backend, m.promptAttention)
        let cache = m.makeCache(capacity: ids.count)   // made by the model's own backend (at KVPrecision.current on the CPU)
        let recorder = AttentionRecorder(m.backend, layers: m.config.layerCount)
        m.backend = recorder
        if let mask { m.promptAttention = mask }
        defer { (m.backend, m.promptAttention) = saved }
        let out = try m.forward([SequenceChunk(cache: cache, tokens: ids, logits: logits)])
        guard !recorder.unsupported, recorder.layers.allSatisfy({ $0 != nil }) else {
            throw CausalError.invalidArgument("attention analysis reads the CPU backend's buffers; this model runs on \(saved.0.name)")
        }
        return (recorder, out[0])
    }

    // MARK: BERT

    /// Runs `ids` (one sequence, special tokens included) through the BERT forward with `attention` and analyses every
    /// head.
    public static func bert(_ parameters: BertParameters, ids: [Int], tokens: [String], attention: BertAttention = .bidirectional,
                            threshold: RankThreshold = .float32, model: String = "", pool: ThreadPool = .shared) throws -> AttentionReport {
        let cfg = parameters.config
        guard !ids.isEmpty else { throw CausalError.invalidArgument("the text has no tokens") }
        guard ids.count <= cfg.maxPositions else {
            throw CausalError.invalidArgument("the text is \(ids.count) tokens long; the model reads at most \(cfg.maxPositions) (max_position_embeddings)")
        }
        let trainer = BertMLMTrainer(parameters: parameters, attention: attention, pool: pool)
        let acts = try trainer.forward([MaskedSequence(input: ids, labels: ids.map { _ in ignoredLabel })], requireScored: false)
        let (H, D, C, T) = (cfg.headCount, cfg.headDim, cfg.hiddenSize, ids.count)
        let scale = Double(1 / Float(D).squareRoot())   // the trainer's scale, as a Float
        var jobs: [() -> HeadAttention] = []
        for (l, a) in acts.layers.enumerated() {
            for h in 0..<H {
                jobs.append {
                    let backward = attention.readsBackward(layer: l, head: h, heads: H)
                    var allowed = [Bool](repeating: false, count: T * T)
                    for i in 0..<T {
                        for j in 0..<T {
                            switch backward {
                            case nil: allowed[i * T + j] = true
                            case false?: allowed[i * T + j] = j <= i
                            case true?: allowed[i * T + j] = j >= i
                            }
                        }
                    }
                    let name = backward.map { $0 ? "backward" : "forward" } ?? "bidirectional"
                    return analyseHead(layer: l, head: h, T: T, D: D, mask: name, allowed: allowed, scale: scale,
                                       threshold: threshold, lse: { i in a.lse.p[i * H + h] },
                                       q: { i, d in a.q.p[i * C + h * D + d] },
                                       k: { j, d in a.k.p[j * C + h * D + d] },
                                       v: { j, d in a.v.p[j * C + h * D + d] },
                                       out: { i, d in a.attn.p[i * C + h * D + d] })
                }
            }
        }
        return AttentionReport(model: model, architecture: "bert", attention: attention.name, tokenIDs: ids, tokens: tokens,
                               layerCount: cfg.layerCount, headCount: H, threshold: threshold, heads: run(jobs, pool: pool))
    }

    // MARK: One head

    /// P from q, k and the mask in Double, then its statistics and how well it reproduces the forward's output.
    static func analyseHead(layer: Int, head: Int, T: Int, D: Int, mask: String, allowed: [Bool], scale: Double,
                            threshold: RankThreshold, lse: ((Int) -> Float)?,
                            q: (Int, Int) -> Float, k: (Int, Int) -> Float, v: (Int, Int) -> Float,
                            out: (Int, Int) -> Float) -> HeadAttention {
        var P = [Double](repeating: 0, count: T * T)
        var outputError = 0.0, valueScale = 0.0, lseError = 0.0
        var entropy = 0.0, diagonal = 0.0
        var s = [Double](repeating: 0, count: T)
        for i in 0..<T {
            var mx = -Double.infinity
            for j in 0..<T where allowed[i * T + j] {
                var acc = 0.0
                for d in 0..<D { acc += Double(q(i, d)) * Double(k(j, d)) }
                s[j] = acc * scale
                mx = max(mx, s[j])
            }
            var sum = 0.0
            for j in 0..<T where allowed[i * T + j] { sum += Foundation.exp(s[j] - mx) }
            if let lse { lseError = max(lseError, abs(mx + Foundation.log(sum) - Double(lse(i)))) }
            var h = 0.0
            for j in 0..<T where allowed[i * T + j] {
                let p = Foundation.exp(s[j] - mx) / sum
                P[i * T + j] = p
                if p > 0 { h -= p * Foundation.log(p) }
            }
            entropy += h
            diagonal += P[i * T + i]
            for d in 0..<D {
                var o = 0.0
                for j in 0..<T where allowed[i * T + j] {
                    let vj = Double(v(j, d))
                    o += P[i * T + j] * vj
                    valueScale = max(valueScale, abs(vj))
                }
                outputError = max(outputError, abs(o - Double(out(i, d))))
            }
        }
        let sv = JacobiSVD.singularValues(P, rows: T, cols: T)
        let tol = threshold.tolerance(singularValues: sv, size: T)
        return HeadAttention(layer: layer, head: head, size: T, mask: mask, probabilities: P, allowed: allowed,
                             singularValues: sv, tolerance: tol, rank: JacobiSVD.rank(sv, tolerance: tol),
                             rankFloat64: JacobiSVD.rank(sv, tolerance: RankThreshold.float64.tolerance(singularValues: sv, size: T)),
                             entropy: entropy / Double(T), diagonalMass: diagonal / Double(T),
                             outputError: outputError, valueScale: valueScale, lseError: lse == nil ? nil : lseError)
    }

    /// Runs the jobs across the pool's threads; results in job order.
    static func run(_ jobs: [() -> HeadAttention], pool: ThreadPool) -> [HeadAttention] {
        var results = [HeadAttention?](repeating: nil, count: jobs.count)
        results.withUnsafeMutableBufferPointer { r in
            let base = r.baseAddress!
            pool.parallelFor(jobs.count) { base[$0] = jobs[$0]() }
        }
        return results.map { $0! }
    }
}

/// One decoder layer's attention as the forward ran it (a single sequence of T tokens from position 0).
struct LayerCapture {
    let T: Int, H: Int, Hkv: Int, D: Int
    let scale: Float
    let window: Int?
    let promptLength: Int
    let promptAttention: AttentionMask
    let q: [Float]        // (T, H*D) after RoPE (and QK-norm)
    let keys: [Float]     // (Hkv, T, D)
    let values: [Float]   // (Hkv, T, D)
    let out: [Float]      // (T, H*D)

    /// The keys row i of head h reads, [first, first + count): CPUBackend.attention's rule for one sequence.
    func keys(_ i: Int, _ h: Int) -> (first: Int, count: Int) {
        if i < promptLength {
            switch promptAttention {
            case .prefix, .bidirectional: return (0, promptLength)
            case .mixed where h >= H / 2: return (i, promptLength - i)
            default: break
            }
        }
        let f = window.map { max(0, i - $0 + 1) } ?? 0
        return (f, i - f + 1)
    }

    func maskName(_ h: Int, mode: AttentionMask) -> String {
        switch mode {
        case .prefix, .bidirectional: return "bidirectional"
        case .mixed: return h >= H / 2 ? "backward" : "forward"
        case .causal: return window.map { "causal, window \($0)" } ?? "causal"
        }
    }
}

/// A backend that runs every operation on `inner` unchanged and copies each layer's attention inputs and output.
final class AttentionRecorder: DecoderBackend {
    let inner: any DecoderBackend
    private(set) var layers: [LayerCapture?]
    /// Set when the inner backend's buffers are not in host memory (the recorder reads the CPU backend's).
    private(set) var unsupported = false

    init(_ inner: any DecoderBackend, layers: Int) {
        self.inner = inner
        self.layers = [LayerCapture?](repeating: nil, count: layers)
    }

    var name: String { inner.name }
    func buffer(_ count: Int) -> BackendBuffer { inner.buffer(count) }
    func embed(_ table: WeightMatrix, tokens: [Int], scale: Float, into x: BackendBuffer) {
        inner.embed(table, tokens: tokens, scale: scale, into: x)
    }
    func matmul(_ w: WeightMatrix, _ x: BackendBuffer, rows n: Int, bias: [Float]?, into y: BackendBuffer) {
        inner.matmul(w, x, rows: n, bias: bias, into: y)
    }
    func matmul(_ ws: [WeightMatrix], _ x: BackendBuffer, rows n: Int, biases: [[Float]?], into ys: [BackendBuffer]) {
        inner.matmul(ws, x, rows: n, biases: biases, into: ys)
    }
    func rmsNorm(_ x: BackendBuffer, weight: [Float], rows: Int, width: Int, eps: Float, into y: BackendBuffer) {
        inner.rmsNorm(x, weight: weight, rows: rows, width: width, eps: eps, into: y)
    }
    func ropeAngles(positions: [Int], frequencies: [Float]) -> RopeAngles {
        inner.ropeAngles(positions: positions, frequencies: frequencies)
    }
    func rope(_ x: BackendBuffer, rows: Int, heads: Int, headDim: Int, ropeDim: Int, angles: RopeAngles,
              style: DecoderConfig.RopeStyle) {
        inner.rope(x, rows: rows, heads: heads, headDim: headDim, ropeDim: ropeDim, angles: angles, style: style)
    }
    func appendKV(_ k: BackendBuffer, _ v: BackendBuffer, rows: RaggedRows, chunks: [SequenceChunk], layer: Int,
                  kvHeads: Int, headDim: Int) {
        inner.appendKV(k, v, rows: rows, chunks: chunks, layer: layer, kvHeads: kvHeads, headDim: headDim)
    }
    func attention(_ q: BackendBuffer, rows: RaggedRows, chunks: [SequenceChunk], layer: Int, heads: Int, kvHeads: Int,
                   headDim: Int, scale: Float, window: Int?, promptAttention: AttentionMask, into out: BackendBuffer) {
        inner.attention(q, rows: rows, chunks: chunks, layer: layer, heads: heads, kvHeads: kvHeads, headDim: headDim,
                        scale: scale, window: window, promptAttention: promptAttention, into: out)
        // One sequence from position 0 (AttentionAnalysis.record): rows are positions 0..<T.
        guard let qh = q as? HostBuffer, let oh = out as? HostBuffer else { unsupported = true; return }
        let T = rows.count, D = headDim, cache = chunks[0].cache
        let qp = qh.p, op = oh.p
        var keys = [Float](repeating: 0, count: kvHeads * T * D), values = keys
        for g in 0..<kvHeads {
            for j in 0..<T {
                for d in 0..<D {
                    keys[g * T * D + j * D + d] = cache.element(layer: layer, values: false, g * cache.capacity * D + j * D + d)
                    values[g * T * D + j * D + d] = cache.element(layer: layer, values: true, g * cache.capacity * D + j * D + d)
                }
            }
        }
        layers[layer] = LayerCapture(T: T, H: heads, Hkv: kvHeads, D: D, scale: scale, window: window,
                                     promptLength: cache.promptLength, promptAttention: promptAttention,
                                     q: Array(UnsafeBufferPointer(start: qp, count: T * heads * D)),
                                     keys: keys, values: values,
                                     out: Array(UnsafeBufferPointer(start: op, count: T * heads * D)))
    }
    func gatedActivation(_ g: BackendBuffer, _ u: BackendBuffer, count: Int, rows: Int, activation: DecoderConfig.Activation) {
        inner.gatedActivation(g, u, count: count, rows: rows, activation: activation)
    }
    func add(_ x: BackendBuffer, _ y: BackendBuffer, count: Int) { inner.add(x, y, count: count) }
    func logits(_ x: BackendBuffer, width: Int, wanted: LogitRows, head: WeightMatrix, normWeight: [Float], eps: Float,
                softcap: Float?) -> [[Float]] {
        inner.logits(x, width: width, wanted: wanted, head: head, normWeight: normWeight, eps: eps, softcap: softcap)
    }
}
