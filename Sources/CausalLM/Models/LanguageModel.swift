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
public struct SequenceChunk {
    public let cache: KVCache
    public let tokens: [Int]
    public let logits: LogitsRequest

    public init(cache: KVCache, tokens: [Int], logits: LogitsRequest = .last) {
        self.cache = cache; self.tokens = tokens; self.logits = logits
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
