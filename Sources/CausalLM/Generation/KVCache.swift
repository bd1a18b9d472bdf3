import CCausalKernels
import Foundation

/// How a decoder's key/value cache stores keys and values, process-wide: `fp32` (the default; `fast` equals
/// `reference` bit for bit) or the opt-in `fp16`, IEEE binary16 rounded to nearest even, which halves the cache's memory
/// and the bytes attention reads per step (llama.cpp's default cache type). Attention converts each stored value
/// exactly back to fp32, so a sequence's logits still do not depend on its batch, padding or chunking; they differ from
/// fp32's by the rounding of K and V (docs/kv-cache.md). LLaMA-family decoders on the CPU use it; GPT-2, T5 and the
/// CUDA backend keep fp32. The CLI's `--kv-cache` and the environment variable `CAUSAL_KV_CACHE` set it.
public enum KVPrecision: String, Sendable, CaseIterable {
    case fp32, fp16

    nonisolated(unsafe) private static var value: KVPrecision =
        ProcessInfo.processInfo.environment["CAUSAL_KV_CACHE"].flatMap(KVPrecision.init(rawValue:)) ?? .fp32

    /// The precision of caches made from now on (a cache keeps the one it was made with).
    public static var current: KVPrecision {
        get { value }
        set { value = newValue }
    }

    /// Bytes per stored key or value element.
    public var bytes: Int { self == .fp32 ? 4 : 2 }

    /// Runs `body` with `current` set to `precision`, then restores the previous value (process-wide: not for
    /// concurrent use with other settings).
    public static func with<T>(_ precision: KVPrecision, _ body: () throws -> T) rethrows -> T {
        let saved = current
        current = precision
        defer { current = saved }
        return try body()
    }
}

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
    /// How keys and values are stored: `keys`/`values` hold them for `.fp32`, `halfKeys`/`halfValues` for `.fp16`.
    public let precision: KVPrecision
    /// Number of positions written so far (the next token's position).
    public internal(set) var count: Int = 0
    private(set) var keys: [UnsafeMutablePointer<Float>]    // per layer: capacity * kvDim floats, laid out by the model
    private(set) var values: [UnsafeMutablePointer<Float>]  // (LLaMA: head-major (kvHeads, capacity, headDim); GPT-2, T5: (capacity, kvDim))
    private(set) var halfKeys: [UnsafeMutablePointer<UInt16>]    // the same layout in binary16 (`.fp16`; else empty)
    private(set) var halfValues: [UnsafeMutablePointer<UInt16>]
    public private(set) var isReleased = false
    /// For a model whose prompt attention is prefix or mixed (a prefix-LM trained with `--attention prefix|mixed`):
    /// the positions of the prompt, which attend to each other as in training. Set by the model from the first chunk
    /// it runs on an empty cache (so that chunk must hold the whole prompt); 0 otherwise.
    public internal(set) var promptLength: Int = 0
    /// The encoder side of an encoder-decoder sequence (nil for decoder-only models).
    public private(set) var cross: CrossAttentionCache?

    public init(layers: Int, kvDim: Int, capacity: Int, precision: KVPrecision = .fp32, cross: CrossAttentionCache? = nil) {
        self.layers = layers
        self.kvDim = kvDim
        self.capacity = capacity
        self.precision = precision
        self.cross = cross
        let fp32 = precision == .fp32
        keys = fp32 ? (0..<layers).map { _ in UnsafeMutablePointer<Float>.allocate(capacity: capacity * kvDim) } : []
        values = fp32 ? (0..<layers).map { _ in UnsafeMutablePointer<Float>.allocate(capacity: capacity * kvDim) } : []
        halfKeys = fp32 ? [] : (0..<layers).map { _ in UnsafeMutablePointer<UInt16>.allocate(capacity: capacity * kvDim) }
        halfValues = fp32 ? [] : (0..<layers).map { _ in UnsafeMutablePointer<UInt16>.allocate(capacity: capacity * kvDim) }
    }

    deinit { freeStorage() }

    private func freeStorage() {
        keys.forEach { $0.deallocate() }
        values.forEach { $0.deallocate() }
        halfKeys.forEach { $0.deallocate() }
        halfValues.forEach { $0.deallocate() }
        keys = []; values = []; halfKeys = []; halfValues = []
    }

    /// Layer `l`'s keys (or values) as raw storage of `precision.bytes`-byte elements.
    func storage(layer l: Int, values v: Bool) -> UnsafeMutableRawPointer {
        switch precision {
        case .fp32: return UnsafeMutableRawPointer(v ? values[l] : keys[l])
        case .fp16: return UnsafeMutableRawPointer(v ? halfValues[l] : halfKeys[l])
        }
    }

    /// Element `i` of layer `l`'s keys (or values, `values: true`) as fp32, exactly as stored, in the model's layout
    /// (a LLaMA-family decoder: head-major, head g's position p at `(g · capacity + p) · headDim`).
    public func element(layer l: Int, values v: Bool, _ i: Int) -> Float {
        switch precision {
        case .fp32: return (v ? values[l] : keys[l])[i]
        case .fp16: return ck_half_to_float((v ? halfValues[l] : halfKeys[l])[i])
        }
    }

    /// Frees the cache's memory now (a cancelled sequence); the cache cannot be used afterwards.
    public func release() {
        guard !isReleased else { return }
        freeStorage()
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

/// How a model lays out each layer's keys (and values) in a `KVCache` of capacity `c`: `groups` contiguous runs of
/// `c × width` floats, position `p` of group `g` at `(g · c + p) · width`. LLaMA-family decoders are head-major
/// (groups = key/value heads, width = head dim); GPT-2 and T5 are position-major (one group, width = kvDim).
/// Copying a position's rows between caches of different capacities needs it; nothing else does.
struct KVLayout: Equatable {
    let groups: Int
    let width: Int

    /// The layout of `model`'s caches; nil for a model whose layout is not known here (no copying then).
    init?(model: LanguageModel) {
        if let d = model as? DecoderModel {
            groups = d.config.kvHeadCount; width = d.config.headDim
        } else if let g = model as? GPT2Model {
            groups = 1; width = g.config.hiddenSize
        } else if let t = model as? T5Model {
            groups = 1; width = t.config.innerDim
        } else {
            return nil
        }
    }

    /// Copies positions `[from, from + count)` of one layer's keys or values (capacity `srcCapacity`) to positions
    /// `[to, to + count)` of another (capacity `dstCapacity`), both of `bytes`-byte elements.
    func copy(_ src: UnsafeRawPointer, capacity srcCapacity: Int, from: Int,
              _ dst: UnsafeMutableRawPointer, capacity dstCapacity: Int, to: Int, count: Int, bytes: Int) {
        guard count > 0 else { return }
        for g in 0..<groups {
            (dst + (g * dstCapacity + to) * width * bytes).copyMemory(from: src + (g * srcCapacity + from) * width * bytes,
                                                                      byteCount: count * width * bytes)
        }
    }
}

/// A compact copy of consecutive positions of a sequence's self-attention keys and values (every layer), laid out as
/// the model's caches are with capacity = `count`. The prefix cache and n > 1 choices keep prompts' rows in these and
/// copy them into fresh caches: the rows are bit-identical to the ones a forward step would write.
final class KVBlock {
    let layers: Int
    let kvDim: Int
    let count: Int
    let layout: KVLayout
    /// The precision of the cache the rows came from; they can only be written into a cache of the same.
    let precision: KVPrecision
    private let storage: UnsafeMutableRawPointer   // layers × (keys, values) × count × kvDim elements

    /// Bytes of keys and values held.
    var bytes: Int { layers * 2 * count * kvDim * precision.bytes }

    private init(layers: Int, kvDim: Int, count: Int, layout: KVLayout, precision: KVPrecision) {
        self.layers = layers; self.kvDim = kvDim; self.count = count; self.layout = layout; self.precision = precision
        storage = .allocate(byteCount: max(layers * 2 * count * kvDim * precision.bytes, 1), alignment: 64)
    }

    deinit { storage.deallocate() }

    private func keys(_ l: Int) -> UnsafeMutableRawPointer { storage + (2 * l) * count * kvDim * precision.bytes }
    private func values(_ l: Int) -> UnsafeMutableRawPointer { storage + (2 * l + 1) * count * kvDim * precision.bytes }

    /// Positions `[from, from + count)` of `cache` (which must hold them).
    convenience init(copying cache: KVCache, from: Int, count: Int, layout: KVLayout) {
        precondition(!cache.isReleased && from >= 0 && count >= 0 && from + count <= cache.count)
        self.init(layers: cache.layers, kvDim: cache.kvDim, count: count, layout: layout, precision: cache.precision)
        let b = precision.bytes
        for l in 0..<layers {
            layout.copy(cache.storage(layer: l, values: false), capacity: cache.capacity, from: from, keys(l), capacity: count, to: 0, count: count, bytes: b)
            layout.copy(cache.storage(layer: l, values: true), capacity: cache.capacity, from: from, values(l), capacity: count, to: 0, count: count, bytes: b)
        }
    }

    /// Positions `[from, from + count)` of this block as a new block.
    func slice(from: Int, count n: Int) -> KVBlock {
        precondition(from >= 0 && n >= 0 && from + n <= count)
        let b = KVBlock(layers: layers, kvDim: kvDim, count: n, layout: layout, precision: precision), e = precision.bytes
        for l in 0..<layers {
            layout.copy(keys(l), capacity: count, from: from, b.keys(l), capacity: n, to: 0, count: n, bytes: e)
            layout.copy(values(l), capacity: count, from: from, b.values(l), capacity: n, to: 0, count: n, bytes: e)
        }
        return b
    }

    /// Writes this block's first `n` positions into `cache` at positions `[at, at + n)`; the cache must hold exactly
    /// `at` positions before, and holds `at + n` after.
    func write(into cache: KVCache, at: Int, count n: Int) {
        precondition(!cache.isReleased && cache.layers == layers && cache.kvDim == kvDim && cache.precision == precision)
        precondition(n >= 0 && n <= count && cache.count == at && at + n <= cache.capacity)
        let e = precision.bytes
        for l in 0..<layers {
            layout.copy(keys(l), capacity: count, from: 0, cache.storage(layer: l, values: false), capacity: cache.capacity, to: at, count: n, bytes: e)
            layout.copy(values(l), capacity: count, from: 0, cache.storage(layer: l, values: true), capacity: cache.capacity, to: at, count: n, bytes: e)
        }
        cache.count = at + n
    }
}
