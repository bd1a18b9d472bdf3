import Foundation
import XCTest
import CausalLM

/// Every tokenizer through the one `TextTokenizer` interface that generation, the CLI and the server use: streaming
/// decoding (one token at a time) gives exactly `decode` of all the ids, which for the Unigram fixtures is the
/// `tokenizers` library's own decoded text (Tests/Fixtures/t5-unigram/cases.json).
final class TextTokenizerTests: XCTestCase {
    static let unigramFiles = ["tokenizer.json", "tokenizer-legacy.json", "tokenizer-bytefallback.json"]

    /// Scalars, so that canonically equivalent strings (é vs e + ◌́) are told apart.
    func scalars(_ s: String) -> [UInt32] { s.unicodeScalars.map(\.value) }

    /// The ids pushed one at a time, then flushed; also checks that no pushed text is ever part of a character.
    func streamed(_ tok: any TextTokenizer, _ ids: [Int], skipSpecial: Bool) throws -> (text: String, pieces: [String]) {
        var d = tok.makeStreamingDecoder(skipSpecial: skipSpecial)
        var pieces: [String] = []
        for id in ids { pieces.append(try d.push(id)) }
        pieces.append(d.flush())
        XCTAssertFalse(d.hasPending)
        return (pieces.joined(), pieces)
    }

    func testUnigramStreamingEqualsTokenizersLibraryDecode() throws {
        let all = try XCTUnwrap(Fixtures.json("t5-unigram/cases.json") as? [String: Any])
        for file in Self.unigramFiles {
            let unigram = try UnigramTokenizer(path: Fixtures.url("t5-unigram/\(file)").path)
            // T5's Metaspace decoder and Llama's Replace/ByteFallback/Fuse/Strip chain both run token by token.
            XCTAssertTrue(unigram.decodesTokenByToken, file)
            let tok: any TextTokenizer = unigram
            for c in try XCTUnwrap(all[file] as? [[String: Any]], file) {
                let text = try XCTUnwrap(c["text"] as? String)
                let ids = try XCTUnwrap(c["ids"] as? [Int])
                let label = "\(file): \(text.debugDescription)"
                XCTAssertEqual(try tok.encode(text), ids, label)
                let plain = try streamed(tok, ids, skipSpecial: true)
                XCTAssertEqual(scalars(plain.text), scalars(try XCTUnwrap(c["decoded"] as? String)), label)
                let special = try streamed(tok, ids, skipSpecial: false)
                XCTAssertEqual(scalars(special.text), scalars(try XCTUnwrap(c["decoded_with_special"] as? String)), label)
                XCTAssertEqual(scalars(try tok.decode(ids, skipSpecial: false)), scalars(special.text), label)
            }
        }
    }

    /// Random id sequences (specials, unknowns, byte pieces forming valid and invalid UTF-8 included): the streamed
    /// text equals `decode` of the whole list, with and without special tokens, for each decoder chain.
    func testUnigramStreamingEqualsDecodeOnRandomIDs() throws {
        var rng = TokenizerRNG(seed: 7)
        for file in Self.unigramFiles {
            let tok = try UnigramTokenizer(path: Fixtures.url("t5-unigram/\(file)").path)
            let V = tok.vocabularySize
            let bytePieces = (0..<256).compactMap { tok.tokenID(String(format: "<0x%02X>", $0)) }
            XCTAssertEqual(bytePieces.count, file == "tokenizer-bytefallback.json" ? 256 : 0, file)
            for trial in 0..<300 {
                let n = Int(rng.next() % 24)
                let ids: [Int] = (0..<n).map { _ in
                    let r = rng.next() % 10
                    if r < 3 && !bytePieces.isEmpty { return bytePieces[Int(rng.next() % UInt64(bytePieces.count))] }
                    if r == 3 { return Int(rng.next() % 5) }                  // <pad>, </s>, <unk>, ▁the / ▁
                    return Int(rng.next() % UInt64(V))
                }
                for skip in [false, true] {
                    let s = try streamed(tok, ids, skipSpecial: skip)
                    XCTAssertEqual(scalars(s.text), scalars(try tok.decode(ids, skipSpecial: skip)), "\(file) #\(trial) skip \(skip): \(ids)")
                }
            }
        }
    }

    /// A byte-fallback run streams only once it has ended: a run is valid UTF-8 as a whole or becomes one U+FFFD per
    /// byte (Hugging Face's ByteFallback), so "é" is not final while the next piece may still be a stray byte.
    func testByteFallbackRunsAreHeldUntilTheyEnd() throws {
        let tok = try UnigramTokenizer(path: Fixtures.url("t5-unigram/tokenizer-bytefallback.json").path)
        let b = { (x: Int) in tok.tokenID(String(format: "<0x%02X>", x))! }
        let word = try XCTUnwrap(tok.tokenID("▁the"))
        var d = tok.makeStreamingDecoder(skipSpecial: false)
        XCTAssertEqual(try d.push(word), "the")          // the text's leading space is stripped
        XCTAssertEqual(try d.push(b(0xC3)), "")
        XCTAssertEqual(try d.push(b(0xA9)), "")          // "é" so far, but the run has not ended
        XCTAssertEqual(try d.push(word), "é the")
        XCTAssertEqual(try d.push(b(0xC3)), "")
        XCTAssertEqual(try d.push(b(0xA9)), "")
        XCTAssertEqual(try d.push(b(0xE2)), "")          // the run "é" + 0xE2 is not UTF-8: three U+FFFD
        XCTAssertEqual(d.flush(), "\u{FFFD}\u{FFFD}\u{FFFD}")
        let ids = [word, b(0xC3), b(0xA9), word, b(0xC3), b(0xA9), b(0xE2)]
        XCTAssertEqual(try tok.decode(ids, skipSpecial: false), "the\u{E9} the\u{FFFD}\u{FFFD}\u{FFFD}")
        // A skipped special token does not end a run (specials are removed before the decoder chain).
        let sep = try XCTUnwrap(tok.tokenID("<sep>"))
        XCTAssertEqual(try streamed(tok, [b(0xC3), sep, b(0xA9)], skipSpecial: true).text, "\u{E9}")
        XCTAssertEqual(try tok.decode([b(0xC3), sep, b(0xA9)], skipSpecial: true), "\u{E9}")
        XCTAssertThrowsError(try d.push(tok.vocabularySize)) { e in
            XCTAssertEqual(e as? CausalError, .badTokenID(id: tok.vocabularySize, vocabularySize: tok.vocabularySize))
        }
    }

    /// T5's Metaspace decoder drops the space of the first piece kept: after a skipped special token the next piece
    /// is first; a kept one (such as <extra_id_0>) leaves the space in place, as the tokenizers library decodes.
    func testMetaspaceFirstPieceAfterSpecialTokens() throws {
        let tok: any TextTokenizer = try UnigramTokenizer(path: Fixtures.url("t5-unigram/tokenizer.json").path)
        let hello = try XCTUnwrap(tok.tokenID("▁Hello")), extra0 = try XCTUnwrap(tok.tokenID("<extra_id_0>"))
        XCTAssertEqual(try streamed(tok, [extra0, hello, 1], skipSpecial: false).pieces, ["<extra_id_0>", " Hello", "</s>", ""])
        XCTAssertEqual(try streamed(tok, [extra0, hello, 1], skipSpecial: true).pieces, ["", "Hello", "", ""])
        XCTAssertEqual(tok.tokenText(hello), " Hello")
        XCTAssertEqual(tok.tokenBytes(extra0), Array("<extra_id_0>".utf8))
        XCTAssertTrue(tok.isSpecial(extra0))
        XCTAssertFalse(tok.isSpecial(hello))
        // A flushed decoder starts a new text.
        var d = tok.makeStreamingDecoder(skipSpecial: false)
        XCTAssertEqual(try d.push(hello), "Hello")
        XCTAssertEqual(d.flush(), "")
        XCTAssertEqual(try d.push(hello), "Hello")
    }

    /// Special ids come from the caller (the model's config) or tokenizer_config.json beside the file.
    func testUnigramSpecialIDs() throws {
        let path = Fixtures.url("t5-unigram/tokenizer.json").path
        let bare = try UnigramTokenizer(path: path)
        XCTAssertNil(bare.eosTokenID)
        XCTAssertEqual(try UnigramTokenizer(path: path, eosTokenID: 1, padTokenID: 0).eosTokenID, 1)
        XCTAssertThrowsError(try UnigramTokenizer(path: path, eosTokenID: 1000)) { e in
            XCTAssertTrue("\(e)".contains("eosTokenID") && "\(e)".contains("1000"), "\(e)")
        }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("unigram-tc-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        try FileManager.default.copyItem(atPath: path, toPath: dir.appendingPathComponent("tokenizer.json").path)
        try #"{"eos_token": "</s>", "pad_token": {"content": "<pad>"}}"#.write(to: dir.appendingPathComponent("tokenizer_config.json"), atomically: true, encoding: .utf8)
        let named = try UnigramTokenizer(path: dir.appendingPathComponent("tokenizer.json").path)
        XCTAssertEqual(named.eosTokenID, 1)
        XCTAssertEqual(named.padTokenID, 0)
        XCTAssertNil(named.bosTokenID)
        try #"{"eos_token": "<eos>"}"#.write(to: dir.appendingPathComponent("tokenizer_config.json"), atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try UnigramTokenizer(path: dir.appendingPathComponent("tokenizer.json").path)) { e in
            XCTAssertTrue("\(e)".contains("tokenizer_config.json") && "\(e)".contains("eos_token") && "\(e)".contains("<eos>"), "\(e)")
        }
    }

    /// A decoder chain that cannot run token by token (here ByteFallback before Metaspace, whose "first piece" would
    /// then be a joined byte run) still decodes exactly: its streaming decoder holds the ids and decodes them at the end.
    func testChainThatCannotStreamIsDecodedAtTheEnd() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("unigram-chain-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let url = dir.appendingPathComponent("tokenizer.json")
        try #"""
        {"model": {"type": "Unigram", "unk_id": 0, "byte_fallback": true,
                   "vocab": [["<unk>", 0], ["▁a", -1], ["b", -2], ["<0xC3>", -3], ["<0xA9>", -3], ["▁", -4], ["a", -5]]},
         "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": true},
         "decoder": {"type": "Sequence", "decoders": [{"type": "ByteFallback"}, {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always"}]}}
        """#.write(to: url, atomically: true, encoding: .utf8)
        let tok = try UnigramTokenizer(path: url.path)
        XCTAssertFalse(tok.decodesTokenByToken)
        let ids = [1, 2, 3, 4, 1]
        let expected = try tok.decode(ids, skipSpecial: false)
        XCTAssertEqual(expected, "ab\u{E9} a")
        let s = try streamed(tok, ids, skipSpecial: false)
        XCTAssertEqual(s.pieces, ["", "", "", "", "", expected])
        var d = tok.makeStreamingDecoder(skipSpecial: false)
        XCTAssertThrowsError(try d.push(7))
        XCTAssertFalse(d.hasPending)
    }

    /// Byte-level BPE through the protocol: the SmolLM2 tokenizer's encode is `encode(_, parseSpecial: true)`, and
    /// streaming split multi-byte characters gives `decode`.
    func testByteLevelBPEThroughTheProtocol() throws {
        let bpe = try ByteLevelBPETokenizer(gguf: TestModel.gguf)
        let tok: any TextTokenizer = bpe
        let text = "<|im_start|>user\nHé 😀 日本語 — done<|im_end|>"
        let ids = try tok.encode(text)
        XCTAssertEqual(ids, bpe.encode(text, parseSpecial: true))
        XCTAssertEqual(tok.tokenID("<|im_end|>"), bpe.id(of: "<|im_end|>"))
        for skip in [false, true] {
            let s = try streamed(tok, ids, skipSpecial: skip)
            XCTAssertEqual(s.text, try bpe.decode(ids, skipSpecial: skip))
            XCTAssertFalse(s.pieces.joined().contains("\u{FFFD}"))
        }
        XCTAssertEqual(try streamed(tok, ids, skipSpecial: false).text, text)
        // A token's own bytes (the server's logprobs): "Ġthe" is " the".
        let the = try XCTUnwrap(bpe.id(of: "Ġthe"))
        XCTAssertEqual(tok.tokenText(the), " the")
        XCTAssertEqual(tok.tokenBytes(-1), [])
    }

    /// WordPiece through the protocol: per-token decoding (continuations glued, cleanup per piece) equals decode.
    func testWordPieceThroughTheProtocol() throws {
        let wp = MiniLM.tokenizer
        let tok: any TextTokenizer = wp
        for c in try MiniLM.cases() {
            XCTAssertEqual(try tok.encode(c.text), c.ids, c.text)
            for skip in [false, true] {
                XCTAssertEqual(try streamed(tok, c.ids, skipSpecial: skip).text, try wp.decode(c.ids, skipSpecialTokens: skip), c.text)
            }
        }
    }
}

/// A small deterministic generator (SplitMix64) for the property tests.
private struct TokenizerRNG {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
