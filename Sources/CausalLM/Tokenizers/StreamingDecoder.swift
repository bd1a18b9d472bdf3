// Incremental decoding for generation: tokens arrive one at a time and a character may span several tokens
// (an emoji's 4 UTF-8 bytes are often 2 or 3 byte-level tokens), so bytes that may still become a character are held
// back until the next token completes them.

/// Decodes one sequence of token ids incrementally, for any `TextTokenizer`. The concatenation of every `push` result
/// and the final `flush` equals `tokenizer.decode(ids, skipSpecial:)` of all the ids.
///
/// Each token's piece comes from `tokenizer.decodingPiece(_:first:skipSpecial:)`; bytes that may still become part of a
/// character wait for the next token, and a run of byte-fallback bytes (`<0xE2><0x82><0xAC>`) waits until it ends, since
/// the run is valid UTF-8 or not as a whole.
public struct StreamingDecoder {
    public let tokenizer: any TextTokenizer
    public let skipSpecial: Bool
    /// A decoder that removes up to `count` leading `scalar`s from the whole text (a Strip step after Fuse, as in
    /// Llama's SentencePiece decoder chain).
    let leadingStrip: (scalar: Unicode.Scalar, count: Int)?
    /// False for a tokenizer whose decoder cannot be applied token by token: ids are then held and decoded together
    /// by `flush` (exact, but nothing streams).
    let streams: Bool
    /// Bytes not yet returned: at most the start of one incomplete UTF-8 sequence.
    private var pending: [UInt8] = []
    /// Bytes of the byte-fallback pieces since the last other piece.
    private var byteRun: [UInt8] = []
    /// Whether a token has been kept (not skipped) since the start.
    private var kept = false
    /// Leading scalars `leadingStrip` may still remove.
    private var stripLeft: Int
    /// Ids held when `streams` is false.
    private var held: [Int] = []

    public init(tokenizer: any TextTokenizer, skipSpecial: Bool) {
        self.init(tokenizer: tokenizer, skipSpecial: skipSpecial, leadingStrip: nil, streams: true)
    }

    init(tokenizer: any TextTokenizer, skipSpecial: Bool, leadingStrip: (scalar: Unicode.Scalar, count: Int)?, streams: Bool) {
        self.tokenizer = tokenizer
        self.skipSpecial = skipSpecial
        self.leadingStrip = leadingStrip
        self.streams = streams
        stripLeft = leadingStrip?.count ?? 0
    }

    /// Adds one token; returns the text that is now complete (never part of a character).
    /// Throws `CausalError.badTokenID` for an id outside the vocabulary (the decoder is then unchanged).
    public mutating func push(_ id: Int) throws -> String {
        let piece = try tokenizer.decodingPiece(id, first: !kept, skipSpecial: skipSpecial)
        if !streams {
            if piece != .skipped { kept = true }
            held.append(id)
            return ""
        }
        switch piece {
        case .skipped:
            return ""
        case let .fallbackByte(b):
            kept = true
            byteRun.append(b)
        case let .bytes(b):
            kept = true
            endByteRun()
            pending += b
        }
        let cut = Self.completeLength(pending)
        if cut == 0 { return "" }
        let text = String(decoding: pending[0..<cut], as: UTF8.self)
        pending.removeFirst(cut)
        return stripped(text)
    }

    /// Returns the rest: bytes of an unfinished character become U+FFFD. The decoder can then be reused for a new text.
    public mutating func flush() -> String {
        defer {
            pending.removeAll()
            byteRun.removeAll()
            held.removeAll()
            kept = false
            stripLeft = leadingStrip?.count ?? 0
        }
        if !streams {
            // Every held id was checked by `push`.
            return held.isEmpty ? "" : ((try? tokenizer.decode(held, skipSpecial: skipSpecial)) ?? "")
        }
        endByteRun()
        return pending.isEmpty ? "" : stripped(String(decoding: pending, as: UTF8.self))
    }

    /// Whether bytes (or ids) are held back.
    public var hasPending: Bool { !pending.isEmpty || !byteRun.isEmpty || !held.isEmpty }

    /// Ends a run of byte-fallback bytes: its text when the run is valid UTF-8, else U+FFFD for each byte.
    private mutating func endByteRun() {
        guard !byteRun.isEmpty else { return }
        if String(validating: byteRun, as: UTF8.self) != nil {
            pending += byteRun
        } else {
            for _ in byteRun { pending += [0xEF, 0xBF, 0xBD] }
        }
        byteRun.removeAll()
    }

    /// Applies `leadingStrip` to text about to be returned.
    private mutating func stripped(_ text: String) -> String {
        guard stripLeft > 0, let c = leadingStrip?.scalar, !text.isEmpty else { return text }
        var scalars = Substring(text).unicodeScalars
        while stripLeft > 0, let f = scalars.first, f == c {
            scalars.removeFirst()
            stripLeft -= 1
        }
        if !scalars.isEmpty { stripLeft = 0 }
        return String(scalars)
    }

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
