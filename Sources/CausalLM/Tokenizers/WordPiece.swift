import Foundation

// WordPiece tokenization as BERT does it (Devlin et al. 2018, https://arxiv.org/abs/1810.04805), following the
// `tokenizers` library's BertNormalizer, BertPreTokenizer, WordPiece model and post-processors exactly.
//
// encode(text):
//   1. Added tokens are cut out of the raw text (leftmost, longest match): [CLS], [SEP], [MASK], ...
//   2. Each stretch between them is normalized, character by character (Unicode scalars):
//        clean_text            drop U+0000, U+FFFD and control/format/private-use characters (Cc, Cf, Co, Cs) except
//                              \t \n \r; every whitespace character becomes a space
//        handle_chinese_chars  put spaces around each CJK ideograph (the ranges BERT lists)
//        strip_accents         NFD, then drop nonspacing marks (Mn)
//        lowercase             each scalar's full lowercase mapping (no context rules such as final sigma)
//   3. Pre-tokenization splits on whitespace and isolates every punctuation character: ASCII ranges 33–47, 58–64,
//      91–96, 123–126 (so $, +, <, =, >, ^, `, | and ~ count, as BERT defines them) and Unicode P* categories.
//   4. WordPiece: a word longer than max_input_chars_per_word scalars is [UNK]; otherwise take the longest vocabulary
//      entry that prefixes the rest of the word (continuations spelled with "##"); if some position has no match the
//      whole word is [UNK].
//   5. The post-processor wraps the ids: [CLS] A [SEP].
// Vocabulary lookups compare UTF-8 bytes (never Swift's canonical-equivalence string comparison).

/// A BERT-style WordPiece tokenizer read from a Hugging Face `tokenizer.json`.
public final class WordPieceTokenizer: @unchecked Sendable {
    public let config: TokenizerJSON
    /// Token string of each id (nil for ids the file leaves unused).
    private let tokens: [String?]
    private let table: ByteSpanTable      // vocabulary strings (by UTF-8 bytes) → index into `tableIDs`
    private let tableIDs: [Int]
    private let prefix: [UInt8]
    private let maxChars: Int
    private let rawMatcher: AddedTokenMatcher
    private let normalizedMatcher: AddedTokenMatcher
    private let specialIDs: Set<Int>

    /// The id of the model's unknown token.
    public let unknownTokenID: Int
    public let clsTokenID: Int?
    public let sepTokenID: Int?
    public let padTokenID: Int?
    public let maskTokenID: Int?

    /// One past the largest id.
    public var vocabularySize: Int { tokens.count }

    /// Reads a `tokenizer.json`.
    public convenience init(path: String) throws {
        try self.init(config: TokenizerJSON(path: path))
    }

    public init(config: TokenizerJSON) throws {
        self.config = config
        let m = config.model
        var maxID = m.vocabulary.map(\.1).max() ?? -1
        for t in config.addedTokens { maxID = max(maxID, t.id) }
        guard maxID < 10_000_000 else {
            throw CausalError.badFormat(path: config.path, field: "model.vocab", reason: "token id \(maxID) is implausibly large")
        }
        var tokens = [String?](repeating: nil, count: maxID + 1)
        for (s, id) in m.vocabulary where tokens[id] == nil { tokens[id] = s }
        for t in config.addedTokens { tokens[t.id] = t.content }
        self.tokens = tokens
        let table = ByteSpanTable(m.vocabulary.map(\.0)), tableIDs = m.vocabulary.map(\.1)
        self.table = table
        self.tableIDs = tableIDs
        prefix = Array(m.continuingSubwordPrefix.utf8)
        maxChars = m.maxInputCharsPerWord
        rawMatcher = AddedTokenMatcher(config.addedTokens.filter { !$0.normalized })
        normalizedMatcher = AddedTokenMatcher(config.addedTokens.filter { $0.normalized })
        specialIDs = Set(config.addedTokens.filter(\.special).map(\.id))

        func id(_ s: String) -> Int? {
            if let t = config.addedTokens.first(where: { $0.content.utf8.elementsEqual(s.utf8) }) { return t.id }
            return Array(s.utf8).withUnsafeBufferPointer { table.find($0) }.map { tableIDs[$0] }
        }
        guard let unk = id(m.unknownToken) else {
            throw CausalError.badFormat(path: config.path, field: "model.unk_token", reason: "'\(m.unknownToken)' is not in the vocabulary")
        }
        unknownTokenID = unk
        clsTokenID = id("[CLS]")
        sepTokenID = id("[SEP]")
        padTokenID = id("[PAD]")
        maskTokenID = id("[MASK]")
        if case let .template(_, specials)? = config.postProcessor {
            for (name, ids) in specials {
                for i in ids where i >= tokens.count || tokens[i] == nil {
                    throw CausalError.badFormat(path: config.path, field: "post_processor.special_tokens.\(name)", reason: "id \(i) is not in the vocabulary")
                }
            }
        }
    }

    /// The token string of an id.
    public func tokenString(_ id: Int) -> String? { id >= 0 && id < tokens.count ? tokens[id] : nil }

    /// The id of a token string (an added token or a vocabulary entry, compared byte for byte).
    public func tokenID(_ token: String) -> Int? {
        if let t = config.addedTokens.first(where: { $0.content.utf8.elementsEqual(token.utf8) }) { return t.id }
        return Array(token.utf8).withUnsafeBufferPointer { table.find($0) }.map { tableIDs[$0] }
    }

    /// Number of ids the post-processor adds around a single sequence.
    public var specialTokenCount: Int {
        guard case let .template(single, specials)? = config.postProcessor else { return 0 }
        return single.reduce(0) { n, p in
            if case let .special(name) = p { return n + (specials[name]?.count ?? 0) }
            return n
        }
    }

    /// Token ids of `text`. With `addSpecialTokens` the post-processor's template is applied ([CLS] … [SEP]).
    /// `maxLength` (counting the special tokens) truncates the text's own tokens from the end, as Hugging Face's
    /// truncation does for a single sequence; nil means no limit.
    public func encode(_ text: String, addSpecialTokens: Bool = true, maxLength: Int? = nil) -> [Int] {
        var ids = encodeText(text)
        let extra = addSpecialTokens ? specialTokenCount : 0
        if let maxLength, ids.count + extra > maxLength { ids.removeLast(min(ids.count, ids.count + extra - maxLength)) }
        guard addSpecialTokens, case let .template(single, specials)? = config.postProcessor else { return ids }
        var out: [Int] = []
        out.reserveCapacity(ids.count + extra)
        for p in single {
            switch p {
            case .sequence: out += ids
            case let .special(name): out += specials[name] ?? []
            }
        }
        return out
    }

    /// The token strings of `text`, without special tokens added around it.
    public func tokenize(_ text: String) -> [String] {
        encodeText(text).map { tokens[$0] ?? "" }
    }

    /// Text of token ids: WordPiece pieces glued to the previous token, the others separated by spaces
    /// (with the decoder's cleanup of spaces before punctuation and in contractions). Special tokens are
    /// left out when `skipSpecialTokens`.
    public func decode(_ ids: [Int], skipSpecialTokens: Bool = true) throws -> String {
        var out = ""
        var first = true
        for id in ids {
            guard let s = tokenString(id) else { throw CausalError.badTokenID(id: id, vocabularySize: tokens.count) }
            if skipSpecialTokens && specialIDs.contains(id) { continue }
            out += decodedPiece(s, first: first)
            first = false
        }
        return out
    }

    /// Whether an id is a special added token ([CLS], [SEP], [PAD], [MASK], ...).
    public func isSpecial(_ id: Int) -> Bool { specialIDs.contains(id) }

    /// One kept token through the decoder: after the first, a continuation piece loses its prefix and any other
    /// piece gets a space in front; then the cleanup rules (per token, as Hugging Face's WordPiece decoder).
    func decodedPiece(_ t: String, first: Bool) -> String {
        let (pfx, cleanup): (String, Bool)
        if case let .wordPiece(p, c)? = config.decoder { (pfx, cleanup) = (p, c) } else {
            (pfx, cleanup) = (config.model.continuingSubwordPrefix, true)
        }
        var piece = t
        if !first {
            if !pfx.isEmpty && t.utf8.starts(with: pfx.utf8) { piece = String(decoding: t.utf8.dropFirst(pfx.utf8.count), as: UTF8.self) }
            else { piece = " " + t }
        }
        return cleanup ? Self.cleanup(piece) : piece
    }

    /// The WordPiece decoder's cleanup: no space before . ? ! , and in common English contractions.
    static func cleanup(_ s: String) -> String {
        var s = s
        for (a, b) in [(" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
                       (" do not", " don't"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")] {
            s = s.replacingOccurrences(of: a, with: b)
        }
        return s
    }

    // MARK: Pipeline

    /// Ids of the text without special tokens added around it.
    private func encodeText(_ text: String) -> [Int] {
        var ids: [Int] = []
        let raw = Array(text.unicodeScalars)
        for seg in rawMatcher.split(raw) {
            switch seg {
            case let .token(id): ids.append(id)
            case let .text(s):
                let normalized = config.normalizer.map { BertText.normalize(s, $0) } ?? s
                for seg2 in normalizedMatcher.split(normalized) {
                    switch seg2 {
                    case let .token(id): ids.append(id)
                    case let .text(t):
                        let words = config.preTokenizer.map { BertText.preTokenize(t, $0) } ?? [t]
                        for w in words { wordPiece(w, into: &ids) }
                    }
                }
            }
        }
        return ids
    }

    /// Greedy longest-match-first WordPiece of one word.
    private func wordPiece(_ word: [Unicode.Scalar], into ids: inout [Int]) {
        guard !word.isEmpty else { return }
        guard word.count <= maxChars else { ids.append(unknownTokenID); return }
        // UTF-8 bytes of the word and the byte offset of each scalar boundary.
        var bytes: [UInt8] = []
        var offsets: [Int] = [0]
        bytes.reserveCapacity(word.count * 2)
        for s in word {
            UTF8.encode(s) { bytes.append($0) }
            offsets.append(bytes.count)
        }
        let start0 = ids.count
        var start = 0
        bytes.withUnsafeBufferPointer { b in
            prefix.withUnsafeBufferPointer { pfx in
                while start < word.count {
                    var end = word.count
                    var found: Int?
                    while start < end {
                        let span = UnsafeBufferPointer(rebasing: b[offsets[start]..<offsets[end]])
                        if let i = start > 0 ? table.find(pfx, span) : table.find(span) { found = tableIDs[i]; break }
                        end -= 1
                    }
                    guard let id = found else {
                        ids.removeLast(ids.count - start0)
                        ids.append(unknownTokenID)
                        return
                    }
                    ids.append(id)
                    start = end
                }
            }
        }
    }
}

// MARK: - BERT text rules

enum BertText {
    /// Applies a normalizer to a run of scalars.
    static func normalize(_ s: [Unicode.Scalar], _ n: TokenizerJSON.Normalizer) -> [Unicode.Scalar] {
        switch n {
        case let .bert(clean, chinese, strip, lower):
            var out = s
            if clean { out = cleanText(out) }
            if chinese { out = spaceChineseChars(out) }
            if strip { out = stripAccents(out) }
            if lower { out = lowercase(out) }
            return out
        case .lowercase: return lowercase(s)
        case .stripAccents: return s.filter { $0.properties.generalCategory != .nonspacingMark }
        case .nfd: return Array(string(s).decomposedStringWithCanonicalMapping.unicodeScalars)
        case .nfkd: return Array(string(s).decomposedStringWithCompatibilityMapping.unicodeScalars)
        case .nfc: return Array(string(s).precomposedStringWithCanonicalMapping.unicodeScalars)
        case .nfkc: return Array(string(s).precomposedStringWithCompatibilityMapping.unicodeScalars)
        case let .sequence(list): return list.reduce(s) { normalize($0, $1) }
        }
    }

    static func string(_ s: [Unicode.Scalar]) -> String {
        var v = String.UnicodeScalarView()
        v.append(contentsOf: s)
        return String(v)
    }

    static func isWhitespace(_ c: Unicode.Scalar) -> Bool {
        c == "\t" || c == "\n" || c == "\r" || c.properties.isWhitespace
    }

    /// Control characters as `tokenizers` counts them: categories Cc, Cf, Co and Cs, except \t, \n and \r
    /// (unassigned code points are kept).
    static func isControl(_ c: Unicode.Scalar) -> Bool {
        if c == "\t" || c == "\n" || c == "\r" { return false }
        switch c.properties.generalCategory {
        case .control, .format, .privateUse, .surrogate: return true
        default: return false
        }
    }

    static func cleanText(_ s: [Unicode.Scalar]) -> [Unicode.Scalar] {
        var out: [Unicode.Scalar] = []
        out.reserveCapacity(s.count)
        for c in s {
            if c.value == 0 || c.value == 0xFFFD || isControl(c) { continue }
            out.append(isWhitespace(c) ? " " : c)
        }
        return out
    }

    /// The CJK Unified Ideographs blocks (and compatibility ideographs) that BERT spaces out; not Hangul, kana or
    /// CJK punctuation.
    static func isChineseChar(_ c: Unicode.Scalar) -> Bool {
        switch c.value {
        case 0x4E00...0x9FFF, 0x3400...0x4DBF, 0x20000...0x2A6DF, 0x2A700...0x2B73F, 0x2B740...0x2B81F,
             0x2B820...0x2CEAF, 0xF900...0xFAFF, 0x2F800...0x2FA1F:
            return true
        default:
            return false
        }
    }

    static func spaceChineseChars(_ s: [Unicode.Scalar]) -> [Unicode.Scalar] {
        guard s.contains(where: isChineseChar) else { return s }
        var out: [Unicode.Scalar] = []
        out.reserveCapacity(s.count + 8)
        for c in s {
            if isChineseChar(c) { out += [" ", c, " "] } else { out.append(c) }
        }
        return out
    }

    static func stripAccents(_ s: [Unicode.Scalar]) -> [Unicode.Scalar] {
        // Pure ASCII has nothing to decompose.
        if s.allSatisfy({ $0.value < 0x80 }) { return s }
        return string(s).decomposedStringWithCanonicalMapping.unicodeScalars.filter {
            $0.properties.generalCategory != .nonspacingMark
        }
    }

    static func lowercase(_ s: [Unicode.Scalar]) -> [Unicode.Scalar] {
        var out: [Unicode.Scalar] = []
        out.reserveCapacity(s.count)
        for c in s {
            if c.value < 0x80 {
                out.append(c.value >= 0x41 && c.value <= 0x5A ? Unicode.Scalar(c.value + 32)! : c)
            } else if c.properties.changesWhenLowercased {
                out.append(contentsOf: c.properties.lowercaseMapping.unicodeScalars)
            } else {
                out.append(c)
            }
        }
        return out
    }

    /// BERT's punctuation: the ASCII symbol ranges plus Unicode punctuation categories.
    static func isPunctuation(_ c: Unicode.Scalar) -> Bool {
        let v = c.value
        if (33...47).contains(v) || (58...64).contains(v) || (91...96).contains(v) || (123...126).contains(v) { return true }
        if v < 0x80 { return false }
        switch c.properties.generalCategory {
        case .connectorPunctuation, .dashPunctuation, .openPunctuation, .closePunctuation, .initialPunctuation,
             .finalPunctuation, .otherPunctuation:
            return true
        default:
            return false
        }
    }

    static func preTokenize(_ s: [Unicode.Scalar], _ p: TokenizerJSON.PreTokenizer) -> [[Unicode.Scalar]] {
        switch p {
        case .bert: return split(s, isolatingPunctuation: true)
        case .whitespaceSplit: return split(s, isolatingPunctuation: false)
        case let .sequence(list):
            return list.reduce([s]) { words, p in words.flatMap { preTokenize($0, p) } }
        }
    }

    static func split(_ s: [Unicode.Scalar], isolatingPunctuation: Bool) -> [[Unicode.Scalar]] {
        var words: [[Unicode.Scalar]] = []
        var cur: [Unicode.Scalar] = []
        for c in s {
            if isWhitespace(c) {
                if !cur.isEmpty { words.append(cur); cur = [] }
            } else if isolatingPunctuation && isPunctuation(c) {
                if !cur.isEmpty { words.append(cur); cur = [] }
                words.append([c])
            } else {
                cur.append(c)
            }
        }
        if !cur.isEmpty { words.append(cur) }
        return words
    }
}

// MARK: - Added tokens

/// Cuts added tokens out of text: at each position the longest token that starts there (leftmost first).
struct AddedTokenMatcher {
    enum Segment { case text([Unicode.Scalar]), token(Int) }

    private struct Entry { let scalars: [Unicode.Scalar]; let id: Int; let singleWord, lstrip, rstrip: Bool }
    private var byFirst: [UInt32: [Entry]] = [:]

    init(_ tokens: [TokenizerJSON.AddedToken]) {
        for t in tokens {
            let sc = Array(t.content.unicodeScalars)
            guard let f = sc.first else { continue }
            byFirst[f.value, default: []].append(Entry(scalars: sc, id: t.id, singleWord: t.singleWord, lstrip: t.lstrip, rstrip: t.rstrip))
        }
        for (k, v) in byFirst { byFirst[k] = v.sorted { $0.scalars.count > $1.scalars.count } }
    }

    private static func isWordChar(_ c: Unicode.Scalar) -> Bool {
        c == "_" || c.properties.isAlphabetic || c.properties.numericType != nil
    }

    func split(_ s: [Unicode.Scalar]) -> [Segment] {
        guard !byFirst.isEmpty else { return [.text(s)] }
        var out: [Segment] = []
        var textStart = 0
        var i = 0
        while i < s.count {
            guard let candidates = byFirst[s[i].value] else { i += 1; continue }
            var matched: Entry?
            for e in candidates where e.scalars.count <= s.count - i {
                var k = 1
                while k < e.scalars.count && e.scalars[k] == s[i + k] { k += 1 }
                guard k == e.scalars.count else { continue }
                if e.singleWord {
                    let before = i > 0 ? s[i - 1] : nil, after = i + k < s.count ? s[i + k] : nil
                    if let b = before, Self.isWordChar(b) { continue }
                    if let a = after, Self.isWordChar(a) { continue }
                }
                matched = e
                break
            }
            guard let e = matched else { i += 1; continue }
            var lo = i, hi = i + e.scalars.count
            if e.lstrip { while lo > textStart && BertText.isWhitespace(s[lo - 1]) { lo -= 1 } }
            if e.rstrip { while hi < s.count && BertText.isWhitespace(s[hi]) { hi += 1 } }
            if lo > textStart { out.append(.text(Array(s[textStart..<lo]))) }
            out.append(.token(e.id))
            textStart = hi
            i = hi
        }
        if textStart < s.count { out.append(.text(Array(s[textStart...]))) }
        return out
    }
}
