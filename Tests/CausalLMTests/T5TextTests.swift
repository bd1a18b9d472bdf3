import Foundation
import XCTest
import CausalLM

/// A T5 directory with a SentencePiece (Unigram) tokenizer.json takes text: Tests/Fixtures/tiny/t5-text is the tiny
/// random T5 of tiny/t5 with the 1000-piece T5 tokenizer of t5-unigram (same vocabulary), and its refs.json holds
/// transformers' ids, greedy tokens and decoded text for a few texts (make_refs.py there).
final class T5TextTests: XCTestCase {
    static let dir = Fixtures.url("tiny/t5-text").path

    struct Case {
        let text: String
        let ids: [Int]
        let greedy: [Int]
        let decoded: String
        let decodedSkipSpecial: String
    }

    static func cases() throws -> [Case] {
        let refs = try XCTUnwrap(Fixtures.json("tiny/t5-text/refs.json") as? [String: Any])
        XCTAssertEqual(refs["max_new_tokens"] as? Int, 16)
        return try XCTUnwrap(refs["cases"] as? [[String: Any]]).map { c in
            Case(text: try XCTUnwrap(c["text"] as? String), ids: try XCTUnwrap(c["ids"] as? [Int]),
                 greedy: try XCTUnwrap(c["greedy"] as? [Int]), decoded: try XCTUnwrap(c["decoded"] as? String),
                 decodedSkipSpecial: try XCTUnwrap(c["decoded_skip_special"] as? String))
        }
    }

    func testBundleLoadsTheUnigramTokenizer() throws {
        let bundle = try ModelBundle(path: Self.dir, threads: 2)
        XCTAssertTrue(bundle.isEncoderDecoder)
        let unigram = try XCTUnwrap(bundle.textTokenizer as? UnigramTokenizer)
        XCTAssertEqual(unigram.vocabularySize, 1000)
        let tok = try bundle.tokenizer
        XCTAssertEqual(tok.eosTokenID, 1)      // generation_config.json
        XCTAssertEqual(tok.padTokenID, 0)
        XCTAssertNil(tok.bosTokenID)
        XCTAssertEqual(bundle.endTokenIDs, [1])
        XCTAssertNil(bundle.chatTemplate)
        // Text → ids: the text's pieces and </s>, as transformers' T5 tokenizer gives.
        for c in try Self.cases() {
            XCTAssertEqual(try tok.encode(c.text), c.ids, c.text)
            XCTAssertEqual(c.ids.last, 1, c.text)
        }
        XCTAssertThrowsError(try bundle.chatPromptIDs([ChatMessage(role: "user", content: "hi")])) { e in
            XCTAssertTrue("\(e)".contains("chat template") && "\(e)".contains("chat_template"), "\(e)")
        }
    }

    /// Text in, text out: the encoder reads the text's ids, the decoder's greedy tokens are transformers', and the
    /// text is the tokenizer's decode of exactly those tokens (streamed as it is generated). In one ragged batch every
    /// sequence's logits are bit-identical to the same sequence alone, in any order.
    func testTextGenerationMatchesTransformersAndBatchEqualsAlone() throws {
        let bundle = try ModelBundle(path: Self.dir, threads: 2)
        let tok = try bundle.tokenizer
        let cases = try Self.cases()
        let params = GenerateParameters(maxNewTokens: 16)
        let requests = try cases.map { SequenceRequest(encoderInput: try tok.encode($0.text), parameters: params) }

        func run(_ reqs: [SequenceRequest]) throws -> (results: [GenerationResult], streamed: [String], logits: [[[UInt32]]]) {
            var streamed = [String](repeating: "", count: reqs.count)
            var logits = [[[UInt32]]](repeating: [], count: reqs.count)
            var observer = GenerationObserver()
            observer.onText = { i, s in streamed[i] += s }
            observer.onLogits = { i, l in logits[i].append(l.map(\.bitPattern)) }
            let results = try bundle.makeGenerator().generate(reqs, observer: observer)
            return (results, streamed, logits)
        }

        let batch = try run(requests)
        for (i, c) in cases.enumerated() {
            let r = batch.results[i]
            XCTAssertEqual(r.tokens, c.greedy, c.text)
            XCTAssertEqual(r.finishReason, .length, c.text)
            XCTAssertEqual(r.promptTokens, c.ids.count + 1, c.text)   // the encoder input and the decoder start id
            XCTAssertEqual(r.text, c.decoded, c.text)
            XCTAssertEqual(r.text, try tok.decode(r.tokens, skipSpecial: false), c.text)
            XCTAssertEqual(try tok.decode(r.tokens, skipSpecial: true), c.decodedSkipSpecial, c.text)
            XCTAssertEqual(batch.streamed[i], r.text, c.text)
            XCTAssertEqual(batch.logits[i].count, 16)

            let alone = try run([requests[i]])
            XCTAssertEqual(alone.results[0], r, "\(c.text) alone")
            XCTAssertEqual(alone.logits[0], batch.logits[i], "\(c.text): logits alone differ from the batch")
        }
        let reversed = try run(requests.reversed())
        for i in cases.indices {
            XCTAssertEqual(reversed.results[cases.count - 1 - i], batch.results[i])
            XCTAssertEqual(reversed.logits[cases.count - 1 - i], batch.logits[i])
        }
    }

    /// Stop strings act on the decoded text: " sameto" is the fourth token of the first case's answer.
    func testStopStringOnDecodedText() throws {
        let bundle = try ModelBundle(path: Self.dir, threads: 2)
        let c = try Self.cases()[0]
        XCTAssertTrue(c.decoded.hasPrefix("This antoan What sameto"), c.decoded)
        var streamed = ""
        let r = try bundle.makeGenerator().generate(
            [SequenceRequest(encoderInput: try bundle.tokenizer.encode(c.text), parameters: GenerateParameters(maxNewTokens: 16, stop: ["sameto"]))],
            onText: { _, s in streamed += s })[0]
        XCTAssertEqual(r.text, "This antoan What ")
        XCTAssertEqual(r.tokens, Array(c.greedy.prefix(4)))
        XCTAssertEqual(r.finishReason, .stop)
        XCTAssertEqual(streamed, r.text)
    }
}
