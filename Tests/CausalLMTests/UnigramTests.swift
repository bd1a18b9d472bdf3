import Foundation
import XCTest
import CausalLM

/// Unigram (SentencePiece / T5) tokenizers from tokenizer.json against the `tokenizers` library's own ids and decoded
/// text (Tests/Fixtures/t5-unigram/, made by Tests/Fixtures/gen/make_t5_unigram.py).
final class UnigramTests: XCTestCase {
    static let files = ["tokenizer.json", "tokenizer-legacy.json", "tokenizer-bytefallback.json"]

    /// Scalars, so that canonically equivalent strings (é vs e + ◌́) are told apart.
    func scalars(_ s: String) -> [UInt32] { s.unicodeScalars.map(\.value) }

    func testFixtureIdsAndDecodeMatchTokenizersLibrary() throws {
        let all = try XCTUnwrap(Fixtures.json("t5-unigram/cases.json") as? [String: Any])
        for file in Self.files {
            let tok = try UnigramTokenizer(path: Fixtures.url("t5-unigram/\(file)").path)
            let cases = try XCTUnwrap(all[file] as? [[String: Any]], file)
            XCTAssertEqual(cases.count, 38, file)
            var failures = 0
            for c in cases {
                let text = try XCTUnwrap(c["text"] as? String)
                let ids = try XCTUnwrap(c["ids"] as? [Int])
                let label = "\(file): \(text.debugDescription)"
                let got = try tok.encode(text)
                if got != ids { failures += 1 }
                XCTAssertEqual(got, ids, label)
                XCTAssertEqual(try tok.encode(text, addSpecialTokens: false), try XCTUnwrap(c["ids_no_special"] as? [Int]), label)
                XCTAssertEqual(scalars(try tok.decode(ids)), scalars(try XCTUnwrap(c["decoded"] as? String)), label)
                XCTAssertEqual(scalars(try tok.decode(ids, skipSpecialTokens: false)),
                               scalars(try XCTUnwrap(c["decoded_with_special"] as? String)), label)
            }
            XCTAssertEqual(failures, 0, file)
        }
    }

    func testT5SpecialTokens() throws {
        let tok = try UnigramTokenizer(path: Fixtures.url("t5-unigram/tokenizer.json").path)
        XCTAssertEqual(tok.vocabularySize, 1000)
        XCTAssertEqual(tok.unknownTokenID, 2)
        XCTAssertEqual(tok.tokenID("</s>"), 1)
        XCTAssertEqual(tok.tokenID("<extra_id_0>"), 999)
        XCTAssertEqual(tok.tokenID("<extra_id_99>"), 900)
        XCTAssertTrue(tok.isSpecial(1))
        XCTAssertTrue(tok.isSpecial(950))
        XCTAssertEqual(tok.specialTokenCount, 1)
        XCTAssertEqual(try tok.encode("").last, 1)
        XCTAssertThrowsError(try tok.decode([5, 1000])) { e in
            XCTAssertEqual(e as? CausalError, .badTokenID(id: 1000, vocabularySize: 1000))
        }
    }

    // MARK: Hand-made vocabularies (values worked out by hand from the scores)

    func makeTokenizer(_ body: String) throws -> (UnigramTokenizer?, URL, Error?) {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("unigram-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: dir) }
        let url = dir.appendingPathComponent("tokenizer.json")
        try body.write(to: url, atomically: true, encoding: .utf8)
        do { return (try UnigramTokenizer(path: url.path), url, nil) } catch { return (nil, url, error) }
    }

    static let smallModel = #"""
    {"type": "Unigram", "unk_id": 0, "vocab": [["<unk>", 0.0], ["▁a", -1.0], ["b", -1.0], ["▁ab", -3.0], ["▁", -2.0],
     ["a", -1.0], ["c", -0.5], ["cc", -0.75]]}
    """#

    func small(model: String = smallModel, normalizer: String = "null",
               pre: String = #"{"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": true}"#,
               decoder: String = #"{"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always"}"#,
               post: String = "null", added: String = "[]") -> String {
        """
        {"version": "1.0", "added_tokens": \(added), "normalizer": \(normalizer), "pre_tokenizer": \(pre),
         "post_processor": \(post), "decoder": \(decoder), "model": \(model)}
        """
    }

    func testViterbiMaximizesTheScoreSum() throws {
        let (t, _, e) = try makeTokenizer(small())
        let tok = try XCTUnwrap(t, "\(String(describing: e))")
        // "▁ab": ▁a + b = -2 beats ▁ab = -3 and ▁ + a + b = -4.
        XCTAssertEqual(try tok.encode("ab"), [1, 2])
        // "cc" as one piece (-0.75) beats c + c (-1.0). "ccc": c + cc and cc + c tie at -1.25; the path found first
        // keeps the node (c + cc: from byte 1, cc reaches the end before c does from byte 2).
        XCTAssertEqual(try tok.encode("acc"), [1, 7])
        XCTAssertEqual(try tok.encode("accc"), [1, 6, 7])
        // Unknown characters (score min − 10 = −13 each) are fused into one <unk>.
        XCTAssertEqual(try tok.encode("axyzb"), [1, 0, 2])
        XCTAssertEqual(try tok.decode([1, 2, 4, 5]), "ab a")
    }

    func testPrependSchemesAndSplit() throws {
        let first = #"{"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": false}"#
        let added = #"[{"id": 8, "content": "<x>", "special": true, "normalized": false}]"#
        let (t, _, e) = try makeTokenizer(small(pre: first, added: added))
        let tok = try XCTUnwrap(t, "\(String(describing: e))")
        XCTAssertEqual(try tok.encode("ab<x>ab"), [1, 2, 8, 5, 2], "only the text at the start gets ▁")
        XCTAssertEqual(try tok.encode("<x>a"), [8, 5])
        let never = #"{"type": "Metaspace", "replacement": "▁", "add_prefix_space": false}"#
        let (t2, _, e2) = try makeTokenizer(small(pre: never))
        XCTAssertEqual(try XCTUnwrap(t2, "\(String(describing: e2))").encode("a b"), [5, 4, 2])
    }

    func testMissingUnknownIdNamesTheField() throws {
        let model = #"{"type": "Unigram", "vocab": [["▁", -1.0], ["a", -1.0]]}"#
        let (t, _, e) = try makeTokenizer(small(model: model))
        let tok = try XCTUnwrap(t, "\(String(describing: e))")
        XCTAssertEqual(try tok.encode("aa"), [0, 1, 1])
        XCTAssertThrowsError(try tok.encode("ab")) { e in
            XCTAssertTrue("\(e)".contains("model.unk_id"), "\(e)")
        }
    }

    func testMalformedFilesNameTheField() throws {
        let cases: [(String, String)] = [
            (small(model: #"{"type": "BPE", "vocab": {}}"#), "model.type"),
            (small(model: #"{"type": "Unigram", "unk_id": 0}"#), "model.vocab"),
            (small(model: #"{"type": "Unigram", "unk_id": 0, "vocab": [["a", "x"]]}"#), "model.vocab[0]"),
            (small(model: #"{"type": "Unigram", "unk_id": 0, "vocab": []}"#), "model.vocab"),
            (small(model: #"{"type": "Unigram", "unk_id": 5, "vocab": [["a", -1.0]]}"#), "model.unk_id"),
            (small(model: #"{"type": "Unigram", "unk_id": "0", "vocab": [["a", -1.0]]}"#), "model.unk_id"),
            (small(normalizer: #"{"type": "Precompiled", "precompiled_charsmap": "!!notbase64"}"#), "normalizer.precompiled_charsmap"),
            (small(normalizer: #"{"type": "Precompiled", "precompiled_charsmap": "AQAAAA=="}"#), "normalizer.precompiled_charsmap"),
            (small(normalizer: #"{"type": "Sequence", "normalizers": [{"type": "BertNormalizer"}]}"#), "normalizer.normalizers[0].type"),
            (small(normalizer: #"{"type": "Replace", "pattern": {"Regex": "("}, "content": "x"}"#), "normalizer.pattern.Regex"),
            (small(pre: #"{"type": "Metaspace", "replacement": "▁", "prepend_scheme": "sometimes"}"#), "pre_tokenizer.prepend_scheme"),
            (small(pre: #"{"type": "Metaspace", "replacement": "ab"}"#), "pre_tokenizer.replacement"),
            (small(pre: #"{"type": "ByteLevel"}"#), "pre_tokenizer.type"),
            (small(decoder: #"{"type": "WordPiece"}"#), "decoder.type"),
            (small(decoder: #"{"type": "Sequence", "decoders": [{"type": "Strip", "content": " ", "start": 1}]}"#), "decoder.decoders[0].stop"),
            (small(post: #"{"type": "TemplateProcessing", "single": [{"Sequence": {"id": "A"}}, {"SpecialToken": {"id": "</s>"}}], "special_tokens": {}}"#), "post_processor.special_tokens"),
            (small(post: #"{"type": "TemplateProcessing", "single": [{"Sequence": {"id": "A"}}, {"SpecialToken": {"id": "</s>"}}], "special_tokens": {"</s>": {"ids": [99]}}}"#), "post_processor.special_tokens.</s>"),
            (small(added: #"[{"id": 1, "content": "<s>", "special": true}]"#), "added_tokens[0]"),
            (small(added: #"[{"id": 20, "content": "<s>", "special": true}]"#), "added_tokens[0].id"),
            (small(added: #"[{"content": "<s>"}]"#), "added_tokens[0].id"),
            ("[1, 2]", "JSON"),
        ]
        for (body, field) in cases {
            let (t, url, e) = try makeTokenizer(body)
            XCTAssertNil(t, field)
            let message = "\(e.map { "\($0)" } ?? "no error")"
            XCTAssertTrue(message.contains(url.path) && message.contains(field + ":"), "expected '\(field)' in: \(message)")
        }
    }
}
