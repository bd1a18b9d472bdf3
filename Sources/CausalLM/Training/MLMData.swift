import Foundation

// Masked-LM training data and BERT's masking.
//
// A data file is JSONL, one document per line, or plain text (.txt), one document per line. JSONL lines:
//   {"text": "..."}                         tokenized with the model's WordPiece tokenizer: [CLS] pieces [SEP],
//                                           truncated to the maximum length (the [SEP] kept)
//   {"input_ids": [...]}                    token ids as they are (masked at random like text)
//   {"input_ids": [...], "labels": [...]}   already masked: input_ids as the model reads them, labels the original
//                                           token where scored and -100 elsewhere (no random masking)
// Blank lines are skipped; a document with no token that may be masked is skipped and reported.
//
// Masking (Devlin et al. 2018, section 3.1, as transformers' DataCollatorForLanguageModeling): every token that is
// not special ([CLS], [SEP], [PAD], [MASK], [UNK], ...) is selected with probability `rate`; a selected token is
// scored (its label is the original id) and replaced by [MASK] with probability 0.8, by a uniformly drawn
// non-special token with probability 0.1, and kept with probability 0.1. A sequence in which no token was selected
// gets one, drawn uniformly among its maskable tokens (so that every sequence is scored). The draws come from a
// SequenceRNG seeded by (seed, step, the example's index in its file): a run's masks depend on nothing else, so a
// resumed run draws what the uninterrupted one drew, and evaluation (step -1) always uses the same masks.

/// One document for masked-LM training.
public struct MLMExample: Sendable, Equatable {
    /// Token ids (with [CLS]/[SEP] when the tokenizer adds them).
    public var ids: [Int]
    /// Labels of an already masked example (`ids` are then the model's input); nil: masked at random per step.
    public var labels: [Int]?
    /// The example's place in its file (0-based, blank and skipped lines not counted): part of its mask's seed.
    public var index: Int
    /// 1-based line of the file (0 when built in code).
    public var line: Int

    public init(ids: [Int], labels: [Int]? = nil, index: Int, line: Int = 0) {
        precondition(labels == nil || labels!.count == ids.count, "ids and labels differ in length")
        self.ids = ids; self.labels = labels; self.index = index; self.line = line
    }

    public var tokenCount: Int { ids.count }
}

/// A masked sequence as the model reads it.
public struct MaskedSequence: Sendable, Equatable {
    /// What the model reads (with [MASK] and random replacements).
    public var input: [Int]
    /// The original id where scored, -100 elsewhere.
    public var labels: [Int]
    public init(input: [Int], labels: [Int]) { self.input = input; self.labels = labels }
    public var scoredCount: Int { labels.reduce(0) { $0 + ($1 == ignoredLabel ? 0 : 1) } }
}

/// BERT's 80/10/10 masking.
public struct MLMMasker: Sendable, Equatable {
    /// Probability that a maskable token is selected (scored).
    public var rate: Double
    public var maskTokenID: Int
    public var vocabularySize: Int
    /// Ids never selected and never drawn as random replacements.
    public var specialIDs: Set<Int>
    public var seed: UInt64

    public init(rate: Double = 0.15, maskTokenID: Int, vocabularySize: Int, specialIDs: Set<Int>, seed: UInt64) throws {
        guard rate > 0, rate <= 1 else { throw CausalError.invalidArgument("the mask rate must be in (0, 1], found \(rate)") }
        guard maskTokenID >= 0, maskTokenID < vocabularySize else {
            throw CausalError.invalidArgument("the [MASK] token id \(maskTokenID) is outside the vocabulary (0..<\(vocabularySize))")
        }
        guard specialIDs.filter({ $0 >= 0 && $0 < vocabularySize }).count < vocabularySize else {
            throw CausalError.invalidArgument("every token of the vocabulary is special: nothing can be masked")
        }
        self.rate = rate; self.maskTokenID = maskTokenID; self.vocabularySize = vocabularySize
        self.specialIDs = specialIDs.union([maskTokenID]); self.seed = seed
    }

    /// The masker of a WordPiece tokenizer: its [MASK] and its special tokens.
    public init(tokenizer: WordPieceTokenizer, vocabularySize: Int, rate: Double = 0.15, seed: UInt64) throws {
        guard let mask = tokenizer.maskTokenID else {
            throw CausalError.invalidArgument("the tokenizer has no [MASK] token: masked-LM training needs one")
        }
        let specials = Set((0..<tokenizer.vocabularySize).filter { tokenizer.isSpecial($0) })
        try self.init(rate: rate, maskTokenID: mask, vocabularySize: vocabularySize, specialIDs: specials, seed: seed)
    }

    /// Whether a token may be selected.
    public func maskable(_ id: Int) -> Bool { !specialIDs.contains(id) }

    /// The example as the model reads it at optimizer step `step` (-1 for evaluation): its own labels when it has
    /// them, else BERT's masking drawn from (seed, step, example.index).
    public func mask(_ ex: MLMExample, step: Int) -> MaskedSequence {
        if let labels = ex.labels { return MaskedSequence(input: ex.ids, labels: labels) }
        let mix = seed ^ (UInt64(bitPattern: Int64(step)) &* 0x9E37_79B9_7F4A_7C15) ^ (UInt64(ex.index) &* 0xC2B2_AE3D_27D4_EB4F)
        var rng = SequenceRNG(seed: mix)
        var input = ex.ids
        var labels = [Int](repeating: ignoredLabel, count: ex.ids.count)
        let candidates = ex.ids.indices.filter { maskable(ex.ids[$0]) }
        var selected: [Int] = []
        for i in candidates where rng.nextUnitFloat() < rate { selected.append(i) }
        if selected.isEmpty, !candidates.isEmpty { selected = [candidates[Int(rng.next() % UInt64(candidates.count))]] }
        for i in selected {
            labels[i] = ex.ids[i]
            let r = rng.nextUnitFloat()
            if r < 0.8 {
                input[i] = maskTokenID
            } else if r < 0.9 {
                var t: Int
                repeat { t = Int(rng.next() % UInt64(vocabularySize)) } while specialIDs.contains(t)
                input[i] = t
            }
        }
        return MaskedSequence(input: input, labels: labels)
    }
}

/// Masked-LM documents, in file order.
public struct MLMDataset: Sendable {
    public var examples: [MLMExample]
    /// Lines left out (nothing to mask), by 1-based line.
    public var skipped: [SFTSkip]
    public var tokenCount: Int { examples.reduce(0) { $0 + $1.tokenCount } }

    public init(examples: [MLMExample], skipped: [SFTSkip] = []) { self.examples = examples; self.skipped = skipped }

    /// Groups examples, in order, into batches of at most `maxTokens` tokens (a longer example is a batch of its own).
    public static func pack(_ examples: [MLMExample], maxTokens: Int) -> [[MLMExample]] {
        var out: [[MLMExample]] = [], cur: [MLMExample] = [], tokens = 0
        for ex in examples {
            if !cur.isEmpty && tokens + ex.tokenCount > maxTokens { out.append(cur); cur = []; tokens = 0 }
            cur.append(ex); tokens += ex.tokenCount
        }
        if !cur.isEmpty { out.append(cur) }
        return out
    }

    /// The examples in a seeded random order for `epoch` (as `SFTDataset.shuffled`).
    public func shuffled(seed: UInt64, epoch: Int) -> [MLMExample] {
        var rng = SequenceRNG(seed: seed &+ UInt64(epoch) &* 0x9E37_79B9_7F4A_7C15)
        return examples.shuffled(using: &rng)
    }
}

/// Reads masked-LM documents from JSONL or plain text.
public struct MLMDataReader {
    /// Longest sequence in tokens (the model's positions); longer ones are truncated.
    public var maxLength: Int
    public let vocabularySize: Int
    let tokenizer: WordPieceTokenizer?
    let masker: MLMMasker

    public init(tokenizer: WordPieceTokenizer?, masker: MLMMasker, vocabularySize: Int, maxLength: Int) {
        self.tokenizer = tokenizer; self.masker = masker; self.vocabularySize = vocabularySize; self.maxLength = maxLength
    }

    /// Reads `path`: plain text when it ends in .txt, JSONL otherwise. Errors name the file, the line and the field.
    public func load(path: String) throws -> MLMDataset {
        guard let data = FileManager.default.contents(atPath: path) else { throw CausalError.io(path: path, reason: "cannot read the data file") }
        guard let text = String(data: data, encoding: .utf8) else { throw CausalError.badFormat(path: path, field: "data", reason: "not UTF-8 text") }
        let plain = path.lowercased().hasSuffix(".txt")
        var out = MLMDataset(examples: [])
        for (i, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.hasSuffix("\r") ? String(raw.dropLast()) : String(raw)
            if line.trimmingCharacters(in: .whitespaces).isEmpty { continue }
            let ex = try plain ? fromText(line, path: path, line: i + 1) : example(line, path: path, line: i + 1)
            if !ex.ids.contains(where: masker.maskable) && ex.labels == nil {
                out.skipped.append(SFTSkip(line: i + 1, reason: "no token that can be masked"))
                continue
            }
            if let labels = ex.labels, !labels.contains(where: { $0 != ignoredLabel }) {
                out.skipped.append(SFTSkip(line: i + 1, reason: "no label is scored (all are -100)"))
                continue
            }
            var e = ex
            e.index = out.examples.count
            out.examples.append(e)
        }
        guard !out.examples.isEmpty else {
            throw CausalError.badFormat(path: path, field: "data", reason: "no documents to train on (\(out.skipped.count) skipped)")
        }
        return out
    }

    func fromText(_ s: String, path: String, line: Int) throws -> MLMExample {
        guard let tokenizer else {
            throw CausalError.badFormat(path: path, field: "line \(line)", reason: "text needs the model's tokenizer.json, which the model directory lacks (give {\"input_ids\": [...]} lines)")
        }
        return MLMExample(ids: tokenizer.encode(s, addSpecialTokens: true, maxLength: maxLength), index: 0, line: line)
    }

    func example(_ line: String, path: String, line n: Int) throws -> MLMExample {
        func bad(_ field: String, _ why: String) -> CausalError { .badFormat(path: path, field: "line \(n): \(field)", reason: why) }
        guard let obj = (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any] else {
            throw CausalError.badFormat(path: path, field: "line \(n)", reason: "not a JSON object (expected {\"text\": ...} or {\"input_ids\": [...]})")
        }
        if let t = obj["text"] {
            guard let s = t as? String else { throw bad("text", "expected a string") }
            return try fromText(s, path: path, line: n)
        }
        guard let rawIDs = obj["input_ids"] else { throw bad("text", "missing (expected \"text\" or \"input_ids\")") }
        func ints(_ v: Any, _ field: String) throws -> [Int] {
            guard let a = v as? [Any] else { throw bad(field, "expected an array of integers") }
            return try a.map { x in
                let isBool = x is Bool && String(describing: type(of: x)).contains("Bool")
                guard !isBool, let num = x as? NSNumber, num.doubleValue == num.doubleValue.rounded(), abs(num.doubleValue) < 1e15 else {
                    throw bad(field, "expected integers, found \(x)")
                }
                return num.intValue
            }
        }
        var ids = try ints(rawIDs, "input_ids")
        guard !ids.isEmpty else { throw bad("input_ids", "empty") }
        for t in ids where t < 0 || t >= vocabularySize { throw bad("input_ids", "token id \(t) is outside the vocabulary (0..<\(vocabularySize))") }
        var labels: [Int]?
        if let l = obj["labels"] {
            var ls = try ints(l, "labels")
            guard ls.count == ids.count else { throw bad("labels", "\(ls.count) labels for \(ids.count) input_ids") }
            for t in ls where t != ignoredLabel && (t < 0 || t >= vocabularySize) {
                throw bad("labels", "label \(t) is neither -100 nor a token id of the vocabulary (0..<\(vocabularySize))")
            }
            if ls.count > maxLength { ls = Array(ls.prefix(maxLength)) }
            labels = ls
        }
        if ids.count > maxLength { ids = Array(ids.prefix(maxLength)) }
        return MLMExample(ids: ids, labels: labels, index: 0, line: n)
    }
}
