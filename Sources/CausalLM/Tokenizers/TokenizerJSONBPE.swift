import Foundation

// Byte-level BPE tokenizers from a Hugging Face `tokenizer.json` (GPT-2, LLaMA 3, SmolLM, Qwen-style files):
//   model            {"type": "BPE", "vocab": {token: id}, "merges": ["a b", ...] or [["a", "b"], ...]}
//   pre_tokenizer    ByteLevel (GPT-2's split rule + byte→unicode map), optionally after Digits(individual_digits)
//                    (SmolLM's rule: every numeral its own piece); or a Split with GPT-2's, Qwen2's or Llama 3's
//                    pattern (Isolated) before ByteLevel without its own regex
//   added_tokens     matched in the text before BPE; special ones are control tokens, the others user-defined
//   post_processor   ByteLevel (nothing added) or TemplateProcessing whose single template starts with a special
//                    token (a BOS put first)
// The tokenizer itself is `ByteLevelBPETokenizer`, the same one GGUF files build; this file only maps the JSON onto
// its inputs, refusing what it cannot run (other models, other pre-tokenizers) with an error naming the file and
// field. A BPE model with byte_fallback (Gemma, Llama 2, Mistral) is SentencePieceJSONTokenizer's.

extension ByteLevelBPETokenizer {
    /// Reads a byte-level BPE `tokenizer.json`. `bosTokenID`/`eosTokenID`/`padTokenID` come from the model's
    /// config (config.json / generation_config.json) when given; otherwise from `tokenizer_config.json` beside the
    /// file (its `bos_token`, `eos_token`, `pad_token` strings), when present.
    public convenience init(tokenizerJSON path: String, bosTokenID: Int? = nil, eosTokenID: Int? = nil,
                            padTokenID: Int? = nil) throws {
        let root = try HFJSON.parse(contentsOf: path)
        func bad(_ field: String, _ reason: String) -> CausalError { .badFormat(path: path, field: field, reason: reason) }
        guard let o = root.objectValue else { throw bad("JSON", "the top level must be an object, found \(root.typeName)") }
        guard let model = o["model"]?.objectValue else { throw bad("model", o["model"] == nil ? "missing" : "expected an object") }
        let type = model["type"]?.stringValue ?? "BPE"
        guard type == "BPE" else { throw bad("model.type", "'\(type)' is not a byte-level BPE model (supported here: BPE)") }
        if model["byte_fallback"]?.boolValue == true {
            throw bad("model.byte_fallback", "true: a SentencePiece-style BPE model, read by SentencePieceJSONTokenizer (makeBPETokenizer picks it), not byte-level BPE")
        }
        guard let vocab = model["vocab"]?.objectValue else { throw bad("model.vocab", model["vocab"] == nil ? "missing" : "expected an object of token → id") }

        // Vocabulary in id order: model.vocab plus added tokens (which may extend it).
        var byID: [Int: String] = [:]
        for (token, v) in vocab.members {
            guard let id = v.intValue, id >= 0, id < 1 << 24 else { throw bad("model.vocab.\(token)", "id must be a non-negative integer below 2^24, found \(v.brief)") }
            if let prev = byID[id], prev != token { throw bad("model.vocab.\(token)", "id \(id) is also given to '\(prev)'") }
            byID[id] = token
        }
        var types: [Int: Int] = [:]
        if let added = o["added_tokens"], !added.isNull {
            guard let list = added.arrayValue else { throw bad("added_tokens", "expected an array, found \(added.typeName)") }
            for (i, t) in list.enumerated() {
                guard let to = t.objectValue, let id = to["id"]?.intValue, id >= 0, id < 1 << 24,
                      let content = to["content"]?.stringValue, !content.isEmpty else {
                    throw bad("added_tokens[\(i)]", "needs a non-negative integer 'id' and a non-empty 'content'")
                }
                if let prev = byID[id], prev != content { throw bad("added_tokens[\(i)]", "id \(id) is '\(prev)' in model.vocab, not '\(content)'") }
                byID[id] = content
                types[id] = (to["special"]?.boolValue ?? false) ? TokenType.control : TokenType.userDefined
            }
        }
        let n = (byID.keys.max() ?? -1) + 1
        guard n > 0 else { throw bad("model.vocab", "is empty") }
        guard byID.count == n else {
            let missing = (0..<n).first { byID[$0] == nil }!
            throw bad("model.vocab", "ids must run from 0 without gaps; id \(missing) has no token")
        }
        let tokens = (0..<n).map { byID[$0]! }
        let tokenTypes = (0..<n).map { types[$0] ?? TokenType.normal }

        var merges: [String] = []
        if let m = model["merges"], !m.isNull {
            guard let list = m.arrayValue else { throw bad("model.merges", "expected an array, found \(m.typeName)") }
            merges.reserveCapacity(list.count)
            for (i, e) in list.enumerated() {
                if let s = e.stringValue {
                    merges.append(s)
                } else if let pair = e.arrayValue, pair.count == 2, let a = pair[0].stringValue, let b = pair[1].stringValue {
                    guard !a.contains(" "), !b.contains(" ") else {
                        throw bad("model.merges[\(i)]", "a merge part containing a space is not supported")
                    }
                    merges.append(a + " " + b)
                } else {
                    throw bad("model.merges[\(i)]", "expected \"a b\" or [\"a\", \"b\"], found \(e.brief)")
                }
            }
        }

        let pre = try Self.preTokenizerName(o["pre_tokenizer"], path: path)
        // Llama 3's rule takes a piece that is a vocabulary entry whole (ignore_merges); the others run the merges.
        let ignoreMerges = model["ignore_merges"]?.boolValue ?? false
        if ignoreMerges != (PreTokenizer(name: pre)?.ignoresMerges ?? false) {
            throw bad("model.ignore_merges", "\(ignoreMerges) does not go with the \(pre) pre-tokenizer (only Llama 3's rule ignores merges)")
        }

        // BOS: put first when the post-processor's single template starts with a special token.
        var addBOS = false
        var templateBOS: Int?
        if let pp = o["post_processor"]?.objectValue, pp["type"]?.stringValue == "TemplateProcessing",
           let single = pp["single"]?.arrayValue, let first = single.first?.objectValue,
           let name = first["SpecialToken"]?.objectValue?["id"]?.stringValue {
            guard let ids = pp["special_tokens"]?.objectValue?[name]?.objectValue?["ids"]?.arrayValue,
                  ids.count == 1, let id = ids[0].intValue else {
                throw bad("post_processor.special_tokens.\(name)", "the template's first token needs exactly one id")
            }
            addBOS = true
            templateBOS = id
        }

        // Special token ids named in tokenizer_config.json, when the caller has none.
        let configPath = URL(fileURLWithPath: path).deletingLastPathComponent().appendingPathComponent("tokenizer_config.json").path
        var named: [String: Int] = [:]
        if FileManager.default.fileExists(atPath: configPath), let tc = try HFJSON.parse(contentsOf: configPath).objectValue {
            let index = Dictionary(tokens.enumerated().map { ($1, $0) }, uniquingKeysWith: { a, _ in a })
            for key in ["bos_token", "eos_token", "pad_token", "unk_token"] {
                guard let v = tc[key], !v.isNull else { continue }
                guard let s = v.stringValue ?? v.objectValue?["content"]?.stringValue else { continue }
                guard let id = index[s] else {
                    throw CausalError.badFormat(path: configPath, field: key, reason: "'\(s)' is not in the vocabulary of \(path)")
                }
                named[key] = id
            }
            if let b = tc["add_bos_token"]?.boolValue { addBOS = b }
        }
        let bos = bosTokenID ?? templateBOS ?? named["bos_token"]
        do {
            try self.init(tokens: tokens, tokenTypes: tokenTypes, merges: merges, preTokenizer: pre,
                          bosTokenID: bos, eosTokenID: eosTokenID ?? named["eos_token"],
                          padTokenID: padTokenID ?? named["pad_token"], unknownTokenID: named["unk_token"],
                          addBOS: addBOS && bos != nil)
        } catch CausalError.badConfig(let key, let reason) {
            let field: String
            switch key {
            case "tokenizer.ggml.merges": field = "model.merges"
            case "tokenizer.ggml.tokens", "tokenizer.ggml.token_type": field = "model.vocab"
            case "tokenizer.ggml.pre": field = "pre_tokenizer"
            default: field = key.replacingOccurrences(of: "tokenizer.ggml.", with: "")
            }
            throw bad(field, reason)
        }
    }

    /// The `ByteLevelBPETokenizer` pre-tokenizer rule a tokenizer.json pre_tokenizer describes.
    static func preTokenizerName(_ v: HFJSON?, path: String) throws -> String {
        func bad(_ field: String, _ reason: String) -> CausalError { .badFormat(path: path, field: field, reason: reason) }
        guard let v, !v.isNull else { throw bad("pre_tokenizer", "missing: a byte-level BPE tokenizer needs the ByteLevel pre-tokenizer") }
        guard let o = v.objectValue else { throw bad("pre_tokenizer", "expected an object, found \(v.typeName)") }
        var steps: [HFJSONObject] = [o]
        if o["type"]?.stringValue == "Sequence" {
            guard let list = o["pretokenizers"]?.arrayValue else { throw bad("pre_tokenizer.pretokenizers", "expected an array") }
            steps = try list.enumerated().map { i, s in
                guard let so = s.objectValue else { throw bad("pre_tokenizer.pretokenizers[\(i)]", "expected an object") }
                return so
            }
        }
        var digits = false, byteLevel = false
        var split: String?
        for (i, s) in steps.enumerated() {
            let field = steps.count == 1 ? "pre_tokenizer" : "pre_tokenizer.pretokenizers[\(i)]"
            let t = s["type"]?.stringValue ?? "?"
            switch t {
            case "ByteLevel":
                if s["add_prefix_space"]?.boolValue == true {
                    throw bad(field + ".add_prefix_space", "true is not supported")
                }
                if s["use_regex"]?.boolValue == false && split == nil {
                    throw bad(field + ".use_regex", "false without a Split step before it is not supported")
                }
                if s["use_regex"]?.boolValue != false, let rule = split, rule != "gpt2" {
                    throw bad(field + ".use_regex", "true after a \(rule) Split step is not supported (GPT-2's expression would split its pieces again)")
                }
                byteLevel = true
            case "Digits" where !byteLevel:
                guard s["individual_digits"]?.boolValue == true else { throw bad(field + ".individual_digits", "only individual digits are supported") }
                digits = true
            case "Split" where !byteLevel && split == nil:
                // A known pattern written out as a Split step (ByteLevel then has use_regex false): GPT-2's,
                // Qwen2's or Llama 3's.
                let pattern = s["pattern"]?.objectValue?["Regex"]?.stringValue ?? ""
                guard let rule = Self.splitPatterns[pattern] else {
                    throw bad(field + ".pattern", "this split pattern is not supported (supported: GPT-2's, Qwen2's, Llama 3's)")
                }
                let behavior = s["behavior"]?.stringValue ?? "Isolated"
                guard behavior == "Isolated", s["invert"]?.boolValue != true else {
                    throw bad(field + ".behavior", "only Isolated, not inverted, is supported")
                }
                split = rule
            default:
                throw bad(field + ".type", "'\(t)' is not supported here (supported: ByteLevel, optionally after Digits with individual_digits)")
            }
        }
        guard byteLevel else { throw bad("pre_tokenizer", "has no ByteLevel step: not a byte-level BPE tokenizer") }
        if digits {
            guard split == nil || split == "gpt2" else { throw bad("pre_tokenizer", "Digits before a \(split!) split is not supported") }
            return "smollm"
        }
        return split ?? "gpt2"
    }

    /// Split patterns (tokenizer.json spelling) → the `PreTokenizer` rule that implements them.
    static let splitPatterns: [String: String] = [
        #"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"#: "gpt2",
        #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#: "qwen2",
        #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#: "llama-bpe",
    ]
}
