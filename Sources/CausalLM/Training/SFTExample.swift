import Foundation

// Supervised fine-tuning data: JSONL lines become token sequences with a per-token "scored" mask.
//
// Two line shapes:
//   {"prompt": "...", "response": "..."[, "system": "..."]}
//       prompt ids   = the chat template over [system?, user: prompt] with the generation prompt,
//       response ids = encode(response) + [end-of-turn id]; only the response is scored.
//   {"messages": [{"role": ..., "content": ...}, ...]}
//       the conversation is rendered prefix by prefix: for each assistant turn i, the text of messages[0..<i] with
//       the generation prompt, then of messages[0...i] without it; the new text of the first render is context,
//       the new text of the second is the assistant's turn, scored through its end-of-turn token.
// Each piece is tokenized on its own and the mask records which piece a token came from (never a search of the
// rendered text). The sequence ends after the last scored token. Labels follow Hugging Face: `labels[t]` is the
// token itself where scored and -100 elsewhere; position t is trained to predict token t + 1 (the shift by one),
// so `targets[t] = labels[t + 1]`. No padding anywhere: batches are ragged.

/// The label of a token that is not scored (Hugging Face's `ignore_index`).
public let ignoredLabel = -100

/// One fine-tuning sequence and the tokens it is scored on.
public struct SFTExample: Sendable, Equatable {
    /// The input token ids.
    public var tokens: [Int]
    /// Hugging Face labels: `tokens[t]` where token t is scored, `ignoredLabel` elsewhere. `labels[0]` never counts
    /// (nothing predicts the first token).
    public var labels: [Int]
    /// Tokens before the first response token: the prompt. Prefix-LM attention is bidirectional among them.
    public var promptLength: Int
    /// 1-based line of the JSONL file it came from (0 when built in code).
    public var line: Int

    public init(tokens: [Int], labels: [Int], promptLength: Int, line: Int = 0) {
        precondition(tokens.count == labels.count, "tokens and labels differ in length")
        self.tokens = tokens; self.labels = labels; self.promptLength = min(promptLength, tokens.count); self.line = line
    }

    /// What position t is trained to predict: `labels[t + 1]`, and `ignoredLabel` at the last position.
    public var targets: [Int] {
        guard !tokens.isEmpty else { return [] }
        return Array(labels.dropFirst()) + [ignoredLabel]
    }

    /// Positions with a target (scored tokens after the shift).
    public var scoredTokenCount: Int { labels.dropFirst().reduce(0) { $0 + ($1 == ignoredLabel ? 0 : 1) } }

    /// The first `maxLength` tokens.
    public func truncated(to maxLength: Int) -> SFTExample {
        guard tokens.count > maxLength else { return self }
        return SFTExample(tokens: Array(tokens.prefix(maxLength)), labels: Array(labels.prefix(maxLength)),
                          promptLength: promptLength, line: line)
    }
}

/// One line of a fine-tuning JSONL file.
public enum SFTRecord: Sendable, Equatable {
    case pair(prompt: String, response: String, system: String?)
    case messages([ChatMessage])
    /// Already tokenized: `{"input_ids": [...], "labels": [...]}`, labels as Hugging Face's (the token id where
    /// scored, -100 elsewhere; the same length as input_ids). The prompt is everything before the first scored token.
    case tokenIDs(inputIDs: [Int], labels: [Int])

    /// Parses one JSONL line; errors name the line and the field.
    public static func parse(_ line: String, lineNumber: Int, source: String = "data") throws -> SFTRecord {
        func bad(_ why: String) -> CausalError { .badFormat(path: source, field: "line \(lineNumber)", reason: why) }
        let object: Any
        do { object = try JSONSerialization.jsonObject(with: Data(line.utf8), options: [.fragmentsAllowed]) } catch {
            throw bad("not valid JSON")
        }
        guard let obj = object as? [String: Any] else { throw bad("expected a JSON object") }
        func string(_ key: String, in o: [String: Any], at place: String = "") throws -> String? {
            guard let v = o[key], !(v is NSNull) else { return nil }
            guard let s = v as? String else { throw bad("\(place)field '\(key)' must be a string") }
            return s
        }
        if let raw = obj["input_ids"] {
            func ints(_ key: String, _ v: Any?) throws -> [Int] {
                guard let v, !(v is NSNull) else { throw bad("missing field '\(key)' (an array of token ids, -100 where not scored)") }
                guard let list = v as? [Any] else { throw bad("field '\(key)' must be an array of integers") }
                return try list.enumerated().map { i, x in
                    guard let n = x as? NSNumber, case let d = n.doubleValue, d == d.rounded(), abs(d) < 1e15 else {
                        throw bad("\(key)[\(i)] must be an integer")
                    }
                    return n.intValue
                }
            }
            let ids = try ints("input_ids", raw), labels = try ints("labels", obj["labels"])
            guard !ids.isEmpty else { throw bad("field 'input_ids' is empty") }
            guard labels.count == ids.count else { throw bad("field 'labels' has \(labels.count) entries but 'input_ids' has \(ids.count)") }
            if let i = ids.firstIndex(where: { $0 < 0 }) { throw bad("input_ids[\(i)] = \(ids[i]) is not a token id") }
            if let i = labels.indices.first(where: { labels[$0] != ignoredLabel && labels[$0] != ids[$0] }) {
                throw bad("labels[\(i)] = \(labels[i]) must be input_ids[\(i)] (\(ids[i])) or -100")
            }
            return .tokenIDs(inputIDs: ids, labels: labels)
        }
        if let raw = obj["messages"] {
            guard let list = raw as? [Any] else { throw bad("field 'messages' must be an array of {role, content} objects") }
            var messages: [ChatMessage] = []
            for (i, m) in list.enumerated() {
                guard let mo = m as? [String: Any] else { throw bad("messages[\(i)] must be an object") }
                guard let role = try string("role", in: mo, at: "messages[\(i)]: ") else { throw bad("messages[\(i)]: missing field 'role'") }
                guard let content = try string("content", in: mo, at: "messages[\(i)]: ") else { throw bad("messages[\(i)]: missing field 'content'") }
                messages.append(ChatMessage(role: role, content: content))
            }
            guard messages.contains(where: { $0.role == "assistant" }) else { throw bad("'messages' has no assistant turn to learn from") }
            return .messages(messages)
        }
        let prompt = try string("prompt", in: obj), response = try string("response", in: obj)
        switch (prompt, response) {
        case let (p?, r?): return .pair(prompt: p, response: r, system: try string("system", in: obj))
        case (nil, _?): throw bad("missing field 'prompt'")
        case (_?, nil): throw bad("missing field 'response'")
        case (nil, nil): throw bad(#"expected {"prompt", "response"}, {"messages": [...]} or {"input_ids": [...], "labels": [...]}"#)
        }
    }
}

/// An example left out of a dataset, and why.
public struct SFTSkip: Sendable, Equatable {
    public var line: Int
    public var reason: String
}

/// The examples of a JSONL file, in file order.
public struct SFTDataset: Sendable {
    public var examples: [SFTExample]
    /// Examples left out (e.g. nothing left to score after truncation).
    public var skipped: [SFTSkip]
    public var scoredTokenCount: Int { examples.reduce(0) { $0 + $1.scoredTokenCount } }
    public var tokenCount: Int { examples.reduce(0) { $0 + $1.tokens.count } }
}

/// Turns records into examples with a tokenizer and a chat template.
public struct SFTEncoder {
    /// Keep at most this many tokens per example (nil: no limit).
    public var maxLength: Int?
    /// Score every token (except the first), not only the responses.
    public var trainOnPrompt: Bool
    /// The token that ends an assistant turn (scored with the turn).
    public let endOfTurnID: Int
    /// The model's vocabulary, against which already-tokenized records (`input_ids`) are checked (nil: unchecked).
    public var vocabularySize: Int?
    let encode: (String) throws -> [Int]
    let render: ([ChatMessage], Bool) throws -> String

    /// - Parameters:
    ///   - encode: text → token ids (special tokens in the text parsed as special tokens).
    ///   - renderChat: messages and `addGenerationPrompt` → the chat template's text.
    public init(encode: @escaping (String) throws -> [Int], renderChat: @escaping ([ChatMessage], Bool) throws -> String,
                endOfTurnID: Int, maxLength: Int? = nil, trainOnPrompt: Bool = false) {
        self.encode = encode; self.render = renderChat; self.endOfTurnID = endOfTurnID
        self.maxLength = maxLength; self.trainOnPrompt = trainOnPrompt
    }

    /// The model's tokenizer and chat template; the end-of-turn token is `<|im_end|>` (or `<|eot_id|>`,
    /// `<end_of_turn>`), else the end-of-sequence token.
    /// A model without a chat template (or without a tokenizer) still reads already-tokenized lines
    /// (`input_ids`/`labels`); a text line is then an error naming what is missing.
    public init(bundle: ModelBundle, maxLength: Int? = nil, trainOnPrompt: Bool = false) throws {
        let noTemplate = CausalError.badFormat(path: bundle.path, field: "tokenizer.chat_template", reason: "the model has no chat template to format training examples with (already tokenized input_ids/labels lines need none)")
        guard let tok = try? bundle.tokenizer, let template = bundle.chatTemplate else {
            self.init(encode: { _ in throw noTemplate }, renderChat: { _, _ in throw noTemplate }, endOfTurnID: -1,
                      maxLength: maxLength, trainOnPrompt: trainOnPrompt)
            vocabularySize = bundle.model.vocabularySize
            return
        }
        guard let eot = tok.tokenID("<|im_end|>") ?? tok.tokenID("<|eot_id|>") ?? tok.tokenID("<end_of_turn>") ?? tok.eosTokenID else {
            throw CausalError.badFormat(path: bundle.path, field: "tokenizer.ggml.eos_token_id", reason: "no end-of-turn or end-of-sequence token")
        }
        let bos = tok.bosTokenID.flatMap { tok.tokenString($0) } ?? ""
        let eos = tok.eosTokenID.flatMap { tok.tokenString($0) } ?? ""
        self.init(encode: { try tok.encode($0) },
                  renderChat: { try template.render(messages: $0, addGenerationPrompt: $1, bosToken: bos, eosToken: eos) },
                  endOfTurnID: eot, maxLength: maxLength, trainOnPrompt: trainOnPrompt)
        vocabularySize = bundle.model.vocabularySize
    }

    /// The pieces of a record in order: token ids and whether they are a response (scored).
    public func segments(_ record: SFTRecord) throws -> [(tokens: [Int], response: Bool)] {
        switch record {
        case let .pair(prompt, response, system):
            var messages: [ChatMessage] = []
            if let s = system { messages.append(ChatMessage(role: "system", content: s)) }
            messages.append(ChatMessage(role: "user", content: prompt))
            return [(try encode(try render(messages, true)), false), (try encode(response) + [endOfTurnID], true)]
        case let .tokenIDs(ids, labels):
            // Runs of scored and unscored tokens, in order.
            var out: [(tokens: [Int], response: Bool)] = []
            for (t, l) in zip(ids, labels) {
                let scored = l != ignoredLabel
                if let last = out.last, last.response == scored { out[out.count - 1].tokens.append(t) } else { out.append(([t], scored)) }
            }
            return out
        case let .messages(messages):
            var out: [(tokens: [Int], response: Bool)] = []
            var consumed: [UInt8] = []      // UTF-8 of the text turned into tokens so far
            func newText(_ text: String, after prefix: [UInt8], _ what: String) throws -> String {
                let bytes = Array(text.utf8)
                guard bytes.starts(with: prefix) else {
                    throw CausalError.invalidArgument("the chat template does not render the conversation prefix by prefix (\(what))")
                }
                return String(decoding: bytes[prefix.count...], as: UTF8.self)
            }
            for (i, m) in messages.enumerated() where m.role == "assistant" {
                let before = try render(Array(messages[..<i]), true)
                let context = try newText(before, after: consumed, "before message \(i)")
                let full = try render(Array(messages[...i]), false)
                let turn = try newText(full, after: Array(before.utf8), "message \(i)")
                out.append((try encode(context), false))
                // The turn is scored through its end-of-turn token; what the template adds after it is context.
                let ids = try encode(turn)
                if let e = ids.lastIndex(of: endOfTurnID) {
                    out.append((Array(ids[...e]), true))
                    out.append((Array(ids[(e + 1)...]), false))
                } else {
                    out.append((ids, true))
                }
                consumed = Array(full.utf8)
            }
            while let last = out.last, !last.response { out.removeLast() }
            // Neighbouring pieces of the same kind become one (their tokens are simply concatenated).
            var merged: [(tokens: [Int], response: Bool)] = []
            for s in out where !s.tokens.isEmpty {
                if let last = merged.last, last.response == s.response { merged[merged.count - 1].tokens += s.tokens } else { merged.append(s) }
            }
            return merged
        }
    }

    /// The whole (untruncated) example of a record.
    public func example(_ record: SFTRecord, line: Int = 0) throws -> SFTExample {
        if case let .tokenIDs(ids, _) = record, let V = vocabularySize, let i = ids.firstIndex(where: { $0 >= V }) {
            throw CausalError.invalidArgument("input_ids[\(i)] = \(ids[i]) is outside the vocabulary (0..<\(V))")
        }
        var tokens: [Int] = [], labels: [Int] = []
        var promptLength: Int?
        for s in try segments(record) {
            if s.response && promptLength == nil { promptLength = tokens.count }
            tokens += s.tokens
            labels += s.response || trainOnPrompt ? s.tokens : Array(repeating: ignoredLabel, count: s.tokens.count)
        }
        return SFTExample(tokens: tokens, labels: labels, promptLength: promptLength ?? tokens.count, line: line)
    }

    /// Reads a JSONL file (blank lines ignored). Errors name the file and line; an empty file is an error.
    public func load(path: String) throws -> SFTDataset {
        guard let data = FileManager.default.contents(atPath: path) else { throw CausalError.io(path: path, reason: "cannot read") }
        return try load(jsonl: String(decoding: data, as: UTF8.self), source: path)
    }

    /// Parses JSONL text; `source` names it in errors. Examples with nothing to score after truncation are skipped
    /// and listed in `skipped`; a dataset with no example left is an error.
    public func load(jsonl text: String, source: String = "data") throws -> SFTDataset {
        var examples: [SFTExample] = [], skipped: [SFTSkip] = []
        var lines = 0
        // "\r\n" is one Character in Swift: split on both.
        for (i, raw) in text.split(omittingEmptySubsequences: false, whereSeparator: { $0 == "\n" || $0 == "\r\n" }).enumerated() {
            let line = raw.hasSuffix("\r") ? String(raw.dropLast()) : String(raw)
            if line.allSatisfy({ $0 == " " || $0 == "\t" }) { continue }
            lines += 1
            let record = try SFTRecord.parse(line, lineNumber: i + 1, source: source)
            var ex: SFTExample
            do { ex = try example(record, line: i + 1) } catch {
                throw CausalError.badFormat(path: source, field: "line \(i + 1)", reason: "\(error)")
            }
            if let m = maxLength { ex = ex.truncated(to: m) }
            guard ex.scoredTokenCount > 0 else {
                skipped.append(SFTSkip(line: i + 1, reason: maxLength.map { "nothing left to score after truncation to \($0) tokens" } ?? "nothing to score"))
                continue
            }
            examples.append(ex)
        }
        guard lines > 0 else { throw CausalError.badFormat(path: source, field: "data", reason: "the dataset is empty") }
        guard !examples.isEmpty else {
            throw CausalError.badFormat(path: source, field: "data", reason: "all \(lines) examples were skipped (\(skipped.first!.reason))")
        }
        return SFTDataset(examples: examples, skipped: skipped)
    }
}

extension SFTDataset {
    /// Groups examples, in order, into batches of at most `maxTokens` tokens (an example longer than that is a batch
    /// of its own). No padding: a batch's size is the sum of its sequences' lengths.
    public static func pack(_ examples: [SFTExample], maxTokens: Int) -> [[SFTExample]] {
        var out: [[SFTExample]] = [], cur: [SFTExample] = [], tokens = 0
        for ex in examples {
            if !cur.isEmpty && tokens + ex.tokens.count > maxTokens { out.append(cur); cur = []; tokens = 0 }
            cur.append(ex); tokens += ex.tokens.count
        }
        if !cur.isEmpty { out.append(cur) }
        return out
    }

    /// The examples in a seeded random order for `epoch` (the same seed and epoch give the same order).
    public func shuffled(seed: UInt64, epoch: Int) -> [SFTExample] {
        var rng = SequenceRNG(seed: seed &+ UInt64(epoch) &* 0x9E37_79B9_7F4A_7C15)
        return examples.shuffled(using: &rng)
    }
}
