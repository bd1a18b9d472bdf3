// Pre-tokenization for byte-level BPE: splitting text into the pieces that BPE then encodes one by one.
//
// GPT-2's rule is the regular expression
//     's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// evaluated leftmost-first over the text. It is implemented here by hand over Unicode scalars:
// \p{L} = general category L*, \p{N} = N* (Nd, Nl, No), \s = the White_Space property (what Oniguruma's
// Unicode \s matches); everything else is "other". Contractions are case-sensitive, as in the regex.
//
// `smollm` (SmolLM / SmolLM2; Hugging Face: Digits(individual_digits) then ByteLevel; llama.cpp: "\p{N}" then the
// GPT-2 expression) first isolates every \p{N} scalar as a piece of its own, then applies the GPT-2 rule to each
// run of text between numerals separately (the look-ahead of `\s+(?!\S)` does not see past a numeral, so a space
// before a digit ends its run and becomes a piece of its own: " 123" → " ", "1", "2", "3").
//
// `llama-bpe` (Llama 3) and `qwen2` (Qwen2 / Qwen2.5 / Qwen3) use one expression that differs only in how many
// numerals make a piece:
//     (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,K}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
// with K = 3 for Llama 3 and K = 1 for Qwen2 (written `\p{N}` there). The case-insensitive contractions fold ASCII
// letters only (llama.cpp writes them `'[sS]|'[tT]|...`; a Unicode-folding engine would also accept "'ſ").
// Unlike GPT-2 a word takes one leading non-letter non-numeral (" word", "\tword", "(word", "_word"), numerals never
// take a space, punctuation runs take the newlines after them, and a whitespace run that holds a newline ends just
// after its last \r or \n. Llama 3 also sets `ignore_merges`: a piece that is itself a vocabulary entry becomes that
// token without running the merges (`ByteLevelBPETokenizer`).
//
// `default` (or no `tokenizer.ggml.pre`) is llama.cpp's rule for byte-level vocabularies that name none: four
// expressions applied one after the other, each cutting every piece into its matches and the text between them:
//     [\p{P}\$\+<=>\^~\|]+        runs of punctuation (and of $ + < = > ^ ~ |; not the backtick)
//     the GPT-2 expression
//     \p{N}+                      runs of numerals
//     [0-9][0-9][0-9]              ASCII digits in threes from the left ("12345" → "123", "45")

/// The character classes the GPT-2 expression distinguishes.
enum ScalarClass: UInt8 {
    case letter = 0, number = 1, space = 2, other = 3

    /// ASCII classes, indexed by scalar value.
    static let ascii: [ScalarClass] = (0..<128).map { v in
        switch UInt8(v) {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"): return .letter
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return .number
        case 0x09...0x0D, 0x20: return .space
        default: return .other
        }
    }

    @inline(__always)
    static func of(_ s: Unicode.Scalar) -> ScalarClass {
        if s.value < 128 { return ascii[Int(s.value)] }
        let p = s.properties
        if p.isWhitespace { return .space }
        switch p.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter: return .letter
        case .decimalNumber, .letterNumber, .otherNumber: return .number
        default: return .other
        }
    }
}

/// A pre-tokenizer rule, chosen by the GGUF `tokenizer.ggml.pre` name.
struct PreTokenizer: Sendable {
    enum Kind: Sendable { case gpt2, smollm, qwen2, llama3, llamaDefault }
    let kind: Kind

    /// Names accepted by `init(name:)` (llama.cpp's names for these rules).
    static let supportedNames = ["default", "gpt2", "gpt-2", "smollm", "qwen2", "deepseek-r1-qwen", "llama-bpe", "llama3", "llama-v3"]

    init?(name: String) {
        switch name {
        case "smollm": kind = .smollm
        case "gpt2", "gpt-2": kind = .gpt2
        case "default", "": kind = .llamaDefault
        case "qwen2", "deepseek-r1-qwen": kind = .qwen2
        case "llama-bpe", "llama3", "llama-v3": kind = .llama3
        default: return nil
        }
    }

    /// Whether a piece that is a vocabulary entry is taken whole, without merges (llama.cpp's and Hugging Face's
    /// `ignore_merges`, set for Llama 3).
    var ignoresMerges: Bool { kind == .llama3 }

    /// Splits `scalars[range]` (whose classes are `classes[range]`) into pre-tokens, appended to `out` as ranges.
    func split(_ scalars: UnsafeBufferPointer<Unicode.Scalar>, _ classes: UnsafeBufferPointer<ScalarClass>,
               _ range: Range<Int>, into out: inout [Range<Int>]) {
        switch kind {
        case .gpt2:
            Self.gpt2(scalars, classes, range, into: &out)
        case .qwen2:
            Self.llama3(scalars, classes, range, maxDigits: 1, into: &out)
        case .llama3:
            Self.llama3(scalars, classes, range, maxDigits: 3, into: &out)
        case .llamaDefault:
            Self.llamaDefault(scalars, classes, range, into: &out)
        case .smollm:
            var start = range.lowerBound
            var i = start
            while i < range.upperBound {
                if classes[i] == .number {
                    if start < i { Self.gpt2(scalars, classes, start..<i, into: &out) }
                    out.append(i..<(i + 1))
                    start = i + 1
                }
                i += 1
            }
            if start < range.upperBound { Self.gpt2(scalars, classes, start..<range.upperBound, into: &out) }
        }
    }

    /// Punctuation for llama.cpp's `default` rule: general category P*, and the ASCII symbols $ + < = > ^ ~ |.
    @inline(__always)
    static func isDefaultPunctuation(_ c: Unicode.Scalar) -> Bool {
        let v = c.value
        if v < 0x80 {
            switch UInt8(v) {
            case 0x21...0x2F: return true                          // ! " # $ % & ' ( ) * + , - . /
            case 0x3A...0x40: return true                          // : ; < = > ? @
            case 0x5B...0x5F: return true                          // [ \ ] ^ _
            case 0x7B...0x7E: return true                          // { | } ~
            default: return false                                  // (not the backtick)
            }
        }
        switch c.properties.generalCategory {
        case .connectorPunctuation, .dashPunctuation, .openPunctuation, .closePunctuation, .initialPunctuation,
             .finalPunctuation, .otherPunctuation:
            return !c.properties.isWhitespace
        default:
            return false
        }
    }

    /// Cuts each piece into runs of scalars `member` accepts and the runs between them.
    private static func cutRuns(_ pieces: [Range<Int>], _ member: (Int) -> Bool) -> [Range<Int>] {
        var out: [Range<Int>] = []
        out.reserveCapacity(pieces.count)
        for p in pieces {
            var start = p.lowerBound
            while start < p.upperBound {
                let inside = member(start)
                var e = start + 1
                while e < p.upperBound && member(e) == inside { e += 1 }
                out.append(start..<e)
                start = e
            }
        }
        return out
    }

    /// llama.cpp's `default` rule (see the top of this file).
    static func llamaDefault(_ s: UnsafeBufferPointer<Unicode.Scalar>, _ cls: UnsafeBufferPointer<ScalarClass>,
                             _ range: Range<Int>, into out: inout [Range<Int>]) {
        let punctuation = cutRuns([range]) { isDefaultPunctuation(s[$0]) }
        var gpt2Pieces: [Range<Int>] = []
        for p in punctuation { gpt2(s, cls, p, into: &gpt2Pieces) }
        let numerals = cutRuns(gpt2Pieces) { cls[$0] == .number }
        @inline(__always) func digit(_ k: Int) -> Bool { (0x30...0x39).contains(s[k].value) }
        for p in numerals {
            var start = p.lowerBound
            var i = p.lowerBound
            while i + 3 <= p.upperBound {
                if digit(i) && digit(i + 1) && digit(i + 2) {
                    if start < i { out.append(start..<i) }
                    out.append(i..<(i + 3))
                    i += 3
                    start = i
                } else {
                    i += 1
                }
            }
            if start < p.upperBound { out.append(start..<p.upperBound) }
        }
    }

    /// The Llama 3 / Qwen2 expression over one piece (see the top of this file); the end of the piece is the end of
    /// the subject string.
    static func llama3(_ s: UnsafeBufferPointer<Unicode.Scalar>, _ cls: UnsafeBufferPointer<ScalarClass>,
                       _ range: Range<Int>, maxDigits: Int, into out: inout [Range<Int>]) {
        let end = range.upperBound
        @inline(__always) func isNewline(_ k: Int) -> Bool { s[k].value == 0x0A || s[k].value == 0x0D }
        @inline(__always) func lower(_ k: Int) -> UInt32 {
            let v = s[k].value
            return (0x41...0x5A).contains(v) ? v | 0x20 : v
        }
        var i = range.lowerBound
        while i < end {
            // (?i:'s|'t|'re|'ve|'m|'ll|'d)
            if s[i].value == 0x27, i + 1 < end {
                var len = 0
                switch lower(i + 1) {
                case 0x73, 0x74, 0x6D, 0x64: len = 2                                  // s t m d
                case 0x72, 0x76: if i + 2 < end, lower(i + 2) == 0x65 { len = 3 }      // re ve
                case 0x6C: if i + 2 < end, lower(i + 2) == 0x6C { len = 3 }            // ll
                default: break
                }
                if len > 0 {
                    out.append(i..<(i + len))
                    i += len
                    continue
                }
            }
            let k = cls[i]
            // [^\r\n\p{L}\p{N}]?\p{L}+
            if k == .letter || (k != .number && !isNewline(i) && i + 1 < end && cls[i + 1] == .letter) {
                var e = i + 1
                while e < end && cls[e] == .letter { e += 1 }
                out.append(i..<e)
                i = e
                continue
            }
            // \p{N}{1,K}
            if k == .number {
                var e = i + 1
                while e < end && e - i < maxDigits && cls[e] == .number { e += 1 }
                out.append(i..<e)
                i = e
                continue
            }
            // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
            let j = (s[i].value == 0x20 && i + 1 < end && cls[i + 1] == .other) ? i + 1 : i
            if cls[j] == .other {
                var e = j + 1
                while e < end && cls[e] == .other { e += 1 }
                while e < end && isNewline(e) { e += 1 }
                out.append(i..<e)
                i = e
                continue
            }
            // Whitespace from here on. `\s*[\r\n]+`: up to the last newline of the run, when it has one.
            var e = i
            var lastNewline = -1
            while e < end && cls[e] == .space {
                if isNewline(e) { lastNewline = e }
                e += 1
            }
            if lastNewline >= 0 {
                out.append(i..<(lastNewline + 1))
                i = lastNewline + 1
            } else if e == end || e - i == 1 {
                // `\s+`: the run reaches the end of the piece, or is a single scalar before a non-space.
                out.append(i..<e)
                i = e
            } else {
                // `\s+(?!\S)`: all but the last whitespace scalar, which then leads the next word.
                out.append(i..<(e - 1))
                i = e - 1
            }
        }
    }

    /// The GPT-2 expression over one piece; the end of the piece is the end of the subject string.
    static func gpt2(_ s: UnsafeBufferPointer<Unicode.Scalar>, _ cls: UnsafeBufferPointer<ScalarClass>,
                     _ range: Range<Int>, into out: inout [Range<Int>]) {
        let end = range.upperBound
        var i = range.lowerBound
        while i < end {
            let c = s[i].value
            // 's|'t|'re|'ve|'m|'ll|'d
            if c == 0x27, i + 1 < end {
                let c1 = s[i + 1].value
                var len = 0
                switch c1 {
                case 0x73, 0x74, 0x6D, 0x64: len = 2                               // s t m d
                case 0x72, 0x76: if i + 2 < end, s[i + 2].value == 0x65 { len = 3 } // re ve
                case 0x6C: if i + 2 < end, s[i + 2].value == 0x6C { len = 3 }       // ll
                default: break
                }
                if len > 0 {
                    out.append(i..<(i + len))
                    i += len
                    continue
                }
            }
            // ` ?\p{L}+ | ?\p{N}+ | ?[^\s\p{L}\p{N}]+`: an optional U+0020, then a run of one class.
            var j = i
            if c == 0x20, i + 1 < end, cls[i + 1] != .space { j = i + 1 }
            let k = cls[j]
            if k != .space {
                var e = j + 1
                while e < end && cls[e] == k { e += 1 }
                out.append(i..<e)
                i = e
                continue
            }
            // `\s+(?!\S)|\s+`
            var e = i + 1
            while e < end && cls[e] == .space { e += 1 }
            if e == end || e - i == 1 {
                // The run reaches the end of the piece, or a single whitespace scalar that does not attach to the next word.
                out.append(i..<e)
                i = e
            } else {
                // All but the last whitespace scalar; the last one is matched again (and may attach to the next word).
                out.append(i..<(e - 1))
                i = e - 1
            }
        }
    }
}
