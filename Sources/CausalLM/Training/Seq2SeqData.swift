import Foundation

// Training data for encoder-decoder models (T5): JSONL lines become (input, labels) pairs.
//
// Two line shapes:
//   {"prompt": "...", "response": "..."}
//       input  = the tokenizer's ids of the prompt, ending with </s> (what Hugging Face's T5 tokenizer gives);
//       labels = the ids of the response, ending with </s>. Every label is scored.
//   {"input_ids": [...], "labels": [...]}
//       token ids as they are; labels of -100 are not scored (Hugging Face's convention).
// The decoder reads the labels shifted right behind decoder_start_token_id (T5Config.decoderInput(forLabels:)), so
// there is no chat template and no prompt inside the decoder. No padding anywhere: batches are ragged.

/// (input, labels) pairs for an encoder-decoder model, in file order.
public struct Seq2SeqDataset: Sendable {
    public var examples: [Seq2SeqExample]
    /// Examples left out (nothing to score after truncation), by 1-based line.
    public var skipped: [SFTSkip]
    public var scoredLabelCount: Int { examples.reduce(0) { $0 + $1.scoredLabelCount } }

    public init(examples: [Seq2SeqExample], skipped: [SFTSkip] = []) { self.examples = examples; self.skipped = skipped }

    /// Groups examples, in order, into batches of at most `maxTokens` rows (encoder input + labels; an example
    /// longer than that is a batch of its own). No padding.
    public static func pack(_ examples: [Seq2SeqExample], maxTokens: Int) -> [[Seq2SeqExample]] {
        var out: [[Seq2SeqExample]] = [], cur: [Seq2SeqExample] = [], tokens = 0
        for ex in examples {
            if !cur.isEmpty && tokens + ex.tokenCount > maxTokens { out.append(cur); cur = []; tokens = 0 }
            cur.append(ex); tokens += ex.tokenCount
        }
        if !cur.isEmpty { out.append(cur) }
        return out
    }

    /// The examples in a seeded random order for `epoch` (as `SFTDataset.shuffled`).
    public func shuffled(seed: UInt64, epoch: Int) -> [Seq2SeqExample] {
        var rng = SequenceRNG(seed: seed &+ UInt64(epoch) &* 0x9E37_79B9_7F4A_7C15)
        return examples.shuffled(using: &rng)
    }
}

/// Reads (input, labels) pairs from JSONL, tokenizing text with the model's tokenizer when there is one.
public struct Seq2SeqEncoder {
    /// Keep at most this many tokens of the input and of the labels (a text's final </s> is kept); nil: no limit.
    public var maxLength: Int?
    public let vocabularySize: Int
    /// Ends every tokenized text (`</s>`).
    public let eosTokenID: Int
    let encode: ((String) throws -> [Int])?
    /// Why text lines cannot be read (no tokenizer).
    let missingTokenizer: String

    /// - Parameters:
    ///   - encode: text → ids (nil: only `input_ids` lines). An id list that does not end with `eosTokenID` gets it.
    public init(encode: ((String) throws -> [Int])?, eosTokenID: Int, vocabularySize: Int, maxLength: Int? = nil,
                missingTokenizer: String = "the model has no tokenizer") {
        self.encode = encode; self.eosTokenID = eosTokenID; self.vocabularySize = vocabularySize
        self.maxLength = maxLength; self.missingTokenizer = missingTokenizer
    }

    /// An encoder-decoder model's bundle: its text tokenizer when its directory has one, its config's EOS.
    public init(bundle: ModelBundle, maxLength: Int? = nil) throws {
        guard let t5 = bundle.model as? T5Model else {
            throw CausalError.invalidArgument("\(bundle.path): (input, labels) pairs need an encoder-decoder model, not \(type(of: bundle.model))")
        }
        let eos = t5.config.eosTokenIDs.first ?? 1
        var missing = "no tokenizer in \(bundle.path)"
        do { _ = try bundle.tokenizer } catch { missing = "\(error)" }
        self.init(encode: bundle.textTokenizer.map { t in { try t.encode($0) } }, eosTokenID: eos,
                  vocabularySize: t5.vocabularySize, maxLength: maxLength, missingTokenizer: missing)
    }

    /// Whether `{"prompt", "response"}` lines can be read.
    public var readsText: Bool { encode != nil }

    /// One JSONL line as a pair; errors name the source, the line and the field.
    public func example(_ line: String, lineNumber: Int, source: String = "data") throws -> Seq2SeqExample {
        func bad(_ why: String) -> CausalError { .badFormat(path: source, field: "line \(lineNumber)", reason: why) }
        let object: Any
        do { object = try JSONSerialization.jsonObject(with: Data(line.utf8), options: [.fragmentsAllowed]) } catch {
            throw bad("not valid JSON")
        }
        guard let obj = object as? [String: Any] else { throw bad("expected a JSON object") }
        func ids(_ key: String, labels: Bool) throws -> [Int]? {
            guard let v = obj[key], !(v is NSNull) else { return nil }
            guard let list = v as? [Any] else { throw bad("field '\(key)' must be an array of token ids") }
            return try list.enumerated().map { i, e in
                let isBool = e is Bool && String(describing: type(of: e)).contains("Bool")
                guard !isBool, let n = e as? NSNumber, n.doubleValue == n.doubleValue.rounded() else {
                    throw bad("\(key)[\(i)] must be an integer token id")
                }
                let id = n.intValue
                guard (labels && id == ignoredLabel) || (id >= 0 && id < vocabularySize) else {
                    throw bad("\(key)[\(i)] = \(id) is outside the vocabulary (0..<\(vocabularySize))\(labels ? " and is not -100" : "")")
                }
                return id
            }
        }
        func text(_ key: String) throws -> String? {
            guard let v = obj[key], !(v is NSNull) else { return nil }
            guard let s = v as? String else { throw bad("field '\(key)' must be a string") }
            return s
        }
        if obj["messages"] != nil || obj["system"] != nil {
            throw bad("'messages' and 'system' are for decoder-only chat models; an encoder-decoder model takes {\"prompt\", \"response\"} or {\"input_ids\", \"labels\"}")
        }
        let example: Seq2SeqExample
        if let input = try ids("input_ids", labels: false) {
            guard let labels = try ids("labels", labels: true) else { throw bad("missing field 'labels' (with 'input_ids')") }
            example = Seq2SeqExample(input: maxLength.map { Array(input.prefix($0)) } ?? input,
                                     labels: maxLength.map { Array(labels.prefix($0)) } ?? labels)
        } else if obj["labels"] != nil {
            throw bad("missing field 'input_ids' (with 'labels')")
        } else {
            let prompt = try text("prompt"), response = try text("response")
            guard let prompt, let response else {
                if prompt == nil && response == nil { throw bad(#"expected {"prompt", "response"} or {"input_ids", "labels"}"#) }
                throw bad("missing field '\(prompt == nil ? "prompt" : "response")'")
            }
            guard let encode else {
                throw bad("text needs a tokenizer: \(missingTokenizer); give token ids as {\"input_ids\": [...], \"labels\": [...]}")
            }
            example = Seq2SeqExample(input: try tokens(prompt, encode), labels: try tokens(response, encode))
        }
        guard !example.input.isEmpty else { throw bad("the input has no tokens") }
        guard !example.labels.isEmpty else { throw bad("there are no labels") }
        return example
    }

    /// The ids of a text ending with EOS, cut to `maxLength` (keeping the EOS).
    func tokens(_ text: String, _ encode: (String) throws -> [Int]) throws -> [Int] {
        var ids = try encode(text)
        if ids.last != eosTokenID { ids.append(eosTokenID) }
        if let m = maxLength, ids.count > m { ids = Array(ids.prefix(max(m - 1, 0))) + [eosTokenID] }
        return ids
    }

    /// Reads a JSONL file (blank lines ignored). Errors name the file and line; an empty file is an error.
    public func load(path: String) throws -> Seq2SeqDataset {
        guard let data = FileManager.default.contents(atPath: path) else { throw CausalError.io(path: path, reason: "cannot read") }
        return try load(jsonl: String(decoding: data, as: UTF8.self), source: path)
    }

    /// Parses JSONL text; `source` names it in errors. Pairs with no scored label are skipped and listed.
    public func load(jsonl text: String, source: String = "data") throws -> Seq2SeqDataset {
        var examples: [Seq2SeqExample] = [], skipped: [SFTSkip] = []
        var lines = 0
        for (i, raw) in text.split(omittingEmptySubsequences: false, whereSeparator: { $0 == "\n" || $0 == "\r\n" }).enumerated() {
            let line = raw.hasSuffix("\r") ? String(raw.dropLast()) : String(raw)
            if line.allSatisfy({ $0 == " " || $0 == "\t" }) { continue }
            lines += 1
            let ex = try example(line, lineNumber: i + 1, source: source)
            guard ex.scoredLabelCount > 0 else {
                skipped.append(SFTSkip(line: i + 1, reason: "no label is scored (all are -100)"))
                continue
            }
            examples.append(ex)
        }
        guard lines > 0 else { throw CausalError.badFormat(path: source, field: "data", reason: "the dataset is empty") }
        guard !examples.isEmpty else {
            throw CausalError.badFormat(path: source, field: "data", reason: "all \(lines) examples were skipped (\(skipped.first!.reason))")
        }
        return Seq2SeqDataset(examples: examples, skipped: skipped)
    }
}
