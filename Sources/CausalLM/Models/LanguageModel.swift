import Foundation
import CausalKernels

/// How weights are used at run time.
public enum Precision: String, Sendable, CaseIterable {
    /// Quantized weights used in place from the memory map; fp32 activations and accumulation.
    case fast
    /// Every weight dequantized to fp32 at load; fp32 math. The numerics oracle.
    case reference
}

/// Which logit rows a chunk wants back.
public enum LogitsRequest: Sendable, Equatable {
    case none
    /// Only the chunk's last token (what generation needs).
    case last
    /// Every token of the chunk (what scoring and tests need).
    case all
}

/// A piece of one sequence to run in a forward step: `tokens` continue the sequence at `cache.count`.
/// With an `adapter`, the decoder adds that LoRA adapter's update to the outputs of the linear layers it adapts, for
/// this chunk's rows only (chunks of other adapters, or none, may share the step). A sequence keeps one adapter: its
/// cache holds keys and values computed with it.
public struct SequenceChunk {
    public let cache: KVCache
    public let tokens: [Int]
    public let logits: LogitsRequest
    public let adapter: LoRAAdapter?

    public init(cache: KVCache, tokens: [Int], logits: LogitsRequest = .last, adapter: LoRAAdapter? = nil) {
        self.cache = cache; self.tokens = tokens; self.logits = logits; self.adapter = adapter
    }
}

/// A decoder-only language model over ragged batches: one forward step runs any mix of sequences and
/// chunk lengths, with no padding, and a row's result does not depend on the other rows.
public protocol LanguageModel: AnyObject {
    var vocabularySize: Int { get }
    var contextLength: Int { get }
    /// A new, empty per-sequence cache able to hold `capacity` positions (default: the model's context).
    func makeCache(capacity: Int?) -> KVCache
    /// Runs every chunk; returns per chunk its requested logits, row-major (rows × vocabularySize).
    /// Each chunk's cache advances by its token count.
    func forward(_ chunks: [SequenceChunk]) throws -> [[Float]]
}

extension LanguageModel {
    /// True when the first chunk of a sequence must hold its whole prompt (a prefix-LM reads its prompt
    /// bidirectionally); generators then never split prompts.
    public var needsWholePrompt: Bool {
        guard let d = self as? DecoderModel else { return false }
        return d.promptAttention != .causal
    }
}

/// An encoder-decoder model (T5): the decoder is the `LanguageModel` that generation steps, and each sequence's
/// cache carries the cross-attention keys and values of its own encoder input, computed once when it starts.
/// Generation then runs exactly as for a decoder-only model and returns only decoder output.
public protocol EncoderDecoderModel: LanguageModel {
    /// The id a decoder prompt starts with.
    var decoderStartTokenID: Int { get }
    /// Runs the encoder over every input (one ragged batch; each input's result does not depend on the others) and
    /// returns, per input, an empty decoder cache holding that input's cross-attention keys and values.
    func makeCaches(encoderInputs: [[Int]], capacity: Int?) throws -> [KVCache]
}

/// The rows of a ragged step whose logits the chunks asked for (`LogitsRequest`), in order, and each chunk's
/// range among them. Shared by the models' output heads.
/// The rows of one ragged step: every token of every chunk, with its chunk and its position in that chunk's
/// sequence. No padding anywhere.
struct RaggedRows {
    let chunk: [Int]
    let position: [Int]
    let tokens: [Int]
    var count: Int { chunk.count }

    /// Checks every chunk (its cache is live and holds `context(cache)` positions or fewer after this step, its
    /// tokens are inside the vocabulary, plus the model's own `check`) and lays out the rows.
    init(_ chunks: [SequenceChunk], vocabularySize V: Int, context: (KVCache) -> Int = { $0.capacity },
         check: (Int, SequenceChunk) throws -> Void = { _, _ in }) throws {
        var chunk: [Int] = [], position: [Int] = []
        for (ci, c) in chunks.enumerated() {
            guard !c.cache.isReleased else { throw CausalError.invalidArgument("chunk \(ci): its cache was released") }
            try check(ci, c)
            let limit = context(c.cache)
            guard c.cache.count + c.tokens.count <= limit else {
                throw CausalError.invalidArgument("sequence of \(c.cache.count + c.tokens.count) tokens exceeds its context of \(limit)")
            }
            for (i, t) in c.tokens.enumerated() {
                guard t >= 0 && t < V else { throw CausalError.badTokenID(id: t, vocabularySize: V) }
                chunk.append(ci); position.append(c.cache.count + i)
            }
        }
        self.chunk = chunk; self.position = position; self.tokens = chunks.flatMap(\.tokens)
    }
}

struct LogitRows {
    let rows: [Int]
    let ranges: [Range<Int>]

    init(_ chunks: [SequenceChunk]) {
        var rows: [Int] = [], ranges: [Range<Int>] = [], start = 0
        for c in chunks {
            let lo = rows.count
            switch c.logits {
            case .none: break
            case .last: rows.append(start + c.tokens.count - 1)
            case .all: rows.append(contentsOf: start..<(start + c.tokens.count))
            }
            ranges.append(lo..<rows.count)
            start += c.tokens.count
        }
        self.rows = rows; self.ranges = ranges
    }

    /// Normalizes each wanted row of `x` (n, C) with `norm(source, destination)`, applies `head` (V, C) to all of
    /// them in one product and returns each chunk's logits, row-major.
    func logits(_ x: UnsafePointer<Float>, C: Int, head: WeightMatrix, pool: ThreadPool,
                norm: (UnsafePointer<Float>, UnsafeMutablePointer<Float>) -> Void) -> [[Float]] {
        guard !rows.isEmpty else { return ranges.map { _ in [] } }
        let m = rows.count, V = head.rows
        let hn = Buffer(m * C)
        defer { hn.free() }
        for (i, r) in rows.enumerated() { norm(x + r * C, hn.p + i * C) }
        var logits = [Float](repeating: 0, count: m * V)
        logits.withUnsafeMutableBufferPointer { matmul(head, hn.p, rows: m, into: $0.baseAddress!, pool: pool) }
        return ranges.map { Array(logits[($0.lowerBound * V)..<($0.upperBound * V)]) }
    }
}
