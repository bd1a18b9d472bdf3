import Foundation

// Byte-level BPE (GPT-2 style), as stored in GGUF files with `tokenizer.ggml.model = "gpt2"`.
//
// Encoding: special tokens are cut out of the text first (leftmost, longest match); every stretch between them is
// split by the pre-tokenizer (PreTokenizer.swift); each pre-token's UTF-8 bytes become one symbol per byte (the
// vocabulary spells byte b as the scalar `ByteLevel.byteToScalar[b]`), and adjacent symbols are merged by merge
// rank (lowest rank first; among equal ranks the leftmost pair) until no adjacent pair has a merge.
// Decoding maps each token's scalars back to bytes and decodes the bytes as UTF-8 (ill-formed bytes become U+FFFD).

/// GPT-2's reversible map between the 256 byte values and printable Unicode scalars.
enum ByteLevel {
    /// Byte → scalar value: printable Latin-1 bytes map to themselves, the other 68 bytes (in order) to U+0100....
    static let byteToScalar: [UInt32] = {
        var table = [UInt32](repeating: 0, count: 256)
        var next: UInt32 = 256
        for b in 0..<256 {
            if (0x21...0x7E).contains(b) || (0xA1...0xAC).contains(b) || (0xAE...0xFF).contains(b) {
                table[b] = UInt32(b)
            } else {
                table[b] = next
                next += 1
            }
        }
        return table
    }()

    /// Byte → the UTF-8 of its scalar.
    static let byteToUTF8: [[UInt8]] = byteToScalar.map { Array(String(Unicode.Scalar($0)!).utf8) }

    /// Scalar value → byte, or -1; indexed by scalar values below `scalarToByte.count`.
    static let scalarToByte: [Int16] = {
        var table = [Int16](repeating: -1, count: 324)
        for (b, s) in byteToScalar.enumerated() { table[Int(s)] = Int16(b) }
        return table
    }()
}

/// An immutable hash table from byte strings to their index in a list (the first index where strings repeat).
/// Used for the vocabulary: looking tokens up by their UTF-8 bytes avoids String hashing (which is slow for non-ASCII
/// text and treats canonically equivalent strings as equal).
struct ByteSpanTable: Sendable {
    private let storage: [UInt8]
    private let starts: [Int]
    private let slots: [Int32]
    private let mask: Int

    init(_ strings: [String]) {
        var storage: [UInt8] = []
        storage.reserveCapacity(strings.count * 8)
        var starts: [Int] = []
        starts.reserveCapacity(strings.count + 1)
        for s in strings {
            starts.append(storage.count)
            storage.append(contentsOf: s.utf8)
        }
        starts.append(storage.count)
        var capacity = 16
        while capacity < strings.count * 2 { capacity <<= 1 }
        var slots = [Int32](repeating: -1, count: capacity)
        let mask = capacity - 1
        storage.withUnsafeBufferPointer { st in
            slots.withUnsafeMutableBufferPointer { sl in
                for i in 0..<strings.count {
                    let span = UnsafeBufferPointer(rebasing: st[starts[i]..<starts[i + 1]])
                    var slot = Int(truncatingIfNeeded: Self.hash(span, nil)) & mask
                    var duplicate = false
                    while sl[slot] >= 0 {
                        let j = Int(sl[slot])
                        if Self.equal(st, starts[j], starts[j + 1], span, nil) { duplicate = true; break }
                        slot = (slot + 1) & mask
                    }
                    if !duplicate { sl[slot] = Int32(i) }
                }
            }
        }
        self.storage = storage
        self.starts = starts
        self.slots = slots
        self.mask = mask
    }

    /// The index of the string whose bytes are `a` followed by `b` (if given).
    func find(_ a: UnsafeBufferPointer<UInt8>, _ b: UnsafeBufferPointer<UInt8>? = nil) -> Int? {
        var slot = Int(truncatingIfNeeded: Self.hash(a, b)) & mask
        return storage.withUnsafeBufferPointer { st in
            while true {
                let j = Int(slots[slot])
                if j < 0 { return nil }
                if Self.equal(st, starts[j], starts[j + 1], a, b) { return j }
                slot = (slot + 1) & mask
            }
        }
    }

    @inline(__always)
    private static func hash(_ a: UnsafeBufferPointer<UInt8>, _ b: UnsafeBufferPointer<UInt8>?) -> UInt64 {
        // FNV-1a, then MurmurHash3's finalizer so that the low bits are well mixed.
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for x in a { h = (h ^ UInt64(x)) &* 0x100_0000_01b3 }
        if let b { for x in b { h = (h ^ UInt64(x)) &* 0x100_0000_01b3 } }
        h ^= h >> 33
        h = h &* 0xff51_afd7_ed55_8ccd
        h ^= h >> 33
        h = h &* 0xc4ce_b9fe_1a85_ec53
        h ^= h >> 33
        return h
    }

    @inline(__always)
    private static func equal(_ st: UnsafeBufferPointer<UInt8>, _ lo: Int, _ hi: Int,
                              _ a: UnsafeBufferPointer<UInt8>, _ b: UnsafeBufferPointer<UInt8>?) -> Bool {
        let bCount = b?.count ?? 0
        guard hi - lo == a.count + bCount else { return false }
        for k in 0..<a.count where st[lo + k] != a[k] { return false }
        if let b {
            let off = lo + a.count
            for k in 0..<b.count where st[off + k] != b[k] { return false }
        }
        return true
    }
}

/// GGUF token types (`tokenizer.ggml.token_type`).
enum TokenType {
    static let normal = 1, unknown = 2, control = 3, userDefined = 4, unused = 5, byte = 6
}

/// A special token as matched inside text.
struct SpecialToken: Sendable {
    let scalars: [Unicode.Scalar]
    let id: Int
    /// Matched even when special-token parsing is off (user-defined tokens, like Hugging Face's non-special added
    /// tokens and llama.cpp's user-defined tokens).
    let always: Bool
}

/// Finds special tokens in text: at each position the longest token that starts there (among equal texts, the
/// lowest id). Tokens are found by hashing the text's prefixes of each length some token starting with that scalar
/// has, so the cost does not grow with the number of special tokens (Gemma 3 has 6,414, most starting with "<").
struct SpecialMatcher: Sendable {
    private let tokens: [SpecialToken]
    /// Distinct lengths (in scalars) of the tokens that start with a scalar value, longest first.
    private var lengthsByFirst: [UInt32: [Int]] = [:]
    private var asciiFirst = [Bool](repeating: false, count: 128)
    /// FNV-1a hash of a token's scalar values → indices into `tokens`, lowest id first.
    private var byHash: [UInt64: [Int]] = [:]
    private(set) var isEmpty = true
    private(set) var hasAlways = false

    init(_ tokens: [SpecialToken]) {
        let list = tokens.filter { !$0.scalars.isEmpty }.sorted { $0.id < $1.id }
        self.tokens = list
        var lengths: [UInt32: Set<Int>] = [:]
        for (k, t) in list.enumerated() {
            let f = t.scalars[0].value
            lengths[f, default: []].insert(t.scalars.count)
            if f < 128 { asciiFirst[Int(f)] = true }
            var h = Self.seed
            for c in t.scalars { h = Self.step(h, c.value) }
            byHash[h, default: []].append(k)
            isEmpty = false
            if t.always { hasAlways = true }
        }
        lengthsByFirst = lengths.mapValues { $0.sorted(by: >) }
    }

    private static let seed: UInt64 = 0xcbf2_9ce4_8422_2325
    @inline(__always) private static func step(_ h: UInt64, _ v: UInt32) -> UInt64 { (h ^ UInt64(v)) &* 0x100_0000_01b3 }

    @inline(__always)
    func match(_ s: UnsafeBufferPointer<Unicode.Scalar>, at i: Int, parseSpecial: Bool) -> (length: Int, id: Int)? {
        let f = s[i].value
        if f < 128 && !asciiFirst[Int(f)] { return nil }
        guard let lengths = lengthsByFirst[f] else { return nil }
        let maxLength = min(lengths[0], s.count - i)
        return withUnsafeTemporaryAllocation(of: UInt64.self, capacity: maxLength + 1) { prefix in
            // prefix[k] = hash of s[i ..< i + k]
            var h = Self.seed
            prefix[0] = h
            for k in 0..<maxLength {
                h = Self.step(h, s[i + k].value)
                prefix[k + 1] = h
            }
            for length in lengths where length <= maxLength {
                guard let candidates = byHash[prefix[length]] else { continue }
                for c in candidates {
                    let t = tokens[c]
                    guard t.scalars.count == length, parseSpecial || t.always else { continue }
                    var k = 0
                    while k < length && t.scalars[k] == s[i + k] { k += 1 }
                    if k == length { return (length, t.id) }
                }
            }
            return nil
        }
    }
}

/// Cache key: a pre-token's bytes (short ones packed inline).
struct WordKey: Hashable {
    var w0: UInt64 = 0
    var w1: UInt64 = 0
    var count = 0
    var tail: [UInt8]? = nil

    init(_ b: UnsafeBufferPointer<UInt8>) {
        count = b.count
        if b.count <= 16 {
            for k in 0..<b.count {
                if k < 8 { w0 |= UInt64(b[k]) << (8 * UInt64(k)) } else { w1 |= UInt64(b[k]) << (8 * UInt64(k - 8)) }
            }
        } else {
            tail = Array(b)
        }
    }
}

/// A BPE merge waiting in the queue: `key` = rank << 32 | position of the left symbol, so that the smallest key is
/// the lowest rank and, among equal ranks, the leftmost pair.
struct MergeCandidate: MinHeapElement {
    var key: UInt64
    var left: Int32
    var right: Int32
    var merged: Int32
}

/// Reusable buffers for one encode call.
struct EncodeScratch {
    var bytes: [UInt8] = []
    var ids: [Int32] = []
    var prev: [Int32] = []
    var next: [Int32] = []
    var heap: [MergeCandidate] = []
    var word: [Int32] = []
    var pieces: [Range<Int>] = []
    /// A pre-token spelled in the vocabulary's byte-to-scalar alphabet (UTF-8), for `ignore_merges`.
    var spelled: [UInt8] = []

    mutating func push(_ c: MergeCandidate) { heap.pushMin(c) }

    mutating func pop() -> MergeCandidate? { heap.popMin() }
}

/// A byte-level BPE tokenizer (GPT-2 family). Immutable after init apart from a locked word cache; thread-safe.
public final class ByteLevelBPETokenizer: @unchecked Sendable {
    public let bosTokenID: Int?
    public let eosTokenID: Int?
    public let padTokenID: Int?
    public let unknownTokenID: Int?
    /// Whether `encode` puts the BOS token first.
    public let addBOS: Bool
    /// The pre-tokenizer name this tokenizer was built with (`tokenizer.ggml.pre`).
    public let preTokenizerName: String

    private let tokens: [String]
    private let tokenTypes: [Int]
    private let vocab: ByteSpanTable
    /// (left id << 32 | right id) → (rank << 32 | merged id).
    private let merges: [UInt64: UInt64]
    /// Id of the single-byte token for each byte, or -1.
    private let byteIDs: [Int32]
    /// Decoded bytes of every token: `pieceBytes[pieceStarts[id] ..< pieceStarts[id + 1]]`.
    private let pieceBytes: [UInt8]
    private let pieceStarts: [Int]
    /// Tokens left out by `decode(skipSpecial: true)`: control and unknown-type tokens.
    private let skippedOnDecode: [Bool]
    private let specials: SpecialMatcher
    private let preTokenizer: PreTokenizer

    private let cacheLock = NSLock()
    private var cache: [WordKey: [Int32]] = [:]
    private static let cacheLimit = 1 << 16

    /// - Parameters:
    ///   - tokens: the vocabulary in id order, byte-level spelled (e.g. "Ġthe"); special tokens literally.
    ///   - tokenTypes: one GGUF token type per token (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte).
    ///   - merges: "left right" pairs; the rank of a merge is its index.
    ///   - preTokenizer: a `tokenizer.ggml.pre` name: `smollm`, `gpt2` (also `gpt-2`, `default`), `qwen2`, `llama-bpe`
    ///     (Llama 3; also `llama3`, `llama-v3`).
    /// Errors are `CausalError.badConfig` naming the GGUF key at fault.
    public init(tokens: [String], tokenTypes: [Int], merges: [String], preTokenizer: String,
                bosTokenID: Int?, eosTokenID: Int?, padTokenID: Int?, unknownTokenID: Int?, addBOS: Bool) throws {
        let n = tokens.count
        guard n > 0 else { throw CausalError.badConfig(key: "tokenizer.ggml.tokens", reason: "the vocabulary is empty") }
        guard n < Int(Int32.max) else {
            throw CausalError.badConfig(key: "tokenizer.ggml.tokens", reason: "\(n) tokens is more than supported (\(Int32.max - 1))")
        }
        guard tokenTypes.count == n else {
            throw CausalError.badConfig(key: "tokenizer.ggml.token_type",
                                        reason: "\(tokenTypes.count) token types for \(n) tokens (tokenizer.ggml.tokens); the counts must match")
        }
        guard let pre = PreTokenizer(name: preTokenizer) else {
            throw CausalError.badConfig(key: "tokenizer.ggml.pre",
                                        reason: "unsupported pre-tokenizer '\(preTokenizer)' (supported: \(PreTokenizer.supportedNames.joined(separator: ", ")))")
        }
        for (key, value) in [("tokenizer.ggml.bos_token_id", bosTokenID), ("tokenizer.ggml.eos_token_id", eosTokenID),
                             ("tokenizer.ggml.padding_token_id", padTokenID), ("tokenizer.ggml.unknown_token_id", unknownTokenID)] {
            if let v = value, v < 0 || v >= n {
                throw CausalError.badConfig(key: key, reason: "token id \(v) is outside the vocabulary (0..<\(n))")
            }
        }
        if addBOS && bosTokenID == nil {
            throw CausalError.badConfig(key: "tokenizer.ggml.add_bos_token", reason: "BOS is to be added but there is no tokenizer.ggml.bos_token_id")
        }

        self.tokens = tokens
        self.tokenTypes = tokenTypes
        self.bosTokenID = bosTokenID
        self.eosTokenID = eosTokenID
        self.padTokenID = padTokenID
        self.unknownTokenID = unknownTokenID
        self.addBOS = addBOS
        self.preTokenizerName = preTokenizer
        self.preTokenizer = pre

        let vocab = ByteSpanTable(tokens)
        self.vocab = vocab

        // Merges.
        var table: [UInt64: UInt64] = [:]
        table.reserveCapacity(merges.count)
        for (rank, line) in merges.enumerated() {
            var line = line
            try line.withUTF8 { buf in
                var space = -1
                var spaces = 0
                for k in 0..<buf.count where buf[k] == 0x20 {
                    spaces += 1
                    space = k
                }
                guard spaces == 1, space > 0, space < buf.count - 1 else {
                    throw CausalError.badConfig(key: "tokenizer.ggml.merges",
                                                reason: "merge #\(rank) \"\(String(decoding: buf, as: UTF8.self))\" is not two tokens separated by one space")
                }
                let a = UnsafeBufferPointer(rebasing: buf[0..<space])
                let b = UnsafeBufferPointer(rebasing: buf[(space + 1)...])
                // A merge whose parts or result are not in the vocabulary can never apply; it is ignored (as llama.cpp does).
                guard let l = vocab.find(a), let r = vocab.find(b), let m = vocab.find(a, b) else { return }
                let key = UInt64(l) << 32 | UInt64(r)
                if table[key] == nil { table[key] = UInt64(rank) << 32 | UInt64(m) }
            }
        }
        self.merges = table

        // Single-byte tokens.
        var byteIDs = [Int32](repeating: -1, count: 256)
        for b in 0..<256 {
            var s = String(Unicode.Scalar(ByteLevel.byteToScalar[b])!)
            if let id = s.withUTF8({ vocab.find($0) }) { byteIDs[b] = Int32(id) }
        }
        self.byteIDs = byteIDs

        // Decoded bytes per token. Special tokens are their literal text; a normal token is its scalars mapped back to
        // bytes, or, if some scalar is outside the byte map, its literal UTF-8 (as Hugging Face's ByteLevel decoder does).
        var pieceBytes: [UInt8] = []
        pieceBytes.reserveCapacity(n * 6)
        var pieceStarts: [Int] = []
        pieceStarts.reserveCapacity(n + 1)
        var skipped = [Bool](repeating: false, count: n)
        var specialTokens: [SpecialToken] = []
        let inverse = ByteLevel.scalarToByte
        for id in 0..<n {
            pieceStarts.append(pieceBytes.count)
            let type = tokenTypes[id]
            let literal: Bool
            switch type {
            case TokenType.control, TokenType.unknown:
                literal = true
                skipped[id] = true
                specialTokens.append(SpecialToken(scalars: Array(tokens[id].unicodeScalars), id: id, always: false))
            case TokenType.userDefined:
                literal = true
                specialTokens.append(SpecialToken(scalars: Array(tokens[id].unicodeScalars), id: id, always: true))
            default:
                let mark = pieceBytes.count
                var mapped = true
                for s in tokens[id].unicodeScalars {
                    let v = Int(s.value)
                    if v < inverse.count, inverse[v] >= 0 { pieceBytes.append(UInt8(inverse[v])) } else { mapped = false; break }
                }
                if !mapped { pieceBytes.removeSubrange(mark...) }
                literal = !mapped
            }
            if literal { pieceBytes.append(contentsOf: tokens[id].utf8) }
        }
        pieceStarts.append(pieceBytes.count)
        self.pieceBytes = pieceBytes
        self.pieceStarts = pieceStarts
        self.skippedOnDecode = skipped
        self.specials = SpecialMatcher(specialTokens)
    }

    public var vocabularySize: Int { tokens.count }

    /// The raw vocabulary string of a token (byte-level spelled, e.g. "Ġthe"), or nil outside the vocabulary.
    public func tokenString(_ id: Int) -> String? {
        id >= 0 && id < tokens.count ? tokens[id] : nil
    }

    /// The id of a raw vocabulary string (exact bytes).
    public func id(of token: String) -> Int? {
        var t = token
        return t.withUTF8 { vocab.find($0) }
    }

    /// Whether a token is special: a control or user-defined token.
    public func isSpecial(_ id: Int) -> Bool {
        guard id >= 0 && id < tokens.count else { return false }
        return tokenTypes[id] == TokenType.control || tokenTypes[id] == TokenType.userDefined
    }

    /// The GGUF token type of a token (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte).
    public func tokenType(_ id: Int) -> Int? {
        id >= 0 && id < tokens.count ? tokenTypes[id] : nil
    }

    // MARK: Encoding

    /// Token ids of `text`. With `parseSpecial`, control tokens written in the text (e.g. "<|im_start|>") become their
    /// ids; without it they are ordinary text. User-defined tokens are always matched. BOS is added only if `addBOS`.
    public func encode(_ text: String, parseSpecial: Bool = true) -> [Int] {
        var out: [Int] = []
        if addBOS, let b = bosTokenID { out.append(b) }
        if text.isEmpty { return out }
        let scalars = Array(text.unicodeScalars)
        let classes = scalars.map(ScalarClass.of)
        out.reserveCapacity(out.count + scalars.count / 3 + 4)
        var scratch = EncodeScratch()
        scalars.withUnsafeBufferPointer { s in
            classes.withUnsafeBufferPointer { c in
                let n = s.count
                if specials.isEmpty || (!parseSpecial && !specials.hasAlways) {
                    encodeSegment(s, c, 0..<n, &scratch, &out)
                    return
                }
                var start = 0
                var i = 0
                while i < n {
                    if let m = specials.match(s, at: i, parseSpecial: parseSpecial) {
                        if start < i { encodeSegment(s, c, start..<i, &scratch, &out) }
                        out.append(m.id)
                        i += m.length
                        start = i
                    } else {
                        i += 1
                    }
                }
                if start < n { encodeSegment(s, c, start..<n, &scratch, &out) }
            }
        }
        return out
    }

    /// The pieces the pre-tokenizer cuts `text` into (special tokens are not looked for): what BPE then encodes one
    /// by one. For inspection and tests.
    public func preTokenizedPieces(_ text: String) -> [String] {
        let scalars = Array(text.unicodeScalars)
        let classes = scalars.map(ScalarClass.of)
        var pieces: [Range<Int>] = []
        scalars.withUnsafeBufferPointer { s in
            classes.withUnsafeBufferPointer { c in preTokenizer.split(s, c, 0..<s.count, into: &pieces) }
        }
        return pieces.map { r in
            var v = String.UnicodeScalarView()
            v.append(contentsOf: scalars[r])
            return String(v)
        }
    }

    private func encodeSegment(_ s: UnsafeBufferPointer<Unicode.Scalar>, _ c: UnsafeBufferPointer<ScalarClass>,
                               _ range: Range<Int>, _ scratch: inout EncodeScratch, _ out: inout [Int]) {
        var pieces = scratch.pieces
        scratch.pieces = []
        pieces.removeAll(keepingCapacity: true)
        preTokenizer.split(s, c, range, into: &pieces)
        for piece in pieces {
            // UTF-8 bytes of the piece.
            scratch.bytes.removeAll(keepingCapacity: true)
            for k in piece {
                let v = s[k].value
                if v < 0x80 {
                    scratch.bytes.append(UInt8(v))
                } else if v < 0x800 {
                    scratch.bytes.append(UInt8(0xC0 | (v >> 6)))
                    scratch.bytes.append(UInt8(0x80 | (v & 0x3F)))
                } else if v < 0x10000 {
                    scratch.bytes.append(UInt8(0xE0 | (v >> 12)))
                    scratch.bytes.append(UInt8(0x80 | ((v >> 6) & 0x3F)))
                    scratch.bytes.append(UInt8(0x80 | (v & 0x3F)))
                } else {
                    scratch.bytes.append(UInt8(0xF0 | (v >> 18)))
                    scratch.bytes.append(UInt8(0x80 | ((v >> 12) & 0x3F)))
                    scratch.bytes.append(UInt8(0x80 | ((v >> 6) & 0x3F)))
                    scratch.bytes.append(UInt8(0x80 | (v & 0x3F)))
                }
            }
            encodeWord(&scratch, &out)
        }
        scratch.pieces = pieces
    }

    /// Encodes the bytes in `scratch.bytes` (one pre-token), through the word cache.
    private func encodeWord(_ scratch: inout EncodeScratch, _ out: inout [Int]) {
        if scratch.bytes.count == 1 {
            appendSymbol(byteIDs[Int(scratch.bytes[0])], &out)
            return
        }
        if preTokenizer.ignoresMerges {
            // A pre-token that is a vocabulary entry is that token (Llama 3's ignore_merges).
            scratch.spelled.removeAll(keepingCapacity: true)
            for b in scratch.bytes { scratch.spelled.append(contentsOf: ByteLevel.byteToUTF8[Int(b)]) }
            if let id = scratch.spelled.withUnsafeBufferPointer({ vocab.find($0) }) {
                out.append(id)
                return
            }
        }
        let key = scratch.bytes.withUnsafeBufferPointer { WordKey($0) }
        cacheLock.lock()
        let hit = cache[key]
        cacheLock.unlock()
        if let hit {
            for id in hit { appendSymbol(id, &out) }
            return
        }
        bpe(&scratch)
        let word = scratch.word
        for id in word { appendSymbol(id, &out) }
        cacheLock.lock()
        if cache.count >= Self.cacheLimit { cache.removeAll(keepingCapacity: true) }
        cache[key] = word
        cacheLock.unlock()
    }

    /// Appends a symbol's id. A byte that has no token in the vocabulary (SmolLM2 lacks 21 of the 256, e.g. 0xF1,
    /// 0xC0) is dropped, as Hugging Face's BPE without an unknown token and llama.cpp both do.
    @inline(__always)
    private func appendSymbol(_ id: Int32, _ out: inout [Int]) {
        if id >= 0 { out.append(Int(id)) }
    }

    @inline(__always)
    private func mergeOf(_ a: Int32, _ b: Int32) -> UInt64? {
        guard a >= 0, b >= 0 else { return nil }
        return merges[UInt64(UInt32(a)) << 32 | UInt64(UInt32(b))]
    }

    /// BPE over `scratch.bytes`; the resulting ids go to `scratch.word`.
    /// Symbols form a linked list; candidate merges wait in a min-heap keyed by (rank, position); a popped candidate
    /// is applied only if both of its symbols are still as they were.
    private func bpe(_ scratch: inout EncodeScratch) {
        let n = scratch.bytes.count
        scratch.ids.removeAll(keepingCapacity: true)
        scratch.prev.removeAll(keepingCapacity: true)
        scratch.next.removeAll(keepingCapacity: true)
        scratch.heap.removeAll(keepingCapacity: true)
        for k in 0..<n {
            scratch.ids.append(byteIDs[Int(scratch.bytes[k])])
            scratch.prev.append(Int32(k - 1))
            scratch.next.append(k + 1 < n ? Int32(k + 1) : -1)
        }
        for k in 0..<(n - 1) {
            if let m = mergeOf(scratch.ids[k], scratch.ids[k + 1]) {
                scratch.push(MergeCandidate(key: (m >> 32) << 32 | UInt64(k), left: scratch.ids[k], right: scratch.ids[k + 1],
                                            merged: Int32(truncatingIfNeeded: m)))
            }
        }
        let absorbed = Int32.min
        while let top = scratch.pop() {
            let pos = Int(top.key & 0xFFFF_FFFF)
            guard scratch.ids[pos] == top.left else { continue }
            let r = Int(scratch.next[pos])
            guard r >= 0, scratch.ids[r] == top.right else { continue }
            scratch.ids[pos] = top.merged
            scratch.ids[r] = absorbed
            let nn = scratch.next[r]
            scratch.next[pos] = nn
            if nn >= 0 { scratch.prev[Int(nn)] = Int32(pos) }
            let p = Int(scratch.prev[pos])
            if p >= 0, let m = mergeOf(scratch.ids[p], top.merged) {
                scratch.push(MergeCandidate(key: (m >> 32) << 32 | UInt64(p), left: scratch.ids[p], right: top.merged,
                                            merged: Int32(truncatingIfNeeded: m)))
            }
            if nn >= 0, let m = mergeOf(top.merged, scratch.ids[Int(nn)]) {
                scratch.push(MergeCandidate(key: (m >> 32) << 32 | UInt64(pos), left: top.merged, right: scratch.ids[Int(nn)],
                                            merged: Int32(truncatingIfNeeded: m)))
            }
        }
        scratch.word.removeAll(keepingCapacity: true)
        var k = 0
        while k >= 0 {
            scratch.word.append(scratch.ids[k])
            k = Int(scratch.next[k])
        }
    }

    // MARK: Decoding

    /// The text of `ids`: token bytes concatenated and decoded as UTF-8 (ill-formed bytes become U+FFFD).
    /// Special tokens give their literal text unless `skipSpecial` (which leaves out control and unknown tokens).
    public func decode(_ ids: [Int], skipSpecial: Bool = false) throws -> String {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(ids.count * 4)
        for id in ids { try appendBytes(of: id, skipSpecial: skipSpecial, to: &bytes) }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Appends the decoded bytes of one token; returns false when it is skipped (a special token with `skipSpecial`).
    @discardableResult
    func appendBytes(of id: Int, skipSpecial: Bool, to bytes: inout [UInt8]) throws -> Bool {
        guard id >= 0 && id < tokens.count else { throw CausalError.badTokenID(id: id, vocabularySize: tokens.count) }
        if skipSpecial && skippedOnDecode[id] { return false }
        bytes.append(contentsOf: pieceBytes[pieceStarts[id]..<pieceStarts[id + 1]])
        return true
    }
}
