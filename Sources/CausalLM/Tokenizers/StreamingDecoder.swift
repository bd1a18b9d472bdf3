// Incremental decoding for generation: tokens arrive one at a time and a character may span several tokens
// (an emoji's 4 UTF-8 bytes are often 2 or 3 byte-level tokens), so bytes that may still become a character are held
// back until the next token completes them.

/// Decodes one sequence of token ids incrementally. The concatenation of every `push` result and the final `flush`
/// equals `tokenizer.decode(ids, skipSpecial:)` of all the ids.
public struct StreamingDecoder {
    public let tokenizer: ByteLevelBPETokenizer
    public let skipSpecial: Bool
    /// Bytes not yet returned: at most the start of one incomplete UTF-8 sequence.
    private var pending: [UInt8] = []

    init(tokenizer: ByteLevelBPETokenizer, skipSpecial: Bool) {
        self.tokenizer = tokenizer
        self.skipSpecial = skipSpecial
    }

    /// Adds one token; returns the text that is now complete (never part of a character).
    /// Throws `CausalError.badTokenID` for an id outside the vocabulary (the decoder is then unchanged).
    public mutating func push(_ id: Int) throws -> String {
        try tokenizer.appendBytes(of: id, skipSpecial: skipSpecial, to: &pending)
        let cut = Self.completeLength(pending)
        if cut == 0 { return "" }
        let text = String(decoding: pending[0..<cut], as: UTF8.self)
        pending.removeFirst(cut)
        return text
    }

    /// Returns the rest: bytes of an unfinished character become U+FFFD. The decoder can then be reused.
    public mutating func flush() -> String {
        defer { pending.removeAll() }
        return pending.isEmpty ? "" : String(decoding: pending, as: UTF8.self)
    }

    /// Whether bytes are held back waiting for the rest of a character.
    public var hasPending: Bool { !pending.isEmpty }

    /// The length of the prefix of `b` that can be decoded now: everything except a trailing incomplete but so far
    /// well-formed UTF-8 sequence. The cut is always before a lead byte, and no UTF-8 sequence (well-formed or
    /// not) continues across a lead byte, so decoding the parts separately equals decoding them together.
    static func completeLength(_ b: [UInt8]) -> Int {
        let n = b.count
        // An incomplete sequence is a lead byte and at most two continuation bytes.
        var k = 1
        while k <= min(3, n) {
            let p = n - k
            let lead = b[p]
            if lead & 0xC0 == 0x80 { k += 1; continue }   // continuation byte: look further back
            let need: Int
            switch lead {
            case 0xC2...0xDF: need = 2
            case 0xE0...0xEF: need = 3
            case 0xF0...0xF4: need = 4
            default: return n                            // ASCII, or a byte that never starts a sequence
            }
            if k >= need { return n }                    // complete (or ill-formed either way)
            if k >= 2 {
                let second = b[p + 1]
                let ok: Bool
                switch lead {
                case 0xE0: ok = (0xA0...0xBF).contains(second)
                case 0xED: ok = (0x80...0x9F).contains(second)
                case 0xF0: ok = (0x90...0xBF).contains(second)
                case 0xF4: ok = (0x80...0x8F).contains(second)
                default: ok = true                       // a continuation byte, checked above
                }
                if !ok { return n }
            }
            return p
        }
        return n
    }
}

extension ByteLevelBPETokenizer {
    /// A decoder for one sequence of ids, fed as they are generated.
    public func makeStreamingDecoder(skipSpecial: Bool = false) -> StreamingDecoder {
        StreamingDecoder(tokenizer: self, skipSpecial: skipSpecial)
    }
}
