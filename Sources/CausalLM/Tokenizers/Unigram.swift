import Foundation

// Unigram language-model tokenization (Kudo 2018, https://arxiv.org/abs/1804.10959) as SentencePiece models such as
// T5 use it, following the `tokenizers` library exactly.
//
// encode(text):
//   1. Added tokens whose `normalized` is false are cut out of the raw text (leftmost, longest): </s>, <extra_id_0>, ...
//   2. Each stretch between them is normalized (T5: SentencePiece's precompiled charsmap, i.e. NFKC-like rules, then
//      right-strip and runs of 2+ spaces → "▁"); added tokens whose `normalized` is true are cut out of the result.
//   3. Metaspace pre-tokenization: spaces become "▁", a "▁" is put in front (prepend_scheme "always"; "first" only
//      for the stretch at the very start of the text; "never"), and with `split` each "▁" starts a new word.
//   4. Each word is segmented by Viterbi over its UTF-8 bytes: the segmentation into vocabulary pieces with the
//      largest sum of scores. A character that no one-character piece covers may also be taken as "unknown" with
//      score (lowest score in the vocabulary − 10); adjacent unknowns are fused into one piece. An unknown piece
//      becomes unk_id, or with byte_fallback its bytes as <0xXX> pieces when all of them exist.
//   5. The post-processor appends its special tokens (T5: `$A </s>`).
// decode(ids): pieces (added tokens by their content, special ones skipped on request) through the decoder chain
// (T5: Metaspace, "▁" → space with the first token's "▁" dropped), joined.
// Vocabulary lookups compare UTF-8 bytes, never Swift's canonical-equivalence string comparison.

/// A Unigram (SentencePiece-style, e.g. T5) tokenizer read from a Hugging Face `tokenizer.json`.
public final class UnigramTokenizer: @unchecked Sendable {
    public let config: UnigramTokenizerJSON
    /// Piece of each id: the added token's content where one has that id, else the model's piece.
    private let tokens: [String]
    private let scores: [Double]
    private let trie: PieceTrie
    private let minScore: Double
    private let rawMatcher: AddedTokenMatcher
    private let normalizedMatcher: AddedTokenMatcher
    /// UTF-8 bytes of special added tokens' contents (decode skips pieces spelled like one).
    private let specialContents: Set<[UInt8]>
    /// Ids of the pieces "<0x00>" … "<0xFF>", when byte_fallback is on and they exist.
    private let byteIDs: [Int?]
    private let regexes: [String: NSRegularExpression]

    /// The decoder chain token by token, for streaming; nil when it cannot be applied that way.
    private let streamPlan: UnigramStreamPlan?
    public let bosTokenID: Int?
    public let eosTokenID: Int?
    public let padTokenID: Int?

    /// The id of the unknown piece, if the model has one.
    public var unknownTokenID: Int? { config.unknownID }
    /// One past the largest id (model pieces and added tokens).
    public var vocabularySize: Int { tokens.count }

    /// Reads a `tokenizer.json` whose model is Unigram. `bosTokenID`/`eosTokenID`/`padTokenID` come from the model's
    /// config when given; otherwise from `tokenizer_config.json` beside the file (its `bos_token`, `eos_token`,
    /// `pad_token`), when present.
    public convenience init(path: String, bosTokenID: Int? = nil, eosTokenID: Int? = nil, padTokenID: Int? = nil) throws {
        try self.init(config: UnigramTokenizerJSON(path: path), bosTokenID: bosTokenID, eosTokenID: eosTokenID, padTokenID: padTokenID)
    }

    public init(config: UnigramTokenizerJSON, bosTokenID: Int? = nil, eosTokenID: Int? = nil, padTokenID: Int? = nil) throws {
        self.config = config
        let bad = { (field: String, reason: String) in CausalError.badFormat(path: config.path, field: field, reason: reason) }
        var tokens = config.vocabulary.map(\.0)
        scores = config.vocabulary.map(\.1)
        minScore = scores.min() ?? 0
        trie = PieceTrie(config.vocabulary.map(\.0))
        for (i, t) in config.addedTokens.enumerated() {
            if t.id < tokens.count {
                // An added token with a model id must spell that piece (T5's <pad>, </s>, <unk>).
                guard Array(t.content.utf8) == Array(tokens[t.id].utf8) else {
                    throw bad("added_tokens[\(i)]", "id \(t.id) is '\(tokens[t.id])' in model.vocab, not '\(t.content)'")
                }
            } else {
                guard t.id == tokens.count else {
                    throw bad("added_tokens[\(i)].id", "\(t.id) leaves a gap after the last id \(tokens.count - 1)")
                }
                tokens.append(t.content)
            }
        }
        self.tokens = tokens
        rawMatcher = AddedTokenMatcher(config.addedTokens.filter { !$0.normalized })
        normalizedMatcher = AddedTokenMatcher(config.addedTokens.filter { $0.normalized })
        specialContents = Set(config.addedTokens.filter(\.special).map { Array($0.content.utf8) })

        var byteIDs = [Int?](repeating: nil, count: 256)
        if config.byteFallback {
            for b in 0..<256 { byteIDs[b] = trie.find(Array(String(format: "<0x%02X>", b).utf8)) }
        }
        self.byteIDs = byteIDs

        var regexes: [String: NSRegularExpression] = [:]
        func collect(_ n: UnigramTokenizerJSON.Normalizer) {
            switch n {
            case let .replace(.regex(p), _): regexes[p] = try? NSRegularExpression(pattern: p)
            case let .sequence(list): list.forEach(collect)
            default: break
            }
        }
        config.normalizer.map(collect)
        self.regexes = regexes

        if case let .template(_, specials)? = config.postProcessor {
            for (name, ids) in specials {
                for id in ids where id >= tokens.count {
                    throw bad("post_processor.special_tokens.\(name)", "id \(id) is not in the vocabulary (0..<\(tokens.count))")
                }
            }
        }
        streamPlan = UnigramStreamPlan(config.decoder)

        // Special ids: the caller's, else those tokenizer_config.json beside the file names.
        for (key, v) in [("bosTokenID", bosTokenID), ("eosTokenID", eosTokenID), ("padTokenID", padTokenID)] {
            if let v, v < 0 || v >= tokens.count {
                throw CausalError.invalidArgument("\(config.path): \(key) \(v) is outside the vocabulary (0..<\(tokens.count))")
            }
        }
        var named: [String: Int] = [:]
        let tcPath = URL(fileURLWithPath: config.path).deletingLastPathComponent().appendingPathComponent("tokenizer_config.json").path
        if bosTokenID == nil || eosTokenID == nil || padTokenID == nil, FileManager.default.fileExists(atPath: tcPath),
           let tc = try HFJSON.parse(contentsOf: tcPath).objectValue {
            let index = Dictionary(tokens.enumerated().map { (Array($1.utf8), $0) }, uniquingKeysWith: { a, _ in a })
            for key in ["bos_token", "eos_token", "pad_token"] {
                guard let v = tc[key], !v.isNull, let s = v.stringValue ?? v.objectValue?["content"]?.stringValue else { continue }
                guard let id = index[Array(s.utf8)] else {
                    throw CausalError.badFormat(path: tcPath, field: key, reason: "'\(s)' is not in the vocabulary of \(config.path)")
                }
                named[key] = id
            }
        }
        self.bosTokenID = bosTokenID ?? named["bos_token"]
        self.eosTokenID = eosTokenID ?? named["eos_token"]
        self.padTokenID = padTokenID ?? named["pad_token"]
    }

    /// The piece of an id.
    public func tokenString(_ id: Int) -> String? { id >= 0 && id < tokens.count ? tokens[id] : nil }

    /// The id of a piece: an added token's, else the model's (compared byte for byte).
    public func tokenID(_ token: String) -> Int? {
        if let t = config.addedTokens.first(where: { $0.content.utf8.elementsEqual(token.utf8) }) { return t.id }
        return trie.find(Array(token.utf8))
    }

    /// Whether an id is a special added token (</s>, <pad>, <unk>, <extra_id_N> in T5).
    public func isSpecial(_ id: Int) -> Bool {
        guard let s = tokenString(id) else { return false }
        return specialContents.contains(Array(s.utf8))
    }

    /// Ids the post-processor puts around a single sequence.
    public var specialTokenCount: Int {
        guard case let .template(single, specials)? = config.postProcessor else { return 0 }
        return single.reduce(0) { n, p in
            if case let .special(name) = p { return n + (specials[name]?.count ?? 0) }
            return n
        }
    }

    /// Token ids of `text`; with `addSpecialTokens` the post-processor's template is applied (T5: … </s>).
    /// Throws only when the text has a character outside the vocabulary and the model has neither unk_id nor
    /// byte fallback for it.
    public func encode(_ text: String, addSpecialTokens: Bool = true) throws -> [Int] {
        let ids = try encodeText(text)
        guard addSpecialTokens, case let .template(single, specials)? = config.postProcessor else { return ids }
        var out: [Int] = []
        out.reserveCapacity(ids.count + specialTokenCount)
        for p in single {
            switch p {
            case .sequence: out += ids
            case let .special(name): out += specials[name] ?? []
            }
        }
        return out
    }

    /// Text of token ids through the file's decoder; special added tokens are left out when `skipSpecialTokens`.
    public func decode(_ ids: [Int], skipSpecialTokens: Bool = true) throws -> String {
        var pieces: [String] = []
        pieces.reserveCapacity(ids.count)
        for id in ids {
            guard let s = tokenString(id) else { throw CausalError.badTokenID(id: id, vocabularySize: tokens.count) }
            if skipSpecialTokens && specialContents.contains(Array(s.utf8)) { continue }
            pieces.append(s)
        }
        guard let d = config.decoder else { return pieces.joined(separator: " ") }
        return Self.decodeChain(pieces, d).joined()
    }

    /// What one token adds to decoded text (`TextTokenizer`): the piece through the decoder chain token by token.
    /// For a chain that cannot run token by token (see `UnigramStreamPlan`), the raw piece; its streaming decoder then
    /// decodes all ids together at the end.
    public func decodingPiece(_ id: Int, first: Bool, skipSpecial: Bool) throws -> DecodingPiece {
        guard let s = tokenString(id) else { throw CausalError.badTokenID(id: id, vocabularySize: tokens.count) }
        if skipSpecial && specialContents.contains(Array(s.utf8)) { return .skipped }
        guard let plan = streamPlan else { return .bytes(Array(s.utf8)) }
        let t = plan.apply(s, first: first)
        if plan.byteFallback, let b = Self.byteToken(t) { return .fallbackByte(b) }
        return .bytes(Array(t.utf8))
    }

    public func makeStreamingDecoder(skipSpecial: Bool) -> StreamingDecoder {
        StreamingDecoder(tokenizer: self, skipSpecial: skipSpecial, leadingStrip: streamPlan?.leadingStrip, streams: streamPlan != nil)
    }

    /// Whether the decoder chain runs token by token (so generated text streams).
    public var decodesTokenByToken: Bool { streamPlan != nil }

    // MARK: Encoding pipeline

    private func encodeText(_ text: String) throws -> [Int] {
        var ids: [Int] = []
        for (si, seg) in rawMatcher.split(Array(text.unicodeScalars)).enumerated() {
            switch seg {
            case let .token(id): ids.append(id)
            case let .text(raw):
                let normalized = config.normalizer.map { normalize(Self.string(raw), $0) } ?? Self.string(raw)
                for (ni, seg2) in normalizedMatcher.split(Array(normalized.unicodeScalars)).enumerated() {
                    switch seg2 {
                    case let .token(id): ids.append(id)
                    case let .text(t):
                        // Whether this stretch begins at the start of the input (prepend_scheme "first").
                        let atStart = si == 0 && ni == 0
                        var words: [([Unicode.Scalar], Bool)] = [(t, atStart)]
                        if let p = config.preTokenizer { words = Self.preTokenize(words, p) }
                        for (w, _) in words { try segment(w, into: &ids) }
                    }
                }
            }
        }
        return ids
    }

    private func normalize(_ s: String, _ n: UnigramTokenizerJSON.Normalizer) -> String {
        switch n {
        case let .precompiled(map): return map.normalize(s)
        case let .replace(.string(p), content): return Self.replaceAll(s, Array(p.unicodeScalars), Array(content.unicodeScalars))
        case let .replace(.regex(p), content):
            guard let re = regexes[p] else { return s }
            let ns = s as NSString
            return re.stringByReplacingMatches(in: s, range: NSRange(location: 0, length: ns.length),
                                               withTemplate: NSRegularExpression.escapedTemplate(for: content))
        case let .strip(left, right):
            var sc = Array(s.unicodeScalars)
            if right { while let l = sc.last, l.properties.isWhitespace { sc.removeLast() } }
            if left, let i = sc.firstIndex(where: { !$0.properties.isWhitespace }) { sc.removeFirst(i) } else if left { sc = [] }
            return Self.string(sc)
        case let .prepend(p): return s.isEmpty ? s : p + s
        case .lowercase: return Self.string(BertText.lowercase(Array(s.unicodeScalars)))
        case .nfc: return s.precomposedStringWithCanonicalMapping
        case .nfd: return s.decomposedStringWithCanonicalMapping
        case .nfkc: return s.precomposedStringWithCompatibilityMapping
        case .nfkd: return s.decomposedStringWithCompatibilityMapping
        case let .sequence(list): return list.reduce(s) { normalize($0, $1) }
        }
    }

    /// Applies a pre-tokenizer to words, each with whether it begins at the start of the input.
    static func preTokenize(_ words: [([Unicode.Scalar], Bool)], _ p: UnigramTokenizerJSON.PreTokenizer) -> [([Unicode.Scalar], Bool)] {
        switch p {
        case let .sequence(list):
            return list.reduce(words) { preTokenize($0, $1) }
        case .whitespaceSplit:
            return words.flatMap { w, atStart in
                var out: [([Unicode.Scalar], Bool)] = []
                var cur: [Unicode.Scalar] = []
                var curStart = 0
                for (i, c) in w.enumerated() {
                    if c.properties.isWhitespace {
                        if !cur.isEmpty { out.append((cur, atStart && curStart == 0)); cur = [] }
                    } else {
                        if cur.isEmpty { curStart = i }
                        cur.append(c)
                    }
                }
                if !cur.isEmpty { out.append((cur, atStart && curStart == 0)) }
                return out
            }
        case let .metaspace(r, scheme, split):
            return words.flatMap { w, atStart -> [([Unicode.Scalar], Bool)] in
                guard !w.isEmpty else { return [] }
                var s = w.map { $0 == " " ? r : $0 }
                let prepend: Bool
                switch scheme {
                case .always: prepend = s.first != r
                case .first: prepend = s.first != r && atStart
                case .never: prepend = false
                }
                if prepend { s.insert(r, at: 0) }
                guard split else { return [(s, atStart)] }
                // Each replacement character starts a new word (merged with what follows it).
                var out: [([Unicode.Scalar], Bool)] = []
                var cur: [Unicode.Scalar] = []
                for c in s {
                    if c == r && !cur.isEmpty { out.append((cur, atStart && out.isEmpty)); cur = [] }
                    cur.append(c)
                }
                if !cur.isEmpty { out.append((cur, atStart && out.isEmpty)) }
                return out
            }
        }
    }

    /// Viterbi segmentation of one word, appending its ids.
    private func segment(_ word: [Unicode.Scalar], into ids: inout [Int]) throws {
        guard !word.isEmpty else { return }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(word.count * 3)
        for s in word { UTF8.encode(s) { bytes.append($0) } }
        let n = bytes.count
        let unkScore = minScore - 10
        let unk = config.unknownID
        // best[i]: the best path over bytes[0..<i]: its score, where its last piece starts, and that piece's id
        var bestScore = [Double](repeating: 0, count: n + 1)
        var bestStart = [Int](repeating: -1, count: n + 1)
        var bestID = [Int](repeating: 0, count: n + 1)
        var start = 0
        while start < n {
            let here = bestScore[start]
            let charLen = Self.utf8Length(bytes[start])
            var hasSingle = false
            trie.prefixes(of: bytes, from: start) { end, id in
                let candidate = scores[id] + here
                if bestStart[end] < 0 || candidate > bestScore[end] {
                    bestScore[end] = candidate
                    bestStart[end] = start
                    bestID[end] = id
                }
                if end - start == charLen { hasSingle = true }
            }
            if !hasSingle {
                // As `tokenizers` does: a character without a one-character piece needs unk_id, chosen or not.
                guard let unk else {
                    let c = String(decoding: bytes[start..<min(start + charLen, n)], as: UTF8.self)
                    throw CausalError.badFormat(path: config.path, field: "model.unk_id",
                                                reason: "missing, and the text has '\(c)', which no one-character piece covers")
                }
                let end = min(start + charLen, n)
                let candidate = unkScore + here
                if bestStart[end] < 0 || candidate > bestScore[end] {
                    bestScore[end] = candidate
                    bestStart[end] = start
                    bestID[end] = unk
                }
            }
            start += charLen
        }
        // Back from the end; adjacent unknown pieces are fused into one.
        var pieces: [(Int, Int, Int)] = []   // (start, end, id) in reverse
        var end = n
        var fusedEnd = -1
        while end > 0 {
            let s = bestStart[end], id = bestID[end]
            if id == unk {
                if fusedEnd < 0 { fusedEnd = end }
            } else {
                if fusedEnd >= 0 { pieces.append((end, fusedEnd, -1)); fusedEnd = -1 }
                pieces.append((s, end, id))
            }
            end = s
        }
        if fusedEnd >= 0 { pieces.append((0, fusedEnd, -1)) }
        for (s, e, id) in pieces.reversed() {
            if id >= 0 { ids.append(id); continue }
            // A fused unknown stretch: the vocabulary's id when the whole stretch is a piece, else bytes or unk.
            let span = Array(bytes[s..<e])
            if let known = trie.find(span) { ids.append(known); continue }
            if config.byteFallback {
                let fallback = span.compactMap { byteIDs[Int($0)] }
                if fallback.count == span.count { ids += fallback; continue }
            }
            if let unk { ids.append(unk) }
        }
    }

    @inline(__always) static func utf8Length(_ lead: UInt8) -> Int {
        lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4
    }

    // MARK: Decoders

    static func decodeChain(_ tokens: [String], _ d: UnigramTokenizerJSON.Decoder) -> [String] {
        switch d {
        case let .sequence(list):
            return list.reduce(tokens) { decodeChain($0, $1) }
        case let .metaspace(r, scheme):
            return tokens.enumerated().map { i, t in
                var v = String.UnicodeScalarView()
                for c in t.unicodeScalars {
                    if c == r {
                        if i == 0 && scheme != .never { continue }
                        v.append(" ")
                    } else {
                        v.append(c)
                    }
                }
                return String(v)
            }
        case let .replace(p, content):
            return tokens.map { replaceAll($0, Array(p.unicodeScalars), Array(content.unicodeScalars)) }
        case .byteFallback:
            var out: [String] = []
            var pending: [UInt8] = []
            func flush() {
                guard !pending.isEmpty else { return }
                if let s = String(validating: pending, as: UTF8.self) { out.append(s) } else {
                    out += Array(repeating: "\u{FFFD}", count: pending.count)
                }
                pending = []
            }
            for t in tokens {
                if let b = byteToken(t) { pending.append(b) } else { flush(); out.append(t) }
            }
            flush()
            return out
        case .fuse:
            return [tokens.joined()]
        case let .strip(c, start, stop):
            return tokens.map { t in
                let sc = Array(t.unicodeScalars)
                var lo = 0
                while lo < min(start, sc.count) && sc[lo] == c { lo += 1 }
                var hi = sc.count
                var k = 0
                while k < stop && hi > lo && sc[hi - 1] == c { hi -= 1; k += 1 }
                return string(Array(sc[lo..<hi]))
            }
        }
    }

    /// The byte of a "<0xXX>" piece (six bytes; the two digits parsed as Rust's u8::from_str_radix(_, 16) does).
    static func byteToken(_ t: String) -> UInt8? {
        let u = Array(t.utf8)
        guard u.count == 6, u[0] == 0x3C, u[1] == 0x30, u[2] == 0x78, u[5] == 0x3E else { return nil }
        func hex(_ c: UInt8) -> UInt8? {
            switch c {
            case 0x30...0x39: return c - 0x30
            case 0x41...0x46: return c - 0x41 + 10
            case 0x61...0x66: return c - 0x61 + 10
            default: return nil
            }
        }
        if u[3] == 0x2B { return hex(u[4]) }   // "+F": a sign, then one digit
        guard let hi = hex(u[3]), let lo = hex(u[4]) else { return nil }
        return hi << 4 | lo
    }

    // MARK: Helpers

    static func string(_ s: [Unicode.Scalar]) -> String {
        var v = String.UnicodeScalarView()
        v.append(contentsOf: s)
        return String(v)
    }

    /// Replaces every non-overlapping occurrence of `pattern`, left to right, comparing scalars.
    static func replaceAll(_ s: String, _ pattern: [Unicode.Scalar], _ content: [Unicode.Scalar]) -> String {
        let sc = Array(s.unicodeScalars)
        guard !pattern.isEmpty, sc.count >= pattern.count else { return s }
        var out: [Unicode.Scalar] = []
        out.reserveCapacity(sc.count)
        var i = 0
        var changed = false
        while i < sc.count {
            if sc[i] == pattern[0] && i + pattern.count <= sc.count && sc[i..<(i + pattern.count)].elementsEqual(pattern) {
                out += content
                i += pattern.count
                changed = true
            } else {
                out.append(sc[i])
                i += 1
            }
        }
        return changed ? string(out) : s
    }
}

/// A byte trie over the vocabulary's pieces: all pieces that prefix a text position, in order of length.
struct PieceTrie: Sendable {
    /// (node << 8 | byte) → child node. Node 0 is the root.
    private var children: [Int: Int32] = [:]
    /// Piece id ending at each node (-1: none). For a piece listed twice, the last id (as `tokenizers` keeps it).
    private var ids: [Int32] = [-1]

    init(_ pieces: [String]) {
        children.reserveCapacity(pieces.count * 4)
        for (id, p) in pieces.enumerated() {
            var node = 0
            for b in p.utf8 {
                let key = node << 8 | Int(b)
                if let c = children[key] { node = Int(c) } else {
                    let c = ids.count
                    ids.append(-1)
                    children[key] = Int32(c)
                    node = c
                }
            }
            ids[node] = Int32(id)
        }
    }

    /// Calls `body(end, id)` for each piece equal to bytes[start..<end], shortest first.
    @inline(__always) func prefixes(of bytes: [UInt8], from start: Int, _ body: (Int, Int) -> Void) {
        var node = 0
        var i = start
        while i < bytes.count, let c = children[node << 8 | Int(bytes[i])] {
            node = Int(c)
            i += 1
            if ids[node] >= 0 { body(i, Int(ids[node])) }
        }
    }

    /// The id of the piece spelled by exactly these bytes.
    func find(_ bytes: [UInt8]) -> Int? {
        var node = 0
        for b in bytes {
            guard let c = children[node << 8 | Int(b)] else { return nil }
            node = Int(c)
        }
        return ids[node] >= 0 ? Int(ids[node]) : nil
    }
}

extension UnigramTokenizer: TextTokenizer {
    /// `encode(text, addSpecialTokens: true)` (T5: the text's pieces, then `</s>`).
    public func encode(_ text: String) throws -> [Int] { try encode(text, addSpecialTokens: true) }

    public func decode(_ ids: [Int], skipSpecial: Bool) throws -> String { try decode(ids, skipSpecialTokens: skipSpecial) }
}

/// A Unigram decoder chain applied token by token. Hugging Face runs the chain over the whole list of pieces; these
/// chains give the same text piece by piece:
///   - per-piece steps (Metaspace, Replace, Strip; no decoder: pieces joined by spaces) before any ByteFallback, where
///     Metaspace's "first piece" is the first piece kept;
///   - ByteFallback (runs of `<0xNN>` pieces are then joined by the streaming decoder);
///   - after Fuse: Metaspace and single-character Replace (both act on single characters, so on each piece alike),
///     and a last Strip of leading characters only (applied to the start of the text).
/// T5's Metaspace decoder and Llama's Replace, ByteFallback, Fuse, Strip chain are both of this form. Any other chain
/// gets no plan: its streaming decoder decodes all ids at the end.
struct UnigramStreamPlan: Sendable {
    enum Step: Sendable {
        case metaspace(Unicode.Scalar, dropInFirst: Bool)
        case replace([Unicode.Scalar], [Unicode.Scalar])
        case strip(Unicode.Scalar, start: Int, stop: Int)
        /// No decoder: pieces are joined with spaces.
        case spaceJoin
    }

    var steps: [Step] = []
    var byteFallback = false
    var leadingStrip: (scalar: Unicode.Scalar, count: Int)? = nil

    init?(_ decoder: UnigramTokenizerJSON.Decoder?) {
        guard let decoder else { steps = [.spaceJoin]; return }
        func flatten(_ d: UnigramTokenizerJSON.Decoder) -> [UnigramTokenizerJSON.Decoder] {
            if case let .sequence(list) = d { return list.flatMap(flatten) }
            return [d]
        }
        var fused = false
        for d in flatten(decoder) {
            if leadingStrip != nil { return nil }   // nothing may follow the text-level strip
            switch d {
            case let .metaspace(r, scheme):
                if byteFallback { return nil }
                // After Fuse the text is one piece, the first: every replacement character is dropped (or spaced for "never").
                steps.append(fused ? .replace([r], scheme == .never ? [" "] : []) : .metaspace(r, dropInFirst: scheme != .never))
            case let .replace(p, c):
                let ps = Array(p.unicodeScalars)
                if byteFallback || (fused && ps.count != 1) { return nil }
                steps.append(.replace(ps, Array(c.unicodeScalars)))
            case .byteFallback:
                if byteFallback || fused { return nil }
                byteFallback = true
            case .fuse:
                fused = true
            case let .strip(c, start, stop):
                if fused {
                    guard stop == 0 else { return nil }
                    leadingStrip = (c, start)
                } else {
                    if byteFallback { return nil }
                    steps.append(.strip(c, start: start, stop: stop))
                }
            case .sequence:
                return nil
            }
        }
    }

    /// One piece through the per-piece steps; `first`: no piece has been kept before it.
    func apply(_ piece: String, first: Bool) -> String {
        var t = piece
        for step in steps {
            switch step {
            case let .metaspace(r, drop):
                var v = String.UnicodeScalarView()
                for c in t.unicodeScalars {
                    if c == r {
                        if first && drop { continue }
                        v.append(" ")
                    } else {
                        v.append(c)
                    }
                }
                t = String(v)
            case let .replace(p, c):
                t = UnigramTokenizer.replaceAll(t, p, c)
            case let .strip(c, start, stop):
                let sc = Array(t.unicodeScalars)
                var lo = 0
                while lo < min(start, sc.count) && sc[lo] == c { lo += 1 }
                var hi = sc.count, k = 0
                while k < stop && hi > lo && sc[hi - 1] == c { hi -= 1; k += 1 }
                t = UnigramTokenizer.string(Array(sc[lo..<hi]))
            case .spaceJoin:
                if !first { t = " " + t }
            }
        }
        return t
    }
}
