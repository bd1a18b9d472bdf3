import Foundation

// SentencePiece-style BPE: GGUF `tokenizer.ggml.model = "llama"` (llama.cpp's "SPM" vocabulary), as Gemma 3 and
// Llama 1/2 ship it. The vocabulary holds pieces in SentencePiece's spelling ("▁the": U+2581 for a space), one score
// per piece, and the 256 byte pieces "<0x00>" … "<0xFF>".
//
// Encoding (llama.cpp's SPM tokenizer, itself SentencePiece's BPE):
//   1. Special tokens are cut out of the text first, leftmost-longest: control and unknown tokens when special text is
//      parsed, user-defined tokens always (Gemma's "\n", "\n\n", "  ", "\t" runs and HTML tags are user-defined).
//   2. Each stretch of text between them gets a leading space when `add_space_prefix` is set and the stretch starts the
//      text or follows a special token; then every U+0020 becomes "▁". Nothing else is normalized.
//   3. The stretch's characters are the initial symbols (there is no pre-tokenization: the stretch is one word).
//      Repeatedly, among adjacent symbol pairs whose concatenation is a vocabulary entry, the pair whose entry has the
//      highest score is merged (equal scores: the leftmost pair first).
//   4. Each final symbol is its vocabulary entry; a character that is not one (never seen in training) becomes its
//      UTF-8 bytes as byte pieces (byte fallback).
//   5. BOS is put first when `add_bos_token`.
// Decoding: a normal piece gives its text with "▁" → " "; a byte piece its byte (a run of byte pieces is decoded as
// UTF-8 together, each byte of an invalid run becoming U+FFFD, as Hugging Face's ByteFallback decoder does); control
// tokens their text unless skipped; user-defined tokens their text; unused tokens nothing (as llama.cpp). With
// `add_space_prefix` the text's first space is dropped.

/// A SentencePiece-style BPE tokenizer (scores as merge priority, byte fallback). Immutable; thread-safe.
public final class SentencePieceBPETokenizer: @unchecked Sendable {
    public let bosTokenID: Int?
    public let eosTokenID: Int?
    public let padTokenID: Int?
    public let unknownTokenID: Int?
    /// Whether `encode` puts the BOS token first.
    public let addBOS: Bool
    /// Whether a space is put in front of the text (and of the text after each special token), and dropped again by
    /// `decode` (`tokenizer.ggml.add_space_prefix`).
    public let addSpacePrefix: Bool

    private let tokens: [String]
    private let tokenTypes: [UInt8]
    private let vocab: ByteSpanTable
    /// Per token: its score as a key that sorts the highest score first (see `Self.priority`).
    private let priorities: [UInt32]
    /// Id of the byte piece of each byte, or -1.
    private let byteIDs: [Int32]
    /// Decoded bytes of every token (byte pieces: their one byte): `pieceBytes[pieceStarts[id] ..< pieceStarts[id + 1]]`.
    private let pieceBytes: [UInt8]
    private let pieceStarts: [Int]
    private let specials: SpecialMatcher

    /// - Parameters:
    ///   - tokens: the vocabulary in id order ("▁the", "<0x0A>", "<start_of_turn>").
    ///   - scores: one per token; a higher score merges first.
    ///   - tokenTypes: one GGUF token type per token (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte).
    /// Errors are `CausalError.badConfig` naming the GGUF key at fault.
    public init(tokens: [String], scores: [Float], tokenTypes: [Int], bosTokenID: Int?, eosTokenID: Int?,
                padTokenID: Int?, unknownTokenID: Int?, addBOS: Bool, addSpacePrefix: Bool) throws {
        let n = tokens.count
        guard n > 0 else { throw CausalError.badConfig(key: "tokenizer.ggml.tokens", reason: "the vocabulary is empty") }
        guard n < Int(Int32.max) else {
            throw CausalError.badConfig(key: "tokenizer.ggml.tokens", reason: "\(n) tokens is more than supported (\(Int32.max - 1))")
        }
        guard scores.count == n else {
            throw CausalError.badConfig(key: "tokenizer.ggml.scores",
                                        reason: "\(scores.count) scores for \(n) tokens (tokenizer.ggml.tokens); the counts must match")
        }
        guard tokenTypes.count == n else {
            throw CausalError.badConfig(key: "tokenizer.ggml.token_type",
                                        reason: "\(tokenTypes.count) token types for \(n) tokens (tokenizer.ggml.tokens); the counts must match")
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
        self.bosTokenID = bosTokenID
        self.eosTokenID = eosTokenID
        self.padTokenID = padTokenID
        self.unknownTokenID = unknownTokenID
        self.addBOS = addBOS
        self.addSpacePrefix = addSpacePrefix
        vocab = ByteSpanTable(tokens)
        priorities = scores.map(Self.priority)

        var types = [UInt8](repeating: UInt8(TokenType.normal), count: n)
        var byteIDs = [Int32](repeating: -1, count: 256)
        var pieceBytes: [UInt8] = []
        pieceBytes.reserveCapacity(n * 8)
        var pieceStarts: [Int] = []
        pieceStarts.reserveCapacity(n + 1)
        var specialTokens: [SpecialToken] = []
        for id in 0..<n {
            let type = tokenTypes[id]
            guard (1...6).contains(type) else {
                throw CausalError.badConfig(key: "tokenizer.ggml.token_type", reason: "token \(id) has type \(type); known types are 1...6")
            }
            types[id] = UInt8(type)
            pieceStarts.append(pieceBytes.count)
            switch type {
            case TokenType.byte:
                guard let b = Self.byteValue(tokens[id]) else {
                    throw CausalError.badConfig(key: "tokenizer.ggml.tokens",
                                                reason: "token \(id) '\(tokens[id])' has the byte type but is not spelled <0xNN>")
                }
                if byteIDs[Int(b)] < 0 { byteIDs[Int(b)] = Int32(id) }
                pieceBytes.append(b)
            case TokenType.control, TokenType.unknown:
                specialTokens.append(SpecialToken(scalars: Array(tokens[id].unicodeScalars), id: id, always: false))
                pieceBytes.append(contentsOf: tokens[id].utf8)
            case TokenType.userDefined:
                specialTokens.append(SpecialToken(scalars: Array(tokens[id].unicodeScalars), id: id, always: true))
                pieceBytes.append(contentsOf: tokens[id].utf8)
            case TokenType.unused:
                break
            default:
                // "▁" (E2 96 81) → " ".
                var t = tokens[id]
                t.withUTF8 { u in
                    var k = 0
                    while k < u.count {
                        if u[k] == 0xE2, k + 2 < u.count, u[k + 1] == 0x96, u[k + 2] == 0x81 {
                            pieceBytes.append(0x20)
                            k += 3
                        } else {
                            pieceBytes.append(u[k])
                            k += 1
                        }
                    }
                }
            }
        }
        pieceStarts.append(pieceBytes.count)
        self.tokenTypes = types
        self.byteIDs = byteIDs
        self.pieceBytes = pieceBytes
        self.pieceStarts = pieceStarts
        specials = SpecialMatcher(specialTokens)
    }

    /// A score as a 32-bit key whose ascending order is the score's descending order (-0 counts as 0).
    static func priority(_ score: Float) -> UInt32 {
        let bits = (score == 0 ? Float(0) : score).bitPattern
        let ascending = bits & 0x8000_0000 != 0 ? ~bits : bits | 0x8000_0000
        return ~ascending
    }

    /// The byte of a piece spelled "<0xNN>" (hex digits in either case), or nil.
    static func byteValue(_ piece: String) -> UInt8? {
        let u = Array(piece.utf8)
        guard u.count == 6, u[0] == 0x3C, u[1] == 0x30, u[2] == 0x78, u[5] == 0x3E,
              let hi = hexDigit(u[3]), let lo = hexDigit(u[4]) else { return nil }
        return hi << 4 | lo
    }

    private static func hexDigit(_ c: UInt8) -> UInt8? {
        switch c {
        case 0x30...0x39: return c - 0x30
        case 0x41...0x46: return c - 0x41 + 10
        case 0x61...0x66: return c - 0x61 + 10
        default: return nil
        }
    }

    public var vocabularySize: Int { tokens.count }

    /// The vocabulary entry of an id as stored ("▁the"), or nil outside the vocabulary.
    public func tokenString(_ id: Int) -> String? { id >= 0 && id < tokens.count ? tokens[id] : nil }

    /// The id of a vocabulary entry (exact bytes).
    public func tokenID(_ token: String) -> Int? {
        var t = token
        return t.withUTF8 { vocab.find($0) }
    }

    /// Whether a token is special: a control or user-defined token.
    public func isSpecial(_ id: Int) -> Bool {
        guard id >= 0 && id < tokens.count else { return false }
        return tokenTypes[id] == TokenType.control || tokenTypes[id] == TokenType.userDefined
    }

    /// The GGUF token type of a token (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte).
    public func tokenType(_ id: Int) -> Int? { id >= 0 && id < tokens.count ? Int(tokenTypes[id]) : nil }

    // MARK: Encoding

    /// Token ids of `text`. With `parseSpecial`, control tokens written in the text (e.g. "<start_of_turn>") become
    /// their ids; without it they are ordinary text. User-defined tokens are always matched. BOS is added if `addBOS`.
    public func encode(_ text: String, parseSpecial: Bool = true) -> [Int] {
        var out: [Int] = []
        if addBOS, let b = bosTokenID { out.append(b) }
        if text.isEmpty { return out }
        let scalars = Array(text.unicodeScalars)
        out.reserveCapacity(out.count + scalars.count / 3 + 4)
        var scratch = SPMScratch()
        scalars.withUnsafeBufferPointer { s in
            // Every stretch of text starts the text or follows a special token, so each gets the space prefix (when
            // the vocabulary asks for one), as in llama.cpp.
            let n = s.count
            var start = 0
            if !specials.isEmpty && (parseSpecial || specials.hasAlways) {
                var i = 0
                while i < n {
                    if let m = specials.match(s, at: i, parseSpecial: parseSpecial) {
                        if start < i { encodeStretch(s, start..<i, &scratch, &out) }
                        out.append(m.id)
                        i += m.length
                        start = i
                    } else {
                        i += 1
                    }
                }
            }
            if start < n { encodeStretch(s, start..<n, &scratch, &out) }
        }
        return out
    }

    /// BPE over one stretch of text between special tokens.
    private func encodeStretch(_ s: UnsafeBufferPointer<Unicode.Scalar>, _ range: Range<Int>,
                               _ scratch: inout SPMScratch, _ out: inout [Int]) {
        scratch.reset()
        if addSpacePrefix { scratch.appendSymbol(0x2581) }
        for k in range { scratch.appendSymbol(s[k].value == 0x20 ? 0x2581 : s[k].value) }
        let count = scratch.starts.count
        if count == 0 { return }
        scratch.bytes.withUnsafeBufferPointer { bytes in
            // The vocabulary entry of the bytes from symbol `l`'s start through symbol `r`'s end (they are adjacent).
            func entry(_ l: Int, _ r: Int, _ scratch: inout SPMScratch) -> Int? {
                let lo = scratch.starts[l]
                let hi = scratch.starts[r] + Int(scratch.lengths[r])
                return vocab.find(UnsafeBufferPointer(rebasing: bytes[lo..<hi]))
            }
            func tryPair(_ l: Int, _ r: Int, _ scratch: inout SPMScratch) {
                guard l >= 0, r >= 0, let id = entry(l, r, &scratch) else { return }
                scratch.push(SPMCandidate(key: UInt64(priorities[id]) << 32 | UInt64(l), right: Int32(r),
                                          size: scratch.lengths[l] + scratch.lengths[r], id: Int32(id)))
            }
            for k in 0..<count {
                scratch.ids[k] = entry(k, k, &scratch).map(Int32.init) ?? -1
            }
            for k in 0..<(count - 1) { tryPair(k, k + 1, &scratch) }
            while let top = scratch.pop() {
                let l = Int(top.key & 0xFFFF_FFFF)
                let r = Int(top.right)
                // Stale when either symbol has been merged since (absorbed: length 0; grown: the sizes differ).
                guard scratch.lengths[l] > 0, scratch.lengths[r] > 0, scratch.next[l] == top.right,
                      scratch.lengths[l] + scratch.lengths[r] == top.size else { continue }
                scratch.lengths[l] = top.size
                scratch.lengths[r] = 0
                scratch.ids[l] = top.id
                let nn = Int(scratch.next[r])
                scratch.next[l] = Int32(nn)
                if nn >= 0 { scratch.prev[nn] = Int32(l) }
                tryPair(Int(scratch.prev[l]), l, &scratch)
                tryPair(l, nn, &scratch)
            }
            var k = 0
            while k >= 0 {
                let id = scratch.ids[k]
                if id >= 0 {
                    out.append(Int(id))
                } else {
                    // A character outside the vocabulary: its bytes as byte pieces.
                    let lo = scratch.starts[k]
                    for b in bytes[lo..<(lo + Int(scratch.lengths[k]))] {
                        let bid = byteIDs[Int(b)]
                        if bid >= 0 { out.append(Int(bid)) } else if let u = unknownTokenID { out.append(u) }
                    }
                }
                k = Int(scratch.next[k])
            }
        }
    }

    // MARK: Decoding

    /// The text of `ids`; control and unknown tokens are left out when `skipSpecial`.
    public func decode(_ ids: [Int], skipSpecial: Bool = false) throws -> String {
        try decodeByStreaming(ids, skipSpecial: skipSpecial)
    }

    /// What one token adds to decoded text.
    public func decodingPiece(_ id: Int, first: Bool, skipSpecial: Bool) throws -> DecodingPiece {
        guard id >= 0 && id < tokens.count else { throw CausalError.badTokenID(id: id, vocabularySize: tokens.count) }
        let t = Int(tokenTypes[id])
        if skipSpecial && (t == TokenType.control || t == TokenType.unknown) { return .skipped }
        let bytes = Array(pieceBytes[pieceStarts[id]..<pieceStarts[id + 1]])
        if t == TokenType.byte { return .fallbackByte(bytes[0]) }
        return .bytes(bytes)
    }

    public func makeStreamingDecoder(skipSpecial: Bool) -> StreamingDecoder {
        StreamingDecoder(tokenizer: self, skipSpecial: skipSpecial, leadingStrip: addSpacePrefix ? (" ", 1) : nil, streams: true)
    }
}

extension SentencePieceBPETokenizer: TextTokenizer {
    /// `encode(text, parseSpecial: true)`.
    public func encode(_ text: String) -> [Int] { encode(text, parseSpecial: true) }

    /// Control (and unknown-type) tokens leave no text in generated output.
    public func makeGenerationDecoder() -> StreamingDecoder { makeStreamingDecoder(skipSpecial: true) }
}

/// A candidate merge: `key` = priority of the merged entry << 32 | left symbol, so that the smallest key is the
/// highest score and, among equal scores, the leftmost pair.
struct SPMCandidate: MinHeapElement {
    var key: UInt64
    var right: Int32
    var size: Int32
    var id: Int32
}

/// Reusable buffers for encoding one stretch.
struct SPMScratch {
    /// The stretch's UTF-8, "▁" for spaces.
    var bytes: [UInt8] = []
    /// Per symbol: first byte, length in bytes (0 once merged into its left neighbour), token id (-1: none yet).
    var starts: [Int] = []
    var lengths: [Int32] = []
    var ids: [Int32] = []
    var prev: [Int32] = []
    var next: [Int32] = []
    var heap: [SPMCandidate] = []

    mutating func reset() {
        bytes.removeAll(keepingCapacity: true)
        starts.removeAll(keepingCapacity: true)
        lengths.removeAll(keepingCapacity: true)
        ids.removeAll(keepingCapacity: true)
        prev.removeAll(keepingCapacity: true)
        next.removeAll(keepingCapacity: true)
        heap.removeAll(keepingCapacity: true)
    }

    @inline(__always)
    private mutating func addSymbol(length: Int) {
        let k = starts.count
        starts.append(bytes.count - length)
        lengths.append(Int32(length))
        ids.append(-1)
        prev.append(Int32(k - 1))
        if k > 0 { next[k - 1] = Int32(k) }
        next.append(-1)
    }

    /// Appends one character (a scalar value) as a symbol of its UTF-8 bytes.
    mutating func appendSymbol(_ v: UInt32) {
        if v < 0x80 {
            bytes.append(UInt8(v))
            addSymbol(length: 1)
        } else if v < 0x800 {
            bytes.append(UInt8(0xC0 | (v >> 6)))
            bytes.append(UInt8(0x80 | (v & 0x3F)))
            addSymbol(length: 2)
        } else if v < 0x10000 {
            bytes.append(UInt8(0xE0 | (v >> 12)))
            bytes.append(UInt8(0x80 | ((v >> 6) & 0x3F)))
            bytes.append(UInt8(0x80 | (v & 0x3F)))
            addSymbol(length: 3)
        } else {
            bytes.append(UInt8(0xF0 | (v >> 18)))
            bytes.append(UInt8(0x80 | ((v >> 12) & 0x3F)))
            bytes.append(UInt8(0x80 | ((v >> 6) & 0x3F)))
            bytes.append(UInt8(0x80 | (v & 0x3F)))
            addSymbol(length: 4)
        }
    }

    mutating func push(_ c: SPMCandidate) { heap.pushMin(c) }

    mutating func pop() -> SPMCandidate? { heap.popMin() }
}
