import Foundation

// SentencePiece-style BPE from a Hugging Face `tokenizer.json`: a BPE model with `byte_fallback: true` whose pieces
// spell a space "▁" (Gemma 3, Llama 2, Mistral, as transformers writes them). It runs the `tokenizers` library's
// pipeline, not llama.cpp's: merges are applied by their rank in `model.merges` (not by piece score).
//   added_tokens    cut out of the raw text first, leftmost-longest (those with `normalized: true` are looked for in
//                   the normalized text instead); special ones are control tokens (chat markers, <bos>), the others
//                   user-defined (Gemma's "\n\n", "<table>", ...). With `parseSpecial: false` only the latter.
//   normalizer      Replace(String → String) (" " → "▁"), Prepend("▁"), NFC/NFD/NFKC/NFKD, or a Sequence of these;
//                   applied to each stretch of text between added tokens.
//   pre_tokenizer   none, Metaspace (replacement, prepend_scheme always/first/never, split), Split on a literal
//                   String (Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous), or a Sequence.
//   model           each word's characters are the first symbols (a character outside the vocabulary becomes its
//                   UTF-8 bytes as <0xNN> pieces, or <unk>, fused when `fuse_unk`); then, repeatedly, the adjacent
//                   pair with the lowest merge rank (leftmost among equal) becomes its merged piece.
//   post_processor  TemplateProcessing whose single template starts with a special token: BOS first.
//   decoder         Replace, Metaspace (its replacement → " ", dropped in the first token), ByteFallback
//                   (<0xNN> runs → UTF-8 or U+FFFD per byte), Fuse, then Strip(content, start, 0) of the whole text.
// Anything else (a Regex pattern, dropout, a subword prefix or suffix, lstrip/rstrip/single_word added tokens, other
// normalizers, pre-tokenizers or decoders) is refused with an error naming the file and the field.

/// A byte-fallback BPE tokenizer read from tokenizer.json (the `tokenizers` library's semantics). Immutable; thread-safe.
public final class SentencePieceJSONTokenizer: @unchecked Sendable {
    public let bosTokenID: Int?
    public let eosTokenID: Int?
    public let padTokenID: Int?
    public let unknownTokenID: Int?
    /// Whether `encode` puts the BOS token first (the post-processor's template, or tokenizer_config.json's
    /// `add_bos_token`).
    public let addBOS: Bool
    public let path: String

    enum Normalizer: Equatable {
        case replace([Unicode.Scalar], [Unicode.Scalar])
        case prepend([Unicode.Scalar])
        case nfc, nfd, nfkc, nfkd
    }
    enum PrependScheme: Equatable { case always, first, never }
    enum SplitBehavior: String, Equatable {
        case removed = "Removed", isolated = "Isolated", mergedWithPrevious = "MergedWithPrevious"
        case mergedWithNext = "MergedWithNext", contiguous = "Contiguous"
    }
    enum PreTokenizer: Equatable {
        case metaspace(replacement: Unicode.Scalar, prepend: PrependScheme, split: Bool)
        case split([Unicode.Scalar], SplitBehavior)
    }
    enum DecodeStep: Equatable {
        case replace(String, String)
        case metaspace(replacement: Character, dropInFirst: Bool)
    }

    private let tokens: [String]
    private let special: [Bool]
    /// Added tokens by text (those not in model.vocab are found here).
    private let addedIDs: [String: Int]
    private let vocab: ByteSpanTable
    /// (left id << 32 | right id) → (rank << 32 | merged id).
    private let merges: [UInt64: UInt64]
    private let byteIDs: [Int32]
    private let byteFallback: Bool
    private let fuseUnknown: Bool
    private let ignoreMerges: Bool
    private let rawAdded: SpecialMatcher
    private let normalizedAdded: SpecialMatcher
    private let normalizers: [Normalizer]
    private let preTokenizers: [PreTokenizer]
    private let decodeSteps: [DecodeStep]
    private let byteFallbackDecoding: Bool
    private let strip: (scalar: Unicode.Scalar, count: Int)?

    /// Whether a tokenizer.json holds a model this class runs: BPE with `byte_fallback: true`.
    public static func handles(tokenizerJSON root: HFJSON) -> Bool {
        guard let m = root.objectValue?["model"]?.objectValue else { return false }
        return (m["type"]?.stringValue ?? "BPE") == "BPE" && m["byte_fallback"]?.boolValue == true
    }

    /// Reads a byte-fallback BPE `tokenizer.json`. `bosTokenID`/`eosTokenID`/`padTokenID` come from the model's config
    /// when given; otherwise from `tokenizer_config.json` beside the file (`bos_token`, `eos_token`, `pad_token`).
    public convenience init(tokenizerJSON path: String, bosTokenID: Int? = nil, eosTokenID: Int? = nil,
                            padTokenID: Int? = nil) throws {
        try self.init(root: try HFJSON.parse(contentsOf: path), path: path, bosTokenID: bosTokenID,
                      eosTokenID: eosTokenID, padTokenID: padTokenID)
    }

    init(root: HFJSON, path: String, bosTokenID: Int?, eosTokenID: Int?, padTokenID: Int?) throws {
        self.path = path
        let r = FieldReader(path: path)
        let o = try r.object(root, "JSON")
        let m = try r.object(o["model"] ?? .null, "model")
        let type = try r.string(m, "type", in: "model", default: "BPE")
        guard type == "BPE" else { throw r.bad("model.type", "'\(type)' is not a BPE model") }
        guard try r.bool(m, "byte_fallback", in: "model", default: false) else {
            throw r.bad("model.byte_fallback", "false: not a SentencePiece-style (byte fallback) BPE model")
        }
        if let d = m["dropout"], !d.isNull, d.doubleValue != 0 {
            throw r.bad("model.dropout", "\(d.brief) is not supported (BPE dropout is random; only null or 0)")
        }
        for key in ["continuing_subword_prefix", "end_of_word_suffix"] {
            if let v = m[key], !v.isNull, v.stringValue != "" {
                throw r.bad("model.\(key)", "\(v.brief) is not supported (only null)")
            }
        }
        fuseUnknown = try r.bool(m, "fuse_unk", in: "model", default: false)
        ignoreMerges = try r.bool(m, "ignore_merges", in: "model", default: false)
        byteFallback = true

        // Vocabulary in id order: model.vocab, then added tokens (which may extend it).
        let vocabObj = try r.object(m["vocab"] ?? .null, "model.vocab")
        var byID: [Int: String] = [:]
        byID.reserveCapacity(vocabObj.count + 16)
        var modelIDs: [Int] = []
        modelIDs.reserveCapacity(vocabObj.count)
        for (token, v) in vocabObj.members {
            guard let id = v.intValue, id >= 0, id < 1 << 24 else {
                throw r.bad("model.vocab.\(token)", "id must be a non-negative integer below 2^24, found \(v.brief)")
            }
            if let prev = byID[id], prev != token { throw r.bad("model.vocab.\(token)", "id \(id) is also given to '\(prev)'") }
            byID[id] = token
            modelIDs.append(id)
        }
        struct Added { var id: Int; var content: String; var special: Bool; var normalized: Bool }
        var added: [Added] = []
        if let list = o["added_tokens"], !list.isNull {
            for (i, t) in try r.array(list, "added_tokens").enumerated() {
                let f = "added_tokens[\(i)]"
                let to = try r.object(t, f)
                let a = Added(id: try r.int(to, "id", in: f), content: try r.string(to, "content", in: f),
                              special: try r.bool(to, "special", in: f, default: false),
                              normalized: try r.bool(to, "normalized", in: f, default: true))
                guard a.id >= 0, a.id < 1 << 24 else { throw r.bad(f + ".id", "must be a non-negative integer below 2^24") }
                guard !a.content.isEmpty else { throw r.bad(f + ".content", "is empty") }
                for key in ["lstrip", "rstrip", "single_word"] where try r.bool(to, key, in: f, default: false) {
                    throw r.bad("\(f).\(key)", "true is not supported")
                }
                if let prev = byID[a.id], prev != a.content {
                    throw r.bad(f, "id \(a.id) is '\(prev)' in model.vocab, not '\(a.content)'")
                }
                byID[a.id] = a.content
                added.append(a)
            }
        }
        let n = (byID.keys.max() ?? -1) + 1
        guard n > 0 else { throw r.bad("model.vocab", "is empty") }
        guard byID.count == n else {
            let missing = (0..<n).first { byID[$0] == nil }!
            throw r.bad("model.vocab", "ids must run from 0 without gaps; id \(missing) has no token")
        }
        tokens = (0..<n).map { byID[$0]! }
        var special = [Bool](repeating: false, count: n)
        for a in added where a.special { special[a.id] = true }
        self.special = special
        addedIDs = Dictionary(added.map { ($0.content, $0.id) }, uniquingKeysWith: { a, _ in a })
        // Only model.vocab entries take part in BPE; other ids get a string no lookup asks for.
        var modelTokens = [String](repeating: "", count: n)
        for id in modelIDs { modelTokens[id] = tokens[id] }
        let table = ByteSpanTable(modelTokens)
        vocab = table
        func modelID(_ s: String) -> Int? {
            var s = s
            return s.withUTF8 { $0.isEmpty ? nil : table.find($0) }
        }

        var byteIDs = [Int32](repeating: -1, count: 256)
        for b in 0..<256 {
            if let id = modelID(String(format: "<0x%02X>", b)) { byteIDs[b] = Int32(id) }
        }
        self.byteIDs = byteIDs

        let unkName = try m["unk_token"].flatMap { $0.isNull ? nil : try r.string(m, "unk_token", in: "model") }
        var unk: Int?
        if let unkName {
            guard let id = modelID(unkName) else { throw r.bad("model.unk_token", "'\(unkName)' is not in model.vocab") }
            unk = id
        }
        unknownTokenID = unk

        // Merges: "a b" or ["a", "b"], in rank order.
        var merges: [UInt64: UInt64] = [:]
        if let ml = m["merges"], !ml.isNull {
            let list = try r.array(ml, "model.merges")
            merges.reserveCapacity(list.count)
            for (rank, e) in list.enumerated() {
                let f = "model.merges[\(rank)]"
                let a: String, b: String
                if let s = e.stringValue {
                    let parts = s.split(separator: " ", omittingEmptySubsequences: false)
                    guard parts.count == 2 else { throw r.bad(f, "expected \"a b\" (two parts), found \(e.brief)") }
                    a = String(parts[0]); b = String(parts[1])
                } else if let p = e.arrayValue, p.count == 2, let x = p[0].stringValue, let y = p[1].stringValue {
                    a = x; b = y
                } else {
                    throw r.bad(f, "expected \"a b\" or [\"a\", \"b\"], found \(e.brief)")
                }
                guard let ia = modelID(a) else { throw r.bad(f, "'\(a)' is not in model.vocab") }
                guard let ib = modelID(b) else { throw r.bad(f, "'\(b)' is not in model.vocab") }
                guard let ic = modelID(a + b) else { throw r.bad(f, "the merged piece '\(a + b)' is not in model.vocab") }
                let key = UInt64(ia) << 32 | UInt64(ib)
                if merges[key] == nil { merges[key] = UInt64(rank) << 32 | UInt64(ic) }
            }
        }
        self.merges = merges

        rawAdded = SpecialMatcher(added.filter { !$0.normalized }.map {
            SpecialToken(scalars: Array($0.content.unicodeScalars), id: $0.id, always: !$0.special)
        })
        normalizedAdded = SpecialMatcher(added.filter { $0.normalized }.map {
            SpecialToken(scalars: Array($0.content.unicodeScalars), id: $0.id, always: !$0.special)
        })

        normalizers = try o["normalizer"].map { $0.isNull ? [] : try Self.normalizers($0, "normalizer", r) } ?? []
        preTokenizers = try o["pre_tokenizer"].map { $0.isNull ? [] : try Self.preTokenizers($0, "pre_tokenizer", r) } ?? []

        // Decoder.
        var steps: [DecodeStep] = []
        var fallback = false, fused = false
        var strip: (Unicode.Scalar, Int)?
        if let d = o["decoder"], !d.isNull {
            let dobj = try r.object(d, "decoder")
            var list: [(HFJSONObject, String)] = [(dobj, "decoder")]
            if try r.string(dobj, "type", in: "decoder") == "Sequence" {
                list = try r.array(dobj["decoders"] ?? .null, "decoder.decoders").enumerated().map { i, x in
                    (try r.object(x, "decoder.decoders[\(i)]"), "decoder.decoders[\(i)]")
                }
            }
            for (s, f) in list {
                let t = try r.string(s, "type", in: f)
                if strip != nil { throw r.bad(f + ".type", "'\(t)' after Strip is not supported (Strip must come last)") }
                switch t {
                case "Replace":
                    let (from, to) = try Self.replacePattern(s, f, r)
                    if fallback { throw r.bad(f, "a Replace after ByteFallback is not supported") }
                    steps.append(.replace(String(String.UnicodeScalarView(from)), String(String.UnicodeScalarView(to))))
                case "Metaspace":
                    if fallback { throw r.bad(f, "a Metaspace after ByteFallback is not supported") }
                    let rep = try Self.replacement(s, f, r)
                    steps.append(.metaspace(replacement: Character(rep), dropInFirst: try Self.prependScheme(s, f, r) != .never))
                case "ByteFallback": fallback = true
                case "Fuse": fused = true
                case "Strip":
                    let c = try r.string(s, "content", in: f)
                    guard c.unicodeScalars.count == 1 else { throw r.bad(f + ".content", "must be one character") }
                    let start = try r.int(s, "start", in: f, default: 0)
                    guard try r.int(s, "stop", in: f, default: 0) == 0 else { throw r.bad(f + ".stop", "only 0 is supported") }
                    guard fused || list.count == 1 else { throw r.bad(f, "Strip before Fuse (per token) is not supported") }
                    strip = (c.unicodeScalars.first!, start)
                default:
                    throw r.bad(f + ".type", "'\(t)' is not supported (supported: Replace, Metaspace, ByteFallback, Fuse, Strip)")
                }
            }
        }
        decodeSteps = steps
        byteFallbackDecoding = fallback
        self.strip = strip.map { (scalar: $0.0, count: $0.1) }

        // BOS from the post-processor's template, special ids from the caller or tokenizer_config.json.
        var addBOS = false
        var templateBOS: Int?
        if let pp = o["post_processor"], !pp.isNull {
            let po = try r.object(pp, "post_processor")
            let pt = try r.string(po, "type", in: "post_processor")
            guard pt == "TemplateProcessing" else {
                throw r.bad("post_processor.type", "'\(pt)' is not supported (supported: TemplateProcessing)")
            }
            guard case let .template(single, specials) = try TokenizerJSON.templateProcessing(po, "post_processor", r) else {
                throw r.bad("post_processor", "unreadable template")
            }
            guard single.last == .sequence("A"), single.count <= 2 else {
                throw r.bad("post_processor.single", "only [special, $A] or [$A] is supported (nothing after the text)")
            }
            if case let .special(name)? = single.first {
                guard let ids = specials[name], ids.count == 1 else {
                    throw r.bad("post_processor.special_tokens.\(name)", "the template's first token needs exactly one id")
                }
                addBOS = true
                templateBOS = ids[0]
            }
        }
        var named: [String: Int] = [:]
        let configPath = URL(fileURLWithPath: path).deletingLastPathComponent().appendingPathComponent("tokenizer_config.json").path
        if FileManager.default.fileExists(atPath: configPath), let tc = try HFJSON.parse(contentsOf: configPath).objectValue {
            let index = Dictionary(tokens.enumerated().map { ($1, $0) }, uniquingKeysWith: { a, _ in a })
            for key in ["bos_token", "eos_token", "pad_token"] {
                guard let v = tc[key], !v.isNull, let s = v.stringValue ?? v.objectValue?["content"]?.stringValue else { continue }
                guard let id = index[s] else {
                    throw CausalError.badFormat(path: configPath, field: key, reason: "'\(s)' is not in the vocabulary of \(path)")
                }
                named[key] = id
            }
            if let b = tc["add_bos_token"]?.boolValue { addBOS = b }
        }
        let bos = bosTokenID ?? templateBOS ?? named["bos_token"]
        for (field, id) in [("bos_token_id", bos), ("eos_token_id", eosTokenID), ("pad_token_id", padTokenID)] {
            if let id, id < 0 || id >= n { throw r.bad(field, "token id \(id) is outside the vocabulary (0..<\(n))") }
        }
        self.bosTokenID = bos
        self.eosTokenID = eosTokenID ?? named["eos_token"]
        self.padTokenID = padTokenID ?? named["pad_token"]
        self.addBOS = addBOS && bos != nil
    }

    // MARK: Reading the pipeline

    private static func replacePattern(_ o: HFJSONObject, _ f: String, _ r: FieldReader) throws -> ([Unicode.Scalar], [Unicode.Scalar]) {
        let p = try r.object(o["pattern"] ?? .null, f + ".pattern")
        guard let s = p["String"]?.stringValue else {
            throw r.bad(f + ".pattern", "only a String pattern is supported (a Regex is not)")
        }
        guard !s.isEmpty else { throw r.bad(f + ".pattern.String", "is empty") }
        return (Array(s.unicodeScalars), Array(try r.string(o, "content", in: f).unicodeScalars))
    }

    private static func replacement(_ o: HFJSONObject, _ f: String, _ r: FieldReader) throws -> Unicode.Scalar {
        let s = try r.string(o, "replacement", in: f, default: "\u{2581}")
        guard s.unicodeScalars.count == 1 else { throw r.bad(f + ".replacement", "must be one character") }
        return s.unicodeScalars.first!
    }

    private static func prependScheme(_ o: HFJSONObject, _ f: String, _ r: FieldReader) throws -> PrependScheme {
        if let v = o["prepend_scheme"], !v.isNull {
            switch try r.string(o, "prepend_scheme", in: f) {
            case "always": return .always
            case "first": return .first
            case "never": return .never
            case let s: throw r.bad(f + ".prepend_scheme", "'\(s)' is not one of always, first, never")
            }
        }
        // Older files: add_prefix_space (true: always).
        return try r.bool(o, "add_prefix_space", in: f, default: true) ? .always : .never
    }

    private static func normalizers(_ v: HFJSON, _ f: String, _ r: FieldReader) throws -> [Normalizer] {
        let o = try r.object(v, f)
        let t = try r.string(o, "type", in: f)
        switch t {
        case "Sequence":
            return try r.array(o["normalizers"] ?? .null, f + ".normalizers").enumerated().flatMap { i, x in
                try normalizers(x, "\(f).normalizers[\(i)]", r)
            }
        case "Replace":
            let (a, b) = try replacePattern(o, f, r)
            return [.replace(a, b)]
        case "Prepend":
            return [.prepend(Array(try r.string(o, "prepend", in: f).unicodeScalars))]
        case "NFC": return [.nfc]
        case "NFD": return [.nfd]
        case "NFKC": return [.nfkc]
        case "NFKD": return [.nfkd]
        default:
            throw r.bad(f + ".type", "'\(t)' is not supported here (supported: Replace, Prepend, NFC, NFD, NFKC, NFKD, Sequence)")
        }
    }

    private static func preTokenizers(_ v: HFJSON, _ f: String, _ r: FieldReader) throws -> [PreTokenizer] {
        let o = try r.object(v, f)
        let t = try r.string(o, "type", in: f)
        switch t {
        case "Sequence":
            return try r.array(o["pretokenizers"] ?? .null, f + ".pretokenizers").enumerated().flatMap { i, x in
                try preTokenizers(x, "\(f).pretokenizers[\(i)]", r)
            }
        case "Metaspace":
            return [.metaspace(replacement: try replacement(o, f, r), prepend: try prependScheme(o, f, r),
                               split: try r.bool(o, "split", in: f, default: true))]
        case "Split":
            let p = try r.object(o["pattern"] ?? .null, f + ".pattern")
            guard let s = p["String"]?.stringValue else {
                throw r.bad(f + ".pattern", "only a String pattern is supported (a Regex is not)")
            }
            guard !s.isEmpty else { throw r.bad(f + ".pattern.String", "is empty") }
            guard try !r.bool(o, "invert", in: f, default: false) else { throw r.bad(f + ".invert", "true is not supported") }
            let b = try r.string(o, "behavior", in: f)
            guard let behavior = SplitBehavior(rawValue: b) else {
                throw r.bad(f + ".behavior", "'\(b)' is not one of Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous")
            }
            return [.split(Array(s.unicodeScalars), behavior)]
        default:
            throw r.bad(f + ".type", "'\(t)' is not supported here (supported: Metaspace, Split with a String pattern, Sequence)")
        }
    }

    // MARK: Vocabulary

    public var vocabularySize: Int { tokens.count }

    public func tokenString(_ id: Int) -> String? { id >= 0 && id < tokens.count ? tokens[id] : nil }

    public func tokenID(_ token: String) -> Int? {
        var t = token
        if let id = t.withUTF8({ $0.isEmpty ? nil : vocab.find($0) }) { return id }
        return addedIDs[token]
    }

    /// Whether a token is a special added token (`"special": true`).
    public func isSpecial(_ id: Int) -> Bool { id >= 0 && id < special.count && special[id] }

    // MARK: Encoding

    /// Token ids of `text` (BOS first when `addBOS`). Added tokens written in the text are their ids; with
    /// `parseSpecial: false` only the non-special ones are.
    public func encode(_ text: String, parseSpecial: Bool = true) -> [Int] {
        var out: [Int] = []
        if addBOS, let b = bosTokenID { out.append(b) }
        let scalars = Array(text.unicodeScalars)
        var scratch = SPMScratch()
        forEachStretch(scalars, rawAdded, parseSpecial, &out) { start, stretch, out in
            let normalized = normalize(stretch)
            let first = start == 0
            forEachStretch(normalized, normalizedAdded, parseSpecial, &out) { sub, piece, out in
                for word in preTokenize(piece, first: first && sub == 0) where !word.isEmpty {
                    bpe(word, &scratch, &out)
                }
            }
        }
        return out
    }

    /// Calls `body` for each stretch between added tokens (with its start), appending the added tokens' ids.
    private func forEachStretch(_ s: [Unicode.Scalar], _ matcher: SpecialMatcher, _ parseSpecial: Bool, _ out: inout [Int],
                                _ body: (Int, [Unicode.Scalar], inout [Int]) -> Void) {
        guard !matcher.isEmpty, parseSpecial || matcher.hasAlways else {
            if !s.isEmpty { body(0, s, &out) }
            return
        }
        var cuts: [(Int, Int, Int)] = []  // (start, length, id)
        s.withUnsafeBufferPointer { b in
            var i = 0
            while i < b.count {
                if let m = matcher.match(b, at: i, parseSpecial: parseSpecial) {
                    cuts.append((i, m.length, m.id))
                    i += m.length
                } else {
                    i += 1
                }
            }
        }
        var start = 0
        for (i, length, id) in cuts {
            if start < i { body(start, Array(s[start..<i]), &out) }
            out.append(id)
            start = i + length
        }
        if start < s.count { body(start, Array(s[start...]), &out) }
    }

    private func normalize(_ s: [Unicode.Scalar]) -> [Unicode.Scalar] {
        var s = s
        for n in normalizers {
            switch n {
            case let .replace(from, to): s = Self.replace(s, from, to)
            case let .prepend(p): if !s.isEmpty { s = p + s }
            case .nfc: s = Array(String(String.UnicodeScalarView(s)).precomposedStringWithCanonicalMapping.unicodeScalars)
            case .nfd: s = Array(String(String.UnicodeScalarView(s)).decomposedStringWithCanonicalMapping.unicodeScalars)
            case .nfkc: s = Array(String(String.UnicodeScalarView(s)).precomposedStringWithCompatibilityMapping.unicodeScalars)
            case .nfkd: s = Array(String(String.UnicodeScalarView(s)).decomposedStringWithCompatibilityMapping.unicodeScalars)
            }
        }
        return s
    }

    /// Every non-overlapping occurrence of `from`, left to right, replaced by `to`.
    static func replace(_ s: [Unicode.Scalar], _ from: [Unicode.Scalar], _ to: [Unicode.Scalar]) -> [Unicode.Scalar] {
        var out: [Unicode.Scalar] = []
        out.reserveCapacity(s.count)
        var i = 0
        while i < s.count {
            if s[i] == from[0], i + from.count <= s.count, s[i..<(i + from.count)].elementsEqual(from) {
                out += to
                i += from.count
            } else {
                out.append(s[i])
                i += 1
            }
        }
        return out
    }

    /// The words of one normalized stretch; `first`: the stretch starts the text (Metaspace's prepend_scheme
    /// "first" then puts its replacement before the first word only).
    private func preTokenize(_ s: [Unicode.Scalar], first: Bool) -> [[Unicode.Scalar]] {
        var words = [(s, first)]
        for p in preTokenizers {
            var next: [([Unicode.Scalar], Bool)] = []
            for (w, isFirst) in words {
                switch p {
                case let .metaspace(rep, scheme, split):
                    var x = Self.replace(w, [" "], [rep])
                    if (scheme == .always || (scheme == .first && isFirst)) && x.first != rep { x.insert(rep, at: 0) }
                    if split {
                        next += Self.split(x, [rep], .mergedWithNext).enumerated().map { ($1, isFirst && $0 == 0) }
                    } else {
                        next.append((x, isFirst))
                    }
                case let .split(pattern, behavior):
                    next += Self.split(w, pattern, behavior).enumerated().map { ($1, isFirst && $0 == 0) }
                }
            }
            words = next
        }
        return words.map(\.0)
    }

    /// `tokenizers`' split of a string on a literal pattern with a delimiter behaviour.
    static func split(_ s: [Unicode.Scalar], _ pattern: [Unicode.Scalar], _ behavior: SplitBehavior) -> [[Unicode.Scalar]] {
        // (range, isMatch) pieces covering s.
        var pieces: [(Range<Int>, Bool)] = []
        var i = 0, last = 0
        while i + pattern.count <= s.count {
            if s[i..<(i + pattern.count)].elementsEqual(pattern) {
                if last < i { pieces.append((last..<i, false)) }
                pieces.append((i..<(i + pattern.count), true))
                i += pattern.count
                last = i
            } else {
                i += 1
            }
        }
        if last < s.count { pieces.append((last..<s.count, false)) }
        var out: [Range<Int>] = []
        switch behavior {
        case .removed:
            out = pieces.filter { !$0.1 }.map(\.0)
        case .isolated:
            out = pieces.map(\.0)
        case .contiguous:
            var prevWasMatch = false
            for (r, m) in pieces {
                if m && prevWasMatch, let l = out.last {
                    out[out.count - 1] = l.lowerBound..<r.upperBound
                } else {
                    out.append(r)
                }
                prevWasMatch = m
            }
        case .mergedWithPrevious:
            var prevWasMatch = false
            for (r, m) in pieces {
                if m, let l = out.last, !prevWasMatch {
                    out[out.count - 1] = l.lowerBound..<r.upperBound
                } else {
                    out.append(r)
                }
                prevWasMatch = m
            }
        case .mergedWithNext:
            var pendingStart: Int?
            for (r, m) in pieces {
                if m {
                    if pendingStart != nil { out.append(pendingStart!..<r.lowerBound) }
                    pendingStart = r.lowerBound
                } else {
                    out.append((pendingStart ?? r.lowerBound)..<r.upperBound)
                    pendingStart = nil
                }
            }
            if let p = pendingStart { out.append(p..<s.count) }
        }
        return out.map { Array(s[$0]) }
    }

    /// BPE over one word: characters (or their byte pieces) merged by rank.
    private func bpe(_ word: [Unicode.Scalar], _ scratch: inout SPMScratch, _ out: inout [Int]) {
        scratch.reset()
        for c in word { scratch.appendSymbol(c.value) }
        scratch.bytes.withUnsafeBufferPointer { bytes in
            if ignoreMerges, let id = vocab.find(bytes) {
                out.append(id)
                return
            }
            // Symbols: (id, byte length); characters outside the vocabulary → byte pieces, else <unk>.
            var ids: [Int32] = []
            var lengths: [Int32] = []
            ids.reserveCapacity(scratch.starts.count)
            var pendingUnknown: Int32 = 0  // bytes of a fused <unk> not yet added
            func flushUnknown() {
                if pendingUnknown > 0, let u = unknownTokenID {
                    ids.append(Int32(u)); lengths.append(pendingUnknown)
                }
                pendingUnknown = 0
            }
            for k in 0..<scratch.starts.count {
                let lo = scratch.starts[k], len = Int(scratch.lengths[k])
                let span = UnsafeBufferPointer(rebasing: bytes[lo..<(lo + len)])
                if let id = vocab.find(span) {
                    flushUnknown()
                    ids.append(Int32(id)); lengths.append(Int32(len))
                    continue
                }
                if byteFallback, span.allSatisfy({ byteIDs[Int($0)] >= 0 }) {
                    flushUnknown()
                    for b in span { ids.append(byteIDs[Int(b)]); lengths.append(1) }
                    continue
                }
                guard unknownTokenID != nil else { continue }  // no <unk>: the character is dropped, as `tokenizers`
                if fuseUnknown {
                    pendingUnknown += Int32(len)
                } else {
                    flushUnknown()
                    pendingUnknown = Int32(len)
                }
            }
            flushUnknown()
            let count = ids.count
            if count == 0 { return }
            var prev = (0..<count).map { Int32($0 - 1) }
            var next = (0..<count).map { Int32($0 + 1 < count ? $0 + 1 : -1) }
            var alive = [Bool](repeating: true, count: count)
            var heap: [SPMCandidate] = []
            func push(_ l: Int) {
                let r = Int(next[l])
                guard r >= 0, let v = merges[UInt64(UInt32(bitPattern: ids[l])) << 32 | UInt64(UInt32(bitPattern: ids[r]))] else { return }
                heap.pushMin(SPMCandidate(key: (v >> 32) << 32 | UInt64(l), right: Int32(r), size: 0, id: Int32(truncatingIfNeeded: v & 0xFFFF_FFFF)))
            }
            for k in 0..<(count - 1) { push(k) }
            while let top = heap.popMin() {
                let l = Int(top.key & 0xFFFF_FFFF)
                guard alive[l], next[l] >= 0 else { continue }
                let r = Int(next[l])
                guard let v = merges[UInt64(UInt32(bitPattern: ids[l])) << 32 | UInt64(UInt32(bitPattern: ids[r]))],
                      Int32(truncatingIfNeeded: v & 0xFFFF_FFFF) == top.id else { continue }
                ids[l] = top.id
                alive[r] = false
                let nn = next[r]
                next[l] = nn
                if nn >= 0 { prev[Int(nn)] = Int32(l) }
                if prev[l] >= 0 { push(Int(prev[l])) }
                push(l)
            }
            var k = 0
            while k >= 0 {
                out.append(Int(ids[k]))
                k = Int(next[k])
            }
        }
    }

    // MARK: Decoding

    public func decode(_ ids: [Int], skipSpecial: Bool = false) throws -> String {
        try decodeByStreaming(ids, skipSpecial: skipSpecial)
    }

    public func decodingPiece(_ id: Int, first: Bool, skipSpecial: Bool) throws -> DecodingPiece {
        guard id >= 0 && id < tokens.count else { throw CausalError.badTokenID(id: id, vocabularySize: tokens.count) }
        if skipSpecial && special[id] { return .skipped }
        var t = tokens[id]
        for s in decodeSteps {
            switch s {
            case let .replace(a, b): t = t.replacingOccurrences(of: a, with: b, options: .literal)
            case let .metaspace(rep, dropInFirst):
                t = String(t.compactMap { $0 == rep ? (first && dropInFirst ? nil : " ") : $0 })
            }
        }
        if byteFallbackDecoding, let b = SentencePieceBPETokenizer.byteValue(t) { return .fallbackByte(b) }
        return .bytes(Array(t.utf8))
    }

    public func makeStreamingDecoder(skipSpecial: Bool) -> StreamingDecoder {
        StreamingDecoder(tokenizer: self, skipSpecial: skipSpecial, leadingStrip: strip, streams: true)
    }
}

extension SentencePieceJSONTokenizer: TextTokenizer {
    public func encode(_ text: String) -> [Int] { encode(text, parseSpecial: true) }

    /// Special added tokens (chat markers, <eos>) leave no text in generated output.
    public func makeGenerationDecoder() -> StreamingDecoder { makeStreamingDecoder(skipSpecial: true) }
}

/// The tokenizer a tokenizer.json with a BPE model describes: SentencePiece-style (byte fallback) or byte-level.
public func makeBPETokenizer(tokenizerJSON path: String, bosTokenID: Int? = nil, eosTokenID: Int? = nil,
                             padTokenID: Int? = nil) throws -> any TextTokenizer {
    let root = try HFJSON.parse(contentsOf: path)
    if SentencePieceJSONTokenizer.handles(tokenizerJSON: root) {
        return try SentencePieceJSONTokenizer(root: root, path: path, bosTokenID: bosTokenID, eosTokenID: eosTokenID,
                                              padTokenID: padTokenID)
    }
    return try ByteLevelBPETokenizer(tokenizerJSON: path, bosTokenID: bosTokenID, eosTokenID: eosTokenID, padTokenID: padTokenID)
}
