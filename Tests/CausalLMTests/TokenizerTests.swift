import Foundation
import XCTest
import CausalLM

/// One reference case from Tests/Fixtures/smollm2/tokenizer.json or tokenizer_more.json: ids from the `tokenizers`
/// library with SmolLM2's pipeline (see the fixtures README; where transformers' GGUF loader differs, its ids are
/// kept in the file as `hf_gguf_ids` and not used here).
private struct TokenizerCase: Decodable {
    let text: String
    let ids: [Int]
    let decoded: String
}

/// Deterministic random numbers (SplitMix64) for the property tests.
private struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// GPT-2's byte → printable scalar map, rebuilt here to make small vocabularies.
private let gpt2ByteScalars: [Unicode.Scalar] = {
    var out: [Unicode.Scalar] = []
    var next: UInt32 = 256
    for b in 0..<256 {
        if (0x21...0x7E).contains(b) || (0xA1...0xAC).contains(b) || (0xAE...0xFF).contains(b) {
            out.append(Unicode.Scalar(UInt32(b))!)
        } else {
            out.append(Unicode.Scalar(next)!)
            next += 1
        }
    }
    return out
}()

final class TokenizerTests: XCTestCase {
    static let tokenizer: ByteLevelBPETokenizer = {
        do { return try ByteLevelBPETokenizer(gguf: TestModel.gguf) } catch { fatalError("cannot build the tokenizer: \(error)") }
    }()

    private static let cases: [TokenizerCase] = {
        do { return try JSONDecoder().decode([TokenizerCase].self, from: Fixtures.data("smollm2/tokenizer.json")) } catch {
            fatalError("cannot read smollm2/tokenizer.json: \(error)")
        }
    }()

    private var tok: ByteLevelBPETokenizer { Self.tokenizer }

    /// A tiny tokenizer: the 256 byte tokens, then `extra` tokens, with `merges`.
    private func tinyTokenizer(extra: [String], merges: [String], special: [String] = [], pre: String = "gpt2") throws -> ByteLevelBPETokenizer {
        let tokens = special + gpt2ByteScalars.map { String($0) } + extra
        let types = special.map { _ in 3 } + [Int](repeating: 1, count: 256 + extra.count)
        return try ByteLevelBPETokenizer(tokens: tokens, tokenTypes: types, merges: merges, preTokenizer: pre,
                                         bosTokenID: nil, eosTokenID: nil, padTokenID: nil, unknownTokenID: nil, addBOS: false)
    }

    // MARK: Reference cases

    func testFixtureHasCases() {
        XCTAssertEqual(Self.cases.count, 40)
    }

    func testEncodeMatchesReferenceIDs() {
        var failures: [String] = []
        for c in Self.cases {
            let got = tok.encode(c.text)
            if got != c.ids {
                failures.append("\(c.text.debugDescription):\n  got  \(got)\n  want \(c.ids)")
            }
        }
        XCTAssert(failures.isEmpty, "\(failures.count) of \(Self.cases.count) cases differ:\n" + failures.joined(separator: "\n"))
    }

    /// Edge cases from Tests/Fixtures/smollm2/tokenizer_more.json: the `tokenizers` library built from this GGUF's
    /// vocabulary and merges with SmolLM2's pipeline (Digits(individual_digits) + ByteLevel, control tokens as special
    /// added tokens; Tests/Fixtures/gen/make_smollm2_refs.py): contraction edge cases, Unicode whitespace (NBSP, NEL,
    /// U+2028), combining marks, non-ASCII numerals, partial special tokens, and bytes missing from the vocabulary
    /// (0xF1, first byte of U+59BD3, is dropped).
    func testMoreReferenceCases() throws {
        let cases = try JSONDecoder().decode([TokenizerCase].self, from: Fixtures.data("smollm2/tokenizer_more.json"))
        XCTAssertEqual(cases.count, 18)
        for c in cases {
            XCTAssertEqual(tok.encode(c.text), c.ids, c.text.debugDescription)
            XCTAssertEqual(Array(try tok.decode(c.ids).unicodeScalars), Array(c.decoded.unicodeScalars), c.text.debugDescription)
        }
    }

    func testSmolLMRuleSplitsNumerals() throws {
        // With the plain GPT-2 rule " 12" is one pre-token (so "Ġ 1" can merge); with smollm it is " ", "1", "2".
        let extra = ["Ġ1", "12"]
        let merges = ["Ġ 1", "1 2"]
        let gpt2 = try tinyTokenizer(extra: extra, merges: merges, pre: "gpt2")
        let smollm = try tinyTokenizer(extra: extra, merges: merges, pre: "smollm")
        let (space, one, two) = (try XCTUnwrap(gpt2.id(of: "Ġ")), try XCTUnwrap(gpt2.id(of: "1")), try XCTUnwrap(gpt2.id(of: "2")))
        XCTAssertEqual(gpt2.encode(" 12"), [256, two])
        XCTAssertEqual(gpt2.encode("12"), [257])
        XCTAssertEqual(smollm.encode(" 12"), [space, one, two])
        XCTAssertEqual(smollm.encode("12"), [one, two])
    }

    func testDecodeMatchesReferenceText() throws {
        for c in Self.cases {
            let got = try tok.decode(c.ids)
            XCTAssertEqual(Array(got.unicodeScalars), Array(c.decoded.unicodeScalars), "decode(\(c.ids)) for \(c.text.debugDescription)")
        }
    }

    func testStreamingDecoderMatchesDecode() throws {
        var held = 0
        for c in Self.cases {
            var decoder = tok.makeStreamingDecoder()
            var text = ""
            for id in c.ids {
                let piece = try decoder.push(id)
                if piece.isEmpty { held += 1 }
                XCTAssertFalse(piece.unicodeScalars.contains("\u{FFFD}"), "push(\(id)) gave a partial character for \(c.text.debugDescription)")
                text += piece
            }
            text += decoder.flush()
            XCTAssertEqual(Array(text.unicodeScalars), Array(try tok.decode(c.ids).unicodeScalars), c.text.debugDescription)
        }
        XCTAssertGreaterThan(held, 0, "multi-token characters (emoji, CJK) must be held back until complete")
    }

    func testStreamingDecoderHoldsASplitEmoji() throws {
        // "😀" is F0 9F 98 80; the reference splits it over three tokens.
        let ids = tok.encode("😀")
        XCTAssertGreaterThan(ids.count, 1)
        var decoder = tok.makeStreamingDecoder()
        var outputs: [String] = []
        for id in ids { outputs.append(try decoder.push(id)) }
        XCTAssertEqual(outputs.dropLast(), Array(repeating: "", count: ids.count - 1))
        XCTAssertEqual(outputs.last, "😀")
        XCTAssertEqual(decoder.flush(), "")
    }

    func testIncompleteBytesBecomeReplacementCharacters() throws {
        let f0 = try XCTUnwrap(tok.id(of: "ð"))          // the byte 0xF0 alone: the start of a 4-byte sequence
        let a = try XCTUnwrap(tok.id(of: "a"))
        XCTAssertEqual(try tok.decode([f0]), "\u{FFFD}")
        XCTAssertEqual(try tok.decode([f0, a]), "\u{FFFD}a")
        var d = tok.makeStreamingDecoder()
        XCTAssertEqual(try d.push(f0), "")
        XCTAssertEqual(d.flush(), "\u{FFFD}")
        XCTAssertEqual(try d.push(f0), "")
        XCTAssertEqual(try d.push(a), "\u{FFFD}a")
        XCTAssertEqual(d.flush(), "")
    }

    // MARK: Special tokens

    func testSpecialTokens() throws {
        XCTAssertEqual(tok.encode("<|im_start|>"), [1])
        let plain = tok.encode("<|im_start|>", parseSpecial: false)
        XCTAssertFalse(plain.contains(1), "with parseSpecial false, <|im_start|> is text: \(plain)")
        XCTAssertGreaterThan(plain.count, 1)
        XCTAssertEqual(try tok.decode(plain), "<|im_start|>")
        XCTAssertEqual(try tok.decode([1, 4093, 198, 6004, 2], skipSpecial: true), "user\nhi")
        XCTAssertEqual(try tok.decode([1, 4093, 198, 6004, 2]), "<|im_start|>user\nhi<|im_end|>")
        var d = tok.makeStreamingDecoder(skipSpecial: true)
        XCTAssertEqual(try d.push(1), "")
        XCTAssertEqual(try d.push(4093), "user")
        XCTAssertTrue(tok.isSpecial(0) && tok.isSpecial(1) && tok.isSpecial(2) && tok.isSpecial(16))
        XCTAssertFalse(tok.isSpecial(17) || tok.isSpecial(260) || tok.isSpecial(-1) || tok.isSpecial(49152))
    }

    func testLongestSpecialTokenWins() throws {
        let t = try tinyTokenizer(extra: [], merges: [], special: ["<a>", "<a><b>", "<b>"])
        XCTAssertEqual(t.encode("<a><b>"), [1])
        XCTAssertEqual(t.encode("<a><b"), [0] + t.encode("<b", parseSpecial: false))
        XCTAssertEqual(t.encode("x<b>"), t.encode("x") + [2])
    }

    // MARK: Metadata and lookups

    func testMetadata() {
        XCTAssertEqual(tok.vocabularySize, 49152)
        XCTAssertEqual(tok.bosTokenID, 1)
        XCTAssertEqual(tok.eosTokenID, 2)
        XCTAssertEqual(tok.padTokenID, 2)
        XCTAssertEqual(tok.unknownTokenID, 0)
        XCTAssertFalse(tok.addBOS)
        XCTAssertEqual(tok.tokenString(1), "<|im_start|>")
        XCTAssertEqual(tok.tokenString(260), "Ġthe")
        XCTAssertNil(tok.tokenString(49152))
        XCTAssertNil(tok.tokenString(-1))
        XCTAssertEqual(tok.id(of: "Ġthe"), 260)
        XCTAssertEqual(tok.id(of: "<|im_end|>"), 2)
        XCTAssertNil(tok.id(of: "not a token at all"))
        XCTAssertEqual(tok.encode(""), [])
    }

    func testBadTokenIDs() {
        for bad in [49152, -1, Int.max] {
            XCTAssertThrowsError(try tok.decode([5, bad])) { error in
                XCTAssertEqual(error as? CausalError, .badTokenID(id: bad, vocabularySize: 49152))
            }
            var d = tok.makeStreamingDecoder()
            XCTAssertThrowsError(try d.push(bad)) { error in
                XCTAssertEqual(error as? CausalError, .badTokenID(id: bad, vocabularySize: 49152))
            }
        }
    }

    // MARK: BPE details on a tiny vocabulary

    func testMergesApplyByRank() throws {
        // "b c" outranks "a b", so "abc" is a + bc, then abc.
        let t = try tinyTokenizer(extra: ["bc", "ab", "abc"], merges: ["b c", "a b", "a bc"])
        XCTAssertEqual(t.encode("abc"), [258])                                         // "abc"
        XCTAssertEqual(t.encode("abd"), [257, t.id(of: "d")!])                          // "ab" then "d"
        // Equal pairs merge leftmost first: "aaa" with "a a" → "aa" + "a".
        let u = try tinyTokenizer(extra: ["aa"], merges: ["a a"])
        XCTAssertEqual(u.encode("aaa"), [256, u.id(of: "a")!])
        XCTAssertEqual(u.encode("aaaa"), [256, 256])
    }

    // MARK: Construction errors

    func testConstructionErrors() {
        let tokens = gpt2ByteScalars.map { String($0) }
        func make(types: [Int]? = nil, merges: [String] = [], pre: String = "smollm", bos: Int? = nil) throws {
            _ = try ByteLevelBPETokenizer(tokens: tokens, tokenTypes: types ?? tokens.map { _ in 1 }, merges: merges, preTokenizer: pre,
                                          bosTokenID: bos, eosTokenID: nil, padTokenID: nil, unknownTokenID: nil, addBOS: false)
        }
        XCTAssertNoThrow(try make())
        func expectKey(_ key: String, _ body: () throws -> Void, file: StaticString = #filePath, line: UInt = #line) {
            XCTAssertThrowsError(try body(), file: file, line: line) { error in
                guard case let .badConfig(k, reason)? = error as? CausalError else { return XCTFail("\(error)", file: file, line: line) }
                XCTAssertEqual(k, key, file: file, line: line)
                XCTAssertFalse(reason.isEmpty, file: file, line: line)
            }
        }
        expectKey("tokenizer.ggml.token_type") { try make(types: [1, 1]) }
        expectKey("tokenizer.ggml.merges") { try make(merges: ["a b", "ab"]) }
        expectKey("tokenizer.ggml.merges") { try make(merges: ["a b c"]) }
        expectKey("tokenizer.ggml.merges") { try make(merges: [" a"]) }
        expectKey("tokenizer.ggml.pre") { try make(pre: "no-such-rule") }
        expectKey("tokenizer.ggml.bos_token_id") { try make(bos: 256) }
        expectKey("tokenizer.ggml.tokens") {
            _ = try ByteLevelBPETokenizer(tokens: [], tokenTypes: [], merges: [], preTokenizer: "gpt2",
                                          bosTokenID: nil, eosTokenID: nil, padTokenID: nil, unknownTokenID: nil, addBOS: false)
        }
        // The message names the merge.
        XCTAssertThrowsError(try make(merges: ["a b", "ab"])) { error in
            XCTAssertTrue("\(error)".contains("merge #1 \"ab\""), "\(error)")
        }
    }

    func testGGUFErrorsNameFileAndKey() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("causal-tokenizer-tests-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let tokens = gpt2ByteScalars.map { String($0) } + ["ab"]
        func write(_ name: String, _ edit: (inout [(String, GGUFWriter.Value)]) -> Void) throws -> GGUFFile {
            var md: [(String, GGUFWriter.Value)] = [
                ("tokenizer.ggml.model", .string("gpt2")),
                ("tokenizer.ggml.pre", .string("smollm")),
                ("tokenizer.ggml.tokens", .strings(tokens)),
                ("tokenizer.ggml.token_type", .i32s(tokens.map { _ in 1 })),
                ("tokenizer.ggml.merges", .strings(["a b"])),
                ("tokenizer.ggml.eos_token_id", .u32(5)),
            ]
            edit(&md)
            var w = GGUFWriter()
            w.metadata = md
            let path = dir.appendingPathComponent(name).path
            try w.write(to: path)
            return try GGUFFile(path: path)
        }
        let ok = try ByteLevelBPETokenizer(gguf: write("ok.gguf") { _ in })
        XCTAssertEqual(ok.encode("ab ab"), [256, ok.id(of: "Ġ")!, 256])
        XCTAssertEqual(ok.eosTokenID, 5)
        XCTAssertNil(ok.bosTokenID)

        func expect(_ file: GGUFFile, field: String, contains: String, line: UInt = #line) {
            XCTAssertThrowsError(try ByteLevelBPETokenizer(gguf: file), line: line) { error in
                guard case let .badFormat(path, f, reason)? = error as? CausalError else { return XCTFail("\(error)", line: line) }
                XCTAssertEqual(path, file.path, line: line)
                XCTAssertEqual(f, field, line: line)
                XCTAssertTrue(reason.contains(contains), reason, line: line)
            }
        }
        expect(try write("llama.gguf") { $0[0].1 = .string("llama") }, field: "tokenizer.ggml.model", contains: "only \"gpt2\"")
        expect(try write("nomerges.gguf") { $0.remove(at: 4) }, field: "tokenizer.ggml.merges", contains: "missing")
        expect(try write("types.gguf") { $0[3].1 = .i32s([1, 1, 1]) }, field: "tokenizer.ggml.token_type", contains: "3 token types")
        expect(try write("badmerge.gguf") { $0[4].1 = .strings(["a b", "abc"]) }, field: "tokenizer.ggml.merges", contains: "merge #1")
        expect(try write("pre.gguf") { $0[1].1 = .string("no-such-rule") }, field: "tokenizer.ggml.pre", contains: "no-such-rule")
        expect(try write("eos.gguf") { $0[5].1 = .u32(300) }, field: "tokenizer.ggml.eos_token_id", contains: "300")
        expect(try write("tokens.gguf") { $0[2].1 = .i32s([1]) }, field: "tokenizer.ggml.tokens", contains: "array of string")
    }

    // MARK: Properties

    func testRandomStringsRoundTrip() throws {
        let pools: [[Unicode.Scalar]] = [
            Array("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.,;:!?'\"()[]{}<>|/\\-_+=*&^%$#@~`".unicodeScalars),
            Array("éèêëàâäçñöüßøåÉÀÖÜœæ".unicodeScalars) + ["e", "\u{0301}", "a", "\u{0308}"],
            Array("日本語中文字漢字のテキスト한국어텍스트".unicodeScalars),
            Array("😀👍🏽🚀🇫🇷🙂❤️\u{200D}👨👩👧".unicodeScalars),
            [" ", " ", " ", "\n", "\t", "\r", "\u{00A0}", "\u{3000}", "\u{2028}", "\u{200B}"],
            Array("0123456789½²Ⅻ٣".unicodeScalars),
        ]
        var rng = SplitMix64(state: 0x5EED_CAFE)
        for n in 0..<200 {
            var s = String.UnicodeScalarView()
            let length = Int.random(in: 0...60, using: &rng)
            for _ in 0..<length {
                let pool = pools[Int.random(in: 0..<pools.count, using: &rng)]
                s.append(pool[Int.random(in: 0..<pool.count, using: &rng)])
            }
            let text = String(s)
            let ids = tok.encode(text)
            XCTAssertFalse(ids.contains { tok.isSpecial($0) }, "case \(n)")
            let back = try tok.decode(ids)
            XCTAssertEqual(Array(back.utf8), Array(text.utf8), "round trip of case \(n): \(text.debugDescription) → \(ids)")
            var d = tok.makeStreamingDecoder()
            var streamed = ""
            for id in ids { streamed += try d.push(id) }
            streamed += d.flush()
            XCTAssertEqual(Array(streamed.utf8), Array(text.utf8), "streaming case \(n)")
        }
    }

    func testConcurrentEncodingAgrees() {
        let texts = Self.cases.map(\.text) + (0..<50).map { "word\($0) nouveau\($0)é 漢字\($0)" }
        let expected = texts.map { tok.encode($0) }
        let results = UnsafeMutableBufferPointer<[Int]>.allocate(capacity: 8 * texts.count)
        results.initialize(repeating: [])
        defer { results.deallocate() }
        DispatchQueue.concurrentPerform(iterations: 8) { worker in
            for (k, t) in texts.enumerated() { results[worker * texts.count + k] = tok.encode(t) }
        }
        for w in 0..<8 { for k in 0..<texts.count { XCTAssertEqual(results[w * texts.count + k], expected[k]) } }
    }

    // MARK: Speed (prints timings; the bounds only catch pathologies)

    func testSpeed() throws {
        let gguf = TestModel.gguf
        let tokens = try gguf.stringArray("tokenizer.ggml.tokens")
        let types = try gguf.intArray("tokenizer.ggml.token_type")
        let merges = try gguf.stringArray("tokenizer.ggml.merges")
        func seconds(_ body: () throws -> Void) rethrows -> Double {
            let t0 = DispatchTime.now().uptimeNanoseconds
            try body()
            return Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
        }
        var build = Double.infinity
        for _ in 0..<3 {
            build = min(build, try seconds {
                _ = try ByteLevelBPETokenizer(tokens: tokens, tokenTypes: types, merges: merges, preTokenizer: "smollm",
                                              bosTokenID: 1, eosTokenID: 2, padTokenID: 2, unknownTokenID: 0, addBOS: false)
            })
        }
        var fromGGUF = Double.infinity
        for _ in 0..<3 { fromGGUF = min(fromGGUF, try seconds { _ = try ByteLevelBPETokenizer(gguf: gguf) }) }

        // ~10k characters of mixed text, on a fresh tokenizer (cold word cache) and again (warm).
        var text = ""
        var k = 0
        while text.unicodeScalars.count < 10_000 {
            text += Self.cases[k % Self.cases.count].text + " "
            text += "The year \(1900 + k) saw \(k * 37) new words like tokenization\(k) and Überprüfung. "
            k += 1
        }
        let fresh = try ByteLevelBPETokenizer(gguf: gguf)
        var ids: [Int] = []
        let cold = seconds { ids = fresh.encode(text) }
        var warm = Double.infinity
        for _ in 0..<5 { warm = min(warm, seconds { _ = fresh.encode(text) }) }
        // One 10k-scalar pre-token (no spaces): the BPE merge loop itself.
        let cjk = String(String.UnicodeScalarView((0..<10_000).map { Unicode.Scalar(0x4E00 + UInt32(($0 * 7919) % 20_000))! }))
        var cjkIDs: [Int] = []
        let long = seconds { cjkIDs = fresh.encode(cjk) }
        var decodeTime = Double.infinity
        for _ in 0..<5 { decodeTime = min(decodeTime, try seconds { _ = try fresh.decode(ids) }) }
        XCTAssertEqual(try fresh.decode(cjkIDs), cjk)
        print(String(format: "tokenizer timings: init from arrays %.1f ms, init from GGUF (incl. reading metadata) %.1f ms; " +
                     "encode %d scalars → %d ids: cold %.2f ms, warm %.2f ms; one 10k-scalar CJK word %.2f ms; decode %d ids %.3f ms",
                     build * 1e3, fromGGUF * 1e3, text.unicodeScalars.count, ids.count, cold * 1e3, warm * 1e3, long * 1e3,
                     ids.count, decodeTime * 1e3))
        XCTAssertLessThan(build, 5)
        XCTAssertLessThan(cold, 5)
        XCTAssertLessThan(long, 5)
    }
}
