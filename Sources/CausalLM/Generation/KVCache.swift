import Foundation

/// One sequence's key/value cache: for each layer, `capacity` rows of keys and of values (kvDim floats each).
///
/// Memory is reserved for the whole capacity up front but only the pages that are written become resident.
/// Each sequence owns its cache, so attention for a token can only read its own sequence's keys.
public final class KVCache: @unchecked Sendable {
    public let layers: Int
    public let kvDim: Int
    public let capacity: Int
    /// Number of positions written so far (the next token's position).
    public internal(set) var count: Int = 0
    private(set) var keys: [UnsafeMutablePointer<Float>]    // per layer: (capacity, kvDim)
    private(set) var values: [UnsafeMutablePointer<Float>]  // per layer: (capacity, kvDim)
    public private(set) var isReleased = false

    public init(layers: Int, kvDim: Int, capacity: Int) {
        self.layers = layers
        self.kvDim = kvDim
        self.capacity = capacity
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
        count = 0
        isReleased = true
    }

    /// Forgets positions at and after `position` (e.g. to drop a rejected tail or reset a chat).
    public func truncate(to position: Int) {
        precondition(position >= 0 && position <= count)
        count = position
    }

    public var remaining: Int { capacity - count }
}
