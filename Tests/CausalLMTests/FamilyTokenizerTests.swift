import Foundation
import XCTest
import CausalLM

/// Reference cases of Tests/Fixtures/tokenizers/cases.json (see make_fixtures.py there and the fixtures README).
private struct FamilyCases: Decodable {
    struct Case: Decodable {
        let text: String
        let ids: [Int]
        let hf_ids: [Int]?
        let decoded: String
    }
    struct Model: Decodable {
        let source: String
        let reference: String
        let fixture: String
        let pre: String?
        let cases: [Case]
    }
    let llama_cpp: [String]?
    let models: [String: Model]
}

/// Tokenizers of today's families from tokenizer-only GGUFs (the vocabularies of SmolLM2-135M-Instruct,
/// Qwen2.5-Coder-0.5B-Instruct and Gemma-3-270m), checked id for id against llama.cpp's `llama-tokenize` on the same
/// files (and against transformers where it agrees; disagreements are kept in the fixture).
final class FamilyTokenizerTests: XCTestCase {
    private static let fixtures: FamilyCases = {
        let data = try! Fixtures.data("tokenizers/cases.json")
        return try! JSONDecoder().decode(FamilyCases.self, from: data)
    }()

    private static func gguf(_ name: String) throws -> GGUFFile {
        try GGUFFile(path: Fixtures.url("tokenizers/\(name).tokenizer.gguf").path)
    }

    /// The tokenizer a fixture model runs: its GGUF's own, or the same vocabulary with another pre-tokenizer rule.
    private static func tokenizer(_ model: FamilyCases.Model) throws -> any TextTokenizer {
        let g = try gguf(model.fixture)
        guard let pre = model.pre else { return try makeTokenizer(gguf: g) }
        func id(_ key: String) throws -> Int? { g.has(key) ? try g.int(key) : nil }
        return try ByteLevelBPETokenizer(tokens: g.stringArray("tokenizer.ggml.tokens"), tokenTypes: g.intArray("tokenizer.ggml.token_type"),
                                         merges: g.stringArray("tokenizer.ggml.merges"), preTokenizer: pre,
                                         bosTokenID: id("tokenizer.ggml.bos_token_id"), eosTokenID: id("tokenizer.ggml.eos_token_id"),
                                         padTokenID: id("tokenizer.ggml.padding_token_id"), unknownTokenID: id("tokenizer.ggml.unknown_token_id"),
                                         addBOS: g.has("tokenizer.ggml.add_bos_token") ? try g.bool("tokenizer.ggml.add_bos_token") : false)
    }

    /// Texts where this engine follows transformers, not llama.cpp. llama.cpp marks every token whose text is on its
    /// end-of-generation list as a control token, so Qwen2.5's ordinary vocabulary entry "</s>" (id 128247, which
    /// BPE never produces: the merges give "</", "s", ">") becomes a special token matched whole in any text; the
    /// vocabulary's own token types (and transformers) say it is normal text.
    private static let followsTransformers: [String: Set<String>] = [
        "qwen25coder": ["</s>", "<s>hi</s>"],
        "qwen25coder-llama-bpe": ["</s>", "<s>hi</s>"],
        "qwen25coder-default": ["</s>", "<s>hi</s>"],
    ]

    private func check(_ name: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let model = try XCTUnwrap(Self.fixtures.models[name], "no fixture model \(name)", file: file, line: line)
        XCTAssertGreaterThanOrEqual(model.cases.count, 300, file: file, line: line)
        let tok = try Self.tokenizer(model)
        let addsBOS = try tok.bosTokenID != nil && tok.encode("") == [tok.bosTokenID!]
        var mismatches = 0
        let exceptions = Self.followsTransformers[name] ?? []
        for (k, c) in model.cases.enumerated() {
            let ids = try tok.encode(c.text)
            let expected = exceptions.contains(c.text) ? try XCTUnwrap(c.hf_ids, "\(name): \(c.text) has no disagreement", file: file, line: line) : c.ids
            if ids != expected {
                mismatches += 1
                XCTFail("\(name) case \(k) \(c.text.debugDescription): got \(ids), expected \(expected) (\(model.reference): \(c.ids), transformers: \(c.hf_ids ?? c.ids))", file: file, line: line)
                continue
            }
            // decode(encode(s)): transformers' decoding of the same ids (less the BOS the tokenizer added).
            let body = addsBOS ? Array(ids.dropFirst()) : ids
            let decoded = try tok.decode(body, skipSpecial: false)
            if expected == c.ids {
                XCTAssertEqual(Array(decoded.utf8), Array(c.decoded.utf8), "\(name) case \(k) \(c.text.debugDescription): decode", file: file, line: line)
            }
            if c.decoded == c.text { XCTAssertEqual(decoded, c.text, file: file, line: line) }
            var d = tok.makeStreamingDecoder(skipSpecial: false)
            var streamed = ""
            for id in body { streamed += try d.push(id) }
            streamed += d.flush()
            XCTAssertEqual(Array(streamed.utf8), Array(decoded.utf8), "\(name) case \(k): streaming decode", file: file, line: line)
        }
        let disagreements = model.cases.filter { $0.hf_ids != nil }.count
        print("\(name): \(model.cases.count - mismatches)/\(model.cases.count) texts as expected (\(model.reference), \(exceptions.count) " +
              "following transformers); transformers disagrees with \(model.reference) on \(disagreements)")
    }

    func testSmolLM2EqualsReference() throws { try check("smollm2") }
    func testQwen25EqualsReference() throws { try check("qwen25coder") }
    func testGemma3EqualsReference() throws { try check("gemma3") }
    func testLlama3PreTokenizerEqualsReference() throws { try check("qwen25coder-llama-bpe") }
    func testDefaultPreTokenizerEqualsReference() throws { try check("qwen25coder-default") }

    // MARK: End of generation

    func testEndOfGenerationSets() throws {
        // SmolLM2: <|endoftext|> (0) and <|im_end|> (2, the EOS).
        XCTAssertEqual(try endOfGenerationIDs(gguf: Self.gguf("smollm2")), [0, 2])
        // Qwen2.5: <|endoftext|> (151643) and <|im_end|> (151645, the EOS).
        XCTAssertEqual(try endOfGenerationIDs(gguf: Self.gguf("qwen25coder")), [151643, 151645])
        // Gemma 3: <eos> (1) and <end_of_turn> (106); its </s> (212) is a user-defined HTML tag, not an end.
        let gemma = try endOfGenerationIDs(gguf: Self.gguf("gemma3"))
        XCTAssertEqual(gemma, [1, 106])
        let tok = try makeTokenizer(gguf: Self.gguf("gemma3"))
        XCTAssertEqual(tok.tokenID("</s>"), 212)
        XCTAssertEqual(endOfGenerationIDs(tokenizer: tok), [1, 106])
        XCTAssertEqual(endOfGenerationIDs(tokenizer: try makeTokenizer(gguf: Self.gguf("qwen25coder"))), [151643, 151645])
    }

    func testEndOfGenerationKeysAndMarkers() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("causal-eog-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        // A Llama-3-like vocabulary: eot/eom keys, control markers, and a marker text that is a normal token.
        let tokens = ["a", "b", "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|eom_id|>", "<eos>", "</s>", "<|im_end|>"]
        let types: [Int32] = [1, 1, 3, 3, 3, 3, 3, 1, 4]
        func write(_ name: String, _ extra: [(String, GGUFWriter.Value)]) throws -> GGUFFile {
            var w = GGUFWriter()
            w.metadata = [("tokenizer.ggml.model", .string("gpt2")), ("tokenizer.ggml.tokens", .strings(tokens)),
                          ("tokenizer.ggml.token_type", .i32s(types))] + extra
            let path = dir.appendingPathComponent(name).path
            try w.write(to: path)
            return try GGUFFile(path: path)
        }
        // Markers alone: the control ones (3 end_of_text, 4 eot, 5 eom, 6 eos); "</s>" (normal) and "<|im_end|>"
        // (user-defined) are not control tokens.
        XCTAssertEqual(try endOfGenerationIDs(gguf: write("markers.gguf", [])), [3, 4, 5, 6])
        // Keys add their ids whatever the token.
        XCTAssertEqual(try endOfGenerationIDs(gguf: write("keys.gguf", [("tokenizer.ggml.eos_token_id", .u32(1)),
                                                                         ("tokenizer.ggml.eot_token_id", .u32(7)),
                                                                         ("tokenizer.ggml.eom_token_id", .u32(0))])),
                       [0, 1, 3, 4, 5, 6, 7])
        XCTAssertThrowsError(try endOfGenerationIDs(gguf: write("bad.gguf", [("tokenizer.ggml.eot_token_id", .u32(9))]))) { error in
            guard case let .badFormat(_, field, reason)? = error as? CausalError else { return XCTFail("\(error)") }
            XCTAssertEqual(field, "tokenizer.ggml.eot_token_id")
            XCTAssertTrue(reason.contains("9"), reason)
        }
    }

    // MARK: Special tokens in generated text

    func testControlTokensHiddenWhenSkipped() throws {
        let q = try makeTokenizer(gguf: Self.gguf("qwen25coder"))
        let ids = try q.encode("<|im_start|>assistant\nHi<|im_end|><|endoftext|><tool_call>")
        XCTAssertEqual(try q.decode(ids, skipSpecial: true), "assistant\nHi<tool_call>")   // <tool_call> is user-defined
        let g = try makeTokenizer(gguf: Self.gguf("gemma3"))
        let gi = try g.encode("<start_of_turn>model\nHi <b>x</b><end_of_turn>")
        XCTAssertEqual(gi.first, 2)
        XCTAssertEqual(try g.decode(gi, skipSpecial: true), "model\nHi <b>x</b>")
        var d = g.makeStreamingDecoder(skipSpecial: true)
        var s = ""
        for id in gi { s += try d.push(id) }
        XCTAssertEqual(s + d.flush(), "model\nHi <b>x</b>")
    }

    // MARK: SentencePiece BPE details

    func testGemmaSpecialsAndByteFallback() throws {
        let tok = try XCTUnwrap(try makeTokenizer(gguf: Self.gguf("gemma3")) as? SentencePieceBPETokenizer)
        XCTAssertEqual(tok.vocabularySize, 262_144)
        XCTAssertTrue(tok.addBOS)
        XCTAssertFalse(tok.addSpacePrefix)
        XCTAssertEqual(tok.bosTokenID, 2)
        XCTAssertEqual(tok.eosTokenID, 1)
        // Control text is a token only when special text is parsed; user-defined tokens ("\n\n", "<b>") always.
        XCTAssertEqual(tok.encode("<end_of_turn>\n\n<b>", parseSpecial: true), [2, 106, 108, 200])
        let plain = tok.encode("<end_of_turn>\n\n<b>", parseSpecial: false)
        XCTAssertFalse(plain.contains(106))
        XCTAssertEqual(Array(plain.suffix(2)), [108, 200])
        XCTAssertEqual(try tok.decode(plain, skipSpecial: false), "<bos><end_of_turn>\n\n<b>")
        // U+F0000 (supplementary private use) is not in the vocabulary: its four UTF-8 bytes become byte pieces.
        let pua = tok.encode("\u{F0000}", parseSpecial: true)
        XCTAssertEqual(pua.dropFirst().map { tok.tokenString($0)! }, ["<0xF3>", "<0xB0>", "<0x80>", "<0x80>"])
        XCTAssertEqual(try tok.decode(Array(pua.dropFirst()), skipSpecial: false), "\u{F0000}")
        // A lone byte piece of an incomplete character decodes to U+FFFD, as Hugging Face's ByteFallback.
        XCTAssertEqual(try tok.decode([pua[1]], skipSpecial: false), "\u{FFFD}")
        XCTAssertEqual(try tok.decode([pua[1], tok.tokenID("a")!], skipSpecial: false), "\u{FFFD}a")
    }

    func testSentencePieceMergesByScoreAndSpacePrefix() throws {
        // Pieces: bytes, "▁", "a", "b", "c", "ab" (score -2), "bc" (-1), "abc" (-3), "▁a" (-4).
        var tokens = (0..<256).map { String(format: "<0x%02X>", $0) }
        var types = [Int](repeating: 6, count: 256)
        var scores = [Float](repeating: 0, count: 256)
        for (t, s) in [("<s>", 0), ("</s>", 0), ("▁", -5), ("a", -6), ("b", -7), ("c", -8), ("ab", -2), ("bc", -1), ("abc", -3), ("▁a", -4)] as [(String, Float)] {
            tokens.append(t)
            types.append(t.hasPrefix("<") ? 3 : 1)
            scores.append(s)
        }
        let id = { (t: String) in tokens.firstIndex(of: t)! }
        let t = try SentencePieceBPETokenizer(tokens: tokens, scores: scores, tokenTypes: types, bosTokenID: id("<s>"),
                                              eosTokenID: id("</s>"), padTokenID: nil, unknownTokenID: nil, addBOS: false,
                                              addSpacePrefix: true)
        // "▁abc": "bc" (-1) beats "ab" (-2), then "a" + "bc" = "abc" (-3) beats "▁a" (-4).
        XCTAssertEqual(t.encode("abc"), [id("▁"), id("abc")])
        XCTAssertEqual(t.encode("abca"), [id("▁"), id("abc"), id("a")])
        XCTAssertEqual(t.encode("ab"), [id("▁"), id("ab")])          // "ab" (-2) before "▁a" (-4)
        XCTAssertEqual(t.encode("a b"), [id("▁a"), id("▁"), id("b")])
        XCTAssertEqual(try t.decode(t.encode("a b"), skipSpecial: false), "a b")   // the prefix space is dropped again
        // "é" is no piece: its UTF-8 bytes.
        XCTAssertEqual(t.encode("é"), [id("▁"), 0xC3, 0xA9])
        XCTAssertEqual(try t.decode(t.encode("é"), skipSpecial: false), "é")
        // Control text splits the stretches, and each stretch gets its prefix space (llama.cpp).
        XCTAssertEqual(t.encode("a</s>a"), [id("▁a"), id("</s>"), id("▁a")])
        XCTAssertThrowsError(try SentencePieceBPETokenizer(tokens: tokens, scores: [1], tokenTypes: types, bosTokenID: nil, eosTokenID: nil,
                                                           padTokenID: nil, unknownTokenID: nil, addBOS: false, addSpacePrefix: false)) { error in
            guard case let .badConfig(key, _)? = error as? CausalError else { return XCTFail("\(error)") }
            XCTAssertEqual(key, "tokenizer.ggml.scores")
        }
    }

    // MARK: Pre-tokenizers

    func testPreTokenizerPieces() throws {
        func pieces(_ pre: String, _ text: String) throws -> [String] {
            let bytes = Self.byteAlphabet
            let t = try ByteLevelBPETokenizer(tokens: bytes, tokenTypes: bytes.map { _ in 1 }, merges: [], preTokenizer: pre,
                                              bosTokenID: nil, eosTokenID: nil, padTokenID: nil, unknownTokenID: nil, addBOS: false)
            return t.preTokenizedPieces(text)
        }
        let text = "I'M 12345 (word)  \t\n\n  x+=1;\n"
        XCTAssertEqual(try pieces("llama-bpe", text), ["I", "'M", " ", "123", "45", " (", "word", ")", "  \t\n\n", " ", " x", "+=", "1", ";\n"])
        XCTAssertEqual(try pieces("qwen2", text), ["I", "'M", " ", "1", "2", "3", "4", "5", " (", "word", ")", "  \t\n\n", " ", " x", "+=", "1", ";\n"])
        XCTAssertEqual(try pieces("gpt2", text), ["I", "'", "M", " 12345", " (", "word", ")", "  \t\n\n ", " x", "+=", "1", ";", "\n"])
        XCTAssertEqual(try pieces("smollm", "a 12"), ["a", " ", "1", "2"])
        // llama.cpp's `default`: punctuation runs, then GPT-2's expression, numeral runs, ASCII digits in threes.
        XCTAssertEqual(try pieces("default", "Hi, it's 1234567 (x)`y`"), ["Hi", ",", " it", "'", "s", " ", "123", "456", "7", " ", "(", "x", ")", "`", "y", "`"])
    }

    /// GPT-2's byte alphabet: printable Latin-1 bytes stand for themselves, the other 68 for U+0100 on.
    private static let byteAlphabet: [String] = {
        var out: [String] = []
        var next: UInt32 = 256
        for b in 0..<256 {
            if (0x21...0x7E).contains(b) || (0xA1...0xAC).contains(b) || (0xAE...0xFF).contains(b) {
                out.append(String(Unicode.Scalar(UInt32(b))!))
            } else {
                out.append(String(Unicode.Scalar(next)!))
                next += 1
            }
        }
        return out
    }()

    func testTokenizerJSONSplitPatterns() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("causal-split-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let qwen2 = #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#
        let llama3 = qwen2.replacingOccurrences(of: #"\p{N}|"#, with: #"\p{N}{1,3}|"#)
        func write(_ pattern: String, ignoreMerges: Bool, useRegex: Bool = false) throws -> String {
            let vocab = Dictionary(uniqueKeysWithValues: Self.byteAlphabet.enumerated().map { ($1, $0) })
            let json: [String: Any] = [
                "model": ["type": "BPE", "vocab": vocab, "merges": [String](), "ignore_merges": ignoreMerges],
                "pre_tokenizer": ["type": "Sequence", "pretokenizers": [
                    ["type": "Split", "pattern": ["Regex": pattern], "behavior": "Isolated", "invert": false],
                    ["type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": useRegex],
                ]],
            ]
            let path = dir.appendingPathComponent("tokenizer-\(UUID().uuidString).json").path
            try JSONSerialization.data(withJSONObject: json).write(to: URL(fileURLWithPath: path))
            return path
        }
        let text = "I'M 12345 (word)  \t\n\n  x+=1;\n"
        let q = try ByteLevelBPETokenizer(tokenizerJSON: write(qwen2, ignoreMerges: false))
        XCTAssertEqual(q.preTokenizerName, "qwen2")
        XCTAssertEqual(q.preTokenizedPieces(text), ["I", "'M", " ", "1", "2", "3", "4", "5", " (", "word", ")", "  \t\n\n", " ", " x", "+=", "1", ";\n"])
        let l = try ByteLevelBPETokenizer(tokenizerJSON: write(llama3, ignoreMerges: true))
        XCTAssertEqual(l.preTokenizerName, "llama-bpe")
        XCTAssertEqual(l.preTokenizedPieces(text), ["I", "'M", " ", "123", "45", " (", "word", ")", "  \t\n\n", " ", " x", "+=", "1", ";\n"])
        func expectError(_ path: String, field: String, line: UInt = #line) {
            XCTAssertThrowsError(try ByteLevelBPETokenizer(tokenizerJSON: path), line: line) { error in
                guard case let .badFormat(p, f, _)? = error as? CausalError else { return XCTFail("\(error)", line: line) }
                XCTAssertEqual(p, path, line: line)
                XCTAssertEqual(f, field, line: line)
            }
        }
        expectError(try write(llama3, ignoreMerges: false), field: "model.ignore_merges")
        expectError(try write(qwen2, ignoreMerges: false, useRegex: true), field: "pre_tokenizer.pretokenizers[1].use_regex")
        expectError(try write(#"\p{L}+"#, ignoreMerges: false), field: "pre_tokenizer.pretokenizers[0].pattern")
    }

    func testUnknownPreTokenizerIsAnErrorNamingIt() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("causal-pre-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        var w = GGUFWriter()
        w.metadata = [("tokenizer.ggml.model", .string("gpt2")), ("tokenizer.ggml.pre", .string("jais-2")),
                      ("tokenizer.ggml.tokens", .strings(["a", "b"])), ("tokenizer.ggml.merges", .strings([]))]
        let path = dir.appendingPathComponent("pre.gguf").path
        try w.write(to: path)
        XCTAssertThrowsError(try makeTokenizer(gguf: GGUFFile(path: path))) { error in
            guard case let .badFormat(p, field, reason)? = error as? CausalError else { return XCTFail("\(error)") }
            XCTAssertEqual(p, path)
            XCTAssertEqual(field, "tokenizer.ggml.pre")
            XCTAssertTrue(reason.contains("'jais-2'"), reason)
        }
        var u = GGUFWriter()
        u.metadata = [("tokenizer.ggml.model", .string("rwkv")), ("tokenizer.ggml.tokens", .strings(["a"]))]
        let upath = dir.appendingPathComponent("model.gguf").path
        try u.write(to: upath)
        XCTAssertThrowsError(try makeTokenizer(gguf: GGUFFile(path: upath))) { error in
            guard case let .badFormat(_, field, reason)? = error as? CausalError else { return XCTFail("\(error)") }
            XCTAssertEqual(field, "tokenizer.ggml.model")
            XCTAssertTrue(reason.contains("'rwkv'"), reason)
        }
    }

    // MARK: Speed

    func testLoadAndEncodeSpeed() throws {
        func seconds(_ body: () throws -> Void) rethrows -> Double {
            let t0 = DispatchTime.now().uptimeNanoseconds
            try body()
            return Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
        }
        var report: [String] = []
        for name in ["gemma3", "qwen25coder", "smollm2"] {
            var tok: (any TextTokenizer)?
            var load = Double.infinity
            for _ in 0..<2 { load = min(load, try seconds { tok = try makeTokenizer(gguf: Self.gguf(name)) }) }
            let t = try XCTUnwrap(tok)
            let text = Self.fixtures.models[name]!.cases.map(\.text).joined(separator: " ")
            var ids: [Int] = []
            var encode = Double.infinity
            for _ in 0..<3 { encode = min(encode, try seconds { ids = try t.encode(text) }) }
            report.append(String(format: "%@ load %.0f ms, encode %d scalars → %d ids %.1f ms", name, load * 1e3,
                                 text.unicodeScalars.count, ids.count, encode * 1e3))
            XCTAssertLessThan(load, 5, "\(name): loading the tokenizer took \(load) s")
        }
        print("tokenizer timings: " + report.joined(separator: "; "))
    }
}
