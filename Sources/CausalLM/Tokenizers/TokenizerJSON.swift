import Foundation

// Hugging Face `tokenizer.json` (the `tokenizers` library's serialized pipeline):
//   added_tokens    — tokens matched in the text before anything else (special ones: [CLS], [SEP], [MASK], ...)
//   normalizer      — text → text (BertNormalizer: clean control characters, space out CJK, strip accents, lowercase)
//   pre_tokenizer   — text → words (BertPreTokenizer: split on whitespace, isolate punctuation)
//   model           — word → token ids (WordPiece: greedy longest match with a "##" continuation prefix)
//   post_processor  — ids → ids with special tokens (TemplateProcessing / BertProcessing: [CLS] A [SEP])
//   decoder         — tokens → text (WordPiece: glue "##" pieces, space the rest)
// This file reads the JSON into typed descriptions, refusing what it cannot run with an error naming the field;
// WordPiece.swift runs them. The file's `truncation` and `padding` settings are ignored: callers say how long a
// sequence may be, and CausalLM never pads.

/// A parsed `tokenizer.json` for a WordPiece (BERT-style) tokenizer.
public struct TokenizerJSON: Sendable {
    public struct AddedToken: Sendable, Equatable {
        public var id: Int
        public var content: String
        public var special: Bool
        public var singleWord: Bool
        public var lstrip: Bool
        public var rstrip: Bool
        /// Matched in the normalized text (true) or in the raw text (false).
        public var normalized: Bool
    }

    public indirect enum Normalizer: Sendable, Equatable {
        /// BertNormalizer. `stripAccents` is already resolved (null in the file follows `lowercase`).
        case bert(cleanText: Bool, handleChineseChars: Bool, stripAccents: Bool, lowercase: Bool)
        case lowercase
        case stripAccents
        case nfd, nfkd, nfc, nfkc
        case sequence([Normalizer])
    }

    public indirect enum PreTokenizer: Sendable, Equatable {
        /// Split on whitespace, and isolate each punctuation character.
        case bert
        /// Split on whitespace only.
        case whitespaceSplit
        case sequence([PreTokenizer])
    }

    public struct WordPieceModel: Sendable {
        /// (token, id) in file order.
        public var vocabulary: [(String, Int)]
        public var unknownToken: String
        public var continuingSubwordPrefix: String
        public var maxInputCharsPerWord: Int
    }

    /// One piece of a TemplateProcessing template.
    public enum TemplatePiece: Sendable, Equatable {
        /// The input sequence ("A", or "B" for the second of a pair).
        case sequence(String)
        /// The ids of a named special token.
        case special(String)
    }

    public enum PostProcessor: Sendable, Equatable {
        /// `single` template; `specialTokens` maps each special's name to its ids.
        case template(single: [TemplatePiece], specialTokens: [String: [Int]])
    }

    public enum Decoder: Sendable, Equatable {
        case wordPiece(prefix: String, cleanup: Bool)
    }

    public var path: String
    public var addedTokens: [AddedToken]
    public var normalizer: Normalizer?
    public var preTokenizer: PreTokenizer?
    public var model: WordPieceModel
    public var postProcessor: PostProcessor?
    public var decoder: Decoder?

    /// Reads and checks a `tokenizer.json`. Errors name the file and the field.
    public init(path: String) throws {
        let root = try HFJSON.parse(contentsOf: path)
        guard case let .object(o) = root else {
            throw CausalError.badFormat(path: path, field: "JSON", reason: "the top level must be an object, found \(root.typeName)")
        }
        var r = FieldReader(path: path)
        self.path = path

        var added: [AddedToken] = []
        if let list = o["added_tokens"], !list.isNull {
            for (i, t) in try r.array(list, "added_tokens").enumerated() {
                let f = "added_tokens[\(i)]"
                let obj = try r.object(t, f)
                added.append(AddedToken(
                    id: try r.int(obj, "id", in: f),
                    content: try r.string(obj, "content", in: f),
                    special: try r.bool(obj, "special", in: f, default: false),
                    singleWord: try r.bool(obj, "single_word", in: f, default: false),
                    lstrip: try r.bool(obj, "lstrip", in: f, default: false),
                    rstrip: try r.bool(obj, "rstrip", in: f, default: false),
                    normalized: try r.bool(obj, "normalized", in: f, default: true)))
                guard !added[i].content.isEmpty else { throw r.bad("\(f).content", "is empty") }
                guard added[i].id >= 0 else { throw r.bad("\(f).id", "must be non-negative") }
            }
        }
        addedTokens = added

        normalizer = try o["normalizer"].flatMap { $0.isNull ? nil : try Self.normalizer($0, "normalizer", &r) }
        preTokenizer = try o["pre_tokenizer"].flatMap { $0.isNull ? nil : try Self.preTokenizer($0, "pre_tokenizer", &r) }

        guard let m = o["model"] else { throw r.bad("model", "missing") }
        let mo = try r.object(m, "model")
        let type = try r.string(mo, "type", in: "model", default: "WordPiece")
        guard type == "WordPiece" else {
            throw r.bad("model.type", "'\(type)' is not supported here (supported: WordPiece)")
        }
        guard let vocabJSON = mo["vocab"] else { throw r.bad("model.vocab", "missing") }
        let vocabObj = try r.object(vocabJSON, "model.vocab")
        var vocab: [(String, Int)] = []
        vocab.reserveCapacity(vocabObj.count)
        for (k, v) in vocabObj.members {
            guard let id = v.intValue, id >= 0 else { throw r.bad("model.vocab.\(k)", "id must be a non-negative integer, found \(v.brief)") }
            vocab.append((k, id))
        }
        guard !vocab.isEmpty else { throw r.bad("model.vocab", "is empty") }
        let maxChars = try r.int(mo, "max_input_chars_per_word", in: "model", default: 100)
        guard maxChars > 0 else { throw r.bad("model.max_input_chars_per_word", "must be positive") }
        model = WordPieceModel(
            vocabulary: vocab,
            unknownToken: try r.string(mo, "unk_token", in: "model", default: "[UNK]"),
            continuingSubwordPrefix: try r.string(mo, "continuing_subword_prefix", in: "model", default: "##"),
            maxInputCharsPerWord: maxChars)

        postProcessor = try o["post_processor"].flatMap { $0.isNull ? nil : try Self.postProcessor($0, &r) }

        if let d = o["decoder"], !d.isNull {
            let dobj = try r.object(d, "decoder")
            let dt = try r.string(dobj, "type", in: "decoder")
            guard dt == "WordPiece" else { throw r.bad("decoder.type", "'\(dt)' is not supported (supported: WordPiece)") }
            decoder = .wordPiece(prefix: try r.string(dobj, "prefix", in: "decoder", default: "##"),
                                 cleanup: try r.bool(dobj, "cleanup", in: "decoder", default: true))
        } else {
            decoder = nil
        }
    }

    private static func normalizer(_ v: HFJSON, _ field: String, _ r: inout FieldReader) throws -> Normalizer {
        let o = try r.object(v, field)
        let type = try r.string(o, "type", in: field)
        switch type {
        case "BertNormalizer":
            let lowercase = try r.bool(o, "lowercase", in: field, default: true)
            return .bert(cleanText: try r.bool(o, "clean_text", in: field, default: true),
                         handleChineseChars: try r.bool(o, "handle_chinese_chars", in: field, default: true),
                         stripAccents: try r.bool(o, "strip_accents", in: field, default: lowercase),
                         lowercase: lowercase)
        case "Lowercase": return .lowercase
        case "StripAccents": return .stripAccents
        case "NFD": return .nfd
        case "NFKD": return .nfkd
        case "NFC": return .nfc
        case "NFKC": return .nfkc
        case "Sequence":
            let list = try r.array(o["normalizers"] ?? .null, field + ".normalizers")
            return .sequence(try list.enumerated().map { try normalizer($1, "\(field).normalizers[\($0)]", &r) })
        default:
            throw r.bad(field + ".type", "'\(type)' is not supported (supported: BertNormalizer, Lowercase, StripAccents, NFD, NFKD, NFC, NFKC, Sequence)")
        }
    }

    private static func preTokenizer(_ v: HFJSON, _ field: String, _ r: inout FieldReader) throws -> PreTokenizer {
        let o = try r.object(v, field)
        let type = try r.string(o, "type", in: field)
        switch type {
        case "BertPreTokenizer": return .bert
        case "WhitespaceSplit": return .whitespaceSplit
        case "Sequence":
            let list = try r.array(o["pretokenizers"] ?? .null, field + ".pretokenizers")
            return .sequence(try list.enumerated().map { try preTokenizer($1, "\(field).pretokenizers[\($0)]", &r) })
        default:
            throw r.bad(field + ".type", "'\(type)' is not supported (supported: BertPreTokenizer, WhitespaceSplit, Sequence)")
        }
    }

    /// A TemplateProcessing post-processor (`single` pieces and their `special_tokens`), shared by every
    /// tokenizer.json model type.
    static func templateProcessing(_ o: HFJSONObject, _ field: String, _ r: FieldReader) throws -> PostProcessor {
        var pieces: [TemplatePiece] = []
        for (i, p) in try r.array(o["single"] ?? .null, field + ".single").enumerated() {
            let f = "\(field).single[\(i)]"
            let po = try r.object(p, f)
            if let s = po["Sequence"] {
                pieces.append(.sequence(try r.string(try r.object(s, f + ".Sequence"), "id", in: f + ".Sequence")))
            } else if let s = po["SpecialToken"] {
                pieces.append(.special(try r.string(try r.object(s, f + ".SpecialToken"), "id", in: f + ".SpecialToken")))
            } else {
                throw r.bad(f, "must hold 'Sequence' or 'SpecialToken'")
            }
        }
        var specials: [String: [Int]] = [:]
        if let st = o["special_tokens"], !st.isNull {
            for (name, s) in try r.object(st, field + ".special_tokens").members {
                let f = "\(field).special_tokens.\(name)"
                let ids = try r.array(try r.object(s, f)["ids"] ?? .null, f + ".ids")
                specials[name] = try ids.map {
                    guard let i = $0.intValue, i >= 0 else { throw r.bad(f + ".ids", "must be non-negative integers, found \($0.brief)") }
                    return i
                }
            }
        }
        for case let .special(name) in pieces where specials[name] == nil {
            throw r.bad(field + ".special_tokens", "the template uses '\(name)', which is not defined here")
        }
        guard pieces.contains(.sequence("A")) else { throw r.bad(field + ".single", "has no Sequence A") }
        return .template(single: pieces, specialTokens: specials)
    }

    private static func postProcessor(_ v: HFJSON, _ r: inout FieldReader) throws -> PostProcessor {
        let field = "post_processor"
        let o = try r.object(v, field)
        let type = try r.string(o, "type", in: field)
        switch type {
        case "TemplateProcessing":
            return try templateProcessing(o, field, r)
        case "BertProcessing", "RobertaProcessing":
            // {"sep": ["[SEP]", 102], "cls": ["[CLS]", 101]}: [CLS] A [SEP].
            func pair(_ key: String) throws -> (String, Int) {
                let a = try r.array(o[key] ?? .null, "\(field).\(key)")
                guard a.count == 2, let s = a[0].stringValue, let i = a[1].intValue, i >= 0 else {
                    throw r.bad("\(field).\(key)", "must be [token, id]")
                }
                return (s, i)
            }
            let cls = try pair("cls"), sep = try pair("sep")
            return .template(single: [.special(cls.0), .sequence("A"), .special(sep.0)],
                             specialTokens: [cls.0: [cls.1], sep.0: [sep.1]])
        default:
            throw r.bad(field + ".type", "'\(type)' is not supported (supported: TemplateProcessing, BertProcessing)")
        }
    }
}

/// Typed field access for tokenizer.json; errors name the file and the dotted field path.
/// Typed access to tokenizer.json fields; every error names the file and the dotted field.
struct FieldReader {
    let path: String

    func bad(_ field: String, _ reason: String) -> CausalError { .badFormat(path: path, field: field, reason: reason) }

    func object(_ v: HFJSON, _ field: String) throws -> HFJSONObject {
        guard let o = v.objectValue else { throw bad(field, v.isNull ? "missing" : "expected an object, found \(v.typeName)") }
        return o
    }
    func array(_ v: HFJSON, _ field: String) throws -> [HFJSON] {
        guard let a = v.arrayValue else { throw bad(field, v.isNull ? "missing" : "expected an array, found \(v.typeName)") }
        return a
    }
    func string(_ o: HFJSONObject, _ key: String, in field: String, default d: String? = nil) throws -> String {
        guard let v = o[key], !v.isNull else {
            if let d { return d }
            throw bad("\(field).\(key)", "missing")
        }
        guard let s = v.stringValue else { throw bad("\(field).\(key)", "expected a string, found \(v.typeName)") }
        return s
    }
    func int(_ o: HFJSONObject, _ key: String, in field: String, default d: Int? = nil) throws -> Int {
        guard let v = o[key], !v.isNull else {
            if let d { return d }
            throw bad("\(field).\(key)", "missing")
        }
        guard let i = v.intValue else { throw bad("\(field).\(key)", "expected an integer, found \(v.typeName)") }
        return i
    }
    func bool(_ o: HFJSONObject, _ key: String, in field: String, default d: Bool) throws -> Bool {
        guard let v = o[key], !v.isNull else { return d }
        guard let b = v.boolValue else { throw bad("\(field).\(key)", "expected a bool, found \(v.typeName)") }
        return b
    }
}
