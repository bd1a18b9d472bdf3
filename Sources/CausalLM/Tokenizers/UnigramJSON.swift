import Foundation

// The parts of a Hugging Face `tokenizer.json` that a Unigram (SentencePiece: T5, mT5, ALBERT, XLNet, Llama-1-style
// byte-fallback) tokenizer uses, read into typed descriptions; Unigram.swift runs them.
//   model          {"type": "Unigram", "vocab": [[piece, score], ...], "unk_id": n|null, "byte_fallback": bool}
//   normalizer     Precompiled (SentencePiece's charsmap), Replace (string or regex), Strip, Prepend, Lowercase,
//                  NFC/NFD/NFKC/NFKD, Sequence
//   pre_tokenizer  Metaspace (replacement, prepend_scheme always/first/never or the older add_prefix_space, split),
//                  WhitespaceSplit, Sequence
//   post_processor TemplateProcessing (T5: `$A </s>`)
//   decoder        Metaspace, Replace, ByteFallback, Fuse, Strip, Sequence
// Anything else is refused with an error naming the file and field. `truncation` and `padding` are ignored.

/// A parsed Unigram `tokenizer.json`.
public struct UnigramTokenizerJSON: Sendable {
    public enum PrependScheme: String, Sendable, Equatable { case always, first, never }

    public enum Pattern: Sendable, Equatable {
        case string(String)
        /// A regular expression (run with NSRegularExpression; the `tokenizers` library uses Oniguruma, which agrees
        /// on the simple patterns tokenizer files use, such as T5's `" {2,}"`).
        case regex(String)
    }

    public indirect enum Normalizer: Sendable {
        case precompiled(PrecompiledCharsmap)
        case replace(Pattern, String)
        case strip(left: Bool, right: Bool)
        case prepend(String)
        case lowercase
        case nfc, nfd, nfkc, nfkd
        case sequence([Normalizer])
    }

    public indirect enum PreTokenizer: Sendable, Equatable {
        case metaspace(replacement: Unicode.Scalar, prependScheme: PrependScheme, split: Bool)
        case whitespaceSplit
        case sequence([PreTokenizer])
    }

    public indirect enum Decoder: Sendable, Equatable {
        case metaspace(replacement: Unicode.Scalar, prependScheme: PrependScheme)
        case replace(String, String)
        case byteFallback
        case fuse
        case strip(content: Unicode.Scalar, start: Int, stop: Int)
        case sequence([Decoder])
    }

    public var path: String
    public var addedTokens: [TokenizerJSON.AddedToken]
    public var normalizer: Normalizer?
    public var preTokenizer: PreTokenizer?
    /// (piece, score) in id order.
    public var vocabulary: [(String, Double)]
    public var unknownID: Int?
    public var byteFallback: Bool
    public var postProcessor: TokenizerJSON.PostProcessor?
    public var decoder: Decoder?

    /// Reads and checks a Unigram `tokenizer.json`. Errors name the file and the field.
    public init(path: String) throws {
        let root = try HFJSON.parse(contentsOf: path)
        var r = FieldReader(path: path)
        self.path = path
        let o = try r.object(root, "JSON")

        var added: [TokenizerJSON.AddedToken] = []
        if let list = o["added_tokens"], !list.isNull {
            for (i, t) in try r.array(list, "added_tokens").enumerated() {
                let f = "added_tokens[\(i)]"
                let obj = try r.object(t, f)
                let token = TokenizerJSON.AddedToken(
                    id: try r.int(obj, "id", in: f), content: try r.string(obj, "content", in: f),
                    special: try r.bool(obj, "special", in: f, default: false),
                    singleWord: try r.bool(obj, "single_word", in: f, default: false),
                    lstrip: try r.bool(obj, "lstrip", in: f, default: false),
                    rstrip: try r.bool(obj, "rstrip", in: f, default: false),
                    normalized: try r.bool(obj, "normalized", in: f, default: true))
                guard !token.content.isEmpty else { throw r.bad("\(f).content", "is empty") }
                guard token.id >= 0 && token.id < 1 << 24 else { throw r.bad("\(f).id", "must be in 0..<2^24, found \(token.id)") }
                added.append(token)
            }
        }
        addedTokens = added

        guard let m = o["model"], !m.isNull else { throw r.bad("model", "missing") }
        let mo = try r.object(m, "model")
        let type = try r.string(mo, "type", in: "model")
        guard type == "Unigram" else { throw r.bad("model.type", "'\(type)' is not a Unigram model") }
        guard let vocabJSON = mo["vocab"], !vocabJSON.isNull else { throw r.bad("model.vocab", "missing") }
        var vocab: [(String, Double)] = []
        let entries = try r.array(vocabJSON, "model.vocab")
        vocab.reserveCapacity(entries.count)
        for (i, e) in entries.enumerated() {
            guard let pair = e.arrayValue, pair.count == 2, let piece = pair[0].stringValue, let score = pair[1].doubleValue else {
                throw r.bad("model.vocab[\(i)]", "expected [piece, score], found \(e.brief)")
            }
            guard !piece.isEmpty else { throw r.bad("model.vocab[\(i)]", "the piece is empty") }
            vocab.append((piece, score))
        }
        guard !vocab.isEmpty else { throw r.bad("model.vocab", "is empty") }
        guard vocab.count < 1 << 24 else { throw r.bad("model.vocab", "has \(vocab.count) pieces, more than 2^24") }
        vocabulary = vocab
        if let u = mo["unk_id"], !u.isNull {
            guard let id = u.intValue else { throw r.bad("model.unk_id", "expected an integer, found \(u.typeName)") }
            guard id >= 0 && id < vocab.count else { throw r.bad("model.unk_id", "\(id) is outside the vocabulary (0..<\(vocab.count))") }
            unknownID = id
        } else {
            unknownID = nil
        }
        byteFallback = try r.bool(mo, "byte_fallback", in: "model", default: false)

        normalizer = try o["normalizer"].flatMap { $0.isNull ? nil : try Self.normalizer($0, "normalizer", &r) }
        preTokenizer = try o["pre_tokenizer"].flatMap { $0.isNull ? nil : try Self.preTokenizer($0, "pre_tokenizer", &r) }
        postProcessor = try o["post_processor"].flatMap { $0.isNull ? nil : try Self.postProcessor($0, &r) }
        decoder = try o["decoder"].flatMap { $0.isNull ? nil : try Self.decoder($0, "decoder", &r) }
    }

    private static func normalizer(_ v: HFJSON, _ field: String, _ r: inout FieldReader) throws -> Normalizer {
        let o = try r.object(v, field)
        let type = try r.string(o, "type", in: field)
        switch type {
        case "Precompiled":
            let b64 = try r.string(o, "precompiled_charsmap", in: field)
            guard let data = Data(base64Encoded: b64) else {
                throw r.bad(field + ".precompiled_charsmap", "is not valid base64")
            }
            do {
                return .precompiled(try PrecompiledCharsmap(Array(data)))
            } catch CausalError.invalidArgument(let reason) {
                throw r.bad(field + ".precompiled_charsmap", reason)
            }
        case "Replace":
            return .replace(try pattern(o, field, &r), try r.string(o, "content", in: field))
        case "Strip":
            return .strip(left: try r.bool(o, "strip_left", in: field, default: true),
                          right: try r.bool(o, "strip_right", in: field, default: true))
        case "Prepend": return .prepend(try r.string(o, "prepend", in: field))
        case "Lowercase": return .lowercase
        case "NFC": return .nfc
        case "NFD": return .nfd
        case "NFKC": return .nfkc
        case "NFKD": return .nfkd
        case "Sequence":
            let list = try r.array(o["normalizers"] ?? .null, field + ".normalizers")
            return .sequence(try list.enumerated().map { try normalizer($1, "\(field).normalizers[\($0)]", &r) })
        default:
            throw r.bad(field + ".type", "'\(type)' is not supported (supported: Precompiled, Replace, Strip, Prepend, Lowercase, NFC, NFD, NFKC, NFKD, Sequence)")
        }
    }

    private static func pattern(_ o: HFJSONObject, _ field: String, _ r: inout FieldReader) throws -> Pattern {
        let po = try r.object(o["pattern"] ?? .null, field + ".pattern")
        if let s = po["String"] {
            guard let str = s.stringValue, !str.isEmpty else { throw r.bad(field + ".pattern.String", "expected a non-empty string") }
            return .string(str)
        }
        if let s = po["Regex"] {
            guard let str = s.stringValue else { throw r.bad(field + ".pattern.Regex", "expected a string") }
            guard (try? NSRegularExpression(pattern: str)) != nil else { throw r.bad(field + ".pattern.Regex", "'\(str)' is not a valid regular expression") }
            return .regex(str)
        }
        throw r.bad(field + ".pattern", "must hold 'String' or 'Regex'")
    }

    private static func replacement(_ o: HFJSONObject, _ field: String, _ r: inout FieldReader) throws -> Unicode.Scalar {
        let s = try r.string(o, "replacement", in: field, default: "\u{2581}")
        guard s.unicodeScalars.count == 1, let c = s.unicodeScalars.first else {
            throw r.bad(field + ".replacement", "must be one character, found '\(s)'")
        }
        return c
    }

    /// prepend_scheme (default "always"), or the older add_prefix_space (false means never).
    private static func prependScheme(_ o: HFJSONObject, _ field: String, _ r: inout FieldReader) throws -> PrependScheme {
        let raw = try r.string(o, "prepend_scheme", in: field, default: "always")
        guard var scheme = PrependScheme(rawValue: raw) else {
            throw r.bad(field + ".prepend_scheme", "'\(raw)' is not one of always, first, never")
        }
        if let a = o["add_prefix_space"], !a.isNull {
            guard let b = a.boolValue else { throw r.bad(field + ".add_prefix_space", "expected a bool, found \(a.typeName)") }
            if !b {
                guard scheme == .never || o["prepend_scheme"] == nil else {
                    throw r.bad(field + ".add_prefix_space", "false does not match prepend_scheme '\(raw)'")
                }
                scheme = .never
            }
        }
        return scheme
    }

    private static func preTokenizer(_ v: HFJSON, _ field: String, _ r: inout FieldReader) throws -> PreTokenizer {
        let o = try r.object(v, field)
        let type = try r.string(o, "type", in: field)
        switch type {
        case "Metaspace":
            return .metaspace(replacement: try replacement(o, field, &r), prependScheme: try prependScheme(o, field, &r),
                              split: try r.bool(o, "split", in: field, default: true))
        case "WhitespaceSplit": return .whitespaceSplit
        case "Sequence":
            let list = try r.array(o["pretokenizers"] ?? .null, field + ".pretokenizers")
            return .sequence(try list.enumerated().map { try preTokenizer($1, "\(field).pretokenizers[\($0)]", &r) })
        default:
            throw r.bad(field + ".type", "'\(type)' is not supported for a Unigram tokenizer (supported: Metaspace, WhitespaceSplit, Sequence)")
        }
    }

    private static func decoder(_ v: HFJSON, _ field: String, _ r: inout FieldReader) throws -> Decoder {
        let o = try r.object(v, field)
        let type = try r.string(o, "type", in: field)
        switch type {
        case "Metaspace":
            return .metaspace(replacement: try replacement(o, field, &r), prependScheme: try prependScheme(o, field, &r))
        case "Replace":
            guard case let .string(s) = try pattern(o, field, &r) else {
                throw r.bad(field + ".pattern", "a Regex pattern is not supported in a decoder (only String)")
            }
            return .replace(s, try r.string(o, "content", in: field))
        case "ByteFallback": return .byteFallback
        case "Fuse": return .fuse
        case "Strip":
            let s = try r.string(o, "content", in: field)
            guard s.unicodeScalars.count == 1, let c = s.unicodeScalars.first else {
                throw r.bad(field + ".content", "must be one character, found '\(s)'")
            }
            let start = try r.int(o, "start", in: field), stop = try r.int(o, "stop", in: field)
            guard start >= 0 else { throw r.bad(field + ".start", "must be non-negative") }
            guard stop >= 0 else { throw r.bad(field + ".stop", "must be non-negative") }
            return .strip(content: c, start: start, stop: stop)
        case "Sequence":
            let list = try r.array(o["decoders"] ?? .null, field + ".decoders")
            return .sequence(try list.enumerated().map { try decoder($1, "\(field).decoders[\($0)]", &r) })
        default:
            throw r.bad(field + ".type", "'\(type)' is not supported for a Unigram tokenizer (supported: Metaspace, Replace, ByteFallback, Fuse, Strip, Sequence)")
        }
    }

    private static func postProcessor(_ v: HFJSON, _ r: inout FieldReader) throws -> TokenizerJSON.PostProcessor {
        let field = "post_processor"
        let o = try r.object(v, field)
        let type = try r.string(o, "type", in: field)
        guard type == "TemplateProcessing" else {
            throw r.bad(field + ".type", "'\(type)' is not supported for a Unigram tokenizer (supported: TemplateProcessing)")
        }
        return try TokenizerJSON.templateProcessing(o, field, r)
    }
}

