import Foundation

/// One sequence's key/value cache: for each layer, `capacity` rows of keys and of values (kvDim floats each).
///
/// Memory is reserved for the whole capacity up front but only the pages that are written become resident.
/// Each sequence owns its cache, so attention for a token can only read its own sequence's keys.
/// An encoder-decoder model's cache also holds `cross`: the cross-attention keys and values computed once from that
/// sequence's encoder output.
public final class KVCache: @unchecked Sendable {
    public let layers: Int
    public let kvDim: Int
    public let capacity: Int
    /// Number of positions written so far (the next token's position).
    public internal(set) var count: Int = 0
    private(set) var keys: [UnsafeMutablePointer<Float>]    // per layer: capacity * kvDim floats, laid out by the model
    private(set) var values: [UnsafeMutablePointer<Float>]  // (LLaMA: head-major (kvHeads, capacity, headDim); GPT-2, T5: (capacity, kvDim))
    public private(set) var isReleased = false
    /// For a model whose prompt attention is prefix or mixed (a prefix-LM trained with `--attention prefix|mixed`):
    /// the positions of the prompt, which attend to each other as in training. Set by the model from the first chunk
    /// it runs on an empty cache (so that chunk must hold the whole prompt); 0 otherwise.
    public internal(set) var promptLength: Int = 0
    /// The encoder side of an encoder-decoder sequence (nil for decoder-only models).
    public private(set) var cross: CrossAttentionCache?

    public init(layers: Int, kvDim: Int, capacity: Int, cross: CrossAttentionCache? = nil) {
        self.layers = layers
        self.kvDim = kvDim
        self.capacity = capacity
        self.cross = cross
        keys = (0..<layers).map { _ in UnsafeMutablePointer<Float>.allocate(capacity: capacity * kvDim) }
        values = (0..<layers).map { _ in UnsafeMutablePointer<Float>.allocate(capacity: capacity * kvDim) }
    }

    deinit {
        keys.forEach { $0.deallocate() }
        values.forEach { $0.deallocate() }
    }

    /// Frees the cache's memory now (a cancelled sequence); the cache cannot be used afterwards.
    public func release() {
        guard !isReleased else { return }
        keys.forEach { $0.deallocate() }
        values.forEach { $0.deallocate() }
        keys = []
        values = []
        cross = nil
        count = 0
        isReleased = true
    }

    /// Forgets positions at and after `position` (e.g. to drop a rejected tail or reset a chat).
    public func truncate(to position: Int) {
        precondition(position >= 0 && position <= count)
        count = position
        if position < promptLength { promptLength = 0 }
    }

    public var remaining: Int { capacity - count }
}

/// One sequence's cross-attention keys and values: for each decoder layer, (length, kvDim) floats projected from the
/// encoder's output for that sequence's input. Written once when the sequence starts, then only read.
public final class CrossAttentionCache: @unchecked Sendable {
    public let layers: Int
    public let kvDim: Int
    /// Encoder positions (tokens of the sequence's input).
    public let length: Int
    let keys: [UnsafeMutablePointer<Float>]    // per layer: (length, kvDim)
    let values: [UnsafeMutablePointer<Float>]  // per layer: (length, kvDim)

    public init(layers: Int, kvDim: Int, length: Int) {
        self.layers = layers
        self.kvDim = kvDim
        self.length = length
        keys = (0..<layers).map { _ in UnsafeMutablePointer<Float>.allocate(capacity: max(length * kvDim, 1)) }
        values = (0..<layers).map { _ in UnsafeMutablePointer<Float>.allocate(capacity: max(length * kvDim, 1)) }
    }

    deinit {
        keys.forEach { $0.deallocate() }
        values.forEach { $0.deallocate() }
    }
}
