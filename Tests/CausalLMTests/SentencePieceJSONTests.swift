import Foundation
import XCTest
import CausalLM

/// SentencePiece-style BPE from tokenizer.json (byte_fallback, "▁" for spaces): the small vocabularies of
/// Tests/Fixtures/tokenizers/spm-*.tokenizer.json under Gemma's, Llama 2's and the Metaspace pipelines, checked id for
/// id and text for text against the `tokenizers` library (spm_cases.json, made by
/// Tests/Fixtures/gen/make_spm_bpe_json.py) on the 395 texts of the family corpus plus a few added-token ones.
final class SentencePieceJSONTests: XCTestCase {
    private struct Fixture: Decodable {
        struct Case: Decodable {
            let text: String
            let ids: [Int]
            let decoded: String
            let decoded_skip: String
        }
        struct Model: Decodable {
            let file: String
            let cases: [Case]
        }
        let models: [String: Model]
    }

    private static let fixture: Fixture = {
        try! JSONDecoder().decode(Fixture.self, from: try! Fixtures.data("tokenizers/spm_cases.json"))
    }()

    private func check(_ name: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let model = try XCTUnwrap(Self.fixture.models[name], file: file, line: line)
        XCTAssertGreaterThanOrEqual(model.cases.count, 300, file: file, line: line)
        let tok = try makeBPETokenizer(tokenizerJSON: Fixtures.url("tokenizers/\(model.file)").path)
        XCTAssertTrue(tok is SentencePieceJSONTokenizer, file: file, line: line)
        try Self.compare(tok, model.cases.map { ($0.text, $0.ids, $0.decoded, $0.decoded_skip) }, name, file: file, line: line)
    }

    /// Encodes and decodes every case; returns the number of texts that matched.
    @discardableResult
    static func compare(_ tok: any TextTokenizer, _ cases: [(String, [Int], String, String?)], _ name: String,
                        file: StaticString = #filePath, line: UInt = #line) throws -> Int {
        var ok = 0, fallback = 0
        let bos = tok.bosTokenID
        for (k, (text, expected, decoded, decodedSkip)) in cases.enumerated() {
            let ids = try tok.encode(text)
            guard ids == expected else {
                XCTFail("\(name) case \(k) \(text.debugDescription): got \(ids), expected \(expected)", file: file, line: line)
                continue
            }
            if ids.contains(where: { tok.tokenString($0).map { $0.count == 6 && $0.hasPrefix("<0x") } ?? false }) { fallback += 1 }
            var body = ids
            if let b = bos, body.first == b { body.removeFirst() }
            XCTAssertEqual(try tok.encode(text, addingSpecialTokens: false), body, "\(name) case \(k)", file: file, line: line)
            let text1 = try tok.decode(ids, skipSpecial: false)
            XCTAssertEqual(Array(text1.utf8), Array(decoded.utf8), "\(name) case \(k) \(text.debugDescription): decode \(text1.debugDescription)", file: file, line: line)
            if let decodedSkip {
                let text2 = try tok.decode(ids, skipSpecial: true)
                XCTAssertEqual(Array(text2.utf8), Array(decodedSkip.utf8), "\(name) case \(k) \(text.debugDescription): decode skipping specials \(text2.debugDescription)", file: file, line: line)
            }
            var d = tok.makeStreamingDecoder(skipSpecial: false)
            var streamed = ""
            for id in ids { streamed += try d.push(id) }
            streamed += d.flush()
            XCTAssertEqual(Array(streamed.utf8), Array(text1.utf8), "\(name) case \(k): streaming decode", file: file, line: line)
            ok += 1
        }
        print("\(name): \(ok)/\(cases.count) texts equal tokenizers' ids and decoding (\(fallback) use byte fallback)")
        return ok
    }

    func testGemmaPipelineEqualsTokenizers() throws { try check("spm-gemma") }
    func testLlama2PipelineEqualsTokenizers() throws { try check("spm-llama2") }
    func testMetaspacePipelineEqualsTokenizers() throws { try check("spm-metaspace") }
    func testMetaspaceSplitPipelineEqualsTokenizers() throws { try check("spm-metaspace-split") }

    func testSpecialTokensAndEndOfGeneration() throws {
        let tok = try XCTUnwrap(try makeBPETokenizer(tokenizerJSON: Fixtures.url("tokenizers/spm-gemma.tokenizer.json").path)
            as? SentencePieceJSONTokenizer)
        let sot = try XCTUnwrap(tok.tokenID("<start_of_turn>")), eot = try XCTUnwrap(tok.tokenID("<end_of_turn>"))
        let br = try XCTUnwrap(tok.tokenID("<br>"))
        XCTAssertTrue(tok.isSpecial(eot))
        XCTAssertFalse(tok.isSpecial(br))
        // <end_of_turn> and </s> (special added tokens whose text is an end marker) stop generation; <br> does not.
        XCTAssertEqual(endOfGenerationIDs(tokenizer: tok), [eot, 2])
        // Without special-token parsing only the non-special added tokens are matched.
        let plain = tok.encode("<start_of_turn>a<br>", parseSpecial: false)
        XCTAssertFalse(plain.contains(sot))
        XCTAssertTrue(plain.contains(br))
        XCTAssertEqual(tok.encode("<start_of_turn>a<br>").prefix(2), [1, sot])
        // Generated text leaves the markers out.
        var d = tok.makeGenerationDecoder()
        var text = ""
        for id in tok.encode("<start_of_turn>model\nHi<end_of_turn>") { text += try d.push(id) }
        XCTAssertEqual(text + d.flush(), "model\nHi")
    }

    /// A Llama-3-style directory (byte-level tokenizer.json with <|eot_id|> and <|eom_id|> as special added tokens):
    /// both end a turn, as the GGUF path does.
    func testLlama3TokenizerJSONEndOfGeneration() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("causal-llama3-eog-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let json = """
            {"added_tokens": [{"id": 4, "content": "<|begin_of_text|>", "special": true}, {"id": 5, "content": "<|end_of_text|>", "special": true},
              {"id": 6, "content": "<|eot_id|>", "special": true}, {"id": 7, "content": "<|eom_id|>", "special": true},
              {"id": 8, "content": "<|start_header_id|>", "special": true}],
             "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false},
             "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2, "Ġ": 3}, "merges": ["a b"]}}
            """
        let path = dir.appendingPathComponent("tokenizer.json").path
        try json.write(toFile: path, atomically: true, encoding: .utf8)
        try #"{"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}"#.write(
            toFile: dir.appendingPathComponent("tokenizer_config.json").path, atomically: true, encoding: .utf8)
        let tok = try makeBPETokenizer(tokenizerJSON: path)
        XCTAssertTrue(tok is ByteLevelBPETokenizer)
        XCTAssertEqual(tok.eosTokenID, 6)
        XCTAssertEqual(endOfGenerationIDs(tokenizer: tok, eos: [5]), [5, 6, 7])
    }

    /// What the engine cannot run is refused naming the field.
    func testUnsupportedFieldsAreNamed() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("causal-spm-json-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let text = String(decoding: try Fixtures.data("tokenizers/spm-llama2.tokenizer.json"), as: UTF8.self)
        func expect(_ from: String, _ to: String, field: String, line: UInt = #line) throws {
            XCTAssertTrue(text.contains(from), "fixture lacks \(from)", line: line)
            let path = dir.appendingPathComponent("t\(line).json").path
            try text.replacingOccurrences(of: from, with: to).write(toFile: path, atomically: true, encoding: .utf8)
            XCTAssertThrowsError(try makeBPETokenizer(tokenizerJSON: path), line: line) { error in
                guard case let CausalError.badFormat(p, f, _) = error else { return XCTFail("\(error)", line: line) }
                XCTAssertEqual(p, path, line: line)
                XCTAssertEqual(f, field, "\(error)", line: line)
            }
        }
        try expect(#""dropout":null"#, #""dropout":0.1"#, field: "model.dropout")
        try expect(#""merges":["#, ##""merges":["notapiece x","##, field: "model.merges[0]")
        try expect(#"{"type":"Prepend","prepend":"▁"}"#, #"{"type":"Lowercase"}"#, field: "normalizer.normalizers[0].type")
        try expect(#""pattern":{"String":" "},"content":"▁""#, #""pattern":{"Regex":" +"},"content":"▁""#, field: "normalizer.normalizers[1].pattern")
        try expect(#""pre_tokenizer":null"#, #""pre_tokenizer":{"type":"Whitespace"}"#, field: "pre_tokenizer.type")
        try expect(#"{"type":"ByteFallback"}"#, #"{"type":"WordPiece"}"#, field: "decoder.decoders[1].type")
        try expect(#""lstrip":false"#, #""lstrip":true"#, field: "added_tokens[0].lstrip")
        try expect(#""merges":["#, #""merges":["notapiece x","#, field: "model.merges[0]")
        // The byte-level reader, given this file directly, points at the right one.
        XCTAssertThrowsError(try ByteLevelBPETokenizer(tokenizerJSON: Fixtures.url("tokenizers/spm-llama2.tokenizer.json").path)) { error in
            XCTAssertTrue("\(error)".contains("model.byte_fallback"), "\(error)")
        }
    }

    /// The real Gemma 3 vocabulary as transformers saves it from gemma-3-270m.gguf (262,144 pieces, 514,906 merges,
    /// 33 MB: not committed). Runs when CAUSAL_GEMMA_TOKENIZER_JSON names a directory made by
    /// Tests/Fixtures/gen/make_gemma_tokenizer_json.py (tokenizer.json + reference.json); see
    /// Tests/Fixtures/tokenizers/README.md for the numbers.
    func testGemma3TokenizerJSONEqualsTokenizers() throws {
        guard let dir = ProcessInfo.processInfo.environment["CAUSAL_GEMMA_TOKENIZER_JSON"] else {
            throw XCTSkip("set CAUSAL_GEMMA_TOKENIZER_JSON to a directory made by make_gemma_tokenizer_json.py")
        }
        let start = Date()
        let tok = try makeBPETokenizer(tokenizerJSON: dir + "/tokenizer.json")
        let loaded = Date().timeIntervalSince(start)
        XCTAssertTrue(tok is SentencePieceJSONTokenizer)
        XCTAssertEqual(tok.vocabularySize, 262_144)
        // Read with the engine's JSON parser: Foundation's JSONSerialization on Linux drops U+FEFF inside strings (case
        // 10 of the corpus is a lone BOM, which Gemma's vocabulary has a piece for).
        let ref = try XCTUnwrap(HFJSON.parse(contentsOf: dir + "/reference.json").arrayValue)
        let cases = try ref.map { c in
            (try XCTUnwrap(c["text"]?.stringValue), try XCTUnwrap(c["ids"]?.arrayValue).map { $0.intValue! },
             try XCTUnwrap(c["decoded"]?.stringValue), c["decoded_skip"]?.stringValue)
        }
        let t0 = Date()
        let ok = try Self.compare(tok, cases, "gemma3 tokenizer.json")
        print(String(format: "gemma3 tokenizer.json: loaded in %.2f s, %d texts compared in %.2f s", loaded, cases.count, Date().timeIntervalSince(t0)))
        XCTAssertEqual(ok, cases.count)
        XCTAssertEqual(endOfGenerationIDs(tokenizer: tok), [1, 106])
    }
}
